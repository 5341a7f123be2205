"""The trust state file: changed only by accepted documents, reloadable, crash-safe."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import RollbackError, SignatureError
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.fsutil import atomic_write

NOW = 1_800_000_000


def _key(name: str) -> crypto.SigningKey:
    return crypto.SigningKey.from_seed(hashlib.sha256(name.encode()).digest())


KEYS = {r: _key(r) for r in docs.ROLES}


def _root() -> bytes:
    root = docs.Root(
        version=1,
        issued=NOW - 10,
        expires=NOW + 10**6,
        network="t",
        keys={k.keyid: k.public_key for k in KEYS.values()},
        roles={r: docs.Role(keys=(k.keyid,), threshold=1) for r, k in KEYS.items()},
    )
    return root.sign([KEYS["root"]]).to_wire()


def _allowlist(version: int, signer: str = "coordinator") -> bytes:
    doc = docs.Allowlist(version=version, issued=NOW, expires=NOW + 3600, artifacts=("aa" * 32,))
    return doc.sign([KEYS[signer] if signer in KEYS else _key(signer)]).to_wire()


def test_accepted_documents_persist_and_reload(tmp_path: Path) -> None:
    tf = TrustFile.open(tmp_path / "trust", initial_root=_root(), now=NOW)
    tf.accept(docs.Allowlist, _allowlist(3), NOW)
    again = TrustFile.open(tmp_path / "trust", initial_root=b"ignored once a store exists", now=NOW)
    assert again.store == tf.store
    assert again.store.floors["allowlist"].value == 3
    assert oct(os.stat(tf.path).st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("data", "error"),
    [(_allowlist(2), RollbackError), (_allowlist(9, signer="stranger"), SignatureError)],
)
def test_rejected_document_leaves_the_file_byte_for_byte(
    tmp_path: Path, data: bytes, error: type[Exception]
) -> None:
    tf = TrustFile.open(tmp_path, initial_root=_root(), now=NOW)
    tf.accept(docs.Allowlist, _allowlist(3), NOW)
    before = tf.path.read_bytes()
    mtime = tf.path.stat().st_mtime_ns
    with pytest.raises(error):
        tf.accept(docs.Allowlist, data, NOW)
    assert tf.path.read_bytes() == before
    assert tf.path.stat().st_mtime_ns == mtime
    assert TrustFile.open(tmp_path, initial_root=b"", now=NOW).store.floors["allowlist"].value == 3


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")
    atomic_write(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_failed_write_keeps_old_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")

    def boom(fd: int) -> None:  # fault injection: the disk fails before the rename
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
