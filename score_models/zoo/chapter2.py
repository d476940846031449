"""Recipes for the models of chapter 2."""

from __future__ import annotations
