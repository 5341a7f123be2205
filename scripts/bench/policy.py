"""Benchmark the capacity policy; prints one JSON object.

    .venv/bin/python scripts/bench/policy.py [--ticks N] [--nodes N] [--asks M] [--seed S]

Runs ``decide_batch`` tick after tick (60 s apart) against one pool of ``--nodes``
nodes, ``--asks`` asks per tick (17,000 ~ 10^6 nodes asking once an hour... or retrying
every minute), carrying the lease state from tick to tick; nodes rejoin (ending their
lease) 90 s after their grant.  Only the ``decide_batch`` calls are timed.  Scenarios:

* ``budget_bound``: plenty of spare capacity, the lease budget (1% of nodes) binds;
  ask times unsorted, so every batch pays for its sort.
* ``budget_bound_sorted``: the same with asks already in time order (no sort).
* ``capacity_bound``: spare capacity for ~2,000 average nodes and a large lease budget,
  so capacity binds and mixed node sizes take several admission rounds.

Then sequential ``decide`` (``decide_sequence``, the service's path) over one tick's
asks from a mid-run state, checked answer for answer against ``decide_batch``.
``sim_week_policy_s`` extrapolates the median batch to 7 days of 60 s ticks (10,080).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import replace
from typing import Any

import numpy as np

from coordinator.policy import Aggregate, Ask, PolicyConfig, decide_sequence
from coordinator.policy_batch import AskBatch, PoolArrays, decide_batch

TICK = 60.0
SWAP_SECONDS = 90.0
TICKS_PER_WEEK = 7 * 24 * 60


def make_asks(
    rng: np.random.Generator, caps: np.ndarray, m: int, now: float, *, sort: bool
) -> AskBatch:
    nodes = np.unique(rng.integers(0, len(caps), int(m * 1.01)))[:m]
    rng.shuffle(nodes)
    times = now - rng.uniform(0.0, TICK, len(nodes))
    if sort:
        times.sort()
    return AskBatch(
        node=nodes,
        capacity=caps[nodes],
        load=caps[nodes] * rng.uniform(0.0, 0.8, len(nodes)),
        force=rng.random(len(nodes)) < 1e-4,
        time=times,
        check=False,  # distinct by construction (np.unique)
    )


def run(
    name: str,
    *,
    caps: np.ndarray,
    load_share: float,
    spare_units: float | None,
    config: PolicyConfig,
    ticks: int,
    asks: int,
    seed: int,
    sort: bool,
) -> tuple[dict[str, Any], PoolArrays, AskBatch, float]:
    rng = np.random.default_rng(seed)
    total = float(caps.sum())
    load = load_share * total if spare_units is None else 0.8 * (total - spare_units)
    now = 1_000_000.0
    state = PoolArrays(
        pool=name,
        aggregate=Aggregate(capacity=total, load=load, serving=len(caps), as_of=now),
        started_at=0.0,
    )
    seconds, rounds, grants = [], [], []
    mid: tuple[PoolArrays, AskBatch, float] | None = None
    for tick in range(ticks):
        now += TICK
        rejoined = state.leases.node[state.leases.expires - config.lease_ttl <= now - SWAP_SECONDS]
        state = state.end_leases(rejoined)
        state = state.with_aggregate(replace(state.aggregate, as_of=now))
        batch = make_asks(rng, caps, asks, now, sort=sort)
        if tick == ticks // 2:
            mid = (state, batch, now)
        start = time.perf_counter()
        result, state = decide_batch(state, batch, now, config)
        seconds.append(time.perf_counter() - start)
        rounds.append(result.rounds)
        grants.append(int(result.granted.sum()))
    assert mid is not None
    median = statistics.median(seconds)
    out = {
        "batches": ticks,
        "asks_per_batch": asks,
        "median_ms": round(median * 1e3, 3),
        "p90_ms": round(float(np.quantile(seconds, 0.9)) * 1e3, 3),
        "asks_per_s": round(asks / median),
        "rounds_mean": round(statistics.mean(rounds), 2),
        "rounds_max": max(rounds),
        "grants_per_batch_mean": round(statistics.mean(grants), 1),
        "leases_at_end": len(state.leases),
        "sim_week_policy_s": round(median * TICKS_PER_WEEK, 1),
    }
    return out, *mid


def sequential(
    state: PoolArrays, batch: AskBatch, now: float, config: PolicyConfig
) -> dict[str, Any]:
    pool = state.to_state()
    asks = [
        Ask(node=int(n), capacity=float(c), load=float(ld), force=bool(f), time=float(t))
        for n, c, ld, f, t in zip(
            batch.node, batch.capacity, batch.load, batch.force, batch.time, strict=True
        )
    ]
    start = time.perf_counter()
    decisions, after = decide_sequence(pool, asks, now, config)
    elapsed = time.perf_counter() - start
    result, batch_state = decide_batch(state, batch, now, config)
    same = [d.granted for d in decisions] == result.granted.tolist() and [
        d.retry_after for d in decisions if not d.granted
    ] == result.retry_after[~result.granted].tolist()
    same = same and batch_state.to_state() == after
    return {
        "asks": len(asks),
        "leases_before": len(state.leases),
        "asks_per_s": round(len(asks) / elapsed),
        "matches_batch": same,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=200, help="batches per scenario")
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--asks", type=int, default=17_000, help="asks per batch")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    caps = np.random.default_rng(args.seed).uniform(0.5, 1.5, args.nodes)
    common = {"caps": caps, "ticks": args.ticks, "asks": args.asks, "seed": args.seed}
    budget = PolicyConfig(max_concurrent=args.nodes // 100, min_serving=args.nodes // 2)
    roomy = PolicyConfig(max_concurrent=args.nodes // 10, min_serving=args.nodes // 2)

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "nodes": args.nodes,
    }
    res, state, batch, now = run(
        "budget", load_share=0.6, spare_units=None, config=budget, sort=False, **common
    )
    out["budget_bound"] = res
    out["budget_bound_sorted"], *_ = run(
        "sorted", load_share=0.6, spare_units=None, config=budget, sort=True, **common
    )
    out["capacity_bound"], *_ = run(
        "capacity", load_share=0.0, spare_units=2_000.0, config=roomy, sort=False, **common
    )
    out["sequential_decide"] = sequential(state, batch, now, budget)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
