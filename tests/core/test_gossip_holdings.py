"""Heartbeats say which artifacts a node holds or is fetching; ``Gossip.holders`` answers
from them (README "Artifacts peer to peer": finding holders)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from p2pupdate.core import wire
from p2pupdate.core.crypto import Envelope
from p2pupdate.core.documents import Heartbeat, open_heartbeat
from p2pupdate.core.errors import SchemaError
from p2pupdate.core.gossip import (
    MAX_HOLDINGS,
    MAX_MESSAGE_BYTES,
    HeartbeatMessage,
    Holding,
    Status,
    StatusChanged,
    holdings_from_summary,
)

from .harness import Network, node_key, sha256_hex
from .test_gossip import FAST, Attacker, formed, lone_node, only_penalty, status

A = [sha256_hex(bytes([i])) for i in range(8)]


def _held(i: int) -> Holding:
    return Holding(artifact=A[i], state="held", fraction=255)


def _signed(doc: Heartbeat, node: int = 1) -> bytes:
    return doc.sign([node_key(node)]).to_wire()


def _raw_heartbeat(net: Network, node: int, holdings: Any, *, seq: int = 1) -> bytes:
    """A heartbeat signed with any ``holdings`` value on the wire (what a bad peer sends)."""
    obj = net.heartbeat_doc(node, seq=seq).to_obj()
    obj["holdings"] = holdings
    return Envelope.sign("heartbeat", wire.encode(obj), [node_key(node)]).to_wire()


def test_holdings_round_trip_in_a_signed_heartbeat_that_still_fits() -> None:
    net = Network()
    holdings = (
        _held(0),
        Holding(artifact=A[1], state="fetching", fraction=0),
        Holding(artifact=A[2], state="fetching", fraction=254),
        _held(3),
    )
    doc = replace(net.heartbeat_doc(1, seq=2**52), version="v" * 64, pool="p" * 64)
    data = _signed(replace(doc, holdings=holdings))
    assert open_heartbeat(data).doc.holdings == holdings
    msg = HeartbeatMessage(doc=data, hops=3).to_wire()
    # the largest heartbeat (64-char version and pool, four holdings) keeps room to spare
    assert len(msg) < 800 < MAX_MESSAGE_BYTES, len(msg)
    raw = wire.decode(Envelope.from_wire(data).payload)
    assert raw["holdings"][0] == [bytes.fromhex(A[0]), "held", 255]  # 32 bytes, not hex


def test_a_heartbeat_without_holdings_is_the_old_wire_both_ways() -> None:
    """Backward-safe: no holdings means no key, so a node from before them accepts ours and
    we accept theirs (an old payload has exactly the old keys)."""
    net = Network()
    data = net.heartbeat(1)
    payload = wire.decode(Envelope.from_wire(data).payload)
    assert "holdings" not in payload
    assert open_heartbeat(data).doc.holdings == ()


@pytest.mark.parametrize(
    ("holdings", "why"),
    [
        ([[bytes.fromhex(A[i]), "held", 255] for i in range(MAX_HOLDINGS + 1)], "more than 4"),
        ([[bytes.fromhex(A[0]), "seeding", 255]], "holdings[0][1]"),
        ([[bytes.fromhex(A[0]), "fetching", 256]], "holdings[0][2]"),
        ([[bytes.fromhex(A[0]), "fetching", -1]], "holdings[0][2]"),
        ([[bytes.fromhex(A[0]), "held", 200]], "held artifact has fraction 255"),
        ([[bytes.fromhex(A[0])[:31], "held", 255]], "holdings[0][0]"),
        ([[A[0], "held", 255]], "holdings[0][0]"),
        ([[bytes.fromhex(A[0]), "held"]], "expected [artifact, state, fraction]"),
        ([[bytes.fromhex(A[0]), "held", 255], [bytes.fromhex(A[0]), "held", 255]], "twice"),
        ({"a": 1}, "array"),
    ],
)
def test_bad_holdings_are_refused_by_the_parser(holdings: Any, why: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(why)):
        open_heartbeat(_raw_heartbeat(Network(), 1, holdings))


def test_a_peer_sending_bad_holdings_is_penalised_not_a_crash() -> None:
    g, _, net = lone_node()
    evil = Attacker(node_key(77))
    assert evil.link(g) == []
    five = [[bytes.fromhex(A[i]), "held", 255] for i in range(5)]
    out = evil.send(g, HeartbeatMessage(doc=_raw_heartbeat(net, 1, five), hops=0))
    only_penalty(out, "malformed")
    other = Attacker(node_key(78), host="6.6.6.7")  # the first one may be banned by now
    assert other.link(g) == []
    bad_state = _raw_heartbeat(net, 2, [[b"x" * 32, "x", 1]])
    only_penalty(other.send(g, HeartbeatMessage(doc=bad_state, hops=0)), "malformed")
    assert g.heartbeats == {}
    assert g.holders(A[0]) == []


def test_status_refuses_more_than_four_holdings_or_one_named_twice() -> None:
    with pytest.raises(ValueError, match="at most 4"):
        replace(status(0), holdings=tuple(_held(i) for i in range(5)))
    with pytest.raises(ValueError, match="twice"):
        replace(status(0), holdings=(_held(0), _held(0)))


def test_holders_answers_from_the_heartbeats_it_knows() -> None:
    g, _, net = lone_node()
    evil = Attacker(node_key(77))
    assert evil.link(g) == []
    beats = {
        1: (_held(0), Holding(artifact=A[1], state="fetching", fraction=100)),
        2: (Holding(artifact=A[0], state="fetching", fraction=30),),
        3: (_held(0),),
        4: (),
    }
    for n, holdings in beats.items():
        doc = replace(net.heartbeat_doc(n, seq=5), holdings=holdings)
        assert evil.send(g, HeartbeatMessage(doc=_signed(doc, n), hops=0)) == []
    ids = {n: node_key(n).keyid for n in beats}
    want_held = sorted([ids[1], ids[3]])
    assert g.holders(A[0]) == [(n, "held", 255) for n in want_held] + [(ids[2], "fetching", 30)]
    assert g.holders(A[1]) == [(ids[1], "fetching", 100)]
    assert g.holders(A[5]) == []
    # a newer heartbeat replaces what a node said: node 3 dropped the artifact
    doc = replace(net.heartbeat_doc(3, seq=6), holdings=())
    assert evil.send(g, HeartbeatMessage(doc=_signed(doc, 3), hops=0)) == []
    assert [n for n, _, _ in g.holders(A[0])] == [ids[1], ids[2]]


def test_holdings_in_a_status_reach_other_nodes_through_heartbeats() -> None:
    cfg = replace(FAST, heartbeat_interval=3.0)
    fleet = formed(10, config=cfg, rounds=12)
    a = fleet.nodes[0]
    b = fleet.nodes[fleet.index[a.active[0]]]
    assert b.holders(A[0]) == []
    new = replace(fleet.statuses[0], holdings=(_held(0),))
    fleet.perform(0, a.handle(StatusChanged(status=new), fleet.now, fleet.utc))
    fleet.run(4)
    assert b.heartbeats[a.node].holdings == (_held(0),)
    assert (a.node, "held", 255) in b.holders(A[0])
    assert a.holders(A[0]) == []  # a node is not among its own holders
    assert fleet.penalties() == []


def test_holdings_from_a_store_summary_are_bounded_and_stable() -> None:
    summary = {A[0]: (10, 10), A[1]: (0, 4), A[2]: (3, 4), A[3]: (7, 7), A[4]: (9, 9)}
    got = holdings_from_summary(summary, running=A[4])
    assert got == (
        Holding(artifact=A[4], state="held", fraction=255),  # the running one first
        Holding(artifact=A[1], state="fetching", fraction=0),
        Holding(artifact=A[2], state="fetching", fraction=191),  # 3/4 of 255, rounded down
        Holding(artifact=min(A[0], A[3]), state="held", fraction=255),  # ties by artifact
    )
    assert A[1] < A[2]  # so the two fetching ones above are in artifact order too
    # 254 of 255 chunks is still "fetching", never the 255 that means whole
    assert holdings_from_summary({A[0]: (254, 255)}) == (
        Holding(artifact=A[0], state="fetching", fraction=254),
    )
    # nonsense entries (an empty map, more held than exist, not a sha256) are left out
    assert holdings_from_summary({A[0]: (0, 0), A[1]: (5, 4), "zz": (1, 1)}) == ()
    Status(**{**_status_kwargs(), "holdings": got})  # a status takes what it makes


def _status_kwargs() -> dict[str, Any]:
    s = status(0)
    return {
        "version": s.version,
        "artifact": s.artifact,
        "state": s.state,
        "pool": s.pool,
        "load": s.load,
        "capacity": s.capacity,
    }
