"""Recipes for the models of chapter 4."""

from __future__ import annotations
