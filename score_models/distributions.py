"""Analytic ground truth: isotropic Gaussian mixtures in any dimension."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import (
    as_float_array,
    check_finite,
    check_key,
    check_noise_level,
    check_positive,
    check_positive_int,
    check_size,
    is_concrete,
)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _components_and_noise(key, weights, n: int, dim: int, dtype):
    """The component index `(n,)` and standard normal noise `(n, d)` of `n` samples."""
    key_k, key_z = jax.random.split(key)
    k = jax.random.choice(key_k, weights.shape[0], (n,), p=weights)
    return k, jax.random.normal(key_z, (n, dim), dtype=dtype)


@jax.jit
def _scale(stds, k, z):
    return stds[k, None] * z


@jax.jit
def _shift(means, k, scaled):
    return means[k] + scaled


def _sample(mixture: "GaussianMixture", key, n: int):
    # Three small compiled calls, not one: fused into one kernel, XLA turns the product and the
    # sum into a fused multiply-add (and reorders the noise's last multiplications), whose
    # rounding differs in the last bit from separate operations; every sample the book and its
    # cached models drew before this function was compiled would change.
    k, z = _components_and_noise(key, mixture.weights, n, mixture.dim, mixture.means.dtype)
    return _shift(mixture.means, k, _scale(mixture.stds, k, z))


class GaussianMixture(eqx.Module):
    """A mixture of isotropic Gaussians, `p(x) = sum_k w_k N(x; mu_k, s_k^2 I)`.

    An equinox module: it can be passed through `jit` and `vmap`, and `perturbed(sigma)` accepts
    a traced `sigma`. All per-example methods take ONE point `x` of shape `(d,)`; `vmap` them for
    batches.

    **Arguments:**

    - `means`: `(k, d)` component means.
    - `stds`: `(k,)` component standard deviations (positive).
    - `weights`: `(k,)` mixture weights (non-negative; normalised to sum to one).
    """

    means: Float[Array, "k d"]
    stds: Float[Array, " k"]
    weights: Float[Array, " k"]

    def __init__(self, means, stds, weights):
        means = as_float_array("means", means, ndim=2)
        stds = as_float_array("stds", stds, ndim=1)
        weights = as_float_array("weights", weights, ndim=1)
        k = means.shape[0]
        if stds.shape[0] != k or weights.shape[0] != k:
            raise ValueError(
                f"`means`, `stds` and `weights` must describe the same number of components: "
                f"got means {tuple(means.shape)}, stds {tuple(stds.shape)}, weights {tuple(weights.shape)}."
            )
        check_finite("means", means)
        check_positive("stds", stds)
        if is_concrete(weights):
            w = np.asarray(weights, dtype=np.float64)
            if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError(f"`weights` must be non-negative with a positive sum, got {w.tolist()}.")
        self.means = means
        self.stds = stds
        self.weights = weights / jnp.sum(weights)

    @property
    def dim(self) -> int:
        """The dimension `d` of the space."""
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        """The number of components `k`."""
        return self.means.shape[0]

    def _check_point(self, x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise ValueError(f"`x` must be real, got complex dtype {x.dtype}.")
        if x.shape != (self.dim,):
            raise ValueError(
                f"`x` must be ONE point of shape ({self.dim},); got shape {tuple(x.shape)}. "
                f"Use jax.vmap for batches."
            )
        return x

    def component_log_probs(self, x: Float[Array, " d"]) -> Float[Array, " k"]:
        """`log w_k + log N(x; mu_k, s_k^2 I)` for every component, shape `(k,)`."""
        x = self._check_point(x)
        d = self.dim
        sq = jnp.sum((x - self.means) ** 2, axis=-1)
        log_norm = -0.5 * d * jnp.log(2 * jnp.pi * self.stds**2)
        return jnp.log(self.weights) + log_norm - 0.5 * sq / self.stds**2

    def log_prob(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """The log-density at one point `x` of shape `(d,)`; a scalar."""
        return jax.nn.logsumexp(self.component_log_probs(x))

    def responsibilities(self, x: Float[Array, " d"]) -> Float[Array, " k"]:
        """Posterior component probabilities `p(k | x)`, shape `(k,)`."""
        return jax.nn.softmax(self.component_log_probs(x))

    def score(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """The score `grad_x log p(x)` at one point, shape `(d,)`, in closed form:
        `sum_k p(k | x) (mu_k - x) / s_k^2`."""
        x = self._check_point(x)
        r = self.responsibilities(x)
        return jnp.sum(r[:, None] * (self.means - x) / self.stds[:, None] ** 2, axis=0)

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """`n` exact samples, shape `(n, d)`: one compiled call per `n` (and per number of
        components and dimension), shared by every mixture of that shape."""
        n = check_positive_int("n", n)
        check_key("key", key)
        check_size("n", n * (self.dim + 1))
        return _sample(self, key, n)

    def perturbed(self, sigma) -> "GaussianMixture":
        """The mixture convolved with `N(0, sigma^2 I)`: the distribution of `x + sigma z`.

        A mixture again, with the same means and weights and stds `sqrt(s_k^2 + sigma^2)`.
        `sigma` may be a traced scalar.
        """
        if is_concrete(sigma) and jnp.ndim(sigma) != 0:
            raise ValueError(f"`sigma` must be a scalar, got shape {tuple(jnp.shape(sigma))}.")
        check_noise_level("sigma", sigma, self.stds.dtype, allow_zero=True)
        sigma = jnp.asarray(sigma, dtype=self.stds.dtype)
        return GaussianMixture(self.means, jnp.sqrt(self.stds**2 + sigma**2), self.weights)

    def perturbed_score(self, x: Float[Array, " d"], sigma) -> Float[Array, " d"]:
        """The exact noise-conditional score `grad_x log p_sigma(x)` of the mixture perturbed by
        `N(0, sigma^2 I)`, at ONE point `x: (d,)`.

        The bound method `mixture.perturbed_score` is the library's exact score `score_fn(x,
        sigma)` for samplers, losses and metrics: an equinox pytree whose arrays are traced
        leaves, so it compiles once per shape and every mixture with the same number of
        components and dimension shares that compilation (a fresh lambda recompiles)."""
        return self.perturbed(sigma).score(x)

    def vp_perturbed(self, sigma) -> "GaussianMixture":
        """The distribution of `s (x + sigma z)` with `s = 1 / sqrt(1 + sigma^2)`: the marginal of
        a variance-preserving SDE (`sm.VPSDE`) at the time `t` whose noise level is `sigma`
        (`vp_perturbed(sde.sigma(t))`), whatever its `beta` schedule.

        A mixture again: means `s mu_k`, stds `s sqrt(s_k^2 + sigma^2)`, the same weights.
        `sigma` may be a traced scalar.
        """
        p = self.perturbed(sigma)
        scale = jax.lax.rsqrt(1 + jnp.asarray(sigma, dtype=self.stds.dtype) ** 2)
        return GaussianMixture(scale * p.means, scale * p.stds, p.weights)

    def vp_perturbed_score(self, x: Float[Array, " d"], sigma) -> Float[Array, " d"]:
        """The exact score `grad_x log` of `vp_perturbed(sigma)` at ONE point `x: (d,)`: the
        score of the VP SDE's marginal, equal to `sqrt(1 + sigma^2) perturbed_score(x sqrt(1 +
        sigma^2), sigma)` (`sm.VPSDE.score` makes this conversion for any model)."""
        return self.vp_perturbed(sigma).score(x)
    def class_log_posterior(self, x: Float[Array, " d"], sigma=0.0) -> Float[Array, " k"]:
        """The exact class posterior under noise, `log p_sigma(k | x)` for every component `k`,
        shape `(k,)`, at ONE point `x: (d,)`: each component is a class, and `x` is a clean
        point perturbed by `N(0, sigma^2 I)` (`sigma = 0`: the clean posterior). By Bayes' rule

            log p_sigma(k | x) = log w_k + log N(x; mu_k, (s_k^2 + sigma^2) I) - log p_sigma(x),

        so `grad_x log p_sigma(k | x) = score of component k at sigma - perturbed_score(x,
        sigma)`: the exact classifier of classifier guidance. `sigma` may be traced."""
        return jax.nn.log_softmax(self.perturbed(sigma).component_log_probs(x))

    def subset(self, components) -> "GaussianMixture":
        """The mixture of some of the components, `components` (indices, or a boolean mask of
        shape `(k,)`), with their weights renormalised: the conditional distribution `p(x | the
        class is one of components)`. `gm.subset([k])` is the single Gaussian of class `k`."""
        idx = np.asarray(components)
        if idx.dtype == bool:
            if idx.shape != (self.n_components,):
                raise ValueError(f"A boolean `components` must have shape ({self.n_components},), got {idx.shape}.")
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"`components` must be a non-empty list of component indices, got {components!r}.")
        if np.any(idx < 0) or np.any(idx >= self.n_components) or np.unique(idx).size != idx.size:
            raise ValueError(
                f"`components` must be distinct indices in [0, {self.n_components}), got {idx.tolist()}."
            )
        return GaussianMixture(self.means[idx], self.stds[idx], self.weights[idx])

    def sample_labelled(self, key: PRNGKeyArray, n: int) -> tuple[Float[Array, "n d"], Array]:
        """`n` exact samples `(n, d)` and the component each came from, `(n,)` int32: the
        labelled data a classifier of the components trains on. The samples are those of
        `sample(key, n)`."""
        n = check_positive_int("n", n)
        check_key("key", key)
        check_size("n", n * (self.dim + 2))
        k, z = _components_and_noise(key, self.weights, n, self.dim, self.means.dtype)
        return _shift(self.means, k, _scale(self.stds, k, z)), k.astype(jnp.int32)

    def conditional(self, x_known: Float[Array, " d"], mask) -> "GaussianMixture":
        """The exact conditional distribution of the unknown coordinates given the known ones,
        `p(x_u | x_m = x_known_m)`, where `mask` `(d,)` (boolean) is True at the known
        coordinates `m` and `x_known` `(d,)` holds their values (entries where `mask` is False
        are ignored).

        Again a mixture, over the `u` unknown coordinates: each component is isotropic, so its
        unknown coordinates are independent of its known ones and keep their mean `mu_{k,u}` and
        std `s_k`, while the weights become the posterior of the components given the known
        values,

            w_k' = w_k N(x_m; mu_{k,m}, s_k^2 I) / sum_j w_j N(x_m; mu_{j,m}, s_j^2 I).

        `mask` must be concrete (it sets the dimension of the result) with at least one known
        and one unknown coordinate."""
        x_known = as_float_array("x_known", x_known, ndim=1)
        if x_known.shape != (self.dim,):
            raise ValueError(f"`x_known` must have shape ({self.dim},), got {tuple(x_known.shape)}.")
        if not is_concrete(mask):
            raise ValueError("`mask` must be concrete (a NumPy or JAX boolean array), not traced.")
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (self.dim,):
            raise ValueError(f"`mask` must be a boolean array of shape ({self.dim},), got {mask.dtype} {mask.shape}.")
        if mask.all() or not mask.any():
            raise ValueError(f"`mask` must mark at least one known and one unknown coordinate, got {mask.tolist()}.")
        check_finite("x_known", x_known[mask])
        known, unknown = np.flatnonzero(mask), np.flatnonzero(~mask)
        marginal = GaussianMixture(self.means[:, known], self.stds, self.weights)
        log_w = jax.nn.log_softmax(marginal.component_log_probs(x_known[known]))
        return GaussianMixture(self.means[:, unknown], self.stds, jnp.exp(log_w))

    def cdf(self, x: Float[Array, "..."]) -> Float[Array, "..."]:
        """The cumulative distribution function of a 1D mixture, elementwise on any shape."""
        if self.dim != 1:
            raise ValueError(f"`cdf` is defined for 1D mixtures only; this one has d={self.dim}.")
        x = jnp.asarray(x)[..., None]
        z = (x - self.means[:, 0]) / self.stds
        return jnp.sum(self.weights * jax.scipy.stats.norm.cdf(z), axis=-1)
