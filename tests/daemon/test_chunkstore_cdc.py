"""The chunk store as a content-addressed store (issue P12): a new artifact's chunks that a
held artifact has too are copied, re-checked against the target's digest, before anything
is fetched.  Real files; content-defined chunk maps (``core.cdc``) of small builds."""

from __future__ import annotations

import random
from pathlib import Path

from p2pupdate.core import cdc
from p2pupdate.core import documents as docs
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.daemon.chunkstore import ChunkStore

PARAMS = cdc.CdcParams(min_size=1024, avg_size=4096, max_size=16384)
NOW = 1_800_000_000


def cdc_map(data: bytes) -> ChunkMap:
    ends = cdc.boundaries(data, PARAMS)
    sizes = tuple(b - a for a, b in zip((0, *ends[:-1]), ends, strict=True))
    rel = docs.Release.for_bytes(
        data, name="v", counter=1, chunk_size=4096, issued=NOW, expires=NOW + 3600, sizes=sizes
    )
    return ChunkMap.of_release(rel)


def builds() -> tuple[bytes, bytes]:
    """v1, and v2 = v1 with 100 bytes changed in the middle (its chunks resync after)."""
    v1 = random.Random(7).randbytes(200_000)
    v2 = v1[:100_000] + b"x" * 100 + v1[100_100:]
    return v1, v2


def hold(store: ChunkStore, data: bytes) -> ChunkMap:
    cmap = cdc_map(data)
    store.open(cmap)
    for i in store.missing(cmap.artifact):
        assert store.put_chunk(cmap.artifact, i, cmap.slice(data, i))
    assert store.complete(cmap.artifact)
    return cmap


def test_a_new_artifact_takes_the_chunks_a_held_one_has(tmp_path: Path) -> None:
    v1, v2 = builds()
    lines: list[str] = []
    store = ChunkStore(tmp_path, log=lines.append)
    m1 = hold(store, v1)
    m2 = cdc_map(v2)
    shared = {c.index for c in m2.chunks if c.digest in {d.digest for d in m1.chunks}}
    assert 0 < len(shared) < m2.count
    held = store.open(m2)
    assert held == shared
    assert store.missing(m2.artifact) == sorted(set(range(m2.count)) - shared)
    assert store.reused_chunks == len(shared)
    assert store.reused_bytes == sum(m2.chunks[i].length for i in shared)
    assert any(
        f"reused {len(shared)} of {m2.count} chunks ({store.reused_bytes} bytes) from held" in line
        for line in lines
    )
    for i in store.missing(m2.artifact):
        assert store.put_chunk(m2.artifact, i, m2.slice(v2, i))
    assert store.path(m2.artifact).read_bytes() == v2
    # a restart resumes without copying again what it recorded
    again = ChunkStore(tmp_path)
    assert again.open(m2) == frozenset(range(m2.count)) and again.reused_chunks == 0


def test_the_index_survives_a_restart_through_the_layout_file(tmp_path: Path) -> None:
    v1, v2 = builds()
    hold(ChunkStore(tmp_path), v1)
    store = ChunkStore(tmp_path)  # v1 held complete, not opened by this process
    m2 = cdc_map(v2)
    assert len(store.open(m2)) == store.reused_chunks > 0


def test_reuse_never_copies_bytes_whose_sha256_is_not_the_target(tmp_path: Path) -> None:
    """v1's file damaged at a shared chunk, and v1's layout forged to claim the digest of a
    v2 chunk where other bytes lie: neither is copied, both are fetched."""
    v1, v2 = builds()
    m1 = hold(ChunkStore(tmp_path), v1)
    m2 = cdc_map(v2)
    shared = [c for c in m2.chunks if c.digest in {d.digest for d in m1.chunks}]
    damaged = next(c for c in m1.chunks if c.digest == shared[0].digest)
    path = tmp_path / f"{m1.artifact}.tar.gz"
    with path.open("r+b") as f:
        f.seek(damaged.offset + 10)
        f.write(b"\xff" * 4)
    # the layout (a local file, only a hint) claims a v2-only digest for v1's chunk 1
    only_v2 = next(c for c in m2.chunks if c.digest not in {d.digest for d in m1.chunks})
    layout = tmp_path / f"{m1.artifact}.layout"
    raw = bytearray(layout.read_bytes())
    entry = len(b"p2pupdate-layout-1\n") + 36 * 1
    raw[entry : entry + 36] = only_v2.length.to_bytes(4, "big") + only_v2.digest
    layout.write_bytes(bytes(raw))
    lines: list[str] = []
    store = ChunkStore(tmp_path, log=lines.append)
    held = store.open(m2)
    assert shared[0].index not in held and only_v2.index not in held
    for i in held:  # what was copied is exactly the target's bytes
        assert store.read_chunk(m2.artifact, i) == m2.slice(v2, i)
    assert any("did not match and will be fetched" in line for line in lines)
    for i in store.missing(m2.artifact):
        assert store.put_chunk(m2.artifact, i, m2.slice(v2, i))
    assert store.path(m2.artifact).read_bytes() == v2


def test_a_chunk_listed_twice_is_filled_at_both_positions_by_one_put(tmp_path: Path) -> None:
    piece = random.Random(1).randbytes(5000)
    middle = random.Random(2).randbytes(7000)
    data = piece + middle + piece
    rel = docs.Release.for_bytes(
        data,
        name="v",
        counter=1,
        chunk_size=4096,
        issued=NOW,
        expires=NOW + 3600,
        sizes=(5000, 7000, 5000),
    )
    cmap = ChunkMap.of_release(rel)
    store = ChunkStore(tmp_path)
    assert store.open(cmap) == frozenset()
    assert store.put_chunk(cmap.artifact, 2, piece)  # one fetch
    assert store.have(cmap.artifact) == {0, 2}
    assert store.missing(cmap.artifact) == [1]
    assert store.put_chunk(cmap.artifact, 1, middle)
    assert store.path(cmap.artifact).read_bytes() == data


def test_a_damaged_layout_file_is_ignored(tmp_path: Path) -> None:
    v1, v2 = builds()
    m1 = hold(ChunkStore(tmp_path), v1)
    (tmp_path / f"{m1.artifact}.layout").write_bytes(b"junk")
    store = ChunkStore(tmp_path)
    assert store.open(cdc_map(v2)) == frozenset() and store.reused_chunks == 0


def test_a_build_installed_whole_lends_its_chunks_once_remembered(tmp_path: Path) -> None:
    """``--initial-artifact`` (the launcher) writes the running build straight into the
    store, never opened: without its layout the store cannot index it; ``remember`` (the
    coordinator link calls it for every release it holds) fixes that without reading it."""
    v1, v2 = builds()
    m1, m2 = cdc_map(v1), cdc_map(v2)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / f"{m1.artifact}.tar.gz").write_bytes(v1)  # as the launcher installs it
    store = ChunkStore(tmp_path)
    assert not store.remember(m2)  # not held whole: nothing noted
    assert store.remember(m1)
    assert len(store.open(m2)) == store.reused_chunks > 0
    other = tmp_path / "other"
    other.mkdir()
    (other / f"{m1.artifact}.tar.gz").write_bytes(v1)
    assert ChunkStore(other).open(m2) == frozenset()  # not remembered: fetched whole
