"""A repository simulator for the trust core.

Modelled on python-tuf's ``tests/repository_simulator.py``: one ``Network`` object holds
every signing key of every role in memory and builds the documents a fleet would see.
A test stages an attack by *editing what the simulator publishes* (expire a document, sign
with the wrong key or too few keys, lower a version, re-type an envelope, rotate a stolen
key), feeds the bytes to a ``TrustStore`` and asserts the exact error type and that trust
state did not move.  Nothing here reads a clock or an RNG: keys come from fixed seeds
(``sha256(b"<role>-<n>")``) and time is ``Network.now``.

The builders do *not* validate what they build: a test can sign a root with threshold 0
or a key filed under the wrong id exactly as an attacker would, and the core must refuse it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, TypeVar

import pytest

from p2pupdate.core import wire
from p2pupdate.core.crypto import Envelope, SigningKey
from p2pupdate.core.documents import (
    ROLES,
    Allowlist,
    DepartureToken,
    Document,
    Heartbeat,
    Nudge,
    Release,
    Role,
    Root,
    Scope,
)
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.core.trust import TrustStore

#: The simulated wall clock (unix seconds, 2027-01-15).  Every default is relative to it.
NOW: Final = 1_800_000_000
MINUTE: Final = 60
HOUR: Final = 3600
DAY: Final = 86_400
YEAR: Final = 365 * DAY

T = TypeVar("T")


def key_for(label: str) -> SigningKey:
    """A deterministic key: the seed is ``sha256(label)``."""
    return SigningKey.from_seed(hashlib.sha256(label.encode()).digest())


def node_key(i: int) -> SigningKey:
    return key_for(f"node-{i}")


def node_id(i: int) -> str:
    return node_key(i).keyid


def artifact_bytes(label: str, size: int = 5000) -> bytes:
    """Deterministic artifact content of ``size`` bytes."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:size]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- envelope surgery (what an attacker on the wire can do) -------------------------------


def envelope(data: bytes) -> Envelope:
    return Envelope.from_wire(data)


def with_signatures(data: bytes, signatures: Iterable[tuple[str, bytes]]) -> bytes:
    """The same type and payload with exactly ``signatures``."""
    env = envelope(data)
    return Envelope(type=env.type, payload=env.payload, signatures=tuple(signatures)).to_wire()


def add_signatures(data: bytes, keys: Iterable[SigningKey]) -> bytes:
    return envelope(data).add_signatures(keys).to_wire()


def resign(data: bytes, keys: Iterable[SigningKey]) -> bytes:
    """Drop every signature and sign the same bytes with ``keys`` instead."""
    env = envelope(data)
    return Envelope.sign(env.type, env.payload, keys).to_wire()


def duplicate_signatures(data: bytes, times: int) -> bytes:
    """Every ``[keyid, sig]`` pair repeated ``times`` times."""
    env = envelope(data)
    return with_signatures(data, [s for s in env.signatures for _ in range(times)])


def flip_signature_bit(data: bytes, which: int = 0, bit: int = 0) -> bytes:
    env = envelope(data)
    sigs = list(env.signatures)
    kid, sig = sigs[which]
    sigs[which] = (kid, bytes([sig[0] ^ (1 << bit)]) + sig[1:])
    return with_signatures(data, sigs)


def flip_payload_bit(data: bytes, index: int, bit: int = 0) -> bytes:
    """Change one bit of the signed payload, keep the old signatures."""
    env = envelope(data)
    p = bytearray(env.payload)
    p[index] ^= 1 << bit
    return Envelope(type=env.type, payload=bytes(p), signatures=env.signatures).to_wire()


def retype(data: bytes, new_type: str) -> bytes:
    """Change the envelope's ``t`` after signing, keep payload and signatures."""
    env = envelope(data)
    return Envelope(type=new_type, payload=env.payload, signatures=env.signatures).to_wire()


def raw_envelope(t: Any, p: Any, s: Any) -> bytes:
    """An envelope map built by hand (any shape), for schema attacks."""
    return wire.encode({"t": t, "p": p, "s": s})


# -- the simulator ------------------------------------------------------------------------


class Network:
    """All the keys and documents of one simulated network.

    ``keys[role]`` are the role's current keys and ``thresholds[role]`` its threshold;
    ``roots[v]`` is the signed root of version ``v`` as published.  ``rotate`` publishes
    the next root, signed by a threshold of the previous root keys and of the new ones
    unless the test chooses other signers.
    """

    def __init__(
        self,
        *,
        now: int = NOW,
        name: str = "testnet",
        key_counts: Mapping[str, int] | None = None,
        thresholds: Mapping[str, int] | None = None,
        root_issued: int | None = None,
        root_expires: int | None = None,
    ) -> None:
        self.now = now
        self.name = name
        self._serial: dict[str, int] = {}
        counts = {r: 1 for r in ROLES} | dict(key_counts or {})
        self.keys: dict[str, list[SigningKey]] = {r: self.new_keys(r, counts[r]) for r in ROLES}
        self.thresholds: dict[str, int] = {r: 1 for r in ROLES} | dict(thresholds or {})
        self.roots: dict[int, bytes] = {}
        self.root_docs: dict[int, Root] = {}
        first = self.root_doc(1, issued=root_issued, expires=root_expires)
        self.publish_root(first, signers=self.signers("root"))

    # -- keys -----------------------------------------------------------------------------

    def new_keys(self, role: str, count: int = 1) -> list[SigningKey]:
        """Fresh keys ``<role>-<n>``, numbered on from the role's last key."""
        out = []
        for _ in range(count):
            n = self._serial.get(role, 0) + 1
            self._serial[role] = n
            out.append(key_for(f"{role}-{n}"))
        return out

    def signers(self, role: str) -> list[SigningKey]:
        """Default signers: the first ``threshold`` keys of the role."""
        return self.keys[role][: self.thresholds[role]]

    # -- roots ----------------------------------------------------------------------------

    @property
    def root_version(self) -> int:
        return max(self.roots)

    @property
    def root(self) -> Root:
        return self.root_docs[self.root_version]

    def root_doc(
        self,
        version: int,
        *,
        keys: Mapping[str, Sequence[SigningKey]] | None = None,
        thresholds: Mapping[str, int] | None = None,
        issued: int | None = None,
        expires: int | None = None,
    ) -> Root:
        """A root listing ``keys`` (default: the current role keys).  Not validated."""
        role_keys = dict(self.keys) | dict(keys or {})
        ths = dict(self.thresholds) | dict(thresholds or {})
        listed: dict[str, bytes] = {}
        roles: dict[str, Role] = {}
        for role in ROLES:
            for k in role_keys[role]:
                listed[k.keyid] = k.public_key
            roles[role] = Role(keys=tuple(k.keyid for k in role_keys[role]), threshold=ths[role])
        return Root(
            version=version,
            network=self.name,
            keys=listed,
            roles=roles,
            issued=issued if issued is not None else self.now - HOUR,
            expires=expires if expires is not None else self.now + YEAR,
        )

    def sign_root(self, root: Root, signers: Iterable[SigningKey]) -> bytes:
        return root.sign(list(signers)).to_wire()

    def publish_root(self, root: Root, *, signers: Iterable[SigningKey]) -> bytes:
        data = self.sign_root(root, signers)
        self.roots[root.version] = data
        self.root_docs[root.version] = root
        return data

    def rotate(
        self,
        role: str | None = None,
        *,
        count: int = 1,
        threshold: int | None = None,
        signers: Iterable[SigningKey] | None = None,
        version: int | None = None,
        issued: int | None = None,
        expires: int | None = None,
    ) -> bytes:
        """Publish the next root, replacing ``role``'s keys with ``count`` fresh ones.

        ``role=None`` publishes a new version with the same keys.  By default it is signed
        by the old root signers and the new ones (TUF rotation); ``signers`` overrides.
        """
        old_root_signers = self.signers("root")
        if role is not None:
            self.keys[role] = self.new_keys(role, count)
            self.thresholds[role] = threshold if threshold is not None else 1
        new_root_signers = self.signers("root")
        doc = self.root_doc(
            version if version is not None else self.root_version + 1,
            issued=issued,
            expires=expires,
        )
        if signers is None:
            signers = _unique([*old_root_signers, *new_root_signers])
        return self.publish_root(doc, signers=signers)

    def trust_store(self, *, now: int | None = None) -> TrustStore:
        """A node that trusted root v1 on first use."""
        return TrustStore.from_root(self.roots[1], self.now if now is None else now)

    # -- signing --------------------------------------------------------------------------

    def sign(self, doc: Document, signers: Iterable[SigningKey] | None = None) -> bytes:
        """Sign ``doc`` with its role's default signers, or with ``signers``."""
        keys = self.signers(doc.ROLE) if signers is None else list(signers)
        return doc.sign(keys).to_wire()

    def _times(self, issued: int | None, expires: int | None, ttl: int) -> dict[str, int]:
        i = self.now - MINUTE if issued is None else issued
        return {"issued": i, "expires": self.now + ttl if expires is None else expires}

    # -- document builders (unsigned) -----------------------------------------------------

    def release_doc(
        self,
        label: str,
        *,
        counter: int,
        size: int = 5000,
        chunk_size: int = 1024,
        issued: int | None = None,
        expires: int | None = None,
    ) -> Release:
        return Release.for_bytes(
            artifact_bytes(label, size),
            name=label,
            counter=counter,
            chunk_size=chunk_size,
            **self._times(issued, expires, 10 * YEAR),
        )

    def allowlist_doc(
        self,
        version: int,
        artifacts: Iterable[str] = (),
        *,
        issued: int | None = None,
        expires: int | None = None,
    ) -> Allowlist:
        return Allowlist(
            version=version, artifacts=tuple(artifacts), **self._times(issued, expires, 3 * DAY)
        )

    def scope_doc(
        self,
        artifact: str,
        *,
        serial: int = 1,
        kind: str = "everyone",
        nodes: Iterable[str] = (),
        fraction: float = 0.0,
        seed: bytes = b"",
        force: bool = False,
        issued: int | None = None,
        expires: int | None = None,
    ) -> Scope:
        return Scope(
            serial=serial,
            artifact=artifact,
            kind=kind,
            nodes=tuple(nodes),
            fraction=fraction,
            seed=seed,
            force=force,
            **self._times(issued, expires, DAY),
        )

    def departure_doc(
        self,
        node: str,
        *,
        from_artifact: str,
        to_artifact: str,
        allowlist_version: int = 1,
        scope_serial: int = 1,
        pool: str = "default",
        nonce: bytes = b"\x01" * 16,
        issued: int | None = None,
        expires: int | None = None,
    ) -> DepartureToken:
        return DepartureToken(
            node=node,
            pool=pool,
            from_artifact=from_artifact,
            to_artifact=to_artifact,
            allowlist_version=allowlist_version,
            scope_serial=scope_serial,
            nonce=nonce,
            **self._times(issued, expires, 5 * MINUTE),
        )

    def nudge_doc(
        self,
        artifact: str,
        *,
        serial: int = 1,
        issued: int | None = None,
        expires: int | None = None,
    ) -> Nudge:
        return Nudge(serial=serial, artifact=artifact, **self._times(issued, expires, HOUR))

    def heartbeat_doc(
        self,
        node: int,
        *,
        seq: int = 1,
        artifact: str = "00" * 32,
        state: str = "serving",
        pub: bytes | None = None,
        node_id_override: str | None = None,
        issued: int | None = None,
        expires: int | None = None,
    ) -> Heartbeat:
        key = node_key(node)
        return Heartbeat(
            node=node_id_override or key.keyid,
            pub=pub if pub is not None else key.public_key,
            seq=seq,
            version="1.0.0",
            artifact=artifact,
            state=state,
            pool="default",
            load=0.25,
            capacity=1.0,
            **self._times(issued, expires, 2 * MINUTE),
        )

    # -- signed builders (bytes on the wire) ----------------------------------------------

    def release(
        self, label: str, *, counter: int, signers: Iterable[SigningKey] | None = None, **kw: Any
    ) -> tuple[Release, bytes]:
        doc = self.release_doc(label, counter=counter, **kw)
        return doc, self.sign(doc, signers)

    def allowlist(
        self,
        version: int,
        artifacts: Iterable[str] = (),
        *,
        signers: Iterable[SigningKey] | None = None,
        **kw: Any,
    ) -> bytes:
        return self.sign(self.allowlist_doc(version, artifacts, **kw), signers)

    def scope(
        self, artifact: str, *, signers: Iterable[SigningKey] | None = None, **kw: Any
    ) -> bytes:
        return self.sign(self.scope_doc(artifact, **kw), signers)

    def departure(
        self, node: str, *, signers: Iterable[SigningKey] | None = None, **kw: Any
    ) -> bytes:
        return self.sign(self.departure_doc(node, **kw), signers)

    def nudge(
        self, artifact: str, *, signers: Iterable[SigningKey] | None = None, **kw: Any
    ) -> bytes:
        return self.sign(self.nudge_doc(artifact, **kw), signers)

    def heartbeat(
        self, node: int, *, signers: Iterable[SigningKey] | None = None, **kw: Any
    ) -> bytes:
        doc = self.heartbeat_doc(node, **kw)
        keys = [node_key(node)] if signers is None else list(signers)
        return doc.sign(keys).to_wire()


def _unique(keys: Iterable[SigningKey]) -> list[SigningKey]:
    seen: dict[str, SigningKey] = {}
    for k in keys:
        seen.setdefault(k.keyid, k)
    return list(seen.values())


def edit_root(root: Root, **changes: Any) -> Root:
    """A copy of ``root`` with fields replaced (no validation: attackers do not validate)."""
    return replace(root, **changes)


# -- assertions ---------------------------------------------------------------------------


def assert_rejected(
    store: TrustStore,
    exc_type: type[P2PUpdateError],
    attempt: Callable[[], object],
) -> P2PUpdateError:
    """``attempt`` raises exactly ``exc_type`` and ``store`` (trust state) is untouched.

    ``pytest.raises`` also matches subclasses; the exact class is asserted on top, since
    the class says whose fault it was.  No new store may come out of a failed attempt.
    """
    before = store.to_bytes()
    produced: list[object] = []
    with pytest.raises(exc_type) as info:
        produced.append(attempt())
    assert type(info.value) is exc_type, f"got {type(info.value).__name__}: {info.value}"
    assert produced == [], "a rejected document produced a result"
    assert store.to_bytes() == before, "trust state changed on a rejected document"
    return info.value


def assert_raises_exactly(exc_type: type[BaseException], attempt: Callable[[], object]) -> Any:
    """``attempt`` raises ``exc_type`` itself, not a subclass or a sibling."""
    with pytest.raises(exc_type) as info:
        attempt()
    assert type(info.value) is exc_type, f"got {type(info.value).__name__}: {info.value}"
    return info.value
