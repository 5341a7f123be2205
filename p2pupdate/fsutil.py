"""Crash-safe file writes and size-limited reads (the shell side of the core's bytes).

Every state write is: temp file in the same directory, write, fsync, ``os.replace``, fsync
of the directory.  After a crash at any point the path holds either the old bytes or the
new bytes, never a mix, and a half-written temp file is never mistaken for state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import BinaryIO, Final

from .errors import LocalStateFault


class FileTooLargeError(LocalStateFault, OSError):
    """A file larger than the reader's limit (raised before reading it).

    The local state's fault (a file on this machine grew past its cap), and an ``OSError``
    too, so every ``except OSError`` around a read keeps catching it.
    """

    rule = "file-too-large"


#: ``errno`` values that mean "no room on this disk" (not a broken disk): a write refused
#: with one of these changed nothing and may be retried once space is freed.
NO_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


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
    return path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    staged = AtomicFile(path, mode=mode)
    try:
        staged.write(data)
    except BaseException:
        staged.discard()
        raise
    staged.commit()


class AtomicFile:
    """:func:`atomic_write` for bytes that arrive in pieces (an upload): each ``write``
    appends to the temp file (:func:`temp_path`, created at once), ``commit`` makes it
    ``path`` (fsync, rename, fsync of the directory), ``discard`` removes it.  Until
    ``commit``, ``path`` keeps its old bytes, or stays absent."""

    def __init__(self, path: Path | str, *, mode: int = 0o644) -> None:
        self.path = Path(path)
        self.mode = mode
        self.tmp = temp_path(self.path)
        self._fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def write(self, data: bytes) -> None:
        if self._fd is None:
            raise ValueError(f"{self.tmp} is already committed or discarded")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def commit(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            raise ValueError(f"{self.tmp} is already committed or discarded")
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(self.tmp, self.mode)  # O_CREAT's mode is filtered by the umask
            os.replace(self.tmp, self.path)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        """Remove the temp file (nothing once committed or discarded)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            finally:
                self.tmp.unlink(missing_ok=True)


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


def quarantine_name(path: Path | str, companions: tuple[str, ...] = ()) -> Path:
    """Where :func:`quarantine` moves ``path``: ``NAME.bad-N`` beside it, ``N`` one more
    than the highest already there (1 for the first), so an earlier copy kept for a person
    is never overwritten.  ``companions`` are suffixes of files that go with it (SQLite's
    ``-wal``, ``-shm``): they move to ``NAME.bad-N`` + suffix, and count as taken too."""
    path = Path(path)
    tails = "|".join(re.escape(c) for c in companions)
    pattern = re.compile(
        re.escape(path.name) + r"\.bad-([0-9]{1,9})" + (f"(?:{tails})?" if tails else "") + "$"
    )
    taken = [0]
    if path.parent.is_dir():
        for sibling in path.parent.iterdir():
            m = pattern.match(sibling.name)
            if m:
                taken.append(int(m.group(1)))
    return path.with_name(f"{path.name}.bad-{max(taken) + 1}")


def quarantine(path: Path | str, *, companions: tuple[str, ...] = ()) -> Path:
    """Move an unusable state file (or directory, or link) aside as ``NAME.bad-N`` and
    return where; each existing companion (``path`` + suffix) moves with it, to
    ``NAME.bad-N`` + suffix.  The one home of the quarantine rule, for node and replica.

    A rename, not a copy: it needs no free space, so it works on a full disk too; the
    bytes stay for a person to look at, and the name is free for a rebuilt file.
    """
    path = Path(path)
    aside = quarantine_name(path, companions)
    for suffix in ("", *companions):
        src = path.with_name(path.name + suffix)
        if suffix == "" or src.exists() or src.is_symlink():
            os.rename(src, aside.with_name(aside.name + suffix))
    # Best effort: the move is done; if it is lost in a crash, the damaged file is found
    # and moved aside again at the next start.
    with contextlib.suppress(OSError):
        fsync_dir(path.parent)
    return aside
