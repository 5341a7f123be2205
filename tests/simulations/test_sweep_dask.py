"""The sweep on a real Dask cluster (P14): ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1, and the sweep's table equals the local joblib run's.

The workers start with cwd = the repository root and ``PYTHONPATH`` so ``simulations``
imports there (what ``simulations/sweep.py`` asks of a cluster), one thread each, no
dashboard.  Every process is started in its own session and killed at the end, whatever
the test did.  ``comparison.csv`` is compared column by column, except ``wall_seconds``
(each run's own elapsed time: the one column that is not a result of the scenario).
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("dask.distributed")

REPO = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).with_name("dask")

pytestmark = pytest.mark.slow  # ~15 s: a scheduler, two workers and four runs

TINY = """
[run]
nodes = 300
days = 0.25
[rollout]
start_hours = 0.5
nudge = true
[policy]
max_concurrent = 20
"""

SWEEP = """
[sweep]
base = "tiny.toml"
seeds = [1, 2]
[grid]
"policy.kind" = ["ours", "push"]
"""

#: The one column that is not a result of the scenario and its seed.
NOT_A_RESULT = "wall_seconds"


def distributed() -> Any:
    """``dask.distributed`` (untyped), as ``simulations.sweep`` imports it."""
    return importlib.import_module("dask.distributed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def cluster(logs: Path) -> Iterator[str]:
    """A scheduler and two workers on 127.0.0.1: its address, until the block ends."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> None:
        with (logs / f"{name}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [str(DASK), *args],
                    cwd=REPO,
                    env=env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port),
              "--no-dashboard")  # fmt: skip
        for i in (1, 2):
            start(f"worker-{i}", "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                  "--nworkers", "1", "--no-dashboard", "--name", f"w{i}")  # fmt: skip
        wait_for_workers(address, 2, logs)
        yield address
    finally:
        for proc in reversed(procs):
            kill(proc)


def wait_for_workers(address: str, n: int, logs: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with distributed().Client(address, timeout=5) as client:
                client.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                return
        except (OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}"
                    for p in sorted(logs.glob("*.log"))
                )
                raise AssertionError(f"no {n} workers at {address}: {exc}\n{tails}") from None
            time.sleep(0.5)


def _executed(dask_worker: Any) -> int:
    return int(dask_worker.state.executed_count)


def executed_counts(address: str) -> dict[str, int]:
    """Tasks each worker of the cluster executed so far."""
    with distributed().Client(address, timeout=10) as client:
        return dict(client.run(_executed))


def sweep(cwd: Path, out: Path, *how: str) -> list[dict[str, str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "simulations", "sweep", "sweep.toml", *how, "--out", str(out)],
        cwd=cwd, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with (out / "comparison.csv").open() as f:
        return list(csv.DictReader(f))


def test_the_sweep_on_a_dask_cluster_gives_the_local_joblib_table(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "sweep.toml").write_text(SWEEP)
    logs = tmp_path / "logs"
    logs.mkdir()
    local = sweep(tmp_path, tmp_path / "joblib", "--jobs", "2")
    with cluster(logs) as address:
        remote = sweep(tmp_path, tmp_path / "dask", "--scheduler", address)
        # the runs executed on the cluster's workers (4 tasks between the two)
        executed = executed_counts(address)
        assert len(executed) == 2 and sum(executed.values()) == 4, executed
    labels = [r["label"] for r in local]
    assert labels == [
        "kind=ours_seed1", "kind=ours_seed2", "kind=push_seed1", "kind=push_seed2",
    ]  # fmt: skip
    assert [r["label"] for r in remote] == labels
    assert list(remote[0]) == list(local[0])  # the same columns, in the same order
    assert NOT_A_RESULT in local[0]
    strip = [{k: v for k, v in r.items() if k != NOT_A_RESULT} for r in local]
    assert [{k: v for k, v in r.items() if k != NOT_A_RESULT} for r in remote] == strip
    # a table that compares something: the two policies differ, the two seeds differ
    assert len({tuple(r.values()) for r in strip}) == 4
