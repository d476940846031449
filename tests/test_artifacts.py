"""Artifacts: bit-for-bit round trips, sidecars, atomic writes and the `cached` modes."""

from __future__ import annotations

import hashlib
import json
import os

import equinox as eqx
import jax
import numpy as np
import pytest

import score_models as sm
from score_models import artifacts
from score_models.artifacts import ArtifactError

MODEL_CONFIG = {"type": "NoiseConditionalMLP", "dim": 2, "width": 8, "depth": 1, "data_std": 3.0}
CONFIG = {"model": MODEL_CONFIG, "steps": 10, "seed": 0}


def make_model(seed=0, config=MODEL_CONFIG):
    return sm.models.from_config(config, jax.random.key(seed))


def leaves(model):
    return jax.tree.leaves(eqx.filter(model, eqx.is_array))


def assert_bitwise_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))


class Builder:
    """A `build()` that counts its calls and returns a fresh model each time."""

    def __init__(self, config=CONFIG):
        self.calls = 0
        self.config = config

    def __call__(self):
        self.calls += 1
        return make_model(100 + self.calls, self.config["model"]), {"loss": np.linspace(1, 0, 500)}, {"w1": 0.5}


def test_round_trip_is_bit_for_bit(artifact_dir):
    model = make_model(1)
    path = artifacts.save("toy", model, CONFIG, history={"loss": np.arange(5.0)})
    assert path == artifact_dir / "toy.eqx"
    assert_bitwise_equal(artifacts.load("toy"), model)  # skeleton rebuilt from config["model"]
    assert_bitwise_equal(artifacts.load("toy", make_model(7)), model)  # into a given skeleton
    assert_bitwise_equal(artifacts.load("toy", config=CONFIG), model)
    # (Ensembles, whose members are stacked, round-trip in test_models.py.)


def test_sidecar_contents(artifact_dir):
    model = make_model(1)
    artifacts.save("toy", model, CONFIG, history={"loss": np.linspace(1, 0, 1000), "seconds": 1.5},
                   metrics={"w1": np.float32(0.25), "weights": np.array([0.5, 0.5])})
    sidecar = json.loads((artifact_dir / "toy.json").read_text())
    assert sidecar == artifacts.info("toy")
    assert sidecar["name"] == "toy" and sidecar["config"] == CONFIG
    assert sidecar["library_version"] == sm.__version__ and sidecar["jax_version"] == jax.__version__
    weights = (artifact_dir / "toy.eqx").read_bytes()
    assert sidecar["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert sidecar["weights_bytes"] == len(weights) and sidecar["weights_file"] == "toy.eqx"
    hw = sidecar["hardware"]
    assert hw["platform"] == jax.devices()[0].platform and hw["device_count"] == jax.device_count()
    assert {"device_kind", "cpu", "cpu_count"} <= set(hw)
    assert sidecar["history"]["loss_steps"] == 1000 and len(sidecar["history"]["loss"]) == 200
    assert sidecar["history"]["loss"][0] == pytest.approx(np.linspace(1, 0, 1000)[:5].mean())
    assert sidecar["history"]["seconds"] == 1.5
    assert sidecar["metrics"] == {"w1": 0.25, "weights": [0.5, 0.5]}
    assert "created" in sidecar


def test_writes_are_atomic(artifact_dir, monkeypatch):
    artifacts.save("toy", make_model(1), CONFIG)
    assert sorted(p.name for p in artifact_dir.iterdir()) == ["toy.eqx", "toy.json"]
    before = {p.name: p.read_bytes() for p in artifact_dir.iterdir()}

    # A crash while replacing the file leaves the old artifact intact and no temp file behind.
    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        artifacts.save("toy", make_model(2), CONFIG)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in artifact_dir.iterdir()} == before
    assert_bitwise_equal(artifacts.load("toy", directory=artifact_dir), make_model(1))


def test_directory_argument_overrides_the_environment(artifact_dir, tmp_path):
    other = tmp_path / "elsewhere"
    artifacts.save("toy", make_model(1), CONFIG, directory=other)
    assert (other / "toy.eqx").exists() and not (artifact_dir / "toy.eqx").exists()
    assert artifacts.status("toy", CONFIG, directory=other) == "ok"
    assert artifacts.status("toy", CONFIG) == "missing"


def test_status(artifact_dir):
    assert artifacts.status("toy", CONFIG) == "missing"
    artifacts.save("toy", make_model(1), CONFIG)
    assert artifacts.status("toy", CONFIG) == "ok"
    # Tuples and arrays in a config compare equal to their JSON form.
    assert artifacts.status("toy", {**CONFIG, "steps": np.int64(10)}) == "ok"
    assert artifacts.status("toy", {**CONFIG, "steps": 11}) == "stale"
    (artifact_dir / "toy.eqx").write_bytes(b"garbage")
    assert artifacts.status("toy", CONFIG) == "corrupt"


def test_corrupted_weights_raise(artifact_dir):
    artifacts.save("toy", make_model(1), CONFIG)
    path = artifact_dir / "toy.eqx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        artifacts.load("toy")


def test_missing_artifact_raises(artifact_dir):
    with pytest.raises(ArtifactError, match="missing.*score-models artifacts build toy"):
        artifacts.load("toy")


def test_loading_into_another_model_names_both(artifact_dir):
    artifacts.save("toy", make_model(1), CONFIG)
    wider = {**MODEL_CONFIG, "width": 16}
    with pytest.raises(ArtifactError) as e:
        artifacts.load("toy", make_model(0, wider))
    msg = str(e.value)
    assert '"width": 8' in msg and "NoiseConditionalMLP" in msg and "loaded into" in msg
    # A requested config that differs from the sidecar's names both configs.
    with pytest.raises(ArtifactError) as e:
        artifacts.load("toy", config={**CONFIG, "model": wider})
    assert '"width": 8' in str(e.value) and '"width": 16' in str(e.value)


def test_cached_use_mode(artifact_dir, capsys):
    build = Builder()
    first = artifacts.cached("toy", CONFIG, build)
    assert build.calls == 1 and artifacts.status("toy", CONFIG) == "ok"
    again = artifacts.cached("toy", CONFIG, build)
    assert build.calls == 1  # loaded, not rebuilt
    assert_bitwise_equal(again, first)
    # A stale artifact (another config) is rebuilt and overwritten.
    new_config = {**CONFIG, "steps": 20}
    rebuilt = artifacts.cached("toy", new_config, Builder(new_config))
    assert "stale" in capsys.readouterr().out
    assert artifacts.info("toy")["config"] == new_config
    assert_bitwise_equal(artifacts.load("toy"), rebuilt)
    assert artifacts.info("toy")["metrics"] == {"w1": 0.5}


def test_cached_accepts_a_bare_model(artifact_dir):
    model = artifacts.cached("bare", CONFIG, lambda: make_model(5))
    assert_bitwise_equal(model, make_model(5))
    assert artifacts.info("bare")["history"] == {}


def test_cached_require_mode(artifact_dir, monkeypatch):
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "require")
    build = Builder()
    with pytest.raises(ArtifactError, match="missing.*require"):
        artifacts.cached("toy", CONFIG, build)
    assert build.calls == 0 and not (artifact_dir / "toy.eqx").exists()
    artifacts.save("toy", make_model(1), CONFIG)
    assert_bitwise_equal(artifacts.cached("toy", CONFIG, build), make_model(1))
    stale = {**CONFIG, "model": {**MODEL_CONFIG, "width": 16}}
    with pytest.raises(ArtifactError) as e:
        artifacts.cached("toy", stale, build)
    msg = str(e.value)
    assert "stale" in msg and '"width": 8' in msg and '"width": 16' in msg
    assert build.calls == 0


def test_cached_rebuild_mode(artifact_dir, monkeypatch):
    artifacts.save("toy", make_model(1), CONFIG)
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "rebuild")
    build = Builder()
    model = artifacts.cached("toy", CONFIG, build)
    assert build.calls == 1
    assert_bitwise_equal(artifacts.load("toy"), model)
    artifacts.cached("toy", CONFIG, build)
    assert build.calls == 2


def test_unknown_mode_is_an_error(artifact_dir, monkeypatch):
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "sometimes")
    with pytest.raises(ArtifactError, match="SCORE_MODELS_ARTIFACTS"):
        artifacts.cached("toy", CONFIG, Builder())


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_bad_names(artifact_dir, name):
    with pytest.raises(ValueError, match="`name`"):
        artifacts.save(name, make_model(1), CONFIG)


def test_config_must_be_a_dict(artifact_dir):
    with pytest.raises(ValueError, match="`config`"):
        artifacts.save("toy", make_model(1), [1, 2])


def test_artifact_dir_default_is_the_repository_folder(monkeypatch):
    monkeypatch.delenv("SCORE_MODELS_ARTIFACT_DIR", raising=False)
    assert artifacts.artifact_dir() == artifacts.Path(sm.__file__).resolve().parent.parent / "artifacts"
    monkeypatch.setenv("SCORE_MODELS_ARTIFACT_DIR", os.fspath("/tmp/x"))
    assert str(artifacts.artifact_dir()) == "/tmp/x"
