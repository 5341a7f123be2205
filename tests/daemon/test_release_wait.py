"""A release record that comes after its allowlist ends the wait for it (in-process).

Two documents travel as two rumors, so a node can hold the allowlist naming v2 before v2's
release record: gate 1 says ``no-release-record``.  The swarm bench saw a node then sleep its
whole check interval (1 h) although the record came seconds later.  Here a real ``Node``
with a real coordinator link (a replica on a real socket, which holds nothing, so only
what the test hands the link arrives) takes the scope and the allowlist as gossip would
deliver them, checks, and sleeps for the interval; the release record then brings its
check forward to within the notice spread, and the node prefetches v2.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import trio

from p2pupdate.clock import SYSTEM
from p2pupdate.core import crypto
from p2pupdate.core import updater as up
from p2pupdate.daemon.node import Node, NodeConfig
from p2pupdate.daemon.nullwork import NullWorkload
from p2pupdate.daemon.options import DaemonOptions
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.launcher.state import StateDir
from tests.coordinator.service_helpers import Network, artifact_of, in_process
from tests.daemon.coordutil import coord_link
from tests.launcher.conftest import Builds

DATA = random.Random(31).randbytes(3000)
ART = artifact_of(DATA)
SPREAD = 0.5
INTERVAL = 3600.0


async def _until(cond: object, what: str, timeout: float = 10.0) -> None:
    assert callable(cond)
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"not within {timeout:g} s: {what}")


async def test_a_release_record_after_its_allowlist_brings_the_check_forward(
    tmp_path: Path, builds: Builds
) -> None:
    v1 = builds.get("v1", 1)
    net = Network(tmp_path / "net")
    state = StateDir(tmp_path / "state")
    state.stage_slot(v1.path.read_bytes(), v1.sha, counter=1)
    state.set_link("current", v1.sha)
    lines: list[str] = []
    trust = TrustFile.open(state.root / "trust", initial_root=net.root_bytes, now=int(time.time()))
    with trio.fail_after(30):
        async with in_process(net) as (_replica, url), trio.open_nursery() as nursery:
            coord = coord_link(url, crypto.SigningKey.from_seed(b"\x61" * 32), trust, lines)
            options = DaemonOptions(
                work="none",
                check_interval=INTERVAL,
                coordinator=(url,),
                gossip_notice_spread=SPREAD,
            )
            node = Node(
                NodeConfig(
                    state_dir=state.root,
                    slot=v1.sha,
                    mode="normal",
                    parent_pid=None,
                    options=options,
                ),
                make_workload=NullWorkload,
                offers=None,
                clock=SYSTEM,
                log=lines.append,
                coordinator=coord,
                gossip=None,
                trust=trust,
                self_test=lambda **kw: [],
            )
            nursery.start_soon(node.run)
            await _until(lambda: node.updater is not None, "the updater runs")

            def wait() -> float:
                assert node.updater is not None
                timer = node.updater.get_timer()
                return (timer if timer is not None else float("inf")) - trio.current_time()

            # the scope and the allowlist arrive (as gossip delivers them), the record not yet
            release = net.release(DATA, "v2", 2)
            assert coord.take(net.scope(ART, serial=1), source="gossip")
            assert coord.take(net.allowlist(1, [v1.sha, ART]), source="gossip")
            await _until(
                lambda: any("no-release-record" in m for m in lines),
                "a check that lacks the release record",
            )
            await _until(lambda: wait() > INTERVAL / 2, "the sleep of a check interval")
            assert node.updater is not None and node.updater.state is up.State.SLEEPING

            assert coord.take(release, source="gossip")
            # on main the node slept on (its timer ~1 h away) until a nudge or a newer allowlist
            await _until(
                lambda: (
                    node.updater is not None
                    and (node.updater.state is not up.State.SLEEPING or wait() <= SPREAD)
                ),
                f"the check brought forward to within {SPREAD} s",
            )
            await _until(
                lambda: any("-> prefetching" in m for m in lines), "the node prefetches v2"
            )
            nursery.cancel_scope.cancel()
