"""Noise schedules."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._checks import check_positive, check_positive_int


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> Float[Array, " n"]:
    """`n` noise levels from `sigma_max` down to `sigma_min`, equally spaced in log.

    Returns a descending float32 array of shape `(n,)`: `sigma_1 = sigma_max > ... > sigma_n =
    sigma_min`, with a constant ratio `sigma_i / sigma_{i+1}`.
    """
    check_positive("sigma_max", sigma_max)
    check_positive("sigma_min", sigma_min)
    n = check_positive_int("n", n)
    if n > 1 and not sigma_max > sigma_min:
        raise ValueError(
            f"`sigma_max` must be greater than `sigma_min`, got sigma_max={sigma_max}, sigma_min={sigma_min}."
        )
    if n == 1:
        return jnp.asarray([sigma_max], dtype=jnp.float32)
    return jnp.exp(jnp.linspace(jnp.log(sigma_max), jnp.log(sigma_min), n)).astype(jnp.float32)
