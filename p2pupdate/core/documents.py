"""The signed documents: parse, check shape, verify signatures.

Nine kinds, each a frozen dataclass whose fields are exactly the keys of its msgpack
payload (``FIELDS`` is the schema, checked exactly: no missing, no unknown keys):

=================  =============  ==============================================  =========
type               signed by      says                                            floor by
=================  =============  ==============================================  =========
``root``           root           who holds each role (keys + threshold)           version
``release``        release        artifact sha256, length, counter, chunk hashes   --
``allowlist``      coordinator    which artifacts may run on the network at all    version
``scope``          operator       who may move to one artifact now                 serial
``departure``      coordinator*q  this node may leave now, from A to B             --
``nudge``          coordinator    "look now" for one artifact                      serial
``heartbeat``      the node       version/state/load of one node (gossip)          seq
``network``        root           who may count as a node: the admission rule      version
``member``         operator       this node id belongs to this pool (``enrolled``) --
=================  =============  ==============================================  =========

``open_signed`` is the only way to get a document out of bytes: it checks the envelope,
the type, then a threshold of signatures over the *raw* payload, and only then decodes the
payload.  Freshness and version floors need state and live in ``trust.TrustStore``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, Generic, TypeVar

from . import wire
from .crypto import KEY_LEN, Envelope, keyid

# re-exported (docs.SKEW, docs.Document, ...: pyproject's mypy override for this module)
from .docbase import (
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_KEYS,
    MAX_NODES_IN_SCOPE,
    MAX_TIME,  # noqa: F401 (re-exported)
    MAX_VERSION,  # noqa: F401 (re-exported)
    MIN_CHUNK,
    ROLES,
    SKEW,
    Document,
    Role,
    _digest,
    _name,
    _role,
    _time,
    _to_plain,
    _version,
)
from .errors import (
    BindingError,
    ExpiredError,
    InvalidRootError,
    KeyIdMismatchError,
    SchemaError,
    WrongTypeError,
)


@dataclass(frozen=True, kw_only=True)
class Root(Document):
    """Who holds each role.  Rotation: see ``trust.TrustStore.update_root``."""

    TYPE: ClassVar[str] = "root"
    ROLE: ClassVar[str] = "root"
    FLOOR_FIELD: ClassVar[str | None] = "version"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "version": _version,
        "issued": _time,
        "expires": _time,
        "network": _name,
        "keys": wire.mapping(_digest, wire.blob(KEY_LEN), MAX_KEYS),
        "roles": wire.mapping(wire.one_of(*ROLES), _role, len(ROLES)),
    }

    version: int
    network: str
    keys: Mapping[str, bytes]
    roles: Mapping[str, Role]

    def validate(self) -> None:
        super().validate()
        if self.version < 1:
            raise InvalidRootError("root: version starts at 1")
        for kid, pub in self.keys.items():
            if keyid(pub) != kid:
                raise KeyIdMismatchError(
                    f"root: key listed as {kid[:16]}... is not sha256 of its public key "
                    "(one key under two ids?)"
                )
        missing = [r for r in ROLES if r not in self.roles]
        if missing:
            raise InvalidRootError(f"root: roles missing: {', '.join(missing)}")
        for name, role in self.roles.items():
            if role.threshold < 1:
                raise InvalidRootError(f"root: role {name!r} has threshold {role.threshold} (< 1)")
            if role.threshold > len(role.keys):
                raise InvalidRootError(
                    f"root: role {name!r} threshold {role.threshold} exceeds its "
                    f"{len(role.keys)} keys"
                )
            unknown = [k for k in role.keys if k not in self.keys]
            if unknown:
                raise InvalidRootError(
                    f"root: role {name!r} names unlisted key {unknown[0][:16]}..."
                )

    def role_keys(self, role: str) -> dict[str, bytes]:
        return {k: self.keys[k] for k in self.roles[role].keys}

    def describe(self) -> str:
        parts = ", ".join(f"{r} {self.roles[r].threshold}/{len(self.roles[r].keys)}" for r in ROLES)
        return f"root v{self.version} of network {self.network!r} ({parts})"


# -- release ----------------------------------------------------------------------------


#: A build's platform: ``<python>-<platform>[+<platform>...]`` in wheel-tag characters, as
#: ``launcher.artifact.slot_platform`` names a self-contained build
#: (``cp311-manylinux_2_34_x86_64``, ``cp311-any``).
_PLATFORM_RE: Final = re.compile(r"[a-z0-9]{1,16}-[a-z0-9_.]{1,64}(?:\+[a-z0-9_.]{1,64}){0,7}")
MAX_PLATFORM_LEN: Final = 256


def _platform(name: str, v: Any) -> str:
    text: str = wire.text(MAX_PLATFORM_LEN, nonempty=True)(name, v)
    if not _PLATFORM_RE.fullmatch(text):
        raise SchemaError(f"field {name!r}: not a platform tag like cp311-manylinux_2_17_x86_64")
    return text


#: The largest content-defined chunk a release may list (``core.cdc.DEFAULT_PARAMS.max_size``;
#: a record states its sizes, so a node never needs the cutting parameters themselves).
MAX_CDC_CHUNK: Final = 256 * 1024


def _sizes(name: str, v: Any) -> tuple[int, ...]:
    sizes: tuple[int, ...] = wire.array(wire.uint(MAX_CDC_CHUNK), MAX_CHUNKS)(name, v)
    if not sizes:
        raise SchemaError(f"field {name!r}: empty (a fixed-size layout is the absent key)")
    bad = next((i for i, s in enumerate(sizes) if s < 1), None)
    if bad is not None:
        raise SchemaError(f"field {name!r}: chunk {bad} has size 0")
    return sizes


#: Optional release fields: absent on the wire means "none", so a record without one keeps
#: the bytes and signatures it had before the field existed.
#:
#: * ``platform`` absent: a build of our code alone, which runs wherever Python does.
#: * ``sizes`` absent: fixed-size chunks of ``chunk_size`` (the last one short).  Present:
#:   a content-defined layout (``core.cdc``), chunk ``i`` is ``sizes[i]`` bytes long.
#:   Nodes from before this field refuse such a record (an unknown key is a SchemaError),
#:   so operators first release one build of this version with fixed chunks, and switch
#:   to content-defined chunks once the fleet runs it.
_RELEASE_OPTIONAL: Final[dict[str, wire.Check]] = {"platform": _platform, "sizes": _sizes}


@dataclass(frozen=True, kw_only=True)
class Release(Document):
    """A build, as the release key vouches for it: hash, length, counter, chunk hashes."""

    TYPE: ClassVar[str] = "release"
    ROLE: ClassVar[str] = "release"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "name": _name,
        "counter": _version,
        "artifact": _digest,
        "length": wire.uint(2**40),
        "chunk_size": wire.uint(MAX_CHUNK),
        "chunks": wire.array(wire.blob(32), MAX_CHUNKS),
        "issued": _time,
        "expires": _time,
    }

    name: str
    counter: int
    artifact: str
    length: int
    chunk_size: int
    chunks: tuple[bytes, ...]
    #: The platform a self-contained build needs (its ``deps/SLOT.json`` ``platform``);
    #: "" for a build of our code alone.  Gate 1 refuses a build for another platform
    #: (``gates.platform_supported``, reason ``wrong-platform``).
    platform: str = ""
    #: Content-defined chunk sizes (``len(sizes) == len(chunks)``, ``sum(sizes) == length``);
    #: ``()`` for fixed ``chunk_size`` chunks.  With sizes, ``chunk_size`` is only nominal
    #: (the average the cutter aimed at) and the count rule of fixed chunks does not apply.
    #: ``core.swarm.chunks.ChunkMap.of_release`` is where either layout becomes offsets.
    sizes: tuple[int, ...] = ()

    @classmethod
    def from_obj(cls, obj: Any) -> Any:
        if not isinstance(obj, dict):
            raise SchemaError(f"{cls.TYPE}: expected a map, got {type(obj).__name__}")
        base = {k: v for k, v in obj.items() if k not in _RELEASE_OPTIONAL}
        values = wire.check_fields(base, cls.FIELDS, where=cls.TYPE)
        for k, check in _RELEASE_OPTIONAL.items():
            if k in obj:
                values[k] = check(k, obj[k])  # nonempty: "none" is the absent key
        doc = cls(**values)
        doc.validate()
        return doc

    def to_obj(self) -> dict[str, Any]:
        obj = super().to_obj()
        for k in _RELEASE_OPTIONAL:
            if not obj[k]:
                del obj[k]
        return obj

    def validate(self) -> None:
        super().validate()
        if self.platform:
            _platform("platform", self.platform)
        if self.counter < 1:
            raise SchemaError("release: counter starts at 1")
        if not MIN_CHUNK <= self.chunk_size <= MAX_CHUNK:
            raise SchemaError(f"release: chunk_size must be in [{MIN_CHUNK}, {MAX_CHUNK}]")
        if self.length < 1:
            raise SchemaError("release: empty artifact")
        if self.sizes:
            _sizes("sizes", list(self.sizes))
            if len(self.sizes) != len(self.chunks):
                raise SchemaError(
                    f"release: {len(self.sizes)} chunk sizes for {len(self.chunks)} chunk hashes"
                )
            if sum(self.sizes) != self.length:
                raise SchemaError(
                    f"release: chunk sizes add up to {sum(self.sizes)}, the length is {self.length}"
                )
            return
        expected = math.ceil(self.length / self.chunk_size)
        if len(self.chunks) != expected:
            raise SchemaError(
                f"release: {len(self.chunks)} chunk hashes for {self.length} bytes at "
                f"{self.chunk_size} per chunk (expected {expected})"
            )

    @classmethod
    def for_bytes(
        cls,
        data: bytes,
        *,
        name: str,
        counter: int,
        chunk_size: int,
        issued: int,
        expires: int,
        platform: str = "",
        sizes: tuple[int, ...] = (),
    ) -> Release:
        """The release record of an artifact held in memory (tests; the CLI streams).

        ``sizes`` given: that content-defined layout (``core.cdc.boundaries`` gives the ends);
        else fixed chunks of ``chunk_size``.
        """
        if sizes:
            starts = [0]
            for s in sizes[:-1]:
                starts.append(starts[-1] + s)
            chunks = tuple(
                hashlib.sha256(data[a : a + s]).digest() for a, s in zip(starts, sizes, strict=True)
            )
        else:
            chunks = tuple(
                hashlib.sha256(data[i : i + chunk_size]).digest()
                for i in range(0, len(data), chunk_size)
            )
        doc = cls(
            name=name,
            counter=counter,
            artifact=hashlib.sha256(data).hexdigest(),
            length=len(data),
            chunk_size=chunk_size,
            chunks=chunks,
            issued=issued,
            expires=expires,
            platform=platform,
            sizes=tuple(sizes),
        )
        doc.validate()
        return doc

    def describe(self) -> str:
        on = f", for {self.platform}" if self.platform else ""
        cut = ", content-defined" if self.sizes else ""
        return (
            f"release {self.name!r} counter {self.counter} artifact {self.artifact[:16]}... "
            f"({self.length} bytes, {len(self.chunks)} chunks{cut}{on})"
        )


# -- allowlist --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Allowlist(Document):
    """Gate 1: the artifacts permitted on the network at all."""

    TYPE: ClassVar[str] = "allowlist"
    ROLE: ClassVar[str] = "coordinator"
    FLOOR_FIELD: ClassVar[str | None] = "version"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "version": _version,
        "issued": _time,
        "expires": _time,
        "artifacts": wire.array(_digest, 4096, unique=True),
    }

    version: int
    artifacts: tuple[str, ...]

    def describe(self) -> str:
        return f"allowlist v{self.version} ({len(self.artifacts)} artifacts)"


# -- scope ------------------------------------------------------------------------------

SCOPE_KINDS: Final = ("nobody", "nodes", "fraction", "everyone")
#: A ramp has at most this many stages (README "A staged ramp in one signed scope").
MAX_RAMP_STAGES: Final = 16


def _stage(name: str, v: Any) -> tuple[int, float]:
    if not isinstance(v, list) or len(v) != 2:
        raise SchemaError(f"field {name!r}: expected [after seconds, fraction]")
    return (_time(f"{name}[0]", v[0]), wire.unit_float()(f"{name}[1]", v[1]))


#: Optional scope fields: absent on the wire means "none", so a scope without a ramp has
#: exactly the bytes (and signatures) it had before ramps existed.
_SCOPE_OPTIONAL: Final[dict[str, wire.Check]] = {
    "ramp": wire.array(_stage, MAX_RAMP_STAGES),
}


@dataclass(frozen=True, kw_only=True)
class Scope(Document):
    """Gate 2: which nodes may move to ``artifact`` now.  ``force`` skips gate 3 only."""

    TYPE: ClassVar[str] = "scope"
    ROLE: ClassVar[str] = "operator"
    FLOOR_FIELD: ClassVar[str | None] = "serial"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "serial": _version,
        "issued": _time,
        "expires": _time,
        "artifact": _digest,
        "kind": wire.one_of(*SCOPE_KINDS),
        "nodes": wire.array(_digest, MAX_NODES_IN_SCOPE, unique=True),
        "fraction": wire.unit_float(),
        "seed": wire.blob(max_len=32),
        "force": wire.boolean(),
    }

    serial: int
    artifact: str
    kind: str
    nodes: tuple[str, ...] = ()
    fraction: float = 0.0
    seed: bytes = b""
    force: bool = False
    #: Optional staged ramp, only with kind "fraction": ``(after, fraction)`` stages, after
    #: in seconds from ``issued``, strictly increasing; fractions non-decreasing; the last
    #: stage's fraction equals ``fraction`` (the signed cap).  See ``gates.fraction_in_force``.
    ramp: tuple[tuple[int, float], ...] = ()

    @classmethod
    def from_obj(cls, obj: Any) -> Any:
        if not isinstance(obj, dict):
            raise SchemaError(f"{cls.TYPE}: expected a map, got {type(obj).__name__}")
        base = {k: v for k, v in obj.items() if k not in _SCOPE_OPTIONAL}
        values = wire.check_fields(base, cls.FIELDS, where=cls.TYPE)
        for k, check in _SCOPE_OPTIONAL.items():
            if k in obj:
                values[k] = check(k, obj[k])
                if not values[k]:
                    # One encoding per meaning: "no ramp" is the absent key, never [].
                    raise SchemaError(f"scope: an empty {k!r} is written by leaving it out")
        doc = cls(**values)
        doc.validate()
        return doc

    def to_obj(self) -> dict[str, Any]:
        obj = super().to_obj()
        for k in _SCOPE_OPTIONAL:
            if not obj[k]:
                del obj[k]
        return obj

    def validate(self) -> None:
        super().validate()
        if (self.kind == "nodes") != bool(self.nodes):
            raise SchemaError("scope: node ids are given exactly when kind is 'nodes'")
        if self.kind == "fraction":
            if len(self.seed) < 8:
                raise SchemaError("scope: a fraction needs a seed of 8 to 32 bytes")
        elif self.fraction != 0.0 or self.seed:
            raise SchemaError("scope: fraction and seed are set only when kind is 'fraction'")
        if self.ramp:
            self._validate_ramp()

    def _validate_ramp(self) -> None:
        if self.kind != "fraction":
            raise SchemaError("scope: a ramp goes only with kind 'fraction'")
        if len(self.ramp) > MAX_RAMP_STAGES:
            raise SchemaError(f"scope: a ramp has at most {MAX_RAMP_STAGES} stages")
        for (a0, f0), (a1, f1) in zip(self.ramp, self.ramp[1:], strict=False):
            if a1 <= a0:
                raise SchemaError("scope: ramp stage times must strictly increase")
            if f1 < f0:
                raise SchemaError("scope: ramp fractions must not decrease")
        if self.ramp[-1][1] != self.fraction:
            raise SchemaError("scope: a ramp's last stage fraction must equal the scope's fraction")
        if self.issued + self.ramp[-1][0] > self.expires:
            raise SchemaError("scope: a ramp stage starts after the scope expires")

    def stage_in_force(self, now: int) -> int | None:
        """Index of the ramp stage in force at ``now`` (None: before the first stage)."""
        current = None
        for i, (after, _) in enumerate(self.ramp):
            if self.issued + after <= now:
                current = i
        return current

    def describe(self, now: int | None = None) -> str:
        what = {
            "nobody": "nobody",
            "everyone": "everyone",
            "nodes": f"{len(self.nodes)} named nodes",
            "fraction": f"fraction {self.fraction:g} (seed {self.seed.hex()[:16]})",
        }[self.kind]
        if self.ramp:
            stages = ",".join(f"{a}:{f:g}" for a, f in self.ramp)
            what = f"ramp {stages} (seed {self.seed.hex()[:16]})"
            if now is not None:
                i = self.stage_in_force(now)
                what += (
                    f"; before stage 1 of {len(self.ramp)}: fraction 0"
                    if i is None
                    else f"; stage {i + 1} of {len(self.ramp)} in force: "
                    f"fraction {self.ramp[i][1]:g}"
                )
        force = ", FORCE" if self.force else ""
        return f"scope serial {self.serial}: {what} -> {self.artifact[:16]}...{force}"


# -- departure token --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DepartureToken(Document):
    """Gate 3's answer: a short lease for one node to leave, bound to everything it used."""

    TYPE: ClassVar[str] = "departure"
    ROLE: ClassVar[str] = "coordinator"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "node": _digest,
        "pool": wire.text(64),
        "from_artifact": _digest,
        "to_artifact": _digest,
        "allowlist_version": _version,
        "scope_serial": _version,
        "nonce": wire.blob(16),
        "issued": _time,
        "expires": _time,
    }
    LIMITS: ClassVar[wire.Limits] = wire.MESSAGE_LIMITS

    node: str
    pool: str
    from_artifact: str
    to_artifact: str
    allowlist_version: int
    scope_serial: int
    nonce: bytes

    def describe(self) -> str:
        return (
            f"departure token for node {self.node[:16]}... {self.from_artifact[:8]} -> "
            f"{self.to_artifact[:8]} (allowlist v{self.allowlist_version}, "
            f"scope {self.scope_serial}, expires {self.expires})"
        )


# -- nudge ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Nudge(Document):
    """ "Look now": skip the wait before asking.  Never a gate."""

    TYPE: ClassVar[str] = "nudge"
    ROLE: ClassVar[str] = "coordinator"
    FLOOR_FIELD: ClassVar[str | None] = "serial"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "serial": _version,
        "issued": _time,
        "expires": _time,
        "artifact": _digest,
    }
    LIMITS: ClassVar[wire.Limits] = wire.MESSAGE_LIMITS

    serial: int
    artifact: str

    def describe(self) -> str:
        return f"nudge serial {self.serial} -> {self.artifact[:16]}..."


# -- heartbeat --------------------------------------------------------------------------

NODE_STATES: Final = ("serving", "asking", "draining", "swapping", "probation", "failed")
#: What a heartbeat may say of an artifact (README "Artifacts peer to peer"): the node holds
#: it whole, or is fetching it and holds ``fraction``/255 of its chunks.
HOLDING_STATES: Final = ("held", "fetching")
#: A heartbeat names at most this many artifacts: a summary, not a bitfield, so a heartbeat
#: stays a few hundred bytes however many artifacts a node keeps.
MAX_HOLDINGS: Final = 4
FRACTION_WHOLE: Final = 255


@dataclass(frozen=True, kw_only=True, slots=True)
class Holding:
    """One artifact a heartbeat says its node holds or is fetching: which peers to ask."""

    artifact: str
    state: str
    fraction: int

    def __post_init__(self) -> None:
        if not isinstance(self.artifact, str) or len(self.artifact) != 64:
            raise SchemaError("holding: artifact must be 64 lowercase hex digits")
        if self.artifact.strip("0123456789abcdef"):
            raise SchemaError("holding: artifact must be 64 lowercase hex digits")
        if self.state not in HOLDING_STATES:
            raise SchemaError(f"holding: state must be one of {', '.join(HOLDING_STATES)}")
        if not isinstance(self.fraction, int) or not 0 <= self.fraction <= FRACTION_WHOLE:
            raise SchemaError(f"holding: fraction must be 0..{FRACTION_WHOLE}")
        if self.state == "held" and self.fraction != FRACTION_WHOLE:
            raise SchemaError(f"holding: a held artifact has fraction {FRACTION_WHOLE}")

    def to_wire(self) -> list[Any]:
        """``[sha256 (32 bytes), state, fraction]``: about 45 bytes."""
        return [bytes.fromhex(self.artifact), self.state, self.fraction]


def _holding(name: str, v: Any) -> Holding:
    if not isinstance(v, list) or len(v) != 3:
        raise SchemaError(f"field {name!r}: expected [artifact, state, fraction]")
    sha = wire.blob(32)(f"{name}[0]", v[0])
    state = wire.one_of(*HOLDING_STATES)(f"{name}[1]", v[1])
    fraction = wire.uint(FRACTION_WHOLE)(f"{name}[2]", v[2])
    return Holding(artifact=sha.hex(), state=state, fraction=fraction)


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Document):
    """One node's signed status for gossip.  Self-certifying: ``node == keyid(pub)``."""

    TYPE: ClassVar[str] = "heartbeat"
    ROLE: ClassVar[str] = "node"
    FLOOR_FIELD: ClassVar[str | None] = "seq"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "node": _digest,
        "pub": wire.blob(KEY_LEN),
        "seq": _version,
        "version": wire.text(64),
        "artifact": _digest,
        "state": wire.one_of(*NODE_STATES),
        "pool": wire.text(64),
        "load": wire.nonneg_float(),
        "capacity": wire.nonneg_float(),
        "holdings": wire.array(_holding, MAX_HOLDINGS),
        "issued": _time,
        "expires": _time,
    }
    LIMITS: ClassVar[wire.Limits] = wire.MESSAGE_LIMITS

    node: str
    pub: bytes
    seq: int
    version: str
    artifact: str
    state: str
    pool: str
    load: float
    capacity: float
    holdings: tuple[Holding, ...] = ()

    @classmethod
    def from_obj(cls, obj: Any) -> Any:
        """A heartbeat without ``holdings`` (a node from before they existed) holds none."""
        if isinstance(obj, dict) and "holdings" not in obj:
            obj = {**obj, "holdings": []}
        return super().from_obj(obj)

    def to_obj(self) -> dict[str, Any]:
        """No holdings: no key, so a node from before them still accepts this heartbeat."""
        obj = {f.name: _to_plain(getattr(self, f.name)) for f in fields(self)}
        del obj["holdings"]
        if self.holdings:
            obj["holdings"] = [h.to_wire() for h in self.holdings]
        return obj

    def validate(self) -> None:
        super().validate()
        if keyid(self.pub) != self.node:
            raise KeyIdMismatchError("heartbeat: node id is not sha256 of the enclosed key")
        if len(self.holdings) > MAX_HOLDINGS:
            raise SchemaError(f"heartbeat: more than {MAX_HOLDINGS} holdings")
        if len({h.artifact for h in self.holdings}) != len(self.holdings):
            raise SchemaError("heartbeat: an artifact named twice in holdings")


# -- network configuration and membership (admission, README "Security") -----------------

ADMISSION_RULES: Final = ("enrolled", "open")
#: At most this many leading zero bits of proof of work: 2^40 key generations is days of
#: one machine, beyond any sane difficulty, and keeps a typo from making a node spin forever.
MAX_POW_BITS: Final = 40
#: Standing takes at most 30 days of session history.
MAX_STANDING: Final = 30 * 86400
_cap = wire.uint(1_000_000)


@dataclass(frozen=True, kw_only=True)
class NetworkConfig(Document):
    """Who may count as a node, and how much one source subnet may weigh (P10).

    Signed by the root role (the keys kept offline), so neither a replica nor an operator
    key can open an enrolled network.  ``admission``:

    * ``enrolled``: a node counts only with a ``member`` document naming it (checked at
      the hello; a hello without a valid one is refused);
    * ``open``: anyone may run a node, but its id (sha256 of its key) must have at least
      ``pow_bits`` leading zero bits, and it earns standing only after ``standing_s`` of
      session history with the replica (``core.admission``).

    The ``subnet_*`` caps count per source /24 (IPv4) or /48 (IPv6): node ids registered,
    reporters whose estimates enter a pool's median, live leases, failure reports counted
    by the breaker (per artifact).
    """

    TYPE: ClassVar[str] = "network"
    ROLE: ClassVar[str] = "root"
    FLOOR_FIELD: ClassVar[str | None] = "version"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "version": _version,
        "issued": _time,
        "expires": _time,
        "network": _name,
        "admission": wire.one_of(*ADMISSION_RULES),
        "pow_bits": wire.uint(MAX_POW_BITS),
        "standing_s": wire.uint(MAX_STANDING),
        "subnet_nodes": _cap,
        "subnet_reporters": _cap,
        "subnet_leases": _cap,
        "subnet_failures": _cap,
    }

    version: int
    network: str
    admission: str
    pow_bits: int
    standing_s: int
    subnet_nodes: int
    subnet_reporters: int
    subnet_leases: int
    subnet_failures: int

    def validate(self) -> None:
        super().validate()
        if self.version < 1:
            raise SchemaError("network: version starts at 1")
        for name in ("subnet_nodes", "subnet_reporters", "subnet_leases", "subnet_failures"):
            if getattr(self, name) < 1:
                raise SchemaError(f"network: {name} must be at least 1")

    def describe(self) -> str:
        if self.admission == "enrolled":
            rule = "enrolled (member documents)"
        else:
            rule = f"open (proof of work {self.pow_bits} bits, standing after {self.standing_s} s)"
        return (
            f"network configuration v{self.version} of {self.network!r}: {rule}; per subnet "
            f"{self.subnet_nodes} nodes, {self.subnet_reporters} reporters, "
            f"{self.subnet_leases} leases, {self.subnet_failures} failure reports"
        )


@dataclass(frozen=True, kw_only=True)
class Member(Document):
    """An operator's word that ``node`` belongs to the network, in ``pool``, until
    ``expires`` (the ``enrolled`` admission rule).  A node carries its own in its hello."""

    TYPE: ClassVar[str] = "member"
    ROLE: ClassVar[str] = "operator"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "node": _digest,
        "pool": wire.text(64),
        "issued": _time,
        "expires": _time,
    }
    LIMITS: ClassVar[wire.Limits] = wire.MESSAGE_LIMITS

    node: str
    pool: str

    def describe(self) -> str:
        return f"member {self.node[:16]}... of pool {self.pool or 'default'!r}"


DOCUMENT_TYPES: Final[dict[str, type[Document]]] = {
    c.TYPE: c
    for c in (
        Root,
        Release,
        Allowlist,
        Scope,
        DepartureToken,
        Nudge,
        Heartbeat,
        NetworkConfig,
        Member,
    )
}

# -- opening signed bytes ---------------------------------------------------------------

D = TypeVar("D", bound=Document)


@dataclass(frozen=True, kw_only=True)
class Signed(Generic[D]):
    """A verified document, with the envelope it came in and who signed it."""

    doc: D
    envelope: Envelope
    signers: frozenset[str]

    @property
    def digest(self) -> str:
        """sha256 of the signed payload: equal documents have equal digests."""
        return hashlib.sha256(self.envelope.payload).hexdigest()


def peek_type(data: bytes) -> str:
    """The envelope's claimed type, for routing only (nothing is trusted yet)."""
    return Envelope.from_wire(data).type


def open_signed(cls: type[D], data: bytes | Envelope, root: Root) -> Signed[D]:
    """Verify type and a threshold of signatures of ``cls.ROLE`` under ``root``, then parse.

    Raises ``WireError`` for malformed bytes, ``WrongTypeError`` for a document of another
    kind, ``SignatureError`` for too few valid signatures by distinct role keys.
    Freshness and floors are checked by ``TrustStore``.
    """
    env = data if isinstance(data, Envelope) else Envelope.from_wire(data, cls.LIMITS)
    if cls is Heartbeat or cls is Root:
        raise TypeError("use open_heartbeat / TrustStore for self-certifying documents")
    role = root.roles[cls.ROLE]
    signers = env.verify(
        expected_type=cls.TYPE,
        keys=root.keys,
        allowed=role.keys,
        threshold=role.threshold,
        role=cls.ROLE,
    )
    doc: D = cls.from_payload(env.payload)
    return Signed(doc=doc, envelope=env, signers=signers)


def open_root(data: bytes | Envelope, *, signed_by: Root | None = None) -> Signed[Root]:
    """Parse a root and check it is signed by a threshold of its own root keys and, when
    ``signed_by`` is given, also by a threshold of that (previous) root's root keys.

    The payload must be decoded to learn its own keys; this is the one place the payload is
    parsed before its signatures are checked, and nothing from it is trusted until they are.
    """
    env = data if isinstance(data, Envelope) else Envelope.from_wire(data, Root.LIMITS)
    if env.type != Root.TYPE:
        raise WrongTypeError(f"document of type {env.type!r} used where 'root' is required")
    signers: set[str] = set()
    if signed_by is not None:  # the keys we already trust go first, over the raw bytes
        signers |= _verify_root_sigs(env, signed_by, "previous root")
    new: Root = Root.from_payload(env.payload)
    signers |= _verify_root_sigs(env, new, "new root")
    return Signed(doc=new, envelope=env, signers=frozenset(signers))


def _verify_root_sigs(env: Envelope, authority: Root, label: str) -> frozenset[str]:
    role = authority.roles["root"]
    return env.verify(
        expected_type=Root.TYPE,
        keys=authority.keys,
        allowed=role.keys,
        threshold=role.threshold,
        role=f"root ({label})",
    )


def open_heartbeat(data: bytes | Envelope) -> Signed[Heartbeat]:
    """A heartbeat is signed by the node it describes; its id is the hash of its key."""
    env = data if isinstance(data, Envelope) else Envelope.from_wire(data, Heartbeat.LIMITS)
    if env.type != Heartbeat.TYPE:
        raise WrongTypeError(f"document of type {env.type!r} used where 'heartbeat' is required")
    # The key must be known before the signature can be checked; take it from the payload
    # but trust nothing else in it until the signature over the raw bytes verifies.
    hb: Heartbeat = Heartbeat.from_payload(env.payload)
    signers = env.verify(
        expected_type=Heartbeat.TYPE,
        keys={hb.node: hb.pub},
        allowed=(hb.node,),
        threshold=1,
        role="node",
    )
    return Signed(doc=hb, envelope=env, signers=signers)


def check_fresh(doc: Document, effective_now: int, *, what: str | None = None) -> None:
    """Reject a document past its expiry (with ``SKEW`` allowance)."""
    if effective_now > doc.expires + SKEW:
        raise ExpiredError(
            f"{what or doc.describe()}: expired at {doc.expires}, now {effective_now}"
        )


def check_binding(
    token: DepartureToken,
    *,
    node: str,
    from_artifact: str,
    to_artifact: str,
    allowlist_version: int,
    scope_serial: int,
) -> None:
    """A departure token is good only for the exact move it was granted for.

    Raises ``BindingError`` naming the first field that does not match.
    """
    expected = {
        "node": node,
        "from_artifact": from_artifact,
        "to_artifact": to_artifact,
        "allowlist_version": allowlist_version,
        "scope_serial": scope_serial,
    }
    for name, want in expected.items():
        got = getattr(token, name)
        if got != want:
            raise BindingError(f"departure token: {name} is {got!r}, expected {want!r}")
