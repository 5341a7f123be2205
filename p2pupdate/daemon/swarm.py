"""The trio shell around ``core.swarm``: chunks over the node's links, the origin as last resort.

``SwarmService`` owns one ``core.swarm.Swarm`` and is the only code that touches it, as
``GossipService`` is for the gossip core (README "The swarm in the daemon").  The core
decides everything (what to ask whom, whom to serve, whom to punish, when to go to the
origin); this module carries out its effects and reports back:

===================  ========================================================================
``Send``             a small frame onto the peer's link (``GossipService.send_swarm``: the
                     link's swarm queue; dropped when full -- the core's deadlines repair it)
``Serve``            the chunk read from the ``ChunkStore`` in a worker thread (verified
                     there; a few recent chunks cached, since a chunk goes out block by
                     block), then the ``Block`` frame, *waiting* for room in the link's
                     swarm queue (``send_block``): a dropped block would cost its
                     requester a ``request_timeout``
``ChunkVerified``    ``ChunkStore.put_chunk`` in a worker thread, in order, in batches (what
                     queued meanwhile: one thread hop each), made durable by one
                     ``ChunkStore.sync`` at most every ``SYNC_INTERVAL`` (a kill loses
                     what was not yet synced: fetched again, never recorded unsynced)
``FetchFromOrigin``  each chunk from the replicas' origin (``QuorumClient.fetch_chunk``, the
                     one home of the try-peers wait and the next-replica rule), fed back
                     as ``OriginChunk`` / ``OriginFailed``; a "try-peers" answer is not
                     waited out here but told to the core (``retry_after``: it leaves the
                     origin alone that long and asks peers meanwhile)
``Completed``        the fetch waiting for it returns once the store has the whole artifact
                     (one log line: chunks from peers, from the origin, seconds)
``Penalised``        logged (one line per peer and rule per minute)
``Drop``             the peer's extra link (if we opened one) closed; a gossip link stays
``Ban``              gossip bans the node too (``GossipService.ban``: its reputation and
                     link table), which closes the link
===================  ========================================================================

**Sessions.**  ``fetch`` adds an artifact with the chunks the store holds verified and an
overall deadline, and opens a session (``Opened``) with every linked peer; a link that
comes up while it runs gets one too.  A seed opens nothing: the fetcher's bitfield opens
its side.  A session starts with our bitfield, and the core sends ours once per session:
a peer that did not track the artifact when ours came never answers it, and when it starts
tracking the artifact later, our bitfield is the one it lacks.  So the bitfield (and the
haves after it) a peer sends about an artifact not tracked here are kept (``EARLY_FRAMES``,
``EARLY_PEERS``) and fed to the core once it tracks the artifact (``fetch``, ``seed``):
its session then opens as if they had just come, and ours goes out.
Every second the service also opens extra links
(at most ``extra_links``, default ``core.swarm.holders.EXTRA_LINKS``) to holders learned
from heartbeats (``Gossip.holders``), chosen by ``core.swarm.holders.pick_holders`` among
those with a known contact.  An extra link is pinned in gossip (not closed as idle, not in
any view) and closed once no download of ours needs it and the peer sent no swarm frame
for ``EXTRA_LINGER`` (nothing is being served over it).  A link a peer opened to us
carries swarm frames too: it is pinned while swarm frames flow on it, unpinned after
``PIN_IDLE`` without one (gossip's idle rule then applies).

**Seeding.**  ``seed`` adds an artifact the store holds whole (verified on open) as held:
the node serves it to whoever opens a session.  The node seeds what it holds at start
(once it knows the release records) and what it has just fetched.  ``remove`` forgets one
(the store's cleanup removed it).

The clock is the node's :class:`~p2pupdate.clock.Clock`: the core's ``now`` is
``clock.monotonic()`` (trio's clock, so a test on ``MockClock`` moves every deadline);
``completed_at`` in the status is ``clock.wall()``.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

import trio

from ..clock import Clock
from ..core import gossip as g
from ..core import swarm as sw
from ..core.errors import WireError
from ..core.swarm.chunks import ChunkMap
from ..core.swarm.holders import EXTRA_LINKS, pick_holders
from ..errors import CoordinatorFault
from .chunkstore import ChunkStore
from .gossip import frame_kind
from .replica import OriginBusy

__all__ = ["FetchResult", "SwarmLinks", "SwarmService"]

#: How often extra links are sought and idle ones closed (seconds).
SWEEP: Final = 1.0
#: An extra link no download needs is closed after the peer sent no swarm frame this long.
EXTRA_LINGER: Final = 2.0
#: A link swarm frames flowed on stays pinned in gossip until this long without one.
PIN_IDLE: Final = 30.0
#: Origin chunk fetches at once (each one chunk at a time, in a worker thread).
ORIGIN_PARALLEL: Final = 2
#: After the origin could not serve a chunk, wait this long before saying so (the core
#: asks again at once: a replica that is down must not be asked in a loop).
ORIGIN_RETRY: Final = 1.0
#: Chunks stored are made durable (one fsync of the part file, one record) at most this
#: often: three fsyncs per chunk cost more CPU and disk than the chunk's transfer.
SYNC_INTERVAL: Final = 1.0
#: Recently read chunks kept for serving their next blocks (bytes).
CACHE_BYTES: Final = 8 << 20
#: One log line per (peer, rule) per this many seconds.
PENALTY_LOG_INTERVAL: Final = 60.0
#: Frames kept per (peer, artifact not tracked here): its bitfield and the haves after it;
#: and how many such (peer, artifact) pairs are kept (the oldest goes first).
EARLY_FRAMES: Final = 4096
EARLY_PEERS: Final = 256

OriginFetch = Callable[[ChunkMap, int], Awaitable[bytes]]
T = TypeVar("T")
RunBlocking = Callable[..., Awaitable[Any]]


class SwarmLinks(Protocol):
    """What the swarm needs of the node's links (``daemon.gossip.GossipService``)."""

    node: str

    def linked(self) -> list[str]: ...

    def send_swarm(self, peer: str, data: bytes) -> bool: ...

    async def send_block(self, peer: str, data: bytes) -> bool: ...

    def contact_of(self, node: str) -> g.Contact | None: ...

    def holders(self, artifact: str) -> list[tuple[str, str, int]]: ...

    def is_banned(self, peer: str) -> bool: ...

    def open_extra(self, contact: g.Contact) -> bool: ...

    def close_extra(self, peer: str) -> None: ...

    def extra_links(self) -> list[str]: ...

    def pin(self, peer: str, pinned: bool) -> None: ...

    def ban(self, peer: str, reason: str, until: float) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchResult:
    """How one artifact came: chunks held before, from peers, from the origin; seconds."""

    artifact: str
    held: int
    peers: int
    origin: int
    seconds: float


@dataclass(kw_only=True, slots=True)
class _Track:
    """The shell's side of one artifact: counts, the fetch waiting, the extra links."""

    cmap: ChunkMap
    started: float
    held: int
    done: trio.Event = field(default_factory=trio.Event)
    fetching: bool = False
    core_complete: bool = False
    puts: int = 0  # ChunkVerified not yet stored
    from_peers: int = 0
    from_origin: int = 0
    completed_at: float | None = None  # wall clock
    finished: float | None = None  # monotonic
    error: str | None = None
    extras: set[str] = field(default_factory=set)
    opened: set[str] = field(default_factory=set)  # peers told ``Opened`` for it
    dialed: int = 0  # extra links opened to holders of it
    why: dict[str, int] = field(default_factory=dict)  # chunks sent to the origin, by rule


def _seconds(track: _Track) -> float:
    return 0.0 if track.finished is None else max(0.0, track.finished - track.started)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(fn, *args)


class SwarmService:
    """One node's chunk swarm over its gossip links.  ``run`` it in the node's nursery."""

    def __init__(
        self,
        *,
        links: SwarmLinks,
        store: ChunkStore,
        clock: Clock,
        config: sw.SwarmConfig | None = None,
        origin: OriginFetch | None = None,
        uplink: float | None = None,
        rng: random.Random | None = None,
        log: Callable[[str], None] = lambda _m: None,
        extra_links: int = EXTRA_LINKS,
        run_blocking: RunBlocking = _in_thread,
    ) -> None:
        self.links = links
        self.store = store
        self.clock = clock
        self.config = config if config is not None else sw.SwarmConfig()
        self.origin = origin
        self.uplink = uplink
        self.rng = rng if rng is not None else random.Random()
        self.log = log
        self.extra_links = extra_links
        self.run_blocking = run_blocking
        self.core: sw.Swarm | None = None
        self.bytes_up = 0
        self.bytes_down_peers = 0
        self.bytes_down_origin = 0
        self.frames_dropped = 0
        #: Frames peers sent before this node tracked their artifact, fed to the core later.
        self.early_replayed = 0
        #: Chunks handed to the origin, by the core's rule (``FetchFromOrigin.rule``).
        self.origin_why: dict[str, int] = {}
        self._tracks: dict[str, _Track] = {}
        self._heard: dict[str, float] = {}  # peer -> last swarm frame from it
        self._pinned: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._wait_at = -math.inf  # when the timer task's wait ends (-inf: not waiting)
        self._started = trio.Event()
        self._puts_send, self._puts_recv = trio.open_memory_channel[sw.ChunkVerified](math.inf)
        self._origin_slots = trio.Semaphore(ORIGIN_PARALLEL)
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._cache_bytes = 0
        self._reading: dict[tuple[str, int], trio.Event] = {}
        self._penalty_logged: dict[tuple[str, str], float] = {}
        self._early: OrderedDict[tuple[str, str], list[bytes]] = OrderedDict()

    # -- running ---------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the core's timer and the store writer until cancelled."""
        now = self.clock.monotonic()
        self.core = sw.Swarm(config=self.config, rng=self.rng, now=now)
        if self.uplink is not None:
            self._handle(sw.UplinkMeasured(rate=self.uplink))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._writer)
            self._started.set()
            task_status.started()
            await self._loop()

    async def _loop(self) -> None:
        core = self.core
        assert core is not None
        next_sweep = self.clock.monotonic()
        when = core.get_timer()
        while True:
            at = next_sweep if when is None else min(when, next_sweep)
            self._wait_at = at
            with trio.move_on_at(at):
                await self._wake.wait()
            self._wait_at = -math.inf
            self._wake = trio.Event()
            now = self.clock.monotonic()
            when = core.get_timer()  # (once per wake: events since may have moved it)
            if when is not None and when <= now:
                self._perform(core.handle_timer(now))
                when = core.get_timer()
            if now >= next_sweep:
                next_sweep = now + SWEEP
                self._sweep(now)
                when = core.get_timer()

    def _handle(self, event: sw.Event) -> None:
        core = self.core
        if core is None:
            return
        self._perform(core.handle(event, self.clock.monotonic()))
        # the timer task wakes only if the core's timer now comes before its wait ends
        # (one task switch fewer per frame: most frames move no deadline earlier)
        when = core.get_timer()
        if when is not None and when < self._wait_at:
            self._wake.set()

    # -- what the node asks ----------------------------------------------------------------

    async def fetch(self, cmap: ChunkMap, *, deadline: float | None = None) -> FetchResult:
        """``cmap``'s artifact into the store, from peers first, the origin for the rest;
        resumes from what the store holds verified.  A second call for an artifact being
        fetched waits for the same download.  Raises ``OSError`` if the store failed."""
        await self._started.wait()
        core = self.core
        assert core is not None
        artifact = cmap.artifact
        track = self._tracks.get(artifact)
        if track is None or (track.done.is_set() and track.error is not None):
            held = await self.run_blocking(self.store.open, cmap)
            track = _Track(cmap=cmap, started=self.clock.monotonic(), held=len(held))
            self._tracks[artifact] = track
            core.remove(artifact)  # (a failed one: its core state starts over)
            if len(held) == cmap.count:
                self._perform(core.add(cmap, held=held, now=self.clock.monotonic()))
                track.completed_at = self.clock.wall()
                track.done.set()
            else:
                track.fetching = True
                now = self.clock.monotonic()
                self._perform(core.add(cmap, held=held, now=now, deadline=deadline))
                self._replay_early(artifact)
                self._sweep(now)
                self._wake.set()
        await track.done.wait()
        if track.error is not None:
            raise OSError(track.error)
        return FetchResult(
            artifact=artifact,
            held=track.held,
            peers=track.from_peers,
            origin=track.from_origin,
            seconds=_seconds(track),
        )

    async def seed(self, cmap: ChunkMap) -> bool:
        """Serve ``cmap``'s artifact if the store holds it whole (verified as it opens);
        False if it does not (a partial one resumes when the node fetches it)."""
        await self._started.wait()
        core = self.core
        assert core is not None
        artifact = cmap.artifact
        if artifact in self._tracks:
            return self._tracks[artifact].done.is_set()
        if not self.store.path(artifact).is_file():
            return False
        held = await self.run_blocking(self.store.open, cmap)
        if len(held) < cmap.count or artifact in self._tracks:
            return artifact in self._tracks
        track = _Track(cmap=cmap, started=self.clock.monotonic(), held=len(held))
        track.done.set()
        self._tracks[artifact] = track
        self._perform(core.add(cmap, held=held, now=self.clock.monotonic()))
        self._replay_early(artifact)
        self.log(f"swarm: seeding {artifact[:16]}... ({cmap.count} chunks)")
        return True

    def remove(self, artifact: str) -> None:
        """Stop serving and fetching ``artifact`` (the store removed it)."""
        if self.core is not None:
            self.core.remove(artifact)
        track = self._tracks.pop(artifact, None)
        if track is not None and not track.done.is_set():
            track.error = f"{artifact[:16]}... was removed from the store"
            track.done.set()
        for key in [k for k in self._cache if k[0] == artifact]:
            self._cache_bytes -= len(self._cache.pop(key))

    def holds(self, artifact: str) -> bool:
        """Whether ``artifact`` is served whole here."""
        track = self._tracks.get(artifact)
        return track is not None and track.done.is_set() and track.error is None

    # -- what the links tell us ------------------------------------------------------------

    def frame(self, peer: str, data: bytes) -> None:
        """A swarm frame from ``peer`` (``GossipService``'s reader)."""
        now = self.clock.monotonic()
        self._heard[peer] = now
        if peer not in self._pinned:
            self._pinned.add(peer)
            self.links.pin(peer, True)
        self._keep_early(peer, data)
        self._handle(sw.Received(peer=peer, data=data))

    def _keep_early(self, peer: str, data: bytes) -> None:
        """Keep a bitfield, and the haves after it, about an artifact not tracked here."""
        if frame_kind(data) not in ("sw_bf", "sw_have"):
            return
        try:
            msg = sw.decode_message(data)
        except WireError:
            return  # the core charges it
        if msg.artifact in self._tracks:
            return
        key = (peer, msg.artifact)
        if isinstance(msg, sw.Bitfield):
            self._early.pop(key, None)
            self._early[key] = [data]
            while len(self._early) > EARLY_PEERS:
                self._early.popitem(last=False)
        elif (kept := self._early.get(key)) is not None and len(kept) < EARLY_FRAMES:
            kept.append(data)

    def _replay_early(self, artifact: str) -> None:
        """Feed the core what linked peers said about ``artifact`` before it was tracked."""
        linked = set(self.links.linked())
        for key in [k for k in self._early if k[1] == artifact]:
            frames = self._early.pop(key)
            if key[0] in linked:
                for data in frames:
                    self.early_replayed += 1
                    self._handle(sw.Received(peer=key[0], data=data))

    def link_up(self, peer: str) -> None:
        """A new link: a session for every artifact being fetched."""
        if self.core is not None:
            self._open_sessions(self.clock.monotonic(), only={peer})
            self._wake.set()

    def link_down(self, peer: str) -> None:
        self._heard.pop(peer, None)
        self._pinned.discard(peer)
        for key in [k for k in self._early if k[0] == peer]:
            del self._early[key]
        for track in self._tracks.values():
            track.extras.discard(peer)
            track.opened.discard(peer)
        self._handle(sw.PeerGone(peer=peer))

    def _open_sessions(self, now: float, only: set[str] | None = None) -> None:
        """``Opened`` for each artifact being fetched with each linked peer, once per link."""
        core = self.core
        assert core is not None
        linked = set(self.links.linked()) if only is None else only
        for artifact, track in self._tracks.items():
            if not track.fetching or track.done.is_set():
                continue
            for peer in sorted(linked - track.opened):
                track.opened.add(peer)
                self._perform(core.handle(sw.Opened(peer=peer, artifact=artifact), now))

    # -- effects ---------------------------------------------------------------------------

    def _perform(self, effects: Iterable[sw.Effect]) -> None:
        nursery = self._nursery
        for eff in effects:
            if isinstance(eff, sw.Send):
                if not self.links.send_swarm(eff.peer, eff.data):
                    self.frames_dropped += 1
            elif isinstance(eff, sw.Serve):
                assert nursery is not None
                nursery.start_soon(self._serve, eff)
            elif isinstance(eff, sw.ChunkVerified):
                self._verified(eff)
            elif isinstance(eff, sw.FetchFromOrigin):
                why = eff.rule[:80]
                self.origin_why[why] = self.origin_why.get(why, 0) + len(eff.chunks)
                track = self._tracks.get(eff.artifact)
                if track is not None:
                    track.why[why] = track.why.get(why, 0) + len(eff.chunks)
                assert nursery is not None
                nursery.start_soon(self._from_origin, eff)
            elif isinstance(eff, sw.OriginRefused):
                self.log(f"swarm: the origin's chunk {eff.index} of {eff.artifact[:16]}... "
                         f"refused: {eff.reason}")  # fmt: skip
            elif isinstance(eff, sw.Completed):
                track = self._tracks.get(eff.artifact)
                if track is not None:
                    track.core_complete = True
                    self._maybe_done(track)
            elif isinstance(eff, sw.Penalised):
                self._penalised(eff)
            elif isinstance(eff, sw.Drop):
                self.log(f"swarm: dropped peer {eff.peer[:12]}: {eff.reason}")
                if eff.peer in self.links.extra_links():
                    self.links.close_extra(eff.peer)
            elif isinstance(eff, sw.Ban):
                self.log(f"swarm: banned peer {eff.peer[:12]}: {eff.reason}")
                self.links.ban(eff.peer, eff.reason, eff.until)

    def _penalised(self, p: sw.Penalised) -> None:
        now = self.clock.monotonic()
        key = (p.peer, p.rule)
        if now - self._penalty_logged.get(key, -math.inf) >= PENALTY_LOG_INTERVAL:
            self._penalty_logged[key] = now
            if len(self._penalty_logged) > 1024:
                del self._penalty_logged[next(iter(self._penalty_logged))]
            self.log(
                f"swarm: peer {p.peer[:12]} penalised {p.points:g} for {p.rule} "
                f"(score {p.score:g}): {p.detail}"
            )

    def _verified(self, eff: sw.ChunkVerified) -> None:
        track = self._tracks.get(eff.artifact)
        if track is None:
            return
        if eff.source == "origin":
            track.from_origin += 1
            self.bytes_down_origin += len(eff.data)
        else:
            track.from_peers += 1
            self.bytes_down_peers += len(eff.data)
        track.puts += 1
        self._puts_send.send_nowait(eff)

    async def _writer(self) -> None:
        """Store verified chunks in order, in batches: everything queued is written in one
        worker-thread call without an fsync, and the artifacts written to are synced (one
        fsync, one record) once ``SYNC_INTERVAL`` has passed since the first unsynced
        write -- or on completion, which the store makes durable itself."""
        recv = self._puts_recv
        dirty: set[str] = set()
        due = math.inf
        while True:
            batch: list[sw.ChunkVerified] = []
            with trio.move_on_at(due):
                batch.append(await recv.receive())
            while True:
                try:
                    batch.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            if batch:
                errors = await self.run_blocking(self._store_batch, batch)
                for eff, error in zip(batch, errors, strict=True):
                    self._stored(eff, error)
                    if error is None:
                        dirty.add(eff.artifact)
                if dirty and due == math.inf:
                    due = self.clock.monotonic() + SYNC_INTERVAL
            if dirty and self.clock.monotonic() >= due:
                await self._sync(dirty)
                dirty = set()
                due = math.inf

    def _store_batch(self, batch: list[sw.ChunkVerified]) -> list[str | None]:
        """(In a worker thread.)  Each chunk into the store unsynced: None, or why not."""
        errors: list[str | None] = []
        for eff in batch:
            try:
                if self.store.put_chunk(eff.artifact, eff.index, eff.data, durable=False):
                    errors.append(None)
                else:
                    errors.append(f"the store refused chunk {eff.index} of {eff.artifact[:16]}...")
            except (OSError, KeyError) as exc:
                errors.append(str(exc) or type(exc).__name__)
        return errors

    async def _sync(self, artifacts: set[str]) -> None:
        for artifact in sorted(artifacts):
            try:
                await self.run_blocking(self.store.sync, artifact)
            except OSError as exc:
                self.log(f"swarm: syncing {artifact[:16]}... failed: {exc}")
                track = self._tracks.get(artifact)
                if track is not None and not track.done.is_set():
                    track.error = f"store: {exc}"
                    track.done.set()

    def _stored(self, eff: sw.ChunkVerified, error: str | None) -> None:
        track = self._tracks.get(eff.artifact)
        if error is not None:
            self.log(f"swarm: storing chunk {eff.index} of {eff.artifact[:16]}... failed: {error}")
            if track is not None and self._tracks.get(eff.artifact) is track:
                track.error = f"store: {error}"
                track.done.set()
        if track is not None:
            track.puts -= 1
            self._maybe_done(track)

    def _maybe_done(self, track: _Track) -> None:
        if track.done.is_set() or not track.core_complete or track.puts:
            return
        artifact = track.cmap.artifact
        if not self.store.complete(artifact):
            track.error = f"{artifact[:16]}... complete in the swarm but not in the store"
            track.done.set()
            return
        track.finished = self.clock.monotonic()
        track.completed_at = self.clock.wall()
        track.fetching = False
        track.done.set()
        # why the origin was asked, and who was around: what tells a flaky demo run's
        # origin share apart (a node with no session to a holder yet, or none known)
        why = "; ".join(f"{rule}: {n}" for rule, n in sorted(track.why.items()))
        self.log(
            f"swarm: {artifact[:16]}... complete: {track.from_peers} chunks from peers, "
            f"{track.from_origin} from the origin in {_seconds(track):.1f} s"
            + (
                f" (asked of the origin: {why}; sessions with {len(track.opened)} peer(s), "
                f"{track.dialed} holder(s) dialed)"
                if why
                else ""
            )
        )
        self._wake.set()  # the sweep closes extra links no longer needed

    async def _serve(self, eff: sw.Serve) -> None:
        data = await self._chunk(eff.artifact, eff.chunk)
        if data is None:
            return  # the store dropped it (changed on disk): the requester asks elsewhere
        frame = eff.message(data[eff.offset : eff.offset + eff.length])
        if await self.links.send_block(eff.peer, frame):
            self.bytes_up += eff.length

    async def _chunk(self, artifact: str, index: int) -> bytes | None:
        """A verified chunk, from the cache or the store (one read per chunk at a time)."""
        key = (artifact, index)
        while True:
            got = self._cache.get(key)
            if got is not None:
                self._cache.move_to_end(key)
                return got
            reading = self._reading.get(key)
            if reading is None:
                break
            await reading.wait()
            if key not in self._cache:
                return None
        done = self._reading[key] = trio.Event()
        try:
            data: bytes | None = await self.run_blocking(self.store.read_chunk, artifact, index)
        finally:
            del self._reading[key]
            done.set()
        if data is not None:
            self._cache[key] = data
            self._cache_bytes += len(data)
            while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
                self._cache_bytes -= len(self._cache.popitem(last=False)[1])
        return data

    async def _from_origin(self, eff: sw.FetchFromOrigin) -> None:
        track = self._tracks.get(eff.artifact)
        if track is None:
            return
        cmap = track.cmap
        for index in eff.chunks:
            if self._tracks.get(eff.artifact) is not track:
                return
            async with self._origin_slots:
                try:
                    if self.origin is None:
                        raise CoordinatorFault("no coordinator: no origin to ask")
                    data = await self.origin(cmap, index)
                except OriginBusy as exc:  # the core leaves the origin alone that long
                    self._busy_note(eff.artifact, str(exc))
                    event: sw.Event = sw.OriginFailed(
                        artifact=eff.artifact,
                        index=index,
                        reason=str(exc)[:200],
                        retry_after=exc.retry_after,
                    )
                except (CoordinatorFault, OSError) as exc:
                    self.log(f"swarm: origin chunk {index} of {eff.artifact[:16]}...: {exc}")
                    await trio.sleep(ORIGIN_RETRY)
                    event = sw.OriginFailed(
                        artifact=eff.artifact, index=index, reason=str(exc)[:200]
                    )
                else:
                    event = sw.OriginChunk(artifact=eff.artifact, index=index, data=data)
            self._handle(event)

    def _busy_note(self, artifact: str, line: str) -> None:
        """Log a try-peers answer at most once per artifact per ``PENALTY_LOG_INTERVAL``."""
        now = self.clock.monotonic()
        key = ("origin", artifact)
        if now - self._penalty_logged.get(key, -math.inf) >= PENALTY_LOG_INTERVAL:
            self._penalty_logged[key] = now
            self.log(f"swarm: {line}; the chunks no peer has are asked for again then")

    # -- links: extra ones, pins -----------------------------------------------------------

    def _sweep(self, now: float) -> None:
        """Open extra links to holders of what is being fetched; close the ones no longer
        needed; unpin links the swarm stopped using."""
        links = self.links
        self._open_sessions(now)
        linked = set(links.linked())
        extras_up = set(links.extra_links())
        needed: set[str] = set()
        banned = self.core.banned if self.core is not None else {}
        for artifact, track in self._tracks.items():
            if not track.fetching or track.done.is_set():
                continue
            needed |= track.extras
            holders = links.holders(artifact)
            whole = tuple(
                n for n, state, _f in holders if state == "held" and not links.is_banned(n)
            )
            if whole:  # the core decides if one of them is still to come (not release day)
                self._handle(sw.HolderKnown(artifact=artifact, nodes=whole))
            room = self.extra_links - len(track.extras)
            if room <= 0:
                continue
            contacts = {n: links.contact_of(n) for n, _s, _f in holders}
            picks = pick_holders(
                holders,
                me=links.node,
                linked=linked,
                reachable={n for n, c in contacts.items() if c is not None},
                banned={n for n in contacts if n in banned or links.is_banned(n)},
                limit=room,
            )
            for node in picks:
                contact = contacts[node]
                if contact is not None and links.open_extra(contact):
                    track.extras.add(node)
                    track.dialed += 1
                    needed.add(node)
                    self._handle(sw.HolderDialed(artifact=artifact))
        for peer in extras_up - needed:
            if now - self._heard.get(peer, -math.inf) >= EXTRA_LINGER:
                links.close_extra(peer)
        for peer in [p for p in self._pinned if now - self._heard.get(p, now) >= PIN_IDLE]:
            self._pinned.discard(peer)
            links.pin(peer, False)

    # -- status ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The status file's ``swarm`` object."""
        core = self.core
        now = self.clock.monotonic()
        artifacts: dict[str, Any] = {}
        for st in core.status() if core is not None else ():
            track = self._tracks.get(st.artifact)
            artifacts[st.artifact] = {
                "chunks": st.chunks,
                "held": st.held,
                "sessions": st.sessions,
                "origin_chunks": track.from_origin if track is not None else st.origin_chunks,
                "completed_at": track.completed_at if track is not None else None,
            }
        banned = core.banned if core is not None else {}
        return {
            "bytes_up": self.bytes_up,
            "bytes_down_peers": self.bytes_down_peers,
            "bytes_down_origin": self.bytes_down_origin,
            # chunks (bytes) copied from held artifacts instead of fetched (``chunkstore``)
            "reused_chunks": self.store.reused_chunks,
            "reused_bytes": self.store.reused_bytes,
            "peers": len(self._heard),
            "banned": sum(1 for until in banned.values() if until > now),
            "blocks": core.counters() if core is not None else {},
            "origin_why": dict(self.origin_why),
            "artifacts": artifacts,
        }
