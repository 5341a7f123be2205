"""A fleet of real daemons gossiping over tcp on loopback, introduced by a real coordinator.

Every node is a real ``p2pupdate node`` process group (launcher + daemon) with
``--gossip-listen 127.0.0.K:0`` (distinct loopback addresses: gossip caps identities per
source address, so thirty nodes on one address would be thirty Sybils) and the replica as
``--coordinator``: its introductions (``peers``) are the only way the nodes learn of each
other.  Once the overlay has formed, the test joins it with a gossip peer of its own (the
daemon's ``GossipService`` in this process, bootstrapped from one node) and publishes a
newly signed allowlist there.  It is *not* published to the coordinator, so gossip is the
only way it can travel: every node must report it in its status file within 10 s at 1 s
rounds.

``P2PUPDATE_GOSSIP_FLEET`` sets the fleet size (default 30).  The test prints the fleet's
memory and CPU figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from p2pupdate.clock import SYSTEM
from p2pupdate.core import crypto
from p2pupdate.core import gossip as g
from p2pupdate.daemon.gossip import GossipService, parse_link_address, trust_verifier
from p2pupdate.daemon.truststate import TrustFile
from tests.coordinator.service_helpers import Network, ReplicaProcesses, replicas
from tests.launcher.conftest import Builds
from tests.launcher.harness import Nodes, gossip_view, wait_until, watcher_args

#: Real processes (launcher + daemon groups): run by scripts/test, deselect with -m 'not slow'.
pytestmark = pytest.mark.slow

__all__ = ["replicas"]  # the fixture

FLEET = int(os.environ.get("P2PUPDATE_GOSSIP_FLEET", "30"))
SPREAD_DEADLINE = 10.0


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _rss_and_cpu(pids: list[int]) -> tuple[int, float]:
    rss = 0
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return rss, ticks / os.sysconf("SC_CLK_TCK")


async def _inject(
    net: Network,
    tmp: Path,
    bootstrap: tuple[str, int],
    doc: bytes,
    everyone: Callable[[float], bool],
) -> None:
    """Join the overlay through one node, publish ``doc`` there, and stay in it until
    ``everyone(t0)`` says all nodes have it (``t0``: when it was published)."""
    trust = TrustFile.open(
        tmp / "injector-trust", initial_root=net.root_bytes, now=int(time.time())
    )
    svc = GossipService(
        key=crypto.SigningKey.from_seed(os.urandom(32)),
        status=lambda: g.Status(
            version="injector", artifact="00" * 32, state="serving", pool="x", load=0, capacity=0
        ),
        clock=SYSTEM,
        verify=trust_verifier(trust, SYSTEM),
        listen=("127.0.0.254", 0),
        peers=[bootstrap],
        rng=random.Random(),
    )
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(svc.run)
            while not (svc.core is not None and svc.core.active):
                await trio.sleep(0.05)
        published = time.monotonic()
        assert svc.publish(doc)
        with trio.move_on_after(SPREAD_DEADLINE + 5):
            while not everyone(published):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def test_fleet_spreads_an_allowlist_bygossip_view(
    tmp_path: Path, nodes: Nodes, builds: Builds, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    v1 = builds.get("v1", 1)
    rp = replicas.start(net, 1)
    common = watcher_args(v1, trust_root=net.dir / "root.msgpack", coordinator=rp.url)
    started = time.monotonic()
    fleet = [
        nodes.start(
            tmp_path / f"node-{i}",
            [*common, "--gossip-listen", f"127.0.0.{i + 2}:0"],
            log_name=f"node-{i}.log",
        )
        for i in range(FLEET)
    ]
    wait_until("every daemon gossiping", lambda: all(gossip_view(n) for n in fleet), 90)
    up = time.monotonic() - started
    wait_until(
        "the overlay to form (>= 3 active neighbours each)",
        lambda: all(gossip_view(n).get("active", 0) >= 3 for n in fleet),
        60,
    )
    formed = time.monotonic() - started
    # loopback addresses: --rtc auto leaves rtc off, every link is tcp, nothing relayed
    views = [gossip_view(n) for n in fleet]
    for v in views:
        assert v.get("rtc") is False and v.get("relayed_bytes") == 0, v
        assert set(v["paths"].values()) == {"tcp"} and v["transports"]["rtc"] == 0, v
    pids = [p for n in fleet for p in _group_pids(n.pgid)]
    rss, cpu0 = _rss_and_cpu(pids)
    time.sleep(5.0)
    _, cpu1 = _rss_and_cpu(pids)

    first = gossip_view(fleet[0])
    assert first is not None
    bootstrap = parse_link_address(first["address"])
    assert bootstrap is not None
    doc = net.allowlist(7, ["cd" * 32])
    seen: dict[int, float] = {}

    def everyone(published: float) -> bool:
        for i, n in enumerate(fleet):
            if i not in seen and gossip_view(n).get("allowlist") == 7:
                seen[i] = time.monotonic() - published
        return len(seen) == len(fleet)

    try:
        trio.run(_inject, net, tmp_path, bootstrap, doc, everyone)
    finally:
        figures = {
            "nodes": FLEET,
            "processes": len(pids),
            "seconds_to_start": round(up, 1),
            "seconds_to_overlay": round(formed, 1),
            "fleet_rss_mb": round(rss / 2**20, 1),
            "rss_mb_per_node": round(rss / 2**20 / FLEET, 1),
            "idle_cpu_percent_per_node": round(100 * (cpu1 - cpu0) / 5.0 / FLEET, 2),
            "nodes_reached": len(seen),
            "seconds_to_all": round(max(seen.values()), 2) if seen else None,
            "seconds_to_half": round(sorted(seen.values())[len(seen) // 2], 2) if seen else None,
        }
        print("\nFLEET " + json.dumps(figures))
    assert len(seen) == FLEET, figures
    assert max(seen.values()) <= SPREAD_DEADLINE, figures
    assert "learned from a peer" in fleet[-1].log()
