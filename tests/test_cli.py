"""The `score-models artifacts list|build|verify` command, on a throwaway recipe registry."""

from __future__ import annotations

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
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(lines) == {"toy", "other"} and "missing" in lines["toy"] and "a throwaway toy" in lines["toy"]

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
