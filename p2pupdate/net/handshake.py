"""The link handshake: each side proves its node key by signing the other's nonce, and
both agree on a session key that authenticates every later frame.

No IO here (the links run it over their streams).  Two frames each way, sent concurrently::

    -> Hello {v: 2, node: keyid (32 B), pub: Ed25519 key (32 B), nonce: 32 random bytes,
              kx: an ephemeral X25519 public key (32 B), fresh for this connection}
    <- Hello {...the other side's...}
    -> Proof {sig}   sig = Ed25519 over signing_input("link-proof", transcript)
    <- Proof {sig}

``transcript`` = role || signer id || verifier id || signer nonce || verifier nonce
|| signer kx || verifier kx [|| signer cert || verifier cert], where role is ``b"dial"``
for the side that opened the connection and ``b"accept"`` for the other.  The bracketed
part is the *channel binding* of ``rtc`` links: the SHA-256 fingerprints of both DTLS
certificates of the channel the handshake runs in, each side's own first.  Whoever relays
the WebRTC signaling could, if it could alter the SDP, put its own certificate on both legs
and sit in the middle; with the binding each side signs the certificates *it* sees, so a
proof made on one leg does not verify on the other (tcp and memory links have no
certificate and bind nothing).  The signed bytes start with the document prefix and the
type ``link-proof``, which no document has, so a proof can never pass for a document nor a
document for a proof (the domain separation of README "Trust model").  Binding both ids,
both nonces, both kx keys and the role means a proof is good for this one connection, in
this one direction: a recorded proof fails against a fresh nonce, a proof reflected back at
its signer names the wrong role, and a kx key swapped on the path fails both proofs.

**The session key** (``session_key``) is ``core.session.derive_key`` of the X25519 secret
of the two kx keys over the dialer's transcript (ids, nonces, kx keys, binding, dialer
first), so it is fresh per connection and known to the two ends only.  After the proofs
every frame either way is ``mac (32 B) || payload`` (``FrameMac``), the MAC
``core.session.mac(key, sender role, u64 sequence number, payload)`` -- the coordinator
session's formula, one home.  The roles differ and neither is a prefix of the other and
the number is fixed-width, so the MAC input is unambiguous.  The sequence number is not
sent: each end counts, so a frame changed, dropped, reordered or replayed on the path (or
reflected back at its sender, whose role differs) fails its MAC, and the link closes with
``FrameAlteredError``.  What this does not give is confidentiality: gossip is public
(signed documents, views, push-sum shares), so frames are authenticated, not encrypted.
Version 1 hellos (no kx, unauthenticated frames) are refused by name.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from ..core import session as sess
from ..core import wire
from ..core.crypto import KEY_LEN, SIG_LEN, SigningKey, signing_input, verify_signature
from ..core.errors import VerificationError, WireError
from .errors import (
    FrameAlteredError,
    HandshakeError,
    HandshakeKeyError,
    HandshakeReplayError,
    PeerMismatchError,
)

VERSION: Final = 2
#: An ephemeral X25519 public key (``Hello.kx``).
KX_LEN: Final = sess.KX_LEN
#: The MAC in front of every frame after the handshake.
MAC_LEN: Final = sess.MAC_LEN
_LINK_PERSON: Final = b"p2pupd-link2"
_SEQ: Final = struct.Struct(">Q")
PROOF_TYPE: Final = "link-proof"
NONCE_LEN: Final = 32
#: One certificate in a channel binding: a SHA-256 fingerprint.
CERT_FINGERPRINT_LEN: Final = 32
#: Handshake frames are tiny; anything bigger is refused before it is buffered.
MAX_HANDSHAKE_FRAME: Final = 256
_LIMITS: Final = wire.Limits(
    max_bytes=MAX_HANDSHAKE_FRAME, max_depth=1, max_container_len=8, max_str_len=16,
    max_bin_len=64, max_items=16,
)  # fmt: skip
ROLE_DIAL: Final = b"dial"
ROLE_ACCEPT: Final = b"accept"


@dataclass(frozen=True, kw_only=True, slots=True)
class Hello:
    """Who I claim to be, and the nonce you must sign."""

    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "v": wire.uint(255),
        "node": wire.blob(32),
        "pub": wire.blob(KEY_LEN),
        "nonce": wire.blob(NONCE_LEN),
        "kx": wire.blob(KX_LEN),
    }
    node: bytes
    pub: bytes
    nonce: bytes
    kx: bytes
    v: int = VERSION

    def to_wire(self) -> bytes:
        return wire.encode(
            {"v": self.v, "node": self.node, "pub": self.pub, "nonce": self.nonce, "kx": self.kx}
        )

    @classmethod
    def from_wire(cls, data: bytes) -> Hello:
        try:
            raw = wire.decode(data, _LIMITS)
        except WireError as exc:
            raise HandshakeError(f"malformed handshake hello: {exc.message}") from exc
        v = raw.get("v") if isinstance(raw, dict) else None
        if v == 1 or (isinstance(raw, dict) and "kx" not in raw and "nonce" in raw):
            raise HandshakeError(
                "peer speaks link handshake v1 (no key exchange, so no frame MACs); "
                f"this node needs v{VERSION}: upgrade the peer"
            )
        f = _check(raw, cls.FIELDS, "hello")
        if f["v"] != VERSION:
            raise HandshakeError(f"handshake version {f['v']}; this node speaks {VERSION}")
        return cls(node=f["node"], pub=f["pub"], nonce=f["nonce"], kx=f["kx"], v=f["v"])

    @property
    def node_id(self) -> str:
        return self.node.hex()


@dataclass(frozen=True, kw_only=True, slots=True)
class Proof:
    """My signature over the transcript, your nonce included."""

    FIELDS: ClassVar[dict[str, wire.Check]] = {"sig": wire.blob(SIG_LEN)}
    sig: bytes

    def to_wire(self) -> bytes:
        return wire.encode({"sig": self.sig})

    @classmethod
    def from_wire(cls, data: bytes) -> Proof:
        return cls(sig=_decode(data, cls.FIELDS, "proof")["sig"])


def _decode(data: bytes, fields: dict[str, wire.Check], what: str) -> dict[str, Any]:
    try:
        raw = wire.decode(data, _LIMITS)
    except WireError as exc:
        raise HandshakeError(f"malformed handshake {what}: {exc.message}") from exc
    return _check(raw, fields, what)


def _check(raw: Any, fields: dict[str, wire.Check], what: str) -> dict[str, Any]:
    try:
        return wire.check_fields(raw, fields, where=f"handshake {what}")
    except WireError as exc:
        raise HandshakeError(f"malformed handshake {what}: {exc.message}") from exc


def hello_for(key: SigningKey, nonce: bytes, kx: bytes) -> Hello:
    """``kx``: this connection's ephemeral X25519 public key (``KeyExchange.public``)."""
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"a handshake nonce is {NONCE_LEN} bytes")
    if len(kx) != KX_LEN:
        raise ValueError(f"a handshake kx key is {KX_LEN} bytes")
    return Hello(node=bytes.fromhex(key.keyid), pub=key.public_key, nonce=nonce, kx=kx)


def channel_binding(signer_cert: bytes, verifier_cert: bytes) -> bytes:
    """The certificates of the channel, the signer's first (see the module docstring)."""
    if len(signer_cert) != CERT_FINGERPRINT_LEN or len(verifier_cert) != CERT_FINGERPRINT_LEN:
        raise ValueError(f"a channel binding is two {CERT_FINGERPRINT_LEN}-byte fingerprints")
    return signer_cert + verifier_cert


def transcript(role: bytes, signer: Hello, verifier: Hello, binding: bytes = b"") -> bytes:
    return (
        role
        + signer.node
        + verifier.node
        + signer.nonce
        + verifier.nonce
        + signer.kx
        + verifier.kx
        + binding
    )


def prove(key: SigningKey, role: bytes, mine: Hello, theirs: Hello, binding: bytes = b"") -> Proof:
    """``binding``: ``channel_binding(my cert, their cert)`` on an rtc link, else empty."""
    _, sig = key.sign(PROOF_TYPE, transcript(role, mine, theirs, binding))
    return Proof(sig=sig)


class NonceCache:
    """Nonces recently presented by peers; a second presentation is a replay.

    Bounded (oldest forgotten first).  One per node, shared by its listener and dialer.
    """

    def __init__(self, size: int = 65_536) -> None:
        self._size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def check_and_add(self, nonce: bytes) -> None:
        if nonce in self._seen:
            raise HandshakeReplayError("handshake nonce seen before (replayed handshake)")
        self._seen[nonce] = None
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)


def check_hello(
    theirs: Hello,
    mine: Hello,
    *,
    expected_peer: str | None,
    nonces: NonceCache | None,
) -> None:
    """Everything about the other side's hello that can be checked before its proof."""
    if hashlib.sha256(theirs.pub).digest() != theirs.node:
        raise HandshakeKeyError("peer's node id is not sha256 of the key it presents")
    if theirs.nonce == mine.nonce:
        raise HandshakeReplayError("peer sent our own nonce back (reflection)")
    if theirs.kx == mine.kx:
        raise HandshakeReplayError("peer sent our own kx key back (reflection)")
    if theirs.node == mine.node:
        raise HandshakeKeyError("peer claims to be this very node")
    if expected_peer is not None and theirs.node_id != expected_peer:
        raise PeerMismatchError(f"dialed {expected_peer[:16]}..., reached {theirs.node_id[:16]}...")
    if nonces is not None:
        nonces.check_and_add(theirs.nonce)


def check_proof(
    proof: Proof, *, role: bytes, theirs: Hello, mine: Hello, binding: bytes = b""
) -> None:
    """Their signature over (their role, their id, our id, their nonce, our nonce), and on an
    rtc link ``binding`` = ``channel_binding(their cert, my cert)`` as *this* side sees them."""
    signed = transcript(role, theirs, mine, binding)
    if not verify_signature(theirs.pub, PROOF_TYPE, signed, proof.sig):
        what = "the certificates of this channel" if binding else "the key it presented"
        raise HandshakeKeyError(f"peer's proof does not verify under {what}")


def session_key(
    kx: sess.KeyExchange, *, dial: Hello, accept: Hello, dialer: bool, binding: bytes = b""
) -> bytes:
    """The link's session key (module docstring), the same on both ends: ``kx`` is this
    side's ephemeral key, ``binding`` the channel binding as the *dialer* signs it
    (``channel_binding(dialer's cert, acceptor's cert)``) or empty.  A degenerate peer kx
    key raises ``HandshakeKeyError``."""
    theirs = accept if dialer else dial
    try:
        shared = kx.shared(theirs.kx)
    except VerificationError as exc:
        raise HandshakeKeyError(f"peer's key exchange key is unusable: {exc.message}") from exc
    return sess.derive_key(
        shared, transcript(ROLE_DIAL, dial, accept, binding), person=_LINK_PERSON
    )


class FrameMac:
    """Seals and opens the frames of one link after its handshake (module docstring).

    ``tag`` is called for each outgoing frame in the order the frames go on the wire (the
    caller holds its send lock), ``open`` for each incoming frame in arrival order: each
    keeps its own direction's sequence number.
    """

    def __init__(self, key: bytes, *, role: bytes, peer: str) -> None:
        self._key = key
        self._out_label = role
        self._in_label = ROLE_ACCEPT if role == ROLE_DIAL else ROLE_DIAL
        self._peer = peer
        self._out_seq = 0
        self._in_seq = 0

    def tag(self, payload: bytes | memoryview) -> bytes:
        """The MAC to put in front of the next outgoing ``payload``."""
        mac = sess.mac(self._key, self._out_label, _SEQ.pack(self._out_seq), payload)
        self._out_seq += 1
        return mac

    def open(self, frame: bytes) -> bytes:
        """The payload of the next incoming frame; ``FrameAlteredError`` if its MAC fails
        (after which the link must close: the counters are out of step for good)."""
        seq = self._in_seq
        if len(frame) < MAC_LEN:
            raise FrameAlteredError(
                f"frame #{seq} from {self._peer[:12]} is shorter than its MAC: "
                "the peer or the path altered a frame"
            )
        view = memoryview(frame)
        payload = view[MAC_LEN:]
        if not hmac.compare_digest(
            view[:MAC_LEN], sess.mac(self._key, self._in_label, _SEQ.pack(seq), payload)
        ):
            raise FrameAlteredError(
                f"frame #{seq} from {self._peer[:12]} fails its MAC: the peer or the path "
                "altered a frame (changed, dropped, reordered or replayed it)"
            )
        self._in_seq = seq + 1
        return bytes(payload)


__all__ = [
    "CERT_FINGERPRINT_LEN",
    "KX_LEN",
    "MAC_LEN",
    "MAX_HANDSHAKE_FRAME",
    "NONCE_LEN",
    "PROOF_TYPE",
    "ROLE_ACCEPT",
    "ROLE_DIAL",
    "FrameMac",
    "Hello",
    "NonceCache",
    "Proof",
    "channel_binding",
    "check_hello",
    "check_proof",
    "hello_for",
    "prove",
    "session_key",
    "signing_input",
    "transcript",
]
