"""What every signed document shares: the ``Document`` base, the common field checks and
limits, and the ``Role`` of a root (``documents`` builds each document type on them and
re-exports these names: import them from there)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final

from . import wire
from .crypto import Envelope, SigningKey
from .errors import SchemaError

#: Clock skew allowance for ``expires`` (README "Trust model").
SKEW: Final = 60
#: Unix seconds must fit comfortably; year ~2^35.
MAX_TIME: Final = 2**40
MAX_VERSION: Final = 2**53
ROLES: Final = ("root", "release", "coordinator", "operator")
MIN_CHUNK: Final = 1024
MAX_CHUNK: Final = 16 * 1024 * 1024
MAX_CHUNKS: Final = 16_384  # x 34 B per hash stays well under DOCUMENT_LIMITS.max_bytes
MAX_NODES_IN_SCOPE: Final = 10_000
MAX_KEYS: Final = 64

_time = wire.uint(MAX_TIME)
_version = wire.uint(MAX_VERSION)
_digest = wire.hex_digest()
_name = wire.text(128, nonempty=True)


@dataclass(frozen=True, kw_only=True)
class Document:
    """Common shape: every document has an issue time and an expiry (unix seconds)."""

    TYPE: ClassVar[str] = ""
    ROLE: ClassVar[str] = ""
    #: Name of the field that orders documents of this kind (None: no floor).
    FLOOR_FIELD: ClassVar[str | None] = None
    FIELDS: ClassVar[dict[str, wire.Check]] = {}
    LIMITS: ClassVar[wire.Limits] = wire.DOCUMENT_LIMITS

    issued: int
    expires: int

    # -- wire ---------------------------------------------------------------------------

    @classmethod
    def from_obj(cls, obj: Any) -> Any:
        values = wire.check_fields(obj, cls.FIELDS, where=cls.TYPE)
        doc = cls(**values)
        doc.validate()
        return doc

    @classmethod
    def from_payload(cls, payload: bytes) -> Any:
        return cls.from_obj(wire.decode(payload, cls.LIMITS))

    def to_obj(self) -> dict[str, Any]:
        return {f.name: _to_plain(getattr(self, f.name)) for f in fields(self)}

    def to_payload(self) -> bytes:
        return wire.encode(self.to_obj())

    def checked(self) -> Any:
        """This document after the same schema and rule checks a receiver applies.

        Use before signing values that came from a user, so a bad value is refused here
        rather than by every node later.
        """
        return type(self).from_obj(self.to_obj())

    def validate(self) -> None:
        """Rules across fields; raise ``SchemaError`` (or a subclass's own type)."""
        if self.expires < self.issued:
            raise SchemaError(f"{self.TYPE}: expires before it is issued")

    # -- convenience ----------------------------------------------------------------------

    @property
    def floor_value(self) -> int | None:
        return None if self.FLOOR_FIELD is None else int(getattr(self, self.FLOOR_FIELD))

    def sign(self, keys: list[SigningKey]) -> Envelope:
        return Envelope.sign(self.TYPE, self.to_payload(), keys)

    def describe(self) -> str:
        """One line for humans (CLI output)."""
        floor = f" {self.FLOOR_FIELD} {self.floor_value}" if self.FLOOR_FIELD else ""
        return f"{self.TYPE}{floor}"


def _to_plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_to_plain(x) for x in v]
    if isinstance(v, Role):
        return {"keys": list(v.keys), "threshold": v.threshold}
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
    return v


@dataclass(frozen=True, kw_only=True)
class Role:
    keys: tuple[str, ...]
    threshold: int


def _role(name: str, v: Any) -> Role:
    f = wire.check_fields(
        v,
        {"keys": wire.array(_digest, MAX_KEYS, unique=True), "threshold": wire.uint(MAX_KEYS)},
        where=f"role {name!r}",
    )
    return Role(keys=f["keys"], threshold=f["threshold"])
