"""Stage-0's decision on its records (P12 item 2), without processes: ``stage0.decide`` on
every case, the pick from the state dir, and the records' limits and damage."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from p2pupdate.launcher import stage0
from p2pupdate.launcher.codes import LAUNCHER_RELAUNCH

A, B, C = "a" * 64, "b" * 64, "c" * 64


def boot(**fields: Any) -> dict[str, Any]:
    return {**stage0.EMPTY, **fields}


def test_the_installed_copy_runs_when_no_slot_has_a_launcher() -> None:
    assert stage0.decide(boot(), None, None) == (None, False, boot())
    assert stage0.decide(boot(good=A), None, None) == (None, False, boot(good=A))


def test_a_proven_launcher_runs_without_trial() -> None:
    assert stage0.decide(boot(good=A), None, A) == (A, False, boot(good=A))


def test_a_new_launcher_goes_on_trial_and_counts_its_starts() -> None:
    slot, trial, new = stage0.decide(boot(good=A), None, B)
    assert (slot, trial, new) == (B, True, boot(good=A, trial=B, tries=1))
    # stage-0 died with it before it came up (a power cut): tried again, counted
    assert stage0.decide(new, None, B) == (B, True, boot(good=A, trial=B, tries=2))
    # another slot replaces an unfinished trial: its count starts at 1
    assert stage0.decide(new, None, C) == (C, True, boot(good=A, trial=C, tries=1))


def test_a_trial_interrupted_too_often_fails_and_falls_back() -> None:
    slot, trial, new = stage0.decide(boot(good=A, trial=B, tries=stage0.MAX_TRIES), None, B)
    assert (slot, trial) == (A, False)
    assert new["failed"] == B and new["trial"] is None and new["tries"] == 0
    assert new["reason"] == f"launcher of {B} did not come up in {stage0.MAX_TRIES} starts"


def test_an_up_record_left_by_a_trial_proves_it() -> None:
    # the launcher wrote boot-up, then stage-0 was killed before it recorded "good"
    assert stage0.decide(boot(good=A, trial=B, tries=1), B, B) == (B, False, boot(good=B))
    # an up record of another slot proves nothing
    assert stage0.decide(boot(good=A, trial=B, tries=1), C, B)[:2] == (B, True)


def test_a_failed_launcher_is_never_tried_again_its_fallback_runs() -> None:
    failed = boot(good=A, failed=B, reason="launcher of b... failed to come up: exit 1")
    assert stage0.decide(failed, None, B) == (A, False, failed)
    # no proven launcher to fall back to: the installed copy
    assert stage0.decide(boot(failed=B, reason="x"), None, B) == (
        None,
        False,
        boot(failed=B, reason="x"),
    )


def test_the_relaunch_code_is_stage0s() -> None:
    assert LAUNCHER_RELAUNCH == stage0.RELAUNCH == 77


# -- the pick, from a state dir ----------------------------------------------------------------


def _slot(state: Path, sha: str, *, launcher: bool = True) -> None:
    d = state / "slots" / sha
    (d / "p2pupdate" / "launcher").mkdir(parents=True)
    (d / "SLOT.json").write_text("{}")
    if launcher:
        (d / stage0.MARK).write_text("")


def _link(state: Path, name: str, sha: str) -> None:
    os.symlink(f"slots/{sha}", state / name)


def _pending(state: Path, sha: str, outcome: str | None = None) -> None:
    (state / "pending").write_text(json.dumps({"format": 1, "artifact": sha, "outcome": outcome}))


def test_pick_prefers_an_undecided_swap_then_current(tmp_path: Path) -> None:
    assert stage0.pick(str(tmp_path)) is None  # nothing yet: the installed copy
    _slot(tmp_path, A)
    _link(tmp_path, "current", A)
    assert stage0.pick(str(tmp_path)) == A
    _slot(tmp_path, B)
    _pending(tmp_path, B)
    assert stage0.pick(str(tmp_path)) == B
    _pending(tmp_path, B, outcome="rollback")  # decided: the launcher of current finishes it
    assert stage0.pick(str(tmp_path)) == A


def test_a_slot_without_this_protocol_runs_the_installed_copy(tmp_path: Path) -> None:
    _slot(tmp_path, A, launcher=False)  # a build from before P12
    _link(tmp_path, "current", A)
    assert stage0.pick(str(tmp_path)) is None
    _slot(tmp_path, B)
    _pending(tmp_path, B)
    assert stage0.pick(str(tmp_path)) == B


@pytest.mark.parametrize(
    "target", ["elsewhere/" + A, "slots/" + A.upper(), "slots/../x", "slots/" + A[:-1]]
)
def test_pick_refuses_a_link_that_is_not_a_slot(tmp_path: Path, target: str) -> None:
    _slot(tmp_path, A)
    os.symlink(target, tmp_path / "current")
    assert stage0.pick(str(tmp_path)) is None


# -- records -------------------------------------------------------------------------------------


def test_boot_round_trip_and_atomic_write(tmp_path: Path) -> None:
    record = boot(good=A, trial=B, tries=2, failed=C, reason="why")
    stage0.write_json(str(tmp_path / stage0.BOOT), record)
    assert stage0.read_boot(str(tmp_path)) == record
    assert sorted(p.name for p in tmp_path.iterdir()) == [stage0.BOOT]  # no temp file left


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        b'{"format": 2}',
        b"\xff\xfe",
        b'{"format": 1, "x": "' + b"y" * stage0.CAP + b'"}',
    ],
)
def test_an_unusable_record_is_moved_aside_and_read_as_empty(tmp_path: Path, data: bytes) -> None:
    (tmp_path / stage0.BOOT).write_bytes(data)
    (tmp_path / "boot.bad-1").write_bytes(b"an earlier one")
    assert stage0.read_boot(str(tmp_path)) == stage0.EMPTY
    assert (tmp_path / "boot.bad-1").read_bytes() == b"an earlier one"
    assert (tmp_path / "boot.bad-2").read_bytes() == data
    assert not (tmp_path / stage0.BOOT).exists()


def test_wrong_fields_are_read_as_absent(tmp_path: Path) -> None:
    raw = {"format": 1, "good": "nothex", "trial": 5, "tries": True, "failed": A, "reason": 3}
    (tmp_path / stage0.BOOT).write_text(json.dumps(raw))
    assert stage0.read_boot(str(tmp_path)) == boot(failed=A)
    raw = {"format": 1, "reason": "r" * 2000}
    (tmp_path / stage0.BOOT).write_text(json.dumps(raw))
    assert stage0.read_boot(str(tmp_path))["reason"] == "r" * 500


def test_stage0_imports_only_the_standard_library() -> None:
    import ast
    import sys

    tree = ast.parse(Path(stage0.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert all(n.split(".")[0] in sys.stdlib_module_names or n == "__future__" for n in names)
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
