"""One process per replica: the state dir is locked for the life of ``serve``.

Two ``p2pupdate-coordinator serve --replica K`` on one state dir would both write its
SQLite database and both grant leases under one key, each believing it holds the
replica's share of the budget: the global bound on departures would no longer hold.  So
``serve`` takes an exclusive ``fcntl.flock`` on ``STATE_DIR/lock`` before it opens
anything else there, and keeps the file open until the process ends.  The kernel drops
the lock when the process dies, however it dies (``kill -9`` included), so a stale lock
file never keeps a replica from starting; the pid written into it is only for people.

This is the coordinator's shell (``policy`` never sees files).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from .errors import ConfigError, StateDirInUse
from .statefiles import quarantine

__all__ = ["LOCK_FILE", "StateDirLock"]

#: The lock file's name in the replica's state dir.
LOCK_FILE = "lock"


class StateDirLock:
    """An exclusive lock on one replica's state dir, held until ``release`` (or ``with``).

    ``StateDirLock(replica, directory)`` creates the directory if needed and takes the lock
    without waiting: ``StateDirInUse`` if another process holds it, ``ConfigError`` if the
    directory or the lock file cannot be made (a file where the directory should be).
    """

    def __init__(self, replica: int, directory: Path) -> None:
        self.replica = replica
        self.directory = directory
        self.path = directory / LOCK_FILE
        #: Where a lock "file" that was not a file was moved (``statefiles``), if one was.
        self.quarantined: Path | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
                self.quarantined = quarantine(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"replica {replica}'s state dir {directory}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirInUse(
                f"replica {replica}'s state dir {directory} is in use by another process"
                + _holder(self.path)
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"{self.path}: cannot lock: {exc.strerror or exc}") from None
        self._fd: int | None = fd
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (closing the file does); the lock file itself stays."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> StateDirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _holder(path: Path) -> str:
    """`` (pid N)`` from the lock file the holder wrote, or nothing if it cannot be read."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")[:32].strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""
