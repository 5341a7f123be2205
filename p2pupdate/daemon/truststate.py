"""The node's trust state on disk: ``STATE_DIR/trust/store.msgpack``.

The core's ``TrustStore`` is an immutable value; this shell loads it, lets the core accept
documents, and persists the new value atomically *only after* the core accepted. A
rejected document therefore never changes the file, and a crash mid-write leaves the old
file (``fsutil.atomic_write``).

A store that cannot be read (truncated, garbled, replaced) never stops the node: it is
moved aside as ``store.msgpack.bad-N`` and the store is rebuilt from the pinned root (the
``--trust-root`` the node was started with).  What it held -- newer roots, the floors of
allowlists and scopes -- comes back with the documents, which the coordinator and gossip
send again; until then the node knows only the pinned root, so it installs nothing it
could not have installed on its first day (README "Trust model").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..core.documents import Document, Root, Signed
from ..core.errors import P2PUpdateError
from ..core.trust import STATE_LIMITS, TrustStore
from ..fsutil import atomic_write, quarantine, read_limited

D = TypeVar("D", bound=Document)

STORE_NAME = "store.msgpack"


class TrustFile:
    """A ``TrustStore`` kept in ``directory``; every change is written before it is used."""

    def __init__(self, directory: Path, store: TrustStore) -> None:
        self.directory = directory
        self.store = store

    @property
    def path(self) -> Path:
        return self.directory / STORE_NAME

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        initial_root: bytes,
        now: int,
        log: Callable[[str], None] | None = None,
    ) -> TrustFile:
        """Load the persisted store, or start from ``initial_root`` (trust on first use).

        An unreadable store is quarantined and rebuilt from ``initial_root`` (one ``log``
        line says so).  A bad ``initial_root`` raises: that is the operator's file.
        """
        say = log if log is not None else (lambda _m: None)
        if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
            aside = quarantine(directory)
            say(f"trust store directory {directory} is not a directory: moved to {aside.name}")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / STORE_NAME
        if path.exists() or path.is_symlink():
            try:
                return cls(
                    directory, TrustStore.from_bytes(read_limited(path, STATE_LIMITS.max_bytes))
                )
            except (OSError, P2PUpdateError) as exc:
                fresh = TrustStore.from_root(initial_root, now)  # a bad pinned root raises here
                aside = quarantine(path)
                why = getattr(exc, "strerror", None) or exc
                say(
                    f"trust store corrupt ({why}): moved to {aside.name}, rebuilt from the "
                    "pinned root; the documents it held come back from the coordinator and gossip"
                )
                return cls._fresh(directory, fresh, say)
        return cls._fresh(directory, TrustStore.from_root(initial_root, now), say)

    @classmethod
    def _fresh(cls, directory: Path, store: TrustStore, say: Callable[[str], None]) -> TrustFile:
        """A new store, written at once; kept in memory if the disk refuses it (full), and
        written with the next accepted document."""
        tf = cls(directory, store)
        try:
            atomic_write(tf.path, store.to_bytes(), mode=0o600)
        except OSError as exc:
            say(f"cannot write the trust store yet ({exc.strerror or exc}); kept in memory")
        return tf

    def _commit(self, store: TrustStore) -> None:
        if store is not self.store:
            atomic_write(self.path, store.to_bytes(), mode=0o600)
            self.store = store

    def accept(self, cls: type[D], data: bytes, now: int) -> Signed[D]:
        signed, store = self.store.accept(cls, data, now)
        self._commit(store)
        return signed

    def update_root(self, data: bytes, now: int) -> Signed[Root]:
        signed, store = self.store.update_root(data, now)
        self._commit(store)
        return signed
