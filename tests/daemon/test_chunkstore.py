"""The node's chunk store (``daemon.chunkstore``) on real files: resume, re-verify, cleanup.

The resume-after-kill test against a real replica and a real SIGKILL is in
``test_origin_fetch.py``; here the store alone: what survives a reopen, what a changed
byte on disk does, and what cleanup keeps.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import time
from pathlib import Path

import pytest

from p2pupdate.core import documents as docs
from p2pupdate.core.swarm.chunks import Chunk, ChunkMap
from p2pupdate.daemon.chunkstore import ChunkStore

CHUNK = 1024


def _map(data: bytes, chunk_size: int = CHUNK) -> ChunkMap:
    now = int(time.time())
    rel = docs.Release.for_bytes(
        data, name="v", counter=1, chunk_size=chunk_size, issued=now, expires=now + 3600
    )
    return ChunkMap.of_release(rel)


def _uneven(data: bytes, cuts: list[int]) -> ChunkMap:
    """A map of chunks of different sizes (content-defined cuts: never one size)."""
    bounds = [0, *cuts, len(data)]
    chunks = tuple(
        Chunk(index=i, offset=a, length=b - a, digest=hashlib.sha256(data[a:b]).digest())
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    )
    return ChunkMap(artifact=hashlib.sha256(data).hexdigest(), length=len(data), chunks=chunks)


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_partial_survives_reopen_and_a_bad_chunk_is_refused(tmp_path: Path) -> None:
    data = _data(5 * CHUNK + 300)
    cmap = _map(data)
    lines: list[str] = []
    store = ChunkStore(tmp_path, log=lines.append)
    assert store.open(cmap) == frozenset()
    assert not store.put_chunk(cmap.artifact, 1, cmap.slice(data, 2))  # wrong bytes: refused
    assert not store.put_chunk(cmap.artifact, 1, cmap.slice(data, 1)[:-1])  # short
    for i in (0, 3, 5):
        assert store.put_chunk(cmap.artifact, i, cmap.slice(data, i))
    assert store.read_chunk(cmap.artifact, 1) is None  # never stored: never served
    assert store.read_chunk(cmap.artifact, 5) == cmap.slice(data, 5)
    assert not store.path(cmap.artifact).exists()  # partial: no installable file yet

    again = ChunkStore(tmp_path, log=lines.append)  # a restart
    assert again.open(cmap) == {0, 3, 5}
    assert again.missing(cmap.artifact) == [1, 2, 4]
    assert again.summary() == {cmap.artifact: (3, 6)}
    for i in again.missing(cmap.artifact):
        assert again.put_chunk(cmap.artifact, i, cmap.slice(data, i))
    assert again.complete(cmap.artifact)
    assert again.path(cmap.artifact).read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{cmap.artifact}.layout",  # the cut, for the content-addressed index
        f"{cmap.artifact}.tar.gz",
    ]


def test_chunks_of_different_sizes(tmp_path: Path) -> None:
    data = _data(10_000, seed=2)
    cmap = _uneven(data, [1, 4000, 4100, 9999])
    store = ChunkStore(tmp_path)
    store.open(cmap)
    for i in reversed(range(cmap.count)):
        assert store.put_chunk(cmap.artifact, i, cmap.slice(data, i))
    assert store.path(cmap.artifact).read_bytes() == data
    assert ChunkStore(tmp_path).open(cmap) == frozenset(range(cmap.count))


@pytest.mark.parametrize("complete", [True, False])
def test_a_chunk_changed_on_disk_is_dropped_at_start(tmp_path: Path, complete: bool) -> None:
    data = _data(6 * CHUNK, seed=3)
    cmap = _map(data)
    store = ChunkStore(tmp_path)
    store.open(cmap)
    for i in range(cmap.count if complete else 4):
        store.put_chunk(cmap.artifact, i, cmap.slice(data, i))
    path = store.path(cmap.artifact) if complete else tmp_path / f"{cmap.artifact}.part"
    with path.open("r+b") as f:  # one flipped byte in chunk 2
        f.seek(2 * CHUNK + 17)
        b = f.read(1)
        f.seek(2 * CHUNK + 17)
        f.write(bytes([b[0] ^ 0xFF]))

    lines: list[str] = []
    again = ChunkStore(tmp_path, log=lines.append)
    held = again.open(cmap)
    assert 2 not in held and held == (set(range(6)) if complete else {0, 1, 3}) - {2}
    assert len([m for m in lines if "no longer match" in m]) == 1, lines
    assert not again.path(cmap.artifact).exists()  # a damaged artifact is not installable
    for i in again.missing(cmap.artifact):
        again.put_chunk(cmap.artifact, i, cmap.slice(data, i))
    assert again.path(cmap.artifact).read_bytes() == data


def test_a_chunk_that_rots_while_held_is_not_served(tmp_path: Path) -> None:
    data = _data(3 * CHUNK, seed=4)
    cmap = _map(data)
    lines: list[str] = []
    store = ChunkStore(tmp_path, log=lines.append)
    store.open(cmap)
    for i in range(3):
        store.put_chunk(cmap.artifact, i, cmap.slice(data, i))
    with store.path(cmap.artifact).open("r+b") as f:
        f.seek(CHUNK)
        f.write(b"\0" * 10)
    assert store.read_chunk(cmap.artifact, 0) == cmap.slice(data, 0)
    assert store.read_chunk(cmap.artifact, 1) is None
    assert store.missing(cmap.artifact) == [1]
    assert not store.complete(cmap.artifact)
    assert any("chunk 1 no longer matches" in m for m in lines)


def test_a_record_of_another_cut_is_not_trusted(tmp_path: Path) -> None:
    """P12's content-defined chunks cut the same artifact differently: a record made for
    one map says nothing about another; every chunk is checked by its digest instead."""
    data = _data(4 * CHUNK, seed=5)
    fixed, uneven = _map(data), _uneven(data, [100, 2000, 3000])
    store = ChunkStore(tmp_path)
    store.open(fixed)
    store.put_chunk(fixed.artifact, 0, fixed.slice(data, 0))
    lines: list[str] = []
    again = ChunkStore(tmp_path, log=lines.append)
    # chunk 0 of the uneven map (bytes 0-99) lies inside what was written: its digest holds
    assert again.open(uneven) == {0}
    assert any("not a record of this chunk map" in m for m in lines)


def _complete(store: ChunkStore, data: bytes) -> str:
    cmap = _map(data)
    store.open(cmap)
    for i in range(cmap.count):
        store.put_chunk(cmap.artifact, i, cmap.slice(data, i))
    return cmap.artifact


def test_cleanup_keeps_running_previous_named_and_respects_the_cap(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    size = 8 * CHUNK
    running, previous, named_old, named_new, gone = (
        _complete(store, _data(size, seed=10 + i)) for i in range(5)
    )
    partial_map = _map(_data(size, seed=20))
    store.open(partial_map)
    store.put_chunk(partial_map.artifact, 0, _data(size, seed=20)[:CHUNK])
    for age, artifact in enumerate([running, previous, named_old, named_new, gone]):
        t = 1_700_000_000 + age * 100
        os.utime(store.path(artifact), (t, t))
    os.utime(store.path(running), (1, 1))  # the oldest of all, and protected

    protected = {running, previous}
    named = {running, previous, named_old, named_new}
    result = store.cleanup(named=named, protected=protected, cap=1 << 30)
    assert set(result.removed) == {gone, partial_map.artifact}
    assert set(store.held()) == {running, previous, named_old, named_new}

    per = max(store.held().values())
    result = store.cleanup(named=named, protected=protected, cap=3 * per)  # one must go
    assert result.removed == (named_old,)  # the oldest unprotected, not the running one
    result = store.cleanup(named=named, protected=protected, cap=0)  # over the cap anyway
    assert result.removed == (named_new,)
    assert set(store.held()) == protected  # never the running or previous build
    assert store.path(running).is_file() and store.path(previous).is_file()


def test_cleanup_without_an_allowlist_removes_only_for_the_cap(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    a = _complete(store, _data(4 * CHUNK, seed=30))
    b = _complete(store, _data(4 * CHUNK, seed=31))
    assert store.cleanup(named=None, protected={a}).removed == ()
    assert store.cleanup(named=None, protected={a}, cap=0).removed == (b,)


@pytest.mark.parametrize("where", ["chunk", "record"])
def test_a_full_disk_mid_chunk_loses_only_that_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """ENOSPC (injected) while a chunk's bytes or its record are written: the write fails
    loudly, nothing unverified is recorded, and a reopened store resumes from the rest."""
    import errno

    from p2pupdate.daemon import chunkstore

    data = _data(6 * CHUNK, seed=40)
    cmap = _map(data)
    store = ChunkStore(tmp_path)
    store.open(cmap)
    for i in (0, 1):
        assert store.put_chunk(cmap.artifact, i, cmap.slice(data, i))

    def full(*_args: object, **_kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "chunk":
        monkeypatch.setattr(chunkstore.os, "pwrite", full)
    else:
        monkeypatch.setattr(chunkstore, "atomic_write", full)
    with pytest.raises(OSError, match="No space"):
        store.put_chunk(cmap.artifact, 2, cmap.slice(data, 2))
    monkeypatch.undo()

    again = ChunkStore(tmp_path)
    assert again.open(cmap) == {0, 1}  # chunk 2 is fetched again, 0 and 1 are not
    for i in again.missing(cmap.artifact):
        assert again.put_chunk(cmap.artifact, i, cmap.slice(data, i))
    assert again.path(cmap.artifact).read_bytes() == data


def test_chunks_written_unsynced_are_held_but_recorded_only_after_sync(tmp_path: Path) -> None:
    """The swarm's batched writes: a chunk put with ``durable=False`` is held and served at
    once but is not in the record, so a kill before ``sync`` loses it (a reopen fetches it
    again) and never leaves a record naming bytes that may not be on disk; after ``sync``
    a reopen holds it; the last chunk completes the artifact with every byte synced."""
    data = _data(4 * CHUNK, seed=50)
    cmap = _map(data)
    store = ChunkStore(tmp_path)
    store.open(cmap)
    assert store.put_chunk(cmap.artifact, 0, cmap.slice(data, 0))  # durable
    assert store.put_chunk(cmap.artifact, 1, cmap.slice(data, 1), durable=False)
    assert store.have(cmap.artifact) == {0, 1}
    assert store.read_chunk(cmap.artifact, 1) == cmap.slice(data, 1)  # served meanwhile
    assert ChunkStore(tmp_path).open(cmap) == {0}  # "killed" now: chunk 1 is fetched again
    assert store.sync(cmap.artifact) == 1
    assert store.sync(cmap.artifact) == 0  # nothing left to sync
    assert ChunkStore(tmp_path).open(cmap) == {0, 1}
    for i in (2, 3):
        assert store.put_chunk(cmap.artifact, i, cmap.slice(data, i), durable=False)
    assert store.complete(cmap.artifact)
    assert store.path(cmap.artifact).read_bytes() == data
    assert ChunkStore(tmp_path).open(cmap) == {0, 1, 2, 3}
