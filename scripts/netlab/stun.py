"""A tiny STUN/TURN client (RFC 5389 Binding, RFC 5766 Allocate) for probing the lab.

netlab uses it to check what a node behind a NAT looks like from the inet (the
XOR-MAPPED-ADDRESS must be its home's WAN address) and that coturn's time-limited
credentials work (an Allocate with the right password gets a relayed address, a wrong one a
401).  Blocking sockets with a timeout and a few retransmissions, as UDP needs; every answer
is bounded (2 KiB) and checked (magic cookie, transaction id, attribute lengths) before use.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass

from p2pupdate.errors import PeerFault

MAGIC = 0x2112A442
BINDING, ALLOCATE = 0x0001, 0x0003
SUCCESS, ERROR = 0x0100, 0x0110
A_USERNAME, A_MI, A_ERROR, A_REALM, A_NONCE = 0x0006, 0x0008, 0x0009, 0x0014, 0x0015
A_XOR_RELAYED, A_XOR_MAPPED, A_TRANSPORT = 0x0016, 0x0020, 0x0019
MAX_MESSAGE = 2048


class StunError(PeerFault):
    """The STUN/TURN server's answer was missing, malformed or not ours."""


@dataclass(frozen=True, kw_only=True)
class Answer:
    """A STUN response: its class (success or the error code) and its attributes."""

    ok: bool
    code: int  # 0 on success, else the ERROR-CODE (e.g. 401)
    attrs: dict[int, bytes]

    def xor_address(self, kind: int) -> tuple[str, int]:
        raw = self.attrs.get(kind)
        if raw is None or len(raw) != 8 or raw[1] != 0x01:
            raise StunError(f"no IPv4 XOR address attribute 0x{kind:04x} in the answer")
        port = struct.unpack("!H", raw[2:4])[0] ^ (MAGIC >> 16)
        addr = struct.unpack("!I", raw[4:8])[0] ^ MAGIC
        return socket.inet_ntoa(struct.pack("!I", addr)), port


def _attr(kind: int, value: bytes) -> bytes:
    pad = b"\0" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + pad


def _message(kind: int, txid: bytes, attrs: bytes, key: bytes | None = None) -> bytes:
    if key is None:
        return struct.pack("!HHI", kind, len(attrs), MAGIC) + txid + attrs
    # MESSAGE-INTEGRITY covers the header with a length that already counts it (24 bytes).
    head = struct.pack("!HHI", kind, len(attrs) + 24, MAGIC) + txid
    mac = hmac.new(key, head + attrs, hashlib.sha1).digest()
    return head + attrs + _attr(A_MI, mac)


def parse(data: bytes, txid: bytes) -> Answer:
    """Parse a response to the request with ``txid``; raise :class:`StunError` if it is not."""
    if len(data) < 20 or len(data) > MAX_MESSAGE:
        raise StunError(f"a STUN message of {len(data)} bytes")
    kind, length, cookie = struct.unpack("!HHI", data[:8])
    if cookie != MAGIC or data[8:20] != txid or length != len(data) - 20:
        raise StunError("not an answer to our request (cookie, transaction id or length)")
    attrs: dict[int, bytes] = {}
    pos = 20
    while pos + 4 <= len(data):
        a, n = struct.unpack("!HH", data[pos : pos + 4])
        if pos + 4 + n > len(data):
            raise StunError(f"attribute 0x{a:04x} runs past the message")
        attrs.setdefault(a, data[pos + 4 : pos + 4 + n])
        pos += 4 + n + (-n % 4)
    if kind & 0x0110 == SUCCESS:
        return Answer(ok=True, code=0, attrs=attrs)
    if kind & 0x0110 == ERROR:
        err = attrs.get(A_ERROR, b"")
        code = err[2] * 100 + err[3] if len(err) >= 4 else 0
        return Answer(ok=False, code=code, attrs=attrs)
    raise StunError(f"message type 0x{kind:04x} is not a response")


def request(
    sock: socket.socket, server: tuple[str, int], kind: int, attrs: bytes = b"", *,
    key: bytes | None = None, timeout: float = 3.0, tries: int = 4,
) -> Answer:  # fmt: skip
    """Send one request (retransmitted ``tries`` times over ``timeout``) and parse the answer."""
    txid = os.urandom(12)
    msg = _message(kind, txid, attrs, key)
    sock.settimeout(timeout / tries)
    for _ in range(tries):
        sock.sendto(msg, server)
        try:
            while True:
                data, src = sock.recvfrom(MAX_MESSAGE + 1)
                if src == server and data[8:20] == txid:
                    return parse(data, txid)
        except TimeoutError:
            continue
    raise StunError(f"no answer from {server[0]}:{server[1]} within {timeout} s")


def binding(sock: socket.socket, server: tuple[str, int], timeout: float = 3.0) -> tuple[str, int]:
    """The address and port the server saw this socket's request come from."""
    answer = request(sock, server, BINDING, timeout=timeout)
    if not answer.ok:
        raise StunError(f"Binding refused with {answer.code}")
    return answer.xor_address(A_XOR_MAPPED)


def allocate(
    sock: socket.socket, server: tuple[str, int], username: str, password: str,
    timeout: float = 3.0,
) -> Answer:  # fmt: skip
    """A TURN Allocate (UDP) with long-term credentials: the 401 challenge, then the request.

    Returns the second answer: ``ok`` with XOR-RELAYED-ADDRESS, or the error (401 when the
    password is wrong).
    """
    transport = _attr(A_TRANSPORT, bytes([17, 0, 0, 0]))
    challenge = request(sock, server, ALLOCATE, transport, timeout=timeout)
    if challenge.ok or challenge.code != 401:
        raise StunError(f"expected a 401 challenge, got {challenge.code or 'success'}")
    realm, nonce = challenge.attrs.get(A_REALM), challenge.attrs.get(A_NONCE)
    if realm is None or nonce is None:
        raise StunError("the 401 challenge carries no REALM or NONCE")
    key = hashlib.md5(username.encode() + b":" + realm + b":" + password.encode()).digest()
    attrs = (
        transport
        + _attr(A_USERNAME, username.encode())
        + _attr(A_REALM, realm)
        + _attr(A_NONCE, nonce)
    )
    return request(sock, server, ALLOCATE, attrs, key=key, timeout=timeout)
