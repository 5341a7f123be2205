"""A swarm in memory: real ``Swarm`` cores and scripted peers on a virtual clock.

Beside ``tests/core/harness.py`` (the trust core's repository simulator), this one stages
attacks on the chunk swarm (README "Artifacts peer to peer").  A ``Net`` holds nodes --
real cores (``CoreNode``) and scripted peers (``Scripted`` subclasses that lie, corrupt,
trickle, replay, flood or vanish) -- and delivers every frame after ``latency`` virtual
seconds, in order; a core's timers fire at the virtual time its ``get_timer`` names.  The
shell's work (reading a served block from the store, storing a verified chunk, fetching
from the origin, closing a dropped or banned peer's link) is done here as a daemon would,
so a test watches exactly what the core asked for: which peer it penalised, banned or
dropped, how many chunks it wanted from the origin, and the bytes it ended with.

Nothing here reads a clock, sleeps or opens a socket; randomness is a seeded
``random.Random`` per core.  A run of a few hundred virtual seconds takes milliseconds.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from p2pupdate.core import documents as docs
from p2pupdate.core.swarm import messages as m
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.core.swarm.config import SwarmConfig
from p2pupdate.core.swarm.events import (
    Ban,
    ChunkVerified,
    Completed,
    Drop,
    Effect,
    Event,
    FetchFromOrigin,
    Opened,
    OriginChunk,
    PeerGone,
    Penalised,
    Received,
    Send,
    Serve,
)
from p2pupdate.core.swarm.front import Swarm

NOW: Final = 1_800_000_000
LATENCY: Final = 0.01
#: What the origin takes per chunk (virtual seconds).
ORIGIN_DELAY: Final = 0.05
#: A run that takes more steps than this is a bug (a timer that does not move), not a test.
MAX_STEPS: Final = 200_000


def artifact_bytes(size: int, seed: str = "artifact") -> bytes:
    """Deterministic bytes (sha256 in counter mode): no two chunks alike."""
    out = bytearray()
    for i in itertools.count():
        if len(out) >= size:
            break
        out += hashlib.sha256(f"{seed}-{i}".encode()).digest()
    return bytes(out[:size])


def chunk_map_of(data: bytes, chunk_size: int = 4096) -> ChunkMap:
    release = docs.Release.for_bytes(
        data, name="app", counter=1, chunk_size=chunk_size, issued=NOW, expires=NOW + 3600
    )
    return ChunkMap.of_release(release)


def peer_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


class Net:
    """Frames between nodes, delivered after ``latency``, and the virtual clock."""

    def __init__(self, *, latency: float = LATENCY) -> None:
        self.now = 0.0
        self.latency = latency
        self.nodes: dict[str, Node] = {}
        self.links: set[frozenset[str]] = set()
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def add(self, node: Node) -> Node:
        self.nodes[node.id] = node
        node.net = self
        return node

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), action))

    def link(self, a: Node, b: Node, artifact: str) -> None:
        """Link ``a`` and ``b`` and open a session about ``artifact`` on both sides."""
        self.links.add(frozenset((a.id, b.id)))
        a.opened(b.id, artifact)
        b.opened(a.id, artifact)

    def send(self, src: str, dst: str, data: bytes) -> None:
        if frozenset((src, dst)) not in self.links:
            return  # the link is gone: the frame is dropped, as a shell would

        def deliver() -> None:
            if frozenset((src, dst)) in self.links:
                self.nodes[dst].received(src, data)

        self.at(self.now + self.latency, deliver)

    def unlink(self, a: str, b: str) -> None:
        if frozenset((a, b)) in self.links:
            self.links.discard(frozenset((a, b)))
            self.nodes[a].gone(b)
            self.nodes[b].gone(a)

    def run(self, until: float, stop: Callable[[], bool] = lambda: False) -> None:
        """Deliver frames and fire timers in time order up to ``until`` (or ``stop()``)."""
        for _ in range(MAX_STEPS):
            if stop():
                return
            timers = [(t, n) for n in self.nodes.values() if (t := n.timer()) is not None]
            t_timer, node = min(timers, key=lambda x: x[0]) if timers else (None, None)
            t_next = self._queue[0][0] if self._queue else None
            if t_next is not None and (t_timer is None or t_next <= t_timer):
                if t_next > until:
                    return
                self.now, _, action = heapq.heappop(self._queue)
                action()
            elif t_timer is not None and node is not None:
                if t_timer > until:
                    return
                self.now = max(self.now, t_timer)
                node.fire()
            else:
                return
        raise AssertionError(f"no quiet after {MAX_STEPS} steps: a timer that never advances?")


@dataclass(kw_only=True, eq=False)
class Node:
    """A participant: a real core or a scripted peer."""

    name: str
    net: Net | None = None

    @property
    def id(self) -> str:
        return peer_id(self.name)

    def opened(self, peer: str, artifact: str) -> None: ...

    def received(self, peer: str, data: bytes) -> None: ...

    def gone(self, peer: str) -> None: ...

    def timer(self) -> float | None:
        return None

    def fire(self) -> None: ...

    def send(self, peer: str, data: bytes) -> None:
        assert self.net is not None
        self.net.send(self.id, peer, data)


@dataclass(kw_only=True, eq=False)
class CoreNode(Node):
    """A real ``Swarm`` with the shell's chores done in memory."""

    config: SwarmConfig
    origin: dict[str, bytes]  # what the origin serves: artifact -> bytes
    seed: int = 0
    swarm: Swarm | None = None
    store: dict[str, dict[int, bytes]] = field(default_factory=dict)
    effects: list[Effect] = field(default_factory=list)
    origin_asked: list[int] = field(default_factory=list)
    completed_at: dict[str, float] = field(default_factory=dict)
    served_bytes: int = 0
    _timer: float | None = None
    _timer_stale: bool = True

    def start(self, cmap: ChunkMap, *, held: bytes | None = None, deadline: float | None = None):
        """Track ``cmap``: seed it (``held``: the whole artifact) or fetch it."""
        assert self.net is not None
        if self.swarm is None:
            self.swarm = Swarm(config=self.config, rng=random.Random(self.seed), now=self.net.now)
        chunks = {}
        if held is not None:
            chunks = {c.index: cmap.slice(held, c.index) for c in cmap.chunks}
        self.store[cmap.artifact] = chunks
        self._do(self.swarm.add(cmap, held=chunks, now=self.net.now, deadline=deadline))
        return self

    def bytes_of(self, artifact: str) -> bytes:
        chunks = self.store[artifact]
        return b"".join(chunks[i] for i in sorted(chunks))

    # the shell's side
    def opened(self, peer: str, artifact: str) -> None:
        self._handle(Opened(peer=peer, artifact=artifact))

    def received(self, peer: str, data: bytes) -> None:
        self._handle(Received(peer=peer, data=data))

    def gone(self, peer: str) -> None:
        self._handle(PeerGone(peer=peer))

    def timer(self) -> float | None:
        if self._timer_stale:  # asked after every step of the run: only after a change
            self._timer = None if self.swarm is None else self.swarm.get_timer()
            self._timer_stale = False
        return self._timer

    def fire(self) -> None:
        assert self.swarm is not None and self.net is not None
        self._do(self.swarm.handle_timer(self.net.now))

    def _handle(self, event: Event) -> None:
        if self.swarm is not None:
            assert self.net is not None
            self._do(self.swarm.handle(event, self.net.now))

    def _do(self, effects: list[Effect]) -> None:
        assert self.net is not None
        self._timer_stale = True
        net = self.net
        for eff in effects:
            self.effects.append(eff)
            if isinstance(eff, Send):
                self.send(eff.peer, eff.data)
            elif isinstance(eff, Serve):
                chunk = self.store[eff.artifact][eff.chunk]
                self.served_bytes += eff.length
                self.send(eff.peer, eff.message(chunk[eff.offset : eff.offset + eff.length]))
            elif isinstance(eff, ChunkVerified):
                self.store[eff.artifact][eff.index] = eff.data
            elif isinstance(eff, FetchFromOrigin):
                self.origin_asked.extend(eff.chunks)
                for n, i in enumerate(eff.chunks):
                    self._from_origin(eff.artifact, i, net.now + ORIGIN_DELAY * (n + 1))
            elif isinstance(eff, Completed):
                self.completed_at[eff.artifact] = net.now
            elif isinstance(eff, Drop | Ban):
                net.at(net.now, lambda peer=eff.peer: net.unlink(self.id, peer))

    def _from_origin(self, artifact: str, index: int, when: float) -> None:
        assert self.net is not None
        data = self.origin[artifact]
        cmap = chunk_map_of(data)
        chunk = cmap.slice(data, index)
        self.net.at(
            when, lambda: self._handle(OriginChunk(artifact=artifact, index=index, data=chunk))
        )

    # what a test asks
    def penalised(self, peer: str) -> list[Penalised]:
        return [e for e in self.effects if isinstance(e, Penalised) and e.peer == peer]

    def banned(self, peer: str) -> list[Ban]:
        return [e for e in self.effects if isinstance(e, Ban) and e.peer == peer]

    def dropped(self, peer: str) -> list[Drop]:
        return [e for e in self.effects if isinstance(e, Drop) and e.peer == peer]


# -- scripted peers ---------------------------------------------------------------------


@dataclass(kw_only=True, eq=False)
class Scripted(Node):
    """A peer that speaks the wire format but follows its own script.

    By default it claims every chunk (``claims``) and answers a request with the true
    bytes (``answer``); subclasses change one thing each.
    """

    data: bytes
    cmap: ChunkMap
    claims: frozenset[int] | None = None
    requests_seen: int = 0

    def opened(self, peer: str, artifact: str) -> None:
        held = self.claims if self.claims is not None else frozenset(range(self.cmap.count))
        self.send(peer, m.Bitfield.of(self.cmap, held).to_wire())

    def received(self, peer: str, data: bytes) -> None:
        msg = m.decode_message(data)
        if isinstance(msg, m.Request):
            self.requests_seen += 1
            self.answer(peer, msg)

    def true_block(self, req: m.Request) -> bytes:
        start = self.cmap.chunks[req.chunk].offset + req.offset
        return self.data[start : start + req.length]

    def block(self, req: m.Request, data: bytes, artifact: str | None = None) -> bytes:
        return m.Block(
            artifact=artifact or req.artifact, chunk=req.chunk, offset=req.offset, data=data
        ).to_wire()

    def answer(self, peer: str, req: m.Request) -> None:
        self.send(peer, self.block(req, self.true_block(req)))


@dataclass(kw_only=True, eq=False)
class Corrupt(Scripted):
    """Serves every block with one byte flipped."""

    def answer(self, peer: str, req: m.Request) -> None:
        good = bytearray(self.true_block(req))
        good[0] ^= 0xFF
        self.send(peer, self.block(req, bytes(good)))


@dataclass(kw_only=True, eq=False)
class Trickler(Scripted):
    """Answers correctly, but each answer takes ``delay`` (longer than the deadline)."""

    delay: float = 60.0

    def answer(self, peer: str, req: m.Request) -> None:
        assert self.net is not None
        frame = self.block(req, self.true_block(req))
        self.net.at(self.net.now + self.delay, lambda: self.send(peer, frame))


@dataclass(kw_only=True, eq=False)
class Liar(Scripted):
    """Claims every chunk in its bitfield, then rejects every request as ``missing``."""

    def answer(self, peer: str, req: m.Request) -> None:
        rej = m.Reject(
            artifact=req.artifact,
            chunk=req.chunk,
            offset=req.offset,
            length=req.length,
            reason="missing",
        )
        self.send(peer, rej.to_wire())


@dataclass(kw_only=True, eq=False)
class Replayer(Scripted):
    """Answers with the blocks of another artifact (``other``): named as ours
    (``relabel``) or as what they really are."""

    other: bytes = b""
    relabel: bool = True

    def answer(self, peer: str, req: m.Request) -> None:
        start = self.cmap.chunks[req.chunk].offset + req.offset
        data = self.other[start : start + req.length]
        other_artifact = hashlib.sha256(self.other).hexdigest()
        self.send(peer, self.block(req, data, None if self.relabel else other_artifact))


@dataclass(kw_only=True, eq=False)
class Flooder(Scripted):
    """Holds nothing; on session start floods the peer with ``count`` requests."""

    count: int = 200

    def opened(self, peer: str, artifact: str) -> None:
        self.send(peer, m.Bitfield.of(self.cmap, ()).to_wire())
        for n in range(self.count):
            i = n % self.cmap.count
            req = m.Request(
                artifact=self.cmap.artifact,
                chunk=i,
                offset=0,
                length=min(1024, self.cmap.chunks[i].length),
            )
            self.send(peer, req.to_wire())

    def received(self, peer: str, data: bytes) -> None:
        pass


@dataclass(kw_only=True, eq=False)
class Vanisher(Scripted):
    """Answers ``blocks`` requests truly, then drops the link in the middle of a chunk."""

    blocks: int = 3
    answered: int = 0

    def answer(self, peer: str, req: m.Request) -> None:
        assert self.net is not None
        if self.answered >= self.blocks:
            net = self.net
            net.at(net.now, lambda: net.unlink(self.id, peer))
            return
        self.answered += 1
        super().answer(peer, req)


# -- a fleet, for figures -----------------------------------------------------------------


def _capped(rate: float) -> SwarmConfig:
    """Uploads at exactly ``rate`` (as if the shell measured an uplink of twice that)."""
    return SwarmConfig(upload_cap=rate, default_uplink=2 * rate)


def fleet_run(
    *,
    nodes: int,
    artifact_mib: float,
    chunk_size: int = 256 * 1024,
    seed_up: float = 2.0 * (1 << 20),
    peer_up: float = 0.5 * (1 << 20),
    degree: int = 6,
    seed: int = 7,
) -> dict[str, object]:
    """One seed and ``nodes`` fetchers (each linked to the seed and ~``degree`` others):
    the time the last one verified against the bound ``max(F/u_s, N*F/(u_s + N*u_i))``,
    and what the seed and the origin sent."""
    data = artifact_bytes(int(artifact_mib * (1 << 20)))
    cmap = chunk_map_of(data, chunk_size=chunk_size)
    art = cmap.artifact
    net = Net()
    seeder = net.add(CoreNode(name="seed", config=_capped(seed_up), origin={art: data})).start(
        cmap, held=data
    )
    fetchers = [
        net.add(
            CoreNode(name=f"n{i}", config=_capped(peer_up), origin={art: data}, seed=i + 1)
        ).start(cmap)
        for i in range(nodes)
    ]
    rng = random.Random(seed)
    for f in fetchers:
        net.link(seeder, f, art)
    for f in fetchers:
        for g in rng.sample(fetchers, min(degree, nodes)):
            if g is not f and frozenset((f.id, g.id)) not in net.links:
                net.link(f, g, art)
    net.run(3600, stop=lambda: all(art in f.completed_at for f in fetchers))
    size = len(data)
    t_all = max(f.completed_at.get(art, float("inf")) for f in fetchers)
    t_min = max(size / seed_up, nodes * size / (seed_up + nodes * peer_up))
    return {
        "nodes": nodes,
        "artifact_bytes": size,
        "seed_copies": round(seeder.served_bytes / size, 2),
        "origin_chunks": sum(len(f.origin_asked) for f in fetchers),
        "t_all_s": round(t_all, 2),
        "t_min_s": round(t_min, 2),
        "bound_ratio": round(t_all / t_min, 2),
        "all_verified": all(f.bytes_of(art) == data for f in fetchers),
        "penalties": sum(
            1 for n in [seeder, *fetchers] for e in n.effects if isinstance(e, Penalised)
        ),
    }


if __name__ == "__main__":  # python -m tests.core.swarm_harness [NODES [MIB [CHUNK_KIB]]]
    import json
    import sys

    args = [float(a) for a in sys.argv[1:4]] + [24, 4.0, 256][len(sys.argv) - 1 :]
    n, mib, chunk_kib = args[:3]
    print(json.dumps(fleet_run(nodes=int(n), artifact_mib=mib, chunk_size=int(chunk_kib * 1024))))
