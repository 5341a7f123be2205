"""Swarm messages: one frozen class per kind, a msgpack map checked against an exact schema.

Every message is ``{"k": KIND, "a": ARTIFACT, ...FIELDS}``: each names its artifact (32
bytes on the wire, the hex sha256 in memory), so a block replayed from another artifact is
refused as unsolicited before its bytes are even hashed, and one link carries the sessions
of several artifacts.  Every kind starts with ``sw_`` so a shell that shares a link with
gossip can tell the two apart by the kind alone (``is_swarm_kind``).

============  =============================================================================
``sw_bf``     ``Bitfield``: the chunks the sender holds verified, sent once at session start
              (``ceil(count / 8)`` bytes, bit ``i`` is chunk ``i``, most significant first),
              and the layout of its chunk map (trading needs the same cut)
``sw_have``   ``Have``: one more chunk verified (sent to every session of the artifact)
``sw_req``    ``Request``: bytes ``[offset, offset + length)`` of one chunk, at most
              ``MAX_BLOCK`` (and at most what the receiver's ``SwarmConfig.max_block`` says)
``sw_blk``    ``Block``: the answer to a ``Request``, its bytes
``sw_cancel`` ``Cancel``: a request no longer wanted (it came from elsewhere: endgame)
``sw_rej``    ``Reject``: a request that will not be served, and why (``REJECT_REASONS``)
============  =============================================================================

``decode_message`` checks the size first, then scans under wire limits, then the kind (an
unknown kind is a ``SchemaError`` with rule ``unknown-message``), then that kind's size cap
and exact schema.  A message that fails is the sender's fault (``penalties.rule_for``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self

from .. import wire
from ..documents import MAX_CHUNK, MAX_CHUNKS
from ..errors import OversizeError, SchemaError
from .chunks import ChunkMap

#: The largest block any peer may ask for or send (a block is one link frame).
MAX_BLOCK: Final = 256 * 1024
#: What a ``Block`` message adds to its bytes (map, kind, artifact, index, offset, bin header),
#: with room to spare: ``max_block`` must be at most a link's frame limit less this.
BLOCK_OVERHEAD: Final = 128
#: Every message but a ``Block``: the largest is a bitfield of ``MAX_CHUNKS`` bits.
MAX_SMALL_BYTES: Final = MAX_CHUNKS // 8 + BLOCK_OVERHEAD
MAX_MESSAGE_BYTES: Final = MAX_BLOCK + BLOCK_OVERHEAD
KIND_PREFIX: Final = "sw_"
#: Why a request is not served: ``missing`` (not held: a lie if the sender advertised it),
#: ``choked`` (no upload slot for this peer now), ``busy`` (its queue is full).
REJECT_REASONS: Final = ("missing", "choked", "busy")
ARTIFACT_LEN: Final = 32


def is_swarm_kind(kind: object) -> bool:
    """Whether a decoded message kind belongs to the swarm (and not to gossip)."""
    return isinstance(kind, str) and kind.startswith(KIND_PREFIX)


def bitfield_len(count: int) -> int:
    """Bytes of a bitfield of ``count`` chunks."""
    return (count + 7) // 8


def pack_bits(held: Iterable[int], count: int) -> bytes:
    """The bitfield of ``held`` among ``count`` chunks."""
    out = bytearray(bitfield_len(count))
    for i in held:
        if not 0 <= i < count:
            raise ValueError(f"chunk {i} is not one of {count}")
        out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def unpack_bits(bits: bytes, count: int) -> frozenset[int]:
    """The chunks a bitfield of ``count`` chunks names; ``SchemaError`` if it does not fit."""
    if len(bits) != bitfield_len(count):
        raise SchemaError(f"bitfield of {len(bits)} bytes for {count} chunks")
    spare = bitfield_len(count) * 8 - count
    if spare and bits[-1] & ((1 << spare) - 1):
        raise SchemaError("bitfield: spare bits set")
    return frozenset(i for i in range(count) if bits[i >> 3] & (0x80 >> (i & 7)))


def _check_artifact(artifact: str, where: str) -> None:
    if len(artifact) != 2 * ARTIFACT_LEN or artifact.strip("0123456789abcdef"):
        raise ValueError(f"{where}: artifact must be 64 lowercase hex chars")


_index: Final = wire.uint(MAX_CHUNKS - 1)
_offset: Final = wire.uint(MAX_CHUNK)
_length: Final = wire.uint(MAX_BLOCK)


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """A swarm message about one artifact."""

    KIND: ClassVar[str] = ""
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {}
    MAX_BYTES: ClassVar[int] = MAX_SMALL_BYTES

    artifact: str

    def __post_init__(self) -> None:
        _check_artifact(self.artifact, type(self).__name__)

    def to_obj(self) -> dict[str, Any]:
        return {}

    def to_wire(self) -> bytes:
        obj = {"k": self.KIND, "a": bytes.fromhex(self.artifact), **self.to_obj()}
        data = wire.encode(obj)
        if len(data) > self.MAX_BYTES:  # constructors bound every field: a local bug
            raise ValueError(f"{self.KIND} message of {len(data)} bytes exceeds {self.MAX_BYTES}")
        return data

    @classmethod
    def from_fields(cls, artifact: str, f: dict[str, Any]) -> Self:
        return cls(artifact=artifact)


@dataclass(frozen=True, kw_only=True, slots=True)
class Bitfield(Message):
    """What the sender holds verified, at session start, and how its release cuts the
    artifact (``layout``: ``ChunkMap.layout``; peers whose layouts differ do not trade).
    ``count`` is the number of chunks of that cut."""

    KIND: ClassVar[str] = "sw_bf"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {
        "m": wire.blob(32),
        "n": wire.uint(MAX_CHUNKS),
        "b": wire.blob(max_len=bitfield_len(MAX_CHUNKS)),
    }
    layout: bytes
    count: int
    bits: bytes

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if not 1 <= self.count <= MAX_CHUNKS or len(self.layout) != 32:
            raise ValueError(f"Bitfield: count in [1, {MAX_CHUNKS}], a 32-byte layout")
        try:
            unpack_bits(self.bits, self.count)
        except SchemaError as exc:
            raise ValueError(f"Bitfield: {exc}") from exc

    @classmethod
    def of(cls, chunk_map: ChunkMap, held: Iterable[int]) -> Bitfield:
        return cls(
            artifact=chunk_map.artifact,
            layout=chunk_map.layout,
            count=chunk_map.count,
            bits=pack_bits(set(held), chunk_map.count),
        )

    def held(self) -> frozenset[int]:
        return unpack_bits(self.bits, self.count)

    def to_obj(self) -> dict[str, Any]:
        return {"m": self.layout, "n": self.count, "b": self.bits}

    @classmethod
    def from_fields(cls, artifact: str, f: dict[str, Any]) -> Self:
        if f["n"] < 1:
            raise SchemaError("sw_bf: no chunks")
        unpack_bits(f["b"], f["n"])  # a SchemaError names the misfit
        return cls(artifact=artifact, layout=f["m"], count=f["n"], bits=f["b"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Have(Message):
    """The sender verified chunk ``chunk`` (it may now be asked for it)."""

    KIND: ClassVar[str] = "sw_have"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {"c": _index}
    chunk: int

    def to_obj(self) -> dict[str, Any]:
        return {"c": self.chunk}

    @classmethod
    def from_fields(cls, artifact: str, f: dict[str, Any]) -> Self:
        return cls(artifact=artifact, chunk=f["c"])


@dataclass(frozen=True, kw_only=True, slots=True)
class _Span(Message):
    """A block of a chunk: ``length`` bytes from ``offset`` (both within the chunk)."""

    FIELDS: ClassVar[Mapping[str, wire.Check]] = {"c": _index, "o": _offset, "l": _length}
    chunk: int
    offset: int
    length: int

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if not 0 <= self.chunk < MAX_CHUNKS or not 0 <= self.offset <= MAX_CHUNK:
            raise ValueError(f"{type(self).__name__}: chunk or offset out of range")
        if not 1 <= self.length <= MAX_BLOCK:
            raise ValueError(f"{type(self).__name__}.length must be in [1, {MAX_BLOCK}]")

    def to_obj(self) -> dict[str, Any]:
        return {"c": self.chunk, "o": self.offset, "l": self.length}

    @classmethod
    def from_fields(cls, artifact: str, f: dict[str, Any]) -> Self:
        if f["l"] < 1:
            raise SchemaError(f"{cls.KIND}: empty block")
        return cls(artifact=artifact, chunk=f["c"], offset=f["o"], length=f["l"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Request(_Span):
    """ "Send me these bytes of this chunk" (a chunk you hold verified)."""

    KIND: ClassVar[str] = "sw_req"


@dataclass(frozen=True, kw_only=True, slots=True)
class Cancel(_Span):
    """ "Never mind that request" (answering it anyway is harmless, just wasted)."""

    KIND: ClassVar[str] = "sw_cancel"


@dataclass(frozen=True, kw_only=True, slots=True)
class Reject(_Span):
    """ "I will not serve that request", and why (one of ``REJECT_REASONS``)."""

    KIND: ClassVar[str] = "sw_rej"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {
        **_Span.FIELDS,
        "r": wire.one_of(*REJECT_REASONS),
    }
    reason: str

    def __post_init__(self) -> None:
        _Span.__post_init__(self)
        if self.reason not in REJECT_REASONS:
            raise ValueError(f"Reject.reason must be one of {', '.join(REJECT_REASONS)}")

    def to_obj(self) -> dict[str, Any]:
        return {**_Span.to_obj(self), "r": self.reason}

    @classmethod
    def from_fields(cls, artifact: str, f: dict[str, Any]) -> Self:
        if f["l"] < 1:
            raise SchemaError("sw_rej: empty block")
        return cls(artifact=artifact, chunk=f["c"], offset=f["o"], length=f["l"], reason=f["r"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Block(Message):
    """The bytes of a request: ``data`` from ``offset`` of chunk ``chunk``."""

    KIND: ClassVar[str] = "sw_blk"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {
        "c": _index,
        "o": _offset,
        "d": wire.blob(max_len=MAX_BLOCK),
    }
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    chunk: int
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if not 1 <= len(self.data) <= MAX_BLOCK:
            raise ValueError(f"Block.data must be 1-{MAX_BLOCK} bytes")

    def to_obj(self) -> dict[str, Any]:
        return {"c": self.chunk, "o": self.offset, "d": self.data}

    @classmethod
    def from_fields(cls, artifact: str, f: dict[str, Any]) -> Self:
        if not f["d"]:
            raise SchemaError("sw_blk: empty block")
        return cls(artifact=artifact, chunk=f["c"], offset=f["o"], data=f["d"])


#: Every message kind.  A kind not listed here is "unknown" and costs the sender.
MESSAGE_TYPES: Final[Mapping[str, type[Message]]] = {
    c.KIND: c for c in (Bitfield, Have, Request, Block, Cancel, Reject)
}

_LIMITS: Final = wire.Limits(
    max_bytes=MAX_MESSAGE_BYTES, max_depth=1, max_container_len=8, max_str_len=16,
    max_bin_len=MAX_BLOCK, max_items=16,
)  # fmt: skip


#: Messages up to this size (``have``, ``request``, ``cancel``, ``reject``: no bitfield or
#: block) are decoded once per distinct bytes: a node gets the same ``have`` from every
#: peer that verified the chunk, so most are repeats (a cache of frozen values, pure).
SMALL_CACHED: Final = 96
DECODE_CACHE: Final = 4096


def decode_message(data: bytes) -> Message:
    """Bytes from a peer -> one message, or a ``WireError`` saying what was wrong."""
    if len(data) <= SMALL_CACHED:
        return _decode_small(bytes(data))
    return _decode(data)


@functools.lru_cache(maxsize=DECODE_CACHE)
def _decode_small(data: bytes) -> Message:
    return _decode(data)  # a WireError is raised, not cached: bad bytes are checked each time


def _decode(data: bytes) -> Message:
    size = len(data)
    if size > MAX_MESSAGE_BYTES:
        raise OversizeError(f"swarm message of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
    obj = wire.decode(data, _LIMITS)
    if not isinstance(obj, dict):
        raise SchemaError(f"swarm message: expected a map, got {type(obj).__name__}")
    kind = obj.pop("k", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SchemaError(f"unknown swarm message kind {kind!r}", rule="unknown-message")
    if size > cls.MAX_BYTES:
        raise OversizeError(f"{kind} message of {size} bytes exceeds {cls.MAX_BYTES}")
    artifact = wire.blob(ARTIFACT_LEN)("a", obj.pop("a", None)).hex()
    return cls.from_fields(artifact, wire.check_fields(obj, cls.FIELDS, where=f"{kind} message"))
