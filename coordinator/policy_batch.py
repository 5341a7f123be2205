"""Gate 3 in batch form: ``decide_batch`` decides a whole tick of asks with numpy arrays.

The rule itself, its reasons, its order and the proof that the per-replica share keeps
the global budget are ``coordinator.policy``'s (its module docstring); this module adds
nothing to it.  It exists because the simulations ask ~17,000 times per tick, and a
Python loop over ``decide`` is too slow for that, while the coordinator service decides
one ask at a time and must not import numpy to do it.

The promise: ``decide_batch`` is bit-identical to ``policy.decide_sequence`` (sequential
``decide`` in ask-time order) -- the same grants, reason codes, ``retry_after`` floats,
queue positions and leases left behind.  A property test
(``tests/coordinator/test_policy_batch.py``) holds it to that.  Two things make the floats
equal rather than merely close: every partial sum of ``cap(A)`` is folded left to right
in grant order, as ``Usage`` sums it (``_exclusive_fold``), and the headroom expression
is evaluated elementwise operation for operation as ``policy.headroom`` writes it.

``queued_retry_batch`` is ``policy_queue.queued_retry`` for many queue positions at once
(the simulations' queue of refused nodes), bit-identical elementwise.

Admission is sequential by nature (each grant uses up room the next ask sees), so it
runs in a few vectorised rounds instead of a loop per ask (``_admit``).  Nodes are dense
int ids here; the service's str key ids only ever go through ``decide``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .policy import (
    AGGREGATE_STALE,
    EMERGENCY_BUDGET,
    EXISTING_LEASE,
    FORCED,
    GRANTED,
    LAST_GRANT_CODE,
    LEASE_BUDGET,
    MIN_SERVING,
    NO_SPARE_CAPACITY,
    PAUSED,
    REASONS,
    REPLICA_SHARE,
    REPLICA_WARMUP,
    Aggregate,
    Ask,
    Lease,
    PolicyConfig,
    PoolState,
    headroom_share,
    is_plain_int,
    pool_slot,
    replica_share,
    retry_until,
)
from .policy_queue import grows, queue_place

FloatArray: TypeAlias = NDArray[np.float64]
IntArray: TypeAlias = NDArray[np.int64]
BoolArray: TypeAlias = NDArray[np.bool_]
CodeArray: TypeAlias = NDArray[np.int8]


def _array(value: ArrayLike, dtype: type[np.generic], name: str) -> NDArray[Any]:
    array = np.ascontiguousarray(value, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array")
    return array


@dataclass(frozen=True, kw_only=True, eq=False)
class LeaseArrays:
    """A replica's leases in one pool as columns, in grant order (nodes are ints)."""

    node: IntArray
    capacity: FloatArray
    expires: FloatArray
    forced: BoolArray

    def __post_init__(self) -> None:
        columns = {
            "node": _array(self.node, np.int64, "leases.node"),
            "capacity": _array(self.capacity, np.float64, "leases.capacity"),
            "expires": _array(self.expires, np.float64, "leases.expires"),
            "forced": _array(self.forced, np.bool_, "leases.forced"),
        }
        if len({len(column) for column in columns.values()}) > 1:
            raise ValueError("leases: columns differ in length")
        for name, column in columns.items():
            object.__setattr__(self, name, column)

    def __len__(self) -> int:
        return len(self.node)

    @classmethod
    def empty(cls) -> LeaseArrays:
        return cls(
            node=np.empty(0, dtype=np.int64),
            capacity=np.empty(0, dtype=np.float64),
            expires=np.empty(0, dtype=np.float64),
            forced=np.empty(0, dtype=np.bool_),
        )

    @classmethod
    def from_leases(cls, leases: Sequence[Lease]) -> LeaseArrays:
        nodes = [lease.node for lease in leases]
        if not all(is_plain_int(node) for node in nodes):
            raise ValueError("leases: the array form needs int node ids")
        if len(set(nodes)) != len(nodes):
            raise ValueError("leases: two leases for one node")
        return cls(
            node=np.array(nodes, dtype=np.int64),
            capacity=np.array([lease.capacity for lease in leases], dtype=np.float64),
            expires=np.array([lease.expires for lease in leases], dtype=np.float64),
            forced=np.array([lease.forced for lease in leases], dtype=np.bool_),
        )

    def to_leases(self, pool: str) -> tuple[Lease, ...]:
        return tuple(
            Lease(node=int(n), pool=pool, capacity=float(c), expires=float(e), forced=bool(f))
            for n, c, e, f in zip(self.node, self.capacity, self.expires, self.forced, strict=True)
        )

    def select(self, mask: BoolArray) -> LeaseArrays:
        return LeaseArrays(
            node=self.node[mask],
            capacity=self.capacity[mask],
            expires=self.expires[mask],
            forced=self.forced[mask],
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class PoolArrays:
    """``PoolState`` with its leases as ``LeaseArrays``: the state ``decide_batch`` threads.

    One pool per value; a simulation with several pools keeps one per pool (and per
    replica) and calls ``decide_batch`` for each.
    """

    pool: str
    aggregate: Aggregate
    started_at: float
    leases: LeaseArrays = field(default_factory=LeaseArrays.empty)
    paused: bool = False

    @classmethod
    def from_state(cls, state: PoolState) -> PoolArrays:
        return cls(
            pool=state.pool,
            aggregate=state.aggregate,
            started_at=state.started_at,
            leases=LeaseArrays.from_leases(state.leases),
            paused=state.paused,
        )

    def to_state(self) -> PoolState:
        return PoolState(
            pool=self.pool,
            aggregate=self.aggregate,
            started_at=self.started_at,
            leases=self.leases.to_leases(self.pool),
            paused=self.paused,
        )

    def expire(self, now: float) -> PoolArrays:
        """Without the leases that lapsed by ``now`` (grant order kept)."""
        alive = self.leases.expires > now
        if bool(alive.all()):
            return self
        return replace(self, leases=self.leases.select(alive))

    def end_leases(self, nodes: ArrayLike) -> PoolArrays:
        """Without the leases of ``nodes``: they reported "rejoined"."""
        gone = np.isin(self.leases.node, np.asarray(nodes, dtype=np.int64))
        if not bool(gone.any()):
            return self
        return replace(self, leases=self.leases.select(~gone))

    def with_aggregate(self, aggregate: Aggregate) -> PoolArrays:
        return replace(self, aggregate=aggregate)


@dataclass(frozen=True, kw_only=True, eq=False)
class AskBatch:
    """Many asks as columns.  Nodes are ints and must be distinct within a batch.

    Construction checks shapes and values; ``check=False`` skips the O(m log m)
    distinct-node check for callers that guarantee it by construction (the tick engine).
    Asks already sorted by ``time`` skip a sort in ``decide_batch``.
    """

    node: IntArray
    capacity: FloatArray
    load: FloatArray
    force: BoolArray
    time: FloatArray
    check: bool = field(default=True, repr=False)

    def __post_init__(self) -> None:
        columns = {
            "node": _array(self.node, np.int64, "asks.node"),
            "capacity": _array(self.capacity, np.float64, "asks.capacity"),
            "load": _array(self.load, np.float64, "asks.load"),
            "force": _array(self.force, np.bool_, "asks.force"),
            "time": _array(self.time, np.float64, "asks.time"),
        }
        if len({len(column) for column in columns.values()}) > 1:
            raise ValueError("asks: columns differ in length")
        for name in ("capacity", "load"):
            column = columns[name]
            if not bool(np.all((column >= 0.0) & (column < math.inf))):
                raise ValueError(f"asks: {name} must be finite and >= 0")
        if not bool(np.all(np.isfinite(columns["time"]))):
            raise ValueError("asks: time must be finite")
        if self.check:
            nodes = np.sort(columns["node"])
            if bool(np.any(nodes[1:] == nodes[:-1])):
                raise ValueError("asks: a node asks twice in one batch")
        for name, column in columns.items():
            object.__setattr__(self, name, column)

    def __len__(self) -> int:
        return len(self.node)

    @classmethod
    def from_asks(cls, asks: Sequence[Ask]) -> AskBatch:
        if not all(is_plain_int(ask.node) for ask in asks):
            raise ValueError("asks: the array form needs int node ids")
        return cls(
            node=np.array([ask.node for ask in asks], dtype=np.int64),
            capacity=np.array([ask.capacity for ask in asks], dtype=np.float64),
            load=np.array([ask.load for ask in asks], dtype=np.float64),
            force=np.array([ask.force for ask in asks], dtype=np.bool_),
            time=np.array([ask.time for ask in asks], dtype=np.float64),
        )


@dataclass(frozen=True, kw_only=True, eq=False)
class BatchResult:
    """``decide_batch``'s answers, one row per ask, in the order the asks were given."""

    granted: BoolArray
    #: Reason code per ask; ``REASONS[code]`` names it.
    reason: CodeArray
    #: Seconds until a refused node should ask again; NaN for grants.
    retry_after: FloatArray
    #: 1-based rank among this batch's refusals (ask-time order); 0 for grants.
    queue_position: IntArray
    #: Lease expiry for grants (an existing lease keeps its own); NaN for refusals.
    expires: FloatArray
    #: Admission rounds the batch took (diagnostic: the vectorised loop's trip count).
    rounds: int

    def counts(self) -> dict[str, int]:
        """How many asks got each answer, by reason name (zeros left out)."""
        tally = np.bincount(self.reason, minlength=len(REASONS))
        return {REASONS[code]: int(n) for code, n in enumerate(tally) if n}


def _exclusive_counts(base: int, mask: BoolArray) -> IntArray:
    """``base`` + how many of ``mask`` are set strictly before each position."""
    counts: IntArray = np.cumsum(mask, dtype=np.int64)
    counts -= mask
    counts += base
    return counts


def _exclusive_fold(base: float, mask: BoolArray, values: FloatArray) -> FloatArray:
    """``base`` + the ``values`` under ``mask`` strictly before each position.

    Summed left to right exactly as ``Usage.of`` and ``decide`` do (``cumsum`` is a
    sequential fold, and adding the 0.0 of an unmasked slot is exact), so every partial
    sum is the bit-identical float sequential ``decide`` compares.
    """
    terms = np.empty(len(values) + 1, dtype=np.float64)
    terms[0] = base
    np.multiply(values, mask, out=terms[1:])
    fold: FloatArray = np.cumsum(terms)
    return fold[:-1]


def _admit(
    pending: BoolArray,
    fixed: BoolArray,
    capacity: FloatArray,
    room: FloatArray,
    count_limit: int,
    count0: int,
    capacity0: float,
) -> tuple[BoolArray, int]:
    """Which ``pending`` asks sequential admission grants, in a few vectorised rounds.

    Ask ``i`` (in time order) is granted iff ``count_before[i] <= count_limit`` and
    ``cap_before[i] + capacity[i] <= room[i]``, where the "before" values count every
    earlier grant: the ``fixed`` ones (forced grants, already decided) and the pending
    ones granted so far.  Each round assumes every remaining pending ask is granted and
    finds the first that would fail: everything before it really is granted (each check
    saw exactly the true state) and it really is refused.  Then every later pending ask
    that fails even against a *lower bound* of its state (only the grants known so far)
    is refused too: grants only add, and float addition is monotone, so it would fail
    later as well.  What survives fits right now, so each round grants at least one ask;
    in practice two or three rounds decide a whole batch.
    """
    granted = fixed.copy()
    pending = pending.copy()
    start, count_base, cap_base = 0, count0, capacity0
    rounds = 0
    while bool(pending[start:].any()):
        rounds += 1
        p = pending[start:]
        cap = capacity[start:]
        limit = room[start:]
        cost = p | granted[start:]
        count_before = _exclusive_counts(count_base, cost)
        cap_before = _exclusive_fold(cap_base, cost, cap)
        bad = p & ((count_before > count_limit) | (cap_before + cap > limit))
        if not bool(bad.any()):
            granted[start:] |= p
            break
        first = int(np.argmax(bad))
        granted[start : start + first] |= p[:first]
        pending[start : start + first + 1] = False
        count_base = int(count_before[first])
        cap_base = float(cap_before[first])
        start += first + 1
        # Refuse what cannot fit even if no other pending ask is granted.
        known = granted[start:]
        cap = capacity[start:]
        if bool(known.any()):
            count_floor = _exclusive_counts(count_base, known)
            cap_floor = _exclusive_fold(cap_base, known, cap)
            fits = (count_floor <= count_limit) & (cap_floor + cap <= room[start:])
        elif count_base > count_limit:
            fits = np.zeros(len(cap), dtype=np.bool_)
        else:
            fits = cap_base + cap <= room[start:]
        pending[start:] &= fits
    return granted, rounds


def _time_order(times: FloatArray) -> IntArray:
    """Stable argsort of ask times (ties keep the given order).

    The unstable sort is twice as fast and gives the same permutation when no two times
    are equal, which continuous ask times almost never are; ties fall back to stable.
    """
    order = np.argsort(times)
    ordered = times[order]
    if bool(np.any(ordered[1:] == ordered[:-1])):
        order = np.argsort(times, kind="stable")
    return order.astype(np.int64, copy=False)


#: Node id ranges up to this use a lookup table for membership (bytes of scratch).
_TABLE_LIMIT: Final = 1 << 24


def _member(nodes: IntArray, held: IntArray) -> BoolArray:
    """Which ``nodes`` are in ``held``: a bitmap over the id range for dense simulation
    ids (10x faster than sorting), ``np.isin`` otherwise."""
    if len(held) == 0 or len(nodes) == 0:
        return np.zeros(len(nodes), dtype=np.bool_)
    low, high = int(held.min()), int(held.max())
    if high - low >= _TABLE_LIMIT:
        return np.isin(nodes, held)
    table = np.zeros(high - low + 1, dtype=np.bool_)
    table[held - low] = True
    inside = (nodes >= low) & (nodes <= high)
    member = np.zeros(len(nodes), dtype=np.bool_)
    member[inside] = table[nodes[inside] - low]
    return member


def _expiry_of(nodes: IntArray, leases: LeaseArrays) -> FloatArray:
    """The expiry of each of ``nodes``' leases (all present; usually a handful)."""
    where = np.flatnonzero(_member(leases.node, nodes))
    by_lease = np.argsort(leases.node[where])
    by_ask = np.argsort(nodes)
    expiry = np.empty(len(nodes), dtype=np.float64)
    expiry[by_ask] = leases.expires[where[by_lease]]
    return expiry


def decide_batch(
    pool: PoolArrays, asks: AskBatch, now: float, config: PolicyConfig
) -> tuple[BatchResult, PoolArrays]:
    """Decide a whole batch of asks at ``now``, exactly as ``decide_sequence`` would.

    Asks are admitted in ask-time order (ties in the order given), each consuming the
    capacity, lease budget and emergency budget that later asks then see.  Vectorised:
    the work is a handful of array passes per admission round (see ``_admit``), never a
    Python loop per ask.  Returns the answers in the order the asks were given and the
    new state: lapsed leases dropped, grants appended in ask-time order.  Nodes of the
    asks must be distinct (``AskBatch`` checks).
    """
    now = float(now)
    state = pool.expire(now)
    leases = state.leases
    m = len(asks)

    times = asks.time
    order: IntArray | None = None
    node, cap, load, force = asks.node, asks.capacity, asks.load, asks.force
    if m > 1 and not bool(np.all(times[1:] >= times[:-1])):
        order = _time_order(times)
        node, cap, load, force = node[order], cap[order], load[order], force[order]

    aggregate = pool.aggregate
    ttl = config.lease_ttl
    warm_until = pool.started_at + ttl
    warm = now < warm_until
    stale = now - aggregate.as_of > config.aggregate_max_age

    count0 = len(leases)
    forced0 = int(np.count_nonzero(leases.forced))
    capacity0 = float(np.cumsum(leases.capacity)[-1]) if count0 else 0.0
    earliest0 = float(leases.expires.min()) if count0 else math.inf
    earliest_forced0 = float(leases.expires[leases.forced].min()) if forced0 else math.inf

    existing = _member(node, leases.node)
    fresh = np.zeros(m, dtype=np.bool_) if pool.paused or warm else ~existing

    # The pool's shares, as decide() computes them (one deal per batch).
    slot = pool_slot(pool.pool)
    spare_nodes = aggregate.serving - config.min_serving
    lease_share = replica_share(config.max_concurrent, slot, config)
    node_share = replica_share(spare_nodes, slot, config)
    emergency_share = replica_share(config.emergency_budget, slot, config)
    share = headroom_share(min(config.max_concurrent, spare_nodes), config)

    # Forced asks depend only on earlier forced grants: the first few fit.
    forced_at = np.flatnonzero(fresh & force)
    forced_granted_at = forced_at[: max(0, emergency_share - forced0)]
    forced_grant = np.zeros(m, dtype=np.bool_)
    forced_grant[forced_granted_at] = True

    # Unforced asks: the lease budget and min-serving are both a cap on |A| before (a
    # share of 0, or no spare node at all, grants nothing: node_share is 0 then).
    count_limit = min(lease_share, node_share) - 1
    room: FloatArray = share * (
        aggregate.capacity - np.maximum(aggregate.load, load) / config.grant_utilization
    )
    normal_ask = fresh & ~force if not stale else np.zeros(m, dtype=np.bool_)
    granted_new, rounds = _admit(
        normal_ask, forced_grant, cap, room, count_limit, count0, capacity0
    )

    # The state each ask saw, given the final grants; reasons follow from it, in the
    # order decide() checks (later assignments take precedence).
    count_before = _exclusive_counts(count0, granted_new)
    cap_before = _exclusive_fold(capacity0, granted_new, cap)
    unforced = ~force
    code = np.full(m, GRANTED, dtype=np.int8)
    code[unforced & (cap_before + cap > room)] = NO_SPARE_CAPACITY
    if lease_share == 0 or node_share == 0:
        code[unforced] = REPLICA_SHARE
    if spare_nodes <= 0:
        code[unforced] = MIN_SERVING
    elif node_share > 0:
        code[unforced & (count_before >= node_share)] = MIN_SERVING
    if lease_share > 0:
        code[unforced & (count_before >= lease_share)] = LEASE_BUDGET
    if stale:
        code[unforced] = AGGREGATE_STALE
    any_force = bool(force.any())
    if any_force:
        code[force] = EMERGENCY_BUDGET
        code[forced_granted_at] = FORCED
    if warm:
        code[:] = REPLICA_WARMUP
    if pool.paused:
        code[:] = PAUSED
    code[existing] = EXISTING_LEASE
    granted = code <= LAST_GRANT_CODE
    assert np.array_equal(granted & ~existing, granted_new), "batch admission disagrees"

    # retry_after: until the earliest lease that blocks the ask lapses (module docstring).
    new_expiry = now + ttl
    retry = np.full(m, np.nan)
    waiting = (code == LEASE_BUDGET) | (code == MIN_SERVING) | (code == NO_SPARE_CAPACITY)
    earliest = np.where(count_before[waiting] > count0, min(earliest0, new_expiry), earliest0)
    retry[waiting] = np.minimum(config.base_retry, np.maximum(config.min_retry, earliest - now))
    if any_force:
        # Every emergency refusal comes after all of the batch's forced grants.
        if len(forced_granted_at):
            earliest_forced0 = min(earliest_forced0, new_expiry)
        retry[code == EMERGENCY_BUDGET] = retry_until(earliest_forced0, now, config)
    retry[code == REPLICA_SHARE] = config.base_retry
    if stale:
        retry[code == AGGREGATE_STALE] = config.base_retry
    if warm:
        retry[code == REPLICA_WARMUP] = warm_until - now
    if pool.paused:
        retry[code == PAUSED] = config.paused_retry

    refused = ~granted
    queue: IntArray = np.where(refused, np.cumsum(refused), 0).astype(np.int64)

    expires = np.where(granted_new, new_expiry, np.nan)
    if bool(existing.any()):
        expires[existing] = _expiry_of(node[existing], leases)

    added = LeaseArrays(
        node=np.concatenate((leases.node, node[granted_new])),
        capacity=np.concatenate((leases.capacity, cap[granted_new])),
        expires=np.concatenate((leases.expires, np.full(int(granted_new.sum()), new_expiry))),
        forced=np.concatenate((leases.forced, force[granted_new])),
    )
    new_state = replace(state, leases=added)

    columns: tuple[NDArray[np.generic], ...] = (granted, code, retry, queue, expires)
    if order is not None:
        unsorted = []
        for column in columns:
            back = np.empty_like(column)
            back[order] = column
            unsorted.append(back)
        columns = tuple(unsorted)
    result = BatchResult(
        granted=columns[0].astype(np.bool_, copy=False),
        reason=columns[1].astype(np.int8, copy=False),
        retry_after=columns[2].astype(np.float64, copy=False),
        queue_position=columns[3].astype(np.int64, copy=False),
        expires=columns[4].astype(np.float64, copy=False),
        rounds=rounds,
    )
    return result, new_state


def queued_retry_batch(
    ends: FloatArray,
    positions: IntArray,
    now: float,
    config: PolicyConfig,
    hold: float | None = None,
) -> FloatArray:
    """``policy_queue.queued_retry(ends, p, now, config, hold)`` for each ``p`` of ``positions``
    (``0``: no position, ``None`` there), elementwise and bit-identical; ``ends`` sorted."""
    positions = np.asarray(positions, dtype=np.int64)
    if bool((positions < 0).any()):
        raise ValueError("queued_retry_batch: positions must be >= 0")
    ends = np.asarray(ends, dtype=np.float64)
    places = np.where(positions > 0, positions, queue_place(None, config))
    k = len(ends)
    out = np.full(len(places), config.base_retry)
    within = places <= k
    if bool(within.any()):
        out[within] = np.minimum(
            config.base_retry, np.maximum(config.min_retry, ends[places[within] - 1] - now)
        )
    behind = ~within
    if k and grows(config) and bool(behind.any()):
        per = config.queue_hold if hold is None else hold
        grown = places[behind].astype(np.float64) * per / k
        out[behind] = np.minimum(config.queue_retry_max, np.maximum(config.base_retry, grown))
    return out
