"""``Swarm``: one node's chunk swarm, composing the downloads, the uploader and the scores.

The shell adds each artifact it holds or fetches (``add``: its chunk map, the chunks
already verified in the store, an optional overall deadline), opens sessions with peers
(``Opened``), passes their frames in (``Received``) and does what comes back.  Every
message goes through the one handler ``MESSAGE_HANDLERS`` names for its kind; every event
through ``EVENT_HANDLERS``.  Faults the parts report are charged here (``penalties``), so
one peer's score spans all artifacts; a drop or a ban ends the peer everywhere.

A peer's message about an artifact we do not track is not its fault (it may hold builds
we never ran), except a ``Block``: we never asked, so it is unsolicited (a block replayed
from another artifact lands here, or fails the hash when it names ours).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from ..errors import WireError
from .chunks import ChunkMap
from .config import SwarmConfig, upload_rate
from .download import COUNTS, Download, Rng
from .events import (
    Ban,
    ChunkVerified,
    Completed,
    Drop,
    Effect,
    Event,
    HolderDialed,
    HolderKnown,
    Opened,
    OriginChunk,
    OriginFailed,
    OriginRefused,
    PeerGone,
    Penalised,
    Received,
    Send,
    Serve,
    UplinkMeasured,
)
from .messages import (
    BLOCK_OVERHEAD,
    Bitfield,
    Block,
    Cancel,
    Have,
    Message,
    Reject,
    Request,
    decode_message,
)
from .penalties import Scores, rule_for
from .upload import Uploader, ack_bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class ArtifactStatus:
    """One artifact as the swarm sees it (for the node's status file and metrics)."""

    artifact: str
    chunks: int
    held: int
    sessions: int
    fetching_from: int  # peers with requests of ours in flight
    origin_chunks: int  # chunks handed to the origin so far


@dataclass(kw_only=True, slots=True)
class _Artifact:
    map: ChunkMap
    held: set[int]
    download: Download | None
    layout: bytes
    sessions: set[str] = field(default_factory=set)  # our bitfield went out
    matched: set[str] = field(default_factory=set)  # theirs came in, with our layout
    origin_chunks: int = 0  # of a download that completed (its state is let go)


class Swarm:
    """One node's swarm over every artifact it holds or fetches."""

    def __init__(
        self, *, config: SwarmConfig, rng: Rng, now: float, uplink: float | None = None
    ) -> None:
        self.config = config
        self.rng = rng
        self.artifacts: dict[str, _Artifact] = {}
        self.scores = Scores(config)
        self.banned: dict[str, float] = {}
        #: Peers dropped: whatever they sent before their link closed is ignored, until the
        #: shell opens a session with them again.
        self.dropped: set[str] = set()
        #: Block counts over every download (``download.COUNTS``): ``counters()``.
        self.counts = dict.fromkeys(COUNTS, 0)
        self.uploader = Uploader(
            config=config,
            rate=upload_rate(config, uplink),
            held=self.holds,
            now=now,
            urgent=self._urgent,
        )

    # -- the shell's side ----------------------------------------------------------------

    def add(
        self,
        chunk_map: ChunkMap,
        *,
        held: Iterable[int] = (),
        now: float,
        deadline: float | None = None,
    ) -> list[Effect]:
        """Track ``chunk_map``'s artifact: serve ``held`` (verified in the store), fetch the
        rest.  Adding it again does nothing."""
        if chunk_map.artifact in self.artifacts:
            return []
        have = {i for i in held if 0 <= i < chunk_map.count}
        dl = None
        if len(have) < chunk_map.count:
            dl = Download(
                chunk_map=chunk_map,
                held=have,
                config=self.config,
                rng=self.rng,
                now=now,
                deadline=deadline,
                counts=self.counts,
            )
        self.artifacts[chunk_map.artifact] = _Artifact(
            map=chunk_map, held=have, download=dl, layout=chunk_map.layout
        )
        out: list[Effect] = []
        if dl is not None:
            dl.on_timer(now, out)  # no peers yet: starts the origin's grace clock
        return out

    def remove(self, artifact: str) -> None:
        """Stop serving and fetching ``artifact`` (its queued requests get ``missing``)."""
        self.artifacts.pop(artifact, None)

    def holds(self, artifact: str, index: int) -> bool:
        """Whether chunk ``index`` of ``artifact`` is here, verified."""
        art = self.artifacts.get(artifact)
        return art is not None and index in art.held

    def _urgent(self) -> frozenset[tuple[str, int]]:
        """Chunks the origin sent us that no connected peer has yet: served first."""
        got: set[tuple[str, int]] = set()
        for a in self.artifacts.values():
            dl = a.download
            if dl is not None and dl.origin_got:
                got.update((dl.artifact, i) for i in dl.origin_got if dl.avail[i] == 0)
        return frozenset(got)

    def holdings(self, artifact: str) -> frozenset[int]:
        art = self.artifacts.get(artifact)
        return frozenset() if art is None else frozenset(art.held)

    def handle(self, event: Event, now: float) -> list[Effect]:
        out: list[Effect] = []
        EVENT_HANDLERS[type(event)](self, event, now, out)
        return self._settle(now, out)

    def handle_timer(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        for art in list(self.artifacts.values()):
            dl = art.download
            if dl is not None and not dl.complete:
                timer = dl.get_timer()
                if timer is not None and timer <= now:
                    for peer in dl.on_timer(now, out):
                        reason = f"missed {self.config.max_misses} request deadlines in a row"
                        self._drop(peer, reason, out)
        self.uploader.pump(now, out)
        for peer in [p for p, until in self.banned.items() if now >= until]:
            del self.banned[peer]
        return self._settle(now, out)

    def get_timer(self) -> float | None:
        times = [self.uploader.get_timer()]
        for art in self.artifacts.values():
            if art.download is not None:
                times.append(art.download.get_timer())
        found = [t for t in times if t is not None]
        return min(found) if found else None

    # -- events --------------------------------------------------------------------------

    def _opened(self, ev: Opened, now: float, out: list[Effect]) -> None:
        art = self.artifacts.get(ev.artifact)
        if art is not None and not self._is_banned(ev.peer, now):
            self.dropped.discard(ev.peer)
            self._session(art, ev.peer, out)

    def _session(self, art: _Artifact, peer: str, out: list[Effect]) -> None:
        if peer in art.sessions:
            return
        art.sessions.add(peer)
        if art.download is not None:
            art.download.peer_opened(peer)
        bf = Bitfield.of(art.map, art.held)
        out.append(Send(peer=peer, data=bf.to_wire()))

    def _gone(self, ev: PeerGone, now: float, out: list[Effect]) -> None:
        self._end_peer(ev.peer, out)

    def _end_peer(self, peer: str, out: list[Effect]) -> None:
        for art in self.artifacts.values():
            art.sessions.discard(peer)
            art.matched.discard(peer)
            if art.download is not None:
                art.download.peer_gone(peer)
        self.uploader.peer_gone(peer)

    def _received(self, ev: Received, now: float, out: list[Effect]) -> None:
        if self._is_banned(ev.peer, now) or ev.peer in self.dropped:
            return
        try:
            msg = decode_message(ev.data)
        except WireError as exc:
            self._charge(ev.peer, rule_for(exc), exc.message, now, out)
            return
        MESSAGE_HANDLERS[type(msg)](self, ev.peer, msg, now, out)

    def _origin_chunk(self, ev: OriginChunk, now: float, out: list[Effect]) -> None:
        self.uploader.charge(ack_bytes(len(ev.data)), now)
        art = self.artifacts.get(ev.artifact)
        if art is None or art.download is None:
            return
        art.download.now = now
        if not art.download.on_origin_chunk(ev.index, ev.data, out):
            art.download.on_origin_failed(ev.index, now)  # wanted again: peers, or the origin
            reason = "does not match the release record"
            out.append(OriginRefused(artifact=ev.artifact, index=ev.index, reason=reason))
        art.download.fill_all(now, out)

    def _origin_failed(self, ev: OriginFailed, now: float, out: list[Effect]) -> None:
        art = self.artifacts.get(ev.artifact)
        if art is not None and art.download is not None:
            art.download.on_origin_failed(ev.index, now, ev.retry_after)
            art.download.fill_all(now, out)

    def _holder_dialed(self, ev: HolderDialed, now: float, out: list[Effect]) -> None:
        art = self.artifacts.get(ev.artifact)
        if art is not None and art.download is not None:
            art.download.holder_coming(now)

    def _holder_known(self, ev: HolderKnown, now: float, out: list[Effect]) -> None:
        art = self.artifacts.get(ev.artifact)
        if art is None or art.download is None:
            return
        if any(n not in art.matched and not self._is_banned(n, now) for n in ev.nodes):
            art.download.holder_coming(now)

    def _uplink(self, ev: UplinkMeasured, now: float, out: list[Effect]) -> None:
        self.uploader.set_rate(upload_rate(self.config, ev.rate), now)

    # -- messages ------------------------------------------------------------------------

    def _on_bitfield(self, peer: str, msg: Message, now: float, out: list[Effect]) -> None:
        assert isinstance(msg, Bitfield)
        art = self.artifacts.get(msg.artifact)
        if art is None:
            return
        if peer in art.matched:  # one per session: a second is noise to be paid for
            self._charge(peer, "unsolicited", "a second bitfield", now, out)
            return
        self._session(art, peer, out)
        if msg.layout != art.layout:  # the same build cut another way: no trade, no fault
            art.matched.discard(peer)
            if art.download is not None:
                art.download.peer_gone(peer)
            return
        art.matched.add(peer)
        if art.download is not None:
            art.download.on_bitfield(peer, msg, now, out)

    def _on_have(self, peer: str, msg: Message, now: float, out: list[Effect]) -> None:
        assert isinstance(msg, Have)
        art = self.artifacts.get(msg.artifact)
        if art is not None and art.download is not None and peer in art.matched:
            art.download.on_have(peer, msg, now, out)

    def _on_request(self, peer: str, msg: Message, now: float, out: list[Effect]) -> None:
        assert isinstance(msg, Request)
        art = self.artifacts.get(msg.artifact)
        # Served only to a peer whose bitfield showed our layout: with another cut, our
        # right bytes would fail its hash.  (An honest peer's bitfield comes first.)
        if art is None or peer not in art.matched or msg.chunk not in art.held:
            reject = Reject(
                artifact=msg.artifact,
                chunk=msg.chunk,
                offset=msg.offset,
                length=msg.length,
                reason="missing",
            )
            out.append(Send(peer=peer, data=reject.to_wire()))
            return
        chunk = art.map.chunks[msg.chunk]
        if msg.offset + msg.length > chunk.length:  # any length up to MAX_BLOCK is fine
            detail = f"request of {msg.length} at {msg.offset} of a {chunk.length}-byte chunk"
            self._charge(peer, "malformed", detail, now, out)
            return
        self.uploader.request(peer, msg, now, out)

    def _on_cancel(self, peer: str, msg: Message, now: float, out: list[Effect]) -> None:
        assert isinstance(msg, Cancel)
        self.uploader.cancel(peer, msg)

    def _on_block(self, peer: str, msg: Message, now: float, out: list[Effect]) -> None:
        assert isinstance(msg, Block)
        # Our uplink ACKs every block that arrives (the ACKs of small frames ride on the
        # blocks we send back; a download's do not).
        self.uploader.charge(ack_bytes(len(msg.data) + BLOCK_OVERHEAD), now)
        art = self.artifacts.get(msg.artifact)
        if art is None or art.download is None:
            if art is None or msg.chunk not in art.held:
                self._charge(peer, "unsolicited", f"block of {msg.artifact[:12]}", now, out)
            return  # a late block of a download just completed: harmless
        art.download.on_block(peer, msg, now, out)

    def _on_reject(self, peer: str, msg: Message, now: float, out: list[Effect]) -> None:
        assert isinstance(msg, Reject)
        art = self.artifacts.get(msg.artifact)
        if art is not None and art.download is not None:
            art.download.on_reject(peer, msg, now, out)

    # -- faults, and what follows a handler ----------------------------------------------

    def _is_banned(self, peer: str, now: float) -> bool:
        """Banned (its messages are ignored; the shell refuses its links until ``until``)."""
        until = self.banned.get(peer)
        return until is not None and now < until

    def _charge(self, peer: str, rule: str, detail: str, now: float, out: list[Effect]) -> None:
        if self._is_banned(peer, now):
            return
        verdict = self.scores.charge(peer, rule, now)
        out.append(
            Penalised(
                peer=peer, rule=rule, points=verdict.points, score=verdict.score, detail=detail
            )
        )
        if verdict.ban:
            until = now + self.config.ban_seconds
            self.banned[peer] = until
            self._end_peer(peer, out)
            out.append(Ban(peer=peer, reason=f"{rule}: {detail}", until=until))
        elif verdict.drop:
            self._drop(peer, f"{rule}: {detail}", out)

    def _drop(self, peer: str, reason: str, out: list[Effect]) -> None:
        if peer not in self.dropped:
            self.dropped.add(peer)
            self._end_peer(peer, out)
            out.append(Drop(peer=peer, reason=reason))

    def _settle(self, now: float, out: list[Effect]) -> list[Effect]:
        """Charge the faults the parts reported, announce new chunks, finish downloads."""
        while True:
            faults = self.uploader.faults
            self.uploader.faults = []
            for art in self.artifacts.values():
                if art.download is not None:
                    faults += art.download.faults
                    art.download.faults = []
            if not faults:
                break
            for peer, rule, detail in faults:
                self._charge(peer, rule, detail, now, out)
            for art in self.artifacts.values():  # a dropped peer's requests went elsewhere
                if art.download is not None:
                    art.download.fill_all(now, out)
        done = []
        for eff in list(out):
            if isinstance(eff, ChunkVerified):
                got = self.artifacts.get(eff.artifact)
                if got is not None:
                    have = Have(artifact=eff.artifact, chunk=eff.index).to_wire()
                    # Not to a peer that said it holds the chunk: it will never ask us.
                    peers = got.download.peers if got.download is not None else {}
                    out.extend(
                        Send(peer=p, data=have)
                        for p in sorted(got.sessions)
                        if p not in peers or eff.index not in peers[p].has
                    )
            elif isinstance(eff, Completed):
                done.append(eff.artifact)
            elif isinstance(eff, Serve):
                served = self.artifacts.get(eff.artifact)
                if served is not None and served.download is not None:
                    served.download.origin_fresh.discard(eff.chunk)
        for artifact in done:  # a finished download's peer state is let go
            got = self.artifacts.get(artifact)
            if got is not None and got.download is not None and got.download.complete:
                got.origin_chunks = got.download.origin_chunks
                got.download = None
        return out

    def status(self) -> tuple[ArtifactStatus, ...]:
        """Every tracked artifact, in the order added."""
        out = []
        for a in self.artifacts.values():
            dl = a.download
            out.append(
                ArtifactStatus(
                    artifact=a.map.artifact,
                    chunks=a.map.count,
                    held=len(a.held),
                    sessions=len(a.sessions),
                    fetching_from=0
                    if dl is None
                    else sum(1 for p in dl.peers.values() if p.inflight),
                    origin_chunks=a.origin_chunks if dl is None else dl.origin_chunks,
                )
            )
        return tuple(out)

    def counters(self) -> dict[str, int]:
        """What happened to blocks over every download so far (``download.COUNTS``)."""
        return dict(self.counts)

    def origin_chunks(self, artifact: str) -> int:
        """How many chunks of ``artifact`` went to the origin (for status and tests)."""
        art = self.artifacts.get(artifact)
        if art is None:
            return 0
        return art.origin_chunks if art.download is None else art.download.origin_chunks


EventHandler = Callable[[Swarm, Event, float, list[Effect]], None]
MessageHandler = Callable[[Swarm, str, Message, float, list[Effect]], None]

#: The one handler per event kind.
EVENT_HANDLERS: Final[Mapping[type[Event], EventHandler]] = {
    Opened: Swarm._opened,  # type: ignore[dict-item]
    PeerGone: Swarm._gone,  # type: ignore[dict-item]
    Received: Swarm._received,  # type: ignore[dict-item]
    OriginChunk: Swarm._origin_chunk,  # type: ignore[dict-item]
    OriginFailed: Swarm._origin_failed,  # type: ignore[dict-item]
    UplinkMeasured: Swarm._uplink,  # type: ignore[dict-item]
    HolderDialed: Swarm._holder_dialed,  # type: ignore[dict-item]
    HolderKnown: Swarm._holder_known,  # type: ignore[dict-item]
}

#: The one handler per message kind.
MESSAGE_HANDLERS: Final[Mapping[type[Message], MessageHandler]] = {
    Bitfield: Swarm._on_bitfield,
    Have: Swarm._on_have,
    Request: Swarm._on_request,
    Cancel: Swarm._on_cancel,
    Block: Swarm._on_block,
    Reject: Swarm._on_reject,
}

__all__ = ["EVENT_HANDLERS", "MESSAGE_HANDLERS", "ArtifactStatus", "Swarm"]
