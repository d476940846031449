"""A small convolutional MNIST classifier, used to measure the quality of generated digits.

Like every model in the library it takes ONE image `(1, 28, 28)` in [0, 1]; `model(x)` returns
the ten logits and `model.features(x)` the penultimate layer (the feature space of the Frechet
distance in `score_models.mnist`).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_positive_int
from .config import register
from .unet import Conv2d


def _max_pool(x):
    """2x2 max pooling of a channels-last map `(H, W, C)` (H, W even)."""
    h, w, c = x.shape
    return jnp.max(x.reshape(h // 2, 2, w // 2, 2, c), axis=(1, 3))


@register
class Classifier(eqx.Module):
    """conv(c1) - conv(c1) - pool - conv(c2) - conv(c2) - pool - dense(n_features) - dense(10),
    ReLU activations, channels-last convolutions.

    **Arguments:**

    - `channels`: `(c1, c2)` convolution channels at 28x28 and 14x14.
    - `n_features`: width of the penultimate (feature) layer.
    - `n_classes`: number of classes.
    - `key`: PRNG key for the initial weights.
    """

    convs: tuple  # a tuple: the static structure must be hashable
    dense: eqx.nn.Linear
    out: eqx.nn.Linear
    channels: tuple = eqx.field(static=True)
    n_features: int = eqx.field(static=True)
    n_classes: int = eqx.field(static=True)

    def __init__(self, channels=(16, 32), n_features: int = 128, n_classes: int = 10, *, key: PRNGKeyArray):
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or len(channels) != 2:
            raise ValueError(f"`channels` must be two positive integers (c1, c2), got {channels!r}.")
        c1, c2 = (check_positive_int("channels", c) for c in channels)
        self.channels = (c1, c2)
        self.n_features = check_positive_int("n_features", n_features)
        self.n_classes = check_positive_int("n_classes", n_classes)
        k = jax.random.split(key, 6)
        self.convs = (Conv2d(1, c1, 3, key=k[0]), Conv2d(c1, c1, 3, key=k[1]),
                      Conv2d(c1, c2, 3, key=k[2]), Conv2d(c2, c2, 3, key=k[3]))
        self.dense = eqx.nn.Linear(7 * 7 * c2, self.n_features, key=k[4])
        self.out = eqx.nn.Linear(self.n_features, self.n_classes, key=k[5])

    def features(self, x: Float[Array, "1 28 28"]) -> Float[Array, " f"]:
        """The penultimate-layer activations of ONE image."""
        if tuple(x.shape) != (1, 28, 28):
            raise ValueError(
                f"`x` must be ONE image of shape (1, 28, 28); got shape {tuple(x.shape)}. "
                f"Use jax.vmap for batches."
            )
        h = jnp.transpose(x, (1, 2, 0))
        h = jax.nn.relu(self.convs[1](jax.nn.relu(self.convs[0](h))))
        h = _max_pool(h)
        h = jax.nn.relu(self.convs[3](jax.nn.relu(self.convs[2](h))))
        h = _max_pool(h)
        return jax.nn.relu(self.dense(h.reshape(-1)))

    def __call__(self, x: Float[Array, "1 28 28"]) -> Float[Array, " k"]:
        """The class logits of ONE image."""
        return self.out(self.features(x))
