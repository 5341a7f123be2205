"""What the shell tells the gossip core (events) and what the core asks of it (effects).

The sans-IO contract (README "Architecture"): the shell feeds ``Event`` values to
``Gossip.handle`` with a monotonic ``now`` and a wall-clock ``utc_now``, and performs the
``Effect`` values it gets back, in order.  The core never touches a link; the shell never
decides who to link to, what to send or whom to punish.  One frozen class per kind; the
front's ``EVENT_HANDLERS`` names the one handler for each event.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..coordproto import MAX_SIGNAL
from .links import PATH_KINDS
from .values import Contact, Status, check_node

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
    address dialed, for an outbound link; None for an inbound one.  ``path``: what the
    link runs over (``links.PATH_KINDS``: ``tcp``, or the selected ICE candidate pair's
    kind of an rtc link; ``relay`` is a cost).  The shell keeps one link per peer id and
    reports it once.
    """

    peer: str
    host: str
    inbound: bool
    contact: Contact | None = None
    path: str = "tcp"

    def __post_init__(self) -> None:
        check_node(self.peer, "LinkUp.peer")
        if self.path not in PATH_KINDS:
            raise ValueError(f"LinkUp.path must be one of {', '.join(PATH_KINDS)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkDown(Event):
    """The link to ``peer`` closed (either side, any reason).

    ``lost``: it was not closed in order but broke or went silent (NAT rebinding, a router
    reboot, a peer gone without a word): the peer is redialed, with backoff.  A link the
    peer closed in order (after its ``Prune``, or as it stopped) is not.
    """

    peer: str
    reason: str = "closed"
    lost: bool = False


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
class SendSignal(Event):
    """Relay a signaling blob (an rtc offer or answer) to node ``to`` through linked peers:
    through ``via`` only when given (an answer goes back the way its offer came), else
    through every linked peer but ``to`` (whichever links to ``to`` forwards it).  No
    ``Send`` comes back when there is no such peer: no path."""

    to: str
    data: bytes
    via: str | None = None

    def __post_init__(self) -> None:
        check_node(self.to, "SendSignal.to")
        if self.via is not None:
            check_node(self.via, "SendSignal.via")
        if not 0 < len(self.data) <= MAX_SIGNAL:
            raise ValueError(f"SendSignal.data must be 1-{MAX_SIGNAL} bytes")


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkPinned(Event):
    """The chunk swarm uses the link to ``peer`` (``pinned``) or stopped using it.

    A pinned link in no view is not closed as idle (a holder the swarm dialed for an
    artifact, or a fetcher that dialed us): the swarm closes it itself when done.  Such a
    link going down soon after it came up is no failure of the peer (no redial backoff).
    Pinning changes no view: the link may still become an active one the usual way."""

    peer: str
    pinned: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerBanned(Event):
    """Another protocol over the node's links (the chunk swarm) proved ``peer`` bad: gossip
    bans it too until ``until`` (monotonic), drops it from its views and closes its link."""

    peer: str
    reason: str
    until: float


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
class Signaled(Effect):
    """A signaling blob ``sender`` addressed to this node, relayed by the linked peer
    ``via`` (opaque here: the shell verifies its signature).  Each blob comes out once,
    however many peers relayed it."""

    sender: str
    data: bytes
    via: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Penalised(Effect):
    """``peer`` lost ``points`` for ``rule`` (for logs and metrics; the core acts itself)."""

    peer: str
    rule: str
    points: float
    score: float
    detail: str
