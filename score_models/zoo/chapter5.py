"""Recipes for the models of chapter 5."""

from __future__ import annotations
