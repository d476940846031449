"""The loop shared by the stochastic samplers: a `lax.scan` over steps that can keep a thinned
trajectory, and the final Tweedie step inside a kernel."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


def scan_with_trajectory(step: Callable, x0: Array, inputs: PyTree, every: int | None):
    """Runs `x, _ = step(x, inputs[k])` for every `k` (one `lax.scan`).

    Returns `(x, trajectory)`: `trajectory` is None when `every` is None, else `x0` followed by
    `x` after every `every` steps, shape `(1 + n_steps // every, *x0.shape)`. `every` must
    divide the number of steps (callers check it).
    """
    if every is None:
        x, _ = jax.lax.scan(step, x0, inputs)
        return x, None
    blocks = jax.tree.map(lambda a: a.reshape(-1, every, *a.shape[1:]), inputs)

    def block(x, block_inputs):
        x, _ = jax.lax.scan(step, x, block_inputs)
        return x, x

    x, frames = jax.lax.scan(block, x0, blocks)
    return x, jnp.concatenate([x0[None], frames])


def tweedie_step(batched_score: Callable, x: Array, sigma, trajectory: Array | None):
    """Tweedie's formula at noise level `sigma`, `x + sigma^2 s(x, sigma)`, with `batched_score`
    already vmapped over particles. Returns `(denoised, trajectory with the denoised particles
    appended (or None))`."""
    x = x + sigma**2 * batched_score(x, sigma)
    if trajectory is not None:
        trajectory = jnp.concatenate([trajectory, x[None]])
    return x, trajectory
