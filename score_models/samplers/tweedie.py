"""Tweedie's formula: the final denoising step of every sampler, as a function of its own."""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import (
    as_float_array,
    check_noise_level,
    check_particles,
    check_positive,
    check_score_fn,
    is_concrete,
)
from ._scan import tweedie_step

__all__ = ["tweedie_denoise"]


@eqx.filter_jit
def _tweedie_kernel(score_fn, x, sigma):
    if sigma.ndim == 0:
        x, _ = tweedie_step(jax.vmap(score_fn, in_axes=(0, None)), x, sigma, None)
        return x
    per_example = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return x + per_example**2 * jax.vmap(score_fn)(x, sigma)


def tweedie_denoise(score_fn: Callable, x: Float[Array, "n *shape"],
                    sigma: float | Float[Array, " n"]) -> Float[Array, "n *shape"]:
    """Tweedie's formula (Robbins 1956; Efron 2011): the posterior mean of the clean example
    given a noisy one, `E[x_0 | x] = x + sigma^2 grad log p_sigma(x)`, with `score_fn` in place
    of the score.

    Every sampler applies it as its final step with `denoise=True` (Jolicoeur-Martineau et al.
    2021 call it the final denoising step): it removes the noise of the last level `sigma`,
    at the cost of one score evaluation per particle. One jitted call for the batch.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`.
    - `x`: `(n, *shape)` particles at noise level `sigma`.
    - `sigma`: the noise level of `x`: a positive scalar, or `(n,)` one level per particle.

    **Returns:** `(n, *shape)` the denoised particles.
    """
    x = check_particles("x", x)
    if is_concrete(sigma) and jnp.ndim(sigma) == 1:
        sigma = as_float_array("sigma", sigma, ndim=1)
        if sigma.shape != x.shape[:1]:
            raise ValueError(f"`sigma` must be a scalar or hold one level per particle, {x.shape[:1]}; "
                             f"got shape {sigma.shape}.")
        check_positive("sigma", sigma, x.dtype)
    else:
        sigma = check_noise_level("sigma", sigma, x.dtype)
    check_score_fn(score_fn, x, conditional=True)
    return _tweedie_kernel(score_fn, x, jnp.asarray(sigma, x.dtype))
