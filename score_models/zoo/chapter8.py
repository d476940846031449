"""Chapter 8 (one denoiser, many samplers): sample quality against the number of score
evaluations, for every sampler of the book, cached because the energy tests and the MNIST
sampling behind it take minutes.

- `sampler_quality_2d_exact`: the 2D Gaussian mixture with its exact score, so that only the
  samplers' discretisation error (and the start `N(0, sigma_max^2 I)`) separates their samples
  from the data;
- `sampler_quality_2d_learned`: the same with chapter 5's network `ncsn_2d_gaussians_continuous`;
- `mnist_ch8_<sampler>`: 1,000 MNIST samples of chapter 6's `mnist_unet` per sampler of
  `MNIST_SAMPLERS` (8-bit images), for the classifier's verdict in the chapter.

Each is a table (`QualityCurves`): one row per sampler and setting, with the score evaluations
per sample and the unbiased energy distance to exact data (`sm.metrics.energy_test` over
`draws` independent pairs of `n` samples) with its confidence interval. Every sampler starts
from the same noise (`sigma_max z`; `s(sigma_max) sigma_max z` for the VP SDE) and is compared
with the same data. `run_sampler` is the one place that calls the samplers, for the recipes and
the chapter.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .. import data as _data
from .. import metrics
from .._checks import check_positive_int
from ..models.config import register
from ..noise import geometric_sigmas
from ..samplers import (
    annealed_langevin,
    edm_sampler,
    edm_sigmas,
    predictor_corrector,
    probability_flow_ode,
    reverse_sde,
)
from ..samplers.result import SamplerResult
from ..sde import VPSDE
from . import chapter5, chapter6, load, recipe

__all__ = ["EXACT_CONFIG", "LEARNED_CONFIG", "MNIST_SAMPLERS", "ImageSet", "QualityCurves", "SAMPLERS", "curves",
           "mnist_set_name", "run_sampler", "sample_mnist"]

#: The samplers compared, each with the settings swept (the last entry is a list). Noise range
#: `[sigma_min, sigma_max]` of the config; samplers that end at `sigma_min` finish with Tweedie's
#: step there, the EDM schedules end with a step to 0 (which is that step).
SAMPLERS = {
    "annealed Langevin": {"kind": "annealed", "n_levels": 12, "eps": 1.25e-3,
                          "n_steps_each": [1, 3, 6, 12, 24, 48, 80]},
    "reverse SDE": {"kind": "reverse_sde", "n_steps": [17, 34, 69, 139, 279, 559, 999]},
    "predictor-corrector": {"kind": "predictor_corrector", "snr": 0.16, "n_steps": [8, 17, 34, 69, 139, 279, 499]},
    "DDPM (ancestral, VP)": {"kind": "ddpm", "n_steps": [17, 34, 69, 139, 279, 559, 999]},
    "PF-ODE (adaptive)": {"kind": "pf_ode", "tol": [0.3, 0.1, 0.03, 0.01, 1e-3, 1e-4]},
    "Euler (DDIM)": {"kind": "euler", "rho": 7.0, "n_levels": [9, 18, 35, 70, 140, 280]},
    "Heun": {"kind": "heun", "rho": 7.0, "n_levels": [5, 9, 13, 18, 35, 70, 140]},
    "Heun + churn": {"kind": "heun", "rho": 7.0, "churn": 10.0, "n_levels": [5, 9, 13, 18, 35, 70, 140]},
}

def _sweep_key(settings: dict) -> str:
    """The name of the swept setting (the one whose value is a list)."""
    (name,) = [k for k, v in settings.items() if isinstance(v, (list, tuple))]
    return name


# The 2D mixture's range: sigma_max = 40 makes N(0, sigma_max^2 I) the perturbed mixture to the
# accuracy the energy test resolves (chapter 5), sigma_min = 0.05 is the network's smallest level.
EXACT_CONFIG = {
    "dataset": "gaussians",
    "sigma_max": 40.0,
    "sigma_min": 0.05,
    "n": 2000,
    "draws": 8,
    "seed": 80,
    "samplers": SAMPLERS,
    "model": {"type": "QualityCurves", "n_rows": sum(len(s[_sweep_key(s)]) for s in SAMPLERS.values())},
}
LEARNED_CONFIG = {**EXACT_CONFIG, "score_model": "ncsn_2d_gaussians_continuous",
                  "score_model_config": chapter5.CONFIG, "seed": 81}

COLUMNS = ("sampler", "setting", "score_evals", "distance", "std_error", "ci_low", "ci_high")


@register
class QualityCurves(eqx.Module):
    """A cached table of sample quality: one row per sampler and setting, columns `COLUMNS`
    (the sampler's index in the config's `samplers`, the swept setting's value, score
    evaluations per sample, and the energy test's distance, standard error and interval)."""

    table: Float[Array, "rows 7"]

    def __init__(self, n_rows: int, *, key: PRNGKeyArray | None = None):
        self.table = jnp.zeros((n_rows, len(COLUMNS)), jnp.float32)


def run_sampler(kind: str, score_fn, z: Float[Array, "n *shape"], key: PRNGKeyArray, *, sigma_max: float,
                sigma_min: float, offset: float = 0.0, **setting) -> SamplerResult:
    """Runs one of the chapter's samplers from the standard normal noise `z`, started at
    `offset + sigma_max z` (scaled by `s(sigma_max)` for the VP SDE), and returns its
    `SamplerResult`. `kind` and `setting` as in `SAMPLERS` (one value for the swept setting)."""
    x_init = offset + sigma_max * z
    if kind == "annealed":
        sigmas = geometric_sigmas(sigma_max, sigma_min, setting["n_levels"])
        return annealed_langevin(score_fn, x_init, sigmas, key, eps=setting["eps"],
                                 n_steps_each=setting["n_steps_each"], denoise=True)
    if kind == "reverse_sde":
        return reverse_sde(score_fn, x_init, key, sigma_max=sigma_max, sigma_min=sigma_min,
                           n_steps=setting["n_steps"], denoise=True)
    if kind == "predictor_corrector":
        return predictor_corrector(score_fn, x_init, key, sigma_max=sigma_max, sigma_min=sigma_min,
                                   n_steps=setting["n_steps"], n_corrector=1, snr=setting["snr"], denoise=True)
    if kind == "ddpm":
        sde = VPSDE()
        return predictor_corrector(score_fn, sde.scale_at(sigma_max) * x_init, key, sigma_max=sigma_max,
                                   sigma_min=sigma_min, n_steps=setting["n_steps"], n_corrector=0, sde=sde,
                                   predictor="ancestral", denoise=True)
    if kind == "pf_ode":
        return probability_flow_ode(score_fn, x_init, sigma_max=sigma_max, sigma_min=sigma_min,
                                    rtol=setting["tol"], atol=setting["tol"], denoise=True)
    if kind in ("euler", "heun"):
        sigmas = edm_sigmas(setting["n_levels"], sigma_min, sigma_max, rho=setting["rho"])
        churn = setting.get("churn", 0.0)
        return edm_sampler(score_fn, x_init, sigmas, key if churn else None, method=kind, churn=churn)
    raise ValueError(f"Unknown sampler kind {kind!r}.")


def _quality(score_fn, config: dict) -> tuple[QualityCurves, dict]:
    n, draws = config["n"], config["draws"]
    key_z, key_ref, key_run = jax.random.split(jax.random.key(config["seed"]), 3)
    z = jax.random.normal(key_z, (draws * n, 2))
    reference = _data.dataset_2d(config["dataset"], key_ref, draws * n).reshape(draws, n, 2)
    rows, table = [], {}
    for index, (name, settings) in enumerate(config["samplers"].items()):
        sweep = _sweep_key(settings)
        fixed = {k: v for k, v in settings.items() if k not in ("kind", sweep)}
        table[name] = []
        for value in settings[sweep]:
            r = run_sampler(settings["kind"], score_fn, z, jax.random.fold_in(key_run, len(rows)),
                            sigma_max=config["sigma_max"], sigma_min=config["sigma_min"], **fixed, **{sweep: value})
            test = metrics.energy_test(r.samples.reshape(draws, n, 2), reference, n_permutations=0)
            row = (index, value, r.score_evals, test.distance, test.std_error, test.ci_low, test.ci_high)
            rows.append(row)
            table[name].append(dict(zip(COLUMNS[1:], row[1:])))
    model = QualityCurves(len(rows))
    model = eqx.tree_at(lambda m: m.table, model, jnp.asarray(np.asarray(rows, np.float64), jnp.float32))
    return model, {"table": table}


def curves(model: QualityCurves, config: dict) -> dict[str, dict[str, np.ndarray]]:
    """The table of a `QualityCurves` artifact as `{sampler: {column: (settings,) array}}`."""
    table = np.asarray(model.table, np.float64)
    out = {}
    for index, name in enumerate(config["samplers"]):
        rows = table[table[:, 0] == index]
        out[name] = {c: rows[:, j] for j, c in enumerate(COLUMNS) if c != "sampler"}
    return out


def exact_score_fn(config: dict):
    """The exact noise-conditional score of the config's dataset (the 2D mixture)."""
    if config["dataset"] != "gaussians":
        raise ValueError(f"Only the 2D Gaussian mixture has an exact score, got {config['dataset']!r}.")
    return _data.gaussian_mixture_2d().perturbed_score


@recipe("sampler_quality_2d_exact", chapter=8, config=EXACT_CONFIG,
        description="energy distance vs score evaluations of every sampler, 2D mixture, exact score")
def _build_exact(config):
    return _quality(exact_score_fn(config), config)


@recipe("sampler_quality_2d_learned", chapter=8, config=LEARNED_CONFIG,
        description="energy distance vs score evaluations of every sampler, 2D mixture, chapter 5's network")
def _build_learned(config):
    return _quality(load(config["score_model"]), config)


# ----------------------------------------------------------------------------------------
# MNIST: the same samplers on the chapter 6 U-Net (pixels in [0, 1], noise levels in pixel units)

#: Each sampler's setting on MNIST: chapter 6's annealed Langevin dynamics (its settings,
#: `chapter6.SAMPLERS["annealed"]`), and every sampler at about 35 evaluations. The SDE
#: samplers and annealed Langevin end at 0.02 with Tweedie's step; the EDM schedules run down to
#: 0.002 and end with the step to 0.
MNIST_SAMPLERS = {
    "annealed Langevin": {"kind": "annealed", **chapter6.SAMPLERS["annealed"]},
    "annealed Langevin, 35": {"kind": "annealed", "sigma_max": 16.0, "sigma_min": 0.02, "n_levels": 17,
                              "eps": 2.4e-4, "n_steps_each": 2},
    "reverse SDE": {"kind": "reverse_sde", "sigma_max": 16.0, "sigma_min": 0.02, "n_steps": 34},
    "predictor-corrector": {"kind": "predictor_corrector", "sigma_max": 16.0, "sigma_min": 0.02, "snr": 0.16,
                            "n_steps": 17},
    "DDPM (ancestral, VP)": {"kind": "ddpm", "sigma_max": 16.0, "sigma_min": 0.02, "n_steps": 34},
    "PF-ODE (adaptive)": {"kind": "pf_ode", "sigma_max": 16.0, "sigma_min": 0.02, "tol": 1e-3},
    "Euler (DDIM)": {"kind": "euler", "sigma_max": 16.0, "sigma_min": 0.002, "rho": 7.0, "n_levels": 35},
    "Heun": {"kind": "heun", "sigma_max": 16.0, "sigma_min": 0.002, "rho": 7.0, "n_levels": 18},
    "Heun + churn": {"kind": "heun", "sigma_max": 16.0, "sigma_min": 0.002, "rho": 7.0, "n_levels": 18,
                     "churn": 10.0},
}


def _default_chunk_size() -> int | None:
    """32 images per call on a CPU (a cache-sized batch runs the U-Net fastest per image there);
    all at once elsewhere."""
    return 32 if jax.default_backend() == "cpu" else None


def sample_mnist(model, key: PRNGKeyArray, n: int, *, sampler: str = "Heun", chunk_size: int | None | str = "auto",
                 **overrides) -> SamplerResult:
    """`n` MNIST samples `(n, 1, 28, 28)` (unclipped) of the noise-conditional `model` by one of
    `MNIST_SAMPLERS` (`overrides` replace its settings, e.g. `n_levels=10`), started at
    `model.data_mean + sigma_max z`. The images are sampled `chunk_size` at a time (`"auto"`:
    32 on a CPU), chunk `i` with key `fold_in(key, i)`, each chunk of one shape so the sampler
    compiles once. Returns a `SamplerResult` with `samples` and `score_evals` (no trajectory)."""
    if sampler not in MNIST_SAMPLERS:
        raise ValueError(f"`sampler` must be one of {sorted(MNIST_SAMPLERS)}, got {sampler!r}.")
    settings = dict(MNIST_SAMPLERS[sampler])
    unknown = sorted(set(overrides) - set(settings) - {"churn"})
    if unknown:
        raise ValueError(f"The {sampler!r} sampler takes {sorted(set(settings) - {'kind'})}; got unknown "
                         f"option(s) {unknown}.")
    settings.update(overrides)
    kind = settings.pop("kind")
    n = check_positive_int("n", n)
    chunk_size = _default_chunk_size() if chunk_size == "auto" else chunk_size
    chunk = n if chunk_size is None else min(check_positive_int("chunk_size", chunk_size), n)
    shape = tuple(getattr(model, "image_shape", (1, 28, 28)))
    offset = float(getattr(model, "data_mean", 0.0))
    n_chunks = -(-n // chunk)
    results = []
    for i in range(n_chunks):
        k = jax.random.fold_in(key, i) if n_chunks > 1 else key
        key_z, key_run = jax.random.split(k)
        z = jax.random.normal(key_z, (chunk, *shape))
        results.append(run_sampler(kind, model, z, key_run, offset=offset, **settings))
    samples = jnp.concatenate([r.samples for r in results])[:n]
    return SamplerResult(samples=samples, trajectory=None, trajectory_sigmas=None, samples_before_denoise=None,
                         score_evals=results[0].score_evals, n_diverged=sum(r.n_diverged for r in results),
                         stats={})


@register
class ImageSet(eqx.Module):
    """A cached set of 8-bit images `(n, 28, 28)`."""

    pixels: Array

    def __init__(self, n: int, *, key: PRNGKeyArray | None = None):
        self.pixels = jnp.zeros((n, 28, 28), jnp.uint8)


MNIST_N = 1000


def mnist_set_name(sampler: str) -> str:
    """The artifact holding chapter 8's MNIST samples of `sampler` (a key of `MNIST_SAMPLERS`)."""
    return "mnist_ch8_" + "_".join("".join(c if c.isalnum() else " " for c in sampler.lower()).split())


def _mnist_config(sampler: str) -> dict:
    from . import get

    return {"unet": get("mnist_unet").config, "sampler": sampler, "settings": MNIST_SAMPLERS[sampler],
            "n": MNIST_N, "seed": 8, "model": {"type": "ImageSet", "n": MNIST_N}}


def _build_mnist_set(config):
    import time

    unet = load("mnist_unet")
    t0 = time.perf_counter()
    r = sample_mnist(unet, jax.random.key(config["seed"]), config["n"], sampler=config["sampler"])
    pixels = jnp.round(jnp.clip(jax.block_until_ready(r.samples[:, 0]), 0.0, 1.0) * 255).astype(jnp.uint8)
    seconds = time.perf_counter() - t0
    model = eqx.tree_at(lambda m: m.pixels, ImageSet(config["n"]), pixels)
    return model, {"seconds": seconds}, {"score_evals": r.score_evals, "seconds": seconds,
                                         "images_per_second": config["n"] / seconds}


for _sampler in MNIST_SAMPLERS:
    recipe(mnist_set_name(_sampler), chapter=8, config=_mnist_config(_sampler),
           description=f"{MNIST_N} MNIST samples of mnist_unet by {_sampler} (8-bit)")(_build_mnist_set)
