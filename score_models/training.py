"""`fit`: a training loop fused into one jitted `lax.scan` per chunk of steps."""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PRNGKeyArray, PyTree
from tqdm.auto import tqdm

from ._checks import check_positive_int

LossFn = Callable[[eqx.Module, PyTree, PRNGKeyArray], jax.Array]


def _check_data(data) -> int:
    """Checks every array in `data` shares the leading (example) axis; returns its length."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("`data` must hold at least one array of shape (n, ...).")
    sizes = set()
    for leaf in leaves:
        arr = np.asarray(leaf)
        if arr.ndim < 1:
            raise ValueError(f"`data` arrays must have a leading example axis; got a scalar.")
        sizes.add(arr.shape[0])
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(f"`data` contains {int(np.sum(~np.isfinite(arr)))} NaN or infinite value(s).")
    if len(sizes) != 1:
        raise ValueError(f"`data` arrays must share their leading axis; got lengths {sorted(sizes)}.")
    n = sizes.pop()
    if n == 0:
        raise ValueError("`data` is empty.")
    return n


def _chunk_size(steps: int, target: int) -> int:
    """The largest divisor of `steps` not above `target` (so every chunk has one shape), unless
    that is much smaller than `target`, in which case `target` (the remainder compiles once)."""
    target = max(1, min(steps, target))
    for c in range(target, 0, -1):
        if steps % c == 0:
            return c if c * 2 > target else target
    return target


def fit(
    model: eqx.Module,
    loss_fn: LossFn,
    data: PyTree,
    optimizer: optax.GradientTransformation,
    *,
    steps: int,
    key: PRNGKeyArray,
    batch_size: int | None = None,
    progress: bool = True,
    ema_decay: float | None = None,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> tuple[eqx.Module, dict[str, Any]]:
    """Trains `model` by minimising `loss_fn(model, batch, key)` with `optimizer`.

    Steps run inside one jitted `lax.scan` per chunk of `chunk_size` steps (no Python call per
    step); a tqdm bar shows the live loss between chunks. Each step draws `batch_size` examples
    with replacement (all of `data` when `batch_size` is None) from a key folded from `key` and
    the step number, so the result does not depend on the chunking.

    With several devices (`devices`, default `jax.devices()`), each batch is sharded over them
    along its example axis and the weights are replicated: data-parallel training, the same
    result as one device up to floating-point summation order.

    **Arguments:**

    - `model`: an equinox module; its inexact arrays are trained.
    - `loss_fn`: `(model, batch, key) -> scalar`.
    - `data`: an array `(n, ...)`, or a pytree of arrays sharing the leading axis.
    - `optimizer`: an optax gradient transformation.
    - `steps`: the number of optimisation steps.
    - `key`: PRNG key for batches and the loss's randomness.
    - `batch_size`: examples per step (None: full batch).
    - `progress`: show a progress bar.
    - `ema_decay`: if given, also keep an exponential moving average of the weights and return
      it as the model.
    - `chunk_size`: steps per compiled scan (default: about 50 progress updates per run).
    - `devices`: the devices to shard each batch over.
    - `checkpoint`: a file to save the training state to after every chunk (atomically) and
      to resume from when it exists. Since each step's randomness depends only on `key` and the
      step number, a resumed run ends exactly where an uninterrupted one would. The file is
      removed when training finishes.

    **Returns:** `(model, history)`: the trained model (the EMA if `ema_decay` is given) and a
    dict with `"loss"` (a `(steps,)` NumPy array), `"seconds"` and `"steps_per_second"`.

    Raises `FloatingPointError` naming the step when the loss becomes NaN or infinite.
    """
    steps = check_positive_int("steps", steps)
    n = _check_data(data)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"`ema_decay` must lie in (0, 1), got {ema_decay!r}.")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(f"`optimizer` must be an optax GradientTransformation, got {type(optimizer).__name__}.")
    chunk = _chunk_size(steps, steps // 50 or 1) if chunk_size is None else min(
        check_positive_int("chunk_size", chunk_size), steps)

    devices = list(jax.devices() if devices is None else devices)
    n_dev = len(devices)
    per_step = n if batch_size is None else batch_size
    if per_step % n_dev:
        raise ValueError(
            f"The batch ({per_step} examples) must split evenly over the {n_dev} devices; "
            f"choose `batch_size` as a multiple of {n_dev}."
        )
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))

    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    ema = params if ema_decay is not None else None
    data = jax.device_put(jax.tree.map(jnp.asarray, data), replicated)
    carry = jax.device_put((params, opt_state, ema), replicated)

    def loss_of_params(p, batch, k):
        return loss_fn(eqx.combine(p, static), batch, k)

    def step(data, carry, step_key):
        params, opt_state, ema = carry
        key_batch, key_loss = jax.random.split(step_key)
        if batch_size is None:
            batch = data
        else:
            idx = jax.random.randint(key_batch, (batch_size,), 0, n)
            batch = jax.tree.map(lambda a: a[idx], data)
        if n_dev > 1:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        loss, grads = jax.value_and_grad(loss_of_params)(params, batch, key_loss)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        if ema is not None:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
        return (params, opt_state, ema), loss

    @jax.jit
    def run_chunk(carry, data, step_numbers):
        # One compilation per chunk length (at most two: `chunk` and the remainder). `data` is
        # an argument, not a closure, so large datasets are not baked into the program.
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, step_numbers)
        return jax.lax.scan(lambda c, k: step(data, c, k), carry, keys)

    losses = np.empty(steps, dtype=np.float32)
    done = 0
    if checkpoint is not None and Path(checkpoint).exists():
        carry, done, losses = _load_checkpoint(Path(checkpoint), carry, losses, steps)
        carry = jax.device_put(carry, replicated)
    t0 = time.perf_counter()
    with tqdm(total=steps, initial=done, disable=not progress, desc="fit", unit="step", leave=False) as bar:
        while done < steps:
            length = min(chunk, steps - done)
            carry, chunk_losses = run_chunk(carry, data, jnp.arange(done, done + length))
            chunk_losses = np.asarray(chunk_losses)
            losses[done:done + length] = chunk_losses  # before the check: it reports the last finite loss
            bad = ~np.isfinite(chunk_losses)
            if bad.any():
                first = done + int(np.argmax(bad))
                raise FloatingPointError(
                    f"The loss became {chunk_losses[np.argmax(bad)]} at step {first} of {steps}; "
                    f"the last finite loss was {losses[first - 1] if first else float('nan'):.6g}. "
                    f"Try a smaller learning rate or check the data and loss."
                )
            done += length
            bar.update(length)
            bar.set_postfix(loss=f"{float(chunk_losses.mean()):.4g}")
            if checkpoint is not None and done < steps:
                _save_checkpoint(Path(checkpoint), carry, done, losses, steps)
    seconds = time.perf_counter() - t0
    if checkpoint is not None and Path(checkpoint).exists():
        Path(checkpoint).unlink()

    params, _, ema = carry
    trained = eqx.combine(ema if ema is not None else params, static)
    history = {"loss": losses, "seconds": seconds, "steps_per_second": steps / seconds}
    return trained, history


def _save_checkpoint(path: Path, carry, done: int, losses: np.ndarray, steps: int) -> None:
    """Atomically writes the training state after `done` steps."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, (carry, jnp.asarray(losses), jnp.asarray([done, steps])))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_checkpoint(path: Path, carry, losses: np.ndarray, steps: int):
    """Reads a state written by `_save_checkpoint` for the same model, optimiser and `steps`."""
    like = (carry, jnp.asarray(losses), jnp.zeros(2, jnp.int32))
    try:
        carry, saved_losses, counters = eqx.tree_deserialise_leaves(path, like)
    except Exception as e:
        raise ValueError(
            f"`checkpoint` {path} does not match this model and optimiser ({e}); delete it to start over."
        ) from e
    done, saved_steps = (int(c) for c in counters)
    if saved_steps != steps:
        raise ValueError(f"`checkpoint` {path} was written for steps={saved_steps}, not steps={steps}.")
    return carry, done, np.array(saved_losses)


def thin_history(loss: np.ndarray, max_points: int = 200) -> list[float]:
    """A loss curve averaged into at most `max_points` equal windows (for JSON sidecars)."""
    loss = np.asarray(loss, dtype=np.float64)
    window = max(1, math.ceil(loss.size / max_points))
    usable = loss[: loss.size - loss.size % window] if loss.size > window else loss
    if usable.size < window:
        return [float(usable.mean())]
    return [float(v) for v in usable.reshape(-1, window).mean(axis=1)]
