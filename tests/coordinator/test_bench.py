"""``p2pupdate-coordinator bench``: its nodes' source subnets, and ``--sessions``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from coordinator.bench import MAX_CONCURRENCY, MAX_SESSIONS, client_address, session_address
from p2pupdate.core.admission import DEFAULT_CAPS, subnet_of

from .service_helpers import REPO


def test_every_bench_node_has_its_own_loopback_subnet() -> None:
    addresses = [client_address(i) for i in range(MAX_CONCURRENCY)]
    addresses += [session_address(i) for i in range(MAX_SESSIONS)]
    assert all(a.startswith("127.") and a.endswith(".1") for a in addresses)
    # one id per /24 (as the replica counts them): the asks never share a lease cap, the
    # sessions never near subnet_nodes
    subnets = {a.rsplit(".", 1)[0] for a in addresses}
    assert len(subnets) == len(addresses) > DEFAULT_CAPS["subnet_nodes"]
    for a in addresses[:: len(addresses) // 100]:
        assert subnet_of(a) == a.rsplit(".", 1)[0] + ".0/24"


def test_bench_sessions_through_a_real_replica() -> None:
    """8 asking nodes (more than a /24's 4 leases), 20 idle sessions: every ask granted."""
    args = ["--json", "--asks", "400", "--concurrency", "8", "--sessions", "20"]
    out = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["refused"] == {}
    assert result["asks"] == result["granted"] == 400
    assert result["sessions"] == result["sessions_kept"] == 20
    assert result["replica_rss_kib_sessions"] >= result["replica_rss_kib_before"] > 0
    assert isinstance(result["rss_per_session_kib"], float)
    assert 0 < result["p50_ms"] <= result["ask_p99_ms"] == result["p99_ms"]
