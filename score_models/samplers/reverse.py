"""Samplers of the reverse-time VE SDE: Euler-Maruyama (`reverse_sde`) and predictor-corrector.

Both follow the library's convention: `score_fn(x, sigma)` scores ONE example, particles are
`(n, *shape)`, every step of every particle runs in one jitted `lax.scan` with `vmap` over
particles, and they return a `SamplerResult`. The noise schedule is the `VESDE`'s: `sigma_k =
sigma(t_k)` on the uniform grid `t_k = 1 - k / n_steps`, geometric from `sigma_max` down to
`sigma_min`.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import (
    as_real_scalar,
    check_bool,
    check_key,
    check_nonnegative_int,
    check_particles,
    check_positive,
    check_positive_int,
    check_score_fn,
    check_sigma_range,
    check_size,
    check_trajectory_every,
)
from ..sde import VESDE
from ._scan import scan_with_trajectory, tweedie_step
from .result import SamplerResult, finish, frame_sigmas

__all__ = ["predictor_corrector", "reverse_sde"]


@eqx.filter_jit
def _reverse_kernel(score_fn, x_init, key, sigmas, variances, n_corrector, snr, trajectory_every,
                    denoise):
    """One jitted scan over steps `k`: the move from `sigmas[k]` to `sigmas[k + 1]`,

        x <- x + v_k s(x, sigmas[k]) + sqrt(v_k) z,

    followed by `n_corrector` Langevin steps at `sigmas[k + 1]` with the step size of Song et
    al. (2021, Algorithm 4): `eps = 2 (snr ||z|| / ||s||)^2`, norms averaged over the batch.
    Returns `(x, trajectory, x before the Tweedie step)`.
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
    before = x
    if denoise:
        x, trajectory = tweedie_step(batched_score, x, sigmas[-1], trajectory)
    return x, trajectory, before


def _run_reverse(sampler: str, score_fn, x_init, key, *, sigma_max, sigma_min, n_steps, n_corrector,
                 snr, denoise, trajectory_every, throw, exact_variance: bool) -> SamplerResult:
    x_init = check_particles("x_init", x_init)
    check_key("key", key)
    dtype = x_init.dtype
    check_sigma_range(sigma_max, sigma_min, dtype)
    n_steps = check_positive_int("n_steps", n_steps)
    check_size("n_steps", n_steps * (1 + n_corrector), 16)
    every = check_trajectory_every(trajectory_every, n_steps)
    denoise = check_bool("denoise", denoise)
    throw = check_bool("throw", throw)
    check_score_fn(score_fn, x_init, conditional=True)
    sde = VESDE(sigma_min, sigma_max)
    t = jnp.linspace(1.0, 0.0, n_steps + 1)
    sigmas = sde.sigma(t)
    if exact_variance:  # reverse diffusion: the variance the forward process adds over the step
        variances = sigmas[:-1] ** 2 - sigmas[1:] ** 2
    else:  # Euler-Maruyama: g(t_k)^2 dt = 2 log(sigma_max / sigma_min) sigma_k^2 / n_steps
        variances = sde.diffusion(t[:-1]) ** 2 / n_steps
    sigmas, variances = sigmas.astype(dtype), variances.astype(dtype)
    x, trajectory, before = _reverse_kernel(score_fn, x_init, key, sigmas, variances, n_corrector,
                                            jnp.asarray(snr, dtype), every, denoise)
    traj_sigmas = None if every is None else frame_sigmas(sigmas[1:], sigmas[0], every, denoise, dtype)
    hint = "more `n_steps`" + (" or a smaller `snr`" if n_corrector else "")
    return finish(sampler, x, trajectory=trajectory, trajectory_sigmas=traj_sigmas,
                  before=before if denoise else None,
                  score_evals=n_steps * (1 + n_corrector) + int(denoise), throw=throw, hint=hint)


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
    throw: bool = True,
) -> SamplerResult:
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
    - `trajectory_every`: also keep the particles every this many steps.
    - `throw`: raise a `FloatingPointError` when particles diverge (NaN or inf); with False the
      result reports them in `n_diverged`.

    **Returns:** a `SamplerResult`: `samples` `(n, *shape)`; `trajectory` of shape
    `(n_steps // trajectory_every + 1 [+ 1 if denoise], n, *shape)` starting with `x_init`, and
    `trajectory_sigmas` (the noise level of each frame, 0 for the denoised one);
    `score_evals = n_steps [+ 1]`.
    """
    return _run_reverse("reverse_sde", score_fn, x_init, key, sigma_max=sigma_max, sigma_min=sigma_min,
                        n_steps=n_steps, n_corrector=0, snr=0.0, denoise=denoise,
                        trajectory_every=trajectory_every, throw=throw, exact_variance=False)


def predictor_corrector(
    score_fn: Callable,
    x_init: Float[Array, "n *shape"],
    key: PRNGKeyArray,
    *,
    sigma_max: float,
    sigma_min: float,
    n_steps: int,
    n_corrector: int = 1,
    snr: float | None = None,
    denoise: bool = False,
    trajectory_every: int | None = None,
    throw: bool = True,
) -> SamplerResult:
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
    - `snr`: the corrector's signal-to-noise ratio `r`; default 0.16, Song et al.'s value for
      VE models. Refused with `n_corrector=0`, which has no corrector to use it.
    - `denoise`: finish with a Tweedie denoising step `x + sigma_min^2 s(x, sigma_min)`.
    - `trajectory_every`: also keep the particles every this many predictor steps.
    - `throw`: raise a `FloatingPointError` when particles diverge (NaN or inf); with False the
      result reports them in `n_diverged`.

    **Returns:** as `reverse_sde`, with `score_evals = n_steps * (1 + n_corrector) [+ 1]`.
    """
    n_corrector = check_nonnegative_int("n_corrector", n_corrector)
    if n_corrector:
        snr = 0.16 if snr is None else as_real_scalar("snr", snr)
        check_positive("snr", snr)
    elif snr is not None:
        raise ValueError(f"`snr` ({snr!r}) has no use with n_corrector=0 (no corrector steps).")
    return _run_reverse("predictor_corrector", score_fn, x_init, key, sigma_max=sigma_max,
                        sigma_min=sigma_min, n_steps=n_steps, n_corrector=n_corrector,
                        snr=snr if n_corrector else 0.0, denoise=denoise,
                        trajectory_every=trajectory_every, throw=throw, exact_variance=True)
