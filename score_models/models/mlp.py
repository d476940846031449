"""Multilayer-perceptron score networks for low-dimensional data."""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import as_real_scalar, check_noise_level, check_positive, check_positive_int


def _check_input(x, dim: int, name: str = "x"):
    if x.shape != (dim,):
        raise ValueError(
            f"`{name}` must be ONE example of shape ({dim},); got shape {tuple(x.shape)}. "
            f"Use jax.vmap (or the library's samplers and losses, which vmap) for batches."
        )


class MLP(eqx.Module):
    """An unconditional score network `s(x)`: `(d,) -> (d,)`.

    **Arguments:**

    - `dim`: the data dimension `d`.
    - `width`, `depth`: hidden width and number of hidden layers.
    - `activation`: elementwise nonlinearity (default `jax.nn.silu`; smooth, so the Jacobian
      trace of implicit score matching is well defined).
    - `key`: PRNG key for the initial weights.
    """

    net: eqx.nn.MLP
    dim: int = eqx.field(static=True)

    def __init__(self, dim: int, width: int = 128, depth: int = 2, *,
                 activation: Callable = jax.nn.silu, key: PRNGKeyArray):
        self.dim = check_positive_int("dim", dim)
        self.net = eqx.nn.MLP(self.dim, self.dim, check_positive_int("width", width),
                              check_positive_int("depth", depth), activation=activation, key=key)

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """The score at ONE point `x` of shape `(d,)`; returns shape `(d,)`."""
        _check_input(x, self.dim)
        return self.net(x)


def log_sigma_embedding(sigma, n_frequencies: int) -> Float[Array, " e"]:
    """Features of `log sigma`: itself and `sin`/`cos` at geometric frequencies, shape
    `(2 * n_frequencies + 1,)`."""
    log_sigma = jnp.log(sigma)
    freqs = jnp.exp(jnp.linspace(jnp.log(0.25), jnp.log(4.0), n_frequencies))
    angles = freqs * log_sigma
    return jnp.concatenate([log_sigma[None], jnp.sin(angles), jnp.cos(angles)])


def check_data_std(data_std) -> float:
    """`data_std` as a positive float (the std a noise-conditional model rescales its input by)."""
    check_positive("data_std", as_real_scalar("data_std", data_std))
    return float(data_std)


def noise_conditional_input(x: Float[Array, " d"], sigma, dim: int, data_std: float,
                            n_frequencies: int) -> tuple[Float[Array, " f"], Float[Array, ""]]:
    """The input of the noise-conditional MLPs for ONE point `x: (d,)` at level `sigma`: `x`
    rescaled to unit variance, `x / sqrt(sigma^2 + data_std^2)`, then `log_sigma_embedding`,
    shape `(d + 2 n_frequencies + 1,)`; and `sigma` as a checked scalar of `x`'s dtype."""
    _check_input(x, dim)
    sigma = jnp.asarray(sigma, dtype=x.dtype)
    if sigma.shape != ():
        raise ValueError(f"`sigma` must be a scalar, got shape {tuple(sigma.shape)}.")
    check_noise_level("sigma", sigma, x.dtype)
    features = jnp.concatenate([x / jnp.sqrt(sigma**2 + data_std**2), log_sigma_embedding(sigma, n_frequencies)])
    return features, sigma


class NoiseConditionalMLP(eqx.Module):
    """A noise-conditional score network `s(x, sigma)`: `(d,), () -> (d,)`.

    `sigma` enters through an embedding of `log sigma`. The input is rescaled to unit variance,
    `x / sqrt(sigma^2 + data_std^2)`, and, with `scale_by_sigma=True` (default), the output is
    divided by `sigma`, so the network only has to predict the noise direction, whose size does
    not depend on sigma (Song & Ermon 2020).

    **Arguments:**

    - `dim`: the data dimension `d`.
    - `width`, `depth`: hidden width and number of hidden layers.
    - `n_frequencies`: sin/cos pairs in the `log sigma` embedding.
    - `data_std`: the data's standard deviation, used to rescale the input.
    - `scale_by_sigma`: divide the output by `sigma`.
    - `key`: PRNG key for the initial weights.
    """

    net: eqx.nn.MLP
    dim: int = eqx.field(static=True)
    n_frequencies: int = eqx.field(static=True)
    data_std: float = eqx.field(static=True)
    scale_by_sigma: bool = eqx.field(static=True)

    def __init__(self, dim: int, width: int = 128, depth: int = 2, *, n_frequencies: int = 4,
                 data_std: float = 1.0, scale_by_sigma: bool = True,
                 activation: Callable = jax.nn.silu, key: PRNGKeyArray):
        self.dim = check_positive_int("dim", dim)
        self.n_frequencies = check_positive_int("n_frequencies", n_frequencies)
        self.data_std = check_data_std(data_std)
        self.scale_by_sigma = bool(scale_by_sigma)
        in_size = self.dim + 2 * self.n_frequencies + 1
        self.net = eqx.nn.MLP(in_size, self.dim, check_positive_int("width", width),
                              check_positive_int("depth", depth), activation=activation, key=key)

    def __call__(self, x: Float[Array, " d"], sigma: Float[Array, ""]) -> Float[Array, " d"]:
        """The score at ONE point `x` of shape `(d,)` and noise level `sigma` (a scalar);
        returns shape `(d,)`."""
        h, sigma = noise_conditional_input(x, sigma, self.dim, self.data_std, self.n_frequencies)
        out = self.net(h)
        return out / sigma if self.scale_by_sigma else out
