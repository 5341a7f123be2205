"""``holders.pick_holders``: which holders a fetching node opens extra links to."""

from __future__ import annotations

from p2pupdate.core.swarm.holders import EXTRA_LINKS, pick_holders

ME = "0" * 64


def _n(c: str) -> str:
    return c * 64


def test_whole_holders_first_then_the_larger_fraction() -> None:
    holders = [(_n("a"), "fetching", 200), (_n("b"), "held", 255), (_n("c"), "fetching", 30)]
    every = {_n(c) for c in "abc"}
    assert pick_holders(holders, me=ME, linked=(), reachable=every) == [_n("b"), _n("a"), _n("c")]
    assert pick_holders(holders, me=ME, linked=(), reachable=every, limit=2) == [_n("b"), _n("a")]


def test_linked_banned_unreachable_self_and_empty_ones_are_skipped() -> None:
    holders = [
        (_n("a"), "held", 255),  # linked already: its session runs over that link
        (_n("b"), "held", 255),  # banned
        (_n("c"), "held", 255),  # no contact
        (ME, "held", 255),  # this node
        (_n("d"), "fetching", 0),  # holds nothing yet
        (_n("e"), "fetching", 9),
    ]
    reachable = {_n(c) for c in "abde"} | {ME}
    picked = pick_holders(holders, me=ME, linked={_n("a")}, reachable=reachable, banned={_n("b")})
    assert picked == [_n("e")]
    assert pick_holders(holders, me=ME, linked=(), reachable=reachable, limit=0) == []


def test_bounded_and_spread_across_fetchers() -> None:
    holders = [(f"{i:064x}", "held", 255) for i in range(1, 30)]
    reachable = {n for n, _s, _f in holders}
    one = pick_holders(holders, me="1" * 64, linked=(), reachable=reachable)
    two = pick_holders(holders, me="2" * 64, linked=(), reachable=reachable)
    assert len(one) == len(two) == EXTRA_LINKS == 4
    assert one == pick_holders(holders, me="1" * 64, linked=(), reachable=reachable)  # pure
    assert one != two  # ties broken per fetcher: a fleet does not pile onto the same seeds
