"""One trained model, every convention: the score, the noise (epsilon) prediction of DDPM, the
denoiser of EDM, and DDPM's time and `alpha_bar` against the noise level.

Every model of the book is a score in the sigma parametrisation, `score(x, sigma) = grad_x log
p_sigma(x)` with `p_sigma` the data convolved with `N(0, sigma^2 I)`. For a noisy example `x =
x_0 + sigma z`, the other conventions predict, in expectation over what produced `x`:

- the noise (DDPM, Ho et al. 2020): `eps(x, sigma) = E[z | x] = -sigma score(x, sigma)`;
- the clean example (EDM's denoiser, Karras et al. 2022): `D(x, sigma) = E[x_0 | x] = x +
  sigma^2 score(x, sigma)` (Tweedie's formula);
- for the VP SDE, whose state is `y = s (x_0 + sigma z)` with `s = sqrt(alpha_bar) = 1 /
  sqrt(1 + sigma^2)`, the noise at DDPM's time `t`: `eps_vp(y, t) = eps(y / s, sigma(t))`
  (the same noise: scaling does not change it).

Each wrapper is an equinox module holding the model, so it passes through `jit` and `vmap` like
the model, and each has its inverse, so a model trained in one convention samples in any other.
All take and return ONE example, like the models.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import as_float_array, check_callable, is_concrete
from .sde import VPSDE

__all__ = [
    "alpha_bar",
    "ddpm_sigmas",
    "edm_preconditioning",
    "from_denoiser",
    "from_epsilon",
    "from_vp_epsilon",
    "sigma_of_alpha_bar",
    "to_denoiser",
    "to_epsilon",
    "to_vp_epsilon",
]


class Epsilon(eqx.Module):
    """`eps(x, sigma) = -sigma score_fn(x, sigma)`: the noise prediction of a score model."""

    score_fn: Callable

    def __call__(self, x, sigma):
        """The noise prediction at ONE example `x` and level `sigma`."""
        return -sigma * self.score_fn(x, sigma)


class ScoreFromEpsilon(eqx.Module):
    """`score(x, sigma) = -eps_fn(x, sigma) / sigma`: the score of a noise predictor."""

    eps_fn: Callable

    def __call__(self, x, sigma):
        """The score at ONE example `x` and level `sigma`."""
        return -self.eps_fn(x, sigma) / sigma


class Denoiser(eqx.Module):
    """`D(x, sigma) = x + sigma^2 score_fn(x, sigma)`: EDM's denoiser of a score model."""

    score_fn: Callable

    def __call__(self, x, sigma):
        """The denoised ONE example `x` at level `sigma`."""
        return x + sigma**2 * self.score_fn(x, sigma)


class ScoreFromDenoiser(eqx.Module):
    """`score(x, sigma) = (denoiser(x, sigma) - x) / sigma^2`: the score of a denoiser."""

    denoiser: Callable

    def __call__(self, x, sigma):
        """The score at ONE example `x` and level `sigma`."""
        return (self.denoiser(x, sigma) - x) / sigma**2


class VPEpsilon(eqx.Module):
    """DDPM's `eps(y, t)` for the VP SDE `sde` at time `t`: `-sigma(t) score_fn(y / s(t),
    sigma(t))`."""

    score_fn: Callable
    sde: VPSDE

    def __call__(self, y, t):
        """The noise prediction at ONE VP state `y` and time `t`."""
        sigma = self.sde.sigma(t)
        return -sigma * self.score_fn(y / self.sde.scale(t), sigma)


class ScoreFromVPEpsilon(eqx.Module):
    """The sigma-parametrised score of DDPM's `eps_fn(y, t)` for the VP SDE `sde`: `score(x,
    sigma) = -eps_fn(s x, t(sigma)) / sigma` with `s = 1 / sqrt(1 + sigma^2)`."""

    eps_fn: Callable
    sde: VPSDE

    def __call__(self, x, sigma):
        """The score at ONE example `x` and level `sigma`."""
        return -self.eps_fn(self.sde.scale_at(sigma) * x, self.sde.t_of_sigma(sigma)) / sigma


def _callable(name: str, f):
    check_callable(name, f)
    return f


def to_epsilon(score_fn: Callable) -> Epsilon:
    """The noise prediction `eps(x, sigma) = -sigma score_fn(x, sigma)` of a score model."""
    return Epsilon(_callable("score_fn", score_fn))


def from_epsilon(eps_fn: Callable) -> ScoreFromEpsilon:
    """The score `-eps_fn(x, sigma) / sigma` of a noise-prediction model `eps_fn(x, sigma)`."""
    return ScoreFromEpsilon(_callable("eps_fn", eps_fn))


def to_denoiser(score_fn: Callable) -> Denoiser:
    """EDM's denoiser `D(x, sigma) = x + sigma^2 score_fn(x, sigma)` of a score model."""
    return Denoiser(_callable("score_fn", score_fn))


def from_denoiser(denoiser: Callable) -> ScoreFromDenoiser:
    """The score `(D(x, sigma) - x) / sigma^2` of a denoiser `D(x, sigma)`."""
    return ScoreFromDenoiser(_callable("denoiser", denoiser))


def to_vp_epsilon(score_fn: Callable, sde: VPSDE | None = None) -> VPEpsilon:
    """DDPM's noise prediction `eps(y, t)` at the VP SDE's time `t` (default `sm.VPSDE()`) of
    a score model in the sigma parametrisation."""
    sde = VPSDE() if sde is None else sde
    if not isinstance(sde, VPSDE):
        raise ValueError(f"`sde` must be a VPSDE, got {type(sde).__name__}.")
    return VPEpsilon(_callable("score_fn", score_fn), sde)


def from_vp_epsilon(eps_fn: Callable, sde: VPSDE | None = None) -> ScoreFromVPEpsilon:
    """The sigma-parametrised score of a DDPM noise predictor `eps_fn(y, t)` trained on the VP
    SDE `sde` (default `sm.VPSDE()`), for every sampler of the library."""
    sde = VPSDE() if sde is None else sde
    if not isinstance(sde, VPSDE):
        raise ValueError(f"`sde` must be a VPSDE, got {type(sde).__name__}.")
    return ScoreFromVPEpsilon(_callable("eps_fn", eps_fn), sde)


def alpha_bar(sigma) -> Array:
    """DDPM's `alpha_bar = 1 / (1 + sigma^2)` at noise level `sigma` (the squared scale of the
    VP state: `y = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) z`)."""
    sigma = as_float_array("sigma", sigma)
    return 1 / (1 + sigma**2)


def sigma_of_alpha_bar(alpha_bar_value) -> Array:
    """The noise level `sigma = sqrt((1 - alpha_bar) / alpha_bar)` of DDPM's `alpha_bar` in (0, 1]."""
    a = as_float_array("alpha_bar_value", alpha_bar_value)
    if is_concrete(a) and (np.any(np.asarray(a) <= 0) or np.any(np.asarray(a) > 1)):
        raise ValueError("`alpha_bar_value` must lie in (0, 1].")
    return jnp.sqrt((1 - a) / a)


def ddpm_sigmas(betas: Float[Array, " T"]) -> Float[Array, " T"]:
    """The noise levels of DDPM's discrete steps `i = 1..T` with rates `betas` (Ho et al.'s
    linear 1e-4 to 0.02 over 1,000 steps gives 0.01 up to 157): `sigma_i = sqrt(1 / alpha_bar_i
    - 1)` with `alpha_bar_i = prod_{j <= i} (1 - beta_j)`, computed in float64."""
    b = np.asarray(as_float_array("betas", betas, ndim=1), np.float64)
    if b.size == 0 or np.any(~np.isfinite(b)) or np.any(b <= 0) or np.any(b >= 1):
        raise ValueError("`betas` must be rates in (0, 1).")
    log_alpha_bar = np.cumsum(np.log1p(-b))
    return jnp.asarray(np.sqrt(np.expm1(-log_alpha_bar)), jnp.float32)


def edm_preconditioning(sigma, sigma_data: float) -> tuple[Array, Array, Array, Array]:
    """EDM's preconditioning (Karras et al. 2022, Table 1) at noise level `sigma` for data of
    standard deviation `sigma_data`: `(c_skip, c_out, c_in, c_noise)`, with which a network `F`
    defines the denoiser `D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)`. Its training target
    `F* = (x_0 - c_skip x) / c_out` has unit variance at every level, and EDM's loss weight
    `lambda(sigma) = 1 / c_out^2 = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2` makes the
    denoising loss `lambda ||D - x_0||^2 = ||F - F*||^2`."""
    sigma = as_float_array("sigma", sigma)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / jnp.sqrt(total)
    c_in = 1 / jnp.sqrt(total)
    c_noise = jnp.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise
