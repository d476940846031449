"""Score-matching objectives against the identities they rest on.

- Implicit SM = explicit SM - 1/2 E||grad log p||^2 (Hyvarinen's integration by parts).
- Sliced SM estimates implicit SM (E[v v^T] = I).
- The denoising objectives are minimised by the perturbed score, with a known optimal value.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

import score_models as sm


class Wiggly(eqx.Module):
    """A fixed, untrained score model with a large and varying Jacobian:
    `s(x) = A x + b + C tanh(W x + c)`."""

    A: jax.Array
    b: jax.Array
    C: jax.Array
    W: jax.Array
    c: jax.Array

    def __init__(self, d, key):
        k = jax.random.split(key, 5)
        self.A = -0.8 * jnp.eye(d) + 0.3 * jax.random.normal(k[0], (d, d))
        self.b = 0.5 * jax.random.normal(k[1], (d,))
        self.C = jax.random.normal(k[2], (d, 16))
        self.W = 0.7 * jax.random.normal(k[3], (16, d))
        self.c = jax.random.normal(k[4], (16,))

    def __call__(self, x):
        return self.A @ x + self.b + self.C @ jnp.tanh(self.W @ x + self.c)


def mixture_quantile_batch(gm: sm.GaussianMixture, n: int) -> jax.Array:
    """`n` equally weighted points whose empirical distribution integrates smooth functions
    against the 1D mixture `gm` almost exactly: `w_k n` midpoint quantiles of each component."""
    pts = []
    for mu, s, w in zip(np.asarray(gm.means[:, 0]), np.asarray(gm.stds), np.asarray(gm.weights)):
        m = int(round(w * n))
        pts.append(mu + s * scipy.stats.norm.ppf((np.arange(m) + 0.5) / m))
    return jnp.asarray(np.concatenate(pts)[:, None], jnp.float32)


def mc(values):
    v = np.asarray(values, np.float64).ravel()
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size))


def trace_jac(model, batch):
    return jax.jit(jax.vmap(lambda x: jnp.trace(jax.jacfwd(model)(x))))(batch)


# ---------------------------------------------------------------------------------------------
# Implicit vs explicit


def test_implicit_equals_explicit_minus_constant_1d_quadrature():
    """On a quadrature batch the expectations are exact to ~1e-4 (relative), so the identity must
    hold to that precision; a wrong sign or factor on the trace term would be off by E[s'] ~ 1."""
    gm = sm.GaussianMixture([[-2.0], [0.5], [3.0]], [0.7, 1.0, 0.5], [0.5, 0.3, 0.2])
    batch = mixture_quantile_batch(gm, 20_000)
    model = Wiggly(1, jax.random.key(1))
    implicit = float(eqx.filter_jit(sm.losses.implicit_score_matching())(model, batch, None))
    explicit = float(eqx.filter_jit(sm.losses.explicit_score_matching(gm.score))(model, batch, None))
    constant = 0.5 * float(jnp.mean(jnp.sum(jax.vmap(gm.score)(batch) ** 2, -1)))
    tol = 3e-4 * (abs(explicit) + constant)  # quadrature and float32 rounding
    assert abs(float(jnp.mean(trace_jac(model, batch)))) > 100 * tol  # the trace term matters
    assert implicit == pytest.approx(explicit - constant, abs=tol)


def test_implicit_equals_explicit_minus_constant_monte_carlo_3d():
    """In 3D on a Monte Carlo batch the identity holds in expectation: the per-example
    difference has mean zero, tested within 5 standard errors."""
    gm = sm.GaussianMixture([[0.0, 1.0, -1.0], [2.0, -1.0, 0.5]], [1.0, 1.0], [0.6, 0.4])
    batch = gm.sample(jax.random.key(1), 40_000)
    model = Wiggly(3, jax.random.key(1))
    imp_fn = sm.losses.implicit_score_matching()
    exp_fn = sm.losses.explicit_score_matching(gm.score)

    @jax.jit
    def per_example(x):
        one = x[None]
        return imp_fn(model, one, None), exp_fn(model, one, None), 0.5 * jnp.sum(gm.score(x) ** 2)

    imp, exp, const = jax.vmap(per_example)(batch)
    # The batch losses are the means of the per-example losses.
    assert float(eqx.filter_jit(imp_fn)(model, batch, None)) == pytest.approx(float(imp.mean()), rel=1e-4)
    diff, se = mc(imp - exp + const)
    assert abs(diff) < 5 * se, (diff, se)
    tr, _ = mc(trace_jac(model, batch))
    assert abs(tr) > 15 * se  # a dropped or doubled trace term would be caught


# ---------------------------------------------------------------------------------------------
# Sliced


def test_sliced_rademacher_1d_equals_implicit_exactly():
    """In 1D a Rademacher projection is +-1, so v s' v = s' and (v s)^2 = s^2: no randomness."""
    batch = sm.data.running_example().sample(jax.random.key(0), 512)
    model = Wiggly(1, jax.random.key(3))
    implicit = float(eqx.filter_jit(sm.losses.implicit_score_matching())(model, batch, None))
    for variance_reduction in (True, False):
        sliced = sm.losses.sliced_score_matching(3, variance_reduction=variance_reduction, distribution="rademacher")
        assert float(eqx.filter_jit(sliced)(model, batch, jax.random.key(4))) == pytest.approx(implicit, rel=1e-5)


@pytest.mark.parametrize("variance_reduction,distribution", [(True, "gaussian"), (False, "rademacher")])
def test_sliced_estimates_implicit_in_expectation(variance_reduction, distribution):
    d = 3
    gm = sm.GaussianMixture([[0.0, 1.0, -1.0], [2.0, -1.0, 0.5]], [1.0, 0.6], [0.6, 0.4])
    batch = gm.sample(jax.random.key(5), 256)
    model = Wiggly(d, jax.random.key(6))
    implicit = float(eqx.filter_jit(sm.losses.implicit_score_matching())(model, batch, None))
    sliced = sm.losses.sliced_score_matching(64, variance_reduction=variance_reduction, distribution=distribution)
    values = jax.jit(jax.vmap(lambda k: sliced(model, batch, k)))(jax.random.split(jax.random.key(7), 32))
    mean, se = mc(values)
    assert abs(mean - implicit) < 5 * se + 1e-5 * abs(implicit), (mean, implicit, se)
    # Sensitivity: the trace term is large against the Monte Carlo error.
    assert abs(float(jnp.mean(trace_jac(model, batch)))) > 20 * se


# ---------------------------------------------------------------------------------------------
# Denoising: optimal value, excess loss and minimiser

MU, S = 2.0, 1.5  # Gaussian data N(MU, S^2)


def gaussian_data(n, key=jax.random.key(0), d=1):
    return MU + S * jax.random.normal(key, (n, d))


def perturbed_gaussian_score(x, sigma):
    return -(x - MU) / (S**2 + sigma**2)


def test_dsm_at_the_perturbed_score_has_the_optimal_value():
    """With s = the perturbed score, 1/2 E||sigma s + z||^2 = 1/2 d S^2/(S^2 + sigma^2) (times
    1/sigma^2 for the unweighted single-level loss)."""
    sigma, d = 0.8, 2
    batch = gaussian_data(8192, d=d)
    dsm = sm.losses.denoising_score_matching(sigma)
    values = jax.jit(jax.vmap(lambda k: dsm(lambda x: perturbed_gaussian_score(x, sigma), batch, k)))(
        jax.random.split(jax.random.key(1), 16))
    mean, se = mc(values)
    assert mean == pytest.approx(0.5 * d * S**2 / (S**2 + sigma**2) / sigma**2, abs=5 * se)


def test_dsm_excess_loss_is_the_score_error_under_the_perturbed_data():
    """E[DSM(s)] - E[DSM(s*)] = 1/2 E_{p_sigma}||s - s*||^2 for any s: the minimiser is s*."""
    sigma = 0.8
    model = Wiggly(1, jax.random.key(8))
    dsm = sm.losses.denoising_score_matching(sigma)
    optimum = lambda x: perturbed_gaussian_score(x, sigma)  # noqa: E731

    @jax.jit
    def excess(k):
        k_data, k_loss = jax.random.split(k)
        batch = gaussian_data(4096, k_data)
        return dsm(model, batch, k_loss) - dsm(optimum, batch, k_loss)

    mean, se = mc(jax.vmap(excess)(jax.random.split(jax.random.key(2), 32)))
    y = MU + np.sqrt(S**2 + sigma**2) * jax.random.normal(jax.random.key(3), (200_000, 1))
    expected = 0.5 * float(jnp.mean(jnp.sum((jax.vmap(model)(y) - optimum(y)) ** 2, -1)))
    assert expected > 10 * se
    assert mean == pytest.approx(expected, abs=5 * se + 0.01 * expected)


class Affine(eqx.Module):
    """`s(x) = a x + b` in 1D: the family that holds the perturbed score of Gaussian data."""

    a: jax.Array
    b: jax.Array

    def __init__(self):
        self.a = jnp.zeros(())
        self.b = jnp.zeros(())

    def __call__(self, x):
        return self.a * x + self.b


def test_dsm_minimiser_is_the_analytic_perturbed_score():
    """Fit s(x) = a x + b by DSM on Gaussian data: a -> -1/(s^2 + sigma^2), b -> mu/(s^2 +
    sigma^2), where mu and s^2 are the moments of the training sample."""
    sigma = 0.7
    data = gaussian_data(20_000)
    mu, var = float(data.mean()), float(data.var())
    opt = optax.adam(optax.cosine_decay_schedule(0.05, 600))
    model, history = sm.fit(Affine(), sm.losses.denoising_score_matching(sigma), data, opt,
                            steps=600, key=jax.random.key(1), batch_size=2048, progress=False)
    assert float(model.a) == pytest.approx(-1.0 / (var + sigma**2), rel=0.03)
    assert float(model.b) == pytest.approx(mu / (var + sigma**2), rel=0.03)


def test_multiscale_dsm_optimal_value_for_a_conditional_score():
    """Each example draws a sigma uniformly; at the exact perturbed score the loss is
    mean_i 1/2 d S^2 / (S^2 + sigma_i^2)."""
    sigmas = sm.geometric_sigmas(5.0, 0.1, 6)
    d = 2
    batch = gaussian_data(8192, d=d)
    loss = sm.losses.multiscale_denoising_score_matching(sigmas)
    values = jax.jit(jax.vmap(lambda k: loss(perturbed_gaussian_score, batch, k)))(
        jax.random.split(jax.random.key(4), 16))
    mean, se = mc(values)
    expected = float(np.mean(0.5 * d * S**2 / (S**2 + np.asarray(sigmas, np.float64) ** 2)))
    assert mean == pytest.approx(expected, abs=5 * se)


def test_multiscale_dsm_ensemble_minimiser_matches_perturbed_scores():
    """A ScoreEnsemble of affine members trained jointly recovers every perturbed score."""
    sigmas = sm.geometric_sigmas(4.0, 0.25, 3)
    data = gaussian_data(20_000)
    ens = sm.models.ScoreEnsemble(lambda k: eqx.nn.Linear(1, 1, key=k), sigmas, data_std=S,
                                  key=jax.random.key(0))
    loss = sm.losses.multiscale_denoising_score_matching(sigmas)
    opt = optax.adam(optax.cosine_decay_schedule(0.05, 600))
    ens, history = sm.fit(ens, loss, data, opt, steps=600, key=jax.random.key(1), batch_size=2048,
                          progress=False)
    mu, var = float(data.mean()), float(data.var())
    for sigma in np.asarray(sigmas):
        x = jnp.linspace(mu - 2 * np.sqrt(var + sigma**2), mu + 2 * np.sqrt(var + sigma**2), 5)[:, None]
        got = jax.vmap(ens, in_axes=(0, None))(x, sigma)
        want = -(x - mu) / (var + sigma**2)
        np.testing.assert_allclose(got, want, atol=0.03 / np.sqrt(var + sigma**2))


def test_multiscale_dsm_trains_a_noise_conditional_mlp():
    """The noise-conditional MLP's minimiser is the perturbed score at every sigma (up to the
    network's approximation and optimisation error)."""
    sigmas = sm.geometric_sigmas(4.0, 0.25, 3)
    data = gaussian_data(20_000)
    model = sm.models.NoiseConditionalMLP(1, 32, 2, data_std=S, key=jax.random.key(0))
    loss = sm.losses.multiscale_denoising_score_matching(sigmas)
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, 800))
    model, history = sm.fit(model, loss, data, opt, steps=800, key=jax.random.key(1), batch_size=256,
                            progress=False)
    mu, var = float(data.mean()), float(data.var())

    @eqx.filter_jit
    def relative_errors(model):
        z = jax.random.normal(jax.random.key(2), (2000, 1))

        def at(sigma):  # relative squared error on samples of the perturbed data
            y = mu + jnp.sqrt(var + sigma**2) * z
            true = -(y - mu) / (var + sigma**2)
            got = jax.vmap(model, in_axes=(0, None))(y, sigma)
            return jnp.mean((got - true) ** 2) / jnp.mean(true**2)

        return jax.vmap(at)(sigmas)

    errors = relative_errors(model)
    assert np.all(errors < 0.03), errors


def test_multiscale_dsm_rejects_an_ensemble_of_another_size():
    ens = sm.models.ScoreEnsemble(lambda k: eqx.nn.Linear(1, 1, key=k), sm.geometric_sigmas(4.0, 0.25, 3),
                                  key=jax.random.key(0))
    loss = sm.losses.multiscale_denoising_score_matching(sm.geometric_sigmas(4.0, 0.25, 4))
    with pytest.raises(ValueError, match="3 members.*4 sigmas"):
        loss(ens, jnp.zeros((8, 1)), jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# Any example shape: an objective on images equals the same objective on the flattened images


class OnImages(eqx.Module):
    """A vector model `(d,) -> (d,)` applied to examples of shape `shape` (flattened and back)."""

    model: eqx.Module
    shape: tuple = eqx.field(static=True)

    def __call__(self, x, *sigma):
        return self.model(x.reshape(-1), *sigma).reshape(self.shape)


IMAGE = (2, 3, 2)  # (C, H, W): d = 12


@pytest.mark.parametrize("loss", [
    sm.losses.implicit_score_matching(),
    sm.losses.sliced_score_matching(4),
    sm.losses.sliced_score_matching(3, variance_reduction=False, distribution="rademacher"),
    sm.losses.denoising_score_matching(0.7),
], ids=["implicit", "sliced", "sliced rademacher", "denoising"])
def test_losses_on_image_shaped_examples_equal_the_flat_objective(loss):
    """The same data and model seen as `(n, 12)` vectors or `(n, 2, 3, 2)` images give the same
    loss (the projections of sliced SM, drawn with the example's shape, are the same numbers)."""
    d = int(np.prod(IMAGE))
    model = Wiggly(d, jax.random.key(11))
    flat = jax.random.normal(jax.random.key(12), (64, d))
    key = jax.random.key(13)
    expected = float(eqx.filter_jit(loss)(model, flat, key))
    got = float(eqx.filter_jit(loss)(OnImages(model, IMAGE), flat.reshape(64, *IMAGE), key))
    assert got == pytest.approx(expected, rel=1e-5)
    # The trace term is large against the tolerance, so a trace over the wrong axes would show.
    assert abs(float(jnp.mean(trace_jac(model, flat)))) > 1000 * 1e-5 * abs(expected)


class ConditionalWiggly(eqx.Module):
    """`s(x, sigma) = Wiggly(x) / (1 + sigma)`: a noise-conditional model of any dimension."""

    base: Wiggly

    def __call__(self, x, sigma):
        return self.base(x) / (1 + sigma)


@pytest.mark.parametrize("loss", [
    sm.losses.multiscale_denoising_score_matching(sm.geometric_sigmas(4.0, 0.1, 5)),
    sm.losses.continuous_denoising_score_matching(0.1, 4.0),
], ids=["multiscale", "continuous"])
def test_conditional_losses_on_image_shaped_examples(loss):
    d = int(np.prod(IMAGE))
    model = ConditionalWiggly(Wiggly(d, jax.random.key(14)))
    flat = jax.random.normal(jax.random.key(15), (64, d))
    key = jax.random.key(16)
    expected = float(eqx.filter_jit(loss)(model, flat, key))
    got = float(eqx.filter_jit(loss)(OnImages(model, IMAGE), flat.reshape(64, *IMAGE), key))
    assert got == pytest.approx(expected, rel=1e-5)


def test_continuous_dsm_optimal_value_for_a_conditional_score():
    """With log sigma uniform on [log a, log b] and the exact perturbed score of N(MU, S^2)
    data, the loss is E_sigma 1/2 d S^2 / (S^2 + sigma^2) = d / (2 log(b/a)) int_a^b S^2 /
    (S^2 + s^2) ds / s, in closed form d/(4 log(b/a)) log((b^2 (S^2 + a^2)) / (a^2 (S^2 + b^2)))."""
    a, b, d = 0.1, 5.0, 2
    batch = gaussian_data(8192, d=d)
    loss = sm.losses.continuous_denoising_score_matching(a, b)
    values = jax.jit(jax.vmap(lambda k: loss(perturbed_gaussian_score, batch, k)))(
        jax.random.split(jax.random.key(17), 16))
    mean, se = mc(values)
    expected = d / (4 * np.log(b / a)) * np.log(b**2 * (S**2 + a**2) / (a**2 * (S**2 + b**2)))
    assert mean == pytest.approx(expected, abs=5 * se)
    # the chapter-5 recipe trains with this very function
    from score_models.zoo import chapter5

    assert chapter5.continuous_denoising_score_matching is sm.losses.continuous_denoising_score_matching


# ---------------------------------------------------------------------------------------------
# Inputs that would give a wrong loss silently are refused


def test_multiscale_dsm_rejects_an_ensemble_with_other_sigmas():
    """Same number of levels, other values: the ensemble would be trained at its own levels and
    the loss's ignored."""
    ens = sm.models.ScoreEnsemble(lambda k: eqx.nn.Linear(1, 1, key=k), [10.0, 1.0], key=jax.random.key(0))
    with pytest.raises(ValueError, match="differ from the ensemble"):
        sm.losses.multiscale_denoising_score_matching([0.5, 0.01])(ens, jnp.zeros((8, 1)), jax.random.key(0))
    # float32 rounding of the same schedule is not a difference (chapter 2 relies on it)
    levels = sm.geometric_sigmas(30.0, 0.1, 10)
    ens = sm.models.ScoreEnsemble(lambda k: eqx.nn.Linear(1, 1, key=k), np.geomspace(30.0, 0.1, 10).tolist(),
                                  key=jax.random.key(0))
    assert np.isfinite(float(sm.losses.multiscale_denoising_score_matching(levels)(
        ens, jnp.zeros((8, 1)), jax.random.key(0))))


@pytest.mark.parametrize("make", [
    lambda gm: sm.losses.explicit_score_matching(lambda x: gm.score(x)[0]),   # () instead of (1,)
    lambda gm: sm.losses.explicit_score_matching(lambda x: jnp.tile(gm.score(x), 2)),   # (2,)
], ids=["scalar", "too long"])
def test_explicit_sm_refuses_a_true_score_of_another_shape(make):
    gm = sm.data.running_example()
    x = gm.sample(jax.random.key(0), 64)
    model = sm.models.MLP(1, 8, 1, key=jax.random.key(1))
    with pytest.raises(ValueError, match="`true_score` must return the shape of one example"):
        make(gm)(model, x)


def test_losses_refuse_a_model_of_another_shape_or_signature_and_integer_data():
    x = jnp.zeros((8, 2))
    with pytest.raises(ValueError, match="`model` must return the shape of one example"):
        sm.losses.denoising_score_matching(1.0)(lambda y: y[:1], x, jax.random.key(0))
    with pytest.raises(ValueError, match="`model` must return the shape of one example"):
        sm.losses.implicit_score_matching()(lambda y: jnp.sum(y), x)
    unconditional = sm.models.MLP(2, 8, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`model` failed on ONE example of shape \\(2,\\) with a scalar sigma"):
        sm.losses.multiscale_denoising_score_matching([2.0, 1.0])(unconditional, x, jax.random.key(0))
    for loss in (sm.losses.denoising_score_matching(1.0), sm.losses.sliced_score_matching()):
        with pytest.raises(ValueError, match="`batch`.*must be floating point"):
            loss(unconditional, jnp.zeros((8, 2), jnp.int32), jax.random.key(0))


@pytest.mark.parametrize("make,name", [
    (lambda: sm.losses.explicit_score_matching(None), "true_score"),
    (lambda: sm.losses.denoising_score_matching("1"), "sigma"),
    (lambda: sm.losses.denoising_score_matching([1.0, 2.0]), "sigma"),
    (lambda: sm.losses.denoising_score_matching(1e39), "sigma"),
    (lambda: sm.losses.sliced_score_matching(2, variance_reduction="no"), "variance_reduction"),
    (lambda: sm.losses.continuous_denoising_score_matching(1.0, 0.5), "sigma_min"),
    (lambda: sm.losses.continuous_denoising_score_matching(0.0, 0.5), "sigma_min"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_loss_constructors_refuse_bad_hyperparameters(make, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        make()
