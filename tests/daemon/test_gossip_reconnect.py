"""The gossip shell's reconnect paths back off with jitter (P7 item 2).

The seek (static peers probed, the coordinator asked for introductions) runs often while
the active view is short, backing off while it brings nobody new.  A lost link woke it at
once, whatever the backoff said: a peer that takes every link and drops it straight away
had this node seek -- and ask the coordinator for introductions -- after every drop.
Counted on trio's ``MockClock`` over 96 s; the links are real (the handshake over memory
streams), the peer that drops them is the fault.
"""

from __future__ import annotations

import itertools
import random

import trio
import trio.testing

from p2pupdate.clock import following_trio
from p2pupdate.core import crypto
from p2pupdate.core import gossip as g
from p2pupdate.core.errors import VerificationError
from p2pupdate.daemon.gossip import SEEK_SHORT, GossipService, seek_interval
from p2pupdate.net.memory import memory_link_pair

WINDOW = 96.0
#: How long each link of the dropping peer lives.
LIVES = 0.5


def _status() -> g.Status:
    return g.Status(
        version="1.0", artifact="ab" * 32, state="serving", pool="default", load=1.0, capacity=1.0
    )


def _refuse(_doc: bytes) -> g.Accepted:
    raise VerificationError("no documents in this test")


async def test_a_peer_that_drops_every_link_does_not_make_the_seek_spin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    key = crypto.SigningKey.from_seed(b"\x07" * 32)
    dropper = crypto.SigningKey.from_seed(b"\x08" * 32)
    asked: list[float] = []
    svc: GossipService

    async def introducer(_count: int) -> list[g.Contact]:
        """Each seek meets the peer: it links to us, and drops the link ``LIVES`` later."""
        asked.append(trio.current_time())
        theirs, ours = await memory_link_pair(dropper, key)
        assert svc._nursery is not None
        svc._nursery.start_soon(svc._inbound, ours)
        await trio.sleep(LIVES)
        await theirs.aclose()
        return []

    svc = GossipService(
        key=key,
        status=_status,
        clock=following_trio(),
        verify=_refuse,
        listen=("127.0.0.1", 0),
        introducer=introducer,
        rng=random.Random(7),
        config=g.GossipConfig(round_interval=3600.0, heartbeat_interval=0.0),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        await trio.sleep(WINDOW)
        nursery.cancel_scope.cancel()
    assert svc.stats.links_up >= 2  # the links did come up, and went down
    # 3 s doubling, +-20%: about 5 seeks in 96 s (a wake after each drop: one per ~0.5 s)
    gaps = [b - a for a, b in itertools.pairwise(asked)]
    assert len(asked) <= 7, len(asked)
    for n, gap in enumerate(gaps):
        assert gap >= 0.8 * seek_interval(short=True, fruitless=n), (n, gaps)
    assert gaps[0] >= 0.8 * SEEK_SHORT
