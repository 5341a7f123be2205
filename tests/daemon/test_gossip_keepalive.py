"""Keepalives on every link (P8 item 4, contract C3): an idle link sends an empty frame
every ``KEEPALIVE``; one that hears nothing for ``LINK_DEAD`` is closed as *lost* (the core
then redials its peer with backoff).  Empty frames never reach the core: there they would
be a malformed message.

The link is real (the handshake over memory streams, as ``net.memory`` makes it); the peer
is the test, which chooses when to speak.  Time is trio's ``MockClock``.
"""

from __future__ import annotations

import random

import trio
import trio.testing

from p2pupdate.clock import following_trio
from p2pupdate.core import crypto
from p2pupdate.core import gossip as g
from p2pupdate.core.errors import VerificationError
from p2pupdate.daemon.gossip import KEEPALIVE, LINK_DEAD, GossipService
from p2pupdate.net.errors import LinkError
from p2pupdate.net.memory import memory_link_pair

KEY = crypto.SigningKey.from_seed(b"\x21" * 32)
PEER = crypto.SigningKey.from_seed(b"\x22" * 32)


def _status() -> g.Status:
    return g.Status(
        version="1.0", artifact="ab" * 32, state="serving", pool="default", load=1.0, capacity=1.0
    )


def _refuse(_doc: bytes) -> g.Accepted:
    raise VerificationError("no documents in this test")


def _service() -> GossipService:
    return GossipService(
        key=KEY,
        status=_status,
        clock=following_trio(),
        verify=_refuse,
        listen=("127.0.0.1", 0),
        rng=random.Random(1),
        # the core sends nothing on its own: only keepalives cross the link
        config=g.GossipConfig(round_interval=3600.0, heartbeat_interval=0.0),
    )


async def test_an_idle_link_is_kept_alive_and_a_silent_one_closed_as_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    svc = _service()
    got: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        theirs, ours = await memory_link_pair(PEER, KEY)
        nursery.start_soon(svc._inbound, ours)

        async def read() -> None:
            try:
                while True:
                    got.append((trio.current_time(), await theirs.receive()))
            except LinkError:
                got.append((trio.current_time(), b"<closed>"))

        nursery.start_soon(read)
        start = trio.current_time()
        for _ in range(20):  # the peer keeps the link alive with its own empty frames
            await trio.sleep(1.0)
            await theirs.send(b"")
        assert svc.linked() == [PEER.keyid]
        frames = [data for _, data in got]
        assert frames and set(frames) == {b""}  # keepalives only
        assert 20 / KEEPALIVE - 2 <= len(frames) <= 20 / KEEPALIVE + 1, len(frames)
        # the peer's empty frames never reached the core (it would charge them malformed)
        assert svc.stats.penalties == 0 and svc.stats.frames_in == 0
        # the peer goes silent (still reading): closed as lost after LINK_DEAD
        silent = trio.current_time()
        with trio.fail_after(LINK_DEAD + KEEPALIVE + 1):
            while svc.linked():
                await trio.sleep(0.1)
        closed = trio.current_time() - silent
        assert LINK_DEAD <= closed <= LINK_DEAD + 0.5, closed
        assert svc.stats.links_lost == 1
        assert start < silent
        nursery.cancel_scope.cancel()
