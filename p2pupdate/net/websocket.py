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
import wsproto.utilities

from ..errors import PeerFault
from .addresses import is_host

__all__ = ["DEFAULT_PORT", "WebSocket", "WebSocketClosed", "parse_url"]

#: The coordinator's port when a URL names none.
DEFAULT_PORT: Final = 8470


class WebSocketClosed(PeerFault):
    """The other end of the WebSocket closed it, went away, or broke the framing.

    The far end's fault from this end's point of view: a node's for the server, a
    replica's for the node (whose link turns it into ``CoordinatorUnavailable``).
    """

    rule = "websocket-closed"


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
        cls, host: str, port: int, path: str, *, max_message: int, timeout: float = 10.0
    ) -> WebSocket:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
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
        stream = (mask * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
        return header + mask + body

    def _frame(self) -> tuple[int, bool, bytes] | None:
        """The next complete frame in the buffer: (opcode, fin, payload), or None."""
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise WebSocketClosed("protocol error: RSV bits set")
        if bool(b1 & 0x80) != self._expect_mask:
            raise WebSocketClosed("protocol error: wrong masking")
        n, pos = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, pos = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, pos = int.from_bytes(buf[2:10], "big"), 10
        if n > self.max_message:
            raise WebSocketClosed("message too big")
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
            stream = (mask * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
                n, "big"
            )
        return b0 & 0x0F, bool(b0 & 0x80), payload

    async def receive(self) -> bytes:
        while True:
            if self.closed:
                raise WebSocketClosed("closed")
            try:
                frame = self._frame()
            except WebSocketClosed:
                await self.close(1002, "protocol error")
                raise
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
                    raise WebSocketClosed("protocol error: new message inside a message")
                self._size += len(payload)
                if self._size > self.max_message:
                    await self.close(1009, "message too big")
                    raise WebSocketClosed("message too big")
                self._parts.append(payload)
                if fin:
                    message = b"".join(self._parts)
                    self._parts, self._size = [], 0
                    return message
            elif opcode == 0x9:  # ping
                with contextlib.suppress(WebSocketClosed, wsproto.utilities.LocalProtocolError):
                    await self._send_raw(self.ws.send(wse.Pong(payload=payload)))
            elif opcode == 0xA:  # pong
                continue
            elif opcode == 0x8:  # close
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                await self.close(1000 if code == 1005 else code)
                raise WebSocketClosed(f"closed by peer ({code})")
            else:
                await self.close(1003, "binary messages only")
                raise WebSocketClosed(f"unexpected opcode {opcode}")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                await self._send_raw(self.ws.send(wse.CloseConnection(code=code, reason=reason)))
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
