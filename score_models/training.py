"""`fit`: a training loop fused into one compiled loop per chunk of steps.

The chunk kernel `_train_chunk` is a module-level `eqx.filter_jit` function whose step range is
traced, so it compiles once per model structure, loss, optimiser and batch shape: every chunk
and every later `fit` call with the same ones (any `steps`, `key` or initial weights) reuses it.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PRNGKeyArray, PyTree
try:  # a widget bar in notebooks where ipywidgets is installed, a text bar everywhere else
    import ipywidgets  # noqa: F401  (tqdm.auto warns "IProgress not found" without it)
    from tqdm.auto import tqdm
except ImportError:
    from tqdm.std import tqdm

from ._checkpoint import Checkpoint, array_digest, program_digest, structure_digest
from ._checks import check_positive_int
from ._system import check_fits_in_memory

LossFn = Callable[[eqx.Module, PyTree, PRNGKeyArray], jax.Array]


# --------------------------------------------------------------------------- the compiled step


class _Step(eqx.Module):
    """One optimisation step. `_train_chunk` compiles once per distinct `_Step`: its functions
    are compared by identity, its arrays by shape and dtype."""

    static: Any  # the model's non-trainable part
    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    batch_size: int | None  # None: the whole of `data` every step
    ema_decay: float | None
    batch_sharding: NamedSharding | None  # None on one device

    def loss(self, params: PyTree, batch: PyTree, key: PRNGKeyArray) -> jax.Array:
        return self.loss_fn(eqx.combine(params, self.static), batch, key)

    def batch(self, data: PyTree, key: PRNGKeyArray) -> PyTree:
        if self.batch_size is None:
            batch = data
        else:
            n = jax.tree.leaves(data)[0].shape[0]
            idx = jax.random.randint(key, (self.batch_size,), 0, n)
            batch = jax.tree.map(lambda a: a[idx], data)
        if self.batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, self.batch_sharding)
        return batch

    def loss_and_grads(self, data: PyTree, params: PyTree, step_key: PRNGKeyArray) -> tuple[jax.Array, PyTree]:
        """The loss of step `step_key`'s batch and its gradient with respect to `params`."""
        key_batch, key_loss = jax.random.split(step_key)
        return jax.value_and_grad(self.loss)(params, self.batch(data, key_batch), key_loss)

    def update(self, carry: tuple, grads: PyTree) -> tuple:
        """`(params, opt_state, ema)` after one optimiser update with `grads`."""
        params, opt_state, ema = carry
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        if ema is not None:  # e <- decay * e + (1 - decay) * params
            ema = optax.incremental_update(params, ema, 1.0 - self.ema_decay)
        return params, opt_state, ema


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@eqx.filter_jit
def _train_chunk(step: _Step, carry: tuple, data: PyTree, key: PRNGKeyArray, first: jax.Array,
                 count: jax.Array, capacity: int) -> tuple[tuple, jax.Array, jax.Array]:
    """Steps `first, ..., first + count - 1` (`count <= capacity`, both traced) in one compiled
    loop. Step `t`'s key is `fold_in(key, t)`, so the result does not depend on the chunking.

    Each step's loss is computed before its update, so the loop runs once more without updating:
    its loss, on the next step's batch, is the loss after the chunk's last update (and catches
    a last update that blew the model up). Returns the new carry, the `(capacity + 1,)` losses
    (entry `count` is that last loss, NaN after it) and whether the weights (and their average)
    are all finite."""

    def body(i, state):
        carry, losses = state
        loss, grads = step.loss_and_grads(data, carry[0], jax.random.fold_in(key, first + i))
        # (Closures, not the bound method: `cond` hashes its branches, and a model's static part
        # need not be hashable.)
        carry = jax.lax.cond(i < count, lambda c, g: step.update(c, g), lambda c, g: c, carry, grads)
        return carry, losses.at[i].set(loss)

    losses = jnp.full(capacity + 1, jnp.nan, jnp.float32)
    carry, losses = jax.lax.fori_loop(0, count + 1, body, (carry, losses))
    params, _, ema = carry
    return carry, losses, _all_finite((params, ema))


# --------------------------------------------------------------------------- argument checks


def _check_data(data) -> int:
    """Checks every array in `data` shares the leading (example) axis; returns its length."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("`data` must hold at least one array of shape (n, ...).")
    sizes = set()
    for leaf in leaves:
        arr = np.asarray(leaf)
        if arr.ndim < 1:
            raise ValueError("`data` arrays must have a leading example axis; got a scalar.")
        if np.iscomplexobj(arr):
            raise ValueError(f"`data` must be real; got an array of dtype {arr.dtype}.")
        sizes.add(arr.shape[0])
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(f"`data` contains {int(np.sum(~np.isfinite(arr)))} NaN or infinite value(s).")
    if len(sizes) != 1:
        raise ValueError(f"`data` arrays must share their leading axis; got lengths {sorted(sizes)}.")
    n = sizes.pop()
    if n == 0:
        raise ValueError("`data` is empty.")
    return n


def _check_devices(devices, per_step: int) -> list:
    devices = jax.devices() if devices is None else devices
    if isinstance(devices, (str, bytes)) or not isinstance(devices, Sequence) or not devices or not all(
            isinstance(d, jax.Device) for d in devices):
        raise ValueError(f"`devices` must be a non-empty list of jax devices (e.g. jax.devices()), got {devices!r}.")
    if per_step % len(devices):
        raise ValueError(
            f"The batch ({per_step} examples) must split evenly over the {len(devices)} devices; "
            f"choose `batch_size` as a multiple of {len(devices)}."
        )
    return list(devices)


def _check_key(key) -> None:
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,)
    if not ((typed and key.shape == ()) or raw):
        raise ValueError(f"`key` must be one JAX PRNG key, such as jax.random.key(0); got {key!r}.")


def _check_options(model, loss_fn, optimizer, batch_size, ema_decay) -> None:
    if not jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)):
        raise ValueError(f"`model` must hold floating-point arrays to train (an equinox module); "
                         f"got {type(model).__name__} with none.")
    if not callable(loss_fn):
        raise ValueError(f"`loss_fn` must be callable as loss_fn(model, batch, key), got {type(loss_fn).__name__}.")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(f"`optimizer` must be an optax GradientTransformation, got {type(optimizer).__name__}.")
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if ema_decay is not None and (isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float))
                                  or not 0.0 < ema_decay < 1.0):
        raise ValueError(f"`ema_decay` must be a number in (0, 1), got {ema_decay!r}.")


class _Chunks:
    """How many steps each compiled call runs. With `chunk_size`, that many (and a checkpoint
    after each chunk); by default about `CHUNK_SECONDS` of training, measured as it goes (one
    compilation serves every length up to `MAX_CHUNK`), and a checkpoint every
    `CHECKPOINT_SECONDS`. A chunk runs at least `MIN_CHUNK` steps, so the extra pass that
    measures the last update's loss costs at most 5% of a slow model's training."""

    MAX_CHUNK = 1024
    MIN_CHUNK = 20  # each chunk runs one extra, update-free pass: at most 5% more work
    CHUNK_SECONDS = 1.0
    CHECKPOINT_SECONDS = 10.0

    def __init__(self, chunk_size: int | None):
        self.fixed = chunk_size
        self.capacity = max(chunk_size or 0, self.MAX_CHUNK)
        self.rate: float | None = None  # steps per second, after the first (compiling) chunk
        self.calls = 0
        self.last_save = time.perf_counter()

    def next(self, remaining: int) -> int:
        if self.fixed is not None:
            length = self.fixed
        elif self.rate is None:  # the first chunk compiles, the second measures
            length = 1 if self.calls == 0 else 4
        else:
            length = int(np.clip(self.rate * self.CHUNK_SECONDS, self.MIN_CHUNK, self.capacity))
        return min(length, remaining)

    def record(self, length: int, seconds: float) -> None:
        self.calls += 1
        if self.calls > 1:
            self.rate = length / max(seconds, 1e-9)

    def save_now(self) -> bool:
        if self.fixed is None and time.perf_counter() - self.last_save < self.CHECKPOINT_SECONDS:
            return False
        self.last_save = time.perf_counter()
        return True


def _loss_buffer(steps: int) -> np.ndarray:
    """The `(steps,)` loss history, refused up front when it cannot fit in memory."""
    check_fits_in_memory("steps", 4 * steps, f"the loss history of {steps} steps")
    try:
        return np.full(steps, np.nan, dtype=np.float32)
    except MemoryError as e:
        raise ValueError(f"`steps` is too large: the loss history of {steps} steps does not fit in memory.") from e


# --------------------------------------------------------------------------- the loop


def _call_chunk(step: _Step, carry, data, key, first: int, count: int, capacity: int, batch_shape) -> tuple:
    """One compiled chunk. An error while tracing (on a call's first chunk, before anything is
    compiled) becomes a ValueError naming `loss_fn` or `optimizer`, whichever failed."""
    try:
        return _train_chunk(step, carry, data, key, jnp.asarray(first), jnp.asarray(count), capacity)
    except (TypeError, ValueError) as e:
        params = carry[0]
        try:
            out = jax.eval_shape(step.loss, params, batch_shape, key)
        except (TypeError, ValueError) as loss_error:
            raise ValueError(
                f"`loss_fn` failed when called as loss_fn(model, batch, key) on a batch of `data` with shapes "
                f"{_shapes(batch_shape)}: {type(loss_error).__name__}: {loss_error}"
            ) from e
        if out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"`loss_fn` must return a float scalar; it returned {out.dtype}{list(out.shape)}.") from e
        raise ValueError(f"`optimizer`.update failed on this model's gradients: {type(e).__name__}: {e}") from e


def _shapes(tree) -> str:
    return str(jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", tree))


def _check_finite(losses: np.ndarray, start: int, length: int, weights_finite: bool, after: float) -> None:
    """Raises FloatingPointError naming the step when a chunk's losses, its weights or the loss
    after its last update are NaN or infinite."""
    steps, chunk, end = losses.size, losses[start:start + length], start + length - 1
    bad = ~np.isfinite(chunk)
    if bad.any():
        first = start + int(np.argmax(bad))
        last = f"{losses[first - 1]:.6g}" if first else "nan"
        raise FloatingPointError(
            f"The loss became {chunk[np.argmax(bad)]} at step {first} of {steps}; the last finite loss "
            f"was {last}. Try a smaller learning rate or check the data and loss."
        )
    if not weights_finite:
        raise FloatingPointError(
            f"The weights became NaN or infinite during steps {start}..{end} of {steps}, although every "
            f"loss was finite. Try a smaller learning rate or check the optimiser."
        )
    if not np.isfinite(after):
        raise FloatingPointError(
            f"The loss became {after} after the update of step {end} of {steps} (the last loss before it "
            f"was {losses[end]:.6g}). Try a smaller learning rate or check the optimiser."
        )


def _restart_clock(bar: tqdm, done: int) -> None:
    """Starts the bar's rate and time estimate after the first chunk, which includes compiling."""
    bar.reset(total=bar.total)
    bar.initial = bar.n = bar.last_print_n = done
    bar.set_description("fit")


def _run(step: _Step, carry, data, key, losses: np.ndarray, start: int, chunks: _Chunks, *,
         progress: bool, checkpoint: Checkpoint | None, batch_shape) -> tuple:
    """Trains from step `start` to the end, filling `losses`; returns the final carry."""
    steps, done = losses.size, start
    with tqdm(total=steps, initial=start, disable=not progress, desc="fit (compiling)", unit="step",
              leave=False) as bar:
        while done < steps:
            length, t0 = chunks.next(steps - done), time.perf_counter()
            carry, chunk_losses, finite = _call_chunk(step, carry, data, key, done, length, chunks.capacity,
                                                      batch_shape)
            chunk_losses = np.asarray(chunk_losses)
            losses[done:done + length], after = chunk_losses[:length], chunk_losses[length]
            chunks.record(length, time.perf_counter() - t0)
            _check_finite(losses, done, length, bool(finite), float(after))
            done += length
            if chunks.calls == 1:
                _restart_clock(bar, done)
            else:
                bar.update(length)
            bar.set_postfix(loss=f"{float(losses[done - length:done].mean()):.4g}")
            if checkpoint is not None and done < steps and chunks.save_now():
                checkpoint.save((carry, losses), done)
    return carry


def _replicated(devices: list) -> NamedSharding:
    return NamedSharding(Mesh(np.asarray(devices), ("data",)), PartitionSpec())


def _setup(model, loss_fn, data, optimizer, batch_size, ema_decay, devices) -> tuple:
    """The step, the initial carry `(params, opt_state, ema)`, the data on the devices and the
    shapes of one batch."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    mesh = Mesh(np.asarray(devices), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data")) if len(devices) > 1 else None
    step = _Step(static, loss_fn, optimizer, batch_size, ema_decay, sharding)
    data = jax.device_put(jax.tree.map(jnp.asarray, data), _replicated(devices))
    n = jax.tree.leaves(data)[0].shape[0]
    batch_shape = jax.tree.map(lambda a: jax.ShapeDtypeStruct((batch_size or n, *a.shape[1:]), a.dtype), data)
    carry = (params, optimizer.init(params), params if ema_decay is not None else None)
    return step, carry, data, batch_shape


def _run_fingerprint(step: _Step, params, opt_state, data, key, steps: int, batch_shape) -> dict:
    """What identifies a run, for its checkpoint (see `_checkpoint`)."""
    batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), batch_shape)
    return {
        "model": structure_digest(eqx.combine(params, step.static)),
        "initial_weights": array_digest(params),
        "optimizer": program_digest(step.optimizer.update, params, opt_state, params),
        "loss": program_digest(step.loss, params, batch, key),
        "data": array_digest(data),
        "key": array_digest(key),
        "steps": steps,
        "batch_size": step.batch_size,
        "ema_decay": step.ema_decay,
    }


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

    Steps run inside one compiled loop per chunk of steps (no Python call per step); a tqdm bar
    shows the live loss between chunks. Each step draws `batch_size` examples with replacement
    (all of `data` when `batch_size` is None) from a key folded from `key` and the step number,
    so the result does not depend on the chunking. The compiled loop is reused by every later
    call with the same model structure, loss function, optimiser object and batch shape.

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
    - `chunk_size`: steps per chunk (default: about one second of training per chunk).
    - `devices`: the devices to shard each batch over.
    - `checkpoint`: a file (any name) to save the training state to (atomically) every ten
      seconds, or after every chunk when `chunk_size` is given, and to resume from when it
      exists. Its folder is checked writable before training starts. The file records what run it belongs to
      (model, initial weights, optimiser, loss, data, key, steps) and a checksum; a damaged file
      or another run's is refused with a `ValueError` that says how to start over. A resumed
      run ends exactly where an uninterrupted one would. The file is removed when training
      finishes.

    **Returns:** `(model, history)`: the trained model (the EMA if `ema_decay` is given) and a
    dict with `"loss"` (a `(steps,)` NumPy array), `"seconds"` (this call's training time,
    compilation included), `"steps_per_second"` (the steps this call ran over those seconds)
    and `"resumed_from_step"` (0 unless resumed from a checkpoint).

    Raises `FloatingPointError` naming the step when the loss, or the weights, become NaN or
    infinite: `fit` never returns non-finite weights.
    """
    steps = check_positive_int("steps", steps)
    _check_options(model, loss_fn, optimizer, batch_size, ema_decay)
    _check_key(key)
    n = _check_data(data)
    chunks = _Chunks(None if chunk_size is None else check_positive_int("chunk_size", chunk_size))
    devices = _check_devices(devices, n if batch_size is None else batch_size)
    losses = _loss_buffer(steps)

    step, carry, data, batch_shape = _setup(model, loss_fn, data, optimizer, batch_size, ema_decay, devices)
    start, saved = 0, None
    if checkpoint is not None:
        saved = Checkpoint(checkpoint)  # checks the path before anything is traced
        params, opt_state, _ = carry
        resumed = saved.load((carry, losses), _run_fingerprint(step, params, opt_state, data, key, steps, batch_shape))
        if resumed is not None:
            (carry, losses), start = resumed
            losses = np.array(losses)
    carry = jax.device_put(carry, _replicated(devices))

    t0 = time.perf_counter()
    carry = _run(step, carry, data, key, losses, start, chunks, progress=progress, checkpoint=saved,
                 batch_shape=batch_shape)
    seconds = time.perf_counter() - t0
    if saved is not None:
        saved.remove()

    params, _, ema = carry
    trained = eqx.combine(ema if ema is not None else params, step.static)
    history = {"loss": losses, "seconds": seconds, "steps_per_second": (steps - start) / seconds,
               "resumed_from_step": start}
    return trained, history


def thin_history(loss: np.ndarray, max_points: int = 200) -> list[float]:
    """A loss curve averaged into at most `max_points` equal windows (for JSON sidecars)."""
    loss = np.asarray(loss, dtype=np.float64)
    window = max(1, math.ceil(loss.size / max_points))
    usable = loss[: loss.size - loss.size % window] if loss.size > window else loss
    if usable.size < window:
        return [float(usable.mean())]
    return [float(v) for v in usable.reshape(-1, window).mean(axis=1)]
