"""Chapter 6 (MNIST): the recipes of its models and cached results, and how the chapter samples.

Both models train on the 60,000 images of MNIST's training split and are evaluated on the
10,000 of its test split; no test image is trained on. Each config records its data, so the
sidecar says exactly which images trained the model.

- `mnist_classifier`: the CNN that judges samples (`score_models.mnist`).
- `mnist_unet`: the noise-conditional U-Net, denoising score matching over a continuum of noise
  levels with EDM's preconditioning and noise distribution (Karras et al. 2022).
- `mnist_samples_<sampler>`: sample sets of the U-Net, one per sampler of `SAMPLERS`, stored as
  8-bit images, so the chapter evaluates them without sampling for minutes.
- `mnist_test_bits`: the bits per dimension of test images under the U-Net (probability-flow
  ODE, Hutchinson's estimator), per image and probe.

`sample` and `test_bits_per_dim` are the only places that call the library's samplers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from pathlib import Path
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from .. import artifacts, data, mnist
from .._checks import check_positive_int
from ..images import to_uint8
from ..models import from_config
from ..models.config import register
from ..models.unet import UNet
from ..noise import geometric_sigmas
from ..samplers import SamplerResult, annealed_langevin, log_likelihood, probability_flow_ode
from ..training import fit
from . import load, recipe

TRAIN = {"dataset": "mnist", "split": "train", "count": 60_000, "pixels": "[0, 1]"}
TEST = {"dataset": "mnist", "split": "test", "count": 10_000, "pixels": "[0, 1]"}


def mnist_split(spec: dict) -> tuple[Float[Array, "n 1 28 28"], Array]:
    """The images `(n, 1, 28, 28)` in [0, 1] and labels `(n,)` of the split a data spec like
    `TRAIN` names, checked against its count."""
    if spec.get("dataset") != "mnist" or spec.get("split") not in data.MNIST_SPLITS:
        raise ValueError(f"A data spec must name the mnist 'train' or 'test' split, got {spec!r}.")
    images, labels = data.mnist(spec["split"])
    if images.shape[0] != spec["count"]:
        raise ValueError(f"The spec {spec} promises {spec['count']} images; the split holds {images.shape[0]}.")
    return images, labels


def checkpoint_path(name: str, config: dict) -> Path:
    """Where training of artifact `name` checkpoints: `$SCORE_MODELS_CACHE/checkpoints/` (default
    `~/.cache/score_models/checkpoints/`), one file per config (its hash is in the name), so a
    changed recipe never resumes from another recipe's state."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(os.environ.get("SCORE_MODELS_CACHE", Path.home() / ".cache" / "score_models"))
    return root / "checkpoints" / f"{name}-{digest}.ckpt"


def _machine() -> dict:
    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "device_count": len(devices), "cpu_count": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "load_average_at_start": os.getloadavg()[0]}


def _schedule(opt: dict, steps: int):
    return optax.warmup_cosine_decay_schedule(0.0, opt["peak_lr"], opt["warmup_steps"], steps,
                                             end_value=opt["end_lr"])


# ----------------------------------------------------------------------------------------
# The classifier that measures sample quality

CLASSIFIER_CONFIG = {
    "data": TRAIN,
    "evaluated_on": TEST,
    "model": {"type": "Classifier", "channels": [16, 32], "n_features": 128, "n_classes": 10},
    "augment_max_shift": 2,
    "optimizer": {"name": "adam", "schedule": "warmup_cosine", "peak_lr": 2e-3, "warmup_steps": 100,
                  "end_lr": 2e-5},
    "steps": 2000,
    "batch_size": 128,
    "seed": 0,
}


def _shift(x, key, max_shift: int):
    """Translates ONE image by a random integer offset in [-max_shift, max_shift]^2 (MNIST's
    border is blank, so rolling is a translation)."""
    d = jax.random.randint(key, (2,), -max_shift, max_shift + 1)
    return jnp.roll(x, (d[0], d[1]), axis=(1, 2))


def classifier_loss(max_shift: int):
    """Cross-entropy of `model` on a batch `(images, labels)`, images randomly shifted."""

    def loss_fn(model, batch, key):
        x, y = batch
        if max_shift:
            x = jax.vmap(_shift, in_axes=(0, 0, None))(x, jax.random.split(key, x.shape[0]), max_shift)
        logits = jax.vmap(model)(x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    return loss_fn


def accuracy(model, images, labels, batch: int = 500) -> float:
    """The fraction of `images` that `model` classifies as `labels`."""
    p = mnist.predict_proba(model, images, batch=batch)
    return float(np.mean(np.argmax(p, axis=-1) == np.asarray(labels)))


@recipe("mnist_classifier", chapter=6, config=CLASSIFIER_CONFIG,
        description="CNN classifier measuring MNIST samples (60,000 training images; accuracy on the test split)")
def build_classifier(config):
    x, y = mnist_split(config["data"])
    x_test, y_test = mnist_split(config["evaluated_on"])
    k_model, k_fit = jax.random.split(jax.random.key(config["seed"]))
    model = from_config(config["model"], key=k_model)
    steps = config["steps"]
    machine = _machine()
    model, history = fit(model, classifier_loss(config["augment_max_shift"]), (x, y),
                         optax.adam(_schedule(config["optimizer"], steps)), steps=steps, key=k_fit,
                         batch_size=config["batch_size"])
    metrics = {
        "train_accuracy": accuracy(model, x, y),
        "test_accuracy": accuracy(model, x_test, y_test),
        "trained_on": {**config["data"]},
        "evaluated_on": {**config["evaluated_on"]},
        "training_seconds": history["seconds"],
        "training_images_per_second": steps * config["batch_size"] / history["seconds"],
        "machine": machine,
    }
    return model, history, metrics


# ----------------------------------------------------------------------------------------
# The score model and its loss

NOISE_DISTRIBUTIONS = ("ladder", "log_uniform", "log_normal")
WEIGHTINGS = ("sigma2", "edm")


def draw_sigmas(noise: dict, key: PRNGKeyArray, n: int) -> Float[Array, " n"]:
    """`n` training noise levels from the distribution a config's `"noise"` entry names:

    - `{"distribution": "ladder", "sigma_max", "sigma_min", "n"}`: uniform over `n` geometric
      levels (the discrete ladder of chapter 2);
    - `{"distribution": "log_uniform", "sigma_max", "sigma_min"}`: `log sigma` uniform;
    - `{"distribution": "log_normal", "log_mean", "log_std"}`: `log sigma ~ N(log_mean,
      log_std^2)` (Karras et al. 2022, who use -1.2 and 1.2 for data of std 0.5).
    """
    kind = noise.get("distribution")
    if kind == "ladder":
        ladder = geometric_sigmas(noise["sigma_max"], noise["sigma_min"], noise["n"])
        return ladder[jax.random.randint(key, (n,), 0, ladder.shape[0])]
    if kind == "log_uniform":
        lo, hi = math.log(noise["sigma_min"]), math.log(noise["sigma_max"])
        return jnp.exp(jax.random.uniform(key, (n,), minval=lo, maxval=hi))
    if kind == "log_normal":
        return jnp.exp(noise["log_mean"] + noise["log_std"] * jax.random.normal(key, (n,)))
    raise ValueError(f"`noise['distribution']` must be one of {NOISE_DISTRIBUTIONS}, got {kind!r}.")


def denoising_loss(noise: dict, *, weighting: str = "sigma2", sigma_data: float = 0.5,
                   dequantize: bool = False, label_dropout: float | None = None, null_label: int | None = None):
    """Denoising score matching for images over a distribution of noise levels:

        1/2 E_sigma E_{x, z} w(sigma) ||s(x + sigma z, sigma) + z / sigma||^2 / D

    with `sigma` drawn per image by `draw_sigmas(noise, ...)` and, per `weighting`,
    `w = sigma^2` (`"sigma2"`, Song & Ermon 2019) or `w = sigma^2 (sigma^2 + sigma_data^2) /
    sigma_data^2` (`"edm"`: EDM's `lambda(sigma)`, under which the preconditioned network's
    target has unit variance at every level). Divided by the number of pixels `D` so that the
    loss is O(1). With `dequantize`, each 8-bit training image `k/255` becomes `(k + u)/256`,
    `u ~ U[0, 1)` (the continuous data whose density `score_models.mnist.bits_per_dim` measures).

    Returns `loss_fn(model, batch, key)` for `fit`; `batch` is `(n, *shape)`. With
    `label_dropout=p` the model is class-conditional, `model(x, sigma, label)`, `batch` is
    `(images, labels)`, and each label is replaced by `null_label` ("no label") with probability
    `p` (Ho & Salimans 2022), so one network learns the conditional and the unconditional score
    that classifier-free guidance combines.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of {WEIGHTINGS}, got {weighting!r}.")
    draw_sigmas(noise, jax.random.key(0), 1)  # checks the distribution's name and entries now
    if label_dropout is not None:
        if isinstance(label_dropout, bool) or not 0.0 <= float(label_dropout) <= 1.0:
            raise ValueError(f"`label_dropout` must be a number in [0, 1], got {label_dropout!r}.")
        if isinstance(null_label, bool) or not isinstance(null_label, (int, np.integer)) or null_label < 0:
            raise ValueError(f"With `label_dropout`, `null_label` must be a non-negative integer, got {null_label!r}.")

    def loss_fn(model, batch, key):
        key_u, key_s, key_z = jax.random.split(key, 3)
        if label_dropout is None:
            x, labels = batch, None
        else:
            x, labels = batch
            key_u, key_d = jax.random.split(key_u)
            labels = jnp.where(jax.random.bernoulli(key_d, label_dropout, labels.shape), null_label, labels)
        if dequantize:
            x = (jnp.round(x * 255.0) + jax.random.uniform(key_u, x.shape, x.dtype)) / 256.0
        sigma = draw_sigmas(noise, key_s, x.shape[0]).astype(x.dtype)
        z = jax.random.normal(key_z, x.shape, x.dtype)
        sigma_b = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        s = jax.vmap(model)(x + sigma_b * z, sigma) if labels is None else jax.vmap(model)(x + sigma_b * z, sigma, labels)
        per_example = jnp.mean(((sigma_b * s + z) ** 2).reshape(x.shape[0], -1), axis=1)
        if weighting == "edm":
            per_example = per_example * (sigma**2 + sigma_data**2) / sigma_data**2
        return 0.5 * jnp.mean(per_example)

    return loss_fn


UNET_CONFIG = {
    "data": TRAIN,
    "model": {"type": "UNet", "image_shape": [1, 28, 28], "channels": [32, 64], "n_res": 1, "patch": 2,
              "attention": True, "emb_dim": 64, "n_frequencies": 8, "groups": 8,
              "data_mean": 0.13, "data_std": 0.31, "preconditioning": "edm"},
    "noise": {"distribution": "log_normal", "log_mean": -1.2, "log_std": 1.2},
    "loss": {"name": "denoising_loss", "weighting": "edm", "dequantize": True},
    "optimizer": {"name": "adam", "schedule": "warmup_cosine", "peak_lr": 2e-3, "warmup_steps": 200,
                  "end_lr": 1e-4},
    "ema_decay": 0.999,
    "steps": 5000,
    "batch_size": 64,
    "seed": 0,
}


def unet_loss(config: dict):
    """The training loss a U-Net config names. A config whose loss has a `"label_dropout"`
    trains a class-conditional model (`{"type": "ClassConditionalUNet", "unet": ..., "n_classes"}`)
    on `(images, labels)`, with the null label `n_classes`."""
    spec = config["loss"]
    if spec.get("name") != "denoising_loss":
        raise ValueError(f"`config['loss']['name']` must be 'denoising_loss', got {spec.get('name')!r}.")
    model = config["model"]
    conditional = spec.get("label_dropout") is not None
    unet = model["unet"] if conditional else model
    return denoising_loss(config["noise"], weighting=spec["weighting"], sigma_data=unet["data_std"],
                          dequantize=spec["dequantize"], label_dropout=spec.get("label_dropout"),
                          null_label=model["n_classes"] if conditional else None)


def train_unet(config: dict, *, checkpoint: Path | None = None, progress: bool = True):
    """Trains the U-Net a config describes (a class-conditional one, on images and labels, when
    its loss has a `"label_dropout"`); returns `(model, history, metrics)`."""
    x, y = mnist_split(config["data"])
    data = x if config["loss"].get("label_dropout") is None else (x, y)
    k_model, k_fit = jax.random.split(jax.random.key(config["seed"]))
    model = from_config(config["model"], key=k_model)
    steps = config["steps"]
    machine = _machine()
    resumed = checkpoint is not None and checkpoint.exists()
    t0 = time.perf_counter()
    model, history = fit(model, unet_loss(config), data, optax.adam(_schedule(config["optimizer"], steps)),
                         steps=steps, key=k_fit, batch_size=config["batch_size"], ema_decay=config["ema_decay"],
                         checkpoint=checkpoint, progress=progress)
    machine["load_average_at_end"] = os.getloadavg()[0]
    images = steps * config["batch_size"]
    metrics = {
        "trained_on": {**config["data"]},
        "training_images_seen": images,
        "epochs": images / config["data"]["count"],
        # After a resume, `seconds` covers only this process's share of the steps.
        "resumed_from_checkpoint": resumed,
        "training_seconds": history["seconds"],
        "training_images_per_second": None if resumed else images / history["seconds"],
        "wall_seconds": time.perf_counter() - t0,
        "final_loss_mean_last_200": float(np.mean(history["loss"][-200:])),
        "machine": machine,
    }
    return model, history, metrics


@recipe("mnist_unet", chapter=6, config=UNET_CONFIG,
        description="noise-conditional U-Net on the 60,000 MNIST training images, EDM preconditioning")
def build_unet(config):
    return train_unet(config, checkpoint=checkpoint_path("mnist_unet", config))


# The same recipe for a GPU (not built here: no GPU was available, so its time and quality are
# not measured): a U-Net at full resolution with three levels and two residual blocks per level,
# 40x the CPU recipe's training images. Train it with
#     pip install -e ".[cuda]"
#     python -c "from score_models.zoo import chapter6 as c; c.train_and_save('mnist_unet_gpu', c.GPU_UNET_CONFIG)"
# `fit` shards each batch over every GPU JAX sees; batch 256 splits evenly over 1, 2, 4 or 8.
GPU_UNET_CONFIG = {
    **UNET_CONFIG,
    "model": {**UNET_CONFIG["model"], "channels": [64, 128, 128], "n_res": 2, "patch": 1},
    "optimizer": {**UNET_CONFIG["optimizer"], "peak_lr": 1e-3, "warmup_steps": 1000},
    "ema_decay": 0.9999,
    "steps": 80_000,
    "batch_size": 256,
}


def train_and_save(name: str, config: dict) -> UNet:
    """Trains the U-Net `config` describes (resuming from its checkpoint) and saves it as
    artifact `name`; for configs that are not one of the book's recipes, such as
    `GPU_UNET_CONFIG`. Load it back with `sm.artifacts.load(name)`."""
    model, history, metrics = train_unet(config, checkpoint=checkpoint_path(name, config))
    artifacts.save(name, model, config, history=history, metrics=metrics)
    return model


# ----------------------------------------------------------------------------------------
# Sampling: the chapter's samplers and their settings

# The chapter's samplers and their settings (all noise levels in [0, 1] pixel units).
# "pf-ode": the probability-flow ODE by Heun's method on the noise levels of Karras et al.
#   (2022, eq. 5; rho = 7 crowds the steps at small sigma), then one Tweedie step: EDM's
#   deterministic sampler. 2 (n_levels - 1) + 1 score evaluations.
# "annealed": annealed Langevin dynamics (Song & Ermon 2019) on a geometric ladder, eps as in
#   chapter 3's step rule alpha_i = eps sigma_i^2 / sigma_L^2, then one Tweedie step.
SAMPLERS = {
    "pf-ode": {"sigma_max": 16.0, "sigma_min": 0.002, "n_levels": 18, "rho": 7.0},
    "annealed": {"sigma_max": 16.0, "sigma_min": 0.02, "n_levels": 20, "eps": 2.4e-4, "n_steps_each": 10},
}


def edm_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Float[Array, " n"]:
    """`n` noise levels from `sigma_max` down to `sigma_min`, equally spaced in `sigma^(1/rho)`
    (Karras et al. 2022, eq. 5). Descending, float32."""
    n = check_positive_int("n", n)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"`sigma_min` and `sigma_max` must satisfy 0 < sigma_min < sigma_max, "
                         f"got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}.")
    if not rho > 0:
        raise ValueError(f"`rho` must be positive, got {rho!r}.")
    t = np.linspace(0.0, 1.0, n)
    s = (sigma_max ** (1 / rho) + t * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    s[0], s[-1] = sigma_max, sigma_min
    return jnp.asarray(s, jnp.float32)


def sampler_sigmas(sampler: str, **options) -> Float[Array, " L"]:
    """The noise levels (descending) that `sample(..., sampler=sampler, **options)` visits."""
    opts = _sampler_options(sampler, options)
    if sampler == "pf-ode":
        return edm_sigmas(opts["n_levels"], opts["sigma_min"], opts["sigma_max"], opts["rho"])
    return geometric_sigmas(opts["sigma_max"], opts["sigma_min"], opts["n_levels"])


def _sampler_options(sampler: str, options: dict) -> dict:
    if sampler not in SAMPLERS:
        raise ValueError(f"`sampler` must be one of {sorted(SAMPLERS)}, got {sampler!r}.")
    unknown = sorted(set(options) - set(SAMPLERS[sampler]))
    if unknown:
        raise ValueError(f"The {sampler!r} sampler takes the options {sorted(SAMPLERS[sampler])}; got "
                         f"unknown option(s) {unknown}.")
    return {**SAMPLERS[sampler], **options}


def default_chunk_size() -> int | None:
    """Images per sampler call: 32 on a CPU, where a cache-sized batch runs the U-Net faster per
    image than hundreds at once; everything at once elsewhere."""
    return 32 if jax.default_backend() == "cpu" else None


def sample(model: UNet, key: PRNGKeyArray, n: int, *, sampler: str = "pf-ode",
           trajectory_every: int | None = None, chunk_size: int | None | str = "auto", **options) -> SamplerResult:
    """`n` samples `(n, 1, 28, 28)` from the noise-conditional U-Net `model`, as a `SamplerResult`.

    Starts from `N(data_mean, sigma_max^2 I)`, runs `sampler` (a key of `SAMPLERS`; `options`
    override its settings, unknown ones are an error) and ends with one Tweedie denoising step
    at the smallest level. `trajectory_every=k` also keeps the images every `k` Langevin steps
    (`"annealed"`) or at every `k`-th noise level (`"pf-ode"`), and the denoised result.

    The images are sampled `chunk_size` at a time (`"auto"`: `default_chunk_size()`; None: all
    at once), chunk `i` with key `fold_in(key, i)`; every chunk has the same shape, so the
    sampler compiles once. The samples are not clipped (`images.to_pixels` clips them).
    """
    if not isinstance(model, UNet):
        raise ValueError(f"`model` must be a UNet, got {type(model).__name__}.")
    n = check_positive_int("n", n)
    opts = _sampler_options(sampler, options)
    sigmas = sampler_sigmas(sampler, **options)
    chunk_size = default_chunk_size() if chunk_size == "auto" else chunk_size
    chunk = n if chunk_size is None else min(check_positive_int("chunk_size", chunk_size), n)
    every = None if trajectory_every is None else check_positive_int("trajectory_every", trajectory_every)
    sigma_max, sigma_min = float(sigmas[0]), float(sigmas[-1])

    if sampler == "annealed":
        def run(x0, k):
            return annealed_langevin(model, x0, sigmas, k, eps=opts["eps"], n_steps_each=opts["n_steps_each"],
                                     denoise=True, trajectory_every=every)
    else:
        controller = diffrax.StepTo(ts=sigmas)
        save = None if every is None else sigmas[::every]

        def run(x0, k):
            return probability_flow_ode(model, x0, sigma_max=sigma_max, sigma_min=sigma_min, solver=diffrax.Heun(),
                                        stepsize_controller=controller, save_sigmas=save, denoise=True)

    n_chunks = -(-n // chunk)
    runs = []
    for i in range(n_chunks):
        key_init, key_run = jax.random.split(jax.random.fold_in(key, i) if n_chunks > 1 else key)
        x0 = model.data_mean + sigma_max * jax.random.normal(key_init, (chunk, *model.image_shape))
        runs.append(run(x0, key_run))
    return _concatenate(runs, n)


def _concatenate(runs: list[SamplerResult], n: int) -> SamplerResult:
    """The results of the chunks as one, trimmed to `n` images."""
    first = runs[0]
    cat = lambda field, axis=0: None if getattr(first, field) is None else jnp.concatenate(  # noqa: E731
        [getattr(r, field) for r in runs], axis=axis)[(slice(None),) * axis + (slice(0, n),)]
    return SamplerResult(samples=cat("samples"), trajectory=cat("trajectory", 1),
                         trajectory_sigmas=first.trajectory_sigmas, samples_before_denoise=cat("samples_before_denoise"),
                         score_evals=first.score_evals, n_diverged=sum(int(r.n_diverged) for r in runs),
                         stats=first.stats)


# ----------------------------------------------------------------------------------------
# Cached results: sample sets and likelihoods


@register
class ResultArrays(eqx.Module):
    """Named arrays stored as an artifact: a chapter's cached results (sample sets, per-image
    likelihoods). `spec` maps each name to `[shape, dtype]`; the constructor makes zeros of
    that spec (the skeleton that `artifacts.load` reads the stored values into)."""

    arrays: dict

    def __init__(self, spec: dict, *, key: PRNGKeyArray | None = None):
        self.arrays = {name: jnp.zeros(tuple(shape), dtype) for name, (shape, dtype) in spec.items()}

    def filled(self, **arrays) -> "ResultArrays":
        """A copy holding `arrays` (same names, shapes and dtypes as the spec)."""
        for name, value in arrays.items():
            want = self.arrays.get(name)
            if want is None or np.shape(value) != want.shape or np.asarray(value).dtype != want.dtype:
                raise ValueError(f"Array {name!r} must match the spec {None if want is None else (want.shape, want.dtype)}, "
                                 f"got {np.shape(value)} {np.asarray(value).dtype}.")
        return eqx.tree_at(lambda r: r.arrays, self, {**self.arrays, **{k: jnp.asarray(v) for k, v in arrays.items()}})


SAMPLE_SETS = {
    name: {"unet": UNET_CONFIG, "sampler": name, "settings": SAMPLERS[name], "n": n, "seed": 1,
           "model": {"type": "ResultArrays", "spec": {"pixels": [[n, 28, 28], "uint8"]}}}
    for name, n in (("pf-ode", 2000), ("annealed", 1000))
}


def _build_sample_set(config):
    unet = load("mnist_unet")
    t0 = time.perf_counter()
    out = sample(unet, jax.random.key(config["seed"]), config["n"], sampler=config["sampler"], **config["settings"])
    pixels = to_uint8(jax.block_until_ready(out.samples))
    seconds = time.perf_counter() - t0
    skeleton = from_config(config["model"])
    metrics = {"seconds": seconds, "score_evals_per_image": out.score_evals, "machine": _machine()}
    return skeleton.filled(pixels=pixels), {"seconds": seconds}, metrics


def sample_set_name(sampler: str) -> str:
    """The artifact holding the cached sample set of `sampler`."""
    return "mnist_samples_" + sampler.replace("-", "_")


for _sampler, _config in SAMPLE_SETS.items():
    recipe(sample_set_name(_sampler), chapter=6, config=_config,
           description=f"{_config['n']} MNIST samples of mnist_unet by the {_sampler} sampler (8-bit)")(_build_sample_set)


# Bits per dimension of test images: the probability-flow ODE from sigma_min up to sigma_max
# (adaptive Tsit5), Hutchinson's estimator with one Rademacher probe per solve, `n_probes`
# independent solves per image; each image uniformly dequantized once. The images are a random
# subset of the test split (its first and last 5,000 images come from different writers, so the
# first 1,000 would not be representative); their indices are stored with the results.
TEST_BITS_CONFIG = {
    "unet": UNET_CONFIG,
    "data": TEST,
    "n_images": 1000,
    "n_probes": 2,
    "sigma_min": 0.002,
    "sigma_max": 16.0,
    "rtol": 1e-4,
    "atol": 1e-4,
    "chunk_size": 50,
    "seed": 2,
    "model": {"type": "ResultArrays", "spec": {"bits_per_dim": [[1000, 2], "float32"],
                                               "score_evals": [[20, 2], "int32"],
                                               "indices": [[1000], "int32"]}},
}


@recipe("mnist_test_bits", chapter=6, config=TEST_BITS_CONFIG,
        description="bits/dim of 1,000 random MNIST test images under mnist_unet (PF-ODE, Hutchinson, 2 probes)")
def build_test_bits(config):
    unet = load("mnist_unet")
    images, _ = data.mnist_uint8(config["data"]["split"])
    if images.shape[0] != config["data"]["count"]:
        raise ValueError(f"The spec {config['data']} promises {config['data']['count']} images; got {images.shape[0]}.")
    key_subset, key_bits = jax.random.split(jax.random.key(config["seed"]))
    indices = np.sort(np.asarray(jax.random.permutation(key_subset, images.shape[0])[:config["n_images"]]))
    t0 = time.perf_counter()
    bits, evals = test_bits_per_dim(unet, images[indices], key_bits, n_probes=config["n_probes"],
                                    sigma_min=config["sigma_min"], sigma_max=config["sigma_max"],
                                    rtol=config["rtol"], atol=config["atol"], chunk_size=config["chunk_size"])
    seconds = time.perf_counter() - t0
    skeleton = from_config(config["model"])
    ci = mnist.mean_with_ci(bits)
    metrics = {"seconds": seconds, "bits_per_dim": ci._asdict(), "mean_score_evals_per_solve": float(evals.mean()),
               "machine": _machine()}
    return skeleton.filled(bits_per_dim=bits, score_evals=evals, indices=indices.astype(np.int32)), \
        {"seconds": seconds}, metrics


def test_bits_per_dim(model: UNet, images_uint8, key: PRNGKeyArray, *, n_probes: int, sigma_min: float,
                      sigma_max: float, rtol: float, atol: float, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bits per dimension of 8-bit `images_uint8` `(n, 28, 28)` under the U-Net's
    probability-flow ODE: each image dequantized uniformly (`mnist.dequantize`), its
    log-density at `sigma_min` computed by `log_likelihood` (prior `N(data_mean, sigma_max^2 I)`,
    the distribution the samplers start from) with Hutchinson's estimator (one
    Rademacher probe per solve, `n_probes` solves with independent probes), and converted by
    `mnist.bits_per_dim`. Returns `(bits (n, n_probes), score_evals (chunks, n_probes))`."""
    x = np.asarray(images_uint8)
    n = x.shape[0]
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if n % chunk_size:
        raise ValueError(f"`chunk_size` ({chunk_size}) must divide the number of images ({n}).")
    key_deq, key_probe = jax.random.split(key)

    def prior_logp(y):  # the samplers' prior N(data_mean, sigma_max^2 I), for ONE image
        return jnp.sum(jax.scipy.stats.norm.logpdf(y, model.data_mean, sigma_max))

    y = mnist.dequantize(key_deq, x)[:, None]  # (n, 1, 28, 28) in [0, 1]
    bits = np.zeros((n, n_probes), np.float32)
    evals = np.zeros((n // chunk_size, n_probes), np.int32)
    for c in range(n // chunk_size):
        batch = jnp.asarray(y[c * chunk_size:(c + 1) * chunk_size])
        for p in range(n_probes):
            result = log_likelihood(model, batch, sigma_min=sigma_min, sigma_max=sigma_max, prior_logp=prior_logp,
                                    key=jax.random.fold_in(key_probe, c * n_probes + p),
                                    exact_divergence=False, n_probes=1, rtol=rtol, atol=atol)
            bits[c * chunk_size:(c + 1) * chunk_size, p] = mnist.bits_per_dim(result.log_prob, mnist.N_PIXELS)
            evals[c, p] = result.score_evals
    return bits, evals
