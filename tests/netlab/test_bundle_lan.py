"""Two nodes on one home LAN, each started with only ``--bundle`` and a state dir (P11).

A netlab home (``a``: a cone NAT, nodes a1 and a2 on 10.1.0.0/24) and one replica on the
inet bridge.  Nothing tells the nodes about each other or about their LAN: the bundle's
defaults (gossip on every interface, zeroconf on each private-range LAN address, the
replica it names) must find the peer, link to it, and carry the allowlist the replica
publishes to both.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as coordinator_main
from p2pupdate.core import crypto
from scripts.netlab import in_netns
from tests.coordinator.service_helpers import REPO, Network
from tests.netlab.conftest import LabFactory, needs_netlab
from tests.netlab.fleet import FleetNode, _kill_group, wait_until

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
    replica_log = tmp_path / "replica.log"
    replica: subprocess.Popen[str] = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("coord"), sys.executable, "-m", "coordinator.cli",
         "serve", "--dir", str(net.dir), "--listen", f"{lab.inet_addr('coord')}:0",
         "--first-start"],
        stdout=subprocess.PIPE, stderr=replica_log.open("ab"), stdin=subprocess.DEVNULL,
        text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True,
    )  # fmt: skip
    procs.append(replica)
    assert replica.stdout is not None
    m = re.search(r"listening on (http://\S+)", replica.stdout.readline())
    assert m, replica_log.read_text()
    url = m.group(1)
    bundle = tmp_path / "network.bundle"
    with contextlib.redirect_stdout(io.StringIO()):
        code = coordinator_main(["bundle", "--dir", str(net.dir), "--url", url, "-o", str(bundle)])
    assert code == 0

    nodes = []
    for name in ("a1", "a2"):
        state = tmp_path / name
        state.mkdir()
        key = crypto.SigningKey.from_seed(os.urandom(32))
        (state / "identity.pem").write_bytes(crypto.private_key_to_pem(key))
        (state / "identity.pem").chmod(0o600)
        log_path = tmp_path / f"{name}.log"
        with log_path.open("ab") as log:
            proc: subprocess.Popen[Any] = subprocess.Popen(
                ["ip", "netns", "exec", lab.ns(name), sys.executable, "-m", "p2pupdate",
                 "node", "--bundle", str(bundle), "--state-dir", str(state)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=tmp_path,
                start_new_session=True,
            )  # fmt: skip
        procs.append(proc)
        nodes.append(FleetNode(name=name, node_id=key.keyid, state_dir=state, proc=proc,
                               log_path=log_path, addr=lab.addr(name)))  # fmt: skip
    a1, a2 = nodes

    def tails() -> str:
        return "\n".join(n.tail() for n in nodes) + f"\n--- replica ---\n{replica_log.read_text()}"

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
