"""A small noise-conditional U-Net for 28x28 images, sized to train on a CPU.

The network takes ONE image `x` of shape `(channels, height, width)` and a scalar `sigma`, and
returns the score estimate `s(x, sigma)` of the same shape (the library vmaps over images).

Design, chosen for throughput on a laptop CPU (see chapter 6):

- **Channels-last inside.** XLA's CPU convolutions run fastest in NHWC layout, so the image is
  transposed once at the input and once at the output; every convolution in between is an
  `(H, W, C)` convolution with `HWIO` kernels.
- **Pixel unshuffle** (`patch=2`, space-to-depth): the 28x28x1 image becomes 14x14x4 before the
  first convolution and the output is shuffled back, so the most expensive full-resolution
  layers are skipped at no loss of information. `patch=1` keeps the full resolution.
- **Preconditioning** (`preconditioning`). With `sigma_data` the pixels' standard deviation
  and `x' = x - data_mean`, the network `F` sees `c_in x'` with `c_in = 1/sqrt(sigma^2 +
  sigma_data^2)` (unit variance at every noise level) and the log of sigma, and its output
  becomes the score in one of two ways:
  - `"noise"`: `s = F / sigma`, so `F` predicts the noise direction
    `-z`, whose size does not depend on sigma (Song & Ermon 2020, technique 3). The implied
    denoiser `D = x + sigma F` multiplies any error of `F` by sigma.
  - `"edm"` (Karras et al. 2022): the denoiser `D = data_mean + c_skip x' + c_out F` with
    `c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)` and `c_out = sigma sigma_data /
    sqrt(sigma^2 + sigma_data^2)`, and `s = (D - x) / sigma^2`. At `F = 0` the score is that of
    the Gaussian `N(data_mean, (sigma_data^2 + sigma^2) I)`; the network learns the rest, and
    its error reaches `D` scaled by at most `sigma_data`.
  The final convolution starts at zero, so training starts from the Gaussian score (`"edm"`)
  or from `s = 0` (`"noise"`).
- **Noise conditioning.** `log sigma` goes through sin/cos features and a small MLP; every
  residual block adds a learned projection of that embedding to its feature maps.
- **Residual blocks** with GroupNorm and SiLU, a stride-2 convolution down, nearest-neighbour
  sub-pixel convolutions (pixel shuffle) up, and skip connections concatenated on the way up
  (Ronneberger et al. 2015); optional self-attention at the lowest resolution.
"""

from __future__ import annotations

import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import check_positive_int
from .config import register
from .mlp import log_sigma_embedding

PRECONDITIONINGS = ("noise", "edm")


class Conv2d(eqx.Module):
    """A 2D convolution on ONE channels-last image `(H, W, C_in) -> (H', W', C_out)`, 'SAME'
    padding. Kernels are `(kh, kw, C_in, C_out)`, initialised like PyTorch (uniform with bound
    `1/sqrt(fan_in)`), or to zero with `zero=True`."""

    weight: Float[Array, "kh kw cin cout"]
    bias: Float[Array, " cout"]
    stride: int = eqx.field(static=True)

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, *, stride: int = 1, zero: bool = False,
                 key: PRNGKeyArray):
        bound = 1.0 / math.sqrt(c_in * kernel * kernel)
        kw, kb = jax.random.split(key)
        shape = (kernel, kernel, c_in, c_out)
        self.weight = jnp.zeros(shape) if zero else jax.random.uniform(kw, shape, minval=-bound, maxval=bound)
        self.bias = jnp.zeros((c_out,)) if zero else jax.random.uniform(kb, (c_out,), minval=-bound, maxval=bound)
        self.stride = int(stride)

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c2"]:
        if jax.default_backend() == "cpu":
            return self.im2col(x)
        return self.lax_conv(x)

    def im2col(self, x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c2"]:
        """The convolution as the k*k shifted copies of the (zero-padded) map side by side, then
        ONE matrix product: what runs on a CPU, where XLA runs a convolution inside a `lax.scan`
        (as `fit` does) several times slower than a matrix product of the same size
        (`benchmarks/suite.py`, `conv_im2col_vs_lax`)."""
        kh, kw, c_in, c_out = self.weight.shape
        h, w, _ = x.shape
        s = self.stride
        h_out, w_out = -(-h // s), -(-w // s)
        pad_h = max((h_out - 1) * s + kh - h, 0)
        pad_w = max((w_out - 1) * s + kw - w, 0)
        xp = jnp.pad(x, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        cols = [xp[i:i + (h_out - 1) * s + 1:s, j:j + (w_out - 1) * s + 1:s] for i in range(kh) for j in range(kw)]
        patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
        y = patches @ self.weight.reshape(kh * kw * c_in, c_out).astype(x.dtype)
        return y + self.bias.astype(x.dtype)

    def lax_conv(self, x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c2"]:
        """The same convolution by `lax.conv_general_dilated` (NHWC): what runs on a GPU or TPU,
        where the vendor's convolution kernels beat im2col's k*k copies of every map."""
        y = lax.conv_general_dilated(x[None], self.weight.astype(x.dtype), (self.stride, self.stride), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
        return y + self.bias.astype(x.dtype)


class GroupNorm(eqx.Module):
    """Group normalisation of ONE channels-last feature map `(H, W, C)`, with a learned
    per-channel scale and shift."""

    weight: Float[Array, " c"]
    bias: Float[Array, " c"]
    groups: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, groups: int, channels: int, eps: float = 1e-5):
        if channels % groups:
            raise ValueError(f"`groups` ({groups}) must divide the number of channels ({channels}).")
        self.weight = jnp.ones((channels,))
        self.bias = jnp.zeros((channels,))
        self.groups = int(groups)
        self.eps = float(eps)

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "h w c"]:
        h, w, c = x.shape
        g = x.reshape(h, w, self.groups, c // self.groups)
        mean = jnp.mean(g, axis=(0, 1, 3), keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=(0, 1, 3), keepdims=True)
        g = (g - mean) * lax.rsqrt(var + self.eps)
        return g.reshape(h, w, c) * self.weight + self.bias


class ResBlock(eqx.Module):
    """`x + conv(silu(norm(conv(silu(norm(x))) + proj(emb))))`, with a 1x1 convolution on the skip
    path when the channel count changes."""

    norm1: GroupNorm
    conv1: Conv2d
    proj: eqx.nn.Linear
    norm2: GroupNorm
    conv2: Conv2d
    skip: Conv2d | None

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = GroupNorm(min(groups, c_in), c_in)
        self.conv1 = Conv2d(c_in, c_out, 3, key=k1)
        self.proj = eqx.nn.Linear(emb_dim, c_out, key=k2)
        self.norm2 = GroupNorm(min(groups, c_out), c_out)
        self.conv2 = Conv2d(c_out, c_out, 3, key=k3)
        self.skip = Conv2d(c_in, c_out, 1, key=k4) if c_in != c_out else None

    def __call__(self, x, emb):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.proj(emb)
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class Attention(eqx.Module):
    """Single-head self-attention over the pixels of a small feature map `(H, W, C)`, residual."""

    norm: GroupNorm
    qkv: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, channels: int, groups: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.norm = GroupNorm(min(groups, channels), channels)
        self.qkv = eqx.nn.Linear(channels, 3 * channels, key=k1)
        self.out = eqx.nn.Linear(channels, channels, key=k2)

    def __call__(self, x):
        h, w, c = x.shape
        t = self.norm(x).reshape(h * w, c)
        q, k, v = jnp.split(t @ self.qkv.weight.T + self.qkv.bias, 3, axis=-1)
        a = jax.nn.softmax(q @ k.T / math.sqrt(c), axis=-1)
        y = (a @ v) @ self.out.weight.T + self.out.bias
        return x + y.reshape(h, w, c)


def _space_to_depth(x, p: int):
    h, w, c = x.shape
    x = x.reshape(h // p, p, w // p, p, c).transpose(0, 2, 1, 3, 4)
    return x.reshape(h // p, w // p, p * p * c)


def _depth_to_space(x, p: int):
    h, w, c = x.shape
    x = x.reshape(h, w, p, p, c // (p * p)).transpose(0, 2, 1, 3, 4)
    return x.reshape(h * p, w * p, c // (p * p))


@register
class UNet(eqx.Module):
    """A noise-conditional U-Net score network `s(x, sigma)`: `(C, H, W), () -> (C, H, W)`.

    **Arguments:**

    - `image_shape`: `(C, H, W)` of one image, default `(1, 28, 28)` (MNIST).
    - `channels`: feature channels per resolution level, e.g. `(32, 64)`: level `i` runs at
      `H / (patch * 2^i)`.
    - `n_res`: residual blocks per level on the way down (one more on the way up).
    - `patch`: pixel-unshuffle factor applied before the first convolution (1 or 2).
    - `attention`: add self-attention at the lowest resolution.
    - `emb_dim`: width of the noise embedding; `n_frequencies`: sin/cos pairs of `log sigma`.
    - `groups`: GroupNorm groups.
    - `data_mean`, `data_std`: the pixels' mean and standard deviation, for the input scaling.
    - `preconditioning`: `"noise"` (the network predicts the noise, `s = F / sigma`) or
      `"edm"` (it corrects the Gaussian denoiser, Karras et al. 2022); see the module docstring.
    - `key`: PRNG key for the initial weights.
    """

    head: Conv2d
    emb1: eqx.nn.Linear
    emb2: eqx.nn.Linear
    # Tuples, not lists: the model's static structure must be hashable (`fit` and `jax.jit`
    # cache compilations by it).
    down: tuple
    downsample: tuple
    mid: tuple
    up: tuple
    upsample: tuple
    out_norm: GroupNorm
    out_conv: Conv2d
    image_shape: tuple = eqx.field(static=True)
    channels: tuple = eqx.field(static=True)
    n_res: int = eqx.field(static=True)
    patch: int = eqx.field(static=True)
    attention: bool = eqx.field(static=True)
    n_frequencies: int = eqx.field(static=True)
    data_mean: float = eqx.field(static=True)
    data_std: float = eqx.field(static=True)
    preconditioning: str = eqx.field(static=True)

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), channels: Sequence[int] = (32, 64), *,
                 n_res: int = 1, patch: int = 2, attention: bool = True, emb_dim: int = 64,
                 n_frequencies: int = 8, groups: int = 8, data_mean: float = 0.0, data_std: float = 1.0,
                 preconditioning: str = "noise", key: PRNGKeyArray):
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"`image_shape` must be (channels, height, width), got {image_shape}.")
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
            raise ValueError(f"`channels` must be a non-empty sequence of positive integers (one per level), "
                             f"got {channels!r}.")
        channels = tuple(check_positive_int("channels", c) for c in channels)
        patch = check_positive_int("patch", patch)
        c_img, height, width = image_shape
        factor = patch * 2 ** (len(channels) - 1)
        # Each stride-2 level needs an even size except the last ('SAME' padding rounds up).
        size = (height // patch, width // patch)
        if height % patch or width % patch or any(s % (2 ** (len(channels) - 1)) for s in size):
            raise ValueError(
                f"`image_shape` {image_shape} must be divisible by patch * 2^(levels-1) = {factor}."
            )
        if not data_std > 0:
            raise ValueError(f"`data_std` must be positive, got {data_std!r}.")
        if preconditioning not in PRECONDITIONINGS:
            raise ValueError(f"`preconditioning` must be one of {PRECONDITIONINGS}, got {preconditioning!r}.")
        self.preconditioning = preconditioning
        self.image_shape = image_shape
        self.channels = channels
        self.n_res = check_positive_int("n_res", n_res)
        self.patch = patch
        self.attention = bool(attention)
        self.n_frequencies = check_positive_int("n_frequencies", n_frequencies)
        self.data_mean = float(data_mean)
        self.data_std = float(data_std)
        emb_dim = check_positive_int("emb_dim", emb_dim)

        n_res_blocks = len(channels) * (2 * self.n_res + 1) + 2
        n_keys = 3 + n_res_blocks + 2 * (len(channels) - 1) + int(self.attention) + 1
        keys = iter(jax.random.split(key, n_keys))
        c_in = c_img * patch * patch
        self.head = Conv2d(c_in, channels[0], 3, key=next(keys))
        self.emb1 = eqx.nn.Linear(2 * self.n_frequencies + 1, emb_dim, key=next(keys))
        self.emb2 = eqx.nn.Linear(emb_dim, emb_dim, key=next(keys))

        down, downsample = [], []
        skips = [channels[0]]
        c = channels[0]
        for i, ch in enumerate(channels):
            blocks = []
            for _ in range(self.n_res):
                blocks.append(ResBlock(c, ch, emb_dim, groups, key=next(keys)))
                c = ch
                skips.append(c)
            down.append(tuple(blocks))
            if i < len(channels) - 1:
                downsample.append(Conv2d(c, c, 3, stride=2, key=next(keys)))
                skips.append(c)
        mid = [ResBlock(c, c, emb_dim, groups, key=next(keys))]
        if self.attention:
            mid.append(Attention(c, groups, key=next(keys)))
        mid.append(ResBlock(c, c, emb_dim, groups, key=next(keys)))

        up, upsample = [], []
        for i, ch in reversed(list(enumerate(channels))):
            blocks = []
            for _ in range(self.n_res + 1):
                blocks.append(ResBlock(c + skips.pop(), ch, emb_dim, groups, key=next(keys)))
                c = ch
            up.append(tuple(blocks))
            if i > 0:
                # Sub-pixel upsampling: a convolution at the low resolution to 4x the next
                # level's channels, then a 2x2 pixel shuffle (4x cheaper than upsample-then-conv).
                upsample.append(Conv2d(c, 4 * channels[i - 1], 3, key=next(keys)))
                c = channels[i - 1]
        self.down, self.downsample, self.mid = tuple(down), tuple(downsample), tuple(mid)
        self.up, self.upsample = tuple(up), tuple(upsample)
        self.out_norm = GroupNorm(min(groups, c), c)
        self.out_conv = Conv2d(c, c_in, 3, zero=True, key=next(keys))

    def _check(self, x, sigma):
        if tuple(x.shape) != self.image_shape:
            raise ValueError(
                f"`x` must be ONE image of shape {self.image_shape}; got shape {tuple(x.shape)}. "
                f"Use jax.vmap (or the library's samplers and losses, which vmap) for batches."
            )
        sigma = jnp.asarray(sigma, dtype=x.dtype)
        if sigma.shape != ():
            raise ValueError(f"`sigma` must be a scalar, got shape {tuple(sigma.shape)}.")
        return sigma

    def raw_output(self, x: Float[Array, "c h w"], sigma) -> Float[Array, "c h w"]:
        """The network `F(c_in (x - data_mean), log sigma)` before preconditioning turns it into a
        score (see the module docstring)."""
        sigma = self._check(x, sigma)
        emb = log_sigma_embedding(sigma, self.n_frequencies)
        emb = self.emb2(jax.nn.silu(self.emb1(emb)))

        h = (x - self.data_mean) * lax.rsqrt(sigma**2 + self.data_std**2)
        h = jnp.transpose(h, (1, 2, 0))
        if self.patch > 1:
            h = _space_to_depth(h, self.patch)
        h = self.head(h)
        skips = [h]
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), emb)
            if i < len(self.upsample):
                h = _depth_to_space(self.upsample[i](h), 2)
        h = self.out_conv(jax.nn.silu(self.out_norm(h)))
        if self.patch > 1:
            h = _depth_to_space(h, self.patch)
        return jnp.transpose(h, (2, 0, 1))

    def __call__(self, x: Float[Array, "c h w"], sigma) -> Float[Array, "c h w"]:
        """The score at ONE image `x` of shape `image_shape` and noise level `sigma` (a scalar);
        returns the shape of `x`."""
        sigma = self._check(x, sigma)
        f = self.raw_output(x, sigma)
        if self.preconditioning == "noise":
            return f / sigma
        # "edm": s = (D - x) / sigma^2 with D = mean + c_skip x' + c_out F, written without the
        # cancellation of D - x at small sigma: c_skip - 1 = -sigma^2 / (sigma^2 + sigma_data^2).
        var = sigma**2 + self.data_std**2
        return -(x - self.data_mean) / var + f * (self.data_std * lax.rsqrt(var) / sigma)

    def denoise(self, x: Float[Array, "c h w"], sigma) -> Float[Array, "c h w"]:
        """Tweedie's estimate of the clean image, `E[x_0 | x] ~= x + sigma^2 s(x, sigma)`."""
        sigma = self._check(x, sigma)
        return x + sigma**2 * self(x, sigma)
