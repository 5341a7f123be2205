"""P10 items 2-3: what moves decisions is capped per source subnet.

* live leases: gate 3 grants a lease only while the asking node's subnet holds fewer than
  the network document's ``subnet_leases`` of this replica's live leases (before: 3
  made-up ids held all 3 departure slots, and the real nodes never moved);
* failure reports: the breaker counts a ``failed`` report only from a counted node, at
  most ``subnet_failures`` nodes per subnet and artifact (before: made-up ids of one
  subnet, each with a lease, paused a rollout by themselves).

The rules are pure (``policy_signals``) and tested first; then the attacks, run against
a real ``Replica`` and ``Server`` in this trio run, with ``LightNode`` s speaking the real
node protocol from other /24s of the loopback (``127.0.9.x``: the strangers' subnet),
under both admission rules.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from coordinator import policy_signals as signals
from coordinator.breakers import Breakers
from coordinator.policy import PolicyConfig
from coordinator.server import Server
from coordinator.service import Replica, ServiceConfig
from coordinator.store import Store
from p2pupdate.core import admission, crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.admission import Standing

from .service_helpers import LightNode, Network, ahttp, artifact_of, http

A_BYTES = os.urandom(5000)
A = artifact_of(A_BYTES)
NET_A, NET_B = "10.1.1.0/24", "10.2.2.0/24"

# -- the rules --------------------------------------------------------------------------------


def test_a_subnet_at_its_lease_cap_waits_for_its_own_first_lease() -> None:
    held = [(NET_A, 100.0), (NET_A, 50.0), (NET_B, 10.0)]
    wait = signals.subnet_lease_wait
    assert wait(held, NET_A, cap=2, now=40.0, max_wait=60.0) == 10.0  # A's first, not B's
    assert wait(held, NET_A, cap=3, now=40.0, max_wait=60.0) is None
    assert wait(held, NET_B, cap=2, now=40.0, max_wait=60.0) is None
    assert wait(held, "10.3.3.0/24", cap=1, now=40.0, max_wait=60.0) is None
    assert wait(held, NET_A, cap=2, now=49.9, max_wait=60.0) == 1.0  # at least 1 s
    assert wait(held, NET_A, cap=2, now=0.0, max_wait=30.0) == 30.0  # at most max_wait
    # an unknown subnet counts as one subnet
    unknown = [(None, 60.0), (None, 70.0)]
    assert wait(unknown, None, cap=2, now=40.0, max_wait=60.0) == 20.0
    assert wait(unknown, NET_A, cap=1, now=40.0, max_wait=60.0) is None
    assert wait([], None, cap=1, now=0.0, max_wait=60.0) is None


def test_a_failure_counts_from_a_lease_a_counted_node_and_a_subnet_under_its_cap() -> None:
    nonce = b"n" * 16
    ok = Standing(counted=True, subnet=NET_A)

    def why(
        standing: Standing = ok,
        counted: tuple[str | None, ...] = (),
        *,
        granted: frozenset[bytes] = frozenset({nonce}),
        nonce: bytes = nonce,
        cap: int = 1,
    ) -> str | None:
        return signals.failure_ignored(
            granted=granted, nonce=nonce, standing=standing, counted=counted, cap=cap
        )

    assert why() is None
    assert why(granted=frozenset()) == signals.NO_LEASE
    assert why(nonce=b"") == signals.NO_LEASE
    assert why(nonce=b"m" * 16) == signals.NO_LEASE
    assert why(Standing(counted=False, subnet=NET_A)) == signals.NO_STANDING
    assert why(counted=(NET_A,)) == signals.SUBNET_FAILURES
    assert why(counted=(NET_A,), cap=2) is None
    assert why(counted=(NET_B, NET_B)) is None
    assert why(Standing(counted=True, subnet=None), counted=(None,)) == signals.SUBNET_FAILURES
    # the lease rule comes first: a stranger's made-up report says so, whatever its standing
    assert why(Standing(counted=False, subnet=NET_A), granted=frozenset()) == signals.NO_LEASE


def test_the_breaker_weighs_each_subnet_at_most_its_cap() -> None:
    assert signals.weighed([], 2) == 0
    assert signals.weighed([NET_A] * 50 + [NET_B, None, None, None], 2) == 2 + 1 + 2


def _failures_per_subnet(cap: int = 1) -> docs.NetworkConfig:
    return dataclasses.replace(admission.default_config("test"), subnet_failures=cap)


def test_the_breaker_counts_only_counted_nodes_and_caps_each_subnet(tmp_path: Path) -> None:
    """The shell's side of the rule, with the ``who`` a replica passes (the registry's):
    a leased node without standing is ignored, as are a subnet's failures past its cap;
    failures from counted nodes of two subnets pause the rollout."""
    standing = {
        "stranger": Standing(counted=False, subnet=NET_A),
        "a1": Standing(counted=True, subnet=NET_A),
        "a2": Standing(counted=True, subnet=NET_A),
        "b1": Standing(counted=True, subnet=NET_B),
    }
    one = _failures_per_subnet()
    store = Store(tmp_path / "db.sqlite", wall=lambda: 1000.0)
    breakers = Breakers(
        store=store,
        wall=lambda: 1000.0,
        config=PolicyConfig(breaker_min_failures=2),
        who=standing.__getitem__,
        network=lambda: one,
    )
    nonces = {n: n.encode().ljust(16, b".") for n in standing}
    for node, nonce in nonces.items():
        breakers.attempted(A, node, nonce)
    assert breakers.breakers[A].attempted == {"a1", "a2", "b1"}  # the stranger is not counted

    def failed(node: str) -> bool:
        return breakers.failed(node, A, "probation", nonce=nonces[node], scope_serial=1)

    assert failed("stranger") is False
    assert failed("a1") is False
    assert failed("a2") is False  # its subnet's one failure is a1's
    assert failed("a1") is False  # a repeat counts once, as before
    assert breakers.breakers[A].failures.keys() == {"a1"}
    assert breakers.ignored_by == {signals.NO_STANDING: 1, signals.SUBNET_FAILURES: 1}
    assert failed("b1") is True  # two subnets: two failures, paused
    assert store.failures_since(A, 0.0).keys() == {"a1", "b1"}
    store.close()


def test_a_fleet_in_one_subnet_still_pauses_a_broken_rollout(tmp_path: Path) -> None:
    """60 nodes of one /24 (a LAN) moved: a share threshold of 60 nodes (3 failures at
    5 %) would never be reached by the 2 failures the subnet may count; the nodes that
    moved are weighed per subnet as the failures are, so its 2 failures pause it."""
    store = Store(tmp_path / "db.sqlite", wall=lambda: 1000.0)
    breakers = Breakers(
        store=store,
        wall=lambda: 1000.0,
        config=PolicyConfig(breaker_min_failures=2, breaker_failure_share=0.05),
        who=lambda _n: Standing(counted=True, subnet=NET_A),
        network=lambda: _failures_per_subnet(2),
    )
    nodes = [f"n{i}" for i in range(60)]
    for n in nodes:
        breakers.attempted(A, n, n.encode())
    paused = [
        breakers.failed(n, A, "probation", nonce=n.encode(), scope_serial=1) for n in nodes[:3]
    ]
    assert paused == [False, True, True]
    assert breakers.ignored_by == {signals.SUBNET_FAILURES: 1}
    assert "2 of 2 nodes" in breakers.breakers[A].reason
    store.close()


# -- the attacks, against a real replica --------------------------------------------------------

STRANGERS = ("127.0.9.1", "127.0.9.2", "127.0.9.3")  # one /24: 127.0.9.0/24
HONEST = ("127.0.1.1", "127.0.2.1", "127.0.3.1")  # three others


def _publish(net: Network, url: str) -> None:
    for doc in (net.release(A_BYTES, "v2", 2), net.allowlist(1, [A]), net.scope(A, serial=1)):
        code, answer = http("POST", f"{url}/v1/publish", doc)
        assert code == 200, answer


@asynccontextmanager
async def _replica(net: Network, **knobs: int) -> AsyncIterator[tuple[Replica, str]]:
    config = ServiceConfig(
        network_dir=net.dir,
        policy=PolicyConfig(min_serving=0, **knobs),
        token_ttl=60,
        max_skew=5,
        first_start=True,
    )
    replica = Replica(config)
    server = Server(replica)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{port}"
            await trio.to_thread.run_sync(_publish, net, url)
            yield replica, url
            nursery.cancel_scope.cancel()
    finally:
        replica.store.close()


def _nodes(net: Network, url: str, sources: tuple[str, ...]) -> list[LightNode]:
    """Light nodes connecting from ``sources``; on an ``enrolled`` network each carries
    its member document."""
    out = []
    for source in sources:
        key = crypto.SigningKey.from_seed(os.urandom(32))
        member = net.member(key.keyid) if net.config.admission == "enrolled" else None
        out.append(LightNode(net, [url], key=key, member=member, source=source))
    return out


RULES = pytest.mark.parametrize("rule", ["open", "enrolled"])


@RULES
async def test_made_up_ids_of_one_subnet_hold_at_most_its_lease_cap(
    tmp_path: Path, rule: str
) -> None:
    """The issue's attack: 3 made-up ids asked first and held all 3 departure slots.
    Now their subnet holds ``subnet_leases`` (1) and the real nodes, of other subnets,
    move."""
    net = Network(tmp_path / "net", admission=rule, subnet_leases=1)
    async with _replica(net, max_concurrent=3) as (replica, url):
        strangers = _nodes(net, url, STRANGERS)
        honest = _nodes(net, url, HONEST[:2])
        async with trio.open_nursery() as nursery:
            for n in (*strangers, *honest):
                await n.start(nursery)
                await n.status()
            started = time.monotonic()
            first = await strangers[0].ask(A)
            assert first.token is not None, (first.gate, first.reason, first.detail)
            for s in strangers[1:]:
                r = await s.ask(A)
                assert r.token is None, "a second id of the strangers' subnet was granted"
                assert (r.gate, r.reason) == ("capacity", signals.SUBNET_LEASES), r
                assert "127.0.9.0/24" in r.detail
                # until its subnet's lease lapses (65 s), at most base_retry (60 s)
                assert r.retry_after is not None and 1.0 <= r.retry_after <= 60.0, r
            for h in honest:
                got = await h.ask(A)
                assert got.token is not None, (got.gate, got.reason, got.detail)
            st = (await ahttp("GET", f"{url}/status"))[1]
            assert st["artifacts"][A]["leases"] == 3
            assert st["refusals"] == {"capacity/subnet-leases": 2}
            # the subnet's lease ends: the next of its ids may hold the slot
            assert await strangers[0].rejoined(A, first.token) == 1
            again = await strangers[1].ask(A)
            assert again.token is not None, (again.gate, again.reason)
            assert time.monotonic() - started < 10.0
            nursery.cancel_scope.cancel()
    subnets = sorted(str(i.subnet) for i in replica.leases.values())
    assert subnets == ["127.0.1.0/24", "127.0.2.0/24", "127.0.9.0/24"]


@RULES
async def test_failures_from_one_subnet_count_at_most_its_cap(tmp_path: Path, rule: str) -> None:
    """Two ids of one subnet, each with a lease, report ``failed`` with their nonces:
    with ``subnet_failures`` 1 they count once and the rollout goes on
    (``breaker_min_failures`` 2); a failure from a second subnet pauses it."""
    net = Network(tmp_path / "net", admission=rule, subnet_failures=1, subnet_leases=2)
    async with _replica(net, max_concurrent=5, breaker_min_failures=2) as (_, url):
        strangers = _nodes(net, url, STRANGERS[:2])
        honest = _nodes(net, url, HONEST[:1])
        async with trio.open_nursery() as nursery:
            for n in (*strangers, *honest):
                await n.start(nursery)
                await n.status()
            tokens = [await s.ask(A) for s in strangers]
            assert all(t.token for t in tokens), [(t.gate, t.reason) for t in tokens]
            for s, t in zip(strangers, tokens, strict=True):
                await s.failed(A, "made up", t.token)
            st = (await ahttp("GET", f"{url}/status"))[1]
            assert st["artifacts"][A]["paused"] is False, st["artifacts"][A]
            assert st["artifacts"][A]["failed"] == 1
            assert st["failures_ignored"] == 1
            got = await honest[0].ask(A)
            assert got.token is not None, (got.gate, got.reason, got.detail)
            await honest[0].failed(A, "probation: self-test failed", got.token)
            st = (await ahttp("GET", f"{url}/status"))[1]
            assert st["artifacts"][A]["paused"] is True and st["artifacts"][A]["failed"] == 2
            nursery.cancel_scope.cancel()
