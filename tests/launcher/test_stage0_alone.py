"""Stage-0 as a real process, with stand-in launchers (a few lines of Python each): the
paths a real launcher rarely takes -- one that hangs, one that asks to be run again, a stop
signal during a trial -- in about a second each.  The real launcher's side is
``test_stage0_process.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from p2pupdate.launcher import stage0

A = "a" * 64
#: A stand-in launcher that comes up as the real one does (``boot-up`` naming its slot).
COMES_UP = """
import json, os, sys, time
state = sys.argv[sys.argv.index("--state-dir") + 1]
slot = os.environ["P2PUPDATE_BOOT_SLOT"]
print("stand-in launcher of", slot or "installed", "trial", os.environ.get("P2PUPDATE_BOOT_TRIAL"))
with open(os.path.join(state, ".up.tmp"), "w") as f:
    json.dump({"format": 1, "launcher": slot}, f)
os.replace(os.path.join(state, ".up.tmp"), os.path.join(state, "boot-up"))
sys.exit(int(os.environ.get("STAND_IN_EXIT", "0")))
"""
HANGS = "import time\ntime.sleep(60)\n"
#: ...and then waits for SIGTERM, and exits 3.
WAITS_FOR_TERM = COMES_UP.replace(
    "sys.exit(",
    "import signal\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
    "signal.sigwait({signal.SIGTERM})\n"
    "sys.exit(3 + 0 * ",
)


def _package(root: Path, main: str) -> None:
    d = root / "p2pupdate" / "launcher"
    d.mkdir(parents=True)
    (root / "p2pupdate" / "__init__.py").write_text("")
    (d / "__init__.py").write_text("")
    (d / "__main__.py").write_text(main)
    (d / "stage0.py").write_text("")


def _state(tmp: Path, slot_main: str | None, installed_main: str) -> tuple[Path, Path]:
    state, installed = tmp / "state", tmp / "installed"
    _package(installed, installed_main)
    state.mkdir()
    if slot_main is not None:
        slot = state / "slots" / A
        _package(slot, slot_main)
        (slot / "SLOT.json").write_text("{}")
        os.symlink(f"slots/{A}", state / "current")
    return state, installed


def _stage0(
    state: Path, installed: Path, seconds: float = 5.0, **env: str
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-I", "-S", stage0.__file__, str(installed), str(seconds), "--"]
    argv += ["--state-dir", str(state), "--", "--work", "none"]
    return subprocess.Popen(
        argv,
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _done(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out


def test_a_launcher_that_comes_up_is_recorded_good(tmp_path: Path) -> None:
    state, installed = _state(tmp_path, COMES_UP, COMES_UP)
    code, out = _done(_stage0(state, installed))
    assert code == 0, out
    assert f"stand-in launcher of {A} trial 1" in out
    assert stage0.read_boot(str(state)) == {**stage0.EMPTY, "good": A}
    # the next start: proven, no trial
    code, out = _done(_stage0(state, installed))
    assert code == 0 and f"stand-in launcher of {A} trial None" in out, out


def test_a_launcher_that_hangs_is_killed_and_the_installed_copy_runs(tmp_path: Path) -> None:
    state, installed = _state(tmp_path, HANGS, COMES_UP)
    started = time.monotonic()
    code, out = _done(_stage0(state, installed, seconds=1.0))
    assert code == 0, out
    assert 1.0 <= time.monotonic() - started < 10
    assert "no sign of life from launcher" in out
    reason = f"launcher of {A} failed to come up: signal 9"
    assert reason in out and "stand-in launcher of installed trial None" in out
    boot = stage0.read_boot(str(state))
    assert boot["failed"] == A and boot["reason"] == reason and boot["good"] is None


def test_a_launcher_that_exits_at_once_fails_and_its_fallback_failing_ends_stage0(
    tmp_path: Path,
) -> None:
    state, installed = _state(tmp_path, "raise SystemExit(1)", "raise SystemExit(5)")
    code, out = _done(_stage0(state, installed))
    assert code == 5, out
    assert f"launcher of {A} failed to come up: exit 1" in out
    assert "launcher (the installed copy) exited 5 (the fallback)" in out
    # started again (systemd would): the failed launcher is not tried again
    code, out = _done(_stage0(state, installed))
    assert code == 5 and "on trial" not in out, out


def test_a_relaunch_that_would_run_the_same_launcher_stops(tmp_path: Path) -> None:
    state, installed = _state(tmp_path, None, "raise SystemExit(77)")
    code, out = _done(_stage0(state, installed))
    assert code == 1
    assert "asked to relaunch, and would run again: stopping" in out


def test_sigterm_goes_to_the_launcher_and_ends_the_trial_without_failing_it(
    tmp_path: Path,
) -> None:
    state, installed = _state(tmp_path, HANGS, COMES_UP)
    proc = _stage0(state, installed)
    deadline = time.monotonic() + 10
    while stage0.read_boot(str(state))["trial"] != A and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # the stand-in is sleeping by now (no handler: SIGTERM kills it)
    proc.send_signal(signal.SIGTERM)
    code, out = _done(proc)
    assert code == 0, out  # the launcher died of the signal stage-0 forwarded: a stop
    boot = stage0.read_boot(str(state))
    assert boot["failed"] is None and boot["trial"] == A  # not failed: tried again next start


def test_one_stage0_per_state_dir(tmp_path: Path) -> None:
    state, installed = _state(tmp_path, WAITS_FOR_TERM, COMES_UP)
    first = _stage0(state, installed)
    deadline = time.monotonic() + 10
    while stage0.read_boot(str(state))["good"] != A and time.monotonic() < deadline:
        time.sleep(0.02)
    code, out = _done(_stage0(state, installed))
    assert code == 1 and "another launcher is running here" in out
    first.send_signal(signal.SIGTERM)
    code, out = _done(first)
    assert code == 3, out  # the launcher's own code, passed through
    assert json.loads((state / stage0.BOOT).read_text())["good"] == A
