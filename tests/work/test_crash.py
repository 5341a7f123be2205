"""Crash injection with real processes: a KV node is SIGKILLed at random moments while a
client writes, restarted on the same state directory, and every acknowledged write (and
acknowledged delete) must be there afterwards."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from p2pupdate.work.client import ClientConfig, KVClient, KVClientError
from p2pupdate.work.kv import SNAPSHOT_NAME, KVWorkload
from p2pupdate.work.protocol import Snapshot, StoreLimits

from .helpers import STEP_TIMEOUT

REPO = Path(__file__).resolve().parents[2]
KILLS = 20
#: Small segments, so that log rotation and snapshot writing get killed too.
SEGMENT_BYTES = 64 * 1024


class NodeProcess:
    """``python -m p2pupdate.work.kv`` as a child process."""

    def __init__(self, state_dir: Path, log: Path) -> None:
        self.state_dir = state_dir
        self.log = log
        self.proc: trio.Process | None = None
        self.port = 0

    async def start(self) -> tuple[str, int]:
        with self.log.open("ab") as log:
            self.proc = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "p2pupdate.work.kv",
                    "--state-dir",
                    str(self.state_dir),
                    "--segment-bytes",
                    str(SEGMENT_BYTES),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO,
            )
        assert self.proc.stdout is not None
        line = b""
        with trio.fail_after(STEP_TIMEOUT):
            while not line.endswith(b"\n"):
                chunk = await self.proc.stdout.receive_some(256)
                if not chunk:
                    raise AssertionError(f"node exited before listening: {self.log.read_text()}")
                line += chunk
        word, host, port = line.decode().split()
        assert word == "listening"
        self.port = int(port)
        return (host, self.port)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        with trio.fail_after(STEP_TIMEOUT):
            await self.proc.wait()
        if self.proc.stdout is not None:
            await self.proc.stdout.aclose()
        assert self.proc.returncode == -signal.SIGKILL


@pytest.mark.slow  # a real kv process killed and restarted again and again (~15 s)
async def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path: Path) -> None:
    state_dir = tmp_path / "kv"
    node = NodeProcess(state_dir, tmp_path / "node.log")
    endpoint = await node.start()

    expected: dict[str, bytes | None] = {}  # acknowledged state: value, or None once deleted
    unsure: set[str] = set()  # a write that failed may or may not have been applied
    acks = [0]
    ack_event = trio.Event()
    stop = trio.Event()
    config = ClientConfig(
        request_timeout=STEP_TIMEOUT,
        attempt_timeout=5.0,
        max_attempts=10_000,
        backoff_initial=0.01,
        backoff_max=0.1,
    )

    def acknowledged() -> None:
        nonlocal ack_event
        acks[0] += 1
        ack_event.set()
        ack_event = trio.Event()

    async def writer(kv: KVClient, wid: int) -> None:
        rng = random.Random(wid)
        mine: list[str] = []
        n = 0
        while not stop.is_set():
            n += 1
            if mine and n % 5 == 0:
                key = mine.pop(rng.randrange(len(mine)))
                try:
                    await kv.delete(key)
                except KVClientError:
                    unsure.add(key)
                    continue
                expected[key] = None
            else:
                key = f"w{wid}-{n}"
                value = rng.randbytes(rng.choice([1, 100, 3000, 20_000]))
                try:
                    await kv.put(key, value)
                except KVClientError:
                    unsure.add(key)
                    continue
                expected[key] = value
                mine.append(key)
            acknowledged()

    async def wait_for_acks(count: int) -> None:
        target = acks[0] + count
        with trio.fail_after(STEP_TIMEOUT):
            while acks[0] < target:
                await ack_event.wait()

    rng = random.Random(1234)
    client = KVClient([endpoint], config=config)
    async with client as kv, trio.open_nursery() as load:
        for wid in range(4):
            load.start_soon(writer, kv, wid)
        for _ in range(KILLS):
            await wait_for_acks(rng.randrange(5, 40))
            await trio.sleep(rng.random() * 0.02)  # a random moment, not a synchronization
            await node.kill()
            kv.set_endpoints([await node.start()])
        await wait_for_acks(20)
        stop.set()

    # Check over the network against the last process ...
    checked = {k: v for k, v in expected.items() if k not in unsure}
    async with KVClient([(endpoint[0], node.port)], config=config) as kv:
        lost_online = [k for k, v in checked.items() if await kv.get(k) != v]
    # ... and on disk, after one more SIGKILL, by recovering the directory in-process.
    await node.kill()
    recovered = KVWorkload(state_dir)
    lost_on_disk = [k for k, v in checked.items() if recovered.get(k) != v]
    recovered.close()
    Snapshot.decode((state_dir / SNAPSHOT_NAME).read_bytes(), StoreLimits())  # parses

    deletes = sum(1 for v in checked.values() if v is None)
    torn = node.log.read_text().count("torn final write")
    print(
        f"\n{acks[0]} acknowledged writes ({deletes} deletes) over {KILLS} SIGKILLs; "
        f"{len(unsure)} unacknowledged; {client.stats.connection_errors} connection errors (kills, "
        f"restarts); {torn} torn tails truncated; lost: {len(lost_online)} online, "
        f"{len(lost_on_disk)} on disk"
    )
    assert acks[0] >= KILLS * 5 + 20
    assert deletes > 0
    assert client.stats.connection_errors > 0  # kills did land on requests in flight
    assert lost_online == []
    assert lost_on_disk == []


async def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "kv", tmp_path / "node.log")
    endpoint = await node.start()
    async with KVClient([endpoint]) as kv:
        await kv.put("k", b"v")
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(STEP_TIMEOUT):
        await node.proc.wait()
    assert node.proc.returncode == 0
    w = KVWorkload(tmp_path / "kv")
    assert w.get("k") == b"v"
    w.close()


@pytest.mark.parametrize("args", [["--state-dir"], ["--port", "x", "--state-dir", "d"]])
def test_cli_usage_errors(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "p2pupdate.work.kv", *args], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 2 and "usage" in result.stderr


def test_cli_serves_on_a_corrupt_snapshot_moved_aside(tmp_path: Path) -> None:
    """P7 item 4: a garbled snapshot is quarantined (one warning), never a refusal to start."""
    (tmp_path / SNAPSHOT_NAME).write_bytes(b"not a snapshot")
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pupdate.work.kv", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening ")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"{SNAPSHOT_NAME} unusable" in err and f"{SNAPSHOT_NAME}.bad-1" in err
    assert "Traceback" not in err
    assert (tmp_path / f"{SNAPSHOT_NAME}.bad-1").read_bytes() == b"not a snapshot"
