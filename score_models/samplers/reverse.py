"""Samplers of the reverse-time SDE: Euler-Maruyama (`reverse_sde`) and predictor-corrector.

Both follow the library's convention: `score_fn(x, sigma)` scores ONE example, particles are
`(n, *shape)`, every step of every particle runs in one jitted `lax.scan` with `vmap` over
particles, and they return a `SamplerResult`. The SDE is the VE SDE of the noise range by
default, or any `sm.SDE` (`sde=sm.VPSDE()`): the grid is uniform in the SDE's time between
`t(sigma_max)` and `t(sigma_min)`, `t_k` for `k = 0..n_steps`, with noise levels `sigma_k =
sigma(t_k)` (geometric for the VE SDE). The particles live in the SDE's coordinates (scaled by
`s(t)`), and `score_fn` is turned into the score of the SDE's marginal by `SDE.score`.
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
from ..sde import SDE, VESDE, sampling_times
from ._scan import scan_with_trajectory, tweedie_step
from .result import SamplerResult, finish, frame_sigmas

__all__ = ["predictor_corrector", "reverse_sde"]


@eqx.filter_jit
def _reverse_kernel(score_fn, x_init, key, sigmas, variances, n_corrector, snr, trajectory_every,
                    denoise, scaled=None):
    """One jitted scan over steps `k`: the move from `sigmas[k]` to `sigmas[k + 1]`,

        x <- x + v_k s(x, sigmas[k]) + sqrt(v_k) z                       (VE, `scaled` None)
        x <- c_k x + v_k S_k(x) + sqrt(w_k) z,  S_k(x) = s(x / a_k, sigmas[k]) / a_k   (scaled)

    where `scaled = (c, a, w)` holds, per step, the multiplier `c_k` of the particles, the scale
    `a_k` of the state at `sigmas[k]` (with one more entry, the scale at the last level) and
    the noise variance `w_k`. Each move is followed by `n_corrector` Langevin steps at
    `sigmas[k + 1]` with the step size of Song et al. (2021, Algorithm 4): `eps = 2 (snr ||z|| /
    ||s||)^2`, norms averaged over the batch. Returns `(x, trajectory, x before the Tweedie
    step)`; Tweedie's step returns the data's coordinates, `x / a + sigma^2 s(x / a, sigma)`.
    """
    batched_score = jax.vmap(score_fn, in_axes=(0, None))
    n_dims = tuple(range(1, x_init.ndim))

    def marginal_score(x, sigma, a):  # the score of the SDE's marginal, in its coordinates
        return batched_score(x / a, sigma) / a

    def corrector(x, inputs):
        sigma, a, k = inputs
        grad = batched_score(x, sigma) if scaled is None else marginal_score(x, sigma, a)
        z = jax.random.normal(k, x.shape, x.dtype)
        grad_norm = jnp.mean(jnp.sqrt(jnp.sum(grad**2, axis=n_dims)))
        noise_norm = jnp.mean(jnp.sqrt(jnp.sum(z**2, axis=n_dims)))
        eps = 2 * (snr * noise_norm / jnp.maximum(grad_norm, jnp.finfo(x.dtype).tiny)) ** 2
        return x + eps * grad + jnp.sqrt(2 * eps) * z, None

    def step(x, inputs):
        sigma, sigma_next, v, k, coefficients = inputs
        k_pred, k_corr = jax.random.split(k)
        z = jax.random.normal(k_pred, x.shape, x.dtype)
        if scaled is None:
            x = x + v * batched_score(x, sigma) + jnp.sqrt(v) * z
            a_next = jnp.ones((), x.dtype)  # (unused)
        else:
            c, a, a_next, w = coefficients
            x = c * x + v * marginal_score(x, sigma, a) + jnp.sqrt(w) * z
        if n_corrector:
            corr_inputs = (jnp.full((n_corrector,), sigma_next), jnp.full((n_corrector,), a_next),
                           jax.random.split(k_corr, n_corrector))
            x, _ = jax.lax.scan(corrector, x, corr_inputs)
        return x, None

    n_steps = variances.shape[0]
    if scaled is None:
        coefficients = None
    else:
        c, a, w = scaled
        coefficients = (c, a[:-1], a[1:], w)
    inputs = (sigmas[:-1], sigmas[1:], variances, jax.random.split(key, n_steps), coefficients)
    x, trajectory = scan_with_trajectory(step, x_init, inputs, trajectory_every)
    before = x
    if denoise:
        if scaled is None:
            x, trajectory = tweedie_step(batched_score, x, sigmas[-1], trajectory)
        else:
            a_last = scaled[1][-1]
            x, trajectory = tweedie_step(batched_score, x / a_last, sigmas[-1], trajectory)
    return x, trajectory, before


PREDICTORS = ("reverse_diffusion", "ancestral")


def _coefficients(sde: SDE, t, sigmas, dt, predictor: str):
    """The per-step `(c, a, w)` and `v` of a scaled step `x <- c x + v S(x) + sqrt(w) z` (see
    `_reverse_kernel`), from the SDE's scale `a_k` at each level and the exact transition of
    the forward process from `sigmas[k + 1]` up to `sigmas[k]`, `x_k = r_k x_{k+1} + sqrt(b_k) z`
    with `r_k = a_k / a_{k+1}` and `b_k = a_k^2 (sigma_k^2 - sigma_{k+1}^2)`."""
    a = sde.scale_at(sigmas)
    if predictor == "euler_maruyama":  # x - f dt + g^2 dt S + g sqrt(dt) z
        rate = sde.drift(jnp.ones((), sigmas.dtype), t[:-1])
        v = sde.diffusion(t[:-1]) ** 2 * dt
        return (1 - rate * dt, a, v), v
    r = a[:-1] / a[1:]
    b = a[:-1] ** 2 * (sigmas[:-1] ** 2 - sigmas[1:] ** 2)
    if predictor == "reverse_diffusion":  # Song et al. (2021): reverse the discretised forward step
        return (2 - r, a, b), b
    # ancestral (DDPM's sampler for the VP SDE): the posterior of x_{k+1} given x_k and the
    # denoised mean, with mean (x + b S) / r and variance b (a_{k+1} sigma_{k+1})^2 / (a_k sigma_k)^2
    w = b * (a[1:] * sigmas[1:]) ** 2 / (a[:-1] * sigmas[:-1]) ** 2
    return (1 / r, a, w), b / r


def _run_reverse(sampler: str, score_fn, x_init, key, *, sigma_max, sigma_min, n_steps, n_corrector,
                 snr, denoise, trajectory_every, throw, predictor: str, sde: SDE | None) -> SamplerResult:
    x_init = check_particles("x_init", x_init)
    check_key("key", key)
    dtype = x_init.dtype
    check_sigma_range(sigma_max, sigma_min, dtype)
    n_steps = check_positive_int("n_steps", n_steps)
    check_size("n_steps", n_steps * (1 + n_corrector), 16)
    every = check_trajectory_every(trajectory_every, n_steps)
    denoise = check_bool("denoise", denoise)
    throw = check_bool("throw", throw)
    if sde is None:  # the VE SDE of the range: t from 1 to 0
        sde = VESDE(sigma_min, sigma_max)
        t = jnp.linspace(1.0, 0.0, n_steps + 1)
        sigmas = sde.sigma(t)
        dt = None
    else:
        t_max, t_min = sampling_times(sde, sigma_max, sigma_min)
        t = jnp.linspace(t_max, t_min, n_steps + 1)
        sigmas = sde.sigma(t).at[0].set(sigma_max).at[-1].set(sigma_min)
        dt = (t_max - t_min) / n_steps
    check_score_fn(score_fn, x_init, conditional=True)
    scaled = None
    if isinstance(sde, VESDE) and predictor != "ancestral":
        if predictor == "reverse_diffusion":  # the variance the forward process adds over the step
            variances = sigmas[:-1] ** 2 - sigmas[1:] ** 2
        elif dt is None:  # Euler-Maruyama: g(t_k)^2 dt = 2 log(sigma_max / sigma_min) sigma_k^2 / n_steps
            variances = sde.diffusion(t[:-1]) ** 2 / n_steps
        else:
            variances = sde.diffusion(t[:-1]) ** 2 * dt
    else:
        scaled, variances = _coefficients(sde, t, sigmas, 1.0 / n_steps if dt is None else dt, predictor)
        scaled = tuple(c.astype(dtype) for c in scaled)
    sigmas, variances = sigmas.astype(dtype), variances.astype(dtype)
    x, trajectory, before = _reverse_kernel(score_fn, x_init, key, sigmas, variances, n_corrector,
                                            jnp.asarray(snr, dtype), every, denoise, scaled)
    traj_sigmas = None if every is None else frame_sigmas(sigmas[1:], sigmas[0], every, denoise, dtype)
    hint = "more `n_steps`" + (", a smaller `snr`, or a score that is not zero where the particles are "
                               "(the corrector's step 2 (snr ||z|| / ||score||)^2 is infinite for a zero score)"
                               if n_corrector else "")
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
    sde: SDE | None = None,
    denoise: bool = False,
    trajectory_every: int | None = None,
    throw: bool = True,
) -> SamplerResult:
    """Samples by the reverse-time SDE with Euler-Maruyama steps.

    On the uniform grid `t_k` of the SDE's time from `t(sigma_max)` down to `t(sigma_min)`
    (`sigma_k = sigma(t_k)`; `dt = t_k - t_{k+1}`), each step is

        x <- x - f(x, t_k) dt + g(t_k)^2 dt S_k(x) + g(t_k) sqrt(dt) z,

    where `S_k(x) = score_fn(x / s_k, sigma_k) / s_k` is the score of the SDE's marginal at
    `t_k` (`SDE.score`). For the default VE SDE of the range (`t_k = 1 - k / n_steps`, a
    geometric schedule, `f = 0`, `s = 1`) this is

        x <- x + g(t_k)^2 dt s(x, sigma_k) + g(t_k) sqrt(dt) z,    dt = 1 / n_steps,

    with `g(t)^2 dt = 2 log(sigma_max / sigma_min) sigma_k^2 dt`. All steps run in one jitted
    `lax.scan`, particles in `vmap`. The particles end at noise level `sigma_min`; `denoise`
    adds Tweedie's step, which returns the data's coordinates: `x / s + sigma_min^2 s(x / s,
    sigma_min)` (`x + sigma_min^2 s(x, sigma_min)` for the VE SDE).

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`: the score of
      the data perturbed at `sigma`, whatever the SDE.
    - `x_init`: `(n, *shape)` particles at `sigma_max` in the SDE's coordinates, typically
      `sigma_max * N(0, I)` for the VE SDE, `sde.prior_sample(key, shape, sigma_max)` in general.
    - `key`: PRNG key.
    - `sigma_max`, `sigma_min`: the noise levels at the start and the end.
    - `n_steps`: the number of steps (= score evaluations).
    - `sde`: the forward SDE whose reversal is integrated: None (default) for the VE SDE of
      `[sigma_min, sigma_max]`, or an `sm.SDE` (e.g. `sm.VPSDE()`) whose range holds both levels.
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
                        trajectory_every=trajectory_every, throw=throw, predictor="euler_maruyama", sde=sde)


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
    sde: SDE | None = None,
    predictor: str = "reverse_diffusion",
    denoise: bool = False,
    trajectory_every: int | None = None,
    throw: bool = True,
) -> SamplerResult:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2 to 4); with the VP SDE,
    `n_corrector=0` and `predictor="ancestral"`, DDPM's sampler (Ho et al. 2020, Algorithm 2).

    On the grid `sigma_0 = sigma_max > ... > sigma_N = sigma_min` (`N = n_steps`) uniform in the
    SDE's time (geometric for the default VE SDE), the forward process moves from level `k + 1`
    up to `k` by `x_k = r_k x_{k+1} + sqrt(b_k) z`, with `r_k = s_k / s_{k+1}` and `b_k = s_k^2
    (sigma_k^2 - sigma_{k+1}^2)` (`s` the SDE's scale; for the VE SDE `r = 1`, `b_k = sigma_k^2 -
    sigma_{k+1}^2`). Each step is a predictor that reverses it, with `S_k` the score of the
    SDE's marginal at level `k` (`SDE.score`):

    - `"reverse_diffusion"` (default): `x <- (2 - r_k) x + b_k S_k(x) + sqrt(b_k) z`; for the VE
      SDE, `x <- x + (sigma_k^2 - sigma_{k+1}^2) s(x, sigma_k) + sqrt(sigma_k^2 - sigma_{k+1}^2) z`;
    - `"ancestral"`: `x <- (x + b_k S_k(x)) / r_k + sqrt(b_k v_{k+1} / v_k) z` with `v_k = (s_k
      sigma_k)^2` the variance of the noise in `x` at level `k`: a draw from the Gaussian
      posterior of the less noisy level given `x` and its denoised estimate. For the VP SDE
      `r_k^2 = 1 - beta_k` and `b_k = beta_k`: DDPM's step.

    followed by `n_corrector` Langevin corrector steps at `sigma_{k+1}`,

        x <- x + eps S_{k+1}(x) + sqrt(2 eps) z,    eps = 2 (snr ||z|| / ||S_{k+1}||)^2,

    where, as in the reference implementation, the norms are averaged over the batch (so a
    particle's path depends on its batch, and the step is stable in low dimension where a
    per-particle `|z| / |s|` is heavy-tailed). One jitted `lax.scan`, particles in `vmap`.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`: the score of
      the data perturbed at `sigma`, whatever the SDE.
    - `x_init`: `(n, *shape)` particles at `sigma_max` in the SDE's coordinates, typically
      `sigma_max * N(0, I)` for the VE SDE, `sde.prior_sample(key, shape, sigma_max)` in general.
    - `key`: PRNG key.
    - `sigma_max`, `sigma_min`: the first and last noise levels.
    - `n_steps`: the number of predictor steps.
    - `n_corrector`: Langevin corrector steps after each predictor step (0: predictor only).
    - `snr`: the corrector's signal-to-noise ratio `r`; default 0.16, Song et al.'s value for
      VE models. Refused with `n_corrector=0`, which has no corrector to use it.
    - `sde`: None (default) for the VE SDE of `[sigma_min, sigma_max]`, or an `sm.SDE` (e.g.
      `sm.VPSDE()`) whose range holds both levels.
    - `predictor`: `"reverse_diffusion"` or `"ancestral"`.
    - `denoise`: finish with a Tweedie denoising step, which returns the data's coordinates,
      `x / s + sigma_min^2 s(x / s, sigma_min)` (`x + sigma_min^2 s(x, sigma_min)` for the VE SDE).
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
    if predictor not in PREDICTORS:
        raise ValueError(f"`predictor` must be one of {PREDICTORS}, got {predictor!r}.")
    return _run_reverse("predictor_corrector", score_fn, x_init, key, sigma_max=sigma_max,
                        sigma_min=sigma_min, n_steps=n_steps, n_corrector=n_corrector,
                        snr=snr if n_corrector else 0.0, denoise=denoise,
                        trajectory_every=trajectory_every, throw=throw, predictor=predictor, sde=sde)
