"""The node <-> coordinator session: the signed handshake, the key exchange, the frame MAC.

One WebSocket per replica; the handshake authenticates both ends and agrees on a session
key (README "Protocol")::

    server: {"push": "challenge", "p": C, "s": sig_replica(C)}
            C = msgpack {"nonce": 32 B, "replica": keyid, "network", "ttl", "max_skew",
                         "time", "kx": the server's ephemeral X25519 public key}
    node:   {"id": 0, "t": "hello", "node": keyid, "pub": 32 B, "p": H, "s": sig_node(H),
             ["member": the node's signed member document, in an ``enrolled`` network]}
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
BLAKE2b over the payload (``mac``: the one MAC formula, which the gossip links' frames use
too, README "Gossip and links"), checked before the payload is decoded.  Why MACs and not a
signature per request: the handshake already proves the node's key; a MAC costs ~1 us where
an Ed25519 verify costs ~75 us, and the ask path is the coordinator's hot path.  What a MAC
cannot give -- proof to a third party -- nothing here needs: the audit log is the replica's
own record.

Pure: the ephemeral private keys and the nonces are arguments; the shells draw them from
``os.urandom`` and pass the bytes in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Self

import nacl.bindings
import nacl.exceptions
import nacl.signing

from . import crypto, wire
from .errors import SchemaError, VerificationError

__all__ = [
    "CHALLENGE_FIELDS",
    "CHALLENGE_TYPE",
    "HANDSHAKE_LIMITS",
    "HELLO_FIELDS",
    "HELLO_PAYLOAD_FIELDS",
    "HELLO_TYPE",
    "KX_LEN",
    "MAC_LEN",
    "MAX_MEMBER_BYTES",
    "MEMBER_FIELD",
    "NONCE_LEN",
    "Challenge",
    "Hello",
    "KeyExchange",
    "Session",
    "Signer",
    "derive_key",
    "hello_payload",
    "mac",
    "open_hello",
]

HELLO_TYPE: Final = "coord-hello"
CHALLENGE_TYPE: Final = "coord-challenge"
MAC_LEN: Final = 32
KX_LEN: Final = 32
NONCE_LEN: Final = 32
_SESSION_PERSON: Final = b"p2pupd-session1"
#: Handshake messages and their signed payloads are small; requests after the handshake
#: have the same bounds (``coordproto.REQUEST_LIMITS`` is this value).
HANDSHAKE_LIMITS: Final = wire.Limits(max_bytes=16 * 1024, max_container_len=256, max_items=2048)

_digest = wire.hex_digest()


def mac(key: bytes, *parts: bytes | bytearray | memoryview) -> bytes:
    """The MAC of every authenticated frame in the project: keyed BLAKE2b-256 over the
    concatenation of ``parts`` (the coordinator session MACs the payload alone, a link
    its direction, sequence number and payload).  One home, so the two never drift."""
    h = hashlib.blake2b(key=key, digest_size=MAC_LEN)
    for part in parts:
        h.update(part)
    return h.digest()


def derive_key(shared: bytes, context: bytes, *, person: bytes) -> bytes:
    """A 32-byte session key from an X25519 ``shared`` secret and the ``context`` both ends
    agree on (nonces, both public keys, ...); ``person`` keeps each protocol's keys apart."""
    return hashlib.blake2b(context, key=shared, digest_size=32, person=person).digest()


_nonce = wire.blob(NONCE_LEN)

HELLO_FIELDS: Final[dict[str, wire.Check]] = {
    "id": wire.uint(0),
    "t": wire.one_of("hello"),
    "node": _digest,
    "pub": wire.blob(crypto.KEY_LEN),
    "p": wire.blob(max_len=1024),
    "s": wire.blob(crypto.SIG_LEN),
}
#: The hello's one optional field: the node's member document (``core.admission``), an
#: operator-signed envelope checked by the replica, not by this module.
MEMBER_FIELD: Final = "member"
MAX_MEMBER_BYTES: Final = 4096
HELLO_PAYLOAD_FIELDS: Final[dict[str, wire.Check]] = {
    "nonce": _nonce,
    "replica": _digest,
    "network": wire.text(128),
    "node": _digest,
    "kx": wire.blob(KX_LEN),
}
CHALLENGE_FIELDS: Final[dict[str, wire.Check]] = {
    "nonce": _nonce,
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


@dataclass(frozen=True, kw_only=True, slots=True)
class Challenge:
    """The replica's first message: who it is, its token rules, and its half of the kx."""

    nonce: bytes
    replica: str
    network: str
    ttl: int
    max_skew: int
    time: float
    kx: bytes

    def __post_init__(self) -> None:
        wire.check_fields(self._fields(), CHALLENGE_FIELDS, where="challenge")

    def _fields(self) -> dict[str, Any]:
        return {
            "nonce": self.nonce,
            "replica": self.replica,
            "network": self.network,
            "ttl": self.ttl,
            "max_skew": self.max_skew,
            "time": self.time,
            "kx": self.kx,
        }

    def to_payload(self) -> bytes:
        return wire.encode(self._fields())

    def sign(self, signer: Signer) -> bytes:
        """The whole challenge message, signed by the replica."""
        payload = self.to_payload()
        sig = signer.sign(CHALLENGE_TYPE, payload)
        return wire.encode({"push": "challenge", "p": payload, "s": sig})

    @classmethod
    def open(
        cls, raw: bytes, replica_keys: Mapping[str, bytes] | None, *, limits: wire.Limits
    ) -> Self:
        """A challenge message checked against the root's coordinator keys (``None``: the
        signature is not checked -- only load generators do that).  Raises ``WireError``
        or ``VerificationError``."""
        first = wire.decode(raw, limits)
        if not isinstance(first, dict) or first.get("push") != "challenge":
            raise SchemaError("expected a challenge")
        payload, sig = first.get("p"), first.get("s")
        if not isinstance(payload, bytes) or not isinstance(sig, bytes):
            raise SchemaError("bad challenge")
        fields = wire.check_fields(
            wire.decode(payload, HANDSHAKE_LIMITS), CHALLENGE_FIELDS, where="challenge"
        )
        if replica_keys is not None:
            pub = replica_keys.get(fields["replica"])
            if pub is None:
                raise VerificationError(
                    "the challenge names a key that is not a coordinator's", rule="challenge"
                )
            if not crypto.verify_signature(pub, CHALLENGE_TYPE, payload, sig):
                raise VerificationError(
                    "the challenge is not signed by its replica", rule="challenge"
                )
        return cls(**fields)


def hello_payload(*, nonce: bytes, replica: str, network: str, node: str, kx: bytes) -> bytes:
    return wire.encode(
        {"nonce": nonce, "replica": replica, "network": network, "node": node, "kx": kx}
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class Hello:
    """The node's answer to a challenge, as the server accepted it."""

    node: str
    pub: bytes
    session: Session
    #: The member document the node sent (unverified bytes), or None.
    member: bytes | None = None


def sign_hello(
    signer: Signer, challenge: Challenge, kx: KeyExchange, *, member: bytes | None = None
) -> bytes:
    """The node's hello message for ``challenge`` (the node's side), with its member
    document if it has one.  The member document is outside the signed payload: it is
    signed by the operator already and names the node, so it cannot be lent to another."""
    payload = hello_payload(
        nonce=challenge.nonce,
        replica=challenge.replica,
        network=challenge.network,
        node=signer.keyid,
        kx=kx.public,
    )
    sig = signer.sign(HELLO_TYPE, payload)
    hello: dict[str, Any] = {
        "id": 0,
        "t": "hello",
        "node": signer.keyid,
        "pub": signer.public_key,
        "p": payload,
        "s": sig,
    }
    if member is not None:
        hello[MEMBER_FIELD] = member
    return wire.encode(hello)


def open_hello(raw: bytes, *, nonce: bytes, replica: str, network: str, kx: KeyExchange) -> Hello:
    """Check a node's hello against the challenge this server sent (the server's side).

    The node id must be the hash of the key that signed, the signature good, and the
    signed payload must name this challenge's nonce, replica and network.  Raises
    ``WireError`` or ``VerificationError``.
    """
    obj = wire.decode(raw, HANDSHAKE_LIMITS)
    member: bytes | None = None
    if isinstance(obj, dict) and MEMBER_FIELD in obj:
        obj = dict(obj)
        member = wire.blob(max_len=MAX_MEMBER_BYTES)(MEMBER_FIELD, obj.pop(MEMBER_FIELD))
    hello = wire.check_fields(obj, HELLO_FIELDS, where="hello")
    if crypto.keyid(hello["pub"]) != hello["node"]:
        raise VerificationError("hello: node id is not sha256 of the key", rule="keyid-mismatch")
    if not crypto.verify_signature(hello["pub"], HELLO_TYPE, hello["p"], hello["s"]):
        raise VerificationError("hello: bad signature", rule="signature")
    payload = wire.check_fields(
        wire.decode(hello["p"], HANDSHAKE_LIMITS), HELLO_PAYLOAD_FIELDS, where="hello"
    )
    expected = {"nonce": nonce, "replica": replica, "network": network, "node": hello["node"]}
    if {k: payload[k] for k in expected} != expected:
        raise VerificationError("hello: signed for another challenge", rule="challenge")
    session = kx.session(payload["kx"], nonce=nonce, node_kx=payload["kx"], server_kx=kx.public)
    return Hello(node=hello["node"], pub=hello["pub"], session=session, member=member)


class KeyExchange:
    """One side's ephemeral X25519 key for one connection (``private``: 32 random bytes
    the shell drew for this connection)."""

    def __init__(self, private: bytes) -> None:
        if len(private) != KX_LEN:
            raise ValueError("key exchange: the private key is 32 bytes")
        self._private = private
        self.public: bytes = nacl.bindings.crypto_scalarmult_base(private)

    def shared(self, peer: bytes) -> bytes:
        """X25519 with the peer's public key; a malformed or low-order key (an all-zero
        result) raises ``VerificationError`` (rule ``kx``)."""
        if len(peer) != KX_LEN:
            raise VerificationError("key exchange: bad public key", rule="kx")
        try:
            shared = nacl.bindings.crypto_scalarmult(self._private, peer)
        except nacl.exceptions.RuntimeError:
            raise VerificationError("key exchange: degenerate key", rule="kx") from None
        if shared == bytes(32):
            raise VerificationError("key exchange: degenerate key", rule="kx")
        return shared

    def session(self, peer: bytes, *, nonce: bytes, node_kx: bytes, server_kx: bytes) -> Session:
        context = nonce + node_kx + server_kx
        return Session(derive_key(self.shared(peer), context, person=_SESSION_PERSON))


class Session:
    """The MAC key of one authenticated connection (both directions)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def mac(self, payload: bytes) -> bytes:
        return mac(self._key, payload)

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
