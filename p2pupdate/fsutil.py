"""Crash-safe file writes and size-limited reads (the shell side of the core's bytes).

Every state write is: temp file in the same directory, write, fsync, ``os.replace``, fsync
of the directory.  After a crash at any point the path holds either the old bytes or the
new bytes, never a mix, and a half-written temp file is never mistaken for state.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import BinaryIO

from .errors import LocalStateFault


class FileTooLargeError(LocalStateFault, OSError):
    """A file larger than the reader's limit (raised before reading it).

    The local state's fault (a file on this machine grew past its cap), and an ``OSError``
    too, so every ``except OSError`` around a read keeps catching it.
    """

    rule = "file-too-large"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path | str) -> Path:
    """Where :func:`atomic_write` stages ``path``'s new bytes: a hidden sibling whose name
    is 18 bytes longer than ``path``'s (so a name near the file system's limit is refused
    by the temporary file, not by the final rename)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path = Path(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_exclusive(path: Path | str, data: bytes, *, mode: int = 0o600) -> None:
    """Write a new file that must not exist yet (keys: never overwrite, never lose one)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    atomic_write(path, data, mode=mode)


def read_limited(path: Path | str, limit: int) -> bytes:
    """Read a whole file, refusing one larger than ``limit`` bytes before reading it."""
    path = Path(path)
    with path.open("rb") as f:
        return read_open_limited(f, path, limit)


def read_open_limited(f: BinaryIO, path: Path | str, limit: int) -> bytes:
    """Read the whole of the open file ``f`` (named ``path`` in errors), refusing one
    larger than ``limit`` bytes before reading it."""
    size = os.fstat(f.fileno()).st_size
    if size > limit:
        raise FileTooLargeError(f"{path} is {size} bytes; the limit is {limit}")
    data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(f"{path} is larger than the limit of {limit} bytes")
    return data
