"""Recipes for the models of chapter 1: one small MLP per score-matching objective.

All four learn the score of the running example (`data.running_example()`) from the same 10,000
samples, with the same network, optimiser and number of steps; only the loss differs:

- `explicit_sm_1d`: explicit (oracle) score matching against the true score;
- `implicit_sm_1d`: implicit score matching (Hyvärinen 2005), exact Jacobian trace;
- `sliced_sm_1d`: sliced score matching (Song et al. 2019), one Gaussian projection;
- `denoising_sm_1d`: denoising score matching (Vincent 2011) at `sigma = 0.5`, whose minimiser
  is the score of the *perturbed* mixture `running_example().perturbed(0.5)`.

The MLP sees `x` unscaled: the data live on [-20, 20], and with one input, SiLU activations and
a width-64 network the default initialisation copes; a cosine-decayed Adam step of 3e-3 trains
each model in 2,000 steps. Each recipe also records the chapter's two error measures (see
`score_errors`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .. import data, losses, metrics, models
from ..training import fit
from . import recipe

# The shared part of every chapter-1 config (a change here makes all four artifacts stale).
DATA = {"dataset": "running_example", "n": 10_000, "seed": 0}
MODEL = models.model_config("MLP", dim=1, width=64, depth=2)
OPTIMIZER = {"name": "adam", "lr": 3e-3, "schedule": "cosine", "final_lr_fraction": 0.01}
STEPS = 2_000
BATCH_SIZE = 512
SEED = 1

#: The noise level of the denoising model.
DSM_SIGMA = 0.5
#: The low-density region of the running example: uniform grids over the two gaps between the
#: modes, every point at least 4 standard deviations from every mean.
GAPS = ((-11.0, -4.0), (4.0, 11.0))


def training_data(config: dict) -> jax.Array:
    """The training samples a chapter-1 config describes, `(n, 1)`."""
    spec = config["data"]
    if spec["dataset"] != "running_example":
        raise ValueError(f"`config['data']['dataset']` must be 'running_example', got {spec['dataset']!r}.")
    # Jitted: one compiled sampler instead of many small eager operations (same samples).
    return eqx.filter_jit(data.running_example().sample)(jax.random.key(spec["seed"]), spec["n"])


def gap_grid(n_per_gap: int = 400) -> jax.Array:
    """A uniform grid over the gaps between the modes (`GAPS`), shape `(2 * n_per_gap, 1)`."""
    return jnp.concatenate([jnp.linspace(a, b, n_per_gap) for a, b in GAPS])[:, None]


def score_errors(model, target, *, n: int = 10_000, seed: int = 123) -> dict:
    """The chapter's two error measures of `model` against the mixture `target` (whose score it
    should learn): the density-weighted relative error on `n` samples of `target`, and the
    relative error and MSE on the gap grid."""
    # `score_error` runs compiled by itself. The samples stay drawn inside one jitted call, as
    # when the artifacts recorded these numbers (a fused kernel rounds `mean + std * z` as one
    # fused multiply-add, unlike `target.sample` on its own).
    samples = eqx.filter_jit(target.sample)(jax.random.key(seed), n)
    high = metrics.score_error(model, target.score, samples)
    low = metrics.score_error(model, target.score, gap_grid())
    return {"relative_error_high_density": high.relative, "relative_error_gaps": low.relative,
            "mse_high_density": high.mse, "mse_gaps": low.mse}


def _optimizer(config: dict) -> optax.GradientTransformation:
    spec = config["optimizer"]
    lr = optax.cosine_decay_schedule(spec["lr"], config["steps"], alpha=spec["final_lr_fraction"])
    return optax.adam(lr)


def _train(config: dict, loss_fn, target):
    key_init, key_fit = jax.random.split(jax.random.key(config["seed"]))
    model = models.from_config(config["model"], key_init)
    model, history = fit(model, loss_fn, training_data(config), _optimizer(config),
                         steps=config["steps"], key=key_fit, batch_size=config["batch_size"])
    return model, history, score_errors(model, target)


def _config(loss: dict) -> dict:
    return {"data": DATA, "model": MODEL, "loss": loss, "optimizer": OPTIMIZER, "steps": STEPS,
            "batch_size": BATCH_SIZE, "seed": SEED}


@recipe("explicit_sm_1d", chapter=1,
        description="MLP score of the running example, explicit (oracle) score matching",
        config=_config({"name": "explicit_score_matching"}))
def build_explicit(config):
    gm = data.running_example()
    return _train(config, losses.explicit_score_matching(gm.score), gm)


@recipe("implicit_sm_1d", chapter=1,
        description="MLP score of the running example, implicit (Hyvärinen) score matching",
        config=_config({"name": "implicit_score_matching"}))
def build_implicit(config):
    return _train(config, losses.implicit_score_matching(), data.running_example())


@recipe("sliced_sm_1d", chapter=1,
        description="MLP score of the running example, sliced score matching (1 Gaussian projection, VR)",
        config=_config({"name": "sliced_score_matching", "n_projections": 1,
                        "variance_reduction": True, "distribution": "gaussian"}))
def build_sliced(config):
    spec = config["loss"]
    loss_fn = losses.sliced_score_matching(spec["n_projections"],
                                           variance_reduction=spec["variance_reduction"],
                                           distribution=spec["distribution"])
    return _train(config, loss_fn, data.running_example())


@recipe("denoising_sm_1d", chapter=1,
        description="MLP score of the running example perturbed at sigma=0.5, denoising score matching",
        config=_config({"name": "denoising_score_matching", "sigma": DSM_SIGMA}))
def build_denoising(config):
    sigma = config["loss"]["sigma"]
    return _train(config, losses.denoising_score_matching(sigma),
                  data.running_example().perturbed(sigma))
