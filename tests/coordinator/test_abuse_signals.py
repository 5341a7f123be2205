"""P10 items 3-4: each signal counts only from whom it may come.

* a ``failed`` report pauses a rollout only from a node this replica granted a lease for
  that artifact, with that lease's nonce (before: 2 made-up ids that never held a lease
  paused it);
* a lease that lapses without ``rejoined``, ``failed`` or ``return`` puts the node on a
  growing cooldown: 3 made-up ids that ask and vanish hold the slots once, not again
  (before: they asked again as their leases lapsed and held every slot for good);
* introductions carry the address the replica saw a node connect from, never a host the
  node claims (before: 30 made-up ids advertising one host:port sent every node there).

Real replicas (a ``serve`` process, or the real ``Replica`` and ``Server`` in this trio
run where the test must move the replica's monotonic clock past a lease) and the real
node protocol (``LightNode``).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from coordinator.policy import PolicyConfig
from coordinator.policy_signals import SignalsConfig, introduced_addrs
from coordinator.server import Server
from coordinator.service import Replica, ServiceConfig
from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto
from p2pupdate.daemon.coordinator import _contacts_of

from .service_helpers import LightNode, Network, ReplicaProcesses, ahttp, artifact_of, http

A_BYTES = os.urandom(5000)
A = artifact_of(A_BYTES)


def _publish(net: Network, url: str) -> None:
    for doc in (net.release(A_BYTES, "v2", 2), net.allowlist(1, [A]), net.scope(A, serial=1)):
        code, answer = http("POST", f"{url}/v1/publish", doc)
        assert code == 200, answer


async def test_failed_reports_from_ids_that_held_no_lease_do_not_pause_a_rollout(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(net, 1, "--min-serving", "0")
    _publish(net, rp.url)
    strangers = [LightNode(net, [rp.url]) for _ in range(3)]
    honest = [LightNode(net, [rp.url]) for _ in range(2)]
    async with trio.open_nursery() as nursery:
        for n in (*strangers, *honest):
            await n.start(nursery)
            await n.status()
        # never asked: no lease, no nonce (or a made-up one)
        await strangers[0].failed(A, "made up")
        await strangers[1].failed(A, "made up", b"")
        # holds a lease, but reports with another nonce than the one it was granted
        granted = await strangers[2].ask(A)
        assert granted.token is not None
        wrong = proto.FailedReport(artifact=A, counter=2, reason="made up", nonce=os.urandom(16))
        assert await strangers[2].client.send(wrong) == 1
        st = (await ahttp("GET", f"{rp.url}/status"))[1]
        assert st["artifacts"][A]["paused"] is False, st["artifacts"][A]
        assert st["artifacts"][A]["failed"] == 0
        assert st["failures_ignored"] == 3
        # the honest way still trips it: two nodes that moved, with their leases' nonces
        tokens = [await n.ask(A) for n in honest]
        assert all(t.token for t in tokens)
        for n, t in zip(honest, tokens, strict=True):
            await n.failed(A, "probation: self-test failed", t.token)
        st = (await ahttp("GET", f"{rp.url}/status"))[1]
        assert st["artifacts"][A]["paused"] is True and st["artifacts"][A]["failed"] == 2
        nursery.cancel_scope.cancel()


class _Clock:
    """The replica's monotonic clock, moved by the test (its wall clock stays real: the
    nodes' tokens carry real times)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@asynccontextmanager
async def _replica(net: Network, clock: _Clock, **knobs: int) -> AsyncIterator[str]:
    policy = PolicyConfig(min_serving=0, **knobs)
    config = ServiceConfig(
        network_dir=net.dir, policy=policy, token_ttl=60, max_skew=5, first_start=True
    )
    replica = Replica(config, clock=clock)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(Server(replica).serve, "127.0.0.1", 0)
            yield f"http://127.0.0.1:{port}"
            nursery.cancel_scope.cancel()
    finally:
        replica.store.close()


async def test_ids_that_ask_and_vanish_stop_holding_the_departure_slots(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    clock = _Clock()
    async with _replica(net, clock, max_concurrent=3) as url:
        await trio.to_thread.run_sync(_publish, net, url)
        hogs = [LightNode(net, [url]) for _ in range(3)]
        real = LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            for n in (*hogs, real):
                await n.start(nursery)
                await n.status()
            grants = [await h.ask(A) for h in hogs]
            assert all(g.token for g in grants)  # every slot, then silence
            r = await real.ask(A)
            assert (r.gate, r.reason) == ("capacity", "lease-budget")
            for lapse in (1, 2):
                clock.offset += 66.0  # past the leases' ttl (60 + 5 s): they lapse unreported
                for n in (*hogs, real):
                    await n.status()  # a fresh aggregate at the new time
                for h in hogs:  # the hogs ask first, as they would
                    r = await h.ask(A)
                    assert r.token is None, "a lapsed lease's node was granted again at once"
                    assert (r.gate, r.reason) == ("capacity", "lease-lapsed"), r
                    # 60 s from the lapse, then 120 s: it grows
                    assert r.retry_after is not None and r.retry_after > 60.0 * lapse - 5, r
                got = await real.ask(A)
                assert got.token is not None, (got.gate, got.reason, got.detail)
                assert await real.rejoined(A, got.token) == 1  # back: its slot frees at once
                clock.offset += 60.0 * lapse  # the cooldown is over: they may ask again
                for n in (*hogs, real):
                    await n.status()
                grants = [await h.ask(A) for h in hogs]
                assert all(g.token for g in grants)  # and vanish again
            nursery.cancel_scope.cancel()


async def test_introductions_name_the_address_the_replica_saw_not_the_one_claimed(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(net)
    victim = "tcp:10.9.9.9:4242"  # what 30 made-up ids claim to be
    sybils = [LightNode(net, [rp.url]) for _ in range(30)]
    honest = LightNode(net, [rp.url])
    async with trio.open_nursery() as nursery:
        for n in (*sybils, honest):
            await n.start(nursery)
        for n in sybils:
            report = proto.StatusReport(
                version="v1",
                artifact="0" * 64,
                state="serving",
                pool="default",
                estimate=None,
                held=None,
                addrs=(victim, "tcp:0.0.0.0:5000", "tcp:10.9.9.9:4243", "tcp:10.9.9.9:4244"),
            )
            assert await n.client.send(report) == 1
        link = honest.client.connected()[0]
        answer = await link.send(proto.PeersRequest(count=32))
        nursery.cancel_scope.cancel()
    assert isinstance(answer, proto.PeersAnswer)
    assert len(answer.peers) == 30
    contacts = [c for p in answer.peers for c in _contacts_of(p)]  # what a node would dial
    assert contacts, "the introductions still name the ids' observed address"
    assert {c.host for c in contacts} == {"127.0.0.1"}, {(c.host, c.port) for c in contacts}
    # the ports it claimed, paired with the host the replica saw (at most two of them)
    assert all(len(p.addrs) <= 2 for p in answer.peers)
    assert {c.port for c in contacts} <= {4242, 5000}


async def test_a_failure_reported_after_a_restart_counts_with_its_lease_nonce(
    tmp_path: Path,
) -> None:
    """The nonces granted are read back from the audit log: a node whose probation fails
    while its replica restarted still counts, and a made-up nonce still does not."""
    net = Network(tmp_path / "net")
    clock = _Clock()
    keys = [crypto.SigningKey.from_seed(os.urandom(32)) for _ in range(2)]
    async with _replica(net, clock) as url:
        await trio.to_thread.run_sync(_publish, net, url)
        nodes = [LightNode(net, [url], key=k) for k in keys]
        async with trio.open_nursery() as nursery:
            for n in nodes:
                await n.start(nursery)
                await n.status()
            tokens = [(await n.ask(A)).token for n in nodes]
            nursery.cancel_scope.cancel()
    assert all(tokens)
    async with _replica(net, clock) as url:
        nodes = [LightNode(net, [url], key=k) for k in keys]
        async with trio.open_nursery() as nursery:
            for n in nodes:
                await n.start(nursery)
            made_up = proto.FailedReport(artifact=A, counter=2, reason="x", nonce=os.urandom(16))
            assert await nodes[0].client.send(made_up) == 1
            st = (await ahttp("GET", f"{url}/status"))[1]
            assert st["failures_ignored"] == 1
            for n, t in zip(nodes, tokens, strict=True):
                await n.failed(A, "probation: self-test failed", t)
            st = (await ahttp("GET", f"{url}/status"))[1]
            nursery.cancel_scope.cancel()
    assert st["artifacts"][A]["paused"] is True and st["artifacts"][A]["failed"] == 2


def test_a_claimed_address_is_kept_only_inside_the_observed_subnet() -> None:
    """A node listening on another address of its own subnet than it connects from (the
    daemon fleet tests' 127.0.0.x, a host with two LAN addresses) stays reachable."""
    config = SignalsConfig()
    assert introduced_addrs(("tcp:127.0.0.7:4100",), "127.0.0.1:9", config) == (
        "tcp:127.0.0.1:4100",
        "tcp:127.0.0.7:4100",
    )
    assert introduced_addrs(("tcp:10.9.9.9:4100",), "192.0.2.1:9", config) == (
        "tcp:192.0.2.1:4100",
    )
    assert introduced_addrs(("tcp:[2001:db8:0:1::5]:4100",), "2001:db8::1:9", config) == (
        "tcp:[2001:db8::1]:4100",
        "tcp:[2001:db8:0:1::5]:4100",
    )
    assert introduced_addrs(
        ("tcp:1.2.3.4:1", "tcp:1.2.3.4:2", "tcp:1.2.3.4:3"), "1.2.3.9:9", config
    )[-1].endswith(":2")  # at most max_ports ports
    assert introduced_addrs(("tcp:1.2.3.4:1",), "", config) == ()
