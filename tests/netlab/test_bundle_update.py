"""P11's Done-when: nodes started with only ``--bundle`` (and a state dir) update themselves.

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

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as coordinator_main
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from scripts.netlab import in_netns
from tests.coordinator.service_helpers import REPO, Network
from tests.launcher.harness import make_build
from tests.netlab.conftest import LabFactory, needs_netlab
from tests.netlab.fleet import FleetNode, _kill_group, wait_until

pytestmark = [needs_netlab, pytest.mark.slow]

HOME = {
    "inet": {"hosts": ["coord"]},
    "homes": [{"name": "a", "nat": "cone", "nodes": ["a1", "a2"]}],
}
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
    replica_log = tmp_path / "replica.log"
    token = tmp_path / "read-token"
    token.write_text("test-read-token\n")
    replica: subprocess.Popen[str] = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("coord"), sys.executable, "-m", "coordinator.cli",
         "serve", "--dir", str(net.dir), "--listen", f"{lab.inet_addr('coord')}:0",
         "--first-start", "--read-token-file", str(token)],
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

    def tails() -> str:
        return "\n".join(n.tail() for n in nodes) + f"\n--- replica ---\n{replica_log.read_text()}"

    def version(n: FleetNode) -> str | None:
        assert n.alive(), tails()
        st = n.status() or {}
        v = st.get("version")
        return v if isinstance(v, str) else None

    wait_until("both nodes running", lambda: all(version(n) for n in nodes), 60.0, tails())
    v1 = {version(n) for n in nodes}

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

    wait_until("both nodes on v2", lambda: all(version(n) == "v2" for n in nodes), UPDATED, tails())
    assert v1 != {"v2"}
    for n in nodes:  # each moved under a token the replica signed, confirmed on probation
        assert "--grant-all" not in n.log()
    code, st = in_netns(lab.ns("coord"), lambda: _status(url))
    assert code == 200, st
    art = st["artifacts"][v2.sha]
    assert art["nodes"] == 2, json.dumps(art)


def _status(url: str) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{url}/status", headers={"Authorization": "Bearer test-read-token"}
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
