"""Score-matching objectives.

Each constructor returns a loss function `loss_fn(model, batch, key) -> scalar`, the signature
`fit` expects. `batch` has shape `(n, *shape)`, vectors `(n, d)` or images `(n, C, H, W)`;
models take ONE example and the losses vmap them. Sums run over every axis of an example, so
an objective on images equals the same objective on the images flattened to vectors.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import (
    check_callable,
    check_noise_level,
    check_positive_int,
    check_score_fn,
    check_sigma_range,
    check_sigmas,
)
from .models.ensemble import ScoreEnsemble

__all__ = [
    "class_conditional_denoising_score_matching",
    "continuous_denoising_score_matching",
    "denoising_score_matching",
    "explicit_score_matching",
    "implicit_score_matching",
    "multiscale_denoising_score_matching",
    "noise_conditional_classification",
    "sliced_score_matching",
]

LossFn = Callable[..., Float[Array, ""]]


def _sum_event(x):
    """Sum over every axis but the first (the batch axis)."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def _check_inputs(model, batch, *, conditional: bool) -> None:
    """At trace time: a floating `batch` `(n, *shape)`, and a `model` that maps ONE example (and
    a scalar sigma when `conditional`) to the example's shape (a score of another shape would be
    broadcast into a wrong loss)."""
    if not jnp.issubdtype(batch.dtype, jnp.floating):
        raise ValueError(
            f"The loss's `batch` (the training `data`) must be floating point, got {batch.dtype}; "
            "convert it, e.g. `data.astype(jnp.float32)`."
        )
    if batch.ndim < 2:
        raise ValueError(f"The loss's `batch` must have shape (n, *shape), got {batch.shape}.")
    check_score_fn(model, batch, conditional=conditional, name="model")


def _jacobian_trace(f, x):
    """`tr(df/dx)` at ONE example `x` of any shape: the Jacobian `(*shape, *shape)` seen as a
    `(d, d)` matrix, `d = prod(shape)` (one forward-mode pass per input coordinate)."""
    d = x.size
    return jnp.trace(jax.jacfwd(f)(x).reshape(d, d))


def explicit_score_matching(true_score: Callable) -> LossFn:
    """Explicit (oracle) score matching: `1/2 E ||s(x) - grad log p(x)||^2`, with the true score
    `true_score(x)` known. Only possible on toy problems; the yardstick for the others.

    `true_score` and the model must both return the shape of one example (a score of another
    shape is refused: it would be broadcast into a wrong loss)."""
    check_callable("true_score", true_score)

    def loss_fn(model, batch, key=None):
        _check_inputs(model, batch, conditional=False)
        check_score_fn(true_score, batch, conditional=False, name="true_score")
        s = jax.vmap(model)(batch)
        t = jax.vmap(true_score)(batch)
        return 0.5 * jnp.mean(_sum_event((s - t) ** 2))

    return loss_fn


def implicit_score_matching() -> LossFn:
    """Implicit score matching (Hyvärinen 2005): `E [1/2 ||s(x)||^2 + tr(ds/dx)]`, with the exact
    Jacobian trace (one forward-mode Jacobian per example: cost grows with `d`, the number of
    coordinates of an example).

    Equals explicit score matching minus the constant `1/2 E ||grad log p||^2`."""

    def per_example(model, x):
        return 0.5 * jnp.sum(model(x) ** 2) + _jacobian_trace(model, x)

    def loss_fn(model, batch, key=None):
        _check_inputs(model, batch, conditional=False)
        return jnp.mean(jax.vmap(per_example, in_axes=(None, 0))(model, batch))

    return loss_fn


def sliced_score_matching(n_projections: int = 1, *, variance_reduction: bool = True,
                          distribution: str = "gaussian") -> LossFn:
    """Sliced score matching (Song, Garg, Shi & Ermon 2019): random projections `v` replace the
    Jacobian trace by `v^T (ds/dx) v`, one Jacobian-vector product per projection (forward
    mode, after one linearisation of the model at `x`).

    `E_v [v^T (ds/dx) v + 1/2 (v^T s)^2]`, or with `variance_reduction=True` (SSM-VR, valid for
    Gaussian `v`) `E_v [v^T (ds/dx) v] + 1/2 ||s||^2`. `distribution` is `"gaussian"` or
    `"rademacher"`. The projections have the shape of an example."""
    n_projections = check_positive_int("n_projections", n_projections)
    if not isinstance(variance_reduction, bool):
        raise ValueError(f"`variance_reduction` must be True or False, got {variance_reduction!r}.")
    if distribution not in ("gaussian", "rademacher"):
        raise ValueError(f"`distribution` must be 'gaussian' or 'rademacher', got {distribution!r}.")

    def per_example(model, x, key):
        if distribution == "gaussian":
            v = jax.random.normal(key, (n_projections, *x.shape), x.dtype)
        else:
            v = jax.random.rademacher(key, (n_projections, *x.shape), x.dtype)
        s, jvp = jax.linearize(model, x)
        jv = jax.vmap(jvp)(v)
        vjv = jnp.mean(_sum_event(v * jv))
        if variance_reduction:
            return vjv + 0.5 * jnp.sum(s**2)
        return vjv + 0.5 * jnp.mean(_sum_event(v * s) ** 2)

    def loss_fn(model, batch, key):
        _check_inputs(model, batch, conditional=False)
        keys = jax.random.split(key, batch.shape[0])
        return jnp.mean(jax.vmap(per_example, in_axes=(None, 0, 0))(model, batch, keys))

    return loss_fn


def denoising_score_matching(sigma: float) -> LossFn:
    """Denoising score matching at one noise level (Vincent 2011):
    `1/2 E ||s(x + sigma z) + z / sigma||^2`, for an unconditional model `s(x)`. Its minimiser is
    the score of the data perturbed by `N(0, sigma^2 I)`."""
    sigma = check_noise_level("sigma", sigma)

    def loss_fn(model, batch, key):
        _check_inputs(model, batch, conditional=False)
        z = jax.random.normal(key, batch.shape, batch.dtype)
        s = jax.vmap(model)(batch + sigma * z)
        return 0.5 * jnp.mean(_sum_event((s + z / sigma) ** 2))

    return loss_fn


def _check_ensemble_sigmas(model: ScoreEnsemble, sigmas) -> None:
    """The ensemble trains member `i` at its own `sigma_i`: the loss's levels must be the same
    (to float32 rounding, 1e-5 relative), not just as many."""
    members = np.asarray(model.sigma_values, np.float64)
    levels = np.asarray(sigmas, np.float64)
    if members.shape != levels.shape:
        raise ValueError(
            f"The ensemble has {members.shape[0]} members but the loss has {levels.shape[0]} sigmas."
        )
    if not np.allclose(members, levels, rtol=1e-5, atol=0.0):
        raise ValueError(
            f"The loss's `sigmas` {levels.tolist()} differ from the ensemble's {members.tolist()}: "
            "each member is trained at its own noise level."
        )


def multiscale_denoising_score_matching(sigmas: Float[Array, " L"]) -> LossFn:
    """Denoising score matching over many noise levels with weight `lambda(sigma) = sigma^2`
    (Song & Ermon 2019): `1/2 E_sigma E ||sigma s(x + sigma z, sigma) + z||^2`.

    For a noise-conditional model `s(x, sigma)` each example draws its own sigma uniformly from
    `sigmas`. For a `ScoreEnsemble` every member is trained on every example at its own sigma,
    in one vmapped evaluation, and the losses are averaged over members; the ensemble's levels
    must equal `sigmas` (a `ValueError` otherwise)."""
    sigmas = check_sigmas("sigmas", sigmas)

    def ensemble_loss(model: ScoreEnsemble, batch, key):
        _check_ensemble_sigmas(model, sigmas)
        z = jax.random.normal(key, (sigmas.shape[0], *batch.shape), batch.dtype)

        def per_member(member, sigma, z_m):
            s = jax.vmap(lambda x: model._apply(member, x, sigma))(batch + sigma * z_m)
            return 0.5 * jnp.mean(_sum_event((sigma * s + z_m) ** 2))

        return jnp.mean(eqx.filter_vmap(per_member)(model.members, model.sigmas, z))

    def conditional_loss(model, batch, key):
        key_i, key_z = jax.random.split(key)
        idx = jax.random.randint(key_i, (batch.shape[0],), 0, sigmas.shape[0])
        sigma = sigmas[idx]
        z = jax.random.normal(key_z, batch.shape, batch.dtype)
        sigma_b = sigma.reshape(-1, *([1] * (batch.ndim - 1)))
        s = jax.vmap(model)(batch + sigma_b * z, sigma)
        return 0.5 * jnp.mean(_sum_event((sigma_b * s + z) ** 2))

    def loss_fn(model, batch, key):
        _check_inputs(model, batch, conditional=True)
        if isinstance(model, ScoreEnsemble):
            return ensemble_loss(model, batch, key)
        return conditional_loss(model, batch, key)

    return loss_fn


def continuous_denoising_score_matching(sigma_min: float, sigma_max: float) -> LossFn:
    """Denoising score matching over the continuum of noise levels (Song et al. 2021), for a
    noise-conditional model `s(x, sigma)`: each example draws `log sigma` uniformly on
    `[log sigma_min, log sigma_max]`; loss `1/2 E ||sigma s(x + sigma z, sigma) + z||^2`
    (weight `sigma^2`). SDE and ODE samplers query the score at every level in between, not
    only at the levels of a schedule."""
    check_sigma_range(sigma_max, sigma_min)
    log_min, log_max = float(np.log(sigma_min)), float(np.log(sigma_max))

    def loss_fn(model, batch, key):
        _check_inputs(model, batch, conditional=True)
        key_s, key_z = jax.random.split(key)
        sigma = jnp.exp(jax.random.uniform(key_s, (batch.shape[0],), batch.dtype, log_min, log_max))
        z = jax.random.normal(key_z, batch.shape, batch.dtype)
        sigma_b = sigma.reshape(-1, *([1] * (batch.ndim - 1)))
        s = jax.vmap(model)(batch + sigma_b * z, sigma)
        return 0.5 * jnp.mean(_sum_event((sigma_b * s + z) ** 2))

    return loss_fn


# ------------------------------------------------------------------------------------------
# Labelled data: classifiers of noisy examples and class-conditional scores (guidance)


def _labelled_batch(batch):
    """At trace time: `batch` is `(x, labels)` with floating `x` `(n, *shape)` and integer
    `labels` `(n,)`."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError("The loss's `batch` must be a pair `(x, labels)`: train on `data=(x, labels)`.")
    x, labels = batch
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim < 2:
        raise ValueError(f"The loss's `x` must be floating point of shape (n, *shape), got {x.dtype} {x.shape}.")
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != x.shape[:1]:
        raise ValueError(
            f"The loss's `labels` must be integers of shape {x.shape[:1]}, got {labels.dtype} {labels.shape}."
        )
    return x, labels


def _noise_levels(sigmas, key, x):
    """One level per example, uniform over `sigmas`: `(n,)` and broadcastable `(n, 1, ...)`."""
    sigma = sigmas[jax.random.randint(key, (x.shape[0],), 0, sigmas.shape[0])].astype(x.dtype)
    return sigma, sigma.reshape(-1, *([1] * (x.ndim - 1)))


def noise_conditional_classification(sigmas: Float[Array, " L"]) -> LossFn:
    """Cross-entropy of a classifier of noisy examples (Song et al. 2021; Dhariwal & Nichol
    2021), the classifier of classifier guidance:

        E_sigma E_{(x, y), z} [-log_softmax(c(x + sigma z, sigma))_y],

    each example drawing its level uniformly from `sigmas` (the levels the sampler visits). Its
    minimiser is `log p_sigma(y | x)` at every level. `batch` is `(x, labels)`: `x` `(n, *shape)`,
    `labels` `(n,)` integers; the model maps ONE noisy example and a scalar sigma to logits."""
    sigmas = check_sigmas("sigmas", sigmas)

    def loss_fn(model, batch, key):
        x, labels = _labelled_batch(batch)
        key_s, key_z = jax.random.split(key)
        sigma, sigma_b = _noise_levels(sigmas, key_s, x)
        z = jax.random.normal(key_z, x.shape, x.dtype)
        logits = jax.vmap(model)(x + sigma_b * z, sigma)
        if logits.ndim != 2:
            raise ValueError(f"The classifier must return the logits `(n_classes,)` of ONE example, got "
                             f"shape {logits.shape[1:]}.")
        log_p = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1))

    return loss_fn


def class_conditional_denoising_score_matching(sigmas: Float[Array, " L"], *, null_label: int,
                                               drop_probability: float = 0.2) -> LossFn:
    """Multi-scale denoising score matching of a class-conditional model `s(x, sigma, label)`
    with label dropout (Ho & Salimans 2022): each example's label is replaced by `null_label`
    ("no label") with probability `drop_probability`, so one network learns both the conditional
    score `grad log p_sigma(x | y)` and the unconditional `grad log p_sigma(x)` that
    classifier-free guidance combines. Loss, with weight `sigma^2` and `sigma` uniform over
    `sigmas`: `1/2 E ||sigma s(x + sigma z, sigma, label') + z||^2`. `batch` is `(x, labels)`."""
    sigmas = check_sigmas("sigmas", sigmas)
    null_label = int(null_label) if isinstance(null_label, (int, np.integer)) and not isinstance(
        null_label, (bool, np.bool_)) else null_label
    if not isinstance(null_label, int) or null_label < 0:
        raise ValueError(f"`null_label` must be a non-negative integer, got {null_label!r}.")
    p = float(drop_probability) if isinstance(drop_probability, (int, float, np.floating)) else drop_probability
    if not isinstance(p, float) or isinstance(drop_probability, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"`drop_probability` must be a number in [0, 1], got {drop_probability!r}.")

    def loss_fn(model, batch, key):
        x, labels = _labelled_batch(batch)
        key_s, key_z, key_d = jax.random.split(key, 3)
        sigma, sigma_b = _noise_levels(sigmas, key_s, x)
        z = jax.random.normal(key_z, x.shape, x.dtype)
        labels = jnp.where(jax.random.bernoulli(key_d, p, labels.shape), null_label, labels)
        s = jax.vmap(model)(x + sigma_b * z, sigma, labels)
        if s.shape != x.shape:
            raise ValueError(f"`model` must return the shape of one example, {x.shape[1:]}; got {s.shape[1:]}.")
        return 0.5 * jnp.mean(_sum_event((sigma_b * s + z) ** 2))

    return loss_fn
