"""The launcher's decisions, step by step, on a real state directory (no processes).

``decide()`` must resolve whatever a killed launcher left behind from the files alone, so
each test writes the files a crash at some point would leave and checks what runs next and
what is on disk afterwards.  ``after_exit()`` is fed the exit a daemon would have had.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from p2pupdate.launcher.codes import EXIT_ROLLBACK, EXIT_STOP, EXIT_SWAP, describe_exit
from p2pupdate.launcher.state import (
    Deny,
    Pending,
    StateDir,
    StateError,
    Verdict,
    new_id,
)
from p2pupdate.launcher.supervisor import Launcher, LauncherConfig, Outcome, Plan

from .conftest import Builds
from .harness import Build


class Rig:
    """A state dir bootstrapped from v1, with v2 staged: the moment after a swap."""

    def __init__(self, tmp: Path, builds: Builds) -> None:
        self.v1: Build = builds.get("v1", 1)
        self.v2: Build = builds.get("v2", 2)
        self.lines: list[str] = []
        self.launcher = Launcher(
            LauncherConfig(
                state_dir=tmp / "state",
                initial_artifact=self.v1.path,
                probation=10.0,
                max_attempts=3,
                backoff_base=0.01,
            ),
            log=self.lines.append,
        )
        self.state: StateDir = self.launcher.state
        plan = self.launcher.decide()
        assert plan == Plan(slot=self.v1.sha)

    def swap(self) -> Pending:
        """What the v1 daemon does before it exits 75."""
        self.state.stage_slot(self.v2.path.read_bytes(), self.v2.sha, counter=2)
        pending = Pending(
            id=new_id(),
            artifact=self.v2.sha,
            previous=self.v1.sha,
            counter=2,
            token=b"lease",
            created=time.time(),
        )
        self.state.write_pending(pending)
        return pending

    def confirm(self, pending: Pending, verdict: str = "confirm", reason: str = "ok") -> None:
        self.state.write_verdict(
            Verdict(
                id=pending.id,
                artifact=pending.artifact,
                verdict=verdict,
                reason=reason,
                time=time.time(),
                pid=1,
            )
        )

    def log(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def rig(tmp_path: Path, builds: Builds) -> Rig:
    return Rig(tmp_path, builds)


def test_bootstrap_from_the_initial_artifact(rig: Rig) -> None:
    st = rig.state
    assert st.read_link("current") == rig.v1.sha
    assert st.read_link("previous") is None
    m = st.slot_manifest(rig.v1.sha)
    assert m is not None and (m.version, m.counter) == ("v1", 0)
    assert "bootstrapped" in rig.log()


def test_bootstrap_from_the_installed_package(tmp_path: Path) -> None:
    import p2pupdate

    launcher = Launcher(LauncherConfig(state_dir=tmp_path / "s"), log=lambda m: None)
    plan = launcher.decide()
    m = launcher.state.slot_manifest(plan.slot)
    assert m is not None and m.version == p2pupdate.__version__
    # the same tree gives the same slot: a second bootstrap elsewhere agrees
    again = Launcher(LauncherConfig(state_dir=tmp_path / "t"), log=lambda m: None).decide()
    assert again.slot == plan.slot


def test_probation_attempts_then_rollback(rig: Rig) -> None:
    pending = rig.swap()
    for attempt in (1, 2, 3):
        plan = rig.launcher.decide()
        assert plan.slot == rig.v2.sha and plan.pending is not None
        on_disk = rig.state.read_pending()
        assert on_disk is not None and on_disk.attempts == attempt
        assert on_disk.deadline is not None and on_disk.deadline > time.time() + 5
        assert rig.launcher.after_exit(plan, Outcome(code=1, runtime=0.1)) is True
        assert rig.state.read_pending().last_failure == describe_exit(1)  # type: ignore[union-attr]
    plan = rig.launcher.decide()  # attempts spent: roll back, run v1
    assert plan == Plan(slot=rig.v1.sha)
    assert rig.state.read_pending() is None
    assert rig.state.read_link("current") == rig.v1.sha
    denied = rig.state.read_denied()
    assert [(d.artifact, d.counter) for d in denied] == [(rig.v2.sha, 2)]
    [entry] = rig.state.read_rollbacks()
    assert (entry.id, entry.artifact, entry.previous) == (pending.id, rig.v2.sha, rig.v1.sha)
    assert "failed 3 of 3 starts: crashed (exit 1)" in entry.reason
    assert entry.token == b"lease" and entry.reported is None
    assert "ROLLED BACK" in rig.log()
    # the denied slot is collected; current stays
    assert rig.state.list_slots() == [rig.v1.sha]


def test_a_killed_launcher_counts_the_attempt(rig: Rig) -> None:
    rig.swap()
    rig.launcher.decide()  # attempt 1 starts; the launcher is killed with its daemon
    fresh = Launcher(rig.launcher.config, log=rig.lines.append)
    plan = fresh.decide()
    assert plan.pending is not None and plan.pending.attempts == 2
    fresh.decide()  # attempt 3 (killed again)
    plan = fresh.decide()
    assert plan == Plan(slot=rig.v1.sha)
    [entry] = rig.state.read_rollbacks()
    assert "killed with the launcher" in entry.reason


def test_confirm_promotes_and_is_restart_safe(rig: Rig) -> None:
    pending = rig.swap()
    plan = rig.launcher.decide()
    rig.confirm(pending)
    # killed right after the daemon confirmed: the next decide promotes
    plan = Launcher(rig.launcher.config, log=rig.lines.append).decide()
    assert plan == Plan(slot=rig.v2.sha)
    assert rig.state.read_link("current") == rig.v2.sha
    assert rig.state.read_link("previous") == rig.v1.sha
    assert rig.state.read_pending() is None and rig.state.read_verdict() is None
    assert sorted(rig.state.list_slots()) == sorted([rig.v1.sha, rig.v2.sha])


def test_promotion_interrupted_between_the_links(rig: Rig) -> None:
    pending = rig.swap()
    rig.launcher.decide()
    rig.confirm(pending)
    rig.state.set_link("previous", rig.v1.sha)  # the "promote" crash point: current not yet
    plan = rig.launcher.decide()
    assert plan == Plan(slot=rig.v2.sha)
    assert (rig.state.read_link("current"), rig.state.read_link("previous")) == (
        rig.v2.sha,
        rig.v1.sha,
    )


def test_a_verdict_of_another_swap_is_ignored(rig: Rig) -> None:
    pending = rig.swap()
    rig.confirm(pending.with_(id=new_id()))  # left over from an earlier swap of the same build
    plan = rig.launcher.decide()
    assert plan.pending is not None  # still on probation, not promoted
    assert rig.state.read_link("current") == rig.v1.sha


def test_unhealthy_exit_rolls_back_at_once_with_the_reason(rig: Rig) -> None:
    pending = rig.swap()
    plan = rig.launcher.decide()
    rig.confirm(pending, verdict="rollback", reason="self-test: injected")
    assert rig.launcher.after_exit(plan, Outcome(code=EXIT_ROLLBACK, runtime=1.0))
    assert rig.state.read_pending() is None
    [entry] = rig.state.read_rollbacks()
    assert entry.reason == "self-test: injected"
    assert rig.state.read_denied()[0].artifact == rig.v2.sha
    assert rig.launcher.decide() == Plan(slot=rig.v1.sha)


def test_probation_timeout_rolls_back(rig: Rig) -> None:
    rig.swap()
    plan = rig.launcher.decide()
    rig.launcher.after_exit(plan, Outcome(code=-15, runtime=10.0, timed_out=True))
    [entry] = rig.state.read_rollbacks()
    assert entry.reason.startswith("no confirm within the probation window")


def test_rollback_interrupted_is_finished_once(rig: Rig) -> None:
    pending = rig.swap()
    rig.launcher.decide()
    decided = pending.with_(outcome="rollback", reason="unhealthy", attempts=1)
    rig.state.write_pending(decided)  # the "rollback" crash point: decided, nothing done
    rig.state.add_deny(Deny(artifact=rig.v2.sha, counter=2, reason="unhealthy", time=1.0))
    plan = rig.launcher.decide()
    assert plan == Plan(slot=rig.v1.sha)
    assert len(rig.state.read_denied()) == 1
    assert len(rig.state.read_rollbacks()) == 1
    # and a second pass (a kill before pending was removed) adds nothing
    rig.state.write_pending(decided)
    rig.launcher.decide()
    assert len(rig.state.read_rollbacks()) == 1


def test_a_denied_artifact_is_never_started(rig: Rig) -> None:
    rig.state.add_deny(Deny(artifact=rig.v2.sha, counter=2, reason="earlier", time=1.0))
    rig.swap()
    assert rig.launcher.decide() == Plan(slot=rig.v1.sha)
    [entry] = rig.state.read_rollbacks()
    assert entry.reason == "sticky-denied on this node"


def test_a_missing_slot_rolls_back_without_deny(rig: Rig) -> None:
    rig.swap()
    rig.state.remove_slot(rig.v2.sha)
    assert rig.launcher.decide() == Plan(slot=rig.v1.sha)
    assert rig.state.read_denied() == []
    assert rig.state.read_rollbacks()[0].reason == "slot missing, incomplete or damaged"


def test_corrupt_records_are_moved_aside(rig: Rig) -> None:
    rig.swap()
    rig.state.pending_path.write_text("{not json")
    rig.state.denied_path.write_text(json.dumps({"format": 1, "denied": [{"x": 1}]}))
    assert rig.launcher.decide() == Plan(slot=rig.v1.sha)
    names = [p.name for p in rig.state.root.iterdir()]
    assert any(n.startswith("pending.bad-") for n in names)
    assert "pending" not in names
    rig.swap()
    rig.launcher.decide()
    assert any(n.startswith("denied.bad-") for n in (p.name for p in rig.state.root.iterdir()))


def test_broken_current_link_falls_back_to_previous(rig: Rig) -> None:
    pending = rig.swap()
    rig.launcher.decide()
    rig.confirm(pending)
    rig.launcher.decide()  # v2 current, v1 previous
    rig.state.remove_slot(rig.v2.sha)
    assert rig.launcher.decide() == Plan(slot=rig.v1.sha)
    assert rig.state.read_link("current") == rig.v1.sha


def test_exit_codes_of_a_confirmed_slot(rig: Rig) -> None:
    plan = Plan(slot=rig.v1.sha)
    assert rig.launcher.after_exit(plan, Outcome(code=EXIT_STOP, runtime=1.0)) is False
    assert rig.launcher.after_exit(plan, Outcome(code=EXIT_SWAP, runtime=1.0)) is True
    assert "without a pending record" in rig.log()
    assert rig.launcher.after_exit(plan, Outcome(code=1, runtime=1.0)) is True
    assert "restarting in" in rig.log()
    assert rig.launcher.after_exit(plan, Outcome(code=0, runtime=1.0, stopped=True)) is False


def test_leftovers_are_cleaned(rig: Rig) -> None:
    st = rig.state
    (st.root / ".pending.abc.tmp").write_text("half")
    (st.slots / ".tmp-0123-abcd").mkdir()
    (st.slots / ".tmp-0123-abcd" / "p2pupdate").mkdir()
    st.trust.mkdir()
    (st.trust / ".store.msgpack.abc.tmp").write_text("half")
    removed = st.clean_temp()
    assert sorted(removed) == [
        ".pending.abc.tmp",
        "slots/.tmp-0123-abcd",
        "trust/.store.msgpack.abc.tmp",
    ]
    assert st.list_slots() == [rig.v1.sha]


def test_records_reject_bad_shapes(tmp_path: Path) -> None:
    st = StateDir(tmp_path)
    st.ensure()
    good = Pending(
        id=new_id(), artifact="a" * 64, previous="b" * 64, counter=1, token=b"t", created=1.0
    )
    st.write_pending(good)
    assert st.read_pending() == good
    raw = json.loads(st.pending_path.read_text())
    for change in (
        {"counter": 0},
        {"counter": True},
        {"attempts": 1.5},
        {"artifact": "A" * 64},
        {"outcome": "maybe"},
        {"extra": 1},
        {"format": 2},
        {"token": "zz"},
    ):
        st.pending_path.write_text(json.dumps({**raw, **change}))
        with pytest.raises(StateError):
            st.read_pending()
    st.pending_path.write_text("x" * (300 * 1024))
    with pytest.raises(StateError):
        st.read_pending()
    (tmp_path / "current").symlink_to("/etc")
    with pytest.raises(StateError):
        st.read_link("current")


def test_one_launcher_per_state_dir(tmp_path: Path) -> None:
    st = StateDir(tmp_path)
    with (
        st.locked(),
        pytest.raises(StateError, match="another launcher"),
        StateDir(tmp_path).locked(),
    ):
        pass
    with st.locked():  # released
        pass
