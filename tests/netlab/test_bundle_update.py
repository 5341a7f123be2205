"""P11's Done-when: nodes started with only ``--bundle`` (and a state dir) update themselves.

One test, the issue's sentence in order: a node started with only the bundle finds its LAN
peer (zeroconf), links, learns an allowlist by gossip (a2 is cut from the replica while the
release is published), and updates under a quorum token.

A netlab home (``a``: a cone NAT, nodes a1 and a2 on 10.1.0.0/24) and one replica on the
inet bridge, run with ``serve``'s defaults.  The nodes get nothing but the bundle: no work
flags, no timing flags, no aggregate stub, no peers.  They find each other on their LAN
(zeroconf), link, gossip the pool's push-sum estimate the capacity gate needs, learn the
allowlist and scope the operator publishes, fetch v2, ask, and move under the replica's
departure tokens -- one at a time, each confirmed on probation and rejoined.

Slow on purpose (the defaults' own waits: a learned allowlist starts a check within 60 s,
the first push-sum epoch takes 50 one-second rounds, probation's health checks): about two
minutes.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pupdate.core import documents as docs
from scripts.netlab import in_netns
from tests.coordinator.service_helpers import Network
from tests.launcher.harness import make_build
from tests.netlab.bundled_home import READ_TOKEN, start_bundled
from tests.netlab.conftest import LabFactory, needs_netlab
from tests.netlab.fleet import FleetNode, _kill_group, wait_until

pytestmark = [needs_netlab, pytest.mark.slow]

HOME = {
    "inet": {"hosts": ["coord"]},
    "homes": [{"name": "a", "nat": "cone", "nodes": ["a1", "a2"]}],
}
#: Linked over their LAN; an allowlist carried by gossip.
LINKED = 30.0
#: Both nodes on v2: up to 60 s to notice the allowlist, ~50 s for the first estimate,
#: two moves one after the other (fetch, drain, swap, probation), on 2 loaded cores.
UPDATED = 300.0


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        for proc in started:
            _kill_group(proc)


def test_nodes_with_only_a_bundle_update_under_quorum_tokens(
    make_lab: LabFactory, tmp_path: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    lab = make_lab(HOME)
    net = Network(tmp_path / "net")
    home = start_bundled(lab, net, tmp_path, ("a1", "a2"), procs)
    url, nodes, tails = home.url, home.nodes, home.tails

    def version(n: FleetNode) -> str | None:
        assert n.alive(), tails()
        st = n.status() or {}
        v = st.get("version")
        return v if isinstance(v, str) else None

    wait_until("both nodes running", lambda: all(version(n) for n in nodes), 60.0, tails)
    v1 = {version(n) for n in nodes}
    a1, a2 = nodes

    def linked() -> bool:
        assert a1.alive() and a2.alive(), tails()
        return a2.id in a1.linked() and a1.id in a2.linked()

    wait_until("a1 and a2 linked", linked, LINKED, tails)
    for n in nodes:  # what the bundle's defaults made of the LAN
        assert n.gossip()["address"].startswith(f"tcp:{n.addr}:"), n.gossip()
        assert f"zeroconf: announcing {n.addr}:" in n.log(), n.tail()
    # a2 loses the replica (both ways, in its own namespace) while the release is
    # published: it can learn the allowlist only by gossip
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

    # the operator's release: v2, its record, allowlist, scope (everyone), the origin copy
    v2 = make_build(tmp_path, "v2", 2)
    data = v2.path.read_bytes()
    now = int(time.time())
    record = docs.Release.for_bytes(
        data, name="v2", counter=2, chunk_size=64 * 1024, issued=now - 10, expires=now + 86400
    )

    def http(method: str, path: str, body: bytes) -> tuple[int, Any]:
        req = urllib.request.Request(f"{url}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def publish() -> list[tuple[int, Any]]:
        out = [http("POST", "/v1/publish", record.sign([net.key("release")]).to_wire())]
        out.append(http("PUT", f"/v1/artifacts/{v2.sha}", data))
        out.append(http("POST", "/v1/publish", net.allowlist(1, [v2.sha])))
        out.append(http("POST", "/v1/publish", net.scope(v2.sha, serial=1)))
        return out

    for code, answer in in_netns(lab.ns("coord"), publish):
        assert code == 200, answer
    wait_until("a1 holds allowlist v1", lambda: a1.held_allowlist() == 1, LINKED, tails)
    wait_until("a2 holds it by gossip", lambda: a2.held_allowlist() == 1, LINKED, tails)
    subprocess.run(  # the replica back for a2: its departure token needs it
        ["ip", "netns", "exec", lab.ns("a2"), "nft", "delete", "table", "inet", "p11"], check=True
    )

    wait_until("both nodes on v2", lambda: all(version(n) == "v2" for n in nodes), UPDATED, tails)
    assert v1 != {"v2"}
    for n in nodes:  # each moved under a token the replica signed, confirmed on probation
        assert "--grant-all" not in n.log()

    def replica_sees_both() -> bool:  # each one's `rejoined` report, a moment after its swap
        code, st = in_netns(lab.ns("coord"), lambda: _status(url))
        assert code == 200, st
        art = st["artifacts"].get(v2.sha, {})
        return art.get("nodes") == 2 and art.get("leases") == 0

    wait_until("the replica sees both on v2, no lease left", replica_sees_both, LINKED, tails)


def _status(url: str) -> tuple[int, Any]:
    req = urllib.request.Request(f"{url}/status", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
