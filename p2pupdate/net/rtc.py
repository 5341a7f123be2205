"""WebRTC links: the ``Link`` of ``tcp`` and ``memory`` over one aiortc data channel.

README "Gossip and links".  Three layers, bottom up:

* ``RtcChannel``: one ``RTCPeerConnection`` with one reliable, ordered data channel
  (negotiated, id 0, so neither side waits for a ``datachannel`` event), seen from trio as a
  ``trio.abc.Stream`` of bytes.  aiortc lives in the process's one asyncio thread
  (``asyncio_bridge``); messages cross into trio with ``TrioToken.run_sync_soon`` into a
  memory channel, calls cross back with ``asyncio.run_coroutine_threadsafe``.  A message is
  at most ``CHUNK`` bytes (64 KiB: the largest message a peer that announces no
  ``max-message-size`` must take, RFC 8841; aiortc announces 256 KiB).  Two things
  bound memory: sends wait while the channel's ``bufferedAmount`` is over ``HIGH_WATER``
  until ``bufferedamountlow`` (``LOW_WATER``) fires, and a credit window (``WINDOW``): the
  receiver grants bytes as *trio* consumes them, so a slow reader stops the sender instead
  of piling messages up in the inbox -- and a sender that overruns its credit is cut off.
* The same u32-length-prefixed frames, size limits and key-proving handshake as every
  link (``base.establish``), run inside the channel, with both DTLS certificate
  fingerprints bound into the proofs (``handshake.channel_binding``): the certificate the
  remote presented to aiortc must be the one in the SDP, and the SDP's fingerprints are
  what each side signs, so whoever relays the signaling cannot sit in the middle.
* Signaling: the offer and the answer are opaque, node-signed blobs (``sign_signal`` /
  ``open_signal``), so any relay (the coordinator's ``signal`` relay, a common peer) can
  carry them and one that alters a blob is caught before anything is dialed.

Offer/answer is **non-trickle**: aioice gathers every candidate (host, and srflx/relay
when STUN/TURN servers are given) inside ``setLocalDescription`` before the SDP exists, so
the one blob each way already carries all candidates and trickling would buy nothing but a
second relay protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import trio

from ..core import wire
from ..core.crypto import KEY_LEN, SIG_LEN, SigningKey, verify_signature
from ..core.errors import WireError
from .asyncio_bridge import Sidecar, sidecar
from .base import LinkConfig, StreamLink, _normalise, establish
from .errors import (
    LinkBrokenError,
    LinkClosedError,
    LinkProtocolError,
    LinkTimeoutError,
    SignalError,
)
from .handshake import CERT_FINGERPRINT_LEN, NonceCache

#: One data channel message, header byte included.  Each message costs a pass through aiortc
#: and a wake-up of trio (~0.3 ms of CPU here), so bigger is cheaper: measured on the rtc bench,
#: 16 KiB took 25-27 s of CPU per Gbit, 64 KiB 23-24 s (trio's share 2.2 -> 1.3 s).
CHUNK: Final = 64 * 1024
#: Sends pause while aiortc has more than this queued for the channel ...
HIGH_WATER: Final = 1024 * 1024
#: ... and resume when its ``bufferedamountlow`` event says it fell below this.
LOW_WATER: Final = 256 * 1024
#: Bytes a sender may have on the way beyond what the receiving trio side has consumed.
WINDOW: Final = 2 * 1024 * 1024
#: Receive buffer asked for on each ICE socket (the kernel caps it at ``rmem_max``): aiortc's
#: SCTP runs in Python, so a burst arrives while it is busy, and at the 208 KiB default the
#: kernel drops datagrams, which SCTP answers by halving its window.
SOCKET_RCVBUF: Final = 4 * 1024 * 1024
LABEL: Final = "p2pupdate"
_DATA: Final = 0
_CREDIT: Final = 1

SIGNAL_TYPE: Final = "rtc-signal"
SIGNAL_VERSION: Final = 1
SESSION_LEN: Final = 16
#: Offer sessions share the node's ``NonceCache`` with handshake nonces, tagged apart.
_SESSION_TAG: Final = b"rtc-offer:"
MAX_SDP: Final = 12 * 1024
#: A whole signaling blob: SDP plus ids, key and signature.
MAX_SIGNAL: Final = MAX_SDP + 512
_SIGNAL_LIMITS: Final = wire.Limits(
    max_bytes=MAX_SIGNAL, max_depth=1, max_container_len=8, max_str_len=MAX_SDP,
    max_bin_len=MAX_SIGNAL, max_items=16,
)  # fmt: skip
#: Path kinds, best first: the selected ICE candidate pair's worst side names the path.
PATH_KINDS: Final = ("host", "srflx", "prflx", "relay")

IceServer = dict[str, Any]  # {"urls": ..., "username": ..., "credential": ...}

logger = logging.getLogger(__name__)


# -- aiortc's SCTP, tuned ---------------------------------------------------------------
#
# aiortc's SCTP runs in Python, one DATA chunk (<= 1160 B) per packet, so a bulk transfer is
# CPU-bound on per-packet work (README "Gossip and links" has the profile).  Three costs in
# aiortc 1.16.0 grow with no benefit, and this is the one place that changes them, only on
# the release it was read against (any other runs unchanged, just slower):
#
# * ``_transmit`` (called for every SACK) walks the whole in-flight queue looking for
#   chunks marked for retransmission, ~1000 chunks at a full window, although chunks are
#   only ever marked by a SACK with gap reports or a T3 expiry.  The walk now runs only
#   after one of those, until every marked chunk went out again.
# * ``_mark_received`` sorts and re-filters its out-of-order sets for every packet; the
#   in-order case (nearly all of them) now takes a shortcut with the same result.
# * ``_receive_data_chunk`` scans the stream's whole reassembly list for complete messages
#   after every fragment, so a 16 KiB message costs ~100 list steps; an ordered fragment
#   that is not a message's last, arriving while nothing is out of order, cannot complete
#   one, so the scan now runs for last fragments and whenever anything is out of order.
# * The receiver sends a SACK for every DATA packet, doubling the packets both ends handle.
#   RFC 9260 section 6.2 allows delaying a SACK up to 200 ms and says one SHOULD go out at
#   least for every second packet; both ends here are this code, so it goes out for every
#   ``SACK_EVERY``-th DATA packet or after ``SACK_DELAY``, and at once for anything out of
#   order or duplicated (fast retransmit is unchanged).  Measured on the rtc bench: a SACK
#   per 2 packets took 32-35 s of CPU per Gbit, per 4 packets 26-29 s.

#
# And one in aioice (aiortc's ICE): its consent checks (RFC 7675) send one STUN request
# every ~5 s and count it failed when no answer comes within 0.5 s; six failures in a row
# close the connection.  Behind a bulk transfer the answer waits in the same queues as the
# data: measured 0.2-0.3 s on an idle veth at 38 Mbit/s, 0.6-0.8 s with the receiver's CPU
# contended, so a busy link could be closed for being busy.  RFC 7675 allows 30 s without
# an answer; each check now retransmits ``CONSENT_RETRANSMISSIONS`` times (an answer within
# 0.5 + 1 + 2 = 3.5 s counts), so a dead path still expires after six failed checks, ~50 s
# (the links' own keepalive finds a silent peer sooner).  And every datagram, data
# included, first goes through a STUN parse that fails with an exception; a first byte of
# 20-63 is DTLS and never STUN (RFC 7983), so those now go straight to the connection.

#: The aiortc release the tuning was written against.
AIORTC_TUNED_FOR: Final = "1.16.0"
#: The aioice release the two aioice changes were written against.
AIOICE_TUNED_FOR: Final = "0.13.0"
CONSENT_RETRANSMISSIONS: Final = 2
#: A SACK at least every this many DATA packets (at most aiortc's burst limit: a SACK lets
#: its sender put up to 4 packets more than its flight on the wire, so acknowledging more
#: at once would shrink the flight) ...
SACK_EVERY: Final = 4
#: ... and at most this long after the first one it acknowledges (RFC 9260: <= 200 ms).
SACK_DELAY: Final = 0.02
_tuned: bool | None = None


def tune_aiortc() -> bool:
    """Apply the SCTP tuning above once per process (on the asyncio thread, before the first
    peer connection); False when the installed aiortc is not ``AIORTC_TUNED_FOR``."""
    global _tuned
    if _tuned is not None:
        return _tuned
    import aioice
    import aiortc
    from aioice import ice
    from aiortc import rtcsctptransport as sctp

    if aioice.__version__ == AIOICE_TUNED_FOR:
        _patch_aioice(ice)
    else:
        logger.warning(
            "aioice %s is not %s: its consent checks may close a link busy with a transfer",
            aioice.__version__,
            AIOICE_TUNED_FOR,
        )
    if aiortc.__version__ != AIORTC_TUNED_FOR:
        logger.warning(
            "aiortc %s is not %s: its SCTP runs untuned (slower bulk transfers)",
            aiortc.__version__,
            AIORTC_TUNED_FOR,
        )
        _tuned = False
        return False
    _patch_sctp(sctp)
    _tuned = True
    return True


def _patch_aioice(ice: Any) -> None:
    connection = ice.Connection
    stun = ice.stun
    datagram_received = ice.StunProtocol.datagram_received

    def _datagram_received(self: Any, data: bytes, addr: Any) -> None:
        if data and 19 < data[0] < 64:  # DTLS (RFC 7983): not worth a STUN parse
            self.receiver.data_received(data, self.local_candidate.component)
            return
        datagram_received(self, data, addr)

    async def query_consent(self: Any) -> None:
        # aioice 0.13.0's ``Connection.query_consent``, each check with retransmissions
        assert self.remote_password is not None
        failures = 0
        while True:
            await asyncio.sleep(ice.CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
            for pair in self._nominated.values():
                request = self.build_request(pair, nominate=False)
                try:
                    await pair.protocol.request(
                        request,
                        pair.remote_addr,
                        integrity_key=self.remote_password.encode("utf8"),
                        retransmissions=CONSENT_RETRANSMISSIONS,
                    )
                    failures = 0
                except stun.TransactionError:
                    failures += 1
                if failures >= ice.CONSENT_FAILURES:
                    logger.info("rtc link: ICE consent expired (no answer to %d checks)", failures)
                    self._query_consent_task = None
                    await self.close()
                    return

    connection.query_consent = query_consent
    ice.StunProtocol.datagram_received = _datagram_received


def _patch_sctp(sctp: Any) -> None:
    transport = sctp.RTCSctpTransport
    established = transport.State.ESTABLISHED
    receive_sack_chunk = transport._receive_sack_chunk
    t3_expired = transport._t3_expired
    mark_received = transport._mark_received
    receive_data_chunk = transport._receive_data_chunk
    last_frag, unordered = sctp.SCTP_DATA_LAST_FRAG, sctp.SCTP_DATA_UNORDERED
    transport._p2p_rtx = False  # a chunk may be marked for retransmission
    transport._p2p_unacked = 0  # DATA packets received since the last SACK
    transport._p2p_sack_timer = None

    async def _receive_sack_chunk(self: Any, chunk: Any) -> None:
        if chunk.gaps:  # the only SACKs that mark chunks (missing reports)
            self._p2p_rtx = True
        await receive_sack_chunk(self, chunk)

    def _t3_expired(self: Any) -> None:
        self._p2p_rtx = True  # marks every outstanding chunk
        t3_expired(self)

    def _mark_received(self: Any, tsn: int) -> bool:
        # the next TSN in order with nothing out of order or duplicated: what aiortc's
        # version computes (through a sort and two filtered copies per packet)
        if (
            not self._sack_misordered
            and not self._sack_duplicates
            and tsn == sctp.tsn_plus_one(self._last_received_tsn)
        ):
            self._last_received_tsn = tsn
            return False
        return bool(mark_received(self, tsn))

    async def _transmit(self: Any) -> None:
        # aiortc 1.16.0's ``_transmit``, with the retransmit walk behind ``_p2p_rtx``
        if self._forward_tsn_chunk is not None:
            await self._send_chunk(self._forward_tsn_chunk)
            self._forward_tsn_chunk = None
            if not self._t3_handle:
                self._t3_start()
        if self._fast_recovery_exit is not None:
            burst_size = 2 * sctp.USERDATA_MAX_LENGTH
        else:
            burst_size = 4 * sctp.USERDATA_MAX_LENGTH
        cwnd = min(self._flight_size + burst_size, self._cwnd)
        if self._p2p_rtx:
            self._p2p_rtx = False
            retransmit_earliest = True
            for chunk in self._sent_queue:
                if chunk._retransmit:
                    if self._fast_recovery_transmit:
                        self._fast_recovery_transmit = False
                    elif self._flight_size >= cwnd:
                        self._p2p_rtx = True  # still marked ones: walk again next time
                        return
                    self._flight_size_increase(chunk)
                    chunk._misses = 0
                    chunk._retransmit = False
                    chunk._sent_count += 1
                    await self._send_chunk(chunk)
                    if retransmit_earliest:
                        self._t3_restart()
                retransmit_earliest = False
        while self._outbound_queue and self._flight_size < cwnd:
            chunk = self._outbound_queue.popleft()
            self._sent_queue.append(chunk)
            self._flight_size_increase(chunk)
            chunk._sent_count += 1
            chunk._sent_time = time.time()
            await self._send_chunk(chunk)
            if not self._t3_handle:
                self._t3_start()

    async def _receive_data_chunk(self: Any, chunk: Any) -> None:
        # aiortc 1.16.0's ``_receive_data_chunk``, without the reassembly scan for an
        # ordered fragment that is not a message's last, arriving while nothing was out of
        # order: every message it could belong to still lacks its last fragment, and every
        # message before it was delivered when its own last fragment came
        if chunk.flags & (last_frag | unordered) or self._sack_misordered:
            await receive_data_chunk(self, chunk)
            return
        self._sack_needed = True
        if self._mark_received(chunk.tsn):
            return
        self._get_inbound_stream(chunk.stream_id).add_chunk(chunk)
        self._advertised_rwnd -= len(chunk.user_data)
        await self._reset_deferred_streams()

    async def _sack_now(self: Any) -> None:
        if self._p2p_sack_timer is not None:
            self._p2p_sack_timer.cancel()
            self._p2p_sack_timer = None
        self._p2p_unacked = 0
        await self._send_sack()

    async def _sack_late(self: Any) -> None:
        with contextlib.suppress(ConnectionError):  # DTLS closed under us: nothing to ack
            if self._sack_needed and self._association_state == established:
                await _sack_now(self)

    def _sack_timer(self: Any) -> None:
        self._p2p_sack_timer = None
        self._p2p_sack_task = asyncio.ensure_future(_sack_late(self))  # held: not collected

    async def _handle_data(self: Any, data: bytes) -> None:
        # aiortc 1.16.0's ``_handle_data``, with the SACK delayed as RFC 9260 6.2 allows
        try:
            _, _, verification_tag, chunks = sctp.parse_packet(data)
        except ValueError:
            return
        init_chunk = len([x for x in chunks if isinstance(x, sctp.InitChunk)])
        if init_chunk:
            assert len(chunks) == 1
            expected_tag = 0
        else:
            expected_tag = self._local_verification_tag
        if verification_tag != expected_tag:
            return
        for chunk in chunks:
            await self._receive_chunk(chunk)
        if not self._sack_needed:
            return
        self._p2p_unacked += 1
        if (
            self._p2p_unacked >= SACK_EVERY
            or self._sack_misordered
            or self._sack_duplicates
            or any(type(c) is not sctp.DataChunk for c in chunks)
        ):
            await _sack_now(self)
        elif self._p2p_sack_timer is None:
            self._p2p_sack_timer = self._loop.call_later(SACK_DELAY, _sack_timer, self)

    transport._receive_sack_chunk = _receive_sack_chunk
    transport._t3_expired = _t3_expired
    transport._transmit = _transmit
    transport._handle_data = _handle_data
    transport._mark_received = _mark_received
    transport._receive_data_chunk = _receive_data_chunk


# -- signaling blobs --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Signal:
    """One verified offer or answer."""

    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "v": wire.uint(255),
        "kind": wire.one_of("offer", "answer"),
        "from": wire.blob(32),
        "to": wire.blob(32),
        "session": wire.blob(SESSION_LEN),
        "sdp": wire.text(MAX_SDP, nonempty=True),
    }
    kind: str
    sender: str
    recipient: str
    session: bytes
    sdp: str


def sign_signal(key: SigningKey, *, kind: str, to: str, session: bytes, sdp: str) -> bytes:
    """The blob a relay carries: ``{body, pub, sig}``, ``sig`` over ``body`` by the node key
    under type ``rtc-signal`` (a type no document or link proof has)."""
    if len(sdp) > MAX_SDP:
        raise ValueError(f"SDP of {len(sdp)} characters exceeds {MAX_SDP}")
    body = wire.encode(
        {
            "v": SIGNAL_VERSION,
            "kind": kind,
            "from": bytes.fromhex(key.keyid),
            "to": bytes.fromhex(to),
            "session": session,
            "sdp": sdp,
        }
    )
    _, sig = key.sign(SIGNAL_TYPE, body)
    return wire.encode({"body": body, "pub": key.public_key, "sig": sig})


def open_signal(
    blob: bytes,
    *,
    me: str,
    kind: str,
    sender: str | None = None,
    session: bytes | None = None,
) -> Signal:
    """Verify ``blob`` and return it, or raise ``SignalError`` (nothing else is touched).

    It must be signed by the key whose id is its ``from`` (and that must be ``sender`` when
    the caller knows whom it expects), be addressed to ``me``, be of ``kind``, and an answer
    must echo the offer's ``session``.
    """
    try:
        outer = wire.check_fields(
            wire.decode(blob, _SIGNAL_LIMITS),
            {"body": wire.blob(max_len=MAX_SIGNAL), "pub": wire.blob(KEY_LEN),
             "sig": wire.blob(SIG_LEN)},
            where="rtc signal",
        )  # fmt: skip
        f = wire.check_fields(
            wire.decode(outer["body"], _SIGNAL_LIMITS), Signal.FIELDS, where="rtc signal body"
        )
    except WireError as exc:
        raise SignalError(f"malformed rtc signal: {exc.message}") from exc
    if hashlib.sha256(outer["pub"]).digest() != f["from"]:
        raise SignalError("rtc signal: sender id is not sha256 of the key it carries")
    if not verify_signature(outer["pub"], SIGNAL_TYPE, outer["body"], outer["sig"]):
        raise SignalError("rtc signal: signature does not verify (altered in transit?)")
    if f["v"] != SIGNAL_VERSION:
        raise SignalError(f"rtc signal version {f['v']}; this node speaks {SIGNAL_VERSION}")
    got = Signal(
        kind=f["kind"],
        sender=f["from"].hex(),
        recipient=f["to"].hex(),
        session=f["session"],
        sdp=f["sdp"],
    )
    if got.kind != kind:
        raise SignalError(f"rtc signal: expected an {kind}, got an {got.kind}")
    if got.recipient != me:
        raise SignalError(f"rtc signal addressed to {got.recipient[:16]}..., not this node")
    if sender is not None and got.sender != sender:
        raise SignalError(f"rtc signal from {got.sender[:16]}..., expected {sender[:16]}...")
    if session is not None and got.session != session:
        raise SignalError("rtc answer does not answer this offer (session differs)")
    return got


def sdp_fingerprint(sdp: str) -> bytes:
    """The SHA-256 DTLS certificate fingerprint an SDP announces (``a=fingerprint:``)."""
    for line in sdp.splitlines():
        algo, _, value = line.removeprefix("a=fingerprint:").partition(" ")
        if line.startswith("a=fingerprint:") and algo.lower() == "sha-256":
            try:
                digest = bytes.fromhex(value.strip().replace(":", ""))
            except ValueError:
                break
            if len(digest) == CERT_FINGERPRINT_LEN:
                return digest
    raise SignalError("SDP announces no sha-256 DTLS fingerprint")


# -- the data channel as a trio stream ------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelStats:
    """High-water marks of the two buffers pacing bounds (what the tests check)."""

    max_buffered: int  # largest bufferedAmount seen after a send
    max_unread: int  # most bytes received and not yet consumed by trio


class RtcChannel(trio.abc.Stream):
    """One peer connection and its one data channel, as a byte stream (see module doc).

    Made by ``offer`` / ``answer``; ``complete`` (offerer) and ``opened`` finish it.  Methods
    named ``_a_*`` run on the asyncio loop; everything else on trio.
    """

    def __init__(self, car: Sidecar) -> None:
        self._car = car
        self._token = trio.lowlevel.current_trio_token()
        # unbounded here because the credit window bounds it: a peer that sends more than
        # WINDOW bytes the trio side has not consumed is cut off (``_a_on_message``)
        send, recv = trio.open_memory_channel[bytes | BaseException | None](math.inf)
        self._inbox_send, self._inbox = send, recv
        # what the asyncio thread has for trio, handed over in batches (``_post``)
        self._ready: deque[bytes | BaseException | None] = deque()
        self._ready_posted = False
        self._rest = b""
        self._rest_at = 0
        self._consumed = 0
        self._credited = 0
        self._eof = False
        # asyncio side
        self._pc: Any = None
        self._ch: Any = None
        self._open = asyncio.Event()
        self._wake = asyncio.Event()
        self._failed: str | None = None
        self._closed = False
        self._sent = 0
        self._granted = 0
        self._received = 0
        self._given = 0
        self._max_buffered = 0
        self._max_unread = 0
        #: filled by ``opened``
        self.certs: tuple[bytes, bytes] = (b"", b"")
        self.path = "unknown"
        self.remote_host = "unknown"

    # -- set-up ----------------------------------------------------------------------

    @classmethod
    async def offer(cls, ice_servers: Sequence[IceServer] = ()) -> tuple[RtcChannel, str]:
        """A new channel and its offer SDP (all candidates gathered)."""
        chan = cls(sidecar())
        try:
            return chan, await chan._car.run(chan._a_offer(ice_servers))
        except BaseException:
            await chan._abort()
            raise

    @classmethod
    async def answer(
        cls, offer_sdp: str, ice_servers: Sequence[IceServer] = ()
    ) -> tuple[RtcChannel, str]:
        """A new channel answering ``offer_sdp``, and its answer SDP."""
        chan = cls(sidecar())
        try:
            return chan, await chan._car.run(chan._a_answer(offer_sdp, ice_servers))
        except BaseException:
            await chan._abort()
            raise

    async def complete(self, answer_sdp: str) -> None:
        await self._car.run(self._a_complete(answer_sdp))

    async def opened(self) -> None:
        """Wait until ICE, DTLS and SCTP are up and the channel is open; fill ``certs``,
        ``path`` and ``remote_host``.  Raises ``LinkBrokenError`` when ICE fails."""
        await self._car.run(self._a_opened())

    def _new_pc(self, ice_servers: Sequence[IceServer]) -> None:
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

        tune_aiortc()
        servers = [RTCIceServer(**s) for s in ice_servers]
        self._pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        ch = pc.createDataChannel(LABEL, negotiated=True, id=0, ordered=True)
        ch.bufferedAmountLowThreshold = LOW_WATER
        self._ch = ch
        ch.on("open", self._open.set)
        ch.on("message", self._a_on_message)
        ch.on("bufferedamountlow", self._wake.set)
        ch.on("close", lambda: self._a_fail(None))

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState == "failed":
                self._a_fail("connection failed")
            elif pc.connectionState == "closed":
                self._a_fail(None)

    async def _a_offer(self, ice_servers: Sequence[IceServer]) -> str:
        self._new_pc(ice_servers)
        await self._pc.setLocalDescription(await self._pc.createOffer())
        self._a_tune_sockets()
        return str(self._pc.localDescription.sdp)

    def _a_tune_sockets(self) -> None:
        """Larger receive buffers on the gathered sockets (see ``SOCKET_RCVBUF``)."""
        try:  # aioice keeps its sockets private
            protocols = list(self._pc.sctp.transport.transport._connection._protocols)
        except AttributeError:
            return
        for protocol in protocols:
            with contextlib.suppress(Exception):
                transport = protocol.transport
                sock = transport.get_extra_info("socket")
                if sock is None:  # a TURN allocation: the socket to the TURN server
                    sock = transport._TurnTransport__inner_protocol.transport.get_extra_info(
                        "socket"
                    )
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)

    async def _a_answer(self, offer_sdp: str, ice_servers: Sequence[IceServer]) -> str:
        from aiortc import RTCSessionDescription

        self._new_pc(ice_servers)
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        self._a_tune_sockets()
        return str(self._pc.localDescription.sdp)

    async def _a_complete(self, answer_sdp: str) -> None:
        from aiortc import RTCSessionDescription

        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def _a_opened(self) -> None:
        await self._open.wait()
        if self._failed is not None or self._ch.readyState != "open":
            raise LinkBrokenError(f"rtc channel did not open: {self._failed or 'closed'}")
        dtls = self._pc.sctp.transport
        local = next(
            f.value for f in dtls.getLocalParameters().fingerprints if f.algorithm == "sha-256"
        )
        self.certs = (
            bytes.fromhex(local.replace(":", "")),
            sdp_fingerprint(self._pc.remoteDescription.sdp),
        )
        with contextlib.suppress(Exception):  # aioice keeps the pair private
            pair = dtls.transport._connection._nominated[1]
            kinds = {pair.local_candidate.type, pair.remote_candidate.type}
            self.path = max(kinds, key=lambda k: PATH_KINDS.index(k) if k in PATH_KINDS else 9)
            self.remote_host = str(pair.remote_candidate.host)

    # -- asyncio side of the byte stream -------------------------------------------------

    def _post(self, item: bytes | BaseException | None) -> None:
        """From the asyncio thread towards the trio inbox, in batches: one ``run_sync_soon``
        (a syscall to wake trio, and a GIL hand-over to its thread) per batch of messages
        that arrived before trio got to them, not one per message."""
        self._ready.append(item)
        if self._ready_posted:
            return
        self._ready_posted = True
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._deliver)

    def _deliver(self) -> None:
        """(trio thread) Move every ready item into the inbox, runs of data joined into one."""
        self._ready_posted = False  # first: an item posted from now on is posted again
        data: list[bytes] = []
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            while self._ready:
                item = self._ready.popleft()
                if isinstance(item, bytes):
                    data.append(item)
                    continue
                if data:
                    self._inbox_send.send_nowait(b"".join(data))
                    data = []
                self._inbox_send.send_nowait(item)
            if data:
                self._inbox_send.send_nowait(b"".join(data))

    def _a_fail(self, why: str | None) -> None:
        """The channel ended: ``why`` None is an orderly close (EOF), else a failure."""
        if self._closed:
            return
        self._closed = True
        self._failed = why
        self._open.set()
        self._wake.set()
        self._post(None if why is None else LinkBrokenError(f"rtc link: {why}"))

    def _a_on_message(self, msg: bytes | str) -> None:
        if self._closed:
            return
        if not isinstance(msg, bytes) or not msg:
            return self._a_violation("a text or empty message on the link channel")
        if msg[0] == _CREDIT and len(msg) == 9:
            self._granted = max(self._granted, int.from_bytes(msg[1:], "big"))
            self._wake.set()
        elif msg[0] == _DATA:
            self._received += len(msg) - 1
            unread = self._received - self._given
            if unread > WINDOW:
                return self._a_violation(f"peer sent {unread} bytes over a {WINDOW}-byte window")
            self._max_unread = max(self._max_unread, unread)
            self._post(msg[1:])
        else:
            self._a_violation(f"unknown message kind {msg[0]}")

    def _a_violation(self, what: str) -> None:
        self._post(LinkProtocolError(f"rtc link: {what}"))
        self._closed = True
        self._wake.set()
        with contextlib.suppress(Exception):
            self._ch.close()

    def _a_give(self, total: int) -> None:
        """Grant the peer credit up to ``total`` bytes consumed."""
        self._given = total
        if not self._closed and self._ch.readyState == "open":
            self._ch.send(bytes([_CREDIT]) + total.to_bytes(8, "big"))

    async def _a_send(self, data: bytes) -> None:
        view = memoryview(data)
        step = CHUNK - 1
        for at in range(0, len(view), step):
            piece = view[at : at + step]
            while not self._closed and (
                self._ch.bufferedAmount > HIGH_WATER
                or self._sent - self._granted + len(piece) > WINDOW
            ):
                self._wake.clear()
                await self._wake.wait()
            if self._closed:
                raise LinkClosedError("rtc link closed")
            self._ch.send(bytes([_DATA]) + piece)
            self._sent += len(piece)
            self._max_buffered = max(self._max_buffered, self._ch.bufferedAmount)

    async def _a_close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._ch is not None:
            with contextlib.suppress(Exception):
                self._ch.close()
        if self._pc is not None:
            await self._pc.close()

    # -- trio.abc.Stream ----------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise trio.ClosedResourceError("rtc channel closed")
        await self._car.run(self._a_send(bytes(data)))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._rest_at >= len(self._rest):
            if self._eof:
                return b""
            try:
                item = await self._inbox.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                item = None
            if item is None:
                self._eof = True
                return b""
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._rest, self._rest_at = item, 0
        # a batch is read in pieces by an offset (slicing off the rest would copy it each time)
        start, size = self._rest_at, len(self._rest)
        end = size if max_bytes is None else min(size, start + max_bytes)
        out = self._rest if start == 0 and end == size else self._rest[start:end]
        self._rest_at = end
        self._consumed += len(out)
        if self._consumed - self._credited >= WINDOW // 4:
            self._credited = self._consumed
            self._car.call_soon(self._a_give, self._consumed)
        return out

    async def aclose(self) -> None:
        self._eof = True
        await self._abort()

    async def _abort(self) -> None:
        with trio.CancelScope(shield=True):
            self._inbox_send.close()
            with contextlib.suppress(Exception):
                with trio.move_on_after(5):
                    await self._car.run(self._a_close())

    def stats(self) -> ChannelStats:
        return ChannelStats(max_buffered=self._max_buffered, max_unread=self._max_unread)


# -- links ----------------------------------------------------------------------------


class RtcLink(StreamLink):
    """A ``StreamLink`` whose stream is an ``RtcChannel``; ``path`` is the selected ICE
    candidate pair's kind (``host``/``srflx``/``prflx``/``relay``: relay is a cost)."""

    def __init__(self, link: StreamLink, channel: RtcChannel) -> None:
        super().__init__(link._framed, peer=link.peer, host=link.host, config=link.config)
        self.channel = channel
        self.path = channel.path

    def stats(self) -> ChannelStats:
        return self.channel.stats()


Exchange = Callable[[bytes], Awaitable[bytes]]
Reply = Callable[[bytes], Awaitable[None]]


async def _finish(
    chan: RtcChannel,
    *,
    key: SigningKey,
    dialer: bool,
    peer: str,
    cfg: LinkConfig,
    nonces: NonceCache | None,
) -> RtcLink:
    try:
        with trio.fail_after(cfg.handshake_timeout):
            await chan.opened()
    except BaseException as exc:
        await chan.aclose()
        if isinstance(exc, trio.TooSlowError):
            raise LinkTimeoutError(f"rtc channel to {peer[:12]} did not open in time") from exc
        raise
    link = await establish(
        chan,
        key=key,
        dialer=dialer,
        host=chan.remote_host,
        config=cfg,
        expected_peer=peer,
        nonces=nonces,
        certs=chan.certs,
    )
    return RtcLink(link, chan)


async def dial_rtc(
    *,
    key: SigningKey,
    peer: str,
    exchange: Exchange,
    config: LinkConfig | None = None,
    ice_servers: Sequence[IceServer] = (),
    nonces: NonceCache | None = None,
) -> RtcLink:
    """Offer a link to ``peer``: ``exchange(offer blob)`` relays it and returns the answer
    blob.  Raises ``LinkError`` (``SignalError`` for an answer that does not verify)."""
    cfg = config if config is not None else LinkConfig()
    session = secrets.token_bytes(SESSION_LEN)
    try:
        chan, sdp = await RtcChannel.offer(ice_servers)
    except Exception as exc:  # gathering failed (or an ICE server URL aiortc refuses)
        raise _normalise(exc, "rtc offer") from exc
    try:
        offer = sign_signal(key, kind="offer", to=peer, session=session, sdp=sdp)
        with trio.fail_after(cfg.handshake_timeout):
            blob = await exchange(offer)
        answer = open_signal(blob, me=key.keyid, kind="answer", sender=peer, session=session)
        try:
            await chan.complete(answer.sdp)
        except Exception as exc:  # signed, so the answerer's own fault
            raise SignalError(f"rtc answer's SDP refused: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:
        await chan.aclose()
        if isinstance(exc, trio.TooSlowError):
            raise LinkTimeoutError(f"no rtc answer from {peer[:12]} in time") from exc
        if isinstance(exc, Exception):
            raise _normalise(exc, "rtc offer") from exc
        raise
    return await _finish(chan, key=key, dialer=True, peer=peer, cfg=cfg, nonces=nonces)


async def accept_rtc(
    offer: bytes,
    *,
    key: SigningKey,
    reply: Reply,
    expected_peer: str | None = None,
    config: LinkConfig | None = None,
    ice_servers: Sequence[IceServer] = (),
    nonces: NonceCache | None = None,
) -> RtcLink:
    """Answer an offer blob (``reply`` relays the answer back).  The offer is verified
    before any peer connection exists (and refused as a replay when ``nonces`` has seen its
    session); the handshake must then prove its sender."""
    cfg = config if config is not None else LinkConfig()
    got = open_signal(offer, me=key.keyid, kind="offer", sender=expected_peer)
    if nonces is not None:  # a replayed offer would cost a peer connection for nothing
        nonces.check_and_add(_SESSION_TAG + got.session)
    try:
        chan, sdp = await RtcChannel.answer(got.sdp, ice_servers)
    except Exception as exc:  # signed, so the sender's own fault
        raise SignalError(f"rtc offer's SDP refused: {type(exc).__name__}: {exc}") from exc
    try:
        await reply(sign_signal(key, kind="answer", to=got.sender, session=got.session, sdp=sdp))
    except BaseException as exc:
        await chan.aclose()
        if isinstance(exc, Exception):
            raise _normalise(exc, "rtc answer") from exc
        raise
    return await _finish(chan, key=key, dialer=False, peer=got.sender, cfg=cfg, nonces=nonces)


__all__ = [
    "CHUNK",
    "HIGH_WATER",
    "LOW_WATER",
    "PATH_KINDS",
    "WINDOW",
    "ChannelStats",
    "RtcChannel",
    "RtcLink",
    "Signal",
    "accept_rtc",
    "dial_rtc",
    "open_signal",
    "sdp_fingerprint",
    "sign_signal",
]
