"""Input validation shared by the public functions.

Every check runs on concrete values before anything is compiled, and raises a `ValueError`
that names the argument and what was expected. Traced values (inside `jit`/`vmap`) are
skipped: their shapes were already checked by the caller that traced them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when `x` is a concrete (non-traced) value."""
    return not isinstance(x, jax.core.Tracer)


def as_float_array(name: str, x: Any, *, ndim: int | None = None, min_ndim: int | None = None):
    """Converts `x` to a float32 array (float64 kept) and checks its rank."""
    if is_concrete(x):
        try:
            arr = jnp.asarray(x)
        except TypeError as e:
            raise ValueError(f"`{name}` must be an array of numbers, got {type(x).__name__}.") from e
    else:
        arr = x
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.float32)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {tuple(arr.shape)}.")
    if min_ndim is not None and arr.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimension(s), got shape {tuple(arr.shape)}."
        )
    return arr


def check_finite(name: str, x: Any) -> None:
    """Raises when a concrete array holds NaN or infinite values."""
    if is_concrete(x):
        arr = np.asarray(x)
        if not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.sum(np.isfinite(arr)))
            raise ValueError(f"`{name}` contains {bad} NaN or infinite value(s).")


def check_positive(name: str, x: Any) -> None:
    """Raises when a concrete scalar or array is not strictly positive (or not finite)."""
    if is_concrete(x):
        arr = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"`{name}` must be positive and finite, got {arr.tolist()}.")


def check_positive_int(name: str, x: Any) -> int:
    """Returns `x` as an int, raising unless it is a positive integer."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x <= 0:
        raise ValueError(f"`{name}` must be a positive integer, got {x!r}.")
    return int(x)


def check_sigmas(name: str, sigmas: Any):
    """Checks a noise schedule: 1D, positive, finite and strictly decreasing."""
    sigmas = as_float_array(name, sigmas, ndim=1)
    if is_concrete(sigmas):
        arr = np.asarray(sigmas, dtype=np.float64)
        if arr.size == 0:
            raise ValueError(f"`{name}` must hold at least one noise level, got none.")
        check_positive(name, arr)
        if arr.size > 1 and np.any(np.diff(arr) >= 0):
            raise ValueError(
                f"`{name}` must be strictly decreasing (sigma_1 > ... > sigma_L), got {arr.tolist()}."
            )
    return sigmas


def check_particles(name: str, x: Any):
    """Checks a batch of particles: float array of shape `(n, *event_shape)`, finite."""
    x = as_float_array(name, x, min_ndim=2)
    check_finite(name, x)
    return x
