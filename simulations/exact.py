"""The exact event engine: one event at a time from a heap, for up to 100,000 nodes.

Same model, same node transitions (``fleet.Fleet``), same draws; what differs is time.
Every churn transition and timer is an event at its exact time, popped in order (ties by
insertion), and every ask is decided the moment it is made with the real sequential
``coordinator.policy.decide`` on a ``PoolState`` -- the path the coordinator service takes
-- against the gossip aggregate of the latest epoch (refreshed every ``tick_seconds``, as
in the tick engine).  This is the reference the tick engine is checked against: a test
runs both on one scenario and bounds the differences in their metrics.

It pays a Python call chain per event, so it is ~100x slower per node than the tick
engine; ``config`` refuses it above ``EXACT_MAX_NODES``.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from typing import Final

import numpy as np

from .fleet import _TIMED, Aggregates, Fleet
from .metrics import Recorder
from .model import Model
from .policies import Policy, make_policy
from .rng import FloatArray, IntArray

CHURN: Final = 0
TIMER: Final = 1
SAMPLE: Final = 2
EPOCH_TICK: Final = 3
STAGE: Final = 4


class EventEngine(Fleet):
    """One run of the event engine (module docstring)."""

    def __init__(
        self,
        model: Model,
        *,
        policy: Policy | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        n = model.population.n
        policy = policy or make_policy(model.s.policy, pools=model.pools, nodes=n, batch=False)
        super().__init__(model, policy, sample_dt=max(60.0, model.tick))
        self.progress = progress
        self.heap: list[tuple[float, int, int, int]] = []
        self.seq = 0
        self.horizon = model.horizon
        self.agg: Aggregates = self.aggregates(0.0)
        self._start()

    def _push(self, t: float, kind: int, node: int) -> None:
        if t < self.horizon:
            heapq.heappush(self.heap, (t, self.seq, kind, node))
            self.seq += 1

    def _schedule(self, nodes: IntArray, times: FloatArray) -> None:
        self.next_t[nodes] = times
        for node, t in zip(nodes.tolist(), times.tolist(), strict=True):
            self._push(t, TIMER, node)

    def _push_churn(self, nodes: IntArray, times: FloatArray) -> None:
        for node, t in zip(nodes.tolist(), times.tolist(), strict=True):
            self._push(t, CHURN, node)

    def _ask(self, nodes: IntArray, times: FloatArray) -> None:
        for node, t in zip(nodes.tolist(), times.tolist(), strict=True):
            self._answer(np.array([node]), np.array([t]), t, self.agg)

    def run(self) -> Recorder:
        started = time.perf_counter()
        m = self.m
        for j in range(self.rec.n_samples):
            self._push(j * self.sample_dt, SAMPLE, j)
        epochs = math.ceil(self.horizon / m.tick - 1e-9)
        for k in range(1, epochs):
            self._push(k * m.tick, EPOCH_TICK, k)
        for i, ts in enumerate(m.gates.stage_times.tolist()):
            self._push(ts, STAGE, i)
        start = m.s.rollout_start
        self._push(start, STAGE, -1)  # marks who is online at the rollout start
        next_report = 0.0
        heap = self.heap
        online = self.online
        while heap:
            t, _, kind, node = heapq.heappop(heap)
            if kind == CHURN:
                if t != self.churn_t[node] or self.departed[node]:
                    continue
                if online[node]:
                    self._down(np.array([node]), np.array([t]))
                else:
                    self._up(np.array([node]), np.array([t]))
            elif kind == TIMER:
                if t != self.next_t[node] or not online[node] or not _TIMED[self.phase[node]]:
                    continue
                self._timer(np.array([node]), np.array([t]))
            elif kind == SAMPLE:
                self._sample(node, t)
                if self.progress is not None and t >= next_report:
                    self.progress(t / self.horizon)
                    next_report = t + self.horizon / 200.0
            elif kind == EPOCH_TICK:
                self.agg = self.aggregates(t)
            elif node < 0:
                self._mark_start()
            else:
                self._stage(node, t)
        # The last sample sits exactly at the horizon: take it now.
        self._sample(self.rec.n_samples - 1, self.horizon)
        if self.progress is not None:
            self.progress(1.0)
        self.rec.wall_seconds = time.perf_counter() - started
        return self.rec
