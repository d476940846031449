"""The forward SDEs of score-based models, behind one interface: `VESDE` and `VPSDE`.

Both noise data the same way (Karras et al. 2022, eq. 4): at time `t in [0, 1]`,

    x(t) = s(t) (x_data + sigma(t) z),    z ~ N(0, I),

a *scale* `s(t)` times the data perturbed at the *noise level* `sigma(t)`. So the marginal
`p_t` is the book's perturbed density `p_sigma` at `sigma = sigma(t)`, scaled by `s(t)`,

    p_t(x) = s^-d p_sigma(x / s),    grad log p_t(x) = score(x / s, sigma) / s,

and ONE noise-conditional score `score(x, sigma)` (the sigma parametrisation every model of
the book uses) serves both SDEs (`SDE.score`). The SDE with these marginals is

    dx = f(x, t) dt + g(t) dW,    f(x, t) = (s'(t) / s(t)) x,    g(t) = s(t) sqrt(d sigma(t)^2 / dt).

- `VESDE`, variance exploding (Song & Ermon's noise ladder in continuous time; Song et al.
  2021): `s = 1`, no drift, `sigma(t)` geometric from `sigma_min` to `sigma_max`.
- `VPSDE`, variance preserving (DDPM, Ho et al. 2020, in continuous time; Song et al. 2021):
  `dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW` with `beta` linear in `t`, so
  `s(t) = exp(-int_0^t beta / 2)` and `s^2 + (s sigma)^2 = 1`: `s = 1 / sqrt(1 + sigma^2)`, a
  function of the noise level alone (`scale_at`).

The time reversal of either (Anderson 1982),

    dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dW_bar    (t from 1 down to 0),

turns noise back into data. The samplers of the reverse process, `reverse_sde` and
`predictor_corrector`, live in `score_models.samplers.reverse`; the deterministic twin, the
probability-flow ODE, in `score_models.samplers.ode`. All take `sde=` (default: the VE SDE of
their noise range) and the sigma-parametrised `score_fn(x, sigma)`.
"""

from __future__ import annotations

import abc
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import (
    as_float_array,
    as_real_scalar,
    check_key,
    check_particles,
    check_positive_int,
    check_sigma_range,
    is_concrete,
)

__all__ = ["SDE", "VESDE", "VPSDE"]


class SDE(eqx.Module):
    """The interface of a forward SDE `x(t) = s(t) (x_data + sigma(t) z)` on `t in [0, 1]`.

    Subclasses define the schedule (`sigma`, `t_of_sigma`, `scale`, `scale_at`), the SDE's
    coefficients (`drift`, `diffusion`) and the marginal's noise (`marginal_std`); the rest
    (marginal draws, prior, the score of `p_t`, forward simulation) follows. Time arguments may
    be scalars or arrays (elementwise).
    """

    @abc.abstractmethod
    def sigma(self, t) -> Array:
        """The noise level `sigma(t)` of the data inside `x(t) / s(t)`."""

    @abc.abstractmethod
    def t_of_sigma(self, sigma) -> Array:
        """The inverse of `sigma(t)`."""

    @abc.abstractmethod
    def scale(self, t) -> Array:
        """The scale `s(t)` of the state."""

    @abc.abstractmethod
    def scale_at(self, sigma) -> Array:
        """The scale `s` at the time whose noise level is `sigma`: `scale(t_of_sigma(sigma))`."""

    @abc.abstractmethod
    def drift(self, x, t) -> Array:
        """The drift `f(x, t) = (s'(t) / s(t)) x` (linear in `x`)."""

    @abc.abstractmethod
    def diffusion(self, t) -> Array:
        """The diffusion coefficient `g(t) = s(t) sqrt(d sigma(t)^2 / dt)`."""

    @abc.abstractmethod
    def marginal_std(self, t) -> Array:
        """The std per coordinate of `x(t)` given `x(0)`: `s(t) sqrt(sigma(t)^2 - sigma(0)^2)`."""

    def marginal_mean(self, x0, t) -> Array:
        """The mean of `x(t)` given `x(0) = x0`: `s(t) / s(0) x0`."""
        return (self.scale(t) / self.scale(0.0)) * x0

    @property
    def prior_std(self) -> Array:
        """The std of the prior `N(0, prior_std^2 I)` at `t = 1`: the marginal's noise,
        `s(1) sigma(1)` (the data's share vanishes as `sigma(1)` grows)."""
        return self.scale(1.0) * self.sigma(1.0)

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...], sigma=None) -> Array:
        """Draws `N(0, (s sigma)^2 I)` of `shape`, the prior at noise level `sigma` (default
        `sigma(1)`) in this SDE's coordinates: the `x_init` of a sampler that starts there."""
        check_key("key", key)
        std = self.prior_std if sigma is None else self.scale_at(sigma) * as_real_scalar("sigma", sigma)
        return std * jax.random.normal(key, tuple(shape))

    def prior_log_prob(self, x: Float[Array, "*shape"]) -> Float[Array, ""]:
        """The log-density of ONE example `x` under the prior `N(0, prior_std^2 I)`."""
        var = self.prior_std**2
        return -0.5 * jnp.sum(x**2) / var - 0.5 * x.size * jnp.log(2 * jnp.pi * var)

    def score(self, score_fn, x, t) -> Array:
        """`grad log p_t(x)` at ONE example `x` (in this SDE's coordinates) from the
        sigma-parametrised `score_fn(x, sigma)`: `score_fn(x / s, sigma(t)) / s`."""
        s = self.scale(t)
        return score_fn(x / s, self.sigma(t)) / s

    def marginal_sample(self, x0: Float[Array, "n *shape"], t, key: PRNGKeyArray) -> Array:
        """A draw of `x(t)` given `x(0) = x0` in closed form: `marginal_mean(x0, t) +
        marginal_std(t) z`.

        `t` is a scalar in `[0, 1]`; returns the shape of `x0`. The closed form that `forward`
        approximates.
        """
        x0 = check_particles("x0", x0)
        t = as_real_scalar("t", t)
        if is_concrete(t) and not 0.0 <= t <= 1.0:
            raise ValueError(f"`t` must be a time in [0, 1], got {t}.")
        z = jax.random.normal(key, x0.shape, x0.dtype)
        return self.marginal_mean(x0, t) + self.marginal_std(t).astype(x0.dtype) * z

    def forward(
        self,
        x0: Float[Array, "n *shape"],
        key: PRNGKeyArray,
        *,
        ts=None,
        n_steps: int = 256,
        solver: diffrax.AbstractSolver | None = None,
    ) -> Array:
        """Noises `x0` by solving the forward SDE `dx = f dt + g dW` from `t = 0` with diffrax.

        All particles form one state of shape `(n, *shape)` driven by one
        `diffrax.VirtualBrownianTree` of that shape: a single `diffeqsolve` for the whole
        batch. Steps are `1 / n_steps` apart, refined so that every time in `ts` is a step
        (no interpolation between steps). The result has the exact marginals
        `x(t) ~ marginal_mean(x0, t) + N(0, marginal_std(t)^2 I)` up to the solver's
        discretisation error (Heun by default: its weak error in the variance is
        `O(1 / n_steps^2)`; Euler-Maruyama, `diffrax.Euler()`, is `O(1 / n_steps)`, about 2.7%
        at 256 steps for a VE SDE with `sigma_max / sigma_min = 1000`).

        **Arguments:**

        - `x0`: `(n, *shape)` particles at `t = 0`.
        - `key`: PRNG key of the Brownian motion.
        - `ts`: times in `[0, 1]`, increasing, at which to return the particles; default `[1]`.
        - `n_steps`: the number of steps over `[0, 1]`.
        - `solver`: a diffrax SDE solver; default `diffrax.Heun()` (for this additive noise Ito
          and Stratonovich solutions agree).

        **Returns:** `(len(ts), n, *shape)` particles at `ts`; `(n, *shape)` at `t = 1` when
        `ts` is `None`.
        """
        x0 = check_particles("x0", x0)
        n_steps = check_positive_int("n_steps", n_steps)
        if solver is None:
            solver = diffrax.Heun()
        if not isinstance(solver, diffrax.AbstractSolver):
            raise ValueError(f"`solver` must be a diffrax solver, got {type(solver).__name__}.")
        squeeze = ts is None
        ts_np = np.array([1.0]) if ts is None else np.asarray(as_float_array("ts", ts, ndim=1), np.float64)
        if ts_np.size == 0 or not np.all(np.isfinite(ts_np)) or ts_np[0] < 0 or ts_np[-1] > 1:
            raise ValueError(f"`ts` must be times in [0, 1], got {ts_np.tolist()}.")
        if np.any(np.diff(ts_np) <= 0):
            raise ValueError(f"`ts` must be strictly increasing, got {ts_np.tolist()}.")
        t_end = float(ts_np[-1])
        if t_end == 0.0:  # nothing to solve
            out = jnp.broadcast_to(x0, (ts_np.size, *x0.shape))
            return out[0] if squeeze else out
        # Uniform grid up to t_end, plus the requested times (grid points closer than 1% of a
        # step to a requested time are dropped so no step is tiny).
        dt = 1.0 / n_steps
        grid = np.arange(0, math.ceil(t_end * n_steps - 1e-9) + 1) * dt
        grid = grid[grid < t_end]
        near = np.min(np.abs(grid[:, None] - ts_np[None, :]), axis=1) < 0.01 * dt
        grid = np.union1d(grid[~near], ts_np)
        if grid[0] != 0.0:
            grid = np.concatenate([[0.0], grid])
        dtype = x0.dtype
        grid = jnp.asarray(grid, dtype)
        save_ts = jnp.asarray(ts_np, dtype)
        out = _forward_kernel(self, x0, key, grid, save_ts, solver, dt / 8)
        return out[0] if squeeze else out


class VESDE(SDE):
    """The variance-exploding SDE `dx = g(t) dW` on `t in [0, 1]` with a geometric schedule.

    `sigma(t) = sigma_min (sigma_max / sigma_min)^t` and `g(t) = sigma(t) sqrt(2 log(sigma_max /
    sigma_min))`. Starting from `x(0)`, the forward process adds Gaussian noise of variance
    `sigma(t)^2 - sigma_min^2` per coordinate (`marginal_std`).

    An equinox module whose two noise levels are (dynamic) scalar arrays, so one compiled
    function serves every schedule. The time arguments `t` may be scalars or arrays (evaluated
    elementwise).

    **Arguments:**

    - `sigma_min`: the noise level at `t = 0` (positive).
    - `sigma_max`: the noise level at `t = 1` (greater than `sigma_min`).
    """

    sigma_min: Float[Array, ""]
    sigma_max: Float[Array, ""]

    def __init__(self, sigma_min: float, sigma_max: float):
        check_sigma_range(sigma_max, sigma_min)
        self.sigma_min = jnp.asarray(sigma_min, dtype=float)
        self.sigma_max = jnp.asarray(sigma_max, dtype=float)

    @property
    def log_ratio(self) -> Float[Array, ""]:
        """`log(sigma_max / sigma_min)`."""
        return jnp.log(self.sigma_max / self.sigma_min)

    def sigma(self, t) -> Array:
        """The noise level `sigma(t) = sigma_min (sigma_max / sigma_min)^t`."""
        return self.sigma_min * jnp.exp(jnp.asarray(t) * self.log_ratio)

    def t_of_sigma(self, sigma) -> Array:
        """The inverse of `sigma(t)`: `log(sigma / sigma_min) / log(sigma_max / sigma_min)`."""
        return jnp.log(jnp.asarray(sigma) / self.sigma_min) / self.log_ratio

    def scale(self, t) -> Array:
        """The scale `s(t) = 1`: the VE SDE adds noise without shrinking the data."""
        return jnp.ones_like(jnp.asarray(t, dtype=self.sigma_min.dtype))

    def scale_at(self, sigma) -> Array:
        """`1` at every noise level."""
        return jnp.ones_like(jnp.asarray(sigma, dtype=self.sigma_min.dtype))

    def drift(self, x, t) -> Array:
        """No drift: `f = 0`."""
        return jnp.zeros_like(x)

    def marginal_mean(self, x0, t) -> Array:
        """`x0`: the VE SDE only adds noise."""
        return x0

    @property
    def prior_std(self) -> Array:
        """`sigma_max`: the prior is `N(0, sigma_max^2 I)`."""
        return self.sigma_max

    def diffusion(self, t) -> Array:
        """The diffusion coefficient `g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))`."""
        return self.sigma(t) * jnp.sqrt(2 * self.log_ratio)

    def marginal_std(self, t) -> Array:
        """The std of `x(t) - x(0)` per coordinate, `sqrt(sigma(t)^2 - sigma_min^2)` (exact)."""
        return jnp.sqrt(jnp.maximum(self.sigma(t) ** 2 - self.sigma_min**2, 0.0))


class VPSDE(SDE):
    """The variance-preserving SDE `dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW` on `t in [0, 1]`,
    `beta(t) = beta_min + t (beta_max - beta_min)`: DDPM in continuous time (Ho et al. 2020;
    Song et al. 2021).

    With `B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2`, the marginal is
    `x(t) = s(t) x(0) + sqrt(1 - s(t)^2) z` with `s(t) = exp(-B(t) / 2)` (DDPM's
    `sqrt(alpha_bar)`): in the shared form `s (x(0) + sigma z)`, the noise level is
    `sigma(t) = sqrt(exp(B(t)) - 1)` and `s = 1 / sqrt(1 + sigma^2)`. The defaults are DDPM's
    (1,000 steps with `beta` from 1e-4 to 0.02, i.e. `beta(t) dt` with `dt = 1/1000`): the
    noise level runs from 0 at `t = 0` to about 152 at `t = 1`.

    An equinox module whose two rates are (dynamic) scalar arrays. The time arguments `t` may be
    scalars or arrays (evaluated elementwise).

    **Arguments:**

    - `beta_min`: `beta(0)` (non-negative).
    - `beta_max`: `beta(1)` (positive, at least `beta_min`).
    """

    beta_min: Float[Array, ""]
    beta_max: Float[Array, ""]

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        lo, hi = as_real_scalar("beta_min", beta_min), as_real_scalar("beta_max", beta_max)
        if is_concrete(lo) and is_concrete(hi):
            if not (math.isfinite(lo) and lo >= 0):
                raise ValueError(f"`beta_min` must be non-negative and finite, got {lo}.")
            if not (math.isfinite(hi) and hi > 0 and hi >= lo):
                raise ValueError(f"`beta_max` must be positive, finite and at least `beta_min` ({lo}), got {hi}.")
            if (lo + hi) / 2 > 80:  # sigma(1) = sqrt(exp(B(1)) - 1) must stay finite in float32
                raise ValueError(f"`(beta_min + beta_max) / 2` = int_0^1 beta must be at most 80 (sigma(1) = "
                                 f"sqrt(exp(int_0^1 beta) - 1) overflows float32 beyond), got {(lo + hi) / 2}.")
        self.beta_min = jnp.asarray(beta_min, dtype=float)
        self.beta_max = jnp.asarray(beta_max, dtype=float)

    def beta(self, t) -> Array:
        """The rate `beta(t) = beta_min + t (beta_max - beta_min)`."""
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t) -> Array:
        """`B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2`."""
        t = jnp.asarray(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def scale(self, t) -> Array:
        """`s(t) = exp(-B(t) / 2)`, DDPM's `sqrt(alpha_bar)`."""
        return jnp.exp(-0.5 * self.integrated_beta(t))

    def sigma(self, t) -> Array:
        """The noise level `sigma(t) = sqrt(exp(B(t)) - 1)`."""
        return jnp.sqrt(jnp.expm1(self.integrated_beta(t)))

    def t_of_sigma(self, sigma) -> Array:
        """The inverse of `sigma(t)`: the root of `B(t) = log(1 + sigma^2)`, in a form without
        cancellation, `2 B / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) B))`."""
        b = jnp.log1p(jnp.asarray(sigma) ** 2)
        slope = self.beta_max - self.beta_min
        return 2 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2 * slope * b))

    def scale_at(self, sigma) -> Array:
        """`s = 1 / sqrt(1 + sigma^2)`: variance preserving, whatever `beta`."""
        return jax.lax.rsqrt(1 + jnp.asarray(sigma, dtype=self.beta_min.dtype) ** 2)

    def drift(self, x, t) -> Array:
        """`f(x, t) = -beta(t) x / 2`."""
        return -0.5 * self.beta(t) * x

    def diffusion(self, t) -> Array:
        """`g(t) = sqrt(beta(t))`."""
        return jnp.sqrt(self.beta(t))

    def marginal_std(self, t) -> Array:
        """`sqrt(1 - s(t)^2) = sqrt(1 - exp(-B(t)))` (exact)."""
        return jnp.sqrt(-jnp.expm1(-self.integrated_beta(t)))


def sampling_times(sde: SDE, sigma_max, sigma_min) -> tuple[Array, Array]:
    """The times `(t(sigma_max), t(sigma_min))` of `sde` between which a sampler runs, after
    checking `sde` and that both noise levels lie in its range `[sigma(0), sigma(1)]` (within
    1e-5 relative)."""
    if not isinstance(sde, SDE):
        raise ValueError(f"`sde` must be an SDE (sm.VESDE or sm.VPSDE), or None for the VE SDE of the "
                         f"noise range; got {type(sde).__name__}.")
    if is_concrete(sigma_max) and is_concrete(sigma_min):
        lo, hi = float(sde.sigma(0.0)), float(sde.sigma(1.0))
        for name, value in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
            if not lo * (1 - 1e-5) <= float(value) <= hi * (1 + 1e-5):
                raise ValueError(
                    f"`{name}` ({float(value):g}) must lie in the range of the {type(sde).__name__}, "
                    f"[sigma(0), sigma(1)] = [{lo:g}, {hi:g}]."
                )
    t = jnp.clip(sde.t_of_sigma(jnp.asarray([sigma_max, sigma_min])), 0.0, 1.0)
    return t[0], t[1]


@eqx.filter_jit
def _forward_kernel(sde: SDE, x0, key, grid, save_ts, solver, tol):
    t0, t1 = grid[0], grid[-1]
    bm = diffrax.VirtualBrownianTree(t0, t1, tol=tol, shape=jax.ShapeDtypeStruct(x0.shape, x0.dtype), key=key)

    def g(t, y, args):
        return lx.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion(t), y.dtype))

    terms = diffrax.ControlTerm(g, bm)
    if not isinstance(sde, VESDE):  # (the VE SDE has no drift term)
        terms = diffrax.MultiTerm(diffrax.ODETerm(lambda t, y, args: sde.drift(y, t)), terms)
    sol = diffrax.diffeqsolve(
        terms, solver, t0, t1, None, x0,
        saveat=diffrax.SaveAt(ts=save_ts),
        stepsize_controller=diffrax.StepTo(ts=grid),
        max_steps=grid.shape[0],
    )
    return sol.ys
