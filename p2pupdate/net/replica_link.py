"""One replica's authenticated channel: connect, handshake, request, reconnect or close.

Two modes (P11).  ``persistent=True`` (``--persistent-sessions``, small fleets, tests,
the bench): the link is kept open and reconnects forever, so pushes (documents, nudges,
slot pushes, signals) arrive at any time.  ``persistent=False`` (a node's default): the
link connects when a request is to be sent (``send`` waits for it) or ``want()`` is
called, and closes after ``IDLE_CLOSE`` seconds without a request; pushes then arrive only
while it is open, and documents and nudges reach the node by gossip instead.

The node's side of README "Protocol": the handshake and the MAC are
:mod:`p2pupdate.core.session`, the requests :mod:`p2pupdate.core.coordproto`, the framing
:mod:`p2pupdate.net.websocket`.  A link reads no clock (its backoff sleeps on trio's);
``p2pupdate.daemon.replica.QuorumClient`` runs one per replica, and the coordinator's load
generator (``coordinator.bench``) drives many directly.  Every answer and push is decoded
into its :mod:`~p2pupdate.core.coordproto` class before it leaves the link; one that does
not decode is the replica's fault (``ProtocolError``: the link reconnects).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import trio

from ..core import coordproto as proto
from ..core import crypto, departure, timing, wire
from ..core import session as sess
from ..core.errors import SchemaError, VerificationError, WireError
from ..errors import CoordinatorFault
from .websocket import WebSocket, WebSocketClosed, parse_url

#: Reconnect backoff after a lost or failed connection: 0.2 s doubling to 10 s (equal jitter).
RECONNECT_BASE = 0.2
RECONNECT_CAP = 10.0
#: A connection counts as healthy (the next loss starts the backoff over) only once it has
#: stayed up this long.  A handshake that succeeds is not enough: a replica that closes
#: every connection right after it (a request it refuses, a newer connection of the same
#: node id replacing this one) would otherwise be redialled every 0.1-0.2 s, forever.
STABLE_AFTER = 30.0
#: An on-demand link (``persistent=False``) closes after this long without a request
#: (seconds).  Why 30 s: long enough that what comes in bursts shares one session (an
#: ask refused with a short ``retry_after``, a report right after a lease ends, the
#: signaling of one WebRTC link, ~a few seconds apart), short enough that at 10^6 nodes
#: a replica holds only the few thousand sessions of nodes with something to say.
IDLE_CLOSE = 30.0


def reconnect_delay(failures: int) -> float:
    """The ceiling of the wait before reconnecting after ``failures`` failures in a row."""
    return timing.capped_exponential(RECONNECT_BASE, RECONNECT_CAP, failures)


def reconnect_wait(failures: int, u: float) -> float:
    """The wait before reconnecting, equal jitter: uniform in ``[d/2, d]`` with ``d =
    reconnect_delay(failures)``, for a uniform draw ``u`` in ``[0, 1)``.  Half fixed, half
    random: links to a replica that went away together do not come back together."""
    ceiling = reconnect_delay(failures)
    return ceiling / 2.0 + (ceiling / 2.0) * u


__all__ = ["AdmissionRefused", "CoordinatorUnavailable", "ProtocolError", "Push", "ReplicaLink"]


class CoordinatorUnavailable(CoordinatorFault):
    """No usable answer from a replica: not connected, closed, timed out, or garbled.

    The one exception the client's public methods raise (each IO boundary normalises its
    errors); refusals are answers, not errors.
    """

    rule = "coordinator-unavailable"


class ProtocolError(CoordinatorFault):
    """The replica broke the protocol (bad frame, bad signature, wrong order)."""

    rule = "coordinator-protocol"


class AdmissionRefused(ProtocolError):
    """The replica turned this node's hello away under the network's admission rule
    (``core.admission``: no member document, a bad one, too little proof of work).  Not
    the replica's fault: ``reason`` says what this node lacks; asking again will not help
    until the operator acts (a member document, a key with the difficulty)."""

    rule = "admission-refused"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"hello refused: {reason}: {detail}")
        self.reason = reason
        self.detail = detail


#: What ends a connection (the link reconnects, or waits for the next request).
_LOST = (OSError, WebSocketClosed, ProtocolError, WireError, VerificationError, trio.TooSlowError)


@dataclass
class _Waiter:
    """One request in flight: its kind (which answers fit it) and, once set, its answer or
    why there is none."""

    kind: str
    event: trio.Event = field(default_factory=trio.Event)
    answer: proto.Answer | None = None
    problem: str = "connection lost"


#: What a link hands its owner for each message a replica pushes unasked.
Push = Callable[["ReplicaLink", proto.Push], Awaitable[None]]


class ReplicaLink:
    """A kept-open, authenticated channel to one replica, reconnecting with backoff."""

    def __init__(
        self,
        url: str,
        key: crypto.SigningKey,
        *,
        on_push: Push | None = None,
        on_connect: Callable[[ReplicaLink], Awaitable[None]] | None = None,
        log: Callable[[str], None] = lambda _m: None,
        rng: random.Random | None = None,
        replica_keys: Callable[[], Mapping[str, bytes]] | None = None,
        member: Callable[[], bytes | None] | None = None,
        local_address: str | None = None,
        persistent: bool = True,
        idle_close: float = IDLE_CLOSE,
    ) -> None:
        self.url = url
        #: Kept open (reconnect forever) or opened on demand (see the module docstring).
        self.persistent = persistent
        self.idle_close = idle_close
        #: Set when a request waits for a connection (on demand); senders waiting now.
        self._want = trio.Event()
        self._demand = 0
        #: trio time of the last request sent or answered (the idle timer counts from it).
        self._last_used = 0.0
        #: Sessions closed because they were idle (status, tests).
        self.idle_closes = 0
        #: The node's member document to carry in its hello (an ``enrolled`` network).
        self.member = member
        #: The address to connect from (None: the system picks).
        self.local_address = local_address
        #: The last admission refusal (None once a hello is accepted).
        self.refused: AdmissionRefused | None = None
        #: The coordinator keys a challenge must be signed with (None: not checked).
        self.replica_keys = replica_keys
        self.host, self.port, self.base = parse_url(url)
        self.key = key
        self.signer = sess.Signer(key)
        self.node = key.keyid
        self.pub = key.public_key
        self.on_push = on_push
        self.on_connect = on_connect
        self.log = log
        self.rng = rng or random.Random()
        self.replica: str | None = None
        self.network: str | None = None
        self.ttl = departure.DEFAULT_TOKEN_TTL
        self.max_skew = departure.DEFAULT_MAX_SKEW
        self._ws: WebSocket | None = None
        self._session: sess.Session | None = None
        self._seq = 0
        self._waiters: dict[int, _Waiter] = {}
        self.connected = trio.Event()
        self._was_connected = False
        #: Handshakes completed so far (status, tests, the bench).
        self.connects = 0
        #: trio time of the last message from the replica (None: never; ``p2pupdate status``).
        self.heard: float | None = None

    @property
    def is_connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve the channel, reconnect after a loss; forever.

        Every reconnect waits ``reconnect_wait(failures)``; ``failures`` counts the
        connections in a row that failed or were lost within ``STABLE_AFTER`` of their
        handshake, so only a connection that stayed up that long starts the backoff over.
        The time is trio's (a test's ``MockClock`` moves it).
        """
        task_status.started()
        failures = 0
        told = ""
        while True:
            if not self.persistent:
                await self._want.wait()
            up_since: float | None = None
            idle = False
            try:
                await self.connect_once()
                self.connects += 1
                told = ""
                up_since = trio.current_time()
                self._last_used = up_since
                if self.persistent:
                    await self._read_loop()
                else:
                    idle = await self._serve_until_idle()
            except AdmissionRefused as exc:
                if exc.reason != told:  # once per reason, not once per retry
                    told = exc.reason
                    self.log(f"coordinator {self.base}: {exc}")
            except _LOST as exc:
                if self._was_connected:
                    self.log(f"coordinator {self.base}: connection lost ({exc})")
                    self._was_connected = False
            finally:
                self._disconnected()
            if not self.persistent and (idle or self._demand == 0):
                # closed as idle, or lost/failed with nobody waiting: connect again only
                # when a request wants it (a failure still counts for the next backoff)
                self._want = trio.Event()
                if idle:
                    self.idle_closes += 1
                    failures = 0
                    continue
            if up_since is not None and trio.current_time() - up_since >= STABLE_AFTER:
                failures = 0
            await trio.sleep(reconnect_wait(failures, self.rng.random()))
            failures += 1

    def want(self) -> None:
        """Connect soon if on demand and not connected (a kept-open link always is)."""
        self._want.set()

    async def _serve_until_idle(self) -> bool:
        """Serve the open channel until it has been idle ``idle_close`` seconds with no
        request in flight (then close it: True) or it is lost (raises)."""
        lost: list[Exception] = []
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                try:
                    await self._read_loop()
                except _LOST as exc:  # re-raised below, not as an exception group
                    lost.append(exc)
                nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            while True:
                await trio.sleep_until(self._last_used + self.idle_close)
                if self._waiters or self._demand:
                    self._last_used = trio.current_time()
                    continue
                if trio.current_time() >= self._last_used + self.idle_close:
                    break
            nursery.cancel_scope.cancel()
        if lost:
            raise lost[0]
        ws = self._ws
        if ws is not None:
            with trio.move_on_after(2.0) as scope:
                scope.shield = True
                with contextlib.suppress(OSError, WebSocketClosed):
                    await ws.close()
        return True

    async def connect_once(self, timeout: float = 10.0) -> None:
        """Open the socket and run the handshake (raises on failure)."""
        ws = await WebSocket.connect(
            self.host,
            self.port,
            proto.NODE_PATH,
            max_message=proto.ANSWER_LIMITS.max_bytes,
            timeout=timeout,
            local_address=self.local_address,
        )
        try:
            with trio.fail_after(timeout):
                keys = self.replica_keys() if self.replica_keys is not None else None
                challenge = sess.Challenge.open(
                    await ws.receive(), keys, limits=proto.ANSWER_LIMITS
                )
                kx = sess.KeyExchange(os.urandom(sess.KX_LEN))
                member = self.member() if self.member is not None else None
                await ws.send(sess.sign_hello(self.signer, challenge, kx, member=member))
                session = kx.session(
                    challenge.kx, nonce=challenge.nonce, node_kx=kx.public, server_kx=challenge.kx
                )
                raw = await ws.receive()
                try:
                    answer = wire.decode(session.open(raw), proto.ANSWER_LIMITS)
                except (WireError, VerificationError):
                    answer = wire.decode(raw, proto.ANSWER_LIMITS)  # a refusal comes unsealed
                if not isinstance(answer, dict) or answer.get("ok") is not True:
                    error = answer.get("error") if isinstance(answer, dict) else None
                    if isinstance(error, str) and error.startswith("admission/"):
                        detail = answer.get("detail")
                        self.refused = AdmissionRefused(
                            error[:64], str(detail)[:300] if detail is not None else ""
                        )
                        raise self.refused
                    raise ProtocolError(f"hello refused: {answer!r}"[:300])
        except (WireError, VerificationError) as exc:
            await ws.close()
            raise ProtocolError(f"handshake: {exc}") from None
        except BaseException:
            await ws.close()
            raise
        self.refused = None
        self.replica, self.network = challenge.replica, challenge.network
        self.ttl = departure.token_ttl([challenge.ttl])
        self.max_skew = challenge.max_skew
        self._ws, self._session, self._seq = ws, session, 0
        self._was_connected = True
        self.heard = trio.current_time()
        self.connected.set()
        if self.on_connect is not None:
            await self.on_connect(self)

    async def _read_loop(self) -> None:
        ws, session = self._ws, self._session
        assert ws is not None and session is not None
        while True:
            msg = wire.decode(session.open(await ws.receive()), proto.ANSWER_LIMITS)
            self.heard = trio.current_time()
            if not isinstance(msg, dict):
                raise ProtocolError("expected a map")
            if "push" in msg:
                try:
                    push = proto.push_of(msg)
                except SchemaError as exc:
                    raise ProtocolError(f"a malformed push: {exc}") from None
                if self.on_push is not None:
                    await self.on_push(self, push)
                continue
            rid = msg.get("id")
            waiter = self._waiters.pop(rid, None) if isinstance(rid, int) else None
            if waiter is not None:
                try:
                    waiter.answer = proto.answer_of(waiter.kind, msg)
                except SchemaError as exc:
                    waiter.problem = f"a malformed {waiter.kind} answer: {exc}"
                    raise ProtocolError(waiter.problem) from None
                finally:
                    waiter.event.set()

    def _disconnected(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.closed = True
        if self.connected.is_set():  # who waits for a connection keeps waiting on it
            self.connected = trio.Event()
        for waiter in self._waiters.values():
            waiter.event.set()
        self._waiters.clear()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def send(self, request: proto.Request, timeout: float = 10.0) -> proto.Answer:
        """Send one request and wait for its answer, decoded with the classes that answer
        its kind (``proto.ANSWERS``); an ``ErrorAnswer`` is returned too.  A malformed
        answer is the replica's fault: the link drops the connection (and reconnects) and
        this raises ``CoordinatorUnavailable``, as for a lost connection."""
        kind = request.KIND
        ws = self._ws
        if (ws is None or ws.closed) and not self.persistent:
            await self._wait_session(timeout)
            ws = self._ws
        if ws is None or ws.closed:
            raise CoordinatorUnavailable(f"{self.base}: not connected")
        self._last_used = trio.current_time()
        self._seq += 1
        seq = self._seq
        waiter = _Waiter(kind=kind)
        self._waiters[seq] = waiter
        try:
            assert self._session is not None
            frame = proto.seal_request(self._session, seq, request)
            with trio.move_on_after(timeout) as scope:
                await ws.send(frame)
                await waiter.event.wait()
            if scope.cancelled_caught:
                raise CoordinatorUnavailable(f"{self.base}: no answer to {kind} in {timeout:g} s")
        except WebSocketClosed as exc:
            raise CoordinatorUnavailable(f"{self.base}: {exc}") from None
        finally:
            self._waiters.pop(seq, None)
            self._last_used = trio.current_time()
        if waiter.answer is None:
            raise CoordinatorUnavailable(f"{self.base}: {waiter.problem}")
        return waiter.answer

    async def _wait_session(self, timeout: float) -> None:
        """On demand: ask ``run`` to connect and wait (up to ``timeout``) until it has."""
        self._demand += 1
        try:
            self._want.set()
            with trio.move_on_after(timeout):
                while not self.is_connected:  # a set event whose link was lost is
                    await self.connected.wait()  # replaced by then: wait for the next
        finally:
            self._demand -= 1
