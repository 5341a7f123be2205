"""The content-addressed store in the daemon's swarm (issue P12): a node that holds v1 and
fetches v2 (content-defined chunks, most of them v1's) takes the shared chunks from its own
store and fetches from its peer only the rest.  Real ``GossipService`` + ``SwarmService``
pairs over tcp on loopback, real ``ChunkStore``s, a real replica as the origin (which must
serve nothing)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trio

from p2pupdate.core import cdc
from p2pupdate.core import documents as docs
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.daemon.chunkstore import ChunkStore
from tests.coordinator.service_helpers import Network, http, in_process
from tests.daemon.test_swarm_daemon import _linked, _start

PARAMS = cdc.CdcParams(min_size=1024, avg_size=4096, max_size=16384)
V1 = random.Random(21).randbytes(160_000)
V2 = V1[:80_000] + b"v2" * 50 + V1[80_100:]


@pytest.fixture
def network(tmp_path: Path) -> Network:
    return Network(tmp_path / "network")


def _signed(net: Network, data: bytes, name: str, counter: int) -> bytes:
    ends = cdc.boundaries(data, PARAMS)
    sizes = tuple(b - a for a, b in zip((0, *ends[:-1]), ends, strict=True))
    now = int(time.time())
    rel = docs.Release.for_bytes(
        data,
        name=name,
        counter=counter,
        chunk_size=PARAMS.avg_size,
        issued=now,
        expires=now + 86400,
        sizes=sizes,
    )
    return rel.sign([net.key("release")]).to_wire()


def _publish(net: Network, url: str) -> tuple[ChunkMap, ChunkMap]:
    maps = []
    for data, name, counter in ((V1, "v1", 1), (V2, "v2", 2)):
        signed = _signed(net, data, name, counter)
        assert http("POST", f"{url}/v1/publish", signed)[0] == 200
        rel = net.trust().verify(docs.Release, signed, int(time.time())).doc
        maps.append(ChunkMap.of_release(rel))
    arts = [m.artifact for m in maps]
    assert http("POST", f"{url}/v1/publish", net.allowlist(1, arts))[0] == 200
    for m, data in zip(maps, (V1, V2), strict=True):
        assert http("PUT", f"{url}/v1/artifacts/{m.artifact}", data)[0] == 200
    return maps[0], maps[1]


def _origin_bytes(replica: object) -> int:
    arts = replica.status()["origin"]["artifacts"]  # type: ignore[attr-defined]
    return sum(int(entry.get("bytes", 0)) for entry in arts.values())


def _hold(store: ChunkStore, cmap: ChunkMap, data: bytes) -> None:
    store.open(cmap)
    for c in cmap.chunks:
        assert store.put_chunk(cmap.artifact, c.index, cmap.slice(data, c.index))


async def test_a_node_holding_v1_fetches_only_what_v2_adds(
    network: Network, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        async with in_process(network) as (replica, url), trio.open_nursery() as nursery:
            m1, m2 = await trio.to_thread.run_sync(_publish, network, url)
            shared = {c.index for c in m2.chunks if c.digest in {d.digest for d in m1.chunks}}
            assert 0 < len(shared) < m2.count
            seed = await _start(nursery, network, tmp_path, 0, url=url)
            _hold(seed.store, m2, V2)
            assert await seed.swarm.seed(m2)
            fetcher = await _start(
                nursery, network, tmp_path, 1, peers=[("127.0.0.1", seed.gossip.port)], url=url
            )
            _hold(fetcher.store, m1, V1)  # the build it runs
            assert await fetcher.swarm.seed(m1)
            await _linked((seed, fetcher))
            got = await fetcher.swarm.fetch(m2, deadline=trio.current_time() + 30)
            assert fetcher.store.path(m2.artifact).read_bytes() == V2
            assert (got.held, got.peers, got.origin) == (len(shared), m2.count - len(shared), 0)
            fresh = sum(c.length for c in m2.chunks if c.index not in shared)
            assert seed.swarm.summary()["bytes_up"] == fresh  # only what v1 lacked moved
            down = fetcher.swarm.summary()
            assert down["reused_chunks"] == len(shared)
            assert down["reused_bytes"] == m2.length - fresh
            assert any(
                f"reused {len(shared)} of {m2.count} chunks" in line for line in fetcher.lines
            )
            assert _origin_bytes(replica) == 0
            nursery.cancel_scope.cancel()
