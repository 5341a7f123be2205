"""Links between nodes: ``Link`` (framed, authenticated, errors normalised), ``tcp`` and
``memory`` implementations, and the node-key handshake they share.  README "Gossip and links"."""

from .base import Link, LinkConfig, StreamLink, establish
from .errors import (
    FrameTooLargeError,
    HandshakeError,
    HandshakeKeyError,
    HandshakeOversizeError,
    HandshakeReplayError,
    LinkBrokenError,
    LinkClosedError,
    LinkError,
    LinkProtocolError,
    LinkTimeoutError,
    PeerMismatchError,
)
from .handshake import NonceCache

__all__ = [
    "FrameTooLargeError",
    "HandshakeError",
    "HandshakeKeyError",
    "HandshakeOversizeError",
    "HandshakeReplayError",
    "Link",
    "LinkBrokenError",
    "LinkClosedError",
    "LinkConfig",
    "LinkError",
    "LinkProtocolError",
    "LinkTimeoutError",
    "NonceCache",
    "PeerMismatchError",
    "StreamLink",
    "establish",
]
