"""Recipes for the models of chapter 2: the score of the running example at many noise levels.

Both models learn `grad log p_sigma`, the score of `data.running_example().perturbed(sigma)`, at
the ten levels of one geometric schedule from `sigma_max = 30` (the largest distance between
two modes, Song & Ermon's technique 1) down to `sigma_min = 0.1`, with multi-scale denoising
score matching (weight `sigma^2`):

- `noise_conditional_1d`: one `NoiseConditionalMLP` `s(x, sigma)`; each example in a batch draws
  its own level, so a level sees about `batch_size / L` examples per step.
- `ensemble_1d`: a `ScoreEnsemble` of ten independent `MLP`s, one per level, trained jointly in
  one vmapped loss; every member sees the whole batch at its own level.

Choices that matter (measured while writing the chapter): the input is rescaled by
`sqrt(sigma^2 + c^2)` with `c = 1` (the width of a mode), not the global standard deviation
(about 12), which squeezes each mode into a sliver of the input and leaves the small levels at
~50% error; a warmed-up, cosine-decayed Adam step of 3e-3; three hidden layers for the
noise-conditional network. Each recipe records, per level, the density-weighted relative error
and the relative error on a uniform grid over the gaps between the modes (`score_errors`).
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import data, losses, models
from ..noise import geometric_sigmas
from ..training import fit
from . import chapter1, recipe

#: The noise schedule shared by both models (a change makes both artifacts stale).
SIGMAS = {"schedule": "geometric", "sigma_max": 30.0, "sigma_min": 0.1, "n": 10}
DATA = {"dataset": "running_example", "n": 20_000, "seed": 0}
#: The input scale `c` in `x / sqrt(sigma^2 + c^2)`: one mode's standard deviation.
INPUT_SCALE = 1.0
#: Adam with a linear warm-up and a cosine decay to 1% of the peak step.
OPTIMIZER = {"name": "adam", "lr": 3e-3, "schedule": "warmup_cosine", "warmup_steps": 200,
             "final_lr_fraction": 0.01}
#: Fresh samples of `p_sigma` per level for the density-weighted error, and their seed.
N_EVAL = 20_000
EVAL_SEED = 2024
#: The low-density region of the running example (chapter 1's gaps between the modes).
GAPS = chapter1.GAPS


def sigmas(config: dict) -> jax.Array:
    """The descending noise levels a chapter-2 config describes, `(L,)` float32."""
    spec = config["sigmas"]
    if spec["schedule"] != "geometric":
        raise ValueError(f"`config['sigmas']['schedule']` must be 'geometric', got {spec['schedule']!r}.")
    return geometric_sigmas(spec["sigma_max"], spec["sigma_min"], spec["n"])


def training_data(config: dict) -> jax.Array:
    """The training samples a chapter-2 config describes, `(n, 1)`."""
    spec = config["data"]
    if spec["dataset"] != "running_example":
        raise ValueError(f"`config['data']['dataset']` must be 'running_example', got {spec['dataset']!r}.")
    return data.running_example().sample(jax.random.key(spec["seed"]), spec["n"])


def gap_grid(n_per_gap: int = 400) -> jax.Array:
    """A uniform grid over the gaps between the modes (`GAPS`), shape `(2 * n_per_gap, 1)`."""
    return jnp.concatenate([jnp.linspace(a, b, n_per_gap) for a, b in GAPS])[:, None]


@eqx.filter_jit
def _squared_errors(model, levels, key, grid, n: int):
    """Per level: mean squared error and mean squared true score, on `n` fresh samples of the
    perturbed mixture and on `grid` (one compiled call for all levels)."""
    gm = data.running_example()

    def one(sigma, k):
        target = gm.perturbed(sigma)
        out = []
        for x in (target.sample(k, n), grid):
            s = jax.vmap(model, in_axes=(0, None))(x, sigma)
            t = jax.vmap(target.score)(x)
            out += [jnp.mean(jnp.sum((s - t) ** 2, axis=-1)), jnp.mean(jnp.sum(t**2, axis=-1))]
        return jnp.stack(out)

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(levels.shape[0]))
    return jax.vmap(one)(levels, keys)


def score_errors(model, levels, *, n: int = N_EVAL, seed: int = EVAL_SEED) -> dict:
    """Per noise level `sigma` in `levels`, the relative error `E||s - grad log p_sigma||^2 /
    E||grad log p_sigma||^2` of `model(x, sigma)` against the exact score of
    `running_example().perturbed(sigma)`: density-weighted (on `n` fresh samples of the perturbed
    mixture; the same number as `metrics.score_error` on those samples) and on the gap grid.
    Lists, in the order of `levels`."""
    levels = jnp.asarray(levels, dtype=jnp.float32)
    e = np.asarray(_squared_errors(model, levels, jax.random.key(seed), gap_grid(), int(n)), dtype=np.float64)
    weighted, gaps = e[:, 0] / e[:, 1], e[:, 2] / e[:, 3]
    return {"sigmas": [float(s) for s in np.asarray(levels)], "relative_error": weighted.tolist(),
            "relative_error_gaps": gaps.tolist(), "max_relative_error": float(weighted.max())}


def _optimizer(config: dict) -> optax.GradientTransformation:
    spec = config["optimizer"]
    if spec["name"] != "adam" or spec["schedule"] != "warmup_cosine":
        raise ValueError(f"`config['optimizer']` must be a warmup_cosine adam, got {spec!r}.")
    lr = optax.warmup_cosine_decay_schedule(0.0, spec["lr"], spec["warmup_steps"], config["steps"],
                                            end_value=spec["lr"] * spec["final_lr_fraction"])
    return optax.adam(lr)


def _train(config: dict, levels):
    key_init, key_fit = jax.random.split(jax.random.key(config["seed"]))
    model = models.from_config(config["model"], key_init)
    loss_fn = losses.multiscale_denoising_score_matching(levels)
    cpu = time.process_time()
    model, history = fit(model, loss_fn, training_data(config), _optimizer(config),
                         steps=config["steps"], key=key_fit, batch_size=config["batch_size"])
    # CPU time of the process (all threads): unlike `seconds`, it does not grow when other jobs
    # share the machine.
    history["cpu_seconds"] = time.process_time() - cpu
    return model, history, score_errors(model, levels)


@recipe(
    "noise_conditional_1d",
    chapter=2,
    description="noise-conditional MLP s(x, sigma) on the running example, 10 geometric sigmas 30 -> 0.1",
    config={
        "data": DATA,
        "sigmas": SIGMAS,
        "model": models.model_config("NoiseConditionalMLP", dim=1, width=64, depth=3, n_frequencies=4,
                                     data_std=INPUT_SCALE),
        "loss": "multiscale_denoising_score_matching",
        "optimizer": OPTIMIZER,
        "steps": 3_000,
        "batch_size": 1_024,
        "seed": 1,
    },
)
def build_noise_conditional(config: dict):
    """Trains the noise-conditional network; returns `(model, history, score_errors(...))`."""
    return _train(config, sigmas(config))


def _ensemble_sigmas() -> list[float]:
    """`SIGMAS` as plain floats for the ensemble's model config (computed with NumPy, so that
    importing the zoo does not start JAX; equal to `geometric_sigmas` to float32 rounding)."""
    s = SIGMAS
    return [float(v) for v in np.geomspace(s["sigma_max"], s["sigma_min"], s["n"])]


@recipe(
    "ensemble_1d",
    chapter=2,
    description="one MLP per sigma (10 geometric sigmas 30 -> 0.1), trained jointly as a vmapped ensemble",
    config={
        "data": DATA,
        "sigmas": SIGMAS,
        "model": models.model_config("ScoreEnsemble", member=models.model_config("MLP", dim=1, width=32, depth=3),
                                     sigmas=_ensemble_sigmas(), data_std=INPUT_SCALE),
        "loss": "multiscale_denoising_score_matching",
        "optimizer": OPTIMIZER,
        "steps": 3_000,
        "batch_size": 512,
        "seed": 1,
    },
)
def build_ensemble(config: dict):
    """Trains the one-MLP-per-sigma ensemble; returns `(model, history, score_errors(...))`."""
    levels = sigmas(config)
    members = np.asarray(config["model"]["sigmas"], dtype=np.float32)
    if members.shape != levels.shape or not np.allclose(members, np.asarray(levels), rtol=1e-6):
        raise ValueError(f"`config['model']['sigmas']` {members} differ from the schedule {levels}.")
    # The loss trains member i at the ensemble's own sigma i; both models are evaluated at the
    # schedule's levels (the ensemble answers with the member nearest in log sigma).
    return _train(config, levels)
