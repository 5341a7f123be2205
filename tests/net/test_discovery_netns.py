"""Zeroconf discovery between two real daemons in two network namespaces on one bridge.

No coordinator runs and no ``--peer`` is given: the only way the two nodes can learn of
each other is the ``_p2pupdate._udp.local.`` records they announce on the interface they
were told about (``--zeroconf ADDR``).  The test builds its own little LAN -- namespaces
``p2pA<pid>`` and ``p2pB<pid>`` with one veth each into a bridge in a third namespace,
198.18.0.0/24 (the benchmarking range), a 224.0.0.0/4 route for mDNS -- and removes it,
and the daemons' process groups, whatever happens.  It needs root and ``ip`` (CI runs as
root); anywhere else it is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pupdate.launcher.state import StateDir, StateError
from p2pupdate.net.discovery import contact_from_txt
from tests.coordinator.service_helpers import REPO, Network
from tests.launcher.conftest import Builds, builds

__all__ = ["builds"]

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_IP = shutil.which("ip") is not None
needs_netns = pytest.mark.skipif(
    not (IS_ROOT and HAS_IP),
    reason=f"needs root and iproute2 to make network namespaces "
    f"(root: {IS_ROOT}, `ip` found: {HAS_IP})",
)


def test_txt_records() -> None:
    node = "ab" * 32
    c = contact_from_txt({b"node": node.encode(), b"link": b"tcp:198.18.0.1:7946"})
    assert c is not None and (c.node, c.host, c.port) == (node, "198.18.0.1", 7946)
    assert contact_from_txt({b"node": node.encode(), b"link": b"tcp:some.name:1"}) is None
    assert contact_from_txt({b"node": b"short", b"link": b"tcp:198.18.0.1:1"}) is None
    assert contact_from_txt({b"link": b"tcp:198.18.0.1:1"}) is None
    assert contact_from_txt({b"node": node.encode(), b"link": None}) is None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def lan() -> Iterator[dict[str, str]]:
    """Two namespaces, A (198.18.0.1) and B (198.18.0.2), bridged in a third."""
    tag = str(os.getpid() % 100000)
    spaces = {"A": f"p2pA{tag}", "B": f"p2pB{tag}"}
    bridge = f"p2pBr{tag}"
    made: list[str] = []
    try:
        for ns in (*spaces.values(), bridge):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i, (name, ns) in enumerate(spaces.items(), start=1):
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{name}")
            _ip("-n", ns, "link", "set", f"v{name}", "netns", bridge)
            _ip("-n", bridge, "link", "set", f"v{name}", "master", "br0")
            _ip("-n", bridge, "link", "set", f"v{name}", "up")
            _ip("-n", ns, "addr", "add", f"198.18.0.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        yield spaces
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _status(state: StateDir) -> dict[str, Any]:
    try:
        return state.read_status() or {}
    except StateError:
        return {}


@needs_netns
def test_two_daemons_find_each_other_by_zeroconf(
    tmp_path: Path, lan: dict[str, str], builds: Builds
) -> None:
    net = Network(tmp_path / "net")
    v1 = builds.get("v1", 1)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs: list[subprocess.Popen[bytes]] = []
    states: dict[str, StateDir] = {}
    try:
        for i, (name, ns) in enumerate(lan.items(), start=1):
            addr = f"198.18.0.{i}"
            state_dir = tmp_path / f"node-{name}"
            states[name] = StateDir(state_dir)
            log = (tmp_path / f"node-{name}.log").open("ab")
            procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        sys.executable,
                        "-m",
                        "p2pupdate",
                        "node",
                        "--state-dir",
                        str(state_dir),
                        "--initial-artifact",
                        str(v1.path),
                        "--work",
                        "none",
                        "--check-interval",
                        "1h",
                        "--trust-root",
                        str(net.dir / "root.msgpack"),
                        "--gossip-listen",
                        f"{addr}:0",
                        "--zeroconf",
                        addr,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    cwd=str(tmp_path),
                )
            )
        deadline = time.monotonic() + 60
        linked = False
        while time.monotonic() < deadline and not linked:
            time.sleep(0.2)
            a, b = (_status(states[n]).get("gossip") or {} for n in ("A", "B"))
            linked = bool(
                a and b and b.get("node") in a.get("linked", ()) and a["node"] in b["linked"]
            )
        logs = {n: (tmp_path / f"node-{n}.log").read_text(errors="replace") for n in lan}
        assert linked, logs
        assert "zeroconf: announcing 198.18.0.1" in logs["A"]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
