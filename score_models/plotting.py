"""Plotting helpers for the chapters: ECDFs, score curves, vector fields and animations.

Figures are kept small (the book's notebooks are committed with their outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from ._checks import as_float_array, check_noise_level, check_score_fn

DPI = 80


@eqx.filter_jit
def _evaluate(score_fn, points, sigma):
    """`score_fn` at every point, `(m, d) -> (m, d)`, in one compiled call (models and bound
    methods are pytrees: one compilation per shape)."""
    if sigma is None:
        return jax.vmap(score_fn)(points)
    return jax.vmap(score_fn, in_axes=(0, None))(points, sigma)


def _scores(score_fn, points, sigma):
    check_score_fn(score_fn, points, conditional=sigma is not None)
    if sigma is not None:
        sigma = jnp.asarray(check_noise_level("sigma", sigma), points.dtype)
    return np.asarray(_evaluate(score_fn, points, sigma))


def setup(dpi: int = DPI) -> None:
    """The book's matplotlib style: seaborn whitegrid, modest dpi, embedded-HTML animations."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    mpl.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "figure.figsize": (7, 3.2),
                         "animation.html": "jshtml", "animation.embed_limit": 8.0})


def ecdf(ax, samples, label: str | None = None, **kwargs) -> list:
    """Plots the empirical CDF of 1D `samples` (shape `(n,)` or `(n, 1)`) on `ax`."""
    x = np.sort(np.asarray(samples).reshape(-1))
    return ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", label=label, **kwargs)


def score_curve(ax, score_fn: Callable, grid, *, sigma=None, label: str | None = None, **kwargs) -> list:
    """Plots a 1D score function on `grid` (shape `(m,)`): `score_fn(x)` or `score_fn(x, sigma)`
    for one point `x` of shape `(1,)`, evaluated in one compiled call."""
    g = jnp.asarray(as_float_array("grid", grid), dtype=jnp.float32).reshape(-1, 1)
    s = _scores(score_fn, g, sigma)
    return ax.plot(np.asarray(g[:, 0]), s[:, 0], label=label, **kwargs)


def vector_field(ax, score_fn: Callable, limits=(-3, 3, -3, 3), *, n: int = 20, sigma=None,
                 normalise: bool = True, **kwargs) -> mpl.quiver.Quiver:
    """Quiver plot of a 2D score field on an `n x n` grid over `limits` (xmin, xmax, ymin, ymax),
    evaluated in one compiled call."""
    xs = np.linspace(limits[0], limits[1], n)
    ys = np.linspace(limits[2], limits[3], n)
    xx, yy = np.meshgrid(xs, ys)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1), dtype=jnp.float32)
    s = _scores(score_fn, pts, sigma)
    if normalise:
        s = s / (np.linalg.norm(s, axis=-1, keepdims=True) + 1e-8)
    kwargs.setdefault("color", "0.3")
    return ax.quiver(pts[:, 0], pts[:, 1], s[:, 0], s[:, 1], **kwargs)


def animate(fig, draw_frame: Callable[[int], None], n_frames: int, *,
            interval: int = 100) -> mpl.animation.Animation:
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


def save_mp4(anim, path, *, fps: int | None = None, dpi: int | None = None) -> Path:
    """Writes a matplotlib animation (e.g. from `animate`) to an mp4 file at `path`.

    Uses matplotlib's `FFMpegWriter` pointed at the ffmpeg binary bundled with `imageio-ffmpeg`
    (the optional extra `video`: `pip install "score-models[video]"`), so no system ffmpeg is
    needed. `fps` defaults to the animation's own frame rate (`1000 / interval`); `dpi` to the
    figure's. Returns the path written.
    """
    from matplotlib import animation as mpl_animation

    if not isinstance(anim, mpl_animation.Animation):
        raise ValueError(f"`anim` must be a matplotlib Animation, got {type(anim).__name__}.")
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"`path` must end in .mp4, got {str(path)!r}.")
    if fps is not None and not (isinstance(fps, (int, np.integer)) and fps > 0):
        raise ValueError(f"`fps` must be a positive integer, got {fps!r}.")
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise ImportError(
            "save_mp4 needs the ffmpeg binary bundled with imageio-ffmpeg: "
            "`pip install imageio-ffmpeg` (or `pip install \"score-models[video]\"`)."
        ) from e
    if fps is None:
        fps = max(1, round(1000 / getattr(anim, "_interval", 100)))
    path.parent.mkdir(parents=True, exist_ok=True)
    mpl.rcParams["animation.ffmpeg_path"] = imageio_ffmpeg.get_ffmpeg_exe()
    writer = mpl_animation.FFMpegWriter(fps=int(fps), codec="libx264",
                                        extra_args=["-pix_fmt", "yuv420p"])
    anim.save(str(path), writer=writer, dpi=dpi)
    return path
