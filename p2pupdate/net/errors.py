"""Link errors: one family, normalised at each ``Link`` method (README "Architecture").

Whatever goes wrong below a link (an ``OSError``, a trio ``BrokenResourceError``, a frame
header announcing 4 GiB, a handshake signature that does not verify) reaches the shell as
one of these, so the shell has exactly one ``except LinkError`` per link.  Like the core's
errors they say whose fault it was: the peer's, or the path to it, so the family hangs
under :class:`p2pupdate.errors.PeerFault`::

    PeerFault                     (p2pupdate.errors)
      LinkError                   the link is unusable; close it
        LinkClosedError           closed, by either side (end of stream)
        LinkBrokenError           the transport failed (reset, unreachable, refused)
        LinkTimeoutError          an operation overran its deadline (a stalled peer)
        LinkProtocolError         the remote broke the framing: its fault
          FrameTooLargeError      a frame header announced more than the limit
          FrameAlteredError       a frame whose MAC fails: the peer or the path changed,
                                  dropped, reordered or replayed a frame
        HandshakeError            the remote did not prove the node key it claims
          HandshakeKeyError       bad proof, or a key that is not its node id
          HandshakeReplayError    a nonce seen before, or our own nonce reflected back
          HandshakeOversizeError  a handshake frame over its (small) limit
          PeerMismatchError       a valid key, but not the node that was dialed
          SignalError             an rtc offer/answer whose node signature fails (altered
                                  by a relay), or not from/for the nodes it must be

A frame too large to *send* is the local caller's bug and raises ``ValueError``.
"""

from __future__ import annotations

from ..errors import PeerFault


class LinkError(PeerFault):
    """The link to a peer is unusable; close it (a ``P2PUpdateError`` through ``PeerFault``)."""

    rule = "link"


class LinkClosedError(LinkError):
    rule = "closed"


class LinkBrokenError(LinkError):
    rule = "broken"


class LinkTimeoutError(LinkError):
    rule = "timeout"


class LinkProtocolError(LinkError):
    """The remote broke the framing.  Blame it (the gossip core penalises malformed
    *messages*; this is the layer below, where the only remedy is to close)."""

    rule = "protocol"


class FrameTooLargeError(LinkProtocolError):
    rule = "oversize"


class FrameAlteredError(LinkProtocolError):
    """A frame after the handshake whose MAC under the link's session key does not verify
    for the next sequence number: the frame was changed, or one was dropped, reordered or
    replayed.  Either the peer or something on the path to it did it; the link closes."""

    rule = "altered"


class HandshakeError(LinkError):
    rule = "handshake"


class HandshakeKeyError(HandshakeError):
    rule = "wrong-key"


class HandshakeReplayError(HandshakeError):
    rule = "replayed"


class HandshakeOversizeError(HandshakeError):
    rule = "oversize"


class PeerMismatchError(HandshakeError):
    rule = "wrong-peer"


class SignalError(HandshakeError):
    """An rtc signaling blob that does not verify: a relay altered it, or it names the
    wrong nodes.  Nothing is dialed for it."""

    rule = "bad-signal"
