"""The KV workload over real TCP on 127.0.0.1 with real files: protocol, limits, durability,
recovery, drain, checkpoint/restore."""

from __future__ import annotations

import math
import shutil
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pupdate.core import wire
from p2pupdate.work import Workload
from p2pupdate.work.kv import (
    SNAPSHOT_NAME,
    KVConfig,
    KVWorkload,
    StoreBusyError,
    _RateMeter,
)
from p2pupdate.work.protocol import MAX_VALUE_BYTES, Record, Snapshot, StoreLimits

from .helpers import STEP_TIMEOUT, Node, RawConnection


def segments(state_dir: Path) -> list[Path]:
    return sorted(state_dir.glob("wal-*.log"))


async def test_is_a_workload_and_answers_each_op(nursery: trio.Nursery, tmp_path: Path) -> None:
    node = Node(nursery, tmp_path)
    w = await node.start()
    assert isinstance(w, Workload) and w.name == "kv"
    assert w.port > 0
    conn = await RawConnection.open(w.port)
    assert await conn.ask({"op": "ping", "id": 1}) == {"id": 1, "ok": True, "value": None}
    assert await conn.ask({"op": "get", "id": 2, "key": "a"}) == {
        "id": 2,
        "ok": True,
        "value": None,
    }
    assert await conn.ask({"op": "put", "id": 3, "key": "a", "value": b"1"}) == {
        "id": 3,
        "ok": True,
        "value": None,
    }
    assert (await conn.ask({"op": "get", "id": 4, "key": "a"}) or {})["value"] == b"1"
    assert (await conn.ask({"op": "delete", "id": 5, "key": "a"}) or {})["ok"] is True
    assert (await conn.ask({"op": "get", "id": 6, "key": "a"}) or {})["value"] is None
    big = b"\xab" * MAX_VALUE_BYTES
    assert (await conn.ask({"op": "put", "id": 7, "key": "big", "value": big}) or {})["ok"]
    assert (await conn.ask({"op": "get", "id": 8, "key": "big"}) or {})["value"] == big
    await node.stop()


async def test_pipelined_requests_are_all_answered_by_id(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # one in-flight slot per connection: the reader stops reading, TCP pushes back, and
    # still every request gets its answer
    node = Node(nursery, tmp_path, KVConfig(max_inflight_per_connection=1))
    w = await node.start()
    conn = await RawConnection.open(w.port)
    burst = b"".join(
        wire.frame(wire.encode({"op": "put", "id": i, "key": f"k{i}", "value": b"v" * i}))
        for i in range(200)
    )
    await conn.send_raw(burst)
    answers = [await conn.receive() for _ in range(200)]
    assert sorted(a["id"] for a in answers if a and a["ok"]) == list(range(200))
    assert len(w) == 200 and w.get("k199") == b"v" * 199
    await node.stop()


async def test_bad_frames_get_bad_request_and_never_crash_the_node(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    w = await Node(nursery, tmp_path).start()
    conn = await RawConnection.open(w.port)

    # unreadable payloads: no id to answer to, but the framing is intact, so the
    # connection stays open
    for payload in (b"\xc1", b"", b"\x92\x01", b"\xd4\x01\x00", wire.encode([1, 2])):
        await conn.send_raw(wire.frame(payload))
        answer = await conn.receive()
        assert answer is not None
        assert answer["id"] is None and answer["error"] == "bad-request"

    # readable id, wrong content: the answer names the id
    cases = [
        {"op": "scan", "id": 11, "key": "k"},
        {"op": "get", "id": 12},
        {"op": "put", "id": 13, "key": "k" * 257, "value": b""},
        {"op": "put", "id": 14, "key": "k", "value": b"v" * (MAX_VALUE_BYTES + 1)},
        {"op": "get", "id": 15, "key": "k", "flag": True},
    ]
    for case in cases:
        answer = await conn.ask(case)
        assert answer is not None
        assert (answer["id"], answer["ok"], answer["error"]) == (case["id"], False, "bad-request")
    assert await conn.ask({"op": "ping", "id": 16}) == {"id": 16, "ok": True, "value": None}

    # a header announcing more than the frame limit: framing is lost, so is the link
    await conn.send_raw((10 * 1024 * 1024).to_bytes(4, "big"))
    answer = await conn.receive()
    assert answer is not None and answer["error"] == "bad-request"
    assert await conn.receive() is None

    # random junk on many connections: the node keeps serving and stays healthy
    rng = __import__("random").Random(7)
    for _ in range(20):
        junk = await RawConnection.open(w.port)
        await junk.send_raw(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
        await junk.aclose()
    fresh = await RawConnection.open(w.port)
    assert (await fresh.ask({"op": "ping", "id": 1}) or {})["ok"]
    assert w.healthy()


async def test_connection_cap_refuses_the_extra_connection(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    w = await Node(nursery, tmp_path, KVConfig(max_connections=2)).start()
    held = [await RawConnection.open(w.port) for _ in range(2)]
    for conn in held:  # answered, so the node has counted them
        assert (await conn.ask({"op": "ping", "id": 1}) or {})["ok"]
    extra = await RawConnection.open(w.port)
    answer = await extra.receive()
    assert answer is not None and (answer["id"], answer["error"]) == (None, "overloaded")
    assert await extra.receive() is None
    await held[0].aclose()
    with trio.fail_after(STEP_TIMEOUT):
        while True:  # the slot frees once the node has seen the close
            again = await RawConnection.open(w.port)
            answer = await again.ask({"op": "ping", "id": 2})
            if answer is not None and answer["ok"]:
                break
            await trio.sleep(0.01)
    assert w.stats.connections_refused >= 1


async def test_idle_connection_is_closed(nursery: trio.Nursery, tmp_path: Path) -> None:
    w = await Node(nursery, tmp_path, KVConfig(idle_timeout=0.2)).start()
    conn = await RawConnection.open(w.port)
    await conn.send_raw(b"\x00\x00")  # half a frame header, then silence
    assert await conn.receive() is None


async def test_acknowledged_writes_survive_a_restart(nursery: trio.Nursery, tmp_path: Path) -> None:
    node = Node(nursery, tmp_path)
    w = await node.start()
    conn = await RawConnection.open(w.port)
    for i in range(50):
        assert (await conn.ask({"op": "put", "id": i, "key": f"k{i}", "value": b"%d" % i}) or {})[
            "ok"
        ]
    for i in range(0, 50, 5):
        assert (await conn.ask({"op": "delete", "id": 100 + i, "key": f"k{i}"}) or {})["ok"]
    lsn = w.lsn
    await node.stop()  # no drain, no checkpoint: only the log
    w2 = await node.start()
    assert w2.lsn == lsn == 60
    assert len(w2) == 40
    assert all(w2.get(f"k{i}") == (None if i % 5 == 0 else b"%d" % i) for i in range(50))
    conn = await RawConnection.open(w2.port)
    assert (await conn.ask({"op": "get", "id": 1, "key": "k7"}) or {})["value"] == b"7"
    await node.stop()


def test_one_store_per_directory(tmp_path: Path) -> None:
    w = KVWorkload(tmp_path)
    with pytest.raises(StoreBusyError):
        KVWorkload(tmp_path)
    w.close()
    KVWorkload(tmp_path).close()


def _write_log(state_dir: Path, count: int) -> None:
    """A store whose only content is the log: ``count`` puts k0.. (via a real workload)."""

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            node = Node(nursery, state_dir)
            w = await node.start()
            conn = await RawConnection.open(w.port)
            for i in range(count):
                answer = await conn.ask({"op": "put", "id": i, "key": f"k{i}", "value": b"v%d" % i})
                assert answer is not None and answer["ok"]
            await node.stop()

    trio.run(run)


@pytest.mark.parametrize("cut", [1, 7, 12, 20])
def test_a_torn_final_write_is_truncated(tmp_path: Path, cut: int) -> None:
    _write_log(tmp_path, 5)
    (seg,) = segments(tmp_path)
    torn = Record(lsn=6, op="put", key="k5", value=b"never acknowledged").encode()
    with seg.open("ab") as f:
        f.write(torn[:cut])
    size_before = seg.stat().st_size
    w = KVWorkload(tmp_path)
    assert w.lsn == 5 and len(w) == 5 and w.get("k5") is None
    w.close()
    assert seg.stat().st_size == size_before - cut  # cut back to the last whole record
    w = KVWorkload(tmp_path)  # and the next open is clean
    assert w.lsn == 5
    w.close()


def test_writes_after_a_torn_tail_recover_too(tmp_path: Path) -> None:
    _write_log(tmp_path, 3)
    (seg,) = segments(tmp_path)
    with seg.open("ab") as f:
        f.write(b"\x00\x00\x01")
    _write_log(tmp_path, 6)  # reopens (truncating), rewrites k0..k2, adds k3..k5
    w = KVWorkload(tmp_path)
    assert w.lsn == 9 and [w.get(f"k{i}") for i in range(6)] == [b"v%d" % i for i in range(6)]
    w.close()


def test_a_corrupt_record_in_the_middle_ends_the_log_there(tmp_path: Path) -> None:
    """P7 item 4: the records before the damage are served, the rest is kept aside."""
    _write_log(tmp_path, 5)
    (seg,) = segments(tmp_path)
    data = bytearray(seg.read_bytes())
    at = len(data) // 3
    data[at] ^= 0x55
    seg.write_bytes(bytes(data))
    w = KVWorkload(tmp_path)
    kept = w.lsn
    assert 0 < kept < 5
    assert [w.get(f"k{i}") for i in range(kept)] == [b"v%d" % i for i in range(kept)]
    (bad,) = tmp_path.glob(f"{seg.name}.bad-*")
    assert seg.read_bytes() + bad.read_bytes() == bytes(data)  # nothing thrown away
    w.close()
    again = KVWorkload(tmp_path)  # the next start is clean (and the failed one let go)
    assert again.lsn == kept
    again.close()


def test_a_log_without_its_snapshot_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    _write_log(tmp_path, 2)
    (tmp_path / SNAPSHOT_NAME).unlink()
    w = KVWorkload(tmp_path)
    assert w.lsn == 2 and w.get("k1") == b"v1"
    w.close()


def test_a_gap_in_the_log_ends_it_before_the_gap(tmp_path: Path) -> None:
    config = KVConfig(segment_bytes=300)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            node = Node(nursery, tmp_path, config)
            w = await node.start()
            conn = await RawConnection.open(w.port)
            for i in range(30):
                assert await conn.ask({"op": "put", "id": i, "key": f"k{i}", "value": b"v" * 50})
            await node.stop()

    trio.run(run)
    # Put back an old snapshot so the log must bridge from it, then drop a middle segment.
    segs = segments(tmp_path)
    assert len(segs) >= 1
    snap = Snapshot.decode((tmp_path / SNAPSHOT_NAME).read_bytes(), StoreLimits())
    assert snap.lsn > 0  # compaction ran
    # the surviving segments start after the snapshot: the log cannot bridge the gap
    old = Snapshot(store_id=snap.store_id, lsn=0, data={})
    (tmp_path / SNAPSHOT_NAME).write_bytes(old.encode())
    w = KVWorkload(tmp_path)
    assert w.lsn == 0 and segments(tmp_path) == []
    assert len(list(tmp_path.glob("wal-*.log.bad-*"))) == len(segs)
    w.close()


async def test_compaction_keeps_the_log_short_and_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    node = Node(nursery, tmp_path, KVConfig(segment_bytes=2048))
    w = await node.start()
    conn = await RawConnection.open(w.port)
    for i in range(300):
        key = f"k{i % 40}"  # overwrites: compaction must keep the latest value
        assert (await conn.ask({"op": "put", "id": i, "key": key, "value": b"%d" % i}) or {})["ok"]
    await node.stop()
    assert len(segments(tmp_path)) <= 2
    snap = Snapshot.decode((tmp_path / SNAPSHOT_NAME).read_bytes(), StoreLimits())
    assert snap.lsn > 200
    w2 = await node.start()
    assert w2.lsn == 300 and len(w2) == 40
    assert all(w2.get(f"k{i % 40}") == b"%d" % i for i in range(260, 300))
    await node.stop()


async def test_store_limits_answer_store_full(nursery: trio.Nursery, tmp_path: Path) -> None:
    config = KVConfig(store=StoreLimits(max_keys=3, max_store_bytes=1000))
    w = await Node(nursery, tmp_path, config).start()
    conn = await RawConnection.open(w.port)

    async def put(i: int, key: str, value: bytes) -> dict[str, object]:
        answer = await conn.ask({"op": "put", "id": i, "key": key, "value": value})
        assert answer is not None
        return answer

    for i in range(3):
        assert (await put(i, f"k{i}", b"x"))["ok"]
    assert (await put(3, "k3", b"x"))["error"] == "store-full"
    assert (await put(4, "k0", b"y" * 100))["ok"]  # overwriting needs no new key
    assert (await put(5, "k1", b"y" * 950))["error"] == "store-full"
    assert (await conn.ask({"op": "delete", "id": 6, "key": "k2"}) or {})["ok"]
    assert (await put(7, "k3", b"x"))["ok"]
    assert len(w) == 3


async def test_drain_answers_going_away_and_finishes_in_flight(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    node = Node(nursery, tmp_path)
    w = await node.start()
    entered, release = threading.Event(), threading.Event()
    real_append = w._log.append

    def slow_append(blob: bytes) -> None:
        entered.set()
        release.wait(STEP_TIMEOUT)
        real_append(blob)

    w._log.append = slow_append  # type: ignore[method-assign]
    conn = await RawConnection.open(w.port)
    await conn.send({"op": "put", "id": 1, "key": "in-flight", "value": b"kept"})
    with trio.fail_after(STEP_TIMEOUT):
        await trio.to_thread.run_sync(entered.wait)

    drained = trio.Event()

    async def drain() -> None:
        await w.drain(trio.current_time() + STEP_TIMEOUT)
        drained.set()

    nursery.start_soon(drain)
    await trio.testing.wait_all_tasks_blocked()
    assert not w.healthy()
    # new requests on an open connection: going-away, for reads and writes alike
    late: list[dict[str, object]] = [
        {"op": "get", "key": "x"},
        {"op": "put", "key": "x", "value": b""},
        {"op": "ping"},
    ]
    for i, req in enumerate(late):
        answer = await conn.ask({**req, "id": 10 + i})
        assert answer is not None and (answer["id"], answer["error"]) == (10 + i, "going-away")
    # new connections: refused (the listener is closed)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", w.port)
    assert not drained.is_set()

    release.set()
    answer = await conn.receive()
    assert answer == {"id": 1, "ok": True, "value": None}
    with trio.fail_after(STEP_TIMEOUT):
        await drained.wait()
    assert w.get("in-flight") == b"kept"
    checkpoint = w.checkpoint()
    await node.stop()
    w2 = await node.start(checkpoint)
    assert w2.get("in-flight") == b"kept"
    await node.stop()


async def test_drain_returns_at_its_deadline(nursery: trio.Nursery, tmp_path: Path) -> None:
    node = Node(nursery, tmp_path)
    w = await node.start()
    entered, release = threading.Event(), threading.Event()
    real_append = w._log.append

    def stuck_append(blob: bytes) -> None:
        entered.set()
        release.wait(STEP_TIMEOUT)
        real_append(blob)

    w._log.append = stuck_append  # type: ignore[method-assign]
    conn = await RawConnection.open(w.port)
    await conn.send({"op": "put", "id": 1, "key": "slow", "value": b"v"})
    with trio.fail_after(STEP_TIMEOUT):
        await trio.to_thread.run_sync(entered.wait)
    start = trio.current_time()
    with trio.fail_after(STEP_TIMEOUT):
        await w.drain(start + 0.3)
    assert 0.29 <= trio.current_time() - start < STEP_TIMEOUT / 2
    release.set()
    await node.stop()


async def test_health_and_load(nursery: trio.Nursery, tmp_path: Path) -> None:
    node = Node(nursery, tmp_path)
    w = KVWorkload(tmp_path, capacity=250.0)
    assert not w.healthy() and w.capacity() == 250.0 and w.load() == 0.0
    w.close()
    w = await node.start()
    assert w.healthy()
    conn = await RawConnection.open(w.port)
    for i in range(20):
        await conn.ask({"op": "ping", "id": i})
    assert w.load() > 0
    await w.drain(trio.current_time() + 5)
    assert not w.healthy()
    await node.stop()
    assert not w.healthy()
    with pytest.raises(ValueError):
        KVWorkload(tmp_path / "other", capacity=math.nan)


def test_rate_meter_reads_a_steady_rate() -> None:
    now = [0.0]
    meter = _RateMeter(tau=5.0, clock=lambda: now[0])
    for _ in range(600):  # 20 per second for 30 s
        now[0] += 0.05
        meter.tick()
    assert meter.rate() == pytest.approx(20.0, rel=0.05)
    now[0] += 5.0
    assert meter.rate() == pytest.approx(20.0 / math.e, rel=0.05)


# -- checkpoint / restore -----------------------------------------------------------------


async def _fill(node: Node, items: dict[str, bytes]) -> None:
    conn = await RawConnection.open(node.w.port)
    for i, (key, value) in enumerate(items.items()):
        answer = await conn.ask({"op": "put", "id": i, "key": key, "value": value})
        assert answer is not None and answer["ok"]
    await conn.aclose()


async def test_checkpoint_restore_round_trip_into_a_fresh_directory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    items = {f"k{i}": bytes([i]) * i for i in range(100)}
    a = Node(nursery, tmp_path / "a")
    await a.start()
    await _fill(a, items)
    await a.w.drain(trio.current_time() + 5)
    checkpoint = a.w.checkpoint()
    await a.stop()

    b = Node(nursery, tmp_path / "b")
    w = await b.start(checkpoint)
    assert {k: w.get(k) for k in items} == items and w.lsn == 100
    await _fill(b, {"after": b"restore"})
    await b.stop()
    w = await b.start()  # the adopted state is on disk, not just in memory
    assert w.lsn == 101 and w.get("after") == b"restore" and w.get("k99") == items["k99"]
    assert Snapshot.decode(w.checkpoint(), StoreLimits()).store_id == (
        Snapshot.decode(checkpoint, StoreLimits()).store_id
    )
    await b.stop()


async def test_restore_never_moves_a_store_backwards(nursery: trio.Nursery, tmp_path: Path) -> None:
    node = Node(nursery, tmp_path)
    await node.start()
    await _fill(node, {"a": b"1"})
    old = node.w.checkpoint()
    await _fill(node, {"a": b"2", "b": b"2"})
    await node.stop()
    w = await node.start(old)  # a stale checkpoint of this same store: a no-op
    assert (w.get("a"), w.get("b"), w.lsn) == (b"2", b"2", 3)
    await node.stop()


async def test_restore_takes_a_newer_checkpoint_of_the_same_store(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # the rollback case: the old slot's directory is behind what the new version wrote
    a = Node(nursery, tmp_path / "a")
    await a.start()
    await _fill(a, {"x": b"1"})
    await a.stop()
    shutil.copytree(tmp_path / "a", tmp_path / "behind")
    await a.start()
    await _fill(a, {"x": b"2", "y": b"2"})
    newer = a.w.checkpoint()
    await a.stop()
    behind = Node(nursery, tmp_path / "behind")
    w = await behind.start(newer)
    assert (w.get("x"), w.get("y"), w.lsn) == (b"2", b"2", 3)
    await _fill(behind, {"z": b"3"})
    await behind.stop()
    w = await behind.start()
    assert (w.get("x"), w.get("z"), w.lsn) == (b"2", b"3", 4)
    await behind.stop()


async def test_restore_refuses_garbage_and_foreign_stores(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    a = Node(nursery, tmp_path / "a")
    await a.start()
    await _fill(a, {"mine": b"1"})
    w = a.w
    with pytest.raises(RuntimeError):
        w.restore(w.checkpoint())  # only before serve()
    await a.stop()

    other = KVWorkload(tmp_path / "other")
    foreign = Snapshot(store_id=b"f" * 16, lsn=9, data={"theirs": b"2"}).encode()
    for bad in (b"", b"junk", foreign[:-3], b"\x00" * (StoreLimits().max_snapshot_bytes + 1)):
        with pytest.raises(ValueError):
            other.restore(bad)
    other.close()

    w = KVWorkload(tmp_path / "a")
    with pytest.raises(ValueError, match="cannot replace"):
        w.restore(foreign)  # would drop this store's acknowledged writes
    assert w.get("mine") == b"1"
    w.close()
