"""Gate 3 in the simulations: ours (the real code) and three baselines to compare it with.

* ``ours``: ``coordinator.policy`` itself.  The tick engine calls ``decide_batch`` once per
  pool per tick with that tick's asks in ask-time order; the event engine calls ``decide``
  once per ask.  A refusal a freed slot ends joins the pool's queue of refused nodes, as
  the service's ``coordinator.policy_queue.WaitQueue`` (the event engine uses that class;
  the tick engine keeps the same first-refused order, ``forget_after`` and ``MAX_WAITING``
  in arrays), and its ``retry_after`` is ``policy_queue.queued_retry`` of its position
  (``policy_batch.queued_retry_batch`` in the tick engine).  Not modelled: the replica's
  ``SlotPush`` to the queue's head when a lease ends (it reaches a node only while its
  on-demand channel is open, and the model's nodes are not connected while they wait).
  The hold the wait grows with is the replica's measured one (``policy_hold``; the
  service measures it the same way): each lease that a release ends before it lapsed is
  a sample, grant to release (``LeaseHolds``).  Leases lapse after ``lease_ttl`` or end when the node reports
  "rejoined" (or hands the lease back).  The circuit breaker (``breaker_tripped``) pauses
  the pool.  Nothing of the rule is restated here.
* ``fleetlock``: a fixed semaphore per pool (FleetLock / Zincati, airlock, kured's lock):
  a node takes a slot before it leaves and gives it back when it is done.  No TTL: a node
  that goes offline holding the slot keeps it until it boots again (Zincati releases at
  boot); one that leaves for good keeps it forever.
* ``push``: no gate 3; every node is told to update now (nudged at each stage start and
  at boot) and every ask is granted.
* ``max-unavailable``: Kubernetes' rolling update, ``maxUnavailable: 25%``: at most that
  share of the pool's online nodes away at once, by count, whatever their capacity.  The
  controller observes the live state, so a node that vanishes stops counting.

The baselines are comparators, not our rules: they live here because no node runs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray

from coordinator.policy import (
    EXISTING_LEASE,
    REASONS,
    Aggregate,
    Ask,
    PolicyConfig,
    PoolState,
    decide,
    gate_of,
)
from coordinator.policy_batch import AskBatch, PoolArrays, decide_batch, queued_retry_batch
from coordinator.policy_hold import Holds, hold_in_force
from coordinator.policy_queue import (
    MAX_WAITING,
    QUEUED,
    WaitQueue,
    blocking_ends,
    forget_after,
    queued_retry,
)

from .config import DAY, PolicySettings
from .rng import FloatArray, IntArray

BoolArray = NDArray[np.bool_]
CodeArray = NDArray[np.int8]

#: A coordinator replica that has been up for a day: no warm-up in the way.
STARTED_AT: Final = -DAY


@dataclass(frozen=True, kw_only=True)
class PoolView:
    """What a policy may know about one pool when it decides."""

    #: The gossip aggregate (ours): serving capacity, load, serving count, and when.
    capacity: float
    load: float
    serving: int
    as_of: float
    #: Live counts (the Kubernetes-style controller watches node readiness).
    online: int
    away: int


class Policy(Protocol):
    name: str
    #: The lease a grant carries (``inf``: no lease; the drain budget ignores it).
    lease_ttl: float
    #: Every node is nudged at stage starts and checks at boot (push).
    pushes: bool
    #: The breaker can pause this policy's rollout.
    has_breaker: bool

    def label(self, code: int) -> tuple[str, str]: ...

    def decide(
        self,
        pool: int,
        nodes: IntArray,
        capacity: FloatArray,
        load: FloatArray,
        force: BoolArray,
        times: FloatArray,
        now: float,
        view: PoolView,
    ) -> tuple[BoolArray, CodeArray, FloatArray]:
        """Asks of one pool, sorted by time: granted, reason code, retry_after."""
        ...

    def release(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        """The departures of ``nodes`` ended (rejoined, rolled back, lease handed back)."""
        ...

    def went_offline(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        """``nodes`` vanished while away (the policy may not know)."""
        ...

    def booted(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        """``nodes`` came online."""
        ...

    def pause(self) -> None: ...

    def held(self, now: float) -> int:
        """Leases / slots / departures the policy counts as taken."""
        ...

    def stuck(self, online: BoolArray) -> int:
        """Of those, how many are held by nodes that are offline."""
        ...


# -- ours -------------------------------------------------------------------------------------


class LeaseHolds:
    """The replica's measured lease hold (``coordinator.policy_hold``), as the service
    takes it: a lease's grant time, and at its release before it lapsed (``lease_ttl``
    after the grant) the duration as a sample."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.granted_at: dict[int, float] = {}
        self.holds = Holds()
        self.hold = hold_in_force(self.holds, config)

    def granted(self, nodes: IntArray, now: float) -> None:
        for node in nodes.tolist():
            self.granted_at[node] = now

    def released(self, nodes: IntArray, now: float) -> None:
        samples = []
        for node in nodes.tolist():
            at = self.granted_at.pop(node, None)
            if at is not None and now - at < self.config.lease_ttl:  # active: not lapsed
                samples.append(max(0.0, now - at))
        if samples:
            self.holds = self.holds.add(*samples)
            self.hold = hold_in_force(self.holds, self.config)


class OursBatch:
    """``decide_batch`` per pool per tick (the tick engine)."""

    name = "ours"
    pushes = False
    has_breaker = True

    def __init__(self, config: PolicyConfig, pools: int, nodes: int) -> None:
        self.config = config
        self.lease_ttl = config.lease_ttl
        empty = Aggregate(capacity=0.0, load=0.0, serving=0, as_of=0.0)
        self.states = [
            PoolArrays(pool=str(p), aggregate=empty, started_at=STARTED_AT) for p in range(pools)
        ]
        self._ended: list[list[IntArray]] = [[] for _ in range(pools)]
        self.paused = False
        #: The queue of refused nodes per pool (module docstring): who, in order, and
        #: until when each keeps its place (``-inf``: not queued).
        self.queue: list[IntArray] = [np.zeros(0, dtype=np.int64) for _ in range(pools)]
        self.queued_until = np.full(nodes, -math.inf)
        self._place = np.zeros(nodes, dtype=np.int64)
        self._queued_codes = np.array(sorted(QUEUED), dtype=np.int8)
        self.holds = LeaseHolds(config)

    def label(self, code: int) -> tuple[str, str]:
        return gate_of(code), REASONS[code]

    def _state(self, pool: int) -> PoolArrays:
        ended = self._ended[pool]
        if ended:
            nodes = np.concatenate(ended) if len(ended) > 1 else ended[0]
            self.states[pool] = self.states[pool].end_leases(nodes)
            ended.clear()
        return self.states[pool]

    def decide(
        self,
        pool: int,
        nodes: IntArray,
        capacity: FloatArray,
        load: FloatArray,
        force: BoolArray,
        times: FloatArray,
        now: float,
        view: PoolView,
    ) -> tuple[BoolArray, CodeArray, FloatArray]:
        state = self._state(pool).with_aggregate(
            Aggregate(
                capacity=view.capacity, load=view.load, serving=view.serving, as_of=view.as_of
            )
        )
        if state.paused != self.paused:
            state = replace(state, paused=self.paused)
        asks = AskBatch(
            node=nodes, capacity=capacity, load=load, force=force, time=times, check=False
        )
        result, self.states[pool] = decide_batch(state, asks, now, self.config)
        self.holds.granted(nodes[result.granted & (result.reason != EXISTING_LEASE)], now)
        retry = result.retry_after
        queued = np.isin(result.reason, self._queued_codes)
        if bool(queued.any()) or len(self.queue[pool]):
            retry = self._queue(pool, nodes, result.granted, queued, force, retry, now)
        return result.granted, result.reason, retry

    def _queue(
        self,
        pool: int,
        nodes: IntArray,
        granted: BoolArray,
        queued: BoolArray,
        force: BoolArray,
        retry: FloatArray,
        now: float,
    ) -> FloatArray:
        """``WaitQueue.join`` / ``leave`` for a tick's answers (asks in time order), and
        ``queued_retry`` of each queued refusal's position."""
        until = self.queued_until
        until[nodes[granted]] = -math.inf  # granted: out of the queue
        line = self.queue[pool]
        line = line[until[line] > now]  # live(): the forgotten and the granted leave
        refused = nodes[queued]
        if len(refused) == 0:
            self.queue[pool] = line
            return retry
        fresh = refused[~(until[refused] > now)]
        joined = fresh[: max(0, MAX_WAITING - len(line))]
        line = np.concatenate((line, joined))
        self.queue[pool] = line
        keep = now + forget_after(self.config)
        until[line[np.isin(line, refused, assume_unique=True)]] = keep
        place = self._place
        place[line] = np.arange(1, len(line) + 1)
        positions = np.where(until[refused] == keep, place[refused], 0)
        leases = self.states[pool].leases
        active = leases.expires > now
        out = retry.copy()
        for forced in (False, True):
            sel = force[queued] == forced
            if not bool(sel.any()):
                continue
            blocking = active & leases.forced if forced else active
            ends = np.sort(leases.expires[blocking])
            where = np.flatnonzero(queued)[sel]
            out[where] = queued_retry_batch(ends, positions[sel], now, self.config, self.holds.hold)
        return out

    def release(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        self.holds.released(nodes, now)
        if len(self.states) == 1:
            self._ended[0].append(nodes)
            return
        for p in np.unique(pools):
            self._ended[int(p)].append(nodes[pools == p])

    def went_offline(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        """The lease stays until it lapses: the coordinator cannot tell a dead node."""

    def booted(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        pass

    def pause(self) -> None:
        self.paused = True

    def held(self, now: float) -> int:
        return sum(
            int(np.count_nonzero(self._state(p).leases.expires > now))
            for p in range(len(self.states))
        )

    def stuck(self, online: BoolArray) -> int:
        return sum(
            int(np.count_nonzero(~online[self._state(p).leases.node]))
            for p in range(len(self.states))
        )


class OursSequential:
    """``decide`` per ask on ``PoolState`` (the event engine): the service's own path."""

    name = "ours"
    pushes = False
    has_breaker = True

    def __init__(self, config: PolicyConfig, pools: int) -> None:
        self.config = config
        self.lease_ttl = config.lease_ttl
        empty = Aggregate(capacity=0.0, load=0.0, serving=0, as_of=0.0)
        self.states = [
            PoolState(pool=str(p), aggregate=empty, started_at=STARTED_AT) for p in range(pools)
        ]
        self.queues = [WaitQueue() for _ in range(pools)]
        self.paused = False
        self.holds = LeaseHolds(config)

    def label(self, code: int) -> tuple[str, str]:
        return gate_of(code), REASONS[code]

    def decide(
        self,
        pool: int,
        nodes: IntArray,
        capacity: FloatArray,
        load: FloatArray,
        force: BoolArray,
        times: FloatArray,
        now: float,
        view: PoolView,
    ) -> tuple[BoolArray, CodeArray, FloatArray]:
        state = self.states[pool].expire(now)
        aggregate = Aggregate(
            capacity=view.capacity, load=view.load, serving=view.serving, as_of=view.as_of
        )
        if state.aggregate != aggregate:
            state = state.with_aggregate(aggregate)
        if state.paused != self.paused:
            state = replace(state, paused=self.paused)
        m = len(nodes)
        granted = np.zeros(m, dtype=np.bool_)
        codes = np.zeros(m, dtype=np.int8)
        retry = np.full(m, math.nan)
        for i in range(m):
            node = int(nodes[i])
            ask = Ask(
                node=node,
                capacity=float(capacity[i]),
                load=float(load[i]),
                force=bool(force[i]),
                time=float(times[i]),
            )
            d = decide(state, ask, now, self.config)
            granted[i] = d.granted
            codes[i] = d.code
            if d.lease is not None:
                if d.code != EXISTING_LEASE:
                    state = state.add(d.lease)
                    self.holds.granted(nodes[i : i + 1], now)
                self.queues[pool] = self.queues[pool].leave(node)
            elif d.code in QUEUED:  # as coordinator.asks does: join, wait by position
                self.queues[pool], position = self.queues[pool].join(node, now, self.config)
                ends = blocking_ends(state.leases, forced=ask.force, now=now)
                retry[i] = queued_retry(ends, position, now, self.config, self.holds.hold)
            elif d.retry_after is not None:
                retry[i] = d.retry_after
        self.states[pool] = state
        return granted, codes, retry

    def release(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        self.holds.released(nodes, now)
        for node, pool in zip(nodes.tolist(), pools.tolist(), strict=True):
            self.states[pool] = self.states[pool].end_lease(node)

    def went_offline(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        pass

    def booted(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        pass

    def pause(self) -> None:
        self.paused = True

    def held(self, now: float) -> int:
        return sum(len(state.active(now)) for state in self.states)

    def stuck(self, online: BoolArray) -> int:
        return sum(
            sum(1 for lease in state.leases if not online[int(lease.node)]) for state in self.states
        )


# -- baselines ----------------------------------------------------------------------------------


class FleetLock:
    """A fixed semaphore per pool, no TTL (module docstring)."""

    name = "fleetlock"
    lease_ttl = math.inf
    pushes = False
    has_breaker = False
    REASONS: Final = ("granted", "slots-full")

    def __init__(self, slots: int, pools: int, nodes: int, retry: float) -> None:
        self.slots = slots
        self.retry = retry
        self.holder = np.zeros(nodes, dtype=np.bool_)
        self.taken = np.zeros(pools, dtype=np.int64)

    def label(self, code: int) -> tuple[str, str]:
        return "fleetlock", self.REASONS[code]

    def decide(
        self,
        pool: int,
        nodes: IntArray,
        capacity: FloatArray,
        load: FloatArray,
        force: BoolArray,
        times: FloatArray,
        now: float,
        view: PoolView,
    ) -> tuple[BoolArray, CodeArray, FloatArray]:
        free = max(0, self.slots - int(self.taken[pool]))
        m = len(nodes)
        granted = np.zeros(m, dtype=np.bool_)
        granted[:free] = True  # asks come sorted by time: first come, first served
        self.holder[nodes[granted]] = True
        self.taken[pool] += int(np.count_nonzero(granted))
        codes = (~granted).astype(np.int8)
        retry = np.where(granted, math.nan, self.retry)
        return granted, codes, retry

    def _free(self, nodes: IntArray, pools: NDArray[np.int32]) -> None:
        holding = self.holder[nodes]
        if not bool(holding.any()):
            return
        self.holder[nodes[holding]] = False
        self.taken -= np.bincount(pools[holding], minlength=len(self.taken))

    def release(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        self._free(nodes, pools)

    def went_offline(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        """Still holding: nothing lapses.  This is the stuck slot."""

    def booted(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        self._free(nodes, pools)  # Zincati unlocks once it is up again

    def pause(self) -> None:
        pass

    def held(self, now: float) -> int:
        return int(self.taken.sum())

    def stuck(self, online: BoolArray) -> int:
        return int(np.count_nonzero(self.holder & ~online))


class _HoldsNothing:
    """Baselines that keep no lease or slot: every bookkeeping hook is a no-op."""

    def release(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        pass

    def went_offline(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        pass

    def booted(self, nodes: IntArray, pools: NDArray[np.int32], now: float) -> None:
        pass

    def pause(self) -> None:
        pass

    def held(self, now: float) -> int:
        return 0

    def stuck(self, online: BoolArray) -> int:
        return 0


class Push(_HoldsNothing):
    """Everyone, now."""

    name = "push"
    lease_ttl = math.inf
    pushes = True
    has_breaker = False

    def label(self, code: int) -> tuple[str, str]:
        return "push", "granted"

    def decide(
        self,
        pool: int,
        nodes: IntArray,
        capacity: FloatArray,
        load: FloatArray,
        force: BoolArray,
        times: FloatArray,
        now: float,
        view: PoolView,
    ) -> tuple[BoolArray, CodeArray, FloatArray]:
        m = len(nodes)
        return np.ones(m, dtype=np.bool_), np.zeros(m, dtype=np.int8), np.full(m, math.nan)


class MaxUnavailable(_HoldsNothing):
    """At most ``share`` of the pool's online nodes away at once (module docstring)."""

    name = "max-unavailable"
    lease_ttl = math.inf
    pushes = False
    has_breaker = False
    REASONS: Final = ("granted", "max-unavailable")

    def __init__(self, share: float, retry: float) -> None:
        self.share = share
        self.retry = retry

    def label(self, code: int) -> tuple[str, str]:
        return "max-unavailable", self.REASONS[code]

    def decide(
        self,
        pool: int,
        nodes: IntArray,
        capacity: FloatArray,
        load: FloatArray,
        force: BoolArray,
        times: FloatArray,
        now: float,
        view: PoolView,
    ) -> tuple[BoolArray, CodeArray, FloatArray]:
        limit = max(1, math.floor(self.share * view.online))
        free = max(0, limit - view.away)
        m = len(nodes)
        granted = np.zeros(m, dtype=np.bool_)
        granted[:free] = True
        codes = (~granted).astype(np.int8)
        retry = np.where(granted, math.nan, self.retry)
        return granted, codes, retry


def make_policy(settings: PolicySettings, *, pools: int, nodes: int, batch: bool) -> Policy:
    """The policy a scenario names; ``batch`` picks ``decide_batch`` over ``decide``."""
    kind = settings.kind
    if kind == "ours":
        if batch:
            return OursBatch(settings.config, pools, nodes)
        return OursSequential(settings.config, pools)
    if kind == "fleetlock":
        return FleetLock(settings.fleetlock_slots, pools, nodes, settings.baseline_retry)
    if kind == "push":
        return Push()
    if kind == "max-unavailable":
        return MaxUnavailable(settings.max_unavailable, settings.baseline_retry)
    raise ValueError(f"unknown policy kind {kind!r}")
