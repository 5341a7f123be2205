"""The batch form of the capacity policy, ``coordinator.policy_batch``: ``decide_batch``
answers exactly as sequential ``decide`` does (``decide_sequence``), bit for bit.

Hand-worked batches pin the admission rounds, sparse node ids and the array values'
validation.  The property tests compare ``decide_batch`` with ``decide_sequence`` on
random pools and asks, including ``retry_after`` floats and the leases left behind; one
more runs a simulation-sized tick.  The helpers (and ``assert_same``, the comparison) are
``test_policy``'s.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import policy_batch
from coordinator.policy import Aggregate, Ask, Lease, PolicyConfig, PoolState, decide_sequence
from coordinator.policy_batch import AskBatch, LeaseArrays, PoolArrays, decide_batch

from .test_policy import (
    FAST,
    IO_MODULES,
    NOW,
    POOL,
    PURE_STDLIB,
    ROOMY,
    aggregate,
    ask,
    assert_same,
    imported_top_levels,
    lease,
    pool,
)

# -- sequences and batches ---------------------------------------------------------------


def test_sequence_orders_by_ask_time_and_numbers_the_queue() -> None:
    cfg = PolicyConfig(max_concurrent=2, min_serving=0)
    asks = [ask(i, time=t) for i, t in enumerate([5.0, 1.0, 3.0, 1.0, 9.0])]
    decisions, after = decide_sequence(pool(), asks, NOW, cfg)
    # Time order: 1 (t=1), 3 (t=1, given later), 2, 0, 4.
    assert [d.granted for d in decisions] == [False, True, False, True, False]
    assert [d.queue_position for d in decisions] == [2, None, 1, None, 3]
    assert [le.node for le in after.leases] == [1, 3]
    result, state = decide_batch(PoolArrays.from_state(pool()), AskBatch.from_asks(asks), NOW, cfg)
    assert result.granted.tolist() == [False, True, False, True, False]
    assert result.queue_position.tolist() == [2, 0, 1, 0, 3]
    assert state.to_state().leases == after.leases
    assert result.counts() == {"granted": 2, "lease-budget": 3}


def test_batch_exact_fits_after_a_forced_grant_and_min_serving() -> None:
    """Room 10 (C=10, L=0): 6 fits, 5 does not, a forced 1 goes anyway, 3 fits exactly;
    S=10 with min_serving 6 lets 4 away, so the second zero-capacity ask is refused."""
    cfg = PolicyConfig(max_concurrent=100, min_serving=6)
    state = pool(agg=aggregate(capacity=10.0, load=0.0, serving=10))
    caps = [6.0, 5.0, 1.0, 3.0, 0.0, 0.0]
    asks = [ask(i, c, time=float(i), force=i == 2) for i, c in enumerate(caps)]
    decisions, after = decide_sequence(state, asks, NOW, cfg)
    assert [d.reason for d in decisions] == [
        "granted",
        "no-spare-capacity",
        "forced",
        "granted",
        "granted",
        "min-serving",
    ]
    result, batch_state = decide_batch(
        PoolArrays.from_state(state), AskBatch.from_asks(asks), NOW, cfg
    )
    assert_same(decisions, after, result, batch_state)


def test_batch_rounds_on_an_adversarial_capacity_pattern() -> None:
    """Big asks that just miss between small ones that fit: many rounds, same answers."""
    caps = [1.0]
    for k in range(40):
        caps += [100.0 - k, 1.0]
    asks = [ask(i, c, time=float(i)) for i, c in enumerate(caps)]
    state = pool(agg=aggregate(capacity=100.0, load=0.0))
    decisions, after = decide_sequence(state, asks, NOW, ROOMY)
    result, batch_state = decide_batch(
        PoolArrays.from_state(state), AskBatch.from_asks(asks), NOW, ROOMY
    )
    assert_same(decisions, after, result, batch_state)
    assert result.rounds > 10


def test_batch_with_sparse_node_ids() -> None:
    """Ids far apart (no lookup table) and negative ids: same answers, same re-asks."""
    far = [-(2**40), 3, 2**50]
    state = pool(lease(far[0], 2.0), lease(far[2], 1.0, expires=NOW + 7.0))
    asks = [ask(node, 1.0, time=float(-i)) for i, node in enumerate([*far, 2**45])]
    cfg = PolicyConfig(max_concurrent=3, min_serving=0)
    decisions, after = decide_sequence(state, asks, NOW, cfg)
    assert [d.reason for d in decisions] == [
        "existing-lease",
        "lease-budget",
        "existing-lease",
        "granted",
    ]
    result, batch_state = decide_batch(
        PoolArrays.from_state(state), AskBatch.from_asks(asks), NOW, cfg
    )
    assert_same(decisions, after, result, batch_state)
    assert result.expires[2] == NOW + 7.0


def test_ask_batch_validation() -> None:
    def make(**kw: object) -> AskBatch:
        base: dict[str, object] = {
            "node": [1, 2],
            "capacity": [1.0, 1.0],
            "load": [0.0, 0.0],
            "force": [False, False],
            "time": [0.0, 0.0],
        }
        return AskBatch(**{**base, **kw})  # type: ignore[arg-type]

    assert len(make()) == 2
    with pytest.raises(ValueError, match="twice"):
        make(node=[3, 3])
    assert len(make(node=[3, 3], check=False)) == 2
    with pytest.raises(ValueError, match="capacity"):
        make(capacity=[1.0, -1.0])
    with pytest.raises(ValueError, match="load"):
        make(load=[math.inf, 0.0])
    with pytest.raises(ValueError, match="length"):
        make(time=[0.0])
    with pytest.raises(ValueError, match="1-D"):
        make(node=[[1, 2]])


def test_pool_arrays_bookkeeping() -> None:
    state = pool(lease(1, expires=NOW), lease(2, forced=True), lease(3))
    arrays = PoolArrays.from_state(state)
    assert arrays.to_state() == state
    assert arrays.expire(NOW).to_state() == state.expire(NOW)
    assert arrays.end_leases([2, 9]).to_state() == state.end_lease(2)
    assert arrays.end_leases([9]) is arrays
    with pytest.raises(ValueError, match="int node"):
        PoolArrays.from_state(pool(lease("a")))
    assert len(LeaseArrays.empty()) == 0


# -- the property: batch == sequential ---------------------------------------------------

ODD_FLOATS = [0.0, 5e-324, 1e-300, 0.1, 0.2, 0.3, 1.0, 3.0, 7.5, 1e15, 1e300]


def amounts(high: float) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from(ODD_FLOATS),
        st.floats(0.0, high, allow_nan=False, allow_infinity=False),
    )


@st.composite
def configs(draw: st.DrawFn) -> PolicyConfig:
    n = draw(st.integers(1, 4))
    q = draw(st.integers(1, n))
    return PolicyConfig(
        utilization=draw(st.sampled_from([0.8, 1.0, 0.5, 0.3])),
        churn_margin=draw(st.sampled_from([0.0, 0.01, 0.25])),
        min_serving=draw(st.integers(0, 6)),
        max_concurrent=draw(st.one_of(st.integers(1, 3), st.integers(1, 40))),
        replicas=n,
        quorum=q,
        rank=draw(st.integers(0, n - 1)),
        lease_ttl=draw(st.sampled_from([300.0, 1.0, 0.5])),
        emergency_budget=draw(st.integers(0, 2)),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[PoolState, list[Ask], PolicyConfig]:
    """Mostly pools where some asks fit and some do not; now and then every odd case."""
    config = draw(configs())
    capacity = draw(st.one_of(st.floats(30.0, 60.0), st.floats(30.0, 60.0), amounts(60.0)))
    # Mostly: spare capacity C - L/u of the order of a handful of asks.
    load = draw(
        st.one_of(
            st.floats(0.0, 30.0).map(lambda spare: config.utilization * (capacity - spare)),
            st.floats(0.0, 30.0).map(lambda spare: config.utilization * (capacity - spare)),
            amounts(40.0),
        )
    )
    load = max(load, 0.0)
    agg = Aggregate(
        capacity=capacity,
        load=load,
        serving=draw(st.one_of(st.just(100), st.just(100), st.integers(0, 30))),
        as_of=NOW - draw(st.sampled_from([0.0] * 4 + [10.0, 180.0, 180.5, 1e4])),
    )
    lease_nodes = draw(st.lists(st.integers(0, 40), max_size=8, unique=True))
    leases = tuple(
        Lease(
            node=node,
            pool=POOL,
            capacity=draw(amounts(10.0)),
            expires=NOW + draw(st.sampled_from([-5.0, 0.0, 0.25, 10.0, 100.0, 299.0, 1e4])),
            forced=draw(st.sampled_from([False, False, False, True])),
        )
        for node in lease_nodes
    )
    ask_nodes = draw(st.lists(st.integers(0, 60), max_size=30, unique=True))
    asks = [
        Ask(
            node=node,
            capacity=draw(st.one_of(st.floats(0.0, 3.0), st.floats(0.0, 10.0), amounts(10.0))),
            load=draw(st.one_of(st.just(0.0), amounts(50.0))),
            force=draw(st.sampled_from([False] * 6 + [True])),
            time=draw(st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(-60.0, 0.0))),
        )
        for node in ask_nodes
    ]
    started = draw(st.sampled_from([-math.inf] * 6 + [NOW - 1e5, NOW - 300.0, NOW - 0.25, NOW]))
    state = PoolState(
        pool=POOL,
        aggregate=agg,
        started_at=started,
        leases=leases,
        paused=draw(st.sampled_from([False] * 9 + [True])),
    )
    return state, asks, config


@FAST
@given(scenarios(), st.sampled_from([False, True]))
def test_batch_equals_sequential_decide(
    scenario: tuple[PoolState, list[Ask], PolicyConfig], shuffle_free: bool
) -> None:
    state, asks, config = scenario
    if shuffle_free:  # asks already in time order take the no-sort path
        asks = sorted(asks, key=lambda a: a.time)
    decisions, after = decide_sequence(state, asks, NOW, config)
    result, batch_state = decide_batch(
        PoolArrays.from_state(state), AskBatch.from_asks(asks), NOW, config
    )
    assert_same(decisions, after, result, batch_state)


@st.composite
def crowded(draw: st.DrawFn) -> tuple[PoolState, list[Ask], PolicyConfig]:
    """Many asks of mixed sizes into a little spare capacity: the admission rounds."""
    config = PolicyConfig(
        max_concurrent=draw(st.integers(5, 80)),
        min_serving=0,
        emergency_budget=draw(st.integers(0, 3)),
        replicas=draw(st.sampled_from([1, 2])),
    )
    sizes = st.one_of(
        st.sampled_from([0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0]), st.floats(0, 9)
    )
    capacity = 1000.0
    spare = draw(st.floats(0.0, 40.0))
    agg = Aggregate(capacity=capacity, load=0.8 * (capacity - spare), serving=1000, as_of=NOW)
    leases = tuple(
        Lease(
            node=node,
            pool=POOL,
            capacity=draw(sizes),
            expires=NOW + draw(st.sampled_from([0.0, 5.0, 50.0])),
            forced=draw(st.booleans()),
        )
        for node in draw(st.lists(st.integers(0, 99), max_size=4, unique=True))
    )
    asks = [
        Ask(
            node=node,
            capacity=draw(sizes),
            force=draw(st.sampled_from([False] * 9 + [True])),
            time=draw(st.floats(0.0, 3.0)),
        )
        for node in draw(st.lists(st.integers(0, 200), min_size=20, max_size=80, unique=True))
    ]
    return PoolState(pool=POOL, aggregate=agg, started_at=0.0, leases=leases), asks, config


@settings(FAST, max_examples=250)
@given(crowded())
def test_batch_equals_sequential_decide_when_crowded(
    scenario: tuple[PoolState, list[Ask], PolicyConfig],
) -> None:
    state, asks, config = scenario
    decisions, after = decide_sequence(state, asks, NOW, config)
    result, batch_state = decide_batch(
        PoolArrays.from_state(state), AskBatch.from_asks(asks), NOW, config
    )
    assert_same(decisions, after, result, batch_state)


def test_float_sums_are_bit_identical() -> None:
    """0.1 + 0.2 + 0.3 > 0.6 in floats: batch and sequential must agree on that."""
    state = pool(agg=aggregate(capacity=0.6, load=0.0))
    asks = [ask(i, c, time=float(i)) for i, c in enumerate([0.1, 0.2, 0.3])]
    decisions, after = decide_sequence(state, asks, NOW, ROOMY)
    assert [d.granted for d in decisions] == [True, True, False]
    result, batch_state = decide_batch(
        PoolArrays.from_state(state), AskBatch.from_asks(asks), NOW, ROOMY
    )
    assert_same(decisions, after, result, batch_state)
    # With a lease of 0.1 first: ((0.1 + 0.1) + 0.4) + 0.1 > 0.7, though 0.1 + 0.6 is not.
    state = pool(lease(9, 0.1), agg=aggregate(capacity=0.7, load=0.0))
    asks = [ask(i, c, time=float(i)) for i, c in enumerate([0.1, 0.4, 0.1])]
    decisions, after = decide_sequence(state, asks, NOW, ROOMY)
    assert [d.granted for d in decisions] == [True, True, False]
    result, batch_state = decide_batch(
        PoolArrays.from_state(state), AskBatch.from_asks(asks), NOW, ROOMY
    )
    assert_same(decisions, after, result, batch_state)


def test_batch_equals_sequential_at_simulation_scale() -> None:
    """One tick's worth of asks (17,000) against a big pool, all answers identical."""
    rng = np.random.default_rng(7)
    m, nodes = 17_000, 1_000_000
    caps = rng.uniform(0.5, 1.5, nodes)
    held = rng.choice(nodes, 300, replace=False)
    leases = tuple(
        Lease(
            node=int(node),
            pool=POOL,
            capacity=float(caps[node]),
            expires=NOW + float(rng.uniform(-60, 300)),
            forced=False,
        )
        for node in held
    )
    askers = rng.choice(nodes, m, replace=False)
    asks = [
        Ask(
            node=int(node),
            capacity=float(caps[node]),
            load=float(rng.uniform(0, 1)),
            force=bool(rng.random() < 0.001),
            time=NOW - float(rng.uniform(0, 60)),
        )
        for node in askers
    ]
    config = PolicyConfig(
        max_concurrent=1_000, min_serving=1_000, emergency_budget=3, churn_margin=0.0
    )
    state = PoolState(
        pool=POOL,
        # C - L/u leaves ~400 units: the capacity binds before the 1,000-lease budget.
        aggregate=Aggregate(
            capacity=caps.sum(), load=0.8 * (caps.sum() - 400.0), serving=nodes, as_of=NOW
        ),
        started_at=0.0,
        leases=leases,
    )
    decisions, after = decide_sequence(state, asks, NOW, config)
    result, batch_state = decide_batch(
        PoolArrays.from_state(state), AskBatch.from_asks(asks), NOW, config
    )
    assert_same(decisions, after, result, batch_state)
    counts = result.counts()
    assert counts["granted"] > 100 and counts["no-spare-capacity"] > 10_000
    assert counts["forced"] + counts["emergency-budget"] == int(
        result.reason.size
        - (counts["granted"] + counts["no-spare-capacity"] + counts.get("existing-lease", 0))
    )


def test_policy_batch_does_no_io() -> None:
    """Pure like the scalar rule; numpy is what it adds."""
    imported = imported_top_levels(Path(policy_batch.__file__))
    assert not imported & IO_MODULES
    assert imported <= PURE_STDLIB | {"numpy", "coordinator"}
