"""The daemon's gossip shell in one trio run: real tcp links on loopback, real trust files.

Several ``GossipService`` instances bootstrap from ``--peer``-style static addresses, link
(one link per peer id), and spread an allowlist published at one of them; the verifier
drops a forged one and its sender is penalised.  The process-level tests (real daemons, a
real coordinator) are in ``test_gossip_fleet.py``.
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from p2pupdate.clock import SYSTEM, following_trio
from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto
from p2pupdate.core import gossip as g
from p2pupdate.core.crypto import Envelope
from p2pupdate.core.errors import RollbackError, SchemaError, VerificationError
from p2pupdate.daemon.coordinator import _contacts_of
from p2pupdate.daemon.gossip import (
    SEEK_FULL,
    SEEK_SHORT,
    GossipService,
    link_address,
    parse_hostport,
    parse_link_address,
    trust_verifier,
)
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.net.tcp import connect_tcp
from tests.coordinator.service_helpers import Network

ART = "ab" * 32


def _status() -> g.Status:
    return g.Status(
        version="1.0", artifact=ART, state="serving", pool="default", load=1.0, capacity=10.0
    )


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return Network(tmp_path_factory.mktemp("net") / "network")


def _service(
    net: Network, d: Path, i: int, peers: list[tuple[str, int]], delivered: list[tuple[int, str]]
) -> GossipService:
    trust = TrustFile.open(d / f"trust-{i}", initial_root=net.root_bytes, now=int(time.time()))
    return GossipService(
        key=crypto.SigningKey.from_seed(bytes([i + 1]) * 32),
        status=_status,
        clock=SYSTEM,
        verify=trust_verifier(trust, SYSTEM),
        # distinct loopback addresses: gossip caps identities per source address
        listen=(f"127.0.0.{i + 1}", 0),
        peers=peers,
        on_deliver=lambda _doc, slot: delivered.append((i, slot)),
        rng=random.Random(i),
        config=g.GossipConfig(round_interval=0.2, heartbeat_interval=1.0),
    )


def test_addresses() -> None:
    assert parse_hostport("10.0.0.1:7946") == ("10.0.0.1", 7946)
    assert parse_hostport("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        parse_hostport("nohost")
    assert link_address("10.0.0.1", 5) == "tcp:10.0.0.1:5"
    assert parse_link_address("tcp:0.0.0.0:5", "192.0.2.7") == ("192.0.2.7", 5)
    assert parse_link_address("tcp:0.0.0.0:5") is None
    assert parse_link_address("tcp:10.0.0.1:0") is None
    assert parse_link_address("rtc:abc") is None
    node = "cd" * 32
    peer = {"node": node, "pool": "p", "addrs": ["tcp:0.0.0.0:9", "junk"], "observed": "1.2.3.4:55"}
    assert _contacts_of(proto.Peer.from_wire(peer)) == [
        g.Contact(node=node, host="1.2.3.4", port=9)
    ]
    # A malformed introduction never reaches the daemon: the link cannot decode it.
    with pytest.raises(SchemaError):
        proto.Peer.from_wire({**peer, "node": "zz"})
    with pytest.raises(SchemaError):
        proto.PeersAnswer.from_wire({"ok": True, "peers": ["nonsense"]})


def test_verifier(network: Network, tmp_path: Path) -> None:
    trust = TrustFile.open(tmp_path / "t", initial_root=network.root_bytes, now=int(time.time()))
    verify = trust_verifier(trust, SYSTEM)
    assert verify(network.allowlist(5, [ART])).slot == "allowlist"
    with pytest.raises(RollbackError):
        verify(network.allowlist(4, [ART]))
    good = Envelope.from_wire(network.allowlist(6, [ART]))
    forged = network.allowlist(6, ["cd" * 32])
    bad = Envelope.from_wire(forged)
    tampered = Envelope(type=bad.type, payload=bad.payload, signatures=good.signatures)
    with pytest.raises(VerificationError):
        verify(tampered.to_wire())
    # the floor did not move for the forgery
    assert verify(network.allowlist(7, [ART])).slot == "allowlist"


async def test_services_link_and_spread(network: Network, tmp_path: Path) -> None:
    delivered: list[tuple[int, str]] = []
    services: list[GossipService] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            first = _service(network, tmp_path, 0, [], delivered)
            port = await nursery.start(first.run)
            services.append(first)
            for i in range(1, 5):
                svc = _service(network, tmp_path, i, [("127.0.0.1", port)], delivered)
                await nursery.start(svc.run)
                services.append(svc)
            # everyone links to someone; no peer id twice per node (the dict guarantees it;
            # the core agrees on what it was told)
            while not all(len(s.core.active) >= 2 for s in services if s.core is not None):
                await trio.sleep(0.1)
            for s in services:
                assert s.core is not None
                assert set(s.core.linked) == set(s.linked())
            assert first.publish(network.allowlist(10, [ART]))
            while {i for i, slot in delivered if slot == "allowlist"} != {1, 2, 3, 4}:
                await trio.sleep(0.05)
            # a forged allowlist from a scripted peer: dropped, and the peer penalised
            rogue_key = crypto.SigningKey.from_seed(b"\x99" * 32)
            link = await connect_tcp("127.0.0.1", port, key=rogue_key, expected_peer=None)
            bad = Envelope.from_wire(network.allowlist(11, ["cd" * 32]))
            good = Envelope.from_wire(network.allowlist(12, [ART]))
            forged = Envelope(type=bad.type, payload=bad.payload, signatures=good.signatures)
            await link.send(g.Rumor(doc=forged.to_wire()).to_wire())
            while first.stats.penalties == 0:
                await trio.sleep(0.05)
            assert first.core is not None
            assert first.core.score(rogue_key.keyid, trio.current_time()) >= 50
            await link.aclose()
            assert not any(slot == "allowlist" and i == 0 for i, slot in delivered)
            nursery.cancel_scope.cancel()


async def test_seek_backs_off_without_bound_on_fruitless_seeks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node alone with an introducer that never finds anybody seeks for (virtual) days.

    The active view never reaches its minimum, so the count of fruitless seeks grows
    without bound; the daemon crashed with ``OverflowError`` at the 1024th
    (``2.0 ** fruitless``).  Now the interval doubles from ``SEEK_SHORT`` up to
    ``SEEK_FULL`` and stays there.
    """
    asked: list[float] = []

    async def introducer(_count: int) -> list[g.Contact]:
        asked.append(trio.current_time())
        return []

    def refuse(_doc: bytes) -> g.Accepted:
        raise VerificationError("no documents in this test")

    svc = GossipService(
        key=crypto.SigningKey.from_seed(b"\x07" * 32),
        status=_status,
        clock=following_trio(),
        verify=refuse,
        listen=("127.0.0.1", 0),
        introducer=introducer,
        rng=random.Random(7),
        config=g.GossipConfig(round_interval=3600.0, heartbeat_interval=0.0),
    )
    seeks = 1500
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        while len(asked) < seeks:
            await trio.sleep(600.0)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(asked)]
    low, high = 0.8 - 1e-9, 1.2 + 1e-9
    for n, gap in enumerate(gaps[:5]):
        assert low * SEEK_SHORT * 2**n <= gap <= high * SEEK_SHORT * 2**n
    assert all(low * SEEK_FULL <= gap <= high * SEEK_FULL for gap in gaps[5:])
