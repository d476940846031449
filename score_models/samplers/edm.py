"""Few-step deterministic (and stochastic) sampling in the noise level: Euler (DDIM) and Heun on
the schedule of Karras et al. (2022, "EDM").

The probability-flow ODE in the noise level, `dx/dsigma = -sigma score(x, sigma)` (chapter 5),
is integrated on a fixed, decreasing grid `sigma_0 > ... > sigma_N`, usually `edm_sigmas`,
which ends at `sigma_N = 0`. With the denoiser `D(x, sigma) = x + sigma^2 score(x, sigma)`
the slope is `d = (x - D) / sigma = -sigma score`:

- Euler: `x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i`, one score evaluation per step. In this
  parametrisation (no scaling of the state, time = sigma) it is DDIM with `eta = 0` (Song,
  Meng & Ermon 2021, eq. 14), written in `x / sqrt(alpha_bar)` and `sigma = sqrt(1 /
  alpha_bar - 1)`.
- Heun (EDM's Algorithm 1): an Euler step, then the trapezoidal correction with the slope at
  its end, two evaluations per step, except the last step to `sigma = 0`, which stays an
  Euler step. So a schedule of `N` positive levels and a final 0 costs `2 N - 1` evaluations.

The last Euler step to `sigma = 0` is Tweedie's denoising step `x + sigma_{N-1}^2 score`.

With `churn > 0` each step first adds noise, raising the level from `sigma_i` to `sigma_hat =
(1 + gamma) sigma_i` (EDM's Algorithm 2): a Langevin-like correction that forgets the errors
of earlier steps, at the price of randomness.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import (
    as_float_array,
    as_real_scalar,
    check_bool,
    check_key,
    check_noise_level,
    check_particles,
    check_positive_int,
    check_score_fn,
    check_sigmas,
    check_trajectory_every,
    is_concrete,
)
from .result import SamplerResult, finish, frame_sigmas

__all__ = ["edm_sampler", "edm_sigmas"]

METHODS = ("euler", "heun")


def edm_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Float[Array, " n+1"]:
    """The noise levels of Karras et al. (2022, eq. 5): `n` levels from `sigma_max` down to
    `sigma_min`, equally spaced in `sigma^(1 / rho)`, then a final 0.

        sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho

    for `i = 0..n-1`, and `sigma_n = 0`. `rho = 1` is uniform in sigma; `rho -> infinity`
    geometric; EDM's `rho = 7` spends more steps at small sigma, where the probability-flow ODE
    curves most. With `edm_sampler(method="heun")` the schedule costs `2 n - 1` score
    evaluations (EDM's CIFAR-10 setting, `n = 18`, is 35).

    **Arguments:**

    - `n`: the number of positive levels (`n >= 2`; `n = 1` gives `[sigma_max, 0]`).
    - `sigma_min`, `sigma_max`: the smallest and largest positive levels.
    - `rho`: the schedule's exponent (positive).

    **Returns:** a descending float32 array of shape `(n + 1,)` whose last entry is 0.
    """
    n = check_positive_int("n", n)
    sigma_max = check_noise_level("sigma_max", sigma_max, jnp.float32)
    sigma_min = check_noise_level("sigma_min", sigma_min, jnp.float32)
    rho = as_real_scalar("rho", rho)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"`rho` must be positive and finite, got {rho}.")
    if n > 1 and not sigma_min < sigma_max:
        raise ValueError(f"`sigma_min` must be smaller than `sigma_max`, got sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}.")
    i = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    levels = (hi + i * (lo - hi)) ** rho
    levels[0] = sigma_max
    if n > 1:
        levels[-1] = sigma_min
    try:
        check_sigmas("edm_sigmas", jnp.asarray(levels, jnp.float32))
    except ValueError as e:
        raise ValueError(f"The {n} levels from `sigma_max`={sigma_max} to `sigma_min`={sigma_min} are not "
                         f"distinct in float32: use fewer levels, a wider range or another `rho`.") from e
    return jnp.asarray(np.concatenate([levels, [0.0]]), jnp.float32)


def _check_schedule(sigmas, dtype) -> tuple[Array, bool]:
    """A descending schedule of at least two levels, positive except a possible final 0.
    Returns it in `dtype` and whether it ends at 0 (None when traced)."""
    sigmas = as_float_array("sigmas", sigmas, ndim=1).astype(dtype)
    if not is_concrete(sigmas):
        return sigmas, None
    if sigmas.shape[0] < 2:
        raise ValueError(f"`sigmas` must hold at least two levels (one step), got {sigmas.shape[0]}.")
    ends_at_zero = float(sigmas[-1]) == 0.0
    check_sigmas("sigmas", sigmas[:-1] if ends_at_zero else sigmas, dtype)
    if ends_at_zero and not float(sigmas[-2]) > 0:
        raise ValueError("`sigmas` must be strictly decreasing, with only its last level 0.")
    return sigmas, ends_at_zero


def _scan(step, x0, inputs, every):
    """`x <- step(x, inputs[k])` for every `k` in one `lax.scan`; returns `(x, x before the last
    step, trajectory)`, the trajectory (None without `every`) being `x0` and `x` after every
    `every` steps."""

    def body(carry, step_inputs):
        x, _ = carry
        return (step(x, step_inputs), x), None

    if every is None:
        (x, before), _ = jax.lax.scan(body, (x0, x0), inputs)
        return x, before, None
    blocks = jax.tree.map(lambda a: a.reshape(-1, every, *a.shape[1:]), inputs)

    def block(carry, block_inputs):
        carry, _ = jax.lax.scan(body, carry, block_inputs)
        return carry, carry[0]

    (x, before), frames = jax.lax.scan(block, (x0, x0), blocks)
    return x, before, jnp.concatenate([x0[None], frames])


@eqx.filter_jit
def _edm_kernel(score_fn, x_init, sigmas, gammas, keys, churn_noise, heun: bool, every):
    """One jitted scan over the steps `sigmas[i] -> sigmas[i + 1]` (EDM's Algorithms 1 and 2 in
    the score's terms: `d = -sigma score(x, sigma)`). The Heun correction is skipped, by a
    `lax.cond` on the (unbatched) next level, when that level is 0."""
    batched_score = jax.vmap(score_fn, in_axes=(0, None))

    def step(x, inputs):
        sigma, sigma_next, gamma, key = inputs
        if keys is None:
            sigma_hat = sigma
        else:  # churn: raise the noise level from sigma to sigma_hat
            sigma_hat = sigma * (1 + gamma)
            z = jax.random.normal(key, x.shape, x.dtype)
            x = x + jnp.sqrt(sigma_hat**2 - sigma**2) * churn_noise * z
        d = -sigma_hat * batched_score(x, sigma_hat)
        x_next = x + (sigma_next - sigma_hat) * d
        if heun:
            def correct(x_euler):
                d_next = -sigma_next * batched_score(x_euler, sigma_next)
                return x + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)

            x_next = jax.lax.cond(sigma_next > 0, correct, lambda x_euler: x_euler, x_next)
        return x_next

    n_steps = sigmas.shape[0] - 1
    step_keys = jnp.zeros((n_steps,), x_init.dtype) if keys is None else keys
    inputs = (sigmas[:-1], sigmas[1:], gammas, step_keys)
    return _scan(step, x_init, inputs, every)


def edm_sampler(
    score_fn: Callable,
    x_init: Float[Array, "n *shape"],
    sigmas: Float[Array, " N+1"],
    key: PRNGKeyArray | None = None,
    *,
    method: Literal["euler", "heun"] = "heun",
    churn: float = 0.0,
    churn_min: float | None = None,
    churn_max: float | None = None,
    churn_noise: float | None = None,
    trajectory_every: int | None = None,
    throw: bool = True,
) -> SamplerResult:
    """Integrates the probability-flow ODE `dx/dsigma = -sigma score_fn(x, sigma)` on the fixed
    grid `sigmas` by Euler's or Heun's method (Karras et al. 2022, Algorithm 1), optionally
    with stochastic churn (their Algorithm 2).

    Each step `i` goes from `sigmas[i]` to `sigmas[i + 1]` with the slope `d = -sigma score(x,
    sigma)` (= `(x - D(x, sigma)) / sigma` for the denoiser `D = x + sigma^2 score`):

    - `method="euler"`: `x <- x + (sigma_{i+1} - sigma_i) d(x, sigma_i)`. This is DDIM (Song et
      al. 2021, "Denoising diffusion implicit models", `eta = 0`) in the sigma parametrisation:
      DDIM's update of `x_t / sqrt(alpha_bar_t)` with `sigma = sqrt(1 / alpha_bar - 1)` is this
      step, so DDIM's `alpha_bar` schedule is a grid of `sigmas` here.
    - `method="heun"` (default): the Euler step to `x'`, then `x <- x + (sigma_{i+1} - sigma_i)
      (d(x, sigma_i) + d(x', sigma_{i+1})) / 2`, except on a step to `sigma = 0`, which stays an
      Euler step (`d` at 0 is undefined) and is Tweedie's denoising step.
    - `churn > 0`: before each step with `churn_min <= sigma_i <= churn_max`, add noise to raise
      the level to `sigma_hat = (1 + gamma) sigma_i`, `x <- x + sqrt(sigma_hat^2 - sigma_i^2)
      churn_noise z`, with `gamma = min(churn / N, sqrt(2) - 1)` (`N` steps), and step from
      `sigma_hat`. (EDM's `S_churn`, `S_tmin`, `S_tmax`, `S_noise`.)

    All steps run in one jitted `lax.scan`, particles in `vmap`; the schedule is traced, so
    schedules of one length share a compilation.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` for ONE example `x` of shape `(*shape)`.
    - `x_init`: `(n, *shape)` particles at `sigmas[0]`, typically `sigmas[0] * N(0, I)`.
    - `sigmas`: `(N + 1,)` strictly decreasing noise levels, all positive except possibly the
      last, which may be 0 (`edm_sigmas` ends with 0).
    - `key`: PRNG key of the churn noise: required with `churn > 0`, refused without.
    - `method`: `"heun"` or `"euler"`.
    - `churn`: EDM's `S_churn` (non-negative); 0 is the deterministic sampler.
    - `churn_min`, `churn_max`: the range of levels that get churn (default 0 and infinity).
    - `churn_noise`: the std of the added noise relative to the exact one (default 1; EDM uses
      slightly above 1 to offset the denoiser's tendency to remove too much noise).
    - `trajectory_every`: also keep the particles every this many steps (must divide `N`).
    - `throw`: raise a `FloatingPointError` when particles diverge (NaN or inf); with False the
      result reports them in `n_diverged`.

    **Returns:** a `SamplerResult`: `samples` `(n, *shape)` at `sigmas[-1]`;
    `samples_before_denoise` the particles at `sigmas[-2]` when the schedule ends at 0 (the
    last step is then Tweedie's), else None; `trajectory` `(N // trajectory_every + 1, n,
    *shape)` starting with `x_init` and `trajectory_sigmas` (the level of each frame);
    `score_evals`: `N` (Euler), `2 N` (Heun), `2 N - 1` (Heun to 0).
    """
    x_init = check_particles("x_init", x_init)
    dtype = x_init.dtype
    sigmas, ends_at_zero = _check_schedule(sigmas, dtype)
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    churn = as_real_scalar("churn", churn)
    if is_concrete(churn) and not (math.isfinite(churn) and churn >= 0):
        raise ValueError(f"`churn` must be non-negative and finite, got {churn}.")
    if churn == 0:
        for name, value in (("key", key), ("churn_min", churn_min), ("churn_max", churn_max),
                            ("churn_noise", churn_noise)):
            if value is not None:
                raise ValueError(f"`{name}` has no use with churn=0 (the deterministic sampler).")
    else:
        if key is None:
            raise ValueError("`key` is required with churn > 0 (the churn adds noise).")
        check_key("key", key)
        churn_min = 0.0 if churn_min is None else as_real_scalar("churn_min", churn_min)
        churn_max = math.inf if churn_max is None else as_real_scalar("churn_max", churn_max)
        churn_noise = 1.0 if churn_noise is None else as_real_scalar("churn_noise", churn_noise)
        if not (churn_min >= 0 and churn_max >= churn_min):
            raise ValueError(f"`churn_min` and `churn_max` must satisfy 0 <= churn_min <= churn_max, got "
                             f"{churn_min} and {churn_max}.")
        if not (math.isfinite(churn_noise) and churn_noise > 0):
            raise ValueError(f"`churn_noise` must be positive and finite, got {churn_noise}.")
    n_steps = sigmas.shape[0] - 1
    every = check_trajectory_every(trajectory_every, n_steps)
    throw = check_bool("throw", throw)
    check_score_fn(score_fn, x_init, conditional=True)
    if churn == 0:
        gammas, keys, noise = jnp.zeros((n_steps,), dtype), None, None
    else:
        in_range = (sigmas[:-1] >= churn_min) & (sigmas[:-1] <= churn_max)
        gammas = jnp.where(in_range, min(churn / n_steps, math.sqrt(2) - 1), 0.0).astype(dtype)
        keys, noise = jax.random.split(key, n_steps), jnp.asarray(churn_noise, dtype)
    heun = method == "heun"
    x, before, trajectory = _edm_kernel(score_fn, x_init, sigmas, gammas, keys, noise, heun, every)
    if heun:
        evals = n_steps + (jnp.sum(sigmas[1:] > 0) if ends_at_zero is None else n_steps - int(ends_at_zero))
    else:
        evals = n_steps
    traj_sigmas = None if every is None else frame_sigmas(sigmas[1:], sigmas[0], every, False, dtype)
    return finish("edm_sampler", x, trajectory=trajectory, trajectory_sigmas=traj_sigmas,
                  before=before if ends_at_zero else None, score_evals=evals, throw=throw,
                  hint="more levels in `sigmas`" + (" or less `churn`" if churn else ""))
