"""The book's trained models: one recipe (config + build function) per cached artifact.

Every model a chapter uses comes from here, so `score-models artifacts build` can rebuild all of
them with one command and a chapter only calls `zoo.load(name)`::

    model = sm.zoo.load("noise_conditional_1d")   # cached, or trained and saved

Recipes live in one module per chapter (`chapter1.py`, ...); each registers itself with
`@recipe(...)`. A recipe's config holds everything its build depends on (data, model, optimiser,
steps, seed); change any of it and the cached artifact is stale.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import equinox as eqx

from .. import artifacts


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to build one cached model: `build(config)` returns a model, `(model, history)` or
    `(model, history, metrics)`."""

    name: str
    chapter: int
    description: str
    config: dict
    build: Callable[[dict], Any]


_RECIPES: dict[str, Recipe] = {}


def recipe(name: str, *, chapter: int, description: str, config: dict):
    """Registers the decorated `build(config)` function as the recipe for artifact `name`."""

    def register(build: Callable[[dict], Any]) -> Callable[[dict], Any]:
        if name in _RECIPES:
            raise ValueError(f"A recipe named {name!r} is already registered.")
        _RECIPES[name] = Recipe(name, chapter, description, config, build)
        return build

    return register


def names(chapter: int | None = None) -> list[str]:
    """The registered artifact names (of one chapter, if given), in chapter order."""
    recipes = sorted(_RECIPES.values(), key=lambda r: (r.chapter, r.name))
    return [r.name for r in recipes if chapter is None or r.chapter == chapter]


def get(name: str) -> Recipe:
    """The recipe for artifact `name`."""
    if name not in _RECIPES:
        raise ValueError(f"Unknown artifact {name!r}; known: {names()}.")
    return _RECIPES[name]


def _timed_build(r: Recipe) -> Callable[[], Any]:
    def run():
        t0 = time.perf_counter()
        result = r.build(r.config)
        seconds = time.perf_counter() - t0
        model, history, metrics = (result, None, None) if isinstance(result, eqx.Module) else (
            tuple(result) + (None, None))[:3]
        history = dict(history or {})
        history["build_seconds"] = seconds
        return model, history, metrics

    return run


def load(name: str) -> eqx.Module:
    """The cached model for `name` (built and saved first if `SCORE_MODELS_ARTIFACTS` allows)."""
    r = get(name)
    return artifacts.cached(name, r.config, _timed_build(r))


def build(name: str) -> eqx.Module:
    """Trains the model for `name` from scratch and saves it, whatever is cached."""
    r = get(name)
    model, history, metrics = _timed_build(r)()
    artifacts.save(name, model, r.config, history=history, metrics=metrics)
    return model


def status(name: str) -> str:
    """`"ok"`, `"missing"`, `"stale"` or `"corrupt"` for artifact `name`."""
    return artifacts.status(name, get(name).config)


def info(name: str) -> dict:
    """The sidecar of artifact `name`."""
    get(name)
    return artifacts.info(name)


# Importing the chapter modules registers their recipes.
from . import chapter1, chapter2, chapter3, chapter4, chapter5, chapter6  # noqa: E402,F401
