"""Real nodes in real processes for the launcher and daemon tests.

``Nodes`` starts ``python -m p2pupdate node ...`` (the launcher from this checkout, which
runs the daemon from a slot) in a new session, so the launcher and its daemon share one
process group that ``kill()`` SIGKILLs at once -- exactly the crash the tests inject -- and
the fixture's finalizer kills every group it started, whatever the test did.

Builds are made with ``build_artifact`` (the function behind ``scripts/build-artifact``) from
this working tree, so "v1" and "v2" are the very code under test with another version
string; broken builds are a patched copy of the tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from p2pupdate.launcher.artifact import build_artifact, sha256_hex
from p2pupdate.launcher.state import StateDir, StateError

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: Timings small enough for the suite, generous enough for a loaded 2-core machine.
PROBATION = 8.0
FAST: tuple[str, ...] = (
    "--probation",
    f"{PROBATION:g}",
    "--check-interval",
    "0.3",
    "--health-checks",
    "3",
    "--health-interval",
    "0.1",
    "--drain-timeout",
    "5",
)
WAIT = 30.0


def wait_until(what: str, check: Callable[[], T | None], timeout: float = WAIT) -> T:
    """Poll ``check`` until it returns a truthy value and return it; after ``timeout``
    seconds fail naming ``what``.  The one poll loop of the real-process tests that watch
    no single node (``NodeProcess.wait_for`` adds a node's log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def gossip_view(node: NodeProcess) -> dict[str, Any]:
    """The ``gossip`` section of a node's status file ({} until the daemon wrote one)."""
    st = node.status() or {}
    view = st.get("gossip")
    return view if isinstance(view, dict) else {}


def watcher_args(
    build: Build, *, trust_root: Path, coordinator: str, gossip_round: str = "1s"
) -> list[str]:
    """The flags of a gossiping node that runs ``build`` and only watches: no work, no
    update check for an hour, one replica, documents verified against ``trust_root``."""
    return [
        "--initial-artifact",
        str(build.path),
        "--work",
        "none",
        *FAST,
        "--check-interval",
        "1h",
        "--coordinator",
        coordinator,
        "--trust-root",
        str(trust_root),
        "--gossip-round",
        gossip_round,
    ]


@dataclass(frozen=True)
class Build:
    version: str
    path: Path
    sha: str
    counter: int


def make_build(directory: Path, version: str, counter: int, source: Path = REPO) -> Build:
    data = build_artifact(source, version)
    path = directory / f"{version}.tar.gz"
    path.write_bytes(data)
    return Build(version=version, path=path, sha=sha256_hex(data), counter=counter)


def patched_tree(directory: Path, edits: dict[str, Callable[[str], str]]) -> Path:
    """A copy of this tree's packages with ``edits[relative path](text)`` applied."""
    root = directory / "src"
    for pkg in ("p2pupdate", "coordinator"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for rel, edit in edits.items():
        path = root / rel
        before = path.read_text()
        after = edit(before)
        assert after != before, f"patch of {rel} changed nothing"
        path.write_text(after)
    return root


def offer(offer_dir: Path, build: Build, *, name: str | None = None) -> None:
    """Drop a build for the daemon: the artifact first, then its record (both atomic)."""
    offer_dir.mkdir(parents=True, exist_ok=True)
    tmp = offer_dir / f".{build.sha}.part"
    shutil.copyfile(build.path, tmp)
    os.replace(tmp, offer_dir / f"{build.sha}.tar.gz")
    record = {"name": name or build.version, "counter": build.counter}
    tmp.write_text(json.dumps(record))
    os.replace(tmp, offer_dir / f"{build.sha}.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NodeProcess:
    """One ``p2pupdate node`` process group (launcher + daemon)."""

    def __init__(self, state_dir: Path, log_path: Path, args: list[str], env: dict[str, str]):
        self.state_dir = state_dir
        self.state = StateDir(state_dir)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2pupdate", "node", "--state-dir", str(state_dir), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(state_dir.parent),
            env=env,
            start_new_session=True,
        )
        self.pgid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def group_alive(self) -> bool:
        """Whether any process of this node (launcher or daemon) still runs."""
        return _group_has_live_members(self.pgid)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_has_live_members(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the launcher only (as a service manager would); its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node did not exit in {timeout} s\n{self.tail()}") from None

    def tail(self, lines: int = 60) -> str:
        text = self.log().splitlines()[-lines:]
        return "--- node log (tail) ---\n" + "\n".join(text)

    def status(self) -> dict[str, Any] | None:
        try:
            return self.state.read_status()
        except StateError:
            return None

    def gate_checks(self) -> int:
        """How many gate checks the running daemon has answered (``status["gate_checks"]``):
        the observable event to wait for instead of sleeping to show nothing happened."""
        st = self.status() or {}
        return int(st.get("gate_checks", 0))

    def wait_for(self, what: str, check: Callable[[], T | None], timeout: float = WAIT) -> T:
        """Poll ``check`` until it returns a truthy value; fail with the log tail."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}\n{self.tail()}"
                )
            if self.proc.poll() is not None and not value:
                value = check()
                if value:
                    return value
                raise AssertionError(
                    f"node exited ({self.proc.returncode}) while waiting for {what}\n{self.tail()}"
                )
            time.sleep(0.05)

    def wait_running(
        self,
        version: str,
        *,
        mode: str = "normal",
        state: str | None = "sleeping",
        timeout: float = WAIT,
    ) -> dict[str, Any]:
        """The status of a live daemon of ``version`` in ``mode`` (and updater ``state``)."""

        def check() -> dict[str, Any] | None:
            st = self.status()
            if (
                st is not None
                and st["version"] == version
                and st["mode"] == mode
                and (state is None or st["state"] == state)
                and st["exit_code"] is None
                and st["work"]["serving"]
                and pid_alive(st["pid"])
            ):
                return st
            return None

        return self.wait_for(f"{version} running ({mode}, {state})", check, timeout)


def _group_has_live_members(pgid: int) -> bool:
    """True if a non-zombie process of group ``pgid`` exists (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            return True
    return False


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class Nodes:
    """Starts node processes; kills every process group it started at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[NodeProcess] = []

    def start(
        self,
        state_dir: Path,
        args: list[str],
        *,
        crash_at: str | None = None,
        log_name: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> NodeProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2PUPDATE_TEST_")}
        env["PYTHONPATH"] = str(REPO)  # the launcher is this checkout's installed package
        if crash_at is not None:
            env["P2PUPDATE_TEST_CRASH_AT"] = crash_at
        env.update(extra_env or {})
        log = self.tmp / (log_name or f"node-{len(self.started)}.log")
        node = NodeProcess(state_dir, log, args, env)
        self.started.append(node)
        return node

    def kill_all(self) -> None:
        for node in self.started:
            node.kill()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    n = Nodes(tmp_path)
    try:
        yield n
    finally:
        n.kill_all()


def base_args(build: Build, offers: Path, *extra: str) -> list[str]:
    return [
        "--initial-artifact",
        str(build.path),
        "--grant-all",
        "--offer-dir",
        str(offers),
        *FAST,
        *extra,
    ]


def read_links(state: StateDir) -> tuple[str | None, str | None]:
    return state.read_link("current"), state.read_link("previous")


def check_state_files(
    state: StateDir, parse_checkpoint: Callable[[bytes], object] | None = None
) -> list[str]:
    """Every state file parses and every link resolves to a complete slot: the problems.

    Temp files (``.*.tmp``, ``slots/.tmp-*``) are not state: the launcher removes them.
    ``parse_checkpoint`` (the workload's own reader) checks ``work/checkpoint`` if present.
    """
    problems: list[str] = []
    readers: dict[str, Callable[[], object]] = {
        "pending": state.read_pending,
        "verdict": state.read_verdict,
        "denied": state.read_denied,
        "rollbacks": state.read_rollbacks,
        "status": state.read_status,
    }
    for name, read in readers.items():
        try:
            read()
        except StateError as exc:
            problems.append(f"{name}: {exc}")
    for name in ("current", "previous"):
        try:
            target = state.read_link(name)
        except StateError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if target is not None and state.slot_manifest(target) is None:
            problems.append(f"{name} -> {target[:16]}...: not a complete slot")
    for slot in state.list_slots():
        if state.slot_manifest(slot) is None:
            problems.append(f"slots/{slot[:16]}...: incomplete slot under its final name")
    for path in (state.root / "trust" / "store.msgpack",):
        if path.exists() and path.stat().st_size == 0:
            problems.append(f"{path.name}: empty")
    checkpoint = state.checkpoint
    if checkpoint.exists():
        data = checkpoint.read_bytes()
        if not data:
            problems.append("work/checkpoint: empty")
        elif parse_checkpoint is not None:
            try:
                parse_checkpoint(data)
            except Exception as exc:
                problems.append(f"work/checkpoint: {type(exc).__name__}: {exc}")
    return problems


def launched_versions(log: str) -> list[str]:
    """The versions the launcher started, in order ("daemon pid N runs v1 (...)")."""
    out = []
    for line in log.splitlines():
        if "p2pupdate-launcher" in line and " runs " in line and "daemon pid" in line:
            out.append(line.split(" runs ", 1)[1].split(" ", 1)[0])
    return out
