"""P7 item 5 at the unit level: ENOSPC injected into one write (the only mock: the fault).

``fsutil.atomic_write`` refused for lack of space leaves the old file byte for byte and no
temporary file; the KV store answers a write the disk has no room for with a clear
``unavailable`` / "disk full" (never an ack), keeps serving reads, and takes the next write
once there is room again -- unlike a failed fsync, which stops its writes for good.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pupdate.fsutil import atomic_write, is_disk_full
from p2pupdate.work import kv as kv_module

from .helpers import Node, RawConnection


def _no_space(*_args: Any) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("step", ["write", "fsync"])
def test_atomic_write_refused_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    path = tmp_path / "record"
    atomic_write(path, b"old bytes")
    monkeypatch.setattr(os, step, _no_space)
    with pytest.raises(OSError) as info:
        atomic_write(path, b"new bytes, which do not fit")
    monkeypatch.undo()
    assert is_disk_full(info.value)
    assert path.read_bytes() == b"old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record"]  # no temp file left


async def test_kv_write_on_a_full_disk_is_refused_then_works_again(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(nursery, tmp_path)
    w = await node.start()
    conn = await RawConnection.open(w.port)
    assert (await conn.ask({"op": "put", "id": 1, "key": "a", "value": b"1"}) or {})["ok"]
    size = os.path.getsize(next(tmp_path.glob("wal-*.log")))

    full = {"on": True}
    real_write: Callable[[int, Any], int] = os.write

    def write(fd: int, data: Any) -> int:
        if full["on"]:
            real_write(fd, bytes(data)[:5])  # part of it went in before the disk filled
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(kv_module.os, "write", write)
    answer = await conn.ask({"op": "put", "id": 2, "key": "b", "value": b"2"}) or {}
    assert answer["ok"] is False and answer["error"] == "unavailable"
    assert "disk full" in answer["detail"]
    assert (await conn.ask({"op": "get", "id": 3, "key": "a"}) or {})["value"] == b"1"
    assert (await conn.ask({"op": "get", "id": 4, "key": "b"}) or {})["value"] is None
    assert os.path.getsize(next(tmp_path.glob("wal-*.log"))) == size  # cut back whole
    assert w.healthy() and w.stats.disk_full == 1

    full["on"] = False  # space again
    assert (await conn.ask({"op": "put", "id": 5, "key": "b", "value": b"2"}) or {})["ok"]
    assert (await conn.ask({"op": "get", "id": 6, "key": "b"}) or {})["value"] == b"2"
    await conn.aclose()
    await node.stop()
    again = kv_module.KVWorkload(tmp_path)  # and the log replays to exactly that
    assert (again.get("a"), again.get("b"), again.lsn) == (b"1", b"2", 2)
    again.close()


async def test_a_failed_fsync_still_stops_writes(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not every OSError is a full disk: after a failed fsync the page cache cannot be
    trusted, so the store stops taking writes (and reports unhealthy)."""
    node = Node(nursery, tmp_path)
    w = await node.start()
    conn = await RawConnection.open(w.port)
    monkeypatch.setattr(kv_module.os, "fdatasync", _no_space)
    answer = await conn.ask({"op": "put", "id": 1, "key": "a", "value": b"1"}) or {}
    assert answer["ok"] is False and "log write failed" in answer["detail"]
    assert not w.healthy()
    await conn.aclose()
    monkeypatch.undo()
    await node.stop()


def test_launcher_on_a_full_disk_serves_current_instead_of_an_uncounted_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probation start must be counted first; when the disk refuses the count, the node
    serves on ``current`` (never a traceback, never an attempt that is not counted)."""
    import time

    from p2pupdate.launcher.artifact import build_artifact, sha256_hex
    from p2pupdate.launcher.state import Pending, new_id
    from p2pupdate.launcher.supervisor import Launcher, LauncherConfig, Plan

    repo = Path(__file__).resolve().parents[2]
    v1, v2 = build_artifact(repo, "v1"), build_artifact(repo, "v2")
    (tmp_path / "v1.tar.gz").write_bytes(v1)
    lines: list[str] = []
    launcher = Launcher(
        LauncherConfig(state_dir=tmp_path / "s", initial_artifact=tmp_path / "v1.tar.gz"),
        log=lines.append,
    )
    assert launcher.decide() == Plan(slot=sha256_hex(v1))
    st = launcher.state
    st.stage_slot(v2, sha256_hex(v2), counter=2)
    pending = Pending(
        id=new_id(),
        artifact=sha256_hex(v2),
        previous=sha256_hex(v1),
        counter=2,
        token=b"t",
        created=time.time(),
    )
    st.write_pending(pending)
    before = st.pending_path.read_bytes()
    monkeypatch.setattr(os, "write", _no_space)
    assert launcher.decide() == Plan(slot=sha256_hex(v1))
    monkeypatch.undo()
    assert st.pending_path.read_bytes() == before  # intact, attempts not raised
    assert "disk full" in lines[-1] and "running current" in lines[-1]
    plan = launcher.decide()  # room again: the attempt is counted and made
    assert plan.slot == sha256_hex(v2) and plan.pending is not None
    assert plan.pending.attempts == 1
