"""Langevin samplers: plain Langevin dynamics and annealed Langevin dynamics.

Each is one jitted `lax.scan` over steps with `vmap` over particles. Score functions take ONE
example: `score_fn(x)` for plain Langevin, `score_fn(x, sigma)` for annealed Langevin.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import (
    as_real_scalar,
    check_bool,
    check_key,
    check_particles,
    check_positive,
    check_positive_int,
    check_score_fn,
    check_sigmas,
    check_size,
    check_trajectory_every,
    is_concrete,
)
from ._scan import scan_with_trajectory, tweedie_step
from .result import SamplerResult, finish, frame_sigmas

__all__ = ["annealed_langevin", "langevin"]


@eqx.filter_jit
def _langevin_kernel(score_fn, x_init, key, alphas, every):
    """`x <- x + alpha/2 s(x) + sqrt(alpha) z`, one step per entry of `alphas`."""
    batched_score = jax.vmap(score_fn)

    def step(x, inputs):
        alpha, k = inputs
        z = jax.random.normal(k, x.shape, x.dtype)
        return x + 0.5 * alpha * batched_score(x) + jnp.sqrt(alpha) * z, None

    inputs = (alphas, jax.random.split(key, alphas.shape[0]))
    return scan_with_trajectory(step, x_init, inputs, every)


@eqx.filter_jit
def _annealed_kernel(score_fn, x_init, key, sigmas, alphas, every, denoise):
    """`x <- x + alpha/2 s(x, sigma) + sqrt(alpha) z`, one step per entry of `sigmas`/`alphas`;
    then, with `denoise`, Tweedie's step at the last sigma. Returns `(x, trajectory, x before
    the Tweedie step)`."""
    batched_score = jax.vmap(score_fn, in_axes=(0, None))

    def step(x, inputs):
        sigma, alpha, k = inputs
        z = jax.random.normal(k, x.shape, x.dtype)
        return x + 0.5 * alpha * batched_score(x, sigma) + jnp.sqrt(alpha) * z, None

    inputs = (sigmas, alphas, jax.random.split(key, sigmas.shape[0]))
    x, trajectory = scan_with_trajectory(step, x_init, inputs, every)
    before = x
    if denoise:
        x, trajectory = tweedie_step(batched_score, x, sigmas[-1], trajectory)
    return x, trajectory, before


def langevin(
    score_fn: Callable,
    x_init: Float[Array, "n *shape"],
    key: PRNGKeyArray,
    *,
    step_size: float,
    n_steps: int,
    trajectory_every: int | None = None,
    throw: bool = True,
) -> SamplerResult:
    """Langevin dynamics driven by `score_fn(x)`: `x <- x + step_size/2 s(x) + sqrt(step_size) z`.

    **Arguments:**

    - `score_fn`: the score of ONE example, `(*shape) -> (*shape)`.
    - `x_init`: `(n, *shape)` starting particles.
    - `key`: PRNG key.
    - `step_size`: the step `alpha > 0`.
    - `n_steps`: the number of steps.
    - `trajectory_every`: also keep the particles every this many steps (must divide `n_steps`).
    - `throw`: raise a `FloatingPointError` when particles diverge (NaN or inf); with False the
      result reports them in `n_diverged`.

    **Returns:** a `SamplerResult`: `samples` `(n, *shape)`; `trajectory` of shape
    `(n_steps // trajectory_every + 1, n, *shape)` starting with `x_init` (or None);
    `trajectory_sigmas` None (plain Langevin has no noise level); `score_evals = n_steps`.
    """
    x_init = check_particles("x_init", x_init)
    check_key("key", key)
    step_size = as_real_scalar("step_size", step_size)
    check_positive("step_size", step_size, x_init.dtype)
    n_steps = check_positive_int("n_steps", n_steps)
    check_size("n_steps", n_steps, 12)  # a step size and a key per step
    every = check_trajectory_every(trajectory_every, n_steps)
    throw = check_bool("throw", throw)
    check_score_fn(score_fn, x_init, conditional=False)
    alphas = jnp.full((n_steps,), step_size, x_init.dtype)
    x, trajectory = _langevin_kernel(score_fn, x_init, key, alphas, every)
    return finish("langevin", x, trajectory=trajectory, score_evals=n_steps, throw=throw,
                  hint="a smaller `step_size`")


def annealed_langevin(
    score_fn: Callable,
    x_init: Float[Array, "n *shape"],
    sigmas: Float[Array, " L"],
    key: PRNGKeyArray,
    *,
    eps: float,
    n_steps_each: int,
    denoise: bool = False,
    trajectory_every: int | None = None,
    throw: bool = True,
) -> SamplerResult:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each noise level `sigma_i` (descending), `n_steps_each` Langevin steps with the
    noise-conditional score `score_fn(x, sigma_i)` and step `alpha_i = eps * sigma_i^2 /
    sigma_L^2`. All levels and steps run in one jitted scan.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score`, for ONE example `x` of shape `(*shape)`.
    - `x_init`: `(n, *shape)` starting particles (typically `N(0, sigma_1^2 I)` or uniform).
    - `sigmas`: `(L,)` strictly decreasing noise levels.
    - `key`: PRNG key.
    - `eps`: the step size at the smallest level.
    - `n_steps_each`: Langevin steps per level.
    - `denoise`: finish with Tweedie's step `x + sigma_L^2 s(x, sigma_L)` (`tweedie_denoise`),
      which removes the noise of the last level.
    - `trajectory_every`: also keep the particles every this many steps (must divide
      `L * n_steps_each`).
    - `throw`: raise a `FloatingPointError` when particles diverge (NaN or inf); with False the
      result reports them in `n_diverged`.

    **Returns:** a `SamplerResult`: `samples` `(n, *shape)`; `samples_before_denoise` (with
    `denoise`); `trajectory` of shape `(L * n_steps_each // trajectory_every + 1 [+ 1 if
    denoise], n, *shape)` starting with `x_init`, and `trajectory_sigmas` (the level of the last
    step before each frame; `sigma_1` for the start, 0 for the denoised frame);
    `score_evals = L * n_steps_each [+ 1]`.
    """
    x_init = check_particles("x_init", x_init)
    sigmas = check_sigmas("sigmas", sigmas, x_init.dtype)
    check_key("key", key)
    eps = as_real_scalar("eps", eps)
    check_positive("eps", eps, x_init.dtype)
    n_steps_each = check_positive_int("n_steps_each", n_steps_each)
    total = sigmas.shape[0] * n_steps_each
    check_size("n_steps_each", total, 16)  # a level, a step size and a key per step
    every = check_trajectory_every(trajectory_every, total)
    denoise = check_bool("denoise", denoise)
    throw = check_bool("throw", throw)
    check_score_fn(score_fn, x_init, conditional=True)
    per_step_sigmas, per_step_alphas = annealed_step_sizes(eps, sigmas, n_steps_each, x_init.dtype)
    x, trajectory, before = _annealed_kernel(score_fn, x_init, key, per_step_sigmas, per_step_alphas,
                                             every, denoise)
    traj_sigmas = None if every is None else frame_sigmas(per_step_sigmas, sigmas[0], every, denoise,
                                                          x_init.dtype)
    return finish("annealed_langevin", x, trajectory=trajectory, trajectory_sigmas=traj_sigmas,
                  before=before if denoise else None, score_evals=total + int(denoise), throw=throw,
                  hint="a smaller `eps`")


def annealed_step_sizes(eps, sigmas: Array, n_steps_each: int, dtype) -> tuple[Array, Array]:
    """Algorithm 1's schedule, one entry per step: the level `sigma_i` and the step size
    `alpha_i = eps * sigma_i^2 / sigma_L^2`, each repeated `n_steps_each` times. Raises if the
    step sizes overflow `dtype`."""
    alphas = eps * sigmas**2 / sigmas[-1] ** 2
    if is_concrete(alphas) and not np.all(np.isfinite(np.asarray(alphas))):
        raise ValueError(
            f"The step sizes `eps * sigma_i^2 / sigma_L^2` overflow {dtype}: `eps` ({eps}) "
            f"or the range of `sigmas` ({float(sigmas[0])} / {float(sigmas[-1])}) is too large."
        )
    return jnp.repeat(sigmas, n_steps_each), jnp.repeat(alphas, n_steps_each)
