"""Gossip messages: one frozen class per kind, a msgpack map checked against an exact schema.

Every message is ``{"k": KIND, ...FIELDS}`` and at most ``MAX_MESSAGE_BYTES`` (1,200) long,
except a ``Doc``, which only ever answers our own ``IWant`` and may carry any signed
document, and the two that carry a signaling blob (``Relay``, ``Relayed``: at most
``coordproto.MAX_SIGNAL`` bytes of it, the bound of the coordinator's own relay).
``decode_message`` checks the size first, then scans the bytes under wire
limits, then looks the kind up in ``MESSAGE_TYPES`` (an unknown kind is a ``SchemaError``
with rule ``unknown-message``), then applies that kind's size cap and exact schema.  A
message that fails any step is the sender's fault: the front charges it the penalty
``reputation.rule_for`` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self, cast

from .. import wire
from ..coordproto import MAX_SIGNAL
from ..errors import OversizeError, SchemaError
from .config import (
    HEARTBEAT_HOPS_MAX,
    ID_LEN,
    MAX_CONTACTS,
    MAX_DOC_MESSAGE_BYTES,
    MAX_IDS,
    MAX_INLINE_DOC,
    MAX_MESSAGE_BYTES,
    MAX_POOLS,
    MAX_RELAY_MESSAGE_BYTES,
    MAX_TTL,
)
from .values import Contact, check_node

_CONTACT_FIELDS: Final[Mapping[str, wire.Check]] = {
    "n": wire.blob(ID_LEN),
    "h": wire.text(64, nonempty=True),
    "p": wire.uint(65535),
}


def _contact(name: str, v: Any) -> Contact:
    f = wire.check_fields(v, _CONTACT_FIELDS, where=name)
    try:
        return Contact(node=f["n"].hex(), host=f["h"], port=f["p"])
    except ValueError as exc:
        raise SchemaError(f"{name}: {exc}") from exc


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """A gossip message: a msgpack map ``{"k": KIND, ...FIELDS}``, checked exactly."""

    KIND: ClassVar[str] = ""
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {}
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES

    def to_obj(self) -> dict[str, Any]:
        return {}

    def to_wire(self) -> bytes:
        data = wire.encode({"k": self.KIND, **self.to_obj()})
        if len(data) > self.MAX_BYTES:  # constructors bound every field: a local bug
            raise ValueError(f"{self.KIND} message of {len(data)} bytes exceeds {self.MAX_BYTES}")
        return data

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls()

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        msg = decode_message(data)
        if not isinstance(msg, cls):
            raise SchemaError(f"expected a {cls.KIND!r} message, got {msg.KIND!r}")
        return msg


def _contacts(name: str, v: Any) -> tuple[Contact, ...]:
    return cast(tuple[Contact, ...], wire.array(_contact, MAX_CONTACTS)(name, v))


def _check_contacts(peers: tuple[Contact, ...], where: str) -> None:
    if len(peers) > MAX_CONTACTS:
        raise ValueError(f"{where}: at most {MAX_CONTACTS} contacts")


def _check_ids(ids: tuple[bytes, ...], where: str) -> None:
    if len(ids) > MAX_IDS or any(len(i) != ID_LEN for i in ids):
        raise ValueError(f"{where}: at most {MAX_IDS} ids of {ID_LEN} bytes")


_ids_check: Final = wire.array(wire.blob(ID_LEN), MAX_IDS, unique=True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Join(Message):
    """ "Add me to your active view and introduce me": a newcomer to its first contact."""

    KIND: ClassVar[str] = "join"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {"me": _contact}
    me: Contact

    def to_obj(self) -> dict[str, Any]:
        return {"me": self.me.to_obj()}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(me=f["me"])


@dataclass(frozen=True, kw_only=True, slots=True)
class ForwardJoin(Message):
    """A newcomer's random walk: ``ttl`` 0 (or a lonely node) links to it."""

    KIND: ClassVar[str] = "fjoin"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {"who": _contact, "ttl": wire.uint(MAX_TTL)}
    who: Contact
    ttl: int

    def to_obj(self) -> dict[str, Any]:
        return {"who": self.who.to_obj(), "ttl": self.ttl}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(who=f["who"], ttl=f["ttl"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Neighbor(Message):
    """ "Take me into your active view"; ``high``: my active view is empty, make room."""

    KIND: ClassVar[str] = "nbr"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {"me": _contact, "high": wire.boolean()}
    me: Contact
    high: bool

    def to_obj(self) -> dict[str, Any]:
        return {"me": self.me.to_obj(), "high": self.high}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(me=f["me"], high=f["high"])


@dataclass(frozen=True, kw_only=True, slots=True)
class NeighborReply(Message):
    """The answer to ``Neighbor`` or ``Join``; a refusal suggests other contacts to try.

    (Peer exchange on refusal: without it, a node whose few contacts are all full would
    wait for a shuffle to learn anyone else.)
    """

    KIND: ClassVar[str] = "nbr_r"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {"ok": wire.boolean(), "peers": _contacts}
    ok: bool
    peers: tuple[Contact, ...] = ()

    def __post_init__(self) -> None:
        _check_contacts(self.peers, "NeighborReply")

    def to_obj(self) -> dict[str, Any]:
        return {"ok": self.ok, "peers": [c.to_obj() for c in self.peers]}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(ok=f["ok"], peers=f["peers"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Prune(Message):
    """ "You are out of my active view" (HyParView's DISCONNECT); the link then closes."""

    KIND: ClassVar[str] = "prune"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {}


@dataclass(frozen=True, kw_only=True, slots=True)
class _ContactList(Message):
    """Messages that are a sample of contacts and nothing else."""

    FIELDS: ClassVar[Mapping[str, wire.Check]] = {"peers": _contacts}
    peers: tuple[Contact, ...]

    def __post_init__(self) -> None:
        _check_contacts(self.peers, type(self).__name__)

    def to_obj(self) -> dict[str, Any]:
        return {"peers": [c.to_obj() for c in self.peers]}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(peers=f["peers"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Shuffle(_ContactList):
    """A sample of the sender's views (itself first), for the receiver's passive view."""

    KIND: ClassVar[str] = "shuf"


@dataclass(frozen=True, kw_only=True, slots=True)
class ShuffleReply(_ContactList):
    """The receiver's passive sample in return."""

    KIND: ClassVar[str] = "shuf_r"


@dataclass(frozen=True, kw_only=True, slots=True)
class HeartbeatMessage(Message):
    """A signed heartbeat envelope, to be forwarded ``hops`` more times."""

    KIND: ClassVar[str] = "hb"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {
        "doc": wire.blob(max_len=MAX_INLINE_DOC),
        "hops": wire.uint(HEARTBEAT_HOPS_MAX),
    }
    doc: bytes
    hops: int

    def to_obj(self) -> dict[str, Any]:
        return {"doc": self.doc, "hops": self.hops}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(doc=f["doc"], hops=f["hops"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Rumor(Message):
    """A signed document small enough to travel inline."""

    KIND: ClassVar[str] = "rumor"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {"doc": wire.blob(max_len=MAX_INLINE_DOC)}
    doc: bytes

    def to_obj(self) -> dict[str, Any]:
        return {"doc": self.doc}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(doc=f["doc"])


@dataclass(frozen=True, kw_only=True, slots=True)
class _IdList(Message):
    """Messages that are a list of rumor ids and nothing else."""

    FIELDS: ClassVar[Mapping[str, wire.Check]] = {"ids": _ids_check}
    ids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _check_ids(self.ids, type(self).__name__)

    def to_obj(self) -> dict[str, Any]:
        return {"ids": list(self.ids)}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(ids=f["ids"])


@dataclass(frozen=True, kw_only=True, slots=True)
class IHave(_IdList):
    """Rumor ids the sender holds (large rumors, and what a ``Digest`` lacked)."""

    KIND: ClassVar[str] = "ihave"


@dataclass(frozen=True, kw_only=True, slots=True)
class IWant(_IdList):
    """Send me these documents (each comes back as a ``Doc``)."""

    KIND: ClassVar[str] = "iwant"


@dataclass(frozen=True, kw_only=True, slots=True)
class Digest(_IdList):
    """Anti-entropy: the ids of the documents the sender holds (newest per slot)."""

    KIND: ClassVar[str] = "digest"


@dataclass(frozen=True, kw_only=True, slots=True)
class Doc(Message):
    """A signed document of any size, only ever as the answer to our ``IWant``."""

    KIND: ClassVar[str] = "doc"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {
        "doc": wire.blob(max_len=wire.DOCUMENT_LIMITS.max_bytes)
    }
    MAX_BYTES: ClassVar[int] = MAX_DOC_MESSAGE_BYTES
    doc: bytes

    def to_obj(self) -> dict[str, Any]:
        return {"doc": self.doc}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(doc=f["doc"])


def _check_blob(node: str, data: bytes, where: str) -> None:
    check_node(node, where)
    if len(data) > MAX_SIGNAL:
        raise ValueError(f"{where}: a signaling blob is at most {MAX_SIGNAL} bytes")


@dataclass(frozen=True, kw_only=True, slots=True)
class Relay(Message):
    """ "Pass this signaling blob to node ``to``": to a linked peer, which forwards it (as
    ``Relayed``) only if it links to ``to`` -- so two nodes can set up an rtc link through a
    peer both link to while no replica is reachable (see ``relay``)."""

    KIND: ClassVar[str] = "relay"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {
        "to": wire.blob(ID_LEN),
        "data": wire.blob(max_len=MAX_SIGNAL),
    }
    MAX_BYTES: ClassVar[int] = MAX_RELAY_MESSAGE_BYTES
    to: str
    data: bytes

    def __post_init__(self) -> None:
        _check_blob(self.to, self.data, "Relay")

    def to_obj(self) -> dict[str, Any]:
        return {"to": bytes.fromhex(self.to), "data": self.data}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(to=f["to"].hex(), data=f["data"])


@dataclass(frozen=True, kw_only=True, slots=True)
class Relayed(Message):
    """A blob node ``sender`` asked the sending peer to pass to us; never forwarded again."""

    KIND: ClassVar[str] = "relayed"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {
        "from": wire.blob(ID_LEN),
        "data": wire.blob(max_len=MAX_SIGNAL),
    }
    MAX_BYTES: ClassVar[int] = MAX_RELAY_MESSAGE_BYTES
    sender: str
    data: bytes

    def __post_init__(self) -> None:
        _check_blob(self.sender, self.data, "Relayed")

    def to_obj(self) -> dict[str, Any]:
        return {"from": bytes.fromhex(self.sender), "data": self.data}

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(sender=f["from"].hex(), data=f["data"])


_MAX_SUM: Final = 1e18
_MAX_FLOW_WEIGHT: Final = 1e6


def _pool_sums(name: str, v: Any) -> dict[str, tuple[float, float, float, float]]:
    """``{pool: [capacity, load, serving, nodes]}``, each a finite number in [0, 1e18].

    Written out by hand (rather than composed from ``wire`` checks): every node decodes
    a few of these per round, and at simulation scale this is the hottest schema.
    """
    if not isinstance(v, dict):
        raise SchemaError(f"field {name!r}: expected a map, got {type(v).__name__}")
    if len(v) > MAX_POOLS:
        raise SchemaError(f"field {name!r}: more than {MAX_POOLS} pools")
    out: dict[str, tuple[float, float, float, float]] = {}
    for pool, sums in v.items():
        if not isinstance(pool, str) or len(pool) > 64:
            raise SchemaError(f"field {name!r}: pool names are strings of at most 64 chars")
        if type(sums) is not list or len(sums) != 4:
            raise SchemaError(f"field {name!r}: pool {pool!r} needs a list of 4 sums")
        vals = []
        for x in sums:
            if type(x) is int:
                x = float(x)
            # NaN fails both comparisons; +-inf fails one
            if type(x) is not float or not 0.0 <= x <= _MAX_SUM:
                raise SchemaError(f"field {name!r}: pool {pool!r}: sums are numbers in [0, 1e18]")
            vals.append(x)
        out[pool] = (vals[0], vals[1], vals[2], vals[3])
    return out


def _flow_weight(name: str, v: Any) -> float:
    if type(v) is int:
        v = float(v)
    if type(v) is not float or not 0.0 <= v <= _MAX_FLOW_WEIGHT:
        raise SchemaError(f"field {name!r}: expected a finite number in [0, 1e6]")
    return v


@dataclass(frozen=True, kw_only=True, slots=True)
class Aggregate(Message):
    """A push-sum share, as a running sum: everything (weight, per-pool sums) this sender
    has passed to the receiver so far in this epoch's instance, which ``leader`` names.

    The receiver credits the difference with the previous running sum from the same
    sender (ratio consensus with running sums, Dominguez-Garcia & Hadjicostis).  Without
    loss that is exactly push-sum; a lost share is simply carried again by the next
    message on the same edge.  (Push-flow, where both ends write one edge variable,
    also survives loss, but messages that cross corrupt it for a while.)
    """

    KIND: ClassVar[str] = "agg"
    FIELDS: ClassVar[Mapping[str, wire.Check]] = {
        "e": wire.uint(2**53),
        "l": wire.blob(ID_LEN),
        "w": _flow_weight,
        "s": _pool_sums,
    }
    epoch: int
    leader: str
    weight: float
    sums: Mapping[str, tuple[float, float, float, float]]

    def __post_init__(self) -> None:
        if len(self.sums) > MAX_POOLS:
            raise ValueError(f"Aggregate: at most {MAX_POOLS} pools")

    def to_obj(self) -> dict[str, Any]:
        return {
            "e": self.epoch,
            "l": bytes.fromhex(self.leader),
            "w": self.weight,
            "s": {p: list(v) for p, v in self.sums.items()},
        }

    @classmethod
    def from_fields(cls, f: dict[str, Any]) -> Self:
        return cls(epoch=f["e"], leader=f["l"].hex(), weight=f["w"], sums=f["s"])


#: Every message kind.  A kind not listed here is "unknown" and costs the sender.
MESSAGE_TYPES: Final[Mapping[str, type[Message]]] = {
    c.KIND: c
    for c in (
        Join,
        ForwardJoin,
        Neighbor,
        NeighborReply,
        Prune,
        Shuffle,
        ShuffleReply,
        HeartbeatMessage,
        Rumor,
        IHave,
        IWant,
        Digest,
        Doc,
        Aggregate,
        Relay,
        Relayed,
    )
}

#: Small messages: at most 1,200 bytes, shallow, few items.
_SMALL_LIMITS: Final = wire.Limits(
    max_bytes=MAX_MESSAGE_BYTES, max_depth=4, max_container_len=64, max_str_len=128,
    max_bin_len=MAX_INLINE_DOC, max_items=512,
)  # fmt: skip
#: The large messages (``Doc``, ``Relay``, ``Relayed``): a map of two or three entries, one
#: of them a big bin.
_LARGE_LIMITS: Final = wire.Limits(
    max_bytes=MAX_DOC_MESSAGE_BYTES, max_depth=1, max_container_len=3, max_str_len=16,
    max_bin_len=wire.DOCUMENT_LIMITS.max_bytes, max_items=8,
)  # fmt: skip


def decode_message(data: bytes) -> Message:
    """Bytes from a peer -> one message, or a ``WireError`` saying what was wrong.

    Size first (``OversizeError``), then the wire scan, then the kind (an unknown kind is a
    ``SchemaError`` with rule ``unknown-message``), then that kind's size cap and exact schema.
    """
    size = len(data)
    if size > MAX_DOC_MESSAGE_BYTES:
        raise OversizeError(f"message of {size} bytes exceeds {MAX_DOC_MESSAGE_BYTES}")
    obj = wire.decode(data, _SMALL_LIMITS if size <= MAX_MESSAGE_BYTES else _LARGE_LIMITS)
    if not isinstance(obj, dict):
        raise SchemaError(f"message: expected a map, got {type(obj).__name__}")
    kind = obj.pop("k", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SchemaError(f"unknown message kind {kind!r}", rule="unknown-message")
    if size > cls.MAX_BYTES:
        raise OversizeError(f"{kind} message of {size} bytes exceeds {cls.MAX_BYTES}")
    return cls.from_fields(wire.check_fields(obj, cls.FIELDS, where=f"{kind} message"))
