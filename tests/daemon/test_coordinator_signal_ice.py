"""The node's side of WebRTC signaling and ICE servers, through a real replica over real
sockets (README "Gossip and links", "Protocol").

``CoordinatorLink.send_signal`` relays an opaque blob to another node through every
connected replica and ``on_signal`` hands each relayed blob to the daemon;
``ice_servers`` gets the STUN and TURN servers the replica was configured with and a TURN
credential it minted for this node (``core/turn.mint``: the one home of the formula,
which this test calls to check the password), cached on the node's own monotonic clock
until two thirds of its lifetime have passed.  That a real coturn accepts the credential
is ``tests/netlab/test_coordinator_turn.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from coordinator.ice import IceConfig
from coordinator.server import SIGNAL_BURST, SIGNAL_RATE, Server
from coordinator.service import Replica, ServiceConfig
from p2pupdate import clock
from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto, turn, wire
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.net.websocket import WebSocket, WebSocketClosed

from ..coordinator.service_helpers import Network

SECRET = b"the coturn static-auth-secret"
STUN = "stun:198.18.0.9:3478"
TURN = "turn:198.18.0.9:3478?transport=udp"


@dataclasses.dataclass
class Dial:
    """A value the test moves by hand: an injected clock reading."""

    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def replica_at(
    net: Network,
    *,
    index: int = 1,
    ice: IceConfig | None = None,
    wall: Callable[[], float] = time.time,
    mono: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda _m: None,
) -> AsyncIterator[tuple[Replica, str]]:
    """A real replica (``Server`` on a loopback port) with injectable clocks."""
    config = ServiceConfig(
        network_dir=net.dir, replica=index, first_start=True, ice=ice or IceConfig()
    )
    replica = Replica(config, clock=mono, wall=wall)
    server = Server(replica, log=log)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            yield replica, f"http://127.0.0.1:{port}"
            nursery.cancel_scope.cancel()
    finally:
        replica.store.close()


def node_link(
    tmp: Path,
    net: Network,
    urls: list[str],
    seed: int,
    *,
    lines: list[str] | None = None,
    node_clock: clock.Clock = clock.SYSTEM,
    on_signal: Callable[[str, bytes], None] | None = None,
) -> CoordinatorLink:
    trust = TrustFile.open(
        tmp / f"trust-{seed}", initial_root=net.root_bytes, now=clock.SYSTEM.utc_now()
    )
    extra = {} if on_signal is None else {"on_signal": on_signal}
    return CoordinatorLink(
        urls,
        crypto.SigningKey.from_seed(bytes([seed]) * 32),
        trust,
        pool="default",
        estimate=None,
        report_interval=3600.0,
        log=(lines if lines is not None else []).append,
        clock=node_clock,
        **{"persistent": True, **extra},  # signals reach connected nodes only
    )


async def connected(nursery: trio.Nursery, *links: CoordinatorLink, each: int = 1) -> None:
    for link in links:
        await nursery.start(link.run)
    with trio.fail_after(10):
        for link in links:
            await link.client.wait_connected(each, 10.0)


async def test_a_signal_reaches_the_other_node_with_its_sender_and_an_unknown_node_is_false(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net")
    got: list[tuple[str, bytes]] = []
    arrived = trio.Event()

    def on_b(sender: str, data: bytes) -> None:
        got.append((sender, data))
        arrived.set()

    a_lines: list[str] = []
    async with replica_at(net) as (replica, url):
        a = node_link(tmp_path, net, [url], 1, lines=a_lines)
        b = node_link(tmp_path, net, [url], 2, on_signal=on_b)
        async with trio.open_nursery() as nursery:
            await connected(nursery, a, b)
            blob = b"offer: v=0 o=- \x00\xff" + bytes(range(256)) * 20
            assert len(blob) <= proto.MAX_SIGNAL
            with trio.fail_after(10):
                assert await a.send_signal(b.node, blob) is True
                await arrived.wait()
            assert got == [(a.node, blob)]
            # a node this replica does not have: False, and "not connected" is no error
            with trio.fail_after(10):
                assert await a.send_signal("ee" * 32, b"x") is False
            assert a_lines == []
            # a blob over the bound is not sent at all (the schema, before any socket)
            sent = replica.metrics.requests.labels("signal")._value.get()
            assert await a.send_signal(b.node, b"x" * (proto.MAX_SIGNAL + 1)) is False
            assert replica.metrics.requests.labels("signal")._value.get() == sent
            assert len(a_lines) == 1 and "not sent: schema" in a_lines[0], a_lines
            nursery.cancel_scope.cancel()


async def test_a_handler_that_raises_is_logged_and_the_channel_stays_up(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    b_lines: list[str] = []
    got: list[bytes] = []
    second = trio.Event()

    def on_b(_sender: str, data: bytes) -> None:
        if data == b"first":
            raise RuntimeError("the daemon's bug")
        got.append(data)
        second.set()

    async with replica_at(net) as (_replica, url):
        a = node_link(tmp_path, net, [url], 1)
        b = node_link(tmp_path, net, [url], 2, lines=b_lines, on_signal=on_b)
        async with trio.open_nursery() as nursery:
            await connected(nursery, a, b)
            with trio.fail_after(10):
                assert await a.send_signal(b.node, b"first")
                assert await a.send_signal(b.node, b"second")
                await second.wait()
            assert got == [b"second"]
            (said,) = [line for line in b_lines if "handler failed" in line]
            assert "the daemon's bug" in said
            (link,) = b.client.links
            assert link.is_connected and link.connects == 1
            nursery.cancel_scope.cancel()


async def test_a_signal_is_relayed_by_whichever_replica_the_target_is_connected_to(
    tmp_path: Path,
) -> None:
    """A is connected to both replicas, B only to the second: one Ack is enough."""
    net = Network(tmp_path / "net", replicas=2)
    got: list[tuple[str, bytes]] = []
    arrived = trio.Event()

    def on_b(sender: str, data: bytes) -> None:
        got.append((sender, data))
        arrived.set()

    async with replica_at(net, index=1) as (_r1, url1), replica_at(net, index=2) as (_r2, url2):
        a = node_link(tmp_path, net, [url1, url2], 1)
        b = node_link(tmp_path, net, [url2], 2, on_signal=on_b)
        async with trio.open_nursery() as nursery:
            await connected(nursery, b)
            await connected(nursery, a, each=2)
            with trio.fail_after(10):
                assert await a.send_signal(b.node, b"answer") is True
                await arrived.wait()
            assert got == [(a.node, b"answer")]
            nursery.cancel_scope.cancel()


async def test_ice_servers_carry_a_credential_minted_for_this_node_and_refresh_late(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net")
    ttl = 600
    replica_wall = Dial(1_800_000_000.0)
    node_mono = Dial(5000.0)
    ice = IceConfig(stun=(STUN,), turn=(TURN,), secret=SECRET, ttl=ttl)
    async with replica_at(net, ice=ice, wall=replica_wall) as (replica, url):
        node_clock = clock.Clock(wall=time.time, monotonic=node_mono)
        a = node_link(tmp_path, net, [url], 1, node_clock=node_clock)
        async with trio.open_nursery() as nursery:
            await connected(nursery, a)
            with trio.fail_after(10):
                first = await a.ice_servers()
            expires = int(replica_wall.now) + ttl  # the replica's clock, not the node's
            cred = turn.mint(secret=SECRET, node=a.node, expires=expires)
            assert first == [
                {"urls": STUN},
                {"urls": TURN, "username": f"{expires}:{a.node}", "credential": cred.password},
            ]
            assert replica.ice_servers.minted == 1
            # cached while more than a third of the lifetime is left (the node's clock)
            replica_wall.now += 100
            node_mono.now += ttl * 2 / 3 - 1
            assert await a.ice_servers() == first
            assert replica.ice_servers.minted == 1
            node_mono.now += 2
            with trio.fail_after(10):
                again = await a.ice_servers()
            assert replica.ice_servers.minted == 2
            later = int(replica_wall.now) + ttl
            assert again[1]["username"] == f"{later}:{a.node}"
            assert again[1]["credential"] == (
                turn.mint(secret=SECRET, node=a.node, expires=later).password
            )
            status = replica.status()["ice"]
            assert status == {
                "configured": True,
                "stun": [STUN],
                "turn": [TURN],
                "turn_ttl": ttl,
                "credentials_minted": 2,
            }
            assert b"p2pupdate_coordinator_turn_credentials_minted_total 2.0" in (
                replica.metrics.render()
            )
            assert b"p2pupdate_coordinator_ice_configured 1.0" in replica.metrics.render()
            nursery.cancel_scope.cancel()


async def test_ice_servers_are_empty_without_a_replica_or_configuration_and_stun_has_no_user(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net", replicas=2)
    lines: list[str] = []
    async with (
        replica_at(net, index=1) as (plain, url1),
        replica_at(net, index=2, ice=IceConfig(stun=(STUN,))) as (stun_only, url2),
    ):
        bare = node_link(tmp_path, net, [url1], 1, lines=lines)
        stun = node_link(tmp_path, net, [url2], 2, lines=lines)
        # a replica URL nothing listens on: never connected
        with trio.socket.socket() as s:
            await s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        nobody = node_link(tmp_path, net, [dead], 3, lines=lines)
        async with trio.open_nursery() as nursery:
            await connected(nursery, bare, stun)
            await nursery.start(nobody.run)
            with trio.fail_after(10):
                assert await bare.ice_servers() == []
                assert await stun.ice_servers() == [{"urls": STUN}]
                assert await nobody.ice_servers() == []
            assert plain.ice_servers.minted == 0 and stun_only.ice_servers.minted == 0
            assert plain.status()["ice"]["configured"] is False
            assert b"p2pupdate_coordinator_ice_configured 0.0" in plain.metrics.render()
            nursery.cancel_scope.cancel()
    assert lines == []


async def test_a_connection_that_has_not_said_hello_gets_no_credential(tmp_path: Path) -> None:
    """An ``ice`` request in place of the hello is refused as a bad hello and the
    connection closed: nothing is minted before the session proved a node id."""
    net = Network(tmp_path / "net")
    ice = IceConfig(turn=(TURN,), secret=SECRET)
    async with replica_at(net, ice=ice) as (replica, url):
        port = int(url.rsplit(":", 1)[1])
        ws = await WebSocket.connect(
            "127.0.0.1", port, proto.NODE_PATH, max_message=proto.ANSWER_LIMITS.max_bytes
        )
        try:
            with trio.fail_after(10):
                await ws.receive()  # the challenge
                await ws.send(wire.encode({"t": "ice", "seq": 1}))
                answer = wire.decode(await ws.receive(), proto.ANSWER_LIMITS)
                assert answer["ok"] is False and "servers" not in answer, answer
                try:
                    await ws.receive()
                    raise AssertionError("the replica kept the connection open")
                except WebSocketClosed:
                    pass
        finally:
            await ws.close()
        assert replica.ice_servers.minted == 0
        assert replica.status()["ice"]["credentials_minted"] == 0


async def test_signals_over_the_rate_are_refused_naming_the_limit_until_tokens_return(
    tmp_path: Path,
) -> None:
    """Per connection, on the replica's monotonic clock (injected, so nothing refills
    while the test runs): a burst, then refusals, then the rate again."""
    net = Network(tmp_path / "net")
    mono = Dial(100.0)
    lines: list[str] = []
    said: list[str] = []
    async with replica_at(net, mono=mono, log=said.append) as (replica, url):
        a = node_link(tmp_path, net, [url], 1, lines=lines)
        async with trio.open_nursery() as nursery:
            await connected(nursery, a)
            (link,) = a.client.connected()
            request = proto.SignalRequest(to="ee" * 32, data=b"x")

            async def errors(n: int) -> list[str]:
                out = []
                for _ in range(n):
                    answer = await link.send(request, 10.0)
                    assert isinstance(answer, proto.ErrorAnswer)
                    out.append(answer.error)
                return out

            with trio.fail_after(20):
                burst = int(SIGNAL_BURST)
                assert await errors(burst) == ["not-connected"] * burst
                answer = await link.send(request, 10.0)
                assert isinstance(answer, proto.ErrorAnswer)
                assert answer.error == "rate-limited"
                assert f"{SIGNAL_RATE:g}/s" in answer.detail
                assert f"burst {SIGNAL_BURST:g}" in answer.detail
                # the node side: not relayed, said in one line naming the limit
                assert await a.send_signal("ee" * 32, b"x") is False
                assert len(lines) == 1 and "rate-limited" in lines[0], lines
                mono.now += 1.0
                rate = int(SIGNAL_RATE)
                assert await errors(rate + 1) == ["not-connected"] * rate + ["rate-limited"]
            assert link.is_connected and link.connects == 1
            (over,) = [line for line in said if "signals over" in line]  # once, not 3 times
            assert a.node[:16] in over and "20/s (burst 40)" in over
            text = replica.metrics.render()
            assert b'p2pupdate_coordinator_signals_total{result="rate-limited"} 3.0' in text
            nursery.cancel_scope.cancel()


async def test_a_credential_still_valid_is_used_while_no_replica_answers_then_none(
    tmp_path: Path,
) -> None:
    """The replica goes away: the cached answer serves until its credential's end on the
    node's clock (a link can still form through a peer's signaling relay), then ``[]``."""
    net = Network(tmp_path / "net")
    node_mono = Dial(0.0)
    lines: list[str] = []
    ice = IceConfig(stun=(STUN,), turn=(TURN,), secret=SECRET, ttl=600)
    node_clock = clock.Clock(wall=time.time, monotonic=node_mono)
    async with trio.open_nursery() as nursery:
        async with replica_at(net, ice=ice) as (_replica, url):
            a = node_link(tmp_path, net, [url], 1, lines=lines, node_clock=node_clock)
            await connected(nursery, a)
            with trio.fail_after(10):
                first = await a.ice_servers()
            assert len(first) == 2
        with trio.fail_after(10):  # the replica stopped: the link sees its socket close
            while a.client.connected():
                await trio.sleep(0.01)
        node_mono.now = 401.0  # past the refresh point, nobody to ask
        assert await a.ice_servers() == first
        node_mono.now = 600.0  # the credential's end
        assert await a.ice_servers() == []
        nursery.cancel_scope.cancel()
    assert [line for line in lines if "ice" in line] == []
