"""The chunk swarm in memory: real ``Swarm`` cores over virtual links, for figures.

``python -m simulations swarm --nodes N --artifact-mib S --json`` runs one seed (the origin,
as in the bench of README "Artifacts peer to peer") and N fetchers, each a real
``p2pupdate.core.swarm`` core, over in-memory frames on a virtual clock, and prints one JSON
object with the bench's field names (``origin_copies``, ``origin_share``, ``t_all_s``,
``t_min_s``, ``bound_ratio``).  The capacity model per node: its upload rate is the core's
own cap (the token bucket the daemon uses), its download rate a FIFO pipe in the ``Net``
(a frame to a node arrives after ``latency`` and then waits for its downlink), and churn:
a fetcher leaves (every link closed, its core gone) and comes back after ``away`` seconds
with a fresh core that holds what it had verified, as the daemon's store resumes.

``tests/core/swarm_harness.py`` stages attacks on the same ``Net`` with scripted peers.
Nothing here reads a clock (but ``wall_s``), sleeps or opens a socket; randomness is a
seeded ``random.Random`` per core and one for the fleet, so a seed gives one result.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import heapq
import itertools
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from coordinator.origin import (
    DEFAULT_MAX_DOWNLOADERS,
    DEFAULT_REPEAT_WINDOW,
    OriginConfig,
    OriginGate,
)
from p2pupdate.core import documents as docs
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
    OriginFailed,
    PeerGone,
    Penalised,
    Received,
    Send,
    Serve,
)
from p2pupdate.core.swarm.front import Swarm
from p2pupdate.core.swarm.messages import MAX_BLOCK
from p2pupdate.core.timing import UpdaterConfig, refusal_wait

NOW: Final = 1_800_000_000
LATENCY: Final = 0.01
#: What the origin takes per chunk (virtual seconds).
ORIGIN_DELAY: Final = 0.05
#: How a refused GET's ``retry_after`` is stretched: the updater's defaults, as the daemon.
ORIGIN_TIMING: Final = UpdaterConfig()
#: A run that takes more steps than this is a bug (a timer that does not move), not a test.
MAX_STEPS: Final = 200_000
MIB: Final = 1 << 20


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


#: What a queue entry does (its third field): call ``a()``; hand frame ``c`` from ``a`` to
#: node ``b``; fire node ``a``'s timer if ``b`` is still its timer's generation.
_CALL: Final = 0
_FRAME: Final = 1
_TIMER: Final = 2


class Net:
    """Frames between nodes, delivered after ``latency`` (and through the receiver's
    downlink, if it has a rate in ``down``), and the virtual clock.

    Every pending thing -- a frame, an origin chunk, a core's timer -- is one entry of a
    heap, so a step costs log(entries), not a scan of every node: a timer entry is pushed
    when a node's timer changes and skipped when popped if it is no longer that node's.
    An entry is a plain tuple ``(when, seq, kind, a, b, c)`` (no closure per frame or
    timer: at N = 10,000 a run pops ~10^7 of them); ``seq`` orders entries of one instant
    as they were pushed, so a seed gives one result.
    """

    def __init__(self, *, latency: float = LATENCY) -> None:
        self.now = 0.0
        self.latency = latency
        self.nodes: dict[str, Node] = {}
        #: Who each node has a link with (both directions).
        self.adj: dict[str, set[str]] = {}
        #: Download rate per node id (bytes/s); a node not named has no limit.
        self.down: dict[str, float] = {}
        #: Nodes that finished an artifact (a ``stop`` that does not scan the fleet).
        self.completions = 0
        #: Entries popped by ``run`` (frames, timers, calls): the simulator's work.
        self.steps = 0
        self._down_busy: dict[str, float] = {}
        self._queue: list[tuple[float, int, int, Any, Any, Any]] = []
        self._seq = itertools.count()

    def add(self, node: Node) -> Node:
        self.nodes[node.id] = node
        node.net = self
        return node

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), _CALL, action, None, None))

    def arrival(self, dst: str, size: int, when: float) -> float:
        """When ``size`` bytes that reach ``dst`` at ``when`` are through its downlink."""
        rate = self.down.get(dst)
        if rate is None:
            return when
        busy = self._down_busy.get(dst, 0.0)
        done = (when if when > busy else busy) + size / rate
        self._down_busy[dst] = done
        return done

    def retime(self, node: Node) -> None:
        """``node``'s timer may have changed: schedule it (the old entry goes stale)."""
        t = node.timer()
        if t == node.timer_at:
            return
        node.timer_gen += 1
        node.timer_at = t
        if t is not None:
            heapq.heappush(self._queue, (t, next(self._seq), _TIMER, node, node.timer_gen, None))

    def link(self, a: Node, b: Node, artifact: str) -> None:
        """Link ``a`` and ``b`` and open a session about ``artifact`` on both sides."""
        self.adj.setdefault(a.id, set()).add(b.id)
        self.adj.setdefault(b.id, set()).add(a.id)
        a.opened(b.id, artifact)
        b.opened(a.id, artifact)

    def linked(self, a: str, b: str) -> bool:
        return b in self.adj.get(a, ())

    def send(self, src: str, dst: str, data: bytes) -> None:
        peers = self.adj.get(src)
        if peers is None or dst not in peers:
            return  # the link is gone: the frame is dropped, as a shell would
        when = self.arrival(dst, len(data), self.now + self.latency)
        heapq.heappush(self._queue, (when, next(self._seq), _FRAME, src, self.nodes[dst], data))

    def unlink(self, a: str, b: str) -> None:
        if self.linked(a, b):
            self.adj[a].discard(b)
            self.adj[b].discard(a)
            self.nodes[a].gone(b)
            self.nodes[b].gone(a)

    def run(
        self, until: float, stop: Callable[[], bool] = lambda: False, max_steps: int = MAX_STEPS
    ) -> None:
        """Deliver frames and fire timers in time order up to ``until`` (or ``stop()``)."""
        queue, pop, adj = self._queue, heapq.heappop, self.adj
        for _ in range(max_steps):
            if stop() or not queue or queue[0][0] > until:
                return
            when, _, kind, a, b, c = pop(queue)
            self.steps += 1
            if when > self.now:
                self.now = when
            if kind == _FRAME:  # a frame from a to node b, if their link still stands
                if b.id in adj[a]:
                    b.received(a, c)
            elif kind == _TIMER:  # node a's timer, unless a newer one replaced it
                if a.timer_gen == b:
                    a.timer_at = None
                    a.fire()
            else:
                a()
        raise AssertionError(f"no quiet after {max_steps} steps: a timer that never advances?")


class Origin:
    """The coordinator's HTTP origin as the real one behaves: one uplink of ``rate``
    bytes/s that serves chunk GETs in turn, and the real ``coordinator.origin.OriginGate``
    (``serve --origin-max-downloaders``, its default unless told) in front of it: a node
    beyond the cap gets "try-peers" and a ``retry_after``.

    A node's shell fetches the chunks of a ``FetchFromOrigin`` one GET at a time, as the
    daemon does; a "try-peers" hands that chunk and the rest of its queue back to the core
    (``OriginFailed`` with the ``retry_after`` stretched by ``timing.refusal_wait``'s
    jitter), which leaves the origin alone that long and gets them from peers meanwhile.
    """

    def __init__(
        self,
        net: Net,
        data: dict[str, bytes],
        *,
        rate: float,
        max_downloaders: int = DEFAULT_MAX_DOWNLOADERS,
        repeat_window: float = DEFAULT_REPEAT_WINDOW,
    ) -> None:
        self.net = net
        self.data = data
        self.rate = rate
        config = OriginConfig(max_downloaders=max_downloaders, repeat_window=repeat_window)
        self.gate = OriginGate(config, clock=self._now)
        self.busy_until = 0.0
        self.bytes = 0
        self.refused = 0

    def _now(self) -> float:
        return self.net.now

    def get(self, node: str, artifact: str, index: int, length: int) -> tuple[float, bool, float]:
        """A GET of chunk ``index`` (``length`` bytes) that reached the origin now: (when
        its last byte leaves, admitted, retry_after)."""
        after = self.gate.admit(artifact, node, index)
        if after is not None:
            self.refused += 1
            return self.net.now, False, float(after)
        start = max(self.net.now, self.busy_until)
        self.busy_until = start + length / self.rate
        self.bytes += length
        self.gate.served(artifact, length)
        return self.busy_until, True, 0.0


@dataclass(kw_only=True, eq=False)
class Node:
    """A participant: a real core or a scripted peer."""

    name: str
    net: Net | None = None
    id: str = field(init=False)  # the peer id its name hashes to (computed once)
    #: The timer its ``Net`` has scheduled (``Net.retime``), and that entry's generation.
    timer_at: float | None = field(default=None, init=False, repr=False)
    timer_gen: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.id = peer_id(self.name)

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
    maps: dict[str, ChunkMap] = field(default_factory=dict)
    effects: list[Effect] = field(default_factory=list)
    origin_asked: list[int] = field(default_factory=list)
    completed_at: dict[str, float] = field(default_factory=dict)
    served_bytes: int = 0
    restarts: int = 0
    #: The origin with its rate and cap (None: every GET served after ``ORIGIN_DELAY``).
    server: Origin | None = None
    #: Keep every effect (tests ask ``penalised``...); a fleet keeps counts only.
    keep_effects: bool = True
    #: Chunks of the whole artifact, shared by every node of a fleet: a verified chunk is
    #: compared with it and the shared bytes stored (memory per node: references).
    shared: dict[str, list[bytes]] | None = None
    penalties: int = 0
    past_rejects: int = 0
    verified: int = 0
    wrong: int = 0  # chunks verified by the core whose bytes were not the artifact's
    from_origin: int = 0  # origin bytes this node received
    _origin_queue: list[tuple[str, int]] = field(default_factory=list)
    _origin_busy: bool = False
    _shell_rng: random.Random = field(init=False)  # the shell's jitter, apart from the core's

    def __post_init__(self) -> None:
        super().__post_init__()
        self._shell_rng = random.Random(self.seed * 7919 + 1)

    def start(
        self, cmap: ChunkMap, *, held: bytes | None = None, deadline: float | None = None
    ) -> CoreNode:
        """Track ``cmap``: seed it (``held``: the whole artifact) or fetch it."""
        assert self.net is not None
        if self.swarm is None:
            self.swarm = Swarm(config=self.config, rng=random.Random(self.seed), now=self.net.now)
        chunks = {}
        if held is not None:
            chunks = {c.index: cmap.slice(held, c.index) for c in cmap.chunks}
        self.store[cmap.artifact] = chunks
        self.maps[cmap.artifact] = cmap
        self._do(self.swarm.add(cmap, held=chunks, now=self.net.now, deadline=deadline))
        return self

    def rejects(self) -> int:
        """``choked``/``busy`` answers this node got, over every core it ran."""
        now = 0 if self.swarm is None else self.swarm.counters().get("rejects", 0)
        return self.past_rejects + now

    def stop(self) -> None:
        """The process ends: the core is gone, the store (verified chunks only) stays."""
        self.past_rejects = self.rejects()
        self.swarm = None
        self._origin_queue.clear()
        if self.net is not None:
            self.net.retime(self)

    def restart(self) -> None:
        """A new process: a fresh core that serves and resumes from the store."""
        assert self.net is not None and self.swarm is None
        self.restarts += 1
        rng = random.Random(self.seed * 1_000_003 + self.restarts)
        self.swarm = Swarm(config=self.config, rng=rng, now=self.net.now)
        for art, cmap in self.maps.items():
            held = list(self.store[art])
            self._do(self.swarm.add(cmap, held=held, now=self.net.now))

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
        return None if self.swarm is None else self.swarm.get_timer()

    def fire(self) -> None:
        assert self.net is not None
        if self.swarm is not None:
            self._do(self.swarm.handle_timer(self.net.now))

    def _handle(self, event: Event) -> None:
        if self.swarm is not None:
            assert self.net is not None
            self._do(self.swarm.handle(event, self.net.now))

    def _do(self, effects: list[Effect]) -> None:
        net = self.net
        assert net is not None
        keep = self.keep_effects
        for eff in effects:
            if keep:
                self.effects.append(eff)
            if isinstance(eff, Send):
                net.send(self.id, eff.peer, eff.data)
            elif isinstance(eff, Serve):
                chunk = self.store[eff.artifact][eff.chunk]
                self.served_bytes += eff.length
                block = chunk[eff.offset : eff.offset + eff.length]
                net.send(self.id, eff.peer, eff.message(block))
            elif isinstance(eff, ChunkVerified):
                self.verified += 1
                data = eff.data
                if self.shared is not None:
                    canon = self.shared[eff.artifact][eff.index]
                    self.wrong += data != canon
                    data = canon  # the fleet's one copy: the core's is let go
                self.store[eff.artifact][eff.index] = data
            elif isinstance(eff, FetchFromOrigin):
                self.origin_asked.extend(eff.chunks)
                if self.server is not None:
                    self._origin_queue.extend((eff.artifact, i) for i in eff.chunks)
                    self._origin_next()
                    continue
                for n, i in enumerate(eff.chunks):
                    self._from_origin(eff.artifact, i, net.now + ORIGIN_DELAY * (n + 1))
            elif isinstance(eff, Penalised):
                self.penalties += 1
            elif isinstance(eff, Completed):
                if eff.artifact not in self.completed_at:
                    self.completed_at[eff.artifact] = net.now
                    net.completions += 1
            elif isinstance(eff, Drop | Ban):
                net.at(net.now, functools.partial(net.unlink, self.id, eff.peer))
        net.retime(self)

    def _origin_next(self) -> None:
        """The next GET of the queue, one at a time (the daemon's ``fetch_chunks``)."""
        assert self.net is not None and self.server is not None
        if self._origin_busy or not self._origin_queue:
            return
        self._origin_busy = True
        net, server = self.net, self.server
        artifact, index = self._origin_queue.pop(0)
        chunk = self._origin_chunk(artifact, index)
        swarm = self.swarm

        def at_origin() -> None:
            done, ok, after = server.get(self.id, artifact, index, len(chunk))
            if ok:
                when = net.arrival(self.id, len(chunk), done + net.latency)
                net.at(when, lambda: answer(True, 0.0))
            else:
                net.at(net.now + net.latency, lambda: answer(False, after))

        def answer(ok: bool, after: float) -> None:
            self._origin_busy = False
            if self.swarm is not swarm:  # the process that asked is gone
                self._origin_next()
                return
            if ok:
                self.from_origin += len(chunk)
                self._handle(OriginChunk(artifact=artifact, index=index, data=chunk))
            else:  # try-peers: this chunk and the queued ones go back to the core
                wait = refusal_wait(ORIGIN_TIMING, after, self._shell_rng.random())
                todo = [(artifact, index), *self._origin_queue]
                self._origin_queue.clear()
                for art, i in todo:
                    failed = OriginFailed(
                        artifact=art, index=i, reason="try-peers", retry_after=wait
                    )
                    self._handle(failed)
            self._origin_next()

        net.at(net.now + net.latency, at_origin)

    def _origin_chunk(self, artifact: str, index: int) -> bytes:
        """What the origin sends for chunk ``index``, cut by this artifact's own map (the
        fleet's shared copy when there is one: the same bytes, no copy per GET)."""
        if self.shared is not None and artifact in self.shared:
            return self.shared[artifact][index]
        return self.maps[artifact].slice(self.origin[artifact], index)

    def _from_origin(self, artifact: str, index: int, when: float) -> None:
        """The origin's chunk, cut by this artifact's own map, through our downlink."""
        assert self.net is not None
        chunk = self._origin_chunk(artifact, index)
        when = self.net.arrival(self.id, len(chunk), when)
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


# -- a fleet ------------------------------------------------------------------------------


def _capped(rate: float, **knobs: int) -> SwarmConfig:
    """Uploads at exactly ``rate`` of payload (as if the shell measured an uplink of twice
    that; no headers counted: the ``Net``'s links carry payload only, and ``FIT`` was
    calibrated so); every other knob the daemon's default unless given."""
    return SwarmConfig(upload_cap=rate, default_uplink=2 * rate, wire_headers=False, **knobs)


def fleet_run(
    *,
    nodes: int,
    artifact_mib: float,
    chunk_size: int = 256 * 1024,
    seed_up: float = 2.0 * MIB,
    peer_up: float = 0.5 * MIB,
    peer_down: float | None = None,
    degree: int = 6,
    churn_per_min: float = 0.0,
    away_s: float = 10.0,
    seed: int = 7,
    until: float = 3600.0,
    origin_max_downloaders: int = DEFAULT_MAX_DOWNLOADERS,
    origin_repeat_window: float = DEFAULT_REPEAT_WINDOW,
    config: SwarmConfig | None = None,
    progress: Callable[[str], None] | None = None,
    latency: float = LATENCY,
) -> dict[str, object]:
    """``nodes`` fetchers that start together (release day), each linked to ~``degree``
    others, and the origin (up ``seed_up``, its downloader cap): the time the last one
    verified against the bound ``max(F/u_s, F/d_min, N*F/(u_s + sum u_i))``, and what the
    origin sent.  ``config``: the fetchers' ``SwarmConfig`` (default: the defaults, the
    upload capped at ``peer_up``).  ``latency``: one way, seconds.  ``progress``: told one line every 5 virtual seconds
    (the clock, nodes done, steps, wall seconds, peak RSS); it changes nothing in the run.

    Churn: each fetcher leaves at ``churn_per_min`` times a minute on average (Poisson),
    stays away ``away_s`` and comes back to the same neighbours with what it had verified.
    """
    t0 = time.perf_counter()
    data = artifact_bytes(int(artifact_mib * MIB))
    cmap = chunk_map_of(data, chunk_size=chunk_size)
    art = cmap.artifact
    shared = {art: [cmap.slice(data, c.index) for c in cmap.chunks]}
    net = Net(latency=latency)
    server = Origin(
        net,
        {art: data},
        rate=seed_up,
        max_downloaders=origin_max_downloaders,
        repeat_window=origin_repeat_window,
    )
    cfg = config if config is not None else _capped(peer_up)
    fetchers = [
        CoreNode(
            name=f"n{i}",
            config=cfg,
            origin={art: data},
            seed=seed + i + 1,
            server=server,
            keep_effects=False,
            shared=shared,
        )
        for i in range(nodes)
    ]
    for f in fetchers:
        net.add(f)
        if peer_down is not None:
            net.down[f.id] = peer_down
        f.start(cmap)
    rng = random.Random(seed)
    neighbours: dict[str, list[CoreNode]] = {f.id: [] for f in fetchers}
    for f in fetchers:
        for g in rng.sample(fetchers, min(degree, nodes)):
            if g is not f and not net.linked(f.id, g.id):
                net.link(f, g, art)
                neighbours[f.id].append(g)
                neighbours[g.id].append(f)
    leaves = 0

    def leave(f: CoreNode) -> None:
        nonlocal leaves
        leaves += 1
        for g in neighbours[f.id]:
            net.unlink(f.id, g.id)
        f.stop()
        net.at(net.now + away_s, lambda: back(f))

    def back(f: CoreNode) -> None:
        f.restart()
        for g in neighbours[f.id]:
            if g.swarm is not None:
                net.link(f, g, art)
        net.at(net.now + rng.expovariate(churn_per_min / 60.0), lambda: leave(f))

    if churn_per_min > 0:
        for f in fetchers:
            net.at(rng.expovariate(churn_per_min / 60.0), functools.partial(leave, f))
    if progress is not None:
        tell = progress

        def report() -> None:
            tell(
                f"t={net.now:.0f}s done={net.completions}/{nodes} steps={net.steps} "
                f"wall={time.perf_counter() - t0:.0f}s rss={_peak_rss_mib()}MiB"
            )
            if net._queue:  # an observer: it keeps no finished run going
                net.at(net.now + 5.0, report)

        net.at(5.0, report)
    net.run(until, stop=lambda: net.completions >= nodes, max_steps=10**10)
    size = len(data)
    t_all = max(f.completed_at.get(art, float("inf")) for f in fetchers)
    bounds = [size / seed_up, nodes * size / (seed_up + nodes * peer_up)]
    if peer_down is not None:
        bounds.append(size / peer_down)
    t_min = max(bounds)
    origin_bytes = server.bytes
    return {
        "nodes": nodes,
        "artifact_bytes": size,
        "origin_bytes": origin_bytes,
        "origin_copies": round(origin_bytes / size, 2),
        "origin_share": round(origin_bytes / (nodes * size), 4),
        "t_all_s": round(t_all, 2),
        "t_min_s": round(t_min, 2),
        "bound_ratio": round(t_all / t_min, 2),
        "origin_chunks": sum(len(f.origin_asked) for f in fetchers),
        "origin_refused": server.refused,
        "origin_max_downloaders": origin_max_downloaders,
        "origin_repeat_window": origin_repeat_window,
        "origin_repeats_refused": server.gate.status(lambda _: True)["artifacts"]
        .get(art, {})
        .get("repeats_refused", 0),
        "all_verified": all(
            art in f.completed_at and len(f.store[art]) == cmap.count for f in fetchers
        )
        and not any(f.wrong for f in fetchers),
        "penalties": sum(f.penalties for f in fetchers),
        "rejects": sum(f.rejects() for f in fetchers),
        "leaves": leaves,
        "refetched_chunks": sum(max(0, f.verified - cmap.count) for f in fetchers),
        "seed": seed,
        "wall_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mib": _peak_rss_mib(),
    }


def _peak_rss_mib() -> int:
    """This process's peak resident memory (MiB; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m simulations swarm",
        description="Real chunk-swarm cores over memory links with per-node rates and churn.",
    )
    ap.add_argument("--nodes", type=int, default=24)
    ap.add_argument("--artifact-mib", type=float, default=4.0)
    ap.add_argument("--chunk-kib", type=int, default=64)
    ap.add_argument(
        "--block-kib",
        type=int,
        default=SwarmConfig().max_block // 1024,
        help="bytes per request (SwarmConfig.max_block; the daemon's default unless given)",
    )
    ap.add_argument("--seed-up-mib", type=float, default=2.0, help="the origin's upload MiB/s")
    ap.add_argument(
        "--origin-max-downloaders",
        type=int,
        default=DEFAULT_MAX_DOWNLOADERS,
        help="the origin's downloader cap per artifact (serve's default)",
    )
    ap.add_argument(
        "--origin-repeat-window",
        type=float,
        default=DEFAULT_REPEAT_WINDOW,
        help="seconds the origin sends a chunk to no second node (serve's default; 0: off)",
    )
    ap.add_argument("--peer-up-mib", type=float, default=0.5, help="each fetcher's upload")
    ap.add_argument("--peer-down-mib", type=float, default=2.5, help="0: no download limit")
    ap.add_argument("--degree", type=int, default=6, help="links each fetcher opens")
    ap.add_argument("--churn-per-min", type=float, default=0.0, help="leaves/node/minute")
    ap.add_argument("--away-s", type=float, default=10.0, help="how long a leaver is gone")
    ap.add_argument(
        "--latency-ms", type=float, default=LATENCY * 1000, help="one way, between any two"
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--progress", action="store_true", help="a line to stderr every 5 virtual seconds"
    )
    args = ap.parse_args(list(argv))
    if args.nodes < 1 or args.artifact_mib <= 0 or args.chunk_kib < 1 or args.degree < 0:
        ap.error("need --nodes >= 1, --artifact-mib > 0, --chunk-kib >= 1, --degree >= 0")
    if args.seed_up_mib <= 0 or args.peer_up_mib <= 0 or args.peer_down_mib < 0:
        ap.error("need rates > 0 (--peer-down-mib 0: no limit)")
    if args.origin_max_downloaders < 1:
        ap.error("need --origin-max-downloaders >= 1")
    if not 0 <= args.origin_repeat_window <= 60:
        ap.error("need --origin-repeat-window in [0, 60]")
    if not 1 <= args.block_kib <= MAX_BLOCK // 1024:
        ap.error(f"need --block-kib in [1, {MAX_BLOCK // 1024}]")
    if args.latency_ms < 0:
        ap.error("need --latency-ms >= 0")
    if args.churn_per_min < 0 or args.away_s <= 0:
        ap.error("need --churn-per-min >= 0, --away-s > 0")
    out = fleet_run(
        nodes=args.nodes,
        artifact_mib=args.artifact_mib,
        chunk_size=args.chunk_kib * 1024,
        seed_up=args.seed_up_mib * MIB,
        peer_up=args.peer_up_mib * MIB,
        peer_down=args.peer_down_mib * MIB if args.peer_down_mib > 0 else None,
        degree=args.degree,
        churn_per_min=args.churn_per_min,
        away_s=args.away_s,
        seed=args.seed,
        origin_max_downloaders=args.origin_max_downloaders,
        origin_repeat_window=args.origin_repeat_window,
        config=_capped(args.peer_up_mib * MIB, max_block=args.block_kib * 1024),
        progress=_to_stderr if args.progress else None,
        latency=args.latency_ms / 1000,
    )
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:16} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
