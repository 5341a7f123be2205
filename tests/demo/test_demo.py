"""The fleet demo (``scripts/fleet_demo.py``, part 1 of ``scripts/demo``) end to end.

A real coordinator replica and four real ``p2pupdate node`` processes roll from v1 to v2
under a KV client load: the demo must exit 0, report 0 failed requests and every
acknowledged write readable, and leave no process behind -- also when it is stopped by a
signal halfway.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "fleet_demo.py"


def _processes_under(path: Path) -> list[str]:
    """Live processes that run in ``path`` or name it on their command line: the demo's
    children (the replica and the launchers run in it, the daemons name their state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        inside = cwd == str(path) or cwd.startswith(f"{path}/") or str(path) in cmd
        if state not in ("Z", "X") and inside:
            found.append(f"{entry.name}: {cmd}")
    return found


def _wait_gone(path: Path, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _processes_under(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _start(work: Path, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "P2PUPDATE_TEST_CRASH_AT"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), str(work), *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.slow
def test_fleet_demo_rolls_four_nodes_to_v2_with_zero_failed_requests(tmp_path: Path) -> None:
    work = tmp_path / "fleet"
    log = tmp_path / "demo.out"
    t0 = time.monotonic()
    proc = _start(work, log)
    try:
        code = proc.wait(timeout=280)
    finally:
        _kill(proc)
    out = log.read_text(errors="replace")
    assert code == 0, f"demo exited {code} after {time.monotonic() - t0:.0f} s\n{out[-6000:]}"
    assert "Fleet demo OK: 4 nodes moved v1 -> v2" in out
    assert re.search(r"^  failed:\s+0$", out, re.M), out[-3000:]
    m = re.search(r"^  durable:\s+(\d+) of (\d+) acknowledged writes", out, re.M)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) > 0, out[-3000:]
    assert "nodes:     4 (v2 4)" in out  # the replica's own status table agrees
    # v2 moved peer to peer: the summary gives the share the replica's origin counted.
    m = re.search(r"^Fleet demo OK: .* origin share (\d+)%", out, re.M)
    assert m and 0 <= int(m.group(1)) <= 100, out[-3000:]
    for i in range(1, 5):
        status = json.loads((work / "nodes" / f"node{i}" / "status").read_text())
        assert status["version"] == "v2" and status["mode"] == "normal"
    assert _wait_gone(work) == []


@pytest.mark.slow
def test_fleet_demo_stopped_by_a_signal_leaves_no_process(tmp_path: Path) -> None:
    work = tmp_path / "fleet"
    log = tmp_path / "demo.out"
    # code-only builds: the fleet runs in ~half the time, and a signal is what is tested here
    proc = _start(work, log, "--code-only")
    try:
        deadline = time.monotonic() + 120
        while "== 6." not in log.read_text(errors="replace"):  # nodes and client running
            assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(0.2)
        # the demo, the replica, 4 launchers and their 4 daemons
        assert len(_processes_under(work)) >= 10, _processes_under(work)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        _kill(proc)
    out = log.read_text(errors="replace")
    assert code == 130, out[-3000:]
    assert "interrupted; stopping the fleet" in out
    assert _wait_gone(work) == []
