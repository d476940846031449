"""GaussianMixture against ground truth: autodiff, numerical integration, SciPy and Monte Carlo."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import score_models as sm


def random_mixture(key, d: int, k: int) -> sm.GaussianMixture:
    km, ks, kw = jax.random.split(key, 3)
    means = 3.0 * jax.random.normal(km, (k, d))
    stds = jax.random.uniform(ks, (k,), minval=0.5, maxval=2.0)
    weights = jax.random.uniform(kw, (k,), minval=0.2, maxval=1.0)
    return sm.GaussianMixture(means, stds, weights)


def scipy_log_prob(gm: sm.GaussianMixture, x: np.ndarray) -> np.ndarray:
    """log p(x) for a batch `(n, d)`, from SciPy's multivariate normal, in float64."""
    means, stds, weights = (np.asarray(a, np.float64) for a in (gm.means, gm.stds, gm.weights))
    comps = [
        np.log(w) + scipy.stats.multivariate_normal(m, s**2 * np.eye(gm.dim)).logpdf(x).reshape(-1)
        for m, s, w in zip(means, stds, weights)
    ]
    return scipy.special.logsumexp(np.stack(comps, axis=-1), axis=-1)


@pytest.mark.parametrize("d,k", [(1, 1), (1, 3), (5, 4)])
def test_score_is_gradient_of_log_prob(d, k):
    gm = random_mixture(jax.random.key(10 * d + k), d, k)
    x = 4.0 * jax.random.normal(jax.random.key(1), (64, d))
    analytic, autodiff = jax.jit(lambda x: (jax.vmap(gm.score)(x), jax.vmap(jax.grad(gm.log_prob))(x)))(x)
    scale = float(jnp.max(jnp.abs(autodiff)))
    np.testing.assert_allclose(analytic, autodiff, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("d,k", [(1, 3), (5, 3)])
def test_log_prob_matches_scipy(d, k):
    gm = random_mixture(jax.random.key(d + 7 * k), d, k)
    x = 3.0 * jax.random.normal(jax.random.key(2), (50, d))
    np.testing.assert_allclose(jax.jit(jax.vmap(gm.log_prob))(x), scipy_log_prob(gm, np.asarray(x)),
                               rtol=1e-5, atol=1e-4)


def test_weights_are_normalised():
    gm = sm.GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [2.0, 6.0])
    np.testing.assert_allclose(gm.weights, [0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(gm.responsibilities)(jnp.ones((3, 1))).sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("gm", [sm.data.running_example(), random_mixture(jax.random.key(3), 1, 4)],
                         ids=["running_example", "random"])
def test_log_prob_integrates_to_one_1d(gm):
    t = np.linspace(-60.0, 60.0, 120_001)
    p = np.exp(np.asarray(jax.jit(jax.vmap(gm.log_prob))(jnp.asarray(t)[:, None]), np.float64))
    assert np.trapezoid(p, t) == pytest.approx(1.0, abs=1e-5)


def test_log_prob_integrates_to_one_2d():
    gm = sm.data.gaussian_mixture_2d()
    g = np.linspace(-7.0, 7.0, 701)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), jnp.float32)
    p = np.exp(np.asarray(jax.jit(jax.vmap(gm.log_prob))(pts), np.float64)).reshape(xx.shape)
    assert np.trapezoid(np.trapezoid(p, g, axis=1), g) == pytest.approx(1.0, abs=1e-4)


def test_running_example_sample_moments_and_weights():
    gm = sm.data.running_example()
    n = 200_000
    x = np.asarray(gm.sample(jax.random.key(0), n), np.float64)
    assert x.shape == (n, 1)
    mean = 0.5 * -15 + 0.25 * 0 + 0.25 * 15  # -3.75
    var = 1.0 + (0.5 * 225 + 0.25 * 0 + 0.25 * 225) - mean**2
    assert x.mean() == pytest.approx(mean, abs=5 * np.sqrt(var / n))
    # Var of the sample variance ~ (mu4 - var^2)/n; the mixture is not far from bimodal-uniform,
    # so 2 var^2 / n bounds it generously.
    assert x.var() == pytest.approx(var, abs=5 * var * np.sqrt(2 / n))
    # Modes are 15 stds apart: the component of every sample is its nearest mean.
    frac = np.bincount(np.argmin(np.abs(x - np.array([-15.0, 0.0, 15.0])), axis=1), minlength=3) / n
    np.testing.assert_allclose(frac, [0.5, 0.25, 0.25], atol=5 * np.sqrt(0.25 / n))
    # And the whole distribution, by a Kolmogorov-Smirnov test against the analytic CDF.
    ks = scipy.stats.kstest(x[:, 0], lambda t: np.asarray(jax.jit(lambda u: gm.cdf(u))(jnp.asarray(t, jnp.float32))))
    assert ks.statistic < 1.95 / np.sqrt(n)  # the 0.1% critical value


def test_sample_moments_2d():
    gm = random_mixture(jax.random.key(4), 2, 3)
    n = 200_000
    x = np.asarray(gm.sample(jax.random.key(5), n), np.float64)
    assert x.shape == (n, 2) and gm.sample(jax.random.key(5), 3).dtype == jnp.float32
    w, mu, s = (np.asarray(a, np.float64) for a in (gm.weights, gm.means, gm.stds))
    mean = w @ mu
    cov = sum(wk * (sk**2 * np.eye(2) + np.outer(mk, mk)) for wk, mk, sk in zip(w, mu, s)) - np.outer(mean, mean)
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(x.mean(0), mean, atol=5 * sd.max() / np.sqrt(n))
    np.testing.assert_allclose(np.cov(x.T), cov, atol=5 * cov.diagonal().max() * np.sqrt(2 / n))


def test_sample_is_deterministic_by_key():
    gm = sm.data.running_example()
    a = gm.sample(jax.random.key(1), 100)
    assert np.array_equal(a, gm.sample(jax.random.key(1), 100))
    assert not np.array_equal(a, gm.sample(jax.random.key(2), 100))


@pytest.mark.parametrize("d,sigma", [(1, 0.7), (1, 3.0), (2, 1.5)])
def test_perturbed_matches_monte_carlo_convolution(d, sigma):
    """The density of x + sigma z, x ~ p, is E_x N(y; x, sigma^2 I): estimate it by averaging the
    Gaussian kernel over exact samples of p and compare with `perturbed(sigma).log_prob`."""
    gm = sm.data.running_example() if d == 1 else sm.data.gaussian_mixture_2d()
    n = 200_000
    xs = np.asarray(gm.sample(jax.random.key(0), n), np.float64)
    pert = gm.perturbed(sigma)
    ys = np.asarray(pert.sample(jax.random.key(1), 12), np.float64)  # points where p_sigma is not tiny
    for y in ys:
        kernel = np.exp(-0.5 * np.sum((xs - y) ** 2, -1) / sigma**2) / (2 * np.pi * sigma**2) ** (d / 2)
        estimate, se = kernel.mean(), kernel.std() / np.sqrt(n)
        exact = float(jnp.exp(pert.log_prob(jnp.asarray(y, jnp.float32))))
        assert abs(exact - estimate) < 5 * se + 1e-6 * exact, (y, exact, estimate, se)


def test_perturbed_single_gaussian_and_zero_sigma():
    gm = sm.GaussianMixture([[2.0]], [0.5], [1.0])
    pert = gm.perturbed(1.2)
    x = jnp.linspace(-3, 7, 11)[:, None]
    np.testing.assert_allclose(jax.vmap(pert.log_prob)(x),
                               scipy.stats.norm(2.0, np.sqrt(0.25 + 1.44)).logpdf(np.asarray(x[:, 0])),
                               rtol=1e-5, atol=1e-5)
    same = gm.perturbed(0.0)
    np.testing.assert_allclose(jax.vmap(same.log_prob)(x), jax.vmap(gm.log_prob)(x), rtol=1e-6)


def test_perturbed_under_jit_and_vmap_with_traced_sigma():
    gm = random_mixture(jax.random.key(6), 2, 3)
    x = jnp.array([0.3, -1.2])
    sigmas = jnp.array([0.1, 0.5, 2.0, 8.0])
    # Ground truth in float64 NumPy: the perturbed mixture has stds sqrt(s_k^2 + sigma^2).
    w, mu, s = (np.asarray(a, np.float64) for a in (gm.weights, gm.means, gm.stds))
    xn = np.asarray(x, np.float64)
    expected_logp, expected_score = [], []
    for sig in np.asarray(sigmas, np.float64):
        v = s**2 + sig**2
        comp = np.log(w) - np.log(2 * np.pi * v) - 0.5 * np.sum((xn - mu) ** 2, -1) / v
        r = np.exp(comp - scipy.special.logsumexp(comp))
        expected_logp.append(scipy.special.logsumexp(comp))
        expected_score.append(np.sum(r[:, None] * (mu - xn) / v[:, None], 0))
    logp, score = jax.jit(jax.vmap(lambda sig: (gm.perturbed(sig).log_prob(x), gm.perturbed(sig).score(x))))(sigmas)
    np.testing.assert_allclose(logp, expected_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(score, expected_score, rtol=1e-4, atol=1e-6)
    # The mixture itself is a pytree argument of a jitted function, and sigma is differentiable.
    f = eqx.filter_jit(lambda g, sig: g.perturbed(sig).log_prob(x))
    assert float(f(gm, sigmas[1])) == pytest.approx(expected_logp[1], rel=1e-5)
    grad, fd = jax.jit(lambda: (jax.grad(lambda sig: gm.perturbed(sig).log_prob(x))(1.0),
                               (gm.perturbed(1.01).log_prob(x) - gm.perturbed(0.99).log_prob(x)) / 0.02))()
    assert float(grad) == pytest.approx(float(fd), rel=1e-2)


def test_cdf_against_numeric_integral_and_samples():
    gm = sm.data.running_example()
    t = np.linspace(-40.0, 40.0, 80_001)
    p = np.exp(np.asarray(jax.jit(jax.vmap(gm.log_prob))(jnp.asarray(t, jnp.float32)[:, None]), np.float64))
    numeric = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(t))])
    cdf = np.asarray(jax.jit(lambda u: gm.cdf(u))(jnp.asarray(t, jnp.float32)))
    np.testing.assert_allclose(cdf[::1000], numeric[::1000], atol=1e-5)
    assert float(gm.cdf(-100.0)) == 0.0 and float(gm.cdf(100.0)) == pytest.approx(1.0, abs=1e-6)
    # 0.5 of the mass is in the left mode: the CDF between the modes is exactly the weight.
    assert float(gm.cdf(-7.5)) == pytest.approx(0.5, abs=1e-6)
    assert float(gm.cdf(7.5)) == pytest.approx(0.75, abs=1e-6)
    # Elementwise on any shape.
    assert gm.cdf(jnp.zeros((3, 4))).shape == (3, 4)


def test_cdf_rejects_higher_dimensions():
    with pytest.raises(ValueError, match="1D"):
        sm.data.gaussian_mixture_2d().cdf(jnp.zeros(2))


def test_sample_is_compiled_and_draws_what_eager_operations_draw():
    """`sample` runs compiled (once per size and mixture shape) and returns bit for bit what the
    same operations gave eagerly, which the book's samples and cached models were drawn with
    (one fused kernel would round differently: a fused multiply-add)."""
    from score_models import distributions

    def eager(gm, key, n):
        key_k, key_z = jax.random.split(key)
        k = jax.random.choice(key_k, gm.n_components, (n,), p=gm.weights)
        z = jax.random.normal(key_z, (n, gm.dim), dtype=gm.means.dtype)
        return gm.means[k] + gm.stds[k, None] * z

    for gm in (sm.data.gaussian_mixture_2d(), sm.data.running_example().perturbed(2.5),
               random_mixture(jax.random.key(4), 3, 5)):
        np.testing.assert_array_equal(gm.sample(jax.random.key(1), 777), eager(gm, jax.random.key(1), 777))
    size = distributions._scale._cache_size()
    gm = sm.data.gaussian_mixture_2d()
    other = sm.GaussianMixture(gm.means + 1.0, 2 * gm.stds, gm.weights[::-1])  # same shapes: no new compilation
    other.sample(jax.random.key(2), 777)
    assert distributions._scale._cache_size() == size
