"""Sample metrics against SciPy and brute-force NumPy; noise floors; score errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import score_models as sm

GM = sm.data.running_example()


def energy_distance_bruteforce(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dist = lambda a, b: np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1).mean()  # noqa: E731
    return 2 * dist(x, y) - dist(x, x) - dist(y, y)


@pytest.mark.parametrize("n,m", [(300, 300), (257, 1000)])
def test_wasserstein_1d_matches_scipy(n, m):
    x = GM.sample(jax.random.key(0), n)
    y = 2.0 * jax.random.normal(jax.random.key(1), (m, 1)) + 3.0
    expected = scipy.stats.wasserstein_distance(np.asarray(x[:, 0], np.float64), np.asarray(y[:, 0], np.float64))
    assert sm.metrics.wasserstein_1d(x, y) == pytest.approx(expected, rel=1e-4)


def test_wasserstein_1d_of_a_shift_is_the_shift():
    x = GM.sample(jax.random.key(2), 500)
    # Zero up to float32 rounding of the empirical CDFs (XLA may round i/n differently for x
    # and y); compare with the spread of the data, about 10.
    assert sm.metrics.wasserstein_1d(x, x) == pytest.approx(0.0, abs=1e-6)
    assert sm.metrics.wasserstein_1d(x, x + 1.75) == pytest.approx(1.75, rel=1e-5)
    assert sm.metrics.wasserstein_1d(x + 1.75, x) == pytest.approx(1.75, rel=1e-5)


def test_energy_distance_matches_bruteforce_and_is_zero_only_for_equal_samples():
    x = jax.random.normal(jax.random.key(3), (300, 3))
    y = jax.random.normal(jax.random.key(4), (200, 3)) * 1.2 + 0.3
    e = sm.metrics.energy_distance(x, y)
    assert e == pytest.approx(energy_distance_bruteforce(x, y), rel=1e-4)
    assert e > 0
    assert sm.metrics.energy_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # A small shift is detected, and the distance grows with it.
    e_small = sm.metrics.energy_distance(x, x + 0.1)
    assert 0 < e_small < sm.metrics.energy_distance(x, x + 0.5)


def test_sliced_wasserstein_in_1d_is_w1_and_detects_shifts_in_2d():
    x = GM.sample(jax.random.key(5), 400)
    y = GM.perturbed(2.0).sample(jax.random.key(6), 400)
    assert sm.metrics.sliced_wasserstein(x, y, jax.random.key(7), n_projections=16) == pytest.approx(
        sm.metrics.wasserstein_1d(x, y), rel=1e-5)
    # In 2D, shifting by a vector of length 1 moves every projection by |cos|: the sliced W1 of
    # a pure shift is E|u . v| = 2/pi for a uniform direction u.
    # |u . v| has std 0.31 over directions, so 1024 of them pin the mean to 1.5% (1 SE).
    z = sm.data.gaussian_mixture_2d().sample(jax.random.key(8), 400)
    sw = sm.metrics.sliced_wasserstein(z, z + jnp.array([0.6, 0.8]), jax.random.key(9), n_projections=1024)
    assert sw == pytest.approx(2 / np.pi, rel=0.05)


def test_mode_weights():
    x = jnp.array([[-14.0], [-16.0], [-15.5], [0.2], [14.0], [7.0], [-7.0], [16.0]])
    # 7 and -7 are nearer the middle mode (the modes have equal stds; the weights tilt the
    # boundary only by log(2)/15 around -7.5).
    np.testing.assert_allclose(sm.metrics.mode_weights(x, GM), [3 / 8, 3 / 8, 2 / 8])
    w = sm.metrics.mode_weights(GM.sample(jax.random.key(10), 4000), GM)
    assert w.shape == (3,) and w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w, [0.5, 0.25, 0.25], atol=5 * np.sqrt(0.25 / 4000))


def test_noise_floor_shrinks_with_the_sample_size():
    small, small_std = sm.metrics.noise_floor(sm.metrics.wasserstein_1d, GM.sample, 100, jax.random.key(11))
    large, large_std = sm.metrics.noise_floor(sm.metrics.wasserstein_1d, GM.sample, 1600, jax.random.key(11))
    assert small > 0 and large > 0 and small_std > 0
    # W1 between two empirical samples of a smooth density falls like 1/sqrt(n): 4x here.
    assert 2.5 < small / large < 6.5


def test_distance_and_floor():
    key = jax.random.key(12)
    exact = [GM.sample(k, 500) for k in jax.random.split(jax.random.key(13), 4)]
    report = sm.metrics.distance_and_floor(sm.metrics.wasserstein_1d, exact, GM.sample, key)
    assert report.floor > 0 and 0.5 < report.ratio < 2.0
    # W1 between two exact samples is about 1 at n=500: the far-apart modes turn small weight
    # fluctuations into large transport costs. A shift of 10 stands far above that floor.
    biased = [x + 10.0 for x in exact]
    bad = sm.metrics.distance_and_floor(sm.metrics.wasserstein_1d, biased, GM.sample, key)
    assert bad.distance == pytest.approx(10.0, abs=2 * report.floor) and bad.ratio > 5
    assert bad.floor == report.floor  # the floor depends only on the key and the size
    with pytest.raises(ValueError, match="`draws`"):
        sm.metrics.distance_and_floor(sm.metrics.wasserstein_1d, [], GM.sample, key)


def test_score_error():
    x = GM.sample(jax.random.key(14), 1000)
    exact = sm.metrics.score_error(GM.score, GM.score, x)
    assert exact.mse == 0.0 and exact.relative == 0.0
    shifted = sm.metrics.score_error(lambda y: GM.score(y) + 0.5, GM.score, x)
    assert shifted.mse == pytest.approx(0.25, rel=1e-5)
    t2 = float(jnp.mean(jnp.sum(jax.vmap(GM.score)(x) ** 2, -1)))
    assert shifted.relative == pytest.approx(0.25 / t2, rel=1e-5)
    assert shifted.relative_rmse == pytest.approx((0.25 / t2) ** 0.5, rel=1e-5)
    # Noise-conditional: the model is called as score_fn(x, sigma).
    cond = sm.metrics.score_error(lambda y, s: GM.perturbed(s).score(y), GM.perturbed(2.0).score, x, sigma=2.0)
    assert cond.mse == pytest.approx(0.0, abs=1e-10)
