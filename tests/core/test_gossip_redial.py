"""The gossip core's dials back off per contact (P7 item 2: every reconnect path).

A passive contact whose link comes up and is dropped at once (a peer that is full, or
refuses us, or crashes on our first frame) stayed in the passive view and was dialed
again at every round: 96 dials in 96 s, 480 with 200 ms LAN rounds.  Now a failed dial or
a link lost within ``stable_link`` of coming up backs the contact off (``redial_base``
doubling to ``redial_cap``, equal jitter).  The core takes time as an argument, so the
window is simulated by passing ``now`` (README "Architecture").
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from p2pupdate.core.gossip import Contact, Dial, DialFailed, Introduced, LinkDown, LinkUp
from p2pupdate.core.timing import capped_exponential

from .harness import NOW
from .test_gossip import FAST, key_for, lone_node

CONFIG = replace(FAST, round_jitter=0.0)
WINDOW = 96


def _most_dials(window: float) -> int:
    """Every wait at its shortest (half its ceiling): the most dials the backoff allows."""
    t, n = 0.0, 0
    while t <= window:
        n += 1
        t += capped_exponential(CONFIG.redial_base, CONFIG.redial_cap, n - 1) / 2
    return n


def _dials(*, link_lives: float | None, rounds: int = WINDOW) -> list[float]:
    """Run a lone node with one contact; each dial of it comes up and is dropped after
    ``link_lives`` seconds (None: the dial fails).  When each dial was made."""
    g, _, _ = lone_node(config=CONFIG)
    peer = key_for("dropper")
    contact = Contact(node=peer.keyid, host="7.7.7.7", port=1)
    g.handle(Introduced(contacts=(contact,)), 0.0, NOW)
    dials: list[float] = []
    drop_at: float | None = None
    for r in range(rounds):
        now = float(r)
        utc = NOW + r
        if drop_at is not None and now >= drop_at:
            g.handle(LinkDown(peer=peer.keyid), now, utc)
            drop_at = None
            g.handle(Introduced(contacts=(contact,)), now, utc)  # introduced again at once
        for effect in g.handle_timer(now, utc):
            if not isinstance(effect, Dial):
                continue
            dials.append(now)
            if link_lives is None:
                g.handle(DialFailed(node=peer.keyid, reason="refused"), now, utc)
                g.handle(Introduced(contacts=(contact,)), now, utc)
                continue
            up = LinkUp(peer=peer.keyid, host="7.7.7.7", inbound=False, contact=contact)
            g.handle(up, now, utc)
            if link_lives == 0.0:
                g.handle(LinkDown(peer=peer.keyid), now, utc)
                g.handle(Introduced(contacts=(contact,)), now, utc)
            else:
                drop_at = now + link_lives
    return dials


def test_a_contact_that_drops_every_link_at_once_is_dialed_with_backoff() -> None:
    dials = _dials(link_lives=0.0)
    # 2 s doubling to 120 s: about 7 dials in 96 s (it was one per round: 96)
    assert 4 <= len(dials) <= 10, dials
    assert len(dials) <= _most_dials(WINDOW)
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    assert gaps == sorted(gaps), gaps  # never sooner than the one before


def test_a_contact_whose_dials_fail_is_dialed_with_backoff() -> None:
    dials = _dials(link_lives=None)
    assert 4 <= len(dials) <= 10, dials
    assert len(dials) <= _most_dials(WINDOW)


def test_a_link_that_stayed_up_clears_the_backoff() -> None:
    lives = 31.0  # CONFIG.stable_link (30 s) and a bit
    dials = _dials(link_lives=lives, rounds=4 * int(lives))
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    # redialled in the round after each loss: a healthy link earned no backoff
    assert len(gaps) >= 2 and all(lives <= gap <= lives + 1.0 for gap in gaps), gaps
