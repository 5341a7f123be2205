"""Measure an idle gossiping node: RSS and CPU with 8 links at 1 s rounds.

    .venv/bin/python scripts/bench/gossip_idle.py [--seconds S] [--links N] [--round DUR] [--json]

Starts one real node (``python -m p2pupdate node``: the launcher and the daemon it runs
from a slot built from this tree) with ``--work none``, a trust root from
``coordinator init``, ``--gossip-listen 127.0.0.2:0`` and no coordinator.  Then N gossip
peers (the daemon's own ``GossipService``, in this process, on 127.0.0.10+k so that the
per-address Sybil cap does not apply) bootstrap from it.  Once the daemon holds N links
and nothing else is happening (no update check: ``--check-interval 1h``), the daemon
process's CPU time and RSS are sampled over S seconds.  The figures are the daemon's alone
(the launcher is reported apart; the peers' work is this process's).

Issue 14's targets ("A small box"): ``launcher_rss_mb`` <= 15 and ``node_rss_mb`` (stage-0 +
launcher + daemon) <= 60.  ``p2pupdate node`` becomes stage-0 (``launcher.stage0``: the same
pid, ``stage0_rss_mb``), whose one child is the launcher; both are read at the end, and
``launcher_rss_hwm_mb`` is the launcher's peak.  ``--json`` prints one JSON object; otherwise one line per figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from p2pupdate.clock import SYSTEM  # noqa: E402
from p2pupdate.core import crypto  # noqa: E402
from p2pupdate.core import gossip as g  # noqa: E402
from p2pupdate.daemon.gossip import GossipService, parse_link_address, trust_verifier  # noqa: E402
from p2pupdate.daemon.truststate import TrustFile  # noqa: E402
from p2pupdate.launcher.artifact import build_artifact  # noqa: E402
from p2pupdate.launcher.state import StateDir, StateError  # noqa: E402


def proc_figures(pid: int) -> tuple[int, int, float]:
    """(VmRSS bytes, VmHWM bytes, user+system CPU seconds) of one process."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, hwm, cpu


def launcher_pid(stage0: int) -> int:
    """The launcher: the one child of stage-0 (the process ``p2pupdate node`` became)."""
    children = Path(f"/proc/{stage0}/task/{stage0}/children").read_text().split()
    if len(children) != 1:
        raise SystemExit(f"stage-0 (pid {stage0}) has children {children}, not one launcher")
    return int(children[0])


def read_status(state: StateDir) -> dict[str, Any] | None:
    try:
        return state.read_status()
    except StateError:
        return None


def wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"gossip_idle: timed out waiting for {what}")
        time.sleep(0.1)


async def run_peers(
    root: bytes, tmp: Path, bootstrap: tuple[str, int], links: int, state: StateDir, seconds: float
) -> dict[str, Any]:
    def status() -> g.Status:
        return g.Status(
            version="peer", artifact="00" * 32, state="serving", pool="default", load=1, capacity=10
        )

    services = []
    for k in range(links):
        trust = TrustFile.open(tmp / f"peer-{k}", initial_root=root, now=int(time.time()))
        services.append(
            GossipService(
                key=crypto.SigningKey.from_seed(os.urandom(32)),
                status=status,
                clock=SYSTEM,
                verify=trust_verifier(trust, SYSTEM),
                listen=(f"127.0.0.{10 + k}", 0),
                peers=[bootstrap],
                rng=random.Random(k),
            )
        )
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        for svc in services:
            await nursery.start(svc.run)

        def links_now() -> int:
            st = read_status(state) or {}
            return int(st.get("gossip", {}).get("links", 0))

        with trio.fail_after(120):
            while links_now() < links:
                await trio.sleep(0.5)
        st = read_status(state) or {}
        pid = int(st["pid"])
        await trio.sleep(5.0)  # let the joins settle
        rss0, _, cpu0 = proc_figures(pid)
        t0 = time.monotonic()
        samples = [rss0]
        while time.monotonic() - t0 < seconds:
            await trio.sleep(1.0)
            samples.append(proc_figures(pid)[0])
        rss1, hwm, cpu1 = proc_figures(pid)
        elapsed = time.monotonic() - t0
        st = read_status(state) or {}
        out = {
            "daemon_pid": pid,
            "links": st.get("gossip", {}).get("links"),
            "active": st.get("gossip", {}).get("active"),
            "seconds": round(elapsed, 1),
            "rss_mb": round(rss1 / 2**20, 1),
            "daemon_rss_mb": round(rss1 / 2**20, 1),
            "rss_mb_max_sampled": round(max(samples) / 2**20, 1),
            "rss_hwm_mb": round(hwm / 2**20, 1),
            "cpu_percent_of_one_core": round(100.0 * (cpu1 - cpu0) / elapsed, 3),
        }
        nursery.cancel_scope.cancel()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--links", type=int, default=8)
    p.add_argument("--round", default="1s")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gossip-idle-"))
    proc = None
    try:
        net = tmp / "net"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "coordinator.cli",
                "init",
                str(net),
                "--network",
                "bench",
                "--pow-bits",
                "0",
                "--standing",
                "0",
            ],  # the bench node needs no PoW key
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        root = (net / "root.msgpack").read_bytes()
        artifact = tmp / "bench.tar.gz"
        artifact.write_bytes(build_artifact(REPO, "bench"))
        state_dir = tmp / "node"
        log = (tmp / "node.log").open("ab")
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "p2pupdate", "node", "--state-dir", str(state_dir),
                "--initial-artifact", str(artifact), "--work", "none",
                "--trust-root", str(net / "root.msgpack"), "--check-interval", "1h",
                "--gossip-listen", "127.0.0.2:0", "--gossip-round", args.round,
            ],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        state = StateDir(state_dir)
        st = wait("the daemon to gossip", lambda: (read_status(state) or {}).get("gossip"), 60)
        bootstrap = parse_link_address(st["address"])
        assert bootstrap is not None
        figures = trio.run(run_peers, root, tmp, bootstrap, args.links, state, args.seconds)
        stage0 = proc_figures(proc.pid)
        launcher = proc_figures(launcher_pid(proc.pid))
        launcher_mb = round(launcher[0] / 2**20, 1)
        stage0_mb = round(stage0[0] / 2**20, 1)
        result = {
            "bench": "gossip_idle",
            "round": args.round,
            **figures,
            "launcher_rss_mb": launcher_mb,
            "launcher_rss_hwm_mb": round(launcher[1] / 2**20, 1),
            "stage0_rss_mb": stage0_mb,
            "node_rss_mb": round(stage0_mb + launcher_mb + figures["daemon_rss_mb"], 1),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                print(f"{key}: {value}")
        return 0
    finally:
        if proc is not None:
            with_pg = proc.pid
            try:
                os.killpg(with_pg, 15)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(with_pg, 9)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
