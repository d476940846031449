"""Recipes for the models of chapter 6."""

from __future__ import annotations
