"""The KV service's bytes, without sockets: requests, answers, log records, snapshots."""

from __future__ import annotations

import contextlib
import random

import pytest

from p2pupdate.core import wire
from p2pupdate.core.errors import WireError
from p2pupdate.work.protocol import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    SEGMENT_MAGIC,
    BadRequestError,
    CorruptStateError,
    ErrorCode,
    Record,
    Request,
    Response,
    Snapshot,
    StoreLimits,
    scan_segment,
)


@pytest.mark.parametrize(
    "req",
    [
        Request(op="ping", id=0),
        Request(op="get", id=1, key="k"),
        Request(op="delete", id=2**63 - 1, key="é" * 128),
        Request(op="put", id=7, key="", value=b""),
        Request(op="put", id=8, key="k" * MAX_KEY_BYTES, value=b"\x00" * MAX_VALUE_BYTES),
    ],
)
def test_request_round_trip(req: Request) -> None:
    assert Request.from_wire(req.to_wire()) == req


@pytest.mark.parametrize(
    "kwargs",
    [
        {"op": "get", "id": 1},  # no key
        {"op": "put", "id": 1, "key": "k"},  # no value
        {"op": "get", "id": 1, "key": "k", "value": b"v"},
        {"op": "ping", "id": 1, "key": "k"},
        {"op": "put", "id": 1, "key": "k" * (MAX_KEY_BYTES + 1), "value": b""},
        {"op": "put", "id": 1, "key": "é" * 129, "value": b""},  # 258 UTF-8 bytes
        {"op": "put", "id": 1, "key": "k", "value": b"v" * (MAX_VALUE_BYTES + 1)},
        {"op": "put", "id": 1, "key": "k", "value": "not bytes"},
        {"op": "get", "id": -1, "key": "k"},
        {"op": "get", "id": True, "key": "k"},
        {"op": "get", "id": 2**63, "key": "k"},
        {"op": "scan", "id": 1, "key": "k"},
    ],
)
def test_invalid_requests_cannot_be_built(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Request(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("obj", "request_id"),
    [
        ([1, 2], None),
        ({"op": "get", "key": "k"}, None),
        ({"op": "get", "id": "1", "key": "k"}, None),
        ({"op": "get", "id": 5, "key": "k", "extra": 1}, 5),
        ({"op": "scan", "id": 6, "key": "k"}, 6),
        ({"op": "put", "id": 7, "key": "k" * 300, "value": b""}, 7),
        ({"op": "put", "id": 8, "key": "k", "value": b"v" * (MAX_VALUE_BYTES + 1)}, 8),
        ({"op": "put", "id": 9, "key": "k", "value": 3}, 9),
        ({"op": "get", "id": 10, "key": b"k"}, 10),
    ],
)
def test_bad_requests_name_the_id_when_it_can_be_read(obj: object, request_id: int | None) -> None:
    with pytest.raises(BadRequestError) as info:
        Request.from_wire(wire.encode(obj))
    assert info.value.request_id == request_id


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1", b"\x92\x01", b"\xd4\x01\x00", b"\x81\xa1a\x01\x02", b"\xdf\xff\xff\xff\xff"],
)
def test_malformed_request_bytes(payload: bytes) -> None:
    with pytest.raises(BadRequestError) as info:
        Request.from_wire(payload)
    assert info.value.request_id is None


def test_random_bytes_only_ever_raise_bad_request() -> None:
    rng = random.Random(3)
    good = Request(op="put", id=1, key="key", value=b"value").to_wire()
    for _ in range(2000):
        if rng.random() < 0.5:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        else:  # mutate a valid request: the interesting region
            buf = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf[: rng.randrange(1, len(buf) + 1)])
        with contextlib.suppress(BadRequestError):  # and nothing else
            Request.from_wire(data)


@pytest.mark.parametrize(
    "resp",
    [
        Response(id=1, ok=True),
        Response(id=2, ok=True, value=b"v"),
        Response.failure(3, ErrorCode.GOING_AWAY, "node is draining"),
        Response.failure(None, ErrorCode.BAD_REQUEST, "x" * 1000),  # detail is cut to size
    ],
)
def test_response_round_trip(resp: Response) -> None:
    assert Response.from_wire(resp.to_wire()) == resp


def test_responses_ignore_unknown_fields_but_check_known_ones() -> None:
    newer = wire.encode({"id": 4, "ok": True, "value": b"v", "served_by": "v2"})
    assert Response.from_wire(newer) == Response(id=4, ok=True, value=b"v")
    for bad in ({"id": 4, "ok": 1}, {"id": -1, "ok": True}, {"id": 4, "ok": False}, [4, True]):
        with pytest.raises(WireError):
            Response.from_wire(wire.encode(bad))


def test_retryable_answers() -> None:
    assert Response.failure(1, ErrorCode.GOING_AWAY).retryable
    assert Response.failure(1, ErrorCode.UNAVAILABLE).retryable
    assert not Response.failure(1, ErrorCode.BAD_REQUEST).retryable
    assert not Response.failure(1, ErrorCode.STORE_FULL).retryable
    assert not Response(id=1, ok=True).retryable


# -- log segments ---------------------------------------------------------------------------


def _records(n: int) -> list[Record]:
    return [
        Record(lsn=i, op="put", key=f"k{i}", value=bytes([i]) * (i * 7))
        if i % 3
        else Record(lsn=i, op="delete", key=f"k{i - 1}")
        for i in range(1, n + 1)
    ]


def _segment(records: list[Record]) -> bytes:
    return SEGMENT_MAGIC + b"".join(r.encode() for r in records)


def test_segment_round_trip() -> None:
    records = _records(10)
    data = _segment(records)
    scan = scan_segment(data, last=False)
    assert scan.records == records
    assert scan.good_end == len(data)
    assert scan.torn_bytes == 0


def test_every_cut_of_the_final_record_is_a_torn_tail() -> None:
    records = _records(4)
    head = _segment(records[:3])
    last = records[3].encode()
    for cut in range(1, len(last)):
        scan = scan_segment(head + last[:cut], last=True)
        assert scan.records == records[:3], cut
        assert scan.good_end == len(head)
        assert scan.torn_bytes == cut
        with pytest.raises(CorruptStateError):  # an older segment is never torn
            scan_segment(head + last[:cut], last=False)


def test_final_record_with_a_bad_checksum_or_zero_fill_is_torn() -> None:
    records = _records(3)
    data = bytearray(_segment(records))
    data[-1] ^= 0xFF  # the final payload was not (fully) written
    assert scan_segment(bytes(data), last=True).records == records[:2]
    zero_filled = _segment(records) + b"\x00" * 100  # size extended, blocks never written
    scan = scan_segment(zero_filled, last=True)
    assert scan.records == records
    assert scan.torn_bytes == 100


def test_corrupt_record_in_the_middle_is_an_error() -> None:
    records = _records(5)
    first = len(SEGMENT_MAGIC)
    size = len(records[0].encode())
    data = bytearray(_segment(records))
    data[first + size - 1] ^= 0x01  # payload of record 1, records 2..5 follow
    with pytest.raises(CorruptStateError, match="checksum mismatch"):
        scan_segment(bytes(data), last=True)
    data = bytearray(_segment(records))
    data[first + 1] ^= 0x40  # the length field of record 1: caught by the header checksum
    with pytest.raises(CorruptStateError, match="header"):
        scan_segment(bytes(data), last=True)


def test_segment_needs_its_magic() -> None:
    with pytest.raises(CorruptStateError, match="magic"):
        scan_segment(b"something else", last=True)


# -- snapshots ----------------------------------------------------------------------------


def test_snapshot_round_trip() -> None:
    snap = Snapshot(store_id=b"s" * 16, lsn=42, data={"a": b"1", "b": b"", "ü": b"\xff" * 100})
    back = Snapshot.decode(snap.encode(), StoreLimits())
    assert (back.store_id, back.lsn, dict(back.data)) == (snap.store_id, 42, dict(snap.data))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"garbage",
        wire.encode({"format": "p2pupdate-kv/2", "store": b"s" * 16, "lsn": 1, "data": {}}),
        wire.encode({"format": "p2pupdate-kv/1", "store": b"s" * 15, "lsn": 1, "data": {}}),
        wire.encode({"format": "p2pupdate-kv/1", "store": b"s" * 16, "lsn": -1, "data": {}}),
        wire.encode({"format": "p2pupdate-kv/1", "store": b"s" * 16, "lsn": 1, "data": {"a": 1}}),
        wire.encode({"format": "p2pupdate-kv/1", "store": b"s" * 16, "lsn": 1}),
    ],
)
def test_snapshot_garbage_is_a_value_error(blob: bytes) -> None:
    with pytest.raises(ValueError):
        Snapshot.decode(blob, StoreLimits())
    with pytest.raises(CorruptStateError):
        Snapshot.decode(blob, StoreLimits())


def test_snapshot_limits_apply_before_and_after_parsing() -> None:
    limits = StoreLimits(max_keys=3, max_store_bytes=100)
    many = Snapshot(store_id=b"s" * 16, lsn=1, data={str(i): b"" for i in range(4)})
    with pytest.raises(CorruptStateError):
        Snapshot.decode(many.encode(), limits)
    big = Snapshot(store_id=b"s" * 16, lsn=1, data={"a": b"x" * 60, "b": b"x" * 60})
    with pytest.raises(CorruptStateError):
        Snapshot.decode(big.encode(), limits)
    with pytest.raises(CorruptStateError, match="oversize"):
        Snapshot.decode(b"\x00" * (limits.max_snapshot_bytes + 1), limits)
