"""Recipes for the models of chapter 1."""

from __future__ import annotations
