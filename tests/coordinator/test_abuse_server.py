"""P10 "No input kills a server": a real replica process, attacked over raw sockets.

Each test drives ``p2pupdate-coordinator serve`` as a child process (``replicas``) with a
plain socket -- no client library smooths the bytes -- and then checks that the process
is alive and serves the next client (``/healthz`` and ``/status`` answered), and that
``/status``'s ``server`` counters say what happened.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from pathlib import Path

from .service_helpers import Network, ReplicaProcesses, http


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _ws_open(url: str) -> socket.socket:
    """A raw WebSocket upgrade to ``/v1/node``; the 101 read, the challenge left unread."""
    s = socket.create_connection(_addr(url), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            "GET /v1/node HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = s.recv(4096)
        assert data, "closed during the upgrade"
        head += data
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def _masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame (masked, RFC 6455 5.2), any length and opcode, right or wrong."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each complete unmasked server frame in ``data``."""
    out = []
    while len(data) >= 2:
        n, pos = data[1] & 0x7F, 2
        if n == 126:
            n, pos = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, pos = int.from_bytes(data[2:10], "big"), 10
        if len(data) < pos + n:
            break
        out.append((data[0] & 0x0F, data[pos : pos + n]))
        data = data[pos + n :]
    return out


def _read_until_closed(s: socket.socket, deadline: float = 5.0) -> bytes:
    s.settimeout(deadline)
    got = b""
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return got
        if not data:
            return got
        got += data


def _alive(url: str) -> dict:
    """The process answers the next client: ``/healthz`` then ``/status`` (both 200)."""
    started = time.monotonic()
    code, body = http("GET", f"{url}/healthz")
    assert (code, body) == (200, b"ok\n")
    code, status = http("GET", f"{url}/status")
    assert code == 200
    assert time.monotonic() - started < 2.0
    return status


def test_a_126_byte_ping_before_the_hello_closes_that_connection_only(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(net)
    s = _ws_open(rp.url)
    s.sendall(_masked(0x9, b"p" * 126))  # a control frame over 125 bytes: RFC 6455 5.5
    frames = _server_frames(_read_until_closed(s))
    s.close()
    status = _alive(rp.url)  # the process lives and serves the next client
    assert rp.proc.poll() is None, rp.log.read_text()
    closes = [p for op, p in frames if op == 0x8]
    assert closes and int.from_bytes(closes[0][:2], "big") == 1002, frames
    assert status["server"]["protocol_errors"] >= 1
    assert status["server"]["connection_failures"] == 0
    # and a well-formed ping is still answered with its pong
    s = _ws_open(rp.url)
    s.sendall(_masked(0x9, b"q" * 125))
    s.settimeout(5)
    got = b""
    while not any(op == 0xA for op, _p in _server_frames(got)):
        data = s.recv(65536)
        assert data
        got += data
    assert (0xA, b"q" * 125) in _server_frames(got)
    s.close()


def test_fragmented_control_frames_and_unknown_opcodes_close_with_1002(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(net)
    bad = {
        "fragmented ping": _masked(0x9, b"x", fin=False),
        "reserved opcode": _masked(0x3, b"x"),
        "continuation first": _masked(0x0, b"x"),
        "close of one byte": _masked(0x8, b"x"),
    }
    for name, frame in bad.items():
        s = _ws_open(rp.url)
        s.sendall(frame)
        frames = _server_frames(_read_until_closed(s))
        s.close()
        closes = [p for op, p in frames if op == 0x8]
        assert closes and int.from_bytes(closes[0][:2], "big") == 1002, (name, frames)
    assert rp.proc.poll() is None, rp.log.read_text()
    _alive(rp.url)
