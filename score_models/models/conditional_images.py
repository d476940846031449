"""Image models for controllable generation: a classifier of noisy images (classifier guidance)
and a class-conditional U-Net (classifier-free guidance).

Both take ONE image `(C, H, W)` and a scalar `sigma`, like the `UNet` they are built to work
with: the classifier is trained on the noise levels the U-Net samples at; the class-conditional
U-Net wraps a `UNet` (typically a trained one) and adds a label embedding to its noise
embedding.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_positive_int
from .conditional import WithLabel, check_label
from .config import from_config, register
from .mlp import log_sigma_embedding
from .unet import Conv2d, UNet

__all__ = ["ClassConditionalUNet", "NoiseConditionalCNN"]


def _max_pool(x):
    """2x2 max pooling of a channels-last map `(H, W, C)` (H, W even)."""
    h, w, c = x.shape
    return jnp.max(x.reshape(h // 2, 2, w // 2, 2, c), axis=(1, 3))


@register
class NoiseConditionalCNN(eqx.Module):
    """A classifier of noisy images, `c(x, sigma) -> logits`: `(C, H, W), () -> (n_classes,)`.

    conv(c1) - conv(c1) - pool - conv(c2) - conv(c2) - pool - dense(n_features) - dense, SiLU
    activations (smooth: guidance differentiates the classifier with respect to its input). The
    image enters centred and scaled by `1/sqrt(sigma^2 + data_std^2)`; features of `log sigma`
    go through a small MLP whose projections are added to every convolution's output and to the
    dense layer's input, so every layer knows how noisy its input is.

    **Arguments:**

    - `image_shape`: `(C, H, W)`, H and W divisible by 4.
    - `channels`: `(c1, c2)` convolution channels at full and half resolution.
    - `n_features`: width of the dense layer; `n_classes`: number of classes.
    - `n_frequencies`: sin/cos pairs of the `log sigma` features; `emb_dim`: their embedding.
    - `data_mean`, `data_std`: the pixels' mean and standard deviation.
    - `key`: PRNG key for the initial weights.
    """

    convs: list
    projections: list
    emb: eqx.nn.Linear
    dense: eqx.nn.Linear
    out: eqx.nn.Linear
    image_shape: tuple = eqx.field(static=True)
    n_classes: int = eqx.field(static=True)
    n_frequencies: int = eqx.field(static=True)
    data_mean: float = eqx.field(static=True)
    data_std: float = eqx.field(static=True)

    def __init__(self, image_shape=(1, 28, 28), channels=(16, 32), n_features: int = 128, n_classes: int = 10, *,
                 n_frequencies: int = 8, emb_dim: int = 64, data_mean: float = 0.0, data_std: float = 1.0,
                 key: PRNGKeyArray):
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or image_shape[1] % 4 or image_shape[2] % 4:
            raise ValueError(f"`image_shape` must be (C, H, W) with H and W divisible by 4, got {image_shape}.")
        c1, c2 = (check_positive_int("channels", int(c)) for c in channels)
        self.image_shape = image_shape
        self.n_classes = check_positive_int("n_classes", n_classes)
        self.n_frequencies = check_positive_int("n_frequencies", n_frequencies)
        n_features = check_positive_int("n_features", n_features)
        emb_dim = check_positive_int("emb_dim", emb_dim)
        if not data_std > 0:
            raise ValueError(f"`data_std` must be positive, got {data_std!r}.")
        self.data_mean, self.data_std = float(data_mean), float(data_std)
        k = jax.random.split(key, 11)
        widths = [(image_shape[0], c1), (c1, c1), (c1, c2), (c2, c2)]
        self.convs = [Conv2d(a, b, 3, key=k[i]) for i, (a, b) in enumerate(widths)]
        self.projections = [eqx.nn.Linear(emb_dim, b, key=k[4 + i]) for i, (_, b) in enumerate(widths)]
        self.emb = eqx.nn.Linear(2 * self.n_frequencies + 1, emb_dim, key=k[8])
        flat = (image_shape[1] // 4) * (image_shape[2] // 4) * c2
        self.dense = eqx.nn.Linear(flat + emb_dim, n_features, key=k[9])
        self.out = eqx.nn.Linear(n_features, self.n_classes, key=k[10])

    def __call__(self, x: Float[Array, "c h w"], sigma) -> Float[Array, " n_classes"]:
        """The class logits of ONE noisy image `x` at noise level `sigma` (a scalar)."""
        if tuple(x.shape) != self.image_shape:
            raise ValueError(f"`x` must be ONE image of shape {self.image_shape}; got shape {tuple(x.shape)}. "
                             "Use jax.vmap for batches.")
        sigma = jnp.asarray(sigma, x.dtype)
        if sigma.shape != ():
            raise ValueError(f"`sigma` must be a scalar, got shape {tuple(sigma.shape)}.")
        emb = jax.nn.silu(self.emb(log_sigma_embedding(sigma, self.n_frequencies)))
        h = jnp.transpose((x - self.data_mean) * lax.rsqrt(sigma**2 + self.data_std**2), (1, 2, 0))
        for i, (conv, proj) in enumerate(zip(self.convs, self.projections)):
            h = jax.nn.silu(conv(h) + proj(emb))
            if i % 2:
                h = _max_pool(h)
        h = jax.nn.silu(self.dense(jnp.concatenate([h.reshape(-1), emb])))
        return self.out(h)


class _ShiftedEmbedding(eqx.Module):
    """`linear(h) + shift`: the U-Net's last noise-embedding layer with a label's embedding
    added to its output."""

    linear: eqx.nn.Linear
    shift: Float[Array, " e"]

    def __call__(self, h):
        return self.linear(h) + self.shift.astype(h.dtype)


@register
class ClassConditionalUNet(eqx.Module):
    """A class-conditional score network `s(x, sigma, label)` built on a `UNet`: the label's
    learned embedding (a row of `label_embedding`) is added to the U-Net's noise embedding, which
    every residual block already receives. Label `n_classes` (`null_label`) means "no label".

    The embeddings start at zero, so a new model is exactly its U-Net for every label. Train it
    with label dropout (chapter 6's loss with `label_dropout`, or
    `losses.class_conditional_denoising_score_matching`) so that it learns the conditional and
    the unconditional score. Chapter 7 trains it from scratch: fine-tuned from a trained
    unconditional U-Net for 1,500 steps, its labels changed the score by under 1%.

    **Arguments:**

    - `unet`: the config of the `UNet` (`{"type": "UNet", ...}`, as in its artifact's sidecar).
    - `n_classes`: the number of classes.
    - `key`: PRNG key for the U-Net's initial weights.
    """

    unet: UNet
    label_embedding: Float[Array, "n_labels e"]
    n_classes: int = eqx.field(static=True)

    def __init__(self, unet: dict, n_classes: int = 10, *, key: PRNGKeyArray):
        self.n_classes = check_positive_int("n_classes", n_classes)
        model = from_config(dict(unet), key)
        if not isinstance(model, UNet):
            raise ValueError(f"`unet` must be the config of a UNet, got type {type(model).__name__}.")
        self.unet = model
        self.label_embedding = jnp.zeros((self.n_classes + 1, model.emb2.out_features))

    @property
    def null_label(self) -> int:
        """The label that means "no label": `n_classes`."""
        return self.n_classes

    @property
    def image_shape(self) -> tuple:
        """`(C, H, W)` of one image."""
        return self.unet.image_shape

    @property
    def data_mean(self) -> float:
        """The U-Net's pixel mean."""
        return self.unet.data_mean

    def __call__(self, x: Float[Array, "c h w"], sigma, label) -> Float[Array, "c h w"]:
        """The score at ONE image `x`, noise level `sigma` and integer `label` (in
        `[0, n_classes]`, `n_classes` for none)."""
        label = check_label(label, self.n_classes + 1, f"in [0, {self.n_classes}] ({self.n_classes}: no label)")
        shifted = _ShiftedEmbedding(self.unet.emb2, self.label_embedding[label])
        return eqx.tree_at(lambda u: u.emb2, self.unet, shifted)(x, sigma)

    def with_label(self, label: int | None) -> WithLabel:
        """The score function `(x, sigma)` given `label` (None: the unconditional score)."""
        label = self.null_label if label is None else label
        return WithLabel(self, check_label(label, self.n_classes + 1, f"in [0, {self.n_classes}] or None"))
