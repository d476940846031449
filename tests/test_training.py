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
from score_models.training import _chunk_size, thin_history


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


def test_checkpoint_resumes_exactly(tmp_path):
    """A run stopped by a NaN in its 3rd chunk resumes from the checkpoint written after its
    2nd chunk and ends where an uninterrupted run would: w_t = w0 - lr t, loss_t = sum(w_t)."""
    ckpt = tmp_path / "state" / "fit.ckpt"
    w0, lr, steps = np.array([3.0, 1.0]), 0.25, 12
    args = dict(steps=steps, key=jax.random.key(0), progress=False, chunk_size=3, checkpoint=ckpt)

    def failing(model, batch, key):  # NaN from step 7 (w_0 = 3 - 0.25 t < 1.3)
        return jnp.sum(model.w) + jnp.where(model.w[0] < 1.3, jnp.nan, 0.0)

    with pytest.raises(FloatingPointError, match="step 7 of 12"):
        sm.fit(Linear(w0), failing, jnp.zeros((4, 1)), optax.sgd(lr), **args)
    assert ckpt.exists() and [p.name for p in ckpt.parent.iterdir()] == ["fit.ckpt"]
    with pytest.raises(ValueError, match="`checkpoint`"):  # a checkpoint of another run is refused
        sm.fit(Linear(w0), linear_loss, jnp.zeros((4, 1)), optax.sgd(lr), **{**args, "steps": 13})
    model, history = sm.fit(Linear(w0), linear_loss, jnp.zeros((4, 1)), optax.sgd(lr), **args)
    np.testing.assert_allclose(model.w, w0 - lr * steps, rtol=1e-6)
    np.testing.assert_allclose(history["loss"], [np.sum(w0 - lr * t) for t in range(steps)], rtol=1e-6)
    assert not ckpt.exists()


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
])
def test_bad_input_names_the_argument(kwargs, name):
    args = {"model": Linear([1.0]), "loss_fn": linear_loss, "data": jnp.zeros((4, 1)),
            "optimizer": optax.sgd(0.1), "steps": 3, "key": jax.random.key(0), "progress": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}`"):
        sm.fit(args.pop("model"), args.pop("loss_fn"), args.pop("data"), args.pop("optimizer"), **args)


def test_chunk_size_helper_and_thin_history():
    assert _chunk_size(100, 2) == 2 and _chunk_size(1000, 20) == 20 and _chunk_size(97, 10) == 10
    assert _chunk_size(5, 50) == 5
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
