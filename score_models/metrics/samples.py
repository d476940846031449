"""Sample-quality and score-error metrics.

Sample metrics compare two sample sets `x: (n, d)` and `y: (m, d)`. A distance between samples
and a distribution is only meaningful next to its noise floor: the same metric between two
independent exact samples of the same size (`noise_floor`, `distance_and_floor`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import check_particles, check_positive, check_positive_int
from .distributions import GaussianMixture


def _pair(x, y, *, one_d: bool = False):
    x = check_particles("x", x)
    y = check_particles("y", y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` must have shapes (n, d) and (m, d); got {x.shape} and {y.shape}.")
    if one_d and x.shape[1] != 1:
        raise ValueError(f"`x` and `y` must be 1D samples of shape (n, 1); got {x.shape} and {y.shape}.")
    return x, y


@jax.jit
def _w1(x, y):
    """Exact W1 between the empirical distributions of 1D samples `x: (n,)`, `y: (m,)`."""
    x = jnp.sort(x)
    y = jnp.sort(y)
    grid = jnp.sort(jnp.concatenate([x, y]))
    widths = jnp.diff(grid)
    cdf_x = jnp.searchsorted(x, grid[:-1], side="right") / x.shape[0]
    cdf_y = jnp.searchsorted(y, grid[:-1], side="right") / y.shape[0]
    return jnp.sum(jnp.abs(cdf_x - cdf_y) * widths)


def wasserstein_1d(x: Float[Array, "n 1"], y: Float[Array, "m 1"]) -> float:
    """The Wasserstein-1 distance between two 1D samples, `int |F_x(t) - F_y(t)| dt`, exactly."""
    x, y = _pair(x, y, one_d=True)
    return float(_w1(x[:, 0], y[:, 0]))


@jax.jit
def _mean_distance(x, y):
    """`mean_{i,j} ||x_i - y_j||`, a row block at a time (memory O(n_block * m))."""
    row = lambda xi: jnp.mean(jnp.sqrt(jnp.sum((xi - y) ** 2, axis=-1) + 1e-30))  # noqa: E731
    return jnp.mean(jax.lax.map(row, x, batch_size=256))


def energy_distance(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> float:
    """The energy distance `2 E||X - Y|| - E||X - X'|| - E||Y - Y'||` (Székely & Rizzo), as a
    V-statistic (all pairs, including `i = j`): non-negative, zero only for equal samples, and
    with a positive noise floor that shrinks like `1/n`."""
    x, y = _pair(x, y)
    return float(2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y))


def sliced_wasserstein(x: Float[Array, "n d"], y: Float[Array, "m d"], key: PRNGKeyArray, *,
                       n_projections: int = 128) -> float:
    """The sliced Wasserstein-1 distance: W1 of the projections on `n_projections` random unit
    directions, averaged."""
    x, y = _pair(x, y)
    n_projections = check_positive_int("n_projections", n_projections)
    v = jax.random.normal(key, (n_projections, x.shape[1]), x.dtype)
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    return float(jnp.mean(jax.vmap(lambda u: _w1(x @ u, y @ u))(v)))


def mode_weights(samples: Float[Array, "n d"], mixture: GaussianMixture) -> np.ndarray:
    """The fraction of `samples` assigned to each component (by largest responsibility), `(k,)`."""
    samples = check_particles("samples", samples)
    if samples.ndim != 2 or samples.shape[1] != mixture.dim:
        raise ValueError(f"`samples` must have shape (n, {mixture.dim}); got {samples.shape}.")
    labels = jnp.argmax(jax.vmap(mixture.component_log_probs)(samples), axis=-1)
    return np.bincount(np.asarray(labels), minlength=mixture.n_components) / samples.shape[0]


Metric = Callable[[Array, Array], float]
Sampler = Callable[[PRNGKeyArray, int], Array]


def noise_floor(metric: Metric, exact_sampler: Sampler, n: int, key: PRNGKeyArray, *,
                repeats: int = 5) -> tuple[float, float]:
    """Mean and std over `repeats` of `metric` between two independent exact samples of size `n`
    (`exact_sampler(key, n) -> (n, d)`): the best any sampler can score at this sample size."""
    n = check_positive_int("n", n)
    repeats = check_positive_int("repeats", repeats)
    values = []
    for k in jax.random.split(key, repeats):
        ka, kb = jax.random.split(k)
        values.append(metric(exact_sampler(ka, n), exact_sampler(kb, n)))
    return float(np.mean(values)), float(np.std(values))


class DistanceReport(NamedTuple):
    """Distance of model samples to a distribution, next to the noise floor at the same size."""

    distance: float
    distance_std: float
    floor: float
    floor_std: float

    @property
    def ratio(self) -> float:
        """`distance / floor`: 1 is as good as exact samples."""
        return self.distance / self.floor


def distance_and_floor(metric: Metric, draws: Sequence[Array], exact_sampler: Sampler,
                       key: PRNGKeyArray) -> DistanceReport:
    """Averages `metric(draw, fresh exact sample)` over independent model sample sets `draws`
    (each `(n, d)`), and the noise floor over as many exact-vs-exact pairs of the same size."""
    if len(draws) == 0:
        raise ValueError("`draws` must hold at least one sample set.")
    n = int(draws[0].shape[0])
    key_d, key_f = jax.random.split(key)
    dist = [metric(d, exact_sampler(k, n)) for d, k in zip(draws, jax.random.split(key_d, len(draws)))]
    floor, floor_std = noise_floor(metric, exact_sampler, n, key_f, repeats=len(draws))
    return DistanceReport(float(np.mean(dist)), float(np.std(dist)), floor, floor_std)


class ScoreError(NamedTuple):
    """`mse = mean ||s - s_true||^2` over the points, and `relative = mse / mean ||s_true||^2`."""

    mse: float
    relative: float


def score_error(score_fn: Callable, true_score: Callable, x: Float[Array, "n d"],
                sigma: float | None = None) -> ScoreError:
    """Error of `score_fn` against `true_score` at the points `x: (n, d)`: a sample from p gives
    the density-weighted error, a grid the uniform one. With `sigma`, the model is called as
    `score_fn(x, sigma)`; `true_score(x)` always takes one point (for example
    `mixture.perturbed(sigma).score`)."""
    x = check_particles("x", x)
    if sigma is None:
        s = jax.vmap(score_fn)(x)
    else:
        check_positive("sigma", sigma)
        s = jax.vmap(score_fn, in_axes=(0, None))(x, jnp.asarray(sigma, x.dtype))
    t = jax.vmap(true_score)(x)
    mse = float(jnp.mean(jnp.sum((s - t) ** 2, axis=-1)))
    return ScoreError(mse, mse / float(jnp.mean(jnp.sum(t**2, axis=-1))))
