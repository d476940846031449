"""Sample quality for MNIST, measured with a classifier, and the chapter-6 samplers.

A generated digit is judged by a small CNN (`models.Classifier`, artifact `mnist_classifier`):

- `confident_fraction`: the fraction of samples classified with probability above 0.9, a
  proxy for "looks like a clear digit";
- `class_fractions`: the fraction assigned to each of the ten digits (a sampler that drops a
  digit, or piles onto one, shows up here);
- `frechet_distance`: the Frechet distance between Gaussians fitted to the classifier's
  penultimate-layer features of the samples and of real held-out digits (the FID of Heusel et
  al. 2017, with a small MNIST classifier in place of Inception). It is biased upwards for
  small sample sizes, so compare it only with real digits of the same sample size (`quality`
  for real held-out images).

Images are `(n, 1, 28, 28)` (or `(n, 28, 28)`) in [0, 1] pixel space.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from ._checks import check_positive_int

CONFIDENCE = 0.9

# Sampler settings for the `mnist_unet` artifact, shared by the chapter and `score-models sample`.
# For a Gaussian of width sigma_i a step alpha_i = eps sigma_i^2 / sigma_L^2 contracts the excess
# spread by a = eps / (2 sigma_L^2) per step and leaves a stationary std of sigma_i sqrt(2 / (2 - a)).
# eps = 2.4e-4 with sigma_L = 0.02 gives a = 0.3 (std 1.08 sigma_i); NCSN's eps = 2e-5 (a = 0.025)
# needs ~100 steps per level. Measured on 256 samples of the committed model (one batch, seed 0):
# 5 steps per level give 74% confident digits, 10 give 80%, 15 give 82%; eps 1e-4 or 1.5e-3 are
# far worse at 5 steps (61%, 24%). With these settings, in chunks of 32 as `sample` runs them,
# seeds 0-3 give 81%, 84%, 83%, 80%. The probability-flow ODE with 30 Heun steps gives 79-82%.
ANNEALED = {"eps": 2.4e-4, "n_steps_each": 20, "denoise": True}
PF_ODE = {"n_steps": 30}


def as_images(x, name: str = "images") -> jax.Array:
    """`x` as float32 `(n, 1, 28, 28)`; accepts `(n, 28, 28)`."""
    x = jnp.asarray(x, dtype=jnp.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"`{name}` must have shape (n, 1, 28, 28) or (n, 28, 28), got {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty.")
    return x


def _batched(fn: Callable, x, batch: int):
    """`fn` (jitted, on batches of `batch` images) applied to all of `x`, padding the last batch
    so only one shape compiles; returns a NumPy array."""
    n = x.shape[0]
    pad = (-n) % batch
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    out = [np.asarray(fn(x[i:i + batch])) for i in range(0, x.shape[0], batch)]
    return np.concatenate(out)[:n]


@jax.jit
def _proba(classifier, x):
    return jax.nn.softmax(jax.vmap(classifier)(x), axis=-1)


@jax.jit
def _features(classifier, x):
    return jax.vmap(classifier.features)(x)


def predict_proba(classifier, images, *, batch: int = 500) -> np.ndarray:
    """Class probabilities `(n, 10)` of `images` under `classifier`."""
    x = as_images(images)
    return _batched(lambda b: _proba(classifier, b), x, min(batch, x.shape[0]))


def features(classifier, images, *, batch: int = 500) -> np.ndarray:
    """The classifier's penultimate-layer features `(n, f)` of `images`."""
    x = as_images(images)
    return _batched(lambda b: _features(classifier, b), x, min(batch, x.shape[0]))


def confident_fraction(probs, threshold: float = CONFIDENCE) -> float:
    """The fraction of rows of `probs` `(n, k)` whose largest probability exceeds `threshold`."""
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"`probs` must have shape (n, k), got {p.shape}.")
    return float(np.mean(p.max(axis=-1) > threshold))


def class_fractions(probs) -> np.ndarray:
    """The fraction of rows of `probs` `(n, k)` assigned (by argmax) to each of the `k` classes."""
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"`probs` must have shape (n, k), got {p.shape}.")
    return np.bincount(p.argmax(axis=-1), minlength=p.shape[1]) / p.shape[0]


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
    `f1: (n, f)` and `f2: (m, f)`."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"`f1` and `f2` must have shapes (n, f) and (m, f), n, m >= 2; got {f1.shape}, {f2.shape}.")
    return gaussian_frechet(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def quality(classifier, images, reference_features) -> dict:
    """The sample-quality summary of `images` against real digits' `reference_features`:
    `confident` (fraction with confidence > 0.9), `class_fractions` (10,), `min_class_fraction`,
    `frechet` (Frechet distance of the classifier features)."""
    x = as_images(images)
    probs = predict_proba(classifier, x)
    fr = class_fractions(probs)
    return {
        "n": int(x.shape[0]),
        "confident": confident_fraction(probs),
        "class_fractions": fr,
        "min_class_fraction": float(fr.min()),
        "frechet": frechet_distance(features(classifier, x), reference_features),
    }


# ----------------------------------------------------------------------------------------
# Sampling from the chapter's model


def to_pixels(x) -> np.ndarray:
    """Samples `(n, 1, 28, 28)` as float32 `(n, 28, 28)` clipped to [0, 1]."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(x.reshape(x.shape[0], 28, 28), 0.0, 1.0)


def default_chunk_size() -> int | None:
    """Images per sampler call: 32 on a CPU, where a cache-sized batch runs the U-Net about 1.5x
    faster per image than 256 at once (measured on 2 cores); everything at once elsewhere."""
    return 32 if jax.default_backend() == "cpu" else None


def sample(model, key: PRNGKeyArray, n: int, *, sampler: str = "annealed", sigmas=None,
           trajectory_every: int | None = None, chunk_size: int | None | str = "auto", **options):
    """`n` samples `(n, 1, 28, 28)` from a noise-conditional `model` (not yet clipped).

    `sampler="annealed"`: annealed Langevin dynamics over `sigmas` (default: the `mnist_unet`
    recipe's), options `eps`, `n_steps_each`, `denoise` (defaults `ANNEALED`).
    `sampler="pf-ode"`: the probability-flow ODE with Heun's method on a geometric grid of
    `n_steps` noise levels from `sigmas[0]` to `sigmas[-1]` (default `PF_ODE`), via
    `score_models.probability_flow_ode`.

    The images are sampled `chunk_size` at a time (`"auto"`: `default_chunk_size()`; None: all
    at once), chunk `i` with key `fold_in(key, i)`; every chunk has the same shape, so the sampler
    compiles once. With `trajectory_every` (annealed) the pair `(x, trajectory)` is returned,
    `trajectory` of shape `(frames, n, 1, 28, 28)`.
    """
    import diffrax

    import score_models as sm
    from .zoo.chapter6 import unet_sigmas

    n = check_positive_int("n", n)
    if sampler not in ("annealed", "pf-ode"):
        raise ValueError(f"`sampler` must be 'annealed' or 'pf-ode', got {sampler!r}.")
    chunk_size = default_chunk_size() if chunk_size == "auto" else chunk_size
    chunk = n if chunk_size is None else min(check_positive_int("chunk_size", chunk_size), n)
    sigmas = unet_sigmas() if sigmas is None else jnp.asarray(sigmas, jnp.float32)
    sigma_max, sigma_min = float(sigmas[0]), float(sigmas[-1])
    if sampler == "annealed":
        opts = {**ANNEALED, **options}
        run = lambda x0, k: sm.annealed_langevin(model, x0, sigmas, k, trajectory_every=trajectory_every,  # noqa: E731
                                                 **opts)
    else:
        opts = {**PF_ODE, **options}
        grid = sm.geometric_sigmas(sigma_max, sigma_min, check_positive_int("n_steps", opts["n_steps"]) + 1)
        run = lambda x0, k: sm.probability_flow_ode(  # noqa: E731
            model, x0, sigma_max=sigma_max, sigma_min=sigma_min, solver=diffrax.Heun(),
            stepsize_controller=diffrax.StepTo(ts=grid), dt0=None)

    def one_chunk(k):
        key_init, key_run = jax.random.split(k)
        x0 = sigma_max * jax.random.normal(key_init, (chunk, 1, 28, 28)) + getattr(model, "data_mean", 0.0)
        return run(x0, key_run)

    n_chunks = -(-n // chunk)
    runs = [one_chunk(jax.random.fold_in(key, i) if n_chunks > 1 else key) for i in range(n_chunks)]
    x = jnp.concatenate([r.samples for r in runs])[:n]
    if trajectory_every is not None and sampler == "annealed":
        return x, jnp.concatenate([r.trajectory for r in runs], axis=1)[:, :n]
    return x


def image_grid(images, ncol: int = 16, pad: int = 1) -> np.ndarray:
    """Tiles images `(n, 28, 28)` (or `(n, 1, 28, 28)`) into one array, `ncol` per row, with
    `pad` pixels of white between them (digits are white on black)."""
    x = np.asarray(as_images(images))[:, 0]
    n = x.shape[0]
    nrow = -(-n // ncol)
    grid = np.ones((nrow * (28 + pad) + pad, ncol * (28 + pad) + pad), np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (28 + pad):pad + r * (28 + pad) + 28, pad + c * (28 + pad):pad + c * (28 + pad) + 28] = x[i]
    return grid


def save_png(images, path, ncol: int = 16) -> None:
    """Writes a grid of images (pixel values in [0, 1]) to a PNG file."""
    import matplotlib.pyplot as plt

    plt.imsave(path, np.clip(image_grid(images, ncol), 0, 1), cmap="gray", vmin=0.0, vmax=1.0)
