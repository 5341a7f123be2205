"""The node <-> coordinator protocol: request and answer schemas, one frozen class each.

After the handshake (:mod:`p2pupdate.core.session`) every message is ``mac || payload``
(README "Protocol")::

    node:   payload = msgpack {"t": kind, "seq": n, ...kind's fields}
    server: payload = msgpack {"id": n, "ok": true, ...answer}
                    | msgpack {"id": n, "ok": false, "error", "detail"}
                    | msgpack {"push": "nudge" | "doc" | "signal" | "slot", ...}   (any time)

``seq`` strictly increases per connection (replays are refused) and is the answer's
``id``; the kind is inside what is MACed, so one kind's request cannot pass for another's.
Request kinds: ``status`` (version, state, pool, the node's gossip aggregate estimate, why
gates 1-2 hold it), ``ask`` (a proposed departure token payload + the node's capacity and
load), ``rejoined`` / ``failed`` / ``return`` (end a lease; failures feed the circuit
breaker), ``docs`` (current allowlist, scope, release records), ``peers``
(introductions), ``signal`` (relay opaque bytes to another connected node: WebRTC
signaling), ``ice`` (the STUN and TURN servers the network configured, with a TURN
credential the replica mints for the node it authenticated: :mod:`p2pupdate.core.turn`).

Each request kind is one frozen keyword-only dataclass, validated on construction (the
same checks whether the node builds it or the server decodes it), with ``to_wire`` /
``from_wire``; the server decodes with :func:`open_request`, the node seals with
:func:`seal_request`.  Each answer is one frozen class too (:data:`Answer`); the server
sends ``to_wire()`` with the request's ``id``.  The node decodes each answer with
:func:`answer_of`, which picks the class from :data:`ANSWERS` (the answers each request
kind can get), and each push with :func:`push_of`: what crosses into the node is typed.
Every answer is strict except a refusal, read leniently (``AskRefusal.from_wire``: a
replica is trusted to refuse, not to be well formed); the node checks a grant's
signature itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, Self

from . import crypto, turn, wire
from . import documents as docs
from .errors import SchemaError, VerificationError
from .session import HANDSHAKE_LIMITS, Session, Signer

__all__ = [
    "ANSWERS",
    "ANSWER_LIMITS",
    "MAX_ICE_SERVERS",
    "MAX_ICE_TTL",
    "MAX_PEERS",
    "MAX_REPORT_S",
    "MAX_SIGNAL",
    "NODE_PATH",
    "ORIGIN_NODE_HEADER",
    "PUSHES",
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
    "IceAnswer",
    "IceRequest",
    "IceServer",
    "Peer",
    "PeersAnswer",
    "PeersRequest",
    "Push",
    "RejoinedReport",
    "Request",
    "ReturnReport",
    "SignalPush",
    "SignalRequest",
    "SlotFreed",
    "SlotPush",
    "StatusAck",
    "StatusReport",
    "Versions",
    "answer_of",
    "fast_hex_digest",
    "open_request",
    "push_of",
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
#: HTTP header in which a node names itself on an origin chunk GET: the downloader the
#: origin counts against its cap (not authenticated: the cap is a courtesy, not a defence).
ORIGIN_NODE_HEADER: Final = "x-p2pupdate-node"
MAX_PEERS: Final = 32
#: Most STUN + TURN servers one ``ice`` answer lists (``serve --stun/--turn`` in all).
MAX_ICE_SERVERS: Final = 8
#: Longest TURN credential lifetime a replica hands out (seconds): one day.
MAX_ICE_TTL: Final = 86400
#: Longest heartbeat interval a replica may ask for (``StatusAck``): two days.
MAX_REPORT_S: Final = 2 * 86400

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


def _array(item: wire.Check, max_len: int) -> wire.Check:
    """``wire.array`` that also takes the tuple a value holds (built in code, not decoded)."""
    check = wire.array(item, max_len)

    def array(name: str, v: Any) -> Any:
        return check(name, list(v) if isinstance(v, tuple) else v)

    return array


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
        return [_out(v) for v in value]
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


#: Versions one status report may count (gossip counts at most ``MAX_VERSIONS``, 4).
MAX_REPORTED_VERSIONS: Final = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class Versions(_Value):
    """A node's push-sum count of nodes per version, whole fleet (and how old, seconds)."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "counts": wire.mapping(wire.text(64), wire.nonneg_float(2**40), MAX_REPORTED_VERSIONS),
        "age": wire.nonneg_float(1e9),
    }
    WHERE: ClassVar[str] = "versions"
    counts: Mapping[str, float]
    age: float


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
        "addrs": _array(wire.text(128), 8),
    }
    WHERE: ClassVar[str] = "status"
    version: str
    artifact: str
    state: str
    pool: str
    estimate: Estimate | None
    held: Held | None
    addrs: tuple[str, ...]
    #: Optional on the wire (absent = None), so a replica that predates it still reads
    #: reports without it.
    versions: Versions | None = None

    def __post_init__(self) -> None:
        _Value.__post_init__(self)
        if self.estimate is not None and not isinstance(self.estimate, Estimate):
            object.__setattr__(self, "estimate", Estimate.from_wire(self.estimate))
        if self.held is not None and not isinstance(self.held, Held):
            object.__setattr__(self, "held", Held.from_wire(self.held))
        if self.versions is not None and not isinstance(self.versions, Versions):
            object.__setattr__(self, "versions", Versions.from_wire(self.versions))

    def to_wire(self) -> dict[str, Any]:
        out = _Value.to_wire(self)
        if out["versions"] is None:
            del out["versions"]
        return out

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        if isinstance(obj, dict) and "versions" not in obj:
            obj = {**obj, "versions": None}
        return super(StatusReport, cls).from_wire(obj)


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


@dataclass(frozen=True, kw_only=True, slots=True)
class IceRequest(Request):
    """The ICE servers to give aiortc, with a TURN credential minted for this node."""

    KIND: ClassVar[str] = "ice"
    WHERE: ClassVar[str] = "ice"


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
        IceRequest,
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


# -- answers ---------------------------------------------------------------------------


def _optional(check: wire.Check) -> wire.Check:
    def optional(name: str, v: Any) -> Any:
        return None if v is None else check(name, v)

    return optional


def _string(name: str, v: Any) -> str:
    if not isinstance(v, str):
        raise SchemaError(f"field {name!r}: expected a string")
    return v


def _finite(name: str, v: Any) -> float:
    if type(v) not in (int, float) or not math.isfinite(v):
        raise SchemaError(f"field {name!r}: expected a finite number")
    return float(v)


def _integer(name: str, v: Any) -> int:
    if not isinstance(v, int):
        raise SchemaError(f"field {name!r}: expected an integer")
    return v


@dataclass(frozen=True, kw_only=True, slots=True)
class _Answer(_Value):
    """One answer a replica sends; ``HEAD`` are the fixed keys that say which it is."""

    HEAD: ClassVar[Mapping[str, bool]] = {"ok": True}

    def to_wire(self) -> dict[str, Any]:
        return {**self.HEAD, **_Value.to_wire(self)}

    @classmethod
    def fits(cls, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` (an answer map) is this class's (its ``HEAD`` keys match)."""
        return all(obj.get(k) is v for k, v in cls.HEAD.items())

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        """Decode an answer map (its ``HEAD`` keys included, ``id`` not); raises
        ``SchemaError`` (not this class's, missing, unknown or bad fields)."""
        if not isinstance(obj, dict) or not cls.fits(obj):
            raise SchemaError(f"{cls.WHERE}: not this kind of answer")
        rest = {k: v for k, v in obj.items() if k not in cls.HEAD}
        names = tuple(f.name for f in fields(cls))
        return cls(**_exact_keys(rest, names, where=cls.WHERE))


@dataclass(frozen=True, kw_only=True, slots=True)
class AskGrant(_Answer):
    """A replica's yes: its signature over the proposed payload (the node checks it)."""

    HEAD: ClassVar[Mapping[str, bool]] = {"ok": True, "granted": True}
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "replica": wire.text(128),
        "sig": wire.blob(max_len=512),
        "reason": wire.text(256),
        "lease_expires": _finite,
    }
    WHERE: ClassVar[str] = "grant"
    replica: str
    sig: bytes
    reason: str
    lease_expires: float


@dataclass(frozen=True, kw_only=True, slots=True)
class AskRefusal(_Answer):
    """A replica's no, with the gate, the reason, and when to ask again."""

    HEAD: ClassVar[Mapping[str, bool]] = {"ok": True, "granted": False}
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "gate": _string,
        "reason": _string,
        "detail": _string,
        "retry_after": _optional(_finite),
        "position": _optional(_integer),
    }
    WHERE: ClassVar[str] = "refusal"
    gate: str
    reason: str
    detail: str = ""
    retry_after: float | None = None
    position: int | None = None

    @classmethod
    def fits(cls, obj: Mapping[str, Any]) -> bool:
        """Any ask answer that is not a grant reads as a refusal."""
        return obj.get("ok") is True and obj.get("granted") is not True

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        """A refusal as a replica sent it.  A replica is trusted to refuse, not to be well
        formed: a missing gate reads as capacity, a missing reason as "refused", a wait
        that is not a finite number as none."""
        answer: Mapping[str, Any] = obj if isinstance(obj, dict) else {}
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


@dataclass(frozen=True, kw_only=True, slots=True)
class Ack(_Answer):
    """A report taken (``status``, ``rejoined``, ``return``, ``signal``)."""

    WHERE: ClassVar[str] = "ack"


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusAck(_Answer):
    """A status report taken, when to send the next heartbeat (P11: the replica's
    ``core.reporting.heartbeat_interval`` of its fleet, so the fleet's heartbeats stay
    under its budget) and which documents the replica holds.  A node also takes a plain ``Ack`` (an older replica: the node keeps
    its default interval).  Rollout order: nodes first, then replicas (an older node reads
    this answer as malformed)."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "next_report_s": _finite,
        "allowlist": wire.uint(docs.MAX_VERSION),
        "scope": wire.uint(docs.MAX_VERSION),
    }
    WHERE: ClassVar[str] = "status-ack"
    next_report_s: float
    #: The replica's allowlist version and scope serial (0: none): a node that holds older
    #: ones fetches the documents (``core.reporting.documents_behind``) -- how documents
    #: enter gossip when sessions are on demand and few are open to push to.
    allowlist: int = 0
    scope: int = 0

    @classmethod
    def fits(cls, obj: Mapping[str, Any]) -> bool:
        return obj.get("ok") is True and "next_report_s" in obj

    def __post_init__(self) -> None:
        _Value.__post_init__(self)
        if not 0.0 < self.next_report_s <= MAX_REPORT_S:
            raise SchemaError(f"field 'next_report_s': not in (0, {MAX_REPORT_S:g}]")


@dataclass(frozen=True, kw_only=True, slots=True)
class FailedAck(_Answer):
    """A failure report taken; ``paused``: the artifact's rollout is paused now."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {"paused": wire.boolean()}
    WHERE: ClassVar[str] = "failed-ack"
    paused: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class DocsAnswer(_Answer):
    """The replica's current documents, as signed envelopes."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "docs": _array(
            wire.blob(max_len=ANSWER_LIMITS.max_bin_len), ANSWER_LIMITS.max_container_len
        )
    }
    WHERE: ClassVar[str] = "docs-answer"
    docs: tuple[bytes, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Peer(_Value):
    """One introduction: a connected node, its pool, its link addresses, and the address
    the replica saw it connect from (``host:port``)."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "node": fast_hex_digest,
        "pool": wire.text(64),
        "addrs": _array(wire.text(128), 8),
        "observed": wire.text(256),
    }
    WHERE: ClassVar[str] = "peer"
    node: str
    pool: str
    addrs: tuple[str, ...]
    observed: str


def _peers(name: str, v: Any) -> tuple[Peer, ...]:
    items = _array(lambda _n, p: p, MAX_PEERS)(name, v)
    return tuple(p if isinstance(p, Peer) else Peer.from_wire(p) for p in items)


@dataclass(frozen=True, kw_only=True, slots=True)
class PeersAnswer(_Answer):
    """Introductions: other connected nodes, this node's pool first."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {"peers": _peers}
    WHERE: ClassVar[str] = "peers-answer"
    peers: tuple[Peer, ...]


def _ice_url(name: str, v: Any) -> str:
    try:
        return turn.check_ice_url(v)
    except ValueError as exc:
        raise SchemaError(f"field {name!r}: {exc}") from None


_credential_text = _optional(wire.text(turn.MAX_NODE_LEN + 32, nonempty=True))


@dataclass(frozen=True, kw_only=True, slots=True)
class IceServer(_Value):
    """One STUN or TURN server; a TURN one carries the credential minted for the node."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "urls": _ice_url,
        "username": _credential_text,
        "credential": _credential_text,
    }
    WHERE: ClassVar[str] = "ice-server"
    urls: str
    username: str | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        _Value.__post_init__(self)
        if (self.username is None) != (self.credential is None):
            raise SchemaError(f"{self.WHERE}: a username and a credential, or neither")

    def as_aiortc(self) -> dict[str, str]:
        """The shape ``aiortc.RTCIceServer(**server)`` takes (no empty credential keys)."""
        out = {"urls": self.urls}
        if self.username is not None and self.credential is not None:
            out["username"], out["credential"] = self.username, self.credential
        return out


def _ice_servers(name: str, v: Any) -> tuple[IceServer, ...]:
    items = _array(lambda _n, s: s, MAX_ICE_SERVERS)(name, v)
    return tuple(s if isinstance(s, IceServer) else IceServer.from_wire(s) for s in items)


@dataclass(frozen=True, kw_only=True, slots=True)
class IceAnswer(_Answer):
    """The servers (STUN first, then TURN), and ``ttl``: the seconds the TURN credential
    stays valid from now, on the replica's clock (0: none in the list).  A node caches the
    answer by its own monotonic clock from ``ttl``, never by comparing clocks."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "servers": _ice_servers,
        "ttl": wire.uint(MAX_ICE_TTL),
    }
    WHERE: ClassVar[str] = "ice-answer"
    servers: tuple[IceServer, ...]
    ttl: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorAnswer(_Answer):
    """A request the replica could not serve: ``error`` is a stable code."""

    HEAD: ClassVar[Mapping[str, bool]] = {"ok": False}
    CHECKS: ClassVar[Mapping[str, wire.Check]] = {"error": _string, "detail": _string}
    WHERE: ClassVar[str] = "error-answer"
    error: str
    detail: str


#: Every answer a replica sends to a request.
Answer = (
    AskGrant
    | AskRefusal
    | Ack
    | StatusAck
    | FailedAck
    | DocsAnswer
    | PeersAnswer
    | IceAnswer
    | ErrorAnswer
)

#: The answers each request kind can get, the first that ``fits`` decoding it; any kind
#: can get an :class:`ErrorAnswer` instead.
ANSWERS: Final[Mapping[str, tuple[type[Answer], ...]]] = {
    StatusReport.KIND: (StatusAck, Ack),
    AskRequest.KIND: (AskGrant, AskRefusal),
    RejoinedReport.KIND: (Ack,),
    FailedReport.KIND: (FailedAck,),
    ReturnReport.KIND: (Ack,),
    DocsRequest.KIND: (DocsAnswer,),
    PeersRequest.KIND: (PeersAnswer,),
    SignalRequest.KIND: (Ack,),
    IceRequest.KIND: (IceAnswer,),
}
assert ANSWERS.keys() == REQUESTS.keys()


def answer_of(kind: str, msg: Mapping[str, Any]) -> Answer:
    """The answer to a request of ``kind`` from the map a replica sent (its ``id`` is
    ignored: the caller matched it); ``SchemaError`` if it is no answer to ``kind``."""
    body = {k: v for k, v in msg.items() if k != "id"}
    classes = ANSWERS.get(kind)
    if classes is None:
        raise SchemaError(f"answer: unknown request kind {kind!r}")
    for cls in (ErrorAnswer, *classes):
        if cls.fits(body):
            return cls.from_wire(body)
    raise SchemaError(f"answer to {kind}: neither ok nor an error")


# -- pushes (server -> node, any time) -------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class DocumentPush(_Value):
    """A document just published: ``nudge`` for a nudge, ``doc`` for anything else."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "doc": wire.blob(max_len=ANSWER_LIMITS.max_bin_len),
        "nudge": wire.boolean(),
    }
    WHERE: ClassVar[str] = "document-push"
    doc: bytes
    nudge: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"push": "nudge" if self.nudge else "doc", "doc": self.doc}

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        got = _exact_keys(obj, ("push", "doc"), where=cls.WHERE)
        if got["push"] not in ("nudge", "doc"):
            raise SchemaError(f"{cls.WHERE}: not a document push")
        return cls(doc=got["doc"], nudge=got["push"] == "nudge")


@dataclass(frozen=True, kw_only=True, slots=True)
class SignalPush(_Value):
    """Opaque bytes another connected node sent this one (WebRTC signaling)."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "sender": fast_hex_digest,
        "data": wire.blob(max_len=MAX_SIGNAL),
    }
    WHERE: ClassVar[str] = "signal-push"
    sender: str
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"push": "signal", "from": self.sender, "data": self.data}

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        got = _exact_keys(obj, ("push", "from", "data"), where=cls.WHERE)
        if got["push"] != "signal":
            raise SchemaError(f"{cls.WHERE}: not a signal push")
        return cls(sender=got["from"], data=got["data"])


#: What a ``SlotPush`` signs (the signature's type: it cannot pass for another message).
SLOT_TYPE: Final = "slot-freed"


@dataclass(frozen=True, kw_only=True, slots=True)
class SlotFreed(_Value):
    """What a ``SlotPush`` says: a departure slot of ``pool`` freed on ``replica`` and
    ``node`` heads that replica's queue (README "Capacity gate and departure tokens")."""

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "replica": fast_hex_digest,
        "node": fast_hex_digest,
        "pool": wire.text(64, nonempty=True),
        "time": wire.nonneg_float(),
    }
    WHERE: ClassVar[str] = "slot"
    replica: str
    node: str
    pool: str
    time: float


@dataclass(frozen=True, kw_only=True, slots=True)
class SlotPush(_Value):
    """A replica's signed nudge to the head of its queue: ask again now, a slot freed.

    Signed by the replica's coordinator key (not only MACed by the session) so the node
    checks, as for a grant, that a coordinator of its root said it, to it.
    """

    CHECKS: ClassVar[Mapping[str, wire.Check]] = {
        "payload": wire.blob(max_len=512),
        "sig": wire.blob(crypto.SIG_LEN),
    }
    WHERE: ClassVar[str] = "slot-push"
    payload: bytes
    sig: bytes

    @classmethod
    def sign(cls, signer: Signer, freed: SlotFreed) -> Self:
        payload = wire.encode(freed.to_wire())
        return cls(payload=payload, sig=signer.sign(SLOT_TYPE, payload))

    def to_wire(self) -> dict[str, Any]:
        return {"push": "slot", "p": self.payload, "s": self.sig}

    @classmethod
    def from_wire(cls, obj: Any) -> Self:
        got = _exact_keys(obj, ("push", "p", "s"), where=cls.WHERE)
        if got["push"] != "slot":
            raise SchemaError(f"{cls.WHERE}: not a slot push")
        return cls(payload=got["p"], sig=got["s"])

    def open(self, *, coordinators: Mapping[str, bytes], node: str) -> SlotFreed:
        """What it says, if a key in ``coordinators`` (key id -> public key: the root's
        coordinator role) signed it for ``node``; else ``VerificationError``."""
        freed = SlotFreed.from_wire(wire.decode(self.payload, HANDSHAKE_LIMITS))
        pub = coordinators.get(freed.replica)
        if pub is None or not crypto.verify_signature(pub, SLOT_TYPE, self.payload, self.sig):
            raise VerificationError("slot push: not signed by a coordinator of this root")
        if freed.node != node:
            raise VerificationError("slot push: addressed to another node")
        return freed


#: Every message a replica pushes unasked (the challenge is ``session.Challenge``).
Push = DocumentPush | SignalPush | SlotPush
#: The push classes, by the ``push`` key's value.
PUSHES: Final[Mapping[str, type[DocumentPush] | type[SignalPush] | type[SlotPush]]] = {
    "nudge": DocumentPush,
    "doc": DocumentPush,
    "signal": SignalPush,
    "slot": SlotPush,
}


def push_of(msg: Mapping[str, Any]) -> Push:
    """The push a replica sent (``SchemaError`` if it is none this node knows)."""
    kind = msg.get("push")
    cls = PUSHES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SchemaError(f"push: unknown kind {kind!r}")
    return cls.from_wire(dict(msg))
