"""The node's trust state on disk: ``STATE_DIR/trust/store.msgpack``.

The core's ``TrustStore`` is an immutable value; this shell loads it, lets the core accept
documents, and persists the new value atomically *only after* the core accepted. A
rejected document therefore never changes the file, and a crash mid-write leaves the old
file (``fsutil.atomic_write``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from ..core.documents import Document, Root, Signed
from ..core.trust import STATE_LIMITS, TrustStore
from ..fsutil import atomic_write, read_limited

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
    def open(cls, directory: Path, *, initial_root: bytes, now: int) -> TrustFile:
        """Load the persisted store, or start from ``initial_root`` (trust on first use)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / STORE_NAME
        if path.exists():
            store = TrustStore.from_bytes(read_limited(path, STATE_LIMITS.max_bytes))
        else:
            store = TrustStore.from_root(initial_root, now)
            atomic_write(path, store.to_bytes(), mode=0o600)
        return cls(directory, store)

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
