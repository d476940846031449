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


def test_distance_and_floor_takes_an_array_of_draws_and_floor_repeats():
    key = jax.random.key(12)
    exact = [GM.sample(k, 500) for k in jax.random.split(jax.random.key(13), 4)]
    as_list = sm.metrics.distance_and_floor(sm.metrics.wasserstein_1d, exact, GM.sample, key)
    as_array = sm.metrics.distance_and_floor(sm.metrics.wasserstein_1d, jnp.stack(exact), GM.sample, key)
    assert as_array == as_list
    more = sm.metrics.distance_and_floor(sm.metrics.wasserstein_1d, exact, GM.sample, key, floor_repeats=8)
    assert more.distance == as_list.distance and more.floor != as_list.floor
    with pytest.raises(ValueError, match="`draws` must be sample sets of one shape"):
        sm.metrics.distance_and_floor(sm.metrics.wasserstein_1d, [exact[0], exact[1][:100]], GM.sample, key)


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


def test_score_error_refuses_scores_of_another_shape():
    """A score returning `()` instead of `(1,)` would broadcast `(n,) - (n, 1)` to `(n, n)`."""
    x = GM.sample(jax.random.key(14), 64)
    scalar = lambda y: GM.score(y)[0]  # noqa: E731
    with pytest.raises(ValueError, match="`score_fn` must return the shape of one example"):
        sm.metrics.score_error(scalar, GM.score, x)
    with pytest.raises(ValueError, match="`true_score` must return the shape of one example"):
        sm.metrics.score_error(GM.score, scalar, x)
    with pytest.raises(ValueError, match="`true_score` is zero"):
        sm.metrics.score_error(GM.score, lambda y: 0.0 * y, x)


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


# ------------------------------------------------------------------------------------------
# The energy test: an unbiased energy distance with its uncertainty


def u_statistic_bruteforce(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    dist = lambda a, b: np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)  # noqa: E731
    return 2 * dist(x, y).mean() - dist(x, x).sum() / (n * (n - 1)) - dist(y, y).sum() / (m * (m - 1))


def test_energy_test_matches_bruteforce_u_statistic_and_group_jackknife():
    x = jax.random.normal(jax.random.key(3), (50, 3))
    y = jax.random.normal(jax.random.key(4), (41, 3)) * 1.2 + 0.3
    result = sm.metrics.energy_test(x, y, n_permutations=0)
    assert result.distance == pytest.approx(u_statistic_bruteforce(x, y), rel=1e-5)
    groups = sm.metrics.samples.JACKKNIFE_GROUPS
    deleted = np.array([u_statistic_bruteforce(x[np.arange(50) % groups != g], y[np.arange(41) % groups != g])
                        for g in range(groups)])
    se = np.sqrt((groups - 1) / groups * np.sum((deleted - deleted.mean()) ** 2))
    assert result.std_error == pytest.approx(se, rel=1e-4)
    t = scipy.stats.t.ppf(0.975, groups - 1)
    assert result.ci_high - result.distance == pytest.approx(t * se, rel=1e-4)
    assert result.p_value is None and result.n_permutations == 0


def test_energy_test_is_unbiased_where_the_v_statistic_is_not():
    """Over 300 pairs of samples of one distribution (n = m = 40, 2D), the U-statistic averages
    to 0 within its Monte Carlo error; the V-statistic (`energy_distance`) averages above 0 by
    many standard errors (its noise floor)."""
    xs = sm.data.gaussian_mixture_2d().sample(jax.random.key(5), 300 * 80).reshape(300, 80, 2)
    u = np.array([sm.metrics.energy_test(p[:40], p[40:], n_permutations=0).distance for p in xs])
    v = np.array([sm.metrics.energy_distance(p[:40], p[40:]) for p in xs])
    se_u, se_v = u.std(ddof=1) / np.sqrt(300), v.std(ddof=1) / np.sqrt(300)
    assert abs(u.mean()) < 4 * se_u, (u.mean(), se_u)
    assert v.mean() > 20 * se_v, (v.mean(), se_v)


def test_energy_test_detects_a_shift_and_covers_the_true_distance():
    """x ~ N(0, 1), y ~ N(mu, 1) in 1D: the energy distance is 2 E|N(mu, 2)| - 2 E|N(0, 2)|.
    Over 200 pairs (n = m = 200) the mean estimate is that value within 4 Monte Carlo standard
    errors and the 95% interval covers it about 91% of the time (measured; U is skewed at this
    size), checked >= 85%. With 1,000 points each, the p-value is the smallest possible and the
    interval excludes 0."""
    mu, n, reps = 0.5, 200, 200

    def abs_mean(m, s):  # E|N(m, s^2)|
        return s * np.sqrt(2 / np.pi) * np.exp(-m**2 / (2 * s**2)) + m * (1 - 2 * scipy.stats.norm.cdf(-m / s))

    truth = 2 * abs_mean(mu, np.sqrt(2)) - 2 * abs_mean(0.0, np.sqrt(2))
    z = jax.random.normal(jax.random.key(6), (reps, 2 * n, 1))
    results = [sm.metrics.energy_test(p[:n], p[n:] + mu, n_permutations=0) for p in z]
    u = np.array([r.distance for r in results])
    assert abs(u.mean() - truth) < 4 * u.std(ddof=1) / np.sqrt(reps)
    covered = np.mean([r.ci_low <= truth <= r.ci_high for r in results])
    assert covered >= 0.85, covered
    # At n = m = 1000 the shift is about 5 standard errors: detected by the test and the interval.
    big = jax.random.normal(jax.random.key(7), (2000, 1))
    shifted = sm.metrics.energy_test(big[:1000], big[1000:] + mu, jax.random.key(8), n_permutations=99)
    assert shifted.p_value == 0.01 and shifted.ci_low > 0


def test_energy_test_under_equality_covers_zero_and_its_p_values_are_uniform():
    """For one distribution the interval covers 0 at about its level (0.94-0.97 measured), and
    the permutation p-value is uniform: P(p < 0.05) ~ 0.05 (binomial std 0.015 over 200)."""
    z = jax.random.normal(jax.random.key(8), (200, 120, 2))
    results = [sm.metrics.energy_test(p[:60], p[60:], jax.random.key(i), n_permutations=99)
               for i, p in enumerate(z)]
    covered = np.mean([r.ci_low <= 0 <= r.ci_high for r in results])
    assert covered >= 0.9, covered
    p = np.array([r.p_value for r in results])
    assert 0.01 <= np.mean(p < 0.05) <= 0.1 and 0.4 <= np.mean(p < 0.5) <= 0.6


def test_energy_test_over_draws_combines_independent_pairs():
    x = jax.random.normal(jax.random.key(9), (4, 30, 2))
    y = jax.random.normal(jax.random.key(10), (4, 25, 2)) + 0.2
    combined = sm.metrics.energy_test(x, y, jax.random.key(11), n_permutations=49)
    single = [sm.metrics.energy_test(a, b, n_permutations=0) for a, b in zip(x, y)]
    assert combined.distance == pytest.approx(np.mean([r.distance for r in single]), rel=1e-6)
    assert combined.std_error == pytest.approx(np.sqrt(np.sum([r.std_error**2 for r in single])) / 4, rel=1e-6)
    assert 0 < combined.p_value <= 1


@pytest.mark.parametrize("call,name", [
    (lambda: sm.metrics.energy_test(jnp.zeros((8, 2)), jnp.zeros((8, 3)), n_permutations=0), "samples"),
    (lambda: sm.metrics.energy_test(jnp.zeros((2, 8, 2)), jnp.zeros((8, 2)), n_permutations=0), "samples"),
    (lambda: sm.metrics.energy_test(jnp.zeros((2, 2)), jnp.zeros((8, 2)), n_permutations=0), "samples"),
    (lambda: sm.metrics.energy_test(jnp.full((8, 2), jnp.nan), jnp.zeros((8, 2)), n_permutations=0), "samples"),
    (lambda: sm.metrics.energy_test(jnp.zeros((8, 2)), jnp.zeros((8, 2)) + 1j, n_permutations=0), "reference"),
    (lambda: sm.metrics.energy_test(jnp.zeros((8, 2)), jnp.zeros((8, 2))), "key"),
    (lambda: sm.metrics.energy_test(jnp.zeros((8, 2)), jnp.zeros((8, 2)), jax.random.key(0),
                                    n_permutations=0), "key"),
    (lambda: sm.metrics.energy_test(jnp.zeros((8, 2)), jnp.zeros((8, 2)), n_permutations=-1), "n_permutations"),
    (lambda: sm.metrics.energy_test(jnp.zeros((8, 2)), jnp.zeros((8, 2)), n_permutations=0, confidence=95),
     "confidence"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_energy_test_rejects_bad_input(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()
