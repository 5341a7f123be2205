"""Two nodes on one home LAN, each started with only ``--bundle`` and a state dir (P11).

A netlab home (``a``: a cone NAT, nodes a1 and a2 on 10.1.0.0/24) and one replica on the
inet bridge.  Nothing tells the nodes about each other or about their LAN: the bundle's
defaults (gossip on every interface, zeroconf on each private-range LAN address, the
replica it names) must find the peer, link to it, and carry the allowlist the replica
publishes to both.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.netlab import in_netns
from tests.coordinator.service_helpers import Network
from tests.netlab.bundled_home import start_bundled
from tests.netlab.conftest import LabFactory, needs_netlab
from tests.netlab.fleet import _kill_group, wait_until

pytestmark = [needs_netlab, pytest.mark.slow]

HOME = {
    "inet": {"hosts": ["coord"]},
    "homes": [{"name": "a", "nat": "cone", "nodes": ["a1", "a2"]}],
}
#: Two daemons starting on 2 loaded cores, zeroconf, an rtc link over host candidates.
LINKED = 30.0


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        for proc in started:
            _kill_group(proc)


def test_two_nodes_with_only_a_bundle_find_each_other_link_and_learn_the_allowlist(
    make_lab: LabFactory, tmp_path: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    lab = make_lab(HOME)
    net = Network(tmp_path / "net")
    home = start_bundled(lab, net, tmp_path, ("a1", "a2"), procs)
    url, nodes, tails = home.url, home.nodes, home.tails
    a1, a2 = nodes

    def linked() -> bool:
        assert a1.alive() and a2.alive(), tails()
        return a2.id in a1.linked() and a1.id in a2.linked()

    wait_until("a1 and a2 linked", linked, LINKED, tails())
    for n in nodes:  # what the bundle's defaults made of the LAN
        assert n.gossip()["address"].startswith(f"tcp:{n.addr}:"), n.gossip()
        assert f"zeroconf: announcing {n.addr}:" in n.log(), n.tail()

    # a2 loses the replica (both ways, in its own namespace): it can learn only by gossip
    coord = lab.inet_addr("coord")
    rules = (
        "table inet p11 {\n"
        f"  chain in {{ type filter hook input priority 0; ip saddr {coord} drop; }}\n"
        f"  chain out {{ type filter hook output priority 0; ip daddr {coord} drop; }}\n"
        "}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", lab.ns("a2"), "nft", "-f", "-"], input=rules.encode(), check=True
    )

    def publish() -> tuple[int, Any]:
        body = net.allowlist(1, ["ab" * 32])
        req = urllib.request.Request(f"{url}/v1/publish", data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    code, answer = in_netns(lab.ns("coord"), publish)
    assert code == 200, answer
    wait_until("a1 holds allowlist v1", lambda: a1.held_allowlist() == 1, LINKED, tails())
    wait_until("a2 holds it by gossip", lambda: a2.held_allowlist() == 1, LINKED, tails())
    assert a1.alive() and a2.alive()
