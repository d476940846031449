"""Score-matching objectives.

Each constructor returns a loss function `loss_fn(model, batch, key) -> scalar`, the signature
`fit` expects. `batch` has shape `(n, d)`; models take ONE example and the losses vmap them.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_positive, check_positive_int, check_sigmas
from .models.ensemble import ScoreEnsemble

LossFn = Callable[..., Float[Array, ""]]


def _sum_event(x):
    """Sum over every axis but the first (the batch axis)."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def explicit_score_matching(true_score: Callable) -> LossFn:
    """Explicit (oracle) score matching: `1/2 E ||s(x) - grad log p(x)||^2`, with the true score
    `true_score(x)` known. Only possible on toy problems; the yardstick for the others."""

    def loss_fn(model, batch, key=None):
        diff = jax.vmap(model)(batch) - jax.vmap(true_score)(batch)
        return 0.5 * jnp.mean(_sum_event(diff**2))

    return loss_fn


def implicit_score_matching() -> LossFn:
    """Implicit score matching (Hyvärinen 2005): `E [1/2 ||s(x)||^2 + tr(ds/dx)]`, with the exact
    Jacobian trace (one forward-mode Jacobian per example: cost grows with `d`).

    Equals explicit score matching minus the constant `1/2 E ||grad log p||^2`."""

    def per_example(model, x):
        s = model(x)
        jac = jax.jacfwd(model)(x)
        return 0.5 * jnp.sum(s**2) + jnp.trace(jac)

    def loss_fn(model, batch, key=None):
        return jnp.mean(jax.vmap(per_example, in_axes=(None, 0))(model, batch))

    return loss_fn


def sliced_score_matching(n_projections: int = 1, *, variance_reduction: bool = True,
                          distribution: str = "gaussian") -> LossFn:
    """Sliced score matching (Song, Garg, Shi & Ermon 2019): random projections `v` replace the
    Jacobian trace by `v^T (ds/dx) v`, one Jacobian-vector product (forward mode) per projection.

    `E_v [v^T (ds/dx) v + 1/2 (v^T s)^2]`, or with `variance_reduction=True` (SSM-VR, valid for
    Gaussian `v`) `E_v [v^T (ds/dx) v] + 1/2 ||s||^2`. `distribution` is `"gaussian"` or
    `"rademacher"`."""
    n_projections = check_positive_int("n_projections", n_projections)
    if distribution not in ("gaussian", "rademacher"):
        raise ValueError(f"`distribution` must be 'gaussian' or 'rademacher', got {distribution!r}.")

    def per_example(model, x, key):
        if distribution == "gaussian":
            v = jax.random.normal(key, (n_projections, *x.shape), x.dtype)
        else:
            v = jax.random.rademacher(key, (n_projections, *x.shape), x.dtype)
        s, jv = jax.vmap(lambda vi: jax.jvp(model, (x,), (vi,)))(v)
        s = s[0]
        vjv = jnp.mean(jnp.sum(v * jv, axis=-1))
        if variance_reduction:
            return vjv + 0.5 * jnp.sum(s**2)
        return vjv + 0.5 * jnp.mean(jnp.sum(v * s, axis=-1) ** 2)

    def loss_fn(model, batch, key):
        keys = jax.random.split(key, batch.shape[0])
        return jnp.mean(jax.vmap(per_example, in_axes=(None, 0, 0))(model, batch, keys))

    return loss_fn


def denoising_score_matching(sigma: float) -> LossFn:
    """Denoising score matching at one noise level (Vincent 2011):
    `1/2 E ||s(x + sigma z) + z / sigma||^2`, for an unconditional model `s(x)`. Its minimiser is
    the score of the data perturbed by `N(0, sigma^2 I)`."""
    check_positive("sigma", sigma)

    def loss_fn(model, batch, key):
        z = jax.random.normal(key, batch.shape, batch.dtype)
        s = jax.vmap(model)(batch + sigma * z)
        return 0.5 * jnp.mean(_sum_event((s + z / sigma) ** 2))

    return loss_fn


def multiscale_denoising_score_matching(sigmas) -> LossFn:
    """Denoising score matching over many noise levels with weight `lambda(sigma) = sigma^2`
    (Song & Ermon 2019): `1/2 E_sigma E ||sigma s(x + sigma z, sigma) + z||^2`.

    For a noise-conditional model `s(x, sigma)` each example draws its own sigma uniformly from
    `sigmas`. For a `ScoreEnsemble` every member is trained on every example at its own sigma,
    in one vmapped evaluation; the losses are averaged over members."""
    sigmas = check_sigmas("sigmas", sigmas)

    def ensemble_loss(model: ScoreEnsemble, batch, key):
        if model.sigmas.shape != sigmas.shape:
            raise ValueError(
                f"The ensemble has {model.sigmas.shape[0]} members but the loss has {sigmas.shape[0]} sigmas."
            )
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
        if isinstance(model, ScoreEnsemble):
            return ensemble_loss(model, batch, key)
        return conditional_loss(model, batch, key)

    return loss_fn
