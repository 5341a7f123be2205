"""Nodes that get nothing but a bundle (P11), in a netlab home, and their replica.

``start_bundled`` runs a replica with ``serve``'s defaults on the inet bridge, writes the
network's bundle naming it, and starts ``p2pupdate node --bundle F --state-dir D`` in each
node's namespace -- no other flag.  The processes go into ``procs`` (the test's fixture
kills them, whatever happened).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.cli import main as coordinator_main
from p2pupdate.core import crypto
from scripts.netlab import Lab
from tests.coordinator.service_helpers import REPO, Network
from tests.netlab.fleet import FleetNode

#: The replica's read token (it reads /status from its own inet address, not loopback).
READ_TOKEN = "test-read-token"


@dataclass
class Bundled:
    url: str
    bundle: Path
    nodes: list[FleetNode]
    replica_log: Path

    def tails(self) -> str:
        """Each node's log tail and status (its updater state and next check), the replica's log."""
        return "\n".join(
            f"{n.tail()}\n--- {n.name} status ---\n{n.status()}" for n in self.nodes
        ) + (f"\n--- replica ---\n{self.replica_log.read_text()}")


def start_bundled(
    lab: Lab, net: Network, tmp: Path, names: tuple[str, ...], procs: list[subprocess.Popen[Any]]
) -> Bundled:
    replica_log = tmp / "replica.log"
    token = tmp / "read-token"
    token.write_text(READ_TOKEN + "\n")
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
    bundle = tmp / "network.bundle"
    with contextlib.redirect_stdout(io.StringIO()):
        code = coordinator_main(["bundle", "--dir", str(net.dir), "--url", url, "-o", str(bundle)])
    assert code == 0
    nodes = []
    for name in names:
        state = tmp / name
        state.mkdir()
        key = crypto.SigningKey.from_seed(os.urandom(32))  # its id is known to the test
        (state / "identity.pem").write_bytes(crypto.private_key_to_pem(key))
        (state / "identity.pem").chmod(0o600)
        log_path = tmp / f"{name}.log"
        with log_path.open("ab") as log:
            proc: subprocess.Popen[Any] = subprocess.Popen(
                ["ip", "netns", "exec", lab.ns(name), sys.executable, "-m", "p2pupdate",
                 "node", "--bundle", str(bundle), "--state-dir", str(state)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=tmp,
                start_new_session=True,
            )  # fmt: skip
        procs.append(proc)
        nodes.append(FleetNode(name=name, node_id=key.keyid, state_dir=state, proc=proc,
                               log_path=log_path, addr=lab.addr(name)))  # fmt: skip
    return Bundled(url=url, bundle=bundle, nodes=nodes, replica_log=replica_log)
