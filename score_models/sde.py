"""The variance-exploding (VE) SDE and its forward noising process.

The VE SDE of Song et al. (2021) runs on `t in [0, 1]` with no drift,

    dx = g(t) dW,    sigma(t) = sigma_min (sigma_max / sigma_min)^t,
    g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)),

so that `g(t)^2 = d sigma(t)^2 / dt` and `x(t) = x(0) + N(0, (sigma(t)^2 - sigma_min^2) I)`.
If `x(0)` is drawn from the data perturbed at `sigma_min`, `x(t)` follows the data perturbed at
`sigma(t)`: the marginals are exactly the noise-conditional family `p_sigma` that a score
network `s(x, sigma)` learns. Its time reversal,

    dx = -g(t)^2 grad log p_{sigma(t)}(x) dt + g(t) dW_bar    (t from 1 down to 0),

turns noise back into data. This module holds the forward process (`VESDE`). The samplers of
the reverse process, `reverse_sde` (Euler-Maruyama) and `predictor_corrector` (Song et al.
2021), live in `score_models.samplers.reverse`; its deterministic twin, the probability-flow
ODE, in `score_models.samplers.ode`.
"""

from __future__ import annotations

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
    check_particles,
    check_positive_int,
    check_sigma_range,
    is_concrete,
)

__all__ = ["VESDE"]


class VESDE(eqx.Module):
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

    def diffusion(self, t) -> Array:
        """The diffusion coefficient `g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))`."""
        return self.sigma(t) * jnp.sqrt(2 * self.log_ratio)

    def marginal_std(self, t) -> Array:
        """The std of `x(t) - x(0)` per coordinate, `sqrt(sigma(t)^2 - sigma_min^2)` (exact)."""
        return jnp.sqrt(jnp.maximum(self.sigma(t) ** 2 - self.sigma_min**2, 0.0))

    def marginal_sample(self, x0: Float[Array, "n *shape"], t, key: PRNGKeyArray) -> Array:
        """A draw of `x(t)` given `x(0) = x0` in closed form: `x0 + marginal_std(t) z`.

        `t` is a scalar in `[0, 1]`; returns the shape of `x0`. The closed form that `forward`
        approximates.
        """
        x0 = check_particles("x0", x0)
        t = as_real_scalar("t", t)
        if is_concrete(t) and not 0.0 <= t <= 1.0:
            raise ValueError(f"`t` must be a time in [0, 1], got {t}.")
        z = jax.random.normal(key, x0.shape, x0.dtype)
        return x0 + self.marginal_std(t).astype(x0.dtype) * z

    def forward(
        self,
        x0: Float[Array, "n *shape"],
        key: PRNGKeyArray,
        *,
        ts=None,
        n_steps: int = 256,
        solver: diffrax.AbstractSolver | None = None,
    ) -> Array:
        """Noises `x0` by solving the forward SDE `dx = g(t) dW` from `t = 0` with diffrax.

        All particles form one state of shape `(n, *shape)` driven by one
        `diffrax.VirtualBrownianTree` of that shape: a single `diffeqsolve` for the whole
        batch. Steps are `1 / n_steps` apart, refined so that every time in `ts` is a step
        (no interpolation between steps). The result has the exact marginals
        `x(t) ~ x0 + N(0, marginal_std(t)^2 I)` up to the solver's discretisation error
        (Heun by default: its weak error in the variance is `O(1 / n_steps^2)`; Euler-Maruyama,
        `diffrax.Euler()`, is `O(1 / n_steps)`, about 2.7% at 256 steps for
        `sigma_max / sigma_min = 1000`).

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


@eqx.filter_jit
def _forward_kernel(sde: VESDE, x0, key, grid, save_ts, solver, tol):
    t0, t1 = grid[0], grid[-1]
    bm = diffrax.VirtualBrownianTree(t0, t1, tol=tol, shape=jax.ShapeDtypeStruct(x0.shape, x0.dtype), key=key)

    def g(t, y, args):
        return lx.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion(t), y.dtype))

    sol = diffrax.diffeqsolve(
        diffrax.ControlTerm(g, bm), solver, t0, t1, None, x0,
        saveat=diffrax.SaveAt(ts=save_ts),
        stepsize_controller=diffrax.StepTo(ts=grid),
        max_steps=grid.shape[0],
    )
    return sol.ys
