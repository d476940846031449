"""The variance-exploding (VE) SDE: forward noising and reverse-time samplers.

The VE SDE of Song et al. (2021) runs on `t in [0, 1]` with no drift,

    dx = g(t) dW,    sigma(t) = sigma_min (sigma_max / sigma_min)^t,
    g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min)),

so that `g(t)^2 = d sigma(t)^2 / dt` and `x(t) = x(0) + N(0, (sigma(t)^2 - sigma_min^2) I)`.
If `x(0)` is drawn from the data perturbed at `sigma_min`, `x(t)` follows the data perturbed at
`sigma(t)`: the marginals are exactly the noise-conditional family `p_sigma` that a score
network `s(x, sigma)` learns. Its time reversal,

    dx = -g(t)^2 grad log p_{sigma(t)}(x) dt + g(t) dW_bar    (t from 1 down to 0),

turns noise back into data. This module holds the forward process (`VESDE`) and two samplers
for the reverse process: `reverse_sde` (Euler-Maruyama) and `predictor_corrector` (Song et al.
2021, reverse-diffusion predictor + Langevin corrector). Its deterministic twin, the
probability-flow ODE, lives in `score_models.ode`.

Samplers follow the library's convention: `score_fn(x, sigma)` scores ONE example, particles
are `(n, *shape)`, every step of every particle runs in one jitted `lax.scan` with `vmap` over
particles, and they return `x`, `(x, trajectory)` when a trajectory is requested, and
additionally a dict `info` (last element) with `return_info=True`. `info["nfe"]` is the number
of score evaluations per particle.
"""

from __future__ import annotations

import math
from typing import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import (
    as_float_array,
    check_particles,
    check_positive,
    check_positive_int,
    is_concrete,
)
from ._scan import scan_with_trajectory, tweedie_denoise
from .sampling import _check_every, check_score_fn

__all__ = ["VESDE", "predictor_corrector", "reverse_sde"]


def check_sigma_range(sigma_max, sigma_min) -> None:
    """Raises unless `0 < sigma_min < sigma_max` (both finite); traced values are skipped."""
    for name, value in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
        if is_concrete(value) and np.ndim(value) != 0:
            raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(value)}.")
        check_positive(name, value)
    if is_concrete(sigma_max) and is_concrete(sigma_min) and not float(sigma_min) < float(sigma_max):
        raise ValueError(
            f"`sigma_min` must be smaller than `sigma_max`, got sigma_min={float(sigma_min)}, "
            f"sigma_max={float(sigma_max)}."
        )


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

        `t` is a scalar; returns the shape of `x0`. The closed form that `forward` approximates.
        """
        x0 = check_particles("x0", x0)
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


# ------------------------------------------------------------------------------------------
# Reverse-time samplers


@eqx.filter_jit
def _reverse_kernel(score_fn, x_init, key, sigmas, variances, n_corrector, snr, trajectory_every,
                    denoise):
    """One jitted scan over steps `k`: the move from `sigmas[k]` to `sigmas[k + 1]`,

        x <- x + v_k s(x, sigmas[k]) + sqrt(v_k) z,

    followed by `n_corrector` Langevin steps at `sigmas[k + 1]` with the step size of Song et
    al. (2021, Algorithm 4): `eps = 2 (snr ||z|| / ||s||)^2`, norms averaged over the batch.
    """
    batched_score = jax.vmap(score_fn, in_axes=(0, None))
    n_dims = tuple(range(1, x_init.ndim))

    def corrector(x, inputs):
        sigma, k = inputs
        grad = batched_score(x, sigma)
        z = jax.random.normal(k, x.shape, x.dtype)
        grad_norm = jnp.mean(jnp.sqrt(jnp.sum(grad**2, axis=n_dims)))
        noise_norm = jnp.mean(jnp.sqrt(jnp.sum(z**2, axis=n_dims)))
        eps = 2 * (snr * noise_norm / jnp.maximum(grad_norm, jnp.finfo(x.dtype).tiny)) ** 2
        return x + eps * grad + jnp.sqrt(2 * eps) * z, None

    def step(x, inputs):
        sigma, sigma_next, v, k = inputs
        k_pred, k_corr = jax.random.split(k)
        z = jax.random.normal(k_pred, x.shape, x.dtype)
        x = x + v * batched_score(x, sigma) + jnp.sqrt(v) * z
        if n_corrector:
            corr_inputs = (jnp.full((n_corrector,), sigma_next), jax.random.split(k_corr, n_corrector))
            x, _ = jax.lax.scan(corrector, x, corr_inputs)
        return x, None

    n_steps = variances.shape[0]
    inputs = (sigmas[:-1], sigmas[1:], variances, jax.random.split(key, n_steps))
    x, trajectory = scan_with_trajectory(step, x_init, inputs, trajectory_every)
    if denoise:
        x, trajectory = tweedie_denoise(batched_score, x, sigmas[-1], trajectory)
    return x, trajectory


def _run_reverse(score_fn, x_init, key, sigma_max, sigma_min, n_steps, n_corrector, snr, denoise,
                 trajectory_every, return_info, predictor):
    x_init = check_particles("x_init", x_init)
    check_sigma_range(sigma_max, sigma_min)
    n_steps = check_positive_int("n_steps", n_steps)
    every = _check_every(trajectory_every, n_steps)
    check_score_fn(score_fn, x_init, sigma=True)
    dtype = x_init.dtype
    sde = VESDE(sigma_min, sigma_max)
    t = jnp.linspace(1.0, 0.0, n_steps + 1)
    sigmas = sde.sigma(t)
    if predictor == "euler_maruyama":
        # g(t_k)^2 dt = 2 log(sigma_max / sigma_min) sigma_k^2 / n_steps
        variances = sde.diffusion(t[:-1]) ** 2 / n_steps
    else:  # reverse diffusion: the exact variance added by the forward process over the step
        variances = sigmas[:-1] ** 2 - sigmas[1:] ** 2
    sigmas, variances = sigmas.astype(dtype), variances.astype(dtype)
    x, trajectory = _reverse_kernel(score_fn, x_init, key, sigmas, variances, n_corrector,
                                    jnp.asarray(snr, dtype), every, bool(denoise))
    out = (x,) if every is None else (x, trajectory)
    if return_info:
        info = {"nfe": n_steps * (1 + n_corrector) + int(bool(denoise))}
        if every is not None:
            frame_sigmas = sigmas[::every]
            if denoise:
                frame_sigmas = jnp.concatenate([frame_sigmas, jnp.zeros((1,), dtype)])
            info["trajectory_sigmas"] = frame_sigmas
        out = out + (info,)
    return out[0] if len(out) == 1 else out


def reverse_sde(
    score_fn: Callable,
    x_init: Float[Array, "n *shape"],
    key: PRNGKeyArray,
    *,
    sigma_max: float,
    sigma_min: float,
    n_steps: int,
    denoise: bool = False,
    trajectory_every: int | None = None,
    return_info: bool = False,
):
    """Samples by the reverse-time VE SDE with Euler-Maruyama steps.

    On the uniform grid `t_k = 1 - k / n_steps` (`sigma_k = sigma(t_k)`, a geometric schedule
    from `sigma_max` down to `sigma_min`), each step is

        x <- x + g(t_k)^2 dt s(x, sigma_k) + g(t_k) sqrt(dt) z,    dt = 1 / n_steps,

    with `g(t)^2 dt = 2 log(sigma_max / sigma_min) sigma_k^2 dt`. All steps run in one jitted
    `lax.scan`, particles in `vmap`. The particles end at noise level `sigma_min`; `denoise`
    adds Tweedie's step `x + sigma_min^2 s(x, sigma_min)`.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`.
    - `x_init`: `(n, *shape)` particles at `sigma_max`, typically `sigma_max * N(0, I)`.
    - `key`: PRNG key.
    - `sigma_max`, `sigma_min`: the noise levels at `t = 1` and `t = 0`.
    - `n_steps`: the number of steps (= score evaluations).
    - `denoise`: finish with a Tweedie denoising step (one more score evaluation).
    - `trajectory_every`: also return the particles every this many steps.
    - `return_info`: also return a dict `info` with `info["nfe"]`, the number of score
      evaluations per particle (`n_steps` + `denoise`), and `info["trajectory_sigmas"]` (the
      noise level of each frame, 0 for the denoised one) when a trajectory is requested.

    **Returns:** `x` of shape `(n, *shape)`; `(x, trajectory)` with `trajectory_every`, the
    trajectory of shape `(n_steps // trajectory_every + 1 [+ 1 if denoise], n, *shape)`
    starting with `x_init`; `info` appended last with `return_info=True`.
    """
    return _run_reverse(score_fn, x_init, key, sigma_max, sigma_min, n_steps, 0, 0.0, denoise,
                        trajectory_every, return_info, "euler_maruyama")


def predictor_corrector(
    score_fn: Callable,
    x_init: Float[Array, "n *shape"],
    key: PRNGKeyArray,
    *,
    sigma_max: float,
    sigma_min: float,
    n_steps: int,
    n_corrector: int = 1,
    snr: float = 0.16,
    denoise: bool = False,
    trajectory_every: int | None = None,
    return_info: bool = False,
):
    """Predictor-corrector sampling for the VE SDE (Song et al. 2021, Algorithms 2 and 4).

    On the geometric schedule `sigma_0 = sigma_max > ... > sigma_N = sigma_min` (`N = n_steps`),
    each step is a reverse-diffusion predictor

        x <- x + (sigma_k^2 - sigma_{k+1}^2) s(x, sigma_k) + sqrt(sigma_k^2 - sigma_{k+1}^2) z

    followed by `n_corrector` Langevin corrector steps at `sigma_{k+1}`,

        x <- x + eps s(x, sigma_{k+1}) + sqrt(2 eps) z,    eps = 2 (snr ||z|| / ||s||)^2,

    where, as in the reference implementation, the norms are averaged over the batch (so a
    particle's path depends on its batch, and the step is stable in low dimension where a
    per-particle `|z| / |s|` is heavy-tailed). One jitted `lax.scan`, particles in `vmap`.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`.
    - `x_init`: `(n, *shape)` particles at `sigma_max`, typically `sigma_max * N(0, I)`.
    - `key`: PRNG key.
    - `sigma_max`, `sigma_min`: the first and last noise levels.
    - `n_steps`: the number of predictor steps.
    - `n_corrector`: Langevin corrector steps after each predictor step (0: predictor only).
    - `snr`: the corrector's signal-to-noise ratio `r` (0.16 in Song et al. for VE models).
    - `denoise`: finish with a Tweedie denoising step `x + sigma_min^2 s(x, sigma_min)`.
    - `trajectory_every`: also return the particles every this many predictor steps.
    - `return_info`: also return a dict `info` with `info["nfe"]` (`n_steps * (1 + n_corrector)`
      + `denoise` score evaluations per particle) and `info["trajectory_sigmas"]`.

    **Returns:** as `reverse_sde`.
    """
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, (int, np.integer)) or n_corrector < 0:
        raise ValueError(f"`n_corrector` must be a non-negative integer, got {n_corrector!r}.")
    if n_corrector:
        check_positive("snr", snr)
    return _run_reverse(score_fn, x_init, key, sigma_max, sigma_min, n_steps, int(n_corrector), snr,
                        denoise, trajectory_every, return_info, "reverse_diffusion")
