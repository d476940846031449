"""Chapter 6: the U-Net, the classifier, the sample-quality metrics, data-parallel training and
the `score-models sample` command. Small models and sizes: these run in seconds on a CPU."""

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
from score_models import cli, mnist, zoo
from score_models.models.unet import Conv2d, GroupNorm

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
    conv = Conv2d(5, 6, kernel, stride=stride, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (size, size, 5))
    ref = lax.conv_general_dilated(x[None], conv.weight, (stride, stride), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + conv.bias
    np.testing.assert_allclose(conv(x), ref, atol=1e-5)


def test_group_norm_normalises_each_group():
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (7, 7, 8))
    y = GroupNorm(4, 8)(x).reshape(7, 7, 4, 2)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=(0, 1, 3)), 1.0, atol=1e-3)


def test_unet_shape_and_sigma_scaling(unet):
    x = jax.random.uniform(jax.random.key(2), (1, 28, 28))
    for sigma in (0.02, 1.0, 16.0):
        s = unet(x, sigma)
        assert s.shape == (1, 28, 28) and s.dtype == jnp.float32
        # s(x, sigma) = F(x, sigma) / sigma: the network predicts the noise direction.
        np.testing.assert_allclose(s * sigma, unet.features(x, sigma), rtol=1e-5, atol=1e-6)
    # Output varies with sigma (the embedding reaches the blocks) and with x.
    assert not np.allclose(unet.features(x, 0.1), unet.features(x, 10.0))
    assert not np.allclose(unet.features(x, 1.0), unet.features(1 - x, 1.0))


def test_unet_starts_at_zero_and_is_per_example():
    model = sm.models.from_config(TINY_UNET, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(2), (3, 1, 28, 28))
    assert float(jnp.abs(jax.vmap(model, in_axes=(0, None))(x, 1.0)).max()) == 0.0  # zero last layer
    m = _perturbed(model, jax.random.key(3))
    batched = jax.vmap(m)(x, jnp.array([0.1, 1.0, 10.0]))
    for i, sigma in enumerate([0.1, 1.0, 10.0]):
        np.testing.assert_allclose(batched[i], m(x[i], sigma), rtol=1e-4, atol=1e-5)


def test_unet_variants_and_config_roundtrip():
    for extra in ({"patch": 1, "channels": [8, 16, 16], "attention": False}, {"n_res": 2}):
        m = sm.models.from_config({**TINY_UNET, **extra}, jax.random.key(0))
        assert m(jnp.zeros((1, 28, 28)), 0.5).shape == (1, 28, 28)
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


# ---------------------------------------------------------------------------------------
# Classifier and metrics


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


def test_quality_summary_keys():
    c = sm.models.from_config({"type": "Classifier", "channels": [4, 8], "n_features": 6}, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (20, 1, 28, 28))
    ref = mnist.features(c, jax.random.uniform(jax.random.key(2), (30, 1, 28, 28)))
    q = mnist.quality(c, x, ref)
    assert q["n"] == 20 and 0 <= q["confident"] <= 1 and q["class_fractions"].shape == (10,)
    assert q["min_class_fraction"] == pytest.approx(q["class_fractions"].min())
    assert q["frechet"] >= -1e-6


# ---------------------------------------------------------------------------------------
# Sampling, images, recipes


def test_samplers_shapes(unet):
    x = mnist.sample(unet, jax.random.key(0), 3, sigmas=sm.geometric_sigmas(5.0, 0.05, 4), n_steps_each=2)
    assert x.shape == (3, 1, 28, 28) and bool(jnp.all(jnp.isfinite(x)))
    x, traj = mnist.sample(unet, jax.random.key(0), 3, sigmas=sm.geometric_sigmas(5.0, 0.05, 4),
                           n_steps_each=2, trajectory_every=2)
    assert traj.shape == (4 * 2 // 2 + 2, 3, 1, 28, 28)  # x0, 4 frames, denoised
    if hasattr(sm, "probability_flow_ode"):
        y = mnist.sample(unet, jax.random.key(0), 2, sampler="pf-ode", sigmas=sm.geometric_sigmas(5.0, 0.05, 4),
                         n_steps=3)
        assert y.shape == (2, 1, 28, 28) and bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(ValueError, match="`sampler`"):
        mnist.sample(unet, jax.random.key(0), 2, sampler="ddpm")
    p = mnist.to_pixels(np.linspace(-1, 2, 2 * 784).reshape(2, 1, 28, 28))
    assert p.shape == (2, 28, 28) and p.dtype == np.float32 and p.min() == 0 and p.max() == 1
    assert mnist.image_grid(p, ncol=2).shape == (28 + 2, 2 * 28 + 3)


def test_sample_in_chunks(unet):
    """Chunk `i` of a chunked run is the unchunked sample with key `fold_in(key, i)`; the last,
    partial chunk is trimmed; trajectories are concatenated along the image axis."""
    kw = dict(sigmas=sm.geometric_sigmas(5.0, 0.05, 3), n_steps_each=1)
    key = jax.random.key(3)
    x, traj = mnist.sample(unet, key, 5, chunk_size=2, trajectory_every=1, **kw)
    assert x.shape == (5, 1, 28, 28) and traj.shape == (3 + 2, 5, 1, 28, 28)
    second = mnist.sample(unet, jax.random.fold_in(key, 1), 2, chunk_size=None, **kw)
    np.testing.assert_allclose(x[2:4], second, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(traj[-1], x, rtol=1e-6, atol=1e-6)
    assert not np.allclose(x[0:2], x[2:4])  # chunks draw different noise
    with pytest.raises(ValueError, match="chunk_size"):
        mnist.sample(unet, key, 2, chunk_size=0, **kw)


def test_recipes_record_their_training_images():
    for name in ("mnist_unet", "mnist_classifier"):
        data = zoo.get(name).config["data"]
        assert data == {"dataset": "mnist", "split": "test", "start": 0, "stop": 8000, "count": 8000,
                        "pixels": "[0, 1]"}
    held = zoo.get("mnist_classifier").config["held_out"]
    assert (held["start"], held["stop"]) == (8000, 10000)


def test_mnist_range(shared_mnist):
    from score_models.zoo.chapter6 import HELD_OUT, mnist_range

    x, y = mnist_range(HELD_OUT)
    assert x.shape == (2000, 1, 28, 28) and y.shape == (2000,)
    with pytest.raises(ValueError, match="outside"):
        mnist_range({**HELD_OUT, "stop": 10001, "count": 2001})


def test_cli_sample(artifact_dir, monkeypatch, tmp_path, capsys):
    def build(config):
        return sm.models.from_config(config["model"], jax.random.key(0))

    monkeypatch.setattr(zoo, "_RECIPES", {"mnist_unet": zoo.Recipe("mnist_unet", 6, "tiny", {"model": TINY_UNET}, build)})
    monkeypatch.setattr(mnist, "ANNEALED", {**mnist.ANNEALED, "n_steps_each": 1})
    out, png = tmp_path / "x.npy", tmp_path / "x.png"
    assert cli.main(["sample", "mnist", "--n", "2", "--out", str(out)]) == 2  # not built yet
    assert "artifacts build mnist_unet" in capsys.readouterr().err
    assert cli.main(["artifacts", "build", "mnist_unet"]) == 0
    assert cli.main(["sample", "mnist", "--n", "5", "--out", str(out), "--png", str(png), "--seed", "1"]) == 0
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
