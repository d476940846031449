"""The book's trained models: one recipe (config + build function) per cached artifact.

Every model a chapter uses comes from here, so `score-models artifacts build` can rebuild all of
them with one command and a chapter only calls `zoo.load(name)`::

    model = sm.zoo.load("noise_conditional_1d")   # cached (see `artifacts` for where and when)

Recipes live in one module per chapter (`chapter1.py`, ...); each registers itself with
`@recipe(...)`. A recipe's config holds everything its build depends on (data, model, optimiser,
steps, seed); change any of it and the cached artifact is stale. Registered configs are
read-only (`FrozenConfig`): copy one with `thaw(config)` to vary it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import equinox as eqx

from .. import artifacts


class _ReadOnlyDict(dict):
    def _read_only(self, *args, **kwargs):
        raise TypeError("A recipe's config is read-only; copy it with `sm.zoo.thaw(config)` to vary it.")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


class FrozenConfig(_ReadOnlyDict):
    """A read-only dict (nested configs frozen too, lists stored as tuples): a recipe's config
    cannot be changed by accident, through the registry or a dict shared between recipes."""

    def __reduce__(self):
        return FrozenConfig, (dict(self),)

    def __deepcopy__(self, memo):
        return self  # immutable all the way down


def freeze(value: Any) -> Any:
    """`value` with every dict made a `FrozenConfig` and every list a tuple."""
    if isinstance(value, Mapping):
        return FrozenConfig({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of a (frozen) config: dicts and lists."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to build one cached model: `build(config)` returns a model, `(model, history)` or
    `(model, history, metrics)`. `typical_seconds`: how long a build took on a 2-core laptop
    CPU (None if unknown), shown before a rebuild."""

    name: str
    chapter: int
    description: str
    config: Mapping[str, Any]
    build: Callable[[Mapping[str, Any]], Any]
    typical_seconds: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "config", freeze(self.config))

    def about(self) -> str:
        """What a build trains and roughly how long it takes."""
        return f"trains {self.description}{_duration(self.typical_seconds)}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"; about {max(10, round(seconds, -1)):.0f} s on a 2-core CPU"
    return f"; about {round(seconds / 60):.0f} min on a 2-core CPU"


# Build times measured for the committed artifacts (their sidecars' `history.build_seconds`, on
# the book's 2-core CPU), shown before a rebuild. A recipe can pass `typical_seconds` instead.
TYPICAL_SECONDS = {
    "explicit_sm_1d": 9, "implicit_sm_1d": 19, "sliced_sm_1d": 14, "denoising_sm_1d": 31,
    "ensemble_1d": 37, "noise_conditional_1d": 36, "ncsn_2d_circles": 20, "ncsn_2d_gaussians": 71,
    "ncsn_2d_moons": 18, "ncsn_2d_gaussians_continuous": 105, "mnist_classifier": 2157, "mnist_unet": 1032,
}

_RECIPES: dict[str, Recipe] = {}


def recipe(name: str, *, chapter: int, description: str, config: dict, typical_seconds: float | None = None):
    """Registers the decorated `build(config)` function as the recipe for artifact `name`. The
    registry keeps a frozen copy of `config`."""

    def register(build: Callable[[Mapping[str, Any]], Any]) -> Callable[[Mapping[str, Any]], Any]:
        if name in _RECIPES:
            raise ValueError(f"A recipe named {name!r} is already registered.")
        seconds = TYPICAL_SECONDS.get(name) if typical_seconds is None else typical_seconds
        _RECIPES[name] = Recipe(name, chapter, description, config, build, seconds)
        return build

    return register


def names(chapter: int | None = None) -> list[str]:
    """The registered artifact names (of one chapter, if given), in chapter order."""
    recipes = sorted(_RECIPES.values(), key=lambda r: (r.chapter, r.name))
    return [r.name for r in recipes if chapter is None or r.chapter == chapter]


def chapters() -> list[int]:
    """The chapters that have recipes."""
    return sorted({r.chapter for r in _RECIPES.values()})


def get(name: str) -> Recipe:
    """The recipe for artifact `name`."""
    if name not in _RECIPES:
        raise ValueError(f"Unknown artifact {name!r}; known: {names()}.")
    return _RECIPES[name]


def _timed_build(r: Recipe) -> Callable[[], Any]:
    def run():
        t0 = time.perf_counter()
        model, history, metrics = artifacts.split_build_result(r.build(r.config))
        history = dict(history or {})
        history["build_seconds"] = time.perf_counter() - t0
        return model, history, metrics

    return run


def load(name: str) -> eqx.Module:
    """The cached model for `name`. A missing, stale or corrupt artifact is rebuilt only when
    `SCORE_MODELS_ARTIFACTS` allows it (see `score_models.artifacts`); otherwise the error says
    how to get it."""
    r = get(name)
    return artifacts.cached(name, r.config, _timed_build(r), about=r.about())


def build(name: str) -> eqx.Module:
    """Trains the model for `name` from scratch and saves it, whatever is cached. The artifact
    directory is checked writable first."""
    r = get(name)
    artifacts.ensure_writable()
    model, history, metrics = _timed_build(r)()
    artifacts.save(name, model, r.config, history=history, metrics=metrics)
    return model


def check(name: str) -> artifacts.Check:
    """The state of artifact `name` (`"ok"`, `"missing"`, `"stale"` or `"corrupt"`) and why."""
    return artifacts.check(name, get(name).config)


def status(name: str) -> str:
    """`"ok"`, `"missing"`, `"stale"` or `"corrupt"` for artifact `name`."""
    return check(name).state


def info(name: str) -> dict:
    """The sidecar of artifact `name`."""
    get(name)
    return artifacts.info(name)


# Importing the chapter modules registers their recipes.
from . import chapter1, chapter2, chapter3, chapter4, chapter5, chapter6, chapter7, chapter8  # noqa: E402,F401
