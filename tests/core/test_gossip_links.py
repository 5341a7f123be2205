"""Links in the gossip core (P8 items 2 and 4): which transport a dial tries, signaling
blobs relayed through a common peer (bounded, rate-limited, never forwarded twice), each
link's path kind in the views, and a lost link's peer redialed with backoff.

Pure: cores fed events with ``now`` as an argument (README "Architecture").
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from p2pupdate.core import coordproto, wire
from p2pupdate.core.errors import OversizeError, SchemaError
from p2pupdate.core.gossip import (
    MAX_RELAY_MESSAGE_BYTES,
    Contact,
    Dial,
    DialFailed,
    Gossip,
    Introduced,
    LinkDown,
    LinkUp,
    NeighborReply,
    Received,
    Relay,
    Relayed,
    SendSignal,
    Signaled,
    decode_message,
    is_loopback,
    link_plan,
    rtc_enabled,
)
from p2pupdate.core.timing import capped_exponential

from .harness import NOW
from .test_gossip import FAST, Attacker, key_for, lone_node, only_penalty, penalties_in, sends_in

PEER = key_for("peer")
TARGET = key_for("target")
FAR = Contact(node=PEER.keyid, host="192.0.2.7", port=7000)
LOOP = Contact(node=PEER.keyid, host="127.0.0.3", port=7000)


# -- which transport --------------------------------------------------------------------


def test_rtc_first_only_for_a_non_loopback_contact_with_a_signaling_path() -> None:
    assert link_plan(FAR, rtc=True, signaling=True) == ("rtc", "tcp")
    assert link_plan(FAR, rtc=True, signaling=False) == ("tcp",)  # no way to send an offer
    assert link_plan(FAR, rtc=False, signaling=True) == ("tcp",)  # --rtc off
    assert link_plan(FAR, rtc=True, signaling=True, unanswered=True) == ("tcp",)
    # aioice never offers 127.0.0.1: a loopback contact is tcp only, whatever else holds
    assert link_plan(LOOP, rtc=True, signaling=True) == ("tcp",)
    v6 = replace(FAR, host="::1")
    assert link_plan(v6, rtc=True, signaling=True) == ("tcp",)


def test_loopback_and_the_auto_rule() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.9.9.9", "::1", "localhost", "[::1]"))
    assert not any(is_loopback(h) for h in ("10.0.0.1", "0.0.0.0", "::", "example.org"))
    assert rtc_enabled("auto", ["10.0.0.5", None])
    assert rtc_enabled("auto", ["0.0.0.0", None])  # a wildcard listens beyond this host
    assert rtc_enabled("auto", ["127.0.0.1", "192.0.2.1"])  # advertised elsewhere
    assert not rtc_enabled("auto", ["127.0.0.1", None])
    assert rtc_enabled("on", ["127.0.0.1"]) and not rtc_enabled("off", ["10.0.0.1"])
    with pytest.raises(ValueError):
        rtc_enabled("sometimes", [])


# -- relay messages ---------------------------------------------------------------------


def test_relay_messages_round_trip_up_to_the_coordinators_signal_bound() -> None:
    top = b"\xab" * coordproto.MAX_SIGNAL
    for msg in (Relay(to=TARGET.keyid, data=top), Relayed(sender=TARGET.keyid, data=top)):
        data = msg.to_wire()
        assert len(data) <= MAX_RELAY_MESSAGE_BYTES
        assert decode_message(data) == msg
    with pytest.raises(ValueError):  # our own bug: refused before it is sent
        Relay(to=TARGET.keyid, data=top + b"x").to_wire()
    over = wire.encode({"k": "relay", "to": bytes(32), "data": top + b"x"})
    with pytest.raises(SchemaError):
        decode_message(over)
    huge = wire.encode({"k": "relayed", "from": bytes(32), "data": b"\x00" * 20_000})
    with pytest.raises(OversizeError):
        decode_message(huge)
    with pytest.raises(SchemaError):  # exact schema: no extra field
        decode_message(wire.encode({"k": "relay", "to": bytes(32), "data": b"x", "via": 1}))
    with pytest.raises(ValueError):
        SendSignal(to=TARGET.keyid, data=top + b"x")


def _hub() -> tuple[Gossip, Attacker, Attacker]:
    """A node linked to two peers, ``a`` and ``t``."""
    g, _, _ = lone_node()
    a, t = Attacker(key_for("a"), host="10.1.0.1"), Attacker(key_for("t"), host="10.1.0.2")
    a.link(g)
    t.link(g)
    return g, a, t


def test_a_relay_is_forwarded_once_to_a_linked_destination_only() -> None:
    g, a, t = _hub()
    out = a.send(g, Relay(to=t.node, data=b"offer"))
    assert [(s.peer, decode_message(s.data)) for s in sends_in(out)] == [
        (t.node, Relayed(sender=a.node, data=b"offer"))
    ]
    # the same blob again from the same peer: a replay, charged, not forwarded
    again = a.send(g, Relay(to=t.node, data=b"offer"))
    assert sends_in(again) == [] and only_penalty(again, "replayed")
    # no link to the destination, or addressed to us or back to the sender: dropped, no fault
    for to in (TARGET.keyid, g.node, a.node):
        out = a.send(g, Relay(to=to, data=b"x" + to.encode()))
        assert sends_in(out) == [] and penalties_in(out) == [], to


def test_relayed_comes_out_once_and_is_never_forwarded() -> None:
    g, a, t = _hub()
    msg = Relayed(sender=TARGET.keyid, data=b"answer")
    out = a.send(g, msg)
    assert out == [Signaled(sender=TARGET.keyid, data=b"answer", via=a.node)]
    # the same blob through another peer: dropped (one Signaled per blob), nobody charged
    assert t.send(g, msg) == []
    # a blob that claims to be our own, back to us: dropped
    assert a.send(g, Relayed(sender=g.node, data=b"mine")) == []


def test_a_relay_flood_is_cut_off_and_charged_once() -> None:
    g, a, t = _hub()
    budget = g.config.relay_budget
    forwarded = 0
    charged = []
    for i in range(budget + 5):
        out = a.send(g, Relay(to=t.node, data=b"blob-%d" % i), now=1.0)
        forwarded += len(sends_in(out))
        charged += penalties_in(out)
    assert forwarded == budget
    assert [p.rule for p in charged] == ["flood"]
    # a new window: the budget is back
    out = a.send(g, Relay(to=t.node, data=b"later"), now=1.0 + g.config.relay_window)
    assert len(sends_in(out)) == 1


def test_a_forwarder_keeps_each_destination_within_its_budget() -> None:
    """Many senders dialing one node through us: we forward at most the budget to it per
    window, so the destination never sees us as a flooder."""
    g, _, t = _hub()
    sent = 0
    for i in range(g.config.relay_budget + 4):
        s = Attacker(key_for(f"s{i}"), host=f"10.2.0.{i}")
        s.link(g)
        sent += len(sends_in(s.send(g, Relay(to=t.node, data=b"o"), now=2.0)))
    assert sent == g.config.relay_budget


def test_send_signal_goes_to_every_linked_peer_but_the_target_or_only_via() -> None:
    g, a, t = _hub()
    assert g.can_relay(t.node) and g.can_relay(TARGET.keyid)
    out = g.handle(SendSignal(to=t.node, data=b"offer"), 0.0, NOW)
    assert [(s.peer, decode_message(s.data)) for s in sends_in(out)] == [
        (a.node, Relay(to=t.node, data=b"offer"))
    ]
    out = g.handle(SendSignal(to=TARGET.keyid, data=b"answer", via=t.node), 0.0, NOW)
    assert [s.peer for s in sends_in(out)] == [t.node]
    lone, _, _ = lone_node(i=3)
    assert not lone.can_relay(TARGET.keyid)
    assert lone.handle(SendSignal(to=TARGET.keyid, data=b"o"), 0.0, NOW) == []


# -- path kinds and lost links ----------------------------------------------------------


def test_link_path_kinds_are_in_the_view() -> None:
    g, _, _ = lone_node()
    g.handle(LinkUp(peer=PEER.keyid, host="192.0.2.7", inbound=True, path="relay"), 0.0, NOW)
    g.handle(LinkUp(peer=TARGET.keyid, host="192.0.2.8", inbound=True), 0.0, NOW)
    assert g.paths == {PEER.keyid: "relay", TARGET.keyid: "tcp"}
    # the shell replaced the relayed link with a direct one: the view follows
    g.handle(LinkUp(peer=PEER.keyid, host="192.0.2.7", inbound=True, path="srflx"), 1.0, NOW)
    assert g.paths == {PEER.keyid: "srflx", TARGET.keyid: "tcp"} and len(g.linked) == 2
    with pytest.raises(ValueError):
        LinkUp(peer=PEER.keyid, host="x", inbound=True, path="carrier-pigeon")


def _active_link(g: Gossip, now: float) -> None:
    """Make PEER an active neighbour over an outbound link."""
    g.handle(Introduced(contacts=(FAR,)), now, NOW)
    dials = [e for e in g.handle_timer(now, NOW) if isinstance(e, Dial)]
    assert dials == [Dial(contact=FAR)]
    g.handle(LinkUp(peer=PEER.keyid, host=FAR.host, inbound=False, contact=FAR), now, NOW)
    g.handle(LinkUp(peer=PEER.keyid, host=FAR.host, inbound=False, contact=FAR), now, NOW)
    g.handle(Received(peer=PEER.keyid, data=NeighborReply(ok=True).to_wire()), now, NOW)
    assert PEER.keyid in g.active


def _dial_times(g: Gossip, start: float, end: float, fail: bool) -> list[float]:
    times = []
    t = start
    while t < end:
        for e in g.handle_timer(t, NOW + int(t)):
            if isinstance(e, Dial) and e.contact.node == PEER.keyid:
                times.append(t)
                if fail:
                    g.handle(DialFailed(node=PEER.keyid), t, NOW + int(t))
        t += 0.25
    return times


def test_a_lost_link_is_redialed_with_backoff_and_a_closed_one_is_not() -> None:
    cfg = replace(FAST, round_interval=0.25, round_jitter=0.0)
    g, _, _ = lone_node(config=cfg)
    _active_link(g, 0.0)
    g.handle(LinkDown(peer=PEER.keyid, reason="silent", lost=True), 40.0, NOW)
    # a link that had been up 40 s (> stable_link): redialed at the next round, then backing
    # off (2 s doubling, equal jitter) while the router is down
    times = _dial_times(g, 40.25, 200.0, fail=True)
    assert times[0] == 40.25
    assert len(times) == cfg.lost_redials, times  # then forgotten
    for n, (a, b) in enumerate(itertools.pairwise(times)):
        ceiling = capped_exponential(cfg.redial_base, cfg.redial_cap, n)
        assert ceiling / 2 <= b - a <= ceiling + cfg.round_interval, (n, times)
    assert PEER.keyid not in g.passive

    g2, _, _ = lone_node(config=cfg, i=1)
    _active_link(g2, 0.0)
    g2.handle(LinkDown(peer=PEER.keyid, reason="closed"), 40.0, NOW)
    assert _dial_times(g2, 40.25, 60.0, fail=True) == []  # closed in order: not redialed


def test_a_lost_peer_that_answers_again_is_linked_and_the_count_resets() -> None:
    cfg = replace(FAST, round_interval=0.25, round_jitter=0.0)
    g, _, _ = lone_node(config=cfg)
    _active_link(g, 0.0)
    g.handle(LinkDown(peer=PEER.keyid, reason="broken", lost=True), 40.0, NOW)
    assert _dial_times(g, 40.25, 40.5, fail=False) == [40.25]
    g.handle(LinkUp(peer=PEER.keyid, host=FAR.host, inbound=False, contact=FAR), 41.0, NOW)
    assert PEER.keyid in g.linked


def test_a_slow_dial_is_not_forgotten_before_dial_timeout() -> None:
    """An rtc attempt and then tcp may take longer than a neighbour request may."""
    cfg = replace(FAST, round_jitter=0.0)
    assert cfg.dial_timeout > cfg.request_timeout
    g, _, _ = lone_node(config=cfg)
    g.handle(Introduced(contacts=(FAR,)), 0.0, NOW)
    assert any(isinstance(e, Dial) for e in g.handle_timer(0.0, NOW))
    g.handle_timer(cfg.request_timeout + 2, NOW)
    assert PEER.keyid in g.passive  # still pending
    up = LinkUp(peer=PEER.keyid, host=FAR.host, inbound=False, contact=FAR)
    out = g.handle(up, cfg.request_timeout + 3, NOW)
    assert [decode_message(s.data).KIND for s in sends_in(out)] == ["join"]
