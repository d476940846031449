"""Cached trained models: equinox-serialised weights plus a JSON sidecar, written atomically.

An artifact `NAME` is two files in the artifact directory: `NAME.eqx` (the weights, by
`eqx.tree_serialise_leaves`; never pickle) and `NAME.json` (the config, training history,
metrics, library version, hardware and the sha256 of the weights). The config's `"model"` entry
describes the architecture (see `score_models.models.from_config`), so an artifact can be loaded
without training anything.

`SCORE_MODELS_ARTIFACTS` selects what `cached` does:

- `use` (default): load the artifact when its sidecar records the same config; otherwise build,
  save and return it.
- `require`: a missing or stale artifact is an error (CI uses this: it never retrains silently).
- `rebuild`: always build and save.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import equinox as eqx
import jax
import numpy as np

MODES = ("use", "require", "rebuild")


class ArtifactError(RuntimeError):
    """A missing, stale, corrupt or mismatched artifact."""


def artifact_dir() -> Path:
    """`$SCORE_MODELS_ARTIFACT_DIR`, default the repository's `artifacts/` folder."""
    default = Path(__file__).resolve().parent.parent / "artifacts"
    return Path(os.environ.get("SCORE_MODELS_ARTIFACT_DIR", default))


def mode() -> str:
    """The artifact mode from `$SCORE_MODELS_ARTIFACTS`: `use`, `require` or `rebuild`."""
    value = os.environ.get("SCORE_MODELS_ARTIFACTS", "use").strip().lower()
    if value not in MODES:
        raise ArtifactError(f"SCORE_MODELS_ARTIFACTS must be one of {MODES}, got {value!r}.")
    return value


def jsonable(obj: Any) -> Any:
    """`obj` with arrays, tuples and NumPy scalars turned into plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def _canonical(config: dict) -> dict:
    return json.loads(json.dumps(jsonable(config), sort_keys=True))


def _paths(name: str, directory: Path | None) -> tuple[Path, Path]:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"`name` must be a plain file stem like 'noise_conditional_1d', got {name!r}.")
    d = artifact_dir() if directory is None else Path(directory)
    return d / f"{name}.eqx", d / f"{name}.json"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; artifacts are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _hardware() -> dict:
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def save(name: str, model: eqx.Module, config: dict, *, history: dict | None = None,
         metrics: dict | None = None, directory: Path | None = None) -> Path:
    """Writes `model` as artifact `name` with its sidecar; returns the weights' path.

    `history` may hold `"loss"` (any length: stored averaged into at most 200 points),
    `"seconds"` and anything JSON-able; `metrics` any JSON-able dict.
    """
    from . import __version__
    from .training import thin_history

    if not isinstance(config, dict):
        raise ValueError(f"`config` must be a dict, got {type(config).__name__}.")
    weights_path, sidecar_path = _paths(name, directory)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    weights = buffer.getvalue()
    history = dict(history or {})
    if "loss" in history:
        history["loss_steps"] = int(len(history["loss"]))
        history["loss"] = thin_history(np.asarray(history["loss"]))
    sidecar = {
        "name": name,
        "config": _canonical(config),
        "history": jsonable(history),
        "metrics": jsonable(metrics or {}),
        "library_version": __version__,
        "jax_version": jax.__version__,
        "hardware": _hardware(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "weights_file": weights_path.name,
        "weights_bytes": len(weights),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    # Weights first, sidecar last: the sidecar's hash is what makes the pair valid.
    _atomic_write(weights_path, weights)
    _atomic_write(sidecar_path, (json.dumps(sidecar, indent=1, sort_keys=True) + "\n").encode())
    return weights_path


def info(name: str, *, directory: Path | None = None) -> dict:
    """The sidecar of artifact `name` (config, history, metrics, version, hash)."""
    _, sidecar_path = _paths(name, directory)
    if not sidecar_path.exists():
        raise ArtifactError(f"Artifact {name!r} has no sidecar at {sidecar_path}.")
    return json.loads(sidecar_path.read_text())


def _describe(config: dict) -> str:
    return json.dumps(_canonical(config), sort_keys=True)


def load(name: str, like: eqx.Module | None = None, *, config: dict | None = None,
         directory: Path | None = None) -> eqx.Module:
    """Loads artifact `name`, checking the weights' hash.

    `like` is a model of the right structure to load into; by default it is rebuilt from the
    sidecar's `config["model"]`. With `config`, the sidecar must record exactly that config.
    Raises `ArtifactError` naming both sides on any mismatch.
    """
    weights_path, sidecar_path = _paths(name, directory)
    if not weights_path.exists() or not sidecar_path.exists():
        raise ArtifactError(
            f"Artifact {name!r} is missing ({weights_path} and {sidecar_path} are both needed). "
            f"Build it with `score-models artifacts build {name}`."
        )
    sidecar = info(name, directory=directory)
    if config is not None and sidecar["config"] != _canonical(config):
        raise ArtifactError(
            f"Artifact {name!r} was written for a different config.\n"
            f"  on disk:   {_describe(sidecar['config'])}\n  requested: {_describe(config)}\n"
            f"Rebuild it with `score-models artifacts build {name}`."
        )
    weights = weights_path.read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    if digest != sidecar["weights_sha256"]:
        raise ArtifactError(
            f"Artifact {name!r} is corrupt: {weights_path} has sha256 {digest}, its sidecar records "
            f"{sidecar['weights_sha256']}. Rebuild it with `score-models artifacts build {name}`."
        )
    if like is None:
        from .models import from_config

        if "model" not in sidecar["config"]:
            raise ArtifactError(f"Artifact {name!r} has no config['model']; pass `like` to load it.")
        # A shape-only skeleton: nothing is initialised or computed just to be overwritten.
        like = eqx.filter_eval_shape(from_config, sidecar["config"]["model"])
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(weights), like)
    except Exception as e:
        raise ArtifactError(
            f"Artifact {name!r} does not fit the model it is loaded into.\n"
            f"  written for: {_describe(sidecar['config'].get('model', sidecar['config']))}\n"
            f"  loaded into: {type(like).__name__} ({e})"
        ) from e


def status(name: str, config: dict, *, directory: Path | None = None) -> str:
    """`"ok"`, `"missing"`, `"stale"` (another config) or `"corrupt"` (hash mismatch)."""
    weights_path, sidecar_path = _paths(name, directory)
    if not weights_path.exists() or not sidecar_path.exists():
        return "missing"
    sidecar = info(name, directory=directory)
    if sidecar["config"] != _canonical(config):
        return "stale"
    if hashlib.sha256(weights_path.read_bytes()).hexdigest() != sidecar["weights_sha256"]:
        return "corrupt"
    return "ok"


def cached(name: str, config: dict, build: Callable[[], Any], *, like: eqx.Module | None = None,
           directory: Path | None = None) -> eqx.Module:
    """The model stored as artifact `name` if its sidecar records `config`; otherwise the result
    of `build()`, saved first. Obeys `$SCORE_MODELS_ARTIFACTS` (see the module docstring).

    `build()` returns a model, or `(model, history)`, or `(model, history, metrics)`.
    """
    current = mode()
    state = "rebuild" if current == "rebuild" else status(name, config, directory=directory)
    if state == "ok":
        return load(name, like, config=config, directory=directory)
    if current == "require":
        weights_path, _ = _paths(name, directory)
        if state == "missing":
            detail = f"is missing (expected {weights_path} and its .json sidecar)"
        elif state == "stale":  # (only read the sidecar when there is one)
            detail = (f"is stale: it was written for another config.\n  on disk:   "
                      f"{_describe(info(name, directory=directory)['config'])}\n  requested: {_describe(config)}")
        else:
            detail = "is corrupt (its weights do not match the sidecar's sha256)"
        raise ArtifactError(
            f"Artifact {name!r} {detail}\nSCORE_MODELS_ARTIFACTS=require forbids training here; "
            f"run `score-models artifacts build {name}` first."
        )
    if state in ("stale", "corrupt"):
        print(f"Artifact {name!r} is {state}; rebuilding it.")
    result = build()
    model, history, metrics = (result, None, None) if isinstance(result, eqx.Module) else (
        tuple(result) + (None, None))[:3]
    save(name, model, config, history=history, metrics=metrics, directory=directory)
    return model
