"""Small pools with several replicas (P7 item 9): a pool whose global budget allows a
departure makes progress, and a replica that may not grant says it is its share.

3 replicas, quorum 2, a 2-node pool with ``--min-serving 1``: one node may be away.  Each
replica's share of that one departure used to be ``floor(1 * 2 / 3) = 0``, so every ask was
refused ``capacity/min-serving`` forever.  These tests run real replica processes (and, for
the reason text, real replicas in this process) and real quorum clients.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import replace
from pathlib import Path

import trio
from hypothesis import given
from hypothesis import strategies as st

from coordinator import policy
from coordinator.policy import Aggregate, Ask, PolicyConfig, PoolState, decide
from p2pupdate.daemon.replica import AskOutcome

from .service_helpers import LightNode, Network, ReplicaProcesses, in_process
from .test_policy import FAST, ranked
from .test_service_leases import TO, publish_all

#: What both nodes of the pool report by gossip: 2 serving, capacity 20, load 5 (each node
#: has capacity 10 and load 2.5).  Globally one may leave: 5 <= 0.8 * (20 - 10).
PAIR = (20.0, 5.0, 2)


async def test_a_two_node_pool_gets_a_token_from_three_real_replicas(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    """Refused ``min-serving`` on every ask before the fix; now one node goes at a time,
    one after the other and when both ask at once."""
    net = Network(tmp_path / "net", replicas=3, quorum=2)
    procs = [replicas.start(net, i + 1, "--min-serving", "1") for i in range(3)]
    urls = [p.url for p in procs]
    await publish_all(net, urls)
    one, two = (LightNode(net, urls, pool="pair") for _ in range(2))
    async with trio.open_nursery() as nursery:
        for n in (one, two):
            await n.start(nursery)
            assert await n.status(estimate=PAIR) == 3
        first = await one.ask(TO, capacity=10.0, load=2.5)
        assert first.token is not None, (first.gate, first.reason, first.detail)
        # The pool's one spare departure is taken: the other node waits, and is told so.
        second = await two.ask(TO, capacity=10.0, load=2.5)
        assert second.token is None
        assert (second.gate, second.reason) == ("capacity", "min-serving"), second.detail
        # Back in service: now the other node may go.
        assert await one.rejoined(TO, first.token) == 3
        third = await two.ask(TO, capacity=10.0, load=2.5)
        assert third.token is not None, (third.gate, third.reason, third.detail)
        assert await two.rejoined(TO, third.token) == 3
        # Both at once: each replica grants whoever comes first, 3 grants for 2 nodes, so
        # exactly one holds 2 (a token; never both: one departure); the other hands its
        # grant back (no-quorum) and goes once the first is back.
        outcomes: dict[int, AskOutcome] = {}

        async def ask(i: int, n: LightNode) -> None:
            outcomes[i] = await n.ask(TO, capacity=10.0, load=2.5)

        async with trio.open_nursery() as both:
            for i, n in enumerate((one, two)):
                both.start_soon(ask, i, n)
        tokens = [i for i, o in outcomes.items() if o.token is not None]
        assert len(tokens) == 1, outcomes
        winner, loser = (one, two) if tokens == [0] else (two, one)
        assert await winner.rejoined(TO, outcomes[tokens[0]].token) == 3
        last = await loser.ask(TO, capacity=10.0, load=2.5)
        assert last.token is not None, (last.gate, last.reason, last.detail)
        nursery.cancel_scope.cancel()


async def test_a_replica_whose_share_is_zero_says_so(tmp_path: Path) -> None:
    """3 replicas, quorum 1, one spare departure: one replica holds it for this pool and
    grants; the other two refuse with ``replica-share``, naming the share, not
    ``min-serving`` (the pool does have a spare node)."""
    net = Network(tmp_path / "net", replicas=3, quorum=1)
    async with (
        in_process(net, 1, min_serving=1) as (_r1, url1),
        in_process(net, 2, min_serving=1) as (_r2, url2),
        in_process(net, 3, min_serving=1) as (_r3, url3),
    ):
        urls = [url1, url2, url3]
        await publish_all(net, urls)
        answers = []
        async with trio.open_nursery() as nursery:
            for url in urls:
                node = LightNode(net, [url], pool="pair")
                await node.start(nursery)
                assert await node.status(estimate=PAIR) == 1
                answers.append(await node.ask(TO, capacity=10.0, load=2.5))
            nursery.cancel_scope.cancel()
    granted = [a for a in answers if a.token is not None]
    refused = [a for a in answers if a.token is None]
    assert len(granted) == 1, [(a.reason, a.detail) for a in answers]
    for a in refused:
        assert (a.gate, a.reason) == ("capacity", "replica-share")
        assert a.detail.startswith(
            "this replica's share of 1 spare departure is 0 (3 replicas, quorum 1)"
        ), a.detail


# -- the rule: every n, q, budget -------------------------------------------------------------


def most_tokens(shares: list[int], quorum: int) -> int:
    """The most tokens of ``quorum`` leases on distinct replicas that replicas holding at most
    ``shares[r]`` leases each can back at once, whoever asks where: the largest ``T`` with
    ``sum_r min(shares[r], T) >= q * T`` (a replica backs each token at most once)."""
    t = 0
    while sum(min(s, t + 1) for s in shares) >= quorum * (t + 1):
        t += 1
    return t


def test_the_deal_never_exceeds_a_budget_and_uses_all_of_it() -> None:
    """For every n <= 7, q <= n, budget K <= 6 and start of the deal: the adversary's best
    choice of replicas makes exactly K tokens -- never more (safe), and K is reachable (no
    budget lost to rounding); for K >= 1, at least q replicas hold a unit (progress)."""
    for n in range(1, 8):
        for q, k in itertools.product(range(1, n + 1), range(-1, 7)):
            configs = ranked(PolicyConfig(replicas=n, quorum=q))
            for slot in range(n):
                shares = [policy.replica_share(k, slot, c) for c in configs]
                assert sum(shares) == policy.share_units(k, q), (n, q, k, slot)
                assert most_tokens(shares, q) == max(0, k), (n, q, k, slot, shares)
                if k >= 1:
                    assert sum(s > 0 for s in shares) >= q, (n, q, k, slot, shares)


def test_a_pool_whose_budget_allows_a_departure_grants_it() -> None:
    """Progress, through ``decide`` on every replica: an idle pool with ``B = S -
    min_serving >= 1`` and a node that fits this replica's headroom share gets ``q``
    grants; when one departure is all the pool allows (``min(M, B) = 1``) that share is
    the whole headroom, so the global rule ``L <= u (C - c)`` alone decides."""
    for n in range(1, 6):
        for q, m, b, name in itertools.product(
            range(1, n + 1), range(1, 4), range(1, 4), ["pair", "eu-1", "x"]
        ):
            config = PolicyConfig(
                replicas=n, quorum=q, max_concurrent=m, min_serving=1, churn_margin=0.0
            )
            agg = Aggregate(capacity=20.0, load=5.0, serving=b + 1, as_of=0.0)
            whole = agg.capacity - agg.load / config.utilization  # H = 13.75
            w = policy.headroom_share(min(m, b), config)
            assert w == 1.0 or min(m, b) > 1
            c = w * whole
            grants = [
                decide(PoolState(pool=name, aggregate=agg, started_at=-math.inf), a, 0.0, cfg)
                for cfg in ranked(config)
                for a in [Ask(node=1, capacity=c, load=2.5)]
            ]
            assert sum(d.granted for d in grants) >= q, (n, q, m, b, name, grants)
            for d in grants:
                assert d.granted or d.reason == "replica-share", d


@st.composite
def adversaries(draw: st.DrawFn) -> tuple[PolicyConfig, Aggregate, list[tuple[int, int, float]]]:
    n = draw(st.integers(1, 4))
    q = draw(st.integers(1, n))
    min_serving = draw(st.integers(0, 2))
    config = PolicyConfig(
        replicas=n,
        quorum=q,
        max_concurrent=draw(st.integers(1, 4)),
        min_serving=min_serving,
        churn_margin=0.0,
        aggregate_max_age=math.inf,
    )
    agg = Aggregate(
        capacity=20.0,
        load=draw(st.sampled_from([0.0, 5.0, 12.0])),
        serving=min_serving + draw(st.integers(0, 4)),
        as_of=0.0,
    )
    # (node, which q replicas, size as a share of the pool's headroom H)
    asks = st.tuples(
        st.integers(0, 6),
        st.integers(0, 5),
        st.sampled_from([0.2, 0.26, 0.34, 0.5, 0.51, 0.67, 1.0]),
    )
    return config, agg, draw(st.lists(asks, max_size=30))


@FAST
@given(adversaries())
def test_no_sequence_of_grants_breaks_a_global_bound(
    run: tuple[PolicyConfig, Aggregate, list[tuple[int, int, float]]],
) -> None:
    """Small pools, nodes sized against the headroom: whichever replicas each node asks,
    in whatever order, the nodes holding ``q`` grants stay within ``max_concurrent``,
    ``S - min_serving`` and ``cap <= C - L/u`` (the shares of ``replica_share`` and
    ``headroom_share`` at the edges where they give more than ``q/n``)."""
    config, agg, asks = run
    configs = ranked(config)
    subsets = list(itertools.combinations(range(config.replicas), config.quorum))
    whole = agg.capacity - agg.load / config.utilization
    states = [PoolState(pool="pair", aggregate=agg, started_at=-math.inf)] * config.replicas
    held: dict[int, set[int]] = {}
    size: dict[int, float] = {}
    for node, which, share in asks:
        c = size.setdefault(node, share * whole)
        for r in subsets[which % len(subsets)]:
            d = decide(states[r], Ask(node=node, capacity=c, load=0.0), 0.0, configs[r])
            if d.lease is not None:
                states[r] = states[r].add(d.lease)
                held.setdefault(node, set()).add(r)
        away = [size[n] for n, rs in held.items() if len(rs) >= config.quorum]
        assert len(away) <= config.max_concurrent
        assert len(away) <= max(0, agg.serving - config.min_serving)
        assert sum(away) <= whole * (1 + 1e-12), (away, whole)


# -- the reason -------------------------------------------------------------------------------


def _idle(agg: Aggregate, name: str = "pair") -> PoolState:
    return PoolState(pool=name, aggregate=agg, started_at=-math.inf)


def test_a_share_of_zero_is_named_as_such() -> None:
    """3 replicas, quorum 1, one spare node: one replica holds the unit, the other two
    refuse ``replica-share`` and say whose share of what; once the pool has no spare node
    the reason is ``min-serving`` on every replica, as before."""
    config = PolicyConfig(replicas=3, quorum=1, min_serving=1)
    agg = Aggregate(capacity=20.0, load=5.0, serving=2, as_of=0.0)
    a = Ask(node=1, capacity=10.0, load=2.5)
    answers = [decide(_idle(agg), a, 0.0, c) for c in ranked(config)]
    assert sorted(d.reason for d in answers) == ["granted", "replica-share", "replica-share"]
    for d in answers:
        if not d.granted:
            assert (d.gate, d.retry_after) == ("capacity", config.base_retry)
            assert d.detail == (
                "this replica's share of 1 spare departure is 0 (3 replicas, quorum 1): "
                "the others grant it"
            )
            assert d.to_gate_result().detail == d.detail + "; retry after 60 s"
    alone = replace(agg, serving=1)
    assert {decide(_idle(alone), a, 0.0, c).reason for c in ranked(config)} == {"min-serving"}


def test_a_share_of_zero_of_the_lease_budget_is_named_too() -> None:
    """``--max-concurrent 1`` with 3 replicas and quorum 1 (refused at start before: "no
    replica could grant"): one replica grants, the others name the concurrent budget."""
    config = PolicyConfig(replicas=3, quorum=1, max_concurrent=1, min_serving=0)
    agg = Aggregate(capacity=1000.0, load=0.0, serving=50, as_of=0.0)
    answers = [decide(_idle(agg), Ask(node=1, capacity=1.0), 0.0, c) for c in ranked(config)]
    assert sum(d.granted for d in answers) == 1
    assert {d.detail for d in answers if not d.granted} == {
        "this replica's share of 1 concurrent departure is 0 (3 replicas, quorum 1): "
        "the others grant it"
    }


def test_the_two_node_pool_with_a_quorum_of_two_never_shows_replica_share() -> None:
    """n = 3, q = 2, one spare node: every replica holds one unit (3 = 2 * 2 - 1), so the
    first ask is granted everywhere and the next one is refused ``min-serving`` -- true:
    the pool's one departure is taken.  The rule no longer says ``min-serving`` first."""
    config = PolicyConfig(replicas=3, quorum=2, min_serving=1)
    agg = Aggregate(capacity=20.0, load=5.0, serving=2, as_of=0.0)
    for c in ranked(config):
        state = _idle(agg)
        first = decide(state, Ask(node=1, capacity=10.0, load=2.5), 0.0, c)
        assert first.reason == "granted" and first.lease is not None
        second = decide(state.add(first.lease), Ask(node=2, capacity=10.0, load=2.5), 0.0, c)
        assert second.reason == "min-serving"


def test_every_capacity_reason_is_in_the_readme_table() -> None:
    """``policy.REASONS`` is the one table of gate 3's reasons; the README's table of
    refusals lists each of them (the service adds ``lease-held``)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| capacity |"))
    listed = set(re.findall(r"`([a-z-]+)`", row))
    refusals = {
        name
        for code, name in enumerate(policy.REASONS)
        if code > policy.LAST_GRANT_CODE and policy.gate_of(code) == "capacity"
    }
    assert refusals <= listed, refusals - listed
