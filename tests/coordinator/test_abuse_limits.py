"""P10's resource limits (README "Abuse limits"), each tried on a real replica process.

Raw sockets from the test stand in for the stranger; source addresses 127.0.0.x (all of
127/8 is local on Linux) stand in for distinct clients.  What must not happen is proven
by what the server answers (a 503, a 408, a 400 before the body) and by ``/status``'s
``server`` counters, never by a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .service_helpers import Network, ReplicaProcesses, artifact_of, http
from .test_abuse_server import _addr, _alive, _read_until_closed, _server_frames, _ws_open


def _connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(_addr(url), timeout=5, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _answer(s: socket.socket, timeout: float = 3.0) -> bytes:
    """What the server sends until it closes (or ``timeout`` passes: then what it sent)."""
    s.settimeout(timeout)
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while data := s.recv(65536):
            got += data
    return got


def _get(url: str, path: str, source: str) -> tuple[int, dict]:
    """A GET from ``source`` (urllib cannot choose it): the status code and JSON body."""
    s = _connect(url, source)
    s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    answer = _answer(s)
    s.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@contextlib.contextmanager
def _held(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def test_connection_caps_refuse_new_connections_at_once_and_spare_the_open_ones(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(net, 1, "--max-connections", "12", "--max-per-source", "5")
    with _held([_connect(rp.url) for _ in range(5)]) as mine:
        started = time.monotonic()
        extra = _connect(rp.url)
        answer = _answer(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer  # the sixth from one address
        assert time.monotonic() - started < 1.0
        with _held(
            [_connect(rp.url, "127.0.0.2") for _ in range(5)]
            + [_connect(rp.url, "127.0.0.3") for _ in range(2)]
        ):
            late = _connect(rp.url, "127.0.0.4")  # a new address, but 12 are open
            answer = _answer(late)
            late.close()
            assert answer.startswith(b"HTTP/1.1 503"), answer
            # the open ones are unharmed: the first held one is served
            mine[0].sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answer = _answer(mine[0])
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok\n"), answer
    code, status = _get(rp.url, "/status", "127.0.0.9")  # not an address just closed
    assert code == 200 and rp.proc.poll() is None
    server = status["server"]
    assert server["refused"] == {"max-per-source": 1, "max-connections": 1}, server
    assert server["limits"]["max_connections"] == 12
    assert server["connection_failures"] == 0
    code, metrics = http("GET", f"{rp.url}/metrics")
    text = metrics.decode()
    for result in ("refused-max-per-source", "refused-max-connections"):
        assert f'p2pupdate_coordinator_connections_total{{result="{result}"}} 1.0' in text


def test_a_trickled_head_or_body_is_cut_at_its_deadline(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(
        net, 1, "--head-timeout", "1", "--body-timeout", "1", "--hello-timeout", "1"
    )
    cases = {
        "head": (b"GET /status HTTP/1.1\r\n", b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        "body": (
            b"POST /v1/publish HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n",
            b"b" * 100,
        ),
    }
    for name, (start, trickle) in cases.items():
        s = _connect(rp.url)
        began = time.monotonic()
        s.sendall(start)
        s.settimeout(0.2)
        got = b""
        for byte in trickle:  # one byte every 0.2 s: each read is quick, the whole is not
            try:
                s.sendall(bytes((byte,)))
                data = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            got += data
            if not data or b"\r\n\r\n" in got:
                break
        took = time.monotonic() - began
        s.close()
        assert got.startswith(b"HTTP/1.1 408"), (name, got)
        assert 0.9 < took < 3.0, (name, took)
    # a WebSocket that never says hello: closed at the hello deadline
    s = _ws_open(rp.url)
    began = time.monotonic()
    frames = _server_frames(_read_until_closed(s))
    took = time.monotonic() - began
    s.close()
    assert frames and frames[-1][0] == 0x8, frames  # (after the challenge) a close
    assert 0.9 < took < 3.0, took
    status = _alive(rp.url)
    assert status["server"]["timeouts"] == {"head": 1, "body": 1, "hello": 1}, status["server"]


def test_an_upload_is_checked_against_its_release_before_its_body_is_read(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(net)
    data = os.urandom(5000)
    artifact = artifact_of(data)
    assert http("POST", f"{rp.url}/v1/publish", net.release(data, "v2", 2))[0] == 200
    unknown = artifact_of(b"no release names this")
    heads = {
        "a 1 GiB body for a 5000-byte release": (artifact, 1 << 30, 400, "artifact-mismatch"),
        "a body over the artifact limit": (artifact, 1 << 40, 413, "artifact-mismatch"),
        "no release record": (unknown, 10 << 20, 400, "no-release-record"),
    }
    for name, (sha, length, code, error) in heads.items():
        s = _connect(rp.url)
        began = time.monotonic()
        s.sendall(
            f"PUT /v1/artifacts/{sha} HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n"
            "\r\n".encode()
        )  # the head only: the answer must come without a byte of the body
        answer = _answer(s)
        s.close()
        assert answer.startswith(f"HTTP/1.1 {code}".encode()), (name, answer)
        assert error.encode() in answer, (name, answer)
        assert time.monotonic() - began < 1.0, name
    assert http("PUT", f"{rp.url}/v1/artifacts/{artifact}", data) == (
        200,
        {"ok": True, "artifact": artifact, "length": 5000},
    )
    code, chunk = http("GET", f"{rp.url}/v1/artifacts/{artifact}/chunks/1")
    assert (code, chunk) == (200, data[1024:2048])
    _alive(rp.url)
