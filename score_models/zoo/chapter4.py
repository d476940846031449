"""Recipes for the models of chapter 4: one noise-conditional MLP per 2D dataset.

Each recipe trains `NoiseConditionalMLP(2, ...)` with multi-scale denoising score matching on a
geometric schedule of noise levels (Song & Ermon 2019), on a fixed draw of `n_data` points of
`sm.data.dataset_2d(dataset, ...)`. The config also records the annealed Langevin settings the
chapter samples with (`"sampling"`), and the build reports, as metrics, the energy distance of
annealed samples to fresh data next to its noise floor (2,000 samples, averaged over draws).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import data as _data
from .. import losses, metrics, models
from ..noise import geometric_sigmas
from ..samplers import annealed_langevin
from ..training import fit
from . import recipe


def _config(dataset: str, *, data_std: float, sigma_max: float, sigma_min: float, eps: float,
            n_steps_each: int, seed: int) -> dict:
    return {
        "dataset": dataset,
        "n_data": 100_000,
        "seed": seed,
        "model": models.model_config("NoiseConditionalMLP", dim=2, width=64, depth=3,
                                     n_frequencies=4, data_std=data_std),
        "sigmas": {"sigma_max": sigma_max, "sigma_min": sigma_min, "n": 10},
        "optimizer": {"name": "adam", "learning_rate": 2e-3, "schedule": "cosine",
                      "final_fraction": 0.01},
        "steps": 30_000,
        "batch_size": 256,
        "ema_decay": 0.999,
        "sampling": {"eps": eps, "n_steps_each": n_steps_each, "denoise": True},
    }


CONFIGS = {
    # Standardised two moons: per-axis std 1, largest pairwise distance about 3.9.
    "moons": _config("moons", data_std=1.0, sigma_max=4.0, sigma_min=0.02, eps=2e-4,
                     n_steps_each=30, seed=40),
    # Six components of std 0.4 on a circle of radius 4: std about 2.85, diameter about 10. Mass
    # must flow around the ring while the components separate, so it needs more steps per level.
    "gaussians": _config("gaussians", data_std=2.85, sigma_max=10.0, sigma_min=0.05, eps=8e-4,
                         n_steps_each=80, seed=41),
    # Circles of radii 2 and 1 (noise 0.1): std about 1.12, diameter about 4.6.
    "circles": _config("circles", data_std=1.12, sigma_max=5.0, sigma_min=0.02, eps=2e-4,
                       n_steps_each=30, seed=42),
}


def sigmas(config: dict):
    """The recipe's noise levels, descending."""
    s = config["sigmas"]
    return geometric_sigmas(s["sigma_max"], s["sigma_min"], s["n"])


def sample(model, config: dict, key, n: int):
    """`n` annealed Langevin samples `(n, 2)` from `model` with the recipe's sampler settings,
    started from `N(0, sigma_max^2 I)` (the `samples` of the sampler's result)."""
    key_init, key_run = jax.random.split(key)
    x0 = config["sigmas"]["sigma_max"] * jax.random.normal(key_init, (n, 2), jnp.float32)
    s = config["sampling"]
    return annealed_langevin(model, x0, sigmas(config), key_run, eps=s["eps"],
                             n_steps_each=s["n_steps_each"], denoise=s["denoise"]).samples


def _build(config: dict):
    key_data, key_init, key_fit, key_eval = jax.random.split(jax.random.key(config["seed"]), 4)
    data = _data.dataset_2d(config["dataset"], key_data, config["n_data"])
    model = models.from_config(config["model"], key_init)
    opt = config["optimizer"]
    schedule = optax.cosine_decay_schedule(opt["learning_rate"], config["steps"],
                                           alpha=opt["final_fraction"])
    model, history = fit(model, losses.multiscale_denoising_score_matching(sigmas(config)), data,
                         optax.adam(schedule), steps=config["steps"], key=key_fit,
                         batch_size=config["batch_size"], ema_decay=config["ema_decay"])
    # Sample quality at build time: 10 independent draws of 2,000 annealed samples.
    key_sample, key_metric = jax.random.split(key_eval)
    draws = list(sample(model, config, key_sample, 10 * 2000).reshape(10, 2000, 2))
    report = metrics.distance_and_floor(
        metrics.energy_distance, draws,
        lambda k, n: _data.dataset_2d(config["dataset"], k, n), key_metric)
    return model, history, {
        "final_loss": float(np.mean(history["loss"][-1000:])),
        "energy_distance": report.distance,
        "energy_distance_floor": report.floor,
        "energy_distance_ratio": report.ratio,
    }


_TITLES = {"moons": "two moons", "gaussians": "2D Gaussian mixture", "circles": "circles"}
for _name, _cfg in CONFIGS.items():
    recipe(f"ncsn_2d_{_name}", chapter=4, config=_cfg,
           description=f"noise-conditional MLP on the {_TITLES[_name]} (multi-scale DSM)")(_build)
