"""Recipes for the models of chapter 5: a noise-conditional MLP for the continuum of noise levels.

Chapter 5 reuses chapter 4's two-moons network (`ncsn_2d_moons`) and chapter 2's 1D network.
For the 2D Gaussian mixture it needs one more model, for two reasons measured while writing the
chapter:

- the probability-flow ODE is deterministic, so it cannot forget a wrong start: it needs
  `N(0, sigma_max^2 I)` to match `p_sigma_max`. Chapter 4's mixture network stops at
  `sigma_max = 10`, where the mixture's mean (0.4, 0) and variance (~108 per axis) still differ
  from the Gaussian's; even the exact score then misweights the components (the heaviest one
  gets ~0.29 instead of 0.30), which the energy distance sees. `sigma_max = 40` removes it.
- SDE and ODE solvers query the score at every sigma in between, not at the ten levels of a
  schedule, so (as in Song et al. 2021) each training example draws its noise level from a
  continuous distribution: `log sigma` uniform on `[log sigma_min, log sigma_max]`, with the
  usual weight `sigma^2` (`continuous_denoising_score_matching`).

The config also records the annealed Langevin settings the chapter uses with this network
(`"sampling"`); the build reports the energy distance of PF-ODE and annealed samples to fresh
data, next to its noise floor, and the mode weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import data as _data
from .. import metrics, models
from ..losses import continuous_denoising_score_matching
from ..noise import geometric_sigmas
from ..samplers import annealed_langevin, probability_flow_ode
from ..training import fit
from . import recipe

__all__ = ["CONFIG", "PF_TOL", "annealed_sigmas", "continuous_denoising_score_matching"]


CONFIG = {
    "dataset": "gaussians",
    "n_data": 100_000,
    "seed": 50,
    "model": models.model_config("NoiseConditionalMLP", dim=2, width=64, depth=3, n_frequencies=4,
                                 data_std=2.85),
    "sigmas": {"sigma_max": 40.0, "sigma_min": 0.05, "distribution": "log_uniform"},
    "loss": "continuous_denoising_score_matching",
    "optimizer": {"name": "adam", "learning_rate": 2e-3, "schedule": "cosine", "final_fraction": 0.01},
    "steps": 30_000,
    "batch_size": 512,
    "ema_decay": 0.999,
    # Annealed Langevin with this network: L geometric levels over the same range.
    "sampling": {"n_levels": 12, "eps": 1.25e-3, "n_steps_each": 40, "denoise": True},
}


# rtol = atol of the adaptive probability-flow ODE solver when chapter 5 samples (and the
# benchmark `pf_ode_vs_particle_loop` measures the chapter's setting with it).
PF_TOL = 1e-3


def annealed_sigmas(config: dict):
    """The annealed Langevin levels of the recipe, descending."""
    s = config["sigmas"]
    return geometric_sigmas(s["sigma_max"], s["sigma_min"], config["sampling"]["n_levels"])


def _build(config: dict):
    key_data, key_init, key_fit, key_eval = jax.random.split(jax.random.key(config["seed"]), 4)
    data = _data.dataset_2d(config["dataset"], key_data, config["n_data"])
    model = models.from_config(config["model"], key_init)
    s, opt = config["sigmas"], config["optimizer"]
    schedule = optax.cosine_decay_schedule(opt["learning_rate"], config["steps"], alpha=opt["final_fraction"])
    model, history = fit(model, continuous_denoising_score_matching(s["sigma_min"], s["sigma_max"]), data,
                         optax.adam(schedule), steps=config["steps"], key=key_fit,
                         batch_size=config["batch_size"], ema_decay=config["ema_decay"])
    # Sample quality at build time: 10 independent draws of 2,000 samples per sampler.
    key_init_x, key_al, key_metric = jax.random.split(key_eval, 3)
    x0 = s["sigma_max"] * jax.random.normal(key_init_x, (10 * 2000, 2), jnp.float32)
    sp = config["sampling"]
    samples = {
        "pf_ode": probability_flow_ode(model, x0, sigma_max=s["sigma_max"], sigma_min=s["sigma_min"],
                                       rtol=1e-3, atol=1e-3).samples,
        "annealed": annealed_langevin(model, x0, annealed_sigmas(config), key_al, eps=sp["eps"],
                                      n_steps_each=sp["n_steps_each"], denoise=sp["denoise"]).samples,
    }
    exact = lambda k, n: _data.dataset_2d(config["dataset"], k, n)  # noqa: E731
    out = {"final_loss": float(np.mean(history["loss"][-1000:]))}
    mixture = _data.gaussian_mixture_2d()
    for name, x in samples.items():
        report = metrics.distance_and_floor(metrics.energy_distance, list(x.reshape(10, 2000, 2)), exact,
                                            key_metric)
        out[f"{name}_energy_distance"] = report.distance
        out[f"{name}_energy_distance_floor"] = report.floor
        out[f"{name}_energy_distance_ratio"] = report.ratio
        out[f"{name}_mode_weights"] = metrics.mode_weights(x, mixture).tolist()
    return model, history, out


recipe("ncsn_2d_gaussians_continuous", chapter=5, config=CONFIG,
       description="noise-conditional MLP on the 2D Gaussian mixture, continuous log-uniform sigma in [0.05, 40]")(_build)
