"""Noise schedules."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import check_noise_level, check_positive_int, check_sigmas, check_size


def geometric_sigmas(sigma_max: float, sigma_min: float, n: int) -> Float[Array, " n"]:
    """`n` noise levels from `sigma_max` down to `sigma_min`, equally spaced in log.

    Returns a descending float32 array of shape `(n,)`: `sigma_1 = sigma_max > ... > sigma_n =
    sigma_min`, with a constant ratio `sigma_i / sigma_{i+1}`. Both ends must be valid float32
    noise levels (their squares finite), and the `n` levels distinct in float32.
    """
    sigma_max = check_noise_level("sigma_max", sigma_max, jnp.float32)
    sigma_min = check_noise_level("sigma_min", sigma_min, jnp.float32)
    n = check_positive_int("n", n)
    check_size("n", n)
    if n > 1 and not sigma_max > sigma_min:
        raise ValueError(
            f"`sigma_max` must be greater than `sigma_min`, got sigma_max={sigma_max}, sigma_min={sigma_min}."
        )
    if n == 1:
        return jnp.asarray([sigma_max], dtype=jnp.float32)
    sigmas = jnp.exp(jnp.linspace(jnp.log(sigma_max), jnp.log(sigma_min), n)).astype(jnp.float32)
    try:
        return check_sigmas("geometric_sigmas", sigmas)
    except ValueError as e:
        ratio = float(np.log(sigma_max / sigma_min))
        raise ValueError(
            f"The {n} levels from `sigma_max`={sigma_max} to `sigma_min`={sigma_min} are not distinct "
            f"in float32 (log ratio {ratio:.3g} over {n - 1} steps): use fewer levels or a wider range."
        ) from e
