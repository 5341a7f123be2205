"""The lease hold a replica measures (``coordinator.policy_hold``) and the queue's wait
that uses it; ``serve --queue-retry-max / --queue-hold / --no-nudge-on-connect``.

* pure: the samples are bounded and the most recent, the median is order-free, the hold
  in force is the prior until ``HOLD_MIN_SAMPLES`` leases ended, then ``min(queue_hold,
  median)`` (floored at ``min_retry``);
* the wait: with a measured 5 s hold the node at place 12 behind 6 leases waits
  ``base_retry`` (the prior 90 s gave 180 s); the array form stays bit-identical;
* through a replica: after 8 fast leases (grant and "rejoined" within milliseconds) a node
  second in the queue behind one lease is told ``base_retry``, not ``2 x 90 s``;
* the simulator feeds the same measurement from its releases, in both engines;
* the flags build the ``PolicyConfig`` / ``ServiceConfig`` and bad values are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import policy_queue
from coordinator.cli import build_parser, serve_config
from coordinator.ice import IceConfig
from coordinator.policy import PolicyConfig
from coordinator.policy_batch import queued_retry_batch
from coordinator.policy_hold import HOLD_MIN_SAMPLES, HOLD_SAMPLES, Holds, hold_in_force, median
from simulations.policies import OursBatch, OursSequential, PoolView

from .service_helpers import LightNode, Network, ahttp, artifact_of, in_process

CONFIG = PolicyConfig()  # queue_hold 90 s, queue_retry_max 1800 s, base_retry 60 s
T = 1000.0

# -- pure ------------------------------------------------------------------------------------


def test_the_samples_are_the_most_recent_and_bounded() -> None:
    h = Holds()
    for i in range(HOLD_SAMPLES + 10):
        h = h.add(float(i))
    assert len(h.recent) == HOLD_SAMPLES
    assert h.recent == tuple(float(i) for i in range(10, HOLD_SAMPLES + 10))
    assert Holds().add(1.0, 2.0, 3.0).recent == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="more than"):
        Holds(tuple([1.0] * (HOLD_SAMPLES + 1)))


def test_a_bad_duration_is_refused_and_changes_nothing() -> None:
    h = Holds().add(5.0)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite"):
            h.add(2.0, bad)
        with pytest.raises(ValueError, match="finite"):
            Holds((bad,))
    assert h.recent == (5.0,)


def test_the_prior_holds_until_enough_leases_ended() -> None:
    h = Holds()
    for _ in range(HOLD_MIN_SAMPLES - 1):
        h = h.add(5.0)
        assert h.measured() is None and hold_in_force(h, CONFIG) == 90.0
    h = h.add(5.0)
    assert h.measured() == 5.0 and hold_in_force(h, CONFIG) == 5.0


def test_the_hold_in_force_is_at_most_the_prior_and_at_least_min_retry() -> None:
    slow = Holds().add(*[600.0] * 10)
    assert hold_in_force(slow, CONFIG) == CONFIG.queue_hold  # slow swaps keep the prior
    assert hold_in_force(slow, dataclasses.replace(CONFIG, queue_hold=900.0)) == 600.0
    instant = Holds().add(*[0.0] * 10)
    assert hold_in_force(instant, CONFIG) == CONFIG.min_retry
    # one lease stuck for its whole TTL does not move the median
    assert Holds().add(*[4.0] * 4, 7200.0, *[6.0] * 5).measured() == 6.0


def test_median_pinned() -> None:
    assert median([3.0]) == 3.0
    assert median([4.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 10.0]) == 3.0
    with pytest.raises(ValueError):
        median([])


durations = st.floats(0.0, 1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(durations, max_size=200), st.randoms(use_true_random=False))
def test_the_measure_is_bounded_and_order_free(values: list[float], rnd: object) -> None:
    h = Holds().add(*values)
    assert len(h.recent) == min(len(values), HOLD_SAMPLES)
    kept = list(h.recent)
    shuffled = kept[:]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert Holds(tuple(shuffled)).measured() == h.measured()
    if len(kept) >= HOLD_MIN_SAMPLES:
        m = h.measured()
        assert m is not None and min(kept) <= m <= max(kept)
    hold = hold_in_force(h, CONFIG)
    assert 0.0 < hold <= CONFIG.queue_hold


# -- the wait --------------------------------------------------------------------------------


def test_a_measured_five_second_hold_makes_the_wait_short() -> None:
    ends = [T + 5.0 + i for i in range(6)]  # k = 6 blocking leases
    hold = hold_in_force(Holds().add(*[5.0] * HOLD_MIN_SAMPLES), CONFIG)
    assert hold == 5.0
    # p = 12 behind k = 6: 12 x 5 / 6 = 10 -> max(base_retry, 10) = base_retry
    assert policy_queue.queued_retry(ends, 12, T, CONFIG, hold) == CONFIG.base_retry
    assert policy_queue.queued_retry(ends, 12, T, CONFIG) == 12 * 90.0 / 6  # the prior: 180
    assert policy_queue.queued_retry(ends, 600, T, CONFIG, hold) == 600 * 5.0 / 6
    assert policy_queue.queued_retry(ends, 3, T, CONFIG, hold) == 7.0  # within: unchanged
    got = queued_retry_batch(np.array(ends), np.array([3, 12, 600, 0]), T, CONFIG, hold)
    assert got.tolist() == [7.0, 60.0, 500.0, CONFIG.queue_retry_max]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(T - 10.0, T + 600.0), max_size=30).map(sorted),
    st.lists(st.integers(0, 6000), max_size=50),
    st.floats(0.5, 900.0),
)
def test_the_array_form_with_a_hold_is_bit_identical(
    ends: list[float], positions: list[int], hold: float
) -> None:
    got = queued_retry_batch(np.array(ends), np.array(positions, dtype=np.int64), T, CONFIG, hold)
    want = [policy_queue.queued_retry(ends, p or None, T, CONFIG, hold) for p in positions]
    assert got.tolist() == want


# -- through a replica -----------------------------------------------------------------------

DATA = os.urandom(3000)
TO = artifact_of(DATA)


async def test_after_fast_leases_a_queued_node_is_told_the_short_wait(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net, token_ttl=40, max_skew=0, max_concurrent=1, min_serving=0) as (
        replica,
        url,
    ):
        for data in (net.release(DATA, "v2", 2), net.allowlist(1, [TO]), net.scope(TO, serial=1)):
            assert (await ahttp("POST", f"{url}/v1/publish", data))[0] == 200
        swappers = [LightNode(net, [url]) for _ in range(HOLD_MIN_SAMPLES)]
        holder, head, second = (LightNode(net, [url]) for _ in range(3))
        async with trio.open_nursery() as nursery:
            for ln in (*swappers, holder, head, second):
                await ln.start(nursery)
                assert await ln.status() == 1
            prior = replica.policy.queue_hold
            for i, ln in enumerate(swappers):  # fast swaps: granted, rejoined at once
                assert replica.asks.policy.queue_hold == prior  # fewer than 8 ended: the prior
                granted = await ln.ask(TO)
                assert granted.token is not None, i
                assert await ln.rejoined(TO, granted.token) == 1
            measured = replica.holds.measured()
            assert measured is not None and measured < 5.0
            assert replica.asks.policy.queue_hold == max(replica.policy.min_retry, measured)
            assert replica.policy.queue_hold == prior == 90.0  # the prior is kept
            status = replica.status()["queue_hold"]
            assert status["samples"] == HOLD_MIN_SAMPLES and status["prior"] == 90.0
            assert status["in_force"] == replica.asks.policy.queue_hold

            assert (await holder.ask(TO)).token is not None
            first = await head.ask(TO)
            then = await second.ask(TO)
            assert first.position == 1 and then.position == 2
            # behind the one lease: 2 x hold / 1, hold ~1 s -> base_retry (the prior: 180 s)
            assert then.retry_after == replica.policy.base_retry == 60.0
            nursery.cancel_scope.cancel()


# -- the simulator ---------------------------------------------------------------------------


def test_the_simulator_measures_the_hold_from_its_releases() -> None:
    """Both engines time their grants and take a release before the lease lapsed as a
    sample: after 8 leases held 5 s, a node 18th behind one lease waits 18 x 5 s."""
    config = PolicyConfig(max_concurrent=1, min_serving=0)
    n = 40
    batch, seq = OursBatch(config, 1, n), OursSequential(config, 1)
    view = PoolView(capacity=1e6, load=1.0, serving=10_000, as_of=0.0, online=n, away=0)
    now = 0.0

    def ask(nodes: list[int], at: float) -> list[tuple[np.ndarray, ...]]:
        m = len(nodes)
        v = dataclasses.replace(view, as_of=at)
        args = (np.ones(m), np.full(m, 1e-3), np.zeros(m, dtype=np.bool_), np.full(m, at), at, v)
        out: list[tuple[np.ndarray, ...]] = []
        for p in (batch, seq):
            out.append(p.decide(0, np.array(nodes, dtype=np.int64), *args))
        for a, b in zip(*out, strict=True):
            assert np.array_equal(a, b, equal_nan=True)
        return out

    for node in range(HOLD_MIN_SAMPLES):
        now += 10.0
        assert bool(ask([node], now)[0][0][0])
        for p in (batch, seq):
            p.release(np.array([node], dtype=np.int64), np.zeros(1, dtype=np.int32), now + 5.0)
    assert batch.holds.hold == seq.holds.hold == 5.0
    now += 10.0
    # one lapsed lease is not a sample: granted, released after lease_ttl
    ask([20], now)
    for p in (batch, seq):
        p.release(np.array([20]), np.zeros(1, dtype=np.int32), now + config.lease_ttl + 1)
        assert len(p.holds.holds.recent) == HOLD_MIN_SAMPLES
    now += config.lease_ttl + 10.0
    granted, _codes, retry = ask([21, *range(22, 40)], now)[0]
    assert granted.tolist() == [True] + [False] * 18
    assert retry[-1] == 18 * 5.0 / 1  # the 18th behind one lease: 90 s
    assert retry[-1] < min(config.queue_retry_max, 18 * config.queue_hold)  # prior: 1620 s


# -- serve's flags ---------------------------------------------------------------------------


def parse(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--dir", "x", *flags])


def test_serve_flags_default_to_the_dataclass_defaults() -> None:
    config = serve_config(parse(), Path("x"), IceConfig())
    assert config.policy.queue_retry_max == CONFIG.queue_retry_max == 1800.0
    assert config.policy.queue_hold == CONFIG.queue_hold == 90.0
    assert config.nudge_on_connect is True


def test_serve_flags_set_the_queue_and_the_nudge() -> None:
    args = parse("--queue-retry-max", "10m", "--queue-hold", "8", "--no-nudge-on-connect")
    config = serve_config(args, Path("x"), IceConfig())
    assert (config.policy.queue_retry_max, config.policy.queue_hold) == (600.0, 8.0)
    assert config.nudge_on_connect is False
    # the effect: place 12 behind 6 leases waits 12 x 8 / 6 = 16 -> base_retry; place 300
    # 300 x 8 / 6 = 400; place 4000 (5333) is capped at 600
    ends = [T + 1.0] * 6
    waits = [policy_queue.queued_retry(ends, p, T, config.policy) for p in (12, 300, 4000)]
    assert waits == [60.0, 400.0, 600.0]
    flat = serve_config(parse("--queue-retry-max", "60"), Path("x"), IceConfig())
    assert not policy_queue.grows(flat.policy)


@pytest.mark.parametrize(
    "flags",
    [
        ("--queue-hold", "0"),
        ("--queue-hold", "2d"),
        ("--queue-retry-max", "-5"),
        ("--queue-retry-max", "soon"),
        ("--no-nudge-on-connect", "yes"),
    ],
)
def test_serve_refuses_bad_queue_flags(
    flags: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err or "unrecognized arguments: yes" in err
