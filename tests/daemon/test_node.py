"""The daemon shell in-process: paths the process tests cannot stage on cue.

Each test builds a state directory by hand (a staged slot, ``current``, and where needed a
``pending`` record and a checkpoint), runs ``Node.run()`` in this trio run with a
scripted workload, and plays the launcher's part itself where one is needed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio

from p2pupdate.clock import Clock
from p2pupdate.core.gates import GateResult
from p2pupdate.core.updater import State
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.node import Node, NodeConfig
from p2pupdate.daemon.nullwork import NullWorkload
from p2pupdate.daemon.offers import OfferSource
from p2pupdate.daemon.options import DaemonOptions
from p2pupdate.launcher.codes import EXIT_ROLLBACK, EXIT_STOP
from p2pupdate.launcher.state import Pending, StateDir, new_id
from p2pupdate.launcher.supervisor import Launcher, LauncherConfig
from p2pupdate.truststate import TrustFile
from tests.core.harness import NOW, Network, key_for
from tests.launcher.conftest import Builds
from tests.launcher.harness import Build, offer


class Rig:
    def __init__(self, tmp: Path, builds: Builds) -> None:
        self.v1: Build = builds.get("v1", 1)
        self.v2: Build = builds.get("v2", 2)
        self.state = StateDir(tmp / "state")
        self.state.stage_slot(self.v1.path.read_bytes(), self.v1.sha, counter=1)
        self.state.set_link("current", self.v1.sha)
        self.offers = tmp / "offers"
        self.offers.mkdir()
        self.lines: list[str] = []

    def node(self, slot: str, mode: str, workload: type = NullWorkload, **opts: object) -> Node:
        settings: dict[str, object] = {
            "work": "none",
            "grant_all": True,
            "check_interval": 0.1,
            "health_checks": 2,
            "health_interval": 0.05,
        }
        options = DaemonOptions(**(settings | opts))  # type: ignore[arg-type]
        return Node(
            NodeConfig(
                state_dir=self.state.root, slot=slot, mode=mode, parent_pid=None, options=options
            ),
            make_workload=workload,
            offers=OfferSource(self.offers, trust=None),
            log=self.lines.append,
            # in-process, the code is this checkout, not the slot's: skip "am I the slot?"
            self_test=lambda **kw: [],
        )

    def on_probation(self) -> Pending:
        self.state.stage_slot(self.v2.path.read_bytes(), self.v2.sha, counter=2)
        pending = Pending(
            id=new_id(),
            artifact=self.v2.sha,
            previous=self.v1.sha,
            counter=2,
            token=b"lease",
            created=time.time(),
            attempts=1,
            max_attempts=3,
            window=20.0,
            deadline=time.time() + 20.0,
        )
        self.state.write_pending(pending)
        return pending

    def log(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def rig(tmp_path: Path, builds: Builds) -> Rig:
    return Rig(tmp_path, builds)


async def test_probation_confirms_once_the_launcher_promotes(rig: Rig) -> None:
    pending = rig.on_probation()
    rig.state.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    rig.state.checkpoint.write_bytes(json.dumps({"handoffs": 4}).encode())
    node = rig.node(rig.v2.sha, "probation")
    launcher = Launcher(LauncherConfig(state_dir=rig.state.root), log=rig.lines.append)

    async def play_launcher() -> None:
        while (v := rig.state.read_verdict()) is None:
            await trio.sleep(0.02)
        assert v.answers(pending) and v.verdict == "confirm"
        launcher.promote(pending)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(play_launcher)
        result: list[int] = []

        async def run() -> None:
            result.append(await node.run())

        nursery.start_soon(run)
        with trio.fail_after(10):
            while node.updater is None or node.updater.state is not State.SLEEPING:
                await trio.sleep(0.02)
        assert isinstance(node.workload, NullWorkload) and node.workload.handoffs == 5
        assert node.mode == "normal"
        await node.stop()
    assert result == [EXIT_STOP]
    assert rig.state.read_link("current") == rig.v2.sha
    assert json.loads(rig.state.checkpoint.read_bytes()) == {"handoffs": 5}  # stop checkpoints
    assert (rig.state.root / "work" / "checkpoint.restored").exists()


async def test_unreadable_checkpoint_fails_probation_and_is_left_alone(rig: Rig) -> None:
    pending = rig.on_probation()
    rig.state.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    rig.state.checkpoint.write_bytes(b"not a checkpoint")
    node = rig.node(rig.v2.sha, "probation")
    with trio.fail_after(10):
        code = await node.run()
    assert code == EXIT_ROLLBACK
    verdict = rig.state.read_verdict()
    assert verdict is not None and verdict.answers(pending) and verdict.verdict == "rollback"
    assert verdict.reason.startswith("checkpoint restore failed")
    # this process never read the state, so it must not overwrite the handoff
    assert rig.state.checkpoint.read_bytes() == b"not a checkpoint"


async def test_an_unreadable_checkpoint_never_keeps_a_node_down(rig: Rig) -> None:
    rig.state.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    rig.state.checkpoint.write_bytes(b"garbage")
    node = rig.node(rig.v1.sha, "normal")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        with trio.fail_after(10):
            while not node._serving:
                await trio.sleep(0.02)
        await node.stop()
    assert "checkpoint not restored" in rig.log()
    assert any(p.name.startswith("checkpoint.bad-") for p in rig.state.work.iterdir())


class StuckDrain(NullWorkload):
    """A workload whose drain never finishes (ignores its deadline)."""

    made = 0

    def __init__(self) -> None:
        super().__init__()
        StuckDrain.made += 1

    async def drain(self, deadline: float) -> None:
        self._draining = True
        await trio.sleep_forever()


async def test_a_drain_that_overruns_resumes_service_on_the_old_version(rig: Rig) -> None:
    StuckDrain.made = 0
    offer(rig.offers, rig.v2)
    node = rig.node(rig.v1.sha, "normal", workload=StuckDrain, drain_timeout=0.2)
    seen: list[State] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        with trio.fail_after(15):  # the updater waits drain_timeout + drain_grace (5 s)
            while True:
                assert node.updater is None or node.updater.state is not State.SWAPPING
                if node.updater is not None:
                    seen.append(node.updater.state)
                if State.DRAINING in seen and StuckDrain.made >= 2 and node.workload.healthy():
                    break
                await trio.sleep(0.02)
        node.finish(EXIT_STOP)
    assert "resuming service on this version: drain-timeout" in rig.log()
    assert "lease returned unused: drain-timeout" in rig.log()
    assert rig.state.read_pending() is None
    assert not rig.state.checkpoint.exists()


async def test_without_grant_all_the_node_backs_off(rig: Rig) -> None:
    offer(rig.offers, rig.v2)
    node = rig.node(rig.v1.sha, "normal", grant_all=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        with trio.fail_after(10):
            while node.updater is None or node.updater.state is not State.BACKING_OFF:
                await trio.sleep(0.02)
        status = rig.state.read_status()
        assert status is not None and status["state"] == "backing_off"
        node.finish(EXIT_STOP)
    assert rig.state.read_pending() is None


# -- gates 1-2 over the coordinator's documents (CoordinatorLink.evaluate) ----------------------


def _link(tmp: Path, net: Network) -> CoordinatorLink:
    trust = TrustFile.open(tmp / "trust", initial_root=net.roots[1], now=NOW)
    return CoordinatorLink(
        ["http://127.0.0.1:9"],
        key_for("node"),
        trust,
        pool="p",
        estimate=None,
        report_interval=30.0,
        log=lambda _m: None,
        clock=Clock(wall=lambda: float(NOW), monotonic=lambda: 0.0),
    )


@pytest.mark.parametrize(
    ("counter", "force", "reason"),
    [(2, False, "downgrade"), (1, False, "downgrade"), (1, True, None), (3, False, None)],
    ids=["equal", "lower", "forced", "newer"],
)
def test_link_applies_the_downgrade_rule_without_the_installed_record(
    tmp_path: Path, counter: int, force: bool, reason: str | None
) -> None:
    """The running build (counter 2) came from an offer: no release record of it is held,
    so the gate's counter rule works from the slot's counter (one rule, in ``gates``)."""
    net = Network()
    link = _link(tmp_path, net)
    assert link.evaluate(installed="0" * 64, installed_counter=2).refusal == GateResult(
        ok=False, gate="allowlist", reason="no-documents", detail="nothing from the coordinator yet"
    )
    release, data = net.release(f"app-{counter}", counter=counter)
    assert link.take(data, source="test")
    assert link.take(net.allowlist(1, [release.artifact]), source="test")
    assert link.take(net.scope(release.artifact, force=force), source="test")
    answer = link.evaluate(installed="0" * 64, installed_counter=2)
    if reason is None:
        assert answer.candidate is not None and answer.candidate.artifact == release.artifact
    else:
        assert answer.candidate is None and answer.refusal is not None
        assert (answer.refusal.gate, answer.refusal.reason) == ("allowlist", reason)
        assert answer.refusal.detail == f"release counter {counter} is not above installed 2"
