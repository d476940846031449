"""Datasets for the chapters: 1D mixtures, 2D sets and MNIST.

Every sampler returns float32 arrays of shape `(n, d)`; MNIST returns images of shape
`(n, 1, 28, 28)` in [0, 1] and integer labels.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._checks import as_float_array, as_real_scalar, check_finite, check_key, check_positive_int, check_size, is_concrete
from .distributions import GaussianMixture

# ----------------------------------------------------------------------------------------
# Toy distributions


def running_example() -> GaussianMixture:
    """The book's running example: a 1D mixture with means -15, 0, 15, unit stds and weights
    0.5, 0.25, 0.25. Far-apart modes with unequal weights: exactly what plain Langevin gets
    wrong."""
    return GaussianMixture(
        means=jnp.array([[-15.0], [0.0], [15.0]]),
        stds=jnp.array([1.0, 1.0, 1.0]),
        weights=jnp.array([0.5, 0.25, 0.25]),
    )


def gaussian_mixture_2d() -> GaussianMixture:
    """A 2D mixture of six components on a circle of radius 4, std 0.4, unequal weights."""
    angles = jnp.linspace(0.0, 2 * jnp.pi, 6, endpoint=False)
    means = 4.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    weights = jnp.array([0.3, 0.1, 0.2, 0.1, 0.2, 0.1])
    return GaussianMixture(means, jnp.full((6,), 0.4), weights)


def two_moons(key: PRNGKeyArray, n: int, *, noise: float = 0.05) -> Float[Array, "n 2"]:
    """`n` i.i.d. points of the two moons, standardised to zero mean and unit variance per axis.

    The shape of scikit-learn's `make_moons` (upper half circle of radius 1 at the origin, lower
    one shifted to `(1, 0.5)`, Gaussian noise of std `noise`), but sampled i.i.d.: each point
    picks a moon with probability 1/2 and an angle uniformly in `[0, pi]`. (`make_moons` places
    its points at evenly spaced angles, a stratified sample whose distance to another such
    sample is far below that of independent draws, which would make noise floors meaningless.)
    The scaling uses the constants of the noiseless moons, so every draw is scaled identically.
    """
    n = _check_2d_args(key, n)
    return _two_moons(key, n, jnp.float32(_check_noise(noise)))


def _check_2d_args(key, n) -> int:
    """`key` and `n` of a 2D dataset, checked before compiling: `n` points of 2 coordinates
    must fit in memory (an impossible size aborts the process instead of raising)."""
    n = check_positive_int("n", n)
    check_key("key", key)
    check_size("n", n * 4)  # the points, their angles, labels and noise
    return n


def _check_noise(noise) -> float:
    """`noise`: a standard deviation, finite and non-negative."""
    noise = as_real_scalar("noise", noise)
    if is_concrete(noise) and not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"`noise` must be a finite, non-negative standard deviation, got {noise}.")
    return noise


@functools.partial(jax.jit, static_argnums=1)
def _two_moons(key, n, noise):
    key_moon, key_angle, key_noise = jax.random.split(key, 3)
    upper = jax.random.bernoulli(key_moon, 0.5, (n,))
    t = jax.random.uniform(key_angle, (n,), jnp.float32, 0.0, jnp.pi)
    outer = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=-1)
    inner = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=-1)
    x = jnp.where(upper[:, None], outer, inner) + noise * jax.random.normal(key_noise, (n, 2))
    # Mean and per-axis std of the noiseless moons (computed from the two half circles).
    return ((x - jnp.array([0.5, 0.25])) / jnp.array([0.8660, 0.4942])).astype(jnp.float32)


def circles(key: PRNGKeyArray, n: int, *, noise: float = 0.05, factor: float = 0.5) -> Float[Array, "n 2"]:
    """`n` i.i.d. points on two concentric circles (radii 1 and `factor`, Gaussian noise of std
    `noise`), scaled by 2: the shape of scikit-learn's `make_circles`, but each point picks a
    circle with probability 1/2 and an angle uniformly in `[0, 2 pi)` (`make_circles` spaces its
    angles evenly, a stratified sample; see `two_moons`)."""
    n = _check_2d_args(key, n)
    factor = as_real_scalar("factor", factor)
    if is_concrete(factor) and not (np.isfinite(factor) and factor > 0):
        raise ValueError(f"`factor` (the inner circle's radius) must be positive and finite, got {factor}.")
    return _circles(key, n, jnp.float32(_check_noise(noise)), jnp.float32(factor))


@functools.partial(jax.jit, static_argnums=1)
def _circles(key, n, noise, factor):
    key_circle, key_angle, key_noise = jax.random.split(key, 3)
    radius = jnp.where(jax.random.bernoulli(key_circle, 0.5, (n,)), 1.0, factor)
    t = jax.random.uniform(key_angle, (n,), jnp.float32, 0.0, 2 * jnp.pi)
    x = radius[:, None] * jnp.stack([jnp.cos(t), jnp.sin(t)], axis=-1)
    x = x + noise * jax.random.normal(key_noise, (n, 2))
    return (2.0 * x).astype(jnp.float32)


DATASETS_2D = ("moons", "gaussians", "circles")


def dataset_2d(name: str, key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """`n` points of a 2D dataset chosen by `name`: one of `"moons"`, `"gaussians"`, `"circles"`."""
    if name == "moons":
        return two_moons(key, n)
    if name == "circles":
        return circles(key, n)
    if name == "gaussians":
        return gaussian_mixture_2d().sample(key, check_positive_int("n", n))
    raise ValueError(f"`name` must be one of {DATASETS_2D}, got {name!r}.")


def two_moons_distances(x: Float[Array, "n 2"]) -> Float[Array, "n 2"]:
    """Distances of points to the two noiseless moons of `two_moons`, `(n, 2)`: column 0 to the
    upper half circle, column 1 to the lower one.

    `x: (n, 2)` is in the standardised coordinates that `two_moons` returns; the distances are
    measured in the moons' own coordinates, before standardisation, where each moon is a half
    circle of radius 1 and a sample lies about `noise` (0.05 by default) from its moon. Past the
    end of an arc the distance is to the nearer end point. The nearer moon (`argmin` over the
    columns) labels a point; the smaller distance says how far it is from the data."""
    x = as_float_array("x", x, ndim=2)
    if x.shape[1] != 2:
        raise ValueError(f"`x` must have shape (n, 2), got {tuple(x.shape)}.")
    check_finite("x", x)
    return _two_moons_distances(x)


@jax.jit
def _two_moons_distances(x):
    # Undo the standardisation of `two_moons` (mean and per-axis std of the noiseless moons).
    raw = x * jnp.array([0.8660, 0.4942]) + jnp.array([0.5, 0.25])
    ends = jnp.array([[1.0, 0.0], [-1.0, 0.0]])

    def to_arc(v, side):
        """Distance of `v` (relative to the arc's centre) to the unit half circle on `side`."""
        on_arc = side * v[:, 1] >= 0
        to_end = jnp.min(jnp.linalg.norm(v[:, None, :] - ends, axis=-1), axis=1)
        return jnp.where(on_arc, jnp.abs(jnp.linalg.norm(v, axis=1) - 1.0), to_end)

    upper = to_arc(raw, 1.0)                                 # centre (0, 0), y >= 0
    lower = to_arc(raw - jnp.array([1.0, 0.5]), -1.0)        # centre (1, 0.5), y <= 0.5
    return jnp.stack([upper, lower], axis=1).astype(x.dtype)


# ----------------------------------------------------------------------------------------
# MNIST
#
# A file is verified by the sha256 of its DECOMPRESSED content, which does not depend on how it
# was gzipped: a canonical download and a recompressed copy of the same data both pass (the gz
# bytes differ by the gzip header: name, time stamp, compression level), anything else fails.

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# file name -> (size in bytes, sha256) of the DECOMPRESSED IDX content.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte.gz": (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte.gz": (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte.gz": (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
MNIST_SPLITS = {"train": "train", "test": "t10k"}  # split -> file prefix


class MNISTFileError(ValueError):
    """An MNIST file whose decompressed content is not the expected one (or not gzip at all)."""


def data_dir() -> Path:
    """The data directory: `$SCORE_MODELS_DATA`, default `~/.cache/score_models`."""
    return Path(os.environ.get("SCORE_MODELS_DATA", Path.home() / ".cache" / "score_models"))


def _verified_content(name: str, path: Path) -> bytes:
    """The decompressed content of the gzipped file at `path`, checked against `MNIST_FILES[name]`.

    Raises `MNISTFileError` naming the file, what it holds and what was expected."""
    size, sha = MNIST_FILES[name]
    if Path(path).is_dir():
        raise MNISTFileError(f"MNIST file {path} is a folder, not a file: remove it (the file is downloaded again).")
    try:
        raw = gzip.decompress(Path(path).read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise MNISTFileError(f"MNIST file {path} is not a valid gzip file ({e}).") from e
    got = hashlib.sha256(raw).hexdigest()
    if len(raw) != size or got != sha:
        raise MNISTFileError(
            f"MNIST file {path} does not hold {name}: its decompressed content is {len(raw)} bytes "
            f"with sha256 {got}, expected {size} bytes with sha256 {sha}. (Any gzip compression "
            f"of the right content passes.) Delete it to download it again."
        )
    return raw


def _download(name: str, dest: Path, mirrors=None) -> None:
    """Downloads `name` into `dest` atomically (temp file in the same folder, verify, rename),
    trying `mirrors` (default: `MNIST_MIRRORS`, looked up at call time) in order."""
    mirrors = MNIST_MIRRORS if mirrors is None else mirrors
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in mirrors:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name, timeout=30) as resp:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            _verified_content(name, Path(tmp))
            os.replace(tmp, dest)
            return
        except MNISTFileError as e:
            errors.append(f"{mirror}: {e}")
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            errors.append(f"{mirror}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise OSError(
        f"Could not download MNIST file {name!r}. Tried:\n  " + "\n  ".join(errors)
        + f"\nPlace the file by hand at {dest} (or set SCORE_MODELS_DATA to a folder holding mnist/{name})."
    )


def _mnist_path(name: str, download: bool) -> Path:
    if name not in MNIST_FILES:
        raise ValueError(f"`name` must be one of {sorted(MNIST_FILES)}, got {name!r}.")
    path = data_dir() / "mnist" / name
    if not path.exists():
        if not download:
            raise FileNotFoundError(
                f"MNIST file {name!r} not found at {path} (set SCORE_MODELS_DATA to the folder that "
                f"holds mnist/, or allow the download)."
            )
        _download(name, path)
    return path


def mnist_file(name: str, *, download: bool = True) -> Path:
    """The path of a verified MNIST file in `data_dir()/mnist/`, downloading it if missing."""
    path = _mnist_path(name, download)
    _verified_content(name, path)
    return path


def parse_idx(raw: bytes, source: str = "IDX data") -> np.ndarray:
    """Parses the (decompressed) bytes of an unsigned-byte IDX file, the MNIST format."""
    if len(raw) < 4:
        raise ValueError(f"{source} is too short to be an IDX file ({len(raw)} bytes).")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{source} is not an unsigned-byte IDX file (header {zero}, {dtype_code:#x}).")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{source} holds {data.size} values, its header promises shape {shape}.")
    return data.reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file (the MNIST format) into a NumPy array of unsigned bytes.

    Raises `MNISTFileError` (a ValueError) naming the file when it is not gzip or not IDX."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except IsADirectoryError as e:
        raise MNISTFileError(f"IDX file {path} is a folder, not a file.") from e
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise MNISTFileError(f"IDX file {path} is not a valid gzip file ({e}).") from e
    return parse_idx(raw, str(path))


def mnist_uint8(split: str = "train", *, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images `(n, 28, 28)` and labels `(n,)` as the files store them (uint8), verified."""
    if split not in MNIST_SPLITS:
        raise ValueError(f"`split` must be one of {sorted(MNIST_SPLITS)}, got {split!r}.")
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{MNIST_SPLITS[split]}-{kind}-ubyte.gz"
        path = _mnist_path(name, download)
        arrays.append(parse_idx(_verified_content(name, path), str(path)))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels.")
    return images, labels


def mnist(split: str = "train", *, download: bool = True) -> tuple[Float[Array, "n 1 28 28"], Int[Array, " n"]]:
    """MNIST images `(n, 1, 28, 28)` float32 in [0, 1] and labels `(n,)` int32.

    `split` is `"train"` (60,000 images) or `"test"` (10,000). Files are read from
    `$SCORE_MODELS_DATA/mnist/`, downloaded when missing, and verified by the sha256 of their
    decompressed content.
    """
    images, labels = mnist_uint8(split, download=download)
    x = jnp.asarray(images[:, None, :, :], dtype=jnp.float32) / 255.0
    return x, jnp.asarray(labels, dtype=jnp.int32)
