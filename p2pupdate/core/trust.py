"""TrustStore: what a node has come to trust, as an immutable value.

State in, state out: every method that accepts a document returns ``(signed, new_store)``
and leaves ``self`` untouched, so a rejected document (an exception) can never change
trust state, and the shell persists the new value atomically only after success.

What it holds (and why):

* the current root and the digests of every root accepted (root chain);
* per-kind **version floors** ``kind -> (value, payload digest)``: lower is a rollback,
  equal with other bytes is equivocation, higher raises the floor;
* the **highest signed time** seen (max ``issued`` of accepted documents, each capped at the
  ``now + SKEW`` of when it was accepted): expiry is judged against ``max(now, highest_time)``,
  so winding the node's clock back does not revive old documents, and a document dated in the
  far future cannot expire everything else.

Root rotation (TUF-style): root N+1 must be signed by a threshold of root N's root keys
*and* of its own; versions are consecutive; at most ``MAX_ROOT_STEPS`` per update.  When a
role's keys or threshold change, the floors of the kinds that role signs are reset: that is
how the network recovers from a fast-forward attack made with a stolen key (the attacker
pushed a floor to 2^50; the operator rotates the key and starts again from 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

from . import wire
from .documents import (
    DOCUMENT_TYPES,
    SKEW,
    Document,
    Root,
    Signed,
    check_fresh,
    open_root,
    open_signed,
)
from .errors import EquivocationError, RollbackError, RootRotationError, SchemaError

MAX_ROOT_STEPS: Final = 32
STATE_LIMITS: Final = wire.Limits(max_bytes=256 * 1024, max_container_len=1024)
STATE_FORMAT: Final = 1

D = TypeVar("D", bound=Document)


@dataclass(frozen=True, kw_only=True)
class Floor:
    value: int
    digest: str


@dataclass(frozen=True, kw_only=True)
class TrustStore:
    root_bytes: bytes
    root: Root
    root_digests: tuple[str, ...]
    floors: Mapping[str, Floor] = field(default_factory=dict)
    highest_time: int = 0

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_root(cls, data: bytes, now: int) -> TrustStore:
        """Trust on first use: a root shipped with the software or given by the operator.

        It must be signed by a threshold of its own root keys and be unexpired.
        """
        signed = open_root(data)
        check_fresh(signed.doc, now)
        return cls(
            root_bytes=bytes(data),
            root=signed.doc,
            root_digests=(signed.digest,),
            floors={"root": Floor(value=signed.doc.version, digest=signed.digest)},
            highest_time=min(signed.doc.issued, now + SKEW),
        )

    def effective_now(self, now: int) -> int:
        return max(now, self.highest_time)

    def _raised_time(self, issued: int, now: int) -> int:
        """The highest signed time, raised by a document issued at ``issued``.

        Capped at ``now + SKEW``: a document dated years ahead (signed with a stolen key)
        must not drag the node's notion of time forward and expire everything after it.
        """
        return max(self.highest_time, min(issued, now + SKEW))

    # -- roots ----------------------------------------------------------------------------

    def update_root(self, data: bytes, now: int) -> tuple[Signed[Root], TrustStore]:
        """Accept root N+1 (or the same root N again, a no-op)."""
        signed = open_root(data, signed_by=self.root)
        new = signed.doc
        if new.version == self.root.version:
            if signed.digest != self.root_digests[-1]:
                raise EquivocationError(
                    f"root v{new.version}: same version as the trusted root, different bytes"
                )
            return signed, self
        if new.version < self.root.version:
            raise RollbackError(
                f"root v{new.version}: older than the trusted root v{self.root.version}"
            )
        if new.version != self.root.version + 1:
            raise RootRotationError(
                f"root v{new.version}: skips from v{self.root.version} "
                f"(rotation must be consecutive)"
            )
        # Intermediate roots may have expired (a node offline for a year must still be able
        # to walk the chain); only the root finally used is checked, in ``check_current``.
        floors = dict(self.floors)
        for role in ("root", "release", "coordinator", "operator"):
            # keyid = sha256(key), so equal id sets mean equal keys.
            if self.root.roles[role] != new.roles[role]:
                for kind, cls in DOCUMENT_TYPES.items():
                    if cls.ROLE == role and kind != "root":
                        floors.pop(kind, None)
        floors["root"] = Floor(value=new.version, digest=signed.digest)
        return signed, replace(
            self,
            root_bytes=bytes(data),
            root=new,
            root_digests=(*self.root_digests, signed.digest),
            floors=floors,
            highest_time=self._raised_time(new.issued, now),
        )

    def update_roots(self, datas: Iterable[bytes], now: int) -> TrustStore:
        """Walk a chain of newer roots in version order (at most ``MAX_ROOT_STEPS``)."""
        store = self
        for step, data in enumerate(datas):
            if step >= MAX_ROOT_STEPS:
                raise RootRotationError(f"more than {MAX_ROOT_STEPS} root rotations at once")
            _, store = store.update_root(data, now)
        return store

    def check_current_root(self, now: int) -> None:
        check_fresh(self.root, self.effective_now(now), what=f"trusted root v{self.root.version}")

    # -- other documents ------------------------------------------------------------------

    def verify(self, cls: type[D], data: bytes, now: int) -> Signed[D]:
        """Signatures, type, freshness and the floor, without changing anything.

        For kinds without a floor (release, departure) this is all there is.
        """
        self.check_current_root(now)
        signed = open_signed(cls, data, self.root)
        check_fresh(signed.doc, self.effective_now(now))
        self._check_floor(signed)
        return signed

    def accept(self, cls: type[D], data: bytes, now: int) -> tuple[Signed[D], TrustStore]:
        """``verify`` and then raise the floor and the highest signed time."""
        signed = self.verify(cls, data, now)
        floors = dict(self.floors)
        value = signed.doc.floor_value
        if value is not None:
            current = floors.get(cls.TYPE)
            if current is None or value > current.value:
                floors[cls.TYPE] = Floor(value=value, digest=signed.digest)
        store = replace(self, floors=floors, highest_time=self._raised_time(signed.doc.issued, now))
        return signed, store

    def _check_floor(self, signed: Signed[Any]) -> None:
        doc = signed.doc
        value = doc.floor_value
        floor = self.floors.get(doc.TYPE)
        if value is None or floor is None:
            return
        if value < floor.value:
            raise RollbackError(
                f"{doc.describe()}: {doc.FLOOR_FIELD} {value} is below the accepted "
                f"{floor.value} (rollback)"
            )
        if value == floor.value and signed.digest != floor.digest:
            raise EquivocationError(
                f"{doc.describe()}: same {doc.FLOOR_FIELD} as the accepted one, different bytes"
            )

    # -- persistence (bytes only; the shell writes them atomically) -----------------------

    def to_bytes(self) -> bytes:
        return wire.encode(
            {
                "format": STATE_FORMAT,
                "root": self.root_bytes,
                "root_digests": list(self.root_digests),
                "floors": {k: [f.value, f.digest] for k, f in sorted(self.floors.items())},
                "highest_time": self.highest_time,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TrustStore:
        """Reload a persisted store.  The root inside is re-verified (self-signature)."""
        obj = wire.check_fields(
            wire.decode(data, STATE_LIMITS),
            {
                "format": wire.uint(STATE_FORMAT),
                "root": wire.blob(max_len=STATE_LIMITS.max_bytes),
                "root_digests": wire.array(wire.hex_digest(), 1024),
                "floors": wire.mapping(
                    wire.one_of(*DOCUMENT_TYPES), wire.array(_floor_part, 2), 16
                ),
                "highest_time": wire.uint(2**40),
            },
            where="trust state",
        )
        if obj["format"] != STATE_FORMAT:
            raise SchemaError(f"trust state: unknown format {obj['format']}")
        signed = open_root(obj["root"])
        if not obj["root_digests"] or obj["root_digests"][-1] != signed.digest:
            raise SchemaError("trust state: root digests do not end with the stored root")
        floors: dict[str, Floor] = {}
        for kind, pair in obj["floors"].items():
            if len(pair) != 2 or type(pair[0]) is not int:
                raise SchemaError(f"trust state: floor {kind!r} must be [int, digest]")
            floors[kind] = Floor(value=pair[0], digest=wire.hex_digest()(kind, pair[1]))
        return cls(
            root_bytes=obj["root"],
            root=signed.doc,
            root_digests=obj["root_digests"],
            floors=floors,
            highest_time=obj["highest_time"],
        )


def _floor_part(name: str, v: Any) -> Any:
    if type(v) is int and v >= 0:
        return v
    if isinstance(v, str):
        return v
    raise SchemaError(f"field {name!r}: expected int or digest")
