"""``p2pupdate status``: the node's report for a support person, read without changing a file.

In process (fast): a state dir built with the launcher's own record writers and a status
file as the daemon writes it (``daemon.status``) renders every section; every bad input --
no dir, a file for a dir, an unreadable dir, a dir that is no node's, an oversized,
truncated, empty, binary or foreign status file, a FIFO in its place -- is one line on
stderr naming the path, exit 2, and never a traceback; and nothing in the state dir
changes (names, bytes, mtimes).  One real test runs two ``p2pupdate node`` processes linked
by gossip and the command as a subprocess against one of them, running and stopped.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pupdate.cli import commands
from p2pupdate.cli import nodestatus as ns
from p2pupdate.core import updater as up
from p2pupdate.core.gates import GateResult
from p2pupdate.daemon import status
from p2pupdate.daemon.coordinator import HEARD_GRAIN
from p2pupdate.errors import LocalStateFault, UsageFault
from p2pupdate.launcher.state import (
    Deny,
    Pending,
    RollbackEntry,
    SlotManifest,
    StateDir,
)
from tests.coordinator.service_helpers import Network, in_process
from tests.launcher.harness import REPO, Nodes, free_port, nodes

__all__ = ["nodes"]

A, B, C = "a" * 64, "b" * 64, "c" * 64
PEER1, PEER2 = "1" * 64, "2" * 64
NOW = 1_800_000_000.0


def _slot(state: StateDir, sha: str, version: str, counter: int) -> None:
    d = state.slot_dir(sha)
    (d / "p2pupdate").mkdir(parents=True)
    (d / "p2pupdate" / "__init__.py").write_text("")
    m = SlotManifest(artifact=sha, version=version, counter=counter, unpacked=NOW - 9000)
    (d / "SLOT.json").write_bytes(m.to_bytes())


def daemon_doc(**over: Any) -> dict[str, Any]:
    """A status file as a refused, gossiping node with one replica writes it."""
    doc: dict[str, Any] = {
        "pid": os.getpid(),
        "version": "1.4.0",
        "package_dir": "/var/lib/p2pupdate/slots/a/p2pupdate",
        "slot": A,
        "slot_version": "1.4.0",
        "counter": 3,
        "mode": "normal",
        "state": "refused",
        "exit_code": None,
        "waiting_on": {
            "gate": "capacity",
            "reason": "budget-exhausted",
            "queue_position": 4,
            "allowlist_version": 7,
            "scope_serial": 12,
        },
        "work": {
            "name": "kv",
            "serving": True,
            "healthy": True,
            "restored": False,
            "port": 8080,
            "handoffs": 0,
        },
        "time": NOW - 3,
        "gate_checks": 5,
        "started": NOW - 3720,
        "updater": {
            "candidate": {"artifact": C, "counter": 4, "force": False},
            "held": None,
            "next_check": NOW + 90,
            "coordinator_errors": 0,
            "last_error": None,
            "lease": None,
        },
        "gossip": {
            "node": "f" * 64,
            "address": "10.0.0.5:7946",
            "links": 2,
            "active": 2,
            "passive": 3,
            "paths": {PEER1: "relay", PEER2: "tcp"},
            "links_detail": [
                {"peer": PEER1, "path": "relay", "direction": "out", "since": NOW - 600},
                {"peer": PEER2, "path": "tcp", "direction": "in", "since": NOW - 60},
            ],
            "relayed_bytes": 4096,
            "allowlist": 7,
        },
        "coordinator": {
            "sessions": "on-demand",
            "replicas": [
                {
                    "url": "http://10.0.0.2:8470",
                    "connected": True,
                    "heard": NOW - 12,
                    "admission_refused": None,
                },
                {
                    "url": "http://10.0.0.3:8470",
                    "connected": False,
                    "heard": None,
                    "admission_refused": {"reason": "admission/pow", "detail": "weak id"},
                },
            ],
        },
        "swarm": {
            "artifacts": {
                C: {
                    "chunks": 512,
                    "held": 120,
                    "sessions": 3,
                    "origin_chunks": 10,
                    "completed_at": None,
                },
                A: {
                    "chunks": 100,
                    "held": 100,
                    "sessions": 0,
                    "origin_chunks": 0,
                    "completed_at": NOW - 8000,
                },
            },
        },
    }
    doc.update(over)
    return doc


def make_state(root: Path, **over: Any) -> StateDir:
    """A node's state dir: current A, previous B, C pending on probation, B denied once."""
    state = StateDir(root)
    state.ensure()
    _slot(state, A, "1.4.0", 3)
    _slot(state, B, "1.3.2", 2)
    state.set_link("current", A)
    state.set_link("previous", B)
    state.write_pending(
        Pending(id="0" * 32, artifact=C, previous=A, counter=4, token=b"t", created=NOW - 30,
                attempts=1, max_attempts=3, deadline=NOW + 90)
    )  # fmt: skip
    state.write_denied([Deny(artifact=B, counter=2, reason="crashed", time=NOW - 5000)])
    state.write_rollbacks(
        [RollbackEntry(id="1" * 32, artifact=B, counter=2, previous=A,
                       reason="probation: unhealthy", token=None, time=NOW - 5000)]
    )  # fmt: skip
    state.write_status(daemon_doc(**over))
    return state


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under ``root``: (mtime ns, mode, bytes or link target)."""
    top = root.stat()
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d) / name
            st = p.lstat()
            data = os.readlink(p).encode() if p.is_symlink() else (
                p.read_bytes() if p.is_file() else b""
            )  # fmt: skip
            out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_mode, data)
    return {".": (top.st_mtime_ns, top.st_mode, b""), **out}


def run_status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = commands.main(["status", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- the report ---------------------------------------------------------------------------


def test_the_report_says_what_runs_the_slots_the_wait_links_replicas_and_downloads(
    tmp_path: Path,
) -> None:
    root = tmp_path / "state"
    make_state(root)
    report = ns.collect(root, now=NOW, alive=lambda pid: pid == os.getpid())
    assert report["running"] is True
    d = report["daemon"]
    assert (d["version"], d["artifact"], d["counter"], d["started"]) == ("1.4.0", A, 3, NOW - 3720)
    assert report["status_file"]["age_s"] == 3
    s = report["slots"]
    assert s["current"] == {"artifact": A, "version": "1.4.0", "counter": 3}
    assert s["previous"] == {"artifact": B, "version": "1.3.2", "counter": 2}
    assert s["pending"]["artifact"] == C and s["pending"]["attempts"] == 1
    assert s["denied"][0]["artifact"] == B and s["rollbacks"] == 1
    u = report["updater"]
    assert u["state"] == "refused" and u["waiting_on"]["gate"] == "capacity"
    assert u["next_check"] == NOW + 90 and u["candidate"]["artifact"] == C
    assert [(x["peer"], x["path"], x["direction"]) for x in report["links"]] == [
        (PEER1, "relay", "out"),
        (PEER2, "tcp", "in"),
    ]
    assert [r["heard"] for r in report["replicas"]] == [NOW - 12, None]
    assert {(x["artifact"], x["complete"]) for x in report["swarm"]} == {(C, False), (A, True)}
    assert report["problems"] == []

    text = ns.render(report)
    for expected in (
        "running, pid",
        "written 2027-01-15 07:59:57 UTC (3s ago)",
        "1h 02m ago",  # started
        "current      aaaaaaaaaaaa  1.4.0 (counter 3)",
        "previous     bbbbbbbbbbbb  1.3.2 (counter 2)",
        "pending      cccccccccccc on probation, attempt 1 of 3",
        "denied       bbbbbbbbbbbb",
        "rollbacks    1, last bbbbbbbbbbbb",
        "state        refused",
        "waiting on   gate capacity: budget-exhausted (queue position 4)",
        "target       cccccccccccc release counter 4",
        "next         retry 2027-01-15 08:01:30 UTC (in 1m 30s)",
        "lease        none",
        "links (2) as ffffffffffff at 10.0.0.5:7946",
        "111111111111 relay  out since",
        "222222222222 tcp    in  since",
        "http://10.0.0.2:8470  connected, last heard",
        "http://10.0.0.3:8470  not connected; refused: admission/pow",
        "swarm (1 download(s) in progress)",
        "120/512 chunks, 3 peer session(s), 10 from the origin",
        "kv           serving, healthy, port 8080",
    ):
        assert expected in text, f"{expected!r} not in\n{text}"
    assert "aaaaaaaaaaaa  100/100" not in text  # a complete artifact is no download


def test_a_stopped_node_says_not_running_and_the_age_of_its_last_status(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_state(root, exit_code=0, time=NOW - 7200)
    report = ns.collect(root, now=NOW, alive=lambda pid: True)
    assert report["running"] is False
    text = ns.render(report)
    assert "not running (exited with 0" in text and "(2h 00m ago)" in text
    # a daemon killed (no last write) is not running either: its pid is gone
    make_state(tmp_path / "killed", pid=2**22 + 17)
    text = ns.render(ns.collect(tmp_path / "killed", now=NOW))
    assert f"not running (pid {2**22 + 17} is gone)" in text


def test_held_by_a_gate_backing_off_a_lease_and_an_older_daemons_status(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_state(root, state="draining", waiting_on=None, updater={
        "candidate": None, "next_check": None, "coordinator_errors": 2,
        "last_error": "replica unreachable", "lease": {"artifact": C, "granted": NOW - 5,
        "lapses": NOW + 55}, "held": {"gate": "scope", "reason": "not-in-scope", "detail": ""},
    })  # fmt: skip
    text = ns.render(ns.collect(root, now=NOW))
    assert "held by      gate scope: not-in-scope" in text
    assert "2 coordinator error(s) in a row: replica unreachable" in text
    assert "lease        granted 2027-01-15 07:59:55 UTC (5s ago), lapses" in text
    # a status file of a daemon before links_detail / updater / started: what it has
    old = daemon_doc()
    for key in ("updater", "started"):
        del old[key]
    del old["gossip"]["links_detail"]
    StateDir(root).write_status(old)
    report = ns.collect(root, now=NOW)
    assert [(x["peer"], x["path"], x["direction"]) for x in report["links"]] == [
        (PEER1, "relay", None),
        (PEER2, "tcp", None),
    ]
    text = ns.render(report)
    assert "started      unknown" in text and "111111111111 relay" in text


def test_control_characters_from_the_file_do_not_reach_the_terminal(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_state(root, version="1.4\x1b[2J\x07", work={"name": "k\x1bv"})
    text = ns.render(ns.collect(root, now=NOW))
    assert "\x1b" not in text and "\x07" not in text and "1.4?[2J?" in text


def test_a_damaged_pending_is_a_problem_shown_not_an_exit(tmp_path: Path) -> None:
    root = tmp_path / "state"
    state = make_state(root)
    state.pending_path.write_text("{garbage")
    report = ns.collect(root, now=NOW)
    assert report["slots"]["pending"] is None
    assert len(report["problems"]) == 1 and "pending" in report["problems"][0]
    assert "problem: pending:" in ns.render(report)


def test_json_is_one_object_and_nothing_in_the_state_dir_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "state"
    make_state(root)
    before = snapshot(root)
    code, out, err = run_status(capsys, "--state-dir", str(root), "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert set(report) == {
        "state_dir", "now", "running", "status_file", "daemon", "slots", "updater",
        "gossip", "links", "replicas", "swarm", "work", "problems",
    }  # fmt: skip
    code, out, err = run_status(capsys, "--state-dir", str(root))
    assert code == 0 and "updater" in out
    assert snapshot(root) == before


def test_the_default_state_dir_is_the_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(commands, "default_state_dir", lambda: tmp_path / "default")
    make_state(tmp_path / "default")
    code, out, _ = run_status(capsys, "--json")
    assert code == 0 and json.loads(out)["state_dir"] == str(tmp_path / "default")


# -- bad input: one line, exit 2 ------------------------------------------------------------


def _bad_status(root: Path, case: str) -> None:
    make_state(root)
    path = root / "status"
    if case == "oversized":
        path.write_bytes(b" " * (ns.MAX_STATUS_BYTES + 1))
    elif case == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    elif case == "foreign-json":
        path.write_text('{"hello": "world"}')
    elif case == "no-pid":
        doc = daemon_doc()
        del doc["pid"]
        StateDir(root).write_status(doc)
    elif case == "nan":
        path.write_text(path.read_text().replace('"time": ', '"time": NaN, "x": '))
    elif case == "deep":
        path.write_bytes(b"[" * 100_000)
    elif case == "fifo":
        path.unlink()
        os.mkfifo(path)
    elif case == "directory":
        path.unlink()
        path.mkdir()


STATUS_CASES = {
    "oversized": "over the limit",
    "truncated": "truncated or corrupt JSON",
    "empty": "empty",
    "binary": "not text",
    "foreign-json": "not a p2pupdate status record",
    "no-pid": "not a p2pupdate status record ('pid' missing)",
    "nan": "NaN is not a number JSON allows",
    "deep": "nested too deep",
    "fifo": "not a regular file",
    "directory": "",
}


@pytest.mark.parametrize("case", sorted(STATUS_CASES))
def test_a_bad_status_file_is_one_line_naming_it_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    root = tmp_path / "state"
    _bad_status(root, case)
    before = snapshot(root)
    code, out, err = run_status(capsys, "--state-dir", str(root))
    assert code == 2, err
    assert out == "" and len(err.splitlines()) == 1, err
    assert str(root / "status") in err and STATUS_CASES[case] in err, err
    assert "Traceback" not in err
    assert snapshot(root) == before
    with pytest.raises(ns.StatusFileError) as info:
        ns.collect(root, now=NOW)
    assert isinstance(info.value, LocalStateFault) and not isinstance(info.value, UsageFault)


def _bad_dir(tmp_path: Path, case: str) -> Path:
    root = tmp_path / "state"
    if case == "missing":
        pass
    elif case == "a-file":
        root.write_text("x")
    elif case == "not-a-node":
        root.mkdir()
        (root / "something").write_text("else")
    elif case == "unreadable":
        make_state(root)
        root.chmod(0)
    return root


DIR_CASES = {
    "missing": "no such directory",
    "a-file": "not a directory",
    "not-a-node": "not a p2pupdate state dir",
    "unreadable": "permission denied",
}


@pytest.mark.parametrize("case", sorted(DIR_CASES))
def test_a_bad_state_dir_is_one_line_naming_it_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    root = _bad_dir(tmp_path, case)
    if case == "unreadable" and os.access(root, os.R_OK):  # root reads any directory:
        real = os.access  # the fault is injected (what a user other than the node's sees)
        monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == root else real(p, m))
    try:
        code, out, err = run_status(capsys, "--state-dir", str(root))
    finally:
        if root.is_dir():
            root.chmod(0o755)
    assert code == 2, err
    assert out == "" and len(err.splitlines()) == 1, err
    assert str(root) in err and DIR_CASES[case] in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "state" / "launcher.lock").exists()
    with pytest.raises(ns.StateDirError):
        ns.collect(root, now=NOW)


# -- what the daemon adds to its status file ---------------------------------------------


async def test_the_coordinator_entry_says_when_each_replica_was_last_heard(tmp_path: Path) -> None:
    """A real replica served in this trio run and a real ``CoordinatorLink``: ``heard`` is
    None before the first answer, then the wall second of the last message, rounded down to
    ``HEARD_GRAIN`` (so a busy session does not rewrite the status file per message)."""
    from tests.daemon.test_on_demand import RUNNING, _link, _until

    net = Network(tmp_path / "net")
    fields: dict[str, Any] = {"version": "v1", "artifact": RUNNING, "state": "serving"}
    async with in_process(net) as (_replica, url), trio.open_nursery() as nursery:
        coord = _link(tmp_path, net, url, {**fields, "held": None})
        assert coord.summary()["replicas"][0]["heard"] is None
        await nursery.start(coord.run)
        await _until(lambda: coord.heartbeat_s is not None)
        heard = coord.summary()["replicas"][0]["heard"]
        assert isinstance(heard, int) and heard % HEARD_GRAIN == 0
        assert 0 <= time.time() - heard < HEARD_GRAIN + 5
        nursery.cancel_scope.cancel()


def test_the_updater_entry_keeps_a_lease_and_an_error_to_the_states_they_belong_to() -> None:
    updater = up.Updater(installed=A, rng=random.Random(1))
    updater.handle(up.Started(), 0.0)
    assert updater.state is up.State.SLEEPING
    no = GateResult(ok=False, gate="scope", reason="not-in-scope", detail="a fraction")
    view = status.updater_view(
        updater, held=no, next_check=NOW, lease={"artifact": C}, last_error="unreachable"
    )
    assert view == {
        "candidate": None,
        "held": {"gate": "scope", "reason": "not-in-scope", "detail": "a fraction"},
        "next_check": NOW,
        "coordinator_errors": 0,
        "last_error": None,  # not backing off: an old error is no reason now
        "lease": None,  # not draining or swapping: no lease in hand
    }
    yes = GateResult(ok=True, gate="scope", reason="in-scope")
    assert (
        status.updater_view(None, held=yes, next_check=None, lease=None, last_error=None)["held"]
        is None
    )


# -- a real node --------------------------------------------------------------------------


def _cli(state: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "p2pupdate", "status", "--state-dir", str(state), "--json"],
        capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


@pytest.mark.slow
def test_a_real_node_running_then_stopped(tmp_path: Path, nodes: Nodes) -> None:
    """Two real ``p2pupdate node`` processes, each given the other as ``--peer`` (the one
    up second dials at once); ``p2pupdate status --json`` on the first says its version,
    its updater's state and its link (the second, over tcp, in the direction opposite to
    the second's own view of it), changes nothing in its state dir, and once the node is
    stopped says it is not running."""
    net = Network(tmp_path / "net")
    root = str(net.dir / "root.msgpack")
    pa, pb = free_port(), free_port()
    common = ["--work", "none", "--check-interval", "1h", "--trust-root", root]
    a = nodes.start(
        tmp_path / "a", [*common, "--gossip-listen", f"127.0.0.1:{pa}", "--peer", f"127.0.0.1:{pb}"]
    )
    b = nodes.start(
        tmp_path / "b", [*common, "--gossip-listen", f"127.0.0.1:{pb}", "--peer", f"127.0.0.1:{pa}"]
    )

    def linked(node: Any) -> dict[str, Any] | None:
        st = node.status()
        detail = (st or {}).get("gossip", {}).get("links_detail") or []
        return st if st and st["state"] == "sleeping" and detail else None

    st = a.wait_for("a linked to b", lambda: linked(a))
    b_view = b.wait_for("b linked to a", lambda: linked(b))["gossip"]
    for _ in range(5):  # the daemon itself may rewrite its status meanwhile: then again
        before = snapshot(a.state_dir)
        report = _cli(a.state_dir)
        if snapshot(a.state_dir) == before and len(report["links"]) == 1:
            break  # nothing written, no lock, no new file; and the link still up
    else:
        raise AssertionError(f"the state dir changed around every run, or no link: {report}")
    assert report["running"] is True
    d = report["daemon"]
    assert (d["version"], d["artifact"], d["pid"]) == (st["version"], st["slot"], st["pid"])
    assert d["started"] is not None and d["started"] <= report["status_file"]["written"]
    assert report["slots"]["current"]["artifact"] == st["slot"]
    assert report["updater"]["state"] == "sleeping"
    assert report["updater"]["next_check"] > report["now"]  # an hour's check interval
    [link] = report["links"]
    [back] = b_view["links_detail"]
    assert (link["peer"], link["path"]) == (b_view["node"], "tcp")
    assert {link["direction"], back["direction"]} == {"in", "out"}
    assert report["gossip"]["node"] == back["peer"]
    assert a.terminate() == 0
    stopped = ns.collect(a.state_dir, now=time.time())
    assert stopped["running"] is False and stopped["daemon"]["exit_code"] == 0
    assert "not running (exited with 0" in ns.render(stopped)
