"""Real daemons across home routers: ``p2pupdate node`` processes in netlab node namespaces,
one ``p2pupdate-coordinator serve`` replica and coturn on the inet bridge (``mixed.toml``:
cone homes a (a1, a2 on one LAN), b, f; strict homes c, d, e (e shaped like a slow DSL line)).

One lab, replica and coturn serve the whole module (``fleet``); each test starts the nodes
it needs and stops them at its end, so one test's links never help the next.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.netlab.conftest import needs_netlab
from tests.netlab.fleet import Fleet

pytestmark = [needs_netlab, pytest.mark.slow]

#: Daemon start (launcher, slot unpack, daemon) on 2 loaded cores, plus the first links.
START = 45.0


@pytest.fixture
def nodes(fleet: Fleet) -> Iterator[Fleet]:
    """The module's fleet; the nodes a test started are killed when it ends."""
    try:
        yield fleet
    finally:
        fleet.stop_nodes()


def test_nodes_behind_both_nat_kinds_reach_the_replica(nodes: Fleet) -> None:
    """The node's coordinator WebSocket goes out through a cone and a strict masquerade."""
    cone, strict = nodes.node("b1"), nodes.node("c1")
    nodes.wait("both nodes connected to the replica", lambda: nodes.connected() == 2, START)
    # the replica has each node's report, so it saw them as themselves through the NAT
    reported = nodes.wait(
        "both nodes' reports",
        lambda: nodes.replica_status()["nodes"]["total"] >= 2 or None,
        START,
    )
    assert reported
    for n in (cone, strict):
        assert n.alive()


def test_two_nodes_on_one_lan_find_each_other_by_zeroconf(nodes: Fleet) -> None:
    """No coordinator and no --peer: only zeroconf on the home LAN can introduce them."""
    a1 = nodes.node("a1", coordinator=False, zeroconf=True)
    a2 = nodes.node("a2", coordinator=False, zeroconf=True)
    nodes.wait(
        "a1 and a2 linked",
        lambda: a2.id in a1.linked() and a1.id in a2.linked(),
        START,
    )


def test_an_allowlist_published_at_the_replica_reaches_every_node(nodes: Fleet) -> None:
    """Six homes of mixed kinds; a2 has no coordinator: it can only learn by gossip."""
    names = ["a1", "b1", "c1", "d1", "e1", "f1"]
    started = [nodes.node(n, zeroconf=n == "a1") for n in names]
    a2 = nodes.node("a2", coordinator=False, zeroconf=True)
    nodes.wait("six nodes connected", lambda: nodes.connected() == len(names), START)
    nodes.wait("a2 linked to a1", lambda: started[0].id in a2.linked(), START)
    version = nodes.publish_allowlist()
    everyone = [*started, a2]
    nodes.wait(
        f"allowlist v{version} at every node",
        lambda: all(n.held_allowlist() == version for n in everyone),
        30,
    )
    assert f"gossip: allowlist v{version} learned from a peer" in a2.log()


def _replica_flows(fleet: Fleet, home: str) -> set[int]:
    """Source ports of the established TCP flows the replica has from ``home``'s WAN address."""
    out = fleet.lab.run("coord", ["ss", "-Htn", "state", "established"]).stdout
    wan = fleet.lab.wan(home)
    ports = set()
    for line in out.splitlines():
        peer = line.split()[-1]
        addr, _, port = peer.rpartition(":")
        if addr == wan:
            ports.add(int(port))
    return ports


def test_a_router_reboot_breaks_the_replica_connection_and_it_comes_back(nodes: Fleet) -> None:
    """Home c (strict) forgets every flow; the node's next packet gets a new mapping, the
    replica answers it with a reset, and the node reconnects: a document published then
    still reaches it, within 30 s."""
    c1 = nodes.node("c1")
    nodes.wait("c1 connected", lambda: nodes.connected() == 1, START)
    before = nodes.wait("c1's flow at the replica", lambda: _replica_flows(nodes, "c"), 10)
    nodes.lab.flush_conntrack("c")
    nodes.wait(
        "a new flow from home c (the old one reset)",
        lambda: (after := _replica_flows(nodes, "c")) and not after & before,
        30,
    )
    version = nodes.publish_allowlist()
    nodes.wait(f"allowlist v{version} at c1", lambda: c1.held_allowlist() == version, 30)
