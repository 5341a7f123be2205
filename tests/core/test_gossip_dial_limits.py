"""The gossip core limits dials per address, not per node id (P10 item 4).

Node ids cost nothing: thirty made-up ids introduced at one victim's ``host:port`` made a
node dial that address again and again (each id backing off on its own), and hold dials
open to it for several ids at once.  Now a failed handshake backs the *address* off with
the same doubling as a node id, and one ``host:port`` stands for at most
``max_ids_per_address`` ids.  Time is an argument of the core, so the window is simulated
by passing ``now`` (README "Architecture").
"""

from __future__ import annotations

from dataclasses import replace

from p2pupdate.core.gossip import Contact, Dial, DialFailed, Introduced, LinkUp

from .harness import NOW
from .test_gossip import FAST, key_for, lone_node
from .test_gossip_redial import _most_dials

CONFIG = replace(FAST, round_jitter=0.0)
VICTIM = ("10.7.7.7", 4242)
WINDOW = 96


def _sybils(n: int) -> list[Contact]:
    return [
        Contact(node=key_for(f"sybil-{i}").keyid, host=VICTIM[0], port=VICTIM[1]) for i in range(n)
    ]


def test_thirty_ids_at_one_address_that_fails_are_dialed_like_one() -> None:
    g, _, _ = lone_node(config=CONFIG)
    sybils = _sybils(30)
    dials: list[tuple[float, str]] = []
    for r in range(WINDOW):
        now, utc = float(r), NOW + r
        g.handle(Introduced(contacts=tuple(sybils)), now, utc)  # the coordinator, every round
        for effect in g.handle_timer(now, utc):
            if isinstance(effect, Dial):
                assert (effect.contact.host, effect.contact.port) == VICTIM
                dials.append((now, effect.contact.node))
                g.handle(DialFailed(node=effect.contact.node, reason="refused"), now, utc)
    # one address backing off: as many dials as one contact gets (it was ~3 per round)
    assert len(dials) <= _most_dials(WINDOW), len(dials)
    assert len({t for t, _ in dials}) == len(dials), "two ids dialed at one address at once"


def test_one_address_stands_for_at_most_two_ids() -> None:
    g, _, _ = lone_node(config=CONFIG)
    sybils = _sybils(30)
    g.handle(Introduced(contacts=tuple(sybils)), 0.0, NOW)
    dialed: set[str] = set()
    for r in range(20):
        now, utc = float(r), NOW + r
        for effect in g.handle_timer(now, utc):
            if isinstance(effect, Dial):
                dialed.add(effect.contact.node)  # never answered: the dials stay pending
    assert 1 <= len(dialed) <= CONFIG.max_ids_per_address, len(dialed)


def test_honest_nodes_at_their_own_addresses_are_still_dialed() -> None:
    g, _, _ = lone_node(config=CONFIG)
    honest = [
        Contact(node=key_for(f"h-{i}").keyid, host=f"10.1.1.{i}", port=4000) for i in range(8)
    ]
    g.handle(Introduced(contacts=tuple(honest) + tuple(_sybils(30))), 0.0, NOW)
    linked: set[str] = set()
    for r in range(60):
        now, utc = float(r), NOW + r
        for effect in g.handle_timer(now, utc):
            if not isinstance(effect, Dial):
                continue
            c = effect.contact
            if c.host == VICTIM[0]:
                g.handle(DialFailed(node=c.node, reason="wrong key"), now, utc)
                continue
            g.handle(LinkUp(peer=c.node, host=c.host, inbound=False, contact=c), now, utc)
            linked.add(c.node)
    assert linked == {c.node for c in honest}  # every honest node reached, sybils or not
