"""Every public function rejects bad input - wrong shapes, NaNs, non-positive or unsorted
noise levels - with a `ValueError` that names the offending argument, before compiling.

(The samplers', `fit`'s and the models' checks have their own tables in test_sampling.py,
test_training.py and test_models.py.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import score_models as sm

GM = sm.data.running_example()
KEY = jax.random.key(0)
NAN = float("nan")
OK1 = jnp.zeros((8, 1))

CASES = [
    # GaussianMixture
    ("means rank", lambda: sm.GaussianMixture([0.0, 1.0], [1.0, 1.0], [0.5, 0.5]), "means"),
    ("stds rank", lambda: sm.GaussianMixture([[0.0]], [[1.0]], [1.0]), "stds"),
    ("components", lambda: sm.GaussianMixture([[0.0], [1.0]], [1.0], [0.5, 0.5]), "stds"),
    ("means nan", lambda: sm.GaussianMixture([[NAN]], [1.0], [1.0]), "means"),
    ("stds zero", lambda: sm.GaussianMixture([[0.0]], [0.0], [1.0]), "stds"),
    ("stds nan", lambda: sm.GaussianMixture([[0.0]], [NAN], [1.0]), "stds"),
    ("weights negative", lambda: sm.GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [1.5, -0.5]), "weights"),
    ("weights nan", lambda: sm.GaussianMixture([[0.0]], [1.0], [NAN]), "weights"),
    ("weights zero", lambda: sm.GaussianMixture([[0.0]], [1.0], [0.0]), "weights"),
    ("log_prob batch", lambda: GM.log_prob(jnp.zeros((4, 1))), "x"),
    ("score shape", lambda: GM.score(jnp.zeros(2)), "x"),
    ("sample n", lambda: GM.sample(KEY, 0), "n"),
    ("sample n float", lambda: GM.sample(KEY, 2.5), "n"),
    ("perturbed negative", lambda: GM.perturbed(-1.0), "sigma"),
    ("perturbed nan", lambda: GM.perturbed(NAN), "sigma"),
    ("perturbed vector", lambda: GM.perturbed(jnp.ones(3)), "sigma"),
    # Noise schedules
    ("sigma_max zero", lambda: sm.geometric_sigmas(0.0, 0.1, 5), "sigma_max"),
    ("sigma_min negative", lambda: sm.geometric_sigmas(1.0, -0.1, 5), "sigma_min"),
    ("sigma_max nan", lambda: sm.geometric_sigmas(NAN, 0.1, 5), "sigma_max"),
    ("sigmas order", lambda: sm.geometric_sigmas(0.1, 1.0, 5), "sigma_max"),
    ("schedule n", lambda: sm.geometric_sigmas(1.0, 0.1, 0), "n"),
    # Losses
    ("dsm sigma", lambda: sm.losses.denoising_score_matching(0.0), "sigma"),
    ("dsm sigma nan", lambda: sm.losses.denoising_score_matching(NAN), "sigma"),
    ("multiscale unsorted", lambda: sm.losses.multiscale_denoising_score_matching([0.5, 1.0]), "sigmas"),
    ("multiscale repeated", lambda: sm.losses.multiscale_denoising_score_matching([1.0, 1.0]), "sigmas"),
    ("multiscale non-positive", lambda: sm.losses.multiscale_denoising_score_matching([1.0, 0.0]), "sigmas"),
    ("multiscale nan", lambda: sm.losses.multiscale_denoising_score_matching([1.0, NAN]), "sigmas"),
    ("multiscale empty", lambda: sm.losses.multiscale_denoising_score_matching([]), "sigmas"),
    ("multiscale rank", lambda: sm.losses.multiscale_denoising_score_matching([[1.0]]), "sigmas"),
    ("sliced projections", lambda: sm.losses.sliced_score_matching(0), "n_projections"),
    ("sliced distribution", lambda: sm.losses.sliced_score_matching(1, distribution="uniform"), "distribution"),
    # fit
    ("fit nan data", lambda: sm.fit(sm.models.MLP(2, 8, 1, key=KEY), sm.losses.denoising_score_matching(1.0),
                                    jnp.array([[1.0], [NAN]]), optax.sgd(0.1), steps=2, key=KEY), "data"),
    ("fit steps", lambda: sm.fit(sm.models.MLP(2, 8, 1, key=KEY), sm.losses.denoising_score_matching(1.0),
                                 OK1, optax.sgd(0.1), steps=0, key=KEY), "steps"),
    # Samplers
    ("langevin x0 rank", lambda: sm.langevin(GM.score, jnp.zeros(5), KEY, step_size=0.1, n_steps=2), "x0"),
    ("annealed sigmas", lambda: sm.annealed_langevin(lambda x, s: x, OK1, [0.1, 1.0], KEY, eps=0.1,
                                                     n_steps_each=2), "sigmas"),
    ("annealed x0 nan", lambda: sm.annealed_langevin(lambda x, s: x, OK1.at[0].set(NAN), [1.0, 0.1], KEY,
                                                     eps=0.1, n_steps_each=2), "x0"),
    # Metrics
    ("w1 rank", lambda: sm.metrics.wasserstein_1d(jnp.zeros(8), OK1), "x"),
    ("w1 dimension", lambda: sm.metrics.wasserstein_1d(jnp.zeros((8, 2)), jnp.zeros((8, 2))), "x"),
    ("w1 nan", lambda: sm.metrics.wasserstein_1d(OK1, OK1.at[3].set(NAN)), "y"),
    ("energy dims", lambda: sm.metrics.energy_distance(jnp.zeros((8, 2)), jnp.zeros((8, 3))), "x"),
    ("energy nan", lambda: sm.metrics.energy_distance(jnp.full((4, 2), NAN), jnp.zeros((8, 2))), "x"),
    ("sliced w projections", lambda: sm.metrics.sliced_wasserstein(OK1, OK1, KEY, n_projections=0), "n_projections"),
    ("mode_weights dim", lambda: sm.metrics.mode_weights(jnp.zeros((8, 2)), GM), "samples"),
    ("mode_weights nan", lambda: sm.metrics.mode_weights(OK1.at[0].set(NAN), GM), "samples"),
    ("noise_floor n", lambda: sm.metrics.noise_floor(sm.metrics.wasserstein_1d, GM.sample, 0, KEY), "n"),
    ("noise_floor repeats", lambda: sm.metrics.noise_floor(sm.metrics.wasserstein_1d, GM.sample, 10, KEY,
                                                           repeats=0), "repeats"),
    ("score_error nan", lambda: sm.metrics.score_error(GM.score, GM.score, OK1.at[0].set(NAN)), "x"),
    ("score_error rank", lambda: sm.metrics.score_error(GM.score, GM.score, jnp.zeros(8)), "x"),
    ("score_error sigma", lambda: sm.metrics.score_error(lambda x, s: x, GM.score, OK1, sigma=0.0), "sigma"),
    # Data
    ("moons n", lambda: sm.data.two_moons(KEY, 0), "n"),
    ("circles n", lambda: sm.data.circles(KEY, -3), "n"),
    ("dataset_2d n", lambda: sm.data.dataset_2d("gaussians", KEY, 0), "n"),
    ("dataset_2d name", lambda: sm.data.dataset_2d("spiral", KEY, 10), "name"),
    ("mnist split", lambda: sm.data.mnist("dev"), "split"),
    # Artifacts
    ("artifact name", lambda: sm.artifacts.save("../escape", sm.models.MLP(2, 8, 1, key=KEY), {}), "name"),
    ("artifact config", lambda: sm.artifacts.save("ok", sm.models.MLP(2, 8, 1, key=KEY), "cfg"), "config"),
]


@pytest.mark.parametrize("call,name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejects_bad_input_naming_the_argument(call, name, artifact_dir):
    with pytest.raises(ValueError, match=f"`{name}`"):
        call()


def test_checks_run_before_compiling(monkeypatch):
    """Bad input is reported without tracing the user's function."""
    calls = []

    def score(x, sigma):
        calls.append(1)
        return x

    with pytest.raises(ValueError, match="`sigmas`"):
        sm.annealed_langevin(score, OK1, [0.1, 1.0], KEY, eps=0.1, n_steps_each=2)
    assert calls == []


def test_traced_values_are_not_checked_eagerly():
    """Inside jit the checks that need concrete values are skipped, so library pieces compose."""
    out = jax.jit(lambda s: GM.perturbed(s).log_prob(jnp.zeros(1)))(jnp.float32(2.0))
    assert np.isfinite(float(out))
