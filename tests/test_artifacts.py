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
from score_models import _files, artifacts
from score_models.artifacts import ArtifactError

# Training a missing artifact warns (what it trains, where it goes); the tests that check the
# warning use `pytest.warns`, which sees it anyway.
pytestmark = pytest.mark.filterwarnings("ignore::score_models.artifacts.ArtifactWarning")

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


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


def test_interrupted_save_keeps_the_previous_artifact(artifact_dir, monkeypatch):
    """A save that dies after writing the new weights but before switching the sidecar leaves
    the previous artifact whole; the next save cleans up."""
    artifacts.save("toy", make_model(1), CONFIG)
    real, calls = artifacts.atomic_write, []

    def dies_before_the_sidecar(path, data):
        calls.append(path.name)
        if path.suffix == ".json":
            raise KeyboardInterrupt  # Ctrl-C, SIGKILL or a full disk between the two writes
        real(path, data)

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(artifacts, "atomic_write", dies_before_the_sidecar)
        artifacts.save("toy", make_model(2), CONFIG)
    assert calls[-1] == "toy.json"
    assert artifacts.status("toy", CONFIG) == "ok"
    assert_bitwise_equal(artifacts.load("toy"), make_model(1))
    artifacts.save("toy", make_model(3), CONFIG)
    assert listing(artifact_dir) == [".toy.lock", "toy.eqx", "toy.json"]
    assert_bitwise_equal(artifacts.load("toy"), make_model(3))


def test_save_interrupted_after_the_switch_is_finished_by_the_next_reader(artifact_dir, monkeypatch):
    """Once the sidecar is switched the new artifact is the valid one, even before its weights
    are moved into place; the first reader that can write finishes the move."""
    artifacts.save("toy", make_model(1), CONFIG)

    def dies(source, target):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(artifacts, "replace", dies)
        artifacts.save("toy", make_model(2), CONFIG)
    assert any(name.endswith(".next") for name in listing(artifact_dir))
    assert artifacts.status("toy", CONFIG) == "ok"
    assert_bitwise_equal(artifacts.load("toy"), make_model(2))
    assert listing(artifact_dir) == [".toy.lock", "toy.eqx", "toy.json"]
    weights = (artifact_dir / "toy.eqx").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == artifacts.info("toy")["weights_sha256"]


def test_a_failed_write_leaves_no_temp_file(artifact_dir, monkeypatch):
    artifacts.save("toy", make_model(1), CONFIG)
    before = {p.name: p.read_bytes() for p in artifact_dir.iterdir()}

    def failing_replace(src, dst):
        raise OSError("disk full")

    with monkeypatch.context() as m, pytest.raises(OSError, match="disk full"):
        m.setattr(_files.os, "replace", failing_replace)
        artifacts.save("toy", make_model(2), CONFIG)
    assert {p.name: p.read_bytes() for p in artifact_dir.iterdir()} == before
    assert_bitwise_equal(artifacts.load("toy"), make_model(1))


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


def test_cached_use_mode(artifact_dir):
    build = Builder()
    first = artifacts.cached("toy", CONFIG, build)
    assert build.calls == 1 and artifacts.status("toy", CONFIG) == "ok"
    again = artifacts.cached("toy", CONFIG, build)
    assert build.calls == 1  # loaded, not rebuilt
    assert_bitwise_equal(again, first)
    # A stale artifact (another config) is rebuilt and overwritten.
    new_config = {**CONFIG, "steps": 20}
    with pytest.warns(artifacts.ArtifactWarning, match="Training artifact 'toy' \\(it is stale\\)"):
        rebuilt = artifacts.cached("toy", new_config, Builder(new_config))
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


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "..", "a\x00b", 5, None])
def test_bad_names(artifact_dir, name):
    with pytest.raises(ValueError, match="`name`"):
        artifacts.save(name, make_model(1), CONFIG)


@pytest.mark.parametrize("config", [[1, 2], {**CONFIG, "tags": {"a"}}, {**CONFIG, "lr": float("nan")},
                                    {**CONFIG, "f": print}])
def test_config_must_be_plain_finite_json(artifact_dir, config):
    with pytest.raises(ValueError, match="`config`"):
        artifacts.save("toy", make_model(1), config)
    assert listing(artifact_dir) == []


def test_model_must_be_a_module(artifact_dir):
    with pytest.raises(ValueError, match="`model`"):
        artifacts.save("toy", "not a model", CONFIG)


def test_non_finite_history_and_metrics_are_stored_as_null(artifact_dir):
    artifacts.save("toy", make_model(1), CONFIG, history={"loss": [1.0, float("nan")], "seconds": float("inf")},
                   metrics={"w1": np.float32("nan")})
    sidecar = json.loads((artifact_dir / "toy.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert sidecar["history"]["seconds"] is None and sidecar["metrics"] == {"w1": None}


def test_build_must_return_a_model(artifact_dir):
    with pytest.raises(ArtifactError, match="must return a model"):
        artifacts.cached("toy", CONFIG, lambda: None)


# --------------------------------------------------------------------------- damaged sidecars


DAMAGED_SIDECARS = {
    "truncated": lambda good: good[: len(good) // 2],
    "empty object": lambda good: "{}",
    "a list": lambda good: "[1, 2]",
    "zero bytes": lambda good: "",
    "no hash": lambda good: json.dumps({k: v for k, v in json.loads(good).items() if k != "weights_sha256"}),
    "another name": lambda good: json.dumps({**json.loads(good), "name": "other"}),
    "binary": lambda good: "\udcff",
}


@pytest.mark.parametrize("damage", DAMAGED_SIDECARS)
def test_a_damaged_sidecar_is_corrupt_and_named(artifact_dir, monkeypatch, damage):
    artifacts.save("toy", make_model(1), CONFIG)
    sidecar = artifact_dir / "toy.json"
    text = DAMAGED_SIDECARS[damage](sidecar.read_text())
    sidecar.write_bytes(text.encode("utf-8", "surrogateescape"))
    found = artifacts.check("toy", CONFIG)
    assert found.state == "corrupt" and str(sidecar) in found.detail
    for call in (lambda: artifacts.load("toy"), lambda: artifacts.info("toy"),
                 lambda: artifacts.load("toy", config=CONFIG)):
        with pytest.raises(ArtifactError, match=f"corrupt: .*{sidecar}"):
            call()
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "require")
    with pytest.raises(ArtifactError, match=f"corrupt: .*{sidecar}"):
        artifacts.cached("toy", CONFIG, Builder())
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "use")  # repaired by rebuilding
    build = Builder()
    with pytest.warns(artifacts.ArtifactWarning, match="corrupt"):
        artifacts.cached("toy", CONFIG, build)
    assert build.calls == 1 and artifacts.status("toy", CONFIG) == "ok"


def test_load_refuses_another_artifacts_pair(artifact_dir):
    """Another artifact's weights and sidecar copied under this name do not load as it."""
    artifacts.save("other", make_model(1), CONFIG)
    for suffix in (".eqx", ".json"):
        (artifact_dir / f"toy{suffix}").write_bytes((artifact_dir / f"other{suffix}").read_bytes())
    with pytest.raises(ArtifactError, match="describes artifact 'other', not 'toy'"):
        artifacts.load("toy")


def test_missing_weights_or_sidecar(artifact_dir):
    artifacts.save("toy", make_model(1), CONFIG)
    (artifact_dir / "toy.eqx").unlink()
    assert artifacts.check("toy", CONFIG) == ("missing", f"its weights {artifact_dir / 'toy.eqx'} are missing")
    artifacts.save("toy", make_model(1), CONFIG)
    (artifact_dir / "toy.json").unlink()
    assert artifacts.check("toy", CONFIG).state == "missing"


# --------------------------------------------------------------------------- where artifacts live


def test_unwritable_artifact_directory_is_found_before_training(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("SCORE_MODELS_ARTIFACT_DIR", str(tmp_path / "a_file" / "artifacts"))
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "use")
    build = Builder()
    with pytest.raises(ArtifactError, match="not writable.*SCORE_MODELS_ARTIFACT_DIR"):
        artifacts.cached("toy", CONFIG, build)
    assert build.calls == 0
    monkeypatch.setenv("SCORE_MODELS_ARTIFACT_DIR", str(tmp_path / "a_file"))
    with pytest.raises(ArtifactError, match="is a file, not a folder"):
        artifacts.cached("toy", CONFIG, build)
    assert build.calls == 0


def test_artifact_dir_in_a_checkout_is_the_repository_folder(monkeypatch):
    monkeypatch.delenv("SCORE_MODELS_ARTIFACT_DIR", raising=False)
    monkeypatch.delenv("SCORE_MODELS_ARTIFACTS", raising=False)
    repo = artifacts.Path(sm.__file__).resolve().parent.parent
    assert artifacts.checkout_dir() == repo
    assert artifacts.artifact_dir() == repo / "artifacts" and artifacts.mode() == "use"


def test_an_installed_copy_uses_the_user_cache_and_never_trains_implicitly(tmp_path, monkeypatch):
    """Outside a checkout (e.g. in site-packages) artifacts live in the user cache, and a
    missing one is an error that says how to get it; nothing is trained or written."""
    monkeypatch.setattr(artifacts, "checkout_dir", lambda: None)
    monkeypatch.delenv("SCORE_MODELS_ARTIFACT_DIR", raising=False)
    monkeypatch.delenv("SCORE_MODELS_ARTIFACTS", raising=False)
    monkeypatch.setenv("SCORE_MODELS_CACHE", str(tmp_path / "cache"))
    assert artifacts.artifact_dir() == tmp_path / "cache" / "artifacts"
    assert artifacts.mode() == "require"
    build = Builder()
    with pytest.raises(ArtifactError) as e:
        artifacts.cached("toy", CONFIG, build, about="trains a toy, about 1 s")
    message = str(e.value)
    for part in ["is missing", "installed copy", "score-models artifacts build toy", "trains a toy",
                 "SCORE_MODELS_ARTIFACT_DIR", "SCORE_MODELS_ARTIFACTS=use"]:
        assert part in message, part
    assert build.calls == 0 and not (tmp_path / "cache").exists()
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", "use")  # asked for: trained into the user cache
    with pytest.warns(artifacts.ArtifactWarning, match=f"saved in {tmp_path / 'cache' / 'artifacts'}"):
        artifacts.cached("toy", CONFIG, build)
    assert build.calls == 1 and (tmp_path / "cache" / "artifacts" / "toy.eqx").exists()


def test_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORE_MODELS_ARTIFACT_DIR", "~/some/artifacts")
    assert artifacts.artifact_dir() == artifacts.Path.home() / "some" / "artifacts"
    monkeypatch.setenv("SCORE_MODELS_ARTIFACT_DIR", os.fspath(tmp_path))
    assert artifacts.artifact_dir() == tmp_path
    monkeypatch.setenv("SCORE_MODELS_ARTIFACTS", " Require ")
    assert artifacts.mode() == "require"
    for variable, call in [("SCORE_MODELS_ARTIFACT_DIR", artifacts.artifact_dir),
                           ("SCORE_MODELS_ARTIFACTS", artifacts.mode),
                           ("SCORE_MODELS_CACHE", artifacts.cache_dir)]:
        monkeypatch.setenv(variable, " ")
        with pytest.raises(ArtifactError, match=f"{variable} is set but empty"):
            call()
        monkeypatch.delenv(variable)


def test_machine_facts_on_a_platform_without_unix_calls(artifact_dir, monkeypatch):
    """Windows has no os.getloadavg or os.sysconf: the machine facts are None there, and saving
    an artifact (which records the hardware) still works."""
    from score_models import _system

    assert isinstance(_system.load_average(), float) and _system.total_memory_bytes() > 0
    monkeypatch.delattr(os, "getloadavg")
    monkeypatch.delattr(os, "sysconf")
    assert _system.load_average() is None and _system.total_memory_bytes() is None
    _system.check_fits_in_memory("n", 10**15, "anything")  # cannot tell: not refused
    artifacts.save("toy", make_model(1), CONFIG)
    assert artifacts.info("toy")["hardware"]["cpu_count"] == os.cpu_count()
