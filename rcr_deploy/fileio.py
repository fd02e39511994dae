"""Atomic file output, output-folder and input-file checks, and hashing: a reader never sees a
half-written file, and a full disk or a FIFO is one clear error, not a traceback or a hang."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rcr_deploy.errors import DataError, RcrError

#: Write errors that mean "this folder cannot take the file": reported in one line, not a traceback.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def write_error(path: str | os.PathLike, e: OSError) -> RcrError:
    """The one-line error for a failed write of `path` (full disk, read-only folder, ...)."""
    why = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return RcrError(f"cannot write {path}: {why} (disk full or file-size limit); free space or choose another output folder")
    return RcrError(f"cannot write {path}: {why}; choose a writable output folder")


def output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the output folder `path` (and its parents); one error if it is a file or not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RcrError(f"{option} {path}: is an existing file, not a folder; pass a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RcrError(f"{option} {path}: cannot create the folder ({e.strerror}); pass a writable folder") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise RcrError(f"{option} {path}: folder is not writable; pass a writable folder")
    return path


def check_output(path: str | os.PathLike, option: str, folder: bool = False) -> Path:
    """Check an output path before any work, creating nothing: a file where a folder goes (or the
    reverse), a file on the way, or a folder that cannot be written is one `RcrError` naming `option`."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise RcrError(f"{option} {path}: is an existing file, not a folder; pass a folder")
    if not folder and path.is_dir():
        raise RcrError(f"{option} {path}: is a folder; pass a file name, e.g. {path / 'out'}")
    ancestor = path if folder else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RcrError(f"{option} {path}: {ancestor} is a file, not a folder; pass a path in a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RcrError(f"{option} {path}: {ancestor} is not writable; pass a path in a writable folder")
    return path


def regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` if it is a regular file (not a FIFO or device, which would block or never end)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such {what}; check the path") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read this {what} ({e.strerror}); check the path and its permissions") from e
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device, not a regular file"
        raise DataError(f"{path}: {kind}; pass a regular {what}")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    On any exception, Ctrl-C included, the temporary file is removed and `path` is untouched; a
    write error (disk full, read-only folder) becomes a one-line `RcrError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; a published artifact should get the usual umask-based mode.
    os.chmod(tmp_path, umask_mode(0o666))
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(path, e) from e
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def umask_mode(mode: int) -> int:
    """`mode` less the process's umask: what a plain open() or mkdir() would have given."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the block. Native libraries (OpenCV and FFmpeg on
    every failed probe, LiteRT's "Created TensorFlow Lite XNNPACK delegate") write there directly,
    past Python's sys.stderr; we report what matters in one line of our own."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
