"""Departure tokens between node and replicas: the binding, proposal, combination, checks.

A token needs ``q`` replica signatures over the *same* payload (README "Capacity gate and
departure tokens"), so the node proposes the payload -- its :class:`Binding` (node, pool,
from/to, allowlist version, scope serial), a random nonce, ``issued`` = its clock and
``expires = issued + ttl`` -- and asks every replica in parallel; each replica checks it,
decides with ``coordinator.policy``, and answers with its signature alone.  The node
combines ``q`` of them into one envelope (:func:`combine`) and verifies the result like any
other document (:func:`verify_departure`) before it drains.  Grants it cannot use (fewer
than ``q``) are handed back at once, so a partial grant does not hold capacity until TTL.

When the replicas do not give a token, :func:`merge_answers` says what the node was told:
the most fundamental refusal (allowlist before scope before breaker before capacity), a
"no quorum" refusal with its fixed retry, or the errors.

Pure: the nonce and the wall-clock time are arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from . import crypto, wire
from . import documents as docs
from .coordproto import TOKEN_NONCE_LEN, AskRefusal, fast_hex_digest
from .errors import BindingError, ExpiredError, P2PUpdateError
from .trust import TrustStore

__all__ = [
    "DEFAULT_MAX_SKEW",
    "DEFAULT_TOKEN_TTL",
    "GATE_ORDER",
    "NO_QUORUM_RETRY",
    "TOKEN_FIELDS",
    "TOKEN_NONCE_LEN",
    "AskOutcome",
    "Binding",
    "combine",
    "merge_answers",
    "parse_token",
    "propose_token",
    "token_nonce",
    "token_ttl",
    "verify_departure",
]

#: A token's lifetime when no connected replica has announced its own (seconds).
DEFAULT_TOKEN_TTL: Final = 300
#: Clock difference (seconds) a replica tolerates between a node's ``issued`` and its own
#: clock unless configured otherwise; replicas announce theirs in the challenge.
DEFAULT_MAX_SKEW: Final = 30
#: How soon to ask again when some replicas granted but fewer than the quorum (seconds).
NO_QUORUM_RETRY: Final = 5.0
#: When replicas disagree, the refusal shown is the most fundamental one (lowest first).
GATE_ORDER: Final[Mapping[str, int]] = {"allowlist": 0, "scope": 1, "breaker": 2, "capacity": 3}


@dataclass(frozen=True, kw_only=True, slots=True)
class Binding:
    """The exact move a departure token is good for: who leaves, from what, to what,
    under which allowlist version and scope serial."""

    node: str
    pool: str
    from_artifact: str
    to_artifact: str
    allowlist_version: int
    scope_serial: int

    def __post_init__(self) -> None:
        for name in ("node", "from_artifact", "to_artifact"):
            fast_hex_digest(name, getattr(self, name))
        wire.text(64)("pool", self.pool)
        wire.uint(docs.MAX_VERSION)("allowlist_version", self.allowlist_version)
        wire.uint(docs.MAX_VERSION)("scope_serial", self.scope_serial)

    @classmethod
    def of(cls, token: docs.DepartureToken) -> Binding:
        return cls(
            node=token.node,
            pool=token.pool,
            from_artifact=token.from_artifact,
            to_artifact=token.to_artifact,
            allowlist_version=token.allowlist_version,
            scope_serial=token.scope_serial,
        )

    def check(self, token: docs.DepartureToken) -> None:
        """Raise ``BindingError`` naming the first field of ``token`` that is not ours."""
        docs.check_binding(
            token,
            node=self.node,
            from_artifact=self.from_artifact,
            to_artifact=self.to_artifact,
            allowlist_version=self.allowlist_version,
            scope_serial=self.scope_serial,
        )
        if token.pool != self.pool:
            raise BindingError(f"departure token: pool is {token.pool!r}, expected {self.pool!r}")


def propose_token(
    binding: Binding, *, ttl: int, now_wall: float, nonce: bytes
) -> docs.DepartureToken:
    """The payload the node asks every replica to sign (``nonce``: fresh random bytes)."""
    issued = int(now_wall)
    token = docs.DepartureToken(
        node=binding.node,
        pool=binding.pool,
        from_artifact=binding.from_artifact,
        to_artifact=binding.to_artifact,
        allowlist_version=binding.allowlist_version,
        scope_serial=binding.scope_serial,
        nonce=nonce,
        issued=issued,
        expires=issued + ttl,
    )
    token.validate()
    return token


#: ``DepartureToken.FIELDS`` with the fast digest check.
TOKEN_FIELDS: Final[dict[str, wire.Check]] = {
    **docs.DepartureToken.FIELDS,
    "node": fast_hex_digest,
    "from_artifact": fast_hex_digest,
    "to_artifact": fast_hex_digest,
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
    store: TrustStore, data: bytes, binding: Binding, *, now_wall: float
) -> docs.DepartureToken:
    """Everything a node checks before it drains (README "Trust model").

    A threshold of coordinator signatures, the type, expiry, and the :class:`Binding`.
    Expiry is checked *strictly* here (no skew allowance): a lease is only worth what is
    left of it.  Raises ``BindingError`` for a token granted for another move and
    ``ExpiredError`` for one whose lease has run out, besides the envelope's own errors.
    """
    token = store.verify(docs.DepartureToken, data, int(now_wall)).doc
    binding.check(token)
    if now_wall >= token.expires:
        raise ExpiredError("departure token: the lease has already run out")
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


def token_ttl(announced: Sequence[int]) -> int:
    """The TTL to propose: the first connected replica's announced one, else the default.

    A replica that announced 0 (none) counts as the default too."""
    for ttl in announced:
        return ttl or DEFAULT_TOKEN_TTL
    return DEFAULT_TOKEN_TTL


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


def merge_answers(
    refusals: Sequence[AskRefusal],
    *,
    signatures: int,
    threshold: int,
    errors: Sequence[str],
) -> AskOutcome:
    """What the node was told when the replicas gave fewer than ``threshold`` signatures.

    ``refusals`` are the replicas' refusal answers (``AskRefusal.from_wire`` has already
    replaced missing or odd fields with safe values); ``signatures`` counts the grants that verified (already handed back).  Precedence:
    any refusal (the most fundamental gate, and of equals the longest wait), then
    "no quorum" when some granted, then the errors.
    """
    if refusals:
        best = min(refusals, key=lambda r: (GATE_ORDER.get(r.gate, 9), -(r.retry_after or 0)))
        return AskOutcome(
            gate=best.gate,
            reason=best.reason,
            detail=best.detail,
            retry_after=best.retry_after,
            position=best.position,
        )
    if signatures:
        return AskOutcome(
            gate="capacity",
            reason="no-quorum",
            detail=f"{signatures} of {threshold} replica signatures",
            retry_after=NO_QUORUM_RETRY,
        )
    return AskOutcome(error="; ".join(errors) or "no replica answered")
