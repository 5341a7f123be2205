"""The trio shell around ``core.gossip``: links, dials, timers and what delivered rumors do.

``GossipService`` owns one ``core.gossip.Gossip`` and is the only code that touches it.  The
core decides everything (who to link to, what to send, whom to punish); this module carries
out its effects and reports back (README "Architecture"):

=============  ============================================================================
``Send``       queued on the peer's link (a bounded queue per link, one writer task each;
               a full queue drops the frame -- gossip repairs loss, a stalled peer must not
               stall the core)
``Dial``       the transports ``core.gossip.link_plan`` lists, in order: ``net.rtc.dial_rtc``
               (the offer through the coordinator's ``signal`` relay, else through linked
               peers), then ``net.tcp``; the link must prove ``contact.node``; ``LinkUp``
               (with the link's path kind) or ``DialFailed``
``Signaled``   an rtc blob a linked peer relayed to us: an offer is answered
               (``accept_rtc``), an answer goes to the dial that waits for it
``Disconnect`` the link's queue is closed, the writer flushes it and closes the link
``Deliver``    ``on_deliver(doc, slot)`` (the node verifies nothing again: the verifier did)
``Penalised``  logged (at most one line per peer and rule per minute)
=============  ============================================================================

**The chunk swarm shares the links** (README "The swarm in the daemon").  A frame whose
kind is a swarm kind (``core.swarm.is_swarm_kind``; the kind is the first key of every
frame both cores write) goes to ``swarm`` (``daemon.swarm.SwarmService``), never to the
gossip core; every link up and down is told to it too.  Swarm frames have their own bounded
queue per link (``SwarmQueue``), drained by a second writer that shares the link with the
gossip writer (one send at a time): a block waits for room there (``send_block``) instead
of being dropped like a gossip frame, since a dropped block costs its requester a
``request_timeout``; small swarm frames (bitfields, requests, haves) have a reserve of
their own in that queue.  The swarm may open a few extra links to holders (``open_extra``):
the core is told ``LinkUp`` as for a link the peer dialed, and ``LinkPinned`` so it does not
close it as idle; ``close_extra`` ends it (an active neighbour's link is only unpinned).
A swarm ban reaches gossip's reputation (``ban``: ``PeerBanned``), which closes the link.

**One link per peer id.**  Two nodes that dial each other at once end up with two links
(tcp, rtc, or one of each: the offerer of an rtc link is its dialer); both sides keep the
one *dialed by the lower node id* and close the other, so they agree without talking.  A new link in the same direction as the one held replaces it (the dialer
gave the old one up).  The core is told ``LinkUp`` once per peer; a replacement is silent.

**rtc links and signaling** (README "Gossip and links").  With ``rtc`` on, a dial to a
non-loopback contact offers a WebRTC data channel first.  The offer blob (node-signed, so
no relay can alter it) goes through the coordinator (``signals.send_signal``, contract C2)
when a replica takes it, and through every linked peer as well when no answer came within
``RELAY_GRACE`` or no replica took it; the answer comes back the same ways (``on_signal``,
or the core's ``Signaled``).  An offer that arrives is verified, refused as a replay when
the node's ``NonceCache`` saw its session, and answered the way it came.  ICE servers (STUN,
and TURN with a credential the replica minted) come from ``signals.ice_servers()`` at each
dial and answer.  A peer that leaves an offer unanswered is dialed by tcp only for
``UNANSWERED_TTL``.  Bytes over links whose path is ``relay`` (a TURN server) are counted:
relay is a cost.

**Keepalive.**  A link that sent nothing for ``KEEPALIVE`` sends an empty frame (never
handed to the core); one that received nothing for ``LINK_DEAD`` is closed as *lost*, like
one that broke, and the core redials its peer with backoff.  A link the peer closed in
order is not lost.

**Where contacts come from.**  ``--peer HOST:PORT`` (static bootstrap: the node id is not
known in advance, so the shell opens a link once to learn it from the handshake, closes it
and hands the contact to the core as ``Introduced``), the coordinator's introductions
(``peers``), and whatever ``add_contacts`` is given (zeroconf).  Both sources are asked
again every few seconds while the active view is short, every minute otherwise.

The clock is the node's :class:`~p2pupdate.clock.Clock`: the core's ``now`` is
``clock.monotonic()`` (trio's clock, so a test on ``MockClock`` moves every round and timer)
and its ``utc_now`` is ``clock.utc_now()``.  The RNG is the node's.  Heartbeats carry
``status()`` (refreshed every round, cheap).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..clock import Clock
from ..core import coordproto as proto
from ..core import documents as docs
from ..core import gossip as g
from ..core import timing
from ..core.crypto import SigningKey
from ..core.errors import SchemaError
from ..core.swarm import is_swarm_kind
from ..net.addresses import split_hostport
from ..net.base import Link, LinkConfig
from ..net.errors import (
    HandshakeReplayError,
    LinkBrokenError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
    SignalError,
)
from ..net.handshake import NonceCache
from ..net.tcp import connect_tcp, serve_tcp
from .truststate import TrustFile

if TYPE_CHECKING:
    from ..net.rtc import RtcLink


#: Frames waiting per link before new ones are dropped.
SEND_QUEUE = 64
#: Swarm frames waiting per link: blocks (``send_block`` waits beyond it), and all frames
#: (small ones are dropped beyond it: they are few, and the swarm's deadlines repair loss).
SWARM_BLOCKS = 8
SWARM_FRAMES = 72
#: How often contacts are sought while the active view is short / full (seconds).
SEEK_SHORT = 3.0
SEEK_FULL = 60.0
#: Contacts asked of the coordinator at a time (its ``MAX_PEERS`` is 32).
INTRODUCTIONS = 16
#: One log line per (peer, rule) per this many seconds.
PENALTY_LOG_INTERVAL = 60.0
#: A link that has sent nothing for this long sends an empty frame ...
KEEPALIVE = 2.0
#: ... and one that has received nothing for this long is closed as lost.
LINK_DEAD = 8.0
#: The longest an rtc attempt (offer, answer, ICE, DTLS, the handshake) may take before
#: the dial falls back to tcp (``GossipConfig.dial_timeout`` leaves tcp its time after it).
RTC_DIAL_TIMEOUT = 15.0
#: After a replica took an offer, how long its answer may take before the offer also goes
#: through linked peers (the peer may be connected to no replica at all).
RELAY_GRACE = 3.0
#: A peer that left an offer unanswered (rtc off, or a node without rtc) is dialed by tcp
#: only, for this long.
UNANSWERED_TTL = 600.0
#: Offers answered at once (each costs a peer connection until ICE settles).
MAX_ACCEPTS = 8

Introducer = Callable[[int], Awaitable[list[g.Contact]]]


class Signals(Protocol):
    """The coordinator's side of rtc signaling (``daemon.coordinator.CoordinatorLink``,
    contract C2): ICE servers for this node, and a relay of opaque blobs to another node
    (its pushes come back through ``GossipService.on_signal``)."""

    async def ice_servers(self) -> list[dict[str, Any]]: ...

    async def send_signal(self, to: str, data: bytes) -> bool: ...


def seek_interval(*, short: bool, fruitless: int) -> float:
    """Seconds between seeks for contacts (before jitter): ``SEEK_FULL`` when the active view
    is full, else ``SEEK_SHORT`` doubled per seek in a row that brought nobody new, up to
    ``SEEK_FULL``.  ``fruitless`` has no upper bound (a fleet of three never fills a view of
    six), so the doubling is ``timing.capped_exponential``'s, whose exponent is bounded."""
    if not short:
        return SEEK_FULL
    return timing.capped_exponential(SEEK_SHORT, SEEK_FULL, fruitless)


class SwarmSink(Protocol):
    """What the links tell the chunk swarm (``daemon.swarm.SwarmService``)."""

    def frame(self, peer: str, data: bytes) -> None: ...

    def link_up(self, peer: str) -> None: ...

    def link_down(self, peer: str) -> None: ...


def frame_kind(data: bytes) -> str | None:
    """The kind of a frame, read from its first map key without decoding it (every message
    of both cores starts ``{"k": KIND, ...``); None when it does not start that way (the
    gossip core then decodes it and judges it)."""
    if len(data) < 4 or not 0x81 <= data[0] <= 0x8F or data[1:3] != b"\xa1k":
        return None
    head = data[3]
    if not 0xA0 <= head <= 0xBF:
        return None
    raw = data[4 : 4 + (head - 0xA0)]
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def is_swarm_frame(data: bytes) -> bool:
    """Whether a frame is the chunk swarm's (``core.swarm.is_swarm_kind`` of its kind)."""
    return is_swarm_kind(frame_kind(data))


class SwarmQueue:
    """One link's queue of swarm frames: at most ``blocks`` blocks (``put_block`` waits for
    room) and ``frames`` frames in all (``put_nowait`` refuses beyond it).  Small frames
    (requests, cancels, haves) go out before the blocks queued (in order among
    themselves): a request or cancel stuck behind a second of blocks stalls the peer's
    pipeline or arrives too late to save a duplicate."""

    def __init__(self, *, blocks: int = SWARM_BLOCKS, frames: int = SWARM_FRAMES) -> None:
        self.max_blocks = blocks
        self.max_frames = frames
        self._small: deque[bytes] = deque()
        self._queue: deque[bytes] = deque()  # blocks
        self.closed = False
        self._readers = trio.lowlevel.ParkingLot()
        self._writers = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._small) + len(self._queue)

    def put_nowait(self, data: bytes) -> bool:
        if self.closed or len(self) >= self.max_frames:
            return False
        self._small.append(data)
        self._readers.unpark()
        return True

    async def put_block(self, data: bytes) -> bool:
        """Queue a block once there is room; False if the link closed first."""
        while not self.closed and (
            len(self._queue) >= self.max_blocks or len(self) >= self.max_frames
        ):
            await self._writers.park()
        if self.closed:
            return False
        self._queue.append(data)
        self._readers.unpark()
        return True

    async def get(self) -> bytes | None:
        """The next frame (a small one first); None once closed and empty."""
        while not self._small and not self._queue and not self.closed:
            await self._readers.park()
        if self._small:
            data = self._small.popleft()
        elif self._queue:
            data = self._queue.popleft()
        else:
            return None
        self._writers.unpark()
        return data

    def close(self) -> None:
        self.closed = True
        self._readers.unpark_all()
        self._writers.unpark_all()


def _no_status() -> g.Status:
    raise RuntimeError("GossipService.status was never set")


#: ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); raises ``ValueError`` (one home, shared
#: with the command line's checks).
parse_hostport = split_hostport


def link_address(host: str, port: int) -> str:
    """What goes into a status report's ``addrs`` (and a zeroconf record): ``tcp:HOST:PORT``."""
    return f"tcp:{host}:{port}"


def parse_link_address(text: str, observed: str = "") -> tuple[str, int] | None:
    """``tcp:HOST:PORT`` -> (host, port), with a wildcard host replaced by ``observed``
    (the address the coordinator saw the node connect from).  None if unusable."""
    if not text.startswith("tcp:"):
        return None
    try:
        host, port = parse_hostport(text[4:])
    except ValueError:
        return None
    if host in ("0.0.0.0", "::", ""):
        if not observed:
            return None
        host = observed
    if port == 0:
        return None
    return host, port


@dataclass(kw_only=True, slots=True)
class _Peer:
    link: Link
    outbound: bool
    send: trio.MemorySendChannel[bytes]
    recv: trio.MemoryReceiveChannel[bytes]
    #: ``core.gossip.PATH_KINDS``: ``tcp``, or the rtc link's candidate pair kind.
    path: str
    #: Monotonic times of the last frame sent and received (the keepalive's clock).
    sent: float
    heard: float
    bytes_in: int = 0
    bytes_out: int = 0
    #: Monotonic time the link came up (``links_detail``: since when, for operators).
    since: float = 0.0
    closing: bool = False
    #: Closed because it broke or went silent (not in order): the core redials the peer.
    lost: bool = False
    why: str = "closed"
    #: Swarm frames (their own queue and writer) and the one-send-at-a-time lock.
    swarm: SwarmQueue = field(default_factory=SwarmQueue)
    lock: trio.Lock = field(default_factory=trio.Lock)
    #: Opened by the swarm (``open_extra``), not by the core.
    extra: bool = False


def path_of(link: Link) -> str:
    """A link's path kind: ``tcp`` for a stream link, an rtc link's selected pair kind."""
    path = getattr(link, "path", "tcp")  # only an ``RtcLink`` has one
    return path if path in g.PATH_KINDS else "unknown"


@dataclass(kw_only=True, slots=True)
class GossipStats:
    """Counters for status files and the bench."""

    links_up: int = 0
    links_down: int = 0
    dials: int = 0
    dial_failures: int = 0
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    delivered: int = 0
    penalties: int = 0
    rejected_handshakes: int = 0
    #: Bytes sent and received over links whose path is ``relay`` (TURN): relay is a cost.
    relayed_bytes: int = 0
    keepalives_out: int = 0
    links_lost: int = 0
    rtc_dials: int = 0
    rtc_failures: int = 0
    offers_answered: int = 0
    offers_refused: int = 0
    #: Offers whose session the node's nonce cache had seen (a replay, or a second path).
    offers_replayed: int = 0
    #: Signaling blobs that verify as neither an offer nor an awaited answer (altered or
    #: forged in transit): dropped before anything is dialed.
    signals_refused: int = 0
    #: Frames handed to the swarm instead of the gossip core; its extra links.
    swarm_frames_in: int = 0
    extra_links_opened: int = 0
    extra_links_closed: int = 0
    last_penalty: dict[str, str] = field(default_factory=dict)


class GossipService:
    """One node's gossip over tcp and rtc links.  ``run`` it in the daemon's nursery.

    ``rtc``: dial rtc first where ``link_plan`` says so, and answer offers (the node sets it
    from ``--rtc``).  ``signals``: the coordinator's signaling and ICE servers, if any."""

    def __init__(
        self,
        *,
        key: SigningKey,
        clock: Clock,
        status: Callable[[], g.Status] | None = None,
        verify: g.Verifier,
        listen: tuple[str, int],
        advertise: str | None = None,
        peers: Sequence[tuple[str, int]] = (),
        introducer: Introducer | None = None,
        on_deliver: Callable[[bytes, str], None] = lambda _d, _s: None,
        rng: random.Random | None = None,
        config: g.GossipConfig | None = None,
        link_config: LinkConfig | None = None,
        log: Callable[[str], None] = lambda _m: None,
        rtc: bool = False,
        signals: Signals | None = None,
        keepalive: float = KEEPALIVE,
        link_dead: float = LINK_DEAD,
    ) -> None:
        self.key = key
        self.node = key.keyid
        #: The owner's clock: ``monotonic`` for the core's ``now``, ``wall`` for expiry.
        self.clock = clock
        #: What heartbeats say about this node; the ``Node`` sets it when it is not given.
        self.status: Callable[[], g.Status] = status if status is not None else _no_status
        self.verify = verify
        self.listen_host, self.listen_port = listen
        self.advertise_host = advertise
        self.static_peers = list(peers)
        self.introducer = introducer
        self.on_deliver = on_deliver
        self.rng = rng if rng is not None else random.Random()
        self.config = config if config is not None else g.GossipConfig()
        self.link_config = link_config if link_config is not None else LinkConfig()
        self.log = log
        self.rtc = rtc
        self.signals = signals
        self.keepalive = keepalive
        self.link_dead = link_dead
        #: The node's one cache of handshake nonces and offer sessions (replays refused).
        self.nonces = NonceCache()
        self.stats = GossipStats()
        self.core: g.Gossip | None = None
        self.port = 0
        self._peers: dict[str, _Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._penalty_logged: dict[tuple[str, str], float] = {}
        self._unpublished: list[bytes] = []
        self._static_ids: dict[tuple[str, int], str] = {}
        self._epoch_seen: tuple[int, float] | None = None
        #: Dials waiting for an rtc answer: peer -> (the offer's session, where it goes).
        self._answers: dict[str, tuple[bytes, trio.MemorySendChannel[bytes]]] = {}
        self._unanswered: dict[str, float] = {}
        self._accepting = 0
        self._rtc_logged: dict[str, float] = {}
        #: The chunk swarm sharing these links (the node sets it; None: no swarm).
        self.swarm: SwarmSink | None = None
        self._extra_dials: set[str] = set()

    # -- public ------------------------------------------------------------------------------

    @property
    def advertised(self) -> str:
        """This node's link address (a wildcard listen host without ``advertise`` stays a
        wildcard: whoever reads it substitutes the address it observed)."""
        return link_address(self.advertise_host or self.listen_host, self.port)

    def add_contacts(self, contacts: Sequence[g.Contact]) -> None:
        """Contacts found outside gossip (zeroconf, introductions)."""
        mine = [c for c in contacts if c.node != self.node]
        if mine:
            self._handle(g.Introduced(contacts=tuple(mine)))

    def publish(self, doc: bytes) -> bool:
        """Spread a verified document of ours (one the coordinator sent); False if refused.

        Before ``run`` started the core, the document waits for it."""
        if self.core is None:
            self._unpublished.append(doc)
            return True
        try:
            self._handle(g.Publish(doc=doc))
        except Exception as exc:  # the verifier said no (say, older than what we hold)
            self.log(f"gossip: not publishing a document: {type(exc).__name__}: {exc}")
            return False
        return True

    @property
    def contact(self) -> g.Contact:
        """What peers are told to dial (valid once ``run`` started)."""
        return g.Contact(node=self.node, host=self._contact_host(), port=self.port)

    def linked(self) -> list[str]:
        return list(self._peers)

    def estimate(self, pool: str) -> tuple[g.PoolTotals, float] | None:
        """The last complete epoch's totals for ``pool`` and their age in seconds."""
        est = self.core.estimate if self.core is not None else None
        if est is None or self._epoch_seen is None:
            return None
        totals = est.pools.get(pool)
        if totals is None:
            return None
        return totals, max(0.0, self.clock.monotonic() - self._epoch_seen[1])

    def versions(self) -> tuple[Mapping[str, float], float] | None:
        """The last complete epoch's count of nodes per version and its age in seconds."""
        est = self.core.estimate if self.core is not None else None
        if est is None or self._epoch_seen is None or not est.versions:
            return None
        return est.versions, max(0.0, self.clock.monotonic() - self._epoch_seen[1])

    def paths(self) -> dict[str, str]:
        """Each linked peer's path kind (``tcp``, ``host``, ``srflx``, ``prflx``, ``relay``)."""
        return {peer: entry.path for peer, entry in self._peers.items()}

    def links_detail(self, limit: int = 64) -> list[dict[str, object]]:
        """Each link for the status file (``p2pupdate status``): the peer, its path kind,
        who dialed (``out``: this node), and since when (wall seconds), at most ``limit``."""
        now, wall = self.clock.monotonic(), self.clock.wall()
        return [
            {
                "peer": peer,
                "path": entry.path,
                "direction": "out" if entry.outbound else "in",
                "since": round(wall - (now - entry.since), 1),
            }
            for peer, entry in sorted(self._peers.items())[:limit]
        ]

    def summary(self) -> dict[str, object]:
        core = self.core
        paths = self.paths()
        transports = {"tcp": 0, "rtc": 0}
        for path in paths.values():
            transports["tcp" if path == "tcp" else "rtc"] += 1
        return {
            "node": self.node,
            "port": self.port,
            "address": self.advertised,
            "rtc": self.rtc,
            "active": len(core.active) if core else 0,
            "passive": len(core.passive) if core else 0,
            "links": len(self._peers),
            "linked": sorted(self._peers)[:16],
            "paths": dict(sorted(paths.items())[:64]),
            "transports": transports,
            "relayed_bytes": self.stats.relayed_bytes,
            "rounds": core.rounds if core else 0,
            "frames_in": self.stats.frames_in,
            "frames_out": self.stats.frames_out,
            "links_lost": self.stats.links_lost,
            "signals_refused": self.stats.signals_refused,
            "penalties": self.stats.penalties,
        }

    def on_signal(self, sender: str, data: bytes) -> None:
        """A blob the coordinator relayed from ``sender`` (``CoordinatorLink.on_signal``)."""
        self._signal_in(sender, data, via=None)

    # -- running -----------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, then run rounds and seek contacts forever; ``started(port)``."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.port = await nursery.start(self._serve)
            # no checkpoint between the listener starting and the core existing, so no
            # inbound link can arrive before there is a core to tell
            self.core = g.Gossip(
                key=self.key,
                contact=g.Contact(node=self.node, host=self._contact_host(), port=self.port),
                status=self.status(),
                rng=self.rng,
                verify=self.verify,
                now=self.clock.monotonic(),
                config=self.config,
            )
            for doc in self._unpublished:
                self.publish(doc)
            self._unpublished.clear()
            nursery.start_soon(self._rounds)
            nursery.start_soon(self._seek)
            task_status.started(self.port)

    def _contact_host(self) -> str:
        """The host peers are told to dial (a wildcard listen address needs ``advertise``)."""
        if self.advertise_host:
            return self.advertise_host
        host = self.listen_host
        return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host

    async def _serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_tcp(
            self._inbound,
            key=self.key,
            host=self.listen_host,
            port=self.listen_port,
            config=self.link_config,
            on_reject=self._rejected,
            nonces=self.nonces,
            task_status=task_status,
        )

    def _rejected(self, exc: LinkError, host: str) -> None:
        self.stats.rejected_handshakes += 1

    async def _rounds(self) -> None:
        core = self.core
        assert core is not None
        while True:
            when = core.get_timer()
            await trio.sleep_until(math.inf if when is None else when)
            try:
                status = self.status()
            except Exception as exc:  # a status that cannot be built: keep the last one
                self.log(f"gossip: status unavailable: {type(exc).__name__}: {exc}")
            else:
                self._handle(g.StatusChanged(status=status))
            self._perform(core.handle_timer(self.clock.monotonic(), self.clock.utc_now()))
            est = core.estimate
            if est is not None and (self._epoch_seen is None or self._epoch_seen[0] != est.epoch):
                self._epoch_seen = (est.epoch, self.clock.monotonic())

    async def _seek(self) -> None:
        """Static peers and introductions, often while the active view is short.

        "Often" backs off (3 s, 6 s, ... up to a minute, +-20% jitter) while asking brings
        nobody new: a fleet of three can never fill a view of six, and must not dial all day
        trying.  A lost link brings the next seek forward, but no sooner than the backoff.
        """
        core = self.core
        assert core is not None
        fruitless = 0
        while True:
            before = len(core.active)
            short = before < self.config.active_min
            if short:
                async with trio.open_nursery() as nursery:
                    for host, port in self.static_peers:
                        if self._static_ids.get((host, port)) not in self._peers:
                            nursery.start_soon(self._probe, host, port)
                    if self.introducer is not None:
                        nursery.start_soon(self._introductions)
            jitter = self.rng.uniform(0.8, 1.2)
            # A lost link (``_wake``) ends the wait early, but never the backoff itself: a
            # peer that takes every link and drops it at once would otherwise be sought
            # (probed, and the coordinator asked for introductions) after every drop.
            floor = seek_interval(short=True, fruitless=fruitless) * jitter
            ceiling = seek_interval(short=short, fruitless=fruitless) * jitter
            await trio.sleep(min(floor, ceiling))
            with trio.move_on_after(max(0.0, ceiling - floor)):
                await self._wake.wait()
            self._wake = trio.Event()
            fruitless = fruitless + 1 if short and len(core.active) <= before else 0

    async def _introductions(self) -> None:
        assert self.introducer is not None
        try:
            contacts = await self.introducer(INTRODUCTIONS)
        except Exception as exc:  # the coordinator is optional: log and carry on
            self.log(f"gossip: introductions failed: {type(exc).__name__}: {exc}")
            return
        self.add_contacts(contacts)

    async def _probe(self, host: str, port: int) -> None:
        """Learn a static peer's node id from the handshake, then introduce it."""
        try:
            link = await self._connect(host, port, None)
        except LinkError:
            return
        peer = link.peer
        self._static_ids[(host, port)] = peer
        await link.aclose()
        if peer != self.node and peer not in self._peers:
            self.add_contacts([g.Contact(node=peer, host=host, port=port)])

    # -- the core ----------------------------------------------------------------------------

    def _handle(self, event: g.Event) -> None:
        core = self.core
        assert core is not None
        self._perform(core.handle(event, self.clock.monotonic(), self.clock.utc_now()))

    def _perform(self, effects: list[g.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, g.Send):
                self._send(effect.peer, effect.data)
            elif isinstance(effect, g.Dial):
                assert self._nursery is not None
                self.stats.dials += 1
                self._nursery.start_soon(self._dial, effect.contact)
            elif isinstance(effect, g.Disconnect):
                self._disconnect(effect.peer)
            elif isinstance(effect, g.Deliver):
                self.stats.delivered += 1
                try:
                    self.on_deliver(effect.doc, effect.slot)
                except Exception as exc:  # the node's reaction must not stop gossip
                    self.log(f"gossip: acting on a {effect.slot} failed: {exc!r}")
            elif isinstance(effect, g.Penalised):
                self._penalised(effect)
            elif isinstance(effect, g.Signaled):
                self._signal_in(effect.sender, effect.data, via=effect.via)

    def _penalised(self, p: g.Penalised) -> None:
        self.stats.penalties += 1
        now = self.clock.monotonic()
        key = (p.peer, p.rule)
        if now - self._penalty_logged.get(key, -math.inf) >= PENALTY_LOG_INTERVAL:
            self._penalty_logged[key] = now
            self.log(
                f"gossip: peer {p.peer[:12]} penalised {p.points:g} for {p.rule} "
                f"(score {p.score:g}): {p.detail}"
            )

    def _send(self, peer: str, data: bytes) -> None:
        entry = self._peers.get(peer)
        if entry is None or entry.closing:
            return
        try:
            entry.send.send_nowait(data)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.stats.frames_dropped += 1

    def _disconnect(self, peer: str) -> None:
        entry = self._peers.pop(peer, None)
        if entry is None:
            return
        entry.closing = True
        entry.send.close()  # the writer flushes what is queued, then closes the link
        entry.swarm.close()
        if self.swarm is not None:
            self.swarm.link_down(peer)

    def _link_gone(self, peer: str, entry: _Peer) -> None:
        """``entry``, the link of ``peer``, is gone (not replaced): tell the cores."""
        self.stats.links_down += 1
        self.stats.links_lost += entry.lost
        if self.core is not None:
            with contextlib.suppress(Exception):
                self._handle(g.LinkDown(peer=peer, reason=entry.why, lost=entry.lost))
        if self.swarm is not None:
            self.swarm.link_down(peer)
        self._wake.set()

    # -- the swarm's side of the links ---------------------------------------------------------

    def send_swarm(self, peer: str, data: bytes) -> bool:
        """Queue a small swarm frame on ``peer``'s link; False if gone or its queue is full."""
        entry = self._peers.get(peer)
        if entry is None or entry.closing:
            return False
        if entry.swarm.put_nowait(data):
            return True
        self.stats.frames_dropped += 1
        return False

    async def send_block(self, peer: str, data: bytes) -> bool:
        """Queue a block on ``peer``'s link, waiting for room; False if the link went."""
        entry = self._peers.get(peer)
        if entry is None or entry.closing:
            return False
        return await entry.swarm.put_block(data)

    def contact_of(self, node: str) -> g.Contact | None:
        """Where ``node`` can be dialed, from what the core knows (its views and links)."""
        return self.core.contact_of(node) if self.core is not None else None

    def holders(self, artifact: str) -> list[tuple[str, str, int]]:
        """``Gossip.holders``: nodes whose heartbeats say they hold or fetch ``artifact``."""
        return self.core.holders(artifact) if self.core is not None else []

    def is_banned(self, peer: str) -> bool:
        core = self.core
        return core is not None and core.is_banned(peer, self.clock.monotonic())

    def extra_links(self) -> list[str]:
        """Peers linked by ``open_extra`` (still linked)."""
        return [p for p, e in self._peers.items() if e.extra]

    def open_extra(self, contact: g.Contact) -> bool:
        """Dial ``contact`` for the swarm (rtc first where ``link_plan`` says so, then tcp): a
        link in no view, pinned; False if one is there or being dialed already, the peer
        is banned, or gossip is not running."""
        node, nursery = contact.node, self._nursery
        if (
            nursery is None
            or node == self.node
            or node in self._peers
            or node in self._extra_dials
            or self.is_banned(node)
        ):
            return False
        self._extra_dials.add(node)
        nursery.start_soon(self._dial_extra, contact)
        return True

    async def _dial_extra(self, contact: g.Contact) -> None:
        try:
            await self._dial(contact, extra=True)  # the transports a core dial would try
        finally:
            self._extra_dials.discard(contact.node)

    def close_extra(self, peer: str) -> None:
        """The swarm is done with ``peer``'s extra link: closed, unless gossip made it an
        active neighbour meanwhile (then only unpinned)."""
        entry = self._peers.get(peer)
        core = self.core
        if entry is None or core is None:
            return
        if peer in core.active:
            entry.extra = False
            self._handle(g.LinkPinned(peer=peer, pinned=False))
            return
        self._disconnect(peer)
        self._handle(g.LinkDown(peer=peer, reason="swarm done"))
        self.stats.links_down += 1
        self.stats.extra_links_closed += 1
        self._wake.set()

    def pin(self, peer: str, pinned: bool) -> None:
        """Tell the core the swarm uses (or stopped using) ``peer``'s link."""
        if peer in self._peers and self.core is not None:
            self._handle(g.LinkPinned(peer=peer, pinned=pinned))

    def ban(self, peer: str, reason: str, until: float) -> None:
        """A swarm ban (proven bad data): gossip bans the node too and closes its link."""
        if self.core is None:
            return
        self._handle(g.PeerBanned(peer=peer, reason=reason, until=until))
        if peer in self._peers:  # (the core knew no link of it: close it all the same)
            self._disconnect(peer)

    # -- links -------------------------------------------------------------------------------

    async def _connect(self, host: str, port: int, expected: str | None) -> Link:
        """``net.tcp.connect_tcp``, but from our own listen address when it is a specific one.

        The remote side counts identities per *source* address (gossip's Sybil cap), so a
        node that listens on 10.0.0.5 must also dial from it; on a host with several
        addresses the kernel's default source could be any of them.  Nodes on one machine
        that listen on distinct loopback addresses (127.0.0.2, ...) stay distinct that way.
        """
        local = self.listen_host
        return await connect_tcp(
            host,
            port,
            key=self.key,
            expected_peer=expected,
            config=self.link_config,
            local_address=None if local in ("", "0.0.0.0", "::") else local,
        )

    async def _dial(self, contact: g.Contact, *, extra: bool = False) -> None:
        """Carry out a ``Dial``: each transport ``link_plan`` names, until one links.

        ``extra``: the swarm's dial (``open_extra``), not the core's: the link is pinned,
        and a failure is only logged (the core asked for nothing)."""
        peer = contact.node
        plan = g.link_plan(
            contact,
            rtc=self.rtc,
            signaling=self._can_signal(peer),
            unanswered=self._was_unanswered(peer),
        )
        failures = []
        for transport in plan:
            if peer in self._peers:
                return  # the peer linked to us meanwhile (crossed): reuse it, open no second
            try:
                if transport == "rtc":
                    link: Link = await self._dial_rtc(peer)
                else:
                    link = await self._connect(contact.host, contact.port, peer)
            except LinkError as exc:
                failures.append(f"{transport}: {exc}")
                continue
            if extra:
                self.stats.extra_links_opened += 1
            await self._adopt(link, outbound=True, contact=contact, extra=extra)
            return
        if extra:
            self.log(f"swarm: extra link to {peer[:12]} failed: {'; '.join(failures)}"[:300])
            return
        self.stats.dial_failures += 1
        if peer not in self._peers:
            self._handle(g.DialFailed(node=peer, reason="; ".join(failures)[:200]))

    # -- rtc ---------------------------------------------------------------------------------

    def _can_signal(self, peer: str) -> bool:
        """Whether an offer could reach ``peer``: a coordinator, or a linked peer to relay."""
        core = self.core
        return self.signals is not None or (core is not None and core.can_relay(peer))

    def _was_unanswered(self, peer: str) -> bool:
        at = self._unanswered.get(peer)
        if at is None:
            return False
        if self.clock.monotonic() - at < UNANSWERED_TTL:
            return True
        del self._unanswered[peer]
        return False

    async def _ice_servers(self) -> list[dict[str, Any]]:
        if self.signals is None:
            return []
        try:
            return list(await self.signals.ice_servers())
        except Exception as exc:  # C2 says never; a node without ICE servers still has host
            self.log(f"gossip: no ICE servers: {type(exc).__name__}: {exc}")
            return []

    def _relay(self, to: str, data: bytes, *, via: str | None = None) -> bool:
        """Send a blob through linked peers (the core picks them); False: no path."""
        core = self.core
        if core is None or len(data) > proto.MAX_SIGNAL:
            return False  # (an offer over the relays' bound: the coordinator refuses it too)
        effects = core.handle(
            g.SendSignal(to=to, data=data, via=via), self.clock.monotonic(), self.clock.utc_now()
        )
        sent = any(isinstance(e, g.Send) for e in effects)
        self._perform(effects)
        return sent

    async def _signal(
        self, to: str, data: bytes, recv: trio.MemoryReceiveChannel[bytes], sent: list[bool]
    ) -> bytes:
        """Send an offer to ``to`` (a replica first, then linked peers) and wait for the
        answer ``recv`` gets; ``sent`` gets a True once some path took the offer."""
        coordinated = False
        if self.signals is not None:
            try:
                coordinated = await self.signals.send_signal(to, data)
            except Exception as exc:  # C2 says never; count it as "not taken"
                self.log(f"gossip: the coordinator's signal relay failed: {exc!r}")
        if coordinated:
            sent.append(True)
            with trio.move_on_after(RELAY_GRACE):
                return await recv.receive()
        if self._relay(to, data):
            sent.append(True)
        elif not coordinated:
            raise LinkBrokenError(f"no signaling path to {to[:12]}")
        return await recv.receive()

    async def _dial_rtc(self, peer: str) -> RtcLink:
        """Offer an rtc link to ``peer``; the answer comes back through ``_signal_in``."""
        from ..net import rtc  # at first use (see ``_accept_rtc``)

        self.stats.rtc_dials += 1
        answered = False
        sent: list[bool] = []

        async def exchange(offer: bytes) -> bytes:
            nonlocal answered
            session = rtc.open_signal(offer, me=peer, kind="offer").session  # our own blob
            send, recv = trio.open_memory_channel[bytes](1)
            self._answers[peer] = (session, send)
            try:
                answer = await self._signal(peer, offer, recv, sent)
            finally:
                if self._answers.get(peer, (b"", None))[1] is send:
                    del self._answers[peer]
            answered = True
            return answer

        try:
            ice = await self._ice_servers()
            with trio.fail_after(RTC_DIAL_TIMEOUT):
                return await rtc.dial_rtc(
                    key=self.key,
                    peer=peer,
                    exchange=exchange,
                    config=self.link_config,
                    ice_servers=ice,
                    nonces=self.nonces,
                )
        except (LinkError, trio.TooSlowError) as exc:
            self.stats.rtc_failures += 1
            if sent and not answered:  # offered, and the peer said nothing
                self._unanswered[peer] = self.clock.monotonic()
                if len(self._unanswered) > 4096:
                    del self._unanswered[next(iter(self._unanswered))]
            what = "no answer" if sent and not answered else f"{type(exc).__name__}: {exc}"
            self._rtc_note(peer, f"gossip: rtc to {peer[:12]} failed ({what}); trying tcp")
            if isinstance(exc, trio.TooSlowError):
                raise LinkTimeoutError(f"rtc to {peer[:12]}: no link in time") from exc
            raise

    def _rtc_note(self, peer: str, line: str, *, what: str = "failed") -> None:
        """Log ``line`` at most once per (peer, ``what``) per ``PENALTY_LOG_INTERVAL``."""
        now = self.clock.monotonic()
        key = f"{what}:{peer}"
        if now - self._rtc_logged.get(key, -math.inf) >= PENALTY_LOG_INTERVAL:
            self._rtc_logged[key] = now
            if len(self._rtc_logged) > 1024:
                del self._rtc_logged[next(iter(self._rtc_logged))]
            self.log(line)

    def _signal_in(self, sender: str, data: bytes, *, via: str | None) -> None:
        """A signaling blob from ``sender`` (via the coordinator when ``via`` is None, else
        relayed by the linked peer ``via``): an offer to answer, or the answer a dial of
        ours waits for.  Anything else is dropped (the signatures decide, not the relay)."""
        if sender == self.node:
            return
        from ..net import rtc  # at first use (see ``_accept_rtc``)

        try:
            rtc.open_signal(data, me=self.node, kind="offer", sender=sender)
        except SignalError:
            pass
        else:
            self._offer_in(sender, data, via)
            return
        try:
            answer = rtc.open_signal(data, me=self.node, kind="answer", sender=sender)
        except SignalError as exc:
            # neither an offer nor the answer we wait for, signed by ``sender`` for us:
            # altered or forged on the way (the relay's doing, or the sender's)
            self.stats.signals_refused += 1
            relay = "the coordinator" if via is None else f"peer {via[:12]}"
            self._rtc_note(
                sender,
                f"gossip: a signaling blob from {sender[:12]} (relayed by {relay}) refused: {exc}",
                what="signal",
            )
            return
        waiting = self._answers.get(sender)
        if waiting is None or waiting[0] != answer.session:
            return  # an answer nobody waits for (late, or a copy through another path)
        send = waiting[1]
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            send.send_nowait(data)

    def _offer_in(self, sender: str, offer: bytes, via: str | None) -> None:
        core, nursery = self.core, self._nursery
        if not self.rtc or core is None or nursery is None:
            self.stats.offers_refused += 1
            return  # rtc off: the offer goes unanswered, the dialer falls back to tcp
        if self._accepting >= MAX_ACCEPTS or core.is_banned(sender, self.clock.monotonic()):
            self.stats.offers_refused += 1
            return
        self._accepting += 1
        nursery.start_soon(self._accept_rtc, sender, offer, via)

    async def _accept_rtc(self, sender: str, offer: bytes, via: str | None) -> None:
        # ``net.rtc`` is imported where it is used: a node that never links by rtc does not
        # carry asyncio and its bridge (about 2 MB of an idle daemon's RSS).
        from ..net import rtc

        async def reply(answer: bytes) -> None:
            """The answer goes back the way the offer came."""
            if via is None:
                taken = self.signals is not None and await self.signals.send_signal(sender, answer)
                if not taken:
                    raise LinkBrokenError("no replica took the rtc answer")
            elif not self._relay(sender, answer, via=via):
                raise LinkBrokenError(f"the relaying peer {via[:12]} is gone")

        try:
            try:
                ice = await self._ice_servers()
                with trio.fail_after(RTC_DIAL_TIMEOUT):
                    link = await rtc.accept_rtc(
                        offer,
                        key=self.key,
                        reply=reply,
                        expected_peer=sender,
                        config=self.link_config,
                        ice_servers=ice,
                        nonces=self.nonces,
                    )
            finally:
                self._accepting -= 1
        except HandshakeReplayError:
            self.stats.offers_replayed += 1
            return  # the same offer again (a replay, or through a second path): answered once
        except (LinkError, trio.TooSlowError) as exc:
            self.stats.offers_refused += 1
            what = f"{type(exc).__name__}: {exc}" if isinstance(exc, LinkError) else "timeout"
            self._rtc_note(sender, f"gossip: rtc offer from {sender[:12]} failed: {what}")
            return
        self.stats.offers_answered += 1
        await self._adopt(link, outbound=False, contact=None)

    # -- running links -----------------------------------------------------------------------

    async def _inbound(self, link: Link) -> None:
        await self._adopt(link, outbound=False, contact=None)

    async def _adopt(
        self, link: Link, *, outbound: bool, contact: g.Contact | None, extra: bool = False
    ) -> None:
        """Run one link until it closes (this task is its reader)."""
        peer = link.peer
        if peer == self.node:
            await link.aclose()
            return
        existing = self._peers.get(peer)
        if existing is not None:
            # Crossed dials: keep the link dialed by the lower node id (both ends pick the
            # same one).  A second link in the same direction replaces the first: the
            # dialer evidently gave the old one up (we may not have noticed yet).
            dialer_new = self.node if outbound else peer
            if existing.outbound != outbound and dialer_new != min(self.node, peer):
                await link.aclose()
                return
            existing.closing = True
            existing.send.close()
            existing.swarm.close()
            extra = extra or existing.extra
        send, recv = trio.open_memory_channel[bytes](SEND_QUEUE)
        now = self.clock.monotonic()
        path = path_of(link)
        entry = _Peer(
            link=link,
            outbound=outbound,
            send=send,
            recv=recv,
            path=path,
            sent=now,
            heard=now,
            since=now,
            extra=extra,
        )
        self._peers[peer] = entry
        if existing is None or existing.path != path:  # a replacement is silent but its path
            if existing is None:
                self.stats.links_up += 1
            if path != "tcp":
                how = "offered" if outbound else "answered"
                line = f"gossip: rtc link with {peer[:12]} ({how}; path {path})"
                self._rtc_note(peer, line, what="up")
            self._handle(
                g.LinkUp(
                    peer=peer, host=link.host, inbound=not outbound, contact=contact, path=path
                )
            )
            if extra and self._peers.get(peer) is entry:
                self._handle(g.LinkPinned(peer=peer))
            if self.swarm is not None and self._peers.get(peer) is entry:
                self.swarm.link_up(peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, entry)
                nursery.start_soon(self._swarm_writer, entry)
                nursery.start_soon(self._keepalive, entry)
                await self._reader(entry)
                nursery.cancel_scope.cancel()
        finally:
            entry.swarm.close()
            with trio.CancelScope(shield=True):
                await link.aclose()
            if self._peers.get(peer) is entry:
                del self._peers[peer]
                self._link_gone(peer, entry)

    async def _reader(self, entry: _Peer) -> None:
        link = entry.link
        while not entry.closing:
            try:
                data = await link.receive()
            except LinkClosedError:
                return  # closed in order (or by us: then ``lost``/``why`` say why)
            except LinkError as exc:
                if not entry.closing:
                    entry.lost, entry.why = True, f"broken: {exc}"[:200]
                return
            if entry.closing or self._peers.get(link.peer) is not entry:
                return
            entry.heard = self.clock.monotonic()
            entry.bytes_in += len(data)
            if entry.path == "relay":
                self.stats.relayed_bytes += len(data)
            if not data:
                continue  # a keepalive: for this shell only, never for the core
            self.stats.frames_in += 1
            if self.swarm is not None and is_swarm_frame(data):
                self.stats.swarm_frames_in += 1
                self.swarm.frame(link.peer, data)
                continue
            self._handle(g.Received(peer=link.peer, data=data))

    async def _swarm_writer(self, entry: _Peer) -> None:
        """Drain the link's swarm queue, one send at a time with the gossip writer."""
        link = entry.link
        while (data := await entry.swarm.get()) is not None:
            try:
                async with entry.lock:
                    await link.send(data)
            except (LinkError, ValueError) as exc:
                if not entry.closing and isinstance(exc, LinkError):
                    entry.lost, entry.why = True, f"broken: {exc}"[:200]
                    entry.closing = True
                    with trio.CancelScope(shield=True):
                        await link.aclose()  # the reader sees it and ends the link
                return
            entry.sent = self.clock.monotonic()
            entry.bytes_out += len(data)
            if entry.path == "relay":
                self.stats.relayed_bytes += len(data)
            self.stats.frames_out += 1

    async def _writer(self, entry: _Peer) -> None:
        link = entry.link
        async for data in entry.recv:
            try:
                async with entry.lock:
                    await link.send(data)
            except (LinkError, ValueError) as exc:
                if not entry.closing and isinstance(exc, LinkError):
                    entry.lost, entry.why = True, f"broken: {exc}"[:200]
                break
            entry.sent = self.clock.monotonic()
            entry.bytes_out += len(data)
            if entry.path == "relay":
                self.stats.relayed_bytes += len(data)
            if data:
                self.stats.frames_out += 1
            else:
                self.stats.keepalives_out += 1
        # queue closed (Disconnect, or replaced by a better duplicate) or the link broke
        entry.closing = True
        await link.aclose()

    async def _keepalive(self, entry: _Peer) -> None:
        """An empty frame after ``keepalive`` of sending nothing; the link closed as lost
        after ``link_dead`` of hearing nothing (NAT rebinding, a router gone)."""
        while not entry.closing:
            now = self.clock.monotonic()
            if now - entry.heard >= self.link_dead:
                entry.lost, entry.why = True, f"silent for {self.link_dead:g}s"
                entry.closing = True
                with trio.CancelScope(shield=True):
                    await entry.link.aclose()  # the reader sees it and ends the link
                return
            if now - entry.sent >= self.keepalive:
                entry.sent = now  # one keepalive per interval, even if the queue is full
                with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                    entry.send.send_nowait(b"")
            await trio.sleep_until(min(entry.heard + self.link_dead, entry.sent + self.keepalive))


def trust_verifier(trust: TrustFile, clock: Clock) -> g.Verifier:
    """The daemon's ``Verifier``: type routing, then the node's ``TrustFile``.

    Expiry is checked against ``clock.utc_now()`` at the moment each rumor arrives.

    Allowlists, scopes and nudges are *accepted* (their floors rise, on disk, so a replay of
    an older one is refused from then on); releases are verified (they have no floor); a
    root must be the next one in the chain.  Heartbeats and departure tokens never travel
    as rumors (the core refuses them before asking).
    """

    def verify(data: bytes) -> g.Accepted:
        kind = docs.peek_type(data)
        at = clock.utc_now()
        if kind == "allowlist":
            trust.accept(docs.Allowlist, data, at)
            return g.Accepted(slot="allowlist")
        if kind == "scope":
            scope = trust.accept(docs.Scope, data, at).doc
            return g.Accepted(slot=f"scope:{scope.artifact}")
        if kind == "nudge":
            trust.accept(docs.Nudge, data, at)
            return g.Accepted(slot="nudge")
        if kind == "release":
            rel = trust.store.verify(docs.Release, data, at).doc
            return g.Accepted(slot=f"release:{rel.artifact}")
        if kind == "root":
            before = trust.store.root.version
            signed = trust.update_root(data, at)
            return g.Accepted(slot="root", new=signed.doc.version != before)
        raise SchemaError(f"a {kind!r} document is not a rumor", rule="unknown-document")

    return verify
