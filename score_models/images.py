"""Image arrays: shape checks, pixel conversions and grids.

Images are float32 `(n, 1, 28, 28)` (channels first, as the models take them) in [0, 1] pixel
space, or `(n, 28, 28)` where only the pixels matter. Samples come out of a sampler unclipped;
`to_pixels` clips them, `to_uint8` quantises them to the 256 grey levels MNIST is stored in.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
from jaxtyping import Float, UInt8

__all__ = ["as_images", "image_grid", "save_png", "to_pixels", "to_uint8"]


def as_images(x, name: str = "images", *, shape: tuple[int, int, int] = (1, 28, 28)) -> np.ndarray:
    """`x` as a float32 NumPy array `(n, *shape)`; accepts `(n, height, width)` for one channel.

    Raises a ValueError naming `name` for any other shape, an empty set or non-finite values.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3 and shape[0] == 1:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != tuple(shape):
        raise ValueError(
            f"`{name}` must have shape (n, {', '.join(map(str, shape))}) or (n, {shape[1]}, {shape[2]}), "
            f"got {tuple(x.shape)}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"`{name}` is empty.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` contains {int(np.sum(~np.isfinite(x)))} NaN or infinite value(s).")
    return x


def to_pixels(x) -> Float[np.ndarray, "n 28 28"]:
    """Images `(n, 1, 28, 28)` (or `(n, 28, 28)`) as float32 `(n, 28, 28)` clipped to [0, 1]."""
    return np.clip(as_images(x)[:, 0], 0.0, 1.0)


def to_uint8(x) -> UInt8[np.ndarray, "n 28 28"]:
    """Images in [0, 1] (clipped first) as the nearest of the 256 grey levels, uint8 `(n, 28, 28)`."""
    return np.rint(to_pixels(x) * 255.0).astype(np.uint8)


def image_grid(images, ncol: int = 16, pad: int = 1) -> Float[np.ndarray, "H W"]:
    """Tiles images `(n, 28, 28)` (or `(n, 1, 28, 28)`) into one array, `ncol` per row, with
    `pad` pixels of white between them (digits are white on black); missing tiles are white."""
    x = as_images(images)[:, 0]
    if isinstance(ncol, bool) or not isinstance(ncol, (int, np.integer)) or ncol <= 0:
        raise ValueError(f"`ncol` must be a positive integer, got {ncol!r}.")
    n, h, w = x.shape
    nrow = -(-n // ncol)
    tiles = np.ones((nrow * ncol, h + pad, w + pad), np.float32)
    tiles[:n, pad:, pad:] = x
    grid = tiles.reshape(nrow, ncol, h + pad, w + pad).transpose(0, 2, 1, 3).reshape(nrow * (h + pad), ncol * (w + pad))
    return np.pad(grid, ((0, pad), (0, pad)), constant_values=1.0)


def save_png(images, path, ncol: int = 16) -> None:
    """Writes a grid of images (pixel values in [0, 1], clipped) to a PNG file at `path`, whose
    folder must exist (checked before any work)."""
    path = Path(path).expanduser()
    folder = path.resolve().parent
    if not folder.is_dir():
        raise ValueError(f"`path`: the folder {folder} does not exist.")
    matplotlib.image.imsave(path, np.clip(image_grid(images, ncol), 0, 1), cmap="gray", vmin=0.0, vmax=1.0)
