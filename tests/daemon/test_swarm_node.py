"""The node's prefetch through the swarm, in-process: two real ``Node`` objects (real state
directories, gossip over tcp on loopback, a coordinator link to a real replica on a real
socket), on the system clock.

The seed is a node started with the artifact already whole in its store (as after a
restart): it seeds it once the replica's release record reaches it -- or at once, when its
last run kept the record beside the artifact (a node that just swapped into its build).  The other node's
prefetch then gets every chunk from it, and the replica's own ``/status`` says it served
no byte (README "The swarm in the daemon")."""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path

import trio

from p2pupdate.clock import SYSTEM
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core import gossip as g
from p2pupdate.core import updater as up
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.daemon.chunkstore import ChunkStore
from p2pupdate.daemon.gossip import GossipService, trust_verifier
from p2pupdate.daemon.node import Node, NodeConfig
from p2pupdate.daemon.nullwork import NullWorkload
from p2pupdate.daemon.options import DaemonOptions
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.launcher.state import StateDir
from tests.coordinator.service_helpers import Network, artifact_of, http, in_process
from tests.daemon.coordutil import coord_link
from tests.launcher.conftest import Builds

CHUNKS = 40
DATA = random.Random(23).randbytes(CHUNKS * 1024 - 10)
ART = artifact_of(DATA)


def _publish(net: Network, url: str, running: str) -> ChunkMap:
    release = net.release(DATA, "v2", 2)
    assert http("POST", f"{url}/v1/publish", release)[0] == 200
    assert http("POST", f"{url}/v1/publish", net.allowlist(1, [running, ART]))[0] == 200
    assert http("PUT", f"{url}/v1/artifacts/{ART}", DATA)[0] == 200
    now = int(time.time())
    return ChunkMap.of_release(net.trust().verify(docs.Release, release, now).doc)


async def _fetcher_of(
    nursery: trio.Nursery, tmp: Path, i: int, net: Network, url: str, build: Builds, seed: Node
) -> tuple[Node, list[str]]:
    """A node linked to ``seed`` only, started, once it holds ART's release record and
    its gossip names a holder of ART."""
    v1 = build.get("v1", 1)
    assert seed.gossip is not None
    while not seed.gossip.port:
        await trio.sleep(0.02)
    host = seed.gossip.listen_host
    fetcher, lines = _node(tmp, i, net, url, v1.path, v1.sha, [(host, seed.gossip.port)])
    nursery.start_soon(fetcher.run)
    assert fetcher.gossip is not None and fetcher.coord is not None
    while not (
        fetcher.coord.has_release(ART) and fetcher.gossip.core and fetcher.gossip.core.holders(ART)
    ):
        await trio.sleep(0.02)
    return fetcher, lines


def _node(
    tmp: Path,
    i: int,
    net: Network,
    url: str,
    build: Path,
    sha: str,
    peers: list[tuple[str, int]],
    swarm: str = "on",
    *,
    restart: bool = False,
) -> tuple[Node, list[str]]:
    state = StateDir(tmp / f"state-{i}")
    if not restart:  # (a restart runs on the state dir its last run left)
        state.stage_slot(build.read_bytes(), sha, counter=1)
        state.set_link("current", sha)
    lines: list[str] = []
    trust = TrustFile.open(state.root / "trust", initial_root=net.root_bytes, now=int(time.time()))
    key = crypto.SigningKey.from_seed(bytes([40 + i]) * 32)
    host = f"127.0.0.{20 + i}"
    coord = coord_link(url, key, trust, lines)
    gossip = GossipService(
        key=key,
        clock=SYSTEM,
        verify=trust_verifier(trust, SYSTEM),
        listen=(host, 0),
        peers=peers,
        config=g.GossipConfig(round_interval=0.1, heartbeat_interval=0.5),
        log=lines.append,
    )
    options = DaemonOptions(
        work="none",
        check_interval=3600.0,
        coordinator=(url,),
        gossip_listen=f"{host}:0",
        swarm=swarm,
    )
    node = Node(
        NodeConfig(state_dir=state.root, slot=sha, mode="normal", parent_pid=None, options=options),
        make_workload=NullWorkload,
        offers=None,
        clock=SYSTEM,
        log=lines.append,
        coordinator=coord,
        gossip=gossip,
        trust=trust,
        self_test=lambda **kw: [],
    )
    return node, lines


async def test_a_node_prefetches_from_a_restarted_seed_not_the_origin(
    tmp_path: Path, builds: Builds
) -> None:
    v1 = builds.get("v1", 1)
    net = Network(tmp_path / "net")
    with trio.fail_after(30):
        async with in_process(net) as (replica, url), trio.open_nursery() as nursery:
            cmap = await trio.to_thread.run_sync(_publish, net, url, v1.sha)
            seed, seed_lines = _node(tmp_path, 0, net, url, v1.path, v1.sha, [])
            held = ChunkStore(seed.state.store)  # what the seed's last run fetched
            held.open(cmap)
            for c in cmap.chunks:
                assert held.put_chunk(ART, c.index, cmap.slice(DATA, c.index))
            nursery.start_soon(seed.run)
            fetcher, lines = await _fetcher_of(nursery, tmp_path, 1, net, url, builds, seed)
            event = await fetcher._prefetch(up.Prefetch(artifact=ART, counter=2))
            assert isinstance(event, up.PrefetchDone)
            served = replica.status()["origin"]["artifacts"].get(ART, {}).get("bytes", 0)
            assert served == 0  # on main: every byte came from the origin
            assert fetcher.store.path(ART).read_bytes() == DATA
            assert any(f"{CHUNKS} chunk(s) from peers, 0 from the origin" in m for m in lines)
            assert any(m.startswith("swarm: seeding") for m in seed_lines)
            fetcher.write_status()
            status = json.loads(fetcher.state.status_path.read_text())
            swarm = status["swarm"]
            assert swarm["bytes_down_peers"] == len(DATA) and swarm["bytes_down_origin"] == 0
            assert swarm["artifacts"][ART]["held"] == CHUNKS
            assert isinstance(swarm["artifacts"][ART]["completed_at"], float)
            seed.write_status()
            assert json.loads(seed.state.status_path.read_text())["swarm"]["bytes_up"] == len(DATA)
            nursery.cancel_scope.cancel()


async def test_swarm_off_fetches_from_the_origin_only(tmp_path: Path, builds: Builds) -> None:
    v1 = builds.get("v1", 1)
    net = Network(tmp_path / "net")
    with trio.fail_after(30):
        async with in_process(net) as (replica, url), trio.open_nursery() as nursery:
            await trio.to_thread.run_sync(_publish, net, url, v1.sha)
            node, lines = _node(tmp_path, 2, net, url, v1.path, v1.sha, [], swarm="off")
            assert node.swarm is None and node.gossip is not None
            nursery.start_soon(node.run)
            assert node.coord is not None
            while not node.coord.has_release(ART):
                await trio.sleep(0.02)
            event = await node._prefetch(up.Prefetch(artifact=ART, counter=2))
            assert isinstance(event, up.PrefetchDone)
            assert replica.status()["origin"]["artifacts"][ART]["bytes"] == len(DATA)
            assert any(f"{CHUNKS} chunk(s) from the origin" in m for m in lines)
            node.write_status()
            assert "swarm" not in json.loads(node.state.status_path.read_text())
            nursery.cancel_scope.cancel()


def _dead_url() -> str:
    """A loopback URL nothing listens on (a port bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_a_restarted_node_serves_its_fetched_build_before_any_replica_answers(
    tmp_path: Path, builds: Builds
) -> None:
    """The node fetched ART and kept its signed release record beside it; restarted with
    no replica it can reach, it verifies the kept record and seeds at once, and a peer's
    prefetch takes every chunk from it (the homes demo's ramp stage after the canary
    swapped, while the replica it used was killed)."""
    v1 = builds.get("v1", 1)
    net = Network(tmp_path / "net")
    with trio.fail_after(40):
        async with in_process(net) as (replica, url):
            await trio.to_thread.run_sync(_publish, net, url, v1.sha)
            async with trio.open_nursery() as nursery:
                first, _lines = _node(tmp_path, 3, net, url, v1.path, v1.sha, [])
                nursery.start_soon(first.run)
                assert first.coord is not None
                while not first.coord.has_release(ART):
                    await trio.sleep(0.02)
                assert isinstance(
                    await first._prefetch(up.Prefetch(artifact=ART, counter=2)), up.PrefetchDone
                )
                nursery.cancel_scope.cancel()
            kept = first.store.dir / f"{ART}.release"
            assert kept.is_file()
            origin = replica.status()["origin"]["artifacts"][ART]["bytes"]
            assert origin == len(DATA)
            async with trio.open_nursery() as nursery:
                again, lines = _node(
                    tmp_path, 3, net, _dead_url(), v1.path, v1.sha, [], restart=True
                )
                nursery.start_soon(again.run)
                while not any(m.startswith(f"swarm: seeding {ART[:16]}") for m in lines):
                    await trio.sleep(0.02)
                assert any("1 kept release record(s) verified" in m for m in lines)
                fetcher, flines = await _fetcher_of(nursery, tmp_path, 4, net, url, builds, again)
                event = await fetcher._prefetch(up.Prefetch(artifact=ART, counter=2))
                assert isinstance(event, up.PrefetchDone)
                assert any(f"{CHUNKS} chunk(s) from peers, 0 from the origin" in m for m in flines)
                assert replica.status()["origin"]["artifacts"][ART]["bytes"] == origin
                assert fetcher.store.path(ART).read_bytes() == DATA
                nursery.cancel_scope.cancel()


def test_a_kept_release_record_is_verified_again_before_use(tmp_path: Path) -> None:
    """What the store kept is read back as untrusted bytes: a record re-signed by a key
    that is not the release role, garbage, or a valid record under another artifact's name
    is left out with a log line, and only the genuine one is held.  No hook is called."""
    net = Network(tmp_path / "net")
    store = ChunkStore(tmp_path / "store")
    store.dir.mkdir()
    other = random.Random(5).randbytes(3000)
    records = {
        ART: net.release(DATA, "v2", 2),
        artifact_of(other): net.release(other, "v3", 3),
    }
    for sha, data in ((ART, DATA), (artifact_of(other), other)):
        store.path(sha).write_bytes(data)
        assert store.keep_release(sha, records[sha])
        assert not store.keep_release(sha, records[sha])  # there already: not written again
    assert not store.keep_release("ab" * 32, records[ART])  # its artifact is not held
    swapped = artifact_of(b"third")
    store.path(swapped).write_bytes(b"third")
    (store.dir / f"{swapped}.release").write_bytes(records[ART])  # ART's record, renamed
    junk = artifact_of(b"fourth")
    store.path(junk).write_bytes(b"fourth")
    (store.dir / f"{junk}.release").write_bytes(b"\x93not a document")
    lines: list[str] = []
    trust = TrustFile.open(tmp_path / "trust", initial_root=net.root_bytes, now=int(time.time()))
    coord = coord_link(_dead_url(), crypto.SigningKey.from_seed(bytes([9]) * 32), trust, lines)
    called: list[object] = []
    coord.on_release = called.append
    assert coord.restore_releases(store.releases()) == 2
    assert set(coord.releases) == {ART, artifact_of(other)}
    assert coord.release_records[ART] == records[ART]
    assert called == []
    refused = [m for m in lines if "is not used" in m]
    assert len(refused) == 2, lines
    assert any(swapped[:16] in m and "record of" in m for m in refused)
    assert any(junk[:16] in m for m in refused)
    store.cleanup(named=[artifact_of(other)], protected=(), cap=1 << 30)
    assert not (store.dir / f"{ART}.release").exists()  # removed with its artifact


async def test_a_prefetch_before_the_running_build_is_seeded_still_reuses_its_chunks(
    tmp_path: Path, builds: Builds
) -> None:
    """The fleet demo's start-up race (a clean-clone suite run): a nudge came before the
    node's start-up seeding had opened the build it runs, so the prefetch of v2 saw no held
    chunk and fetched all 2,860, where the other nodes fetched 2.  Here the seeding is held
    back (a fault injected into ``SwarmService.seed``) until the prefetch is done: v2 is v1
    with its last bytes changed, and only the chunks v1 lacks may come from the origin."""
    v1 = builds.get("v1", 1)
    running = v1.path.read_bytes()
    v2 = running[:-100] + b"\x00" * 100
    net = Network(tmp_path / "net")
    with trio.fail_after(30):
        async with in_process(net) as (replica, url), trio.open_nursery() as nursery:

            def publish() -> tuple[ChunkMap, ChunkMap]:
                maps = []
                for data, name, counter in ((running, "v1", 1), (v2, "v2", 2)):
                    signed = net.release(data, name, counter)
                    assert http("POST", f"{url}/v1/publish", signed)[0] == 200
                    rel = net.trust().verify(docs.Release, signed, int(time.time())).doc
                    maps.append(ChunkMap.of_release(rel))
                arts = [m.artifact for m in maps]
                assert http("POST", f"{url}/v1/publish", net.allowlist(1, arts))[0] == 200
                assert http("PUT", f"{url}/v1/artifacts/{arts[1]}", v2)[0] == 200
                return maps[0], maps[1]

            m1, m2 = await trio.to_thread.run_sync(publish)
            assert m1.artifact == v1.sha
            fresh = [c for c in m2.chunks if c.digest not in {d.digest for d in m1.chunks}]
            assert 0 < len(fresh) <= 2
            node, lines = _node(tmp_path, 5, net, url, v1.path, v1.sha, [])
            node.state.store_path(v1.sha).write_bytes(running)  # as the install leaves it
            assert node.swarm is not None and node.coord is not None
            seeding_may_start = trio.Event()
            real_seed = node.swarm.seed
            asked: list[str] = []

            async def held_back(cmap: ChunkMap) -> bool:
                asked.append(cmap.artifact)
                await seeding_may_start.wait()
                return await real_seed(cmap)

            node.swarm.seed = held_back  # type: ignore[method-assign]
            nursery.start_soon(node.run)
            while not (node.coord.has_release(m2.artifact) and asked):
                await trio.sleep(0.02)
            assert asked == [v1.sha] and not node.swarm.holds(v1.sha)
            event = await node._prefetch(up.Prefetch(artifact=m2.artifact, counter=2))
            assert isinstance(event, up.PrefetchDone)
            assert node.store.path(m2.artifact).read_bytes() == v2
            reused = m2.count - len(fresh)
            assert any(f"reused {reused} of {m2.count} chunks" in m for m in lines)
            how = f"0 chunk(s) from peers, {len(fresh)} from the origin, {reused} held already"
            assert any(how in m for m in lines)  # on the old code: all of v2 from the origin
            served = replica.status()["origin"]["artifacts"][m2.artifact]["bytes"]
            assert 0 < served <= sum(c.length for c in fresh)  # (as sent: compressed)
            seeding_may_start.set()
            while not node.swarm.holds(v1.sha):
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
