"""One artifact's download: what each peer holds, what to ask whom, and who lied.

Sans-IO; the front (``Swarm``) feeds it decoded messages and timer ticks, and carries out
the faults it reports (``faults``: peer, rule, detail) through ``penalties.Scores``.

Piece selection.  The first ``random_first`` chunks are picked at random among those a peer
has (a newcomer needs any whole chunk fast); after that rarest-first (fewest connected
holders; ties at random), which keeps rare chunks from vanishing with their holder.  A
chunk is started by one peer (its *owner*), which gets all its blocks, up to ``pipeline``
requests in flight; a chunk's blocks come from several peers only when a request moved
(its deadline passed, the peer rejected it or left) or in endgame.

Deadlines.  Every request has ``request_timeout``, counted from when it was sent or the
peer's last block, whichever is later (a peer serves in turn: one that keeps delivering is
slow, not stuck, and the overall deadline deals with slow); a late request goes back to the pool,
another peer holding the chunk takes it, and the late answer is still welcome if it comes
first.  ``max_misses`` passes in a row with a missed deadline drop the peer.

Endgame.  Once every missing chunk is in flight (or at the origin), idle peers duplicate
the outstanding requests of chunks they hold; the first answer wins and the other requests
are cancelled.

Verification and blame.  A chunk is checked (``ChunkMap.check``) once its last block is
in.  A bad chunk that one peer sent whole proves that peer bad: ``bad_chunk`` (a ban).
When its blocks came from several peers, nobody is blamed yet: the blocks are kept as
evidence, and the chunk is fetched again from one peer alone.  That fetch either fails
(its peer is proven bad) or verifies, and then every evidence block that differs from the
verified bytes proves its sender bad.  An honest peer's blocks always match, so it is never
banned.  A ``missing`` reject for a chunk the peer advertised is a ``false_claim``.

The origin.  A chunk no connected peer has for ``origin_grace`` seconds, or chunks the
peers cannot deliver before the overall ``deadline`` at the rate measured over
``rate_window``, go out in a ``FetchFromOrigin``; they are not asked of peers meanwhile.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

from .chunks import ChunkMap
from .config import SwarmConfig
from .events import ChunkVerified, Completed, Effect, FetchFromOrigin, Send
from .messages import Bitfield, Block, Cancel, Have, Reject, Request

#: Requests a peer may still answer after they timed out or were cancelled (per peer).
MAX_LATE: Final = 64
#: Peers must be too slow by this margin before chunks move to the origin for the deadline.
DEADLINE_MARGIN: Final = 0.8
#: How often the origin rules are looked at while chunks are missing (seconds).
CHECK_EVERY: Final = 1.0

Key = tuple[int, int]  # (chunk, offset): one block
Fault = tuple[str, str, str]  # (peer, rule, detail)


class Rng(Protocol):
    """The randomness the picker draws from: ``random.Random`` fits."""

    def random(self) -> float: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class _Req:
    length: int
    deadline: float


@dataclass(kw_only=True, slots=True)
class _Peer:
    has: set[int] = field(default_factory=set)
    inflight: dict[Key, _Req] = field(default_factory=dict)
    late: dict[Key, int] = field(default_factory=dict)  # key -> length (ordered: oldest out)
    misses: int = 0
    backoff_until: float = 0.0


@dataclass(kw_only=True, slots=True)
class _Part:
    """A chunk being fetched: blocks in (with their sender), blocks asked (of whom)."""

    index: int
    owner: str | None
    single: bool  # a suspect chunk: every block from the owner alone
    blocks: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    asked: dict[int, set[str]] = field(default_factory=dict)
    shunned: set[str] = field(default_factory=set)  # missed or refused a block of it


class Download:
    """The state of fetching one artifact; ``held`` is shared with the front (uploads)."""

    def __init__(
        self,
        *,
        chunk_map: ChunkMap,
        held: set[int],
        config: SwarmConfig,
        rng: Rng,
        now: float,
        deadline: float | None = None,
    ) -> None:
        self.map = chunk_map
        self.held = held
        self.config = config
        self.rng = rng
        self.deadline = deadline
        self.started = now
        self.peers: dict[str, _Peer] = {}
        self.parts: dict[int, _Part] = {}
        self.origin: set[int] = set()  # chunks the origin was asked for
        self.origin_chunks = 0  # how many FetchFromOrigin asked for, in all
        self.evidence: dict[int, list[tuple[str, int, bytes]]] = {}
        self.unavailable: dict[int, float] = {}  # chunk -> since when no peer has it
        self.received: deque[tuple[float, int]] = deque()  # (when, bytes) from peers
        self.faults: list[Fault] = []
        self.next_check = now

    # -- queries -------------------------------------------------------------------------

    @property
    def artifact(self) -> str:
        return self.map.artifact

    @property
    def complete(self) -> bool:
        return len(self.held) == self.map.count

    def offsets(self, index: int) -> range:
        return range(0, self.map.chunks[index].length, self.config.max_block)

    def block_len(self, index: int, offset: int) -> int:
        return min(self.config.max_block, self.map.chunks[index].length - offset)

    def rate(self, now: float) -> float:
        """Bytes/s from peers over the last ``rate_window`` (since the start if shorter)."""
        window = self.config.rate_window
        while self.received and self.received[0][0] < now - window:
            self.received.popleft()
        span = max(1e-3, min(window, now - self.started))
        return sum(n for _, n in self.received) / span

    def get_timer(self) -> float | None:
        if self.complete:
            return None
        times = [r.deadline for p in self.peers.values() for r in p.inflight.values()]
        times.append(self.next_check)
        return min(times)

    # -- sessions ------------------------------------------------------------------------

    def peer_opened(self, peer: str) -> None:
        self.peers.setdefault(peer, _Peer())

    def peer_gone(self, peer: str) -> None:
        """``peer`` left (or was dropped): its requests return to the pool."""
        p = self.peers.pop(peer, None)
        if p is None:
            return
        for key in p.inflight:
            self._unask(peer, key)

    def _unask(self, peer: str, key: Key) -> None:
        part = self.parts.get(key[0])
        if part is None:
            return
        part.asked.get(key[1], set()).discard(peer)
        part.shunned.add(peer)
        if part.owner == peer:
            part.owner = None
            if part.single:  # a suspect chunk starts over with another single peer
                self._abandon(part)

    def _abandon(self, part: _Part, out: list[Effect] | None = None) -> None:
        """Forget a part (its requests are cancelled when ``out`` is given)."""
        del self.parts[part.index]
        for offset, askees in part.asked.items():
            key = (part.index, offset)
            for other in askees:
                op = self.peers.get(other)
                if op is not None and op.inflight.pop(key, None) is not None:
                    self._late(op, key, self.block_len(*key))
                    if out is not None:
                        out.append(Send(peer=other, data=self._cancel(key).to_wire()))

    def _cancel(self, key: Key) -> Cancel:
        return Cancel(
            artifact=self.artifact, chunk=key[0], offset=key[1], length=self.block_len(*key)
        )

    @staticmethod
    def _late(p: _Peer, key: Key, length: int) -> None:
        p.late[key] = length
        while len(p.late) > MAX_LATE:
            del p.late[next(iter(p.late))]

    # -- messages ------------------------------------------------------------------------

    def on_bitfield(self, peer: str, msg: Bitfield, now: float, out: list[Effect]) -> None:
        if msg.count != self.map.count:
            self.faults.append(
                (peer, "malformed", f"bitfield of {msg.count} chunks, the release has "
                 f"{self.map.count}")
            )  # fmt: skip
            return
        self.peers.setdefault(peer, _Peer()).has = set(msg.held())
        self.fill(peer, now, out)  # only this peer has something new to offer

    def on_have(self, peer: str, msg: Have, now: float, out: list[Effect]) -> None:
        if msg.chunk >= self.map.count:
            self.faults.append((peer, "malformed", f"have {msg.chunk} of {self.map.count}"))
            return
        has = self.peers.setdefault(peer, _Peer()).has
        if msg.chunk in has:  # an honest peer announces a chunk once (bitfield or have)
            self.faults.append((peer, "unsolicited", f"have {msg.chunk} again"))
            return
        has.add(msg.chunk)
        self.fill(peer, now, out)

    def on_reject(self, peer: str, msg: Reject, now: float, out: list[Effect]) -> None:
        p = self.peers.get(peer)
        key = (msg.chunk, msg.offset)
        if p is None or p.inflight.pop(key, None) is None:
            if p is None or p.late.pop(key, None) is None:
                self.faults.append((peer, "unsolicited", f"reject of unasked block {key}"))
            return
        self._unask(peer, key)
        if msg.reason == "missing":
            if msg.chunk in p.has:
                p.has.discard(msg.chunk)
                self.faults.append(
                    (peer, "false_claim", f"advertised chunk {msg.chunk}, then cannot serve it")
                )
        else:
            p.backoff_until = now + self.config.reject_backoff
        self.fill_all(now, out)

    def on_block(self, peer: str, msg: Block, now: float, out: list[Effect]) -> None:
        p = self.peers.get(peer)
        key = (msg.chunk, msg.offset)
        req = None if p is None else p.inflight.pop(key, None)
        if p is None:
            self.faults.append((peer, "unsolicited", f"block {key} without a session"))
            return
        if req is not None:
            expected = req.length
            part = self.parts.get(msg.chunk)
            if part is not None:
                part.asked.get(msg.offset, set()).discard(peer)
        elif key in p.late:
            expected = p.late.pop(key)
        else:
            self.faults.append((peer, "unsolicited", f"block {key} never asked of it"))
            return
        if len(msg.data) != expected:
            self.faults.append(
                (peer, "wrong_length", f"block {key} of {len(msg.data)} bytes, asked {expected}")
            )
            self.fill_all(now, out)
            return
        p.misses = 0
        self.received.append((now, len(msg.data)))
        # Progress resets the clock of what is still in flight there: a peer serves its
        # requests in turn, so a slow honest link (a full pipeline at a modest rate) is
        # not a trickler while a block keeps coming every ``request_timeout``.
        again = now + self.config.request_timeout
        for k, r in p.inflight.items():
            if r.deadline < again:
                p.inflight[k] = _Req(length=r.length, deadline=again)
        part = self.parts.get(msg.chunk)
        fresh = part is not None and msg.offset not in part.blocks
        if part is not None and fresh and (not part.single or part.owner == peer):
            self._take(part, peer, msg.offset, msg.data, now, out)
        self.fill_all(now, out)

    def _take(
        self, part: _Part, peer: str, offset: int, data: bytes, now: float, out: list[Effect]
    ) -> None:
        part.blocks[offset] = (data, peer)
        key = (part.index, offset)
        for other in part.asked.pop(offset, set()):  # endgame duplicates: cancel them
            op = self.peers.get(other)
            if op is not None and op.inflight.pop(key, None) is not None:
                self._late(op, key, len(data))
                out.append(Send(peer=other, data=self._cancel(key).to_wire()))
        if len(part.blocks) == len(self.offsets(part.index)):
            self._assemble(part, now, out)

    def _assemble(self, part: _Part, now: float, out: list[Effect]) -> None:
        i = part.index
        del self.parts[i]
        data = b"".join(part.blocks[o][0] for o in self.offsets(i))
        senders = sorted({s for _, s in part.blocks.values()})
        if self.map.check(i, data):
            self._verified(i, data, ",".join(senders), out)
        elif len(senders) == 1:
            self.faults.append((senders[0], "bad_chunk", f"chunk {i} fails its hash"))
            self.peer_gone(senders[0])
        else:  # several senders: keep the blocks, prove it with a single-source fetch
            self.evidence.setdefault(i, []).extend((s, o, d) for o, (d, s) in part.blocks.items())

    def _verified(self, i: int, data: bytes, source: str, out: list[Effect]) -> None:
        self.held.add(i)
        self.origin.discard(i)
        self.unavailable.pop(i, None)
        for sender, offset, block in self.evidence.pop(i, []):
            if block != data[offset : offset + len(block)]:
                detail = f"its block at {offset} of chunk {i} is not the verified chunk"
                self.faults.append((sender, "bad_chunk", detail))
        out.append(ChunkVerified(artifact=self.artifact, index=i, data=data, source=source))
        if self.complete:
            for part in list(self.parts.values()):
                self._abandon(part, out)
            out.append(Completed(artifact=self.artifact))

    def on_origin_chunk(self, index: int, data: bytes, out: list[Effect]) -> bool:
        """The origin's bytes for ``index``; False if they do not verify (asked again)."""
        if index in self.held or not 0 <= index < self.map.count:
            return True
        self.origin.discard(index)
        if not self.map.check(index, data):
            return False
        self._verified(index, data, "origin", out)
        return True

    def on_origin_failed(self, index: int) -> None:
        self.origin.discard(index)

    # -- timers --------------------------------------------------------------------------

    def on_timer(self, now: float, out: list[Effect]) -> list[str]:
        """Expire requests; the peers to drop (missed ``max_misses`` in a row) come back."""
        drops = []
        for peer, p in list(self.peers.items()):
            expired = [k for k, r in p.inflight.items() if r.deadline <= now]
            if not expired:
                continue
            for key in expired:
                self._late(p, key, p.inflight.pop(key).length)
                self._unask(peer, key)
            p.misses += 1
            self.faults.append(
                (peer, "missed_deadline", f"{len(expired)} requests unanswered in "
                 f"{self.config.request_timeout:g} s")
            )  # fmt: skip
            if p.misses >= self.config.max_misses:
                drops.append(peer)
                self.peer_gone(peer)
        if now >= self.next_check:
            self.next_check = now + CHECK_EVERY
            self._origin_rules(now, out)
        self.fill_all(now, out)
        return drops

    def _origin_rules(self, now: float, out: list[Effect]) -> None:
        if self.complete:
            return
        wanted = [i for i in range(self.map.count) if i not in self.held and i not in self.origin]
        for i in wanted:  # a half-fetched chunk whose holders all left counts too
            if not any(i in p.has for p in self.peers.values()):
                self.unavailable.setdefault(i, now)
            else:
                self.unavailable.pop(i, None)
        grace = self.config.origin_grace
        due = sorted(i for i, t in self.unavailable.items() if now - t >= grace)
        if due:
            self._to_origin(due, "no connected peer has them", out)
        if self.deadline is None or now - self.started < grace:
            return
        rest = [i for i in wanted if i not in self.origin]
        left = max(0.0, self.deadline - now)
        budget = self.rate(now) * left * DEADLINE_MARGIN
        need = sum(self.map.chunks[i].length for i in rest)
        if need <= budget:
            return
        # Move first what peers are least likely to bring: not started, fewest holders.
        rest.sort(key=lambda i: (i in self.parts, self._holders(i), i))
        moved = []
        for i in rest:
            if need <= budget:
                break
            moved.append(i)
            need -= self.map.chunks[i].length
        reason = f"peers bring {self.rate(now):.0f} B/s, {left:.1f} s to the deadline"
        self._to_origin(moved, reason, out)

    def _to_origin(self, chunks: list[int], reason: str, out: list[Effect]) -> None:
        for i in chunks:
            self.unavailable.pop(i, None)
            self.origin.add(i)
            part = self.parts.get(i)
            if part is not None:
                self._abandon(part, out)
        self.origin_chunks += len(chunks)
        out.append(FetchFromOrigin(artifact=self.artifact, chunks=tuple(chunks), reason=reason))

    def _shuns(self, part: _Part, peer: str) -> bool:
        """Whether ``peer`` failed this chunk before and another holder could take it."""
        if peer not in part.shunned:
            return False
        return any(part.index in p.has for q, p in self.peers.items() if q not in part.shunned)

    def _holders(self, i: int) -> int:
        return sum(1 for p in self.peers.values() if i in p.has)

    # -- the picker ----------------------------------------------------------------------

    def fill_all(self, now: float, out: list[Effect]) -> None:
        for peer in list(self.peers):
            self.fill(peer, now, out)

    def fill(self, peer: str, now: float, out: list[Effect]) -> None:
        """Ask ``peer`` for blocks until its pipeline is full or it has nothing we need."""
        p = self.peers.get(peer)
        if p is None or self.complete or now < p.backoff_until:
            return
        while len(p.inflight) < self.config.pipeline:
            key = self._next_block(peer, p)
            if key is None:
                return
            part = self.parts[key[0]]
            part.asked.setdefault(key[1], set()).add(peer)
            length = self.block_len(*key)
            p.inflight[key] = _Req(length=length, deadline=now + self.config.request_timeout)
            req = Request(artifact=self.artifact, chunk=key[0], offset=key[1], length=length)
            out.append(Send(peer=peer, data=req.to_wire()))

    def _unasked(self, part: _Part) -> Iterable[int]:
        return (
            o for o in self.offsets(part.index) if o not in part.blocks and not part.asked.get(o)
        )

    def _next_block(self, peer: str, p: _Peer) -> Key | None:
        parts = [part for part in self.parts.values() if part.index in p.has]
        for part in parts:  # 1. the chunks this peer owns
            if part.owner == peer:
                for o in self._unasked(part):
                    return (part.index, o)
        for part in parts:  # 2. orphaned blocks of chunks whose request moved
            if part.owner is None and not part.single and not self._shuns(part, peer):
                for o in self._unasked(part):
                    part.owner = peer
                    return (part.index, o)
        index = self._pick(p)  # 3. a new chunk
        if index is not None:
            self.parts[index] = _Part(index=index, owner=peer, single=index in self.evidence)
            return (index, 0)
        if any(
            i not in self.held and i not in self.parts and i not in self.origin
            for i in range(self.map.count)
        ):
            return None  # chunks remain unstarted (this peer lacks them): no endgame yet
        for part in parts:  # 4. endgame: duplicate what others have in flight
            if part.single:
                continue
            for o in self.offsets(part.index):
                askees = part.asked.get(o)
                if o not in part.blocks and askees and peer not in askees:
                    return (part.index, o)
        return None

    def _pick(self, p: _Peer) -> int | None:
        cands = sorted(
            i for i in p.has if i not in self.held and i not in self.parts and i not in self.origin
        )
        if not cands:
            return None
        if len(self.held) >= self.config.random_first:
            counts = {i: self._holders(i) for i in cands}
            rarest = min(counts.values())
            cands = [i for i in cands if counts[i] == rarest]
        return cands[int(self.rng.random() * len(cands)) % len(cands)]
