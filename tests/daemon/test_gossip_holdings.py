"""Two real ``GossipService`` instances over tcp on loopback learn from each other's
heartbeats which artifacts the other's real chunk store holds or is fetching (README
"Artifacts peer to peer": finding holders)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from p2pupdate.clock import SYSTEM
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core import gossip as g
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.daemon.chunkstore import ChunkStore
from p2pupdate.daemon.gossip import GossipService, trust_verifier
from p2pupdate.daemon.truststate import TrustFile
from tests.coordinator.service_helpers import Network
from tests.daemon.storeutil import status_of

RUNNING = "ab" * 32


def _map(data: bytes) -> ChunkMap:
    now = int(time.time())
    rel = docs.Release.for_bytes(
        data, name="v", counter=1, chunk_size=1024, issued=now, expires=now + 3600
    )
    return ChunkMap.of_release(rel)


def _status_of(store: ChunkStore) -> Callable[[], g.Status]:
    return status_of(store, RUNNING)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return Network(tmp_path_factory.mktemp("net") / "network")


def _service(
    net: Network, d: Path, i: int, store: ChunkStore, peers: list[tuple[str, int]]
) -> GossipService:
    trust = TrustFile.open(d / f"trust-{i}", initial_root=net.root_bytes, now=int(time.time()))
    return GossipService(
        key=crypto.SigningKey.from_seed(bytes([i + 1]) * 32),
        status=_status_of(store),
        clock=SYSTEM,
        verify=trust_verifier(trust, SYSTEM),
        listen=(f"127.0.0.{i + 1}", 0),
        peers=peers,
        rng=random.Random(i),
        config=g.GossipConfig(round_interval=0.1, heartbeat_interval=0.5),
    )


async def test_two_services_see_each_others_holdings(network: Network, tmp_path: Path) -> None:
    rng = random.Random(5)
    whole, part = rng.randbytes(4 * 1024), rng.randbytes(8 * 1024)
    whole_map, part_map = _map(whole), _map(part)
    # A holds one artifact whole; B is fetching another, 2 of its 8 chunks held verified
    store_a, store_b = ChunkStore(tmp_path / "a"), ChunkStore(tmp_path / "b")
    store_a.open(whole_map)
    for c in whole_map.chunks:
        assert store_a.put_chunk(whole_map.artifact, c.index, whole[c.offset : c.offset + c.length])
    store_b.open(part_map)
    for c in part_map.chunks[:2]:
        assert store_b.put_chunk(part_map.artifact, c.index, part[c.offset : c.offset + c.length])
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            a = _service(network, tmp_path, 0, store_a, [])
            port = await nursery.start(a.run)
            b = _service(network, tmp_path, 1, store_b, [("127.0.0.1", port)])
            await nursery.start(b.run)
            while a.core is None or b.core is None:
                await trio.sleep(0.05)
            a_id, b_id = a.core.node, b.core.node
            while not (b.core.holders(whole_map.artifact) and a.core.holders(part_map.artifact)):
                await trio.sleep(0.05)
            assert b.core.holders(whole_map.artifact) == [(a_id, "held", 255)]
            assert a.core.holders(part_map.artifact) == [(b_id, "fetching", 2 * 255 // 8)]
            assert b.core.holders(part_map.artifact) == []  # not its own holder
            # B's store gets the rest: its next heartbeat says it holds it whole
            for c in part_map.chunks[2:]:
                assert store_b.put_chunk(
                    part_map.artifact, c.index, part[c.offset : c.offset + c.length]
                )
            while a.core.holders(part_map.artifact) != [(b_id, "held", 255)]:
                await trio.sleep(0.05)
            assert a.stats.penalties == 0 and b.stats.penalties == 0
            nursery.cancel_scope.cancel()
