"""Chapter 8's recipes and helpers (`score_models.zoo.chapter8`) and `score-models sample mnist
--sampler heun`: every sampler of the comparison runs and reports its true cost, the cached
table reads back, MNIST sampling is chunked and deterministic, and the command line passes
`--steps` on (or refuses it) before any work."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_models as sm
from score_models import cli, zoo
from score_models.zoo import chapter8


def test_every_sampler_of_the_comparison_runs_at_its_cost():
    gm = sm.data.gaussian_mixture_2d()
    z = jax.random.normal(jax.random.key(0), (64, 2))
    expected = {"annealed": lambda s: 12 * s["n_steps_each"] + 1, "reverse_sde": lambda s: s["n_steps"] + 1,
                "predictor_corrector": lambda s: 2 * s["n_steps"] + 1, "ddpm": lambda s: s["n_steps"] + 1,
                "euler": lambda s: s["n_levels"], "heun": lambda s: 2 * s["n_levels"] - 1}
    for name, settings in chapter8.SAMPLERS.items():
        sweep = chapter8._sweep_key(settings)
        setting = {k: v for k, v in settings.items() if k not in ("kind", sweep)} | {sweep: settings[sweep][0]}
        r = chapter8.run_sampler(settings["kind"], gm.perturbed_score, z, jax.random.key(1), sigma_max=40.0,
                                 sigma_min=0.05, **setting)
        assert r.samples.shape == (64, 2) and r.n_diverged == 0, name
        if settings["kind"] in expected:
            assert r.score_evals == expected[settings["kind"]](setting), name
        else:  # the adaptive ODE: its own count, plus the Tweedie step
            assert r.score_evals == 6 * r.stats["num_steps"] + 1 + 1


def test_quality_curves_read_back_per_sampler():
    config = {"samplers": {"a": {"kind": "euler", "n_levels": [4, 8]}, "b": {"kind": "heun", "n_levels": [3]}}}
    rows = [(0, 4, 4, 0.1, 0.01, 0.08, 0.12), (0, 8, 8, 0.05, 0.01, 0.03, 0.07), (1, 3, 5, 0.02, 0.01, 0.0, 0.04)]
    model = eqx.tree_at(lambda m: m.table, chapter8.QualityCurves(3), jnp.asarray(rows, jnp.float32))
    out = chapter8.curves(model, config)
    np.testing.assert_array_equal(out["a"]["score_evals"], [4, 8])
    np.testing.assert_allclose(out["b"]["distance"], [0.02])
    assert set(out["a"]) == {"setting", "score_evals", "distance", "std_error", "ci_low", "ci_high"}


class GaussianImages(eqx.Module):
    """The exact score of images whose pixels are i.i.d. N(0.5, 0.2^2): a stand-in U-Net."""

    image_shape: tuple = (1, 28, 28)
    data_mean: float = 0.5

    def __call__(self, x, sigma):
        return -(x - 0.5) / (0.2**2 + sigma**2)


def test_sample_mnist_is_chunked_and_deterministic():
    model = GaussianImages()
    a = chapter8.sample_mnist(model, jax.random.key(0), 10, sampler="Heun", chunk_size=4, n_levels=35)
    b = chapter8.sample_mnist(model, jax.random.key(0), 10, sampler="Heun", chunk_size=4, n_levels=35)
    assert a.samples.shape == (10, 1, 28, 28) and a.score_evals == 69
    np.testing.assert_array_equal(a.samples, b.samples)
    # exact score: the pixels are N(0.5, 0.2^2) (7,840 values: std error of the std ~0.8%; Heun's
    # bias at 35 levels ~1%)
    assert abs(float(jnp.mean(a.samples)) - 0.5) < 0.01 and abs(float(jnp.std(a.samples)) / 0.2 - 1) < 0.04
    with pytest.raises(ValueError, match="sampler"):
        chapter8.sample_mnist(model, jax.random.key(0), 2, sampler="ddim")
    with pytest.raises(ValueError, match="unknown option"):
        chapter8.sample_mnist(model, jax.random.key(0), 2, sampler="Heun", n_steps=3)


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def unet_artifact(artifact_dir, monkeypatch):
    """A throwaway `mnist_unet` artifact (a small MLP) in a temporary artifact directory."""
    config = {"model": {"type": "MLP", "dim": 2, "width": 8, "depth": 1}}
    recipe = zoo.Recipe("mnist_unet", 6, "a U-Net", config, lambda c: None)
    monkeypatch.setattr(zoo, "_RECIPES", {"mnist_unet": recipe})
    sm.artifacts.save("mnist_unet", sm.models.from_config(recipe.config["model"], jax.random.key(0)), recipe.config)


@pytest.mark.parametrize("steps, levels", [(None, {}), ("10", {"n_levels": 10})])
def test_sample_heun_from_the_command_line(unet_artifact, tmp_path, monkeypatch, capsys, steps, levels):
    calls = []

    def fake(model, key, n, *, sampler, **kwargs):
        calls.append((n, sampler, kwargs))
        return sm.SamplerResult(jnp.zeros((n, 1, 28, 28)), None, None, None, 35, 0, {})

    monkeypatch.setattr(chapter8, "sample_mnist", fake)
    argv = ["sample", "mnist", "--n", "3", "--sampler", "heun", "--out", str(tmp_path / "x.npy")]
    rc, out, err = run(capsys, *argv, *(["--steps", steps] if steps else []))
    assert rc == 0, err
    assert calls == [(3, "Heun", levels)] and np.load(tmp_path / "x.npy").shape == (3, 28, 28)


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "annealed", "--steps", "10"], "`--steps` is used by `--sampler heun` only"),
    (["--sampler", "heun", "--steps", "0"], "`--steps` must be a positive integer"),
])
def test_sample_refuses_steps_it_cannot_use(tmp_path, capsys, monkeypatch, argv, message):
    looked = []
    monkeypatch.setattr(zoo, "check", lambda name: looked.append(name))
    rc, _, err = run(capsys, "sample", "mnist", "--out", str(tmp_path / "x.npy"), *argv)
    assert rc == 2 and message in err and looked == []
