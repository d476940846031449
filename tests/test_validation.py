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
    ("perturbed inf", lambda: GM.perturbed(float("inf")), "sigma"),
    ("perturbed overflow", lambda: GM.perturbed(1e20), "sigma"),
    ("means complex", lambda: sm.GaussianMixture([[1 + 2j], [3 + 0j]], [1.0, 1.0], [0.5, 0.5]), "means"),
    ("means None", lambda: sm.GaussianMixture(None, [1.0], [1.0]), "means"),
    ("sample n bool", lambda: GM.sample(KEY, True), "n"),
    ("sample huge n", lambda: GM.sample(KEY, 10**13), "n"),
    ("sample key int", lambda: GM.sample(0, 4), "key"),
    ("log_prob complex", lambda: GM.component_log_probs(jnp.zeros(1) + 1j), "x"),
    # Noise schedules
    ("sigma_max zero", lambda: sm.geometric_sigmas(0.0, 0.1, 5), "sigma_max"),
    ("sigma_min negative", lambda: sm.geometric_sigmas(1.0, -0.1, 5), "sigma_min"),
    ("sigma_max nan", lambda: sm.geometric_sigmas(NAN, 0.1, 5), "sigma_max"),
    ("sigmas order", lambda: sm.geometric_sigmas(0.1, 1.0, 5), "sigma_max"),
    ("schedule n", lambda: sm.geometric_sigmas(1.0, 0.1, 0), "n"),
    ("sigma_max overflows float32", lambda: sm.geometric_sigmas(1e39, 1.0, 5), "sigma_max"),
    ("sigma_min underflows float32", lambda: sm.geometric_sigmas(1.0, 1e-46, 5), "sigma_min"),
    ("sigma_max square overflows", lambda: sm.geometric_sigmas(1e20, 1.0, 5), "sigma_max"),
    ("levels equal in float32", lambda: sm.geometric_sigmas(1.0000001, 1.0, 50), "sigma_max"),
    ("sigma_max string", lambda: sm.geometric_sigmas("10", 1.0, 5), "sigma_max"),
    ("sigma_max vector", lambda: sm.geometric_sigmas([10.0, 5.0], 1.0, 5), "sigma_max"),
    ("sigma_max complex", lambda: sm.geometric_sigmas(10 + 0j, 1.0, 5), "sigma_max"),
    ("schedule huge n", lambda: sm.geometric_sigmas(10.0, 1.0, 10**13), "n"),
    ("vesde overflow", lambda: sm.VESDE(1e-3, 1e39), "sigma_max"),
    ("vesde underflow", lambda: sm.VESDE(1e-46, 1.0), "sigma_min"),
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
    ("langevin x_init rank", lambda: sm.langevin(GM.score, jnp.zeros(5), KEY, step_size=0.1, n_steps=2), "x_init"),
    ("annealed sigmas", lambda: sm.annealed_langevin(lambda x, s: x, OK1, [0.1, 1.0], KEY, eps=0.1,
                                                     n_steps_each=2), "sigmas"),
    ("annealed x_init nan", lambda: sm.annealed_langevin(lambda x, s: x, OK1.at[0].set(NAN), [1.0, 0.1], KEY,
                                                         eps=0.1, n_steps_each=2), "x_init"),
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
    ("score_error sigma vector", lambda: sm.metrics.score_error(lambda x, s: x, GM.score, OK1, sigma=[1.0, 2.0]),
     "sigma"),
    ("score_error empty", lambda: sm.metrics.score_error(GM.score, GM.score, jnp.zeros((0, 1))), "x"),
    ("w1 empty", lambda: sm.metrics.wasserstein_1d(jnp.zeros((0, 1)), OK1), "x"),
    ("energy empty", lambda: sm.metrics.energy_distance(OK1, jnp.zeros((0, 1))), "y"),
    ("w1 complex", lambda: sm.metrics.wasserstein_1d(OK1 + 1j, OK1), "x"),
    ("mode_weights empty", lambda: sm.metrics.mode_weights(jnp.zeros((0, 1)), GM), "samples"),
    ("mode_weights mixture", lambda: sm.metrics.mode_weights(OK1, None), "mixture"),
    ("noise_floor metric", lambda: sm.metrics.noise_floor("w1", GM.sample, 10, KEY), "metric"),
    # Models
    ("ncmlp data_std inf", lambda: sm.models.NoiseConditionalMLP(1, 8, 1, data_std=float("inf"), key=KEY),
     "data_std"),
    ("ncmlp data_std string", lambda: sm.models.NoiseConditionalMLP(1, 8, 1, data_std="1", key=KEY), "data_std"),
    ("ncmlp sigma zero", lambda: sm.models.NoiseConditionalMLP(1, 8, 1, key=KEY)(jnp.zeros(1), 0.0), "sigma"),
    ("ensemble sigma negative", lambda: sm.models.ScoreEnsemble(lambda k: sm.models.MLP(1, 8, 1, key=k),
                                                                [2.0, 1.0], key=KEY)(jnp.zeros(1), -1.0), "sigma"),
    ("ensemble make_member", lambda: sm.models.ScoreEnsemble(3, [2.0, 1.0], key=KEY), "make_member"),
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
