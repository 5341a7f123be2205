"""The numpy tick engine: the whole fleet as arrays, one tick (60 s) at a time.

Per tick ``[t0, t1)``:

1. **Snapshot** at ``t0``: a time-series row (every minute) and the pools' gossip
   aggregate (serving capacity, load, serving count, ``as_of = t0``) that the coordinator
   decides this tick's asks on.
2. **Stage starts** in the tick: a new scope comes into force; with ``nudge`` (or push)
   every sleeping node checks at that instant.
3. **Churn** transitions with times in the tick, at their exact times, in rounds (a node
   can go down and come back within one tick: short sessions are common).
4. **Timers** with times in the tick (checks, retries, prefetch done, departures ending),
   in rounds until none is left (one event can schedule another in the same tick).  A
   node whose gates pass asks at that exact time.
5. **Decide** at ``t1``: the tick's asks, sorted by ask time, go to the policy in one call
   per pool (``decide_batch`` for ours), so they are admitted in exactly the order they
   were made, each seeing the capacity the earlier ones took.  Grants leave at ``t1``;
   refusals wait ``retry_after``, jittered as the updater does.

Events sit in two timing wheels (a list of node-index arrays per tick; stale entries are
dropped when popped), so a tick costs time in proportion to what happens in it, not to
the size of the fleet, and pool sums are kept incrementally.

What the tick approximates, compared with ``exact.EventEngine`` (the cross-check test
bounds the effect on the metrics): a decision comes up to one tick after the ask; a node
that goes offline loses the timers it had earlier in the same tick (a departure that ended
before it went down still completes first); a refused node asks at most once per tick.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

import numpy as np

from .fleet import _TIMED, ASKING, Aggregates, Fleet
from .metrics import Recorder
from .model import Model
from .policies import Policy, make_policy
from .rng import FloatArray, IntArray


class Wheel:
    """Node indices bucketed by the tick their event falls in (stale entries allowed).

    Two levels, so a push costs one list append per distinct *block* of ``BLOCK`` ticks
    rather than per distinct tick (churn pushes spread over days of ticks; 256 ticks
    measured fastest at 10^6 nodes, with 128 and 1024 within noise): events in the
    current block go straight to their tick's bucket, later ones to their block's list,
    which is split into tick buckets (one vectorised sort) when the block begins.
    """

    BLOCK: Final = 256
    SHIFT: Final = 8

    def __init__(self, ticks: int, tick: float) -> None:
        self.near: list[list[IntArray]] = [[] for _ in range(ticks)]
        self.far: list[list[tuple[IntArray, IntArray]]] = [
            [] for _ in range((ticks >> self.SHIFT) + 1)
        ]
        self.ticks = ticks
        self.inv = 1.0 / tick
        self.block = 0

    def push(self, nodes: IntArray, times: FloatArray) -> None:
        if len(nodes) == 0:
            return
        with np.errstate(invalid="ignore", over="ignore"):
            b = np.floor(times * self.inv)
        keep = b < self.ticks  # inf or past the horizon: never
        if not bool(keep.all()):
            nodes, b = nodes[keep], b[keep]
            if len(nodes) == 0:
                return
        bi = b.astype(np.int64)
        blk = bi >> self.SHIFT
        first = int(blk[0])
        if bool((blk == first).all()):
            if first == self.block:
                self._near(nodes, bi)
            else:
                self.far[first].append((nodes, bi))
            return
        now = blk == self.block
        if bool(now.any()):
            self._near(nodes[now], bi[now])
            later = ~now
            nodes, bi, blk = nodes[later], bi[later], blk[later]
        order = np.argsort(blk, kind="stable")
        nodes, bi, blk = nodes[order], bi[order], blk[order]
        cuts = np.flatnonzero(blk[1:] != blk[:-1]) + 1
        cut_list = cuts.tolist()
        far = self.far
        for s, e in zip([0, *cut_list], [*cut_list, len(blk)], strict=True):
            far[int(blk[s])].append((nodes[s:e], bi[s:e]))

    def _near(self, nodes: IntArray, bi: IntArray) -> None:
        first = int(bi[0])
        if len(bi) == 1 or bool((bi == first).all()):
            self.near[first].append(nodes)
            return
        order = np.argsort(bi, kind="stable")
        bi = bi[order]
        nodes = nodes[order]
        cuts = np.flatnonzero(bi[1:] != bi[:-1]) + 1
        cut_list = cuts.tolist()
        for s, e in zip([0, *cut_list], [*cut_list, len(bi)], strict=True):
            self.near[int(bi[s])].append(nodes[s:e])

    def pop(self, k: int) -> IntArray:
        blk = k >> self.SHIFT
        if blk != self.block:
            self.block = blk
            parts = self.far[blk]
            self.far[blk] = []
            if parts:
                nodes = np.concatenate([p[0] for p in parts])
                bi = np.concatenate([p[1] for p in parts])
                self._near(nodes, bi)
        bucket = self.near[k]
        if not bucket:
            return np.empty(0, dtype=np.int64)
        self.near[k] = []
        return bucket[0] if len(bucket) == 1 else np.concatenate(bucket)


class TickEngine(Fleet):
    """One run of the tick engine (module docstring)."""

    def __init__(
        self,
        model: Model,
        *,
        policy: Policy | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        n = model.population.n
        policy = policy or make_policy(model.s.policy, pools=model.pools, nodes=n, batch=True)
        self.tick = model.tick
        super().__init__(model, policy, sample_dt=max(60.0, model.tick))
        self.progress = progress
        self.ticks = math.ceil(model.horizon / self.tick - 1e-9)
        self.every = max(1, round(self.sample_dt / self.tick))
        self.sched = Wheel(self.ticks, self.tick)
        self.churn = Wheel(self.ticks, self.tick)
        self._asks: list[tuple[IntArray, FloatArray]] = []
        self._stamp = np.zeros(self.n, dtype=np.int64)
        self._start()

    def _schedule(self, nodes: IntArray, times: FloatArray) -> None:
        self.next_t[nodes] = times
        self.sched.push(nodes, times)

    def _push_churn(self, nodes: IntArray, times: FloatArray) -> None:
        self.churn.push(nodes, times)

    def _ask(self, nodes: IntArray, times: FloatArray) -> None:
        self._asks.append((nodes, times))  # answered at the tick's end

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> Recorder:
        started = time.perf_counter()
        m = self.m
        start = m.s.rollout_start
        stage_times = m.gates.stage_times.tolist()
        day = round(86400.0 / self.tick)
        report_every = max(1, self.ticks // 500)
        for k in range(self.ticks):
            t0 = k * self.tick
            t1 = t0 + self.tick
            if k % self.every == 0:
                self._sample(k // self.every, t0)
            if k and k % day == 0:
                self._recount()
            agg = self.aggregates(t0)
            if t0 <= start < t1:
                self._mark_start()
            while self.stage_done + 1 < len(stage_times) and stage_times[self.stage_done + 1] < t1:
                self._stage(self.stage_done + 1, max(stage_times[self.stage_done + 1], t0))
            self._churn(k, t0, t1)
            self._timers(k, t0, t1)
            self._decide(t1, agg)
            if self.progress is not None and k % report_every == 0:
                self.progress(k / self.ticks)
        self._sample(self.rec.n_samples - 1, self.ticks * self.tick)
        if self.progress is not None:
            self.progress(1.0)
        self.rec.wall_seconds = time.perf_counter() - started
        return self.rec

    def _distinct(self, nodes: IntArray) -> IntArray:
        """``nodes`` without repeats (a node can sit in a bucket twice: stale + current)."""
        if len(nodes) < 2:
            return nodes
        index = np.arange(len(nodes), dtype=np.int64)
        self._stamp[nodes] = index  # with repeats, one of the writes wins...
        first = self._stamp[nodes] == index  # ...and exactly that position is kept
        return nodes if bool(first.all()) else nodes[first]

    def _churn(self, k: int, t0: float, t1: float) -> None:
        while True:
            nodes = self._distinct(self.churn.pop(k))
            if len(nodes) == 0:
                return
            t = self.churn_t[nodes]
            valid = (t >= t0) & (t < t1) & ~self.departed[nodes]
            if not bool(valid.all()):
                nodes, t = nodes[valid], t[valid]
                if len(nodes) == 0:
                    continue
            up = ~self.online[nodes]
            if bool(up.all()):
                self._up(nodes, t)
            elif not bool(up.any()):
                self._down(nodes, t)
            else:
                self._down(nodes[~up], t[~up])
                self._up(nodes[up], t[up])

    def _timers(self, k: int, t0: float, t1: float) -> None:
        while True:
            nodes = self._distinct(self.sched.pop(k))
            if len(nodes) == 0:
                return
            t = self.next_t[nodes]
            valid = (t >= t0) & (t < t1) & self.online[nodes] & _TIMED[self.phase[nodes]]
            if not bool(valid.all()):
                nodes, t = nodes[valid], t[valid]
                if len(nodes) == 0:
                    continue
            self._timer(nodes, t)

    def _decide(self, now: float, agg: Aggregates) -> None:
        if not self._asks:
            return
        if len(self._asks) == 1:
            nodes, times = self._asks[0]
        else:
            nodes = np.concatenate([a for a, _ in self._asks])
            times = np.concatenate([b for _, b in self._asks])
        self._asks.clear()
        keep = self.online[nodes] & (self.phase[nodes] == ASKING)
        if not bool(keep.all()):
            nodes, times = nodes[keep], times[keep]
            if len(nodes) == 0:
                return
        order = np.argsort(times)
        self._answer(nodes[order], times[order], now, agg)
