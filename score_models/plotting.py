"""Plotting helpers for the chapters: ECDFs, score curves, vector fields and animations.

Figures are kept small (the book's notebooks are committed with their outputs).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

DPI = 80


def setup(dpi: int = DPI) -> None:
    """The book's matplotlib style: seaborn whitegrid, modest dpi, embedded-HTML animations."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    mpl.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "figure.figsize": (7, 3.2),
                         "animation.html": "jshtml", "animation.embed_limit": 8.0})


def ecdf(ax, samples, label: str | None = None, **kwargs):
    """Plots the empirical CDF of 1D `samples` (shape `(n,)` or `(n, 1)`) on `ax`."""
    x = np.sort(np.asarray(samples).reshape(-1))
    return ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=label, **kwargs)


def score_curve(ax, score_fn: Callable, grid, *, sigma=None, label: str | None = None, **kwargs):
    """Plots a 1D score function on `grid` (shape `(m,)`): `score_fn(x)` or `score_fn(x, sigma)`
    for one point `x` of shape `(1,)`."""
    g = jnp.asarray(grid, dtype=jnp.float32).reshape(-1, 1)
    if sigma is None:
        s = jax.vmap(score_fn)(g)
    else:
        s = jax.vmap(score_fn, in_axes=(0, None))(g, jnp.float32(sigma))
    return ax.plot(np.asarray(g[:, 0]), np.asarray(s[:, 0]), label=label, **kwargs)


def vector_field(ax, score_fn: Callable, limits=(-3, 3, -3, 3), *, n: int = 20, sigma=None,
                 normalise: bool = True, **kwargs):
    """Quiver plot of a 2D score field on an `n x n` grid over `limits` (xmin, xmax, ymin, ymax)."""
    xs = np.linspace(limits[0], limits[1], n)
    ys = np.linspace(limits[2], limits[3], n)
    xx, yy = np.meshgrid(xs, ys)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), dtype=jnp.float32)
    if sigma is None:
        s = np.asarray(jax.vmap(score_fn)(pts))
    else:
        s = np.asarray(jax.vmap(score_fn, in_axes=(0, None))(pts, jnp.float32(sigma)))
    if normalise:
        s = s / (np.linalg.norm(s, axis=-1, keepdims=True) + 1e-8)
    kwargs.setdefault("color", "0.3")
    return ax.quiver(pts[:, 0], pts[:, 1], s[:, 0], s[:, 1], **kwargs)


def animate(fig, draw_frame: Callable[[int], None], n_frames: int, *, interval: int = 100):
    """A celluloid animation: `draw_frame(i)` draws frame `i` on the figure's axes (without
    clearing); returns a matplotlib animation (displayed as an HTML player in notebooks)."""
    from celluloid import Camera

    camera = Camera(fig)
    for i in range(n_frames):
        draw_frame(i)
        camera.snap()
    anim = camera.animate(interval=interval, blit=True)
    plt.close(fig)
    return anim


def trajectory_frames(trajectory, n_frames: int) -> Sequence[int]:
    """Indices of `n_frames` frames spread evenly over a trajectory `(T, n, ...)`."""
    t = np.asarray(trajectory).shape[0]
    return np.unique(np.linspace(0, t - 1, n_frames).round().astype(int)).tolist()
