"""The simulator drives the proposals' real rules (``coordinator.policy_queue``,
``policy.breaker_attempted``), and small runs show what the 100k sweep measures.

* the tick engine's array queue of refused nodes answers what the event engine's real
  ``WaitQueue`` answers (positions and ``queued_retry``), ask for ask;
* a wait that grows with the queue position cuts the asks of a long queue several times
  and updates as many nodes;
* the breaker's share of outcomes never pauses later than its share of grants, and
  pauses a bad build that the share of grants lets through.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from coordinator.policy import PolicyConfig
from simulations.config import Scenario
from simulations.model import Model
from simulations.policies import OursBatch, OursSequential, PoolView
from simulations.tick import TickEngine
from tests.simulations.test_engines import scenario


def run(s: Scenario) -> tuple[TickEngine, dict[str, Any]]:
    e = TickEngine(Model(s))
    e.run()
    return e, e.summary()


def test_the_array_queue_answers_as_the_wait_queue() -> None:
    """Rounds of asks of equal nodes against 3 leases: the tick engine's policy (array
    queue, ``queued_retry_batch``) and the event engine's (``WaitQueue``,
    ``queued_retry``) give the same grants, reasons and waits, bit for bit."""
    config = PolicyConfig(max_concurrent=3, min_serving=0, queue_retry_max=1800.0)
    n = 40
    batch, seq = OursBatch(config, 1, n), OursSequential(config, 1)
    rng = np.random.default_rng(7)
    now = 0.0
    for _ in range(30):
        now += float(rng.uniform(5.0, 200.0))
        nodes = np.sort(rng.choice(n, size=int(rng.integers(1, 12)), replace=False))
        m = len(nodes)
        times = np.sort(rng.uniform(now - 1.0, now, size=m))
        view = PoolView(capacity=1e6, load=1.0, serving=10_000, as_of=now, online=n, away=0)
        args = (np.ones(m), np.full(m, 1e-3), np.zeros(m, dtype=np.bool_), times, now, view)
        got = batch.decide(0, nodes.astype(np.int64), *args)
        want = seq.decide(0, nodes.astype(np.int64), *args)
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a, b, equal_nan=True), (now, got, want)
        done = nodes[got[0]][: int(rng.integers(0, 3))]  # some of the granted rejoin
        pools = np.zeros(len(done), dtype=np.int32)
        batch.release(done.astype(np.int64), pools, now)
        seq.release(done.astype(np.int64), pools, now)
    assert batch.queue[0].tolist() == [w.node for w in seq.queues[0].live(now).waiting]
    # the measured lease hold (``policy_hold``) the waits used is the same in both
    assert batch.holds.holds == seq.holds.holds and batch.holds.hold == seq.holds.hold


def test_a_growing_wait_cuts_the_asks_of_a_long_queue() -> None:
    common: dict[str, Any] = {"rollout": {"nudge": True}}
    flat = run(scenario(**common, policy={"max_concurrent": 5, "queue_retry_max": 60.0}))[1]
    grows = run(scenario(**common, policy={"max_concurrent": 5}))[1]  # the default
    assert grows["asks_per_s_mean"] < flat["asks_per_s_mean"] / 3
    assert grows["updated_final"] >= 0.95 * flat["updated_final"]


def test_the_share_of_outcomes_pauses_a_bad_build_sooner() -> None:
    common: dict[str, Any] = {"rollout": {"failure_probability": 0.05, "nudge": True}}
    grants = run(scenario(**common, policy={"max_concurrent": 500, "breaker_in_flight": 1.0}))
    outcomes = run(scenario(**common, policy={"max_concurrent": 500}))  # the default
    g, o = grants[1], outcomes[1]
    assert math.isfinite(o["halted_after_h"])
    assert o["halted_after_h"] <= g["halted_after_h"]  # inf: never
    assert o["blast_radius"] < g["blast_radius"]
    assert outcomes[0].outcomes_at_pause <= o["attempted_at_pause"]
