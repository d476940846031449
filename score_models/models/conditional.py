"""Models for controllable generation in low dimension: a noise-conditional classifier
`c(x, sigma) -> logits` (classifier guidance) and a class-conditional score network
`s(x, sigma, label)` trained with label dropout (classifier-free guidance).

Both take ONE example, like every model of the library. A class-conditional model reserves the
label `n_classes` for "no label" (`null_label`): `s(x, sigma, null_label)` is the unconditional
score. `model.with_label(y)` is the score function `(x, sigma) -> s(x, sigma, y)` that samplers
and `classifier_free_score` take.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._checks import check_positive_int, is_concrete
from .config import register
from .mlp import check_data_std, noise_conditional_input

__all__ = ["ClassConditionalMLP", "NoiseConditionalClassifier", "WithLabel"]


def check_label(label, n_labels: int, what: str) -> Int[Array, ""]:
    """`label` as an int32 scalar, checked to lie in `[0, n_labels)` when concrete."""
    label = jnp.asarray(label)
    if label.shape != () or not jnp.issubdtype(label.dtype, jnp.integer):
        raise ValueError(f"`label` must be one integer, got {label.dtype} of shape {tuple(label.shape)}.")
    if is_concrete(label) and not 0 <= int(label) < n_labels:
        raise ValueError(f"`label` must be {what}, got {int(label)}.")
    return label.astype(jnp.int32)


@register
class NoiseConditionalClassifier(eqx.Module):
    """A classifier of noisy examples, `c(x, sigma) -> logits`: `(d,), () -> (n_classes,)`,
    whose `log_softmax` estimates `log p_sigma(y | x)` for data perturbed by `N(0, sigma^2 I)`.

    Like `NoiseConditionalMLP`, it sees the input rescaled to unit variance, `x / sqrt(sigma^2 +
    data_std^2)`, and features of `log sigma`.

    **Arguments:**

    - `dim`: the data dimension `d`; `n_classes`: the number of classes.
    - `width`, `depth`: hidden width and number of hidden layers.
    - `n_frequencies`: sin/cos pairs in the `log sigma` embedding.
    - `data_std`: the data's standard deviation, used to rescale the input.
    - `key`: PRNG key for the initial weights.
    """

    net: eqx.nn.MLP
    dim: int = eqx.field(static=True)
    n_classes: int = eqx.field(static=True)
    n_frequencies: int = eqx.field(static=True)
    data_std: float = eqx.field(static=True)

    def __init__(self, dim: int, n_classes: int, width: int = 64, depth: int = 3, *, n_frequencies: int = 4,
                 data_std: float = 1.0, activation: Callable = jax.nn.silu, key: PRNGKeyArray):
        self.dim = check_positive_int("dim", dim)
        self.n_classes = check_positive_int("n_classes", n_classes)
        self.n_frequencies = check_positive_int("n_frequencies", n_frequencies)
        self.data_std = check_data_std(data_std)
        self.net = eqx.nn.MLP(self.dim + 2 * self.n_frequencies + 1, self.n_classes,
                              check_positive_int("width", width), check_positive_int("depth", depth),
                              activation=activation, key=key)

    def __call__(self, x: Float[Array, " d"], sigma) -> Float[Array, " n_classes"]:
        """The class logits of ONE noisy point `x: (d,)` at noise level `sigma` (a scalar)."""
        h, _ = noise_conditional_input(x, sigma, self.dim, self.data_std, self.n_frequencies)
        return self.net(h)


class WithLabel(eqx.Module):
    """The score function `(x, sigma) -> model(x, sigma, label)` of a class-conditional model for
    one fixed label; `label` is an array leaf, so one compiled sampler serves every label."""

    model: eqx.Module
    label: Int[Array, ""]

    def __call__(self, x, sigma):
        """The score of ONE example given the label."""
        return self.model(x, sigma, self.label)


@register
class ClassConditionalMLP(eqx.Module):
    """A class-conditional score network `s(x, sigma, label)`: `(d,), (), () -> (d,)`, the
    `NoiseConditionalMLP` with a one-hot label among its inputs. Label `n_classes`
    (`null_label`) means "no label": trained with label dropout
    (`losses.class_conditional_denoising_score_matching`), the same network is the conditional
    and the unconditional score, as classifier-free guidance needs.

    **Arguments:**

    - `dim`: the data dimension `d`; `n_classes`: the number of classes.
    - `width`, `depth`: hidden width and number of hidden layers.
    - `n_frequencies`: sin/cos pairs in the `log sigma` embedding.
    - `data_std`: the data's standard deviation, used to rescale the input.
    - `key`: PRNG key for the initial weights.
    """

    net: eqx.nn.MLP
    dim: int = eqx.field(static=True)
    n_classes: int = eqx.field(static=True)
    n_frequencies: int = eqx.field(static=True)
    data_std: float = eqx.field(static=True)

    def __init__(self, dim: int, n_classes: int, width: int = 128, depth: int = 3, *, n_frequencies: int = 4,
                 data_std: float = 1.0, activation: Callable = jax.nn.silu, key: PRNGKeyArray):
        self.dim = check_positive_int("dim", dim)
        self.n_classes = check_positive_int("n_classes", n_classes)
        self.n_frequencies = check_positive_int("n_frequencies", n_frequencies)
        self.data_std = check_data_std(data_std)
        in_size = self.dim + 2 * self.n_frequencies + 1 + self.n_classes + 1
        self.net = eqx.nn.MLP(in_size, self.dim, check_positive_int("width", width),
                              check_positive_int("depth", depth), activation=activation, key=key)

    @property
    def null_label(self) -> int:
        """The label that means "no label": `n_classes`."""
        return self.n_classes

    def __call__(self, x: Float[Array, " d"], sigma, label) -> Float[Array, " d"]:
        """The score at ONE point `x: (d,)`, noise level `sigma` and integer `label` (in
        `[0, n_classes]`, `n_classes` for none)."""
        h, sigma = noise_conditional_input(x, sigma, self.dim, self.data_std, self.n_frequencies)
        label = check_label(label, self.n_classes + 1, f"in [0, {self.n_classes}] ({self.n_classes}: no label)")
        return self.net(jnp.concatenate([h, jax.nn.one_hot(label, self.n_classes + 1, dtype=x.dtype)])) / sigma

    def with_label(self, label: int | None) -> WithLabel:
        """The score function `(x, sigma)` given `label` (None: the unconditional score)."""
        label = self.null_label if label is None else label
        return WithLabel(self, check_label(label, self.n_classes + 1, f"in [0, {self.n_classes}] or None"))
