"""P7 item 5 on a real full file system: a node restarted on a full disk starts once (no
traceback, no crash loop), keeps every state file byte for byte, serves reads, refuses
writes with a clear error (never an ack), and takes writes again once space is freed.

The state directory lives on a small tmpfs mounted for the test (root only; skipped with
the reason otherwise), filled to the last byte by a filler file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.core.harness import Network
from tests.launcher.conftest import Builds
from tests.launcher.harness import FAST, Nodes, free_port, launched_versions
from tests.work.helpers import RawConnection

#: Real processes (launcher + daemon groups): run by scripts/test, deselect with -m 'not slow'.
pytestmark = pytest.mark.slow

KEYS = 30
#: More than the free part of the log's last page: the write needs new blocks.
BIG = b"x" * (64 * 1024 - 1)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs: a real file system that fills up (unmounted even on failure)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a real full disk) needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path) -> Path:
    """Fill the file system to the last byte; the filler file (delete it to free space)."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 20, 1 << 16, 1 << 12, 1):
            data = b"\0" * block
            while True:
                try:
                    os.write(fd, data)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): (
            os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
        )
        for p in root.rglob("*")
        if p.is_symlink() or p.is_file()
    }


async def _ask(port: int, *requests: dict[str, object]) -> list[dict[str, object] | None]:
    conn = await RawConnection.open(port)
    try:
        return [await conn.ask(r) for r in requests]
    finally:
        await conn.aclose()


def _reads(port: int) -> list[dict[str, object] | None]:
    return trio.run(
        lambda: _ask(port, *({"op": "get", "id": i, "key": f"k{i}"} for i in range(KEYS)))
    )


@pytest.mark.parametrize("new_files", [False, True], ids=["same-flags", "trust-and-gossip-added"])
def test_restart_on_a_full_disk(
    small_fs: Path, nodes: Nodes, builds: Builds, new_files: bool
) -> None:
    """``new_files``: the restart adds ``--trust-root`` and gossip, so the trust store and
    the identity key are due to be written on the full disk for the first time."""
    v1 = builds.get("v1", 1)
    state = small_fs / "state"
    port = free_port()
    root = small_fs.parent / "root.doc"
    root.write_bytes(Network(now=int(time.time())).roots[1])
    trusted = ("--trust-root", str(root), "--gossip-listen", "127.0.0.1:0")
    args = [
        *("--initial-artifact", str(v1.path), "--work", "kv", "--port", str(port)),
        *FAST,
    ]
    first = nodes.start(state, args if new_files else [*args, *trusted])
    args = [*args, *trusted]
    first.wait_running("v1")
    puts = ({"op": "put", "id": i, "key": f"k{i}", "value": b"v%d" % i} for i in range(KEYS))
    assert all(a and a["ok"] for a in trio.run(lambda: _ask(port, *puts)))
    assert first.terminate() == 0
    before = files(state)
    assert "work/checkpoint" in before

    filler = fill(small_fs)
    node = nodes.start(state, args, log_name="full.log")

    def serving() -> bool:
        with contextlib.suppress(OSError):
            answers = _reads(port)
            return all(a and a["value"] == b"v%d" % i for i, a in enumerate(answers))
        return False

    node.wait_for("reads served on the full disk", serving)
    # a write is refused with a clear error, not acknowledged
    (answer,) = trio.run(lambda: _ask(port, {"op": "put", "id": 1, "key": "new", "value": BIG}))
    assert answer is not None and answer["ok"] is False, answer
    assert answer["error"] == "unavailable" and "disk full" in str(answer["detail"]), answer
    (answer,) = trio.run(lambda: _ask(port, {"op": "get", "id": 2, "key": "new"}))
    assert answer is not None and answer["value"] is None
    # every state file as it was; the checkpoint consumed by a rename; no temp files
    expected = dict(before)
    expected["work/checkpoint.restored"] = expected.pop("work/checkpoint")
    after = {k: v for k, v in files(state).items()}
    assert after == expected, sorted(set(after) ^ set(expected))
    log = node.log()
    assert "Traceback" not in log and "restarting in" not in log, node.tail()
    assert launched_versions(log) == ["v1"], node.tail()  # one start, no crash loop

    filler.unlink()  # space again: writes work, with no restart
    (answer,) = trio.run(lambda: _ask(port, {"op": "put", "id": 3, "key": "new", "value": BIG}))
    assert answer is not None and answer["ok"] is True, answer
    (answer,) = trio.run(lambda: _ask(port, {"op": "get", "id": 4, "key": "new"}))
    assert answer is not None and answer["value"] == BIG
    log = node.log()
    assert launched_versions(log) == ["v1"] and "Traceback" not in log, node.tail()
