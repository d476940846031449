"""The VE SDE (`score_models.sde`): its schedule, forward noising against the closed-form
marginal, and the reverse-time samplers against the running example's mode weights.

Statistical tolerances are about 4 Monte Carlo standard errors (see conftest.py). The samplers
start from exact samples of `p_sigma_max` rather than `N(0, sigma_max^2)`, so the tests measure
the samplers, not the prior's approximation.
"""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_models as sm
from score_models import sde as sde_module
from score_models.samplers import reverse as reverse_module

SIGMA_MAX, SIGMA_MIN = 60.0, 0.01
N = 4_000  # mode weights from 4,000 particles: binomial std <= 0.008, so 0.03 is ~4 std


def test_schedule():
    sde = sm.VESDE(0.01, 50.0)
    np.testing.assert_allclose([sde.sigma(0.0), sde.sigma(1.0)], [0.01, 50.0], rtol=1e-5)
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(sde.sigma(t), sm.geometric_sigmas(50.0, 0.01, 11)[::-1], rtol=1e-5)
    np.testing.assert_allclose(sde.t_of_sigma(sde.sigma(t)), t, atol=1e-5)
    # g(t)^2 = d sigma(t)^2 / dt, so the variance added by time t is sigma(t)^2 - sigma(0)^2
    dvar = jax.vmap(jax.grad(lambda t: sde.sigma(t) ** 2))(t)
    np.testing.assert_allclose(sde.diffusion(t) ** 2, dvar, rtol=1e-5)
    np.testing.assert_allclose(sde.marginal_std(t) ** 2, sde.sigma(t) ** 2 - 0.01**2, rtol=1e-5)
    x0 = jnp.full((20_000, 1), 3.0)
    xt = sde.marginal_sample(x0, 0.5, jax.random.key(0))
    assert abs(float(jnp.var(xt)) / float(sde.marginal_std(0.5)) ** 2 - 1) < 4 * np.sqrt(2 / 20_000)


def test_forward_noising_matches_the_marginal():
    """One diffrax solve (Heun, virtual Brownian tree) for all particles: `x(t) - x(0)` has mean 0
    and variance `sigma(t)^2 - sigma_min^2`. 2,000 particles in 2D: the variance's relative
    standard error is sqrt(2 / 4,000) = 2.2%, tolerance 9%; the mean's, 1 std, tolerance 4 std."""
    sde = sm.VESDE(0.01, 50.0)
    x0 = sm.data.gaussian_mixture_2d().sample(jax.random.key(1), 2_000)
    ts = jnp.array([0.0, 0.3, 0.6, 0.85, 1.0])
    xs = sde.forward(x0, jax.random.key(2), ts=ts, n_steps=128)
    assert xs.shape == (5, 2_000, 2)
    np.testing.assert_array_equal(xs[0], x0)
    noise = xs[1:] - x0
    std = sde.marginal_std(ts[1:])
    np.testing.assert_allclose(jnp.var(noise, axis=(1, 2)) / std**2, 1.0, atol=0.09)
    assert np.all(np.abs(jnp.mean(noise, axis=(1, 2)) / std) < 4 / np.sqrt(4_000))
    # the same key gives the same path
    np.testing.assert_array_equal(sde.forward(x0, jax.random.key(2), ts=ts, n_steps=128), xs)


@pytest.fixture(scope="module")
def running_example():
    gm = sm.data.running_example()
    return gm, gm.perturbed(SIGMA_MAX).sample(jax.random.key(3), N)


def check_samples(x, gm):
    """Mode weights within 0.03, and the spread of the right-hand mode is its std at sigma_min,
    sqrt(1 + 0.01^2) ~ 1 (~1,000 samples: standard error 0.022, tolerance 0.1)."""
    np.testing.assert_allclose(sm.metrics.mode_weights(x, gm), gm.weights, atol=0.03)
    assert abs(float(jnp.std(x[x[:, 0] > 7.5])) - 1.0) < 0.1


def test_reverse_sde(running_example):
    gm, x_init = running_example
    r = sm.reverse_sde(gm.perturbed_score, x_init, jax.random.key(4), sigma_max=SIGMA_MAX,
                       sigma_min=SIGMA_MIN, n_steps=500, trajectory_every=100)
    check_samples(r.samples, gm)
    assert r.score_evals == 500 and r.samples_before_denoise is None and r.n_diverged == 0
    assert r.trajectory.shape == (6, N, 1)
    np.testing.assert_array_equal(r.trajectory[0], x_init)
    np.testing.assert_array_equal(r.trajectory[-1], r.samples)
    np.testing.assert_allclose(r.trajectory_sigmas, sm.geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 501)[::100],
                               rtol=1e-5)
    # same key, same samples; another key, other samples
    again = sm.reverse_sde(gm.perturbed_score, x_init, jax.random.key(4), sigma_max=SIGMA_MAX,
                           sigma_min=SIGMA_MIN, n_steps=500, trajectory_every=100)
    np.testing.assert_array_equal(again.samples, r.samples)
    other = sm.reverse_sde(gm.perturbed_score, x_init, jax.random.key(5), sigma_max=SIGMA_MAX,
                           sigma_min=SIGMA_MIN, n_steps=500, trajectory_every=100)
    assert not np.any(np.asarray(other.samples) == np.asarray(r.samples))


def test_predictor_corrector(running_example):
    gm, x_init = running_example
    r = sm.predictor_corrector(
        gm.perturbed_score, x_init, jax.random.key(5), sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN,
        n_steps=250, n_corrector=1, snr=0.16, denoise=True, trajectory_every=50)
    check_samples(r.samples, gm)
    assert r.score_evals == 250 * 2 + 1  # predictor + corrector per step, one denoising step
    assert r.trajectory.shape == (250 // 50 + 2, N, 1)  # start, 5 frames, the denoised particles
    assert float(r.trajectory_sigmas[-1]) == 0.0
    np.testing.assert_array_equal(r.trajectory[-2], r.samples_before_denoise)
    np.testing.assert_allclose(r.samples, sm.tweedie_denoise(gm.perturbed_score, r.samples_before_denoise,
                                                             SIGMA_MIN), rtol=1e-6, atol=1e-6)


def test_a_zero_score_makes_the_corrector_diverge_and_says_so():
    """The corrector's step `2 (snr |z| / |s|)^2` is infinite for a zero score."""
    x = jnp.zeros((16, 1))
    kwargs = dict(sigma_max=10.0, sigma_min=0.1, n_steps=3)
    with pytest.raises(FloatingPointError, match="predictor_corrector.*diverged.*infinite for a zero score"):
        sm.predictor_corrector(lambda y, s: 0.0 * y, x, jax.random.key(0), **kwargs)
    r = sm.predictor_corrector(lambda y, s: 0.0 * y, x, jax.random.key(0), throw=False, **kwargs)
    assert r.n_diverged == 16


# ------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument, raised before anything is compiled.

GM = sm.data.running_example()
X = jnp.zeros((8, 1))


def _rsde(**overrides):
    kwargs = dict(score_fn=GM.perturbed_score, x_init=X, key=jax.random.key(0), sigma_max=10.0,
                  sigma_min=0.1, n_steps=10)
    kwargs.update(overrides)
    return sm.reverse_sde(**kwargs)


def _pc(**overrides):
    kwargs = dict(score_fn=GM.perturbed_score, x_init=X, key=jax.random.key(0), sigma_max=10.0,
                  sigma_min=0.1, n_steps=10)
    kwargs.update(overrides)
    return sm.predictor_corrector(**kwargs)


def _forward(**overrides):
    kwargs = dict(x0=X, key=jax.random.key(0))
    kwargs.update(overrides)
    return sm.VESDE(0.1, 10.0).forward(**kwargs)


@pytest.mark.parametrize(
    "call, overrides, match",
    [
        (_rsde, dict(x_init=jnp.zeros(8)), "x_init"),
        (_rsde, dict(x_init=X + 1j), "x_init"),
        (_rsde, dict(sigma_max=1e39), "sigma_max"),
        (_rsde, dict(sigma_min=1e-46), "sigma_min"),
        (_rsde, dict(sigma_max="10"), "sigma_max"),
        (_rsde, dict(denoise="no"), "denoise"),
        (_rsde, dict(throw=1), "throw"),
        (_rsde, dict(key=3), "key"),
        (_rsde, dict(x_init=X.at[0, 0].set(jnp.nan)), "x_init"),
        (_rsde, dict(sigma_min=10.0), "sigma_min"),
        (_rsde, dict(sigma_min=0.0), "sigma_min"),
        (_rsde, dict(sigma_max=-5.0), "sigma_max"),
        (_rsde, dict(n_steps=0), "n_steps"),
        (_rsde, dict(n_steps=2.5), "n_steps"),
        (_rsde, dict(trajectory_every=3), "trajectory_every"),
        (_rsde, dict(score_fn=lambda x, s: jnp.zeros((2, 1))), "score_fn"),
        (_rsde, dict(score_fn=None), "score_fn"),
        (_pc, dict(n_corrector=-1), "n_corrector"),
        (_pc, dict(snr=0.0), "snr"),
        (_pc, dict(n_corrector=0, snr=0.1), "snr"),
        (_pc, dict(n_corrector=True), "n_corrector"),
        (_pc, dict(sigma_max=0.05), "sigma_min"),
        (_forward, dict(x0=jnp.zeros(8)), "x0"),
        (_forward, dict(ts=jnp.array([0.5, 1.5])), "ts"),
        (_forward, dict(ts=jnp.array([0.5, 0.2])), "ts"),
        (_forward, dict(n_steps=0), "n_steps"),
        (_forward, dict(solver="heun"), "solver"),
        (lambda **kw: sm.VESDE(0.1, 10.0).marginal_sample(X, 1.5, jax.random.key(0)), {}, "`t`"),
        (lambda **kw: sm.VESDE(0.1, 10.0).marginal_sample(X, float("nan"), jax.random.key(0)), {}, "`t`"),
        (lambda **kw: sm.VESDE(0.1, 10.0).marginal_sample(X, jnp.ones(8), jax.random.key(0)), {}, "`t`"),
    ],
)
def test_bad_input_raises_before_compiling(call, overrides, match):
    with mock.patch.object(reverse_module, "_reverse_kernel", side_effect=AssertionError("compiled")), \
         mock.patch.object(sde_module, "_forward_kernel", side_effect=AssertionError("compiled")):
        with pytest.raises(ValueError, match=match):
            call(**overrides)


@pytest.mark.parametrize("args", [(1.0, 1.0), (2.0, 1.0), (0.0, 1.0), (float("nan"), 1.0), (1e-3, 1e39),
                                  (1e-46, 1.0), (1.0, 1.0 + 1e-9)])
def test_vesde_rejects_bad_sigmas(args):
    with pytest.raises(ValueError, match="sigma"):
        sm.VESDE(*args)
