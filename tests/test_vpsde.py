"""The VP SDE (`score_models.sde.VPSDE`) and the shared SDE interface, against closed forms.

- the schedule: `s^2 + (s sigma)^2 = 1`, `g^2 = s^2 d sigma^2/dt`, `f = (s'/s) x` (autodiff),
  for both SDEs;
- the exact VP-perturbed mixture (`GaussianMixture.vp_perturbed`) against the change of
  variables from the VE-perturbed one, and `SDE.score` against its exact score;
- forward noising against the closed-form marginal;
- the reverse-time samplers (Euler-Maruyama, reverse diffusion, DDPM's ancestral step), the
  probability-flow ODE and the log-likelihood with the exact score: the running example's mode
  weights and spread, the analytic log-density;
- the default VE SDE is unchanged by `sde=`.

Statistical tolerances are about 4 Monte Carlo standard errors. Samplers start from exact
samples of the VP marginal at `sigma_max`, so the tests measure the samplers, not the prior.
"""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_models as sm
from score_models import sde as sde_module
from score_models.samplers import ode as ode_module
from score_models.samplers import reverse as reverse_module

SIGMA_MAX, SIGMA_MIN = 60.0, 0.01
N = 4_000  # mode weights from 4,000 particles: binomial std <= 0.008, so 0.03 is ~4 std
VP = sm.VPSDE()


@pytest.mark.parametrize("sde", [sm.VPSDE(), sm.VPSDE(0.5, 5.0), sm.VESDE(0.01, 50.0)],
                         ids=["vp", "vp_other_betas", "ve"])
def test_the_schedule_is_one_sde(sde):
    t = jnp.linspace(0.02, 1.0, 17)
    sigma, s = sde.sigma(t), sde.scale(t)
    np.testing.assert_allclose(sde.t_of_sigma(sigma), t, rtol=1e-4)
    np.testing.assert_allclose(sde.scale_at(sigma), s, rtol=1e-5)
    # g^2 = s^2 d sigma^2 / dt and f(x, t) = (d log s / dt) x
    dvar = jax.vmap(jax.grad(lambda u: sde.sigma(u) ** 2))(t)
    np.testing.assert_allclose(sde.diffusion(t) ** 2, s**2 * dvar, rtol=1e-4)
    dlog_s = jax.vmap(jax.grad(lambda u: jnp.log(sde.scale(u))))(t)
    np.testing.assert_allclose(sde.drift(jnp.full(17, 2.0), t), 2.0 * dlog_s, rtol=1e-4, atol=1e-6)
    # the marginal given x(0): mean s(t)/s(0) x0, std s(t) sqrt(sigma(t)^2 - sigma(0)^2)
    np.testing.assert_allclose(sde.marginal_std(t), s * jnp.sqrt(sigma**2 - sde.sigma(0.0) ** 2), rtol=1e-5)
    np.testing.assert_allclose(sde.marginal_mean(3.0, t), 3.0 * s / sde.scale(0.0), rtol=1e-6)
    np.testing.assert_allclose(sde.prior_std, sde.scale(1.0) * sde.sigma(1.0), rtol=1e-6)


def test_vp_is_variance_preserving():
    t = jnp.linspace(0.0, 1.0, 11)
    s, std = VP.scale(t), VP.marginal_std(t)
    np.testing.assert_allclose(s**2 + std**2, 1.0, rtol=1e-6)
    np.testing.assert_allclose(VP.sigma(0.0), 0.0, atol=1e-7)
    # DDPM's 1,000 steps: beta_1 = 1e-4 and beta_1000 = 0.02 are beta(t) / 1000
    np.testing.assert_allclose(VP.beta(jnp.array([0.0, 1.0])) / 1000, [1e-4, 0.02], rtol=1e-6)
    # log alpha_bar = sum log(1 - beta_i) is -int beta = log s(t)^2 at t = i / 1000, up to
    # sum beta_i^2 / 2 (0.07 at the end, against int_0^1 beta = 10.05) and the Riemann sum's error
    betas = np.linspace(1e-4, 0.02, 1000)
    log_alpha_bar = np.cumsum(np.log1p(-betas))
    gap = np.log(VP.scale(np.arange(1, 1001) / 1000) ** 2) - log_alpha_bar
    assert np.max(np.abs(gap)) < 0.1 and np.max(np.abs(gap[:100])) < 0.005


def test_vp_perturbed_mixture_is_the_scaled_ve_one():
    """`vp_perturbed(sigma)` is the law of `s (x + sigma z)`: its log-density is the VE one at
    `y / s` plus `-d log s`, and its score is `SDE.score` of the VE score at the time of sigma."""
    gm = sm.data.gaussian_mixture_2d()
    y = jax.random.normal(jax.random.key(0), (50, 2)) * 3.0
    for sigma in (0.0, 0.3, 2.0, 40.0):
        s = 1 / np.sqrt(1 + sigma**2)
        lp = jax.vmap(gm.vp_perturbed(sigma).log_prob)(y)
        lp_ve = jax.vmap(gm.perturbed(sigma).log_prob)(y / s) - 2 * np.log(s)
        np.testing.assert_allclose(lp, lp_ve, rtol=1e-5, atol=1e-4)
    t = 0.37
    exact = jax.vmap(gm.vp_perturbed_score, in_axes=(0, None))(y, VP.sigma(t))
    converted = jax.vmap(lambda x: VP.score(gm.perturbed_score, x, t))(y)
    np.testing.assert_allclose(converted, exact, rtol=1e-4, atol=1e-5)
    # and its samples are s (x + sigma z): same mean and variance
    x = gm.vp_perturbed(2.0).sample(jax.random.key(1), 20_000)
    z = gm.perturbed(2.0).sample(jax.random.key(2), 20_000) / np.sqrt(5.0)
    np.testing.assert_allclose(jnp.var(x, 0), jnp.var(z, 0), rtol=0.05)


def test_vp_forward_noising_matches_the_marginal():
    """x(t) - s(t) x(0) has mean 0 and std sqrt(1 - s(t)^2); 2,000 particles in 2D (relative
    standard error of a variance 2.2%, tolerance 9%)."""
    x0 = sm.data.gaussian_mixture_2d().sample(jax.random.key(1), 2_000)
    ts = jnp.array([0.1, 0.4, 1.0])
    xs = VP.forward(x0, jax.random.key(2), ts=ts, n_steps=256)
    noise = xs - VP.scale(ts)[:, None, None] * x0
    std = VP.marginal_std(ts)
    np.testing.assert_allclose(jnp.var(noise, axis=(1, 2)) / std**2, 1.0, atol=0.09)
    assert np.all(np.abs(jnp.mean(noise, axis=(1, 2)) / std) < 4 / np.sqrt(4_000))
    closed = VP.marginal_sample(x0, 0.4, jax.random.key(3))
    np.testing.assert_allclose(jnp.var(closed - VP.scale(0.4) * x0), VP.marginal_std(0.4) ** 2, rtol=0.09)


def test_prior_sample_and_log_prob():
    x = VP.prior_sample(jax.random.key(0), (20_000, 2), SIGMA_MAX)
    np.testing.assert_allclose(jnp.std(x), SIGMA_MAX / np.sqrt(1 + SIGMA_MAX**2), rtol=0.02)
    np.testing.assert_allclose(jnp.std(sm.VESDE(0.1, 7.0).prior_sample(jax.random.key(0), (20_000,))), 7.0,
                               rtol=0.02)
    y = jnp.array([0.3, -1.2])
    expected = jax.scipy.stats.norm.logpdf(y, scale=VP.prior_std).sum()
    np.testing.assert_allclose(VP.prior_log_prob(y), expected, rtol=1e-6)


@pytest.fixture(scope="module")
def running_example():
    gm = sm.data.running_example()
    return gm, gm.vp_perturbed(SIGMA_MAX).sample(jax.random.key(3), N)


def check_samples(x, gm, scale=1 / np.sqrt(1 + SIGMA_MIN**2)):
    """Mode weights within 0.03, and the spread of the right-hand mode is its std at sigma_min
    (times the scale `s`), ~1 (~1,000 samples: standard error 0.022, tolerance 0.1)."""
    np.testing.assert_allclose(sm.metrics.mode_weights(x / scale, gm), gm.weights, atol=0.03)
    assert abs(float(jnp.std(x[x[:, 0] > 7.5])) - 1.0 * scale) < 0.1


@pytest.mark.parametrize(
    "sampler",
    [
        lambda score, x, key: sm.reverse_sde(score, x, key, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN,
                                             n_steps=500, sde=VP),
        lambda score, x, key: sm.predictor_corrector(score, x, key, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN,
                                                     n_steps=500, n_corrector=0, sde=VP),
        lambda score, x, key: sm.predictor_corrector(score, x, key, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN,
                                                     n_steps=500, n_corrector=0, sde=VP, predictor="ancestral"),
        lambda score, x, key: sm.predictor_corrector(score, x, key, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN,
                                                     n_steps=250, n_corrector=1, sde=VP),
    ],
    ids=["euler_maruyama", "reverse_diffusion", "ancestral", "predictor_corrector"],
)
def test_vp_samplers_recover_the_mixture(running_example, sampler):
    gm, x_init = running_example
    r = sampler(gm.perturbed_score, x_init, jax.random.key(4))
    check_samples(r.samples, gm)
    assert r.score_evals == 500 and r.n_diverged == 0


def test_vp_denoise_returns_the_data_coordinates(running_example):
    gm, x_init = running_example
    r = sm.predictor_corrector(gm.perturbed_score, x_init, jax.random.key(4), sigma_max=SIGMA_MAX,
                               sigma_min=SIGMA_MIN, n_steps=500, n_corrector=0, sde=VP, denoise=True,
                               trajectory_every=100)
    s = float(VP.scale_at(SIGMA_MIN))
    expected = sm.tweedie_denoise(gm.perturbed_score, r.samples_before_denoise / s, SIGMA_MIN)
    np.testing.assert_allclose(r.samples, expected, rtol=1e-6, atol=1e-6)
    assert r.trajectory.shape == (7, N, 1) and r.score_evals == 501
    np.testing.assert_allclose(np.asarray(r.trajectory_sigmas)[[0, -2, -1]], [SIGMA_MAX, SIGMA_MIN, 0.0], rtol=1e-5)


def test_ancestral_is_ddpm():
    """`predictor="ancestral"` with the VP SDE is DDPM's Algorithm 2, written with its own
    symbols on the grid's `alpha_bar`: `x <- (x - beta / sqrt(1 - alpha_bar) eps) / sqrt(1 -
    beta) + sqrt(beta_tilde) z`, with the same noise draws."""
    gm = sm.data.gaussian_mixture_2d()
    n_steps, smax, smin = 20, 30.0, 0.05
    x_init = VP.prior_sample(jax.random.key(0), (64, 2), smax)
    r = sm.predictor_corrector(gm.perturbed_score, x_init, jax.random.key(1), sigma_max=smax, sigma_min=smin,
                               n_steps=n_steps, n_corrector=0, sde=VP, predictor="ancestral")
    t = jnp.linspace(VP.t_of_sigma(smax), VP.t_of_sigma(smin), n_steps + 1)
    sig = VP.sigma(t).at[0].set(smax).at[-1].set(smin)
    alpha_bar = 1 / (1 + sig**2)
    x = x_init
    for k, key in enumerate(jax.random.split(jax.random.key(1), n_steps)):
        beta = 1 - alpha_bar[k] / alpha_bar[k + 1]
        # DDPM's epsilon-prediction from the sigma-parametrised score: eps = -sigma score(x / s, sigma)
        eps = -sig[k] * jax.vmap(gm.perturbed_score, in_axes=(0, None))(x * jnp.sqrt(1 + sig[k] ** 2), sig[k])
        beta_tilde = (1 - alpha_bar[k + 1]) / (1 - alpha_bar[k]) * beta
        z = jax.random.normal(jax.random.split(key)[0], x.shape)
        x = (x - beta / jnp.sqrt(1 - alpha_bar[k]) * eps) / jnp.sqrt(1 - beta) + jnp.sqrt(beta_tilde) * z
    np.testing.assert_allclose(r.samples, x, rtol=1e-4, atol=1e-4)


def test_vp_probability_flow_is_the_ve_one_scaled(running_example):
    """In sigma, the VP ODE's paths are the VE ODE's scaled by s(sigma) (Karras et al.), so both
    reach the same points up to the solvers' tolerance (1e-5, amplified where the flow stretches
    the gaps between modes: a few particles of 4,000 there); and they recover the running
    example."""
    gm, x_init = running_example
    vp = sm.probability_flow_ode(gm.perturbed_score, x_init, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, sde=VP)
    check_samples(vp.samples, gm)
    ve = sm.probability_flow_ode(gm.perturbed_score, x_init / VP.scale_at(SIGMA_MAX), sigma_max=SIGMA_MAX,
                                 sigma_min=SIGMA_MIN)
    gap = np.abs(np.asarray(vp.samples - VP.scale_at(SIGMA_MIN) * ve.samples))
    assert np.quantile(gap, 0.99) < 1e-3 and gap.max() < 0.05, (np.quantile(gap, 0.99), gap.max())
    denoised = sm.probability_flow_ode(gm.perturbed_score, x_init, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN,
                                       sde=VP, denoise=True)
    np.testing.assert_allclose(denoised.samples, sm.tweedie_denoise(
        gm.perturbed_score, vp.samples / VP.scale_at(SIGMA_MIN), SIGMA_MIN), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gm", [sm.data.running_example(), sm.data.gaussian_mixture_2d()],
                         ids=["running_example_1d", "mixture_2d"])
def test_vp_log_likelihood_is_exact_with_the_exact_score(gm):
    """Exact score + exact prior: the analytic log-density of the VP marginal within 0.02 nats;
    the default prior N(0, (s sigma_max)^2 I) costs little at sigma_max = 60."""
    x = gm.vp_perturbed(SIGMA_MIN).sample(jax.random.key(2), 200)
    r = sm.log_likelihood(gm.perturbed_score, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sde=VP,
                          prior_logp=gm.vp_perturbed(SIGMA_MAX).log_prob)
    analytic = jax.vmap(gm.vp_perturbed(SIGMA_MIN).log_prob)(x)
    np.testing.assert_allclose(r.log_prob, analytic, rtol=0, atol=0.02)
    default = sm.log_likelihood(gm.perturbed_score, x, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sde=VP)
    assert abs(float(jnp.mean(default.log_prob - analytic))) < 0.02


def test_a_vesde_follows_the_default_schedule():
    """`sde=sm.VESDE(...)` runs the VE SDE's clock between the two levels: the default schedule,
    to float32 rounding (the default itself is unchanged, bit for bit, by the `sde` argument)."""
    gm = sm.data.running_example()
    x_init = gm.perturbed(10.0).sample(jax.random.key(0), 256)
    kw = dict(sigma_max=10.0, sigma_min=0.1, n_steps=50)
    for sampler in (sm.reverse_sde, sm.predictor_corrector):
        default = sampler(gm.perturbed_score, x_init, jax.random.key(1), **kw)
        explicit = sampler(gm.perturbed_score, x_init, jax.random.key(1), sde=sm.VESDE(0.01, 100.0), **kw)
        np.testing.assert_allclose(explicit.samples, default.samples, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument, before anything is compiled.

GM = sm.data.running_example()
X = jnp.zeros((8, 1))


def _rsde(**overrides):
    kwargs = dict(score_fn=GM.perturbed_score, x_init=X, key=jax.random.key(0), sigma_max=10.0,
                  sigma_min=0.1, n_steps=10, sde=VP)
    kwargs.update(overrides)
    return sm.reverse_sde(**kwargs)


def _pc(**overrides):
    kwargs = dict(score_fn=GM.perturbed_score, x_init=X, key=jax.random.key(0), sigma_max=10.0,
                  sigma_min=0.1, n_steps=10, sde=VP)
    kwargs.update(overrides)
    return sm.predictor_corrector(**kwargs)


def _ode(**overrides):
    kwargs = dict(score_fn=GM.perturbed_score, x_init=X, sigma_max=10.0, sigma_min=0.1, sde=VP)
    kwargs.update(overrides)
    return sm.probability_flow_ode(**kwargs)


def _ll(**overrides):
    kwargs = dict(score_fn=GM.perturbed_score, x=X, sigma_max=10.0, sigma_min=0.1, sde=VP)
    kwargs.update(overrides)
    return sm.log_likelihood(**kwargs)


@pytest.mark.parametrize(
    "call, overrides, match",
    [
        (_rsde, dict(sde="vp"), "sde"),
        (_rsde, dict(sigma_max=500.0), "sigma_max.*VPSDE"),
        (_rsde, dict(sde=sm.VESDE(0.5, 5.0)), "sigma_max.*VESDE"),
        (_pc, dict(sde=sm.VESDE(0.5, 50.0)), "sigma_min.*VESDE"),
        (_pc, dict(predictor="ddim"), "predictor"),
        (_ode, dict(sde=object()), "sde"),
        (_ode, dict(sigma_max=200.0), "sigma_max"),
        (_ll, dict(sde=3), "sde"),
        (lambda **kw: sm.VPSDE(-0.1, 20.0), {}, "beta_min"),
        (lambda **kw: sm.VPSDE(1.0, 0.5), {}, "beta_max"),
        (lambda **kw: sm.VPSDE(0.1, 200.0), {}, "beta"),
        (lambda **kw: sm.VPSDE("0.1", 20.0), {}, "beta_min"),
        (lambda **kw: VP.marginal_sample(X, 1.5, jax.random.key(0)), {}, "`t`"),
    ],
)
def test_bad_input_raises_before_compiling(call, overrides, match):
    with mock.patch.object(reverse_module, "_reverse_kernel", side_effect=AssertionError("compiled")), \
         mock.patch.object(ode_module, "_pf_ode_kernel", side_effect=AssertionError("compiled")), \
         mock.patch.object(ode_module, "_log_likelihood_kernel", side_effect=AssertionError("compiled")), \
         mock.patch.object(sde_module, "_forward_kernel", side_effect=AssertionError("compiled")):
        with pytest.raises(ValueError, match=match):
            call(**overrides)
