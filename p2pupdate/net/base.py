"""The ``Link`` abstraction: framed send/receive to one authenticated peer.

Shaped like python-tuf's ``FetcherInterface`` (README "Architecture"): the public methods
(``send``, ``receive``, ``aclose``) are fixed here and normalise every failure of the
subclass's ``_send`` / ``_receive`` into the ``LinkError`` family; subclasses only move
bytes.  Every read has a byte limit (``LinkConfig.max_frame``, README "Protocol").

``StreamLink`` is the one implementation today: u32-length-prefixed frames
(``wire.frame`` / ``wire.FrameDecoder``) over any trio byte stream, after the handshake of
``handshake.py``.  ``tcp`` runs it over sockets, ``memory`` over in-memory streams, ``rtc``
over a data channel.  After the handshake each frame's body is ``mac (32 B) || payload``
under the link's session key (``handshake.FrameMac``), checked before the payload is handed
up; ``max_frame`` still bounds the payload.  A frame that fails its MAC, like any framing
violation, closes the link (``LinkProtocolError``).
"""

from __future__ import annotations

import abc
import contextlib
import secrets
import socket
from collections import deque
from dataclasses import dataclass

import trio

from ..core import session as sess
from ..core import wire
from ..core.crypto import SigningKey
from ..core.errors import OversizeError, P2PUpdateError, WireError
from ..core.gossip import MAX_DOC_MESSAGE_BYTES
from . import handshake as hs
from .errors import (
    FrameTooLargeError,
    HandshakeError,
    HandshakeOversizeError,
    LinkBrokenError,
    LinkClosedError,
    LinkError,
    LinkProtocolError,
    LinkTimeoutError,
)

_RECEIVE_CHUNK = 256 * 1024
#: On a tcp socket, the reader is not woken before this many bytes of a large frame are
#: in (``SO_RCVLOWAT``, at most this): a 64 KiB block that trickles in over a slow
#: uplink wakes it once or twice, not once per segment.
_RCVLOWAT_MAX = 128 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkConfig:
    """Limits and deadlines of one link (python-tuf ``ngclient/config.py`` style)."""

    #: Largest frame either way: any gossip message, a ``Doc`` included.
    max_frame: int = MAX_DOC_MESSAGE_BYTES
    #: The whole handshake, connect included for a dialer.
    handshake_timeout: float = 10.0
    #: One ``send``: a peer that stops reading is cut off rather than blocking us.
    send_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_frame < hs.MAX_HANDSHAKE_FRAME:
            raise ValueError("LinkConfig.max_frame is smaller than a handshake frame")
        if not (self.handshake_timeout > 0 and self.send_timeout > 0):
            raise ValueError("LinkConfig timeouts must be positive")


class Link(abc.ABC):
    """A kept-open, authenticated, framed connection to one peer.

    ``peer`` is the node id the remote proved (its key id); ``host`` is the remote address
    as observed, the unit of gossip's per-host Sybil cap.
    """

    def __init__(self, *, peer: str, host: str, config: LinkConfig) -> None:
        self.peer = peer
        self.host = host
        self.config = config
        self._closed = False

    async def send(self, data: bytes) -> None:
        """Send one frame.  Raises ``LinkError`` (and ``ValueError`` for a frame over
        ``max_frame``, the caller's bug)."""
        if len(data) > self.config.max_frame:
            raise ValueError(f"frame of {len(data)} bytes exceeds {self.config.max_frame}")
        if self._closed:
            raise LinkClosedError("send on a closed link")
        try:
            with trio.fail_after(self.config.send_timeout):
                await self._send(data)
        except trio.TooSlowError as exc:
            raise LinkTimeoutError(f"send to {self.peer[:12]} overran its deadline") from exc
        except Exception as exc:
            raise _normalise(exc, "send") from exc

    async def receive(self) -> bytes:
        """The next frame (at most ``max_frame`` bytes).  Raises ``LinkError``; after a
        ``LinkProtocolError`` (a broken frame, a bad MAC) the link is closed."""
        if self._closed:
            raise LinkClosedError("receive on a closed link")
        try:
            return await self._receive()
        except Exception as exc:
            err = _normalise(exc, "receive")
            if isinstance(err, LinkProtocolError):  # the framing is lost for good
                await self.aclose()
            raise err from exc

    async def aclose(self) -> None:
        """Close (idempotent, never raises a ``LinkError``)."""
        if self._closed:
            return
        self._closed = True
        # closing a broken transport fails in many ways; all of them mean "closed"
        with contextlib.suppress(Exception):
            await self._aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    @abc.abstractmethod
    async def _send(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def _receive(self) -> bytes: ...

    @abc.abstractmethod
    async def _aclose(self) -> None: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(peer={self.peer[:12]}..., host={self.host!r})"


def _normalise(exc: Exception, what: str) -> LinkError:
    """Map anything a transport raises into the family (the one ``except`` per link)."""
    if isinstance(exc, LinkError):
        return exc
    if isinstance(exc, OversizeError):
        return FrameTooLargeError(f"{what}: {exc.message}")
    if isinstance(exc, WireError):
        return LinkProtocolError(f"{what}: {exc.message}")
    if isinstance(exc, trio.ClosedResourceError | trio.EndOfChannel):
        return LinkClosedError(f"{what}: link closed")
    if isinstance(exc, trio.BrokenResourceError | OSError):
        return LinkBrokenError(f"{what}: {exc!r}")
    if isinstance(exc, P2PUpdateError):
        return LinkError(f"{what}: {exc.message}")
    return LinkError(f"{what}: unexpected {type(exc).__name__}: {exc}")


# -- framing over a byte stream -------------------------------------------------------------


class _Framed:
    """A byte stream cut into frames.

    During the handshake frames are plain and read one at a time under the small
    handshake limit (``send_plain`` / ``receive_one``), leaving whatever follows in
    ``pending``: a peer may send its first large gossip frame right behind its proof.
    ``start`` then hands those bytes to a ``FrameDecoder`` with the link's real limit (plus
    the MAC), and from then on ``send`` / ``receive`` seal and open every frame with the
    link's ``FrameMac``.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.pending = bytearray()
        self.decoder: wire.FrameDecoder | None = None
        self.mac: hs.FrameMac | None = None
        self.frames: deque[bytes] = deque()
        self.send_lock = trio.Lock()
        self.send_interrupted = False
        #: The socket under a tcp stream (``SO_RCVLOWAT`` is set on it), and its lowat.
        self.sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self.lowat = 1

    async def send_plain(self, data: bytes) -> None:
        """A handshake frame (no MAC: there is no key yet)."""
        async with self.send_lock:
            await self.stream.send_all(wire.frame(data, max_frame=len(data)))

    async def send(self, data: bytes) -> None:
        assert self.mac is not None, "send before the handshake finished"
        async with self.send_lock:  # frames from concurrent senders must not interleave
            # (and the MAC's sequence number is the order frames go on the wire)
            if self.send_interrupted:
                raise LinkBrokenError("an earlier send was interrupted: the framing is lost")
            tag = self.mac.tag(data)
            head = wire.FRAME_HEADER.pack(sess.MAC_LEN + len(data))
            try:
                await self.stream.send_all(b"".join((head, tag, data)))  # one copy
            except BaseException:
                # cancelled or failed after its sequence number was taken: part or none of
                # the frame went out, so any later frame would fail the peer's MAC check
                # (and blame the path); refuse to send one instead
                self.send_interrupted = True
                raise

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(_RECEIVE_CHUNK)
        if not chunk:
            raise LinkClosedError("the peer closed the link")
        self.pending += chunk

    async def receive_one(self, limit: int) -> bytes:
        head = wire.FRAME_HEADER.size
        while len(self.pending) < head:
            await self._fill()
        (length,) = wire.FRAME_HEADER.unpack_from(self.pending)
        if length > limit:
            raise OversizeError(f"frame header announces {length} bytes; limit is {limit}")
        while len(self.pending) < head + length:
            await self._fill()
        frame = bytes(self.pending[head : head + length])
        del self.pending[: head + length]
        return frame

    def start(self, max_frame: int, mac: hs.FrameMac) -> None:
        """``max_frame``: the payload limit (the MAC comes on top)."""
        self.mac = mac
        self.decoder = wire.FrameDecoder(max_frame + sess.MAC_LEN)
        self.frames.extend(self.decoder.feed(bytes(self.pending)))
        self.pending.clear()

    async def receive(self) -> bytes:
        assert self.decoder is not None and self.mac is not None, "receive before handshake"
        while not self.frames:
            if self.sock is not None:
                self._set_lowat(min(self.decoder.needed, _RCVLOWAT_MAX))
            chunk = await self.stream.receive_some(_RECEIVE_CHUNK)
            if not chunk:
                raise LinkClosedError("the peer closed the link")
            self.frames.extend(self.decoder.feed(bytes(chunk)))  # (bytes: no copy)
        return self.mac.open(self.frames.popleft())

    def _set_lowat(self, lowat: int) -> None:
        """Wake the reader only once ``lowat`` bytes are in (the rest of a frame that must
        come whole anyway; a closed or failed connection still wakes it at once)."""
        lowat = max(1, lowat)
        if lowat != self.lowat and self.sock is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
            except OSError:
                self.sock = None  # not a socket that has it: read as it comes
                return
            self.lowat = lowat


class StreamLink(Link):
    """Frames over a trio stream, after ``establish`` ran the handshake on it."""

    def __init__(self, framed: _Framed, *, peer: str, host: str, config: LinkConfig) -> None:
        super().__init__(peer=peer, host=host, config=config)
        self._framed = framed

    async def _send(self, data: bytes) -> None:
        await self._framed.send(data)

    async def _receive(self) -> bytes:
        return await self._framed.receive()

    async def _aclose(self) -> None:
        await self._framed.stream.aclose()


async def establish(
    stream: trio.abc.Stream,
    *,
    key: SigningKey,
    dialer: bool,
    host: str,
    config: LinkConfig,
    expected_peer: str | None = None,
    nonces: hs.NonceCache | None = None,
    nonce: bytes | None = None,
    certs: tuple[bytes, bytes] | None = None,
) -> StreamLink:
    """Run the handshake on ``stream`` and return the link, or raise a ``LinkError``.

    The whole exchange is bounded by ``config.handshake_timeout``; on any failure the
    stream is closed.  ``nonce`` is for tests (default: 32 bytes from ``secrets``); the
    ephemeral kx key is always fresh.  ``certs`` = (local, remote) certificate fingerprints
    of the channel underneath, bound into both proofs and the session key
    (``handshake.channel_binding``; rtc links).
    """
    my_binding = their_binding = b""
    if certs is not None:
        my_binding = hs.channel_binding(certs[0], certs[1])
        their_binding = hs.channel_binding(certs[1], certs[0])
    framed = _Framed(stream)
    limit = hs.MAX_HANDSHAKE_FRAME
    kx = sess.KeyExchange(secrets.token_bytes(hs.KX_LEN))
    mine = hs.hello_for(
        key, nonce if nonce is not None else secrets.token_bytes(hs.NONCE_LEN), kx.public
    )
    my_role, their_role = (
        (hs.ROLE_DIAL, hs.ROLE_ACCEPT) if dialer else (hs.ROLE_ACCEPT, hs.ROLE_DIAL)
    )
    try:
        with trio.fail_after(config.handshake_timeout):
            await framed.send_plain(mine.to_wire())
            theirs = hs.Hello.from_wire(await framed.receive_one(limit))
            hs.check_hello(theirs, mine, expected_peer=expected_peer, nonces=nonces)
            await framed.send_plain(hs.prove(key, my_role, mine, theirs, my_binding).to_wire())
            proof = hs.Proof.from_wire(await framed.receive_one(limit))
            hs.check_proof(proof, role=their_role, theirs=theirs, mine=mine, binding=their_binding)
            dial, accept = (mine, theirs) if dialer else (theirs, mine)
            session_key = hs.session_key(
                kx,
                dial=dial,
                accept=accept,
                dialer=dialer,
                binding=my_binding if dialer else their_binding,
            )
    except BaseException as exc:
        with trio.CancelScope(shield=True), contextlib.suppress(Exception):
            await stream.aclose()
        if isinstance(exc, trio.TooSlowError):
            raise LinkTimeoutError("handshake overran its deadline") from exc
        if isinstance(exc, OversizeError):
            raise HandshakeOversizeError(f"handshake frame: {exc.message}") from exc
        if isinstance(exc, WireError):
            raise HandshakeError(f"handshake framing: {exc.message}") from exc
        if isinstance(exc, Exception) and not isinstance(exc, LinkError):
            raise _normalise(exc, "handshake") from exc
        raise
    try:
        framed.start(config.max_frame, hs.FrameMac(session_key, role=my_role, peer=theirs.node_id))
    except OversizeError as exc:  # the first frame after the proof was already too large
        await stream.aclose()
        raise FrameTooLargeError(exc.message) from exc
    return StreamLink(framed, peer=theirs.node_id, host=host, config=config)
