"""Two processes in two namespaces over a veth: the rtc bench, small, as a test.

``scripts/bench/rtc.py`` makes ``p2pbA<pid>`` / ``p2pbB<pid>`` joined by a veth pair, runs
a dialer in one and an acceptor in the other with the signed blobs relayed through its
own pipes, and removes the namespaces whatever happens.  Run with 2 setups and 4 MiB it
proves links across two network stacks and two processes (the other rtc tests keep both
ends in one process), and that the bench prints its one JSON object.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
