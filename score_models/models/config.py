"""Models described by plain JSON-able dicts, so an artifact's sidecar can rebuild its skeleton.

A config is `{"type": <class name>, **constructor keyword arguments}`; a `ScoreEnsemble`'s
config holds its member's config under `"member"` and its noise levels under `"sigmas"`.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from .ensemble import ScoreEnsemble
from .mlp import MLP, NoiseConditionalMLP

_REGISTRY: dict[str, type] = {"MLP": MLP, "NoiseConditionalMLP": NoiseConditionalMLP}


def register(cls: type) -> type:
    """Makes a model class constructible by `from_config` (usable as a decorator)."""
    _REGISTRY[cls.__name__] = cls
    return cls


def model_config(type: str, **kwargs: Any) -> dict:
    """A model config: `{"type": type, **kwargs}`, checked against the known model types."""
    if type not in _REGISTRY and type != "ScoreEnsemble":
        raise ValueError(f"`type` must be one of {sorted([*_REGISTRY, 'ScoreEnsemble'])}, got {type!r}.")
    return {"type": type, **kwargs}


def from_config(config: dict, key: PRNGKeyArray | None = None) -> eqx.Module:
    """Builds the model a config describes (with `key`, or a fixed key for a skeleton to load
    weights into)."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"`config` must be a dict with a 'type' entry, got {config!r}.")
    key = jax.random.key(0) if key is None else key
    kwargs = {k: v for k, v in config.items() if k != "type"}
    kind = config["type"]
    if kind == "ScoreEnsemble":
        member = kwargs.pop("member")
        sigmas = kwargs.pop("sigmas")
        return ScoreEnsemble(lambda k: from_config(member, k), sigmas, key=key, **kwargs)
    if kind not in _REGISTRY:
        raise ValueError(f"Unknown model type {kind!r}; known: {sorted([*_REGISTRY, 'ScoreEnsemble'])}.")
    return _REGISTRY[kind](key=key, **kwargs)
