"""``p2pupdate node`` as a real process: slot isolation, stop, restart, one launcher per dir."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import p2pupdate
from p2pupdate.launcher.artifact import sha256_hex

from .conftest import Builds
from .harness import FAST, Nodes, launched_versions, pid_alive

#: Real processes (launcher + daemon groups): run by scripts/test, deselect with -m 'not slow'.
pytestmark = pytest.mark.slow


def test_the_daemon_runs_the_slot_code_not_the_installed_package(
    tmp_path: Path, nodes: Nodes, builds: Builds
) -> None:
    v1 = builds.get("v1", 1)
    assert p2pupdate.__version__ != "v1"
    node = nodes.start(
        tmp_path / "state", ["--initial-artifact", str(v1.path), "--work", "none", *FAST]
    )
    st = node.wait_running("v1")
    slot = node.state.slot_dir(v1.sha)
    assert st["slot"] == v1.sha
    assert st["package_dir"] == str((slot / "p2pupdate").resolve())
    assert st["counter"] == 0  # bootstrapped: no release record
    assert node.state.read_link("current") == v1.sha

    # stop like a service manager: SIGTERM to the launcher; the daemon drains, checkpoints
    assert node.terminate() == 0
    assert not node.group_alive()
    assert node.state.checkpoint.is_file()
    assert "stopped" in node.log()

    # a restart runs the same slot and restores the checkpoint exactly once
    again = nodes.start(tmp_path / "state", ["--work", "none", *FAST], log_name="again.log")
    st = again.wait_running("v1")
    assert st["work"]["handoffs"] == 1 and st["work"]["restored"] is True
    assert not again.state.checkpoint.exists()
    assert launched_versions(again.log()) == ["v1"]


def test_first_start_bootstraps_from_the_installed_package(tmp_path: Path, nodes: Nodes) -> None:
    node = nodes.start(tmp_path / "state", ["--work", "none", *FAST])
    st = node.wait_running(p2pupdate.__version__)
    installed = Path(p2pupdate.__file__).resolve().parent
    assert st["package_dir"] != str(installed)
    assert Path(st["package_dir"]).parent == node.state.slot_dir(st["slot"]).resolve()
    from p2pupdate.launcher.artifact import build_artifact

    assert st["slot"] == sha256_hex(build_artifact(installed.parent))


def test_one_launcher_per_state_dir(tmp_path: Path, nodes: Nodes, builds: Builds) -> None:
    v1 = builds.get("v1", 1)
    first = nodes.start(
        tmp_path / "state", ["--initial-artifact", str(v1.path), "--work", "none", *FAST]
    )
    first.wait_running("v1")
    second = nodes.start(tmp_path / "state", ["--work", "none", *FAST], log_name="second.log")
    assert second.wait_exit() == 1
    assert "another launcher is running here" in second.log()
    assert first.alive()


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    for args in (
        ["--probation", "0"],
        ["--max-attempts", "0"],
        ["--initial-artifact", str(tmp_path / "missing.tar.gz")],
        ["--offer-dir", str(tmp_path / "nowhere")],
        ["--check-interval", "soon"],
        ["--work", "nothing"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "p2pupdate", "node", "--state-dir", str(tmp_path / "s"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "p2pupdate", "node", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    assert "75" in r.stdout and "76" in r.stdout and "--grant-all" in r.stdout


def test_a_launcher_killed_alone_takes_its_daemon_with_it(
    tmp_path: Path, nodes: Nodes, builds: Builds
) -> None:
    """SIGKILL of the launcher only: the daemon (PDEATHSIG / parent watch) stops gracefully,
    so a new launcher never finds a second daemon on the same state and work ports."""
    v1 = builds.get("v1", 1)
    node = nodes.start(
        tmp_path / "state", ["--initial-artifact", str(v1.path), "--work", "none", *FAST]
    )
    st = node.wait_running("v1")
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while pid_alive(st["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(st["pid"]), node.tail()
    assert "stopping" in node.log()
    assert node.state.checkpoint.is_file()  # it drained and checkpointed on its way out
    again = nodes.start(tmp_path / "state", ["--work", "none", *FAST], log_name="again.log")
    assert again.wait_running("v1")["work"]["handoffs"] == 1
