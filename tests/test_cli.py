"""The `score-models` command (`artifacts list|build|verify`, `sample`), on throwaway recipe registries."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

import score_models as sm
from score_models import cli, zoo


def toy_build(config):
    model = sm.models.from_config(config["model"], jax.random.key(config["seed"]))
    return model, {"loss": np.linspace(1.0, 0.1, 50)}, {"quality": 1.0}


def make_recipe(name="toy", chapter=1, **config_overrides):
    config = {"model": {"type": "MLP", "dim": 2, "width": 8, "depth": 1}, "seed": 0, **config_overrides}
    return zoo.Recipe(name, chapter, f"a throwaway {name}", config, toy_build)


@pytest.fixture
def registry(artifact_dir, monkeypatch):
    """Replaces the zoo's recipes by two throwaway ones, stored in a temporary artifact dir."""
    recipes = {"toy": make_recipe("toy", 1), "other": make_recipe("other", 2, seed=1)}
    monkeypatch.setattr(zoo, "_RECIPES", recipes)
    return recipes


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_list_build_verify(registry, artifact_dir, capsys):
    rc, out, _ = run(capsys, "artifacts", "list")
    assert rc == 0 and str(artifact_dir) in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if not line.startswith(" ")}
    assert set(lines) == {"toy", "other"} and "missing" in lines["toy"] and "a throwaway toy" in lines["toy"]
    assert f"neither {artifact_dir / 'toy.eqx'} nor its sidecar exists" in out  # why, below the row

    rc, out, err = run(capsys, "artifacts", "verify")
    assert rc == 1 and "toy: missing" in out and "other: missing" in out and "2 artifact(s)" in err

    rc, out, _ = run(capsys, "artifacts", "build", "toy")
    assert rc == 0 and "toy: built" in out and "other" not in out
    assert (artifact_dir / "toy.eqx").exists() and not (artifact_dir / "other.eqx").exists()
    assert sm.artifacts.info("toy")["metrics"] == {"quality": 1.0}
    assert "build_seconds" in sm.artifacts.info("toy")["history"]

    rc, out, _ = run(capsys, "artifacts", "verify", "toy")
    assert rc == 0 and "toy: ok" in out
    rc, out, _ = run(capsys, "artifacts", "list", "--chapter", "1")
    assert "ok" in out and "other" not in out

    rc, out, _ = run(capsys, "artifacts", "build", "--stale")
    assert rc == 0 and "toy: up to date" in out and "other: built" in out
    rc, _, _ = run(capsys, "artifacts", "verify")
    assert rc == 0


def test_verify_detects_stale_and_corrupt(registry, artifact_dir, capsys, monkeypatch):
    assert run(capsys, "artifacts", "build")[0] == 0
    # The recipe changes: the cached artifact is stale.
    monkeypatch.setitem(zoo._RECIPES, "toy", make_recipe("toy", 1, seed=5))
    rc, out, _ = run(capsys, "artifacts", "verify")
    assert rc == 1 and "toy: stale" in out and "other: ok" in out
    assert run(capsys, "artifacts", "build", "--stale")[0] == 0
    assert run(capsys, "artifacts", "verify")[0] == 0
    # Flip a byte of the weights: corrupt.
    path = artifact_dir / "other.eqx"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    rc, out, _ = run(capsys, "artifacts", "verify")
    assert rc == 1 and "other: corrupt" in out
    assert "corrupt" in run(capsys, "artifacts", "list")[1]


def test_zoo_load_obeys_the_mode(registry, artifact_dir, monkeypatch):
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "require")
    with pytest.raises(sm.artifacts.ArtifactError, match="missing"):
        zoo.load("toy")
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "use")
    with pytest.warns(sm.artifacts.ArtifactWarning, match="'toy' \\(it is missing\\) - it trains a throwaway toy"):
        built = zoo.load("toy")  # built and saved
    assert zoo.status("toy") == "ok"
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "require")
    loaded = zoo.load("toy")
    x = jax.numpy.ones(2)
    assert np.array_equal(loaded(x), built(x))


def test_unknown_name_is_a_clean_error(registry, capsys):
    rc, _, err = run(capsys, "artifacts", "build", "nonexistent")
    assert rc == 2 and "Unknown artifact 'nonexistent'" in err and "toy" in err


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["artifacts"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["artifacts", "list", "--chapter", "one"])


def test_the_real_registry_lists_every_recipe(artifact_dir, capsys):
    """With the real zoo (in an empty artifact dir) every recipe is listed, as missing."""
    rc, out, _ = run(capsys, "artifacts", "list")
    assert rc == 0
    for name in zoo.names():
        assert name in out


def test_a_damaged_sidecar_is_listed_as_corrupt_and_repaired(registry, artifact_dir, capsys):
    assert run(capsys, "artifacts", "build")[0] == 0
    sidecar = artifact_dir / "toy.json"
    sidecar.write_text(sidecar.read_text()[:40])  # half-written
    rc, out, _ = run(capsys, "artifacts", "list")
    assert rc == 0 and "other" in out  # the whole listing, not just up to the bad row
    assert "corrupt" in out and f"{sidecar} is not valid JSON" in out
    rc, out, _ = run(capsys, "artifacts", "verify")
    assert rc == 1 and f"toy: corrupt (its sidecar {sidecar} is not valid JSON" in out and "other: ok" in out
    rc, out, _ = run(capsys, "artifacts", "build", "--stale")
    assert rc == 0 and "other: up to date" in out and "toy: built" in out
    assert run(capsys, "artifacts", "verify")[0] == 0


@pytest.mark.parametrize("action", ["list", "build", "verify"])
@pytest.mark.parametrize("chapter", ["99", "-1"])
def test_unknown_chapter_is_an_error(registry, capsys, action, chapter):
    rc, out, err = run(capsys, "artifacts", action, "--chapter", chapter)
    assert rc == 2 and f"`--chapter` {chapter} has no artifacts" in err and "[1, 2]" in err


def test_build_checks_the_directory_before_training(registry, tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("SCORE_MODELS_ARTIFACT_DIR", str(tmp_path / "a_file" / "artifacts"))
    calls = []
    monkeypatch.setitem(registry, "toy", zoo.Recipe("toy", 1, "t", {"seed": 0}, lambda c: calls.append(c)))
    rc, _, err = run(capsys, "artifacts", "build", "toy")
    assert rc == 2 and "not writable" in err and calls == []


def test_build_says_what_it_trains_and_where(registry, artifact_dir, monkeypatch, capsys):
    monkeypatch.setitem(registry, "toy", dataclasses.replace(registry["toy"], typical_seconds=150.0))
    rc, out, _ = run(capsys, "artifacts", "build", "toy")
    assert rc == 0 and f"artifact directory: {artifact_dir}" in out
    assert "toy: trains a throwaway toy; about 2 min on a 2-core CPU (missing: " in out
    assert f"-> {artifact_dir / 'toy.eqx'}" in out


@pytest.fixture
def unet_registry(artifact_dir, monkeypatch):
    """A registry whose `mnist_unet` recipe records any attempt to train it."""
    calls = []
    recipe = zoo.Recipe("mnist_unet", 6, "a U-Net", {"model": {"type": "MLP", "dim": 2, "width": 8, "depth": 1}},
                        lambda config: calls.append(config))
    monkeypatch.setattr(zoo, "_RECIPES", {"mnist_unet": recipe})
    return calls


@pytest.mark.parametrize("mode", ["use", "require", "rebuild", "garbage", None])
def test_sample_never_trains_a_missing_model(unet_registry, artifact_dir, tmp_path, monkeypatch, capsys, mode):
    if mode is None:
        monkeypatch.delenv("SCORE_MODELS_ARTIFACTS")
    else:
        monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", mode)
    rc, _, err = run(capsys, "sample", "mnist", "--n", "2", "--out", str(tmp_path / "x.npy"))
    assert rc == 2 and "mnist_unet is missing" in err and "score-models artifacts build mnist_unet" in err
    assert unet_registry == [] and not (artifact_dir / "mnist_unet.eqx").exists()


@pytest.mark.parametrize("mode", ["use", "require", "rebuild", "garbage", None])
def test_sample_uses_the_cached_model_in_every_mode(unet_registry, artifact_dir, tmp_path, monkeypatch, capsys, mode):
    """With the artifact present, `sample` loads it and never retrains it (not even under
    SCORE_MODELS_ARTIFACTS=rebuild)."""
    from score_models.zoo import chapter6

    config = zoo.get("mnist_unet").config
    sm.artifacts.save("mnist_unet", sm.models.from_config(config["model"], jax.random.key(0)), config)
    sampled = []

    def fake_sample(model, key, n, sampler):
        sampled.append(n)
        return sm.SamplerResult(samples=jax.numpy.zeros((n, 1, 28, 28)), trajectory=None, trajectory_sigmas=None,
                                samples_before_denoise=None, score_evals=0, n_diverged=0, stats={})

    monkeypatch.setattr(chapter6, "sample", fake_sample)
    if mode is None:
        monkeypatch.delenv("SCORE_MODELS_ARTIFACTS")
    else:
        monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", mode)
    rc, out, err = run(capsys, "sample", "mnist", "--n", "3", "--out", str(tmp_path / "x.npy"))
    assert rc == 0, err
    assert unet_registry == [] and sampled == [3] and np.load(tmp_path / "x.npy").shape == (3, 28, 28)


@pytest.mark.parametrize("argv,message", [
    (["--out", "/nonexistent/dir/x.npy"], "`--out`: the folder /nonexistent/dir does not exist"),
    (["--out", "{tmp}/x.npy", "--png", "/nonexistent/x.png"], "`--png`: the folder /nonexistent does not exist"),
    (["--out", "{tmp}/a_file/x.npy"], "`--out`: the folder {tmp}/a_file does not exist"),
    (["--out", "{tmp}/x.npy", "--png", "{tmp}/x.jpg"], "`--png` must name a .png file"),
    (["--out", "{tmp}/x.npy", "--seed", "99999999999999999999"], "`--seed` must be an integer in [0, 2**63)"),
    (["--out", "{tmp}/x.npy", "--seed", "-1"], "`--seed` must be an integer"),
    (["--out", "{tmp}/x.npy", "--n", "1000000000000"], "`--n` is too large"),
])
def test_sample_checks_its_arguments_before_any_work(unet_registry, tmp_path, capsys, monkeypatch, argv, message):
    """Bad outputs, seeds and sizes are refused before the model is even looked at."""
    (tmp_path / "a_file").write_text("")
    looked = []
    monkeypatch.setattr(zoo, "check", lambda name: looked.append(name))
    rc, _, err = run(capsys, "sample", "mnist", *[a.format(tmp=tmp_path) for a in argv])
    assert rc == 2 and message.format(tmp=tmp_path) in err and looked == []


def test_recipe_configs_are_read_only():
    """A registered config cannot be changed, neither through the registry nor through a dict
    the recipe module shares between recipes; `thaw` gives a mutable copy."""
    shared = {"width": 8}
    config = {"model": {"type": "MLP", "dim": 2, "depth": 1, "size": shared}, "sigmas": [3.0, 1.0]}
    r = zoo.Recipe("toy", 1, "t", config, toy_build)
    shared["width"] = 99
    config["seed"] = 1
    assert r.config == {"model": {"type": "MLP", "dim": 2, "depth": 1, "size": {"width": 8}}, "sigmas": (3.0, 1.0)}
    for mutate in (lambda c: c.__setitem__("seed", 2), lambda c: c["model"].update(width=3),
                   lambda c: c.pop("model"), lambda c: c["model"].__delitem__("dim"), lambda c: c.setdefault("a", 1)):
        with pytest.raises(TypeError, match="read-only"):
            mutate(r.config)
    with pytest.raises(AttributeError):
        r.config = {}
    copy = zoo.thaw(r.config)
    copy["model"]["size"]["width"] = 16
    assert copy["sigmas"] == [3.0, 1.0] and r.config["model"]["size"]["width"] == 8
    assert sm.artifacts._canonical(r.config) == sm.artifacts._canonical(zoo.thaw(r.config))


def test_the_real_recipes_are_frozen_and_still_match_their_artifacts():
    for name in zoo.names():
        with pytest.raises(TypeError):
            zoo.get(name).config["seed"] = 123
    # The frozen configs still match the committed sidecars (tuples compare as JSON lists).
    committed = Path(__file__).resolve().parent.parent / "artifacts"
    assert sm.artifacts.status("noise_conditional_1d", zoo.get("noise_conditional_1d").config, directory=committed) == "ok"
