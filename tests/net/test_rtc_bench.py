"""Two processes in two namespaces: the rtc bench, small, as a test (veth, and netlab).

``scripts/bench/rtc.py`` makes ``p2pbA<pid>`` / ``p2pbB<pid>`` joined by a veth pair, runs
a dialer in one and an acceptor in the other with the signed blobs relayed through its
own pipes, and removes the namespaces whatever happens.  Run with 2 setups and 4 MiB it
proves links across two network stacks and two processes (the other rtc tests keep both
ends in one process), and that the bench prints its one JSON object.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.net.test_rtc import REPO, needs_netns


@needs_netns
def test_two_namespaces_two_processes() -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/bench/rtc.py", "--setups", "2", "--mib", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["setups"] == 2 and out["path"] == "host", out
    assert out["setup_p50_s"] > 0 and out["throughput_mbit_s"] > 0, out
    assert out["relay_setup_p50_s"] is None
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "p2pb" not in left, left  # the bench removed its namespaces


@needs_netns
@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nft", "tc", "turnserver")),
    reason="netlab homes need nft and tc, the relay needs coturn (turnserver)",
)
def test_cone_homes_link_directly_strict_homes_through_turn() -> None:
    """netlab: two cone homes link without a relay pair, two strict homes through coturn
    (time-limited credentials, as a replica will mint them), each end in its node's
    namespace behind real nftables NAT."""
    proc = subprocess.run(
        [sys.executable, "scripts/bench/rtc.py", "--lab", "--setups", "1", "--mib", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["path"] in ("srflx", "prflx"), out  # direct through the cone NATs
    assert out["relay_path"] == "relay", out
    assert out["throughput_mbit_s"] > 0 and out["relay_throughput_mbit_s"] > 0, out
