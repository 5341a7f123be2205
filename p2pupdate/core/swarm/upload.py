"""Serving chunks: upload slots, a per-peer queue and a token bucket on ``now``.

At most ``upload_slots`` peers are served at once; a request from another peer is
rejected ``choked`` (it asks someone else, or again after ``reject_backoff``).  A served
peer's requests wait in its queue of at most ``upload_queue``; one more is rejected
``busy`` and costs ``flood`` points (an honest peer keeps ``pipeline`` requests in flight,
far fewer).  A peer whose queue empties gives its slot back.

The bucket holds bytes *on the wire*: it fills at the upload rate (``config.upload_rate``:
a fraction of the measured uplink, at most the cap) up to a burst of a quarter second (at
least one block); a block costs what it takes on the link (``wire_bytes``: its frame plus
TCP/IP and Ethernet headers per segment, ~4.6 % more than its payload), and every block
or origin chunk that arrives costs the ACKs our uplink sends back for it (``ack_bytes``,
``Uploader.charge``: ~2.3 % of what we download; the ACKs of requests ride on the blocks
we send back); ``CONTROL_SHARE`` of the rate is left to what the bucket does not count
(small frames, gossip).  A cap counted in payload alone sent more than an uplink of that
rate carries (on the swarm bench, where ``tbf`` cuts each home's uplink at exactly the
cap, 24 nodes took 51.7-67.5 s in four runs, then 42.3-61.1 with this count; README
"Benchmark: swarm against libtorrent").  A block is sent once the bucket holds its cost (a block larger than the burst,
which a peer on a link with larger frames may ask for, once the bucket is full: the
bucket then owes the difference), so over any window uploads stay within the burst plus
the rate times the window, plus one block.  Queued requests are served round-robin,
one block per peer in turn.

The uploader never decides what is held: the front asks ``held`` (verified chunks only)
before a request is queued and again before it is served.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

from .config import SwarmConfig
from .events import Effect, Send, Serve
from .messages import BLOCK_OVERHEAD, Cancel, Reject, Request

Held = Callable[[str, int], bool]
#: The (artifact, chunk) pairs served before anything else (super-seeding: a chunk only we
#: hold, fresh from the origin, first, so the swarm sees it before others fetch it again).
Urgent = Callable[[], frozenset[tuple[str, int]]]
#: Bytes of float rounding forgiven: the timer names the instant the bucket is full enough.
_EPSILON: Final = 1e-6
#: Urgent blocks served between two round-robin turns at most.
URGENT_PER_TURN: Final = 2
#: TCP over IPv4 on Ethernet, timestamps on (Linux's default): a full segment carries MSS
#: payload bytes (1500 less 20 IP, 20 TCP, 12 options) in a frame of FRAME bytes (plus 14
#: Ethernet), and the receiver ACKs every second segment with a frame of ACK_FRAME bytes.
MSS: Final = 1448
FRAME: Final = 1514
ACK_FRAME: Final = 66
#: Of the upload rate, what the bucket leaves to frames it does not count: requests,
#: haves, cancels, bitfields and gossip, each its own small segment.  (The swarm bench's
#: 24 nodes, with their uplinks cut at exactly the cap, before requests moved and the
#: origin streamed when starved: 64.8 s with nothing left, 50.2 s with 5 %, 42.3-61.1 s in
#: four runs with 10 %; after, side by side with libtorrent: 39.55 and 42.77 s with 10 %
#: (1.11x and 1.22x libtorrent's time), 38.31 and 38.11 s with 5 % (1.07x, 1.05x), the
#: cap still respected: README "Benchmark: swarm against libtorrent".)
CONTROL_SHARE: Final = 0.05


def wire_bytes(payload: int) -> int:
    """Bytes on the link to send ``payload`` bytes of frames: headers of every segment."""
    return payload + -(-payload // MSS) * (FRAME - MSS)


def ack_bytes(received: int) -> int:
    """Bytes our uplink sends to acknowledge ``received`` bytes (one ACK per two segments)."""
    return -(-received // (2 * MSS)) * ACK_FRAME


class Uploader:
    """One node's uploads (all artifacts): slots, queues, the bucket."""

    def __init__(
        self,
        *,
        config: SwarmConfig,
        rate: float,
        held: Held,
        now: float,
        urgent: Urgent | None = None,
    ) -> None:
        self.config = config
        self.rate = rate
        self.held = held
        self.urgent = urgent
        self.urgent_turn = URGENT_PER_TURN  # urgent blocks that may go before the next turn
        self.tokens = self.burst
        self.last = now
        self.queues: dict[str, deque[Request]] = {}
        self.sent_bytes = 0
        self.faults: list[tuple[str, str, str]] = []

    @property
    def burst(self) -> float:
        return max(float(self.config.max_block), self.rate * 0.25)

    @property
    def fill_rate(self) -> float:
        """Bytes/s the bucket fills at: the upload rate, less ``CONTROL_SHARE`` of it for
        the frames it does not count (with ``wire_headers``)."""
        return self.rate * (1.0 - CONTROL_SHARE) if self.config.wire_headers else self.rate

    def charge(self, nbytes: int, now: float) -> None:
        """``nbytes`` of the uplink went to something else (the ACKs of a download): the
        bucket owes them, at most a burst's worth (then uploads wait for the bucket).
        Nothing without ``wire_headers``."""
        if not self.config.wire_headers:
            return
        self._refill(now)
        self.tokens = max(-self.burst, self.tokens - nbytes)

    def set_rate(self, rate: float, now: float) -> None:
        self._refill(now)
        self.rate = rate
        self.tokens = min(self.tokens, self.burst)

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.fill_rate)
            self.last = now

    def request(self, peer: str, req: Request, now: float, out: list[Effect]) -> None:
        """Queue ``req`` (the front checked it is a block of a chunk we hold) or reject it."""
        q = self.queues.get(peer)
        if q is None:
            if len(self.queues) >= self.config.upload_slots:
                out.append(Send(peer=peer, data=_reject(req, "choked")))
                return
            q = self.queues[peer] = deque()
        if len(q) >= self.config.upload_queue:
            out.append(Send(peer=peer, data=_reject(req, "busy")))
            self.faults.append(
                (peer, "flood", f"more than {self.config.upload_queue} requests queued")
            )
            return
        q.append(req)
        self.pump(now, out)

    def cancel(self, peer: str, msg: Cancel) -> None:
        q = self.queues.get(peer)
        if q is None:
            return
        for req in q:
            if (req.artifact, req.chunk, req.offset) == (msg.artifact, msg.chunk, msg.offset):
                q.remove(req)
                break
        if not q:
            del self.queues[peer]

    def peer_gone(self, peer: str) -> None:
        self.queues.pop(peer, None)

    def pump(self, now: float, out: list[Effect]) -> None:
        """Serve queued requests, round-robin, while the bucket holds their bytes; an
        ``urgent`` block, if one is queued, between any two turns (so it jumps the line
        but cannot starve a peer: every other block is a round-robin turn)."""
        self._refill(now)
        urgent = self.urgent() if self.urgent is not None else frozenset()
        while self.queues:
            if urgent and self.urgent_turn > 0:
                hit = next(
                    (
                        (peer, n)
                        for peer, q in self.queues.items()
                        for n, r in enumerate(q)
                        if (r.artifact, r.chunk) in urgent
                    ),
                    None,
                )
                if hit is not None:
                    peer, n = hit
                    q = self.queues[peer]
                    req = q[n]
                    if self.tokens < min(self.cost(req), self.burst) - _EPSILON:
                        return
                    del q[n]
                    if not q:
                        del self.queues[peer]
                    self._serve(peer, req, out)
                    self.urgent_turn -= 1
                    continue
            peer = next(iter(self.queues))
            q = self.queues[peer]
            req = q[0]
            held = self.held(req.artifact, req.chunk)
            if held and self.tokens < min(self.cost(req), self.burst) - _EPSILON:
                return  # this peer's turn waits for the bucket (get_timer)
            q.popleft()
            del self.queues[peer]
            if q:  # its next request goes to the back of the line
                self.queues[peer] = q
            self._serve(peer, req, out)
            self.urgent_turn = URGENT_PER_TURN

    def _serve(self, peer: str, req: Request, out: list[Effect]) -> None:
        if not self.held(req.artifact, req.chunk):  # removed since it was queued
            out.append(Send(peer=peer, data=_reject(req, "missing")))
            return
        self.tokens -= self.cost(req)
        self.sent_bytes += req.length
        out.append(
            Serve(
                peer=peer,
                artifact=req.artifact,
                chunk=req.chunk,
                offset=req.offset,
                length=req.length,
            )
        )

    def cost(self, req: Request) -> int:
        """What serving ``req`` takes from the bucket: its block's frame on the wire (its
        payload alone without ``wire_headers``)."""
        if not self.config.wire_headers:
            return req.length
        return wire_bytes(req.length + BLOCK_OVERHEAD)

    def get_timer(self) -> float | None:
        """When the bucket holds the next request's cost, if one waits for it."""
        if not self.queues:
            return None
        head = next(iter(self.queues.values()))[0]
        need = min(self.cost(head), self.burst)
        return self.last + max(0.0, need - self.tokens) / self.fill_rate


def _reject(req: Request, reason: str) -> bytes:
    return Reject(
        artifact=req.artifact,
        chunk=req.chunk,
        offset=req.offset,
        length=req.length,
        reason=reason,
    ).to_wire()
