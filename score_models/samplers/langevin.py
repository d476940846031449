"""Langevin samplers: plain Langevin dynamics and annealed Langevin dynamics.

Each is one jitted `lax.scan` over steps with `vmap` over particles. Score functions take ONE
example: `score_fn(x)` for plain Langevin, `score_fn(x, sigma)` for annealed Langevin.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_particles, check_positive, check_positive_int, check_sigmas
from ._scan import scan_with_trajectory, tweedie_denoise


def check_score_fn(score_fn: Callable, x0, sigma=None) -> None:
    """Checks (abstractly, without compiling) that `score_fn` maps one example to its shape."""
    if not callable(score_fn):
        raise ValueError(f"`score_fn` must be callable, got {type(score_fn).__name__}.")
    example = jax.ShapeDtypeStruct(x0.shape[1:], x0.dtype)
    args = (example,) if sigma is None else (example, jax.ShapeDtypeStruct((), x0.dtype))
    try:
        out = jax.eval_shape(score_fn, *args)
    except Exception as e:  # report what was passed, then the original error
        raise ValueError(
            f"`score_fn` failed on ONE example of shape {x0.shape[1:]}"
            + ("" if sigma is None else " with a scalar sigma") + f": {e}"
        ) from e
    if getattr(out, "shape", None) != x0.shape[1:]:
        raise ValueError(
            f"`score_fn` must return the shape of one example, {x0.shape[1:]}; got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )


@eqx.filter_jit
def _langevin_kernel(score_fn, x0, key, sigmas, alphas, trajectory_every, conditional, denoise):
    """`x <- x + alpha/2 s(x, sigma) + sqrt(alpha) z`, one step per entry of `sigmas`/`alphas`."""
    if conditional:
        batched_score = jax.vmap(score_fn, in_axes=(0, None))
    else:
        batched_score = lambda x, sigma: jax.vmap(score_fn)(x)  # noqa: E731

    def step(x, inputs):
        sigma, alpha, k = inputs
        z = jax.random.normal(k, x.shape, x.dtype)
        return x + 0.5 * alpha * batched_score(x, sigma) + jnp.sqrt(alpha) * z, None

    inputs = (sigmas, alphas, jax.random.split(key, sigmas.shape[0]))
    x, trajectory = scan_with_trajectory(step, x0, inputs, trajectory_every)
    if denoise:
        x, trajectory = tweedie_denoise(batched_score, x, sigmas[-1], trajectory)
    return x, trajectory


def _check_every(trajectory_every, total: int):
    if trajectory_every is None:
        return None
    every = check_positive_int("trajectory_every", trajectory_every)
    if total % every:
        raise ValueError(f"`trajectory_every` ({every}) must divide the number of steps ({total}).")
    return every


def langevin(
    score_fn: Callable,
    x0: Float[Array, "n *shape"],
    key: PRNGKeyArray,
    *,
    step_size: float,
    n_steps: int,
    trajectory_every: int | None = None,
):
    """Langevin dynamics driven by `score_fn(x)`: `x <- x + step_size/2 s(x) + sqrt(step_size) z`.

    **Arguments:**

    - `score_fn`: the score of ONE example, `(*shape) -> (*shape)`.
    - `x0`: `(n, *shape)` starting particles.
    - `key`: PRNG key.
    - `step_size`: the step `alpha > 0`.
    - `n_steps`: the number of steps.
    - `trajectory_every`: also return the particles every this many steps.

    **Returns:** the final particles `(n, *shape)`; with `trajectory_every`, the pair
    `(x, trajectory)` where `trajectory` has shape `(n_steps // trajectory_every + 1, n, *shape)`
    and starts with `x0`.
    """
    x0 = check_particles("x0", x0)
    check_positive("step_size", step_size)
    n_steps = check_positive_int("n_steps", n_steps)
    every = _check_every(trajectory_every, n_steps)
    check_score_fn(score_fn, x0)
    sigmas = jnp.ones((n_steps,), x0.dtype)
    alphas = jnp.full((n_steps,), step_size, x0.dtype)
    x, trajectory = _langevin_kernel(score_fn, x0, key, sigmas, alphas, every, False, False)
    return x if every is None else (x, trajectory)


def annealed_langevin(
    score_fn: Callable,
    x0: Float[Array, "n *shape"],
    sigmas,
    key: PRNGKeyArray,
    *,
    eps: float,
    n_steps_each: int,
    denoise: bool = False,
    trajectory_every: int | None = None,
):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each noise level `sigma_i` (descending), `n_steps_each` Langevin steps with the
    noise-conditional score `score_fn(x, sigma_i)` and step `alpha_i = eps * sigma_i^2 /
    sigma_L^2`. All levels and steps run in one jitted scan.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score`, for ONE example `x` of shape `(*shape)`.
    - `x0`: `(n, *shape)` starting particles (typically `N(0, sigma_1^2 I)` or uniform).
    - `sigmas`: `(L,)` strictly decreasing noise levels.
    - `key`: PRNG key.
    - `eps`: the step size at the smallest level.
    - `n_steps_each`: Langevin steps per level.
    - `denoise`: finish with one denoising step `x + sigma_L^2 s(x, sigma_L)` (Tweedie), which
      removes the noise of the last level.
    - `trajectory_every`: also return the particles every this many steps.

    **Returns:** the final particles `(n, *shape)`; with `trajectory_every`, the pair
    `(x, trajectory)`, `trajectory` of shape `(L * n_steps_each // trajectory_every + 1
    [+ 1 if denoise], n, *shape)`, starting with `x0`.
    """
    x0 = check_particles("x0", x0)
    sigmas = check_sigmas("sigmas", sigmas).astype(x0.dtype)
    check_positive("eps", eps)
    n_steps_each = check_positive_int("n_steps_each", n_steps_each)
    total = sigmas.shape[0] * n_steps_each
    every = _check_every(trajectory_every, total)
    check_score_fn(score_fn, x0, sigma=True)
    alphas = eps * sigmas**2 / sigmas[-1] ** 2
    per_step_sigmas = jnp.repeat(sigmas, n_steps_each)
    per_step_alphas = jnp.repeat(alphas, n_steps_each)
    x, trajectory = _langevin_kernel(score_fn, x0, key, per_step_sigmas, per_step_alphas, every, True,
                                     bool(denoise))
    return x if every is None else (x, trajectory)
