"""The example key/value service's bytes: requests, responses, log records, snapshots.

Pure and synchronous (no sockets, files or clocks), so the server, the client and the tests
share one definition of every byte and every limit.  Three formats live here:

**Requests and responses** travel as u32-length-prefixed msgpack frames
(``p2pupdate.core.wire.frame`` / ``FrameDecoder``), at most ``MAX_FRAME_BYTES`` each::

    request   {"op": "get"|"put"|"delete"|"ping", "id": uint, "key": str, "value": bytes}
    response  {"id": uint|nil, "ok": bool, "value"?: bytes|nil, "error"?: str, "detail"?: str}

``key`` is required by get/put/delete, ``value`` only by put; unknown fields are refused.
A response to a frame whose ``id`` could not be read carries ``"id": nil``.  ``get`` of a
missing key is a success with ``"value": nil``: absence is an answer, not a failure.

**Write-ahead log records**: ``u32 length | u32 crc32(payload) | u32 crc32(first 8 bytes)``
then the msgpack payload ``{"n": lsn, "op": "put"|"delete", "key": str, "value": bytes|nil}``.
The header has its own checksum so that a corrupt *length* is told apart from a write that
was torn at the end of the file: only the latter may be truncated away on recovery.

**Snapshots** (also the ``checkpoint()`` bytes): ``{"format": "p2pupdate-kv/1", "store":
16 bytes, "lsn": uint, "data": {key: value}}``.  ``store`` names the history the ``lsn``
counts in, so a checkpoint is only ever compared with positions of the same log.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..core import wire
from ..core.errors import SchemaError, WireError
from ..errors import LocalStateFault, PeerFault

MAX_KEY_BYTES: Final = 256
MAX_VALUE_BYTES: Final = 64 * 1024
MAX_FRAME_BYTES: Final = 128 * 1024
MAX_ID: Final = 2**63 - 1
MAX_ERROR_LEN: Final = 64
MAX_DETAIL_LEN: Final = 256

#: Frames are decoded with room to spare over the field caps (strings to 4 KiB, binaries to
#: the frame size) so that an over-long key or value is still read far enough to learn the
#: request ``id``: the client then gets a ``bad-request`` it can match to its call.
FRAME_LIMITS: Final = wire.Limits(
    max_bytes=MAX_FRAME_BYTES,
    max_depth=2,
    max_container_len=8,
    max_str_len=4096,
    max_bin_len=MAX_FRAME_BYTES,
    max_items=24,
)

Op = Literal["get", "put", "delete", "ping"]
OPS: Final[tuple[str, ...]] = ("get", "put", "delete", "ping")
WRITE_OPS: Final = frozenset({"put", "delete"})


class ErrorCode:
    """The ``error`` strings a server answers with."""

    #: The node is draining (about to update): send this request to another node.
    GOING_AWAY: Final = "going-away"
    #: The request is malformed or over a limit; retrying it anywhere gives the same answer.
    BAD_REQUEST: Final = "bad-request"
    #: The node refuses the connection (connection cap reached): try another node.
    OVERLOADED: Final = "overloaded"
    #: The write would exceed the store's key-count or byte cap.
    STORE_FULL: Final = "store-full"
    #: The node's storage failed (a write or fsync error): it is unhealthy, try another node.
    UNAVAILABLE: Final = "unavailable"


#: Answers after which the same request may succeed on another node.
RETRYABLE_ERRORS: Final = frozenset(
    {ErrorCode.GOING_AWAY, ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE}
)


class BadRequestError(PeerFault, WireError):
    """A request frame the server cannot act on: the client's fault (a ``PeerFault``), and a
    ``WireError`` like every malformed message.  ``request_id`` is ``None`` when even the
    ``id`` could not be read (then the answer cannot be matched to a call)."""

    rule = "bad-request"

    def __init__(self, message: str, *, request_id: int | None) -> None:
        super().__init__(message)
        self.request_id = request_id


def key_bytes(key: str) -> int:
    """A key's size as stored and limited: its UTF-8 length."""
    return len(key.encode("utf-8", "surrogatepass"))


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise ValueError(f"key must be a str, got {type(key).__name__}")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError("key is not encodable as UTF-8") from exc
    if size > MAX_KEY_BYTES:
        raise ValueError(f"key of {size} bytes exceeds the limit of {MAX_KEY_BYTES}")
    return key


def _check_value(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError(f"value must be bytes, got {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(f"value of {len(value)} bytes exceeds the limit of {MAX_VALUE_BYTES}")
    return value


def _check_id(request_id: object) -> int:
    if type(request_id) is not int or not 0 <= request_id <= MAX_ID:
        raise ValueError(f"id must be an integer in [0, {MAX_ID}]")
    return request_id


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """One request; validated on construction (``ValueError`` names the broken field)."""

    op: Op
    id: int
    key: str | None = None
    value: bytes | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {', '.join(OPS)}")
        _check_id(self.id)
        if self.op == "ping":
            if self.key is not None or self.value is not None:
                raise ValueError("ping takes no key or value")
            return
        if self.key is None:
            raise ValueError(f"{self.op} needs a key")
        _check_key(self.key)
        if self.op == "put":
            if self.value is None:
                raise ValueError("put needs a value")
            _check_value(self.value)
        elif self.value is not None:
            raise ValueError(f"{self.op} takes no value")

    def to_wire(self) -> bytes:
        obj: dict[str, Any] = {"op": self.op, "id": self.id}
        if self.key is not None:
            obj["key"] = self.key
        if self.value is not None:
            obj["value"] = self.value
        return wire.encode(obj)

    @classmethod
    def from_wire(cls, payload: bytes) -> Request:
        """Parse one frame's payload.  Raises only ``BadRequestError``."""
        try:
            obj = wire.decode(payload, FRAME_LIMITS)
        except WireError as exc:
            raise BadRequestError(f"{exc.rule}: {exc.message}", request_id=None) from exc
        if not isinstance(obj, dict):
            raise BadRequestError("a request must be a map", request_id=None)
        raw_id = obj.get("id")
        try:
            request_id = _check_id(raw_id)
        except ValueError as exc:
            raise BadRequestError(str(exc), request_id=None) from exc
        unknown = sorted(k for k in obj if k not in ("op", "id", "key", "value"))
        if unknown:
            raise BadRequestError(f"unknown fields: {', '.join(unknown)}", request_id=request_id)
        op = obj.get("op")
        if not isinstance(op, str) or op not in OPS:
            raise BadRequestError(f"op must be one of {', '.join(OPS)}", request_id=request_id)
        try:
            return cls(op=op, id=request_id, key=obj.get("key"), value=obj.get("value"))  # type: ignore[arg-type]
        except ValueError as exc:
            raise BadRequestError(str(exc), request_id=request_id) from exc


# -- responses ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Response:
    """One answer.  ``ok=False`` carries an ``error`` code (``ErrorCode``) and a ``detail``
    sentence for humans; ``ok=True`` may carry a ``value`` (``get``)."""

    id: int | None
    ok: bool
    value: bytes | None = None
    error: str | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.id is not None:
            _check_id(self.id)
        if self.ok and (self.error is not None or self.detail is not None):
            raise ValueError("a success carries no error")
        if not self.ok:
            if not self.error or len(self.error) > MAX_ERROR_LEN:
                raise ValueError("a failure needs an error code")
            if self.value is not None:
                raise ValueError("a failure carries no value")
        if self.value is not None:
            _check_value(self.value)
        if self.detail is not None and len(self.detail) > MAX_DETAIL_LEN:
            raise ValueError(f"detail longer than {MAX_DETAIL_LEN} chars")

    @classmethod
    def failure(cls, request_id: int | None, error: str, detail: str = "") -> Response:
        return cls(id=request_id, ok=False, error=error, detail=detail[:MAX_DETAIL_LEN] or None)

    @property
    def retryable(self) -> bool:
        """True when another node may well answer the same request successfully."""
        return not self.ok and self.error in RETRYABLE_ERRORS

    def to_wire(self) -> bytes:
        obj: dict[str, Any] = {"id": self.id, "ok": self.ok}
        if self.ok:
            obj["value"] = self.value
        else:
            obj["error"] = self.error
            if self.detail:
                obj["detail"] = self.detail
        return wire.encode(obj)

    @classmethod
    def from_wire(cls, payload: bytes) -> Response:
        """Parse one frame's payload.  Raises only ``WireError`` subclasses.

        Unknown fields are ignored: a newer server may say more, and a client in the middle
        of a rolling update must keep working against both versions.
        """
        obj = wire.decode(payload, FRAME_LIMITS)
        if not isinstance(obj, dict):
            raise SchemaError("a response must be a map")
        try:
            return cls(
                id=obj.get("id"),
                ok=wire.boolean()("ok", obj.get("ok")),
                value=obj.get("value"),
                error=obj.get("error"),
                detail=obj.get("detail"),
            )
        except (ValueError, TypeError) as exc:
            raise SchemaError(f"response: {exc}") from exc


# -- write-ahead log records --------------------------------------------------------------

#: First bytes of every log segment file.
SEGMENT_MAGIC: Final = b"p2pupdate-kv-wal/1\n"
RECORD_HEADER: Final = struct.Struct(">III")
#: Largest record payload: a maximal key and value plus the map around them.
MAX_RECORD_BYTES: Final = MAX_KEY_BYTES + MAX_VALUE_BYTES + 256
RECORD_LIMITS: Final = wire.Limits(
    max_bytes=MAX_RECORD_BYTES,
    max_depth=1,
    max_container_len=4,
    max_str_len=MAX_KEY_BYTES,
    max_bin_len=MAX_VALUE_BYTES,
    max_items=9,
)


class CorruptStateError(LocalStateFault, ValueError):
    """Local state (a log, a snapshot or a checkpoint) that cannot be trusted.

    Whose fault: local storage or whoever handed us the bytes; never a remote client's.  A
    ``ValueError`` too, because ``Workload.restore`` promises ``ValueError`` for a checkpoint
    it cannot read.
    """

    rule = "corrupt-state"


@dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """One logged write.  ``lsn`` counts from 1 without gaps within one store."""

    lsn: int
    op: Literal["put", "delete"]
    key: str
    value: bytes | None = None

    def __post_init__(self) -> None:
        if type(self.lsn) is not int or not 1 <= self.lsn <= MAX_ID:
            raise ValueError("lsn must be a positive integer")
        if self.op not in WRITE_OPS:
            raise ValueError("op must be put or delete")
        _check_key(self.key)
        if self.op == "put":
            _check_value(self.value)
        elif self.value is not None:
            raise ValueError("delete carries no value")

    def encode(self) -> bytes:
        """Header and payload, ready to append."""
        payload = wire.encode({"n": self.lsn, "op": self.op, "key": self.key, "value": self.value})
        head = struct.pack(">II", len(payload), zlib.crc32(payload))
        return head + struct.pack(">I", zlib.crc32(head)) + payload

    @classmethod
    def decode_payload(cls, payload: bytes) -> Record:
        obj = wire.decode(payload, RECORD_LIMITS)
        fields = wire.check_fields(
            obj,
            {
                "n": wire.uint(MAX_ID),
                "op": wire.one_of("put", "delete"),
                "key": wire.text(MAX_KEY_BYTES),
                "value": _optional_bytes,
            },
            where="log record",
        )
        try:
            return cls(lsn=fields["n"], op=fields["op"], key=fields["key"], value=fields["value"])
        except ValueError as exc:
            raise SchemaError(f"log record: {exc}") from exc


def _optional_bytes(name: str, v: Any) -> bytes | None:
    if v is None or isinstance(v, bytes):
        return v
    raise SchemaError(f"field {name!r}: expected bytes or nil")


@dataclass(frozen=True, kw_only=True, slots=True)
class SegmentScan:
    """What ``scan_segment`` found in one log segment."""

    records: list[Record] = field(default_factory=list)
    #: Offset just past the last good record: where appending resumes.
    good_end: int = len(SEGMENT_MAGIC)
    #: Bytes after ``good_end`` that are a torn final write (0 when the segment is clean).
    torn_bytes: int = 0


def _is_zeros(data: bytes, start: int) -> bool:
    return data.count(0, start) == len(data) - start


def scan_segment(
    data: bytes, *, last: bool, name: str = "segment", salvage: bool = False
) -> SegmentScan:
    """Parse a whole segment file.

    A torn tail is tolerated only in the ``last`` segment (older ones were fsynced before
    the log moved on) and only when it looks like an interrupted append: a header cut
    short, a well-formed header announcing more bytes than the file has, a final record
    whose payload checksum fails, or a zero-filled remainder (what a crash can leave after
    the file size was extended but its blocks were not written).  Anything else, such as a
    bad record with good records after it, raises ``CorruptStateError``: truncating there
    would throw away writes that were acknowledged.

    ``salvage`` (recovering a damaged log): never raise; the records up to the first bad
    one are returned, ``torn_bytes`` counts the rest (``good_end`` 0: not a segment at all).
    """
    if not data.startswith(SEGMENT_MAGIC):
        if salvage:
            return SegmentScan(records=[], good_end=0, torn_bytes=len(data))
        raise CorruptStateError(f"{name}: not a log segment (bad magic)", rule="corrupt-log")
    records: list[Record] = []
    pos = len(SEGMENT_MAGIC)
    end = len(data)

    def torn_or_corrupt(why: str) -> SegmentScan:
        if last or salvage:
            return SegmentScan(records=records, good_end=pos, torn_bytes=end - pos)
        raise CorruptStateError(f"{name}: {why} at offset {pos}", rule="corrupt-log")

    while pos < end:
        if end - pos < RECORD_HEADER.size:
            return torn_or_corrupt("record header cut short")
        length, payload_crc, header_crc = RECORD_HEADER.unpack_from(data, pos)
        if zlib.crc32(data[pos : pos + 8]) != header_crc or not 0 < length <= MAX_RECORD_BYTES:
            if _is_zeros(data, pos) or salvage:
                return torn_or_corrupt("zero-filled tail")
            raise CorruptStateError(
                f"{name}: corrupt record header at offset {pos}", rule="corrupt-log"
            )
        body = pos + RECORD_HEADER.size
        if body + length > end:
            return torn_or_corrupt("record cut short")
        payload = data[body : body + length]
        if zlib.crc32(payload) != payload_crc:
            if body + length == end or _is_zeros(data, body + length) or salvage:
                return torn_or_corrupt("final record checksum mismatch")
            raise CorruptStateError(
                f"{name}: record checksum mismatch at offset {pos} with records after it",
                rule="corrupt-log",
            )
        try:
            records.append(Record.decode_payload(payload))
        except WireError as exc:  # the checksum held: this is not a torn write
            if salvage:
                return torn_or_corrupt("unreadable record")
            raise CorruptStateError(
                f"{name}: unreadable record at offset {pos}: {exc}", rule="corrupt-log"
            ) from exc
        pos = body + length
    return SegmentScan(records=records, good_end=pos, torn_bytes=0)


# -- snapshots (and checkpoints) ----------------------------------------------------------

SNAPSHOT_FORMAT: Final = "p2pupdate-kv/1"
STORE_ID_BYTES: Final = 16


@dataclass(frozen=True, kw_only=True)
class StoreLimits:
    """Caps on what one store holds; they also bound a snapshot before it is parsed."""

    max_keys: int = 100_000
    #: Sum over entries of UTF-8 key bytes + value bytes.
    max_store_bytes: int = 64 * 1024 * 1024

    @property
    def max_snapshot_bytes(self) -> int:
        # per entry: up to 3 bytes of str header and 5 of bin header; plus the envelope
        return self.max_store_bytes + 8 * self.max_keys + 1024

    def snapshot_limits(self) -> wire.Limits:
        return wire.Limits(
            max_bytes=self.max_snapshot_bytes,
            max_depth=2,
            max_container_len=max(self.max_keys, 8),
            max_str_len=MAX_KEY_BYTES,
            max_bin_len=MAX_VALUE_BYTES,
            max_items=2 * self.max_keys + 16,
        )


def entry_size(key: str, value: bytes) -> int:
    return key_bytes(key) + len(value)


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The whole map at log position ``lsn`` of store ``store_id``."""

    store_id: bytes
    lsn: int
    data: Mapping[str, bytes]

    def encode(self) -> bytes:
        return wire.encode(
            {
                "format": SNAPSHOT_FORMAT,
                "store": self.store_id,
                "lsn": self.lsn,
                "data": dict(self.data),
            }
        )

    @classmethod
    def decode(cls, blob: bytes, limits: StoreLimits) -> Snapshot:
        """Parse and check a snapshot.  Raises only ``CorruptStateError``."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise CorruptStateError(
                f"expected bytes, got {type(blob).__name__}", rule="bad-snapshot"
            )
        try:
            obj = wire.decode(bytes(blob), limits.snapshot_limits())
            fields = wire.check_fields(
                obj,
                {
                    "format": wire.one_of(SNAPSHOT_FORMAT),
                    "store": wire.blob(STORE_ID_BYTES, STORE_ID_BYTES),
                    "lsn": wire.uint(MAX_ID),
                    "data": _check_data(limits),
                },
                where="snapshot",
            )
        except WireError as exc:
            raise CorruptStateError(
                f"snapshot: {exc.rule}: {exc.message}", rule="bad-snapshot"
            ) from exc
        return cls(store_id=fields["store"], lsn=fields["lsn"], data=fields["data"])


def _check_data(limits: StoreLimits) -> wire.Check:
    def check(name: str, v: Any) -> dict[str, bytes]:
        if not isinstance(v, dict):
            raise SchemaError(f"field {name!r}: expected a map")
        if len(v) > limits.max_keys:
            raise SchemaError(f"field {name!r}: more than {limits.max_keys} keys")
        total = 0
        for key, value in v.items():
            if not isinstance(value, bytes):
                raise SchemaError(f"field {name!r}: value of {key!r} is not bytes")
            try:
                _check_key(key)
                _check_value(value)
            except ValueError as exc:
                raise SchemaError(f"field {name!r}: {exc}") from exc
            total += entry_size(key, value)
        if total > limits.max_store_bytes:
            raise SchemaError(f"field {name!r}: {total} bytes exceeds {limits.max_store_bytes}")
        return v

    return check
