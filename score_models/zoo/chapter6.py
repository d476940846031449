"""Recipes for the models of chapter 6 (MNIST).

Only the MNIST *test* split ships with the book's data (`$SCORE_MODELS_DATA/mnist/`), so both
models are trained on its first 8,000 images (indices 0..7999) and images 8000..9999 are held
out: for the classifier's accuracy and as the real digits that samples are compared with. Each
config records the split and the index range, so the sidecar says exactly which images trained
the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import mnist as _mnist  # noqa: F401  (makes `sm.mnist` available)
from . import recipe

TRAIN = {"dataset": "mnist", "split": "test", "start": 0, "stop": 8000, "count": 8000, "pixels": "[0, 1]"}
HELD_OUT = {"dataset": "mnist", "split": "test", "start": 8000, "stop": 10000, "count": 2000, "pixels": "[0, 1]"}


def mnist_range(spec: dict):
    """The images `(n, 1, 28, 28)` in [0, 1] and labels `(n,)` that a data spec like `TRAIN`
    names (split and index range)."""
    from .. import data

    images, labels = data.mnist(spec["split"])
    start, stop = int(spec["start"]), int(spec["stop"])
    if not 0 <= start < stop <= images.shape[0]:
        raise ValueError(f"Data range {start}..{stop} lies outside the {images.shape[0]} {spec['split']} images.")
    if spec.get("count", stop - start) != stop - start:
        raise ValueError(f"Data spec {spec} has count {spec['count']} but range {start}..{stop}.")
    return images[start:stop], labels[start:stop]


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
    "held_out": HELD_OUT,
    "model": {"type": "Classifier", "channels": [16, 32], "n_features": 128, "n_classes": 10},
    "augment_max_shift": 2,
    "optimizer": {"name": "adam", "schedule": "warmup_cosine", "peak_lr": 2e-3, "warmup_steps": 100,
                  "end_lr": 2e-5},
    "steps": 1500,
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
    from ..mnist import predict_proba

    p = predict_proba(model, images, batch=batch)
    return float(np.mean(np.argmax(p, axis=-1) == np.asarray(labels)))


@recipe("mnist_classifier", chapter=6, config=CLASSIFIER_CONFIG,
        description="CNN classifier measuring MNIST samples (trained on test images 0..7999)")
def build_classifier(config):
    import score_models as sm

    x, y = mnist_range(config["data"])
    x_held, y_held = mnist_range(config["held_out"])
    key = jax.random.key(config["seed"])
    k_model, k_fit = jax.random.split(key)
    model = sm.models.from_config(config["model"], key=k_model)
    steps = config["steps"]
    machine = _machine()
    model, history = sm.fit(model, classifier_loss(config["augment_max_shift"]), (x, y),
                            optax.adam(_schedule(config["optimizer"], steps)), steps=steps, key=k_fit,
                            batch_size=config["batch_size"])
    images_per_second = steps * config["batch_size"] / history["seconds"]
    metrics = {
        "train_accuracy": accuracy(model, x, y),
        "held_out_accuracy": accuracy(model, x_held, y_held),
        "trained_on": {**config["data"]},
        "evaluated_on": {**config["held_out"]},
        "training_seconds": history["seconds"],
        "training_images_per_second": images_per_second,
        "machine": machine,
    }
    return model, history, metrics


# ----------------------------------------------------------------------------------------
# The score model

UNET_CONFIG = {
    "data": TRAIN,
    "model": {"type": "UNet", "image_shape": [1, 28, 28], "channels": [32, 64], "n_res": 1, "patch": 2,
              "attention": True, "emb_dim": 64, "n_frequencies": 8, "groups": 8,
              "data_mean": 0.13, "data_std": 0.31},
    # sigma_max ~ the largest distance between two training images (16.1 in [0, 1] pixels; Song &
    # Ermon 2020, technique 1); sigma_min well below one grey level's worth of structure.
    "sigmas": {"sigma_max": 16.0, "sigma_min": 0.02, "n": 20},
    "loss": "multiscale_denoising_score_matching",
    "optimizer": {"name": "adam", "schedule": "warmup_cosine", "peak_lr": 2e-3, "warmup_steps": 200,
                  "end_lr": 1e-4},
    "ema_decay": 0.998,
    "steps": 4000,
    "batch_size": 64,
    "seed": 0,
}


def unet_sigmas(config: dict = UNET_CONFIG):
    """The training noise levels of the `mnist_unet` recipe (descending)."""
    from ..noise import geometric_sigmas

    s = config["sigmas"]
    return geometric_sigmas(s["sigma_max"], s["sigma_min"], s["n"])


@recipe("mnist_unet", chapter=6, config=UNET_CONFIG,
        description="noise-conditional U-Net on MNIST (test images 0..7999), multi-scale DSM")
def build_unet(config):
    import score_models as sm

    x, _ = mnist_range(config["data"])
    key = jax.random.key(config["seed"])
    k_model, k_fit = jax.random.split(key)
    model = sm.models.from_config(config["model"], key=k_model)
    loss = sm.losses.multiscale_denoising_score_matching(unet_sigmas(config))
    steps = config["steps"]
    machine = _machine()
    checkpoint = checkpoint_path("mnist_unet", config)
    resumed = checkpoint.exists()
    t0 = time.perf_counter()
    model, history = sm.fit(model, loss, x, optax.adam(_schedule(config["optimizer"], steps)), steps=steps,
                            key=k_fit, batch_size=config["batch_size"], ema_decay=config["ema_decay"],
                            checkpoint=checkpoint)
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
