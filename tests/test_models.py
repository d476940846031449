"""Score networks: shapes, input checks, the ensemble's member selection, configs."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_models.models import MLP, NoiseConditionalMLP, ScoreEnsemble, from_config, model_config
from score_models.models.mlp import log_sigma_embedding


def leaves(model):
    return jax.tree.leaves(eqx.filter(model, eqx.is_array))


def test_shapes():
    d = 2  # one dimension and width for every test here: each new shape costs compilations
    x = jnp.ones(d)
    assert MLP(d, 8, 1, key=jax.random.key(0))(x).shape == (d,)
    nc = NoiseConditionalMLP(d, 8, 1, key=jax.random.key(0))
    assert nc(x, 0.5).shape == (d,) and nc(x, jnp.float32(2.0)).shape == (d,)
    ens = ScoreEnsemble(lambda k: MLP(d, 8, 1, key=k), [2.0, 1.0], key=jax.random.key(0))
    assert ens(x, 1.0).shape == (d,) and ens.member_scores(x).shape == (2, d) and ens.n_members == 2
    batch = jnp.ones((5, d))
    assert jax.vmap(nc, in_axes=(0, None))(batch, 1.0).shape == (5, d)


def test_batched_input_is_rejected_with_a_clear_message():
    nc = NoiseConditionalMLP(2, 8, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`x` must be ONE example of shape \(2,\).*\(5, 2\).*vmap"):
        nc(jnp.ones((5, 2)), 1.0)
    with pytest.raises(ValueError, match="`sigma` must be a scalar"):
        nc(jnp.ones(2), jnp.ones(3))
    with pytest.raises(ValueError, match="`x` must be ONE example"):
        MLP(2, 8, 1, key=jax.random.key(0))(jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="`x` must be ONE example"):
        MLP(2, 8, 1, key=jax.random.key(0))(jnp.ones(3))


def test_noise_conditional_mlp_scaling():
    """With `scale_by_sigma`, the output is the unscaled network's divided by sigma; the input
    is rescaled by 1/sqrt(sigma^2 + data_std^2)."""
    kw = dict(width=8, depth=1, data_std=3.0, key=jax.random.key(1))
    scaled, raw = NoiseConditionalMLP(2, scale_by_sigma=True, **kw), NoiseConditionalMLP(2, scale_by_sigma=False, **kw)
    x = jnp.array([2.0, -1.0])
    for sigma in (0.1, 1.0, 10.0):
        np.testing.assert_allclose(scaled(x, sigma), raw(x, sigma) / sigma, rtol=1e-6)
    h = jnp.concatenate([x / jnp.sqrt(4.0 + 9.0), log_sigma_embedding(jnp.float32(2.0), 4)])
    np.testing.assert_allclose(raw(x, 2.0), raw.net(h), rtol=1e-6)
    emb = log_sigma_embedding(jnp.float32(np.e), 3)
    assert emb.shape == (7,) and float(emb[0]) == pytest.approx(1.0)


def test_ensemble_picks_the_member_nearest_in_log_sigma():
    sigmas = [8.0, 4.0, 2.0, 1.0]
    ens = ScoreEnsemble(lambda k: MLP(2, 8, 1, key=k), sigmas, data_std=2.0, key=jax.random.key(2))
    x = jnp.array([0.7, -0.2])
    rows = ens.member_scores(x)
    for i, s in enumerate(sigmas):
        np.testing.assert_allclose(ens(x, s), rows[i], rtol=1e-6)
        # Member i sees x / sqrt(sigma_i^2 + data_std^2) and its output is divided by sigma_i.
        np.testing.assert_allclose(rows[i], ens.member(i)(x / np.sqrt(s**2 + 4.0)) / s, rtol=1e-5)
    # 2.9 is nearer 2 on a linear scale but nearer 4 in log (log2 2.9 = 1.54): member 1.
    np.testing.assert_allclose(ens(x, 2.9), rows[1], rtol=1e-6)
    assert not np.allclose(rows[1], rows[2])
    np.testing.assert_allclose(ens(x, 100.0), rows[0], rtol=1e-6)
    np.testing.assert_allclose(ens(x, 0.01), rows[3], rtol=1e-6)
    # Members are independent (different initial weights), and work under jit with a traced sigma.
    jitted = jax.jit(lambda s: ens(x, s))
    np.testing.assert_allclose(jitted(2.9), rows[1], rtol=1e-6)


def test_ensemble_sigmas_are_not_trained():
    """Only the members' weights are inexact array leaves: `fit` must not move the sigmas."""
    ens = ScoreEnsemble(lambda k: MLP(2, 8, 1, key=k), [2.0, 1.0], key=jax.random.key(0))
    params = leaves(eqx.filter(ens, eqx.is_inexact_array))
    assert sum(p.size for p in params) == sum(p.size for p in leaves(ens.members))
    np.testing.assert_allclose(ens.sigmas, [2.0, 1.0])


def test_from_config_round_trip():
    cfg = model_config("NoiseConditionalMLP", dim=2, width=8, depth=1, data_std=2.5, scale_by_sigma=False)
    a = from_config(cfg, jax.random.key(3))
    b = NoiseConditionalMLP(2, 8, 1, data_std=2.5, scale_by_sigma=False, key=jax.random.key(3))
    assert type(a) is NoiseConditionalMLP and a.data_std == 2.5 and not a.scale_by_sigma
    assert all(np.array_equal(u, v) for u, v in zip(leaves(a), leaves(b)))
    assert eqx.tree_equal(from_config(cfg), from_config(cfg))  # default key: a fixed skeleton
    ens_cfg = model_config("ScoreEnsemble", member=model_config("MLP", dim=2, width=8, depth=1),
                           sigmas=[3.0, 1.0], data_std=2.0)
    ens = from_config(ens_cfg, jax.random.key(4))
    assert isinstance(ens, ScoreEnsemble) and ens.n_members == 2 and ens.data_std == 2.0
    np.testing.assert_allclose(ens.sigmas, [3.0, 1.0], rtol=1e-6)
    # Serialising one and loading into a fresh skeleton from the same config gives the model.
    import io

    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, ens)
    buf.seek(0)
    loaded = eqx.tree_deserialise_leaves(buf, from_config(ens_cfg))
    x = jnp.array([0.4, 0.1])
    assert np.array_equal(loaded(x, 1.0), ens(x, 1.0))


def test_config_errors():
    with pytest.raises(ValueError, match="`type`"):
        model_config("Transformer", dim=1)
    with pytest.raises(ValueError, match="Unknown model type"):
        from_config({"type": "Transformer"})
    with pytest.raises(ValueError, match="`config`"):
        from_config({"dim": 1})


@pytest.mark.parametrize("kwargs,name", [
    ({"dim": 0}, "dim"), ({"width": 0}, "width"), ({"depth": -1}, "depth"), ({"dim": 1.5}, "dim"),
    ({"data_std": 0.0}, "data_std"), ({"n_frequencies": 0}, "n_frequencies"),
])
def test_bad_hyperparameters(kwargs, name):
    args = {"dim": 1, "width": 4, "depth": 1, **kwargs}
    with pytest.raises(ValueError, match=f"`{name}`"):
        NoiseConditionalMLP(args.pop("dim"), args.pop("width"), args.pop("depth"), key=jax.random.key(0), **args)


def test_ensemble_rejects_bad_sigmas():
    with pytest.raises(ValueError, match="`sigmas`.*decreasing"):
        ScoreEnsemble(lambda k: MLP(1, 4, 1, key=k), [1.0, 2.0], key=jax.random.key(0))
    with pytest.raises(ValueError, match="`sigmas`.*positive"):
        ScoreEnsemble(lambda k: MLP(1, 4, 1, key=k), [1.0, -2.0], key=jax.random.key(0))
