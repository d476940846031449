"""`fit`: convergence, history, chunking, EMA, NaN detection, data parallelism, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import score_models as sm
from score_models._checkpoint import Checkpoint
from score_models.training import thin_history


class Linear(eqx.Module):
    """A parameter vector `w` whose loss `sum(w)` has a constant gradient, so under SGD the
    trajectory is known in closed form: `w_t = w_0 - lr * t`."""

    w: jax.Array

    def __init__(self, w0):
        self.w = jnp.asarray(w0, jnp.float32)


def linear_loss(model, batch, key):
    return jnp.sum(model.w) + 0.0 * jnp.mean(batch)


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(eqx.filter(a, eqx.is_array)), jax.tree.leaves(eqx.filter(b, eqx.is_array))
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def gaussian_data():
    return 1.0 + 2.0 * jax.random.normal(jax.random.key(0), (1000, 1))


def small_model():
    return sm.models.MLP(1, 16, 1, key=jax.random.key(1))


DSM = sm.losses.denoising_score_matching(1.0)


def test_loss_decreases_and_history(gaussian_data):
    """Explicit score matching against the true score of N(1, 2^2): the optimum is 0, so the
    loss must fall by orders of magnitude."""
    esm = sm.losses.explicit_score_matching(lambda x: -(x - 1.0) / 4.0)
    model, history = sm.fit(small_model(), esm, gaussian_data, optax.adam(1e-2), steps=300,
                            key=jax.random.key(2), batch_size=128, progress=False)
    loss = history["loss"]
    assert isinstance(loss, np.ndarray) and loss.shape == (300,) and np.all(np.isfinite(loss))
    assert loss[-50:].mean() < 0.02 * loss[:10].mean()
    assert float(esm(model, gaussian_data, None)) < 1e-3
    assert history["seconds"] > 0 and history["steps_per_second"] == pytest.approx(300 / history["seconds"])
    assert isinstance(model, sm.models.MLP)


def test_result_does_not_depend_on_chunk_size(gaussian_data):
    def run(chunk_size, key):
        return sm.fit(small_model(), DSM, gaussian_data, optax.adam(1e-2), steps=12, key=jax.random.key(key),
                      batch_size=32, progress=False, chunk_size=chunk_size)

    # None: the default, one step per chunk for so few steps; 5: chunks of 5, 5 and a remainder 2.
    (a, ha), (b, hb) = run(None, 3), run(5, 3)
    assert leaves_equal(a, b) and np.array_equal(ha["loss"], hb["loss"])
    # A different key gives a different result (the comparison can fail).
    other, _ = run(None, 4)
    assert not leaves_equal(other, a)


def test_full_batch_and_pytree_data():
    """`batch_size=None` uses all the data each step; a pytree of arrays is batched together."""
    x = jnp.linspace(-1, 1, 64)[:, None]
    y = 3.0 * x - 0.5

    def regression(model, batch, key):
        xb, yb = batch
        return jnp.mean((jax.vmap(model)(xb) - yb) ** 2)

    model, history = sm.fit(eqx.nn.Linear(1, 1, key=jax.random.key(0)), regression, (x, y),
                            optax.adam(optax.cosine_decay_schedule(0.1, 400)), steps=400,
                            key=jax.random.key(1), batch_size=None, progress=False)
    np.testing.assert_allclose(model.weight, [[3.0]], atol=1e-3)
    np.testing.assert_allclose(model.bias, [-0.5], atol=1e-3)


def test_ema_matches_closed_form():
    """SGD on a loss with a constant unit gradient: w_t = w0 - lr t, and the EMA
    e_t = d e_{t-1} + (1 - d) w_t with e_0 = w0."""
    w0, lr, decay, steps = np.array([1.0, -2.0]), 0.1, 0.9, 20
    plain, _ = sm.fit(Linear(w0), linear_loss, jnp.zeros((4, 1)), optax.sgd(lr), steps=steps,
                      key=jax.random.key(0), progress=False, chunk_size=7)
    ema_model, _ = sm.fit(Linear(w0), linear_loss, jnp.zeros((4, 1)), optax.sgd(lr), steps=steps,
                          key=jax.random.key(0), progress=False, chunk_size=7, ema_decay=decay)
    np.testing.assert_allclose(plain.w, w0 - lr * steps, rtol=1e-5)
    e = w0.copy()
    for t in range(1, steps + 1):
        e = decay * e + (1 - decay) * (w0 - lr * t)
    np.testing.assert_allclose(ema_model.w, e, rtol=1e-5)
    assert not np.allclose(ema_model.w, plain.w)


def test_nan_loss_names_the_step():
    """w_t = 3.5 - t: the loss turns NaN once w < 0, at step 4 (in the second chunk of 3)."""

    def loss(model, batch, key):
        return jnp.sum(model.w) + jnp.where(model.w[0] < 0, jnp.nan, 0.0)

    with pytest.raises(FloatingPointError, match=r"nan at step 4 of 10.*last finite loss was 0\.5"):
        sm.fit(Linear([3.5]), loss, jnp.zeros((4, 1)), optax.sgd(1.0), steps=10, key=jax.random.key(0),
               progress=False, chunk_size=3)


def test_infinite_loss_at_step_zero():
    with pytest.raises(FloatingPointError, match="at step 0 of 5"):
        sm.fit(Linear([1.0]), lambda m, b, k: jnp.sum(m.w) / 0.0, jnp.zeros((4, 1)), optax.sgd(1.0),
               steps=5, key=jax.random.key(0), progress=False)


class Interrupt(Exception):
    """Stands in for a kill right after a checkpoint was written."""


def interrupt_after_saves(monkeypatch, n_saves: int) -> None:
    """Makes `fit` die right after its `n_saves`-th checkpoint write."""
    real_save, count = Checkpoint.save, [0]

    def save(self, state, step):
        real_save(self, state, step)
        count[0] += 1
        if count[0] == n_saves:
            raise Interrupt(f"killed after step {step}")

    monkeypatch.setattr(Checkpoint, "save", save)


@pytest.mark.parametrize("name", ["state/fit.ckpt", "state/run1"])  # with and without a suffix
def test_checkpoint_resumes_exactly(tmp_path, monkeypatch, gaussian_data, name):
    """A run killed after its 2nd chunk resumes from the checkpoint and ends bit for bit where an
    uninterrupted run ends, with the same loss history; the rate counts only the resumed steps."""
    ckpt = tmp_path / name
    args = dict(steps=12, key=jax.random.key(3), batch_size=32, progress=False, chunk_size=3)
    opt = optax.adam(1e-2)
    reference, ref_history = sm.fit(small_model(), DSM, gaussian_data, opt, **args)

    with monkeypatch.context() as m:
        interrupt_after_saves(m, 2)
        with pytest.raises(Interrupt, match="after step 6"):
            sm.fit(small_model(), DSM, gaussian_data, opt, checkpoint=ckpt, **args)
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]  # no temp files left
    model, history = sm.fit(small_model(), DSM, gaussian_data, opt, checkpoint=ckpt, **args)
    assert leaves_equal(model, reference)
    np.testing.assert_array_equal(history["loss"], ref_history["loss"])
    assert history["resumed_from_step"] == 6 and ref_history["resumed_from_step"] == 0
    assert history["steps_per_second"] == pytest.approx(6 / history["seconds"])
    assert not ckpt.exists()


def interrupted_checkpoint(tmp_path, monkeypatch, data, **overrides):
    """A checkpoint left by a run (12 steps, chunks of 3) killed after step 3; returns its path
    and the run's arguments."""
    ckpt = tmp_path / "fit.ckpt"
    run = dict(model=small_model(), loss_fn=DSM, data=data, optimizer=optax.sgd(1e-3), steps=12,
               key=jax.random.key(0), batch_size=16, chunk_size=3, progress=False, checkpoint=ckpt)
    with monkeypatch.context() as m:
        interrupt_after_saves(m, 1)
        with pytest.raises(Interrupt):
            sm.fit(**run)
    assert ckpt.exists()
    return ckpt, run


@pytest.mark.parametrize("change,named", [
    (dict(optimizer=optax.sgd(1e-2)), "optimiser"),  # same optimiser type, another learning rate
    (dict(loss_fn=sm.losses.denoising_score_matching(0.5)), "loss function"),
    (dict(loss_fn=sm.losses.sliced_score_matching()), "loss function"),
    (dict(key=jax.random.key(1)), "key"),
    (dict(model=sm.models.MLP(1, 16, 1, key=jax.random.key(9))), "initial weights"),
    (dict(model=sm.models.MLP(1, 32, 1, key=jax.random.key(1))), "structure"),
    (dict(steps=13), "`steps`"),
    (dict(batch_size=32), "`batch_size`"),
])
def test_resuming_another_run_is_refused(tmp_path, monkeypatch, gaussian_data, change, named):
    ckpt, run = interrupted_checkpoint(tmp_path, monkeypatch, gaussian_data)
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=f"belongs to another run: .*{named}") as e:
        sm.fit(**{**run, **change})
    assert "saved at step 3 of 12" in str(e.value) and f"delete {ckpt}" in str(e.value)
    assert ckpt.read_bytes() == before  # the saved progress is kept


def test_resuming_on_other_data_is_refused(tmp_path, monkeypatch, gaussian_data):
    ckpt, run = interrupted_checkpoint(tmp_path, monkeypatch, gaussian_data)
    with pytest.raises(ValueError, match="belongs to another run: the data differs"):
        sm.fit(**{**run, "data": gaussian_data * 5 + 3})  # same shape, other values
    sm.fit(**run)  # the same run still resumes
    assert not ckpt.exists()


@pytest.mark.parametrize("damage", ["flip_weight", "truncate", "empty", "garbage_header", "step_counter"])
def test_damaged_checkpoint_is_refused(tmp_path, monkeypatch, gaussian_data, damage):
    ckpt, run = interrupted_checkpoint(tmp_path, monkeypatch, gaussian_data)
    raw = bytearray(ckpt.read_bytes())
    if damage == "flip_weight":
        raw[-5] ^= 0x01  # one mantissa bit of the last array
    elif damage == "truncate":
        raw = raw[: len(raw) - 100]
    elif damage == "empty":
        raw = bytearray()
    elif damage == "step_counter":  # a valid header that says another step
        raw = bytearray(bytes(raw).replace(b'"step": 3,', b'"step": 9,', 1))
        assert b'"step": 9,' in raw
    else:
        raw[30:40] = b"x" * 10
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"`checkpoint` {ckpt} (is damaged|has a damaged|is not a score-models)") as e:
        sm.fit(**run)
    assert f"delete {ckpt}" in str(e.value)


def test_checkpoint_path_problems_are_found_before_training(tmp_path):
    """A folder, or a path below a file, is refused before anything is traced or trained."""
    traced = []

    def loss(model, batch, key):
        traced.append(1)
        return DSM(model, batch, key)

    run = dict(steps=4, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match="is a folder; pass a file path"):
        sm.fit(small_model(), loss, jnp.zeros((8, 1)), optax.sgd(0.1), checkpoint=tmp_path, **run)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="folder of `checkpoint`.*is a file"):
        sm.fit(small_model(), loss, jnp.zeros((8, 1)), optax.sgd(0.1), checkpoint=tmp_path / "file" / "x.ckpt", **run)
    assert traced == []


def test_fit_compiles_once_for_the_same_structure_loss_optimizer_and_batch(gaussian_data):
    """The loss is traced once per compilation: calls with freshly initialised models of one
    structure, the same loss, optimiser and batch shape share it, whatever their `steps`, key
    or chunking; another batch size compiles anew."""
    traces = []

    def loss(model, batch, key):
        traces.append(batch.shape)
        return DSM(model, batch, key)

    opt = optax.adam(1e-3)
    a, _ = sm.fit(small_model(), loss, gaussian_data, opt, steps=10, key=jax.random.key(0), batch_size=32,
                  progress=False)
    assert traces and set(traces) == {(32, 1)}
    first = len(traces)
    b, _ = sm.fit(sm.models.MLP(1, 16, 1, key=jax.random.key(7)), loss, gaussian_data, opt, steps=25,
                  key=jax.random.key(1), batch_size=32, progress=False, chunk_size=4)
    assert len(traces) == first and not leaves_equal(a, b)  # nothing traced, so nothing compiled
    sm.fit(small_model(), loss, gaussian_data, opt, steps=10, key=jax.random.key(0), batch_size=16,
           progress=False)
    assert len(traces) > first and set(traces[first:]) == {(16, 1)}


@pytest.mark.parametrize("kwargs,name", [
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"chunk_size": -1}, "chunk_size"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"data": jnp.array([[0.0], [jnp.nan]])}, "data"),
    ({"data": (jnp.zeros((4, 1)), jnp.zeros((5, 1)))}, "data"),
    ({"data": jnp.zeros((0, 1))}, "data"),
    ({"optimizer": "adam"}, "optimizer"),
    ({"batch_size": 3, "devices": [jax.devices()[0]] * 2}, "batch_size"),
    ({"devices": []}, "devices"),
    ({"devices": "cpu"}, "devices"),
    ({"ema_decay": "0.9"}, "ema_decay"),
    ({"model": lambda x: -x}, "model"),
    ({"model": None}, "model"),
    ({"loss_fn": "dsm"}, "loss_fn"),
    ({"loss_fn": lambda m, b: jnp.sum(m.w)}, "loss_fn"),  # two arguments instead of three
    ({"loss_fn": lambda m, b, k: m.w * jnp.mean(b)}, "loss_fn"),  # a vector, not a scalar
    ({"data": jnp.zeros((4, 1), jnp.complex64)}, "data"),
    ({"key": 0}, "key"),
    ({"key": jax.random.split(jax.random.key(0), 2)}, "key"),
    ({"optimizer": optax.GradientTransformation(lambda p: (), lambda g, s, p: None)}, "optimizer"),
])
def test_bad_input_names_the_argument(kwargs, name):
    args = {"model": Linear([1.0]), "loss_fn": linear_loss, "data": jnp.zeros((4, 1)),
            "optimizer": optax.sgd(0.1), "steps": 3, "key": jax.random.key(0), "progress": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}`"):
        sm.fit(args.pop("model"), args.pop("loss_fn"), args.pop("data"), args.pop("optimizer"), **args)


def test_huge_steps_are_refused_up_front():
    with pytest.raises(ValueError, match="`steps` is too large"):
        sm.fit(Linear([1.0]), linear_loss, jnp.zeros((4, 1)), optax.sgd(0.1), steps=10**13,
               key=jax.random.key(0), progress=False)


def nan_from_update(n: int):
    """SGD whose learning rate turns NaN at update `n` (counting from 0)."""
    return optax.sgd(lambda count: jnp.where(count >= n, jnp.nan, 1e-3))


@pytest.mark.parametrize("optimizer,steps,ema_decay,message", [
    (optax.sgd(float("inf")), 1, None, "weights became"),        # the only update is infinite
    (nan_from_update(9), 10, None, "weights became"),            # only the last update is NaN: no loss sees it
    (nan_from_update(9), 10, 0.9, "weights became"),             # the same, returning the moving average
    (nan_from_update(4), 10, None, "weights became .* steps 0..4 of 10"),  # mid-run, the chunk's last update
    (optax.sgd(1e30), 1, None, "loss became inf after the update of step 0"),  # finite weights, the loss overflows
])
def test_non_finite_weights_are_never_returned(optimizer, steps, ema_decay, message):
    """Neither NaN/inf weights nor a model whose loss overflows after the last update."""
    model = Linear([1.0, 2.0])

    def loss(model, batch, key):  # sum(w^2): overflows float32 once |w| > 1.9e19
        return jnp.sum(model.w**2) + 0.0 * jnp.mean(batch)

    with pytest.raises(FloatingPointError, match=message):
        sm.fit(model, loss, jnp.zeros((4, 1)), optimizer, steps=steps, key=jax.random.key(0),
               progress=False, chunk_size=5, ema_decay=ema_decay)


def test_thin_history():
    assert thin_history(np.arange(10.0), 5) == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert len(thin_history(np.ones(1001), 200)) <= 200
    assert thin_history(np.array([2.0]), 200) == [2.0]


DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax, equinox as eqx
    import score_models as sm
    assert jax.device_count() == 2, jax.devices()
    data = 1.0 + 2.0 * jax.random.normal(jax.random.key(0), (1000, 1))
    sigmas = sm.geometric_sigmas(3.0, 0.3, 4)
    def run(devices):
        model = sm.models.NoiseConditionalMLP(1, 16, 1, data_std=2.0, key=jax.random.key(1))
        return sm.fit(model, sm.losses.multiscale_denoising_score_matching(sigmas), data,
                      optax.adam(1e-2), steps=20, key=jax.random.key(2), batch_size=64,
                      progress=False, devices=devices)
    two, h2 = run(None)
    one, h1 = run(jax.devices()[:1])
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(eqx.filter(two, eqx.is_array)), jax.tree.leaves(eqx.filter(one, eqx.is_array))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    try:
        run_odd = sm.fit(sm.models.MLP(1, 4, 1, key=jax.random.key(0)), sm.losses.denoising_score_matching(1.0),
                         data, optax.sgd(0.1), steps=2, key=jax.random.key(0), batch_size=63, progress=False)
    except ValueError as e:
        assert "`batch_size`" in str(e) and "2 devices" in str(e), e
    else:
        raise AssertionError("an odd batch over 2 devices was accepted")
    print("DATA PARALLEL OK")
""")


def test_data_parallel_over_two_host_devices_matches_one_device():
    """Sharding each batch over 2 (forced) host devices gives the single-device result up to
    summation order. XLA_FLAGS must be set before JAX starts, hence the subprocess."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", DATA_PARALLEL_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DATA PARALLEL OK" in proc.stdout


class ListNet(eqx.Module):
    """Layers in a list and a static list field, as `from_config` builds from JSON (lists)."""

    layers: list
    widths: list = eqx.field(static=True)

    def __init__(self, key):
        self.widths = [1, 8, 1]
        keys = jax.random.split(key, 2)
        self.layers = [eqx.nn.Linear(a, b, key=k) for a, b, k in zip(self.widths[:-1], self.widths[1:], keys)]

    def __call__(self, x):
        return self.layers[1](jnp.tanh(self.layers[0](x)))


def test_models_with_unhashable_parts_train_and_compile_once(gaussian_data):
    traces = []

    def loss(model, batch, key):
        traces.append(1)
        return DSM(model, batch, key)

    opt = optax.adam(1e-2)
    run = dict(steps=20, batch_size=32, progress=False, ema_decay=0.9)
    a, h = sm.fit(ListNet(jax.random.key(0)), loss, gaussian_data, opt, key=jax.random.key(1), **run)
    n = len(traces)
    b, _ = sm.fit(ListNet(jax.random.key(5)), loss, gaussian_data, opt, key=jax.random.key(1), **run)
    assert len(traces) == n and np.all(np.isfinite(h["loss"])) and not leaves_equal(a, b)
