"""Ed25519 signatures, the signing envelope, key ids and key-file encodings.

The rules of README "Trust model", exactly:

* Envelope = msgpack map ``{"t": type, "p": payload bytes, "s": [[keyid, sig], ...]}``.
* Signed bytes = ``b"p2pupdate/v1\\x00" + t.encode() + b"\\x00" + p``.  The type is inside the
  signed bytes, so a signature over a scope token can never be replayed as a departure token.
* Signatures are verified over the raw ``p`` bytes as received, *before* ``p`` is decoded;
  nothing is ever re-encoded to be verified.
* ``keyid`` = lowercase hex sha256 of the raw 32-byte public key; a node's id is its keyid.
* PyNaCl (libsodium) is the only verifier.  ``cryptography`` is used only to read and write
  PEM key files (PKCS#8 private, SubjectPublicKeyInfo public), never to verify -- and only
  for a file not in the one form this module writes (RFC 8410's fixed DER, one PEM block):
  that form is encoded and read here, so a node that loads its own key never imports it
  (~8 MB of a daemon's RSS: README "A small box").

Key *files* are bytes in, bytes out here; the shell reads and writes them (mode 0600).
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import nacl.exceptions
import nacl.signing

from . import wire
from .errors import KeyFileError, SchemaError, SignatureError, WrongTypeError

SIGNING_PREFIX: Final = b"p2pupdate/v1\x00"
SIG_LEN: Final = 64
KEY_LEN: Final = 32
#: Most signatures an envelope may carry: as many as a root may list keys, so whatever a
#: valid root allows can always be signed by every key it names.
MAX_SIGS: Final = 64
#: Document and message type names: short ASCII, no NUL.
MAX_TYPE_LEN: Final = 32


def keyid(public_key: bytes) -> str:
    """Lowercase hex sha256 of the raw 32-byte Ed25519 public key."""
    if len(public_key) != KEY_LEN:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(public_key).hexdigest()


def signing_input(type_: str, payload: bytes) -> bytes:
    """The exact bytes that are signed: prefix, type, NUL, payload."""
    return SIGNING_PREFIX + type_.encode("ascii") + b"\x00" + payload


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    """An Ed25519 private key (32-byte seed) with its public half and id."""

    seed: bytes
    #: libsodium's expanded key, derived once (deriving it costs as much as a signature).
    _nacl: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != KEY_LEN:
            raise ValueError("an Ed25519 seed is 32 bytes")
        object.__setattr__(self, "_nacl", nacl.signing.SigningKey(self.seed))

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        return cls(seed=bytes(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self._nacl.verify_key)

    @property
    def keyid(self) -> str:
        return keyid(self.public_key)

    def sign(self, type_: str, payload: bytes) -> tuple[str, bytes]:
        sig = self._nacl.sign(signing_input(type_, payload)).signature
        return self.keyid, bytes(sig)

    def __repr__(self) -> str:  # never print the seed
        return f"SigningKey(keyid={self.keyid[:16]}...)"


def verify_signature(public_key: bytes, type_: str, payload: bytes, sig: bytes) -> bool:
    """True iff ``sig`` is a valid Ed25519 signature by ``public_key`` over the input."""
    if len(public_key) != KEY_LEN or len(sig) != SIG_LEN:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(signing_input(type_, payload), sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


# -- envelope ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """A signed document as received: type, raw payload bytes, signatures."""

    type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]

    def to_wire(self) -> bytes:
        return wire.encode(
            {"t": self.type, "p": self.payload, "s": [[k, s] for k, s in self.signatures]}
        )

    @classmethod
    def from_wire(cls, data: bytes, limits: wire.Limits = wire.DOCUMENT_LIMITS) -> Envelope:
        obj = wire.decode(data, limits)
        fields = wire.check_fields(
            obj,
            {
                "t": wire.text(MAX_TYPE_LEN, nonempty=True),
                "p": wire.blob(max_len=limits.max_bytes),
                "s": wire.array(wire.array(_sig_part, max_len=2), max_len=MAX_SIGS),
            },
            where="envelope",
        )
        sigs: list[tuple[str, bytes]] = []
        for i, pair in enumerate(fields["s"]):
            if len(pair) != 2 or not isinstance(pair[0], str) or not isinstance(pair[1], bytes):
                raise SchemaError(f"envelope: signature {i} must be [keyid, 64-byte signature]")
            kid, sig = pair
            wire.hex_digest()(f"s[{i}] keyid", kid)
            if len(sig) != SIG_LEN:
                raise SchemaError(f"envelope: signature {i} is {len(sig)} bytes, expected 64")
            sigs.append((kid, sig))
        t = fields["t"]
        if not t.isascii() or "\x00" in t:
            raise SchemaError("envelope: type must be ASCII without NUL")
        return cls(type=t, payload=fields["p"], signatures=tuple(sigs))

    @classmethod
    def sign(cls, type_: str, payload: bytes, keys: Iterable[SigningKey]) -> Envelope:
        return cls(
            type=type_, payload=payload, signatures=tuple(k.sign(type_, payload) for k in keys)
        )

    def add_signatures(self, keys: Iterable[SigningKey]) -> Envelope:
        """The same document with more signatures (quorum: each replica adds its own)."""
        extra = tuple(k.sign(self.type, self.payload) for k in keys)
        return Envelope(type=self.type, payload=self.payload, signatures=self.signatures + extra)

    def valid_keyids(self, keys: Mapping[str, bytes]) -> frozenset[str]:
        """Distinct known keys with a valid signature.  Unknown keys are ignored."""
        good: set[str] = set()
        for kid, sig in self.signatures:
            if kid in good or kid not in keys:
                continue
            if verify_signature(keys[kid], self.type, self.payload, sig):
                good.add(kid)
        return frozenset(good)

    def verify(
        self,
        *,
        expected_type: str,
        keys: Mapping[str, bytes],
        allowed: Iterable[str],
        threshold: int,
        role: str,
    ) -> frozenset[str]:
        """Check type and a threshold of valid signatures by distinct allowed keys.

        ``keys`` maps keyid -> raw public key (already checked to match); ``allowed`` is the
        role's key ids.  The same signature repeated, or one key listed twice, counts once.
        Returns the set of key ids that signed.
        """
        if self.type != expected_type:
            raise WrongTypeError(
                f"document of type {self.type!r} used where {expected_type!r} is required"
            )
        if threshold < 1:
            raise SignatureError(f"role {role!r} has threshold {threshold}; it must be >= 1")
        allowed_set = frozenset(allowed)
        role_keys = {k: v for k, v in keys.items() if k in allowed_set}
        good = self.valid_keyids(role_keys)
        if len(good) < threshold:
            raise SignatureError(
                f"{len(good)} of {threshold} required valid {role} signatures "
                f"({len(self.signatures)} present)"
            )
        return good


def _sig_part(name: str, v: object) -> object:
    if not isinstance(v, str | bytes):
        raise SchemaError(f"field {name!r}: expected keyid string or signature bytes")
    return v


# -- key files --------------------------------------------------------------------------


#: The DER of an Ed25519 key in the form ``cryptography`` writes it (RFC 8410): an
#: unencrypted PKCS#8 v1 ``PrivateKeyInfo`` and a ``SubjectPublicKeyInfo``, each a fixed
#: prefix and the 32 key bytes.
_PKCS8_PREFIX: Final = bytes.fromhex("302e020100300506032b657004220420")
_SPKI_PREFIX: Final = bytes.fromhex("302a300506032b6570032100")
_PRIVATE_LABEL: Final = b"PRIVATE KEY"
_PUBLIC_LABEL: Final = b"PUBLIC KEY"


def _pem(label: bytes, der: bytes) -> bytes:
    body = binascii.b2a_base64(der, newline=False)
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, lines, label)


def _fixed_form(data: bytes, label: bytes, prefix: bytes) -> bytes | None:
    """The 32 key bytes if ``data`` is, after optional comment lines, exactly one PEM block
    ``label`` whose DER is ``prefix`` and 32 bytes; None for anything else (which
    ``cryptography`` then judges, as it judged every key file before)."""
    begin, end = b"-----BEGIN %s-----\n" % label, b"\n-----END %s-----" % label
    at = data.find(begin)
    if at < 0 or (at > 0 and data[at - 1 : at] != b"\n") or data.count(b"-----BEGIN") != 1:
        return None
    stop = data.find(end, at)
    if stop < 0 or data[stop + len(end) :].strip():
        return None
    try:
        der = binascii.a2b_base64(b"".join(data[at + len(begin) : stop].split()), strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != len(prefix) + 32 or not der.startswith(prefix):
        return None
    return der[len(prefix) :]


def private_key_to_pem(key: SigningKey) -> bytes:
    """PKCS#8 PEM, the bytes ``cryptography`` writes (a test compares them)."""
    return _pem(_PRIVATE_LABEL, _PKCS8_PREFIX + key.seed)


def public_key_to_pem(public_key: bytes) -> bytes:
    """SubjectPublicKeyInfo PEM, the bytes ``cryptography`` writes (a test compares them)."""
    if len(public_key) == 32:
        return _pem(_PUBLIC_LABEL, _SPKI_PREFIX + public_key)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pub = ed25519.Ed25519PublicKey.from_public_bytes(public_key)  # raises, as it always did
    return pub.public_bytes(  # pragma: no cover - 32 bytes are taken above
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


MAX_PEM_BYTES: Final = 16 * 1024


def private_key_from_pem(data: bytes) -> SigningKey:
    """Read an unencrypted PKCS#8 PEM Ed25519 private key."""
    if len(data) > MAX_PEM_BYTES:
        raise KeyFileError("key file is too large to be an Ed25519 key")
    seed = _fixed_form(data, _PRIVATE_LABEL, _PKCS8_PREFIX)
    if seed is not None:
        return SigningKey.from_seed(seed)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        priv = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise KeyFileError("key file is encrypted; p2pupdate needs an unencrypted key") from exc
    except (ValueError, Exception) as exc:
        raise KeyFileError("not a PEM private key") from exc
    if not isinstance(priv, ed25519.Ed25519PrivateKey):
        raise KeyFileError("not an Ed25519 private key")
    seed = priv.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return SigningKey.from_seed(seed)


def public_key_from_pem(data: bytes) -> bytes:
    """Read a SubjectPublicKeyInfo PEM Ed25519 public key; returns the raw 32 bytes."""
    if len(data) > MAX_PEM_BYTES:
        raise KeyFileError("key file is too large to be an Ed25519 key")
    raw = _fixed_form(data, _PUBLIC_LABEL, _SPKI_PREFIX)
    if raw is not None:
        return raw
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        pub = serialization.load_pem_public_key(data)
    except (ValueError, Exception) as exc:
        raise KeyFileError("not a PEM public key") from exc
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise KeyFileError("not an Ed25519 public key")
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
