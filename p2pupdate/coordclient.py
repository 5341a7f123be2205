"""The node <-> coordinator protocol, both ends' shared pieces, and the node's client.

One WebSocket per replica (path ``/v1/node``), binary messages, each one msgpack map
decoded with the core's strict ``wire`` limits.  The handshake authenticates both ends
and agrees on a session key::

    server: {"push": "challenge", "p": C, "s": sig_replica(C)}
            C = msgpack {"nonce": 32 B, "replica": keyid, "network", "ttl", "max_skew",
                         "time", "kx": the server's ephemeral X25519 public key}
    node:   {"id": 0, "t": "hello", "node": keyid, "pub": 32 B, "p": H, "s": sig_node(H)}
            H = msgpack {"nonce", "replica", "network", "node", "kx": the node's X25519 key}
    server: mac || {"id": 0, "ok": true}                (or a plain error, then close)

Signatures are Ed25519 over the envelope's signing input (``crypto.signing_input``) with
the types ``coord-challenge`` / ``coord-hello``, which no document has: neither can be
replayed as a document, nor the other way round.  The node checks the challenge against
its root (a coordinator key signed it); the server checks the hello names its own fresh
nonce and ephemeral key, so it cannot be replayed to another replica or later, and that
the node's id is the hash of the key that signed.  The session key is
``BLAKE2b(X25519(eph_node, eph_server), nonce, both kx)``: known to the two ends only,
fresh per connection.

After that every message in both directions is ``mac (32 B) || payload``, the MAC a keyed
BLAKE2b over the payload, checked before the payload is decoded::

    node:   payload = msgpack {"t": kind, "seq": n, ...kind's fields}
    server: payload = msgpack {"id": n, "ok": true, ...answer}
                    | msgpack {"id": n, "ok": false, "error", "detail"}
                    | msgpack {"push": "nudge" | "doc" | "signal", ...}   (any time)

Why MACs and not a signature per request: the handshake already proves the node's key;
a MAC costs ~1 us where an Ed25519 verify costs ~75 us, and the ask path is the
coordinator's hot path.  What a MAC cannot give -- proof to a third party -- nothing here
needs: the audit log is the replica's own record.  ``seq`` strictly increases per
connection (replays are refused) and is the answer's ``id``; the kind is inside what is
MACed, so one kind's request cannot pass for another's.  Request kinds
(``REQUEST_FIELDS`` is the schema): ``status`` (version, state, pool, the node's gossip
aggregate estimate, why gates 1-2 hold it), ``ask`` (a proposed departure token payload +
the node's capacity and load), ``rejoined`` / ``failed`` / ``return`` (end a lease;
failures feed the circuit breaker), ``docs`` (current allowlist, scope, release
records), ``peers`` (introductions), ``signal`` (relay opaque bytes to another connected
node: WebRTC signaling).

**Quorum.**  A token needs ``q`` replica signatures over the *same* payload, so the node
proposes the payload (node, pool, from/to, allowlist version, scope serial, a random
nonce, ``issued`` = its clock, ``expires = issued + ttl``) and asks every replica in
parallel; each replica checks it, decides with ``coordinator.policy``, and answers with
its signature alone.  The node combines ``q`` of them into one envelope and verifies the
result like any other document before it drains.  Grants it cannot use (fewer than
``q``) are handed back at once, so a partial grant does not hold capacity until TTL.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import os
import random
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nacl.bindings
import nacl.exceptions
import nacl.signing
import trio
import wsproto
import wsproto.events as wse
import wsproto.utilities

from .core import crypto, wire
from .core import documents as docs
from .core.errors import P2PUpdateError, SchemaError, VerificationError, WireError
from .core.trust import TrustStore

NODE_PATH: Final = "/v1/node"
HELLO_TYPE: Final = "coord-hello"
CHALLENGE_TYPE: Final = "coord-challenge"
MAC_LEN: Final = 32
KX_LEN: Final = 32
_SESSION_PERSON: Final = b"p2pupd-session1"
NONCE_LEN: Final = 32
TOKEN_NONCE_LEN: Final = 16

#: Node -> server messages (small; a signaling blob is the largest).
REQUEST_LIMITS: Final = wire.Limits(max_bytes=16 * 1024, max_container_len=256, max_items=2048)
#: Server -> node messages: a ``docs`` answer carries release records (up to ~1 MiB each).
ANSWER_LIMITS: Final = wire.Limits(
    max_bytes=8 * 1024 * 1024,
    max_bin_len=2 * 1024 * 1024,
    max_container_len=4096,
    max_items=20_000,
)
MAX_SIGNAL: Final = 8 * 1024
MAX_PEERS: Final = 32


class CoordinatorUnavailable(Exception):
    """No usable answer from a replica: not connected, closed, timed out, or garbled.

    The one exception the client's public methods raise (STYLE.md 7); refusals are
    answers, not errors.
    """


class ProtocolError(Exception):
    """The other end broke the protocol (bad frame, bad signature, wrong order)."""


# -- schemas ----------------------------------------------------------------------------


def optional(check: wire.Check) -> wire.Check:
    def inner(name: str, v: Any) -> Any:
        return None if v is None else check(name, v)

    return inner


_HEX64 = re.compile(r"[0-9a-f]{64}")


def hex_digest() -> wire.Check:
    """``wire.hex_digest`` with a regex: the same rule, ~20x faster (the ask path checks
    five digests per request)."""

    def check(name: str, v: Any) -> str:
        if type(v) is not str or _HEX64.fullmatch(v) is None:
            raise SchemaError(f"field {name!r}: expected 64 lowercase hex chars")
        return v

    return check


_session = wire.blob(NONCE_LEN)
_digest = hex_digest()
_reason = wire.text(512)

ESTIMATE_FIELDS: Final[dict[str, wire.Check]] = {
    "capacity": wire.nonneg_float(),
    "load": wire.nonneg_float(),
    "serving": wire.uint(2**40),
    "age": wire.nonneg_float(1e9),
}
HELD_FIELDS: Final[dict[str, wire.Check]] = {"gate": wire.text(32), "reason": wire.text(64)}

#: The fields of each request kind's payload (besides ``session`` and ``seq``).
REQUEST_FIELDS: Final[dict[str, dict[str, wire.Check]]] = {
    "status": {
        "version": wire.text(64),
        "artifact": _digest,
        "state": wire.one_of(*docs.NODE_STATES),
        "pool": wire.text(64),
        "estimate": optional(wire.record(ESTIMATE_FIELDS)),
        "held": optional(wire.record(HELD_FIELDS)),
        "addrs": wire.array(wire.text(128), 8),
    },
    "ask": {
        "token": wire.blob(max_len=2048),
        "capacity": wire.nonneg_float(),
        "load": wire.nonneg_float(),
    },
    "rejoined": {"artifact": _digest, "nonce": wire.blob(max_len=TOKEN_NONCE_LEN)},
    "failed": {
        "artifact": _digest,
        "counter": wire.uint(docs.MAX_VERSION),
        "reason": _reason,
        "nonce": wire.blob(max_len=TOKEN_NONCE_LEN),
    },
    "return": {"nonce": wire.blob(max_len=TOKEN_NONCE_LEN), "reason": _reason},
    "docs": {},
    "peers": {"count": wire.uint(MAX_PEERS)},
    "signal": {"to": _digest, "data": wire.blob(max_len=MAX_SIGNAL)},
}

#: Each kind's full payload schema (its fields + kind and sequence number).
REQUEST_SCHEMAS: Final[dict[str, dict[str, wire.Check]]] = {
    kind: {"t": wire.one_of(kind), "seq": wire.uint(2**62), **fields}
    for kind, fields in REQUEST_FIELDS.items()
}

HELLO_FIELDS: Final[dict[str, wire.Check]] = {
    "id": wire.uint(0),
    "t": wire.one_of("hello"),
    "node": _digest,
    "pub": wire.blob(crypto.KEY_LEN),
    "p": wire.blob(max_len=1024),
    "s": wire.blob(crypto.SIG_LEN),
}
HELLO_PAYLOAD_FIELDS: Final[dict[str, wire.Check]] = {
    "nonce": _session,
    "replica": _digest,
    "network": wire.text(128),
    "node": _digest,
    "kx": wire.blob(KX_LEN),
}
CHALLENGE_FIELDS: Final[dict[str, wire.Check]] = {
    "nonce": _session,
    "replica": _digest,
    "network": wire.text(128),
    "ttl": wire.uint(86400),
    "max_skew": wire.uint(3600),
    "time": wire.nonneg_float(),
    "kx": wire.blob(KX_LEN),
}


class Signer:
    """An Ed25519 key ready to sign many messages (the core's ``SigningKey.sign`` derives
    the key from its seed on every call: right for documents, too slow per request).
    Signs exactly ``crypto.signing_input(type, payload)``, so the result is the same."""

    def __init__(self, key: crypto.SigningKey) -> None:
        self._key = nacl.signing.SigningKey(key.seed)
        self.keyid = key.keyid
        self.public_key = key.public_key

    def sign(self, type_: str, payload: bytes) -> bytes:
        return bytes(self._key.sign(crypto.signing_input(type_, payload)).signature)


def hello_payload(*, nonce: bytes, replica: str, network: str, node: str, kx: bytes) -> bytes:
    return wire.encode(
        {"nonce": nonce, "replica": replica, "network": network, "node": node, "kx": kx}
    )


class KeyExchange:
    """One side's ephemeral X25519 key for one connection."""

    def __init__(self) -> None:
        self._private = os.urandom(32)
        self.public = nacl.bindings.crypto_scalarmult_base(self._private)

    def session(self, peer: bytes, *, nonce: bytes, node_kx: bytes, server_kx: bytes) -> Session:
        if len(peer) != KX_LEN:
            raise VerificationError("key exchange: bad public key", rule="kx")
        try:
            shared = nacl.bindings.crypto_scalarmult(self._private, peer)
        except nacl.exceptions.RuntimeError:
            raise VerificationError("key exchange: degenerate key", rule="kx") from None
        if shared == bytes(32):
            raise VerificationError("key exchange: degenerate key", rule="kx")
        key = hashlib.blake2b(
            nonce + node_kx + server_kx, key=shared, digest_size=32, person=_SESSION_PERSON
        ).digest()
        return Session(key)


class Session:
    """The MAC key of one authenticated connection (both directions)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def mac(self, payload: bytes) -> bytes:
        return hashlib.blake2b(payload, key=self._key, digest_size=MAC_LEN).digest()

    def seal(self, payload: bytes) -> bytes:
        return self.mac(payload) + payload

    def open(self, frame: bytes) -> bytes:
        """The payload of a sealed frame; raises ``VerificationError`` if the MAC is wrong."""
        if len(frame) <= MAC_LEN:
            raise SchemaError("frame: shorter than its MAC")
        payload = frame[MAC_LEN:]
        if not hmac.compare_digest(frame[:MAC_LEN], self.mac(payload)):
            raise VerificationError("frame: bad MAC", rule="mac")
        return payload


def seal_request(session: Session, kind: str, seq: int, fields: Any) -> bytes:
    """One request frame (the node's side)."""
    return session.seal(wire.encode({"t": kind, "seq": seq, **fields}))


def open_request(
    frame: bytes, *, session: Session, last_seq: int
) -> tuple[int, str, dict[str, Any]]:
    """Check one request frame (the server's side): ``(seq, kind, fields)``.

    The MAC is checked over the raw payload before it is decoded.  Raises ``WireError``
    (malformed: the sender's fault) or ``VerificationError``.
    """
    obj = wire.decode(session.open(frame), REQUEST_LIMITS)
    kind = obj.get("t") if isinstance(obj, dict) else None
    schema = REQUEST_SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise SchemaError(f"request: unknown kind {kind!r}")
    fields = wire.check_fields(obj, schema, where=str(kind))
    seq: int = fields["seq"]
    if seq <= last_seq:
        raise VerificationError(f"request: sequence {seq} after {last_seq}", rule="replay")
    return seq, str(kind), fields


# -- departure tokens: proposal, combination, verification ------------------------------


def propose_token(
    *,
    node: str,
    pool: str,
    from_artifact: str,
    to_artifact: str,
    allowlist_version: int,
    scope_serial: int,
    ttl: int,
    now_wall: float,
    nonce: bytes | None = None,
) -> docs.DepartureToken:
    issued = int(now_wall)
    token = docs.DepartureToken(
        node=node,
        pool=pool,
        from_artifact=from_artifact,
        to_artifact=to_artifact,
        allowlist_version=allowlist_version,
        scope_serial=scope_serial,
        nonce=nonce if nonce is not None else os.urandom(TOKEN_NONCE_LEN),
        issued=issued,
        expires=issued + ttl,
    )
    token.validate()
    return token


#: ``DepartureToken.FIELDS`` with the fast digest check.
TOKEN_FIELDS: Final[dict[str, wire.Check]] = {
    **docs.DepartureToken.FIELDS,
    "node": _digest,
    "from_artifact": _digest,
    "to_artifact": _digest,
}


def parse_token(payload: bytes) -> docs.DepartureToken:
    """``DepartureToken.from_payload``, as fast as the ask path needs (same checks)."""
    values = wire.check_fields(
        wire.decode(payload, docs.DepartureToken.LIMITS), TOKEN_FIELDS, where="departure"
    )
    token = docs.DepartureToken(**values)
    token.validate()
    return token


def combine(payload: bytes, signatures: Mapping[str, bytes]) -> bytes:
    """One departure envelope from the replicas' signatures over the same payload."""
    env = crypto.Envelope(
        type=docs.DepartureToken.TYPE,
        payload=payload,
        signatures=tuple(sorted(signatures.items())),
    )
    return env.to_wire()


def verify_departure(
    store: TrustStore,
    data: bytes,
    *,
    node: str,
    pool: str,
    from_artifact: str,
    to_artifact: str,
    allowlist_version: int,
    scope_serial: int,
    now_wall: float,
) -> docs.DepartureToken:
    """Everything a node checks before it drains (DESIGN.md 4 and 5).

    A threshold of coordinator signatures, the type, expiry, and the binding to this
    node, pool, from/to pair, allowlist version and scope serial.  Expiry is checked
    *strictly* here (no skew allowance): a lease is only worth what is left of it.
    """
    signed = store.verify(docs.DepartureToken, data, int(now_wall))
    token = signed.doc
    docs.check_binding(
        token,
        node=node,
        from_artifact=from_artifact,
        to_artifact=to_artifact,
        allowlist_version=allowlist_version,
        scope_serial=scope_serial,
    )
    if token.pool != pool:
        raise VerificationError(
            f"departure token: pool is {token.pool!r}, expected {pool!r}", rule="binding"
        )
    if now_wall >= token.expires:
        raise VerificationError("departure token: the lease has already run out", rule="expired")
    return token


def token_nonce(data: bytes | None) -> bytes:
    """The nonce of a token we hold (for ending its lease); empty if unreadable."""
    if not data:
        return b""
    try:
        env = crypto.Envelope.from_wire(data, docs.DepartureToken.LIMITS)
        token: docs.DepartureToken = docs.DepartureToken.from_payload(env.payload)
    except P2PUpdateError:
        return b""
    return token.nonce


# -- a minimal WebSocket over a trio stream (wsproto: sans-IO, like the core) -------------


class WebSocketClosed(Exception):
    pass


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


# -- one replica ----------------------------------------------------------------------------


def parse_url(url: str) -> tuple[str, int, str]:
    """``http://host:port`` or ``ws://host:port`` -> (host, port, http base URL)."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "ws") or not parts.hostname:
        raise ValueError(f"{url!r}: expected http://HOST:PORT (TLS is not built in yet)")
    port = parts.port or 8470
    return parts.hostname, port, f"http://{parts.hostname}:{port}"


@dataclass
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    answer: dict[str, Any] | None = None


Push = Callable[["ReplicaLink", dict[str, Any]], Awaitable[None]]


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
    ) -> None:
        self.url = url
        #: The coordinator keys a challenge must be signed with (None: not checked).
        self.replica_keys = replica_keys
        self.host, self.port, self.base = parse_url(url)
        self.key = key
        self.signer = Signer(key)
        self.node = key.keyid
        self.pub = key.public_key
        self.on_push = on_push
        self.on_connect = on_connect
        self.log = log
        self.rng = rng or random.Random()
        self.replica: str | None = None
        self.network: str | None = None
        self.ttl = 300
        self.max_skew = 30
        self._ws: WebSocket | None = None
        self._session: Session | None = None
        self._seq = 0
        self._waiters: dict[int, _Waiter] = {}
        self.connected = trio.Event()
        self._was_connected = False

    @property
    def is_connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve the channel, reconnect after a loss; forever."""
        task_status.started()
        delay = 0.2
        while True:
            try:
                await self.connect_once()
                delay = 0.2
                await self._read_loop()
            except (
                OSError,
                WebSocketClosed,
                ProtocolError,
                WireError,
                VerificationError,
                trio.TooSlowError,
            ) as exc:
                if self._was_connected:
                    self.log(f"coordinator {self.base}: connection lost ({exc})")
                    self._was_connected = False
            finally:
                self._disconnected()
            await trio.sleep(self.rng.uniform(delay / 2, delay))
            delay = min(delay * 2, 10.0)

    async def connect_once(self, timeout: float = 10.0) -> None:
        """Open the socket and run the handshake (raises on failure)."""
        ws = await WebSocket.connect(
            self.host, self.port, NODE_PATH, max_message=ANSWER_LIMITS.max_bytes, timeout=timeout
        )
        try:
            with trio.fail_after(timeout):
                challenge = self._check_challenge(await ws.receive())
                kx = KeyExchange()
                payload = hello_payload(
                    nonce=challenge["nonce"],
                    replica=challenge["replica"],
                    network=challenge["network"],
                    node=self.node,
                    kx=kx.public,
                )
                sig = self.signer.sign(HELLO_TYPE, payload)
                hello = {"id": 0, "t": "hello", "node": self.node, "pub": self.pub, "p": payload}
                await ws.send(wire.encode({**hello, "s": sig}))
                session = kx.session(
                    challenge["kx"],
                    nonce=challenge["nonce"],
                    node_kx=kx.public,
                    server_kx=challenge["kx"],
                )
                raw = await ws.receive()
                try:
                    answer = wire.decode(session.open(raw), ANSWER_LIMITS)
                except (WireError, VerificationError):
                    answer = wire.decode(raw, ANSWER_LIMITS)  # a refusal comes unsealed
                if not isinstance(answer, dict) or answer.get("ok") is not True:
                    raise ProtocolError(f"hello refused: {answer!r}"[:300])
        except (WireError, VerificationError) as exc:
            await ws.close()
            raise ProtocolError(f"handshake: {exc}") from None
        except BaseException:
            await ws.close()
            raise
        self.replica, self.network = challenge["replica"], challenge["network"]
        self.ttl, self.max_skew = challenge["ttl"] or 300, challenge["max_skew"]
        self._ws, self._session, self._seq = ws, session, 0
        self._was_connected = True
        self.connected.set()
        if self.on_connect is not None:
            await self.on_connect(self)

    def _check_challenge(self, raw: bytes) -> dict[str, Any]:
        """The replica's signed challenge, checked against the root's coordinator keys."""
        first = wire.decode(raw, ANSWER_LIMITS)
        if not isinstance(first, dict) or first.get("push") != "challenge":
            raise ProtocolError("expected a challenge")
        payload, sig = first.get("p"), first.get("s")
        if not isinstance(payload, bytes) or not isinstance(sig, bytes):
            raise ProtocolError("bad challenge")
        challenge = wire.check_fields(
            wire.decode(payload, REQUEST_LIMITS), CHALLENGE_FIELDS, where="challenge"
        )
        keys = self.replica_keys() if self.replica_keys is not None else None
        if keys is not None:
            pub = keys.get(challenge["replica"])
            if pub is None:
                raise ProtocolError("the challenge names a key that is not a coordinator's")
            if not crypto.verify_signature(pub, CHALLENGE_TYPE, payload, sig):
                raise ProtocolError("the challenge is not signed by its replica")
        return challenge

    async def _read_loop(self) -> None:
        ws, session = self._ws, self._session
        assert ws is not None and session is not None
        while True:
            msg = wire.decode(session.open(await ws.receive()), ANSWER_LIMITS)
            if not isinstance(msg, dict):
                raise ProtocolError("expected a map")
            if "push" in msg:
                if self.on_push is not None:
                    await self.on_push(self, msg)
                continue
            rid = msg.get("id")
            waiter = self._waiters.pop(rid, None) if isinstance(rid, int) else None
            if waiter is not None:
                waiter.answer = msg
                waiter.event.set()

    def _disconnected(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.closed = True
        self.connected = trio.Event()
        for waiter in self._waiters.values():
            waiter.event.set()
        self._waiters.clear()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def request(
        self, kind: str, fields: Mapping[str, Any], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send one request and wait for its answer (``ok`` false is returned too)."""
        ws = self._ws
        if ws is None or ws.closed:
            raise CoordinatorUnavailable(f"{self.base}: not connected")
        self._seq += 1
        seq = self._seq
        waiter = _Waiter()
        self._waiters[seq] = waiter
        try:
            assert self._session is not None
            frame = seal_request(self._session, kind, seq, fields)
            with trio.move_on_after(timeout) as scope:
                await ws.send(frame)
                await waiter.event.wait()
            if scope.cancelled_caught:
                raise CoordinatorUnavailable(f"{self.base}: no answer to {kind} in {timeout:g} s")
        except WebSocketClosed as exc:
            raise CoordinatorUnavailable(f"{self.base}: {exc}") from None
        finally:
            self._waiters.pop(seq, None)
        if waiter.answer is None:
            raise CoordinatorUnavailable(f"{self.base}: connection lost")
        return waiter.answer


# -- the quorum client the daemon uses --------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AskOutcome:
    """What asking the replicas came to: a verified token, a refusal, or an error."""

    token: bytes | None = None
    lease_ttl: float = 0.0
    gate: str = ""
    reason: str = ""
    detail: str = ""
    retry_after: float | None = None
    position: int | None = None
    error: str = ""


#: When replicas disagree, the refusal shown is the most fundamental one.
_GATE_ORDER: Final = {"allowlist": 0, "scope": 1, "breaker": 2, "capacity": 3}


class QuorumClient:
    """All replicas of one network: ask in parallel, combine ``q`` signatures, report."""

    def __init__(
        self,
        urls: Sequence[str],
        key: crypto.SigningKey,
        trust: Callable[[], TrustStore],
        *,
        on_push: Push | None = None,
        on_connect: Callable[[ReplicaLink], Awaitable[None]] | None = None,
        log: Callable[[str], None] = lambda _m: None,
        rng: random.Random | None = None,
        ask_timeout: float = 10.0,
    ) -> None:
        if not urls:
            raise ValueError("at least one coordinator URL")
        self.key = key
        self.node = key.keyid
        self.trust = trust
        self.log = log
        self.ask_timeout = ask_timeout
        self.links = [
            ReplicaLink(
                u,
                key,
                on_push=on_push,
                on_connect=on_connect,
                log=log,
                rng=rng,
                replica_keys=lambda: self.trust().root.role_keys("coordinator"),
            )
            for u in urls
        ]

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links:
                await nursery.start(link.run)
            task_status.started()

    def connected(self) -> list[ReplicaLink]:
        return [link for link in self.links if link.is_connected]

    async def wait_connected(self, count: int = 1, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while len(self.connected()) < count:
                await trio.sleep(0.02)

    @property
    def ttl(self) -> int:
        for link in self.connected():
            return link.ttl
        return 300

    async def _each(
        self, kind: str, fields: Mapping[str, Any], timeout: float
    ) -> list[tuple[ReplicaLink, dict[str, Any] | CoordinatorUnavailable]]:
        results: list[tuple[ReplicaLink, dict[str, Any] | CoordinatorUnavailable]] = []

        async def one(link: ReplicaLink) -> None:
            try:
                results.append((link, await link.request(kind, fields, timeout)))
            except CoordinatorUnavailable as exc:
                results.append((link, exc))

        async with trio.open_nursery() as nursery:
            for link in self.links:
                nursery.start_soon(one, link)
        return results

    async def report(self, kind: str, fields: Mapping[str, Any], timeout: float = 10.0) -> int:
        """Send a report to every replica; how many acknowledged it."""
        results = await self._each(kind, fields, timeout)
        return sum(1 for _link, r in results if isinstance(r, dict) and r.get("ok") is True)

    async def ask(
        self,
        *,
        pool: str,
        from_artifact: str,
        to_artifact: str,
        allowlist_version: int,
        scope_serial: int,
        capacity: float,
        load: float,
    ) -> AskOutcome:
        store = self.trust()
        role = store.root.roles["coordinator"]
        threshold = role.threshold
        now_wall = time.time()
        token = propose_token(
            node=self.node,
            pool=pool,
            from_artifact=from_artifact,
            to_artifact=to_artifact,
            allowlist_version=allowlist_version,
            scope_serial=scope_serial,
            ttl=self.ttl,
            now_wall=now_wall,
        )
        payload = token.to_payload()
        results = await self._each(
            "ask", {"token": payload, "capacity": capacity, "load": load}, self.ask_timeout
        )
        sigs: dict[str, bytes] = {}
        granted_on: list[ReplicaLink] = []
        refusals: list[dict[str, Any]] = []
        errors: list[str] = []
        for link, answer in results:
            if isinstance(answer, CoordinatorUnavailable):
                errors.append(str(answer))
                continue
            if answer.get("ok") is not True:
                errors.append(f"{link.base}: {answer.get('error')}: {answer.get('detail')}")
                continue
            if answer.get("granted") is True:
                kid, sig = answer.get("replica"), answer.get("sig")
                pub = store.root.keys.get(kid) if isinstance(kid, str) else None
                if (
                    pub is not None
                    and kid in role.keys
                    and isinstance(sig, bytes)
                    and crypto.verify_signature(pub, docs.DepartureToken.TYPE, payload, sig)
                ):
                    sigs[kid] = sig
                    granted_on.append(link)
                else:
                    errors.append(f"{link.base}: a grant whose signature does not verify")
            else:
                refusals.append(answer)
        if len(sigs) >= threshold:
            data = combine(payload, sigs)
            try:
                verify_departure(
                    store,
                    data,
                    node=self.node,
                    pool=pool,
                    from_artifact=from_artifact,
                    to_artifact=to_artifact,
                    allowlist_version=allowlist_version,
                    scope_serial=scope_serial,
                    now_wall=time.time(),
                )
            except P2PUpdateError as exc:
                await self._give_back(granted_on, token.nonce, "token-unverified")
                return AskOutcome(error=f"token did not verify: {exc.rule}: {exc}")
            return AskOutcome(token=data, lease_ttl=max(0.0, token.expires - time.time()))
        if granted_on:  # not enough for a token: hand the partial grants back at once
            await self._give_back(granted_on, token.nonce, "no-quorum")
        if refusals:
            best = min(
                refusals,
                key=lambda r: (
                    _GATE_ORDER.get(str(r.get("gate")), 9),
                    -(r.get("retry_after") or 0),
                ),
            )
            retry = best.get("retry_after")
            position = best.get("position")
            return AskOutcome(
                gate=str(best.get("gate") or "capacity"),
                reason=str(best.get("reason") or "refused"),
                detail=str(best.get("detail") or ""),
                retry_after=float(retry)
                if isinstance(retry, int | float) and math.isfinite(retry)
                else None,
                position=position if isinstance(position, int) else None,
            )
        if granted_on:
            return AskOutcome(
                gate="capacity",
                reason="no-quorum",
                detail=f"{len(sigs)} of {threshold} replica signatures",
                retry_after=5.0,
            )
        return AskOutcome(error="; ".join(errors) or "no replica answered")

    async def _give_back(self, links: list[ReplicaLink], nonce: bytes, reason: str) -> None:
        async def one(link: ReplicaLink) -> None:
            with contextlib.suppress(CoordinatorUnavailable):
                await link.request("return", {"nonce": nonce, "reason": reason}, 5.0)

        async with trio.open_nursery() as nursery:
            for link in links:
                nursery.start_soon(one, link)

    async def fetch_docs(self, timeout: float = 10.0) -> list[bytes]:
        """Every document the connected replicas hold now (allowlist, scope, releases)."""
        out: list[bytes] = []
        for link, answer in await self._each("docs", {}, timeout):
            if isinstance(answer, dict) and answer.get("ok") is True:
                for doc in answer.get("docs", []):
                    if isinstance(doc, bytes):
                        out.append(doc)
            elif isinstance(answer, dict):
                self.log(f"coordinator {link.base}: docs refused: {answer.get('detail')}")
        return out

    def fetch_artifact(self, artifact: str, dest: Path, release: docs.Release, limit: int) -> None:
        """Blocking (run in a thread): the artifact from a replica's origin, verified
        against its release record chunk by chunk, written atomically to ``dest``."""
        from .fsutil import atomic_write

        errors: list[str] = []
        for link in self.links:
            url = f"{link.base}/v1/artifacts/{artifact}"
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    data = resp.read(limit + 1)
            except OSError as exc:
                errors.append(f"{url}: {exc}")
                continue
            problem = check_artifact(data, release, limit)
            if problem:
                errors.append(f"{url}: {problem}")
                continue
            atomic_write(dest, data)
            return
        raise CoordinatorUnavailable("; ".join(errors) or "no replica")


def check_artifact(data: bytes, release: docs.Release, limit: int) -> str:
    """Why ``data`` is not the artifact ``release`` describes ("" if it is)."""
    if len(data) > limit:
        return f"more than {limit} bytes"
    if len(data) != release.length:
        return f"{len(data)} bytes, the release says {release.length}"
    for i, digest in enumerate(release.chunks):
        chunk = data[i * release.chunk_size : (i + 1) * release.chunk_size]
        if hashlib.sha256(chunk).digest() != digest:
            return f"chunk {i} does not match the release record"
    return ""
