"""Datasets: the running example, 2D sets, and MNIST (IDX reader, checksums, downloader).

No test touches the network: the downloader is exercised with `file://` mirrors in a temporary
folder and with a refused local port.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_models import data

TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # MNIST t10k
TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # MNIST train


def test_running_example_parameters():
    gm = data.running_example()
    np.testing.assert_array_equal(gm.means, [[-15.0], [0.0], [15.0]])
    np.testing.assert_array_equal(gm.stds, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(gm.weights, [0.5, 0.25, 0.25])
    assert gm.means.dtype == jnp.float32


N = 4000  # one size for every 2D test: each new shape costs a compilation


@pytest.mark.parametrize("name", data.DATASETS_2D)
def test_2d_datasets(name):
    x = data.dataset_2d(name, jax.random.key(0), N)
    assert x.shape == (N, 2) and x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))
    assert np.array_equal(x, data.dataset_2d(name, jax.random.key(0), N))
    assert not np.array_equal(x, data.dataset_2d(name, jax.random.key(1), N))
    # Every set is centred near the origin with a spread of order 1.
    assert float(jnp.max(jnp.abs(x.mean(0)))) < 0.6
    assert 0.3 < float(jnp.min(x.std(0))) and float(jnp.max(x.std(0))) < 4.0


def test_two_moons_is_standardised_and_circles_have_their_radii():
    moons = data.two_moons(jax.random.key(2), N, noise=0.0)
    np.testing.assert_allclose(moons.mean(0), [0.0, 0.0], atol=4 / np.sqrt(N))  # 4 SE
    np.testing.assert_allclose(moons.std(0), [1.0, 1.0], atol=4 / np.sqrt(N))
    circ = np.asarray(data.circles(jax.random.key(3), N, noise=0.0, factor=0.5))
    radii = np.linalg.norm(circ, axis=-1)
    assert np.allclose(np.sort(np.unique(radii.round(4))), [1.0, 2.0])
    assert 0.4 < np.mean(radii > 1.5) < 0.6


@pytest.mark.parametrize("call, named", [
    (lambda k: data.two_moons(k, 16, noise=float("nan")), "`noise`"),
    (lambda k: data.two_moons(k, 16, noise=-1.0), "`noise`"),
    (lambda k: data.circles(k, 16, noise=float("inf")), "`noise`"),
    (lambda k: data.circles(k, 16, factor=float("nan")), "`factor`"),
    (lambda k: data.circles(k, 16, factor=0.0), "`factor`"),
    (lambda k: data.two_moons(3, 16), "`key`"),
    (lambda k: data.circles(k, 16, noise="0.1"), "`noise`"),
])
def test_2d_dataset_arguments_are_refused_before_sampling(call, named):
    # NaN noise or radius used to give NaN points silently, a negative noise a silent sign flip.
    with pytest.raises(ValueError, match=named):
        call(jax.random.key(0))


def test_2d_dataset_of_an_impossible_size_is_refused_and_the_process_survives():
    # Without a size check, reading 10**10 points aborts the whole process (SIGABRT in XLA).
    code = ("import jax, numpy as np\nfrom score_models import data\n"
            "try:\n    np.asarray(data.{}(jax.random.key(0), 10**10))\n"
            "except ValueError as e:\n    print('refused:', e)\n")
    for name in ("two_moons", "circles"):
        proc = subprocess.run([sys.executable, "-c", code.format(name)], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        assert proc.returncode == 0 and "refused: `n` asks for" in proc.stdout, (proc.stdout, proc.stderr[-500:])


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="`name`.*moons"):
        data.dataset_2d("spirals", jax.random.key(0), 10)


# ---------------------------------------------------------------------------------------------
# MNIST from the shared data folder (both splits)


def test_mnist_test_split(shared_mnist):
    x, y = data.mnist("test", download=False)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == jnp.float32
    assert y.shape == (10_000,) and y.dtype == jnp.int32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert np.bincount(np.asarray(y), minlength=10).tolist() == TEST_LABEL_COUNTS
    # Digits are dark backgrounds with bright strokes: about 19% of pixels are lit.
    assert 0.1 < float(jnp.mean(x > 0.5)) < 0.2


def test_mnist_train_split(shared_mnist):
    """The shared training files were recompressed (their gz bytes differ from the canonical
    downloads); they pass because their decompressed content is the canonical one."""
    images, labels = data.mnist_uint8("train", download=False)
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == TRAIN_LABEL_COUNTS
    x, y = data.mnist("train", download=False)
    assert x.shape == (60_000, 1, 28, 28) and x.dtype == jnp.float32 and y.dtype == jnp.int32
    np.testing.assert_array_equal(np.rint(np.asarray(x[123, 0]) * 255.0), images[123])


def test_mnist_bad_split():
    with pytest.raises(ValueError, match="`split`"):
        data.mnist("validation")


def _copy_test_split(shared_mnist, folder):
    (folder / "mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(shared_mnist / "mnist" / name, folder / "mnist" / name)
    return folder / "mnist" / "t10k-labels-idx1-ubyte.gz"


def test_recompressed_mnist_file_is_accepted(shared_mnist, tmp_path, monkeypatch):
    target = _copy_test_split(shared_mnist, tmp_path)
    original = target.read_bytes()
    content = gzip.decompress(original)
    recompressed = gzip.compress(content, compresslevel=9, mtime=12345)  # other header, other level
    assert recompressed != original
    target.write_bytes(recompressed)
    monkeypatch.setenv("SCORE_MODELS_DATA", str(tmp_path))
    assert data.mnist_file(target.name, download=False) == target
    _, y = data.mnist("test", download=False)
    assert np.bincount(np.asarray(y), minlength=10).tolist() == TEST_LABEL_COUNTS


def test_tampered_mnist_file_is_rejected_by_name(shared_mnist, tmp_path, monkeypatch):
    """One label changed and the file recompressed (a valid gzip file of the wrong content)."""
    target = _copy_test_split(shared_mnist, tmp_path)
    content = bytearray(gzip.decompress(target.read_bytes()))
    content[-1] = (content[-1] + 1) % 10
    target.write_bytes(gzip.compress(bytes(content)))
    monkeypatch.setenv("SCORE_MODELS_DATA", str(tmp_path))
    size, sha = data.MNIST_FILES[target.name]
    with pytest.raises(data.MNISTFileError, match=f"{target}.*decompressed content.*expected {size} bytes with sha256 {sha}"):
        data.mnist("test", download=False)


def test_corrupt_gzip_mnist_file_is_rejected(shared_mnist, tmp_path, monkeypatch):
    """A flipped bit in the compressed stream: not even valid gzip (its CRC fails)."""
    target = _copy_test_split(shared_mnist, tmp_path)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    monkeypatch.setenv("SCORE_MODELS_DATA", str(tmp_path))
    with pytest.raises(ValueError, match=f"{target}"):
        data.mnist("test", download=False)


def test_missing_mnist_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORE_MODELS_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        data.mnist_file("t10k-labels-idx1-ubyte.gz", download=False)
    with pytest.raises(ValueError, match="`name`"):
        data.mnist_file("train-images.gz")


# ---------------------------------------------------------------------------------------------
# IDX reader and downloader, on small fake files


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def test_read_idx(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "ok.gz").write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "ok.gz"), arr)
    (tmp_path / "short.gz").write_bytes(gzip.compress(gzip.decompress(idx_bytes(arr))[:-3]))
    with pytest.raises(ValueError, match="header promises"):
        data.read_idx(tmp_path / "short.gz")
    (tmp_path / "float.gz").write_bytes(gzip.compress(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 1) + b"\0" * 4))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        data.read_idx(tmp_path / "float.gz")


def test_read_idx_names_a_file_that_is_not_gzip_or_a_folder(tmp_path):
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    with pytest.raises(data.MNISTFileError, match="plain.gz is not a valid gzip file"):
        data.read_idx(tmp_path / "plain.gz")
    (tmp_path / "folder.gz").mkdir()
    with pytest.raises(data.MNISTFileError, match="folder.gz is a folder"):
        data.read_idx(tmp_path / "folder.gz")


NAME = "t10k-labels-idx1-ubyte.gz"


@pytest.fixture
def fake_mirror(tmp_path, monkeypatch):
    """A local `file://` mirror holding a small fake labels file, with MNIST_FILES patched to
    the size and sha256 of its decompressed content, and SCORE_MODELS_DATA pointing at an empty
    folder."""
    labels = np.array([7, 2, 1, 0, 4], dtype=np.uint8)
    payload = idx_bytes(labels)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / NAME).write_bytes(payload)
    content = gzip.decompress(payload)
    monkeypatch.setitem(data.MNIST_FILES, NAME, (len(content), hashlib.sha256(content).hexdigest()))
    monkeypatch.setenv("SCORE_MODELS_DATA", str(tmp_path / "data"))
    return mirror, payload, labels


def test_download_from_a_mirror_is_verified_and_atomic(fake_mirror, tmp_path, monkeypatch):
    mirror, payload, labels = fake_mirror
    bad = tmp_path / "bad_mirror"
    bad.mkdir()
    (bad / NAME).write_bytes(gzip.compress(gzip.decompress(payload)[:-1] + b"\x09"))  # wrong content (last label changed)
    # First a refused connection, then a corrupt copy, then the good mirror.
    monkeypatch.setattr(data, "MNIST_MIRRORS", ("http://127.0.0.1:9/", bad.as_uri() + "/", mirror.as_uri() + "/"))
    path = data.mnist_file(NAME)
    assert path == tmp_path / "data" / "mnist" / NAME
    assert path.read_bytes() == payload
    np.testing.assert_array_equal(data.read_idx(path), labels)
    assert [p.name for p in path.parent.iterdir()] == [NAME]  # no .part files left behind


def test_a_folder_in_place_of_an_mnist_file_is_named(fake_mirror, tmp_path):
    dest = tmp_path / "data" / "mnist" / NAME
    dest.mkdir(parents=True)
    with pytest.raises(data.MNISTFileError, match=f"{NAME} is a folder, not a file"):
        data.mnist_file(NAME, download=False)


def test_download_failure_says_where_to_put_the_files(fake_mirror, tmp_path, monkeypatch):
    mirror, payload, _ = fake_mirror
    bad = tmp_path / "bad_mirror"
    bad.mkdir()
    (bad / NAME).write_bytes(gzip.compress(gzip.decompress(payload) + b"extra"))
    monkeypatch.setattr(data, "MNIST_MIRRORS", ("http://127.0.0.1:9/", (tmp_path / "nowhere").as_uri() + "/",
                                                bad.as_uri() + "/"))
    with pytest.raises(OSError) as e:
        data.mnist_file(NAME)
    msg = str(e.value)
    dest = tmp_path / "data" / "mnist" / NAME
    assert str(dest) in msg and "SCORE_MODELS_DATA" in msg
    assert "127.0.0.1:9" in msg and "sha256" in msg  # every mirror's failure is reported
    assert not dest.exists() and list(dest.parent.iterdir()) == []
