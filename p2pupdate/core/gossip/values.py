"""The values gossip passes around, and what the shell lends it: randomness and a verifier.

``Contact`` (how to reach a node), ``Status`` (what this node's heartbeats and push-sum
contributions say), the push-sum estimates (``PoolTotals``, ``AggregateEstimate``), and
the two things the shell supplies because the core may not own them: an ``Rng`` (the core
draws no randomness of its own) and a ``Verifier`` (the shell's ``TrustStore`` judges every
signed document but heartbeats, so the core needs no notion of roots or floors).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..documents import FRACTION_WHOLE, MAX_HOLDINGS, NODE_STATES, Holding
from ..errors import SchemaError


def check_node(value: str, where: str) -> None:
    """A node id is a key id: 64 lowercase hex digits (``ValueError`` otherwise)."""
    if len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError(f"{where}: node id must be 64 lowercase hex digits")


def rumor_id(doc: bytes) -> bytes:
    """A rumor's identity (and a heartbeat's): sha256 of the envelope bytes exactly as
    received."""
    return hashlib.sha256(doc).digest()


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
        check_node(self.node, "Contact.node")
        if not 0 < len(self.host) <= 64 or not self.host.isprintable() or " " in self.host:
            raise ValueError(f"Contact.host: 1-64 printable characters, got {self.host!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"Contact.port out of range: {self.port}")

    def to_obj(self) -> dict[str, Any]:
        return {"n": bytes.fromhex(self.node), "h": self.host, "p": self.port}


@dataclass(frozen=True, kw_only=True, slots=True)
class Status:
    """What this node's heartbeats and aggregate contributions say about it."""

    version: str
    artifact: str
    state: str
    pool: str
    load: float
    capacity: float
    #: The artifacts this node holds or is fetching (at most ``MAX_HOLDINGS``): what peers
    #: learn from its heartbeats to find holders (``Gossip.holders``).
    holdings: tuple[Holding, ...] = ()

    def __post_init__(self) -> None:
        if len(self.version) > 64 or len(self.pool) > 64:
            raise ValueError("Status: version and pool are at most 64 characters")
        if self.pool.startswith("\x00"):
            raise ValueError("Status.pool: may not start with NUL (push-sum's version keys)")
        if len(self.holdings) > MAX_HOLDINGS:
            raise ValueError(f"Status.holdings: at most {MAX_HOLDINGS}")
        if len({h.artifact for h in self.holdings}) != len(self.holdings):
            raise ValueError("Status.holdings: an artifact named twice")
        check_node(self.artifact, "Status.artifact")
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
    """The push-sum estimate of one epoch.  ``complete``: the epoch ran to its end.

    ``versions``: the number of nodes running each version (at most ``MAX_VERSIONS``;
    a version longer than 63 characters is not counted), whole fleet, all pools.
    """

    epoch: int
    pools: Mapping[str, PoolTotals]
    complete: bool
    versions: Mapping[str, float] = field(default_factory=dict)

    @property
    def nodes(self) -> float:
        return sum(p.nodes for p in self.pools.values())


def holdings_from_summary(
    summary: Mapping[str, tuple[int, int]], running: str | None = None
) -> tuple[Holding, ...]:
    """What a heartbeat says from a chunk store's ``{artifact: (held, total)}``.

    At most ``MAX_HOLDINGS``: the running artifact first (peers roll out to it), then the
    artifacts being fetched (a fetching node is a holder of what it has, and the swarm
    needs them found early), then other whole ones; ties by artifact, so the summary is
    the same every round.  A whole artifact is ``held``; a partial one ``fetching`` with
    the share of its chunks held, rounded down so 255 means every chunk.  An entry that is
    not a sha256 or has a nonsense count is left out, not raised: the store is ours.
    """

    def rank(item: tuple[str, tuple[int, int]]) -> tuple[int, str]:
        artifact, (have, total) = item
        if artifact == running:
            return (0, artifact)
        return (1 if have < total else 2, artifact)

    out: list[Holding] = []
    for artifact, (have, total) in sorted(summary.items(), key=rank):
        if len(out) == MAX_HOLDINGS:
            break
        if total <= 0 or not 0 <= have <= total:
            continue
        whole = have == total
        fraction = FRACTION_WHOLE if whole else min(have * FRACTION_WHOLE // total, 254)
        try:
            out.append(
                Holding(artifact=artifact, state="held" if whole else "fetching", fraction=fraction)
            )
        except SchemaError:
            continue
    return tuple(out)
