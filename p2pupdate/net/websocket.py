"""A minimal WebSocket over a trio stream, for the node <-> coordinator channel.

wsproto (sans-IO, like the core) does the opening handshakes and the control frames;
binary data frames are read and written here in a few lines (RFC 6455 5.2), because on
the coordinator's ask path wsproto's general frame code was a quarter of the per-message
cost.  Both ends use :class:`WebSocket` (the server after its own HTTP upgrade); what
travels over it is described in README "Protocol" and :mod:`p2pupdate.core.coordproto`.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from typing import Final

import trio
import wsproto
import wsproto.events as wse

from ..errors import PeerFault
from .addresses import is_host

__all__ = [
    "DEFAULT_PORT",
    "MAX_CONTROL",
    "MessageTooBig",
    "ProtocolViolation",
    "WebSocket",
    "WebSocketClosed",
    "parse_url",
]

#: The coordinator's port when a URL names none.
DEFAULT_PORT: Final = 8470


class WebSocketClosed(PeerFault):
    """The other end of the WebSocket closed it, went away, or broke the framing.

    The far end's fault from this end's point of view: a node's for the server, a
    replica's for the node (whose link turns it into ``CoordinatorUnavailable``).
    """

    rule = "websocket-closed"


class ProtocolViolation(WebSocketClosed):
    """A frame RFC 6455 forbids (the reader closes with 1002)."""

    rule = "websocket-protocol"


class MessageTooBig(WebSocketClosed):
    """A message over the reader's ``max_message`` (closed with 1009)."""

    rule = "websocket-too-big"


#: RFC 6455 5.5: control frames carry at most 125 bytes and are never fragmented.
MAX_CONTROL: Final = 125
#: The opcodes RFC 6455 defines (5.2); the others are reserved: a protocol error.
_OPCODES: Final = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    stream = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class WebSocket:
    """Binary messages over one trio stream.  Both ends use it (the server after its
    own handshake).  ``receive`` caps a message at ``max_message`` bytes.

    wsproto does the handshakes and the control frames; data frames are read and written
    here, in a few lines (RFC 6455 5.2): on the ask path wsproto's general frame code was
    a quarter of the per-message cost.  No extensions are negotiated, so RSV bits are
    errors; frames from a client must be masked and frames from a server must not be.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: wsproto.WSConnection,
        *,
        max_message: int,
        initial: bytes = b"",
        client: bool = False,
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.max_message = max_message
        self._send_lock = trio.Lock()
        self._buf = bytearray(initial)
        self._parts: list[bytes] = []
        self._size = 0
        self._expect_mask = not client
        self.closed = False

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str,
        *,
        max_message: int,
        timeout: float = 10.0,
        local_address: str | None = None,
    ) -> WebSocket:
        """Connect (from ``local_address``, when given: a test's node in another subnet)."""
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port, local_address=local_address)
            try:
                ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                await stream.send_all(ws.send(wse.Request(host=f"{host}:{port}", target=path)))
                head = bytearray()
                while b"\r\n\r\n" not in head:
                    data = await stream.receive_some(65536)
                    if not data or len(head) > 65536:
                        raise WebSocketClosed("closed during the handshake")
                    head += data
                end = head.index(b"\r\n\r\n") + 4
                ws.receive_data(bytes(head[:end]))
                for event in ws.events():
                    if isinstance(event, wse.AcceptConnection):
                        return cls(
                            stream,
                            ws,
                            max_message=max_message,
                            initial=bytes(head[end:]),
                            client=True,
                        )
                    if isinstance(event, wse.RejectConnection):
                        raise WebSocketClosed(f"handshake refused ({event.status_code})")
                raise WebSocketClosed("no handshake answer")
            except BaseException:
                with contextlib.suppress(Exception):
                    await stream.aclose()
                raise

    async def _send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.closed = True
                raise WebSocketClosed(str(exc)) from None

    async def send(self, message: bytes) -> None:
        if self.closed:
            raise WebSocketClosed("closed")
        await self._send_raw(self._encode(message))

    def _encode(self, payload: bytes) -> bytes:
        """One final binary frame (RFC 6455 5.2); masked when we are the client."""
        n = len(payload)
        masked = not self._expect_mask  # we mask exactly when the peer must not
        bit = 0x80 if masked else 0
        if n < 126:
            header = bytes((0x82, bit | n))
        elif n < 65536:
            header = bytes((0x82, bit | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x82, bit | 127)) + n.to_bytes(8, "big")
        if not masked:
            return header + payload
        mask = os.urandom(4)
        return header + mask + _unmask(payload, mask)

    def _frame(self) -> tuple[int, bool, bytes] | None:
        """The next complete frame in the buffer: (opcode, fin, payload), or None.

        Raises ``ProtocolViolation`` (close 1002) for a frame RFC 6455 forbids: RSV bits
        without an extension, the wrong masking, an opcode it reserves, a control frame
        fragmented or over 125 bytes (5.5) -- checked from the header alone, before the
        payload is waited for -- and ``WebSocketClosed`` (1009) for a message over
        ``max_message``."""
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
        if b0 & 0x70:
            raise ProtocolViolation("RSV bits set")
        if bool(b1 & 0x80) != self._expect_mask:
            raise ProtocolViolation("wrong masking")
        if opcode not in _OPCODES:
            raise ProtocolViolation(f"reserved opcode {opcode}")
        n, pos = b1 & 0x7F, 2
        if opcode >= 0x8:
            if not fin:
                raise ProtocolViolation("a fragmented control frame")
            if n > MAX_CONTROL:
                raise ProtocolViolation(f"a control frame over {MAX_CONTROL} bytes")
        if n == 126:
            if len(buf) < 4:
                return None
            n, pos = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, pos = int.from_bytes(buf[2:10], "big"), 10
        if n > self.max_message:
            raise MessageTooBig("message too big")
        mask = b""
        if self._expect_mask:
            if len(buf) < pos + 4:
                return None
            mask, pos = bytes(buf[pos : pos + 4]), pos + 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        if mask and n:
            payload = _unmask(payload, mask)
        return opcode, fin, payload

    def _control(self, opcode: int, payload: bytes) -> bytes:
        """One control frame (ping answer or close), framed here like data frames: never
        through wsproto's encoder, which raises on a payload RFC 6455 forbids."""
        payload = payload[:MAX_CONTROL]
        masked = not self._expect_mask
        header = bytes((0x80 | opcode, (0x80 if masked else 0) | len(payload)))
        if not masked:
            return header + payload
        mask = os.urandom(4)
        return header + mask + _unmask(payload, mask)

    async def receive(self) -> bytes:
        """The next binary message.  Raises ``WebSocketClosed`` (or its subclasses
        ``ProtocolViolation`` / ``MessageTooBig``) and nothing else: the connection is
        closed first, with the code RFC 6455 names (1002, 1003, 1009)."""
        try:
            return await self._receive()
        except ProtocolViolation as exc:
            await self.close(1002, "protocol error")
            raise ProtocolViolation(f"protocol error: {exc}") from None
        except MessageTooBig:
            await self.close(1009, "message too big")
            raise

    async def _receive(self) -> bytes:
        while True:
            if self.closed:
                raise WebSocketClosed("closed")
            frame = self._frame()
            if frame is None:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.closed = True
                    raise WebSocketClosed(str(exc)) from None
                if not data:
                    self.closed = True
                    raise WebSocketClosed("connection lost")
                self._buf += data
                continue
            opcode, fin, payload = frame
            if opcode in (0x0, 0x2):  # continuation, binary
                if opcode == 0x2 and self._parts:
                    raise ProtocolViolation("a new message inside a message")
                if opcode == 0x0 and not self._parts:
                    raise ProtocolViolation("a continuation outside a message")
                self._size += len(payload)
                if self._size > self.max_message:
                    raise MessageTooBig("message too big")
                self._parts.append(payload)
                if fin:
                    message = b"".join(self._parts)
                    self._parts, self._size = [], 0
                    return message
            elif opcode == 0x9:  # ping
                with contextlib.suppress(WebSocketClosed):
                    await self._send_raw(self._control(0xA, payload))
            elif opcode == 0xA:  # pong
                continue
            elif opcode == 0x8:  # close
                if len(payload) == 1:
                    raise ProtocolViolation("a close frame of one byte")
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                await self.close(1000 if code == 1005 else code)
                raise WebSocketClosed(f"closed by peer ({code})")
            else:  # text (0x1): this channel is binary
                await self.close(1003, "binary messages only")
                raise WebSocketClosed(f"unexpected opcode {opcode}")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            code = code if 1000 <= code <= 4999 else 1000
            frame = self._control(0x8, code.to_bytes(2, "big") + reason.encode()[:120])
            with contextlib.suppress(WebSocketClosed, trio.BusyResourceError):
                await self._send_raw(frame)
        with contextlib.suppress(Exception):
            await self.stream.aclose()


def parse_url(url: str) -> tuple[str, int, str]:
    """``http://host:port`` or ``ws://host:port`` -> (host, port, http base URL).

    Raises ``ValueError`` for anything else: another scheme, no host or one that is not a
    host name or address, a port that is not one, a path, query, fragment or user part
    (a replica URL names a server, nothing on it).
    """
    bad = f"{url!r}: expected http://HOST:PORT (TLS is not built in yet)"
    try:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port
    except ValueError:
        raise ValueError(bad) from None
    host = parts.hostname
    if (
        parts.scheme not in ("http", "ws")
        or not host
        or not is_host(host)
        or port == 0
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(bad)
    port = port or DEFAULT_PORT
    shown = f"[{host}]" if ":" in host else host
    return host, port, f"http://{shown}:{port}"
