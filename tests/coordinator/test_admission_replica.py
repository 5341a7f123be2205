"""P10 item 2, the replica's side of admission: who may hold a session, and who counts.

* the hello: ``enrolled`` admits a node only with its own fresh member document, ``open``
  only an id with the network's proof of work; a new id from a /24 that holds
  ``subnet_nodes`` ids already is refused (``admission/subnet-full``), a known id never;
* standing: only counted nodes (enrolled, or seen for ``standing_s``) show in the version
  counts (the issue: "300 made-up node ids registered in 0.6 s and now show as a version
  in status") and enter a pool's aggregate, at most ``subnet_reporters`` per /24, the
  longest-standing first (the issue: "64 made-up reporters moved the pool's aggregate to
  capacity 0 / load 10^6");
* the network document: a bad one refuses the start, an absent one is the old rule.

The real ``Replica`` and ``Server`` in this trio run (the wall clock moved by the test, as
standing needs) and the real node protocol (``ReplicaLink``, from other /24s of loopback);
one ``serve`` process for the refused start.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from coordinator.errors import ConfigError
from coordinator.policy import PolicyConfig
from coordinator.server import Server
from coordinator.service import Replica, ServiceConfig
from coordinator.statefiles import DB_FILE
from coordinator.store import Store
from p2pupdate.core import admission, crypto
from p2pupdate.core import coordproto as proto
from p2pupdate.core import documents as docs
from p2pupdate.net.replica_link import ReplicaLink

from .service_helpers import REPO, ZERO, LightNode, Network, ahttp

HONEST = (1000.0, 100.0, 50)
LIE = (0.0, 1e6, 0)


class _Wall:
    """The replica's wall clock, moved by the test (standing is wall time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@asynccontextmanager
async def _serve(net: Network, wall: _Wall) -> AsyncIterator[tuple[Replica, str]]:
    config = ServiceConfig(
        network_dir=net.dir, policy=PolicyConfig(min_serving=0), first_start=True
    )
    replica = Replica(config, wall=wall)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(Server(replica).serve, "127.0.0.1", 0)
            yield replica, f"http://127.0.0.1:{port}"
            nursery.cancel_scope.cancel()
    finally:
        replica.store.close()


def _key() -> crypto.SigningKey:
    return crypto.SigningKey.from_seed(os.urandom(32))


def _report(
    version: str = "v1", pool: str = "default", estimate: tuple[float, float, int] | None = None
) -> proto.StatusReport:
    return proto.StatusReport(
        version=version,
        artifact=ZERO,
        state="serving",
        pool=pool,
        estimate=None
        if estimate is None
        else proto.Estimate(capacity=estimate[0], load=estimate[1], serving=estimate[2], age=0.0),
        held=None,
        addrs=(),
    )


async def _session(
    url: str,
    key: crypto.SigningKey,
    *,
    source: str = "127.0.0.1",
    member: bytes | None = None,
    report: proto.StatusReport | None = None,
) -> str | proto.Answer:
    """One session of the real protocol: hello, one status report, close.  The refusal
    reason when the hello is refused, else the report's answer."""
    link = ReplicaLink(
        url, key, member=None if member is None else lambda: member, local_address=source
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        with trio.fail_after(5):
            while not link.is_connected and link.refused is None:
                await trio.sleep(0.001)
        answer: str | proto.Answer
        if link.refused is not None:
            answer = link.refused.reason
        else:
            answer = await link.send(report or _report())
            if isinstance(answer, proto.StatusAck):  # taken (P11: with the heartbeat)
                answer = proto.Ack()
        nursery.cancel_scope.cancel()
    return answer


async def _settled(rep: Replica) -> None:
    """Every session this test opened is closed at the replica too (it sees a close a
    moment after the client): only then may the test move the wall clock, or a late
    close would count as seen at the moved time."""
    with trio.fail_after(5):
        while rep.registry.sessions:
            await trio.sleep(0.005)


async def _status(url: str) -> dict[str, Any]:
    code, st = await ahttp("GET", f"{url}/status")
    assert code == 200
    return st  # type: ignore[no-any-return]


def _capacity(st: dict[str, Any], pool: str = "default") -> tuple[float, float, int]:
    agg = st["pools"][pool]["aggregate"]
    return agg["capacity"], agg["load"], agg["serving"]


# -- (a) enrolled: the member document at the hello --------------------------------------------


async def test_enrolled_admits_a_node_with_its_own_member_document_only(tmp_path: Path) -> None:
    net = Network(tmp_path / "net", admission="enrolled")
    wall = _Wall()
    async with _serve(net, wall) as (rep, url):
        key, other = _key(), _key()
        assert await _session(url, key) == "admission/not-enrolled"
        borrowed = net.member(other.keyid)
        assert await _session(url, key, member=borrowed) == "admission/bad-member"
        assert rep.nodes == {}
        ok = await _session(url, key, member=net.member(key.keyid, pool="edge"))
        assert ok == proto.ErrorAnswer(
            error="admission/wrong-pool",
            detail="this node's member document puts it in pool 'edge', not 'default'",
        ), "a report naming another pool than the member's is refused"
        assert rep.nodes == {}  # and changes nothing
        got = await _session(
            url, key, member=net.member(key.keyid, pool="edge"), report=_report(pool="edge")
        )
        assert got == proto.Ack()
        assert rep.registry.who(key.keyid) == admission.Standing(
            counted=True, subnet="127.0.0.0/24"
        )
        # an ask naming another pool than the member's is refused before any gate
        other_pool = LightNode(
            net, [url], pool="default", key=key, member=net.member(key.keyid, pool="edge")
        )
        async with trio.open_nursery() as nursery:
            await other_pool.start(nursery)
            asked = await other_pool.ask(ZERO)
            nursery.cancel_scope.cancel()
        st = await _status(url)
        metrics = (await ahttp("GET", f"{url}/metrics"))[1]
        rep.store.flush()
        (row,) = rep.store.load_nodes()  # kept for who() after a restart
        assert row.member_expires is not None and row.subnet == "127.0.0.0/24"
    assert st["nodes"]["versions"] == {"v1": 1} and st["nodes"]["uncounted"] == 0
    assert st["admission"]["rule"] == "enrolled"
    assert "admission/wrong-pool: this node's member document puts it in pool" in asked.error
    assert st["admission"]["refused"] == {"admission/not-enrolled": 1, "admission/bad-member": 1}
    assert (
        'p2pupdate_coordinator_hellos_refused_total{reason="admission/not-enrolled"} 1.0'
        in metrics.decode()
    )


# -- (b) open: proof of work at the hello ------------------------------------------------------


async def test_open_admits_only_an_id_with_the_proof_of_work(tmp_path: Path) -> None:
    net = Network(tmp_path / "net", pow_bits=8)
    async with _serve(net, _Wall()) as (rep, url):
        weak = _key()
        while admission.pow_ok(weak.keyid, 8):  # 1 in 256 random keys has the work
            weak = _key()
        assert await _session(url, weak) == "admission/proof-of-work"
        strong, _tries = admission.make_pow_key(8, lambda: os.urandom(32))
        assert await _session(url, strong) == proto.Ack()
        st = await _status(url)
    assert set(rep.nodes) == {strong.keyid}
    assert st["admission"]["pow_bits"] == 8
    assert st["admission"]["refused"] == {"admission/proof-of-work": 1}


# -- (c) made-up ids: not counted, capped per /24 ----------------------------------------------


async def test_made_up_ids_do_not_show_as_a_version_and_a_full_subnet_takes_no_more(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net", standing_s=3600, subnet_nodes=16)
    wall = _Wall()
    honest = _key()
    async with _serve(net, wall) as (rep, url):
        assert await _session(url, honest) == proto.Ack()
        await _settled(rep)
        wall.offset += 3601  # the honest node comes back after its standing time
        assert await _session(url, honest) == proto.Ack()
        # 24 made-up ids of one /24 (the 300 ids, over the real protocol)
        made_up = [_key() for _ in range(24)]
        results = [
            await _session(url, k, source=f"127.0.1.{i + 1}", report=_report("v666"))
            for i, k in enumerate(made_up)
        ]
        assert results == [proto.Ack()] * 16 + ["admission/subnet-full"] * 8
        st = await _status(url)
        assert st["nodes"]["versions"] == {"v1": 1}, "made-up ids show as a version"
        assert (st["nodes"]["counted"], st["nodes"]["uncounted"]) == (1, 16)
        assert st["admission"]["refused"] == {"admission/subnet-full": 8}
        # a known id always gets back in, from the full subnet too; a new one of another
        # /24 is not held up by it
        assert await _session(url, made_up[0], source="127.0.1.77") == proto.Ack()
        assert await _session(url, honest, source="127.0.1.78") == proto.Ack()
        assert await _session(url, _key(), source="127.0.2.1") == proto.Ack()
        assert rep.registry.who(honest.keyid) == admission.Standing(True, "127.0.1.0/24")
        # 300 more through the replica's own calls (what the server does at each hello
        # and report): past the cap of their /24, every one refused
        refused = 0
        for i in range(300):
            node = _key().keyid
            verdict = rep.admit(node, None, f"127.0.3.{i % 250 + 1}:4000")
            if isinstance(verdict, admission.Refused):
                refused += 1
                continue
            rep.on_status(node, _report("v666"))
            rep.left(node)
        assert refused == 300 - 16
        st = await _status(url)
        assert st["nodes"]["versions"] == {"v1": 1}
        assert st["nodes"]["uncounted"] == 16 + 1 + 16
        first_seen = rep.nodes[honest.keyid].first_seen
    # standing survives a restart (first_seen is kept, never moved); new ids still wait
    async with _serve(net, wall) as (rep, url):
        assert rep.nodes[honest.keyid].first_seen == first_seen
        assert rep.registry.who(honest.keyid).counted
        assert not rep.registry.who(made_up[1].keyid).counted
        await _settled(rep)
        wall.offset += 3601
        assert not rep.registry.who(made_up[1].keyid).counted, "waiting alone earns standing"
        assert await _session(url, made_up[1], source="127.0.1.2") == proto.Ack()
        assert rep.registry.who(made_up[1].keyid).counted  # back an hour on: it counts
        assert not rep.registry.who(_key().keyid).counted  # never seen: never counted
        # a week on, the ids not seen since (none counted) are forgotten; the honest node,
        # back meanwhile, is kept
        registered = len(rep.nodes)
        await _settled(rep)
        wall.offset += admission.FORGET_UNCOUNTED + 1
        assert await _session(url, honest) == proto.Ack()
        assert rep.registry.forget_idle() == registered - 1
        rep.store.flush()
        assert set(rep.nodes) == {honest.keyid}
    async with _serve(net, wall) as (rep, url):
        assert set(rep.nodes) == {honest.keyid}, "a forgotten id's row came back"


def test_the_registration_cap_counts_open_sessions_and_ids_seen_within_a_day(
    tmp_path: Path,
) -> None:
    """What ``Replica.admit`` counts against ``subnet_nodes``: a burst of hellos that have
    not reported yet (they would all pass before the first report), and registered ids
    seen within ``REGISTRATION_WINDOW`` -- not the ones gone for longer."""
    net = Network(tmp_path / "net", subnet_nodes=3)
    wall = _Wall()
    replica = Replica(ServiceConfig(network_dir=net.dir), wall=wall)
    try:
        # the document the replica loaded is the one every cap reads (leases, failures too)
        assert replica.network == net.config
        assert replica.asks.network() is replica.breakers.network() is replica.network
        ids = [_key().keyid for _ in range(4)]
        peer = "192.0.2.{}:4000".format
        assert [type(replica.admit(n, None, peer(i))) for i, n in enumerate(ids)] == [
            admission.Admitted
        ] * 3 + [admission.Refused]
        replica.left(ids[0])  # one hello went away without a report: its place is free
        assert isinstance(replica.admit(ids[3], None, peer(9)), admission.Admitted)
        for n in ids[1:]:
            replica.on_status(n, _report())
            replica.left(n)
        assert isinstance(replica.admit(ids[0], None, peer(1)), admission.Refused)
        wall.offset += admission.REGISTRATION_WINDOW + 1  # the three were not seen for a day
        assert isinstance(replica.admit(ids[0], None, peer(1)), admission.Admitted)
        assert replica.registry.who(ids[0]).subnet == "192.0.2.0/24"
    finally:
        replica.store.close()


async def test_made_up_ids_are_refused_in_an_enrolled_network(tmp_path: Path) -> None:
    net = Network(tmp_path / "net", admission="enrolled")
    async with _serve(net, _Wall()) as (rep, url):
        honest = _key()
        assert await _session(url, honest, member=net.member(honest.keyid)) == proto.Ack()
        results = {
            await _session(url, _key(), source=f"127.0.1.{i + 1}", report=_report("v666"))
            for i in range(24)
        }
        assert results == {"admission/not-enrolled"}
        st = await _status(url)
    assert set(rep.nodes) == {honest.keyid}
    assert st["nodes"]["versions"] == {"v1": 1} and st["nodes"]["total"] == 1


# -- (d) made-up reporters do not steer the aggregate -------------------------------------------


async def test_made_up_reporters_do_not_move_the_aggregate_in_an_open_network(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net", standing_s=3600)  # subnet_reporters: 4 (the default)
    wall = _Wall()
    async with _serve(net, wall) as (rep, url):
        # six honest reporters in six /24s, and one in the /24 the liars will use; each
        # comes back an hour later (a session history of standing_s: now they count)
        honest = [
            (_key(), source) for source in (*(f"127.0.{10 + i}.1" for i in range(6)), "127.0.9.200")
        ]
        for _ in range(2):
            for k, source in honest:
                answer = await _session(url, k, source=source, report=_report(estimate=HONEST))
                assert answer == proto.Ack()
            await _settled(rep)
            wall.offset += 3601
        assert _capacity(await _status(url)) == HONEST
        liars = [_key() for _ in range(64)]

        async def lie() -> None:
            for i, k in enumerate(liars):
                source = f"127.0.9.{i + 1}"
                answer = await _session(url, k, source=source, report=_report(estimate=LIE))
                assert answer == proto.Ack()

        await lie()
        st = await _status(url)
        assert _capacity(st) == HONEST, "64 made-up reporters without standing moved it"
        assert st["pools"]["default"]["aggregate"]["reporters"] == 7
        assert st["pools"]["default"]["aggregate"]["ignored"] == 64
        await _settled(rep)
        wall.offset += 3601  # waiting alone earns the liars nothing
        assert not any(rep.registry.who(k.keyid).counted for k in liars)
        # back an hour on, the liars have standing too: their /24 weighs subnet_reporters,
        # the honest node there first (it was there before them)
        await lie()
        chosen = rep.registry.reporters("default")
        assert len(chosen) == 7 + 3
        st = await _status(url)
        assert _capacity(st) == HONEST
        assert rep.aggregate("default").capacity == HONEST[0]


async def test_made_up_reporters_do_not_move_the_aggregate_in_an_enrolled_network(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net", admission="enrolled")
    async with _serve(net, _Wall()) as (_rep, url):
        for i in range(3):
            k = _key()
            answer = await _session(
                url,
                k,
                source=f"127.0.{10 + i}.1",
                member=net.member(k.keyid),
                report=_report(estimate=HONEST),
            )
            assert answer == proto.Ack()
        for i in range(64):
            answer = await _session(
                url, _key(), source=f"127.0.9.{i + 1}", report=_report(estimate=LIE)
            )
            assert answer == "admission/not-enrolled"
        st = await _status(url)
    assert _capacity(st) == HONEST
    assert st["pools"]["default"]["aggregate"]["reporters"] == 3
    assert st["admission"]["refused"] == {"admission/not-enrolled": 64}


def test_reporters_are_capped_per_subnet_the_longest_standing_first() -> None:
    R = admission.Reporter
    reporters = [
        R(node="n5", subnet="10.0.0.0/24", first_seen=50.0),
        R(node="n1", subnet="10.0.0.0/24", first_seen=10.0),
        R(node="n3", subnet="10.0.0.0/24", first_seen=30.0),
        R(node="n2", subnet="10.0.0.0/24", first_seen=30.0),  # a tie: by node id
        R(node="m1", subnet="10.0.1.0/24", first_seen=99.0),
        R(node="u1", subnet=None, first_seen=1.0),
        R(node="u2", subnet=None, first_seen=2.0),
    ]
    assert admission.pick_reporters(reporters, 2) == ["u1", "u2", "n1", "n2", "m1"]
    assert admission.pick_reporters(reporters, 1) == ["u1", "n1", "m1"]
    assert admission.pick_reporters([], 4) == []
    cfg = admission.default_config("t")
    assert admission.registration_refused(cfg, subnet="10.0.0.0/24", recent=255) is None
    full = admission.registration_refused(cfg, subnet="10.0.0.0/24", recent=256)
    assert full is not None and full.reason == "admission/subnet-full"


# -- (e) the network document at start ------------------------------------------------------------


def _sign_config(net: Network, signer: crypto.SigningKey, **over: Any) -> bytes:
    now = int(time.time())
    obj = admission.default_config(net.root.network).to_obj()
    obj.update({"issued": now - 10, "expires": now + 3600, **over})
    return docs.NetworkConfig.from_obj(obj).sign([signer]).to_wire()


def test_a_bad_network_document_refuses_the_start_in_one_line(tmp_path: Path) -> None:
    """A forged one (signed by the operator key, not the root's) stops ``serve`` in one
    line that names the file and says why; nothing is served on the old rule."""
    net = Network(tmp_path / "net", admission="enrolled")
    path = net.dir / admission.NETWORK_FILE
    path.write_bytes(_sign_config(net, net.key("operator"), admission="open"))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "serve",
            "--dir",
            str(net.dir),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=15,  # it answers in ~0.5 s; a replica that starts anyway never returns
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "network.msgpack (the network document)" in r.stderr and "root" in r.stderr


@pytest.mark.parametrize("damage", ["garbage", "expired", "other-network", "directory", "huge"])
def test_each_bad_network_document_is_the_local_states_fault(tmp_path: Path, damage: str) -> None:
    net = Network(tmp_path / "net")
    path = net.dir / admission.NETWORK_FILE
    root = net.key("root")
    now = int(time.time())
    if damage == "garbage":
        path.write_bytes(os.urandom(300))
    elif damage == "expired":
        path.write_bytes(_sign_config(net, root, issued=now - 9000, expires=now - 3600))
    elif damage == "other-network":
        path.write_bytes(_sign_config(net, root, network="elsewhere"))
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(b"\0" * (10 << 20))
    with pytest.raises(ConfigError) as info:
        Replica(ServiceConfig(network_dir=net.dir))
    assert info.value.fault == "local"
    assert str(path) in str(info.value)
    assert {
        "expired": "expired",
        "other-network": "'elsewhere'",
        "directory": "directory",
        "huge": "limit",
    }.get(damage, "sign a new one with the root key") in str(info.value)


def test_no_network_document_is_the_rule_before_admission(tmp_path: Path) -> None:
    net = Network(tmp_path / "net", admission="enrolled")
    (net.dir / admission.NETWORK_FILE).unlink()
    logged: list[str] = []
    replica = Replica(ServiceConfig(network_dir=net.dir), log=logged.append)
    try:
        st = replica.status()["admission"]
        assert (st["rule"], st["pow_bits"], st["standing_s"]) == ("open", 0, 0)
        assert st["caps"] == admission.DEFAULT_CAPS
        assert any(line.startswith("network configuration v1") for line in logged), logged
    finally:
        replica.store.close()


# -- the registry's rows: an old database opens ----------------------------------------------------


def test_a_registry_from_before_admission_opens_and_its_rows_keep_their_seen_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_FILE
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE nodes (node TEXT PRIMARY KEY, pool TEXT NOT NULL, version TEXT NOT NULL, "
        "artifact TEXT NOT NULL, state TEXT NOT NULL, held TEXT, seen REAL NOT NULL)"
    )
    db.execute(
        "INSERT INTO nodes VALUES (?, 'default', 'v1', ?, 'serving', NULL, 1234.5)",
        ("ab" * 32, ZERO),
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        (row,) = store.load_nodes()
        assert store.damage == []
        assert (row.seen, row.first_seen, row.subnet, row.member_expires) == (
            1234.5,
            1234.5,
            None,
            None,
        )
    finally:
        store.close()
