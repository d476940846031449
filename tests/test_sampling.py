"""Langevin and annealed Langevin dynamics against exact distributions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_models as sm

GM = sm.data.running_example()
SIGMAS = sm.geometric_sigmas(20.0, 0.5, 10)


def perturbed_score(x, sigma):
    return GM.perturbed(sigma).score(x)


@pytest.fixture(scope="module")
def annealed_run():
    """Annealed Langevin with the exact perturbed scores of the running example, 10,000
    particles started from N(0, 20^2), with the final denoising step. The trajectory's
    second-to-last frame holds the particles before that step."""
    x0 = 20.0 * jax.random.normal(jax.random.key(0), (10_000, 1))
    xd, traj = sm.annealed_langevin(perturbed_score, x0, SIGMAS, jax.random.key(1), eps=0.05, n_steps_each=100,
                                    denoise=True, trajectory_every=250)
    return x0, traj[-2], xd, traj


def test_annealed_langevin_recovers_the_mode_weights(annealed_run):
    _, x, xd, _ = annealed_run
    for samples in (x, xd):
        np.testing.assert_allclose(sm.metrics.mode_weights(samples, GM), [0.5, 0.25, 0.25], atol=0.02)


def test_plain_langevin_started_wide_misweights_the_modes():
    """With the true (unperturbed) score the modes never exchange particles: each keeps the
    mass of N(0, 10^2) in its basin, about 0.23/0.54/0.23 instead of 0.5/0.25/0.25."""
    x0 = 10.0 * jax.random.normal(jax.random.key(0), (10_000, 1))
    x = sm.langevin(GM.score, x0, jax.random.key(1), step_size=0.1, n_steps=500)
    w = sm.metrics.mode_weights(x, GM)
    assert np.max(np.abs(w - np.array([0.5, 0.25, 0.25]))) > 0.1, w
    # ... although every particle has reached a mode.
    assert np.all(jnp.min(jnp.abs(x - GM.means[:, 0]), axis=-1) < 5.0)


def test_annealed_samples_match_the_last_perturbed_distribution(annealed_run):
    """Without denoising the particles follow p_{sigma_L}; within the right mode the spread is
    sqrt(1 + sigma_L^2) (plus the O(alpha) Langevin bias). Tweedie's denoising step maps each
    particle to E[x | x_tilde], which shrinks that spread to 1 / sqrt(1 + sigma_L^2)."""
    _, x, xd, _ = annealed_run
    s_l = float(SIGMAS[-1])
    right, right_d = x[x[:, 0] > 7.5, 0], xd[xd[:, 0] > 7.5, 0]
    assert float(jnp.std(right)) == pytest.approx(np.sqrt(1 + s_l**2), rel=0.06)
    assert float(jnp.std(right_d)) == pytest.approx(1 / np.sqrt(1 + s_l**2), rel=0.06)
    assert float(jnp.mean(right)) == pytest.approx(15.0, abs=0.1)


def test_denoise_is_one_tweedie_step_and_trajectory_shapes(annealed_run):
    x0, x, xd, traj = annealed_run
    # 1000 steps thinned every 250: x0, 4 frames and the denoised particles.
    assert traj.shape == (6, 10_000, 1)
    assert np.array_equal(traj[0], x0) and np.array_equal(traj[-1], xd)
    # The denoising step is x + sigma_L^2 s(x, sigma_L) on the last Langevin iterate.
    expected = x + SIGMAS[-1] ** 2 * jax.vmap(perturbed_score, in_axes=(0, None))(x, SIGMAS[-1])
    np.testing.assert_allclose(xd, expected, rtol=1e-5, atol=1e-5)


def test_langevin_on_a_gaussian_recovers_mean_and_variance():
    """Langevin with step h on N(mu, s^2 I) is an AR(1) process whose stationary law is
    N(mu, s^2 / (1 - h / (4 s^2)) I): check both moments to Monte Carlo precision."""
    mu, s, h, n = jnp.array([1.0, -2.0]), 0.8, 0.05, 20_000
    x0 = jnp.zeros((n, 2))
    x, traj = sm.langevin(lambda x: -(x - mu) / s**2, x0, jax.random.key(3), step_size=h, n_steps=400,
                          trajectory_every=100)
    var = s**2 / (1 - h / (4 * s**2))
    np.testing.assert_allclose(jnp.mean(x, 0), mu, atol=5 * np.sqrt(var / n))
    np.testing.assert_allclose(jnp.var(x, 0), var, atol=5 * var * np.sqrt(2 / n))
    assert traj.shape == (5, n, 2) and np.array_equal(traj[0], x0) and np.array_equal(traj[-1], x)


def test_samplers_keep_event_shapes_and_are_deterministic():
    """Particles may be `(n, *shape)` (images): the score sees one `(*shape)` example."""
    x0 = jnp.ones((7, 1, 2, 3))
    score = lambda x, sigma: -x / (1.0 + sigma**2)  # noqa: E731
    a = sm.annealed_langevin(score, x0, jnp.array([2.0, 1.0]), jax.random.key(0), eps=0.01, n_steps_each=3)
    b = sm.annealed_langevin(score, x0, jnp.array([2.0, 1.0]), jax.random.key(0), eps=0.01, n_steps_each=3)
    assert a.shape == x0.shape and np.array_equal(a, b)
    c = sm.langevin(lambda x: -x, x0, jax.random.key(0), step_size=0.1, n_steps=2)
    assert c.shape == x0.shape


@pytest.mark.parametrize("call,name", [
    (lambda: sm.langevin(GM.score, jnp.zeros(10), jax.random.key(0), step_size=0.1, n_steps=5), "x0"),
    (lambda: sm.langevin(GM.score, jnp.full((4, 1), jnp.nan), jax.random.key(0), step_size=0.1, n_steps=5), "x0"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=0.0, n_steps=5), "step_size"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1, n_steps=0), "n_steps"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1, n_steps=5,
                         trajectory_every=2), "trajectory_every"),
    (lambda: sm.langevin(lambda x: jnp.sum(x), jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1,
                         n_steps=5), "score_fn"),
    (lambda: sm.langevin(GM.score, jnp.zeros((4, 2)), jax.random.key(0), step_size=0.1, n_steps=5), "score_fn"),
    (lambda: sm.langevin("score", jnp.zeros((4, 1)), jax.random.key(0), step_size=0.1, n_steps=5), "score_fn"),
    (lambda: sm.annealed_langevin(perturbed_score, jnp.zeros((4, 1)), jnp.array([1.0, 2.0]), jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "sigmas"),
    (lambda: sm.annealed_langevin(perturbed_score, jnp.zeros((4, 1)), jnp.array([1.0, 0.0]), jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "sigmas"),
    (lambda: sm.annealed_langevin(perturbed_score, jnp.zeros((4, 1)), jnp.array([[1.0]]), jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "sigmas"),
    (lambda: sm.annealed_langevin(perturbed_score, jnp.zeros((4, 1)), jnp.array([2.0, 1.0]), jax.random.key(0),
                                  eps=-1.0, n_steps_each=5), "eps"),
    (lambda: sm.annealed_langevin(perturbed_score, jnp.zeros((4, 1)), jnp.array([2.0, 1.0]), jax.random.key(0),
                                  eps=0.1, n_steps_each=0), "n_steps_each"),
    (lambda: sm.annealed_langevin(perturbed_score, jnp.array([[0.0], [jnp.inf]]), jnp.array([2.0, 1.0]),
                                  jax.random.key(0), eps=0.1, n_steps_each=5), "x0"),
    (lambda: sm.annealed_langevin(GM.score, jnp.zeros((4, 1)), jnp.array([2.0, 1.0]), jax.random.key(0),
                                  eps=0.1, n_steps_each=5), "score_fn"),
    (lambda: sm.annealed_langevin(lambda x, s: x[:0], jnp.zeros((4, 1)), jnp.array([2.0, 1.0]),
                                  jax.random.key(0), eps=0.1, n_steps_each=5), "score_fn"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_samplers_reject_bad_input(call, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()
