"""Writes notebooks/06_mnist.ipynb (unexecuted) from the cells below."""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

cells = []
md = lambda s: cells.append(new_markdown_cell(s.strip("\n")))  # noqa: E731
code = lambda s: cells.append(new_code_cell(s.strip("\n")))  # noqa: E731

cells.append(new_raw_cell('---\ntitle: "MNIST: a score model for images"\n---'))

md(r"""
The previous chapters learned scores of one- and two-dimensional distributions whose densities we
knew exactly. This chapter takes the same recipe to images: 28x28 handwritten digits, a
784-dimensional distribution with no closed form. Three things change. The score network becomes
a convolutional U-Net that takes the noise level as an input; training is the multi-scale
denoising score matching of chapter 2 on images; and since there is no true density to compare
with, we judge samples with a classifier, the way image generative models are judged in practice.
Everything is sized to train on a laptop CPU, and the last section says what to change with a GPU.
""")

md(r"""
## Learning objectives

After this chapter you will be able to:

- choose the noise levels of a score model for images from the data (largest and smallest
  $\sigma$, number of levels) and see what each level does to a digit;
- describe a noise-conditional U-Net: noise embedding, residual blocks with group normalisation,
  skip connections, and the output scaled by $1/\sigma$;
- train it with multi-scale denoising score matching, and read its training curve;
- sample digits with annealed Langevin dynamics and with the probability-flow ODE;
- measure sample quality with a classifier: confident fraction, spread over the ten digits and a
  Frechet distance, always next to the same numbers for real digits;
- use a trained score model as a denoiser through Tweedie's formula.
""")

code(r"""
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML, Markdown, display

import score_models as sm
from score_models import mnist
from score_models.zoo import chapter6 as recipes  # the recipes that trained this chapter's models

sm.plotting.setup()
chapter_start = time.perf_counter()

unet = sm.zoo.load("mnist_unet")              # sm.models.UNet, the score model
classifier = sm.zoo.load("mnist_classifier")  # sm.models.Classifier, the judge
unet_info, clf_info = sm.zoo.info("mnist_unet"), sm.zoo.info("mnist_classifier")
config = unet_info["config"]
sigmas = recipes.unet_sigmas(config)          # the training noise levels, descending
""")

md(r"""
## The data {#sec-ch6-data}

MNIST [@lecun1998mnist] comes as a training split of 60,000 images and a test split of 10,000.
This book's data folder holds only the **test split**, so both models of this chapter are trained
on part of it, and the rest is held out for evaluation:
""")

code(r"""
train_spec = config["data"]
held_spec = clf_info["config"]["held_out"]
x_train, y_train = recipes.mnist_range(train_spec)  # (n, 1, 28, 28) in [0, 1]
x_held, y_held = recipes.mnist_range(held_spec)
assert clf_info["config"]["data"] == train_spec  # the classifier saw the same images
""")

code(r"""
#| echo: false
display(Markdown(
    f"the score model and the classifier were both trained on images {train_spec['start']} to "
    f"{train_spec['stop'] - 1} of the MNIST **{train_spec['split']}** split "
    f"({train_spec['count']:,} images, pixel values in {train_spec['pixels']}), as their artifacts' "
    f"sidecars record. Images {held_spec['start']} to {held_spec['stop'] - 1} "
    f"({held_spec['count']:,} images) were never used for training: they measure the classifier's "
    f"accuracy and serve as the real digits that samples are compared with. Numbers from this "
    f"chapter are therefore not comparable with results on the standard training split."
))
""")

md(r"""
Following chapter 2, the model learns the scores of the data perturbed by Gaussian noise of
standard deviation $\sigma$ for a geometric ladder of levels $\sigma_1 > \dots > \sigma_L$. The
largest level should be comparable to the largest distance between two training images, so that
at $\sigma_1$ all digits blur into one Gaussian blob and Langevin dynamics can move freely between
them [@song2020improved, technique 1]; the smallest should leave the digits visually clean.
""")

code(r"""
flat = x_train[:2000].reshape(2000, -1)
sq = jnp.sum(flat**2, axis=1)
pairwise = jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2 * flat @ flat.T, 0.0))
max_distance, median_distance = float(pairwise.max()), float(jnp.median(pairwise))
""")

code(r"""
#| echo: false
s = config["sigmas"]
display(Markdown(
    f"Among the first 2,000 training images the largest distance between two digits is "
    f"{max_distance:.1f} and the median {median_distance:.1f} (pixel values in [0, 1], 784 "
    f"dimensions). The model uses $L$ = {s['n']} levels from $\\sigma_1$ = {s['sigma_max']:g} down "
    f"to $\\sigma_L$ = {s['sigma_min']:g}, a constant ratio of "
    f"{float(sigmas[0] / sigmas[1]):.2f} between neighbours. @fig-ch6-noised shows what they do "
    f"to a few training digits."
))
""")

code(r"""
#| label: fig-ch6-noised
#| fig-cap: "Training digits (left column) perturbed with Gaussian noise at every third noise level of the model, from the smallest level (second column) to the largest (right), shown clipped to [0, 1]. Below about sigma = 1 the digit is still recognisable; at the largest levels nothing of it is left."
show_levels = np.asarray(sigmas[::-3])  # ascending, every third level
z = jax.random.normal(jax.random.key(0), (4, 1, 28, 28))
fig, axes = plt.subplots(4, len(show_levels) + 1, figsize=(0.8 * (len(show_levels) + 1), 3.5))
for i in range(4):
    axes[i, 0].imshow(x_train[i, 0], cmap="gray", vmin=0, vmax=1)
    for j, s in enumerate(show_levels):
        axes[i, j + 1].imshow(np.clip(x_train[i, 0] + s * z[i, 0], 0, 1), cmap="gray", vmin=0, vmax=1)
axes[0, 0].set_title("clean", fontsize=9)
for j, s in enumerate(show_levels):
    axes[0, j + 1].set_title(f"$\\sigma$={s:.2g}", fontsize=9)
for ax in axes.ravel():
    ax.set_axis_off()
plt.show()
""")

md(r"""
## A noise-conditional U-Net {#sec-ch6-unet}

The score network $s_\theta(x, \sigma)$ maps one image and one noise level to an image-shaped
score. `sm.models.UNet` is a small U-Net [@ronneberger2015unet] with the ingredients of the
networks of @song2019generative and @song2020improved:

- **Preconditioning.** The input is centred and divided by $\sqrt{\sigma^2 + \sigma_\text{data}^2}$,
  so the network sees unit-variance inputs at every level, and its output $F_\theta$ is divided by
  $\sigma$: $s_\theta(x, \sigma) = F_\theta(x, \sigma)/\sigma$. The denoising target
  $-z/\sigma$ then becomes $F_\theta \approx -z$, whose size does not depend on $\sigma$
  [@song2020improved, technique 3]. The last layer starts at zero, so training starts from
  $s_\theta = 0$.
- **Noise embedding.** $\log\sigma$ passes through sine and cosine features and a small MLP; every
  residual block adds a learned projection of this embedding to its feature maps.
- **Residual blocks** of group normalisation, SiLU and 3x3 convolutions; a stride-2 convolution
  halves the resolution on the way down, a sub-pixel convolution doubles it on the way up, and
  the feature maps of the way down are concatenated to those of the way up (the skip
  connections); one self-attention layer at the lowest resolution lets distant pixels interact.
- **Sized for a CPU.** A 2x2 pixel unshuffle turns the 28x28x1 image into 14x14x4 before the
  first convolution, so the network works at 14x14 and 7x7; convolutions run channels-last, as
  matrix products over image patches, the layout XLA executes fastest on a CPU.
""")

code(r"""
n_params = sum(p.size for p in jax.tree.leaves(eqx.filter(unet, eqx.is_inexact_array)))
model_cfg = config["model"]
""")

code(r"""
#| echo: false
display(Markdown(
    f"With {model_cfg['channels'][0]} and {model_cfg['channels'][1]} channels at the two "
    f"resolutions the network has {n_params:,} parameters."
))
""")

md(r"""
The loss is the multi-scale denoising score matching of chapter 2 with weight
$\lambda(\sigma) = \sigma^2$ [@vincent2011; @song2019generative]: each training image $x$ draws
a level $\sigma$ uniformly from the ladder and a noise $z \sim \mathcal{N}(0, I)$, and

$$
\mathcal{L}(\theta) = \tfrac12\, \mathbb{E}_{\sigma}\, \mathbb{E}_{x, z}
\big\lVert \sigma\, s_\theta(x + \sigma z, \sigma) + z \big\rVert^2 ,
$$ {#eq-ch6-loss}

`sm.losses.multiscale_denoising_score_matching(sigmas)`, the same function as for the 1D
mixtures, now vmapped over images. `sm.fit` runs Adam steps in compiled chunks and keeps an
exponential moving average (EMA) of the weights, which is the model we sample from.

## Training {#sec-ch6-training}
""")

code(r"""
history, metrics = unet_info["history"], unet_info["metrics"]
opt = config["optimizer"]
loss_curve = np.asarray(history["loss"])
loss_steps = np.linspace(0, history["loss_steps"], loss_curve.size)
hw = unet_info["hardware"]
""")

code(r"""
#| echo: false
machine = metrics["machine"]
rate = metrics["training_images_per_second"]
display(Markdown(
    f"The recipe `mnist_unet` (in `score_models/zoo/chapter6.py`) trains for {config['steps']:,} "
    f"steps on batches of {config['batch_size']}, {metrics['training_images_seen']:,} noisy images "
    f"in all, about {metrics['epochs']:.0f} passes over the {train_spec['count']:,} training "
    f"images; Adam's learning rate warms up to {opt['peak_lr']:g} over {opt['warmup_steps']} steps "
    f"and decays to {opt['end_lr']:g} on a cosine, and the EMA decay is {config['ema_decay']}. "
    f"The artifact was built on a {hw['cpu_count']}-core {hw['platform'].upper()} machine "
    f"({hw['device_count']} JAX device) in {history['build_seconds'] / 60:.0f} minutes"
    + (f", {rate:.0f} training images per second" if rate else "")
    + f". The machine was shared with other jobs (load average {machine['load_average_at_start']:.1f} "
    f"at the start and {machine['load_average_at_end']:.1f} at the end on {hw['cpu_count']} cores), "
    f"so an idle laptop trains faster. `score-models artifacts build mnist_unet` retrains it; an "
    f"interrupted build resumes from its last checkpoint."
))
""")

code(r"""
#| label: fig-ch6-loss
#| fig-cap: "Training loss of the U-Net (@eq-ch6-loss, averaged in windows of steps, from the artifact's sidecar). It cannot reach zero: even the best model only predicts the conditional mean of the noise."
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.plot(loss_steps, loss_curve)
ax.set(xlabel="step", ylabel="loss", yscale="log", title="multi-scale denoising score matching")
plt.show()
""")

md(r"""
## Measuring samples with a classifier {#sec-ch6-metrics}

With no density to compare with, we judge digits the way image models are judged: with a
classifier. `sm.models.Classifier` is a small CNN trained on the same images (recipe
`mnist_classifier`). For a set of images `sm.mnist.quality` reports

- the **confident fraction**: the fraction classified with probability above 0.9, a proxy for
  "is a clear digit";
- the **spread over the ten digits**: the fraction assigned to each class; a sampler that misses a
  digit or piles onto one shows here (the real shares are close to one tenth each);
- the **Frechet distance** between Gaussians fitted to the classifier's penultimate-layer features
  of the images and of real held-out digits,
  $\lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{tr}\big(\Sigma_1 + \Sigma_2 - 2(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}\big)$,
  the FID of @heusel2017gans with an MNIST classifier in place of Inception. It is biased upwards
  for small samples, so it only means something next to the same number for the same count of
  real digits.
""")

code(r"""
held_accuracy = recipes.accuracy(classifier, x_held, y_held)
n_samples = 256
real = x_held[:n_samples]                                # real held-out digits to compare with
reference = mnist.features(classifier, x_held[n_samples:])  # the rest: the reference set
""")

code(r"""
#| echo: false
display(Markdown(
    f"The classifier classifies {held_accuracy:.1%} of the {held_spec['count']:,} held-out images "
    f"correctly ({clf_info['metrics']['train_accuracy']:.1%} of its training images). Samples are "
    f"compared with the features of the last {reference.shape[0]:,} held-out images, and the row "
    f"\"real held-out digits\" of the tables below measures the first {n_samples} held-out images "
    f"in the same way."
))
""")

code(r"""
#| include: false
assert held_accuracy >= 0.98, held_accuracy
""")

md(r"""
## Annealed Langevin dynamics {#sec-ch6-annealed}

Sampling is chapter 3's Algorithm 1 [@song2019generative]: start from
$\mathcal{N}(\bar x, \sigma_1^2 I)$ and run a few Langevin steps at each level,
$x \leftarrow x + \tfrac{\alpha_i}{2} s_\theta(x, \sigma_i) + \sqrt{\alpha_i}\, z$ with
$\alpha_i = \epsilon\, \sigma_i^2/\sigma_L^2$, then finish with one denoising step
$x \leftarrow x + \sigma_L^2 s_\theta(x, \sigma_L)$ (Tweedie's formula, see
@sec-ch6-denoising). `sm.mnist.sample` calls `sm.annealed_langevin` with the chapter's settings
(`sm.mnist.ANNEALED`), for all images and all steps in one compiled loop, keeping one frame per
noise level for the animation.
""")

code(r"""
settings = mnist.ANNEALED
t0 = time.perf_counter()
x_ald, trajectory = mnist.sample(unet, jax.random.key(0), n_samples, sampler="annealed",
                                 trajectory_every=settings["n_steps_each"])
x_ald = mnist.to_pixels(x_ald.block_until_ready())  # (n, 28, 28), clipped to [0, 1]
seconds_ald = time.perf_counter() - t0
nfe_ald = len(sigmas) * settings["n_steps_each"] + int(settings["denoise"])
""")

code(r"""
#| echo: false
display(Markdown(
    f"With $\\epsilon$ = {settings['eps']:g} and {settings['n_steps_each']} steps at each of the "
    f"{len(sigmas)} levels, {nfe_ald} score evaluations per image, {n_samples} digits take "
    f"{seconds_ald:.0f} s here (@fig-ch6-annealed)."
))
""")

code(r"""
#| label: fig-ch6-annealed
#| fig-cap: "The first 64 of the 256 digits sampled with annealed Langevin dynamics (clipped to [0, 1])."
fig, ax = plt.subplots(figsize=(8, 2.2))
ax.imshow(mnist.image_grid(x_ald[:64], ncol=16), cmap="gray", vmin=0, vmax=1)
ax.set_axis_off()
plt.show()
""")

md(r"""
@fig-ch6-animation follows sixteen of these digits through the noise levels: structure appears
coarse-to-fine, the rough position and shape of a stroke at the large levels, its edges at the
small ones.
""")

code(r"""
#| label: fig-ch6-animation
#| fig-cap: "Sixteen samples through annealed Langevin dynamics: the particles at the start, at the end of every third noise level, and after the final denoising step."
frames = list(range(0, len(sigmas) + 1, 3)) + [trajectory.shape[0] - 1]
labels = ["start"] + [f"$\\sigma$ = {float(s):.2g}" for s in sigmas] + ["denoised"]
fig, ax = plt.subplots(figsize=(2.0, 2.2))
ax.set_axis_off()

def draw(i):
    f = frames[i]
    ax.imshow(mnist.image_grid(np.clip(trajectory[f, :16], 0, 1), ncol=4), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.text(0.5, 1.02, labels[f], transform=ax.transAxes, ha="center", va="bottom", fontsize=9)

anim = sm.plotting.animate(fig, draw, len(frames), interval=300)
HTML(anim.to_jshtml())
""")

md(r"""
## The probability-flow ODE {#sec-ch6-pfode}

The same score model also defines chapter 5's deterministic sampler, the probability-flow ODE
$dx/d\sigma = -\sigma\, s_\theta(x, \sigma)$ [@song2021scorebased], integrated from $\sigma_1$
down to $\sigma_L$ by `sm.probability_flow_ode` (diffrax, all images in one solve). For images we
use Heun's method on a fixed geometric grid of noise levels rather than a tight adaptive
tolerance, which would cost hundreds of network evaluations; the model is queried between its
training levels, where its $\log\sigma$ embedding interpolates. The ODE has no final noise to
remove, but it ends at $\sigma_L$, so we apply the same Tweedie step as above.
""")

code(r"""
t0 = time.perf_counter()
x_ode = mnist.sample(unet, jax.random.key(0), n_samples, sampler="pf-ode")
x_ode = x_ode + sigmas[-1] ** 2 * jax.vmap(unet, in_axes=(0, None))(x_ode, sigmas[-1])  # Tweedie
x_ode = mnist.to_pixels(x_ode.block_until_ready())
seconds_ode = time.perf_counter() - t0
nfe_ode = 2 * mnist.PF_ODE["n_steps"] + 1  # Heun: two evaluations per step, plus the Tweedie step
""")

code(r"""
#| echo: false
display(Markdown(
    f"With {mnist.PF_ODE['n_steps']} Heun steps, {nfe_ode} score evaluations per image, the ODE "
    f"produces {n_samples} digits in {seconds_ode:.0f} s (@fig-ch6-pfode). It starts from the same "
    f"initial noise as the Langevin run (the same key)."
))
""")

code(r"""
#| label: fig-ch6-pfode
#| fig-cap: "The first 64 of the 256 digits from the probability-flow ODE, started from the same noise as @fig-ch6-annealed."
fig, ax = plt.subplots(figsize=(8, 2.2))
ax.imshow(mnist.image_grid(x_ode[:64], ncol=16), cmap="gray", vmin=0, vmax=1)
ax.set_axis_off()
plt.show()
""")

md(r"""
## How good are the samples? {#sec-ch6-quality}

@tbl-ch6-quality measures both samplers and, for scale, real held-out digits, all with the same
count of images.
""")

code(r"""
quality = {
    "annealed Langevin": mnist.quality(classifier, x_ald, reference),
    "probability-flow ODE": mnist.quality(classifier, x_ode, reference),
    "real held-out digits": mnist.quality(classifier, real, reference),
}
nfe = {"annealed Langevin": nfe_ald, "probability-flow ODE": nfe_ode, "real held-out digits": None}
""")

code(r"""
#| label: tbl-ch6-quality
#| tbl-cap: "Sample quality of 256 images: the fraction classified with confidence above 0.9, the smallest and largest share of a digit, the Frechet distance of classifier features to real held-out digits, and the score evaluations per image."
# NBVAL_CHECK_OUTPUT
g2 = lambda v: f"{float(f'{v:.2g}'):g}"  # noqa: E731  (two significant digits)
rows = [f"| {name} | {q['confident']:.2f} | {q['min_class_fraction']:.2f} | "
        f"{q['class_fractions'].max():.2f} | {g2(q['frechet'])} | {nfe[name] or '-'} |"
        for name, q in quality.items()]
display(Markdown("\n".join([
    "| images | confident (> 0.9) | smallest digit share | largest digit share | Frechet distance | evaluations |",
    "|---|---|---|---|---|---|", *rows])))
""")

code(r"""
#| echo: false
qa, qo, qr = quality["annealed Langevin"], quality["probability-flow ODE"], quality["real held-out digits"]
display(Markdown(
    f"Annealed Langevin dynamics produces {qa['confident']:.0%} confidently classified digits "
    f"(real digits: {qr['confident']:.0%}), every digit making up at least "
    f"{qa['min_class_fraction']:.1%} of the samples, at a Frechet distance of {qa['frechet']:.2g} "
    f"against {qr['frechet']:.2g} for real held-out digits. The probability-flow ODE reaches "
    f"{qo['confident']:.0%} and {qo['frechet']:.2g} with {nfe_ode} instead of {nfe_ald} "
    f"evaluations. @fig-ch6-classes shows the spread over the ten digits."
))
""")

code(r"""
#| include: false
assert qa["confident"] >= 0.8, qa
assert qa["min_class_fraction"] >= 0.03, qa
assert qr["confident"] >= 0.9 and qr["frechet"] < qa["frechet"], (qr, qa)
""")

code(r"""
#| label: fig-ch6-classes
#| fig-cap: "The share of each digit among 256 images, as the classifier assigns them. The dashed line is one tenth."
fig, ax = plt.subplots(figsize=(7, 2.6))
width = 0.27
for k, (name, q) in enumerate(quality.items()):
    ax.bar(np.arange(10) + (k - 1) * width, q["class_fractions"], width, label=name)
ax.axhline(0.1, color="k", ls="--", lw=0.8)
ax.set(xticks=range(10), xlabel="digit", ylabel="share")
ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, 1.25))
plt.show()
""")

md(r"""
## A score model is a denoiser {#sec-ch6-denoising}

By Tweedie's formula, the posterior mean of the clean image given a noisy one
$\tilde x = x + \sigma z$ is $\mathbb{E}[x \mid \tilde x] = \tilde x + \sigma^2 \nabla \log
p_\sigma(\tilde x)$, so one evaluation of the learned score denoises an image at any of the
model's levels. @fig-ch6-denoise does it for a held-out digit, which the model never saw.
""")

code(r"""
batched = jax.jit(jax.vmap(unet))  # one noise level per image

def denoise(x_noisy, s):
    return x_noisy + s[:, None, None, None] ** 2 * batched(x_noisy, s)

digit = x_held[3]
z = jax.random.normal(jax.random.key(1), (len(sigmas), 1, 28, 28))
noisy_digit = digit[None] + sigmas[:, None, None, None] * z
denoised_digit = denoise(noisy_digit, sigmas)

# The same over 256 held-out digits: root-mean-square pixel error before and after, per level.
zs = jax.random.normal(jax.random.key(2), (len(sigmas), n_samples, 1, 28, 28))
rms_noisy, rms_denoised = [], []
for i, s in enumerate(sigmas):
    noisy = real + s * zs[i]
    den = denoise(noisy, jnp.full((n_samples,), s))
    rms_noisy.append(float(jnp.sqrt(jnp.mean((noisy - real) ** 2))))
    rms_denoised.append(float(jnp.sqrt(jnp.mean((den - real) ** 2))))
rms_noisy, rms_denoised = np.array(rms_noisy), np.array(rms_denoised)
""")

code(r"""
#| label: fig-ch6-denoise
#| fig-cap: "Top: a held-out digit with noise at every second level of the model (largest on the left). Middle: its one-step denoised version (Tweedie's formula). Bottom: the root-mean-square pixel error of 256 held-out digits before and after denoising, at every level."
cols = list(range(0, len(sigmas), 2))
fig = plt.figure(figsize=(10, 4.6))
grid = fig.add_gridspec(3, len(cols), height_ratios=[1, 1, 1.8])
for j, i in enumerate(cols):
    for r, img in enumerate([noisy_digit[i, 0], denoised_digit[i, 0]]):
        ax = fig.add_subplot(grid[r, j])
        ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        if r == 0:
            ax.set_title(f"$\\sigma$={float(sigmas[i]):.2g}", fontsize=8)
ax = fig.add_subplot(grid[2, :])
ax.loglog(np.asarray(sigmas), rms_noisy, "o-", ms=3, label="noisy")
ax.loglog(np.asarray(sigmas), rms_denoised, "o-", ms=3, label="denoised")
ax.set(xlabel="$\\sigma$", ylabel="RMS pixel error")
ax.legend(fontsize=8)
plt.show()
""")

code(r"""
#| echo: false
k = int(np.argmax(np.asarray(sigmas) < 1.0))
display(Markdown(
    f"At $\\sigma$ = {float(sigmas[k]):.2g} one denoising step brings the RMS pixel error of held-out "
    f"digits from {rms_noisy[k]:.2f} down to {rms_denoised[k]:.3f}; at the smallest level, from "
    f"{rms_noisy[-1]:.3f} to {rms_denoised[-1]:.3f}. At the largest levels the noisy image says "
    f"almost nothing about the digit, and the denoiser returns a blurred average digit "
    f"(RMS error {rms_denoised[0]:.2f}): the posterior mean of a very uncertain guess."
))
""")

code(r"""
#| include: false
assert np.all(rms_denoised < rms_noisy), (rms_noisy, rms_denoised)
""")

md(r"""
## Training on more than one device {#sec-ch6-devices}

`sm.fit` shards every batch along its image axis over all of `jax.devices()` and replicates the
weights (a `jax.sharding` mesh): data-parallel training, with the same result as one device up to
the order of floating-point sums (the library's tests check this on two simulated CPU devices,
`XLA_FLAGS=--xla_force_host_platform_device_count=2`). The same recipe therefore runs unchanged
on one CPU, on a GPU, or on several GPUs, where each device processes its share of the batch.
On one CPU, splitting it into two simulated devices does not add compute: the two halves share
the same cores.

## With a GPU {#sec-ch6-gpu}

Everything above was sized for a CPU. With a GPU, the reader would change, in the recipe's config
only:

- **Data:** train on the full 60,000-image training split (`split: "train"`) and evaluate on the
  whole test split.
- **Network:** more channels (64-128) and two residual blocks per level, full 28x28 resolution
  (`patch=1`, a third level), attention at two resolutions, and bfloat16 matrix products.
- **Noise levels:** more of them, with the ratio between neighbours set by technique 2 of
  @song2020improved, and more Langevin steps per level (or the predictor-corrector sampler of
  chapter 5).
- **Training:** hundreds of thousands of steps at larger batches, with the same EMA.

None of this changes the code of the chapter: `sm.fit` shards the batch over whatever devices JAX
finds.
""")

code(r"""
#| echo: false
display(Markdown(f"This chapter executed in {time.perf_counter() - chapter_start:.0f} s."))
""")

md(r"""
## Key takeaways

- The recipe of the toy chapters carries over to images unchanged: a ladder of noise levels from
  about the largest distance between data points down to nearly clean, one noise-conditional
  network, multi-scale denoising score matching, and annealed Langevin dynamics or the
  probability-flow ODE to sample.
- For images the network is a U-Net; preconditioning (unit-variance inputs, output divided by
  $\sigma$) makes every noise level an equally sized regression problem.
- Without a density to compare with, samples are judged by a classifier: confident fraction,
  spread over classes and a Frechet distance, each only meaningful next to the same number for
  real data of the same size.
- A learned score is a denoiser at every noise level (Tweedie's formula); the final denoising
  step of the samplers is exactly that.
- Scale comes from JAX's sharding and a bigger device, not from new code: the recipe that trains
  on a CPU runs unchanged on a GPU.
""")

md(r"""
## Exercises

**1. The final denoising step.** The annealed sampler ends with one Tweedie step. How much of the
quality in @tbl-ch6-quality does it account for? Measure the samples just before it (the
second-to-last frame of `trajectory`).
""")

code(r"""
#| code-fold: true
#| code-summary: "Solution"
before = mnist.to_pixels(trajectory[-2])  # after the last Langevin step, before Tweedie
q_before = mnist.quality(classifier, before, reference)
display(Markdown(
    f"Before the denoising step, {q_before['confident']:.0%} of the samples are confidently "
    f"classified (after: {qa['confident']:.0%}) and the Frechet distance is {q_before['frechet']:.2g} "
    f"(after: {qa['frechet']:.2g}): the difference is what leftover noise of standard deviation "
    f"$\\sigma_L$ = {float(sigmas[-1]):g} per pixel costs."
))
""")

md(r"""
**2. Memorisation.** With only 8,000 training images and dozens of passes over them, does the
model just reproduce training digits? For every sample find the nearest training image (Euclidean
distance in pixel space) and compare with the same distance for real held-out digits, which are
new by construction.
""")

code(r"""
#| code-fold: true
#| code-summary: "Solution"
train_flat = x_train.reshape(x_train.shape[0], -1)
train_sq = jnp.sum(train_flat**2, axis=1)

@jax.jit
def nearest_distance(images):
    f = images.reshape(images.shape[0], -1)
    d2 = jnp.sum(f**2, axis=1)[:, None] + train_sq[None, :] - 2 * f @ train_flat.T
    return jnp.sqrt(jnp.maximum(d2.min(axis=1), 0.0))

d_samples = np.asarray(nearest_distance(jnp.asarray(x_ald)))
d_real = np.asarray(nearest_distance(real[:, 0]))
fig, ax = plt.subplots(figsize=(6, 2.6))
sm.plotting.ecdf(ax, d_samples, label="annealed Langevin samples")
sm.plotting.ecdf(ax, d_real, label="real held-out digits")
ax.set(xlabel="distance to the nearest training image", ylabel="ECDF")
ax.legend(fontsize=8)
plt.show()
display(Markdown(
    f"The median distance to the nearest training image is {np.median(d_samples):.2f} for samples "
    f"and {np.median(d_real):.2f} for held-out digits; the closest sample lies at "
    f"{d_samples.min():.2f}. A model that copied its training set would put samples at distance "
    f"close to 0."
))
""")

md(r"""
**3. Fewer Langevin steps.** Halve the cost of annealed sampling: run it with fewer steps per
noise level (and compensate with a larger $\epsilon$), and measure 64 samples with
`sm.mnist.quality`. Which of the three measures degrades first?
""")

code(r"""
#| code-fold: true
#| code-summary: "Solution"
few = {"eps": 2 * settings["eps"], "n_steps_each": max(1, settings["n_steps_each"] // 2),
       "denoise": True}
x_few = mnist.to_pixels(mnist.sample(unet, jax.random.key(3), 64, **few))
q_few = mnist.quality(classifier, x_few, reference)
q_ref = mnist.quality(classifier, x_ald[:64], reference)
display(Markdown(
    f"With {few['n_steps_each']} steps per level and $\\epsilon$ = {few['eps']:g}: "
    f"{q_few['confident']:.0%} confident, smallest digit share {q_few['min_class_fraction']:.2f}, "
    f"Frechet distance {q_few['frechet']:.2g}; the first 64 samples of the full sampler: "
    f"{q_ref['confident']:.0%}, {q_ref['min_class_fraction']:.2f} and {q_ref['frechet']:.2g}. With "
    f"64 images the Frechet distance is biased upwards compared with the table's 256."
))
""")

nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
})
import sys
nbformat.write(nb, sys.argv[1] if len(sys.argv) > 1 else "/work/main/notebooks/06_mnist.ipynb")
print(len(cells), "cells")
