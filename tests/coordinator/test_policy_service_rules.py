"""The rules the service used to hold itself: median aggregate, breaker cycle, gate 1-2 waits.

Each is a pure function of ``coordinator.policy`` now; these tests pin their behaviour
(the service tests prove the service still calls them the same way).
"""

from __future__ import annotations

import math

import pytest

from coordinator import policy
from coordinator.cli import build_parser
from coordinator.service import ServiceConfig

CONFIG = policy.PolicyConfig()


def est(as_of: float, capacity: float, load: float, serving: int) -> policy.Estimate:
    return policy.Estimate(as_of=as_of, capacity=capacity, load=load, serving=serving)


def test_the_median_aggregate_ignores_a_lying_minority() -> None:
    honest = [
        est(99.0, 1000.0, 500.0, 40),
        est(98.0, 1010.0, 490.0, 41),
        est(97.0, 990.0, 510.0, 39),
    ]
    liars = [est(100.0, 1e9, 0.0, 100_000), est(100.0, 1e9, 0.0, 100_000)]
    agg = policy.median_aggregate(honest + liars, 100.0, CONFIG)
    assert (agg.capacity, agg.load, agg.serving, agg.as_of) == (1010.0, 490.0, 41, 99.0)


def test_the_median_aggregate_serving_is_a_count_someone_saw() -> None:
    agg = policy.median_aggregate([est(0.0, 1.0, 0.0, 4), est(0.0, 1.0, 0.0, 7)], 0.0, CONFIG)
    assert agg.serving == 4  # the lower median, not 5.5


def test_the_median_aggregate_drops_stale_and_keeps_only_the_freshest() -> None:
    now = 1000.0
    stale = [est(now - CONFIG.aggregate_max_age - 1, 5.0, 5.0, 5)]
    assert policy.median_aggregate(stale, now, CONFIG) == policy.Aggregate(
        capacity=0.0, load=0.0, serving=0, as_of=now - CONFIG.aggregate_max_age - 1.0
    )
    assert policy.median_aggregate([], now, CONFIG).as_of < now - CONFIG.aggregate_max_age
    # FRESHEST newest reports say 2.0; older ones (still fresh) say 1.0 and are not counted
    newest = [est(now - i * 0.01, 2.0, 0.0, 1) for i in range(policy.FRESHEST)]
    older = [est(now - 10.0 - i, 1.0, 0.0, 1) for i in range(policy.FRESHEST + 5)]
    assert policy.median_aggregate(older + newest, now, CONFIG).capacity == 2.0


def test_an_estimate_is_checked_on_construction() -> None:
    with pytest.raises(ValueError):
        est(0.0, -1.0, 0.0, 1)
    with pytest.raises(ValueError):
        est(0.0, 1.0, math.inf, 1)
    with pytest.raises(ValueError):
        est(math.nan, 1.0, 0.0, 1)
    with pytest.raises(ValueError):
        est(0.0, 1.0, 0.0, -1)


def test_the_breaker_trips_once_at_the_threshold() -> None:
    args = {"artifact": "ab" * 32, "attempted": 10, "last_reason": "crash", "config": CONFIG}
    assert policy.breaker_pause_reason(failures=1, paused=False, **args) is None  # type: ignore[arg-type]
    reason = policy.breaker_pause_reason(failures=2, paused=False, **args)  # type: ignore[arg-type]
    assert reason == (
        f"circuit breaker: 2 of 10 nodes that moved to {'ab' * 8}... failed (threshold 2); "
        "last: crash"
    )
    assert policy.breaker_pause_reason(failures=3, paused=True, **args) is None  # type: ignore[arg-type]
    wide = {**args, "attempted": 100}
    assert policy.breaker_pause_reason(failures=4, paused=False, **wide) is None  # type: ignore[arg-type]
    assert policy.breaker_pause_reason(failures=5, paused=False, **wide) is not None  # type: ignore[arg-type]


def test_the_breaker_resumes_only_on_a_newer_scope() -> None:
    assert policy.breaker_resumes(paused=True, paused_at_serial=3, scope_serial=4)
    assert not policy.breaker_resumes(paused=True, paused_at_serial=3, scope_serial=3)
    assert not policy.breaker_resumes(paused=True, paused_at_serial=3, scope_serial=2)
    assert not policy.breaker_resumes(paused=False, paused_at_serial=3, scope_serial=9)


def test_gate_1_2_refusals_wait_by_kind() -> None:
    assert policy.document_retry(policy.NO_DOCUMENT, CONFIG) == CONFIG.base_retry == 60.0
    assert policy.document_retry(policy.DOCUMENT_CHANGED, CONFIG) == CONFIG.min_retry == 1.0
    assert policy.document_retry(policy.HELD_BY_DOCUMENT, CONFIG) == CONFIG.held_retry == 300.0
    custom = policy.PolicyConfig(held_retry=30.0)
    assert policy.document_retry(policy.HELD_BY_DOCUMENT, custom) == 30.0
    with pytest.raises(ValueError):
        policy.document_retry("other", CONFIG)
    with pytest.raises(ValueError):
        policy.PolicyConfig(held_retry=0.0)


def test_serve_defaults_are_the_dataclass_defaults() -> None:
    args = build_parser().parse_args(["serve", "--dir", "x"])
    config = ServiceConfig(network_dir=args.dir)
    assert (args.lease_ttl, args.max_skew) == (config.token_ttl, config.max_skew)
    assert args.max_concurrent == CONFIG.max_concurrent
    assert args.min_serving == CONFIG.min_serving
    assert args.utilization == CONFIG.utilization
    assert args.emergency_budget == CONFIG.emergency_budget
    assert args.aggregate_max_age == CONFIG.aggregate_max_age
    assert config.policy == CONFIG
