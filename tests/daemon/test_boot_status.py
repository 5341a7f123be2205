"""The daemon's rooms beside the effect executor: boot, the status file, the node's hooks.

``boot.build_updater`` reads the launcher's records (the same three cases ``Node.run`` starts
from), ``status`` builds ``D/status`` and the coordinator's report fields, and ``NodeHooks``
turns what gossip delivers into updater events.  Each is driven here without a ``Node``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from p2pupdate.clock import Clock
from p2pupdate.core import updater as up
from p2pupdate.core.gates import GateResult
from p2pupdate.daemon.boot import PROBATION_MARGIN, Boot, NodeError, build_updater, read_denied
from p2pupdate.daemon.hooks import NodeHooks
from p2pupdate.daemon.nullwork import NullWorkload
from p2pupdate.daemon.options import DaemonOptions
from p2pupdate.daemon.status import daemon_status, newest_allowlist, report_fields
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.daemon.workhost import WorkHost
from p2pupdate.launcher.state import Deny, Pending, RollbackEntry, SlotManifest, StateDir, new_id
from tests.core.harness import NOW, Network

SLOT = "a1" * 32
OTHER = "b2" * 32
BAD = "c3" * 32
OPTS = DaemonOptions(work="none", check_interval=30.0, gossip_notice_spread=7.0)
MANIFEST = SlotManifest(artifact=SLOT, version="v9", counter=9, unpacked=0.0)


def _boot(state: StateDir, mode: str, now_wall: float = 1000.0) -> Boot:
    return build_updater(
        state=state,
        slot=SLOT,
        mode=mode,
        opts=OPTS,
        rng=random.Random(1),
        now_wall=now_wall,
        log=lambda _m: None,
    )


def test_a_fresh_node_sleeps_on_its_slot_with_the_options_config(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    boot = _boot(state, "normal")
    assert boot.pending is None and boot.reporting == frozenset()
    u = boot.updater
    assert u.installed == SLOT and u.denied == ()
    assert (u.config.check_interval, u.config.notice_spread) == (30.0, 7.0)


def test_probation_ends_a_margin_before_the_launchers_deadline(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    pending = Pending(
        id=new_id(),
        artifact=SLOT,
        previous=OTHER,
        counter=2,
        token=b"lease",
        created=990.0,
        attempts=1,
        max_attempts=3,
        window=20.0,
        deadline=1020.0,
    )
    state.write_pending(pending)
    boot = _boot(state, "probation", now_wall=1000.0)
    assert boot.pending == pending
    u = boot.updater
    assert u.state is up.State.PROBATION
    assert u.config.probation_timeout == pytest.approx(20.0 - PROBATION_MARGIN)


def test_probation_without_a_pending_record_for_this_slot_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="no pending record names this slot"):
        _boot(StateDir(tmp_path), "probation")


def test_unreported_rollbacks_are_reported_first(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    entries = [
        RollbackEntry(
            id=new_id(),
            artifact=BAD,
            counter=2,
            previous=SLOT,
            reason=f"self-test: broken {i}",
            token=None,
            time=900.0 + i,
        )
        for i in range(2)
    ]
    state.write_rollbacks(entries)
    state.write_denied([Deny(artifact=BAD, counter=2, reason="broken", time=900.0)])
    boot = _boot(state, "normal")
    assert boot.reporting == {e.id for e in entries}
    u = boot.updater
    assert u.state is up.State.ROLLED_BACK
    assert [d.artifact for d in u.denied] == [BAD]


def test_an_unreadable_deny_list_is_empty_and_said_so(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.denied_path.write_text("{not json")
    lines: list[str] = []
    assert read_denied(state, lines.append) == []
    assert "sticky-deny list unreadable" in lines[0]


def test_status_fields_and_the_newest_allowlist(tmp_path: Path) -> None:
    held = Network().allowlist_doc(4)
    assert newest_allowlist(None, None) is None
    assert newest_allowlist(3, None) == 3
    assert newest_allowlist(5, held) == 5
    assert newest_allowlist(3, held) == 4
    assert newest_allowlist(None, held) == 4
    state = StateDir(tmp_path)
    work = WorkHost(NullWorkload, state=state, log=lambda _m: None)
    doc = daemon_status(
        slot=SLOT,
        manifest=MANIFEST,
        mode="normal",
        state=up.State.SLEEPING,
        exit_code=None,
        work=work,
        wall=1234.5,
    )
    assert (doc["state"], doc["time"], doc["slot_version"]) == ("sleeping", 1234.5, "v9")
    assert doc["work"] == {
        "name": "none",
        "serving": False,
        "healthy": False,
        "restored": False,
        "port": None,
        "handoffs": 0,
    }
    refusal = GateResult(ok=False, gate="scope", reason="not-in-scope", detail="x" * 300)
    assert report_fields(manifest=MANIFEST, slot=SLOT, state=None, held=refusal) == {
        "version": "v9",
        "artifact": SLOT,
        "state": "serving",
        "held": {"gate": "scope", "reason": "not-in-scope"},
    }


def test_gossip_delivers_a_newer_allowlist_to_the_updater_once(tmp_path: Path) -> None:
    net = Network()
    trust = TrustFile.open(tmp_path / "trust", initial_root=net.roots[1], now=NOW)
    fed: list[up.Event] = []
    writes: list[int] = []
    hooks = NodeHooks(
        slot=SLOT,
        manifest=MANIFEST,
        opts=OPTS,
        work=WorkHost(NullWorkload, state=StateDir(tmp_path / "s"), log=lambda _m: None),
        updater_state=lambda: up.State.SLEEPING,
        feed=lambda e: fed.append(e) is None,
        write_status=lambda: writes.append(1),
        clock=Clock(wall=lambda: float(NOW), monotonic=lambda: 0.0),
        log=lambda _m: None,
        coordinator=None,
        gossip=None,
        trust=trust,
    )
    doc = net.allowlist(3, [OTHER])
    hooks.gossip_delivered(doc, "allowlist")
    assert fed == [up.AllowlistLearned(version=3, artifacts=(OTHER,))]
    assert hooks.allowlist_seen == 3 and hooks.newest_allowlist() == 3 and writes == [1]
    hooks.gossip_delivered(doc, "allowlist")  # not news any more: nothing fed
    assert len(fed) == 1
