"""The capacity policy (README "Capacity gate and departure tokens"): every refusal reason,
grants, leases, the breaker and the quorum budget of the scalar rule, ``coordinator.policy``.

Unit tests pin one rule each with numbers worked by hand; each of them goes through
``checked``, which also asks ``decide_sequence`` and ``decide_batch`` and requires the same
answer, so the batch form is held to every hand-worked case too.  The quorum tests model
each replica with its own state and count the departure tokens a node can assemble from
``q`` replica grants, whatever replicas it picks.  The property test of the batch form is
in ``test_policy_batch.py``.  Hypothesis runs derandomized with a fixed example budget, so
the suite is fast and deterministic.
"""

from __future__ import annotations

import ast
import itertools
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator import policy
from coordinator.policy import (
    REASON_CODES,
    REASONS,
    Aggregate,
    Ask,
    Decision,
    Lease,
    PolicyConfig,
    PoolState,
    breaker_threshold,
    breaker_tripped,
    decide,
    decide_sequence,
)
from coordinator.policy_batch import AskBatch, BatchResult, PoolArrays, decide_batch
from p2pupdate.core.gates import GATE_CAPACITY

FAST = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NOW = 10_000.0
POOL = "eu-1"
#: Plenty of everything: only the rule under test refuses.
ROOMY = PolicyConfig(max_concurrent=100, min_serving=0, churn_margin=0.0)


def aggregate(
    capacity: float = 100.0, load: float = 40.0, serving: int = 50, as_of: float = NOW
) -> Aggregate:
    return Aggregate(capacity=capacity, load=load, serving=serving, as_of=as_of)


def lease(
    node: int | str, capacity: float = 1.0, expires: float = NOW + 100.0, forced: bool = False
) -> Lease:
    return Lease(node=node, pool=POOL, capacity=capacity, expires=expires, forced=forced)


def pool(
    *leases: Lease,
    agg: Aggregate | None = None,
    started_at: float = NOW - 1e6,
    paused: bool = False,
) -> PoolState:
    return PoolState(
        pool=POOL,
        aggregate=agg or aggregate(),
        started_at=started_at,
        leases=leases,
        paused=paused,
    )


def ask(node: int | str = 0, capacity: float = 1.0, **kw: float | bool) -> Ask:
    return Ask(node=node, capacity=capacity, **kw)  # type: ignore[arg-type]


def checked(state: PoolState, a: Ask, now: float, config: PolicyConfig) -> Decision:
    """``decide``, after checking that the sequence and batch forms say exactly the same."""
    d = decide(state, a, now, config)
    decisions, after = decide_sequence(state, [a], now, config)
    assert decisions == (d if d.granted else replace(d, queue_position=1),)
    if d.lease is not None and d.reason != "existing-lease":
        assert after == state.expire(now).add(d.lease)
    if all(isinstance(node, int) for node in [a.node, *(le.node for le in state.leases)]):
        result, batch_state = decide_batch(
            PoolArrays.from_state(state), AskBatch.from_asks([a]), now, config
        )
        assert_same(decisions, after, result, batch_state)
    return d


def assert_refused(d: Decision, reason: str, retry_after: float, gate: str = GATE_CAPACITY) -> None:
    assert (d.granted, d.reason, d.gate, d.lease) == (False, reason, gate, None)
    assert d.retry_after == retry_after


def assert_same(
    decisions: tuple[Decision, ...],
    after: PoolState,
    result: BatchResult,
    batch_state: PoolArrays,
) -> None:
    assert len(decisions) == len(result.granted)
    for i, d in enumerate(decisions):
        row = (
            bool(result.granted[i]),
            REASONS[int(result.reason[i])],
            float(result.retry_after[i]),
            int(result.queue_position[i]),
            float(result.expires[i]),
        )
        want = (
            d.granted,
            d.reason,
            math.nan if d.retry_after is None else d.retry_after,
            d.queue_position or 0,
            d.lease.expires if d.lease else math.nan,
        )
        assert row[:2] == want[:2], (i, row, want)
        assert row[3] == want[3], (i, row, want)
        for got, expected in ((row[2], want[2]), (row[4], want[4])):
            assert got == expected or (math.isnan(got) and math.isnan(expected)), (i, row, want)
    assert batch_state.to_state() == after


# -- grants -----------------------------------------------------------------------------


def test_grant_is_a_lease_for_one_ttl() -> None:
    d = checked(pool(), ask(1, 5.0), NOW, PolicyConfig())
    assert (d.granted, d.reason, d.gate, d.retry_after, d.queue_position) == (
        True,
        "granted",
        GATE_CAPACITY,
        None,
        None,
    )
    assert d.lease == Lease(node=1, pool=POOL, capacity=5.0, expires=NOW + 300.0)


def test_headroom_rule_is_designs_with_one_replica() -> None:
    """L <= u * (C - cap(A) - c): C=100, L=40, u=0.8 leaves 50 to take away."""
    cfg = ROOMY
    assert checked(pool(), ask(capacity=50.0), NOW, cfg).granted
    assert_refused(
        checked(pool(), ask(capacity=50.5), NOW, cfg), "no-spare-capacity", cfg.base_retry
    )
    busy = pool(lease(10, 20.0, expires=NOW + 30.0))
    assert checked(busy, ask(capacity=30.0), NOW, cfg).granted
    # Refused until the lease that holds the capacity lapses (30 s < base retry 60 s).
    assert_refused(checked(busy, ask(capacity=30.5), NOW, cfg), "no-spare-capacity", 30.0)


def test_the_nodes_own_load_is_a_floor_on_the_pool_load() -> None:
    """An aggregate that has not caught up (L = 0) cannot wave a busy node through."""
    unconverged = pool(agg=aggregate(load=0.0))
    assert checked(unconverged, ask(capacity=50.0, load=40.0), NOW, ROOMY).granted
    d = checked(unconverged, ask(capacity=50.5, load=40.0), NOW, ROOMY)
    assert d.reason == "no-spare-capacity"


def test_capacity_share_splits_headroom_between_replicas() -> None:
    """n=2, q=1: each replica may give away half of the 50 spare."""
    cfg = PolicyConfig(max_concurrent=100, min_serving=0, replicas=2, quorum=1, churn_margin=0.0)
    assert cfg.capacity_share == 0.5
    assert checked(pool(), ask(capacity=25.0), NOW, cfg).granted
    assert checked(pool(), ask(capacity=25.5), NOW, cfg).reason == "no-spare-capacity"


# -- refusals, one reason each ------------------------------------------------------------


def test_min_serving() -> None:
    """S=5, min_serving=3: one node may be away, a second would leave only 3-1."""
    cfg = PolicyConfig(max_concurrent=100, min_serving=3)
    small = aggregate(serving=5)
    assert checked(pool(agg=small), ask(), NOW, cfg).granted
    assert checked(pool(lease(10), agg=small), ask(), NOW, cfg).granted
    d = checked(pool(lease(10), lease(11, expires=NOW + 500), agg=small), ask(), NOW, cfg)
    assert_refused(d, "min-serving", 60.0)


def test_lease_budget_and_retry_until_the_earliest_expiry() -> None:
    cfg = PolicyConfig(max_concurrent=2, min_serving=0)
    full = pool(lease(10, expires=NOW + 10.0), lease(11, expires=NOW + 500.0))
    assert_refused(checked(full, ask(), NOW, cfg), "lease-budget", 10.0)
    # Clamped into [min_retry, base_retry].
    soon = pool(lease(10, expires=NOW + 0.25), lease(11))
    assert_refused(checked(soon, ask(), NOW, cfg), "lease-budget", cfg.min_retry)
    later = pool(lease(10, expires=NOW + 290.0), lease(11, expires=NOW + 299.0))
    assert_refused(checked(later, ask(), NOW, cfg), "lease-budget", cfg.base_retry)


def test_paused_by_the_breaker_refuses_even_force() -> None:
    cfg = PolicyConfig()
    paused = pool(paused=True)
    for a in (ask(), ask(force=True)):
        assert_refused(checked(paused, a, NOW, cfg), "paused", cfg.paused_retry, gate="breaker")


def test_restarted_replica_grants_nothing_for_one_ttl() -> None:
    cfg = PolicyConfig()
    fresh = pool(started_at=NOW - 300.0)
    for a in (ask(), ask(force=True)):
        assert_refused(checked(fresh, a, NOW - 100.0, cfg), "replica-warmup", 100.0)
    assert checked(fresh, ask(), NOW, cfg).granted


def test_stale_aggregate_refuses_but_not_force() -> None:
    cfg = PolicyConfig()
    old = pool(agg=aggregate(as_of=NOW - cfg.aggregate_max_age - 0.5))
    assert_refused(checked(old, ask(), NOW, cfg), "aggregate-stale", cfg.base_retry)
    assert checked(pool(agg=aggregate(as_of=NOW - cfg.aggregate_max_age)), ask(), NOW, cfg).granted
    assert checked(old, ask(force=True), NOW, cfg).reason == "forced"


def test_force_skips_the_capacity_gate() -> None:
    cfg = PolicyConfig(max_concurrent=1, min_serving=10)
    hopeless = pool(lease(10), agg=aggregate(capacity=1.0, load=1.0, serving=2))
    assert checked(hopeless, ask(capacity=50.0), NOW, cfg).reason == "lease-budget"
    d = checked(hopeless, ask(capacity=50.0, force=True), NOW, cfg)
    assert (d.granted, d.reason) == (True, "forced")
    assert d.lease is not None and d.lease.forced


def test_emergency_budget_is_one_concurrent_forced_lease() -> None:
    cfg = PolicyConfig()
    one = pool(lease(10, forced=True, expires=NOW + 42.0), lease(11, expires=NOW + 5.0))
    assert_refused(checked(one, ask(force=True), NOW, cfg), "emergency-budget", 42.0)
    # Ordinary leases never use up the emergency budget.
    ordinary = pool(*(lease(i) for i in range(10, 19)))
    assert checked(ordinary, ask(force=True), NOW, cfg).reason == "forced"
    none = PolicyConfig(emergency_budget=0)
    assert checked(pool(), ask(force=True), NOW, none).reason == "emergency-budget"


def test_forced_leases_count_as_departures_for_everyone_else() -> None:
    cfg = ROOMY
    forced = pool(lease(10, capacity=40.0, forced=True))
    assert checked(forced, ask(capacity=10.0), NOW, cfg).granted
    assert checked(forced, ask(capacity=10.5), NOW, cfg).reason == "no-spare-capacity"


def test_reasons_come_in_a_fixed_order() -> None:
    """Paused before warm-up before stale before budget: the most fundamental first."""
    cfg = PolicyConfig(max_concurrent=1)
    everything = pool(
        lease(10),
        agg=aggregate(capacity=0.0, serving=0, as_of=NOW - 1e4),
        started_at=NOW,
        paused=True,
    )
    expected = ["paused", "replica-warmup", "aggregate-stale", "lease-budget"]
    for reason in expected:
        assert checked(everything, ask(), NOW, cfg).reason == reason
        if reason == "paused":
            everything = replace(everything, paused=False)
        elif reason == "replica-warmup":
            everything = replace(everything, started_at=NOW - 1e6)
        elif reason == "aggregate-stale":
            everything = everything.with_aggregate(replace(everything.aggregate, as_of=NOW))
    everything = everything.end_lease(10)
    assert checked(everything, ask(), NOW, cfg).reason == "min-serving"


# -- leases -----------------------------------------------------------------------------


def test_expired_leases_hold_nothing() -> None:
    cfg = PolicyConfig(max_concurrent=1, min_serving=0)
    lapsed = pool(lease(10, 1e6, expires=NOW), lease(11, forced=True, expires=NOW - 1.0))
    assert checked(lapsed, ask(), NOW, cfg).granted
    assert checked(lapsed, ask(force=True), NOW, cfg).granted
    assert checked(lapsed, ask(), NOW - 0.5, cfg).reason == "lease-budget"
    assert lapsed.expire(NOW).leases == ()
    assert lapsed.expire(NOW - 0.5).leases == (lease(10, 1e6, expires=NOW),)


def test_a_reask_gets_the_same_lease_back() -> None:
    """The answer was lost: the node gets its lease again and is not counted twice."""
    cfg = PolicyConfig(max_concurrent=1)
    held = pool(lease(1, 7.0, expires=NOW + 12.0), paused=True)
    d = checked(held, ask(1, 7.0), NOW, cfg)
    assert (d.granted, d.reason, d.lease) == (True, "existing-lease", held.leases[0])
    _, after = decide_sequence(held, [ask(1, 7.0)], NOW, cfg)
    assert after.leases == held.leases


def test_rejoined_ends_the_lease_early() -> None:
    cfg = PolicyConfig(max_concurrent=1)
    held = pool(lease(1))
    assert checked(held, ask(2), NOW, cfg).reason == "lease-budget"
    assert checked(held.end_lease(1), ask(2), NOW, cfg).granted
    assert held.end_lease(99) is held


def test_add_replaces_a_lapsed_lease_of_the_same_node() -> None:
    state = pool(lease(1, expires=NOW - 1.0), lease(2))
    new = lease(1, 3.0, expires=NOW + 300.0)
    assert state.add(new).leases == (lease(2), new)
    grown = pool(lease(2, 0.1)).add(lease(3, 0.2)).add(lease(4, 0.3, forced=True))
    rebuilt = pool(lease(2, 0.1), lease(3, 0.2), lease(4, 0.3, forced=True))
    assert grown == rebuilt and grown.usage(NOW) == rebuilt.usage(NOW)
    assert grown.lease_of(4, NOW) == lease(4, 0.3, forced=True)
    with pytest.raises(ValueError, match="pool"):
        grown.add(replace(lease(5), pool="other"))
    with pytest.raises(ValueError, match="two leases"):
        pool(lease(1), lease(1))
    with pytest.raises(ValueError, match="pool"):
        PoolState(pool="other", aggregate=aggregate(), started_at=0.0, leases=(lease(1),))


# -- quorum: the global budget holds however nodes pick replicas ---------------------------

QUORUM = PolicyConfig(replicas=3, quorum=2, max_concurrent=4, min_serving=0)
PAIRS = list(itertools.combinations(range(3), 2))


def ranked(config: PolicyConfig) -> list[PolicyConfig]:
    """The ``n`` replicas' configurations: the same knobs, each its own rank."""
    return [replace(config, rank=r) for r in range(config.replicas)]


def test_quorum_shares() -> None:
    """The least share of any pool (``floor((q(K+1)-1)/n)``) and the deal's extra units."""
    assert (QUORUM.lease_share, QUORUM.emergency_share, QUORUM.capacity_share) == (3, 1, 2 / 3)
    assert PolicyConfig().lease_share == 10 and PolicyConfig().emergency_share == 1
    assert PolicyConfig(replicas=3, quorum=2, emergency_budget=2).emergency_share == 1
    assert PolicyConfig(replicas=3, quorum=2, emergency_budget=0).emergency_share == 0
    assert PolicyConfig(replicas=5, quorum=3, emergency_budget=1).emergency_share == 1
    # (n, q, K) -> the shares by distance from the pool's start: U = q(K+1)-1 units.
    for (n, q, k), shares in {
        (3, 2, 1): [1, 1, 1],  # was floor(2/3) = 0 everywhere
        (3, 1, 1): [1, 0, 0],
        (5, 2, 1): [1, 1, 1, 0, 0],
        (3, 2, 4): [3, 3, 3],
        (2, 2, 1): [2, 1],
        (1, 1, 7): [7],
        (3, 2, 0): [0, 0, 0],
        (3, 2, -2): [0, 0, 0],
    }.items():
        configs = ranked(PolicyConfig(replicas=n, quorum=q))
        assert [policy.replica_share(k, 0, c) for c in configs] == shares, (n, q, k)
        # Another pool starts the deal elsewhere: the same shares, rotated.
        assert [policy.replica_share(k, 1, c) for c in configs] == shares[-1:] + shares[:-1]


def test_quorum_never_exceeds_the_global_budget_for_any_choice_of_replicas() -> None:
    """Every way 7 nodes can each pick 2 of 3 replicas: at most 4 tokens, ever -- and
    the budget is usable: 3 leases per replica (9 units), 4 tokens."""
    agg = aggregate(capacity=1e6, load=0.0, serving=100)
    configs = ranked(QUORUM)
    most = 0
    for choice in itertools.product(PAIRS, repeat=7):
        replicas = [pool(agg=agg) for _ in range(3)]
        tokens = 0
        for node, pair in enumerate(choice):
            grants = []
            for r in pair:
                d = decide(replicas[r], ask(node), NOW, configs[r])
                if d.lease is not None:
                    replicas[r] = replicas[r].add(d.lease)
                    grants.append(r)
            tokens += len(grants) == QUORUM.quorum
        assert tokens <= QUORUM.max_concurrent
        most = max(most, tokens)
    assert most == 4


Event = tuple[str, int, int, float, bool]


@st.composite
def quorum_runs(draw: st.DrawFn) -> tuple[PolicyConfig, Aggregate, list[Event]]:
    n = draw(st.integers(1, 4))
    q = draw(st.integers(1, n))
    config = PolicyConfig(
        replicas=n,
        quorum=q,
        max_concurrent=draw(st.integers(1, 5)),
        min_serving=draw(st.sampled_from([0, 4, 5, 6])),
        emergency_budget=draw(st.integers(0, 2)),
        aggregate_max_age=math.inf,
    )
    # Small pools too (S - min_serving of 1 or 2), where one node is most of the headroom.
    agg = Aggregate(
        capacity=draw(st.sampled_from([10.0, 6.0, 100.0])),
        load=draw(st.sampled_from([0.0, 4.0])),
        serving=draw(st.sampled_from([6, 7, 12, 50])),
        as_of=0.0,
    )
    event = st.one_of(
        st.tuples(
            st.just("ask"),
            st.integers(0, 7),
            st.integers(0, 5),
            st.sampled_from([1.0, 2.0, 3.0]),
            st.sampled_from([False] * 4 + [True]),
        ),
        st.tuples(
            st.just("ask"),
            st.integers(0, 7),
            st.integers(0, 5),
            st.sampled_from([1.0, 2.0, 3.0]),
            st.just(False),
        ),
        st.tuples(st.just("rejoin"), st.integers(0, 7), st.just(0), st.just(0.0), st.just(False)),
        st.tuples(
            st.just("tick"), st.just(0), st.just(0), st.sampled_from([1.0, 150.0]), st.just(False)
        ),
        st.tuples(st.just("restart"), st.just(0), st.integers(0, 3), st.just(0.0), st.just(False)),
    )
    return config, agg, draw(st.lists(event, max_size=50))


@FAST
@given(quorum_runs())
def test_quorum_tokens_stay_within_every_global_limit(
    run: tuple[PolicyConfig, Aggregate, list[Event]],
) -> None:
    """Any n, q; replicas that restart, nodes that rejoin or lapse: tokens stay in bounds.

    Each replica has its own rank (``ranked``), as the service gives it.  A token exists once a node holds grants from q replicas; it lives until the node
    rejoins or the earliest of its leases lapses, even if a replica that signed it
    restarts and forgets (warm-up covers that).  Tokens made of unforced leases stay
    within ``max_concurrent``, ``S - min_serving`` and ``L <= u * (C - cap)``; tokens made
    of forced leases within ``emergency_budget``.
    """
    config, agg, events = run
    configs = ranked(config)
    subsets = list(itertools.combinations(range(config.replicas), config.quorum))
    now = config.lease_ttl * 10
    replicas = [
        PoolState(pool=POOL, aggregate=agg, started_at=-math.inf) for _ in range(config.replicas)
    ]
    tokens: dict[int, tuple[Lease, ...]] = {}  # node -> the q leases behind its token
    for kind, node, which, amount, force in events:
        if kind == "tick":
            now += amount
        elif kind == "restart":
            replicas[which % config.replicas] = PoolState(pool=POOL, aggregate=agg, started_at=now)
        elif kind == "rejoin":
            tokens.pop(node, None)
            replicas = [r.end_lease(node) for r in replicas]
        elif node not in tokens or not all(le.active(now) for le in tokens[node]):
            grants = []
            for r in subsets[which % len(subsets)]:
                d = decide(replicas[r], ask(node, amount, force=force), now, configs[r])
                if d.lease is not None:
                    if d.reason != "existing-lease":
                        replicas[r] = replicas[r].add(d.lease)
                    grants.append(d.lease)
            if len(grants) == config.quorum:
                tokens[node] = tuple(grants)
        live = [t for t in tokens.values() if all(le.active(now) for le in t)]
        unforced = [t[0].capacity for t in live if not any(le.forced for le in t)]
        forced = [t for t in live if all(le.forced for le in t)]
        assert len(unforced) <= config.max_concurrent
        assert len(unforced) <= max(0, agg.serving - config.min_serving)
        spare = agg.capacity - agg.load / config.utilization
        assert not unforced or sum(unforced) <= spare * (1 + 1e-12)
        assert len(forced) <= config.emergency_budget
        assert len(live) <= config.max_concurrent + config.emergency_budget


def test_a_restarted_replica_cannot_grant_twice() -> None:
    """The reason for warm-up: after a restart the replica has forgotten A's lease."""
    cfg = PolicyConfig(max_concurrent=1, min_serving=0, aggregate_max_age=math.inf)
    replica = pool(started_at=-math.inf)
    first = checked(replica, ask(1), NOW, cfg)
    assert first.lease is not None
    restarted = pool(started_at=NOW + 10.0)  # empty: it cannot know about node 1
    assert checked(restarted, ask(2), NOW + 20.0, cfg).reason == "replica-warmup"
    # By the end of warm-up every lease it could have granted before has lapsed.
    assert first.lease.expires <= NOW + 10.0 + cfg.lease_ttl
    assert checked(restarted, ask(2), NOW + 10.0 + cfg.lease_ttl, cfg).granted


# -- configuration, breaker, decisions -----------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "match"),
    [
        ({"utilization": 0.0}, "utilization"),
        ({"utilization": 1.5}, "utilization"),
        ({"quorum": 2}, "quorum"),
        ({"quorum": 0}, "quorum"),
        ({"replicas": 3, "rank": 3}, "rank"),
        ({"rank": -1}, "rank"),
        ({"rank": True}, "int"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": 999_999_999_999}, "max_concurrent must be <= "),
        ({"min_serving": -1}, "min_serving"),
        ({"lease_ttl": 0.0}, "lease_ttl"),
        ({"lease_ttl": math.inf}, "lease_ttl"),
        ({"min_retry": 100.0}, "min_retry"),
        ({"emergency_budget": -1}, "emergency_budget"),
        ({"breaker_failure_share": 0.0}, "breaker_failure_share"),
        ({"max_concurrent": 2.5}, "int"),
        ({"min_serving": True}, "int"),
        ({"utilization": math.nan}, "number"),
    ],
)
def test_config_validation(knobs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PolicyConfig(**knobs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attempted", "threshold"),
    [(0, 2), (1, 2), (40, 2), (41, 3), (60, 3), (100, 5), (101, 6), (1000, 50)],
)
def test_breaker_threshold_is_the_larger_of_2_nodes_and_5_percent(
    attempted: int, threshold: int
) -> None:
    cfg = PolicyConfig()
    assert breaker_threshold(attempted, cfg) == threshold
    assert not breaker_tripped(threshold - 1, attempted, cfg)
    assert breaker_tripped(threshold, attempted, cfg)


def test_breaker_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        breaker_tripped(-1, 10, PolicyConfig())
    with pytest.raises(ValueError):
        breaker_threshold(-1, PolicyConfig())


def test_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Aggregate(capacity=-1.0, load=0.0, serving=1, as_of=0.0)
    with pytest.raises(ValueError, match="serving"):
        Aggregate(capacity=1.0, load=0.0, serving=-1, as_of=0.0)
    with pytest.raises(ValueError, match="load"):
        Ask(node=1, capacity=1.0, load=math.nan)
    with pytest.raises(ValueError, match="capacity"):
        Lease(node=1, pool=POOL, capacity=math.inf, expires=0.0)
    assert isinstance(Aggregate(capacity=3, load=1, serving=1, as_of=0).capacity, float)


def test_decisions_are_consistent_and_read_like_gate_results() -> None:
    with pytest.raises(ValueError, match="contradicts"):
        Decision(granted=True, reason="paused", lease=lease("a"))
    with pytest.raises(ValueError, match="lease"):
        Decision(granted=True, reason="granted")
    with pytest.raises(ValueError, match="unknown"):
        Decision(granted=False, reason="nope")
    refused = decide(pool(paused=True), ask(), NOW, PolicyConfig())
    result = refused.to_gate_result()
    assert (result.ok, result.gate, result.reason, result.retry_after) == (
        False,
        "breaker",
        "paused",
        3600.0,
    )
    granted = decide(pool(), ask(force=True), NOW, PolicyConfig()).to_gate_result()
    assert granted.ok and "forced" in granted.detail
    assert [REASON_CODES[r] for r in REASONS] == list(range(len(REASONS)))


#: What a pure policy module must never import: clocks, randomness, sockets, the OS.
IO_MODULES = {"trio", "asyncio", "socket", "sqlite3", "time", "random", "os"}
PURE_STDLIB = {
    "__future__",
    "math",
    "collections",
    "dataclasses",
    "fractions",
    "hashlib",
    "typing",
}


def imported_top_levels(path: Path) -> set[str]:
    """Top-level packages a module imports, anywhere in it (relative imports count as
    ``coordinator``, the package they resolve into)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                imported.add("coordinator")
            elif node.module:
                imported.add(node.module.split(".")[0])
    return imported


def test_policy_does_no_io() -> None:
    """Pure: time and config are arguments (README "Architecture"); no clock, RNG, socket or
    OS, and no numpy either (the batch form's, so the service can decide without it)."""
    imported = imported_top_levels(Path(policy.__file__))
    assert not imported & IO_MODULES
    assert imported <= PURE_STDLIB | {"p2pupdate"}


@pytest.mark.parametrize("module", ["coordinator.policy", "coordinator.service"])
def test_deciding_an_ask_does_not_import_numpy(module: str) -> None:
    """At run time too, for the rule and the service that calls it (a fresh interpreter:
    this one has numpy loaded already)."""
    probe = f"import {module}, sys; assert 'numpy' not in sys.modules, 'numpy imported'"
    subprocess.run([sys.executable, "-c", probe], check=True, cwd=Path(__file__).parents[2])
