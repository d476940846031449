"""Cached trained models: equinox-serialised weights plus a JSON sidecar, saved as one unit.

An artifact `NAME` is two files in the artifact directory: `NAME.eqx` (the weights, by
`eqx.tree_serialise_leaves`; never pickle) and `NAME.json` (the sidecar: the config, training
history, metrics, library version, hardware and the sha256 of the weights). The config's
`"model"` entry describes the architecture (see `score_models.models.from_config`), so an
artifact can be loaded without training anything.

**Where artifacts live** (`artifact_dir`): `$SCORE_MODELS_ARTIFACT_DIR` when set; else the
`artifacts/` folder of the checkout when the library runs from one; else the user cache
`$SCORE_MODELS_CACHE/artifacts` (default `~/.cache/score_models/artifacts`), never
`site-packages`.

**What `cached` does** (`$SCORE_MODELS_ARTIFACTS`):

- `use`: load the artifact when its sidecar records the same config; otherwise build, save and
  return it (with a warning saying what is trained). The default in a checkout.
- `require`: a missing, stale or corrupt artifact is an error that says how to get it; nothing
  is trained. The default outside a checkout (an installed copy), and what CI uses.
- `rebuild`: always build and save.

**One unit.** `save` holds a lock (`.NAME.lock`) so concurrent savers take turns, writes the
new weights beside the old ones (`.NAME.<sha>.next`), switches the sidecar atomically (the
commit point), then moves the weights into place; readers verify the weights against the
sidecar's sha256 and finish an interrupted switch. A crash at any moment leaves the previous
artifact or the new one, never a mismatched pair. A damaged sidecar makes the artifact
`corrupt`, named in the message, and `score-models artifacts build --stale` rebuilds it.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import numpy as np

from ._files import atomic_write, check_writable, file_lock, replace
from ._system import hardware

MODES = ("use", "require", "rebuild")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ArtifactError(RuntimeError):
    """A missing, stale, corrupt or mismatched artifact, or an unusable artifact setting."""


class ArtifactWarning(UserWarning):
    """An artifact is being trained because it was missing, stale or corrupt."""


# --------------------------------------------------------------------------- where and how


def _env(name: str) -> str | None:
    """The value of environment variable `name`; None when unset; an error when set but empty."""
    value = os.environ.get(name)
    if value is not None and not value.strip():
        raise ArtifactError(f"{name} is set but empty; unset it or give it a value.")
    return value


@functools.lru_cache(maxsize=None)
def checkout_dir() -> Path | None:
    """The root of the score-models checkout this library runs from (an editable install or
    `PYTHONPATH`), or None for an installed copy (for example in `site-packages`)."""
    root = Path(__file__).resolve().parent.parent
    try:
        pyproject = (root / "pyproject.toml").read_text()
    except OSError:
        return None
    return root if re.search(r'(?m)^name\s*=\s*"score-models"', pyproject) else None


def cache_dir() -> Path:
    """The user cache of score_models: `$SCORE_MODELS_CACHE`, default `~/.cache/score_models`."""
    value = _env("SCORE_MODELS_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "score_models"


def artifact_dir() -> Path:
    """`$SCORE_MODELS_ARTIFACT_DIR`; else the checkout's `artifacts/`; else the user cache's
    `artifacts/` (see the module docstring). A file in its place is an error."""
    value = _env("SCORE_MODELS_ARTIFACT_DIR")
    if value:
        d = Path(value).expanduser()
    elif checkout_dir() is not None:
        d = checkout_dir() / "artifacts"
    else:
        d = cache_dir() / "artifacts"
    if d.exists() and not d.is_dir():
        raise ArtifactError(f"The artifact directory {d} is a file, not a folder; set SCORE_MODELS_ARTIFACT_DIR "
                            f"to a folder.")
    return d


def mode() -> str:
    """`$SCORE_MODELS_ARTIFACTS`: `use`, `require` or `rebuild`; when unset, `use` in a
    checkout and `require` elsewhere (an installed copy never trains implicitly)."""
    value = _env("SCORE_MODELS_ARTIFACTS")
    if value is None:
        return "use" if checkout_dir() is not None else "require"
    value = value.strip().lower()
    if value not in MODES:
        raise ArtifactError(f"SCORE_MODELS_ARTIFACTS must be one of {MODES}, got {value!r}.")
    return value


def ensure_writable(directory: Path | None = None) -> Path:
    """The artifact directory (created if needed), checked writable before anything is trained;
    raises `ArtifactError` saying where to write instead."""
    d = artifact_dir() if directory is None else Path(directory)
    try:
        return check_writable(d, "The artifact directory")
    except OSError as e:
        raise ArtifactError(f"{e} Set SCORE_MODELS_ARTIFACT_DIR to a writable folder.") from e


# --------------------------------------------------------------------------- JSON


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def jsonable(obj: Any) -> Any:
    """`obj` with arrays, tuples and NumPy scalars turned into plain JSON types; NaN and
    infinities become None (JSON has no such numbers)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.ndarray, jax.Array)):
        return jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite_or_none(float(obj))
    return obj


def _canonical(config: dict) -> dict:
    return json.loads(json.dumps(jsonable(config), sort_keys=True))


def _strict_json(obj: Any, where: str) -> Any:
    """`obj` as plain JSON types, refusing what JSON cannot hold exactly (NaN, sets, objects)."""
    if isinstance(obj, (np.ndarray, jax.Array, np.generic)):
        obj = np.asarray(obj).tolist()
    if isinstance(obj, dict):
        return {str(k): _strict_json(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"`config` must hold finite numbers (it is compared exactly); {where} is {obj}.")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise ValueError(f"`config` must hold only JSON types; {where} is a {type(obj).__name__}: {obj!r}.")


def _check_config(config: Any) -> dict:
    """The canonical JSON form of `config`."""
    if not isinstance(config, dict):
        raise ValueError(f"`config` must be a dict, got {type(config).__name__}.")
    return json.loads(json.dumps(_strict_json(config, "config"), sort_keys=True))


def _describe(config: dict) -> str:
    return json.dumps(_canonical(config), sort_keys=True)


# --------------------------------------------------------------------------- files


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"`name` must be a plain file stem like 'noise_conditional_1d' (letters, digits, "
                         f"'_', '-', '.'), got {name!r}.")
    return name


class _Paths(NamedTuple):
    weights: Path
    sidecar: Path
    lock: Path

    def staged(self, sha256: str) -> Path:
        """Where `save` puts new weights before the sidecar switches to them."""
        return self.weights.with_name(f".{self.weights.stem}.{sha256[:16]}.next")


def _paths(name: str, directory: Path | None) -> _Paths:
    _check_name(name)
    d = artifact_dir() if directory is None else Path(directory)
    return _Paths(d / f"{name}.eqx", d / f"{name}.json", d / f".{name}.lock")


class _Unusable(ArtifactError):
    """An artifact that cannot be loaded: `state` is missing, stale or corrupt."""

    def __init__(self, name: str, state: str, detail: str):
        self.state, self.detail = state, detail
        super().__init__(f"Artifact {name!r} is {state}: {detail}")


def _read_sidecar(name: str, paths: _Paths) -> dict:
    try:
        text = paths.sidecar.read_text()
    except FileNotFoundError:
        raise _Unusable(name, "missing", f"there is no sidecar {paths.sidecar}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _Unusable(name, "corrupt", f"its sidecar {paths.sidecar} cannot be read ({e})") from e
    try:
        sidecar = json.loads(text)
    except ValueError as e:
        raise _Unusable(name, "corrupt", f"its sidecar {paths.sidecar} is not valid JSON ({e})") from e
    problem = None
    if not isinstance(sidecar, dict):
        problem = f"holds a {type(sidecar).__name__}, not a JSON object"
    elif not isinstance(sidecar.get("config"), dict):
        problem = "has no 'config' object"
    elif not (isinstance(sidecar.get("weights_sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", sidecar["weights_sha256"])):
        problem = "has no valid 'weights_sha256'"
    elif sidecar.get("name") != name:
        problem = f"describes artifact {sidecar.get('name')!r}, not {name!r} (copied or renamed?)"
    if problem:
        raise _Unusable(name, "corrupt", f"its sidecar {paths.sidecar} {problem}")
    return sidecar


def _read_weights(name: str, paths: _Paths, sha256: str) -> tuple[bytes, Path]:
    """The weights whose hash the sidecar records and the file they came from: `NAME.eqx`, or
    the staged file of a save interrupted after its sidecar was switched."""
    found = None
    for path in (paths.weights, paths.staged(sha256)):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise _Unusable(name, "corrupt", f"{path} cannot be read ({e})") from e
        digest = hashlib.sha256(data).hexdigest()
        if digest == sha256:
            return data, path
        found = found or f"{path} has sha256 {digest}, its sidecar records {sha256}"
    if found is None:
        raise _Unusable(name, "missing", f"its weights {paths.weights} are missing")
    raise _Unusable(name, "corrupt", found)


def _read(name: str, directory: Path | None, config: dict | None = None) -> tuple[dict, bytes]:
    """The verified sidecar and weights of `name`; raises `_Unusable` saying what is wrong."""
    paths = _paths(name, directory)
    # Readers wait for a save in progress; they never create the lock file themselves.
    with file_lock(paths.lock, shared=True) if paths.lock.exists() else contextlib.nullcontext():
        if not paths.sidecar.exists() and not paths.weights.exists():
            raise _Unusable(name, "missing", f"neither {paths.weights} nor its sidecar exists")
        sidecar = _read_sidecar(name, paths)
        if config is not None and sidecar["config"] != _canonical(config):
            raise _Unusable(name, "stale", f"it was written for another config.\n  on disk:   "
                                           f"{_describe(sidecar['config'])}\n  requested: {_describe(config)}")
        weights, source = _read_weights(name, paths, sidecar["weights_sha256"])
    if source != paths.weights:
        _finish_save(paths, sidecar["weights_sha256"])
    return sidecar, weights


def _finish_save(paths: _Paths, sha256: str) -> None:
    """Completes a save interrupted between switching the sidecar and moving its weights into
    place (best effort: in a read-only folder the staged file keeps serving readers)."""
    try:
        with file_lock(paths.lock):
            staged = paths.staged(sha256)
            if staged.exists() and json.loads(paths.sidecar.read_text()).get("weights_sha256") == sha256:
                replace(staged, paths.weights)
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- the public API


def save(name: str, model: eqx.Module, config: dict, *, history: dict | None = None,
         metrics: dict | None = None, directory: Path | None = None) -> Path:
    """Writes `model` as artifact `name` with its sidecar, as one unit; returns the weights' path.

    `history` may hold `"loss"` (any length: stored averaged into at most 200 points),
    `"seconds"` and anything JSON-able; `metrics` any JSON-able dict (NaN stored as null).
    """
    from . import __version__
    from .training import thin_history

    paths = _paths(name, directory)
    config = _check_config(config)
    if not isinstance(model, eqx.Module):
        raise ValueError(f"`model` must be an equinox Module, got {type(model).__name__}.")
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    weights = buffer.getvalue()
    history = dict(history or {})
    if "loss" in history:
        history["loss_steps"] = int(len(history["loss"]))
        history["loss"] = thin_history(np.asarray(history["loss"]))
    sidecar = {
        "name": name, "config": config, "history": jsonable(history), "metrics": jsonable(metrics or {}),
        "library_version": __version__, "jax_version": jax.__version__, "hardware": hardware(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "weights_file": paths.weights.name, "weights_bytes": len(weights),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    sidecar_bytes = (json.dumps(sidecar, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()
    ensure_writable(paths.weights.parent)
    with file_lock(paths.lock):
        staged = paths.staged(sidecar["weights_sha256"])
        atomic_write(staged, weights)             # 1. the new weights, beside the old ones
        atomic_write(paths.sidecar, sidecar_bytes)  # 2. the commit point
        replace(staged, paths.weights)            # 3. readers find either file until here
        for leftover in paths.weights.parent.glob(f".{name}.*.next"):  # from interrupted saves
            leftover.unlink(missing_ok=True)
    return paths.weights


def info(name: str, *, directory: Path | None = None) -> dict:
    """The sidecar of artifact `name` (config, history, metrics, version, hash); raises
    `ArtifactError` naming the file when it is missing or damaged."""
    return _read_sidecar(name, _paths(name, directory))


class Check(NamedTuple):
    """An artifact's `state` (`"ok"`, `"missing"`, `"stale"` or `"corrupt"`) and what is wrong."""

    state: str
    detail: str


def check(name: str, config: dict, *, directory: Path | None = None) -> Check:
    """Whether artifact `name` exists, matches `config` and its weights match its sidecar."""
    try:
        _read(name, directory, config)
    except _Unusable as e:
        return Check(e.state, e.detail)
    return Check("ok", "")


def status(name: str, config: dict, *, directory: Path | None = None) -> str:
    """`"ok"`, `"missing"`, `"stale"` (another config) or `"corrupt"` (damaged weights or
    sidecar); `check` also says why."""
    return check(name, config, directory=directory).state


def load(name: str, like: eqx.Module | None = None, *, config: dict | None = None,
         directory: Path | None = None) -> eqx.Module:
    """Loads artifact `name`, checking that its sidecar is intact and names `name` and that the
    weights match its sha256.

    `like` is a model of the right structure to load into; by default it is rebuilt from the
    sidecar's `config["model"]`. With `config`, the sidecar must record exactly that config.
    Raises `ArtifactError` saying what is wrong and how to rebuild.
    """
    try:
        sidecar, weights = _read(name, directory, config)
    except _Unusable as e:
        raise ArtifactError(f"{e}. Rebuild it with `score-models artifacts build {name}`.") from None
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


def split_build_result(result: Any) -> tuple[eqx.Module, dict | None, dict | None]:
    """`(model, history, metrics)` from what a build function returned: a model, `(model,
    history)` or `(model, history, metrics)`."""
    if isinstance(result, eqx.Module):
        return result, None, None
    if isinstance(result, (tuple, list)) and 1 <= len(result) <= 3 and isinstance(result[0], eqx.Module):
        model, history, metrics = (*result, None, None)[:3]
        return model, history, metrics
    raise ArtifactError(f"A build function must return a model, (model, history) or (model, history, "
                        f"metrics); got {type(result).__name__}.")


def _not_available(name: str, problem: str, hint: str) -> ArtifactError:
    if _env("SCORE_MODELS_ARTIFACTS") is not None:
        why = "SCORE_MODELS_ARTIFACTS=require forbids training here"
    else:
        why = (f"this installed copy of score_models has no checkout, so nothing is trained implicitly "
               f"(artifact directory: {artifact_dir()})")
    return ArtifactError(
        f"Artifact {name!r} {problem}\n{why}. To get it: run `score-models artifacts build {name}`{hint}, or "
        f"set SCORE_MODELS_ARTIFACT_DIR to the artifacts/ folder of a score-models checkout, or set "
        f"SCORE_MODELS_ARTIFACTS=use to let this call train it."
    )


def cached(name: str, config: dict, build: Callable[[], Any], *, like: eqx.Module | None = None,
           directory: Path | None = None, about: str = "") -> eqx.Module:
    """The model stored as artifact `name` if its sidecar records `config`; otherwise the result
    of `build()`, saved first. Obeys `$SCORE_MODELS_ARTIFACTS` (see the module docstring).

    `build()` returns a model, or `(model, history)`, or `(model, history, metrics)`. `about`
    (for example "trains a U-Net, about 20 min on a laptop CPU") is added to the messages.
    The artifact directory is checked writable before `build()` runs.
    """
    current = mode()
    if current != "rebuild":
        found = check(name, config, directory=directory)
        if found.state == "ok":
            return load(name, like, config=config, directory=directory)
        if current == "require":
            raise _not_available(name, f"is {found.state}: {found.detail}.", f" ({about})" if about else "")
    d = ensure_writable(directory)
    reason = "SCORE_MODELS_ARTIFACTS=rebuild" if current == "rebuild" else f"it is {found.state}"
    warnings.warn(f"Training artifact {name!r} ({reason}){' - it ' + about if about else ''}; it will be "
                  f"saved in {d}.", ArtifactWarning, stacklevel=2)
    model, history, metrics = split_build_result(build())
    save(name, model, config, history=history, metrics=metrics, directory=directory)
    return model
