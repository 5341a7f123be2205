"""Attacks on content-defined chunk lists (issue P12): "a chunk list that reuses a valid
chunk under another hash".

A content-defined release lists chunks of many sizes, some of them the same bytes as a
chunk of another release (that is the point: a node copies them from what it holds), and
a record may even list one chunk twice.  None of that may open a door:

* a peer that answers a request for chunk ``j`` with the (valid, well-hashed) bytes of
  chunk ``k`` is blamed -- exactly that peer, with a ban on proof -- and the download ends
  with the right bytes from honest peers;
* a record whose ``sizes`` do not fit its ``length`` (or its chunk list) is a
  ``SchemaError`` before anything uses it;
* a record that names one chunk at two positions downloads fine through the swarm.

The store's side (reuse never copies bytes whose sha256 is not the target's; one fetch
fills both positions of a chunk listed twice) is in ``tests/daemon/test_chunkstore_cdc.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from p2pupdate.core import cdc
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import SchemaError
from p2pupdate.core.swarm import messages as m
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.core.swarm.config import SwarmConfig
from tests.core.swarm_harness import NOW, CoreNode, Net, Scripted, artifact_bytes

#: Small content-defined chunks (1..16 KiB) so a 96 KiB artifact has a dozen or more.
PARAMS = cdc.CdcParams(min_size=1024, avg_size=4096, max_size=16384)
CFG = SwarmConfig(max_block=1024, request_timeout=2.0, origin_grace=3.0)


def cdc_release(data: bytes) -> docs.Release:
    ends = cdc.boundaries(data, PARAMS)
    sizes = tuple(b - a for a, b in zip((0, *ends[:-1]), ends, strict=True))
    return docs.Release.for_bytes(
        data,
        name="app",
        counter=1,
        chunk_size=PARAMS.avg_size,
        issued=NOW,
        expires=NOW + 3600,
        sizes=sizes,
    )


DATA = artifact_bytes(96 * 1024, seed="cdc")
MAP = ChunkMap.of_release(cdc_release(DATA))
ART = MAP.artifact
MAP_SIZES = [c.length for c in MAP.chunks]


@dataclass(kw_only=True, eq=False)
class Swapper(Scripted):
    """Answers a request for chunk ``j`` with the true bytes of chunk ``j + 1`` (a valid
    chunk of the same release, under its own hash), as far as they reach."""

    def answer(self, peer: str, req: m.Request) -> None:
        other = self.cmap.chunks[(req.chunk + 1) % self.cmap.count]
        start = other.offset + req.offset
        data = self.data[start : start + req.length]
        data += self.data[: req.length - len(data)]  # pad from the start: the length is right
        self.send(peer, self.block(req, data))


def _fleet(cmap: ChunkMap, data: bytes, bad: Scripted | None) -> tuple[list[CoreNode], CoreNode]:
    net = Net()
    art = cmap.artifact
    seeds = [
        net.add(CoreNode(name=f"seed{i}", config=CFG, origin={art: data}, seed=i)).start(
            cmap, held=data
        )
        for i in range(2)
    ]
    fetcher = net.add(CoreNode(name="fetch", config=CFG, origin={art: data}, seed=100)).start(cmap)
    for s in seeds:
        net.link(s, fetcher, art)
    if bad is not None:
        net.add(bad)
        net.link(fetcher, bad, art)
    net.run(300, stop=lambda: art in fetcher.completed_at)
    return seeds, fetcher


def test_the_map_is_content_defined() -> None:
    sizes = {c.length for c in MAP.chunks}
    assert MAP.count >= 8 and len(sizes) > 1  # many chunks, not of one size


def test_a_peer_answering_chunk_j_with_valid_chunk_k_is_banned_and_only_it() -> None:
    bad = Swapper(name="swapper", data=DATA, cmap=MAP)
    seeds, fetcher = _fleet(MAP, DATA, bad)
    assert fetcher.bytes_of(ART) == DATA
    assert bad.requests_seen > 0  # it was asked, and answered with chunk k's bytes
    assert [b.reason.split(":")[0] for b in fetcher.banned(bad.id)] == ["bad_chunk"]
    for s in seeds:
        assert fetcher.penalised(s.id) == [] and fetcher.banned(s.id) == []
    assert fetcher.origin_asked == []


def test_a_record_naming_one_chunk_twice_downloads_through_the_swarm() -> None:
    piece = artifact_bytes(5000, seed="twice")
    middle = artifact_bytes(7000, seed="between")
    data = piece + middle + piece + middle[:3000]
    sizes = (5000, 7000, 5000, 3000)
    rel = docs.Release.for_bytes(
        data, name="app", counter=1, chunk_size=4096, issued=NOW, expires=NOW + 3600, sizes=sizes
    )
    cmap = ChunkMap.of_release(rel)
    assert rel.chunks[0] == rel.chunks[2]  # one digest listed at two positions
    _seeds, fetcher = _fleet(cmap, data, None)
    assert fetcher.bytes_of(cmap.artifact) == data


def _obj(**change: object) -> dict[str, object]:
    obj = cdc_release(DATA).to_obj()
    obj.update(change)
    return obj


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sizes": [*MAP_SIZES, 1]}, "chunk sizes for"),
        ({"sizes": [MAP_SIZES[0] + 1, *MAP_SIZES[1:]]}, "add up to"),
        ({"sizes": [MAP_SIZES[0] - 1, *MAP_SIZES[1:-1], MAP_SIZES[-1] + 1]}, ""),
        ({"sizes": [0, *MAP_SIZES]}, "size 0"),
        ({"sizes": []}, "empty"),
        ({"sizes": [docs.MAX_CDC_CHUNK + 1]}, "integer in"),
        ({"sizes": "1,2"}, "array"),
        ({"length": len(DATA) + 1}, "add up to"),
    ],
)
def test_a_cdc_record_whose_sizes_do_not_fit_is_a_schema_error(
    change: dict[str, object], message: str
) -> None:
    obj = _obj(**change)
    if not message:  # sizes that add up but cut elsewhere: a valid record of another cut,
        rel = docs.Release.from_obj(obj)  # whose chunk hashes then fail (never trusted)
        cmap = ChunkMap.of_release(rel)
        assert cmap.first_bad(DATA) == 0
        return
    with pytest.raises(SchemaError, match=message):
        docs.Release.from_obj(obj)


def test_a_record_without_sizes_is_exactly_todays() -> None:
    fixed = docs.Release.for_bytes(
        DATA, name="app", counter=1, chunk_size=4096, issued=NOW, expires=NOW + 3600
    )
    assert "sizes" not in fixed.to_obj()
    assert docs.Release.from_payload(fixed.to_payload()) == fixed
    cut = cdc_release(DATA)
    assert docs.Release.from_payload(cut.to_payload()) == cut
    assert ChunkMap.of_release(cut).layout != ChunkMap.of_release(fixed).layout
