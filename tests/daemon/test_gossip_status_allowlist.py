"""The status file's ``gossip.allowlist`` follows an allowlist the replica pushed, at once.

Found by LAB's netlab fleet test: a node with no gossip peer (so no change of its view to
rewrite the status file) took an allowlist from the replica into its trust store, and its
status file kept reporting the old one until some later state change.  Real processes: a
``p2pupdate-coordinator serve`` and a ``p2pupdate node`` on loopback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.coordinator.service_helpers import Network, ReplicaProcesses, http, replicas
from tests.launcher.conftest import Builds
from tests.launcher.harness import NodeProcess, Nodes, watcher_args

pytestmark = pytest.mark.slow

__all__ = ["replicas"]  # the fixture


def _status(node: NodeProcess) -> dict[str, Any]:
    return node.status() or {}


def test_the_status_file_shows_an_allowlist_the_replica_pushed(
    tmp_path: Path, nodes: Nodes, builds: Builds, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    v1 = builds.get("v1", 1)
    rp = replicas.start(net, 1)
    node = nodes.start(
        tmp_path / "n",
        [
            *watcher_args(v1, trust_root=net.dir / "root.msgpack", coordinator=rp.url),
            "--gossip-listen",
            "127.0.0.1:0",
            "--report-interval",
            "1s",
        ],
    )
    # settled: sleeping, connected, and its status file written 2 s ago or more
    node.wait_for(
        "the node settled",
        lambda: (
            (st := _status(node)).get("state") == "sleeping"
            and "gossip" in st
            and time.time() - st["time"] >= 2.0
            and http("GET", f"{rp.url}/status")[1]["replica"]["connected_nodes"] == 1
        ),
        60,
    )
    code, answer = http("POST", f"{rp.url}/v1/publish", net.allowlist(3, [v1.sha]))
    assert code == 200, answer
    node.wait_for(
        "allowlist v3 in the status file",
        lambda: _status(node).get("gossip", {}).get("allowlist") == 3,
        5,
    )
