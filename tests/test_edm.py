"""Euler (DDIM) and Heun sampling on EDM's schedule (`score_models.samplers.edm`) and the
conversions between conventions (`score_models.conversions`), against exact answers:

- `edm_sigmas` is Karras et al.'s eq. 5 (uniform in sigma^(1/rho)), ending at 0;
- with the exact score of a mixture whose components overlap (a smooth flow), the error of
  Heun's method against a tight adaptive solve falls 4x per doubling of the steps, Euler's 2x;
- Euler in sigma is DDIM written with DDPM's `alpha_bar`;
- with churn the sampler still draws the mixture (energy test, mode weights);
- the score counts are the evaluations made; conversions round-trip.
"""

from __future__ import annotations

from unittest import mock

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_models as sm
from score_models import conversions
from score_models.samplers import edm as edm_module

SIGMA_MAX, SIGMA_MIN = 40.0, 0.002
# Two overlapping components: the flow has no mode boundary to amplify errors, so the
# discretisation error is smooth in the step and its order shows cleanly.
OVERLAP = sm.GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], [1.0, 0.8], [0.3, 0.7])


def test_edm_sigmas_is_karras_schedule():
    s = np.asarray(sm.edm_sigmas(18, SIGMA_MIN, SIGMA_MAX))
    assert s.shape == (19,) and s.dtype == np.float32 and s[-1] == 0.0
    assert s[0] == np.float32(SIGMA_MAX) and s[-2] == np.float32(SIGMA_MIN)
    assert np.all(np.diff(s) < 0)
    # equally spaced in sigma^(1/7)
    np.testing.assert_allclose(np.diff(s[:-1].astype(np.float64) ** (1 / 7)),
                               (SIGMA_MIN ** (1 / 7) - SIGMA_MAX ** (1 / 7)) / 17, rtol=1e-4)
    np.testing.assert_allclose(sm.edm_sigmas(5, 1.0, 5.0, rho=1.0)[:-1], [5, 4, 3, 2, 1], rtol=1e-6)
    # rho -> infinity: geometric
    np.testing.assert_allclose(sm.edm_sigmas(5, 0.1, 10.0, rho=1e4)[:-1], sm.geometric_sigmas(10.0, 0.1, 5),
                               rtol=1e-3)
    np.testing.assert_array_equal(sm.edm_sigmas(1, 0.1, 3.0), [3.0, 0.0])


def reference_flow(mixture, x_init):
    """A tight adaptive solve of the same ODE down to SIGMA_MIN (tolerance 1e-7)."""
    return sm.probability_flow_ode(mixture.perturbed_score, x_init, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN,
                                   rtol=1e-7, atol=1e-7, max_steps=20_000).samples


def test_heun_is_second_order_and_euler_first():
    """RMS error at SIGMA_MIN (before the last step, to 0) for 16, 32, 64 levels. Measured
    (float64): Euler halves per doubling (ratios 2.0); Heun quarters (4.4, 4.1). Checked: Euler
    ratios in [1.7, 2.4], Heun ratios above 3.3; and Heun beats Euler at equal evaluations."""
    x_init = SIGMA_MAX * jax.random.normal(jax.random.key(0), (1000, 2))
    ref = reference_flow(OVERLAP, x_init)
    errors = {}
    for method in ("euler", "heun"):
        errors[method] = []
        for n in (16, 32, 64):
            r = sm.edm_sampler(OVERLAP.perturbed_score, x_init, sm.edm_sigmas(n, SIGMA_MIN, SIGMA_MAX),
                               method=method)
            errors[method].append(float(jnp.sqrt(jnp.mean((r.samples_before_denoise - ref) ** 2))))
    euler, heun = np.asarray(errors["euler"]), np.asarray(errors["heun"])
    assert np.all((euler[:-1] / euler[1:] > 1.7) & (euler[:-1] / euler[1:] < 2.4)), euler
    assert np.all(heun[:-1] / heun[1:] > 3.3), heun
    assert heun[0] < euler[1] and heun[1] < euler[2]  # 31 vs 32 and 63 vs 64 evaluations


class CountingScore(eqx.Module):
    """The exact score, counting its (batched) evaluations with a debug callback."""

    mixture: sm.GaussianMixture

    def __call__(self, x, sigma):
        jax.debug.callback(lambda s: EVALUATIONS.append(float(s)), sigma)
        return self.mixture.perturbed_score(x, sigma)


EVALUATIONS: list[float] = []


@pytest.mark.parametrize("method, ends_at_zero, expected", [("heun", True, 2 * 6 - 1), ("heun", False, 12),
                                                            ("euler", True, 6)])
def test_score_evals_are_the_evaluations_made(method, ends_at_zero, expected):
    sigmas = sm.edm_sigmas(6, 0.05, 10.0)
    if not ends_at_zero:
        sigmas = jnp.concatenate([sigmas[:-1], jnp.array([0.01])])
    EVALUATIONS.clear()
    r = sm.edm_sampler(CountingScore(OVERLAP), 10.0 * jax.random.normal(jax.random.key(0), (8, 2)), sigmas,
                       method=method)
    jax.effects_barrier()
    assert r.score_evals == len(EVALUATIONS) == expected
    assert 0.0 not in EVALUATIONS  # the score is never asked at sigma = 0
    assert (r.samples_before_denoise is not None) == ends_at_zero


def test_the_last_step_to_zero_is_tweedie():
    gm = sm.data.gaussian_mixture_2d()
    x_init = 10.0 * jax.random.normal(jax.random.key(0), (64, 2))
    r = sm.edm_sampler(gm.perturbed_score, x_init, sm.edm_sigmas(8, 0.05, 10.0), trajectory_every=2)
    np.testing.assert_allclose(r.samples, sm.tweedie_denoise(gm.perturbed_score, r.samples_before_denoise, 0.05),
                               rtol=1e-5, atol=1e-5)
    assert r.trajectory.shape == (5, 64, 2)
    np.testing.assert_array_equal(r.trajectory[0], x_init)
    np.testing.assert_array_equal(r.trajectory[-1], r.samples)
    np.testing.assert_allclose(r.trajectory_sigmas, sm.edm_sigmas(8, 0.05, 10.0)[::2], rtol=1e-6)


def test_euler_in_sigma_is_ddim():
    """DDIM (eta = 0) on a grid of DDPM's alpha_bar, written in its own terms with the noise
    prediction `eps = -sigma score`: `y' = sqrt(ab') x0_hat + sqrt(1 - ab') eps`, `x0_hat = (y -
    sqrt(1 - ab) eps) / sqrt(ab)`. In `x = y / sqrt(ab)` and `sigma = sqrt(1/ab - 1)` it is the
    Euler step."""
    gm = sm.data.gaussian_mixture_2d()
    sigmas = sm.edm_sigmas(10, 0.05, 20.0)[:-1]
    ab = conversions.alpha_bar(sigmas)
    eps_fn = jax.vmap(conversions.to_vp_epsilon(gm.perturbed_score), in_axes=(0, None))
    sde = sm.VPSDE()
    y = jnp.sqrt(1 - ab[0]) * jax.random.normal(jax.random.key(0), (256, 2))
    y0 = y
    for k in range(sigmas.shape[0] - 1):
        eps = eps_fn(y, sde.t_of_sigma(sigmas[k]))
        x0_hat = (y - jnp.sqrt(1 - ab[k]) * eps) / jnp.sqrt(ab[k])
        y = jnp.sqrt(ab[k + 1]) * x0_hat + jnp.sqrt(1 - ab[k + 1]) * eps
    r = sm.edm_sampler(gm.perturbed_score, y0 / jnp.sqrt(ab[0]), sigmas, method="euler")
    np.testing.assert_allclose(r.samples, y / jnp.sqrt(ab[-1]), rtol=1e-3, atol=1e-3)


def test_churn_samples_the_mixture():
    """Heun with churn (S_churn = 30 over 32 steps, so gamma = 0.41 at every level) and the
    exact score draws the 2D mixture: mode weights within 0.03 (4 standard errors at 4,000), and
    the energy test's permutation p-value (exact under equality) does not reject at 1%."""
    gm = sm.data.gaussian_mixture_2d()
    x_init = gm.perturbed(SIGMA_MAX).sample(jax.random.key(0), 4000)
    r = sm.edm_sampler(gm.perturbed_score, x_init, sm.edm_sigmas(32, SIGMA_MIN, SIGMA_MAX), jax.random.key(1),
                       churn=30.0)
    assert r.score_evals == 63
    np.testing.assert_allclose(sm.metrics.mode_weights(r.samples, gm), gm.weights, atol=0.03)
    test = sm.metrics.energy_test(r.samples, gm.sample(jax.random.key(2), 4000), jax.random.key(3))
    assert test.p_value > 0.01, test
    # the same key gives the same samples; the churn noise makes another key differ
    again = sm.edm_sampler(gm.perturbed_score, x_init, sm.edm_sigmas(32, SIGMA_MIN, SIGMA_MAX), jax.random.key(1),
                           churn=30.0)
    np.testing.assert_array_equal(again.samples, r.samples)


def test_conversions_round_trip():
    gm = sm.data.gaussian_mixture_2d()
    x = jax.random.normal(jax.random.key(0), (2,)) * 3
    sigma = jnp.float32(0.7)
    s = gm.perturbed_score(x, sigma)
    np.testing.assert_allclose(conversions.to_epsilon(gm.perturbed_score)(x, sigma), -sigma * s, rtol=1e-6)
    np.testing.assert_allclose(conversions.to_denoiser(gm.perturbed_score)(x, sigma), x + sigma**2 * s, rtol=1e-6)
    for there_and_back in (
        conversions.from_epsilon(conversions.to_epsilon(gm.perturbed_score)),
        conversions.from_denoiser(conversions.to_denoiser(gm.perturbed_score)),
        conversions.from_vp_epsilon(conversions.to_vp_epsilon(gm.perturbed_score)),
    ):
        np.testing.assert_allclose(there_and_back(x, sigma), s, rtol=1e-4, atol=1e-5)
    # DDPM's eps at VP time t is the noise of the VP state: y = s (x0 + sigma z) -> eps ~ z
    sde = sm.VPSDE()
    t = 0.3
    y = sde.scale(t) * x
    np.testing.assert_allclose(conversions.to_vp_epsilon(gm.perturbed_score, sde)(y, t),
                               -sde.marginal_std(t) * gm.vp_perturbed_score(y, sde.sigma(t)), rtol=1e-4, atol=1e-6)
    # the denoiser is the posterior mean of the clean example (Tweedie)
    np.testing.assert_allclose(conversions.to_denoiser(gm.perturbed_score)(x, sigma),
                               sm.tweedie_denoise(gm.perturbed_score, x[None], sigma)[0], rtol=1e-6)


def test_alpha_bar_and_ddpm_levels():
    # (float32: 1 - alpha_bar cancels at small sigma, ~1e-7 / sigma^2 relative)
    np.testing.assert_allclose(conversions.sigma_of_alpha_bar(conversions.alpha_bar(jnp.array([0.01, 1.0, 80.0]))),
                               [0.01, 1.0, 80.0], rtol=1e-3)
    sig = conversions.ddpm_sigmas(np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(sig[0], 0.01, rtol=1e-3)
    assert 150 < float(sig[-1]) < 160 and np.all(np.diff(np.asarray(sig)) > 0)


def test_edm_preconditioning_makes_the_target_unit_variance():
    """For data of std sigma_data (a Gaussian), EDM's target (x0 - c_skip x) / c_out has unit
    variance at every level, and c_skip x + c_out F* = x0."""
    sigma_data = 0.5
    x0 = sigma_data * jax.random.normal(jax.random.key(0), (100_000,))
    z = jax.random.normal(jax.random.key(1), (100_000,))
    for sigma in (0.01, 0.5, 20.0):
        c_skip, c_out, c_in, _ = conversions.edm_preconditioning(sigma, sigma_data)
        x = x0 + sigma * z
        target = (x0 - c_skip * x) / c_out
        assert abs(float(jnp.var(target)) - 1) < 0.02
        assert abs(float(jnp.var(c_in * x)) - 1) < 0.02


# ------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument, before anything is compiled.

X = jnp.zeros((8, 2))
SIGMAS = sm.edm_sigmas(4, 0.1, 10.0)


def _edm(**overrides):
    kwargs = dict(score_fn=OVERLAP.perturbed_score, x_init=X, sigmas=SIGMAS)
    kwargs.update(overrides)
    return sm.edm_sampler(**kwargs)


@pytest.mark.parametrize(
    "call, overrides, match",
    [
        (_edm, dict(x_init=jnp.zeros(8)), "x_init"),
        (_edm, dict(sigmas=jnp.array([1.0, 2.0, 0.0])), "sigmas"),
        (_edm, dict(sigmas=jnp.array([1.0, 0.0, 0.0])), "sigmas"),
        (_edm, dict(sigmas=jnp.array([1.0])), "sigmas"),
        (_edm, dict(sigmas=jnp.array([1.0, -0.5])), "sigmas"),
        (_edm, dict(sigmas=jnp.ones((2, 2))), "sigmas"),
        (_edm, dict(method="rk4"), "method"),
        (_edm, dict(churn=-1.0), "churn"),
        (_edm, dict(churn=1.0), "key"),
        (_edm, dict(key=jax.random.key(0)), "key"),
        (_edm, dict(churn_noise=1.003), "churn_noise"),
        (_edm, dict(churn=1.0, key=jax.random.key(0), churn_min=2.0, churn_max=1.0), "churn_min"),
        (_edm, dict(churn=1.0, key=jax.random.key(0), churn_noise=0.0), "churn_noise"),
        (_edm, dict(trajectory_every=3), "trajectory_every"),
        (_edm, dict(score_fn=lambda x, s: jnp.zeros(3)), "score_fn"),
        (_edm, dict(throw="yes"), "throw"),
        (lambda **kw: sm.edm_sigmas(0, 0.1, 1.0), {}, "`n`"),
        (lambda **kw: sm.edm_sigmas(4, 1.0, 0.1), {}, "sigma_min"),
        (lambda **kw: sm.edm_sigmas(4, 0.1, 1.0, rho=0.0), {}, "rho"),
        (lambda **kw: sm.edm_sigmas(4, 0.0, 1.0), {}, "sigma_min"),
        (lambda **kw: sm.edm_sigmas(10_000_000, 0.1, 0.1000001), {}, "distinct"),
        (lambda **kw: conversions.to_epsilon(3), {}, "score_fn"),
        (lambda **kw: conversions.to_vp_epsilon(OVERLAP.perturbed_score, sm.VESDE(0.1, 1.0)), {}, "sde"),
        (lambda **kw: conversions.sigma_of_alpha_bar(1.5), {}, "alpha_bar"),
        (lambda **kw: conversions.ddpm_sigmas(np.array([0.1, 1.2])), {}, "betas"),
    ],
)
def test_bad_input_raises_before_compiling(call, overrides, match):
    with mock.patch.object(edm_module, "_edm_kernel", side_effect=AssertionError("compiled")):
        with pytest.raises(ValueError, match=match):
            call(**overrides)


def test_diverging_particles_raise_or_are_flagged():
    x = jnp.ones((4, 2))
    with pytest.raises(FloatingPointError, match="edm_sampler.*diverged"):
        sm.edm_sampler(lambda y, s: y / 0.0, x, SIGMAS)
    assert sm.edm_sampler(lambda y, s: y / 0.0, x, SIGMAS, throw=False).n_diverged == 4
