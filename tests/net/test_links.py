"""Links: the ``Link`` contract, the handshake, memory links and real loopback TCP.

Attack tests use scripted raw peers (as python-tuf's repository simulator does): a plain TCP stream whose every byte the
test chooses (a proof by the wrong key, a node id that is not its key, a replayed hello, a
reflected nonce, a 16 MiB frame header, silence), and assert the exact error type.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from p2pupdate.core import session as sess
from p2pupdate.core import wire
from p2pupdate.core.crypto import SigningKey, signing_input
from p2pupdate.net import (
    FrameTooLargeError,
    HandshakeError,
    HandshakeKeyError,
    HandshakeOversizeError,
    HandshakeReplayError,
    Link,
    LinkBrokenError,
    LinkClosedError,
    LinkConfig,
    LinkError,
    LinkProtocolError,
    LinkTimeoutError,
    NonceCache,
    PeerMismatchError,
    StreamLink,
    establish,
)
from p2pupdate.net import handshake as hs
from p2pupdate.net.errors import FrameAlteredError
from p2pupdate.net.memory import memory_link_pair
from p2pupdate.net.tcp import connect_tcp, serve_tcp


def key(label: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(label.encode()).digest())


SERVER, CLIENT, MALLORY = key("server"), key("client"), key("mallory")
FAST = LinkConfig(handshake_timeout=2.0)


def kx(label: str) -> sess.KeyExchange:
    return sess.KeyExchange(hashlib.sha256(b"kx" + label.encode()).digest())


def hello_of(signer: SigningKey, nonce: bytes, kx_label: str = "") -> hs.Hello:
    """A hello with a fixed ephemeral key (scripted peers never need the session key)."""
    return hs.hello_for(signer, nonce, kx(kx_label or nonce.hex()).public)


def some_mac(role: bytes = hs.ROLE_DIAL) -> hs.FrameMac:
    return hs.FrameMac(b"k" * 32, role=role, peer=SERVER.keyid)


# -- a server under test, recording what it accepted and rejected ---------------------------


class Server:
    def __init__(self) -> None:
        self.links: list[Link] = []
        self.rejected: list[tuple[LinkError, str]] = []
        self.port = 0
        self.got: list[bytes] = []
        self.ended: list[LinkError] = []
        self.done = trio.Event()

    async def echo(self, link: Link) -> None:
        self.links.append(link)
        try:
            while True:
                data = await link.receive()
                self.got.append(data)
                await link.send(data)
        except LinkError as exc:
            self.ended.append(exc)
            self.done.set()
        finally:
            await link.aclose()

    def reject(self, exc: LinkError, host: str) -> None:
        self.rejected.append((exc, host))

    async def wait_rejected(self) -> LinkError:
        with trio.fail_after(5):
            while not self.rejected:
                await trio.sleep(0.01)
        return self.rejected[0][0]


@asynccontextmanager
async def running_server(config: LinkConfig = FAST) -> AsyncIterator[Server]:
    server = Server()
    async with trio.open_nursery() as nursery:
        server.port = await nursery.start(
            lambda task_status: serve_tcp(
                server.echo,
                key=SERVER,
                host="127.0.0.1",
                config=config,
                on_reject=server.reject,
                task_status=task_status,
            )
        )
        yield server
        nursery.cancel_scope.cancel()


async def raw(server: Server) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", server.port)


async def read_frame(stream: trio.abc.Stream, limit: int = 1024) -> bytes:
    dec = wire.FrameDecoder(limit)
    while True:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError
        frames = dec.feed(bytes(chunk))
        if frames:
            return frames[0]


async def closed_by_peer(stream: trio.abc.Stream) -> bool:
    with trio.fail_after(5):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
    return True


# ================================================================================================
# TCP over loopback
# ================================================================================================


async def test_tcp_link_authenticates_both_ends_and_carries_frames() -> None:
    async with running_server() as server:
        link = await connect_tcp(
            "127.0.0.1", server.port, key=CLIENT, expected_peer=SERVER.keyid, config=FAST
        )
        assert link.peer == SERVER.keyid and link.host == "127.0.0.1"
        frames = [b"", b"x", bytes(range(256)) * 800]  # the last one ~200 KB
        for f in frames:
            await link.send(f)
            assert await link.receive() == f
        assert server.links[0].peer == CLIENT.keyid
        assert server.links[0].host == "127.0.0.1"
        await link.aclose()
        await link.aclose()  # idempotent
        assert server.rejected == []


async def test_concurrent_senders_do_not_interleave_frames() -> None:
    async with running_server() as server:
        link = await connect_tcp("127.0.0.1", server.port, key=CLIENT, expected_peer=SERVER.keyid)
        payloads = [bytes([i]) * 50_000 for i in range(8)]
        async with trio.open_nursery() as nursery:
            for p in payloads:
                nursery.start_soon(link.send, p)
        echoed = [await link.receive() for _ in payloads]
        assert sorted(echoed) == sorted(payloads)
        await link.aclose()


async def test_dialing_one_node_and_reaching_another_is_refused() -> None:
    async with running_server() as server:
        with pytest.raises(PeerMismatchError):
            await connect_tcp("127.0.0.1", server.port, key=CLIENT, expected_peer=MALLORY.keyid)


async def test_connection_refused_is_a_broken_link() -> None:
    async with running_server() as server:
        port = server.port
    with pytest.raises(LinkBrokenError):
        await connect_tcp("127.0.0.1", port, key=CLIENT, expected_peer=SERVER.keyid)


async def _handshake_with(
    server: Server, hello: hs.Hello, sign_with: SigningKey
) -> trio.SocketStream:
    """A raw client: send ``hello``, read the server's, send a proof by ``sign_with``."""
    stream = await raw(server)
    await stream.send_all(wire.frame(hello.to_wire()))
    theirs = hs.Hello.from_wire(await read_frame(stream))
    proof = hs.prove(sign_with, hs.ROLE_DIAL, hello, theirs)
    await stream.send_all(wire.frame(proof.to_wire()))
    return stream


async def test_a_proof_by_another_key_is_rejected() -> None:
    async with running_server() as server:
        hello = hello_of(CLIENT, b"\x01" * 32)
        stream = await _handshake_with(server, hello, sign_with=MALLORY)
        exc = await server.wait_rejected()
        assert type(exc) is HandshakeKeyError
        assert server.rejected[0][1] == "127.0.0.1"
        assert await closed_by_peer(stream)
        assert server.links == []


async def test_a_node_id_that_is_not_its_key_is_rejected() -> None:
    async with running_server() as server:
        lying = hs.Hello(
            node=bytes.fromhex(CLIENT.keyid),
            pub=MALLORY.public_key,
            nonce=b"\x02" * 32,
            kx=kx("lying").public,
        )
        stream = await raw(server)
        await stream.send_all(wire.frame(lying.to_wire()))
        assert type(await server.wait_rejected()) is HandshakeKeyError
        assert server.links == []


async def test_a_replayed_handshake_is_rejected() -> None:
    async with running_server() as server:
        # a real client handshakes with a fixed nonce; Mallory recorded its frames
        stream = await raw(server)
        link = await establish(
            stream, key=CLIENT, dialer=True, host="x", config=FAST, nonce=b"\x03" * 32
        )
        await link.aclose()
        recorded = hello_of(CLIENT, b"\x03" * 32)
        replay = await raw(server)
        await replay.send_all(wire.frame(recorded.to_wire()))
        assert type(await server.wait_rejected()) is HandshakeReplayError
        assert len(server.links) == 1


async def test_a_recorded_proof_fails_against_a_fresh_nonce() -> None:
    async with running_server() as server:
        # a proof recorded from another session (over another server nonce) under a new hello
        old_server_hello = hello_of(SERVER, b"\x04" * 32)
        hello = hello_of(CLIENT, b"\x05" * 32)
        old_proof = hs.prove(CLIENT, hs.ROLE_DIAL, hello, old_server_hello)
        stream = await raw(server)
        await stream.send_all(wire.frame(hello.to_wire()))
        await read_frame(stream)
        await stream.send_all(wire.frame(old_proof.to_wire()))
        assert type(await server.wait_rejected()) is HandshakeKeyError


async def test_an_oversize_handshake_frame_is_rejected_at_its_header() -> None:
    async with running_server() as server:
        stream = await raw(server)
        await stream.send_all(wire.FRAME_HEADER.pack(16 * 1024 * 1024))  # no body follows
        assert type(await server.wait_rejected()) is HandshakeOversizeError
        assert await closed_by_peer(stream)


async def test_a_malformed_hello_is_a_handshake_error() -> None:
    async with running_server() as server:
        stream = await raw(server)
        await stream.send_all(wire.frame(wire.encode({"v": 1, "node": b"x"})))
        assert type(await server.wait_rejected()) is HandshakeError


async def test_a_silent_peer_times_out() -> None:
    async with running_server(LinkConfig(handshake_timeout=0.3)) as server:
        stream = await raw(server)
        assert type(await server.wait_rejected()) is LinkTimeoutError
        await stream.aclose()


@asynccontextmanager
async def scripted_server(script: Callable[[trio.SocketStream], Any]) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: trio.serve_tcp(script, 0, host="127.0.0.1", task_status=task_status)
        )
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_a_server_reflecting_our_nonce_is_rejected() -> None:
    async def reflect(stream: trio.SocketStream) -> None:
        hello = await read_frame(stream)
        await stream.send_all(wire.frame(hello))  # our own hello, back at us
        await trio.sleep(5)

    async with scripted_server(reflect) as port:
        with pytest.raises(HandshakeReplayError):
            await connect_tcp("127.0.0.1", port, key=CLIENT, expected_peer=None, config=FAST)


async def test_a_server_proving_the_wrong_key_is_rejected() -> None:
    async def impostor(stream: trio.SocketStream) -> None:
        theirs = hs.Hello.from_wire(await read_frame(stream))
        mine = hello_of(SERVER, b"\x06" * 32)  # claims SERVER...
        await stream.send_all(wire.frame(mine.to_wire()))
        await read_frame(stream)
        bad = hs.prove(MALLORY, hs.ROLE_ACCEPT, mine, theirs)  # ...but holds Mallory's key
        await stream.send_all(wire.frame(bad.to_wire()))
        await trio.sleep(5)

    async with scripted_server(impostor) as port:
        with pytest.raises(HandshakeKeyError):
            await connect_tcp(
                "127.0.0.1", port, key=CLIENT, expected_peer=SERVER.keyid, config=FAST
            )


async def test_our_own_proof_echoed_back_is_rejected() -> None:
    async def mirror(stream: trio.SocketStream) -> None:
        # holds no key worth anything: hands the client its own signature back
        await read_frame(stream)
        mine = hello_of(MALLORY, b"\x07" * 32)
        await stream.send_all(wire.frame(mine.to_wire()))
        proof = await read_frame(stream)
        await stream.send_all(wire.frame(proof))
        await trio.sleep(5)

    async with scripted_server(mirror) as port:
        with pytest.raises(HandshakeKeyError):
            await connect_tcp("127.0.0.1", port, key=CLIENT, expected_peer=None, config=FAST)


async def test_an_oversize_frame_after_the_handshake_is_a_protocol_error() -> None:
    got: list[LinkError] = []

    async def reader(link: Link) -> None:
        try:
            await link.receive()
        except LinkError as exc:
            got.append(exc)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_tcp(
                reader,
                key=SERVER,
                host="127.0.0.1",
                config=LinkConfig(max_frame=4096),
                task_status=task_status,
            )
        )
        link = await connect_tcp("127.0.0.1", port, key=CLIENT, expected_peer=SERVER.keyid)
        assert isinstance(link, StreamLink)
        await link._framed.stream.send_all(wire.FRAME_HEADER.pack(1_000_000))  # a header lie
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert type(got[0]) is FrameTooLargeError


async def test_a_closed_link_says_so_on_both_ends() -> None:
    async with running_server() as server:
        link = await connect_tcp("127.0.0.1", server.port, key=CLIENT, expected_peer=SERVER.keyid)
        await link.send(b"hi")
        assert await link.receive() == b"hi"
        await server.links[0].aclose()
        with pytest.raises(LinkClosedError):
            await link.receive()
        await link.aclose()
        with pytest.raises(LinkClosedError):
            await link.send(b"again")


# ================================================================================================
# memory links, the Link contract, the handshake's domain separation
# ================================================================================================


async def test_memory_links_run_the_real_handshake() -> None:
    a, b = await memory_link_pair(CLIENT, SERVER)
    assert a.peer == SERVER.keyid and b.peer == CLIENT.keyid
    await a.send(b"ping")
    assert await b.receive() == b"ping"
    await b.send(b"pong" * 1000)
    assert await a.receive() == b"pong" * 1000
    await a.aclose()
    with pytest.raises(LinkClosedError):
        await b.receive()


async def test_a_frame_over_the_limit_is_the_senders_bug() -> None:
    a, _ = await memory_link_pair(CLIENT, SERVER, config=LinkConfig(max_frame=1000))
    with pytest.raises(ValueError):
        await a.send(b"\x00" * 1001)


async def test_memory_link_refuses_an_oversize_incoming_frame() -> None:
    a, b = await memory_link_pair(CLIENT, SERVER, config=LinkConfig(max_frame=1000))
    # max_frame bounds the payload: a MAC and a 1001-byte payload is one byte too many
    await a._framed.stream.send_all(wire.frame(b"\x00" * (hs.MAC_LEN + 1001), max_frame=2000))
    with pytest.raises(FrameTooLargeError):
        await b.receive()
    assert b.closed


async def test_a_frame_right_behind_the_proof_is_kept() -> None:
    """The acceptor may send a large frame the moment its handshake ends."""
    a_stream, b_stream = trio.testing.memory_stream_pair()
    big = b"\x09" * 100_000
    out: dict[str, Any] = {}

    async def acceptor() -> None:
        link = await establish(b_stream, key=SERVER, dialer=False, host="m", config=FAST)
        await link.send(big)

    async def dialer() -> None:
        # let the acceptor run until it blocks: what it sent piles up unread
        await trio.testing.wait_all_tasks_blocked()
        link = await establish(a_stream, key=CLIENT, dialer=True, host="m", config=FAST)
        out["got"] = await link.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acceptor)
        nursery.start_soon(dialer)
    assert out["got"] == big


class _Broken(trio.abc.Stream):
    """A stream whose every operation fails the way a dead socket does."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise self.exc

    async def wait_send_all_might_not_block(self) -> None:
        return None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        raise self.exc

    async def aclose(self) -> None:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(104, "Connection reset by peer"), LinkBrokenError),
        (trio.BrokenResourceError(), LinkBrokenError),
        (trio.ClosedResourceError(), LinkClosedError),
        (RuntimeError("surprise"), LinkError),
    ],
)
async def test_transport_errors_are_normalised(
    exc: BaseException, expected: type[LinkError]
) -> None:
    from p2pupdate.net.base import _Framed

    framed = _Framed(_Broken(exc))
    framed.start(1000, some_mac())
    link = StreamLink(framed, peer=CLIENT.keyid, host="x", config=FAST)
    for attempt in (link.send(b"x"), link.receive()):
        with pytest.raises(LinkError) as info:
            await attempt
        assert type(info.value) is expected
    await link.aclose()  # never raises
    assert link.closed


class _Stalled(trio.abc.Stream):
    """A peer that stopped reading: every send blocks (its window is full)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep_forever()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.sleep_forever()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    async def aclose(self) -> None:
        return None


async def test_a_send_to_a_peer_that_stopped_reading_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from p2pupdate.net.base import _Framed

    framed = _Framed(_Stalled())
    framed.start(1000, some_mac())
    link = StreamLink(framed, peer=SERVER.keyid, host="m", config=LinkConfig(send_timeout=3.0))
    start = trio.current_time()
    with pytest.raises(LinkTimeoutError):
        await link.send(b"nobody reads this")
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_a_handshake_with_a_silent_peer_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    with pytest.raises(LinkTimeoutError):
        await establish(
            _Stalled(), key=CLIENT, dialer=True, host="m", config=LinkConfig(handshake_timeout=4.0)
        )
    assert trio.current_time() - start == pytest.approx(4.0)


def test_a_link_proof_is_domain_separated_from_documents() -> None:
    mine, theirs = hello_of(CLIENT, b"\x01" * 32), hello_of(SERVER, b"\x02" * 32)
    proof = hs.prove(CLIENT, hs.ROLE_DIAL, mine, theirs)
    signed = signing_input(hs.PROOF_TYPE, hs.transcript(hs.ROLE_DIAL, mine, theirs))
    assert signed.startswith(b"p2pupdate/v1\x00link-proof\x00")
    hs.check_proof(proof, role=hs.ROLE_DIAL, theirs=mine, mine=theirs)
    with pytest.raises(HandshakeKeyError):  # the same proof in the other role
        hs.check_proof(proof, role=hs.ROLE_ACCEPT, theirs=mine, mine=theirs)


def test_nonce_cache_is_bounded() -> None:
    cache = NonceCache(size=2)
    for n in (b"a", b"b", b"c"):
        cache.check_and_add(n)
    cache.check_and_add(b"a")  # forgotten: the oldest went first
    with pytest.raises(HandshakeReplayError):
        cache.check_and_add(b"c")


# ================================================================================================
# the session key and the per-frame MAC
# ================================================================================================


async def test_an_empty_frame_round_trips_both_ways() -> None:
    """Zero-length payloads are frames like any other (gossip's keepalive)."""
    a, b = await memory_link_pair(CLIENT, SERVER)
    for _ in range(3):
        await a.send(b"")
    await a.send(b"after")
    assert [await b.receive() for _ in range(4)] == [b"", b"", b"", b"after"]
    await b.send(b"")
    assert await a.receive() == b""
    await a.aclose()
    await b.aclose()


async def test_max_frame_still_bounds_the_payload() -> None:
    a, b = await memory_link_pair(CLIENT, SERVER, config=LinkConfig(max_frame=1000))
    await a.send(b"\x01" * 1000)  # exactly the limit: the MAC comes on top
    assert await b.receive() == b"\x01" * 1000


class Tap:
    """A memory stream pair whose A->B direction records every ``send_all`` (one frame
    each: the link writes a frame in one call) and lets the test put bytes on B's side."""

    def __init__(self) -> None:
        self.a_out = trio.testing.MemorySendStream()
        self.b_in = trio.testing.MemoryReceiveStream()
        self.sent: list[bytes] = []

        async def pump() -> None:
            data = self.a_out.get_data_nowait()
            self.sent.append(data)
            self.b_in.put_data(data)

        self.a_out.send_all_hook = pump
        self.a_out.close_hook = self.b_in.put_eof
        back_send, back_recv = trio.testing.memory_stream_one_way_pair()
        self.a = trio.StapledStream(self.a_out, back_recv)
        self.b = trio.StapledStream(back_send, self.b_in)

    async def links(self) -> tuple[StreamLink, StreamLink]:
        out: dict[str, StreamLink] = {}

        async def side(name: str, stream: trio.abc.Stream, k: SigningKey, dialer: bool) -> None:
            out[name] = await establish(stream, key=k, dialer=dialer, host=name, config=FAST)

        async with trio.open_nursery() as n:
            n.start_soon(side, "a", self.a, CLIENT, True)
            n.start_soon(side, "b", self.b, SERVER, False)
        return out["a"], out["b"]


async def test_a_replayed_frame_is_caught_and_closes_the_link() -> None:
    tap = Tap()
    a, b = await tap.links()
    await a.send(b"pay 1 coin")
    assert await b.receive() == b"pay 1 coin"
    recorded = tap.sent[-1]  # the frame as it went over the wire, MAC and all
    tap.b_in.put_data(recorded)  # ... put on the path once more
    with pytest.raises(FrameAlteredError, match="altered a frame") as info:
        await b.receive()
    assert "#1 from" in str(info.value) and isinstance(info.value, LinkProtocolError)
    assert b.closed
    with pytest.raises(LinkClosedError):
        await b.receive()
    await a.aclose()


async def test_a_frame_reflected_back_at_its_sender_is_caught() -> None:
    """The MAC names the sender's role: a frame bounced back does not pass for the peer's."""
    tap = Tap()
    a, _b = await tap.links()
    await a.send(b"hello")
    await tap.b.send_all(tap.sent[-1])  # B's side of the path echoes A's frame to A
    with pytest.raises(FrameAlteredError):
        await a.receive()


async def test_a_frame_shorter_than_its_mac_is_caught() -> None:
    a, b = await memory_link_pair(CLIENT, SERVER)
    await a._framed.stream.send_all(wire.frame(b"\x00" * (hs.MAC_LEN - 1)))
    with pytest.raises(FrameAlteredError, match="shorter than its MAC"):
        await b.receive()
    assert b.closed


class Proxy:
    """A TCP proxy between a client and the server that, on the client -> server path,
    cuts the stream into frames and lets ``alter(index, frame)`` return the frames to
    forward instead (index 0 is the hello, 1 the proof, 2 the first frame after)."""

    def __init__(self, target: int, alter: Callable[[int, bytes], list[bytes]]) -> None:
        self.target, self.alter, self.port = target, alter, 0

    async def handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target)

        async def down() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while chunk := await server.receive_some(65536):
                    await client.send_all(chunk)
            await client.aclose()

        async def up() -> None:
            dec, index = wire.FrameDecoder(1 << 24), 0
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while chunk := await client.receive_some(65536):
                    for frame in dec.feed(bytes(chunk)):
                        for out in self.alter(index, frame):
                            await server.send_all(wire.frame(out, max_frame=len(out)))
                        index += 1
            await server.aclose()

        async with trio.open_nursery() as n:
            n.start_soon(down)
            n.start_soon(up)


@asynccontextmanager
async def proxied(alter: Callable[[int, bytes], list[bytes]]) -> AsyncIterator[Server]:
    async with running_server() as server, trio.open_nursery() as nursery:
        proxy = Proxy(server.port, alter)
        listeners = await nursery.start(
            lambda task_status: trio.serve_tcp(
                proxy.handle, 0, host="127.0.0.1", task_status=task_status
            )
        )
        proxy.port = listeners[0].socket.getsockname()[1]
        server.port_via_proxy = proxy.port  # type: ignore[attr-defined]
        yield server
        nursery.cancel_scope.cancel()


def _flip(frame: bytes, at: int) -> bytes:
    return frame[:at] + bytes([frame[at] ^ 0x01]) + frame[at + 1 :]


def _path(action: str, target: int = 4) -> Callable[[int, bytes], list[bytes]]:
    """What the path does to frame ``target`` (the third frame after the handshake)."""
    _held: list[bytes] = []

    def alter(index: int, frame: bytes) -> list[bytes]:
        if index != target and not (action == "reorder" and index == target + 1):
            return [frame]
        if action == "flip-payload":
            return [_flip(frame, len(frame) - 1)]
        if action == "flip-mac":
            return [_flip(frame, 0)]
        if action == "replay":
            return [frame, frame]
        if action == "drop":
            return []
        if action == "reorder":  # hold this frame, send it after the next one
            if index == target:
                _held[:] = [frame]
                return []
            return [frame, *_held]
        raise AssertionError(action)

    return alter


@pytest.mark.parametrize(
    ("action", "good"),
    [("flip-payload", 2), ("flip-mac", 2), ("replay", 3), ("drop", 2), ("reorder", 2)],
)
async def test_a_path_that_alters_a_frame_over_tcp_is_caught(action: str, good: int) -> None:
    """Real sockets, a real man on the path: two frames pass, the third is altered (or the
    path replays it: the copy fails; drops or reorders it: the next one fails); the
    server's link says so and closes, and the client sees the link closed, having got
    back only the ``good`` frames before."""
    async with proxied(_path(action)) as server:
        port = server.port_via_proxy  # type: ignore[attr-defined]
        link = await connect_tcp("127.0.0.1", port, key=CLIENT, expected_peer=SERVER.keyid)
        frames = [b"frame %d " % i * 100 for i in range(5)]
        for f in frames:
            await link.send(f)
        echoed = []
        with pytest.raises((LinkClosedError, LinkBrokenError)), trio.fail_after(5):
            while True:
                echoed.append(await link.receive())
        with trio.fail_after(5):
            await server.done.wait()
    assert echoed == frames[:good]
    assert server.got == frames[:good]
    (ended,) = server.ended
    assert type(ended) is FrameAlteredError, ended
    assert "altered a frame" in str(ended) and f"#{good} from" in str(ended)
    assert server.links[0].closed


async def test_a_path_that_swaps_the_kx_key_fails_both_proofs() -> None:
    """The transcript covers both kx keys: a man on the path who puts his own kx key in
    the client's hello (to learn a session key) makes both proofs fail."""
    mallory_kx = kx("mallory").public

    def swap(index: int, frame: bytes) -> list[bytes]:
        if index != 0:
            return [frame]
        h = hs.Hello.from_wire(frame)
        return [hs.Hello(node=h.node, pub=h.pub, nonce=h.nonce, kx=mallory_kx).to_wire()]

    async with proxied(swap) as server:
        with pytest.raises(HandshakeKeyError, match="proof does not verify"):
            await connect_tcp(
                "127.0.0.1",
                server.port_via_proxy,  # type: ignore[attr-defined]
                key=CLIENT,
                expected_peer=SERVER.keyid,
                config=FAST,
            )
        assert type(await server.wait_rejected()) is HandshakeKeyError
        assert server.links == []


def test_the_transcript_covers_both_kx_keys() -> None:
    mine, theirs = hello_of(CLIENT, b"\x01" * 32), hello_of(SERVER, b"\x02" * 32)
    proof = hs.prove(CLIENT, hs.ROLE_DIAL, mine, theirs)
    hs.check_proof(proof, role=hs.ROLE_DIAL, theirs=mine, mine=theirs)
    swapped = hs.Hello(node=mine.node, pub=mine.pub, nonce=mine.nonce, kx=kx("other").public)
    with pytest.raises(HandshakeKeyError):
        hs.check_proof(proof, role=hs.ROLE_DIAL, theirs=swapped, mine=theirs)
    theirs2 = hs.Hello(node=theirs.node, pub=theirs.pub, nonce=theirs.nonce, kx=swapped.kx)
    with pytest.raises(HandshakeKeyError):
        hs.check_proof(proof, role=hs.ROLE_DIAL, theirs=mine, mine=theirs2)


async def test_an_old_style_hello_without_kx_is_refused_by_name() -> None:
    async with running_server() as server:
        stream = await raw(server)
        old = {"v": 1, "node": bytes.fromhex(CLIENT.keyid), "pub": CLIENT.public_key,
               "nonce": b"\x08" * 32}  # fmt: skip
        await stream.send_all(wire.frame(wire.encode(old)))
        exc = await server.wait_rejected()
        assert type(exc) is HandshakeError and "v1" in str(exc) and "upgrade" in str(exc)
        assert await closed_by_peer(stream)


async def test_the_session_key_differs_per_connection_and_agrees_per_end() -> None:
    """Two connections between the same nodes get different keys; both ends of one agree."""
    keys = []
    for _ in range(2):
        a, b = await memory_link_pair(CLIENT, SERVER)
        assert a._framed.mac is not None and b._framed.mac is not None
        assert a._framed.mac._key == b._framed.mac._key
        keys.append(a._framed.mac._key)
    assert keys[0] != keys[1]
