"""The simulations' proposals as rules of the real policy (simulations/README.md, P14).

* ``retry_after`` grows with the queue position (``policy_queue.queued_retry``,
  ``PolicyConfig.queue_retry_max``): pinned values, and properties -- non-decreasing in the
  position, bounded, the array form bit-identical, a queued node kept past its wait;
* the breaker's share of outcomes (``policy.breaker_attempted``,
  ``PolicyConfig.breaker_in_flight``): pinned values, the property that counting fewer
  in-flight moves never trips later, and the shell's counts (``breakers.Breakers``);
* the nudge at reconnect (``policy_signals.reconnect_nudge``): the rule, and a replica
  that pushes the nudge it holds to a node whose session opens -- only to a node in scope
  and behind, once per session, and not when switched off.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator import policy_queue, policy_signals
from coordinator.breakers import Breakers
from coordinator.policy import PolicyConfig, breaker_attempted, breaker_tripped
from coordinator.policy_batch import queued_retry_batch
from coordinator.store import AuditRow, Store
from p2pupdate.core import coordproto as proto
from p2pupdate.core import documents as docs
from p2pupdate.core.admission import Standing
from p2pupdate.core.updater import UpdaterConfig

from .service_helpers import LightNode, Network, ahttp, artifact_of, in_process

T = 1000.0
FLAT = PolicyConfig(queue_retry_max=60.0)  # no growth: every queued node within base_retry
GROWS = PolicyConfig(queue_retry_max=1800.0, queue_hold=90.0)

# -- retry_after by queue position ----------------------------------------------------------


def test_behind_the_leases_the_wait_grows_with_the_position_up_to_the_cap() -> None:
    ends = [T + 5.0, T + 30.0]  # two blocking leases
    assert policy_queue.queued_retry(ends, 1, T, GROWS) == 5.0  # within: the p-th end
    assert policy_queue.queued_retry(ends, 2, T, GROWS) == 30.0
    assert policy_queue.queued_retry(ends, 3, T, GROWS) == 3 * 90.0 / 2
    assert policy_queue.queued_retry(ends, 100, T, GROWS) == 1800.0  # capped
    # no position (the queue is full): the place after the last one
    assert policy_queue.queued_retry(ends, None, T, GROWS) == 1800.0
    assert policy_queue.queue_place(None, GROWS) == policy_queue.MAX_WAITING + 1
    # never below base_retry behind the leases (41 x 30 / 40 = 30.75 s)
    many = [T + 50.0 + i for i in range(40)]
    quick = dataclasses.replace(GROWS, queue_hold=30.0)
    assert policy_queue.queued_retry(many, 41, T, quick) == quick.base_retry
    # no lease blocks (load, min-serving): nothing says when room frees -- base_retry
    assert policy_queue.queued_retry([], 500, T, GROWS) == GROWS.base_retry


def test_without_growth_the_wait_is_as_before() -> None:
    ends = [T + 5.0, T + 30.0]
    assert [policy_queue.queued_retry(ends, p, T, FLAT) for p in (1, 2, 3, 4000)] == [
        5.0,
        30.0,
        60.0,
        60.0,
    ]
    assert policy_queue.queued_retry(ends, None, T, FLAT) == 5.0  # the head's, as before
    assert not policy_queue.grows(FLAT) and policy_queue.grows(GROWS)


def test_a_queued_node_keeps_its_place_past_the_longest_wait() -> None:
    stretched = policy_queue.longest_queued_retry(GROWS) * (1.0 + UpdaterConfig().retry_jitter)
    assert policy_queue.forget_after(GROWS) > stretched
    q, _ = policy_queue.WaitQueue().join("a", T, GROWS)
    q, _ = q.join("b", T, GROWS)
    assert q.live(T + stretched).position("b") == 2


def test_the_new_knobs_are_validated() -> None:
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="queue_retry_max"):
            PolicyConfig(queue_retry_max=bad)
        with pytest.raises(ValueError, match="queue_hold"):
            PolicyConfig(queue_hold=bad)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="breaker_in_flight"):
            PolicyConfig(breaker_in_flight=bad)


configs = st.builds(
    PolicyConfig,
    base_retry=st.floats(1.0, 300.0),
    queue_retry_max=st.floats(0.5, 7200.0),
    queue_hold=st.floats(0.5, 900.0),
)
ends_st = st.lists(st.floats(T - 10.0, T + 600.0), max_size=30).map(sorted)


@settings(max_examples=300, deadline=None)
@given(configs, ends_st, st.integers(1, 6000), st.integers(1, 6000))
def test_the_wait_is_monotone_in_the_position_and_bounded(
    config: PolicyConfig, ends: list[float], p: int, q: int
) -> None:
    lo, hi = sorted((p, q))
    a = policy_queue.queued_retry(ends, lo, T, config)
    b = policy_queue.queued_retry(ends, hi, T, config)
    assert a <= b
    assert config.min_retry <= a and b <= policy_queue.longest_queued_retry(config)


@settings(max_examples=200, deadline=None)
@given(configs, ends_st, st.lists(st.integers(0, 6000), max_size=50))
def test_the_array_form_is_bit_identical(
    config: PolicyConfig, ends: list[float], positions: list[int]
) -> None:
    got = queued_retry_batch(np.array(ends), np.array(positions, dtype=np.int64), T, config)
    want = [policy_queue.queued_retry(ends, p or None, T, config) for p in positions]
    assert got.tolist() == want


def test_the_array_form_refuses_negative_positions() -> None:
    with pytest.raises(ValueError, match="positions"):
        queued_retry_batch(np.array([T]), np.array([-1]), T, GROWS)


# -- the breaker's share of outcomes --------------------------------------------------------

OUTCOMES = PolicyConfig(breaker_in_flight=0.0)
GRANTS = PolicyConfig(breaker_in_flight=1.0)  # as before


def test_the_share_is_of_the_grants_or_of_the_outcomes() -> None:
    assert breaker_attempted(1160, 100, GRANTS) == 1160
    assert breaker_attempted(1160, 100, OUTCOMES) == 100
    assert breaker_attempted(1160, 100, PolicyConfig(breaker_in_flight=0.5)) == 100 + 530
    # 10 failures among 100 outcomes of 1160 grants: paused only by the outcomes' share
    assert not breaker_tripped(10, breaker_attempted(1160, 100, GRANTS), GRANTS)
    assert breaker_tripped(10, breaker_attempted(1160, 100, OUTCOMES), OUTCOMES)
    with pytest.raises(ValueError, match="outcomes"):
        breaker_attempted(3, 4, OUTCOMES)
    with pytest.raises(ValueError, match="granted"):
        breaker_attempted(-1, 0, OUTCOMES)


events = st.lists(st.sampled_from(("grant", "rejoin", "fail")), max_size=400)


@settings(max_examples=300, deadline=None)
@given(events, st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.01, 0.5))
def test_counting_fewer_moves_in_flight_never_trips_later(
    seq: list[str], w1: float, w2: float, share: float
) -> None:
    """Over any history of grants and outcomes, the breaker with the smaller in-flight
    weight trips at the same event or sooner (and ``attempted`` is never above grants)."""
    low, high = sorted((w1, w2))
    configs = [PolicyConfig(breaker_in_flight=w, breaker_failure_share=share) for w in (low, high)]
    granted = outcomes = failures = 0
    tripped: list[int | None] = [None, None]
    for i, event in enumerate(seq):
        if event == "grant":
            granted += 1
        elif outcomes < granted:  # an outcome ends a grant in flight
            outcomes += 1
            failures += event == "fail"
        for j, config in enumerate(configs):
            attempted = breaker_attempted(granted, outcomes, config)
            assert outcomes <= attempted <= granted
            if tripped[j] is None and failures and breaker_tripped(failures, attempted, config):
                tripped[j] = i
    if tripped[1] is not None:
        assert tripped[0] is not None and tripped[0] <= tripped[1]


A = "a" * 64


def test_the_breakers_count_outcomes_of_their_own_leases_and_read_them_back(
    tmp_path: Path,
) -> None:
    """60 nodes moved, one rejoined (under its lease's nonce), then two failed: of the 3
    outcomes the 2 failures pause the rollout, where the grants' threshold (ceil(5% of
    60) = 3) would not yet.  Reports without a lease of this replica count nothing; a
    restarted replica reads the outcomes back from its audit log."""
    store = Store(tmp_path / "db.sqlite", wall=lambda: 1000.0)

    def who(node: str) -> Standing:  # each node its own subnet: no subnet cap in the way
        third = int(node[1:]) if node[1:].isdigit() else 250
        return Standing(counted=True, subnet=f"10.0.{third}.0/24")

    breakers = Breakers(store=store, wall=lambda: 1000.0, config=OUTCOMES, who=who)
    nonces = {f"n{i}": f"n{i}".encode().ljust(16, b".") for i in range(60)}
    for node, nonce in nonces.items():
        breakers.attempted(A, node, nonce)
        detail = f"nonce {nonce.hex()} until 1300"
        store.audit(
            AuditRow(time=1000.0, event="grant", node=node, pool="", artifact=A, detail=detail)
        )
    breakers.rejoined("n0", A, nonces["n0"])
    breakers.rejoined("n1", A, b"another nonce...")  # not a lease of ours: not counted
    breakers.rejoined("stranger", A, b"x" * 16)
    breakers.rejoined("n2", "b" * 64, nonces["n2"])  # another artifact
    b = breakers.breakers[A]
    assert b.outcomes == {"n0"}
    for node in ("n0", "n3", "n4"):
        store.audit(
            AuditRow(time=1000.0, event="rejoined", node=node, pool="", artifact=A, reason="")
        )
    assert not breakers.failed("n5", A, "probation", nonce=nonces["n5"], scope_serial=1)
    assert b.outcomes == {"n0", "n5"}
    assert breakers.failed("n6", A, "probation", nonce=nonces["n6"], scope_serial=1)
    assert "2 of 3 nodes" in b.reason  # of the outcomes, not of the 60 grants
    # the grants' share would not have paused yet: 2 failures < ceil(5% of 60) = 3
    assert not breaker_tripped(2, 60, GRANTS)
    store.flush()
    again = Breakers(store=store, wall=lambda: 1001.0, config=OUTCOMES, who=who)
    # read back: the audit's rejoined (n0, n3, n4) and the failures (n5, n6), of the grants
    assert again.breakers[A].outcomes == {"n0", "n3", "n4", "n5", "n6"}
    store.close()


# -- the nudge at reconnect -----------------------------------------------------------------


def _scope(kind: str = "everyone", nodes: tuple[str, ...] = (), artifact: str = A) -> docs.Scope:
    return docs.Scope(
        serial=1,
        issued=900,
        expires=5000,
        artifact=artifact,
        kind=kind,
        nodes=nodes,
        force=False,
    )


def _nudge(artifact: str = A, expires: int = 5000) -> docs.Nudge:
    return docs.Nudge(serial=1, issued=900, expires=expires, artifact=artifact)


def test_reconnect_nudge_only_for_the_build_in_force_to_nodes_in_scope_and_behind() -> None:
    node, old = "c" * 64, "0" * 64

    def rule(**kw: object) -> bool:
        args: dict[str, object] = {
            "nudge": _nudge(),
            "scope": _scope(),
            "node": node,
            "running": old,
            "now": 1000,
        }
        args.update(kw)
        return policy_signals.reconnect_nudge(**args)  # type: ignore[arg-type]

    assert rule()
    assert not rule(nudge=None)
    assert not rule(scope=None)
    assert not rule(running=A)  # already runs the build
    assert not rule(nudge=_nudge(artifact="b" * 64))  # a nudge for another build
    assert not rule(nudge=_nudge(expires=990), now=990 + docs.SKEW + 1)  # expired
    assert not rule(scope=_scope(kind="nodes", nodes=("d" * 64,)))  # not in scope
    assert rule(scope=_scope(kind="nodes", nodes=(node,)))
    assert not rule(scope=_scope(kind="nobody"))


DATA = os.urandom(3000)
TO = artifact_of(DATA)


async def _published(net: Network, url: str) -> None:
    now = int(time.time())
    nudge = (
        docs.Nudge(serial=1, issued=now, expires=now + 600, artifact=TO)
        .sign(net.coordinator_keys())
        .to_wire()
    )
    for data in (
        net.release(DATA, "v2", 2),
        net.allowlist(1, [TO]),
        net.scope(TO, serial=1),
        nudge,
    ):
        assert (await ahttp("POST", f"{url}/v1/publish", data))[0] == 200


def _nudges(node: LightNode) -> int:
    return sum(1 for p in node.pushes if isinstance(p, proto.DocumentPush) and p.nudge)


async def test_a_replica_nudges_a_node_whose_session_opens_behind_the_build(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net) as (replica, url):
        await _published(net, url)  # nobody connected: the publication reached no one
        behind, current = LightNode(net, [url]), LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            for ln in (behind, current):
                await ln.start(nursery)
            assert await behind.status() == 1
            assert await current.status(artifact=TO) == 1
            with trio.fail_after(5):
                while _nudges(behind) == 0:
                    await trio.sleep(0.01)
            assert await behind.status(state="asking") == 1  # the same session: once
            await trio.sleep(0.1)
            assert _nudges(behind) == 1 and _nudges(current) == 0
            push = next(p for p in behind.pushes if isinstance(p, proto.DocumentPush))
            signed = behind.store.verify(docs.Nudge, push.doc, int(time.time()))
            assert signed.doc.artifact == TO  # the operator's nudge, as published
            assert replica.reconnect_nudges == 1
            assert replica.status()["reconnect_nudges"] == 1
            # a new session (a new hello replaces the connection): nudged again (the node
            # ignores a nudge it already took, by its floor)
            again = LightNode(net, [url], key=behind.key)
            await again.start(nursery)
            assert await again.status() == 1
            with trio.fail_after(5):
                while _nudges(again) == 0:
                    await trio.sleep(0.01)
            assert replica.reconnect_nudges == 2
            nursery.cancel_scope.cancel()


async def test_no_nudge_at_reconnect_when_switched_off(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net, nudge_on_connect=False) as (replica, url):
        await _published(net, url)
        node = LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await node.start(nursery)
            assert await node.status() == 1
            await trio.sleep(0.2)
            assert _nudges(node) == 0 and replica.reconnect_nudges == 0
            nursery.cancel_scope.cancel()


def test_the_adopted_defaults() -> None:
    """What the comparison adopted (simulations/README.md, the proposals sweep)."""
    from coordinator.service import ServiceConfig

    fields = {f.name: f for f in dataclasses.fields(ServiceConfig)}
    assert fields["nudge_on_connect"].default is True
    default = PolicyConfig()
    assert default.queue_retry_max == 1800.0 and policy_queue.grows(default)
    assert default.breaker_in_flight == 0.0
