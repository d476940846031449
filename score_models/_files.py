"""Durable file writes shared by artifacts and training checkpoints.

- `atomic_write`: a file is replaced all at once (temp file, fsync, rename, fsync of the folder),
  so a crash leaves the old file or the new one, never half of either.
- `check_writable`: finds an unwritable output folder before any long computation starts.
- `file_lock`: an advisory lock (`fcntl` on Unix, `msvcrt` on Windows) that the operating
  system releases when its process dies, so a killed writer never blocks the next one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

try:  # Unix
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None


def _fsync_directory(directory: Path) -> None:
    """Makes a rename in `directory` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows: folders cannot be opened; renames there are durable already
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replaces `path` by `data` atomically and durably; its folder must exist.

    The file gets the ordinary permissions of a new file (`0o666` less the umask), not the
    `0o600` of a temp file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_directory(path.parent)


def replace(source: Path, target: Path) -> None:
    """Renames `source` over `target` atomically and durably (both in one folder)."""
    os.replace(source, target)
    _fsync_directory(Path(target).parent)


def check_writable(directory: Path, what: str) -> Path:
    """Creates `directory` if needed and checks that a file can be written in it; raises a
    `PermissionError` naming `what` (for example "the artifact directory") otherwise."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{what} {directory} is a file, not a folder.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"{what} {directory} is not writable ({e.strerror or e}).") from e
    return directory


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Holds an advisory lock on `path` (created if missing) for the duration of the block.

    `shared=True` takes a read lock where the platform has one (Windows locks are exclusive).
    When `path` cannot be created (a read-only folder) nothing is locked: no other process can
    write there either.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            yield
            return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        elif msvcrt is not None:  # pragma: no cover (Windows)
            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:  # pragma: no cover (Windows)
            try:
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            except OSError:
                pass
        os.close(fd)
