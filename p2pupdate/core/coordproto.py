"""The node <-> coordinator protocol: request and answer schemas, one frozen class each.

After the handshake (:mod:`p2pupdate.core.session`) every message is ``mac || payload``
(README "Protocol")::

    node:   payload = msgpack {"t": kind, "seq": n, ...kind's fields}
    server: payload = msgpack {"id": n, "ok": true, ...answer}
                    | msgpack {"id": n, "ok": false, "error", "detail"}
                    | msgpack {"push": "nudge" | "doc" | "signal", ...}   (any time)

``seq`` strictly increases per connection (replays are refused) and is the answer's
``id``; the kind is inside what is MACed, so one kind's request cannot pass for another's.
Request kinds: ``status`` (version, state, pool, the node's gossip aggregate estimate, why
gates 1-2 hold it), ``ask`` (a proposed departure token payload + the node's capacity and
load), ``rejoined`` / ``failed`` / ``return`` (end a lease; failures feed the circuit
breaker), ``docs`` (current allowlist, scope, release records), ``peers``
(introductions), ``signal`` (relay opaque bytes to another connected node: WebRTC
signaling).

Each request kind is one frozen keyword-only dataclass, validated on construction (the
same checks whether the node builds it or the server decodes it), with ``to_wire`` /
``from_wire``; the server decodes with :func:`open_request`, the node seals with
:func:`seal_request`.  Each answer is one frozen class too (:data:`Answer`); the server
sends ``to_wire()`` with the request's ``id``.  The node reads the ask answers back with
``AskRefusal.from_wire`` (leniently: a replica is trusted to refuse, not to be well
formed) and checks a grant's signature itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, Self

from . import documents as docs
from . import wire
from .errors import SchemaError, VerificationError
from .session import HANDSHAKE_LIMITS, Session

__all__ = [
    "ANSWER_LIMITS",
    "MAX_PEERS",
    "MAX_SIGNAL",
    "NODE_PATH",
    "REQUESTS",
    "REQUEST_LIMITS",
    "TOKEN_NONCE_LEN",
    "Ack",
    "Answer",
    "AskGrant",
    "AskRefusal",
    "AskRequest",
    "DocsAnswer",
    "DocsRequest",
    "DocumentPush",
    "ErrorAnswer",
    "Estimate",
    "FailedAck",
    "FailedReport",
    "Held",
    "Peer",
    "PeersAnswer",
    "PeersRequest",
    "Push",
    "RejoinedReport",
    "Request",
    "ReturnReport",
    "SignalPush",
    "SignalRequest",
    "StatusReport",
    "fast_hex_digest",
    "open_request",
    "request_of",
    "seal_request",
]

NODE_PATH: Final = "/v1/node"
TOKEN_NONCE_LEN: Final = 16
#: Node -> server messages (small; a signaling blob is the largest): the handshake's bounds.
REQUEST_LIMITS: Final = HANDSHAKE_LIMITS
#: Server -> node messages: a ``docs`` answer carries release records (up to ~1 MiB each).
ANSWER_LIMITS: Final = wire.Limits(
    max_bytes=8 * 1024 * 1024,
    max_bin_len=2 * 1024 * 1024,
    max_container_len=4096,
    max_items=20_000,
)
MAX_SIGNAL: Final = 8 * 1024
MAX_PEERS: Final = 32

_HEX64 = re.compile(r"[0-9a-f]{64}")


def _fast_hex_digest(name: str, v: Any) -> str:
    """``wire.hex_digest`` with a regex: the same rule, ~20x faster (the ask path checks
    five digests per request)."""
    if type(v) is not str or _HEX64.fullmatch(v) is None:
        raise SchemaError(f"field {name!r}: expected 64 lowercase hex chars")
    return v


fast_hex_digest: Final[wire.Check] = _fast_hex_digest
_reason = wire.text(512)
_nonce = wire.blob(max_len=TOKEN_NONCE_LEN)


def _exact_keys(obj: Any, names: tuple[str, ...], *, where: str) -> dict[str, Any]:
    """``obj`` as a map with exactly ``names`` as keys (values checked by the class)."""
    return wire.check_fields(obj, dict.fromkeys(names, lambda _n, v: v), where=where)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Value:
    """A frozen value checked (and normalised: lists become tuples) by ``CHECKS``."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {}
    WHERE: ClassVar[str] = "value"

    def __post_init__(self) -> None:
        for name, check in self.CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))

    def to_wire(self) -> dict[str, Any]:
        return {f.name: _out(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        """Decode a map; raises ``SchemaError`` (missing, unknown or bad fields)."""
        names = tuple(f.name for f in fields(cls))
        return cls(**_exact_keys(obj, names, where=cls.WHERE))


def _out(value: Any) -> Any:
    if isinstance(value, _Value):
        return value.to_wire()
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class Estimate(_Value):
    """A node's gossip estimate of its pool's aggregate (and how old it is, seconds)."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "capacity": wire.nonneg_float(),
        "load": wire.nonneg_float(),
        "serving": wire.uint(2**40),
        "age": wire.nonneg_float(1e9),
    }
    WHERE: ClassVar[str] = "estimate"
    capacity: float
    load: float
    serving: int
    age: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Held(_Value):
    """Why gates 1-2 hold the node back (what operators see in ``/status``)."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {"gate": wire.text(32), "reason": wire.text(64)}
    WHERE: ClassVar[str] = "held"
    gate: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Request(_Value):
    """One node -> replica request kind; ``KIND`` is its ``t`` on the wire."""

    KIND: ClassVar[str] = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusReport(Request):
    KIND: ClassVar[str] = "status"
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "version": wire.text(64),
        "artifact": fast_hex_digest,
        "state": wire.one_of(*docs.NODE_STATES),
        "pool": wire.text(64),
        "addrs": wire.array(wire.text(128), 8),
    }
    WHERE: ClassVar[str] = "status"
    version: str
    artifact: str
    state: str
    pool: str
    estimate: Estimate | None
    held: Held | None
    addrs: tuple[str, ...]

    def __post_init__(self) -> None:
        _Value.__post_init__(self)
        if self.estimate is not None and not isinstance(self.estimate, Estimate):
            object.__setattr__(self, "estimate", Estimate.from_wire(self.estimate))
        if self.held is not None and not isinstance(self.held, Held):
            object.__setattr__(self, "held", Held.from_wire(self.held))


@dataclass(frozen=True, kw_only=True, slots=True)
class AskRequest(Request):
    """A proposed departure token payload, with the node's own capacity and load."""

    KIND: ClassVar[str] = "ask"
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "token": wire.blob(max_len=2048),
        "capacity": wire.nonneg_float(),
        "load": wire.nonneg_float(),
    }
    WHERE: ClassVar[str] = "ask"
    token: bytes
    capacity: float
    load: float


@dataclass(frozen=True, kw_only=True, slots=True)
class RejoinedReport(Request):
    """The node runs ``artifact`` and passed its health check: its lease ends."""

    KIND: ClassVar[str] = "rejoined"
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {"artifact": fast_hex_digest, "nonce": _nonce}
    WHERE: ClassVar[str] = "rejoined"
    artifact: str
    nonce: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class FailedReport(Request):
    """The move to ``artifact`` failed (rolled back): feeds the circuit breaker."""

    KIND: ClassVar[str] = "failed"
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "artifact": fast_hex_digest,
        "counter": wire.uint(docs.MAX_VERSION),
        "reason": _reason,
        "nonce": _nonce,
    }
    WHERE: ClassVar[str] = "failed"
    artifact: str
    counter: int
    reason: str
    nonce: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class ReturnReport(Request):
    """A lease handed back unused (a partial grant, a token that did not verify)."""

    KIND: ClassVar[str] = "return"
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {"nonce": _nonce, "reason": _reason}
    WHERE: ClassVar[str] = "return"
    nonce: bytes
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DocsRequest(Request):
    """The replica's current allowlist, scope and the release records they name."""

    KIND: ClassVar[str] = "docs"
    WHERE: ClassVar[str] = "docs"


@dataclass(frozen=True, kw_only=True, slots=True)
class PeersRequest(Request):
    """Up to ``count`` other connected nodes' gossip addresses (introductions)."""

    KIND: ClassVar[str] = "peers"
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {"count": wire.uint(MAX_PEERS)}
    WHERE: ClassVar[str] = "peers"
    count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class SignalRequest(Request):
    """Opaque bytes for another connected node (WebRTC signaling)."""

    KIND: ClassVar[str] = "signal"
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "to": fast_hex_digest,
        "data": wire.blob(max_len=MAX_SIGNAL),
    }
    WHERE: ClassVar[str] = "signal"
    to: str
    data: bytes


#: Every request kind, by its ``t``.
REQUESTS: Final[Mapping[str, type[Request]]] = {
    cls.KIND: cls
    for cls in (
        StatusReport,
        AskRequest,
        RejoinedReport,
        FailedReport,
        ReturnReport,
        DocsRequest,
        PeersRequest,
        SignalRequest,
    )
}
_SEQ = wire.uint(2**62)


def request_of(kind: str, values: Mapping[str, Any]) -> Request:
    """The request of ``kind`` from its fields (``SchemaError`` if they do not fit)."""
    cls = REQUESTS.get(kind)
    if cls is None:
        raise SchemaError(f"request: unknown kind {kind!r}")
    return cls.from_wire(dict(values))


def seal_request(session: Session, seq: int, request: Request) -> bytes:
    """One request frame (the node's side)."""
    return session.seal(wire.encode({"t": request.KIND, "seq": seq, **request.to_wire()}))


def open_request(frame: bytes, *, session: Session, last_seq: int) -> tuple[int, Request]:
    """Check one request frame (the server's side): ``(seq, request)``.

    The MAC is checked over the raw payload before it is decoded.  Raises ``WireError``
    (malformed: the sender's fault) or ``VerificationError``.
    """
    obj = wire.decode(session.open(frame), REQUEST_LIMITS)
    kind = obj.get("t") if isinstance(obj, dict) else None
    cls = REQUESTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SchemaError(f"request: unknown kind {kind!r}")
    assert isinstance(obj, dict)
    seq = _SEQ("seq", obj.pop("seq", None))
    del obj["t"]
    request = cls.from_wire(obj)
    if seq <= last_seq:
        raise VerificationError(f"request: sequence {seq} after {last_seq}", rule="replay")
    return seq, request


# -- ask answers ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class AskGrant:
    """A replica's yes: its signature over the proposed payload."""

    replica: str
    sig: bytes
    reason: str
    lease_expires: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "ok": True,
            "granted": True,
            "replica": self.replica,
            "sig": self.sig,
            "reason": self.reason,
            "lease_expires": self.lease_expires,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class AskRefusal:
    """A replica's no, with the gate, the reason, and when to ask again."""

    gate: str
    reason: str
    detail: str = ""
    retry_after: float | None = None
    position: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "ok": True,
            "granted": False,
            "gate": self.gate,
            "reason": self.reason,
            "detail": self.detail,
            "retry_after": self.retry_after,
            "position": self.position,
        }

    @classmethod
    def from_wire(cls, answer: Mapping[str, Any]) -> AskRefusal:
        """A refusal as a replica sent it.  A replica is trusted to refuse, not to be well
        formed: a missing gate reads as capacity, a missing reason as "refused", a wait
        that is not a finite number as none."""
        retry = answer.get("retry_after")
        position = answer.get("position")
        wait = float(retry) if isinstance(retry, int | float) else None
        return cls(
            gate=str(answer.get("gate") or "capacity"),
            reason=str(answer.get("reason") or "refused"),
            detail=str(answer.get("detail") or ""),
            retry_after=wait if wait is not None and math.isfinite(wait) else None,
            position=position if isinstance(position, int) else None,
        )


# -- the other answers ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack:
    """A report taken (``status``, ``rejoined``, ``return``, ``signal``)."""

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True}


@dataclass(frozen=True, kw_only=True, slots=True)
class FailedAck:
    """A failure report taken; ``paused``: the artifact's rollout is paused now."""

    paused: bool

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "paused": self.paused}


@dataclass(frozen=True, kw_only=True, slots=True)
class DocsAnswer:
    """The replica's current documents, as signed envelopes."""

    docs: tuple[bytes, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "docs": list(self.docs)}


@dataclass(frozen=True, kw_only=True, slots=True)
class Peer:
    """One introduction: a connected node, its pool, its link addresses, and the address
    the replica saw it connect from (``host:port``)."""

    node: str
    pool: str
    addrs: tuple[str, ...]
    observed: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "pool": self.pool,
            "addrs": list(self.addrs),
            "observed": self.observed,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class PeersAnswer:
    peers: tuple[Peer, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"ok": True, "peers": [p.to_wire() for p in self.peers]}


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorAnswer:
    """A request the replica could not serve: ``error`` is a stable code."""

    error: str
    detail: str

    def to_wire(self) -> dict[str, Any]:
        return {"ok": False, "error": self.error, "detail": self.detail}


#: Every answer a replica sends to a request.
Answer = AskGrant | AskRefusal | Ack | FailedAck | DocsAnswer | PeersAnswer | ErrorAnswer


# -- pushes (server -> node, any time) -------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class DocumentPush:
    """A document just published: ``nudge`` for a nudge, ``doc`` for anything else."""

    doc: bytes
    nudge: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"push": "nudge" if self.nudge else "doc", "doc": self.doc}


@dataclass(frozen=True, kw_only=True, slots=True)
class SignalPush:
    """Opaque bytes another connected node sent this one (WebRTC signaling)."""

    sender: str
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"push": "signal", "from": self.sender, "data": self.data}


#: Every message a replica pushes unasked (the challenge is ``session.Challenge``).
Push = DocumentPush | SignalPush
