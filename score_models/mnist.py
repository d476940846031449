"""Evaluating generated MNIST digits and MNIST likelihoods.

Sample quality, judged by a small CNN (`models.Classifier`, artifact `mnist_classifier`):

- `confident_fraction`: the fraction of images classified with probability above 0.9, a proxy
  for "looks like a clear digit";
- `class_fractions`: the fraction assigned to each of the ten digits (a sampler that drops a
  digit, or piles onto one, shows up here);
- `frechet_distance`: the Frechet distance between Gaussians fitted to the classifier's
  penultimate-layer features of two image sets (the FID of Heusel et al. 2017, with a small MNIST
  classifier in place of Inception). Its plug-in estimate is biased upwards, by roughly
  `c / n` for `n` images, so it is only meaningful next to the same number for real images of
  the same count (`quality` reports both);
- `kernel_distance`: the kernel (inception) distance of Binkowski et al. 2018, an unbiased
  estimate of the squared MMD between the two feature distributions with the kernel
  `k(a, b) = (a.b / f + 1)^3`, with a confidence interval from disjoint blocks.

Likelihoods, in bits per dimension of the 8-bit images:

- `pixel_categorical` / `categorical_bits_per_dim`: the baseline of 784 independent 256-way
  categorical distributions, one per pixel, fit on training images;
- `dequantize` and `bits_per_dim`: turning the continuous log-density of uniformly dequantized
  images into the discrete bound in bits per dimension.

Memorisation: `nearest_neighbours`, each image's nearest training image in pixel space.

Images are `(n, 1, 28, 28)` (or `(n, 28, 28)`) in [0, 1] pixel space.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import numpy as np
import scipy.stats
from jaxtyping import Float, PRNGKeyArray
from sklearn.neighbors import NearestNeighbors

from ._checks import check_positive_int
from .images import as_images

CONFIDENCE = 0.9
N_PIXELS = 28 * 28


# ----------------------------------------------------------------------------------------
# The classifier's view of a set of images


def _batched(fn: Callable, x: np.ndarray, batch: int) -> np.ndarray:
    """`fn` (jitted, on batches of `batch` images) applied to all of `x`, padding the last batch
    so only one shape compiles; returns a NumPy array."""
    n = x.shape[0]
    pad = (-n) % batch
    if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)])[:n]


#: How far outside [0, 1] a pixel may lie: samples come out of a sampler unclipped, a little
#: beyond the range; 8-bit grey levels (0..255) are far beyond it.
PIXEL_MARGIN = 1.0


def _pixel_images(images) -> np.ndarray:
    """`images` as `as_images` returns them, refusing values far outside [0, 1] pixel space."""
    x = as_images(images)
    lo, hi = float(x.min()), float(x.max())
    if lo < -PIXEL_MARGIN or hi > 1 + PIXEL_MARGIN:
        raise ValueError(
            f"`images` must be pixels in [0, 1] (unclipped samples may stray by up to {PIXEL_MARGIN:g}), "
            f"got values in [{lo:g}, {hi:g}]; divide 8-bit grey levels by 255, or clip with images.to_pixels."
        )
    return x


@jax.jit
def _proba(classifier, x):
    return jax.nn.softmax(jax.vmap(classifier)(x), axis=-1)


@jax.jit
def _features(classifier, x):
    return jax.vmap(classifier.features)(x)


def predict_proba(classifier, images, *, batch: int = 500) -> Float[np.ndarray, "n 10"]:
    """Class probabilities `(n, 10)` of `images` (pixels in [0, 1]) under `classifier`."""
    x = _pixel_images(images)
    batch = min(check_positive_int("batch", batch), x.shape[0])
    return _batched(lambda b: _proba(classifier, b), x, batch)


def features(classifier, images, *, batch: int = 500) -> Float[np.ndarray, "n f"]:
    """The classifier's penultimate-layer features `(n, f)` of `images` (pixels in [0, 1])."""
    x = _pixel_images(images)
    batch = min(check_positive_int("batch", batch), x.shape[0])
    return _batched(lambda b: _features(classifier, b), x, batch)


def _probs(probs) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"`probs` must have shape (n, k) with n >= 1, got {p.shape}.")
    return p


def confident_fraction(probs, threshold: float = CONFIDENCE) -> float:
    """The fraction of rows of `probs` `(n, k)` whose largest probability exceeds `threshold`."""
    return float(np.mean(_probs(probs).max(axis=-1) > threshold))


def class_fractions(probs) -> np.ndarray:
    """The fraction of rows of `probs` `(n, k)` assigned (by argmax) to each of the `k` classes."""
    p = _probs(probs)
    return np.bincount(p.argmax(axis=-1), minlength=p.shape[1]) / p.shape[0]


# ----------------------------------------------------------------------------------------
# Distances between feature distributions


def _feature_pair(f1, f2, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < min_rows:
        raise ValueError(
            f"`f1` and `f2` must have shapes (n, f) and (m, f) with n, m >= {min_rows}; got {f1.shape}, {f2.shape}."
        )
    for name, f in (("f1", f1), ("f2", f2)):
        if not np.all(np.isfinite(f)):
            raise ValueError(f"`{name}` contains {int(np.sum(~np.isfinite(f)))} NaN or infinite value(s).")
    return f1, f2


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def gaussian_frechet(mu1, cov1, mu2, cov2) -> float:
    """The Frechet (2-Wasserstein squared) distance between `N(mu1, cov1)` and `N(mu2, cov2)`:
    `||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1^1/2 cov2 cov1^1/2)^1/2)`."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"Means and covariances must match: got {mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}.")
    r = _sqrtm_psd(cov1)
    cross = np.linalg.eigvalsh(r @ cov2 @ r)
    trace_sqrt = np.sum(np.sqrt(np.clip(cross, 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt)


def frechet_distance(f1, f2) -> float:
    """The Frechet distance between Gaussians fitted (mean, covariance) to feature sets
    `f1: (n, f)` and `f2: (m, f)`. A plug-in estimate, biased upwards for finite sets: compare
    it only with the same number for two real sets of the same sizes."""
    f1, f2 = _feature_pair(f1, f2)
    return gaussian_frechet(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


class KernelDistance(NamedTuple):
    """An unbiased estimate of a squared MMD, with its confidence interval."""

    estimate: float  # the mean of the blocks' unbiased estimates
    low: float  # confidence interval (Student t over the blocks)
    high: float
    std_error: float
    n_blocks: int


def _polynomial_kernel(a, b):
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimate of the squared MMD between the distributions of rows of `x` and
    `y` (Gretton et al. 2012, eq. 3): within-set kernel means exclude the diagonal."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kernel_distance(f1, f2, *, n_blocks: int = 10, confidence: float = 0.95) -> KernelDistance:
    """The kernel distance (KID, Binkowski et al. 2018) between feature sets `f1: (n, f)` and
    `f2: (m, f)`: the squared MMD with the cubic polynomial kernel `(a.b / f + 1)^3`.

    Both sets are split into `n_blocks` disjoint blocks (in order; shuffle first if the order
    means something); each pair of blocks gives an unbiased estimate, and the result is their
    mean with a Student-t confidence interval over the blocks. Unbiased: for two samples of
    the same distribution its expectation is 0 at any sample size (so it can be negative).
    """
    f1, f2 = _feature_pair(f1, f2)
    n_blocks = check_positive_int("n_blocks", n_blocks)
    if n_blocks < 2 or min(len(f1), len(f2)) < 2 * n_blocks:
        raise ValueError(
            f"`n_blocks` must be at least 2 and leave at least 2 rows per block; got {n_blocks} "
            f"blocks for {len(f1)} and {len(f2)} rows."
        )
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence!r}.")
    blocks = np.array([_mmd2_unbiased(a, b) for a, b in zip(np.array_split(f1, n_blocks),
                                                               np.array_split(f2, n_blocks))])
    mean = float(blocks.mean())
    se = float(blocks.std(ddof=1) / math.sqrt(n_blocks))
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, n_blocks - 1)) * se
    return KernelDistance(mean, mean - half, mean + half, se, n_blocks)


def quality(classifier, images, reference_features, *, n_blocks: int = 10) -> dict:
    """The sample-quality summary of `images` against real digits' `reference_features`:
    `n`, `confident` (fraction with confidence > 0.9), `class_fractions` (10,),
    `min_class_fraction`, `max_class_fraction`, `frechet` (Frechet distance of the classifier
    features) and `kid` (a `KernelDistance`). `images` are pixels in [0, 1]."""
    x = _pixel_images(images)
    probs = predict_proba(classifier, x)
    fr = class_fractions(probs)
    f = features(classifier, x)
    return {
        "n": int(x.shape[0]),
        "confident": confident_fraction(probs),
        "class_fractions": fr,
        "min_class_fraction": float(fr.min()),
        "max_class_fraction": float(fr.max()),
        "frechet": frechet_distance(f, reference_features),
        "kid": kernel_distance(f, reference_features, n_blocks=n_blocks),
    }


# ----------------------------------------------------------------------------------------
# Likelihoods in bits per dimension


def _uint8_images(images, name: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty uint8 array (n, ...) of grey levels, got "
                         f"{x.dtype} {x.shape}.")
    return x.reshape(x.shape[0], -1)


def pixel_categorical(train_images, *, alpha: float = 1.0) -> Float[np.ndarray, "d 256"]:
    """The per-pixel independent categorical model: for each of the `d` pixels, the frequencies
    of the 256 grey levels in `train_images` (uint8 `(n, ...)`) with `alpha` added to every
    count (add-one smoothing by default, so no level has probability 0). Returns `(d, 256)`."""
    x = _uint8_images(train_images, "train_images")
    if not alpha > 0:
        raise ValueError(f"`alpha` must be positive, got {alpha!r}.")
    d = x.shape[1]
    counts = np.zeros((d, 256))
    np.add.at(counts, (np.broadcast_to(np.arange(d), x.shape), x), 1.0)
    return (counts + alpha) / (x.shape[0] + 256 * alpha)


def categorical_bits_per_dim(probs, images) -> Float[np.ndarray, " n"]:
    """Each image's negative log2-likelihood per pixel under `pixel_categorical` probabilities
    `probs: (d, 256)`; `images` uint8 `(n, ...)` with `d` pixels. An exact discrete likelihood:
    no dequantization needed."""
    x = _uint8_images(images)
    probs = np.asarray(probs, np.float64)
    if probs.shape != (x.shape[1], 256):
        raise ValueError(f"`probs` must have shape ({x.shape[1]}, 256) for these images, got {probs.shape}.")
    return -np.log2(probs[np.arange(x.shape[1]), x]).mean(axis=1)


def dequantize(key: PRNGKeyArray, images) -> Float[np.ndarray, "n ..."]:
    """Uniform dequantization of 8-bit images: `(k + u) / 256` with `u ~ U[0, 1)` per pixel, a
    continuous image in [0, 1] whose bin `[k/256, (k+1)/256)` is the grey level `k`."""
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"`images` must be uint8 grey levels, got {x.dtype}.")
    u = np.asarray(jax.random.uniform(key, x.shape, dtype=np.float32))
    return ((x.astype(np.float32) + u) / 256.0).astype(np.float32)


def bits_per_dim(log_density, dim: int, *, scale: float = 1.0) -> np.ndarray:
    """Bits per dimension of 8-bit data from the log-density (nats) of its uniformly dequantized
    version `y = (k + u)/256` in [0, 1]^dim:

        bits/dim = (-log p(y) + dim log 256) / (dim log 2)

    which bounds the discrete model's `-log2 P(k) / dim` from above (Jensen over `u`; Theis et
    al. 2016). If the model's density is of `z = scale * y + shift` (data standardised or mapped
    to [-1, 1]: `scale = 2`), pass `scale`: `log p(y) = log p(z) + dim log scale`.
    """
    dim = check_positive_int("dim", dim)
    if not scale > 0:
        raise ValueError(f"`scale` must be positive, got {scale!r}.")
    log_py = np.asarray(log_density, np.float64) + dim * math.log(scale)
    return (-log_py + dim * math.log(256.0)) / (dim * math.log(2.0))


class MeanWithCI(NamedTuple):
    """A mean over images with its confidence interval."""

    mean: float
    low: float
    high: float
    std_error: float
    n: int


def mean_with_ci(values, *, confidence: float = 0.95) -> MeanWithCI:
    """The mean of `values` `(n,)` or `(n, r)` (r repeated estimates per item, e.g. Hutchinson
    probes: each item's estimates are averaged first) with a Student-t confidence interval over
    the `n` items. The item-to-item spread includes the estimator's own noise, so the interval
    covers both."""
    v = np.asarray(values, np.float64)
    if v.ndim == 2:
        v = v.mean(axis=1)
    if v.ndim != 1 or v.size < 2 or not np.all(np.isfinite(v)):
        raise ValueError(f"`values` must be finite, shape (n,) or (n, r) with n >= 2; got {np.shape(values)}.")
    n = v.size
    se = float(v.std(ddof=1) / math.sqrt(n))
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return MeanWithCI(float(v.mean()), float(v.mean()) - half, float(v.mean()) + half, se, n)


# ----------------------------------------------------------------------------------------
# Memorisation


def nearest_neighbours(train_images, images) -> tuple[np.ndarray, np.ndarray]:
    """For each of `images` `(m, ...)`, the Euclidean distance in pixel space to its nearest
    image in `train_images` `(n, ...)` and that image's index: `(distances (m,), indices (m,))`,
    by scikit-learn's exact (brute-force) `NearestNeighbors`."""
    train = np.asarray(train_images, np.float32)
    x = np.asarray(images, np.float32)
    if train.ndim < 2 or x.ndim < 2 or train.shape[1:] != x.shape[1:] or not len(train) or not len(x):
        raise ValueError(f"`train_images` and `images` must be non-empty with the same image shape; got "
                         f"{train.shape} and {x.shape}.")
    nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(train.reshape(len(train), -1))
    distances, indices = nn.kneighbors(x.reshape(len(x), -1))
    return distances[:, 0], indices[:, 0]
