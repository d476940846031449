"""Recipes for the models of chapter 7 (controllable generation).

In 2D, the data are three overlapping Gaussian classes (`classes_2d`), whose class posterior
under noise is exact (`GaussianMixture.class_log_posterior`):

- `guide_2d_classifier`: a noise-conditional classifier `c(x, sigma)` trained on the levels the
  chapter's sampler visits (classifier guidance);
- `guide_2d_conditional`: a class-conditional score network `s(x, sigma, label)` trained with
  label dropout (classifier-free guidance).

Each build reports, as metrics, how close the learned model is to the exact answer.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import losses, models
from ..images import to_uint8
from ..distributions import GaussianMixture
from ..noise import geometric_sigmas
from ..training import fit
from . import recipe

# Three isotropic classes on a circle of radius 1.5, std 0.8 each, weights 0.5 / 0.3 / 0.2: they
# overlap, so a classifier is uncertain between them and guidance has something to trade.
MIXTURE_2D = {"radius": 1.5, "angles_degrees": [90.0, 210.0, 330.0], "stds": [0.8, 0.8, 0.8],
              "weights": [0.5, 0.3, 0.2]}
# The noise levels of the 2D models and the annealed Langevin settings the chapter samples with.
SIGMAS_2D = {"sigma_max": 6.0, "sigma_min": 0.03, "n": 10}
SAMPLING_2D = {"eps": 5e-4, "n_steps_each": 60, "denoise": True}


def classes_2d(config: dict = MIXTURE_2D) -> GaussianMixture:
    """The chapter's 2D mixture: one isotropic Gaussian per class."""
    angles = np.deg2rad(np.asarray(config["angles_degrees"], np.float64))
    means = config["radius"] * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return GaussianMixture(jnp.asarray(means, jnp.float32), jnp.asarray(config["stds"], jnp.float32),
                           jnp.asarray(config["weights"], jnp.float32))


def sigmas_2d(config: dict) -> jax.Array:
    """The noise levels of a 2D recipe, descending."""
    s = config["sigmas"]
    return geometric_sigmas(s["sigma_max"], s["sigma_min"], s["n"])


def _optimizer(config: dict):
    opt = config["optimizer"]
    return optax.adam(optax.cosine_decay_schedule(opt["learning_rate"], config["steps"], alpha=opt["final_fraction"]))


def _labelled_data(config: dict):
    key_data, key_init, key_fit, key_eval = jax.random.split(jax.random.key(config["seed"]), 4)
    x, y = classes_2d(config["mixture"]).sample_labelled(key_data, config["n_data"])
    return (x, y), key_init, key_fit, key_eval


_COMMON_2D = {
    "mixture": MIXTURE_2D,
    "n_data": 100_000,
    "sigmas": SIGMAS_2D,
    "optimizer": {"name": "adam", "learning_rate": 2e-3, "schedule": "cosine", "final_fraction": 0.01},
    "batch_size": 256,
}

CLASSIFIER_2D = {
    **_COMMON_2D,
    "model": models.model_config("NoiseConditionalClassifier", dim=2, n_classes=3, width=64, depth=3,
                                 n_frequencies=4, data_std=1.3),
    "loss": "noise_conditional_classification",
    "steps": 10_000,
    "seed": 70,
}


def classifier_report(classifier, gm: GaussianMixture, sigmas, key, n: int = 20_000) -> dict:
    """Per noise level, on `n` fresh noisy points: the classifier's accuracy next to the Bayes
    (exact posterior) accuracy, and the mean KL divergence from the exact posterior to the
    classifier's, `E KL(p_sigma(. | x) || c(. | x))` in nats."""
    report = {"sigma": [], "accuracy": [], "bayes_accuracy": [], "kl_nats": []}
    for i, sigma in enumerate(np.asarray(sigmas).tolist()):
        k_data, k_noise = jax.random.split(jax.random.fold_in(key, i))
        x, y = gm.sample_labelled(k_data, n)
        x = x + sigma * jax.random.normal(k_noise, x.shape)
        exact = jax.vmap(gm.class_log_posterior, in_axes=(0, None))(x, sigma)
        learned = jax.nn.log_softmax(jax.vmap(classifier, in_axes=(0, None))(x, sigma))
        report["sigma"].append(sigma)
        report["accuracy"].append(float(jnp.mean(jnp.argmax(learned, -1) == y)))
        report["bayes_accuracy"].append(float(jnp.mean(jnp.argmax(exact, -1) == y)))
        report["kl_nats"].append(float(jnp.mean(jnp.sum(jnp.exp(exact) * (exact - learned), -1))))
    return report


@recipe("guide_2d_classifier", chapter=7, config=CLASSIFIER_2D,
        description="noise-conditional classifier of three overlapping 2D classes (cross-entropy on noisy points)")
def build_classifier_2d(config):
    data, key_init, key_fit, key_eval = _labelled_data(config)
    sigmas = sigmas_2d(config)
    model = models.from_config(config["model"], key_init)
    model, history = fit(model, losses.noise_conditional_classification(sigmas), data, _optimizer(config),
                         steps=config["steps"], key=key_fit, batch_size=config["batch_size"])
    report = classifier_report(model, classes_2d(config["mixture"]), sigmas, key_eval)
    return model, history, {"final_loss": float(np.mean(history["loss"][-1000:])), "per_sigma": report}


CONDITIONAL_2D = {
    **_COMMON_2D,
    "model": models.model_config("ClassConditionalMLP", dim=2, n_classes=3, width=128, depth=3,
                                 n_frequencies=4, data_std=1.3),
    "loss": "class_conditional_denoising_score_matching",
    "drop_probability": 0.2,
    "steps": 20_000,
    "ema_decay": 0.999,
    "seed": 71,
}


def conditional_report(model, gm: GaussianMixture, sigmas, key, n: int = 20_000) -> dict:
    """Per noise level, the relative RMS error of the model's unconditional score and of its
    score given each class, against the exact ones, on `n` noisy points of the distribution
    scored (`metrics.score_error`)."""
    from ..metrics import score_error

    report = {"sigma": [], "unconditional": [], "per_class": []}
    for i, sigma in enumerate(np.asarray(sigmas).tolist()):
        k = jax.random.fold_in(key, i)
        x = gm.perturbed(sigma).sample(k, n)
        report["sigma"].append(sigma)
        report["unconditional"].append(
            score_error(model.with_label(None), gm.perturbed(sigma).score, x, sigma=sigma).relative_rmse)
        per_class = []
        for c in range(gm.n_components):
            cls = gm.subset([c])
            xc = cls.perturbed(sigma).sample(jax.random.fold_in(k, c + 1), n)
            per_class.append(score_error(model.with_label(c), cls.perturbed(sigma).score, xc, sigma=sigma).relative_rmse)
        report["per_class"].append(per_class)
    return report


@recipe("guide_2d_conditional", chapter=7, config=CONDITIONAL_2D,
        description="class-conditional score MLP of three overlapping 2D classes (label dropout)")
def build_conditional_2d(config):
    data, key_init, key_fit, key_eval = _labelled_data(config)
    sigmas = sigmas_2d(config)
    model = models.from_config(config["model"], key_init)
    loss = losses.class_conditional_denoising_score_matching(sigmas, null_label=model.null_label,
                                                             drop_probability=config["drop_probability"])
    model, history = fit(model, loss, data, _optimizer(config), steps=config["steps"], key=key_fit,
                         batch_size=config["batch_size"], ema_decay=config["ema_decay"])
    report = conditional_report(model, classes_2d(config["mixture"]), sigmas, key_eval)
    return model, history, {"final_loss": float(np.mean(history["loss"][-1000:])), "per_sigma": report}


# ----------------------------------------------------------------------------------------
# MNIST: a classifier of noisy digits, a class-conditional U-Net, and cached sample sets

from . import chapter6, load  # noqa: E402

# The annealed Langevin sampler of the guided and inpainted digits: chapter 6's noise levels
# (which the classifier and the class-conditional U-Net are trained on) and step rule.
LADDER = {"sigma_max": 16.0, "sigma_min": 0.02, "n": 20}
SAMPLING_MNIST = {"eps": 2.4e-4, "n_steps_each": 10, "denoise": True}


def ladder(config: dict) -> jax.Array:
    """The noise levels of an MNIST recipe (its `"sigmas"`), descending."""
    s = config["sigmas"]
    return geometric_sigmas(s["sigma_max"], s["sigma_min"], s["n"])


def _mnist_data(spec: dict):
    return chapter6.mnist_split(spec)


def _warmup_cosine(opt: dict, steps: int):
    return optax.adam(optax.warmup_cosine_decay_schedule(0.0, opt["peak_lr"], opt["warmup_steps"], steps,
                                                         end_value=opt["end_lr"]))


CLASSIFIER_MNIST = {
    "data": chapter6.TRAIN,
    "held_out": chapter6.TEST,
    "n_held_out": 2000,
    "sigmas": LADDER,
    "model": {"type": "NoiseConditionalCNN", "image_shape": [1, 28, 28], "channels": [16, 32], "n_features": 128,
              "n_classes": 10, "n_frequencies": 8, "emb_dim": 64, "data_mean": 0.13, "data_std": 0.31},
    "loss": "noise_conditional_classification",
    "optimizer": {"name": "adam", "schedule": "warmup_cosine", "peak_lr": 2e-3, "warmup_steps": 100, "end_lr": 2e-5},
    "steps": 3000,
    "batch_size": 128,
    "seed": 0,
}


def noisy_accuracy(classifier, images, labels, sigmas, key, batch: int = 500) -> list[float]:
    """The accuracy of a noise-conditional classifier on `images` perturbed at each of `sigmas`."""
    out = []
    for i, sigma in enumerate(np.asarray(sigmas).tolist()):
        k = jax.random.fold_in(key, i)
        correct = 0
        for start in range(0, images.shape[0], batch):
            x = images[start:start + batch]
            noisy = x + sigma * jax.random.normal(jax.random.fold_in(k, start), x.shape)
            correct += int(jnp.sum(jnp.argmax(_logits(classifier, noisy, jnp.float32(sigma)), -1)
                                   == labels[start:start + batch]))
        out.append(correct / images.shape[0])
    return out


@eqx.filter_jit
def _logits(classifier, x, sigma):
    return jax.vmap(classifier, in_axes=(0, None))(x, sigma)


@recipe("guide_mnist_classifier", chapter=7, config=CLASSIFIER_MNIST,
        description="classifier of noisy MNIST digits on the U-Net's noise levels (classifier guidance)")
def build_classifier_mnist(config):
    x, y = _mnist_data(config["data"])
    x_held, y_held = _mnist_data(config["held_out"])
    x_held, y_held = x_held[:config["n_held_out"]], y_held[:config["n_held_out"]]
    k_model, k_fit, k_eval = jax.random.split(jax.random.key(config["seed"]), 3)
    model = models.from_config(config["model"], key=k_model)
    sigmas = ladder(config)
    model, history = fit(model, losses.noise_conditional_classification(sigmas), (x, y),
                         _warmup_cosine(config["optimizer"], config["steps"]), steps=config["steps"],
                         key=k_fit, batch_size=config["batch_size"])
    return model, history, {
        "sigma": np.asarray(sigmas).tolist(),
        "held_out_accuracy": noisy_accuracy(model, x_held, y_held, sigmas, k_eval),
        "training_seconds": history["seconds"],
    }


# The class-conditional U-Net of classifier-free guidance: chapter 6's architecture with label
# embeddings, trained from scratch by chapter 6's recipe with label dropout and 500 fewer steps
# (chapter 7's MNIST models train in under 20 CPU minutes together). Fine-tuning chapter 6's
# trained U-Net instead (1,500 steps, its label embeddings at 1x or 50x its learning rate) left
# labels that changed the score by under 1% at the levels where a digit takes shape: guided
# samples were the requested digit about one time in ten.
CONDITIONAL_MNIST = {
    "data": chapter6.TRAIN,
    "model": {"type": "ClassConditionalUNet", "unet": chapter6.UNET_CONFIG["model"], "n_classes": 10},
    "noise": chapter6.UNET_CONFIG["noise"],
    "loss": {**chapter6.UNET_CONFIG["loss"], "label_dropout": 0.2},
    "optimizer": chapter6.UNET_CONFIG["optimizer"],
    "ema_decay": chapter6.UNET_CONFIG["ema_decay"],
    "steps": 4500,
    "batch_size": 64,
    "seed": 0,
    "sigmas": LADDER,        # the levels at which the build reports the labels' effect on the score
}


def label_effect(model, images, sigmas, key) -> list[float]:
    """How much the label changes a class-conditional model's score, per noise level: the
    relative difference `||s(x, sigma, y) - s(x, sigma, None)|| / ||s(x, sigma, None)||` over
    `images` `(n, C, H, W)` noised once per level, each with its own label `y = i mod n_classes`.
    About zero means the model ignores its labels, and classifier-free guidance at any scale
    samples the unconditional distribution."""
    labels = jnp.arange(images.shape[0]) % model.n_classes
    out = []
    for i, sigma in enumerate(np.asarray(sigmas).tolist()):
        noisy = images + sigma * jax.random.normal(jax.random.fold_in(key, i), images.shape)
        cond = _conditional_scores(model, noisy, jnp.float32(sigma), labels)
        free = _conditional_scores(model, noisy, jnp.float32(sigma), jnp.full_like(labels, model.null_label))
        out.append(float(jnp.linalg.norm(cond - free) / jnp.linalg.norm(free)))
    return out


@eqx.filter_jit
def _conditional_scores(model, x, sigma, labels):
    return jax.vmap(model, in_axes=(0, None, 0))(x, sigma, labels)


@recipe("guide_mnist_conditional", chapter=7, config=CONDITIONAL_MNIST,
        description="class-conditional U-Net trained with label dropout, chapter 6's recipe (classifier-free guidance)")
def build_conditional_mnist(config):
    model, history, metrics = chapter6.train_unet(config, checkpoint=chapter6.checkpoint_path("guide_mnist_conditional",
                                                                                              config))
    x_test, _ = _mnist_data(chapter6.TEST)
    sigmas = ladder(config)
    metrics.update(sigma=np.asarray(sigmas).tolist(),
                   label_effect=label_effect(model, x_test[:200], sigmas, jax.random.key(1)))
    return model, history, metrics


# ----------------------------------------------------------------------------------------
# Guided sampling of MNIST digits

GUIDANCE_KINDS = ("classifier", "free")
# The scale `score-models sample mnist --digit K` uses for each kind (chosen in the chapter).
CLI_SCALE = {"classifier": 4.0, "free": 2.0}


def mnist_guided_score(kind: str, digit: int, scale: float, *, unet=None, classifier=None, conditional=None):
    """The score function that samples `digit` with guidance `kind` at `scale`:

    - `"classifier"`: `mnist_unet` guided by the noisy-digit classifier `guide_mnist_classifier`;
    - `"free"`: classifier-free guidance with the class-conditional U-Net `guide_mnist_conditional`.

    The models default to the cached artifacts. One compiled sampler serves every digit and
    scale (both are array leaves of the returned score function)."""
    from ..samplers import class_log_likelihood, classifier_free_score, guided_score

    if kind not in GUIDANCE_KINDS:
        raise ValueError(f"`kind` must be one of {GUIDANCE_KINDS}, got {kind!r}.")
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise ValueError(f"`digit` must be an integer in [0, 9], got {digit!r}.")
    if kind == "classifier":
        unet = load("mnist_unet") if unet is None else unet
        classifier = load("guide_mnist_classifier") if classifier is None else classifier
        return guided_score(unet, class_log_likelihood(classifier, int(digit)), scale=scale)
    conditional = load("guide_mnist_conditional") if conditional is None else conditional
    return classifier_free_score(conditional.with_label(int(digit)), conditional.with_label(None), scale=scale)


def sample_mnist(score_fn, key, n: int, *, chunk_size: int = 32, sampling: dict = SAMPLING_MNIST,
                 sigmas: dict = LADDER, data_mean: float = 0.13) -> jax.Array:
    """`n` images `(n, 1, 28, 28)` (unclipped) by annealed Langevin dynamics with `score_fn` on the
    chapter's ladder, started from `N(data_mean, sigma_max^2 I)`, `chunk_size` at a time (chunk
    `i` with key `fold_in(key, i)`; one compilation)."""
    from .._checks import check_positive_int
    from ..samplers import annealed_langevin

    n = check_positive_int("n", n)
    chunk = min(check_positive_int("chunk_size", chunk_size), n)
    levels = geometric_sigmas(sigmas["sigma_max"], sigmas["sigma_min"], sigmas["n"])
    out = []
    for i in range(-(-n // chunk)):
        key_init, key_run = jax.random.split(jax.random.fold_in(key, i))
        x0 = data_mean + sigmas["sigma_max"] * jax.random.normal(key_init, (chunk, 1, 28, 28))
        out.append(annealed_langevin(score_fn, x0, levels, key_run, **sampling).samples)
    return jnp.concatenate(out)[:n]


# ----------------------------------------------------------------------------------------
# Cached MNIST results: guided sample sets and inpainted digits, stored as 8-bit images
# (`chapter6.ResultArrays`, `images.to_uint8`)


SCALES_MNIST = [1.0, 2.0, 4.0, 8.0]
N_PER_DIGIT = 16


def _sweep_config(kind: str) -> dict:
    models_used = ({"unet": chapter6.UNET_CONFIG, "classifier": CLASSIFIER_MNIST} if kind == "classifier"
                   else {"conditional": CONDITIONAL_MNIST})
    shape = [len(SCALES_MNIST), 10, N_PER_DIGIT, 28, 28]
    return {"guidance": kind, **models_used, "sigmas": LADDER, "sampling": SAMPLING_MNIST,
            "scales": SCALES_MNIST, "n_per_digit": N_PER_DIGIT, "seed": 7,
            "model": {"type": "ResultArrays", "spec": {"pixels": [shape, "uint8"]}}}


def _build_sweep(config):
    import time

    kind = config["guidance"]
    unet = load("mnist_unet") if kind == "classifier" else None
    classifier = load("guide_mnist_classifier") if kind == "classifier" else None
    conditional = load("guide_mnist_conditional") if kind == "free" else None
    n = config["n_per_digit"]
    pixels = np.zeros((len(config["scales"]), 10, n, 28, 28), np.uint8)
    t0 = time.perf_counter()
    for i, scale in enumerate(config["scales"]):
        for digit in range(10):
            score_fn = mnist_guided_score(kind, digit, scale, unet=unet, classifier=classifier,
                                          conditional=conditional)
            key = jax.random.fold_in(jax.random.key(config["seed"]), 10 * i + digit)
            pixels[i, digit] = to_uint8(sample_mnist(score_fn, key, n, chunk_size=n, sampling=config["sampling"],
                                                     sigmas=config["sigmas"]))
    seconds = time.perf_counter() - t0
    skeleton = models.from_config(config["model"])
    return skeleton.filled(pixels=pixels), {"seconds": seconds}, {"seconds": seconds,
                                                                   "images": int(pixels[..., 0, 0].size)}


for _kind, _title in (("classifier", "classifier guidance"), ("free", "classifier-free guidance")):
    recipe(f"guide_mnist_samples_{_kind}", chapter=7, config=_sweep_config(_kind),
           description=f"{N_PER_DIGIT} MNIST samples per digit and scale, {_title} (8-bit)")(_build_sweep)


# Inpainting: the top half of held-out digits known, the bottom half sampled by replacement with
# chapter 6's U-Net.
INPAINT_MNIST = {
    "unet": chapter6.UNET_CONFIG,
    "data": chapter6.TEST,
    "n_images": 200,
    "known_rows": [0, 14],
    "sigmas": LADDER,
    "sampling": SAMPLING_MNIST,
    "seed": 8,
    "model": {"type": "ResultArrays", "spec": {"pixels": [[200, 28, 28], "uint8"]}},
}


def top_half_mask(config: dict = INPAINT_MNIST) -> np.ndarray:
    """The inpainting mask `(1, 28, 28)`: True at the known rows."""
    mask = np.zeros((1, 28, 28), bool)
    start, stop = config["known_rows"]
    mask[:, start:stop] = True
    return mask


def inpainting_images(config: dict = INPAINT_MNIST):
    """The held-out digits `(n, 1, 28, 28)` and labels `(n,)` that `guide_mnist_inpainting`
    completes: the first `n_images` of the recipe's data."""
    x, y = _mnist_data(config["data"])
    return x[:config["n_images"]], y[:config["n_images"]]


@recipe("guide_mnist_inpainting", chapter=7, config=INPAINT_MNIST,
        description="held-out MNIST digits with their bottom half inpainted by replacement (mnist_unet, 8-bit)")
def build_inpainting(config):
    import time

    from ..samplers import inpaint

    unet = load("mnist_unet")
    x, _ = inpainting_images(config)
    levels = ladder(config)
    t0 = time.perf_counter()
    out = []
    for i, start in enumerate(range(0, x.shape[0], 40)):
        out.append(inpaint(unet, x[start:start + 40], top_half_mask(config), jax.random.fold_in(jax.random.key(config["seed"]), i),
                           sigmas=levels, **config["sampling"]).samples)
    pixels = to_uint8(jnp.concatenate(out))
    seconds = time.perf_counter() - t0
    skeleton = models.from_config(config["model"])
    return skeleton.filled(pixels=pixels), {"seconds": seconds}, {"seconds": seconds}
