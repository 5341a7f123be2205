"""Gossip: a partial-view overlay, rumors, anti-entropy and push-sum aggregates, sans-IO.

DESIGN.md 7.  One ``Gossip`` object is one node's view of the overlay.  Like the updater it
does no IO (STYLE.md 1, 2): the shell feeds it events (``LinkUp``, ``Received``, ...) with a
monotonic ``now`` and a wall-clock ``utc_now``, calls ``handle_timer`` when ``get_timer()``
says so, and performs the effects it returns (``Send``, ``Dial``, ``Disconnect``,
``Deliver``, ``Penalised``).  Randomness comes from an ``Rng`` given to the constructor;
signed documents other than heartbeats are judged by a ``Verifier`` the shell supplies (its
``TrustStore``), so the core needs no notion of roots or floors.  Everything that arrives is
a message of one of the kinds in ``MESSAGE_TYPES`` and is handled by the one handler the
``MESSAGE_HANDLERS`` table names for it; events likewise go through ``EVENT_HANDLERS``.

Membership (HyParView-shaped, Leitao et al. 2007)
    An *active view* of 6-8 peers with kept-open links (nodes behind NAT cannot take
    unsolicited packets, so gossip only travels over links that exist) and a *passive view*
    of ~5x as many contacts to repair it from.  A node that knows too few contacts joins
    through one (``Join``; the contact forwards ``ForwardJoin`` random walks so the newcomer
    lands in several active views and passive views); otherwise it asks passive contacts
    with ``Neighbor``, a few at a time.  Below ``active_min`` it asks with high priority
    (the receiver must make room; HyParView does so only for an empty view, which leaves
    nodes whose few contacts are all full stuck short).  A refusal suggests other
    contacts.  A lost link is repaired from the passive view at the next round.  Every
    30-60 s (or at once, when it runs out of contacts) a node *shuffles* a sample of its
    views with one active neighbour.  Unlike HyParView the shuffle is one hop, not a
    random walk: the walk's end would have to open a temporary connection back to the
    origin, which a node behind NAT cannot accept.  Gossip arriving from a linked peer
    outside the active view (its ``NeighborReply`` or our ``Prune`` was lost) is taken as
    a yes, or answered with a prune, so both ends of a link agree.
Heartbeats
    Every ``heartbeat_interval`` a node signs ``documents.Heartbeat`` (version, artifact,
    state, pool, load, capacity) with its node key and sends it to its active view, which
    forwards it ``heartbeat_hops`` more hops to ``fanout`` peers.  ``seq`` is per sender and
    only ever grows (it starts from wall-clock milliseconds, so a restart needs no stored
    counter); a heartbeat is dropped unless its ``seq`` is above the one already known.
Rumors
    Allowlists, releases, scope tokens, nudges and roots travel as the signed envelopes
    themselves, so a forwarded nudge cannot be forged and needs no coordinator.  A rumor is
    new if its id (sha256 of the envelope bytes) is not in the seen-cache and the verifier
    accepts it as news; it is then delivered and pushed to ``fanout`` active peers per round,
    never twice to a peer, at most ``4 * ceil(log10(N + 1))`` times in all (N from the
    aggregates).  Envelopes too large for one 1,200-byte message are announced (``IHave``)
    and pulled (``IWant`` -> ``Doc``).  Every ``anti_entropy_interval`` a node sends a
    ``Digest`` of the documents it holds to one neighbour, who pulls what it lacks and
    announces what the digest lacks: a rumor that died out still reaches everyone.
Aggregates (push-sum, Kempe et al. 2003)
    Per pool: the sum of serving capacity, the sum of load, the count of serving nodes and
    the count of all nodes.  Sums need the weight of one node only (a "leader"), and nobody
    is in charge, so every node starts each epoch as a candidate; candidates are ranked by
    ``sha256(epoch, node)``, a node that hears of a better candidate discards its mass and
    joins that instance, adding its own values once.  The best candidate's instance sweeps
    the network like a rumor while it mixes.  Each round a node keeps one share of its mass
    and sends one share to each of ``aggregate_fanout`` active peers, as a running sum per
    edge, so a lost share is carried again by the next message on the same edge instead
    of biasing the result.  Mass still dies with nodes and with links that fail with a
    share in flight, so every epoch (``epoch_rounds`` rounds of wall-clock time; epoch
    numbers are ``utc_now // length``, and a share from more than one epoch ahead of our
    clock is ignored, so nobody can push the network through epochs) the computation
    starts again from the true local values: an epoch's error never carries over.
Defence
    Every message is at most 1,200 bytes (``MAX_MESSAGE_BYTES``) except a ``Doc`` answering
    our own ``IWant``, is decoded under wire limits and checked against an exact schema.
    Forged, replayed, oversize, malformed, unknown and unsolicited messages are dropped and
    cost the sender points (``PENALTIES``); a score that reaches ``disconnect_score``
    closes the link, ``ban_score`` also bans the node id for ``ban_seconds``.  Scores decay.
    Honest peers never trip these: every node verifies before it forwards, never sends the
    same rumor or heartbeat twice to a peer, and only answers what it was asked.  Identities
    per source host are capped (links, active and passive view) so that one machine with a
    thousand keys cannot fill a view, while a few nodes behind one home router still fit.

Known limits: push-sum values are not authenticated (a linked liar can bias the aggregates
of its epoch; the coordinator's median over reporters bounds what one report can do, not
what the mass carries), and a shell must hand over at most one link per peer id.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol, Self, TypeVar, cast

from . import wire
from .crypto import Envelope, SigningKey
from .documents import NODE_STATES, SKEW, Heartbeat, open_heartbeat
from .errors import (
    EquivocationError,
    ExpiredError,
    OversizeError,
    P2PUpdateError,
    RollbackError,
    SchemaError,
    VerificationError,
    WireError,
)

__all__ = [
    "EVENT_HANDLERS",
    "MAX_DOC_MESSAGE_BYTES",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_HANDLERS",
    "MESSAGE_TYPES",
    "PENALTIES",
    "RUMOR_TYPES",
    "Accepted",
    "Aggregate",
    "AggregateEstimate",
    "Contact",
    "Deliver",
    "Dial",
    "DialFailed",
    "Digest",
    "Disconnect",
    "Doc",
    "Effect",
    "Event",
    "ForwardJoin",
    "Gossip",
    "GossipConfig",
    "HeartbeatMessage",
    "IHave",
    "IWant",
    "Introduced",
    "Join",
    "LinkDown",
    "LinkUp",
    "Message",
    "Neighbor",
    "NeighborReply",
    "Penalised",
    "PoolTotals",
    "Prune",
    "Publish",
    "Received",
    "Rng",
    "Rumor",
    "Send",
    "Shuffle",
    "ShuffleReply",
    "Status",
    "StatusChanged",
    "Verifier",
    "decode_message",
    "leader_priority",
    "retransmit_limit",
    "rumor_id",
]

#: DESIGN.md 7: gossip messages fit one unfragmented UDP/DTLS datagram.
MAX_MESSAGE_BYTES: Final = 1200
#: A ``Doc`` (the answer to our ``IWant``) may carry any signed document.
MAX_DOC_MESSAGE_BYTES: Final = wire.DOCUMENT_LIMITS.max_bytes + 64
#: Signed document types that travel as rumors (heartbeats have their own message).
RUMOR_TYPES: Final = frozenset({"root", "release", "allowlist", "scope", "nudge"})
#: Envelopes up to this size ride inside a ``Rumor``; larger ones are announced and pulled.
MAX_INLINE_DOC: Final = MAX_MESSAGE_BYTES - 32
MAX_CONTACTS: Final = 8
MAX_IDS: Final = 30
#: Pools per push-sum share: 8 pools with 64-character names still fit in 1,200 bytes.
MAX_POOLS: Final = 8
MAX_TTL: Final = 16
_ID_LEN: Final = 32
_HB_HOPS_MAX: Final = 3

#: Points a sender loses per offense (``disconnect_score`` / ``ban_score`` act on the sum).
#: A forged signature is proof of malice (every node verifies before it forwards): one ban.
#: "replayed" is the same message twice from one peer, which an honest peer never sends.
#: "stale" (a lower seq or version than known) and "expired" can happen to an honest
#: forwarder in a race, so they cost little; only a stream of them adds up.
PENALTIES: Final[Mapping[str, float]] = {
    "forged": 100.0,
    "oversize": 50.0,
    "malformed": 50.0,
    "unknown": 20.0,
    "replayed": 10.0,
    "unsolicited": 10.0,
    "flood": 10.0,
    "expired": 2.0,
    "stale": 1.0,
}


# -- randomness and verification (supplied by the shell) ----------------------------------

T = TypeVar("T")


class Rng(Protocol):
    """The randomness gossip draws from: ``random.Random`` fits; so does a stub."""

    def random(self) -> float: ...

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Accepted:
    """A verifier's "yes": the document is authentic and fresh.

    ``slot`` names what the document supersedes ("allowlist", "scope:<artifact>", ...): the
    node holds the newest document per slot for anti-entropy.  ``new`` is False for an
    authentic document the node already had in another envelope (it is not spread again).
    """

    slot: str
    new: bool = True


#: ``verify(envelope_bytes) -> Accepted``, raising a ``P2PUpdateError`` subclass to reject
#: (``WireError``: malformed, ``SignatureError`` & co: forged, ``RollbackError`` /
#: ``EquivocationError``: replayed, ``ExpiredError``: expired).  The daemon's verifier runs
#: its ``TrustStore`` (and may accept on the spot, raising its floors).
Verifier = Callable[[bytes], Accepted]


def rumor_id(doc: bytes) -> bytes:
    """A rumor's identity: sha256 of the envelope bytes exactly as received."""
    return hashlib.sha256(doc).digest()


def retransmit_limit(n: int, mult: int = 4) -> int:
    """How many times a node transmits one rumor: ``mult * ceil(log10(n + 1))``."""
    return max(1, mult * math.ceil(math.log10(max(n, 1) + 1)))


def leader_priority(epoch: int, node: str) -> bytes:
    """Push-sum candidates rank by this (lower wins); nobody can choose it for an epoch."""
    return hashlib.sha256(
        b"p2pupdate/push-sum\x00" + epoch.to_bytes(8, "big") + bytes.fromhex(node)
    ).digest()


# -- values -------------------------------------------------------------------------------


def _check_node(value: str, where: str) -> None:
    if len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError(f"{where}: node id must be 64 lowercase hex digits")


@dataclass(frozen=True, kw_only=True, slots=True)
class Contact:
    """How to reach a node: its id (key id) and a link address (``host``, ``port``).

    ``host`` is also the unit of the Sybil cap (the shell may map an IPv6 address to its
    /64 before it reports a link's host).
    """

    node: str
    host: str
    port: int

    def __post_init__(self) -> None:
        _check_node(self.node, "Contact.node")
        if not 0 < len(self.host) <= 64 or not self.host.isprintable() or " " in self.host:
            raise ValueError(f"Contact.host: 1-64 printable characters, got {self.host!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"Contact.port out of range: {self.port}")

    def to_obj(self) -> dict[str, Any]:
        return {"n": bytes.fromhex(self.node), "h": self.host, "p": self.port}


_CONTACT_FIELDS: Final[Mapping[str, wire.Check]] = {
    "n": wire.blob(_ID_LEN),
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
class Status:
    """What this node's heartbeats and aggregate contributions say about it."""

    version: str
    artifact: str
    state: str
    pool: str
    load: float
    capacity: float

    def __post_init__(self) -> None:
        if len(self.version) > 64 or len(self.pool) > 64:
            raise ValueError("Status: version and pool are at most 64 characters")
        _check_node(self.artifact, "Status.artifact")
        if self.state not in NODE_STATES:
            raise ValueError(f"Status.state must be one of {', '.join(NODE_STATES)}")
        for name, v in (("load", self.load), ("capacity", self.capacity)):
            if not 0.0 <= v <= 1e18:
                raise ValueError(f"Status.{name} must be a finite number >= 0")

    @property
    def contribution(self) -> tuple[float, float, float, float]:
        """(serving capacity, load, serving count, node count) for push-sum."""
        serving = self.state == "serving"
        return (self.capacity if serving else 0.0, self.load, 1.0 if serving else 0.0, 1.0)


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolTotals:
    """One pool's aggregates as a node estimates them."""

    capacity: float  # sum of capacity over serving nodes
    load: float  # sum of load over all nodes
    serving: float  # count of serving nodes
    nodes: float  # count of nodes


@dataclass(frozen=True, kw_only=True, slots=True)
class AggregateEstimate:
    """The push-sum estimate of one epoch.  ``complete``: the epoch ran to its end."""

    epoch: int
    pools: Mapping[str, PoolTotals]
    complete: bool

    @property
    def nodes(self) -> float:
        return sum(p.nodes for p in self.pools.values())


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class GossipConfig:
    """Defaults are DESIGN.md 7's; durations in seconds of the ``now`` clock."""

    round_interval: float = 1.0
    #: Each round lasts ``round_interval * (1 +- round_jitter)`` so neighbours drift apart.
    round_jitter: float = 0.1
    fanout: int = 3
    active_min: int = 6
    active_target: int = 7
    active_max: int = 8
    passive_max: int = 35
    #: At most this many ``Neighbor``/``Join`` requests (and dials for them) at once: a node
    #: that asked for its whole view at once would be accepted everywhere and then have to
    #: evict the surplus (and every node restarting together would do it).
    parallel_requests: int = 3
    #: HyParView's random walk lengths: ARWL (active) and PRWL (passive).
    active_walk: int = 6
    passive_walk: int = 3
    shuffle_interval: tuple[float, float] = (30.0, 60.0)
    shuffle_active: int = 3
    shuffle_passive: int = 4
    heartbeat_interval: float = 10.0  # 0 disables heartbeats
    heartbeat_ttl: int = 120  # wall-clock seconds a heartbeat stays valid
    heartbeat_hops: int = 1
    max_known_nodes: int = 1024
    retransmit_mult: int = 4
    #: Network size assumed until the aggregates estimate one.
    assumed_size: int = 1000
    seen_max: int = 8192
    seen_ttl: float = 600.0
    held_max: int = 64
    anti_entropy_interval: float = 30.0
    want_timeout: float = 5.0
    max_wants: int = 64
    epoch_rounds: int = 50
    aggregate_fanout: int = 3
    #: Pending ``Dial``/``Neighbor``/``Shuffle`` are forgotten after this long.
    request_timeout: float = 10.0
    #: A linked peer in no view, with nothing pending, is let go after this long.
    idle_timeout: float = 30.0
    #: An active peer silent this long is dropped (heartbeats and push-sum keep links busy).
    silence_timeout: float = 60.0
    max_messages_per_round: int = 200
    disconnect_score: float = 50.0
    ban_score: float = 100.0
    ban_seconds: float = 3600.0
    score_half_life: float = 300.0
    #: Sybil caps per source host: links, active-view and passive-view entries.
    max_links_per_host: int = 3
    max_active_per_host: int = 2
    max_passive_per_host: int = 4

    def __post_init__(self) -> None:
        if not 0.0 < self.round_interval < float("inf"):
            raise ValueError("GossipConfig.round_interval must be positive")
        if not 0.0 <= self.round_jitter < 0.5:
            raise ValueError("GossipConfig.round_jitter must be in [0, 0.5)")
        if not 1 <= self.active_min <= self.active_target <= self.active_max:
            raise ValueError("GossipConfig: need 1 <= active_min <= active_target <= active_max")
        if self.fanout < 1 or self.aggregate_fanout < 1:
            raise ValueError("GossipConfig: fanouts must be >= 1")
        if not 0 <= self.passive_walk <= self.active_walk <= MAX_TTL:
            raise ValueError("GossipConfig: need 0 <= passive_walk <= active_walk <= 16")
        if not 0 <= self.heartbeat_hops <= _HB_HOPS_MAX:
            raise ValueError(f"GossipConfig.heartbeat_hops must be in [0, {_HB_HOPS_MAX}]")
        if self.shuffle_active + self.shuffle_passive + 1 > MAX_CONTACTS:
            raise ValueError(f"GossipConfig: a shuffle carries at most {MAX_CONTACTS} contacts")
        lo, hi = self.shuffle_interval
        if not 0.0 < lo <= hi:
            raise ValueError("GossipConfig.shuffle_interval must be (low, high), 0 < low <= high")
        if self.epoch_rounds < 2:
            raise ValueError("GossipConfig.epoch_rounds must be >= 2")
        if not 0.0 < self.disconnect_score <= self.ban_score:
            raise ValueError("GossipConfig: need 0 < disconnect_score <= ban_score")
        if min(self.max_links_per_host, self.max_active_per_host, self.max_passive_per_host) < 1:
            raise ValueError("GossipConfig: per-host caps must be >= 1")


# -- messages -----------------------------------------------------------------------------


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
    if len(ids) > MAX_IDS or any(len(i) != _ID_LEN for i in ids):
        raise ValueError(f"{where}: at most {MAX_IDS} ids of {_ID_LEN} bytes")


_ids_check: Final = wire.array(wire.blob(_ID_LEN), MAX_IDS, unique=True)


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
        "hops": wire.uint(_HB_HOPS_MAX),
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
        "l": wire.blob(_ID_LEN),
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
    )
}

#: Small messages: at most 1,200 bytes, shallow, few items.
_SMALL_LIMITS: Final = wire.Limits(
    max_bytes=MAX_MESSAGE_BYTES, max_depth=4, max_container_len=64, max_str_len=128,
    max_bin_len=MAX_INLINE_DOC, max_items=512,
)  # fmt: skip
#: The one large message (``Doc``): a map of two entries, one of them a big bin.
_DOC_LIMITS: Final = wire.Limits(
    max_bytes=MAX_DOC_MESSAGE_BYTES, max_depth=1, max_container_len=2, max_str_len=16,
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
    obj = wire.decode(data, _SMALL_LIMITS if size <= MAX_MESSAGE_BYTES else _DOC_LIMITS)
    if not isinstance(obj, dict):
        raise SchemaError(f"message: expected a map, got {type(obj).__name__}")
    kind = obj.pop("k", None)
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SchemaError(f"unknown message kind {kind!r}", rule="unknown-message")
    if size > cls.MAX_BYTES:
        raise OversizeError(f"{kind} message of {size} bytes exceeds {cls.MAX_BYTES}")
    return cls.from_fields(wire.check_fields(obj, cls.FIELDS, where=f"{kind} message"))


# -- events (shell -> gossip) -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Something the shell tells the gossip core.  One frozen class per kind."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Introduced(Event):
    """Contacts learned outside gossip: coordinator introductions, zeroconf, bootstrap."""

    contacts: tuple[Contact, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkUp(Event):
    """A link to ``peer`` is open and its node key proven (by the link's handshake).

    ``host``: the remote address as observed (the Sybil-cap unit).  ``contact``: the
    address dialed, for an outbound link; None for an inbound one.  The shell keeps one
    link per peer id and reports it once.
    """

    peer: str
    host: str
    inbound: bool
    contact: Contact | None = None

    def __post_init__(self) -> None:
        _check_node(self.peer, "LinkUp.peer")


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkDown(Event):
    """The link to ``peer`` closed (either side, any reason)."""

    peer: str
    reason: str = "closed"


@dataclass(frozen=True, kw_only=True, slots=True)
class DialFailed(Event):
    """A ``Dial`` did not produce a link (refused, timed out, wrong node key)."""

    node: str
    reason: str = "failed"


@dataclass(frozen=True, kw_only=True, slots=True)
class Received(Event):
    """One message (the bytes of one frame) from a linked peer."""

    peer: str
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Publish(Event):
    """This node has a signed document to spread (say, an allowlist from the coordinator).

    It goes through the verifier like any other (for its slot); no ``Deliver`` comes back.
    """

    doc: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusChanged(Event):
    """New version/state/load; goes into the next heartbeat and the next epoch."""

    status: Status


# -- effects (gossip -> shell) ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Effect:
    """Something the shell must do."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Send(Effect):
    """Send ``data`` (one frame) on the link to ``peer``; drop it if that link is gone."""

    peer: str
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Dial(Effect):
    """Open a link to ``contact``; answer ``LinkUp`` (it must prove ``contact.node``) or
    ``DialFailed``."""

    contact: Contact


@dataclass(frozen=True, kw_only=True, slots=True)
class Disconnect(Effect):
    """Close the link to ``peer`` after flushing what was sent; refuse it until
    ``ban_until`` (monotonic seconds) when set."""

    peer: str
    reason: str
    ban_until: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Deliver(Effect):
    """A verified document that is news here (the shell acts on it: notice, nudge...)."""

    doc: bytes
    slot: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Penalised(Effect):
    """``peer`` lost ``points`` for ``rule`` (for logs and metrics; the core acts itself)."""

    peer: str
    rule: str
    points: float
    score: float
    detail: str


# -- internal bookkeeping -----------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class _Link:
    host: str
    inbound: bool
    since: float
    heard: float
    contact: Contact | None
    messages: int = 0  # this round


@dataclass(kw_only=True, slots=True)
class _Seen:
    at: float
    senders: set[str]
    fault: str | None = None


@dataclass(kw_only=True, slots=True)
class _Rumor:
    doc: bytes
    budget: int
    told: set[str]
    next_push: float
    expires: float


@dataclass(kw_only=True, slots=True)
class _Known:
    heartbeat: Heartbeat
    id: bytes
    received: float
    senders: set[str]


@dataclass(kw_only=True, slots=True)
class _Want:
    peer: str
    at: float


@dataclass(kw_only=True, slots=True)
class _Score:
    value: float
    at: float


@dataclass(kw_only=True, slots=True)
class _Flow:
    """Running sums along one edge this epoch: what we passed (``sent``) and what the
    neighbour said it passed us (``got``)."""

    sent_weight: float = 0.0
    sent: dict[str, list[float]] = field(default_factory=dict)
    got_weight: float = 0.0
    got: dict[str, list[float]] = field(default_factory=dict)


@dataclass(kw_only=True, slots=True)
class _Epoch:
    """One node's push-sum state: ``mass``/``weight`` = own values - sent + got."""

    number: int
    leader: str
    priority: bytes
    mass: dict[str, list[float]]
    weight: float
    flows: dict[str, _Flow] = field(default_factory=dict)
    #: The placeholder a node starts with, before its clock names the real epoch.
    placeholder: bool = False


Out = list[Effect]
MessageHandler = Callable[["Gossip", str, Any, float, int, Out], None]
EventHandler = Callable[["Gossip", Any, float, int, Out], None]
M = TypeVar("M", bound=Message)
E = TypeVar("E", bound=Event)


class _Penalty(Exception):
    """Raised inside handlers: drop the message, charge the sender ``rule``."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


def _rule_for(exc: P2PUpdateError) -> str:
    """Map a typed parse/verify error to the penalty rule it earns the sender."""
    if isinstance(exc, OversizeError):
        return "oversize"
    if exc.rule in ("unknown-message", "unknown-document"):
        return "unknown"
    if isinstance(exc, WireError):
        return "malformed"
    if isinstance(exc, RollbackError | EquivocationError):
        return "stale"
    if isinstance(exc, ExpiredError):
        return "expired"
    if isinstance(exc, VerificationError):
        return "forged"
    return "malformed"


# -- the core -----------------------------------------------------------------------------


class Gossip:
    """One node's gossip: views, heartbeats, rumors, aggregates.  See the module docstring.

    ``now`` (monotonic seconds) starts the clock: the first round is due at once.
    """

    def __init__(
        self,
        *,
        key: SigningKey,
        contact: Contact,
        status: Status,
        rng: Rng,
        verify: Verifier,
        now: float,
        config: GossipConfig | None = None,
    ) -> None:
        self._config = config if config is not None else GossipConfig()
        self._key = key
        self._pub = key.public_key
        self._node = key.keyid
        if contact.node != self._node:
            raise ValueError("Gossip: contact.node must be this node's key id")
        self._contact = contact
        self._status = status
        self._rng = rng
        self._verify = verify
        self._round = 0
        self._next_round = now
        cfg = self._config
        self._next_shuffle = now + rng.uniform(*cfg.shuffle_interval)
        self._next_digest = now + rng.uniform(0.5, 1.0) * cfg.anti_entropy_interval
        self._next_heartbeat = now
        # membership
        self._links: dict[str, _Link] = {}
        self._active: dict[str, Contact | None] = {}
        self._passive: dict[str, Contact] = {}
        self._dialing: dict[str, tuple[str, float]] = {}  # node -> (purpose, since)
        self._asking: dict[str, float] = {}  # Neighbor/Join sent, reply pending
        self._shuffling: dict[str, tuple[tuple[Contact, ...], float]] = {}
        # heartbeats
        self._seq = 0
        self._heartbeat_to: dict[str, None] = {}  # new neighbours owed a heartbeat
        self._known: dict[str, _Known] = {}
        self._known_ids: dict[bytes, str] = {}
        # rumors
        self._seen: dict[bytes, _Seen] = {}
        self._rumors: dict[bytes, _Rumor] = {}
        self._held: dict[str, bytes] = {}  # slot -> id
        self._docs: dict[bytes, bytes] = {}  # id -> envelope, for held documents
        self._wants: dict[bytes, _Want] = {}
        self._served: dict[str, dict[bytes, float]] = {}
        # reputation
        self._scores: dict[str, _Score] = {}
        self._banned: dict[str, float] = {}
        # aggregates
        self._final: AggregateEstimate | None = None
        self._epoch = self._new_epoch(0)
        self._epoch.placeholder = True

    # -- read-only views --------------------------------------------------------------------

    @property
    def node(self) -> str:
        return self._node

    @property
    def contact(self) -> Contact:
        return self._contact

    @property
    def config(self) -> GossipConfig:
        return self._config

    @property
    def rounds(self) -> int:
        """Rounds run so far."""
        return self._round

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self._active)

    @property
    def passive(self) -> tuple[str, ...]:
        return tuple(self._passive)

    @property
    def linked(self) -> tuple[str, ...]:
        return tuple(self._links)

    @property
    def heartbeats(self) -> Mapping[str, Heartbeat]:
        """The newest verified heartbeat of each node known (this one excluded)."""
        return {n: k.heartbeat for n, k in self._known.items()}

    @property
    def held(self) -> Mapping[str, bytes]:
        """The newest document per slot: what anti-entropy advertises."""
        return {slot: self._docs[i] for slot, i in self._held.items()}

    def has_seen(self, doc_or_id: bytes) -> bool:
        """True once this rumor (envelope bytes or its 32-byte id) has been received."""
        rid = doc_or_id if len(doc_or_id) == _ID_LEN else rumor_id(doc_or_id)
        entry = self._seen.get(rid)
        return entry is not None and entry.fault is None

    def score(self, peer: str, now: float) -> float:
        s = self._scores.get(peer)
        return 0.0 if s is None else self._decayed(s, now)

    def is_banned(self, peer: str, now: float) -> bool:
        until = self._banned.get(peer)
        return until is not None and now < until

    @property
    def network_size(self) -> int:
        """N for the retransmit limit: the last epoch's node count (else ``assumed_size``),
        and never fewer than the nodes this one knows of directly."""
        known = 1 + len(self._active) + len(self._passive) + len(self._known)
        est = self._final
        if est is None or est.nodes < 1.0:
            return max(known, self._config.assumed_size)
        return max(known, round(est.nodes))

    @property
    def estimate(self) -> AggregateEstimate | None:
        """The last complete epoch's estimate (what status reports carry)."""
        return self._final

    @property
    def live_estimate(self) -> AggregateEstimate | None:
        """The running epoch's estimate so far (None until this node holds weight)."""
        ep = self._epoch
        if ep.weight <= 1e-12:
            return None
        w = ep.weight
        pools = {
            p: PoolTotals(capacity=m[0] / w, load=m[1] / w, serving=m[2] / w, nodes=m[3] / w)
            for p, m in ep.mass.items()
        }
        return AggregateEstimate(epoch=ep.number, pools=pools, complete=False)

    @property
    def epoch(self) -> int:
        return self._epoch.number

    # -- the sans-IO interface --------------------------------------------------------------

    def handle(self, event: Event, now: float, utc_now: int) -> list[Effect]:
        """Feed one event; return the effects to perform, in order."""
        handler = EVENT_HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"gossip has no handler for event {type(event).__name__}")
        out: Out = []
        handler(self, event, now, utc_now, out)
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (monotonic seconds)."""
        return self._next_round

    def handle_timer(self, now: float, utc_now: int) -> list[Effect]:
        """One gossip round.  An early or spurious call does nothing."""
        if now < self._next_round:
            return []
        cfg = self._config
        jitter = cfg.round_jitter
        step = cfg.round_interval
        if jitter:
            step *= 1.0 + jitter * (2.0 * self._rng.random() - 1.0)
        self._next_round = now + step
        self._round += 1
        out: Out = []
        for link in self._links.values():
            link.messages = 0
        self._expire(now, out)
        self._maintain(now, out)
        self._push_rumors(now, out)
        self._push_sum_round(utc_now, out)
        if cfg.heartbeat_interval > 0:
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + cfg.heartbeat_interval
                self._heartbeat_to.clear()
                self._send_heartbeat(tuple(self._active), utc_now, out)
            elif self._heartbeat_to:
                peers = tuple(p for p in self._heartbeat_to if p in self._active)
                self._heartbeat_to.clear()
                self._send_heartbeat(peers, utc_now, out)
        if now >= self._next_shuffle:
            self._next_shuffle = now + self._rng.uniform(*cfg.shuffle_interval)
            self._shuffle(now, out)
        if now >= self._next_digest:
            self._next_digest = now + cfg.anti_entropy_interval
            self._send_digest(out)
        return out

    def start_epoch(self) -> None:
        """Begin the next aggregation epoch now, ahead of the clock.

        The daemon never needs this (epochs follow the wall clock); simulations and tests
        use it to line measurements up with an epoch start.  Peers follow a share at most
        one epoch ahead of their own clock, so this works once per clock epoch.
        """
        self._finish_epoch()
        self._epoch = self._new_epoch(self._epoch.number + 1)

    # -- events -------------------------------------------------------------------------------

    def _on_introduced(self, ev: Introduced, now: float, utc_now: int, out: Out) -> None:
        for c in ev.contacts:
            self._add_passive(c, now)

    def _on_link_up(self, ev: LinkUp, now: float, utc_now: int, out: Out) -> None:
        peer = ev.peer
        if peer == self._node:
            out.append(Disconnect(peer=peer, reason="link to self"))
            return
        if self.is_banned(peer, now):
            out.append(Disconnect(peer=peer, reason="banned"))
            self._dialing.pop(peer, None)
            return
        link = self._links.get(peer)
        if link is None:
            same_host = sum(1 for lk in self._links.values() if lk.host == ev.host)
            if same_host >= self._config.max_links_per_host:
                self._dialing.pop(peer, None)
                out.append(
                    Disconnect(
                        peer=peer,
                        reason=f"sybil cap: {same_host} identities already linked from {ev.host}",
                    )
                )
                return
            link = _Link(host=ev.host, inbound=ev.inbound, since=now, heard=now, contact=ev.contact)
            self._links[peer] = link
        elif ev.contact is not None and link.contact is None:
            link.contact = ev.contact
        dial = self._dialing.pop(peer, None)
        if dial is None:
            return  # inbound: the peer speaks first (Join / Neighbor)
        purpose = dial[0]
        if purpose == "join":
            self._asking[peer] = now
            self._send(peer, Join(me=self._contact), out)
        elif peer not in self._active:
            self._ask_neighbor(peer, now, out, high=purpose == "neighbor-high")

    def _on_link_down(self, ev: LinkDown, now: float, utc_now: int, out: Out) -> None:
        self._forget_link(ev.peer)
        # HyParView: a failed active peer is dropped; the next round repairs from passive.

    def _on_dial_failed(self, ev: DialFailed, now: float, utc_now: int, out: Out) -> None:
        if self._dialing.pop(ev.node, None) is not None:
            self._passive.pop(ev.node, None)

    def _on_received(self, ev: Received, now: float, utc_now: int, out: Out) -> None:
        peer = ev.peer
        link = self._links.get(peer)
        if link is None:
            return  # a frame still in flight from a link we closed: nothing to act on
        link.heard = now
        link.messages += 1
        if link.messages > self._config.max_messages_per_round:
            if link.messages == self._config.max_messages_per_round + 1:
                self._penalise(peer, "flood", "too many messages in one round", now, out)
            return
        try:
            msg = decode_message(ev.data)
        except P2PUpdateError as exc:
            self._penalise(peer, _rule_for(exc), exc.message, now, out)
            return
        handler = MESSAGE_HANDLERS[type(msg)]
        try:
            handler(self, peer, msg, now, utc_now, out)
        except _Penalty as p:
            self._penalise(peer, p.rule, p.detail, now, out)
            return
        if type(msg) in _ACTIVE_ONLY and peer not in self._active and peer in self._links:
            self._one_sided(peer, now, out)

    def _on_publish(self, ev: Publish, now: float, utc_now: int, out: Out) -> None:
        """Our own document: verified like any other (a bad one raises, it is our bug)."""
        rid = rumor_id(ev.doc)
        if rid in self._seen:
            return
        env = Envelope.from_wire(ev.doc)
        if env.type not in RUMOR_TYPES:
            raise ValueError(f"a {env.type!r} document is not spread as a rumor")
        accepted = self._verify(ev.doc)
        self._seen[rid] = _Seen(at=now, senders=set())
        if accepted.new:
            self._hold(rid, ev.doc, accepted.slot)
            self._start_rumor(rid, ev.doc, set(), now, out)

    def _on_status(self, ev: StatusChanged, now: float, utc_now: int, out: Out) -> None:
        self._status = ev.status

    # -- messages: membership -----------------------------------------------------------------

    def _check_contact(self, peer: str, contact: Contact) -> None:
        if contact.node != peer:
            raise _Penalty("forged", "contact names another node than the linked one")

    def _on_join(self, peer: str, msg: Join, now: float, utc_now: int, out: Out) -> None:
        self._check_contact(peer, msg.me)
        if not self._may_activate(peer, high=True):
            self._send(peer, self._refusal(peer), out)
            return
        self._links[peer].contact = msg.me
        self._add_active(peer, msg.me, now, out)
        self._send(peer, NeighborReply(ok=True), out)
        fj = ForwardJoin(who=msg.me, ttl=self._config.active_walk)
        for other in self._active:
            if other != peer:
                self._send(other, fj, out)

    def _on_forward_join(
        self, peer: str, msg: ForwardJoin, now: float, utc_now: int, out: Out
    ) -> None:
        who = msg.who
        if who.node == self._node or who.node in self._active:
            return
        cfg = self._config
        if msg.ttl == 0 or len(self._active) <= 1:
            if who.node in self._links:
                if who.node not in self._asking:
                    self._ask_neighbor(who.node, now, out, high=True)
            elif who.node not in self._dialing and not self.is_banned(who.node, now):
                self._dialing[who.node] = ("neighbor-high", now)
                out.append(Dial(contact=who))
            return
        if msg.ttl == cfg.passive_walk:
            self._add_passive(who, now)
        nexts = [p for p in self._active if p != peer and p != who.node]
        if not nexts:
            return
        nxt = self._choice(nexts)
        self._send(nxt, ForwardJoin(who=who, ttl=msg.ttl - 1), out)

    def _on_neighbor(self, peer: str, msg: Neighbor, now: float, utc_now: int, out: Out) -> None:
        self._check_contact(peer, msg.me)
        link = self._links[peer]
        link.contact = msg.me
        if peer in self._active:
            self._send(peer, NeighborReply(ok=True), out)
            return
        if self._may_activate(peer, high=msg.high):
            self._add_active(peer, msg.me, now, out)
            self._send(peer, NeighborReply(ok=True), out)
        else:
            self._send(peer, self._refusal(peer), out)
            self._add_passive(msg.me, now)

    def _on_neighbor_reply(
        self, peer: str, msg: NeighborReply, now: float, utc_now: int, out: Out
    ) -> None:
        if self._asking.pop(peer, None) is None:
            raise _Penalty("unsolicited", "neighbor reply without a request")
        link = self._links[peer]
        if msg.ok:
            if peer not in self._active:
                self._add_active(peer, link.contact, now, out)
            return
        if link.contact is not None:
            self._add_passive(link.contact, now)  # still a good contact, just full
        for c in msg.peers:
            self._add_passive(c, now)
        if peer not in self._active and peer not in self._shuffling:
            self._close(peer, "neighbor request refused", out)

    def _on_prune(self, peer: str, msg: Prune, now: float, utc_now: int, out: Out) -> None:
        contact = self._active.pop(peer, None)
        if contact is not None:
            self._add_passive(contact, now)
        self._asking.pop(peer, None)

    def _on_shuffle(self, peer: str, msg: Shuffle, now: float, utc_now: int, out: Out) -> None:
        k = len(msg.peers)
        theirs = {c.node for c in msg.peers}
        pool = [c for c in self._passive.values() if c.node != peer and c.node not in theirs]
        reply = self._sample(pool, min(k, len(pool)))
        if len(reply) < k:  # a young passive view: top up from the active one
            more = [
                c
                for p, c in self._active.items()
                if c is not None and p != peer and p not in theirs
            ]
            reply += self._sample(more, min(k - len(reply), len(more)))
        self._send(peer, ShuffleReply(peers=tuple(reply)), out)
        self._integrate(msg.peers, reply, now)

    def _on_shuffle_reply(
        self, peer: str, msg: ShuffleReply, now: float, utc_now: int, out: Out
    ) -> None:
        pending = self._shuffling.pop(peer, None)
        if pending is None:
            raise _Penalty("unsolicited", "shuffle reply without a shuffle")
        self._integrate(msg.peers, pending[0], now)

    # -- messages: heartbeats -----------------------------------------------------------------

    def _on_heartbeat(
        self, peer: str, msg: HeartbeatMessage, now: float, utc_now: int, out: Out
    ) -> None:
        hid = rumor_id(msg.doc)
        origin = self._known_ids.get(hid)
        if origin is not None:  # the current heartbeat of a node we know: a duplicate
            current = self._known[origin]
            if peer in current.senders:
                raise _Penalty("replayed", "the same heartbeat twice from one peer")
            current.senders.add(peer)
            return
        try:
            hb = open_heartbeat(msg.doc).doc
        except P2PUpdateError as exc:
            raise _Penalty(_rule_for(exc), f"heartbeat: {exc.message}") from exc
        if utc_now > hb.expires + SKEW or hb.issued > utc_now + SKEW:
            raise _Penalty("expired", f"heartbeat of {hb.node[:12]} outside its validity")
        if hb.node == self._node:
            return  # our own, come back around
        known = self._known.get(hb.node)
        if known is not None and hb.seq <= known.heartbeat.seq:
            raise _Penalty("stale", f"heartbeat seq {hb.seq} <= known {known.heartbeat.seq}")
        if known is not None:
            self._known_ids.pop(known.id, None)
        self._known.pop(hb.node, None)
        self._known[hb.node] = _Known(heartbeat=hb, id=hid, received=now, senders={peer})
        self._known_ids[hid] = hb.node
        if len(self._known) > self._config.max_known_nodes:
            oldest = next(iter(self._known))
            self._known_ids.pop(self._known.pop(oldest).id, None)
        if msg.hops > 0:
            fwd = HeartbeatMessage(doc=msg.doc, hops=msg.hops - 1)
            targets = [p for p in self._active if p != peer and p != hb.node]
            for p in self._sample(targets, min(self._config.fanout, len(targets))):
                self._send(p, fwd, out)

    # -- messages: rumors ---------------------------------------------------------------------

    def _on_rumor(self, peer: str, msg: Rumor, now: float, utc_now: int, out: Out) -> None:
        self._receive_document(peer, msg.doc, rumor_id(msg.doc), now, out)

    def _on_doc(self, peer: str, msg: Doc, now: float, utc_now: int, out: Out) -> None:
        rid = rumor_id(msg.doc)
        want = self._wants.get(rid)
        if want is None or want.peer != peer:
            raise _Penalty("unsolicited", "a document nobody asked this peer for")
        del self._wants[rid]
        seen = self._seen.get(rid)
        if seen is not None and seen.fault is None:
            seen.senders.add(peer)  # it also came another way (or pushed by this very peer)
            return
        self._receive_document(peer, msg.doc, rid, now, out)

    def _on_ihave(self, peer: str, msg: IHave, now: float, utc_now: int, out: Out) -> None:
        self._want(peer, msg.ids, now, out)

    def _on_iwant(self, peer: str, msg: IWant, now: float, utc_now: int, out: Out) -> None:
        served = self._served.setdefault(peer, {})
        for rid in msg.ids:
            doc = self._docs.get(rid)
            if doc is None:
                rumor = self._rumors.get(rid)
                doc = rumor.doc if rumor is not None else None
            if doc is None:
                continue  # superseded since we announced it: not the asker's fault
            last = served.get(rid)
            if last is not None and now - last < self._config.want_timeout:
                raise _Penalty("replayed", "asked twice for the same document")
            served[rid] = now
            rumor = self._rumors.get(rid)
            if rumor is not None:
                rumor.told.add(peer)
            self._send(peer, Doc(doc=doc), out)

    def _on_digest(self, peer: str, msg: Digest, now: float, utc_now: int, out: Out) -> None:
        self._want(peer, msg.ids, now, out)
        theirs = set(msg.ids)
        extra = tuple(i for i in self._held.values() if i not in theirs)[:MAX_IDS]
        if extra:
            self._send(peer, IHave(ids=extra), out)

    # -- messages: aggregates -----------------------------------------------------------------

    def _on_aggregate(self, peer: str, msg: Aggregate, now: float, utc_now: int, out: Out) -> None:
        ep = self._epoch
        if msg.epoch < ep.number:
            return  # in flight across an epoch boundary
        if msg.epoch > ep.number:
            if msg.epoch > self._clock_epoch(utc_now) + 1:
                return  # further ahead than clock skew explains: not followed
            self._finish_epoch()
            self._epoch = ep = self._new_epoch(msg.epoch)
        if msg.leader == ep.leader:
            self._absorb(ep, peer, msg)
            return
        priority = leader_priority(msg.epoch, msg.leader)
        if priority < ep.priority:  # a better instance: join it, bringing our values once
            ep.leader, ep.priority = msg.leader, priority
            ep.mass = self._own_mass()
            ep.weight = 0.0
            ep.flows = {}
            self._absorb(ep, peer, msg)
        # a worse instance: drop it; our next share converts the sender

    # -- internals: randomness -----------------------------------------------------------------

    def _choice(self, seq: Sequence[T]) -> T:
        return seq[int(self._rng.random() * len(seq))]

    def _sample(self, seq: Sequence[T], k: int) -> list[T]:
        """``k`` distinct items in random order (partial Fisher-Yates on ``rng.random()``;
        ``random.sample`` costs several times more, and this runs for every share sent)."""
        pool = list(seq)
        n = len(pool)
        rand = self._rng.random
        for i in range(min(k, n)):
            j = i + int(rand() * (n - i))
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]

    # -- internals: membership ----------------------------------------------------------------

    def _send(self, peer: str, msg: Message, out: Out) -> None:
        out.append(Send(peer=peer, data=msg.to_wire()))

    def _host_of(self, peer: str) -> str | None:
        link = self._links.get(peer)
        if link is not None:
            return link.host
        c = self._passive.get(peer)
        return c.host if c is not None else None

    def _may_activate(self, peer: str, *, high: bool) -> bool:
        cfg = self._config
        host = self._links[peer].host
        same = sum(1 for p in self._active if p != peer and self._host_of(p) == host)
        if same >= cfg.max_active_per_host:
            return False
        if high:
            return True
        return len(self._active) + len(self._asking) < cfg.active_max

    def _add_active(self, peer: str, contact: Contact | None, now: float, out: Out) -> None:
        cfg = self._config
        if peer in self._active:
            if contact is not None:
                self._active[peer] = contact
            return
        while len(self._active) >= cfg.active_max:
            victims = [p for p in self._active if p != peer]
            victim = self._choice(victims)
            self._send(victim, Prune(), out)
            dropped = self._active[victim]
            self._close(victim, "evicted from a full active view", out)
            if dropped is not None:
                self._add_passive(dropped, now)
        self._active[peer] = contact
        self._passive.pop(peer, None)
        self._heartbeat_to[peer] = None

    def _add_passive(self, contact: Contact, now: float) -> None:
        node = contact.node
        if node == self._node or node in self._active or self.is_banned(node, now):
            return
        cfg = self._config
        if node not in self._passive:
            same = sum(1 for c in self._passive.values() if c.host == contact.host)
            if same >= cfg.max_passive_per_host:
                return
            if len(self._passive) >= cfg.passive_max:
                victims = list(self._passive)
                del self._passive[self._choice(victims)]
        self._passive[node] = contact

    def _integrate(self, received: Iterable[Contact], sent: Iterable[Contact], now: float) -> None:
        """Shuffle result: add what we got, making room by dropping what we sent first."""
        cfg = self._config
        sent_ids = [c.node for c in sent if c.node in self._passive]
        for c in received:
            if c.node == self._node or c.node in self._active or c.node in self._passive:
                continue
            if len(self._passive) >= cfg.passive_max and sent_ids:
                self._passive.pop(sent_ids.pop(), None)
            self._add_passive(c, now)

    def _one_sided(self, peer: str, now: float, out: Out) -> None:
        """``peer`` gossips to us as to an active neighbour, but it is not in our view.

        That happens when our request's ``NeighborReply`` was lost (or a ``Prune`` was):
        take the traffic as the answer if there is room, else prune the peer so both
        ends agree.  (Left alone, the peer would keep sending into a link we are about
        to close as idle, and push-sum mass sent on it would be lost with it.)
        """
        self._asking.pop(peer, None)
        if self._may_activate(peer, high=len(self._active) < self._config.active_min):
            self._add_active(peer, self._links[peer].contact, now, out)
        else:
            self._send(peer, Prune(), out)
            self._close(peer, "not in the active view", out)

    def _refusal(self, peer: str) -> NeighborReply:
        """No room here: suggest a few contacts (from both views) to try instead."""
        known = [c for p, c in self._active.items() if c is not None and p != peer]
        known += [c for p, c in self._passive.items() if p != peer]
        k = min(self._config.shuffle_passive, len(known))
        return NeighborReply(ok=False, peers=tuple(self._sample(known, k)))

    def _ask_neighbor(self, peer: str, now: float, out: Out, *, high: bool) -> None:
        self._asking[peer] = now
        self._send(peer, Neighbor(me=self._contact, high=high), out)

    def _forget_link(self, peer: str) -> None:
        self._links.pop(peer, None)
        self._active.pop(peer, None)
        self._asking.pop(peer, None)
        self._shuffling.pop(peer, None)
        self._dialing.pop(peer, None)
        self._served.pop(peer, None)
        self._heartbeat_to.pop(peer, None)

    def _close(self, peer: str, reason: str, out: Out, ban_until: float | None = None) -> None:
        self._forget_link(peer)
        out.append(Disconnect(peer=peer, reason=reason, ban_until=ban_until))

    def _maintain(self, now: float, out: Out) -> None:
        """Repair the active view from the passive view; join when we know too few."""
        cfg = self._config
        pending = len(self._asking) + len(self._dialing)
        missing = min(
            cfg.active_target - len(self._active) - pending, cfg.parallel_requests - pending
        )
        if missing <= 0:
            return
        candidates = [
            c
            for n, c in self._passive.items()
            if n not in self._dialing and n not in self._asking and not self.is_banned(n, now)
        ]
        if not candidates:
            if self._active and not self._shuffling:
                self._shuffle(now, out)  # out of contacts: ask a neighbour for some now
            return
        lonely = not self._active and not pending
        if lonely and len(self._passive) < cfg.active_target:
            c = self._choice(candidates)
            self._connect(c, "join", now, out)
            return
        hosts: dict[str, int] = {}
        for p in self._active:
            h = self._host_of(p)
            if h is not None:
                hosts[h] = hosts.get(h, 0) + 1
        picks = self._sample(candidates, len(candidates))
        # Below active_min a node asks with high priority (the receiver makes room): with
        # "only when empty" (HyParView), a node whose contacts are all full stays short.
        projected = len(self._active) + pending
        for c in picks:
            if missing <= 0:
                break
            if hosts.get(c.host, 0) >= cfg.max_active_per_host:
                continue
            hosts[c.host] = hosts.get(c.host, 0) + 1
            high = projected < cfg.active_min
            self._connect(c, "neighbor-high" if high else "neighbor", now, out)
            projected += 1
            missing -= 1

    def _connect(self, contact: Contact, purpose: str, now: float, out: Out) -> None:
        node = contact.node
        if node in self._links:
            if purpose == "join":
                self._asking[node] = now
                self._send(node, Join(me=self._contact), out)
            else:
                self._ask_neighbor(node, now, out, high=purpose == "neighbor-high")
            return
        self._dialing[node] = (purpose, now)
        out.append(Dial(contact=contact))

    def _shuffle(self, now: float, out: Out) -> None:
        if not self._active:
            return
        cfg = self._config
        actives = list(self._active)
        peer = self._choice(actives)
        known_active = [c for p, c in self._active.items() if c is not None and p != peer]
        sample = [self._contact]
        sample += self._sample(known_active, min(cfg.shuffle_active, len(known_active)))
        passive = [c for c in self._passive.values() if c.node != peer]
        sample += self._sample(passive, min(cfg.shuffle_passive, len(passive)))
        peers = tuple(sample)
        self._shuffling[peer] = (peers, now)
        self._send(peer, Shuffle(peers=peers), out)

    def _expire(self, now: float, out: Out) -> None:
        """Forget what timed out.  Runs every round; each sweep is skipped when empty."""
        cfg = self._config
        timeout = cfg.request_timeout
        if self._dialing:
            for node in [n for n, (_, t) in self._dialing.items() if now - t > timeout]:
                del self._dialing[node]
                self._passive.pop(node, None)
        if self._asking:
            for peer in [p for p, t in self._asking.items() if now - t > timeout]:
                del self._asking[peer]
        if self._shuffling:
            for peer in [p for p, (_, t) in self._shuffling.items() if now - t > timeout]:
                del self._shuffling[peer]
        if self._wants:
            for rid in [r for r, w in self._wants.items() if now - w.at > cfg.want_timeout]:
                del self._wants[rid]
        if self._banned:
            for peer in [p for p, until in self._banned.items() if now >= until]:
                del self._banned[peer]
        if self._round % 4 == 0:  # coarse: these timeouts are tens of seconds
            self._expire_links(now, out)
            ttl = cfg.heartbeat_ttl
            for node in [n for n, k in self._known.items() if now - k.received > ttl]:
                self._known_ids.pop(self._known.pop(node).id, None)
        seen = self._seen
        while seen:
            rid, entry = next(iter(seen.items()))
            if len(seen) <= cfg.seen_max and now - entry.at <= cfg.seen_ttl:
                break
            del seen[rid]
        if self._rumors:
            for rid in [r for r, rm in self._rumors.items() if now >= rm.expires]:
                del self._rumors[rid]

    def _expire_links(self, now: float, out: Out) -> None:
        """Close silent active links and idle links that serve no view."""
        cfg = self._config
        for peer, link in list(self._links.items()):
            if peer in self._active:
                if now - link.heard > cfg.silence_timeout:
                    self._close(peer, "silent", out)
            elif (
                peer not in self._asking
                and peer not in self._shuffling
                and now - link.since > cfg.idle_timeout
            ):
                self._close(peer, "idle", out)

    # -- internals: heartbeats -----------------------------------------------------------------

    def _send_heartbeat(self, peers: Iterable[str], utc_now: int, out: Out) -> None:
        peers = tuple(peers)
        if not peers:
            return
        cfg = self._config
        self._seq = max(self._seq + 1, utc_now * 1000)
        st = self._status
        hb = Heartbeat(
            node=self._node,
            pub=self._pub,
            seq=self._seq,
            version=st.version,
            artifact=st.artifact,
            state=st.state,
            pool=st.pool,
            load=st.load,
            capacity=st.capacity,
            issued=utc_now,
            expires=utc_now + cfg.heartbeat_ttl,
        )
        doc = hb.sign([self._key]).to_wire()
        msg = HeartbeatMessage(doc=doc, hops=cfg.heartbeat_hops).to_wire()
        for p in peers:
            out.append(Send(peer=p, data=msg))

    # -- internals: rumors ---------------------------------------------------------------------

    def _receive_document(self, peer: str, doc: bytes, rid: bytes, now: float, out: Out) -> None:
        seen = self._seen.get(rid)
        if seen is not None:
            if seen.fault is not None:
                raise _Penalty(seen.fault, "a document already found bad")
            if peer in seen.senders:
                raise _Penalty("replayed", "the same document twice from one peer")
            seen.senders.add(peer)
            rumor = self._rumors.get(rid)
            if rumor is not None:
                rumor.told.add(peer)
            return
        entry = _Seen(at=now, senders={peer})
        self._seen[rid] = entry
        try:
            env = Envelope.from_wire(doc)
            if env.type not in RUMOR_TYPES:
                raise SchemaError(
                    f"a {env.type!r} document does not travel as a rumor", rule="unknown-document"
                )
            accepted = self._verify(doc)
        except P2PUpdateError as exc:
            entry.fault = _rule_for(exc)
            raise _Penalty(entry.fault, f"document: {exc.message}") from exc
        if not accepted.new:
            return
        self._hold(rid, doc, accepted.slot)
        out.append(Deliver(doc=doc, slot=accepted.slot))
        self._start_rumor(rid, doc, {peer}, now, out)

    def _hold(self, rid: bytes, doc: bytes, slot: str) -> None:
        old = self._held.pop(slot, None)
        if old is not None:  # superseded: stop spreading it too
            self._docs.pop(old, None)
            self._rumors.pop(old, None)
        self._held[slot] = rid
        self._docs[rid] = doc
        if len(self._held) > self._config.held_max:
            oldest = next(iter(self._held))
            self._docs.pop(self._held.pop(oldest), None)

    def _start_rumor(self, rid: bytes, doc: bytes, told: set[str], now: float, out: Out) -> None:
        cfg = self._config
        budget = retransmit_limit(self.network_size, cfg.retransmit_mult)
        rumor = _Rumor(
            doc=doc,
            budget=budget,
            told=told,
            next_push=now + cfg.round_interval * 0.5,
            # long enough for every send at `fanout` per round, and for new neighbours
            expires=now + cfg.round_interval * (math.ceil(budget / cfg.fanout) + 10),
        )
        self._rumors[rid] = rumor
        self._push(rid, rumor, out)

    def _push(self, rid: bytes, rumor: _Rumor, out: Out) -> None:
        targets = [p for p in self._active if p not in rumor.told]
        k = min(self._config.fanout, rumor.budget, len(targets))
        if k <= 0:
            return
        data = (
            Rumor(doc=rumor.doc) if len(rumor.doc) <= MAX_INLINE_DOC else IHave(ids=(rid,))
        ).to_wire()
        for p in self._sample(targets, k):
            rumor.told.add(p)
            out.append(Send(peer=p, data=data))
        rumor.budget -= k

    def _push_rumors(self, now: float, out: Out) -> None:
        for rid, rumor in list(self._rumors.items()):
            if rumor.budget <= 0:
                del self._rumors[rid]
            elif now >= rumor.next_push:
                self._push(rid, rumor, out)

    def _want(self, peer: str, ids: Iterable[bytes], now: float, out: Out) -> None:
        want: list[bytes] = []
        for rid in ids:
            if rid in self._seen or rid in self._wants:
                continue
            if len(self._wants) >= self._config.max_wants:
                break
            self._wants[rid] = _Want(peer=peer, at=now)
            want.append(rid)
        if want:
            self._send(peer, IWant(ids=tuple(want)), out)

    def _send_digest(self, out: Out) -> None:
        """Advertise the documents held, after checking they are all still good.

        A held document can expire or be superseded in the shell's trust store (say, by a
        root rotation); announcing it would cost the peers who pull it, and us.
        """
        for slot, rid in list(self._held.items()):
            try:
                self._verify(self._docs[rid])
            except P2PUpdateError:
                del self._held[slot]
                self._docs.pop(rid, None)
        if not self._active or not self._held:
            return
        actives = list(self._active)
        peer = self._choice(actives)
        ids = tuple(self._held.values())[-MAX_IDS:]
        self._send(peer, Digest(ids=ids), out)

    # -- internals: aggregates -----------------------------------------------------------------

    def _own_mass(self) -> dict[str, list[float]]:
        return {self._status.pool: list(self._status.contribution)}

    def _new_epoch(self, number: int) -> _Epoch:
        return _Epoch(
            number=number,
            leader=self._node,
            priority=leader_priority(number, self._node),
            mass=self._own_mass(),
            weight=1.0,
        )

    def _finish_epoch(self) -> None:
        est = self.live_estimate
        if est is not None and not self._epoch.placeholder:
            self._final = AggregateEstimate(epoch=est.epoch, pools=est.pools, complete=True)

    def _absorb(self, ep: _Epoch, peer: str, msg: Aggregate) -> None:
        """Credit what ``peer`` passed us since its previous share (its running sum minus
        the last one we saw): a share that was lost arrives inside the next one."""
        flow = ep.flows.get(peer)
        if flow is None:
            flow = ep.flows[peer] = _Flow()
        ep.weight += msg.weight - flow.got_weight
        flow.got_weight = msg.weight
        mass, got = ep.mass, flow.got
        for pool, sums in msg.sums.items():
            m = mass.get(pool)
            if m is None:
                if len(mass) >= MAX_POOLS:
                    continue  # a pool too many: ignored alike in flows and in the estimate
                m = mass[pool] = [0.0, 0.0, 0.0, 0.0]
            old = got.get(pool)
            if old is None:
                old = got[pool] = [0.0, 0.0, 0.0, 0.0]
            m[0] += sums[0] - old[0]
            m[1] += sums[1] - old[1]
            m[2] += sums[2] - old[2]
            m[3] += sums[3] - old[3]
            old[0], old[1], old[2], old[3] = sums

    def _clock_epoch(self, utc_now: int) -> int:
        cfg = self._config
        return int(utc_now // (cfg.epoch_rounds * cfg.round_interval))

    def _push_sum_round(self, utc_now: int, out: Out) -> None:
        ep = self._epoch
        clock = self._clock_epoch(utc_now)
        if clock > ep.number:
            self._finish_epoch()
            self._epoch = ep = self._new_epoch(clock)
        if not self._active or ep.weight <= 0.0:
            return
        actives = list(self._active)
        k = min(self._config.aggregate_fanout, len(actives))
        share = 1.0 / (k + 1)
        share_w = ep.weight * share
        shares = {p: [x * share for x in m] for p, m in ep.mass.items()}
        leader = bytes.fromhex(ep.leader)
        for peer in self._sample(actives, k):
            flow = ep.flows.get(peer)
            if flow is None:
                flow = ep.flows[peer] = _Flow()
            flow.sent_weight += share_w
            sent = flow.sent
            for pool, sh in shares.items():
                f = sent.get(pool)
                if f is None:
                    sent[pool] = list(sh)
                else:
                    f[0] += sh[0]
                    f[1] += sh[1]
                    f[2] += sh[2]
                    f[3] += sh[3]
            # Aggregate(...).to_wire(), spelled out: this runs for every share of every
            # node every round.  At most MAX_POOLS pools, so always within 1,200 bytes.
            data = wire.encode(
                {"k": "agg", "e": ep.number, "l": leader, "w": flow.sent_weight, "s": sent}
            )
            out.append(Send(peer=peer, data=data))
        ep.weight = share_w
        ep.mass = shares

    # -- internals: reputation -----------------------------------------------------------------

    def _decayed(self, s: _Score, now: float) -> float:
        dt = max(0.0, now - s.at)
        return s.value * math.exp(-math.log(2.0) * dt / self._config.score_half_life)

    def _penalise(self, peer: str, rule: str, detail: str, now: float, out: Out) -> None:
        points = PENALTIES[rule]
        s = self._scores.get(peer)
        value = (0.0 if s is None else self._decayed(s, now)) + points
        self._scores[peer] = _Score(value=value, at=now)
        out.append(Penalised(peer=peer, rule=rule, points=points, score=value, detail=detail))
        cfg = self._config
        if value >= cfg.ban_score:
            until = now + cfg.ban_seconds
            self._banned[peer] = until
            self._passive.pop(peer, None)
            self._close(peer, f"banned: {rule}", out, ban_until=until)
        elif value >= cfg.disconnect_score:
            self._passive.pop(peer, None)
            self._close(peer, f"misbehaving: {rule}", out)


def _mrow(
    cls: type[M], handler: Callable[[Gossip, str, M, float, int, Out], None]
) -> tuple[type[Message], MessageHandler]:
    return cls, cast(MessageHandler, handler)


def _erow(
    cls: type[E], handler: Callable[[Gossip, E, float, int, Out], None]
) -> tuple[type[Event], EventHandler]:
    return cls, cast(EventHandler, handler)


#: Every message kind and the one handler that runs for it.
MESSAGE_HANDLERS: Final[Mapping[type[Message], MessageHandler]] = dict(
    [
        _mrow(Join, Gossip._on_join),
        _mrow(ForwardJoin, Gossip._on_forward_join),
        _mrow(Neighbor, Gossip._on_neighbor),
        _mrow(NeighborReply, Gossip._on_neighbor_reply),
        _mrow(Prune, Gossip._on_prune),
        _mrow(Shuffle, Gossip._on_shuffle),
        _mrow(ShuffleReply, Gossip._on_shuffle_reply),
        _mrow(HeartbeatMessage, Gossip._on_heartbeat),
        _mrow(Rumor, Gossip._on_rumor),
        _mrow(IHave, Gossip._on_ihave),
        _mrow(IWant, Gossip._on_iwant),
        _mrow(Digest, Gossip._on_digest),
        _mrow(Doc, Gossip._on_doc),
        _mrow(Aggregate, Gossip._on_aggregate),
    ]
)
assert set(MESSAGE_HANDLERS) == set(MESSAGE_TYPES.values())

#: Kinds that only ever travel to active neighbours (the evidence ``_one_sided`` uses).
_ACTIVE_ONLY: Final = frozenset({Aggregate, Rumor, HeartbeatMessage, Digest, Shuffle})

#: Every event and its handler.
EVENT_HANDLERS: Final[Mapping[type[Event], EventHandler]] = dict(
    [
        _erow(Introduced, Gossip._on_introduced),
        _erow(LinkUp, Gossip._on_link_up),
        _erow(LinkDown, Gossip._on_link_down),
        _erow(DialFailed, Gossip._on_dial_failed),
        _erow(Received, Gossip._on_received),
        _erow(Publish, Gossip._on_publish),
        _erow(StatusChanged, Gossip._on_status),
    ]
)
