"""Recipes for the models of chapter 3."""

from __future__ import annotations
