"""What the shell tells the swarm (events) and what the swarm asks of it (effects).

The sans-IO contract, as in ``core.gossip.events``: the shell feeds ``Event`` values to
``Swarm.handle`` with a monotonic ``now``, calls ``handle_timer`` when ``get_timer`` says,
and performs the ``Effect`` values it gets back, in order.  The swarm never touches a link,
a file or the origin; the shell never decides what to request, whom to serve or whom to
punish.  One frozen class per kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import Block

# -- events (shell -> swarm) --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Something the shell tells the swarm.  One frozen class per kind."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Opened(Event):
    """Start a swarm session with ``peer`` (a linked, proven node) about ``artifact``: our
    bitfield goes out.  A peer's bitfield for an artifact we track opens one too."""

    peer: str
    artifact: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerGone(Event):
    """The link to ``peer`` closed: its sessions end, its requests go elsewhere."""

    peer: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Received(Event):
    """One swarm message (the bytes of one frame) from ``peer``."""

    peer: str
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class OriginChunk(Event):
    """The bytes the origin served for a ``FetchFromOrigin`` chunk (verified here)."""

    artifact: str
    index: int
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class OriginFailed(Event):
    """The origin could not serve a ``FetchFromOrigin`` chunk (it is wanted again).

    ``retry_after``: the origin said "try-peers" (over its downloader cap) and when to come
    back; the swarm then leaves the origin alone that long and gets the chunk from peers.
    A shell that waits out the ``retry_after`` itself and fetches again need not send this.
    """

    artifact: str
    index: int
    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class UplinkMeasured(Event):
    """The shell measured this node's uplink (bytes/s): the upload bucket follows it."""

    rate: float


@dataclass(frozen=True, kw_only=True, slots=True)
class HolderDialed(Event):
    """The shell is opening a link to a node whose heartbeats say it holds or fetches
    ``artifact`` (``holders.pick_holders``): a peer is coming, so a download that peers gave
    nothing waits ``origin_grace`` for it, not ``origin_idle``, before it goes to the origin
    (a node that joins a rollout late otherwise fetched chunks from the origin in the
    second before its link to the holder was up)."""

    artifact: str


@dataclass(frozen=True, kw_only=True, slots=True)
class HolderKnown(Event):
    """The node's heartbeats name these ``nodes`` as holding ``artifact`` whole (the shell
    tells it on each sweep while that is so).  If one of them has no answered session
    here (linked but its bitfield not in yet, being dialed by gossip, no contact known
    yet) and is not banned, it is not release day, when nobody has anything: a download
    that peers gave nothing waits ``origin_grace`` for it, not ``origin_idle``, as after
    ``HolderDialed``.  Still bounded: after the grace idle, the origin.  (A node of the
    homes demo's second ramp stage took all of v2 from the origin 1 s after its prefetch
    began, with the canary holding it for 20 s: two copies for 18 nodes, 11 %, over the
    demo's 10 %.)"""

    artifact: str
    nodes: tuple[str, ...]


# -- effects (swarm -> shell) -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Effect:
    """Something the shell must do."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Send(Effect):
    """Send ``data`` (one frame) to ``peer``; drop it if the link is gone."""

    peer: str
    data: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class Serve(Effect):
    """Read ``length`` bytes at ``offset`` of verified chunk ``chunk`` from the store and
    send them to ``peer`` as ``message(data)`` (the rate limit already allowed it)."""

    peer: str
    artifact: str
    chunk: int
    offset: int
    length: int

    def message(self, data: bytes) -> bytes:
        """The ``Block`` frame carrying ``data`` (exactly ``length`` bytes)."""
        if len(data) != self.length:
            raise ValueError(f"Serve: {len(data)} bytes read, {self.length} asked")
        return Block(
            artifact=self.artifact, chunk=self.chunk, offset=self.offset, data=data
        ).to_wire()


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkVerified(Effect):
    """Chunk ``index`` arrived and matches the release: store it.  ``source``: the peer
    whose blocks made it (several: comma-joined), or ``origin``."""

    artifact: str
    index: int
    data: bytes
    source: str


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchFromOrigin(Effect):
    """Fetch these chunks from the origin (``OriginChunk`` / ``OriginFailed`` each).

    ``reason`` says it for a log line (with its figures); ``rule`` is the rule that sent them,
    without figures, for counting (``SwarmService.origin_why``)."""

    artifact: str
    chunks: tuple[int, ...]
    reason: str
    rule: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class OriginRefused(Effect):
    """The origin's bytes for chunk ``index`` do not match the release (log and count it;
    the chunk is wanted again, from peers or, after ``origin_grace``, the origin)."""

    artifact: str
    index: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Completed(Effect):
    """Every chunk of ``artifact`` is verified and stored."""

    artifact: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Penalised(Effect):
    """``peer`` lost ``points`` for ``rule`` (logs, metrics; the swarm acts itself)."""

    peer: str
    rule: str
    points: float
    score: float
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Drop(Effect):
    """End the swarm sessions with ``peer`` (it misbehaved or is useless, not proven bad)."""

    peer: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Ban(Effect):
    """``peer`` is proven bad: close its link and refuse it until ``until`` (monotonic)."""

    peer: str
    reason: str
    until: float
