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

Moving queued requests.  A busy uploader serves its queue in turn, so a request waits
there (~2 s on the 24-node bench: four peers served, six requests each), and late in a
download what we still lack sits in busy peers' queues while idle peers that hold it
have nothing to do.  So a peer with nothing of ours in flight and nothing new for us
takes one request of a chunk it holds from a peer where at least ``MOVE_AHEAD`` of ours
wait ahead of it, the one with most ahead (ties: the one asked last): it is cancelled
there and asked here (moved, not duplicated: the cancel reaches the busy peer long before
it serves, so nothing is sent twice; the head of a queue, about to be served, never
moves, and a moved request, alone at its new peer, cannot move back).  In the
simulator's 24-node run (``simulations swarm``, 64 KiB chunks, 11 links a node, 100 ms
one way, 10 seeds) the last node was done in 37.1 s instead of 40.2 (the bound: 27.4);
duplicating instead of moving gave 39.8, with 531 blocks sent twice instead of 23.

Endgame.  Once every missing chunk is in flight (or at the origin), a peer with nothing
in flight duplicates one outstanding request of a chunk it holds, the one waiting longest
(and asked of one peer only: ``ENDGAME_ASKEES``), then another once that is answered; the
first answer wins and the other request is cancelled at once.  (Duplicating every
outstanding request to every idle peer, as before, made a node of the 24-node bench ask
for 150-290 blocks twice and upload a fifth of its bytes for nothing.)

Verification and blame.  A chunk is checked (``ChunkMap.check``) once its last block is
in.  A bad chunk that one peer sent whole proves that peer bad: ``bad_chunk`` (a ban).
When its blocks came from several peers, nobody is blamed yet: the blocks are kept as
evidence, and the chunk is fetched again from one peer alone.  That fetch either fails
(its peer is proven bad) or verifies, and then every evidence block that differs from the
verified bytes proves its sender bad.  An honest peer's blocks always match, so it is never
banned.  A ``missing`` reject for a chunk the peer advertised is a ``false_claim``.

The origin.  A download has at most ``origin_parallel`` chunks at the origin at once,
each picked at random among those no connected peer has (nodes that start together fetch
different chunks, then trade them).  It asks at once when peers gave it nothing to ask for
``origin_idle`` (release day: nobody has anything) -- for ``origin_grace`` while the shell
dials a holder it learned of (``HolderDialed``); it keeps asking while what the origin
sends is new around it (no peer had it when it came, no peer announced it before we
served it: else someone else got it from the origin too) or it is starved (fewer requests
in flight at peers than one ``pipeline``), and most of what it still needs is nowhere
around it; otherwise a chunk goes to the origin once no connected peer has had
it for ``origin_grace``, counted from when the swarm around it last spread a chunk new to
it.  A "try-peers" (``OriginFailed`` with ``retry_after``) leaves the origin alone that
long.  Chunks the peers cannot deliver before the overall ``deadline`` at the rate
measured over ``rate_window`` go out too.  Chunks at the origin are not asked of peers.
"""

from __future__ import annotations

import math
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
#: In endgame a block is asked of at most this many peers at once (the owner and one
#: idle peer): every duplicate is upload someone spends twice.
ENDGAME_ASKEES: Final = 2
#: A request moves to an idle peer only with at least this many of ours ahead of it at
#: its peer (the head is about to be served; none ahead: moved back and forth).
MOVE_AHEAD: Final = 2
#: A download's share of the origin, in chunks: this times the chunk count over it and
#: its peers (``Download.origin_share``).
ORIGIN_SHARE: Final = 2
#: How often the origin rules are looked at while chunks are missing (seconds).
CHECK_EVERY: Final = 1.0
#: Stream from the origin only while more than 1/STREAM_SHARE of what we still need is
#: nowhere around us; the rest comes from peers, or after the grace.
STREAM_SHARE: Final = 2

#: What ``Download.counts`` counts: blocks asked (``requests``; ``endgame`` of them
#: duplicates, ``moved`` of them taken from a busy peer's queue), blocks in (``blocks``; ``dup_blocks``: bytes we had or were not taking,
#: ``late_blocks``: answers after a timeout or cancel), ``cancels`` sent, ``timeouts``
#: (requests that passed their deadline and went back to the pool), ``rejects``
#: (``choked``/``busy`` answers: the uploader's slots or queue were full); ``answered``
#: (blocks that answered a request still in flight), ``wait_ms`` (their time from the
#: request sent to the block in, summed: ``wait_ms / answered`` is the mean) and
#: ``slow_answers`` (those that took more than ``SLOW_ANSWER``).
COUNTS: Final = (
    "requests",
    "endgame",
    "moved",
    "blocks",
    "dup_blocks",
    "late_blocks",
    "cancels",
    "timeouts",
    "rejects",
    "answered",
    "wait_ms",
    "slow_answers",
)
#: An answer slower than this (seconds) counts in ``slow_answers``.
SLOW_ANSWER: Final = 2.0

Key = tuple[int, int]  # (chunk, offset): one block
Fault = tuple[str, str, str]  # (peer, rule, detail)


class Rng(Protocol):
    """The randomness the picker draws from: ``random.Random`` fits."""

    def random(self) -> float: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class _Req:
    length: int
    sent: float  # its deadline: ``request_timeout`` after this or the peer's last block


@dataclass(kw_only=True, slots=True)
class _Peer:
    has: set[int] = field(default_factory=set)
    inflight: dict[Key, _Req] = field(default_factory=dict)
    #: key -> (length, answers still welcome), the oldest first (``MAX_LATE`` kept)
    late: dict[Key, tuple[int, int]] = field(default_factory=dict)
    misses: int = 0
    backoff_until: float = 0.0
    progress: float = -math.inf  # when its last block came
    choked: bool = False  # it rejected us ``choked``/``busy``: one request until a block
    #: ``Download.epoch`` when this peer last had nothing for us (-1: ask it).
    idle_at: int = -1


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
        counts: dict[str, int] | None = None,
    ) -> None:
        self.map = chunk_map
        #: What happened to blocks (``COUNTS``; the front shares one dict for all downloads).
        self.counts = counts if counts is not None else dict.fromkeys(COUNTS, 0)
        self.held = held
        self.config = config
        self.rng = rng
        self.deadline = deadline
        self.started = now
        self.peers: dict[str, _Peer] = {}
        self.parts: dict[int, _Part] = {}
        self.origin: set[int] = set()  # chunks the origin was asked for
        self.origin_chunks = 0  # how many FetchFromOrigin asked for, in all
        self.origin_taken = 0  # how many the origin served (verified)
        self.evidence: dict[int, list[tuple[str, int, bytes]]] = {}
        self.unavailable: dict[int, float] = {}  # chunk -> since when no peer has it
        self.received: deque[tuple[float, int]] = deque()  # (when, bytes) from peers
        self.faults: list[Fault] = []
        self.next_check = now
        self._timer: float | None = None  # get_timer's answer, or an earlier one
        self.now = now  # the latest ``now`` an entry point was given
        #: Connected peers that hold each chunk (rarest-first and the origin rules read it).
        self.avail = [0] * chunk_map.count
        #: Chunks neither held, nor being fetched from a peer, nor at the origin: the pool
        #: a new chunk is picked from (kept as things change, never rebuilt by a scan).
        self.wanted = set(range(chunk_map.count)) - held
        #: Bumped whenever something becomes askable again (a chunk back in the pool, a
        #: block un-asked), so ``fill`` skips a peer that had nothing for us since.
        self.epoch = 0
        #: No request to the origin before this (its "try-peers" ``retry_after``).
        self.origin_backoff = now
        #: When the origin last served us (it admits us while we keep asking).
        self.origin_served: float | None = None
        #: When a chunk we lack last appeared around us (the swarm is still spreading).
        self.discovered = now
        #: Chunks the origin sent us that we have not served yet: a peer announcing one
        #: got it elsewhere, so the origin sent it twice (we stop streaming from it).
        self.origin_fresh: set[int] = set()
        self.origin_twice = -math.inf  # when we last saw that
        #: Chunks the origin sent us (the uploader serves them first while no peer has one).
        self.origin_got: set[int] = set()
        #: Since when nothing was in flight at any peer and nothing was pickable (None: busy).
        self.idle_since: float | None = now
        #: Until when a holder the shell is dialing may come (``holder_coming``).
        self.coming_until = -math.inf
        for i in range(chunk_map.count):
            if i not in held:
                self.unavailable[i] = now

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
        """The next request deadline or origin check.  A request's deadline is
        ``request_timeout`` after it was sent or after the peer's last block, whichever is
        later; a peer's requests are in the order sent, so its first is its earliest: this
        costs the number of peers, not of requests."""
        if self.complete:
            return None
        if self._timer is not None:
            return self._timer
        t = self.next_check
        timeout = self.config.request_timeout
        for p in self.peers.values():
            if p.inflight:
                d = max(next(iter(p.inflight.values())).sent, p.progress) + timeout
                if d < t:
                    t = d
        self._timer = t
        return t

    def _sooner(self, t: float) -> None:
        """Something is due at ``t``: the cached timer comes no later.  (What moves a
        deadline later leaves the cache early: one wake-up that finds nothing due.)"""
        if self._timer is not None and t < self._timer:
            self._timer = t

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
        for part in list(self.parts.values()):
            if part.owner == peer:  # an owner whose requests of the chunk all moved away
                part.owner = None
                if part.single:
                    self._abandon(part)
        for i in p.has:
            self._lost_holder(i)
        self.epoch += 1  # a chunk it shunned may have no other holder now

    def _lost_holder(self, i: int) -> None:
        self.avail[i] -= 1
        if self.avail[i] == 0 and i not in self.held and i not in self.origin:
            self.unavailable.setdefault(i, self.now)

    def _new_holder(self, i: int) -> None:
        self.avail[i] += 1
        if self.avail[i] == 1 and i not in self.held:
            self.unavailable.pop(i, None)
            self.discovered = self.now

    def _pool(self, i: int) -> None:
        """Chunk ``i`` may be picked again (its part ended, the origin failed it)."""
        if i not in self.held and i not in self.parts and i not in self.origin:
            self.wanted.add(i)
            self.epoch += 1

    def _unask(self, peer: str, key: Key) -> None:
        part = self.parts.get(key[0])
        if part is None:
            return
        part.asked.get(key[1], set()).discard(peer)
        part.shunned.add(peer)
        self.epoch += 1
        if part.owner == peer:
            part.owner = None
            if part.single:  # a suspect chunk starts over with another single peer
                self._abandon(part)

    def _abandon(self, part: _Part, out: list[Effect] | None = None) -> None:
        """Forget a part (its requests are cancelled when ``out`` is given)."""
        del self.parts[part.index]
        self._pool(part.index)
        for offset, askees in part.asked.items():
            key = (part.index, offset)
            for other in askees:
                op = self.peers.get(other)
                if op is not None and op.inflight.pop(key, None) is not None:
                    self._late(op, key, self.block_len(*key))
                    if out is not None:
                        self.counts["cancels"] += 1
                        out.append(Send(peer=other, data=self._cancel(key).to_wire()))

    def _cancel(self, key: Key) -> Cancel:
        return Cancel(
            artifact=self.artifact, chunk=key[0], offset=key[1], length=self.block_len(*key)
        )

    @staticmethod
    def _late(p: _Peer, key: Key, length: int) -> None:
        """One more answer from ``p`` for ``key`` is welcome, though no longer awaited (a
        block asked of it twice, then withdrawn twice, may be answered twice)."""
        _, n = p.late.pop(key, (length, 0))
        p.late[key] = (length, n + 1)  # to the end: the oldest go first
        while len(p.late) > MAX_LATE:
            del p.late[next(iter(p.late))]

    @staticmethod
    def _late_answer(p: _Peer, key: Key) -> int | None:
        """The length of a late answer from ``p`` for ``key``, if one was still welcome."""
        got = p.late.get(key)
        if got is None:
            return None
        length, n = got
        if n > 1:
            p.late[key] = (length, n - 1)
        else:
            del p.late[key]
        return length

    # -- messages ------------------------------------------------------------------------

    def on_bitfield(self, peer: str, msg: Bitfield, now: float, out: list[Effect]) -> None:
        if msg.count != self.map.count:
            self.faults.append(
                (peer, "malformed", f"bitfield of {msg.count} chunks, the release has "
                 f"{self.map.count}")
            )  # fmt: skip
            return
        self.now = now
        p = self.peers.setdefault(peer, _Peer())
        for i in p.has:
            self._lost_holder(i)
        p.has = set(msg.held())
        p.idle_at = -1
        for i in p.has:
            self._new_holder(i)
        self.fill(peer, now, out)  # only this peer has something new to offer

    def on_have(self, peer: str, msg: Have, now: float, out: list[Effect]) -> None:
        if msg.chunk >= self.map.count:
            self.faults.append((peer, "malformed", f"have {msg.chunk} of {self.map.count}"))
            return
        self.now = now
        p = self.peers.setdefault(peer, _Peer())
        if msg.chunk in p.has:  # an honest peer announces a chunk once (bitfield or have)
            self.faults.append((peer, "unsolicited", f"have {msg.chunk} again"))
            return
        p.has.add(msg.chunk)
        self._new_holder(msg.chunk)
        if msg.chunk in self.origin_fresh:  # the origin sent it to someone else too
            self.origin_fresh.discard(msg.chunk)
            self.origin_twice = now
        if msg.chunk in self.wanted or msg.chunk in self.parts:
            p.idle_at = -1
            self.fill(peer, now, out)

    def on_reject(self, peer: str, msg: Reject, now: float, out: list[Effect]) -> None:
        self.now = now
        p = self.peers.get(peer)
        key = (msg.chunk, msg.offset)
        if p is None or p.inflight.pop(key, None) is None:
            if p is None or self._late_answer(p, key) is None:
                self.faults.append((peer, "unsolicited", f"reject of unasked block {key}"))
            return
        self._unask(peer, key)
        if msg.reason == "missing":
            if msg.chunk in p.has:
                p.has.discard(msg.chunk)
                self._lost_holder(msg.chunk)
                self.faults.append(
                    (peer, "false_claim", f"advertised chunk {msg.chunk}, then cannot serve it")
                )
        else:  # choked or busy: left alone a while, then probed with one request
            self.counts["rejects"] += 1
            p.backoff_until = now + self.config.reject_backoff
            p.choked = True
        for q, qp in list(self.peers.items()):  # the block went back: another holder's
            if msg.chunk in qp.has:
                self.fill(q, now, out)

    def on_block(self, peer: str, msg: Block, now: float, out: list[Effect]) -> None:
        self.now = now
        p = self.peers.get(peer)
        key = (msg.chunk, msg.offset)
        req = None if p is None else p.inflight.pop(key, None)
        if p is None:
            self.faults.append((peer, "unsolicited", f"block {key} without a session"))
            return
        if req is not None:
            expected = req.length
            wait = now - req.sent
            self.counts["answered"] += 1
            self.counts["wait_ms"] += round(wait * 1000)
            if wait > SLOW_ANSWER:
                self.counts["slow_answers"] += 1
            part = self.parts.get(msg.chunk)
            if part is not None:
                part.asked.get(msg.offset, set()).discard(peer)
        elif (late := self._late_answer(p, key)) is not None:
            expected = late
            self.counts["late_blocks"] += 1
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
        p.progress = now
        p.choked = False
        part = self.parts.get(msg.chunk)
        fresh = part is not None and msg.offset not in part.blocks
        epoch, sent = self.epoch, len(out)
        self.counts["blocks"] += 1
        if part is not None and fresh and (not part.single or part.owner == peer):
            self._take(part, peer, msg.offset, msg.data, now, out)
        else:
            self.counts["dup_blocks"] += 1
        if self.epoch != epoch or len(out) != sent:  # cancels, a chunk back in the pool
            self.fill_all(now, out)
        else:  # only this peer's pipeline has room
            self.fill(peer, now, out)

    def _take(
        self, part: _Part, peer: str, offset: int, data: bytes, now: float, out: list[Effect]
    ) -> None:
        part.blocks[offset] = (data, peer)
        key = (part.index, offset)
        for other in part.asked.pop(offset, set()):  # endgame duplicates: cancel them
            op = self.peers.get(other)
            if op is not None and op.inflight.pop(key, None) is not None:
                self._late(op, key, len(data))
                self.counts["cancels"] += 1
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
            self._pool(i)
            self.faults.append((senders[0], "bad_chunk", f"chunk {i} fails its hash"))
            self.peer_gone(senders[0])
        else:  # several senders: keep the blocks, prove it with a single-source fetch
            self._pool(i)
            self.evidence.setdefault(i, []).extend((s, o, d) for o, (d, s) in part.blocks.items())

    def _verified(self, i: int, data: bytes, source: str, out: list[Effect]) -> None:
        self.held.add(i)
        self.origin.discard(i)
        self.wanted.discard(i)
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
        self.next_check = min(self.next_check, self.now)  # room at the origin: look again
        self._sooner(self.next_check)
        if not self.map.check(index, data):
            return False
        # A chunk nobody around us had: keep streaming.  One a peer got meanwhile means
        # the swarm has caught up with the origin: back to the grace.
        self.origin_served = self.now if self.avail[index] == 0 else None
        if self.avail[index] == 0:
            self.origin_fresh.add(index)
            self.origin_got.add(index)
        self.origin.discard(index)
        self.origin_taken += 1
        self._verified(index, data, "origin", out)
        return True

    def origin_share(self) -> int:
        """Chunks this download takes from the origin before it only waits for peers
        (but for the grace and the deadline): its part of the artifact split among it
        and the peers it has sessions with, at least ``origin_parallel``."""
        return max(
            self.config.origin_parallel,
            math.ceil(self.map.count * ORIGIN_SHARE / (1 + len(self.peers))),
        )

    def holder_coming(self, now: float) -> None:
        """The shell dials a holder of this artifact: an idle download waits the grace
        for it (from when it went idle), not ``origin_idle``."""
        self.coming_until = now + self.config.origin_grace

    def on_origin_failed(
        self, index: int, now: float | None = None, retry_after: float | None = None
    ) -> None:
        """The origin did not serve ``index``; with ``retry_after`` (its "try-peers"), it
        is not asked again for that long, and the chunk is the peers' meanwhile."""
        if now is not None:
            self.now = now
        if index not in self.origin:
            return
        self.origin.discard(index)
        if self.avail[index] == 0 and index not in self.held:
            self.unavailable.setdefault(index, self.now)
        self._pool(index)
        if retry_after is not None:
            until = self.now + max(0.0, retry_after)
            self.origin_backoff = max(self.origin_backoff, until)
        self.next_check = min(self.next_check, max(self.now, self.origin_backoff))
        self._sooner(self.next_check)

    # -- timers --------------------------------------------------------------------------

    def on_timer(self, now: float, out: list[Effect]) -> list[str]:
        """Expire requests; the peers to drop (missed ``max_misses`` in a row) come back."""
        self.now = now
        drops = []
        for peer, p in list(self.peers.items()):
            timeout = self.config.request_timeout
            if (
                not p.inflight
                or max(next(iter(p.inflight.values())).sent, p.progress) + timeout > now
            ):
                continue  # its earliest deadline is its first (``get_timer``)
            expired = [k for k, r in p.inflight.items() if max(r.sent, p.progress) + timeout <= now]
            if not expired:
                continue
            self.counts["timeouts"] += len(expired)
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
            if self.idle_since is None and not any(p.inflight for p in self.peers.values()):
                self.idle_since = now
            self._origin_rules(now, out)
        self.fill_all(now, out)
        self._timer = None
        return drops

    def _origin_rules(self, now: float, out: list[Effect]) -> None:
        if self.complete:
            return
        cfg = self.config
        room = cfg.origin_parallel - len(self.origin)
        if room > 0 and self.unavailable and now >= self.origin_backoff:
            # A chunk no connected peer has: after the grace (a peer may bring it soon),
            # or at once when peers have given us nothing to ask for a while (release day:
            # nobody has anything yet).  A few at a time, picked at random, so nodes that
            # start together fetch different chunks and trade them.
            # Past its share of the origin (the artifact split among it and its peers),
            # a node streams no more and waits the grace, not ``origin_idle``, when idle:
            # its peers' peers are fetching what it lacks (24 nodes each streaming while
            # most of what they lacked was nowhere around them made the origin send 4
            # copies on the bench).
            over = self.origin_taken + len(self.origin) >= self.origin_share()
            coming = now < self.coming_until  # a holder is being dialed: wait for it
            idle_for = cfg.origin_grace if over or coming else cfg.origin_idle
            idle = self.idle_since is not None and now - self.idle_since >= idle_for
            served = self.origin_served
            # Starved: fewer requests in flight at peers than one peer's pipeline while
            # most of what we need is nowhere around us.  The swarm has too little to
            # trade, and only the origin brings what nobody has: it streams again (on the
            # bench, once the first chunks it sent had reached others, streaming stopped
            # for good, the grace never came (new chunks kept appearing around us) and
            # every node kept a request or two in flight, so it was never idle: the origin
            # sent 0.26 MiB/s of its 2 and the 24 nodes took 50-60 s instead of 42).
            # (With no peer at all, or a holder being dialed, the idle rules decide.)
            starved = (
                bool(self.peers)
                and not coming
                and sum(len(p.inflight) for p in self.peers.values()) < cfg.pipeline
            )
            streaming = (
                not over
                and (starved or (served is not None and now - served < cfg.origin_grace))
                and now - self.origin_twice >= cfg.origin_grace
                and len(self.unavailable) * STREAM_SHARE > len(self.wanted)
            )
            # Idle or streaming: at once / after ``origin_idle``; and in any case after the
            # grace, counted from when the swarm around us last spread a chunk (streaming
            # never waits longer than the grace would: ``origin_idle`` may be the longer).
            fast = 0.0 if idle else cfg.origin_idle if streaming else math.inf
            grace, since = cfg.origin_grace, self.discovered
            due = [
                i
                for i, t in self.unavailable.items()
                if now - t >= fast or now - max(t, since) >= grace
            ]
            picks: list[int] = []
            while due and len(picks) < room:
                j = int(self.rng.random() * len(due)) % len(due)
                due[j], due[-1] = due[-1], due[j]
                picks.append(due.pop())
            if picks:
                why = (
                    "peers gave us nothing to ask"
                    if idle
                    else "streaming: what the origin sends is new around us"
                    if streaming
                    else "no connected peer has them"
                )
                self._to_origin(picks, why, out)
        if self.deadline is None:
            return
        # The rate is judged once it was measured a while: a swarm on release day starts
        # slowly (nobody has anything to trade yet), and judged from its first seconds it
        # looked too slow for any deadline: on the 24-node bench half of what went to the
        # origin went for a deadline of 300 s in a download that took 40.
        settle = min(cfg.rate_window, 0.25 * max(0.0, self.deadline - self.started))
        if now - self.started < max(cfg.origin_grace, settle):
            return
        rest = [i for i in range(self.map.count) if i not in self.held and i not in self.origin]
        left = max(0.0, self.deadline - now)
        budget = self.rate(now) * left * DEADLINE_MARGIN
        need = sum(self.map.chunks[i].length for i in rest)
        if need <= budget:
            return
        # Move first what peers are least likely to bring: not started, fewest holders.
        rest.sort(key=lambda i: (i in self.parts, self.avail[i], i))
        moved = []
        for i in rest:
            if need <= budget:
                break
            moved.append(i)
            need -= self.map.chunks[i].length
        reason = f"peers bring {self.rate(now):.0f} B/s, {left:.1f} s to the deadline"
        self._to_origin(moved, reason, out, rule="peers too slow for the deadline")

    def _to_origin(
        self, chunks: list[int], reason: str, out: list[Effect], *, rule: str = ""
    ) -> None:
        for i in chunks:
            self.unavailable.pop(i, None)
            self.wanted.discard(i)
            self.origin.add(i)
            part = self.parts.get(i)
            if part is not None:
                self._abandon(part, out)
        self.origin_chunks += len(chunks)
        out.append(
            FetchFromOrigin(
                artifact=self.artifact, chunks=tuple(chunks), reason=reason, rule=rule or reason
            )
        )

    def _shuns(self, part: _Part, peer: str) -> bool:
        """Whether ``peer`` failed this chunk before and another holder could take it."""
        if peer not in part.shunned:
            return False
        return any(part.index in p.has for q, p in self.peers.items() if q not in part.shunned)

    # -- the picker ----------------------------------------------------------------------

    def fill_all(self, now: float, out: list[Effect]) -> None:
        for peer in list(self.peers):
            self.fill(peer, now, out)

    def fill(self, peer: str, now: float, out: list[Effect]) -> None:
        """Ask ``peer`` for blocks until its pipeline is full or it has nothing we need."""
        p = self.peers.get(peer)
        if p is None or now < p.backoff_until:
            return
        depth = 1 if p.choked else self.config.pipeline
        if len(p.inflight) >= depth:
            return
        if self.complete or (p.idle_at == self.epoch and self.wanted and p.inflight):
            return  # nothing new since it last had nothing for us (idle: look again)
        self.now = now
        while len(p.inflight) < depth:
            key = self._next_block(peer, p)
            if key is None:
                p.idle_at = self.epoch
                return
            part = self.parts[key[0]]
            askees = part.asked.setdefault(key[1], set())
            self.counts["requests"] += 1
            if askees and self.wanted:  # moved here: cancelled where it waited
                self.counts["moved"] += 1
                self._withdraw(key, askees, out)
            elif askees:
                self.counts["endgame"] += 1
            askees.add(peer)
            length = self.block_len(*key)
            p.inflight[key] = _Req(length=length, sent=now)
            self._sooner(now + self.config.request_timeout)
            self.idle_since = None
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
            self.wanted.discard(index)
            self.parts[index] = _Part(index=index, owner=peer, single=index in self.evidence)
            return (index, 0)
        if p.inflight:  # it moves or duplicates only when idle, one block at a time
            return None
        if self.wanted:  # 4. chunks remain unstarted (this peer lacks them): a queued one
            return self._movable(peer, parts)
        # 5. endgame: duplicate the block asked longest ago of one other peer only
        best: tuple[float, Key] | None = None
        for part in parts:
            if part.single:
                continue
            for o in self.offsets(part.index):
                askees = part.asked.get(o)
                if o in part.blocks or not askees or len(askees) >= ENDGAME_ASKEES:
                    continue
                if peer in askees:
                    continue
                key = (part.index, o)
                sent = min(self._asked_at(q, key) for q in askees)
                if best is None or sent < best[0]:
                    best = (sent, key)
        return None if best is None else best[1]

    def _movable(self, peer: str, parts: list[_Part]) -> Key | None:
        """The block of a chunk ``peer`` holds that waits behind most of our requests at
        the one peer it was asked of (at least ``MOVE_AHEAD``; ties: asked last)."""
        best: tuple[int, float, Key] | None = None
        for part in parts:
            if part.single:  # a suspect chunk stays with its one peer
                continue
            for o, askees in part.asked.items():
                if len(askees) != 1 or peer in askees or o in part.blocks:
                    continue
                (other,) = askees
                op = self.peers.get(other)
                key = (part.index, o)
                if op is None or key not in op.inflight:
                    continue
                ahead = list(op.inflight).index(key)
                if ahead >= MOVE_AHEAD:
                    rank = (ahead, op.inflight[key].sent, key)
                    if best is None or rank > best:
                        best = rank
        return None if best is None else best[2]

    def _withdraw(self, key: Key, askees: set[str], out: list[Effect]) -> None:
        """Cancel ``key`` at every peer in ``askees`` (its answer, if sent, is still taken)."""
        for other in list(askees):
            askees.discard(other)
            op = self.peers.get(other)
            if op is not None and op.inflight.pop(key, None) is not None:
                self._late(op, key, self.block_len(*key))
                self.counts["cancels"] += 1
                out.append(Send(peer=other, data=self._cancel(key).to_wire()))

    def _asked_at(self, peer: str, key: Key) -> float:
        """When ``peer``'s request for ``key`` was sent, counting its last block as a
        fresh start (its deadline's clock)."""
        p = self.peers.get(peer)
        req = None if p is None else p.inflight.get(key)
        if p is None or req is None:
            return math.inf
        return max(req.sent, p.progress)

    def _pick(self, p: _Peer) -> int | None:
        """A chunk ``p`` has and we want: at random at first, then the rarest (fewest
        connected holders, ties at random).  Costs the smaller of the two sets, not the
        chunk list."""
        small, big = (p.has, self.wanted) if len(p.has) < len(self.wanted) else (self.wanted, p.has)
        cands = [i for i in small if i in big]
        if not cands:
            return None
        if len(self.held) >= self.config.random_first:
            avail = self.avail
            rarest = min(avail[i] for i in cands)
            cands = [i for i in cands if avail[i] == rarest]
        return cands[int(self.rng.random() * len(cands)) % len(cands)]
