"""The training checkpoints of `fit`: one file that says which run it belongs to.

A checkpoint is a magic line, a JSON header and a payload (`eqx.tree_serialise_leaves` of the
training state and loss history; never pickle):

    score-models fit checkpoint
    {"format": 1, "run": {...}, "step": 600, "steps": 4000, "payload_bytes": ..., "sha256": "..."}
    <payload bytes>

`sha256` covers the rest of the header and the payload, so no byte of the file can change
unnoticed (the step counter included).

The header's `run` fingerprints everything the result depends on: the model's structure and
initial weights, the optimiser's update rule (its traced program, learning rates included), the
loss (likewise), the data, the key, `steps`, `batch_size` and `ema_decay`. A checkpoint whose
fingerprint differs from the resuming call's, or whose payload fails its checksum, is refused
with a `CheckpointError` that says why and how to start over.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._files import atomic_write, check_writable

MAGIC = b"score-models fit checkpoint\n"
FORMAT = 1

# What each fingerprint entry means, in the words of an error message.
_FIELDS = {
    "model": "the model's structure",
    "initial_weights": "the model's initial weights",
    "optimizer": "the optimiser (its update rule or learning rate)",
    "loss": "the loss function",
    "data": "the data",
    "key": "the key",
    "steps": "`steps`",
    "batch_size": "`batch_size`",
    "ema_decay": "`ema_decay`",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: damaged, or written by another run."""


def _hasher(*parts: str) -> "hashlib._Hash":
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
    return h


def _update_with_arrays(h, tree: Any) -> None:
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if eqx.is_array(leaf):
            arr = np.asarray(leaf)
            h.update(f"{arr.shape}{arr.dtype}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())


def _without_addresses(text: str) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def array_digest(tree: Any) -> str:
    """sha256 of the shapes, dtypes and bytes of every array in `tree`."""
    h = _hasher()
    _update_with_arrays(h, tree)
    return h.hexdigest()


def structure_digest(tree: Any) -> str:
    """sha256 of `tree`'s structure (static fields included) and of its arrays' shapes and
    dtypes, not their values."""
    arrays, static = eqx.partition(tree, eqx.is_array)
    h = _hasher(_without_addresses(str(jax.tree.structure(static))),
                _without_addresses(repr(jax.tree.leaves(static))))
    for leaf in jax.tree.leaves(arrays):
        h.update(f"{leaf.shape}{leaf.dtype}".encode())
    return h.hexdigest()


def program_digest(fn, *args) -> str:
    """sha256 of the program `fn(*args)` traces to (its jaxpr, with its constants' values), so
    two functions that compute the same thing match and any change of code or constant (a
    learning rate, a noise level) does not."""
    closed = jax.make_jaxpr(fn)(*args)
    h = _hasher(_without_addresses(str(closed.jaxpr)))
    _update_with_arrays(h, closed.consts)
    return h.hexdigest()


def _checksum(header: dict, payload: bytes) -> str:
    """sha256 of the header (without its own checksum) and the payload."""
    rest = {k: v for k, v in header.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode() + b"\n" + payload).hexdigest()


def _describe_path(path: Path) -> str:
    return f"`checkpoint` {path}"


class Checkpoint:
    """The checkpoint file of one `fit` run. The path is checked when it is created; `load`
    binds it to a run's fingerprint, which `save` records."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.run: dict[str, Any] = {}
        if self.path.is_dir():
            raise CheckpointError(
                f"{_describe_path(self.path)} is a folder; pass a file path such as {self.path / 'fit.ckpt'}."
            )
        try:  # fail now, not after the first chunk of training
            check_writable(self.path.parent, "The folder of `checkpoint`")
        except OSError as e:
            raise CheckpointError(str(e)) from e

    def _start_over(self) -> str:
        return f"To start over from step 0, delete {self.path} or pass another `checkpoint` path."

    def _read(self) -> tuple[dict, bytes]:
        """The header and payload, checked against the header's checksum."""
        raw = self.path.read_bytes()
        end = raw.find(b"\n", len(MAGIC))
        if not raw.startswith(MAGIC) or end < 0:
            raise CheckpointError(
                f"{_describe_path(self.path)} is not a score-models checkpoint (or was written by an "
                f"older version, or is damaged). {self._start_over()}"
            )
        try:
            header = json.loads(raw[len(MAGIC):end])
            if not isinstance(header, dict):
                raise TypeError("the header is not a JSON object")
            payload = raw[end + 1:]
            ok = len(payload) == header["payload_bytes"] and _checksum(header, payload) == header["sha256"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{_describe_path(self.path)} has a damaged header ({e}). {self._start_over()}") from e
        if not ok:
            raise CheckpointError(
                f"{_describe_path(self.path)} is damaged: its contents do not match the checksum in its "
                f"header (truncated or altered). {self._start_over()}"
            )
        return header, payload

    def _check_same_run(self, header: dict) -> None:
        saved = header.get("run", {})
        differ = [label for field, label in _FIELDS.items() if saved.get(field) != self.run.get(field)]
        if not differ:
            return
        versions = ""
        if header.get("jax_version") != jax.__version__:
            versions = f" (it was written with JAX {header.get('jax_version')}, this is JAX {jax.__version__})"
        raise CheckpointError(
            f"{_describe_path(self.path)} belongs to another run: {', '.join(differ)} "
            f"{'differs' if len(differ) == 1 else 'differ'} from this call's{versions}. It was saved at step {header.get('step')} of {header.get('steps')}; resuming "
            f"would mix two runs. To resume it, call `fit` with the same model, loss, optimiser, data, key "
            f"and steps. {self._start_over()}"
        )

    def load(self, like: Any, run: dict[str, Any]) -> tuple[Any, int] | None:
        """`(state, step)` saved for the run with fingerprint `run`, `state` shaped like `like`;
        None when there is no checkpoint file. Raises `CheckpointError` for a damaged file or
        another run's."""
        self.run = run
        if not self.path.exists():
            return None
        header, payload = self._read()
        self._check_same_run(header)
        try:
            state = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
        except Exception as e:  # the checksum passed, so the layout itself changed
            raise CheckpointError(
                f"{_describe_path(self.path)} does not fit this run's training state ({e}). {self._start_over()}"
            ) from e
        return state, int(header["step"])

    def save(self, state: Any, step: int) -> None:
        """Atomically replaces the checkpoint by `state` after `step` steps."""
        from . import __version__

        buffer = io.BytesIO()
        eqx.tree_serialise_leaves(buffer, state)
        payload = buffer.getvalue()
        header = {
            "format": FORMAT,
            "run": self.run,
            "step": int(step),
            "steps": self.run.get("steps"),
            "payload_bytes": len(payload),
            "library_version": __version__,
            "jax_version": jax.__version__,
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        header["sha256"] = _checksum(header, payload)
        atomic_write(self.path, MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload)

    def remove(self) -> None:
        """Deletes the checkpoint file (when training has finished), and the temporary files of
        writes that were killed half-way (`atomic_write` names them `.NAME.*.tmp`)."""
        self.path.unlink(missing_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
