"""Controllable generation: guided scores (classifier and classifier-free guidance) and
inpainting by replacement.

A guided score is a score function like any other, `(x, sigma) -> score` for ONE example, so
every sampler of the library samples with it. `inpaint` is annealed Langevin dynamics whose known
coordinates are reset at every step.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .._checks import (
    as_float_array,
    as_real_scalar,
    check_bool,
    check_callable,
    check_finite,
    check_key,
    check_positive,
    check_positive_int,
    check_score_fn,
    check_sigmas,
    check_size,
    check_trajectory_every,
    is_concrete,
)
from ._scan import scan_with_trajectory, tweedie_step
from .langevin import annealed_step_sizes
from .result import SamplerResult, finish, frame_sigmas

__all__ = ["ClassLogLikelihood", "ClassifierFreeScore", "GuidedScore", "class_log_likelihood",
           "classifier_free_score", "guided_score", "inpaint"]


def _check_scale(scale) -> Array:
    scale = as_real_scalar("scale", scale)
    if is_concrete(scale) and not np.isfinite(scale):
        raise ValueError(f"`scale` must be finite, got {scale}.")
    return jnp.asarray(scale, jnp.float32)


class GuidedScore(eqx.Module):
    """The score function `guided_score` returns: `score_fn(x, sigma) + scale * grad_x
    log_likelihood(x, sigma)`, for ONE example. An equinox module whose `scale` is an array
    leaf, so a sampler compiled for one scale is reused for every other."""

    score_fn: Callable
    log_likelihood: Callable
    scale: Float[Array, ""]

    def __call__(self, x: Float[Array, "*shape"], sigma) -> Float[Array, "*shape"]:
        """The guided score at ONE example `x` and noise level `sigma`."""
        log_lik = jax.eval_shape(lambda x, sigma: self.log_likelihood(x, sigma), x, sigma)
        if getattr(log_lik, "shape", None) != ():
            raise ValueError(
                "`log_likelihood(x, sigma)` must return a scalar (log p_sigma(y | x) for ONE example), "
                f"got shape {getattr(log_lik, 'shape', type(log_lik).__name__)}."
            )
        grad = jax.grad(lambda x: self.log_likelihood(x, sigma))(x)
        return self.score_fn(x, sigma) + self.scale.astype(x.dtype) * grad


def guided_score(score_fn: Callable, log_likelihood: Callable, *, scale: float = 1.0) -> GuidedScore:
    """Classifier guidance: the score of `p_sigma(x | y)` from the score of `p_sigma(x)` and a
    classifier, by Bayes' rule (`p(y)` does not depend on `x`):

        grad_x log p_sigma(x | y) = grad_x log p_sigma(x) + grad_x log p_sigma(y | x).

    Returns the score function `(x, sigma) -> score_fn(x, sigma) + scale * grad_x
    log_likelihood(x, sigma)` for ONE example, where `log_likelihood(x, sigma)` is `log
    p_sigma(y | x)` for a fixed `y`: the log-probability that a classifier of noisy examples
    (trained at every noise level the sampler visits) gives the class `y`. With `scale = 1` and
    the exact posterior this is the exact conditional score; `scale > 1` samples `p_sigma(x)
    p_sigma(y | x)^scale` at each level (Dhariwal & Nichol 2021): purer classes, less diversity.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` of ONE example `x` of any shape.
    - `log_likelihood`: `(x, sigma) -> scalar`, `log p_sigma(y | x)`, differentiable in `x`.
    - `scale`: the guidance scale, a finite real number (0: no guidance).

    **Returns:** a `GuidedScore`, a score function `(x, sigma) -> score` like `score_fn`.
    """
    check_callable("score_fn", score_fn)
    check_callable("log_likelihood", log_likelihood)
    return GuidedScore(score_fn, log_likelihood, _check_scale(scale))


class ClassLogLikelihood(eqx.Module):
    """`(x, sigma) -> log_softmax(classifier(x, sigma))[label]`: the log-likelihood of one class
    under a classifier of noisy examples, for `guided_score`. `label` is an array leaf, so one
    compiled sampler serves every class."""

    classifier: Callable
    label: Int[Array, ""]

    def __call__(self, x: Float[Array, "*shape"], sigma) -> Float[Array, ""]:
        """`log p_sigma(label | x)` at ONE example `x` (NaN for a label beyond the classifier's
        classes, so that a sampler stops with an error instead of guiding to a clamped class)."""
        log_p = jax.nn.log_softmax(self.classifier(x, sigma))
        return jnp.take(log_p, self.label, mode="fill", fill_value=jnp.nan)


def class_log_likelihood(classifier: Callable, label: int) -> ClassLogLikelihood:
    """The `log_likelihood` of class `label` for `guided_score`: `(x, sigma) ->
    log_softmax(classifier(x, sigma))[label]`, where `classifier(x, sigma)` returns the logits
    (or log-probabilities: `log_softmax` leaves those unchanged) of ONE noisy example.

    **Arguments:**

    - `classifier`: `(x, sigma) -> (n_classes,)` logits, e.g. a `NoiseConditionalClassifier`
      or the exact `GaussianMixture.class_log_posterior`.
    - `label`: the class, an integer in `[0, n_classes)` (checked against the classifier's
      `n_classes`, or a mixture's `n_components`, where it has one).
    """
    check_callable("classifier", classifier)
    label_arr = np.asarray(label) if is_concrete(label) else label
    if is_concrete(label) and (label_arr.shape != () or not np.issubdtype(label_arr.dtype, np.integer)
                               or isinstance(label, (bool, np.bool_)) or label_arr < 0):
        raise ValueError(f"`label` must be a non-negative integer, got {label!r}.")
    owner = getattr(classifier, "__self__", classifier)  # a bound method: its module
    n_classes = getattr(owner, "n_classes", getattr(owner, "n_components", None))
    if is_concrete(label) and isinstance(n_classes, int) and label_arr >= n_classes:
        raise ValueError(f"`label` must lie in [0, {n_classes}), the classifier's classes; got {int(label_arr)}.")
    return ClassLogLikelihood(classifier, jnp.asarray(label, jnp.int32))


class ClassifierFreeScore(eqx.Module):
    """The score function `classifier_free_score` returns: `unconditional(x, sigma) + scale *
    (conditional(x, sigma) - unconditional(x, sigma))` for ONE example."""

    conditional: Callable
    unconditional: Callable
    scale: Float[Array, ""]

    def __call__(self, x: Float[Array, "*shape"], sigma) -> Float[Array, "*shape"]:
        """The guided score at ONE example `x` and noise level `sigma`."""
        s_u = self.unconditional(x, sigma)
        return s_u + self.scale.astype(x.dtype) * (self.conditional(x, sigma) - s_u)


def classifier_free_score(conditional: Callable, unconditional: Callable, *,
                          scale: float = 1.0) -> ClassifierFreeScore:
    """Classifier-free guidance (Ho & Salimans 2022): one score model trained with and without
    the label (label dropout) stands in for the classifier, since by Bayes' rule

        grad_x log p_sigma(y | x) = grad_x log p_sigma(x | y) - grad_x log p_sigma(x).

    Returns `(x, sigma) -> s(x, sigma) + scale * (s(x, sigma | y) - s(x, sigma))`, with
    `conditional` the score given `y` and `unconditional` the score without it: the
    `guided_score` of `unconditional` with the implicit classifier, at the same `scale` (1: the
    conditional score itself; Ho & Salimans' `w` is `scale - 1`).

    **Arguments:**

    - `conditional`: `(x, sigma) -> score` given the label, for ONE example.
    - `unconditional`: `(x, sigma) -> score` without it.
    - `scale`: the guidance scale, a finite real number.

    **Returns:** a `ClassifierFreeScore`, a score function `(x, sigma) -> score`.
    """
    check_callable("conditional", conditional)
    check_callable("unconditional", unconditional)
    return ClassifierFreeScore(conditional, unconditional, _check_scale(scale))


# ------------------------------------------------------------------------------------------
# Inpainting


@eqx.filter_jit
def _inpaint_kernel(score_fn, x_init, x_known, mask, key, sigmas, alphas, levels, n_levels, every, denoise):
    """Annealed Langevin steps whose known coordinates (`mask`) are set to `x_known + sigma z_i`
    before and after every step, `z_i` drawn once per level `i`; then the optional Tweedie
    step, and the known coordinates set to `x_known`. Returns `(x, trajectory, x before the
    Tweedie step)`."""
    batched_score = jax.vmap(score_fn, in_axes=(0, None))
    key_known, key_steps = jax.random.split(key)
    level_keys = jax.random.split(key_known, n_levels)

    def step(x, inputs):
        sigma, alpha, level, k = inputs
        known = x_known + sigma * jax.random.normal(level_keys[level], x.shape, x.dtype)
        x = jnp.where(mask, known, x)
        z = jax.random.normal(k, x.shape, x.dtype)
        x = x + 0.5 * alpha * batched_score(x, sigma) + jnp.sqrt(alpha) * z
        return jnp.where(mask, known, x), None

    inputs = (sigmas, alphas, levels, jax.random.split(key_steps, sigmas.shape[0]))
    x, trajectory = scan_with_trajectory(step, x_init, inputs, every)
    before = x
    if denoise:
        x, trajectory = tweedie_step(batched_score, x, sigmas[-1], trajectory)
    x = jnp.where(mask, x_known, x)
    if trajectory is not None and denoise:
        trajectory = trajectory.at[-1].set(x)
    return x, trajectory, before


def _check_mask(mask, shape: tuple, n: int):
    if not is_concrete(mask):
        raise ValueError("`mask` must be concrete (a NumPy or JAX boolean array), not traced.")
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"`mask` must be boolean (True at the known coordinates), got dtype {mask.dtype}.")
    if mask.shape not in (shape, (n, *shape)):
        raise ValueError(f"`mask` must have the shape of one example, {shape}, or of the batch, {(n, *shape)}; "
                         f"got {mask.shape}.")
    return np.broadcast_to(mask, (n, *shape))


def inpaint(
    score_fn: Callable,
    x_known: Float[Array, "n *shape"] | Float[Array, "*shape"],
    mask: Bool[Array, "*shape"] | Bool[Array, "n *shape"],
    key: PRNGKeyArray,
    *,
    sigmas: Float[Array, " L"],
    eps: float,
    n_steps_each: int,
    denoise: bool = True,
    n: int | None = None,
    x_init: Float[Array, "n *shape"] | None = None,
    trajectory_every: int | None = None,
    throw: bool = True,
) -> SamplerResult:
    """Inpainting by replacement: annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1)
    whose known coordinates are replaced by the known values plus the noise of the current level
    (Song & Ermon 2019, section 5; Song et al. 2021, appendix I).

    At level `sigma_i` (descending) one noise draw `z_i` sets the known coordinates (`mask`
    True) to `y_i = x_known + sigma_i z_i`; then `n_steps_each` Langevin steps

        x <- x + alpha_i / 2 s(x, sigma_i) + sqrt(alpha_i) z,    alpha_i = eps sigma_i^2 / sigma_L^2,

    move the unknown coordinates, the known ones reset to `y_i` after each. The unknown
    coordinates thus sample `p_sigma(x_u | y_i)`, the conditional given *noisy* known values,
    an approximation of the conditional given the clean ones that the chapter measures. At the
    end, optionally Tweedie's step at `sigma_L`, and the known coordinates are set to exactly
    `x_known`. One jitted `lax.scan`, particles in `vmap`.

    **Arguments:**

    - `score_fn`: `(x, sigma) -> score` of ONE example `x` of shape `(*shape)`.
    - `x_known`: `(n, *shape)` one example per particle, or `(*shape)` one example shared by
      `n` particles (then pass `n`). Only the entries where `mask` is True are used; the others
      must still be finite.
    - `mask`: boolean, True at the known coordinates: `(*shape)` for all particles or
      `(n, *shape)` one per particle.
    - `key`: PRNG key.
    - `sigmas`: `(L,)` strictly decreasing noise levels.
    - `eps`: the step size at the smallest level.
    - `n_steps_each`: Langevin steps per level.
    - `denoise`: apply Tweedie's step `x + sigma_L^2 s(x, sigma_L)` to the whole example before
      the known coordinates are set to `x_known`.
    - `n`: the number of particles when `x_known` is one example (refused otherwise).
    - `x_init`: `(n, *shape)` starting particles (their known coordinates are overwritten);
      default `sigma_1 * N(0, I)`, drawn from `key`.
    - `trajectory_every`: also keep the particles every this many steps.
    - `throw`: raise a `FloatingPointError` when particles diverge; with False the result
      reports them in `n_diverged`.

    **Returns:** a `SamplerResult` as `annealed_langevin`'s, whose `samples` equal `x_known` at
    the known coordinates; `samples_before_denoise` (with `denoise`) hold the last level's
    noisy known values there.
    """
    x_known = as_float_array("x_known", x_known)
    check_finite("x_known", x_known)
    if n is None:
        if x_known.ndim < 2:
            raise ValueError(
                f"`x_known` of shape {tuple(x_known.shape)} is one example: pass `n`, the number of "
                "particles that complete it (or give one example per particle, (n, *shape))."
            )
        n, shape = int(x_known.shape[0]), tuple(x_known.shape[1:])
    else:
        n = check_positive_int("n", n)
        if x_known.ndim < 1:
            raise ValueError("`x_known` must be one example (*shape) or a batch (n, *shape), got a scalar.")
        shape = tuple(x_known.shape)
    dtype = x_known.dtype
    mask = _check_mask(mask, shape, n)
    x_known = jnp.broadcast_to(x_known, (n, *shape))
    sigmas = check_sigmas("sigmas", sigmas, dtype)
    check_key("key", key)
    eps = as_real_scalar("eps", eps)
    check_positive("eps", eps, dtype)
    n_steps_each = check_positive_int("n_steps_each", n_steps_each)
    n_levels = sigmas.shape[0]
    total = n_levels * n_steps_each
    check_size("n_steps_each", total, 16)
    every = check_trajectory_every(trajectory_every, total)
    denoise = check_bool("denoise", denoise)
    throw = check_bool("throw", throw)
    key_init, key_run = jax.random.split(key)
    if x_init is None:
        check_size("n", n * int(np.prod(shape)))
        x_init = sigmas[0] * jax.random.normal(key_init, (n, *shape), dtype)
    else:
        x_init = as_float_array("x_init", x_init)
        if tuple(x_init.shape) != (n, *shape):
            raise ValueError(f"`x_init` must have shape {(n, *shape)}, got {tuple(x_init.shape)}.")
        check_finite("x_init", x_init)
        x_init = x_init.astype(dtype)
    check_score_fn(score_fn, x_known, conditional=True)
    per_step_sigmas, per_step_alphas = annealed_step_sizes(eps, sigmas, n_steps_each, dtype)
    levels = jnp.repeat(jnp.arange(n_levels), n_steps_each)
    x, trajectory, before = _inpaint_kernel(score_fn, x_init, x_known, jnp.asarray(mask), key_run,
                                            per_step_sigmas, per_step_alphas, levels, n_levels, every, denoise)
    traj_sigmas = None if every is None else frame_sigmas(per_step_sigmas, sigmas[0], every, denoise, dtype)
    return finish("inpaint", x, trajectory=trajectory, trajectory_sigmas=traj_sigmas,
                  before=before if denoise else None, score_evals=total + int(denoise), throw=throw,
                  hint="a smaller `eps`")
