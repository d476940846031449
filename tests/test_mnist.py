"""Chapter 6: the U-Net, the classifier, the sample-quality and likelihood metrics, the image
helpers, the chapter's loss and samplers, cached results and data-parallel training. Small
models and sizes: these run in seconds on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import score_models as sm
from score_models import artifacts, cli, images, mnist, zoo
from score_models.models import Classifier, UNet
from score_models.models.unet import Conv2d, GroupNorm
from score_models.zoo import chapter6

TINY_UNET = {"type": "UNet", "channels": [8, 16], "emb_dim": 16, "n_frequencies": 2, "groups": 4,
             "data_mean": 0.13, "data_std": 0.31}


def _perturbed(model, key, scale=0.05):
    """`model` with every weight nudged, so zero-initialised layers do not hide anything."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(tree, leaves), static)


@pytest.fixture(scope="module")
def unet():
    return _perturbed(sm.models.from_config(TINY_UNET, jax.random.key(0)), jax.random.key(1))


# ---------------------------------------------------------------------------------------
# U-Net


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 14), (3, 2, 14), (1, 1, 7), (3, 1, 7), (3, 2, 7)])
def test_conv_matches_lax_conv(kernel, stride, size):
    """Both code paths of Conv2d (im2col on a CPU, lax.conv elsewhere) against lax.conv."""
    conv = Conv2d(5, 6, kernel, stride=stride, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (size, size, 5))
    ref = lax.conv_general_dilated(x[None], conv.weight, (stride, stride), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + conv.bias
    np.testing.assert_allclose(conv.im2col(x), ref, atol=1e-5)
    np.testing.assert_allclose(conv.lax_conv(x), ref, atol=1e-5)
    np.testing.assert_allclose(conv(x), ref, atol=1e-5)


def test_group_norm_normalises_each_group():
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (7, 7, 8))
    y = GroupNorm(4, 8)(x).reshape(7, 7, 4, 2)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 1, 3)), 1.0, atol=1e-3)


def test_unet_noise_preconditioning(unet):
    x = jax.random.uniform(jax.random.key(2), (1, 28, 28))
    for sigma in (0.02, 1.0, 16.0):
        s = unet(x, sigma)
        assert s.shape == (1, 28, 28) and s.dtype == jnp.float32
        # s(x, sigma) = F(x, sigma) / sigma: the network predicts the noise direction.
        np.testing.assert_allclose(s * sigma, unet.raw_output(x, sigma), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(unet.denoise(x, sigma), x + sigma**2 * s, rtol=1e-5, atol=1e-5)
    # Output varies with sigma (the embedding reaches the blocks) and with x.
    assert not np.allclose(unet.raw_output(x, 0.1), unet.raw_output(x, 10.0))
    assert not np.allclose(unet.raw_output(x, 1.0), unet.raw_output(1 - x, 1.0))


def test_unet_edm_preconditioning():
    """D = mean + c_skip (x - mean) + c_out F (Karras et al. 2022, Table 1) and s = (D - x) / sigma^2."""
    model = _perturbed(sm.models.from_config({**TINY_UNET, "preconditioning": "edm"}, jax.random.key(0)),
                       jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (1, 28, 28))
    mean, sd = TINY_UNET["data_mean"], TINY_UNET["data_std"]
    for sigma in (0.002, 0.3, 16.0):
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / np.sqrt(sigma**2 + sd**2)
        d = mean + c_skip * (x - mean) + c_out * model.raw_output(x, sigma)
        np.testing.assert_allclose(model.denoise(x, sigma), d, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(model(x, sigma), (d - x) / sigma**2, rtol=2e-3, atol=1e-5 / sigma**2)


def test_unet_starts_at_zero_or_at_the_gaussian_score():
    x = jax.random.uniform(jax.random.key(2), (3, 1, 28, 28))
    sigmas = jnp.array([0.1, 1.0, 10.0])
    model = sm.models.from_config(TINY_UNET, jax.random.key(0))
    assert float(jnp.abs(jax.vmap(model)(x, sigmas)).max()) == 0.0  # zero last layer
    # With EDM's preconditioning, a zero network is the exact score of N(mean, sd^2 + sigma^2).
    edm = sm.models.from_config({**TINY_UNET, "preconditioning": "edm"}, jax.random.key(0))
    var = TINY_UNET["data_std"] ** 2 + sigmas[:, None, None, None] ** 2
    np.testing.assert_allclose(jax.vmap(edm)(x, sigmas), -(x - TINY_UNET["data_mean"]) / var, rtol=1e-6)
    m = _perturbed(model, jax.random.key(3))
    batched = jax.vmap(m)(x, sigmas)
    for i, sigma in enumerate([0.1, 1.0, 10.0]):
        np.testing.assert_allclose(batched[i], m(x[i], sigma), rtol=1e-4, atol=1e-5)


def test_unet_variants_and_config_roundtrip():
    for extra in ({"patch": 1, "channels": [8, 16, 16], "attention": False}, {"n_res": 2}):
        m = sm.models.from_config({**TINY_UNET, **extra}, jax.random.key(0))
        assert m(jnp.zeros((1, 28, 28)), 0.5).shape == (1, 28, 28)
    # Deep nets get enough keys (the key count is computed, not a fixed budget).
    big = eqx.filter_eval_shape(sm.models.from_config, {**TINY_UNET, "patch": 1, "channels": [8, 8, 8],
                                                         "n_res": 6, "image_shape": [1, 28, 28]})
    assert sum(len(blocks) for blocks in big.down) == 18
    cfg = json.loads(json.dumps(TINY_UNET))
    a, b = sm.models.from_config(cfg, jax.random.key(4)), sm.models.from_config(TINY_UNET, jax.random.key(4))
    assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_unet_bad_input():
    m = sm.models.from_config(TINY_UNET, jax.random.key(0))
    with pytest.raises(ValueError, match="`x` must be ONE image"):
        m(jnp.zeros((2, 1, 28, 28)), 1.0)
    with pytest.raises(ValueError, match="`sigma` must be a scalar"):
        m(jnp.zeros((1, 28, 28)), jnp.ones(2))
    with pytest.raises(ValueError, match="image_shape"):
        sm.models.from_config({**TINY_UNET, "image_shape": [1, 30, 30], "channels": [8, 16, 16]})
    with pytest.raises(ValueError, match="data_std"):
        sm.models.from_config({**TINY_UNET, "data_std": 0.0})
    with pytest.raises(ValueError, match="`preconditioning`"):
        sm.models.from_config({**TINY_UNET, "preconditioning": "vp"})


# ---------------------------------------------------------------------------------------
# Images


def test_image_helpers():
    x = np.linspace(-1, 2, 2 * 784, dtype=np.float32).reshape(2, 1, 28, 28)
    p = images.to_pixels(x)
    assert p.shape == (2, 28, 28) and p.dtype == np.float32 and p.min() == 0 and p.max() == 1
    u = images.to_uint8(x)
    assert u.dtype == np.uint8 and u.min() == 0 and u.max() == 255
    np.testing.assert_array_equal(u, np.rint(p * 255))
    grid = images.image_grid(p[:, None], ncol=2)
    assert grid.shape == (28 + 2, 2 * 28 + 3)
    np.testing.assert_array_equal(grid[1:29, 30:58], p[1])  # second tile, after one pixel of padding
    assert images.image_grid(np.zeros((3, 28, 28)), ncol=2)[30:59, 30:59].min() == 1.0  # empty tile: white
    with pytest.raises(ValueError, match="`images`"):
        images.as_images(np.zeros((3, 27, 28)))
    with pytest.raises(ValueError, match="NaN"):
        images.as_images(np.full((1, 28, 28), np.nan))
    with pytest.raises(ValueError, match="`ncol`"):
        images.image_grid(p, ncol=0)


def test_save_png_checks_its_folder_before_any_work(tmp_path):
    x = np.full((2, 28, 28), 0.5, np.float32)
    with pytest.raises(ValueError, match="`path`: the folder .*missing does not exist"):
        images.save_png(x, tmp_path / "missing" / "x.png")
    images.save_png(x, tmp_path / "x.png")
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------
# Classifier and sample-quality metrics


def test_classifier_shapes():
    c = sm.models.from_config({"type": "Classifier", "channels": [4, 8], "n_features": 12}, jax.random.key(0))
    x = jnp.zeros((1, 28, 28))
    assert c(x).shape == (10,) and c.features(x).shape == (12,)
    probs = mnist.predict_proba(c, jnp.zeros((7, 28, 28)), batch=3)
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert mnist.features(c, jnp.zeros((5, 1, 28, 28)), batch=2).shape == (5, 12)
    with pytest.raises(ValueError, match="`x` must be ONE image"):
        c(jnp.zeros((28, 28)))
    with pytest.raises(ValueError, match="`images`"):
        mnist.predict_proba(c, jnp.zeros((3, 27, 28)))


def test_confidence_and_class_fractions_on_known_probs():
    probs = np.array([[0.95, 0.05, 0.0], [0.5, 0.4, 0.1], [0.0, 0.05, 0.95], [0.1, 0.88, 0.02]])
    assert mnist.confident_fraction(probs) == 0.5
    assert mnist.confident_fraction(probs, threshold=0.85) == 0.75
    np.testing.assert_allclose(mnist.class_fractions(probs), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(mnist.class_fractions(np.eye(10)), np.full(10, 0.1))
    with pytest.raises(ValueError, match="`probs`"):
        mnist.class_fractions(np.zeros(10))


def test_frechet_distance_identical_sets_is_zero():
    f = np.random.default_rng(0).normal(size=(500, 16))
    assert abs(mnist.frechet_distance(f, f)) < 1e-6


def test_gaussian_frechet_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)  # diagonal covariances
    assert mnist.gaussian_frechet(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-9)
    # A general pair against scipy's matrix square root.
    from scipy.linalg import sqrtm

    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
    assert mnist.gaussian_frechet(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-7)


def test_frechet_distance_of_shifted_gaussians():
    """Samples of N(0, I) and N(m, s^2 I) in d dimensions: the closed form is
    ||m||^2 + d (1 - s)^2; the empirical distance converges to it at rate ~ d / n."""
    rng = np.random.default_rng(2)
    d, n, s = 8, 20_000, 1.5
    m = np.full(d, 0.5)
    f1 = rng.normal(size=(n, d))
    f2 = m + s * rng.normal(size=(n, d))
    expected = np.sum(m**2) + d * (1 - s) ** 2
    # Standard errors (delta method): the mean term ||m_hat1 - m_hat2||^2 has sd
    # 2 sqrt(||m||^2 (1 + s^2) / n); each of the d variance terms (sd_hat1 - sd_hat2)^2 has sd
    # 2 |1 - s| sqrt((1 + s^2) / (2 n)). Allow 5 standard errors (the O(d^2 / n) bias is smaller).
    se = np.sqrt(4 * np.sum(m**2) * (1 + s**2) / n + d * 4 * (1 - s) ** 2 * (1 + s**2) / (2 * n))
    assert mnist.frechet_distance(f1, f2) == pytest.approx(expected, abs=5 * se)


def _cubic_feature_map(x):
    """The explicit feature map of the kernel (a.b / d + 1)^3 in d = 2 dimensions: every
    monomial x^alpha with |alpha| <= 3, weighted by sqrt(3! / ((3 - |alpha|)! alpha!) / d^|alpha|)."""
    from math import factorial

    d = x.shape[1]
    cols = []
    for i in range(4):
        for j in range(4 - i):
            c = factorial(3) / (factorial(3 - i - j) * factorial(i) * factorial(j)) / d ** (i + j)
            cols.append(np.sqrt(c) * x[:, 0] ** i * x[:, 1] ** j)
    return np.stack(cols, axis=1)


def test_kernel_distance_matches_its_feature_map_and_is_unbiased():
    """For the cubic kernel the squared MMD is ||E phi(X) - E phi(Y)||^2 with an explicit
    10-dimensional phi in 2D, computed here from a million draws (the population value up to
    ~1e-4); the blocked unbiased estimate from 2,000 points must be within 4 of its standard
    errors of it, and for two samples of one distribution its interval must cover 0."""
    rng = np.random.default_rng(3)
    shift = np.array([1.0, 0.0])
    big_x, big_y = rng.normal(size=(1_000_000, 2)), rng.normal(size=(1_000_000, 2)) + shift
    truth = np.sum((_cubic_feature_map(big_x).mean(0) - _cubic_feature_map(big_y).mean(0)) ** 2)
    x, y = rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)) + shift
    kd = mnist.kernel_distance(x, y, n_blocks=10)
    assert kd.low < kd.estimate < kd.high and kd.n_blocks == 10
    assert abs(kd.estimate - truth) < 4 * kd.std_error, (kd, truth)
    assert truth > 8 * kd.std_error  # the test has power: the distance is clearly nonzero
    same = mnist.kernel_distance(x, rng.normal(size=(2000, 2)), n_blocks=10)
    assert same.low < 0 < same.high, same
    # Averaged over 200 independent pairs of equal distributions, the estimate is 0 within 4 SE.
    reps = [mnist.kernel_distance(rng.normal(size=(40, 2)), rng.normal(size=(40, 2)), n_blocks=2).estimate
            for _ in range(200)]
    assert abs(np.mean(reps)) < 4 * np.std(reps) / np.sqrt(200)


def test_kernel_distance_block_is_the_unbiased_mmd():
    """One block against the textbook unbiased estimator, written as explicit double sums."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(8, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(y[i], y[j]) for i in range(8) for j in range(8) if i != j) / 56
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(8)) / 48
    blocks = [mnist.kernel_distance(np.concatenate([x, x]), np.concatenate([y, y]), n_blocks=2)]
    assert blocks[0].estimate == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert blocks[0].std_error == pytest.approx(0.0, abs=1e-12)  # two identical blocks
    with pytest.raises(ValueError, match="`n_blocks`"):
        mnist.kernel_distance(x, y, n_blocks=4)
    with pytest.raises(ValueError, match="`f1` and `f2`"):
        mnist.kernel_distance(x, y[:, :2])


def test_quality_summary_keys():
    c = sm.models.from_config({"type": "Classifier", "channels": [4, 8], "n_features": 6}, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (20, 1, 28, 28))
    ref = mnist.features(c, jax.random.uniform(jax.random.key(2), (30, 1, 28, 28)))
    q = mnist.quality(c, x, ref, n_blocks=2)
    assert q["n"] == 20 and 0 <= q["confident"] <= 1 and q["class_fractions"].shape == (10,)
    assert q["min_class_fraction"] == pytest.approx(q["class_fractions"].min())
    assert q["max_class_fraction"] == pytest.approx(q["class_fractions"].max())
    assert q["frechet"] >= -1e-6 and q["kid"].n_blocks == 2


def test_quality_refuses_grey_levels_and_non_finite_features():
    c = sm.models.from_config({"type": "Classifier", "channels": [4, 8], "n_features": 6}, jax.random.key(0))
    ref = np.random.default_rng(0).normal(size=(30, 6))
    grey = np.linspace(0, 255, 8 * 784).reshape(8, 1, 28, 28)  # 8-bit levels, not [0, 1] pixels
    for call in (lambda: mnist.quality(c, grey, ref, n_blocks=2), lambda: mnist.predict_proba(c, grey),
                 lambda: mnist.features(c, grey)):
        with pytest.raises(ValueError, match=r"`images` must be pixels in \[0, 1\].*255"):
            call()
    # Unclipped samples, a little outside [0, 1], are still accepted.
    assert mnist.predict_proba(c, np.full((2, 28, 28), 1.2)).shape == (2, 10)
    with pytest.raises(ValueError, match="`f1` contains 15 NaN"):
        mnist.frechet_distance(np.full((5, 3), np.nan), np.ones((5, 3)))
    bad = ref.copy()
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="`f2` contains 1 NaN or infinite"):
        mnist.kernel_distance(ref, bad, n_blocks=2)


# ---------------------------------------------------------------------------------------
# Likelihoods and memorisation


def test_pixel_categorical_on_known_counts():
    train = np.array([[0, 0], [0, 255], [0, 255], [7, 255]], np.uint8)
    probs = mnist.pixel_categorical(train, alpha=1.0)
    assert probs.shape == (2, 256)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs[0, 0] == pytest.approx(4 / 260) and probs[1, 255] == pytest.approx(4 / 260)
    assert probs[0, 7] == pytest.approx(2 / 260) and probs[0, 100] == pytest.approx(1 / 260)
    bits = mnist.categorical_bits_per_dim(probs, np.array([[0, 255], [100, 0]], np.uint8))
    np.testing.assert_allclose(bits, [-np.log2(4 / 260), -(np.log2(1 / 260) + np.log2(2 / 260)) / 2])
    with pytest.raises(ValueError, match="uint8"):
        mnist.pixel_categorical(train.astype(np.float32))
    with pytest.raises(ValueError, match="`probs`"):
        mnist.categorical_bits_per_dim(probs, np.zeros((1, 3), np.uint8))


def test_pixel_categorical_on_mnist(shared_mnist):
    """The independent-pixel baseline: about 1.69 bits/dim on the test split."""
    train, _ = sm.data.mnist_uint8("train", download=False)
    test, _ = sm.data.mnist_uint8("test", download=False)
    bits = mnist.categorical_bits_per_dim(mnist.pixel_categorical(train), test)
    assert bits.shape == (10_000,)
    assert 1.68 < bits.mean() < 1.70


def test_dequantize_and_bits_per_dim():
    k = np.array([[0, 1, 254, 255]], np.uint8)
    y = mnist.dequantize(jax.random.key(0), np.repeat(k, 1000, axis=0))
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() < 1
    np.testing.assert_array_equal(np.floor(y * 256).astype(np.uint8), np.repeat(k, 1000, axis=0))
    np.testing.assert_allclose((y * 256 - k).mean(0), 0.5, atol=4 * np.sqrt(1 / 12 / 1000))
    # The uniform density on [0, 1]^D is the model P(k) = 256^-D: exactly 8 bits per dimension,
    # whether its density is given for y in [0, 1] or for z = 2 y - 1 in [-1, 1] (density 2^-D).
    d = 784
    assert mnist.bits_per_dim(0.0, d) == pytest.approx(8.0)
    assert mnist.bits_per_dim(-d * np.log(2.0), d, scale=2.0) == pytest.approx(8.0)
    # A density constant on each bin, equal to P(k) 256^D there: -log2 P(k) / D exactly.
    p_k = 1e-300
    assert mnist.bits_per_dim(np.log(p_k) + d * np.log(256.0), d) == pytest.approx(-np.log2(p_k) / d)
    with pytest.raises(ValueError, match="uint8"):
        mnist.dequantize(jax.random.key(0), y)


def test_mean_with_ci():
    v = np.array([1.0, 2.0, 3.0, 4.0])
    ci = mnist.mean_with_ci(v)
    se = np.std(v, ddof=1) / 2
    assert ci.mean == 2.5 and ci.std_error == pytest.approx(se) and ci.n == 4
    assert ci.high - ci.mean == pytest.approx(3.182446305284263 * se)  # t(0.975, 3)
    per_item = mnist.mean_with_ci(np.array([[0.0, 2.0], [1.0, 3.0], [2.0, 4.0], [3.0, 5.0]]))
    assert per_item.mean == 2.5 and per_item.std_error == pytest.approx(se)
    with pytest.raises(ValueError, match="`values`"):
        mnist.mean_with_ci([1.0])


def test_nearest_neighbours_against_brute_force():
    rng = np.random.default_rng(5)
    train, queries = rng.uniform(size=(300, 28, 28)), rng.uniform(size=(20, 28, 28))
    queries[3] = train[123]
    dist, idx = mnist.nearest_neighbours(train, queries)
    full = np.linalg.norm(queries.reshape(20, 1, -1) - train.reshape(1, 300, -1), axis=-1)
    np.testing.assert_array_equal(idx, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-4, atol=1e-3)
    assert idx[3] == 123 and dist[3] < 1e-3
    with pytest.raises(ValueError, match="same image shape"):
        mnist.nearest_neighbours(train, queries[:, :27])


# ---------------------------------------------------------------------------------------
# The chapter's loss, samplers and cached results


def _gaussian_images(key, n, mean=0.13, sd=0.31):
    return mean + sd * jax.random.normal(key, (n, 1, 28, 28))


@pytest.mark.parametrize("noise", [
    {"distribution": "log_normal", "log_mean": -1.2, "log_std": 1.2},
    {"distribution": "log_uniform", "sigma_min": 0.002, "sigma_max": 16.0},
    {"distribution": "ladder", "sigma_min": 0.02, "sigma_max": 16.0, "n": 20},
])
def test_denoising_loss_at_the_exact_score(noise):
    """For Gaussian images N(m, sd^2 I) the exact score at level sigma is -(x - m)/(sd^2 +
    sigma^2), which a zero-initialised EDM U-Net computes. Per pixel, E (sigma s + z)^2 =
    sd^2/(sd^2 + sigma^2) there, so the EDM-weighted loss is exactly 1/2 at every sigma, and the
    sigma^2-weighted one is 1/2 E_sigma[sd^2/(sd^2 + sigma^2)]."""
    edm = sm.models.from_config({**TINY_UNET, "preconditioning": "edm"}, jax.random.key(0))
    x = _gaussian_images(jax.random.key(1), 512)
    keys = jax.random.split(jax.random.key(2), 8)
    loss = chapter6.denoising_loss(noise, weighting="edm", sigma_data=0.31)
    values = np.array([float(loss(edm, x, k)) for k in keys])
    assert abs(values.mean() - 0.5) < 4 * values.std(ddof=1) / np.sqrt(8) + 1e-3
    sig = np.asarray(chapter6.draw_sigmas(noise, jax.random.key(3), 200_000))
    expected = 0.5 * np.mean(0.31**2 / (0.31**2 + sig**2))
    loss2 = chapter6.denoising_loss(noise, weighting="sigma2")
    values2 = np.array([float(loss2(edm, x, k)) for k in keys])
    assert abs(values2.mean() - expected) < 4 * values2.std(ddof=1) / np.sqrt(8) + 2e-3
    # A wrong score (the noise-predicting U-Net at zero: s = 0) loses: 1/2 per pixel, times the weight.
    zero = sm.models.from_config(TINY_UNET, jax.random.key(0))
    assert float(loss2(zero, x, keys[0])) == pytest.approx(0.5, abs=0.01) and expected < 0.45


def test_draw_sigmas_and_loss_options():
    s = np.asarray(chapter6.draw_sigmas({"distribution": "log_normal", "log_mean": -1.2, "log_std": 1.2},
                                        jax.random.key(0), 100_000))
    assert abs(np.log(s).mean() + 1.2) < 0.02 and abs(np.log(s).std() - 1.2) < 0.02
    s = np.asarray(chapter6.draw_sigmas({"distribution": "ladder", "sigma_max": 4.0, "sigma_min": 1.0, "n": 3},
                                        jax.random.key(0), 3000))
    np.testing.assert_allclose(np.unique(s), [1.0, 2.0, 4.0], rtol=1e-6)
    with pytest.raises(ValueError, match="distribution"):
        chapter6.denoising_loss({"distribution": "cosine"})
    with pytest.raises(ValueError, match="`weighting`"):
        chapter6.denoising_loss({"distribution": "log_normal", "log_mean": 0.0, "log_std": 1.0}, weighting="snr")


def test_sample_shapes_options_and_score_evals(unet):
    kw = {"sigma_max": 5.0, "n_levels": 4}
    out = chapter6.sample(unet, jax.random.key(0), 3, sampler="annealed", n_steps_each=2, **kw)
    assert out.samples.shape == (3, 1, 28, 28) and bool(jnp.all(jnp.isfinite(out.samples)))
    assert out.trajectory is None and out.score_evals == 4 * 2 + 1
    out = chapter6.sample(unet, jax.random.key(0), 3, sampler="annealed", n_steps_each=2, trajectory_every=2, **kw)
    assert out.trajectory.shape == (1 + 4 + 1, 3, 1, 28, 28)  # x0, one frame per level, denoised
    levels = np.asarray(chapter6.sampler_sigmas("annealed", **kw))
    np.testing.assert_allclose(out.trajectory_sigmas, [levels[0], *levels, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out.trajectory[-1], out.samples)
    y = chapter6.sample(unet, jax.random.key(0), 2, sampler="pf-ode", trajectory_every=1, **kw)
    assert y.samples.shape == (2, 1, 28, 28) and y.score_evals == 2 * 3 + 1
    levels = np.asarray(chapter6.sampler_sigmas("pf-ode", **kw))
    assert y.trajectory.shape == (4 + 1, 2, 1, 28, 28)
    np.testing.assert_allclose(y.trajectory_sigmas, [*levels, 0.0], rtol=1e-5)
    # No option is silently ignored.
    with pytest.raises(ValueError, match="unknown option.*eps"):
        chapter6.sample(unet, jax.random.key(0), 2, sampler="pf-ode", eps=1e-3)
    with pytest.raises(ValueError, match="unknown option.*rho"):
        chapter6.sample(unet, jax.random.key(0), 2, sampler="annealed", rho=7.0)
    with pytest.raises(ValueError, match="`sampler`"):
        chapter6.sample(unet, jax.random.key(0), 2, sampler="ddpm")
    with pytest.raises(ValueError, match="`model`"):
        chapter6.sample(lambda x, s: x, jax.random.key(0), 2)


def test_sample_in_chunks(unet):
    """Chunk `i` of a chunked run is the unchunked sample with key `fold_in(key, i)`; the last,
    partial chunk is trimmed; trajectories are concatenated along the image axis."""
    kw = dict(sampler="annealed", sigma_max=5.0, n_levels=3, n_steps_each=1)
    key = jax.random.key(3)
    out = chapter6.sample(unet, key, 5, chunk_size=2, trajectory_every=1, **kw)
    assert out.samples.shape == (5, 1, 28, 28) and out.trajectory.shape == (3 + 2, 5, 1, 28, 28)
    second = chapter6.sample(unet, jax.random.fold_in(key, 1), 2, chunk_size=None, **kw)
    np.testing.assert_allclose(out.samples[2:4], second.samples, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out.samples[0:2], out.samples[2:4])  # chunks draw different noise
    with pytest.raises(ValueError, match="chunk_size"):
        chapter6.sample(unet, key, 2, chunk_size=0, **kw)


def test_pf_ode_sampler_with_the_exact_gaussian_score():
    """A zero-initialised EDM U-Net is the exact score of Gaussian images N(m, sd^2 I) at every
    level. The ODE is then linear, dx/dsigma = sigma (x - m)/(sd^2 + sigma^2), and so is every
    Heun step: the samples must be Gaussian with mean m and the standard deviation that the
    same Heun recursion, the Tweedie step included, gives in float64 (within 4 SE for 200
    images; Heun's own error, 3% of sd on 18 levels, is in the reference, not the tolerance)."""
    edm = sm.models.from_config({**TINY_UNET, "preconditioning": "edm"}, jax.random.key(0))
    out = chapter6.sample(edm, jax.random.key(1), 200, sampler="pf-ode", chunk_size=None)
    sd, settings = TINY_UNET["data_std"], chapter6.SAMPLERS["pf-ode"]
    sigmas = np.asarray(chapter6.sampler_sigmas("pf-ode"), np.float64)
    gain = 1.0
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        d1 = a / (a**2 + sd**2)
        d2 = b / (b**2 + sd**2) * (1 + (b - a) * d1)
        gain *= 1 + (b - a) * (d1 + d2) / 2
    gain *= sd**2 / (sd**2 + sigmas[-1] ** 2)  # Tweedie: D = m + c_skip (x - m)
    expected_sd = settings["sigma_max"] * gain
    assert abs(expected_sd / sd - 1) < 0.05  # the recursion is close to the exact answer sd
    x = np.asarray(out.samples).reshape(200, -1)
    assert abs(x.mean() - 0.13) < 4 * expected_sd / np.sqrt(x.size)
    assert abs(x.std() - expected_sd) < 4 * expected_sd / np.sqrt(2 * x.size)


def test_bits_per_dim_with_the_exact_gaussian_score():
    """With a zero-initialised EDM U-Net (the exact score of N(m, sd^2 I) at every level) the
    probability-flow ODE's density at sigma_min is N(m, (sd^2 + sigma_min^2) I), the prior
    N(m, sigma_max^2 I) is exact up to sd^2 / sigma_max^2, and a Rademacher probe gives the exact
    trace of the isotropic Jacobian: the bits/dim of the dequantized images must match the
    closed form to the solver's tolerance, for every probe."""
    edm = sm.models.from_config({**TINY_UNET, "preconditioning": "edm"}, jax.random.key(0))
    x = np.asarray(jax.random.randint(jax.random.key(4), (4, 28, 28), 0, 256), np.uint8)
    key = jax.random.key(5)
    kw = dict(sigma_min=0.002, sigma_max=16.0, rtol=1e-5, atol=1e-5)
    bits, evals = chapter6.test_bits_per_dim(edm, x, key, n_probes=2, chunk_size=2, **kw)
    assert bits.shape == (4, 2) and evals.shape == (2, 2) and np.all(evals > 0)
    y = mnist.dequantize(jax.random.split(key)[0], x).reshape(4, -1).astype(np.float64)
    var = TINY_UNET["data_std"] ** 2 + kw["sigma_min"] ** 2
    log_p = -0.5 * np.sum((y - TINY_UNET["data_mean"]) ** 2 / var + np.log(2 * np.pi * var), axis=1)
    expected = mnist.bits_per_dim(log_p, mnist.N_PIXELS)
    np.testing.assert_allclose(bits, np.repeat(expected[:, None], 2, axis=1), atol=2e-3)
    with pytest.raises(ValueError, match="chunk_size"):
        chapter6.test_bits_per_dim(edm, x, key, n_probes=1, chunk_size=3, **kw)


def test_result_arrays_round_trip(artifact_dir):
    spec = {"pixels": [[3, 28, 28], "uint8"], "bits": [[3, 2], "float32"]}
    skeleton = sm.models.from_config({"type": "ResultArrays", "spec": spec})
    pixels = np.arange(3 * 784).reshape(3, 28, 28).astype(np.uint8)
    stored = skeleton.filled(pixels=pixels, bits=np.ones((3, 2), np.float32))
    artifacts.save("results", stored, {"model": {"type": "ResultArrays", "spec": spec}})
    loaded = artifacts.load("results")
    np.testing.assert_array_equal(loaded.arrays["pixels"], pixels)
    assert loaded.arrays["pixels"].dtype == jnp.uint8 and loaded.arrays["bits"].dtype == jnp.float32
    with pytest.raises(ValueError, match="pixels"):
        skeleton.filled(pixels=pixels.astype(np.float32))


def test_recipes_record_their_data():
    for name in ("mnist_unet", "mnist_classifier"):
        assert zoo.get(name).config["data"] == {"dataset": "mnist", "split": "train", "count": 60_000,
                                                "pixels": "[0, 1]"}
    assert zoo.get("mnist_classifier").config["evaluated_on"]["split"] == "test"
    for sampler in chapter6.SAMPLERS:
        config = zoo.get(chapter6.sample_set_name(sampler)).config
        assert config["unet"] == zoo.get("mnist_unet").config and config["settings"] == chapter6.SAMPLERS[sampler]


@pytest.mark.slow
def test_gpu_recipe_trains_on_a_cpu(shared_mnist, tmp_path, monkeypatch):
    """The GPU recipe, unchanged but for 2 steps of 8 images: it builds, trains, checkpoints
    into the cache, saves and samples (the code path a GPU runs; 30-60 s on a CPU)."""
    monkeypatch.setenv("SCORE_MODELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SCORE_MODELS_ARTIFACT_DIR", str(tmp_path / "artifacts"))
    config = {**chapter6.GPU_UNET_CONFIG, "steps": 2, "batch_size": 8,
              "optimizer": {**chapter6.GPU_UNET_CONFIG["optimizer"], "warmup_steps": 1}}
    model = chapter6.train_and_save("gpu_smoke", config)
    assert artifacts.load("gpu_smoke").channels == (64, 128, 128)
    out = chapter6.sample(model, jax.random.key(0), 2, n_levels=3)
    assert out.samples.shape == (2, 1, 28, 28) and out.n_diverged == 0


def test_mnist_split(shared_mnist):
    x, y = chapter6.mnist_split(chapter6.TEST)
    assert x.shape == (10_000, 1, 28, 28) and y.shape == (10_000,)
    with pytest.raises(ValueError, match="promises"):
        chapter6.mnist_split({**chapter6.TEST, "count": 8000})
    with pytest.raises(ValueError, match="split"):
        chapter6.mnist_split({**chapter6.TEST, "split": "validation"})


@pytest.mark.skipif(not hasattr(cli, "SAMPLERS"),
                    reason="needs the cli.py change in /work/coord/mnist/cli_sample.patch (cli.py is not this branch's)")
def test_cli_sample(artifact_dir, monkeypatch, tmp_path, capsys):
    def build(config):
        return sm.models.from_config(config["model"], jax.random.key(0))

    monkeypatch.setattr(zoo, "_RECIPES", {"mnist_unet": zoo.Recipe("mnist_unet", 6, "tiny", {"model": TINY_UNET}, build)})
    monkeypatch.setitem(chapter6.SAMPLERS, "annealed", {**chapter6.SAMPLERS["annealed"], "n_steps_each": 1})
    assert set(cli.SAMPLERS) == set(chapter6.SAMPLERS)
    out, png = tmp_path / "x.npy", tmp_path / "x.png"
    assert cli.main(["sample", "mnist", "--n", "2", "--out", str(out)]) == 2  # not built yet
    assert "artifacts build mnist_unet" in capsys.readouterr().err
    assert cli.main(["artifacts", "build", "mnist_unet"]) == 0
    for sampler in cli.SAMPLERS:
        assert cli.main(["sample", "mnist", "--n", "5", "--out", str(out), "--png", str(png), "--seed", "1",
                         "--sampler", sampler]) == 0
        x = np.load(out)
        assert x.shape == (5, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
        assert png.stat().st_size > 0
    assert cli.main(["sample", "mnist", "--n", "0", "--out", str(out)]) == 2
    assert "--n" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Data-parallel training


SHARDED = textwrap.dedent(
    """
    import json, jax, jax.numpy as jnp, numpy as np, optax
    import score_models as sm
    assert jax.device_count() == 2, jax.devices()
    cfg = json.loads('''CONFIG''')
    x = jax.random.uniform(jax.random.key(0), (64, 1, 28, 28))
    loss = sm.losses.multiscale_denoising_score_matching(sm.geometric_sigmas(10.0, 0.05, 5))
    out = []
    for devices in (jax.devices()[:1], jax.devices()):
        model = sm.models.from_config(cfg, jax.random.key(1))
        opt = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.01))
        model, hist = sm.fit(model, loss, x, opt, steps=6, key=jax.random.key(2),
                             batch_size=16, ema_decay=0.9, chunk_size=3, progress=False, devices=devices)
        out.append(([np.asarray(a) for a in jax.tree.leaves(model)], hist["loss"]))
    (p1, l1), (p2, l2) = out
    err = max(float(np.max(np.abs(a - b)) / (1e-3 + np.max(np.abs(a)))) for a, b in zip(p1, p2))
    print(json.dumps({"loss_1": l1.tolist(), "loss_2": l2.tolist(), "param_rel_err": err}))
    """
)


def test_sharded_training_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    code = SHARDED.replace("CONFIG", json.dumps({**TINY_UNET, "attention": False}))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["loss_2"], result["loss_1"], rtol=1e-4)
    # SGD on clipped gradients (a continuous map of the gradient), so the weights differ only by
    # the summation order of the gradients; Adam would amplify float32 round-off in near-zero
    # gradients into sign flips of whole steps.
    assert result["param_rel_err"] < 1e-5


@pytest.mark.parametrize("channels", [0, (), "32", (16.7, 32), (16,), (16, 32, 64)])
def test_classifier_refuses_bad_channels(channels):
    """Reliability cases 57-58: a wrong count or a non-integer width is an error naming `channels`
    (it was an unpacking error, or 16.7 silently truncated to 16)."""
    with pytest.raises(ValueError, match="`channels`"):
        Classifier(channels=channels, key=jax.random.key(0))


@pytest.mark.parametrize("channels", [0, (), "32", (32.5, 64), (32, -1)])
def test_unet_refuses_bad_channels(channels):
    """Reliability case 55: `UNet(channels=0)` was a TypeError ('int' object is not iterable)."""
    with pytest.raises(ValueError, match="`channels`"):
        UNet(channels=channels, key=jax.random.key(0))


def test_sampler_schedule_names_the_bad_argument():
    """Reliability case 303: reversed noise levels name `sigma_min`/`sigma_max`, a bad `rho` names `rho`."""
    with pytest.raises(ValueError, match="`sigma_min` and `sigma_max`.*sigma_min=5.0, sigma_max=0.1"):
        chapter6.edm_sigmas(10, sigma_min=5.0, sigma_max=0.1)
    with pytest.raises(ValueError, match="`rho`"):
        chapter6.edm_sigmas(10, sigma_min=0.1, sigma_max=5.0, rho=0.0)
