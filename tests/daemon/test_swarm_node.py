"""The node's prefetch through the swarm, in-process: two real ``Node`` objects (real state
directories, gossip over tcp on loopback, a coordinator link to a real replica on a real
socket), on the system clock.

The seed is a node started with the artifact already whole in its store (as after a
restart): it seeds it once the replica's release record reaches it.  The other node's
prefetch then gets every chunk from it, and the replica's own ``/status`` says it served
no byte (README "The swarm in the daemon")."""

from __future__ import annotations

import json
import random
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
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.gossip import GossipService, trust_verifier
from p2pupdate.daemon.node import Node, NodeConfig
from p2pupdate.daemon.nullwork import NullWorkload
from p2pupdate.daemon.options import DaemonOptions
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.launcher.state import StateDir
from tests.coordinator.service_helpers import Network, artifact_of, http, in_process
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


def _node(
    tmp: Path,
    i: int,
    net: Network,
    url: str,
    build: Path,
    sha: str,
    peers: list[tuple[str, int]],
    swarm: str = "on",
) -> tuple[Node, list[str]]:
    state = StateDir(tmp / f"state-{i}")
    state.stage_slot(build.read_bytes(), sha, counter=1)
    state.set_link("current", sha)
    lines: list[str] = []
    trust = TrustFile.open(state.root / "trust", initial_root=net.root_bytes, now=int(time.time()))
    key = crypto.SigningKey.from_seed(bytes([40 + i]) * 32)
    host = f"127.0.0.{20 + i}"
    coord = CoordinatorLink(
        [url],
        key,
        trust,
        pool="default",
        estimate=None,
        report_interval=30.0,
        log=lines.append,
        clock=SYSTEM,
    )
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
            assert seed.gossip is not None
            while not seed.gossip.port:
                await trio.sleep(0.02)
            fetcher, lines = _node(
                tmp_path, 1, net, url, v1.path, v1.sha, [("127.0.0.20", seed.gossip.port)]
            )
            nursery.start_soon(fetcher.run)
            assert fetcher.gossip is not None and fetcher.coord is not None
            core = fetcher.gossip.core
            while not (fetcher.coord.has_release(ART) and core and core.holders(ART)):
                await trio.sleep(0.02)
                core = fetcher.gossip.core
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
