"""The chunk swarm in the daemon: real ``GossipService`` + ``SwarmService`` pairs over tcp on
loopback, real ``ChunkStore``s, a real replica (in this trio run, on a real socket) as the
origin, whose own ``/status`` counts the bytes it served (README "The swarm in the daemon")."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from coordinator.origin import NODE_HEADER, OriginConfig
from p2pupdate.clock import SYSTEM
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core import gossip as g
from p2pupdate.core import swarm as sw
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.daemon.chunkstore import ChunkStore
from p2pupdate.daemon.gossip import (
    GossipService,
    SwarmQueue,
    frame_kind,
    is_swarm_frame,
    trust_verifier,
)
from p2pupdate.daemon.options import rate
from p2pupdate.daemon.replica import QuorumClient
from p2pupdate.daemon.swarm import SYNC_INTERVAL, SwarmService
from p2pupdate.daemon.truststate import TrustFile
from tests.coordinator.service_helpers import Network, artifact_of, http, in_process
from tests.daemon.storeutil import status_of

CHUNKS = 48
DATA = random.Random(11).randbytes(CHUNKS * 1024 - 100)  # 1 KiB chunks, the last one short
ART = artifact_of(DATA)
RUNNING = "ab" * 32
#: Short enough for a test: a chunk no peer has goes to the origin after this; and every
#: chunk when no peer had anything to ask for this long (long enough for a loaded machine
#: to open the sessions first).
GRACE = 1.0
IDLE = 3.0


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
    return status_of(store, RUNNING)


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
    service: type[SwarmService] = SwarmService,
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
        origin = functools.partial(client.fetch_chunk, wait=False)  # as the node wires it
    swarm = service(
        links=gossip,
        store=store,
        clock=SYSTEM,
        config=config or sw.SwarmConfig(origin_grace=GRACE, origin_idle=IDLE),
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


async def test_a_fetch_syncs_its_store_in_batches_not_per_chunk(
    network: Network, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fetcher's store is fsynced a few times per second of the fetch, not three times
    per chunk (the data, the record, its directory: the bench's nodes spent more CPU on
    that than on moving the chunk); the file it ends with is whole and verified."""
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:  # the real fsync, counted per file
        with contextlib.suppress(OSError):
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    with trio.fail_after(20):
        async with in_process(network) as (_replica, url), trio.open_nursery() as nursery:
            cmap = await trio.to_thread.run_sync(_publish, network, url)
            seed = await _start(nursery, network, tmp_path, 0)
            _fill(seed.store, cmap, range(CHUNKS))
            assert await seed.swarm.seed(cmap)
            fetcher = await _start(
                nursery, network, tmp_path, 1, peers=[("127.0.0.1", seed.gossip.port)]
            )
            await _linked((seed, fetcher))
            monkeypatch.setattr(os, "fsync", counting_fsync)
            started = trio.current_time()
            got = await fetcher.swarm.fetch(cmap)
            took = trio.current_time() - started
            monkeypatch.undo()
            assert got.peers == CHUNKS
            assert fetcher.store.path(ART).read_bytes() == DATA
            mine = [p for p in synced if "store-1" in p]
            # before: >= 3 per chunk (over 144); now the open's (the new part file, its
            # first record: 4), one sync (3) per SYNC_INTERVAL, the completion's (2)
            assert len(mine) <= 6 + 3 * int(took / SYNC_INTERVAL) < CHUNKS
            nursery.cancel_scope.cancel()


def _origin_requests(replica: object) -> int:
    entry = replica.status()["origin"]["artifacts"].get(ART, {})  # type: ignore[attr-defined]
    return int(entry.get("requests", 0))


async def test_only_the_chunks_no_peer_has_come_from_the_origin(
    network: Network, tmp_path: Path
) -> None:
    """Two peers with partial downloads hold chunks 0-19 and 20-35; nobody but the origin
    has 36-47: exactly those twelve are fetched from it.

    The peers were fetching before the fetcher linked, so their bitfields reached it
    before it tracked the artifact: kept, and fed to its core once it did (without that,
    their sessions stayed half open and all 48 chunks came from the origin)."""
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
            assert fetcher.swarm.early_replayed >= 2  # both peers' early bitfields
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


class Corrupting(SwarmService):
    """A peer whose served chunks are wrong (the fault injected: its store's bytes are
    right, what it sends is not)."""

    async def _chunk(self, artifact: str, index: int) -> bytes | None:
        data = await super()._chunk(artifact, index)
        return None if data is None else bytes([data[0] ^ 0xFF]) + data[1:]


async def test_a_peer_sending_corrupt_blocks_is_banned_and_its_link_closed(
    network: Network, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            cmap = ChunkMap.of_release(_release(network))
            honest = await _start(nursery, network, tmp_path, 0)
            _fill(honest.store, cmap, range(CHUNKS))
            assert await honest.swarm.seed(cmap)
            liar = await _start(nursery, network, tmp_path, 1, service=Corrupting)
            _fill(liar.store, cmap, range(CHUNKS))
            assert await liar.swarm.seed(cmap)
            fetcher = await _start(
                nursery,
                network,
                tmp_path,
                2,
                peers=[("127.0.0.1", honest.gossip.port), ("127.0.0.2", liar.gossip.port)],
            )
            await _linked((honest, fetcher), (liar, fetcher))
            while len(fetcher.gossip.holders(ART)) < 2:  # both will be asked
                await trio.sleep(0.02)
            got = await fetcher.swarm.fetch(cmap)
            assert fetcher.store.path(ART).read_bytes() == DATA
            assert (got.peers, got.origin) == (CHUNKS, 0)
            assert fetcher.swarm.summary()["banned"] == 1
            assert fetcher.gossip.is_banned(liar.id)  # gossip's reputation has it too
            assert not fetcher.gossip.is_banned(honest.id)
            while liar.id in fetcher.gossip.linked():
                await trio.sleep(0.02)
            bans = [m for m in fetcher.lines if m.startswith("swarm: banned peer")]
            assert len(bans) == 1 and liar.id[:12] in bans[0] and "bad_chunk" in bans[0]
            penalised = [m for m in fetcher.lines if "penalised" in m]
            assert all(liar.id[:12] in m for m in penalised)  # the honest peer: never
            assert honest.id in fetcher.gossip.linked()
            nursery.cancel_scope.cancel()


async def test_a_restarted_node_seeds_what_its_store_holds(
    network: Network, tmp_path: Path
) -> None:
    """A node fetches the artifact (from the origin: no peer has it), stops; started again
    on the same store it seeds it, and a second node fetches it from it, not the origin."""
    with trio.fail_after(20):
        async with in_process(network) as (replica, url):
            cmap = await trio.to_thread.run_sync(_publish, network, url)
            async with trio.open_nursery() as nursery:
                first = await _start(nursery, network, tmp_path, 0, url=url)
                got = await first.swarm.fetch(cmap)
                assert got.origin == CHUNKS
                nursery.cancel_scope.cancel()  # the node stops
            served = _origin_bytes(replica)
            assert served == len(DATA)
            async with trio.open_nursery() as nursery:
                lines: list[str] = []
                again = ChunkStore(tmp_path / "store-0", log=lines.append)  # the restart
                seed = await _start(nursery, network, tmp_path, 0, url=url, store=again)
                assert await seed.swarm.seed(cmap)  # verified as it opens
                assert seed.swarm.summary()["artifacts"][ART]["held"] == CHUNKS
                fetcher = await _start(
                    nursery, network, tmp_path, 1, peers=[("127.0.0.1", seed.gossip.port)], url=url
                )
                await _linked((seed, fetcher))
                got = await fetcher.swarm.fetch(cmap)
                assert (got.peers, got.origin) == (CHUNKS, 0)
                assert fetcher.store.path(ART).read_bytes() == DATA
                assert _origin_bytes(replica) == served  # not one byte more
                assert seed.swarm.summary()["bytes_up"] == len(DATA)
                nursery.cancel_scope.cancel()


# -- the parts the services rely on -------------------------------------------------------------


def _core() -> g.Gossip:
    key = crypto.SigningKey.from_seed(bytes([77]) * 32)

    def refuse(_data: bytes) -> g.Accepted:
        raise AssertionError("no rumor in this test")

    return g.Gossip(
        key=key,
        contact=g.Contact(node=key.keyid, host="10.0.0.1", port=1),
        status=_status_of(ChunkStore(Path("/nonexistent")))(),
        rng=random.Random(1),
        verify=refuse,
        now=0.0,
        config=g.GossipConfig(heartbeat_interval=0),
    )


def test_a_pinned_link_is_not_closed_as_idle_and_a_swarm_ban_closes_it() -> None:
    core = _core()
    peer, other = "1" * 64, "2" * 64
    for p, host in ((peer, "10.0.0.2"), (other, "10.0.0.3")):
        core.handle(g.LinkUp(peer=p, host=host, inbound=True), 0.0, 0)
    core.handle(g.LinkPinned(peer=peer), 0.0, 0)
    idle = core.config.idle_timeout
    closed = []
    t = 0.0
    while t < 3 * idle:
        t += core.config.round_interval
        closed += [e.peer for e in core.handle_timer(t, 0) if isinstance(e, g.Disconnect)]
    assert closed == [other] and core.linked == (peer,)  # idle: only the unpinned one
    assert core.active == () and core.passive == ()  # pinning changed no view
    effects = core.handle(g.PeerBanned(peer=peer, reason="bad_chunk", until=t + 60), t, 0)
    assert [(e.peer, e.ban_until) for e in effects if isinstance(e, g.Disconnect)] == [
        (peer, t + 60)
    ]
    assert core.is_banned(peer, t + 1) and core.linked == ()
    refused = core.handle(g.LinkUp(peer=peer, host="10.0.0.2", inbound=True), t + 1, 0)
    assert [e.reason for e in refused if isinstance(e, g.Disconnect)] == ["banned"]


async def test_blocks_wait_for_room_in_a_links_swarm_queue_small_frames_do_not() -> None:
    q = SwarmQueue(blocks=2, frames=4)
    assert await q.put_block(b"b1") and await q.put_block(b"b2")
    waited: list[bool] = []

    async def third() -> None:
        waited.append(await q.put_block(b"b3"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert waited == []  # no room for a third block: it waits, it is not dropped
        assert q.put_nowait(b"have")  # a small frame still goes in, and out first
        assert await q.get() == b"have"
        await trio.testing.wait_all_tasks_blocked()
        assert waited == []  # still two blocks queued
        assert await q.get() == b"b1"
        await trio.testing.wait_all_tasks_blocked()
        assert waited == [True]
    assert q.put_nowait(b"req") and q.put_nowait(b"cancel") and not q.put_nowait(b"over")
    # frames: at most 4; the small ones in order, ahead of the blocks queued before them
    assert [await q.get() for _ in range(4)] == [b"req", b"cancel", b"b2", b"b3"]
    q.close()
    assert await q.get() is None and not await q.put_block(b"late")


def test_swarm_frames_are_told_from_gossip_frames_by_their_kind() -> None:
    have = sw.Have(artifact=ART, chunk=1).to_wire()
    assert is_swarm_frame(have) and frame_kind(have) == "sw_have"
    ping = g.Prune().to_wire()
    assert not is_swarm_frame(ping) and frame_kind(ping) == "prune"
    assert not is_swarm_frame(b"") and not is_swarm_frame(b"\x81\xa1k\xc0")


def test_rates_on_the_command_line() -> None:
    assert [rate(t) for t in ("512k", "2M", "1.5M", "65536", "524288.000000")] == [
        512 * 1024,
        2 * 1024 * 1024,
        1.5 * 1024 * 1024,
        65536,
        524288,
    ]
    for bad in ("", "0", "fast", "2X", "-1k"):
        with pytest.raises(argparse.ArgumentTypeError):
            rate(bad)


def _take_the_slot(url: str) -> int:
    """Another node downloads from the origin: it holds the one downloader slot."""
    request = urllib.request.Request(
        f"{url}/v1/artifacts/{ART}/chunks/0", headers={NODE_HEADER: "e" * 64}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return int(resp.status)


async def test_try_peers_from_the_origin_is_told_to_the_swarm_not_waited_out(
    network: Network, tmp_path: Path
) -> None:
    """The origin is over its downloader cap: the swarm is told (``retry_after``) and comes
    back later for the chunks no peer has; the download completes, nothing fails."""
    with trio.fail_after(20):
        async with (
            in_process(network, origin=OriginConfig(max_downloaders=1, window=1.0)) as (
                replica,
                url,
            ),
            trio.open_nursery() as nursery,
        ):
            cmap = await trio.to_thread.run_sync(_publish, network, url)
            seed = await _start(nursery, network, tmp_path, 0)
            _fill(seed.store, cmap, range(40))
            nursery.start_soon(seed.swarm.fetch, cmap)  # (no origin: it keeps its 40)
            fetcher = await _start(
                nursery, network, tmp_path, 1, peers=[("127.0.0.1", seed.gossip.port)], url=url
            )
            await _linked((seed, fetcher))
            taken = 0

            async def hold_the_slot() -> None:
                nonlocal taken
                for _ in range(6):  # for about 2 s
                    taken += await trio.to_thread.run_sync(_take_the_slot, url) == 200
                    await trio.sleep(0.3)

            nursery.start_soon(hold_the_slot)
            got = await fetcher.swarm.fetch(cmap)
            assert fetcher.store.path(ART).read_bytes() == DATA
            assert (got.peers, got.origin) == (40, 8)
            entry = replica.status()["origin"]["artifacts"][ART]
            assert entry["refused"] >= 1  # it said try-peers at least once
            assert entry["requests"] == taken + 8  # served: the holder's, then ours once each
            assert any("try-peers" in m and "back in" in m for m in fetcher.lines)
            nursery.cancel_scope.cancel()


class Slow(SwarmService):
    """A holder whose swarm answers nothing for its first ``SLOW`` seconds (the fault
    injected: every frame held back, then handled in order): a link up whose session has
    not answered yet, as a holder across a relayed link at start-up."""

    SLOW = 2.0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.held_back: list[tuple[str, bytes]] | None = []
        self.until = self.clock.monotonic() + 3600.0  # until the test says
        async with trio.open_nursery() as nursery:
            await nursery.start(super().run)
            task_status.started()
            nursery.start_soon(self._release)

    def answer_in(self, seconds: float) -> None:
        self.until = self.clock.monotonic() + seconds

    async def _release(self) -> None:
        while self.clock.monotonic() < self.until:
            await trio.sleep(0.05)
        held, self.held_back = self.held_back, None
        for peer, data in held or ():
            super().frame(peer, data)

    def frame(self, peer: str, data: bytes) -> None:
        if self.held_back is not None:
            self.held_back.append((peer, data))
        else:
            super().frame(peer, data)


async def test_a_whole_holder_the_heartbeats_name_is_waited_for_not_the_origin(
    network: Network, tmp_path: Path
) -> None:
    """The fetcher is linked to a node whose heartbeat says it holds the artifact whole,
    but whose session does not answer for its first seconds.  Not release day: the
    download waits ``origin_grace`` (4 s here) for it, not ``origin_idle`` (0.5 s), and
    every chunk comes from the holder; the origin serves nothing.  (Before: the origin
    sent the whole artifact after 0.5 s, as a node of the homes demo's second ramp stage
    took all of v2 from it 1 s into its prefetch.)"""
    waits = sw.SwarmConfig(origin_grace=4.0, origin_idle=0.5)
    with trio.fail_after(30):
        async with in_process(network) as (replica, url), trio.open_nursery() as nursery:
            cmap = await trio.to_thread.run_sync(_publish, network, url)
            holder = await _start(nursery, network, tmp_path, 0, config=waits, service=Slow)
            _fill(holder.store, cmap, range(CHUNKS))
            assert await holder.swarm.seed(cmap)
            fetcher = await _start(
                nursery,
                network,
                tmp_path,
                1,
                peers=[("127.0.0.1", holder.gossip.port)],
                url=url,
                config=waits,
            )
            await _linked((holder, fetcher))
            core = fetcher.gossip.core
            assert core is not None
            while not core.holders(ART):  # its heartbeat: held whole
                await trio.sleep(0.02)
            assert core.holders(ART)[0][:2] == (holder.id, "held")
            slow = holder.swarm
            assert isinstance(slow, Slow)
            slow.answer_in(Slow.SLOW)
            got = await fetcher.swarm.fetch(cmap, deadline=trio.current_time() + 30)
            assert fetcher.store.path(ART).read_bytes() == DATA
            assert (got.peers, got.origin) == (CHUNKS, 0)
            assert got.seconds >= Slow.SLOW - 0.5  # it did wait for the holder
            assert _origin_bytes(replica) == 0
            assert fetcher.gossip.stats.extra_links_opened == 0  # linked: nothing to dial
            nursery.cancel_scope.cancel()
