"""The chunk map: the one home of how a release record cuts its artifact."""

from __future__ import annotations

import hashlib

import pytest

from p2pupdate.core import documents as docs
from p2pupdate.core.errors import SchemaError
from p2pupdate.core.origin import check_artifact
from p2pupdate.core.swarm.chunks import Chunk, ChunkMap

NOW = 1_700_000_000


def release_of(data: bytes, chunk_size: int = 1024) -> docs.Release:
    return docs.Release.for_bytes(
        data, name="app", counter=1, chunk_size=chunk_size, issued=NOW, expires=NOW + 100
    )


def test_of_release_cuts_fixed_chunks_with_a_short_last_one() -> None:
    data = bytes(range(256)) * 10  # 2560 bytes: 1024 + 1024 + 512
    cmap = ChunkMap.of_release(release_of(data))
    assert cmap.artifact == hashlib.sha256(data).hexdigest()
    assert cmap.length == 2560 and cmap.count == 3
    assert [(c.index, c.offset, c.length) for c in cmap.chunks] == [
        (0, 0, 1024),
        (1, 1024, 1024),
        (2, 2048, 512),
    ]
    for c in cmap.chunks:
        assert cmap.check(c.index, cmap.slice(data, c.index))
    assert cmap.first_bad(data) is None


def test_check_wants_exact_length_and_hash() -> None:
    data = b"x" * 3000
    cmap = ChunkMap.of_release(release_of(data))
    good = cmap.slice(data, 2)
    assert cmap.check(2, good)
    assert not cmap.check(2, good + b"x")  # too long
    assert not cmap.check(2, good[:-1])  # too short
    assert not cmap.check(2, b"y" * len(good))  # same length, other bytes
    assert not cmap.check(1, good)  # another chunk's bytes
    assert not cmap.check(3, good) and not cmap.check(-1, good)  # not a chunk of it


def test_chunks_of_unequal_sizes_are_fine() -> None:
    """Nothing assumes one chunk size (content-defined chunks later): offsets rule."""
    data = b"abcdefghij" * 10
    cuts = [(0, 7), (7, 50), (57, 43)]
    chunks = tuple(
        Chunk(index=i, offset=o, length=n, digest=hashlib.sha256(data[o : o + n]).digest())
        for i, (o, n) in enumerate(cuts)
    )
    cmap = ChunkMap(artifact="a" * 64, length=100, chunks=chunks)
    assert all(cmap.check(i, cmap.slice(data, i)) for i in range(3))
    assert cmap.first_bad(data[:57] + b"Z" + data[58:]) == 2


@pytest.mark.parametrize(
    "cuts, length",
    [([(0, 7), (8, 92)], 100), ([(0, 50), (50, 49)], 100), ([(0, 0), (0, 100)], 100)],
)
def test_a_map_with_gaps_overlaps_or_empty_chunks_is_refused(
    cuts: list[tuple[int, int]], length: int
) -> None:
    chunks = tuple(
        Chunk(index=i, offset=o, length=n, digest=b"\0" * 32) for i, (o, n) in enumerate(cuts)
    )
    with pytest.raises(SchemaError):
        ChunkMap(artifact="a" * 64, length=length, chunks=chunks)


def test_check_artifact_uses_the_map_and_names_the_first_bad_chunk() -> None:
    data = bytes(range(256)) * 20
    release = release_of(data)
    assert check_artifact(data, release, 10_000) == ""
    bad = data[:2100] + b"\xff" + data[2101:]
    assert check_artifact(bad, release, 10_000) == "chunk 2 does not match the release record"
    assert check_artifact(data, release, 100) == "more than 100 bytes"
