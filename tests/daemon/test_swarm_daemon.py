"""The chunk swarm in the daemon: real ``GossipService`` + ``SwarmService`` pairs over tcp on
loopback, real ``ChunkStore``s, a real replica (in this trio run, on a real socket) as the
origin, whose own ``/status`` counts the bytes it served (README "The swarm in the daemon")."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from p2pupdate.clock import SYSTEM
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core import gossip as g
from p2pupdate.core import swarm as sw
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.daemon.chunkstore import ChunkStore
from p2pupdate.daemon.gossip import GossipService, trust_verifier
from p2pupdate.daemon.replica import QuorumClient
from p2pupdate.daemon.swarm import SwarmService
from p2pupdate.daemon.truststate import TrustFile
from tests.coordinator.service_helpers import Network, artifact_of, http, in_process

CHUNKS = 48
DATA = random.Random(11).randbytes(CHUNKS * 1024 - 100)  # 1 KiB chunks, the last one short
ART = artifact_of(DATA)
RUNNING = "ab" * 32
#: Short enough for a test: a chunk no peer has goes to the origin after this.
GRACE = 0.5


@pytest.fixture
def network(tmp_path: Path) -> Network:
    """A network of its own per test: each test's replica publishes its first allowlist."""
    return Network(tmp_path / "network")


def _release(net: Network) -> docs.Release:
    now = int(time.time())
    return net.trust().verify(docs.Release, net.release(DATA, "v2", 2), now).doc


def _publish(net: Network, url: str) -> ChunkMap:
    release = net.release(DATA, "v2", 2)
    assert http("POST", f"{url}/v1/publish", release)[0] == 200
    assert http("POST", f"{url}/v1/publish", net.allowlist(1, [ART]))[0] == 200
    assert http("PUT", f"{url}/v1/artifacts/{ART}", DATA)[0] == 200
    now = int(time.time())
    rel = net.trust().verify(docs.Release, release, now).doc
    return ChunkMap.of_release(rel)


def _origin_bytes(replica: object) -> int:
    entry = replica.status()["origin"]["artifacts"].get(ART, {})  # type: ignore[attr-defined]
    return int(entry.get("bytes", 0))


def _fill(store: ChunkStore, cmap: ChunkMap, indices: range | list[int]) -> None:
    store.open(cmap)
    for i in indices:
        assert store.put_chunk(ART, i, cmap.slice(DATA, i))


def _status_of(store: ChunkStore) -> Callable[[], g.Status]:
    def status() -> g.Status:
        return g.Status(
            version="1.0",
            artifact=RUNNING,
            state="serving",
            pool="default",
            load=1.0,
            capacity=10.0,
            holdings=g.holdings_from_summary(store.summary(), running=RUNNING),
        )

    return status


@dataclass
class Node:
    gossip: GossipService
    swarm: SwarmService
    store: ChunkStore
    lines: list[str]

    @property
    def id(self) -> str:
        return self.gossip.node


async def _start(
    nursery: trio.Nursery,
    net: Network,
    d: Path,
    i: int,
    *,
    host: str | None = None,
    peers: list[tuple[str, int]] = (),  # type: ignore[assignment]
    url: str | None = None,
    store: ChunkStore | None = None,
    config: sw.SwarmConfig | None = None,
    gossip_config: g.GossipConfig | None = None,
) -> Node:
    """One node's gossip and swarm services on 127.0.0.(i+1), started in ``nursery``."""
    lines: list[str] = []
    store = store if store is not None else ChunkStore(d / f"store-{i}", log=lines.append)
    trust = TrustFile.open(d / f"trust-{i}", initial_root=net.root_bytes, now=int(time.time()))
    key = crypto.SigningKey.from_seed(bytes([i + 1]) * 32)
    gossip = GossipService(
        key=key,
        status=_status_of(store),
        clock=SYSTEM,
        verify=trust_verifier(trust, SYSTEM),
        listen=(host or f"127.0.0.{i + 1}", 0),
        peers=list(peers),
        rng=random.Random(i),
        config=gossip_config or g.GossipConfig(round_interval=0.1, heartbeat_interval=0.5),
        log=lines.append,
    )
    origin = None
    if url is not None:
        client = QuorumClient([url], key, net.trust, log=lines.append, rng=random.Random(i))
        origin = client.fetch_chunk
    swarm = SwarmService(
        links=gossip,
        store=store,
        clock=SYSTEM,
        config=config or sw.SwarmConfig(origin_grace=GRACE),
        origin=origin,
        rng=random.Random(100 + i),
        log=lines.append,
    )
    gossip.swarm = swarm
    await nursery.start(gossip.run)
    await nursery.start(swarm.run)
    return Node(gossip=gossip, swarm=swarm, store=store, lines=lines)


async def _linked(*pairs: tuple[Node, Node]) -> None:
    for a, b in pairs:
        while b.id not in a.gossip.linked() or a.id not in b.gossip.linked():
            await trio.sleep(0.02)


async def test_a_fetcher_gets_the_whole_artifact_from_a_seed_with_no_origin_bytes(
    network: Network, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with in_process(network) as (replica, url), trio.open_nursery() as nursery:
            cmap = await trio.to_thread.run_sync(_publish, network, url)
            seed = await _start(nursery, network, tmp_path, 0, url=url)
            _fill(seed.store, cmap, range(CHUNKS))
            assert await seed.swarm.seed(cmap)
            port = seed.gossip.port
            fetcher = await _start(
                nursery, network, tmp_path, 1, peers=[("127.0.0.1", port)], url=url
            )
            await _linked((seed, fetcher))
            got = await fetcher.swarm.fetch(cmap, deadline=trio.current_time() + 30)
            assert fetcher.store.path(ART).read_bytes() == DATA
            assert (got.held, got.peers, got.origin) == (0, CHUNKS, 0)
            assert _origin_bytes(replica) == 0  # the replica served nothing
            up = seed.swarm.summary()
            assert up["bytes_up"] == len(DATA)
            down = fetcher.swarm.summary()
            assert down["bytes_down_peers"] == len(DATA) and down["bytes_down_origin"] == 0
            assert down["artifacts"][ART]["held"] == CHUNKS
            assert down["artifacts"][ART]["completed_at"] is not None
            line = [m for m in fetcher.lines if "complete:" in m and m.startswith("swarm:")]
            assert line and f"{CHUNKS} chunks from peers, 0 from the origin" in line[0]
            # the link was gossip's own: the frames went to the swarm, not the gossip core
            assert fetcher.gossip.stats.swarm_frames_in > 0
            assert fetcher.gossip.stats.penalties == 0 and seed.gossip.stats.penalties == 0
            nursery.cancel_scope.cancel()


def _origin_requests(replica: object) -> int:
    entry = replica.status()["origin"]["artifacts"].get(ART, {})  # type: ignore[attr-defined]
    return int(entry.get("requests", 0))


async def test_only_the_chunks_no_peer_has_come_from_the_origin(
    network: Network, tmp_path: Path
) -> None:
    """Two peers with partial downloads hold chunks 0-19 and 20-35; nobody but the origin
    has 36-47: exactly those twelve are fetched from it."""
    with trio.fail_after(20):
        async with in_process(network) as (replica, url), trio.open_nursery() as nursery:
            cmap = await trio.to_thread.run_sync(_publish, network, url)
            one = await _start(nursery, network, tmp_path, 0)  # no origin: peers only
            _fill(one.store, cmap, range(0, 20))
            two = await _start(
                nursery, network, tmp_path, 1, peers=[("127.0.0.1", one.gossip.port)]
            )
            _fill(two.store, cmap, range(20, 36))
            for peer in (one, two):  # both are fetching it (they serve what they hold)
                nursery.start_soon(peer.swarm.fetch, cmap)
            fetcher = await _start(
                nursery,
                network,
                tmp_path,
                2,
                peers=[("127.0.0.1", one.gossip.port), ("127.0.0.2", two.gossip.port)],
                url=url,
            )
            await _linked((one, fetcher), (two, fetcher))
            got = await fetcher.swarm.fetch(cmap)  # no deadline: peers are never "too slow"
            assert fetcher.store.path(ART).read_bytes() == DATA
            assert (got.peers, got.origin) == (36, 12)
            assert _origin_requests(replica) == 12
            assert _origin_bytes(replica) == sum(c.length for c in cmap.chunks[36:])
            down = fetcher.swarm.summary()
            assert down["bytes_down_origin"] == _origin_bytes(replica)
            assert down["artifacts"][ART]["origin_chunks"] == 12
            nursery.cancel_scope.cancel()


async def test_an_extra_link_to_a_holder_outside_the_active_view_is_used_then_closed(
    network: Network, tmp_path: Path
) -> None:
    """The holder shares its host with the fetcher's one neighbour, and the fetcher admits
    one active neighbour per host: the holder stays out of its view, known only by its
    heartbeat (through the neighbour) and its contact.  The swarm dials it, fetches
    everything over that link, and closes it; the views are as they were."""
    one_per_host = g.GossipConfig(
        round_interval=0.1, heartbeat_interval=0.5, heartbeat_hops=2, max_active_per_host=1
    )
    small = g.GossipConfig(
        round_interval=0.1,
        heartbeat_interval=0.5,
        heartbeat_hops=2,
        active_min=1,
        active_target=1,
        active_max=2,
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            middle = await _start(
                nursery, network, tmp_path, 6, host="127.0.0.7", gossip_config=small
            )
            holder = await _start(
                nursery,
                network,
                tmp_path,
                7,
                host="127.0.0.7",  # the neighbour's host: one active neighbour from it
                peers=[("127.0.0.7", middle.gossip.port)],
                gossip_config=small,
            )
            cmap = ChunkMap.of_release(_release(network))
            _fill(holder.store, cmap, range(CHUNKS))
            assert await holder.swarm.seed(cmap)
            await _linked((middle, holder))
            fetcher = await _start(
                nursery,
                network,
                tmp_path,
                8,
                peers=[("127.0.0.7", middle.gossip.port)],
                gossip_config=one_per_host,
            )
            await _linked((middle, fetcher))
            core = fetcher.gossip.core
            assert core is not None
            # its heartbeat came through the neighbour; its contact with its refused join
            while not core.holders(ART) or fetcher.gossip.contact_of(holder.id) is None:
                await trio.sleep(0.02)
            while holder.id in fetcher.gossip.linked():  # (its refused link, closing)
                await trio.sleep(0.02)
            views = (core.active, core.passive)
            assert holder.id not in core.active and holder.id in core.passive
            got = await fetcher.swarm.fetch(cmap, deadline=trio.current_time() + 30)
            assert fetcher.store.path(ART).read_bytes() == DATA
            assert (got.peers, got.origin) == (CHUNKS, 0)
            assert fetcher.gossip.stats.extra_links_opened == 1
            assert holder.swarm.summary()["bytes_up"] == len(DATA)
            while holder.id in fetcher.gossip.linked():  # closed once nothing flows on it
                await trio.sleep(0.05)
            assert fetcher.gossip.stats.extra_links_closed == 1
            assert (core.active, core.passive) == views
            assert holder.id not in core.linked
            assert fetcher.gossip.stats.penalties == holder.gossip.stats.penalties == 0
            nursery.cancel_scope.cancel()
