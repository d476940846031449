"""Langevin and annealed Langevin dynamics against exact distributions; the result every sampler
returns; Tweedie's denoising step; counted score evaluations; divergence.

The exact perturbed score is the library's own, the bound method `GM.perturbed_score`."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_models as sm

GM = sm.data.running_example()
SIGMAS = sm.geometric_sigmas(20.0, 0.5, 10)


@pytest.fixture(scope="module")
def annealed_run():
    """Annealed Langevin with the exact perturbed scores of the running example, 10,000
    particles started from N(0, 20^2), with the final denoising step."""
    x0 = 20.0 * jax.random.normal(jax.random.key(0), (10_000, 1))
    result = sm.annealed_langevin(GM.perturbed_score, x0, SIGMAS, jax.random.key(1), eps=0.05,
                                  n_steps_each=100, denoise=True, trajectory_every=250)
    return x0, result


def test_annealed_langevin_recovers_the_mode_weights(annealed_run):
    _, r = annealed_run
    for samples in (r.samples_before_denoise, r.samples):
        np.testing.assert_allclose(sm.metrics.mode_weights(samples, GM), [0.5, 0.25, 0.25], atol=0.02)


def test_plain_langevin_started_wide_misweights_the_modes():
    """With the true (unperturbed) score the modes never exchange particles: each keeps the
    mass of N(0, 10^2) in its basin, about 0.23/0.54/0.23 instead of 0.5/0.25/0.25."""
    x0 = 10.0 * jax.random.normal(jax.random.key(0), (10_000, 1))
    x = sm.langevin(GM.score, x0, jax.random.key(1), step_size=0.1, n_steps=500).samples
    w = sm.metrics.mode_weights(x, GM)
    assert np.max(np.abs(w - np.array([0.5, 0.25, 0.25]))) > 0.1, w
    # ... although every particle has reached a mode.
    assert np.all(jnp.min(jnp.abs(x - GM.means[:, 0]), axis=-1) < 5.0)


def test_annealed_samples_match_the_last_perturbed_distribution(annealed_run):
    """Without denoising the particles follow p_{sigma_L}; within the right mode the spread is
    sqrt(1 + sigma_L^2) (plus the O(alpha) Langevin bias). Tweedie's denoising step maps each
    particle to E[x | x_tilde], which shrinks that spread to 1 / sqrt(1 + sigma_L^2)."""
    _, r = annealed_run
    x, xd = r.samples_before_denoise, r.samples
    s_l = float(SIGMAS[-1])
    right, right_d = x[x[:, 0] > 7.5, 0], xd[xd[:, 0] > 7.5, 0]
    assert float(jnp.std(right)) == pytest.approx(np.sqrt(1 + s_l**2), rel=0.06)
    assert float(jnp.std(right_d)) == pytest.approx(1 / np.sqrt(1 + s_l**2), rel=0.06)
    assert float(jnp.mean(right)) == pytest.approx(15.0, abs=0.1)


def test_result_fields_and_the_public_tweedie_step(annealed_run):
    x0, r = annealed_run
    assert isinstance(r, sm.SamplerResult)
    # 1000 steps thinned every 250: x0, 4 frames and the denoised particles.
    assert r.trajectory.shape == (6, 10_000, 1)
    assert np.array_equal(r.trajectory[0], x0) and np.array_equal(r.trajectory[-1], r.samples)
    assert np.array_equal(r.trajectory[-2], r.samples_before_denoise)
    # frame j follows step 250 j: levels 2.5 j steps of 100 in, i.e. SIGMAS[2], [4], [7], [9]
    np.testing.assert_array_equal(r.trajectory_sigmas,
                                  jnp.concatenate([SIGMAS[jnp.array([0, 2, 4, 7, 9])], jnp.zeros(1)]))
    assert r.score_evals == 10 * 100 + 1 and r.n_diverged == 0 and not r.diverged and r.stats == {}
    # The denoising step is sm.tweedie_denoise on the last Langevin iterate.
    expected = sm.tweedie_denoise(GM.perturbed_score, r.samples_before_denoise, SIGMAS[-1])
    np.testing.assert_allclose(r.samples, expected, rtol=1e-6, atol=1e-5)
    by_hand = r.samples_before_denoise + SIGMAS[-1] ** 2 * jax.vmap(GM.perturbed_score, in_axes=(0, None))(
        r.samples_before_denoise, SIGMAS[-1])
    np.testing.assert_allclose(expected, by_hand, rtol=1e-6, atol=1e-5)


def test_without_denoise_there_is_no_before_and_no_zero_frame():
    x0 = jnp.linspace(-30.0, 30.0, 64)[:, None]
    r = sm.annealed_langevin(GM.perturbed_score, x0, SIGMAS, jax.random.key(2), eps=0.05, n_steps_each=2,
                             trajectory_every=4)
    assert r.samples_before_denoise is None and r.score_evals == 20
    assert r.trajectory.shape == (6, 64, 1) and np.array_equal(r.trajectory[-1], r.samples)
    np.testing.assert_array_equal(r.trajectory_sigmas, SIGMAS[jnp.array([0, 1, 3, 5, 7, 9])])
    plain = sm.annealed_langevin(GM.perturbed_score, x0, SIGMAS, jax.random.key(2), eps=0.05, n_steps_each=2)
    assert plain.trajectory is None and plain.trajectory_sigmas is None
    assert np.array_equal(plain.samples, r.samples)  # the trajectory does not change the samples


def test_langevin_on_a_gaussian_recovers_mean_and_variance():
    """Langevin with step h on N(mu, s^2 I) is an AR(1) process whose stationary law is
    N(mu, s^2 / (1 - h / (4 s^2)) I): check both moments to Monte Carlo precision."""
    mu, s, h, n = jnp.array([1.0, -2.0]), 0.8, 0.05, 20_000
    x0 = jnp.zeros((n, 2))
    r = sm.langevin(lambda x: -(x - mu) / s**2, x0, jax.random.key(3), step_size=h, n_steps=400,
                    trajectory_every=100)
    x = r.samples
    var = s**2 / (1 - h / (4 * s**2))
    np.testing.assert_allclose(jnp.mean(x, 0), mu, atol=5 * np.sqrt(var / n))
    np.testing.assert_allclose(jnp.var(x, 0), var, atol=5 * var * np.sqrt(2 / n))
    assert r.trajectory.shape == (5, n, 2) and np.array_equal(r.trajectory[0], x0)
    assert np.array_equal(r.trajectory[-1], x)
    assert r.trajectory_sigmas is None and r.samples_before_denoise is None and r.score_evals == 400


def test_samplers_keep_event_shapes_and_are_deterministic():
    """Particles may be `(n, *shape)` (images): the score sees one `(*shape)` example."""
    x0 = jnp.ones((7, 1, 2, 3))
    score = lambda x, sigma: -x / (1.0 + sigma**2)  # noqa: E731
    a = sm.annealed_langevin(score, x0, jnp.array([2.0, 1.0]), jax.random.key(0), eps=0.01, n_steps_each=3,
                             denoise=True)
    b = sm.annealed_langevin(score, x0, jnp.array([2.0, 1.0]), jax.random.key(0), eps=0.01, n_steps_each=3,
                             denoise=True)
    assert a.samples.shape == x0.shape and np.array_equal(a.samples, b.samples)
    assert a.samples_before_denoise.shape == x0.shape
    c = sm.langevin(lambda x: -x, x0, jax.random.key(0), step_size=0.1, n_steps=2)
    assert c.samples.shape == x0.shape
    d = sm.tweedie_denoise(score, x0, 1.0)
    np.testing.assert_allclose(d, x0 - 0.5 * x0, rtol=1e-6)


def test_tweedie_denoise_with_one_level_per_particle():
    """On N(0, 1) data the posterior mean of x given x + sigma z is x / (1 + sigma^2)."""
    gauss = sm.GaussianMixture([[0.0]], [1.0], [1.0])
    x = jnp.linspace(-3.0, 3.0, 4)[:, None]
    sigma = jnp.array([0.1, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(sm.tweedie_denoise(gauss.perturbed_score, x, sigma),
                               x / (1 + sigma[:, None] ** 2), rtol=1e-6)
    with pytest.raises(ValueError, match="`sigma` must be a scalar or hold one level per particle"):
        sm.tweedie_denoise(gauss.perturbed_score, x, sigma[:3])
    with pytest.raises(ValueError, match="`sigma`"):
        sm.tweedie_denoise(gauss.perturbed_score, x, sigma.at[0].set(0.0))


def test_samplers_compose_with_jit_and_vmap():
    """Under a transformation nothing can be checked on the host: the divergence count stays an
    array for the caller, and the samples are those of the eager call."""
    x0 = jnp.linspace(-20.0, 20.0, 16)[:, None]
    eager = sm.annealed_langevin(GM.perturbed_score, x0, SIGMAS, jax.random.key(3), eps=0.05, n_steps_each=3)

    @jax.jit
    def run(x, key):
        r = sm.annealed_langevin(GM.perturbed_score, x, SIGMAS, key, eps=0.05, n_steps_each=3)
        return r.samples, r.n_diverged

    x, n_diverged = run(x0, jax.random.key(3))
    np.testing.assert_allclose(x, eager.samples, rtol=1e-5, atol=1e-5)
    assert int(n_diverged) == 0
    keys = jax.random.split(jax.random.key(4), 3)
    batch = jax.vmap(lambda k: sm.reverse_sde(GM.perturbed_score, x0, k, sigma_max=20.0, sigma_min=0.5,
                                              n_steps=4).samples)(keys)
    assert batch.shape == (3, 16, 1)
    ode = jax.jit(lambda x: sm.probability_flow_ode(GM.perturbed_score, x, sigma_max=20.0, sigma_min=0.5).samples)
    np.testing.assert_allclose(ode(x0), sm.probability_flow_ode(GM.perturbed_score, x0, sigma_max=20.0,
                                                                sigma_min=0.5).samples, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Score evaluations are counted for real


CALLS: list[int] = []


class CountingScore(eqx.Module):
    """A score that records each evaluation of the whole batch (a debug callback with no
    batched argument runs once per vmapped call)."""

    score: eqx.Module

    def __call__(self, x, sigma=None):
        jax.debug.callback(lambda: CALLS.append(1))
        return self.score(x) if sigma is None else self.score(x, sigma)


def counted(run) -> int:
    CALLS.clear()
    result = run()
    jax.effects_barrier()
    assert result.score_evals == len(CALLS) > 0, (result.score_evals, len(CALLS))
    return result.score_evals


def test_score_evals_are_the_evaluations_made():
    x0 = jnp.linspace(-20.0, 20.0, 32)[:, None]
    key = jax.random.key(0)
    exact = CountingScore(GM.perturbed_score)
    assert counted(lambda: sm.langevin(CountingScore(GM.score), x0, key, step_size=0.1, n_steps=7)) == 7
    assert counted(lambda: sm.annealed_langevin(exact, x0, SIGMAS[:3], key, eps=0.05, n_steps_each=4,
                                                denoise=True, trajectory_every=3)) == 13
    assert counted(lambda: sm.reverse_sde(exact, x0, key, sigma_max=20.0, sigma_min=0.5, n_steps=9,
                                          denoise=True)) == 10
    assert counted(lambda: sm.predictor_corrector(exact, x0, key, sigma_max=20.0, sigma_min=0.5, n_steps=5,
                                                  n_corrector=2)) == 15
    assert counted(lambda: sm.probability_flow_ode(exact, x0, sigma_max=20.0, sigma_min=0.5,
                                                   denoise=True)) > 2


# ------------------------------------------------------------------------------------------
# The exact score compiles once for every mixture of one shape


def test_the_bound_perturbed_score_shares_one_compilation():
    traces = []

    def score(x, sigma, mixture_score):
        traces.append(1)
        return mixture_score(x, sigma)

    run = eqx.filter_jit(lambda f, x, s: jax.vmap(lambda y: score(y, s, f))(x))
    other = sm.GaussianMixture(GM.means + 1.0, 2 * GM.stds, [1.0, 2.0, 3.0])
    x = jnp.zeros((4, 1))
    a = run(GM.perturbed_score, x, jnp.float32(1.0))
    b = run(other.perturbed_score, x, jnp.float32(2.0))
    assert len(traces) == 1
    np.testing.assert_allclose(b, jax.vmap(other.perturbed(2.0).score)(x), rtol=1e-6)
    assert not np.allclose(a, b)


# ------------------------------------------------------------------------------------------
# Divergence is reported, not returned silently


@pytest.mark.parametrize("run", [
    lambda **kw: sm.langevin(lambda x: -x, jnp.ones((16, 1)), jax.random.key(0), step_size=1e6, n_steps=50, **kw),
    lambda **kw: sm.annealed_langevin(GM.perturbed_score, jnp.ones((16, 1)), jnp.array([2.0, 1.0]),
                                      jax.random.key(0), eps=50.0, n_steps_each=20, **kw),
    lambda **kw: sm.annealed_langevin(lambda x, s: x * jnp.nan, jnp.ones((16, 1)), jnp.array([2.0, 1.0]),
                                      jax.random.key(0), eps=0.1, n_steps_each=2, **kw),
], ids=["langevin step", "annealed eps", "nan score"])
def test_diverging_particles_raise_or_are_flagged(run):
    with pytest.raises(FloatingPointError, match="16 of 16 particles diverged"):
        run()
    result = run(throw=False)
    assert result.diverged and result.n_diverged == 16


# ------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("call,name", [
    (lambda: sm.langevin(GM.score, jnp.zeros(10), jax.random.key(0), step_size=0.1, n_steps=5), "x_init"),
    (lambda: sm.langevin(GM.score, jnp.full((4, 1), jnp.nan), jax.random.key(0), step_size=0.1, n_steps=5), "x_init"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)) + 1j, jax.random.key(0), step_size=0.1, n_steps=5), "x_init"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=0.0, n_steps=5), "step_size"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size="0.1", n_steps=5), "step_size"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=[0.1, 0.2], n_steps=5),
     "step_size"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=1e39, n_steps=5), "step_size"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1, n_steps=0), "n_steps"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1, n_steps=10**13), "n_steps"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1, n_steps=5,
                         trajectory_every=2), "trajectory_every"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1, n_steps=5,
                         throw="no"), "throw"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), 0, step_size=0.1, n_steps=5), "key"),
    (lambda: sm.langevin(lambda x: jnp.sum(x), jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1,
                         n_steps=5), "score_fn"),
    (lambda: sm.langevin(lambda x: x + 0j, jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1,
                         n_steps=5), "score_fn"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 2)), jax.random.key(0), step_size=0.1, n_steps=5), "score_fn"),
    (lambda: sm.langevin("score", jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1, n_steps=5), "score_fn"),
    (lambda: sm.annealed_langevin(GM.perturbed_score, jnp.zeros((4, 1)), jnp.array([1.0, 2.0]), jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "sigmas"),
    (lambda: sm.annealed_langevin(GM.perturbed_score, jnp.zeros((4, 1)), jnp.array([1.0, 0.0]), jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "sigmas"),
    (lambda: sm.annealed_langevin(GM.perturbed_score, jnp.zeros((4, 1)), [1e39, 1.0], jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "sigmas"),
    (lambda: sm.annealed_langevin(GM.perturbed_score, jnp.zeros((4, 1)), [1.0 + 1e-9, 1.0], jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "sigmas"),
    (lambda: sm.annealed_langevin(GM.perturbed_score, jnp.zeros((4, 1)), jnp.array([[1.0]]), jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "sigmas"),
    (lambda: sm.annealed_langevin(GM.perturbed_score, jnp.zeros((4, 1)), jnp.array([2.0, 1.0]), jax.random.key(0),
                                  eps=-1.0, n_steps_each=5), "eps"),
    (lambda: sm.annealed_langevin(GM.perturbed_score, jnp.zeros((4, 1)), jnp.array([2.0, 1.0]), jax.random.key(0),
                                  eps=0.1, n_steps_each=0), "n_steps_each"),
    (lambda: sm.annealed_langevin(GM.perturbed_score, jnp.zeros((4, 1)), jnp.array([2.0, 1.0]), jax.random.key(0),
                                  eps=0.1, n_steps_each=5, denoise="no"), "denoise"),
    (lambda: sm.annealed_langevin(GM.perturbed_score, jnp.array([[0.0], [jnp.inf]]), jnp.array([2.0, 1.0]),
                                  jax.random.key(0), eps=0.1, n_steps_each=5), "x_init"),
    (lambda: sm.annealed_langevin(GM.score, jnp.zeros((4, 1)), jnp.array([2.0, 1.0]), jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "score_fn"),
    (lambda: sm.annealed_langevin(lambda x, s: x[:0], jnp.zeros((4, 1)), jnp.array([2.0, 1.0]),
                                  jax.random.key(0), eps=0.1, n_steps_each=5), "score_fn"),
    (lambda: sm.tweedie_denoise(GM.perturbed_score, jnp.zeros((4, 1)), 0.0), "sigma"),
    (lambda: sm.tweedie_denoise(GM.perturbed_score, jnp.zeros(4), 1.0), "x"),
    (lambda: sm.tweedie_denoise(GM.score, jnp.zeros((4, 1)), 1.0), "score_fn"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_samplers_reject_bad_input(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


def test_annealed_step_sizes_that_overflow_are_refused():
    with pytest.raises(ValueError, match="overflow"):
        sm.annealed_langevin(GM.perturbed_score, jnp.zeros((4, 1)), jnp.array([1e18, 1e-18]), jax.random.key(0),
                             eps=0.1, n_steps_each=2)


def test_options_a_sampler_cannot_use_are_refused():
    x0 = jnp.zeros((4, 1))
    with pytest.raises(TypeError, match="denoise"):  # plain Langevin has no noise level to remove
        sm.langevin(GM.score, x0, jax.random.key(0), step_size=0.1, n_steps=2, denoise=True)
    with pytest.raises(TypeError, match="trajectory_every"):  # the PF-ODE saves at `save_sigmas`
        sm.probability_flow_ode(GM.perturbed_score, x0, sigma_max=2.0, sigma_min=1.0, trajectory_every=2)
    with pytest.raises(ValueError, match="`snr`"):  # no corrector, no signal-to-noise ratio
        sm.predictor_corrector(GM.perturbed_score, x0, jax.random.key(0), sigma_max=2.0, sigma_min=1.0,
                               n_steps=2, n_corrector=0, snr=0.2)
