"""P10 item 1: fuzz what a stranger's bytes reach on a replica, before any key is needed.

Three readers, each fed by hypothesis (derandomized: the same examples every run, a few
hundred each, under a second or two per test):

* the HTTP side of ``coordinator.server.Server`` (its head reader and h11), a whole
  connection over an in-memory stream: it must return (the connection closed) and count
  no ``connection_failures`` -- the counter of errors the server did not expect;
* ``p2pupdate.net.websocket.WebSocket.receive`` (the frame reader): it raises
  ``WebSocketClosed`` (or a subclass) and nothing else;
* the node-channel decoders, ``session.open_hello`` and ``coordproto.open_request``:
  ``WireError`` or ``VerificationError`` only, for frames past the MAC too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as wse
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coordinator.server import Server
from coordinator.service import Replica, ServiceConfig
from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto, wire
from p2pupdate.core import session as sess
from p2pupdate.core.errors import VerificationError, WireError
from p2pupdate.net.websocket import WebSocket, WebSocketClosed

from .service_helpers import Network

FUZZ = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    net = Network(tmp_path_factory.mktemp("fuzz") / "net")
    replica = Replica(ServiceConfig(network_dir=net.dir, first_start=True))
    try:
        yield Server(replica)
    finally:
        replica.store.close()


# -- HTTP -------------------------------------------------------------------------------------

_METHODS = st.sampled_from([b"GET", b"PUT", b"POST", b"HEAD", b"DELETE", b"G\x00T", b""])
_TARGETS = st.one_of(
    st.sampled_from(
        [
            b"/status",
            b"/metrics",
            b"/healthz",
            b"/v1/node",
            b"/v1/publish",
            b"/v1/documents",
            b"/v1/artifacts/" + b"a" * 64,
            b"/v1/artifacts/" + b"0" * 64 + b"/chunks/999999",
            b"/v1/artifacts/" + b"0" * 64 + b"/chunks/-1",
            b"*",
        ]
    ),
    st.binary(max_size=40),
)
_NAMES = st.sampled_from(
    [
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"upgrade",
        b"connection",
        b"expect",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"x-p2pupdate-node",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(
        b"0 5 99999999999999999999 -1 chunked websocket Upgrade 100-continue 13 "
        b"dGhlIHNhbXBsZSBub25jZQ== close keep-alive".split()
    ),
    st.binary(max_size=20),
)
_HEADERS = st.lists(st.tuples(st.one_of(_NAMES, st.binary(max_size=12)), _VALUES), max_size=6)
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"", b"HTTP/1.1 x"])


@st.composite
def _requests(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(1, 3))):  # pipelined requests
        head = draw(_METHODS) + b" " + draw(_TARGETS) + b" " + draw(_VERSIONS) + b"\r\n"
        for name, value in draw(_HEADERS):
            head += name + b": " + value + b"\r\n"
        out += head + b"\r\n" + draw(st.binary(max_size=64))
    return out


async def _one_connection(server: Server, data: bytes, chunks: int) -> None:
    client, here = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, here)  # type: ignore[arg-type]
        step = max(1, len(data) // chunks)
        with contextlib.suppress(trio.BrokenResourceError):  # the server closed first
            for i in range(0, len(data), step):
                await client.send_all(data[i : i + step])
                await trio.sleep(0)
            await client.send_eof()
        while await client.receive_some(65536):  # what it answered, until it closed
            pass


_UPGRADE = (
    b"GET /v1/node HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


@FUZZ
@given(
    data=st.one_of(
        _requests(),
        st.binary(max_size=300),
        st.deferred(lambda: _frames()).map(lambda f: _UPGRADE + f),  # the node channel
    ),
    chunks=st.integers(1, 4),
)
def test_no_bytes_on_the_http_port_make_an_unexpected_error(
    server: Server, data: bytes, chunks: int
) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)  # deadlines pass at once
    trio.run(_one_connection, server, data, chunks, clock=clock)
    assert server.stats.connection_failures == 0
    assert server.stats.open == 0 and not server.stats.per_source


# -- the WebSocket frame reader ---------------------------------------------------------------


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    """Frames right and wrong: any opcode, FIN, RSV, mask bit, length form and payload."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        opcode = draw(
            st.one_of(st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]), st.integers(0, 15))
        )
        fin = draw(st.integers(0, 4)) > 0
        b0 = opcode | (0x80 if fin else 0) | (draw(st.integers(0, 7)) << 4)
        if draw(st.integers(0, 5)):  # mostly without RSV bits, so the rest is reached
            b0 &= 0x8F
        # sizes around the limits: 125/126 (control frames), 65535/65536 (length forms)
        size = draw(st.one_of(st.integers(0, 40), st.sampled_from([125, 126, 127, 300])))
        payload = draw(st.binary(min_size=size, max_size=size))
        form = draw(st.sampled_from(["short", "16", "64", "lie"]))
        n = len(payload)
        masked = draw(st.integers(0, 9)) > 0
        bit = 0x80 if masked else 0
        if form == "short" and n < 126:
            head = bytes((b0, bit | n))
        elif form in ("short", "16"):
            head = bytes((b0, bit | 126)) + n.to_bytes(2, "big")
        elif form == "64":
            head = bytes((b0, bit | 127)) + n.to_bytes(8, "big")
        else:  # a length that is not the payload's
            head = bytes((b0, bit | 127)) + draw(st.integers(0, 2**64 - 1)).to_bytes(8, "big")
        mask = draw(st.binary(min_size=4, max_size=4)) if masked else b""
        out += head + mask + payload
    return out


_PING_126 = bytes((0x89, 0x80 | 126, 0, 126)) + bytes(4) + b"p" * 126


async def _read_all(data: bytes) -> list[BaseException]:
    client, here = trio.testing.memory_stream_pair()
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    ws.receive_data(_UPGRADE)  # opened as the server opens it: the handshake done
    assert any(isinstance(e, wse.Request) for e in ws.events())
    ws.send(wse.AcceptConnection())
    sock = WebSocket(here, ws, max_message=proto.REQUEST_LIMITS.max_bytes)
    await client.send_all(data)
    await client.send_eof()
    raised: list[BaseException] = []
    for _ in range(20):
        try:
            await sock.receive()
        except Exception as exc:
            raised.append(exc)
            break
    return raised


@FUZZ
@given(data=st.one_of(_frames(), st.binary(max_size=400)))
@example(data=_PING_126)  # the issue's: a ping of 126 bytes killed the replica
def test_the_frame_reader_raises_websocket_closed_only(data: bytes) -> None:
    raised = trio.run(_read_all, data)
    assert raised, "the stream ended: the reader must say so"
    assert all(isinstance(e, WebSocketClosed) for e in raised), raised


# -- the node channel's decoders --------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=80),
    st.binary(max_size=80),
    st.sampled_from(["a" * 64, "0" * 64, "serving", "default", "v1"]),
)
_VALUES_ANY = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=20,
)
_FIELDS = st.sampled_from(
    [
        "version",
        "artifact",
        "state",
        "pool",
        "estimate",
        "held",
        "addrs",
        "token",
        "capacity",
        "load",
        "nonce",
        "counter",
        "reason",
        "count",
        "to",
        "data",
        "id",
        "x",
    ]
)


@st.composite
def _request_objects(draw: st.DrawFn) -> Any:
    obj: dict[str, Any] = dict(draw(st.dictionaries(_FIELDS, _VALUES_ANY, max_size=8)))
    obj["t"] = draw(st.one_of(st.sampled_from(sorted(proto.REQUESTS)), _SCALARS))
    if draw(st.integers(0, 4)):
        obj["seq"] = draw(st.one_of(st.integers(-5, 2**64 - 1), _SCALARS))
    return obj if draw(st.integers(0, 9)) else draw(_VALUES_ANY)


SESSION = sess.Session(b"k" * 32)


@FUZZ
@given(
    frame=st.one_of(
        _request_objects().map(lambda o: SESSION.seal(wire.encode(o))),
        st.binary(max_size=200).map(SESSION.seal),
        st.binary(max_size=200),
    ),
    last_seq=st.integers(0, 5),
)
def test_open_request_raises_wire_or_verification_errors_only(frame: bytes, last_seq: int) -> None:
    try:
        seq, request = proto.open_request(frame, session=SESSION, last_seq=last_seq)
    except (WireError, VerificationError):
        return
    assert seq > last_seq and request.KIND in proto.REQUESTS


NODE_KEY = crypto.SigningKey.from_seed(b"n" * 32)
SIGNER = sess.Signer(NODE_KEY)
KX = sess.KeyExchange(b"x" * sess.KX_LEN)
NONCE = b"\x01" * sess.NONCE_LEN
REPLICA = "b" * 64


@st.composite
def _hellos(draw: st.DrawFn) -> bytes:
    """Hellos signed by a real key over a fuzzed payload, so the payload's checks and the
    key exchange are reached; and hellos of fuzzed fields."""
    payload: dict[str, Any] = {
        "nonce": draw(st.one_of(st.just(NONCE), st.binary(max_size=40))),
        "replica": draw(st.one_of(st.just(REPLICA), _SCALARS)),
        "network": draw(st.one_of(st.just("test"), _SCALARS)),
        "node": draw(st.one_of(st.just(SIGNER.keyid), _SCALARS)),
        "kx": draw(st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40))),
    }
    for key in draw(st.lists(st.sampled_from(sorted(payload)), max_size=2)):
        payload.pop(key, None)
    p = wire.encode(payload) if draw(st.integers(0, 5)) else draw(st.binary(max_size=100))
    hello: dict[str, Any] = {
        "id": 0,
        "t": "hello",
        "node": SIGNER.keyid,
        "pub": SIGNER.public_key,
        "p": p,
        "s": SIGNER.sign(sess.HELLO_TYPE, p),
    }
    for key, value in draw(
        st.dictionaries(st.sampled_from(sorted(hello)), _SCALARS, max_size=2)
    ).items():
        hello[key] = value
    return wire.encode(hello)


@FUZZ
@given(raw=st.one_of(_hellos(), st.binary(max_size=200)))
def test_open_hello_raises_wire_or_verification_errors_only(raw: bytes) -> None:
    try:
        hello = sess.open_hello(raw, nonce=NONCE, replica=REPLICA, network="test", kx=KX)
    except (WireError, VerificationError):
        return
    assert hello.node == SIGNER.keyid


def test_the_fuzzed_server_is_a_real_one(tmp_path: Path) -> None:
    """The HTTP fuzz target answers a plain request as the server does on a socket."""
    net = Network(tmp_path / "net")
    replica = Replica(ServiceConfig(network_dir=net.dir, first_start=True))
    server = Server(replica)
    got: list[bytes] = []

    async def run() -> None:
        client, here = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._handle, here)  # type: ignore[arg-type]
            await client.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            await client.send_eof()
            while data := await client.receive_some(65536):
                got.append(data)

    try:
        trio.run(run)
    finally:
        replica.store.close()
    answer = b"".join(got)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok\n"), answer
    assert os.path.isdir(net.dir)
