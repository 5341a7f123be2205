"""The network shell of a replica: HTTP and the node WebSocket on one trio port.

Why h11 + wsproto directly (not hypercorn + ASGI, not trio-websocket): both are the
sans-IO protocol engines those servers are built on, the same shape as our core (README
"Architecture": h11 is "containing no networking code at all"), so this module is only
the glue: one task per connection reads the request head, and either hands the bytes to wsproto (an
``Upgrade: websocket`` to ``/v1/node``) or to h11 (everything else).  The node channel is
the hot path -- every ask is one binary message in and one out -- and here it costs one
wsproto parse, one msgpack decode and one send, with no ASGI event dicts, no per-message
task and no extra queue between the socket and ``Replica.ask`` (measured: see the README's
bench figures).  What we give up is what an operator-facing server needs and we do not:
HTTP/2, TLS termination (put a TLS proxy in front), worker processes.  Limits are ours
and explicit: request heads 16 KiB, bodies per route, WebSocket messages 16 KiB, idle
HTTP connections closed after 60 s, a hello within 10 s, ``signal`` requests at most
``SIGNAL_RATE`` a second per connection (bursts of ``SIGNAL_BURST``), each blob at most
``coordproto.MAX_SIGNAL`` bytes (the schema).

Routes::

    GET  /v1/node                        WebSocket: the node channel (README "Protocol")
    POST /v1/publish                     a signed document (octet-stream): 200 or 400 + reason
    PUT  /v1/artifacts/<sha256>          artifact bytes (a published release must name them)
    GET  /v1/artifacts/<sha256>          the origin: the whole artifact
    GET  /v1/artifacts/<sha256>/chunks/<i>   one chunk, as the release record cuts them
                                         (zstd when asked for and smaller: Content-Encoding);
                                         beyond the downloader cap (``coordinator.origin``)
                                         503 {"error": "try-peers", "retry_after": S, "why": W}
    GET  /v1/documents                   every document held (msgpack), for replicas catching up
    GET  /status                         JSON: documents, progress, leases, refusals, pauses
                                         (``?history=1``: and the samples of ``ui.history``)
    GET  /status/node/<id prefix>        JSON: one node's answer (``status.node_status``)
    GET  /metrics                        Prometheus text format
      (these: loopback clients only, or a bearer token: ``coordinator.readaccess``)
    GET  /ui, /ui/ui.js, /ui/ui.css      the rollout page (``coordinator.ui``): no data of its
                                         own; loopback only without a token, anyone with one
    GET  /healthz                        "ok"
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import h11
import trio
import wsproto
import wsproto.events as wse

from p2pupdate.core import admission, wire
from p2pupdate.core import coordproto as proto
from p2pupdate.core import session as sess
from p2pupdate.core.errors import P2PUpdateError, VerificationError, WireError
from p2pupdate.core.swarm import packing
from p2pupdate.errors import LocalStateFault
from p2pupdate.net.websocket import MessageTooBig, ProtocolViolation, WebSocket, WebSocketClosed

from .catchup import DOCUMENTS_PATH, documents_answer
from .limits import ServerLimits
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .origin import NODE_HEADER, accepts, downloader
from .publishing import ArtifactRefused, ArtifactUpload
from .ratelimit import Bucket
from .readaccess import ReadAccess, ReadRefused, is_page_path, is_read_path
from .service import Replica, RequestError
from .status import node_status
from .ui import PAGE_HEADERS, PagePart, page_file
from .ui.history import History, record

PUSH_TIMEOUT: Final = 5.0
#: A refused connection's 503 gets this long to leave before the socket is closed.
REFUSE_TIMEOUT: Final = 1.0
#: Unexpected failures logged one line each up to this many, then one line per 1000.
FAILURES_LOGGED: Final = 10
#: Signals a node may relay per second, and in one burst (a WebRTC setup takes two).
SIGNAL_RATE: Final = 20.0
SIGNAL_BURST: Final = 40.0
#: ``GET /status/node/<id prefix>``: one node's answer (``status.node_status``).
NODE_STATUS_PATH: Final = "/status/node/"
_UPGRADE = re.compile(rb"\r\nupgrade:[ \t]*websocket", re.IGNORECASE)
_ARTIFACT = re.compile(r"^/v1/artifacts/([0-9a-f]{64})(?:/chunks/(\d{1,6}))?$")
#: Upload bytes handed to a worker thread at once (fewer if they complete a chunk): with
#: the chunk being checked, what an upload holds in memory.
UPLOAD_BATCH: Final = 1024 * 1024
_T = TypeVar("_T")


@dataclass(eq=False)
class NodeConn:
    node: str
    pub: bytes
    session: sess.Session
    sock: WebSocket
    peer: str
    last_seq: int = 0
    addrs: tuple[str, ...] = ()
    pool: str = "default"
    #: The connection's ``signal`` allowance (None until its first signal), and whether
    #: the log said it ran out (once per connection: a flood is one line, not thousands).
    signals: Bucket | None = None
    signals_limited: bool = False


@dataclass(kw_only=True)
class ServerStats:
    """What the server's limits did, for ``/status`` (``server``) and ``/metrics``.

    ``connection_failures`` counts the connections closed by an error the server did not
    expect (a bug, logged with its type): each closed that connection only.  Everything
    else here is a limit doing its job: a connection refused at a cap, a request head or
    body cut at its deadline, a frame or request that broke the protocol."""

    open: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    timeouts: Counter[str] = field(default_factory=Counter)
    protocol_errors: int = 0
    connection_failures: int = 0
    #: Open connections per source address (an address at 0 is dropped).
    per_source: dict[str, int] = field(default_factory=dict)

    def status(self, limits: ServerLimits) -> dict[str, Any]:
        return {
            "open_connections": self.open,
            "sources": len(self.per_source),
            "accepted": self.accepted,
            "refused": dict(self.refused),
            "timeouts": dict(self.timeouts),
            "protocol_errors": self.protocol_errors,
            "connection_failures": self.connection_failures,
            "limits": {
                "max_connections": limits.max_connections,
                "max_per_source": limits.max_per_source,
                "head_timeout": limits.head_timeout,
                "body_timeout": limits.body_timeout,
                "hello_timeout": limits.hello_timeout,
            },
        }


class _Metrics:
    """The server's counters on the replica's Prometheus registry."""

    def __init__(self, replica: Replica) -> None:
        from prometheus_client import Counter as PCounter
        from prometheus_client import Gauge

        r = replica.metrics.registry
        prefix = "p2pupdate_coordinator"
        self.connections = PCounter(
            f"{prefix}_connections",
            "Connections, by result (accepted, refused-max-connections, refused-max-per-source)",
            ["result"],
            registry=r,
        )
        self.closed = PCounter(
            f"{prefix}_connections_cut",
            "Connections the server closed early, by why (timeout-head, timeout-body, "
            "timeout-hello, protocol-error, failure)",
            ["why"],
            registry=r,
        )
        self.open = Gauge(f"{prefix}_open_connections", "Connections open now", registry=r)


class Server:
    """Accepts connections for one ``Replica``; pushes to connected nodes."""

    def __init__(
        self,
        replica: Replica,
        *,
        log: Callable[[str], None] = lambda _m: None,
        limits: ServerLimits | None = None,
        read_access: ReadAccess | None = None,
        history: History | None = None,
    ) -> None:
        self.replica = replica
        self.log = log
        self.limits = limits or ServerLimits()
        #: Who may read /status, /metrics, /ui (default: loopback clients only).
        self.read_access = read_access or ReadAccess()
        #: ``/status``'s ``history`` (the rollout page's charts), sampled by the flusher.
        self.history = history or History()
        self.stats = ServerStats()
        self._metrics = _Metrics(replica)
        self.conns: dict[str, NodeConn] = {}
        self._nursery: trio.Nursery | None = None
        replica.push_all = self.push_all
        replica.push_to = self.push_to
        replica.connected = lambda: len(self.conns)
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve_on(listeners, task_status=task_status)

    async def serve_on(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on listeners already bound: ``p2pupdate-coordinator serve`` binds before it
        opens the replica, so a port in use is refused before any state is touched."""
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._sample()  # the history's baseline, before the first request
                nursery.start_soon(self._flusher)
                for listener in listeners:
                    nursery.start_soon(self._accept, listener, nursery)
                task_status.started(self.port)
        finally:
            try:
                self.replica.asks.refusal_audit.close()
                self.replica.store.flush()
            except LocalStateFault as exc:
                self.log(f"audit and registry not written at stop: {exc}")

    async def _flusher(self) -> None:
        said = ""
        while True:
            await trio.sleep(0.1)
            try:
                self.replica.asks.tick()
                self._sample()
                self.replica.registry.maybe_forget()
                self.replica.store.flush()
            except LocalStateFault as exc:  # kept for the next flush; said once
                if str(exc) != said:
                    self.log(f"audit and registry not written: {exc}")
                said = str(exc)
            else:
                said = ""

    def _sample(self) -> None:
        rep = self.replica
        record(self.history, asks=rep.asks, registry=rep.registry, documents=rep.documents)

    def push_all(self, msg: proto.Push) -> None:
        if self._nursery is None:
            return
        data = wire.encode(msg.to_wire())
        for conn in list(self.conns.values()):
            self._nursery.start_soon(self._push, conn, data)

    def push_to(self, node: str, msg: proto.Push) -> None:
        conn = self.conns.get(node)
        if self._nursery is not None and conn is not None:
            self._nursery.start_soon(self._push, conn, wire.encode(msg.to_wire()))

    async def _push(self, conn: NodeConn, data: bytes) -> None:
        with trio.move_on_after(PUSH_TIMEOUT), contextlib.suppress(WebSocketClosed):
            try:
                await conn.sock.send(conn.session.seal(data))
            except Exception as exc:  # a push runs in the server's nursery: never let it out
                self.stats.connection_failures += 1
                self.log(f"push to node {conn.node[:16]}... failed ({type(exc).__name__}: {exc})")
                await conn.sock.close(1011, "internal error")

    # -- one connection ------------------------------------------------------------------------

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        """``trio.serve_listeners``' loop, with the caps applied as each connection is
        accepted (in the order the kernel queued them, not the order tasks first run)."""
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    # out of descriptors (the caps are above ``ulimit -n``): wait a little
                    self.stats.refused["accept-failed"] += 1
                    self._metrics.connections.labels("accept-failed").inc()
                    await trio.sleep(0.1)
                    continue
                admitted = self._admit(stream)
                nursery.start_soon(self._run if admitted else self._refuse, stream, admitted)

    async def _handle(self, stream: trio.SocketStream) -> None:
        """One connection: admitted (or refused) and served, as the accept loop does."""
        admitted = self._admit(stream)
        await (self._run if admitted else self._refuse)(stream, admitted)

    def _admit(self, stream: trio.SocketStream) -> str:
        """The connection's source address, counted open; "" if a cap refuses it."""
        stats, limits = self.stats, self.limits
        peer = _peer(stream)
        source = peer.rpartition(":")[0] or peer or "?"
        refused = None
        if stats.open >= limits.max_connections:
            refused = "max-connections"
        elif stats.per_source.get(source, 0) >= limits.max_per_source:
            refused = "max-per-source"
        if refused is not None:
            stats.refused[refused] += 1
            self._metrics.connections.labels(f"refused-{refused}").inc()
            return ""
        stats.open += 1
        stats.accepted += 1
        stats.per_source[source] = stats.per_source.get(source, 0) + 1
        self._metrics.connections.labels("accepted").inc()
        self._metrics.open.set(stats.open)
        return source

    async def _refuse(self, stream: trio.SocketStream, _source: str) -> None:
        with contextlib.suppress(Exception), trio.move_on_after(REFUSE_TIMEOUT):
            await stream.send_all(_TOO_MANY)
        with contextlib.suppress(Exception):
            await stream.aclose()

    async def _run(self, stream: trio.SocketStream, source: str) -> None:
        """Whatever the connection sends, the worst it can do is get itself closed: an
        error the server did not expect is logged, counted (``connection_failures``)
        and closes this connection, never the process."""
        stats = self.stats
        try:
            await self._connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, WebSocketClosed):
            pass
        except Exception as exc:  # the one place that keeps the process up
            stats.connection_failures += 1
            self._metrics.closed.labels("failure").inc()
            n = stats.connection_failures
            if n <= FAILURES_LOGGED or n % 1000 == 0:
                self.log(
                    f"connection from {_peer(stream) or source} closed by an unexpected "
                    f"error ({type(exc).__name__}: {exc}); the server goes on "
                    f"({n} such connection(s) since start)"
                )
        finally:
            stats.open -= 1
            left = stats.per_source.get(source, 1) - 1
            if left > 0:
                stats.per_source[source] = left
            else:
                stats.per_source.pop(source, None)
            self._metrics.open.set(stats.open)
            with contextlib.suppress(Exception):
                await stream.aclose()

    def _cut(self, why: str) -> None:
        if why.startswith("timeout-"):
            self.stats.timeouts[why.removeprefix("timeout-")] += 1
        else:
            self.stats.protocol_errors += 1
        self._metrics.closed.labels(why).inc()

    async def _connection(self, stream: trio.SocketStream) -> None:
        limits = self.limits
        head = bytearray()
        with trio.move_on_after(limits.head_timeout) as scope:
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
                if len(head) > limits.max_head and b"\r\n\r\n" not in head[: limits.max_head]:
                    self._cut("protocol-error")
                    await stream.send_all(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                        b"content-length: 0\r\nconnection: close\r\n\r\n"
                    )
                    return
        if scope.cancelled_caught:  # silent or trickling: the same deadline for both
            self._cut("timeout-head")
            with contextlib.suppress(Exception), trio.move_on_after(REFUSE_TIMEOUT):
                await stream.send_all(_REQUEST_TIMEOUT)
            return
        end = head.index(b"\r\n\r\n")
        if _UPGRADE.search(bytes(head[:end])):
            await self._websocket(stream, bytes(head))
        else:
            await self._http(stream, bytes(head))

    # -- HTTP ------------------------------------------------------------------------------------

    async def _http(self, stream: trio.SocketStream, initial: bytes) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        conn.receive_data(initial)
        first = True
        while True:
            try:
                request, body = await self._read_request(conn, stream, first=first)
            except h11.RemoteProtocolError as exc:
                self._cut("protocol-error")
                await self._send_plain(conn, stream, 400, f"bad request: {exc}\n".encode())
                return
            except _Early as exc:  # answered before the body is read; then closed
                if exc.why:
                    self._cut(exc.why)
                if conn.our_state is not h11.SEND_RESPONSE:  # no request head parsed yet
                    await stream.send_all(_REQUEST_TIMEOUT)
                    return
                with contextlib.suppress(h11.LocalProtocolError):
                    await self._send(conn, stream, exc.status, exc.ctype, exc.payload)
                return
            first = False
            if request is None:
                return
            extra: tuple[tuple[str, str], ...] = ()
            try:
                answer = await self._route(request, body, _peer(stream))
                if isinstance(answer, _TryPeers):
                    status, ctype, payload = 503, "application/json", answer.body()
                    extra = (("retry-after", str(answer.retry_after)),)
                elif isinstance(answer, ReadRefused):
                    status, ctype, payload = answer.status, "application/json", answer.body()
                    extra = answer.headers
                elif isinstance(answer, _Encoded):
                    status, ctype, payload = 200, "application/octet-stream", answer.data
                    extra = (("content-encoding", answer.encoding),)
                elif isinstance(answer, PagePart):
                    status, ctype, payload = 200, answer.ctype, answer.data
                    extra = PAGE_HEADERS
                else:
                    status, ctype, payload = answer
            except LocalStateFault as exc:
                self.log(
                    f"{request.method.decode()} {request.target.decode(errors='replace')}: {exc}"
                )
                status, ctype, payload = 503, "text/plain", f"{exc.rule}: {exc}\n".encode()
            await self._send(conn, stream, status, ctype, payload, extra)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream, *, first: bool
    ) -> tuple[h11.Request | None, bytes | _Stored]:
        """The next request and its body, each within its deadline (``ServerLimits``): a
        kept-alive connection may be quiet for ``idle_timeout``, then the head has
        ``head_timeout`` from its first byte (the first request's head was read by
        ``_connection`` under the same deadline) and the body ``body_deadline(length)``.
        A body is refused from its head alone when it could never be taken (``_Early``).
        An artifact upload's body is not kept: it streams to disk (``_upload``) and what
        stands for the body is the upload's answer (``_Stored``)."""
        limits = self.limits
        request: h11.Request | None = None
        body = bytearray()
        limit = limits.max_document_body
        now = trio.current_time()
        head_by: float | None = now + limits.head_timeout if first else None
        idle_by = now + limits.idle_timeout
        body_by: float | None = None
        upload: ArtifactUpload | None = None
        answer: _Stored | None = None  # an upload's, once it is known
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    deadline = body_by or head_by or idle_by
                    with trio.move_on_at(deadline) as scope:
                        data = await stream.receive_some(65536)
                    if scope.cancelled_caught:
                        if body_by is None and head_by is None:
                            return None, b""  # idle between requests: closed quietly
                        raise _Early(
                            408,
                            b"request not received in time\n",
                            why=("timeout-body" if body_by is not None else "timeout-head"),
                        )
                    if head_by is None and data:
                        head_by = trio.current_time() + limits.head_timeout
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    request = event
                    length = _content_length(event)
                    limit = self._body_limit(event, length)
                    if length is not None and length > limit:
                        raise _Early(
                            413, f"body over {limit} bytes\n".encode(), why="protocol-error"
                        )
                    body_by = trio.current_time() + limits.body_deadline(length or 0)
                    artifact = _upload_of(event)
                    if artifact is not None:
                        began = await self._upload(self.replica.documents.begin_upload, artifact)
                        upload, answer = (
                            (None, began) if isinstance(began, _Stored) else (began, None)
                        )
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise _Early(
                            413, f"body over {limit} bytes\n".encode(), why="protocol-error"
                        )
                    if (
                        answer is None
                        and upload is not None
                        and len(body) >= min(UPLOAD_BATCH, upload.wanted)
                    ):  # checked as it comes; a refusal (the upload aborted) drops the rest
                        answer = await self._upload(upload.feed, bytes(body))
                    elif answer is None:
                        continue  # a document, or an upload's next bytes: kept (1 MiB at most)
                    limit -= len(body)
                    body.clear()
                elif isinstance(event, h11.EndOfMessage):
                    if answer is None and upload is not None:
                        answer = await self._upload(upload.feed, bytes(body))
                    if answer is None and upload is not None:
                        done = await self._upload(upload.finish)
                        ok = {"ok": True, "artifact": upload.artifact, "length": done}
                        answer = done if isinstance(done, _Stored) else _Stored(200, ok)
                    return request, (bytes(body) if answer is None else answer)
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return None, b""
        finally:
            if upload is not None:  # cut, refused or timed out: no temp file stays
                upload.abort()

    async def _upload(self, step: Callable[..., _T], *args: Any) -> _T | _Stored:
        """One step of an upload, in a worker thread: disk and hashing never stall the
        event loop, and the body is not read meanwhile (the sender waits on TCP).  A
        refusal is the upload's answer (``_Stored``), given once the rest of the body is
        read and dropped: an uploader that sends its whole body before it reads
        (``coordinator publish``, urllib) reads the reason, not a reset connection."""
        try:
            return await trio.to_thread.run_sync(step, *args)
        except ArtifactRefused as exc:
            return _Stored(400, exc.answer())
        except LocalStateFault as exc:
            self.log(f"artifact upload not stored: {exc}")
            return _Stored(503, {"ok": False, "error": exc.rule, "reason": str(exc)})

    def _body_limit(self, request: h11.Request, length: int | None) -> int:
        """The most body bytes ``request`` may carry.  An artifact upload is checked
        against its release record here, from the head alone: no release, or another
        length, is answered before a byte of the body is read (and never buffered); the
        bytes themselves are checked chunk by chunk as they stream in (``_upload``)."""
        if request.method != b"PUT" or not request.target.startswith(b"/v1/artifacts/"):
            return self.limits.max_document_body
        artifact = _upload_of(request)
        if artifact is None:
            return 0  # answered 404/405 by the route; no body needed for that
        release = self.replica.documents.releases.get(artifact)
        if release is None:
            raise _Early.json(
                400,
                {
                    "ok": False,
                    "error": "no-release-record",
                    "reason": f"publish the release record of {artifact[:16]}... first",
                },
            )
        expected = release.doc.length
        if expected > self.replica.config.max_artifact:
            raise _Early(
                413,
                f"artifacts here are at most {self.replica.config.max_artifact} bytes\n".encode(),
            )
        if length is None:
            raise _Early(411, b"an artifact upload needs a content-length\n")
        if length != expected:
            raise _Early.json(
                400 if length <= self.replica.config.max_artifact else 413,
                {
                    "ok": False,
                    "error": "artifact-mismatch",
                    "reason": f"{length} bytes sent, the release record says {expected}",
                },
            )
        return expected

    async def _send(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        status: int,
        ctype: str,
        payload: bytes,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        headers = [("content-type", ctype), ("content-length", str(len(payload))), *extra]
        out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        out += conn.send(h11.Data(data=payload)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)

    async def _send_plain(
        self, conn: h11.Connection, stream: trio.SocketStream, status: int, text: bytes
    ) -> None:
        with contextlib.suppress(h11.LocalProtocolError):
            await self._send(conn, stream, status, "text/plain", text)

    def _read_refused(self, request: h11.Request, path: str, peer: str) -> ReadRefused | None:
        """The operator views' rule (``coordinator.readaccess``); None: may read."""
        if is_page_path(path):
            return self.read_access.check_page(peer)
        if not is_read_path(path):
            return None
        auth = next((v for k, v in request.headers if k == b"authorization"), None)
        return self.read_access.check(peer, auth)

    async def _route(
        self, request: h11.Request, body: bytes | _Stored, peer: str
    ) -> tuple[int, str, bytes] | _TryPeers | _Encoded | ReadRefused | PagePart:
        if isinstance(body, _Stored):  # an artifact upload, streamed to disk as it was read
            return body.status, "application/json", _json(body.answer)
        method = request.method.decode()
        target = request.target.decode("ascii", "replace")
        path = target.split("?", 1)[0]
        rep = self.replica
        refused = self._read_refused(request, path, peer)
        if refused is not None:
            return refused
        if path == "/status" and method == "GET":
            view = rep.status()
            view["server"] = self.stats.status(self.limits)
            if "history=1" in target.partition("?")[2].split("&"):  # the rollout page asks
                view["history"] = self.history.view()
            return 200, "application/json", _json(view)
        if path.startswith(NODE_STATUS_PATH) and method == "GET":
            prefix = path[len(NODE_STATUS_PATH) :]
            code, answer = node_status(
                prefix, index=rep.index, registry=rep.registry, asks=rep.asks
            )
            return code, "application/json", _json(answer)
        if path == "/metrics" and method == "GET":
            return 200, METRICS_TYPE, rep.metrics.render()
        if is_page_path(path):
            part = page_file(path)
            if part is None:
                return 404, "text/plain", b"not found\n"
            if method != "GET":
                return 405, "text/plain", b"GET the page\n"
            return part
        if path == "/healthz" and method == "GET":
            return 200, "text/plain", b"ok\n"
        if path == DOCUMENTS_PATH and method == "GET":
            held = rep.documents.held()
            return 200, "application/octet-stream", documents_answer(rep.index, rep.keyid, held)
        if path == "/v1/publish":
            if method != "POST":
                return 405, "text/plain", b"POST a signed document\n"
            status, answer = rep.publish(body)
            if status == 200:
                self.log(f"published {answer.get('describe')}")
            else:
                self.log(f"publish refused: {answer.get('error')}: {answer.get('reason')}")
            return status, "application/json", _json(answer)
        m = _ARTIFACT.match(path)
        if m is not None:
            artifact, chunk = m.group(1), m.group(2)
            if method == "PUT" and chunk is None:
                status, answer = rep.put_artifact(artifact, body)
                return status, "application/json", _json(answer)
            if method == "GET":
                at = None if chunk is None else int(chunk)
                return await self._origin(artifact, at, request, peer)
            return 405, "text/plain", b"GET or PUT\n"
        return 404, "text/plain", b"not found\n"

    async def _origin(
        self, artifact: str, chunk: int | None, request: h11.Request, peer: str
    ) -> tuple[int, str, bytes] | _TryPeers | _Encoded:
        """Serve the artifact or one chunk, within the downloader cap; count what was sent.

        The bytes are read (and checked against the release record) in a worker thread:
        a slow disk or a whole artifact's hash never stalls the event loop, so the node
        channel and ``/status`` answer meanwhile.  A chunk GET reads that chunk only
        (``Documents.origin_bytes``).  A chunk goes compressed to a node that accepts zstd
        when it shrinks (``origin.WireCache``); the bytes counted are the bytes sent."""
        rep = self.replica
        missing = (404, "text/plain", b"no such artifact or chunk here\n")
        if rep.documents.artifact_path(artifact) is None or artifact not in rep.documents.releases:
            return missing
        named = next((v for k, v in request.headers if k == NODE_HEADER.encode()), None)
        who = downloader(named.decode("ascii", "replace") if named else None, peer)
        refusal = rep.origin.refusal(artifact, who, chunk)
        if refusal is not None:
            return _TryPeers(retry_after=refusal[0], why=refusal[1])
        data = await trio.to_thread.run_sync(rep.documents.origin_bytes, artifact, chunk)
        if data is None:
            return missing
        wants = next((v for k, v in request.headers if k == b"accept-encoding"), None)
        if chunk is not None and accepts(wants, packing.CODEC):
            known, frame = rep.origin.wire.get(artifact, chunk)
            if not known:  # compressed once per chunk (in a worker thread), not per node
                frame = await trio.to_thread.run_sync(packing.compress, data)
                rep.origin.wire.put(artifact, chunk, frame)
            if frame is not None:
                rep.origin.served(artifact, len(frame))
                return _Encoded(data=frame, encoding=packing.CODEC)
        rep.origin.served(artifact, len(data))
        return 200, "application/octet-stream", data

    # -- the node channel -----------------------------------------------------------------------

    async def _websocket(self, stream: trio.SocketStream, initial: bytes) -> None:
        end = initial.index(b"\r\n\r\n") + 4
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        try:
            ws.receive_data(initial[:end])
        except wsproto.utilities.RemoteProtocolError:
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        request = next((e for e in ws.events() if isinstance(e, wse.Request)), None)
        if request is None:
            return
        if request.target != proto.NODE_PATH:
            await stream.send_all(ws.send(wse.RejectConnection(status_code=404)))
            return
        await stream.send_all(ws.send(wse.AcceptConnection()))
        sock = WebSocket(
            stream, ws, max_message=proto.REQUEST_LIMITS.max_bytes, initial=initial[end:]
        )
        try:
            await self._node_session(sock, _peer(stream))
        except (ProtocolViolation, MessageTooBig):
            self._cut("protocol-error")
        except WebSocketClosed:
            pass
        finally:
            await sock.close()

    async def _node_session(self, sock: WebSocket, peer: str) -> None:
        rep = self.replica
        kx = sess.KeyExchange(os.urandom(sess.KX_LEN))
        challenge = sess.Challenge(
            nonce=os.urandom(sess.NONCE_LEN),
            replica=rep.keyid,
            network=rep.trust.root.network,
            ttl=rep.config.token_ttl,
            max_skew=rep.config.max_skew,
            time=rep.wall(),
            kx=kx.public,
        )
        await sock.send(challenge.sign(rep.signer))
        with trio.move_on_after(self.limits.hello_timeout) as scope:
            raw = await sock.receive()
        if scope.cancelled_caught:
            self._cut("timeout-hello")
            return
        try:
            hello = sess.open_hello(
                raw,
                nonce=challenge.nonce,
                replica=challenge.replica,
                network=challenge.network,
                kx=kx,
            )
        except (WireError, VerificationError) as exc:
            rep.metrics.bad_requests.labels("hello").inc()
            await sock.send(
                wire.encode({"id": 0, "ok": False, "error": exc.rule, "detail": str(exc)})
            )
            return
        # P10 admission: the network's rule and the subnet's registration cap; a refusal is
        # answered as a bad hello is (unsealed: no session exists) and the socket closed
        verdict = rep.admit(hello.node, hello.member, peer)
        if isinstance(verdict, admission.Refused):
            await sock.send(
                wire.encode(
                    {"id": 0, "ok": False, "error": verdict.reason, "detail": verdict.detail}
                )
            )
            return
        conn = NodeConn(node=hello.node, pub=hello.pub, session=hello.session, sock=sock, peer=peer)
        old = self.conns.get(conn.node)
        self.conns[conn.node] = conn
        try:
            if old is not None:
                await old.sock.close(1000, "replaced by a newer connection")
            await sock.send(conn.session.seal(wire.encode({"id": 0, "ok": True})))
            while True:
                frame = await sock.receive()
                answer = await self._answer(conn, frame)
                if answer is None:
                    return
                await sock.send(conn.session.seal(answer))
        finally:
            if self.conns.get(conn.node) is conn:
                del self.conns[conn.node]
                rep.left(conn.node)

    async def _answer(self, conn: NodeConn, frame: bytes) -> bytes | None:
        """The answer to one request frame, or None to close (a broken or forged frame)."""
        rep = self.replica
        started = time.perf_counter()
        try:
            seq, request = proto.open_request(frame, session=conn.session, last_seq=conn.last_seq)
        except (WireError, VerificationError) as exc:
            rep.metrics.bad_requests.labels(exc.rule).inc()
            self.log(f"node {conn.node[:16]}... sent a bad request ({exc.rule}: {exc}); closing")
            return None
        conn.last_seq = seq
        kind = request.KIND
        rep.metrics.count_request(kind)
        answer: proto.Answer
        try:
            answer = await self._dispatch(conn, request)
        except RequestError as exc:
            rep.metrics.bad_requests.labels(exc.error).inc()
            answer = proto.ErrorAnswer(error=exc.error, detail=exc.detail)
        except P2PUpdateError as exc:
            answer = proto.ErrorAnswer(error=exc.rule, detail=str(exc))
        if kind == "ask":
            rep.metrics.ask_seconds.observe(time.perf_counter() - started)
        body = answer.to_wire()
        body["id"] = seq
        return wire.encode(body)

    async def _dispatch(self, conn: NodeConn, request: proto.Request) -> proto.Answer:
        rep = self.replica
        node = conn.node
        if isinstance(request, proto.AskRequest):
            answer = rep.ask(node, request)
            rep.metrics.count_ask(answer.granted, answer.gate, answer.reason)
            return answer.reply
        if isinstance(request, proto.StatusReport):
            rep.on_status(node, request)  # first: a refused report changes nothing
            conn.addrs = request.addrs
            conn.pool = request.pool or "default"
            return rep.status_ack(conn.pool)
        if isinstance(request, proto.RejoinedReport):
            rep.on_rejoined(node, request)
            return proto.Ack()
        if isinstance(request, proto.ReturnReport):
            rep.on_return(node, request)
            return proto.Ack()
        if isinstance(request, proto.FailedReport):
            return proto.FailedAck(paused=rep.on_failed(node, request))
        if isinstance(request, proto.DocsRequest):
            return proto.DocsAnswer(docs=tuple(rep.current_documents()))
        if isinstance(request, proto.PeersRequest):
            others = [c for c in self.conns.values() if c.node != node]
            same = [c for c in others if c.pool == conn.pool]
            rest = [c for c in others if c.pool != conn.pool]
            random.shuffle(same)
            random.shuffle(rest)
            chosen = (same + rest)[: request.count]
            return proto.PeersAnswer(
                peers=tuple(
                    proto.Peer(node=c.node, pool=c.pool, addrs=rep.introduced(c), observed=c.peer)
                    for c in chosen
                )
            )
        if isinstance(request, proto.SignalRequest):
            relayed = await self._signal(conn, request)
            rep.metrics.signals.labels(
                "relayed" if isinstance(relayed, proto.Ack) else relayed.error
            ).inc()
            return relayed
        if isinstance(request, proto.IceRequest):
            return rep.ice(node)
        raise RequestError("unknown-kind", request.KIND)  # pragma: no cover - REQUESTS

    async def _signal(
        self, conn: NodeConn, request: proto.SignalRequest
    ) -> proto.Ack | proto.ErrorAnswer:
        """Relay one blob to another connected node, within the sender's allowance."""
        now = self.replica.clock()
        bucket = conn.signals or Bucket.full(rate=SIGNAL_RATE, burst=SIGNAL_BURST, now=now)
        allowed, conn.signals = bucket.take(now)
        if not allowed:
            if not conn.signals_limited:
                conn.signals_limited = True
                self.log(
                    f"node {conn.node[:16]}... sends signals over {SIGNAL_RATE:g}/s "
                    f"(burst {SIGNAL_BURST:g}): refused until it slows (said once)"
                )
            return proto.ErrorAnswer(
                error="rate-limited",
                detail=f"signal requests over {SIGNAL_RATE:g}/s (burst {SIGNAL_BURST:g})",
            )
        target = self.conns.get(request.to)
        if target is None:
            return proto.ErrorAnswer(error="not-connected", detail="that node is not here")
        data = wire.encode(proto.SignalPush(sender=conn.node, data=request.data).to_wire())
        with trio.move_on_after(PUSH_TIMEOUT) as scope:
            try:
                await target.sock.send(target.session.seal(data))
            except WebSocketClosed:
                return proto.ErrorAnswer(error="not-connected", detail="that node just left")
        if scope.cancelled_caught:
            return proto.ErrorAnswer(error="timeout", detail="the other node is not reading")
        return proto.Ack()


class _Early(Exception):
    """A request answered from its head, before (or instead of) reading its body; the
    connection is closed after the answer.  ``why``: what ``/status`` counts it as."""

    def __init__(
        self, status: int, payload: bytes, *, ctype: str = "text/plain", why: str = ""
    ) -> None:
        super().__init__(payload.decode(errors="replace"))
        self.status, self.payload, self.ctype, self.why = status, payload, ctype, why

    @classmethod
    def json(cls, status: int, answer: dict[str, Any]) -> _Early:
        return cls(status, _json(answer), ctype="application/json")


@dataclass(frozen=True, slots=True)
class _Stored:
    """What stands for an artifact upload's body once it is read: the upload's answer."""

    status: int
    answer: dict[str, Any]


def _upload_of(request: h11.Request) -> str | None:
    """The artifact a ``PUT /v1/artifacts/<sha256>`` uploads (None for any other request)."""
    if request.method != b"PUT":
        return None
    m = _ARTIFACT.match(request.target.decode("ascii", "replace"))
    return m.group(1) if m is not None and m.group(2) is None else None


_TOO_MANY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
    b"content-length: 25\r\nconnection: close\r\n\r\ntoo many connections now\n"
)
#: Errors of accept(2) that say the system is overloaded (``trio.serve_listeners``').
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS)
)
_REQUEST_TIMEOUT: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)


def _content_length(request: h11.Request) -> int | None:
    """The request's Content-Length (h11 has checked it is digits), None if chunked."""
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class _Encoded:
    """A chunk sent compressed: a 200 with ``Content-Encoding``."""

    data: bytes
    encoding: str


@dataclass(frozen=True, kw_only=True, slots=True)
class _TryPeers:
    """The origin's "no" to a downloader beyond its cap: a 503 with a ``retry_after``
    (seconds) in the JSON body and the ``Retry-After`` header."""

    retry_after: int
    why: str = "downloader-cap"  # origin.REFUSALS

    def body(self) -> bytes:
        return _json({"error": "try-peers", "retry_after": self.retry_after, "why": self.why})


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except (OSError, AttributeError):  # gone already, or not a socket (tests' memory streams)
        return ""
    return f"{host}:{port}"
