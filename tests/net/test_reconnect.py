"""Every reconnect path backs off with jitter (P7 item 2, the reconnect storm).

A node whose status report a replica refused was closed by every replica and came back
~6 times a second per replica (~600 times in 96 s): the replica link started its backoff
over after every *handshake*, and the replica closed the channel right after it.  Now a
connection must stay up ``STABLE_AFTER`` seconds before a loss counts as the first one.

Each path is counted over a simulated window on trio's ``MockClock`` (the fault -- a
replica that closes every connection -- injected by replacing the link's two socket
steps), and once over real sockets against a real replica.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio.testing

from p2pupdate.core import crypto, wire
from p2pupdate.net import replica_link
from p2pupdate.net.replica_link import ReplicaLink
from p2pupdate.net.websocket import WebSocketClosed

from ..coordinator.service_helpers import Network, in_process

WINDOW = 96.0


def _expected_most(window: float, failures_from: int = 0) -> int:
    """Most attempts the backoff allows in ``window`` seconds: every wait at its shortest
    (half its ceiling), from ``failures_from`` failures in a row."""
    t, n, f = 0.0, 0, failures_from
    while True:
        t += replica_link.reconnect_delay(f) / 2
        if t > window:
            return n + 1  # the first attempt happens at once
        n += 1
        f += 1


class _Closer:
    """The fault: each connection succeeds, then the replica closes it after ``lives``
    seconds.  Counts the attempts and when each was made."""

    def __init__(self, link: ReplicaLink, lives: float = 0.0) -> None:
        self.link = link
        self.lives = lives
        self.times: list[float] = []

        async def connect_once(timeout: float = 10.0) -> None:
            self.times.append(trio.current_time())

        async def read_loop() -> None:
            await trio.sleep(self.lives)
            raise WebSocketClosed("closed by the replica: schema: field 'capacity': ...")

        link.connect_once = connect_once  # type: ignore[method-assign]
        link._read_loop = read_loop  # type: ignore[method-assign]


def _link(seed: int = 7) -> ReplicaLink:
    key = crypto.SigningKey.from_seed(bytes([seed]) * 32)
    return ReplicaLink("http://127.0.0.1:9", key, rng=random.Random(seed))


async def _run_for(link: ReplicaLink, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await link.run()


async def test_a_replica_that_closes_every_connection_is_retried_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = _link()
    closer = _Closer(link)
    await _run_for(link, WINDOW)
    attempts = len(closer.times)
    # 0.2 s doubling to 10 s, equal jitter: ~20 in 96 s (it was ~640: one per 0.1-0.2 s)
    assert 8 <= attempts <= _expected_most(WINDOW) <= 30, attempts
    gaps = [b - a for a, b in zip(closer.times, closer.times[1:], strict=False)]
    for i, gap in enumerate(gaps):
        ceiling = replica_link.reconnect_delay(i)
        assert ceiling / 2 <= gap <= ceiling + 1e-9, (i, gap)
    assert max(gaps) <= replica_link.RECONNECT_CAP


async def test_the_backoff_is_jittered() -> None:
    waits = {replica_link.reconnect_wait(5, random.Random(s).random()) for s in range(20)}
    ceiling = replica_link.reconnect_delay(5)
    assert len(waits) == 20 and all(ceiling / 2 <= w <= ceiling for w in waits)
    assert math.isfinite(replica_link.reconnect_wait(10**9, 0.999))


async def test_a_connection_that_stayed_up_starts_the_backoff_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = _link()
    lives = replica_link.STABLE_AFTER + 1.0
    closer = _Closer(link, lives=lives)
    await _run_for(link, 4 * lives)
    gaps = [b - a for a, b in zip(closer.times, closer.times[1:], strict=False)]
    # each loss came after a healthy connection: the first, shortest wait every time
    assert gaps and all(lives <= g <= lives + replica_link.RECONNECT_BASE for g in gaps), gaps


async def test_a_real_replica_closing_every_connection_is_not_stormed(tmp_path: Path) -> None:
    """Real sockets, a real replica: each connection sends the request the replica refuses
    and closes the channel over (a non-finite capacity, sealed by hand past the node's own
    check).  Count the handshakes in a few seconds."""
    net = Network(tmp_path / "net")
    key = crypto.SigningKey.from_seed(os.urandom(32))
    async with in_process(net) as (_replica, url):
        handshakes = 0

        async def refused_request(link: ReplicaLink) -> None:
            nonlocal handshakes
            handshakes += 1
            assert link._ws is not None and link._session is not None
            bad = {"t": "ask", "seq": 1, "token": b"x", "capacity": math.nan, "load": 0.0}
            await link._ws.send(link._session.seal(wire.encode(bad)))

        link = ReplicaLink(url, key, on_connect=refused_request, rng=random.Random(3))
        window = 3.0
        with trio.move_on_after(window):
            await link.run()
    # backoff from 0.1-0.2 s: at most 5 in 3 s (without it, one per ~0.15 s: ~20)
    assert 2 <= handshakes <= _expected_most(window) <= 6, handshakes


async def test_two_links_with_one_node_id_do_not_replace_each_other_in_a_storm(
    tmp_path: Path,
) -> None:
    """Two processes with one identity (a copied state dir): each new connection replaces
    the other's at the replica.  Real sockets, a real replica, no fault injected."""
    net = Network(tmp_path / "net")
    key = crypto.SigningKey.from_seed(os.urandom(32))
    async with in_process(net) as (_replica, url):
        handshakes = [0, 0]

        def counter(i: int) -> Callable[[ReplicaLink], Awaitable[None]]:
            async def count(_link: ReplicaLink) -> None:
                handshakes[i] += 1

            return count

        links = [
            ReplicaLink(url, key, on_connect=counter(i), rng=random.Random(i)) for i in range(2)
        ]
        window = 3.0
        with trio.move_on_after(window):
            async with trio.open_nursery() as nursery:
                for link in links:
                    nursery.start_soon(link.run)
    assert 2 <= sum(handshakes) <= 2 * _expected_most(window), handshakes
