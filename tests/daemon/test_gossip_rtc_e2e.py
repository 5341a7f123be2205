"""Two real ``p2pupdate node`` processes link by rtc (contract C3), signaling through a real
``p2pupdate-coordinator serve`` process: the node wiring (``--rtc``, ``hooks``:
``CoordinatorLink.on_signal`` into gossip, ICE servers, the status file's ``paths``).

aioice never offers 127.0.0.1, so the outer test makes a namespace with two non-loopback
addresses and runs the inner test there (a child pytest under ``ip netns exec``); the
inner one is skipped anywhere else.  The nodes learn of each other only from the
replica's introductions; each must report the other with path ``host`` in its status file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.coordinator.service_helpers import Network, ReplicaProcesses, replicas
from tests.launcher.conftest import Builds
from tests.launcher.harness import Nodes, gossip_view, watcher_args

pytestmark = pytest.mark.slow

__all__ = ["replicas"]  # the fixture

REPO = Path(__file__).resolve().parents[2]
INSIDE = "P2PUPDATE_RTC_E2E_NETNS"
ADDRS = ("10.77.2.1", "10.77.2.2")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _linked_by_host(view: dict[str, Any], other: dict[str, Any]) -> bool:
    return bool(other.get("node")) and view.get("paths", {}).get(other["node"]) == "host"


def _inner_two_daemons_link_by_rtc(
    tmp_path: Path, nodes: Nodes, builds: Builds, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    v1 = builds.get("v1", 1)
    # On one of the namespace's addresses, not loopback: a replica introduces a node by the
    # address it sees the node's session come from (README "Abuse limits"), and a node
    # that reached it over loopback would be introduced as 127.0.0.1, where rtc never goes.
    rp = replicas.start(net, 1, host=ADDRS[0])
    common = [
        *watcher_args(
            v1, trust_root=net.dir / "root.msgpack", coordinator=rp.url, gossip_round="0.5s"
        ),
        "--report-interval",
        "1s",
    ]
    started = time.monotonic()
    a, b = (
        nodes.start(tmp_path / f"n{i}", [*common, "--gossip-listen", f"{addr}:0"])
        for i, addr in enumerate(ADDRS)
    )
    deadline = started + 60
    while time.monotonic() < deadline:
        ga, gb = gossip_view(a), gossip_view(b)
        if _linked_by_host(ga, gb) and _linked_by_host(gb, ga):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(
            f"no rtc link: {gossip_view(a)} / {gossip_view(b)}\n{a.log()}\n{b.log()}"
        )
    took = time.monotonic() - started
    for view in (ga, gb):
        assert view["rtc"] is True and view["transports"] == {"tcp": 0, "rtc": 1}, view
        assert view["relayed_bytes"] == 0, view
    print(f"ok e2e: two daemons linked by rtc {took:.1f}s after start")


# The inner half is a test only inside the outer test's namespace (where the outer test runs
# pytest on it): collected anywhere else it would only ever show as a skip.
if os.environ.get(INSIDE) == "1":
    test_inner_two_daemons_link_by_rtc = _inner_two_daemons_link_by_rtc


@pytest.fixture
def netns() -> Iterator[str]:
    ns = f"p2pE{os.getpid() % 100000}"
    ip = ["ip", "-n", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    try:
        subprocess.run([*ip, "link", "set", "lo", "up"], check=True, capture_output=True)
        subprocess.run(
            [*ip, "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
            check=True,
            capture_output=True,
        )
        for addr in ADDRS:
            subprocess.run(
                [*ip, "addr", "add", f"{addr}/24", "dev", "d0"], check=True, capture_output=True
            )
        for dev in ("d0", "d1"):
            subprocess.run([*ip, "link", "set", dev, "up"], check=True, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@pytest.mark.skipif(
    not IS_ROOT or shutil.which("ip") is None, reason="needs root and iproute2 (a netns)"
)
def test_two_daemons_link_by_rtc_through_a_replica_process(netns: str) -> None:
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            f"{Path(__file__).relative_to(REPO)}::test_inner_two_daemons_link_by_rtc",
        ],
        cwd=REPO,
        env={**os.environ, INSIDE: "1"},
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0 and "ok e2e" in proc.stdout, proc.stdout + proc.stderr
    print(next(line for line in proc.stdout.splitlines() if "ok e2e" in line))
