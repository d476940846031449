"""Errors of a score function against the true score."""

from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_noise_level, check_particles, check_score_fn

__all__ = ["ScoreError", "score_error"]


class ScoreError(NamedTuple):
    """`mse = mean ||s - s_true||^2` over the points, and `relative = mse / mean ||s_true||^2`,
    the relative *squared* error. The book quotes `relative_rmse`, its square root, the
    relative root-mean-square error `sqrt(mean ||s - s_true||^2 / mean ||s_true||^2)`."""

    mse: float
    relative: float

    @property
    def relative_rmse(self) -> float:
        """The relative root-mean-square error, `sqrt(relative)`: 0.05 means the error is 5% of
        the score's own root-mean-square size."""
        return self.relative**0.5


@eqx.filter_jit
def _squared_errors(score_fn, true_score, x, sigma):
    """`(mean ||s - t||^2, mean ||t||^2)` over the points, in one compiled call."""
    if sigma is None:
        s = jax.vmap(score_fn)(x)
    else:
        s = jax.vmap(score_fn, in_axes=(0, None))(x, sigma)
    t = jax.vmap(true_score)(x)
    event = tuple(range(1, x.ndim))
    return jnp.mean(jnp.sum((s - t) ** 2, axis=event)), jnp.mean(jnp.sum(t**2, axis=event))


def score_error(score_fn: Callable, true_score: Callable, x: Float[Array, "n *shape"],
                sigma: float | None = None) -> ScoreError:
    """Error of `score_fn` against `true_score` at the points `x: (n, d)` (or `(n, *shape)`): a
    sample from p gives the density-weighted error, a grid the uniform one. With `sigma`, the
    model is called as `score_fn(x, sigma)`; `true_score(x)` always takes one point (for
    example `mixture.perturbed(sigma).score`).

    Both must return the shape of one point (a score of another shape is refused, not
    broadcast). One jitted call: pass models and bound methods (pytrees) to reuse it."""
    x = check_particles("x", x)
    if x.shape[0] == 0:
        raise ValueError(f"`x` must hold at least one point, got shape {x.shape}.")
    if sigma is not None:
        sigma = jnp.asarray(check_noise_level("sigma", sigma, x.dtype), x.dtype)
    check_score_fn(score_fn, x, conditional=sigma is not None)
    check_score_fn(true_score, x, conditional=False, name="true_score")
    mse, scale = (float(v) for v in _squared_errors(score_fn, true_score, x, sigma))
    if scale == 0.0:
        raise ValueError("`true_score` is zero at every point of `x`: the relative error is undefined.")
    return ScoreError(mse, mse / scale)
