"""Part 2 of ``scripts/demo`` (``scripts/demo_homes.py``) end to end, as root.

18 nodes in 12 netlab homes behind cone and strict NAT, started with only the network
bundle (no ``--initial-artifact``, no aggregate stub), three replicas (quorum 2, one killed
midway) and coturn: v2 under one signed ramp scope peer to peer, a bad v3 stopped by the
breaker.  The demo must exit 0, print its summary line (``origin share X%`` under 10%),
say what it signed for v2 (one ramp) and that no node ran v3 past probation (per node),
write its timeline and leave no namespace of its lab behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.netlab import leftovers
from tests.netlab.conftest import needs_netlab

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "demo_homes.py"

pytestmark = [needs_netlab, pytest.mark.slow]


def test_homes_behind_nat_roll_to_v2_and_stop_a_bad_v3(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "homes")],
        capture_output=True, text=True, timeout=400,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    m = re.search(r"Homes demo OK: 18 nodes .* origin share (\d+)%", p.stdout)
    assert m, out[-4000:]
    assert int(m.group(1)) < 10
    assert "blast radius" in p.stdout and "skipped" not in p.stdout
    # the nodes' command line, printed whole: the bundle and pacing flags only
    cmd = next(line for line in p.stdout.splitlines() if "every node runs:" in line)
    assert "--bundle" in cmd and "--initial-artifact" not in cmd and "--aggregate-stub" not in cmd
    # v2: one signature, a ramp of three stages; v3: one "everyone" scope; nothing else
    signed = next(line for line in p.stdout.splitlines() if "signed once" in line)
    assert re.search(r"scope serial 1: ramp 0:[0-9.]+,30:0.25,60:1 ", signed), signed
    scopes = sorted(f.name for f in (tmp_path / "homes").glob("scope-*.msgpack"))
    assert scopes == ["scope-1.msgpack", "scope-2.msgpack"]
    assert len(re.findall(r"ramp \d/3 .* its nodes on v2", p.stdout)) == 3
    assert "no node ran v3 past probation: True" in p.stdout
    assert "NOT shown within probation" not in p.stdout
    assert (tmp_path / "homes" / "timeline.png").stat().st_size > 0
    assert leftovers("dh") == []
