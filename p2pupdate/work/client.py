"""Client of the example KV service: spreads requests over nodes and hides their updates.

A rolling update must show **zero failed requests** to the caller (README "The work a node serves").  Nodes
leave in two ways and the client handles both without giving up on the request:

- politely: a draining node answers ``going-away``; the client sets that node aside for
  ``going_away_hold`` seconds, closes its connection, and sends the request elsewhere at once;
- abruptly: a refused or broken connection, or no answer within ``attempt_timeout``; the
  node is set aside with exponential backoff (jittered) and the request moves on.

Every operation is idempotent (a put writes a value, a delete removes a key), so sending
the same request again, to the same node or another, is always safe, even when the first
attempt may have been applied.  Retries are bounded by ``max_attempts`` and by
``request_timeout`` for the whole call; the errors then say what happened
(``NoNodeAvailableError``, ``RequestTimeoutError``).  A node's definite refusal
(``bad-request``, ``store-full``) is not retried: it raises ``RequestRejectedError``.

Nodes do not replicate each other: each one is its own store, and a read answers from
whichever node served it.  The example service is about staying available through
updates, not about consistency across nodes.

Use::

    async with KVClient([("127.0.0.1", 7000), ("127.0.0.1", 7001)]) as kv:
        await kv.put("greeting", b"hello")
        value = await kv.get("greeting")
        kv.set_endpoints([...])  # at any time; requests in flight finish or move
"""

from __future__ import annotations

import itertools
import math
import random
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Final

import trio

from ..core import timing, wire
from ..core.errors import WireError
from ..errors import PeerFault
from .protocol import MAX_FRAME_BYTES, Op, Request, Response

Endpoint = tuple[str, int]

RECV_BYTES: Final = 64 * 1024


class KVClientError(PeerFault):
    """A request that could not be completed: the serving nodes' fault (down, silent,
    or refusing), never the caller's."""

    rule = "kv-client"


class NoNodeAvailableError(KVClientError):
    """Every node is down, draining or unreachable (or none is configured), and stayed so
    for the whole request budget."""

    rule = "no-node-available"


class RequestTimeoutError(KVClientError):
    """``request_timeout`` passed while nodes were reachable but did not answer in time."""

    rule = "request-timeout"


class RequestRejectedError(KVClientError):
    """A node refused the request for a reason another node would share (bad request,
    store full).  ``code`` is the node's ``error`` string."""

    rule = "rejected"

    def __init__(self, code: str, detail: str, endpoint: Endpoint) -> None:
        super().__init__(f"{endpoint[0]}:{endpoint[1]} refused: {code}: {detail}")
        self.code = code
        self.detail = detail
        self.endpoint = endpoint


class _ConnectionLost(PeerFault):
    """Internal: this attempt's connection failed; the request may go elsewhere."""


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    #: How long one node gets to answer one attempt.
    attempt_timeout: float = 3.0
    #: The whole call, retries and waits for a node included.
    request_timeout: float = 15.0
    connect_timeout: float = 2.0
    max_attempts: int = 16
    #: How long a node that said ``going-away`` is left alone (it is about to restart).
    going_away_hold: float = 0.5
    backoff_initial: float = 0.05
    backoff_max: float = 1.0
    #: Calls in progress at once; more wait their turn.
    max_outstanding: int = 1024

    def retry_delay(self, failures: int) -> float:
        """How long a node is set aside after its ``failures``-th outage in a row (``>= 1``),
        before jitter: ``backoff_initial * 2**(failures-1)`` up to ``backoff_max``
        (``timing.capped_exponential``)."""
        return timing.capped_exponential(self.backoff_initial, self.backoff_max, failures - 1)


@dataclass(frozen=True)
class Reply:
    """A successful answer: ``value`` (for ``get``), which node answered, after how many
    attempts."""

    value: bytes | None
    endpoint: Endpoint
    attempts: int


@dataclass
class ClientStats:
    """Counters a caller can assert on: a rolling update must leave ``failed`` at 0."""

    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    going_away: int = 0
    connection_errors: int = 0
    timeouts: int = 0


class _Waiter:
    __slots__ = ("error", "event", "response")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.response: Response | None = None
        self.error: str | None = None


class _Connection:
    """One multiplexed connection: requests are matched to answers by ``id``."""

    def __init__(self, stream: trio.SocketStream, endpoint: Endpoint) -> None:
        self.stream = stream
        self.endpoint = endpoint
        self.waiters: dict[int, _Waiter] = {}
        self.send_lock = trio.Lock()
        self.closed = False

    def abort(self, why: str) -> None:
        """Close now (sync) and fail every request waiting on this connection."""
        if not self.closed:
            self.closed = True
            self.stream.socket.close()  # a blocked receive/send wakes with ClosedResourceError
        for waiter in self.waiters.values():
            waiter.error = why
            waiter.event.set()
        self.waiters.clear()

    async def read_answers(self) -> None:
        decoder = wire.FrameDecoder(MAX_FRAME_BYTES)
        why = "connection closed by the node"
        try:
            while True:
                data = await self.stream.receive_some(RECV_BYTES)
                if not data:
                    break
                for payload in decoder.feed(data):
                    resp = Response.from_wire(payload)
                    if resp.id is None:  # a connection-level answer: overloaded, bad framing
                        why = f"node answered {resp.error}: {resp.detail or ''}"
                        return
                    waiter = self.waiters.pop(resp.id, None)
                    if waiter is not None:
                        waiter.response = resp
                        waiter.event.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            why = f"connection lost: {exc}"
        except WireError as exc:
            why = f"unreadable answer: {exc}"
        finally:
            self.abort(why)

    async def call(self, req: Request) -> Response:
        if self.closed:
            raise _ConnectionLost("connection closed")
        waiter = _Waiter()
        self.waiters[req.id] = waiter
        data = wire.frame(req.to_wire(), MAX_FRAME_BYTES)
        try:
            async with self.send_lock:
                done = False
                try:
                    await self.stream.send_all(data)
                    done = True
                finally:
                    if not done:  # a send cut short leaves the stream unusable
                        self.abort("send interrupted")
            await waiter.event.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _ConnectionLost(f"send failed: {exc}") from exc
        finally:
            self.waiters.pop(req.id, None)
        if waiter.response is None:
            raise _ConnectionLost(waiter.error or "connection lost")
        return waiter.response


class _Node:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.conn: _Connection | None = None
        self.connect_lock = trio.Lock()
        self.outstanding = 0
        self.retry_at = -math.inf
        self.failures = 0
        self.removed = False
        self.last_error = ""


class KVClient:
    """Spreads calls over ``endpoints`` (least outstanding first, round robin among equals)
    and retries idempotent calls elsewhere when a node goes away.  Use as
    ``async with KVClient(endpoints) as kv``."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        *,
        config: ClientConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or ClientConfig()
        self.stats = ClientStats()
        self._rng = rng or random.Random()
        self._nodes: dict[Endpoint, _Node] = {}
        self._ids = itertools.count(1)
        self._turn = 0
        self._changed = trio.Event()
        self._slots = trio.Semaphore(self.config.max_outstanding)
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self.set_endpoints(endpoints)

    async def __aenter__(self) -> KVClient:
        if self._nursery_cm is not None:
            raise RuntimeError("KVClient is not reentrant")
        cm = trio.open_nursery()
        self._nursery = await cm.__aenter__()
        self._nursery_cm = cm
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None and self._nursery_cm is not None
        for node in self._nodes.values():
            if node.conn is not None:
                node.conn.abort("client closed")
        self._nursery.cancel_scope.cancel()
        cm, self._nursery, self._nursery_cm = self._nursery_cm, None, None
        return await cm.__aexit__(exc_type, exc, tb)

    # -- endpoints -----------------------------------------------------------------------

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._nodes)

    def set_endpoints(self, endpoints: list[Endpoint]) -> None:
        """Replace the node list.  Removed nodes' connections close (their in-flight calls
        move to other nodes); new nodes take calls at once."""
        wanted = [(str(h), int(p)) for h, p in endpoints]
        for endpoint in list(self._nodes):
            if endpoint not in wanted:
                node = self._nodes.pop(endpoint)
                node.removed = True
                if node.conn is not None:
                    node.conn.abort("endpoint removed")
        for endpoint in wanted:
            if endpoint not in self._nodes:
                self._nodes[endpoint] = _Node(endpoint)
        self._changed.set()
        self._changed = trio.Event()

    # -- calls ---------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """The value of ``key`` on the node that answers, or None when it has none."""
        return (await self.call("get", key)).value

    async def put(self, key: str, value: bytes) -> Endpoint:
        """Store ``value`` durably; returns the node that acknowledged it."""
        return (await self.call("put", key, value)).endpoint

    async def delete(self, key: str) -> Endpoint:
        return (await self.call("delete", key)).endpoint

    async def ping(self) -> Endpoint:
        return (await self.call("ping")).endpoint

    async def call(self, op: Op, key: str | None = None, value: bytes | None = None) -> Reply:
        """One request, retried on other nodes until it succeeds or the budget is spent.

        Raises ``ValueError`` for a request no node would take (checked before sending),
        ``RequestRejectedError``, ``NoNodeAvailableError`` or ``RequestTimeoutError``.
        """
        if self._nursery is None:
            raise RuntimeError("use the client inside 'async with KVClient(...)'")
        Request(op=op, id=0, key=key, value=value)  # the caller's mistake: ValueError now
        try:
            async with self._slots:
                reply = await self._call(op, key, value)
        except KVClientError:
            self.stats.failed += 1
            raise
        self.stats.succeeded += 1
        return reply

    async def _call(self, op: Op, key: str | None, value: bytes | None) -> Reply:
        cfg = self.config
        deadline = trio.current_time() + cfg.request_timeout
        attempts = 0
        timed_out = False
        while True:
            now = trio.current_time()
            if now >= deadline:
                break
            if attempts >= cfg.max_attempts:
                raise NoNodeAvailableError(f"gave up after {attempts} attempts: {self._summary()}")
            node = self._pick(now)
            if node is None:
                if not self._nodes:
                    raise NoNodeAvailableError("no endpoints configured")
                wake = min(min(n.retry_at for n in self._nodes.values()), deadline)
                with trio.move_on_at(wake):
                    await self._changed.wait()  # or an endpoint update, whichever is first
                continue
            if attempts:
                self.stats.retries += 1
            attempts += 1
            req = Request(op=op, id=next(self._ids), key=key, value=value)
            node.outstanding += 1
            try:
                with trio.move_on_at(min(deadline, now + cfg.attempt_timeout)) as scope:
                    resp = await self._send(node, req)
                if scope.cancelled_caught:
                    timed_out = True
                    self.stats.timeouts += 1
                    if node.conn is not None:  # a stuck node: its connection is no good either
                        node.conn.abort("no answer in time")
                    self._set_aside(node, "no answer in time")
                    continue
            except _ConnectionLost as exc:
                self.stats.connection_errors += 1
                self._set_aside(node, str(exc))
                continue
            finally:
                node.outstanding -= 1
            if resp.ok:
                node.failures = 0
                return Reply(value=resp.value, endpoint=node.endpoint, attempts=attempts)
            if resp.retryable:
                self.stats.going_away += resp.error == "going-away"
                node.last_error = f"{resp.error}: {resp.detail or ''}"
                node.retry_at = max(node.retry_at, trio.current_time() + cfg.going_away_hold)
                if node.conn is not None:
                    node.conn.abort("node is going away")
                continue
            raise RequestRejectedError(resp.error or "error", resp.detail or "", node.endpoint)
        if timed_out:
            raise RequestTimeoutError(
                f"no answer within {cfg.request_timeout} s ({attempts} attempts): {self._summary()}"
            )
        raise NoNodeAvailableError(
            f"no node answered within {cfg.request_timeout} s ({attempts} attempts): "
            f"{self._summary()}"
        )

    def _summary(self) -> str:
        return (
            "; ".join(f"{h}:{p} {n.last_error or 'no error'}" for (h, p), n in self._nodes.items())
            or "no endpoints"
        )

    def _pick(self, now: float) -> _Node | None:
        live = [n for n in self._nodes.values() if n.retry_at <= now]
        if not live:
            return None
        self._turn += 1
        k = len(live)
        best = min(range(k), key=lambda i: (live[i].outstanding, (i - self._turn) % k))
        return live[best]

    def _set_aside(self, node: _Node, why: str) -> None:
        """Back off from a node that failed (once per outage, however many calls saw it)."""
        now = trio.current_time()
        node.last_error = why
        if node.retry_at > now:
            return
        node.failures += 1
        delay = self.config.retry_delay(node.failures)
        node.retry_at = now + delay * (0.5 + 0.5 * self._rng.random())

    async def _send(self, node: _Node, req: Request) -> Response:
        conn = node.conn
        if conn is None or conn.closed:
            async with node.connect_lock:
                conn = node.conn
                if conn is None or conn.closed:
                    conn = await self._connect(node)
        return await conn.call(req)

    async def _connect(self, node: _Node) -> _Connection:
        if node.removed:
            raise _ConnectionLost("endpoint removed")
        assert self._nursery is not None
        host, port = node.endpoint
        try:
            with trio.fail_after(self.config.connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise _ConnectionLost(f"cannot connect: {exc or type(exc).__name__}") from exc
        conn = _Connection(stream, node.endpoint)
        node.conn = conn
        self._nursery.start_soon(conn.read_answers)
        return conn
