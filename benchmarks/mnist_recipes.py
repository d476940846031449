"""What each choice of chapter 6's U-Net recipe buys: short trainings that differ from
`score_models.zoo.chapter6.UNET_CONFIG` in one or two entries, each evaluated on 1,000 samples
of the probability-flow ODE with the chapter's classifier metrics.

    python -m benchmarks.mnist_recipes RUN            # train and evaluate one run of RUNS
    python -m benchmarks.mnist_recipes RUN --sampler annealed --options '{"n_steps_each": 5}'
                                                      # re-evaluate a trained run with another sampler

Each run takes 4-7 minutes on a 2-core CPU (run it under the shared CPU lock); it appends its
record to `benchmarks/mnist_recipes.json` (replacing an older record of the same run and sampler
settings), which chapter 6 reads. Trained weights go to `$SCORE_MODELS_CACHE/recipes/`.

Every evaluation uses the same reference: the classifier features of a random half of the test
split (permutation seed 0; the split's first and last 5,000 images come from different writers),
and the same sampling key, so rows are comparable. One training seed per run: differences
smaller than the KID intervals are not evidence of anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

RESULTS = Path(__file__).parent / "mnist_recipes.json"
N_SAMPLES = 1000
SAMPLE_KEY = 1

LADDER = {"_replace": True, "distribution": "ladder", "sigma_max": 16.0, "sigma_min": 0.02, "n": 20}

# name: (what it tests, overrides of UNET_CONFIG, pf-ode options). Equal steps (1,800 of batch 64)
# except R6, which trains for about the same wall time at batch 128.
RUNS = {
    "R0": ("noise prediction, ladder of 20 levels, weight sigma^2 (the book's first recipe)",
           {"steps": 1800, "model": {"preconditioning": "noise"}, "noise": LADDER,
            "loss": {"weighting": "sigma2", "dequantize": False}, "ema_decay": 0.998}, {"sigma_min": 0.02}),
    "R1": ("R0 + EDM preconditioning",
           {"steps": 1800, "noise": LADDER, "loss": {"weighting": "sigma2", "dequantize": False},
            "ema_decay": 0.998}, {"sigma_min": 0.02}),
    "R2": ("R1 + log-normal noise levels and EDM weighting",
           {"steps": 1800, "loss": {"dequantize": False}, "ema_decay": 0.998}, {}),
    "R3": ("R2 + uniform dequantization (the chapter's recipe, 1,800 steps)",
           {"steps": 1800, "ema_decay": 0.998}, {}),
    "R4": ("R3 with log-uniform noise levels and weight sigma^2",
           {"steps": 1800, "noise": {"_replace": True, "distribution": "log_uniform", "sigma_min": 0.002,
                                     "sigma_max": 16.0}, "loss": {"weighting": "sigma2"}, "ema_decay": 0.998}, {}),
    "R7": ("R3 with log-normal noise centred at log sigma = -1.7 (EDM's -1.2 rescaled to the data's std 0.31)",
           {"steps": 1800, "noise": {"log_mean": -1.7}, "ema_decay": 0.998}, {}),
    "R8": ("R3 with a wider U-Net (channels 48, 96) for fewer steps (1,000)",
           {"steps": 1000, "model": {"channels": [48, 96]}, "ema_decay": 0.997}, {}),
    "R6": ("R3 at batch 128 for about the same wall time (830 steps)",
           {"steps": 830, "batch_size": 128, "optimizer": {"warmup_steps": 100}, "ema_decay": 0.996}, {}),
}


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in recursively; a dict with `"_replace": True` replaces."""
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not v.get("_replace"):
            out[k] = merge(out[k], v)
        else:
            out[k] = {kk: vv for kk, vv in v.items() if kk != "_replace"} if isinstance(v, dict) else v
    return out


def reference_features(classifier):
    """Classifier features of the reference half of the test split (the chapter uses the same)."""
    from score_models import data, mnist

    x_test, _ = data.mnist("test")
    perm = np.random.default_rng(0).permutation(x_test.shape[0])
    return mnist.features(classifier, np.asarray(x_test)[perm[x_test.shape[0] // 2:]])


def evaluate(model, classifier, reference, sampler: str, options: dict) -> dict:
    from score_models import images, mnist
    from score_models.zoo import chapter6

    t0 = time.perf_counter()
    out = chapter6.sample(model, jax.random.key(SAMPLE_KEY), N_SAMPLES, sampler=sampler, **options)
    x = images.to_pixels(jax.block_until_ready(out.samples))
    seconds = time.perf_counter() - t0
    q = mnist.quality(classifier, x, reference)
    return {"sampler": sampler, "options": options, "n": N_SAMPLES, "score_evals": out.score_evals,
            "seconds": seconds, "confident": q["confident"], "min_class": q["min_class_fraction"],
            "max_class": q["max_class_fraction"], "frechet": q["frechet"], "kid": q["kid"]._asdict()}


def _record(entry: dict) -> None:
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []

    def same(r):
        return r["run"] == entry["run"] and r["eval"]["sampler"] == entry["eval"]["sampler"] and \
            r["eval"]["options"] == entry["eval"]["options"]

    if entry["training"] is None:  # re-evaluated weights: keep the training record of the run
        entry["training"] = next((r["training"] for r in rows if r["run"] == entry["run"] and r["training"]), None)
    rows = [r for r in rows if not same(r)] + [entry]
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, RESULTS)


def main(argv=None) -> None:
    import score_models as sm
    from score_models.zoo import chapter6

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", choices=sorted(RUNS))
    ap.add_argument("--sampler", default="pf-ode", choices=sorted(chapter6.SAMPLERS))
    ap.add_argument("--options", default=None, help="sampler options as JSON (default: the run's)")
    args = ap.parse_args(argv)
    about, overrides, pf_options = RUNS[args.run]
    config = merge(chapter6.UNET_CONFIG, overrides)
    weights = Path(os.environ.get("SCORE_MODELS_CACHE", Path.home() / ".cache" / "score_models")) / "recipes"
    weights.mkdir(parents=True, exist_ok=True)
    path = weights / f"{args.run}.eqx"
    training = None
    if path.exists():
        model = eqx.tree_deserialise_leaves(path, sm.models.from_config(config["model"]))
    else:
        model, history, metrics = chapter6.train_unet(config, progress=False)
        eqx.tree_serialise_leaves(path, model)
        m = metrics["machine"]
        training = {"seconds": metrics["training_seconds"], "images_per_second": metrics["training_images_per_second"],
                    "load_average": [m["load_average_at_start"], m["load_average_at_end"]],
                    "loss_last_200": metrics["final_loss_mean_last_200"],
                    "loss_curve": sm.training.thin_history(history["loss"], 50)}
    classifier = sm.zoo.load("mnist_classifier")
    options = json.loads(args.options) if args.options is not None else (pf_options if args.sampler == "pf-ode" else {})
    result = evaluate(model, classifier, reference_features(classifier), args.sampler, options)
    print(json.dumps(result))
    _record({"run": args.run, "about": about, "overrides": overrides, "config": config, "training": training,
             "eval": result})


if __name__ == "__main__":
    main()
