"""The coordinator service in-process: publish, gates at ask time, leases, breaker, status."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from coordinator.cli import render_status
from coordinator.server import NodeConn, Server
from coordinator.service import Replica, ServiceConfig
from p2pupdate.core import coordproto, crypto, departure
from p2pupdate.core import documents as docs
from p2pupdate.net.replica_link import CoordinatorUnavailable

from .service_helpers import ZERO, LightNode, Network, ahttp, artifact_of, in_process

A_BYTES = os.urandom(5000)
B_BYTES = os.urandom(3000)
A = artifact_of(A_BYTES)
B = artifact_of(B_BYTES)


async def publish(url: str, *datas: bytes) -> None:
    for data in datas:
        code, answer = await ahttp("POST", f"{url}/v1/publish", data)
        assert code == 200, answer


async def setup(net: Network, url: str, *, scope: bytes | None = None) -> None:
    await publish(
        url,
        net.release(A_BYTES, "v2", 2),
        net.release(B_BYTES, "v3", 3),
        net.allowlist(1, [A]),
        scope if scope is not None else net.scope(A, serial=1),
    )


async def test_publish_refuses_forged_expired_wrong_role_with_400(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net) as (replica, url):
        await publish(url, net.release(A_BYTES, "v2", 2), net.allowlist(2, [A]))
        before = (await ahttp("GET", f"{url}/status"))[1]["documents"]

        good = crypto.Envelope.from_wire(net.allowlist(3, [A, B]))
        forged = crypto.Envelope(
            type=good.type,
            payload=good.payload,
            signatures=tuple((k, bytes(64)) for k, _s in good.signatures),
        ).to_wire()
        now = int(time.time())
        expired = (
            docs.Allowlist(version=4, issued=now - 1000, expires=now - 500, artifacts=(A,))
            .sign(net.coordinator_keys())
            .to_wire()
        )
        wrong_role = net.scope(A, serial=5, signer=net.key("coordinator"))
        rollback = net.allowlist(1, [A])
        token = (
            departure.propose_token(
                departure.Binding(
                    node=ZERO,
                    pool="p",
                    from_artifact=ZERO,
                    to_artifact=A,
                    allowlist_version=2,
                    scope_serial=1,
                ),
                ttl=60,
                now_wall=now,
                nonce=bytes(16),
            )
            .sign(net.coordinator_keys())
            .to_wire()
        )
        cases = {
            "forged": (forged, "signature-threshold"),
            "expired": (expired, "expired"),
            "wrong-role": (wrong_role, "wrong-role"),
            "rollback": (rollback, "rollback"),
            "departure": (token, "wrong-type"),
            "garbage": (b"\xc1 not msgpack", "malformed"),
        }
        for name, (data, rule) in cases.items():
            code, answer = await ahttp("POST", f"{url}/v1/publish", data)
            assert code == 400, (name, answer)
            assert answer["error"] == rule, (name, answer)
            assert answer["reason"], name
        assert "operator" in (await ahttp("POST", f"{url}/v1/publish", wrong_role))[1]["reason"]
        after = (await ahttp("GET", f"{url}/status"))[1]["documents"]
        assert after == before  # nothing changed
        assert replica.trust.floors["allowlist"].value == 2


async def test_status_shows_the_median_of_the_reported_gossip_version_counts(
    tmp_path: Path,
) -> None:
    """``nodes.versions``: the reports' own versions; ``nodes.versions_gossip``: per version
    the median of the push-sum counts nodes report, a version only a liar names left out."""
    net = Network(tmp_path / "net")
    async with in_process(net) as (_replica, url):
        nodes = [LightNode(net, [url]) for _ in range(3)]
        counts = [
            {"v1": 900.0, "v2": 100.0},
            {"v1": 1000.0, "v2": 90.0},
            {"v1": 5000.0, "v2": 95.0, "made-up": 1e6},  # a liar
        ]
        async with trio.open_nursery() as nursery:
            for n, c in zip(nodes, counts, strict=True):
                await n.start(nursery)
                await n.status(versions=c)
            nursery.cancel_scope.cancel()
        code, st = await ahttp("GET", f"{url}/status")
        assert code == 200
        assert st["nodes"]["versions"] == {"v1": 3}
        gossip = st["nodes"]["versions_gossip"]
        assert gossip["counts"] == {"v1": 1000.0, "v2": 95.0}
        assert 5.0 <= gossip["age"] < 60.0


async def test_refusal_reasons_are_exact_and_visible_in_status(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net, max_concurrent=5, min_serving=0) as (replica, url):
        named = LightNode(net, [url])
        outsider = LightNode(net, [url])
        tiny = LightNode(net, [url], pool="tiny")
        await setup(
            net, url, scope=net.scope(A, serial=1, kind="nodes", nodes=(named.node, tiny.node))
        )
        async with trio.open_nursery() as nursery:
            for n in (named, outsider, tiny):
                await n.start(nursery)
            await named.status()
            await outsider.status()
            await tiny.status(estimate=(100.0, 95.0, 10))

            r = await outsider.ask(A)
            assert (r.gate, r.reason) == ("scope", "not-named")
            r = await named.ask(B)
            assert (r.gate, r.reason) == ("allowlist", "not-allowlisted")
            r = await tiny.ask(A)
            assert (r.gate, r.reason) == ("capacity", "no-spare-capacity")
            assert r.retry_after is not None and r.retry_after > 0
            r = await named.ask(A, allowlist_version=7)
            assert (r.gate, r.reason) == ("allowlist", "allowlist-changed")
            r = await named.ask(A)
            assert r.token is not None and r.lease_ttl > 200
            nursery.cancel_scope.cancel()

        code, st = await ahttp("GET", f"{url}/status")
        assert code == 200
        assert st["refusals"] == {
            "scope/not-named": 1,
            "allowlist/not-allowlisted": 1,
            "capacity/no-spare-capacity": 1,
            "allowlist/allowlist-changed": 1,
        }
        assert st["artifacts"][A]["refusals"]["capacity/no-spare-capacity"] == 1
        assert st["artifacts"][B]["refusals"] == {"allowlist/not-allowlisted": 1}
        assert st["artifacts"][A]["leases"] == 1
        table = render_status(url, st)
        for reason in (
            "scope/not-named",
            "allowlist/not-allowlisted",
            "capacity/no-spare-capacity",
        ):
            assert reason in table
        grants = replica.store.audit_rows("grant")
        assert [g.node for g in grants] == [named.node]
        assert len(replica.store.audit_rows("refuse")) == 4


async def test_token_is_bound_and_rejoin_ends_the_lease_early(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net, max_concurrent=1, min_serving=0) as (replica, url):
        await setup(net, url)
        one, two = LightNode(net, [url]), LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await one.start(nursery)
            await two.start(nursery)
            await one.status()
            granted = await one.ask(A)
            assert granted.token is not None
            tok = departure.verify_departure(
                net.trust(),
                granted.token,
                departure.Binding(
                    node=one.node,
                    pool="default",
                    from_artifact=ZERO,
                    to_artifact=A,
                    allowlist_version=1,
                    scope_serial=1,
                ),
                now_wall=time.time(),
            )
            assert tok.expires - tok.issued == 300
            refused = await two.ask(A)
            assert (refused.gate, refused.reason) == ("capacity", "lease-budget")
            assert await one.rejoined(A, granted.token) == 1
            assert (await two.ask(A)).token is not None
            # a node asking for another node is refused outright
            evil = departure.propose_token(
                departure.Binding(
                    node=one.node,
                    pool="default",
                    from_artifact=ZERO,
                    to_artifact=A,
                    allowlist_version=1,
                    scope_serial=1,
                ),
                ttl=300,
                now_wall=time.time(),
                nonce=bytes(16),
            )
            answer = await two.client.links[0].send(
                coordproto.AskRequest(token=evil.to_payload(), capacity=1.0, load=0.0)
            )
            assert isinstance(answer, coordproto.ErrorAnswer) and answer.error == "binding"
            nursery.cancel_scope.cancel()
        events = [r.event for r in replica.store.audit_rows()]
        assert events.count("grant") == 2 and "rejoined" in events


async def test_returned_leases_show_in_status_with_their_reason(tmp_path: Path) -> None:
    """A grant handed back (``lease-too-short``: a TTL inside the nodes' swap margin) is
    counted per artifact and reason in ``/status``, and still after a restart."""
    net = Network(tmp_path / "net")
    async with in_process(net, max_concurrent=1, min_serving=0) as (replica, url):
        await setup(net, url)
        one, two = LightNode(net, [url]), LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await one.start(nursery)
            await two.start(nursery)
            await one.status()
            for _ in range(2):
                granted = await one.ask(A)
                assert granted.token is not None
                assert await one.returned(granted.token, "lease-too-short") == 1
            # the returned lease is free again for another node
            granted = await two.ask(A)
            assert granted.token is not None
            assert await two.returned(granted.token, "token-invalid") == 1
            nursery.cancel_scope.cancel()
        code, st = await ahttp("GET", f"{url}/status")
        assert code == 200
        assert st["artifacts"][A]["returned"] == {"lease-too-short": 2, "token-invalid": 1}
        assert st["returned"] == {"lease-too-short": 2, "token-invalid": 1}
        assert st["pools"]["default"]["leases"] == []
        # and the table an operator reads shows them, with their reason
        table = render_status(url, st).splitlines()
        at = table.index("  leases handed back unused (by the node's reason, all time):")
        assert table[at + 1 : at + 3] == [
            "         2  lease-too-short",
            "         1  token-invalid",
        ]
        replica.store.flush()
    again = Replica(ServiceConfig(network_dir=net.dir, replica=1))
    try:
        assert again.status()["artifacts"][A]["returned"] == {
            "lease-too-short": 2,
            "token-invalid": 1,
        }
    finally:
        again.store.close()


async def test_two_failures_pause_the_rollout_until_a_new_scope(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net, max_concurrent=10, min_serving=0) as (_replica, url):
        await setup(net, url)
        nodes = [LightNode(net, [url]) for _ in range(3)]
        async with trio.open_nursery() as nursery:
            for n in nodes:
                await n.start(nursery)
                await n.status()
            tokens = [await n.ask(A) for n in nodes[:2]]
            assert all(t.token for t in tokens)
            await nodes[0].failed(A, "probation: self-test failed", tokens[0].token)
            st = (await ahttp("GET", f"{url}/status"))[1]
            assert st["artifacts"][A]["paused"] is False  # one failure is not enough
            await nodes[1].failed(A, "probation: crashed 3 times", tokens[1].token)
            st = (await ahttp("GET", f"{url}/status"))[1]
            art = st["artifacts"][A]
            assert art["paused"] is True and art["failed"] == 2
            assert "circuit breaker: 2 of 2 nodes" in art["paused_reason"]
            assert "crashed 3 times" in art["paused_reason"]
            assert A in st["paused"]
            assert "PAUSED" in render_status(url, st)
            r = await nodes[2].ask(A)
            assert (r.gate, r.reason) == ("breaker", "paused")
            assert "circuit breaker" in r.detail
            # the operator publishes a new scope: the rollout resumes
            code, answer = await ahttp("POST", f"{url}/v1/publish", net.scope(A, serial=2))
            assert code == 200 and answer["resumed"] == [A]
            r = await nodes[2].ask(A, scope_serial=2)
            assert r.token is not None
            nursery.cancel_scope.cancel()


async def test_a_restarted_replica_grants_nothing_for_one_ttl(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    settings = {"token_ttl": 2, "max_skew": 0, "min_serving": 0}
    async with in_process(net, **settings) as (_replica, url):
        await setup(net, url)
        node = LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await node.start(nursery)
            await node.status()
            assert (await node.ask(A)).token is not None
            nursery.cancel_scope.cancel()
    async with in_process(net, **settings) as (replica, url):
        assert replica.status()["replica"]["warming_up_for"] > 1.0
        node = LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await node.start(nursery)
            await node.status()
            r = await node.ask(A)
            assert (r.gate, r.reason) == ("capacity", "replica-warmup")
            await trio.sleep(r.retry_after or 0)
            await node.status()
            assert (await node.ask(A)).token is not None
            nursery.cancel_scope.cancel()


def test_a_replica_with_no_record_waits_unless_told_it_is_new(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    lost = Replica(ServiceConfig(network_dir=net.dir, state_dir=tmp_path / "lost"))
    try:  # a lost state directory looks new: it waits a full lease TTL
        assert lost.status()["replica"]["warming_up_for"] > 300
    finally:
        lost.store.close()
    new = Replica(ServiceConfig(network_dir=net.dir, state_dir=tmp_path / "new", first_start=True))
    try:
        assert new.status()["replica"]["warming_up_for"] == 0
    finally:
        new.store.close()
    again = Replica(ServiceConfig(network_dir=net.dir, state_dir=tmp_path / "new"))
    try:  # restarted without ever granting: its horizon says no lease can be alive
        assert again.status()["replica"]["warming_up_for"] == 0
    finally:
        again.store.close()


async def test_force_skips_capacity_within_the_emergency_budget(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net) as (replica, url):
        await setup(net, url, scope=net.scope(A, serial=1, force=True))
        one, two = LightNode(net, [url]), LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await one.start(nursery)
            await two.start(nursery)
            # no aggregate at all: an unforced ask would be "aggregate-stale"
            r = await one.ask(A)
            assert r.token is not None
            r = await two.ask(A)
            assert (r.gate, r.reason) == ("capacity", "emergency-budget")
            nursery.cancel_scope.cancel()
        forced = replica.store.audit_rows("force")
        assert [f.node for f in forced] == [one.node]


async def test_origin_metrics_docs_nudges_peers_and_signals(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net) as (_replica, url):
        await setup(net, url)
        code, answer = await ahttp("PUT", f"{url}/v1/artifacts/{A}", A_BYTES[:-1])
        assert code == 400 and answer["error"] == "artifact-mismatch"
        code, answer = await ahttp("PUT", f"{url}/v1/artifacts/{B}", A_BYTES)
        assert code == 400
        code, _ = await ahttp("PUT", f"{url}/v1/artifacts/{A}", A_BYTES)
        assert code == 200
        assert await ahttp("GET", f"{url}/v1/artifacts/{A}") == (200, A_BYTES)
        assert await ahttp("GET", f"{url}/v1/artifacts/{A}/chunks/1") == (200, A_BYTES[1024:2048])
        assert (await ahttp("GET", f"{url}/v1/artifacts/{B}"))[0] == 404

        one, two = LightNode(net, [url]), LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await one.start(nursery)
            await two.start(nursery)
            await one.status()
            await two.status()
            got = await one.client.fetch_docs()
            assert {docs.peek_type(d) for d in got} == {"allowlist", "scope", "release"}
            answer = await one.client.links[0].send(coordproto.PeersRequest(count=5))
            assert isinstance(answer, coordproto.PeersAnswer)
            assert [p.node for p in answer.peers] == [two.node]
            answer = await one.client.links[0].send(
                coordproto.SignalRequest(to=two.node, data=b"sdp")
            )
            assert answer == coordproto.Ack()
            nudge = (
                docs.Nudge(
                    serial=1, issued=int(time.time()), expires=int(time.time()) + 60, artifact=A
                )
                .sign(net.coordinator_keys())
                .to_wire()
            )
            await publish(url, nudge)
            with trio.fail_after(5):
                while not any(
                    isinstance(p, coordproto.DocumentPush) and p.nudge for p in two.pushes
                ):
                    await trio.sleep(0.01)
            assert coordproto.SignalPush(sender=one.node, data=b"sdp") in two.pushes
            await one.ask(A)
            nursery.cancel_scope.cancel()
        code, text = await ahttp("GET", f"{url}/metrics")
        assert code == 200
        body = text.decode()
        assert (
            'p2pupdate_coordinator_asks_total{gate="capacity",reason="granted",result="granted"} 1.0'
            in body
        )
        assert "p2pupdate_coordinator_connected_nodes" in body


async def test_forged_or_replayed_requests_close_the_channel(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net) as (_replica, url):
        await setup(net, url)
        node = LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await node.start(nursery)
            link = node.client.links[0]
            ws = link._ws
            assert ws is not None
            assert link._session is not None
            frame = coordproto.seal_request(link._session, 99, coordproto.DocsRequest())
            await ws.send(frame[:10] + bytes([frame[10] ^ 1]) + frame[11:])  # bad MAC
            with trio.fail_after(5):
                while link.is_connected and link._ws is ws:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


def test_the_aggregate_is_a_median_a_lying_minority_cannot_move(tmp_path: Path) -> None:
    # reports without a hello have no subnet: all five are one subnet's (admission)
    net = Network(tmp_path / "net", subnet_reporters=8)
    replica = Replica(ServiceConfig(network_dir=net.dir))
    try:
        honest = [(1000.0, 500.0, 40), (1010.0, 490.0, 41), (990.0, 510.0, 39)]
        liars = [(1e9, 0.0, 100000), (1e9, 0.0, 100000)]
        for i, (c, load, s) in enumerate(honest + liars):
            fields = {
                "version": "v1",
                "artifact": ZERO,
                "state": "serving",
                "pool": "p",
                "estimate": {"capacity": c, "load": load, "serving": s, "age": 0.0},
                "held": None,
                "addrs": [],
            }
            replica.on_status(f"{i:064x}", coordproto.StatusReport.from_wire(fields))
        agg = replica.aggregate("p")
        assert (agg.capacity, agg.load, agg.serving) == (1010.0, 490.0, 41)
        # one node reporting again replaces its estimate: distinct reporters only
        for _ in range(10):
            again = {**fields, "estimate": {**fields["estimate"]}}
            replica.on_status(f"{3:064x}", coordproto.StatusReport.from_wire(again))
        assert replica.aggregate("p").capacity == 1010.0
        replica.store.flush()
        columns = [r[1] for r in replica.store.db.execute("PRAGMA table_info(nodes)")]
        assert "load" not in columns and "capacity" not in columns
    finally:
        replica.store.close()


async def test_a_malformed_answer_is_the_replicas_fault_and_the_link_reconnects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link decodes each answer with the classes for its request kind; one that does
    not decode never reaches the caller: ``CoordinatorUnavailable``, and a new connection."""
    real = Server._dispatch

    class Garbled:
        def to_wire(self) -> dict[str, object]:
            return {"ok": True, "docs": "not a list"}

    class GarbledPush:
        def to_wire(self) -> dict[str, object]:
            return {"push": "doc", "doc": "not bytes"}

    async def dispatch(self: Server, conn: NodeConn, request: coordproto.Request) -> Any:
        if isinstance(request, coordproto.DocsRequest):
            return Garbled()
        return await real(self, conn, request)

    monkeypatch.setattr(Server, "_dispatch", dispatch)
    net = Network(tmp_path / "net")
    async with in_process(net) as (replica, url):
        await setup(net, url)
        node = LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await node.start(nursery)
            link = node.client.links[0]
            ws = link._ws
            with pytest.raises(CoordinatorUnavailable, match="malformed docs answer"):
                await link.send(coordproto.DocsRequest())
            with trio.fail_after(5):
                while not (link.is_connected and link._ws is not ws):
                    await trio.sleep(0.01)
            assert await node.client.fetch_docs() == []  # garbled again: nothing taken
            with trio.fail_after(5):
                await node.client.wait_connected()
            assert await node.status() == 1  # the other answers still decode
            ws = link._ws
            replica.push_all(GarbledPush())  # type: ignore[arg-type]
            with trio.fail_after(5):
                while not (link.is_connected and link._ws is not ws):
                    await trio.sleep(0.01)
            assert node.pushes == []  # a push that does not decode reaches no one
            nursery.cancel_scope.cancel()
