"""The values the update state machine exchanges with its shell: events in, effects out.

``core.updater`` holds the machine and its one transition table; this module holds what
crosses the boundary between the machine and the shell that runs it (README
"Architecture"): the records a departure carries (``Candidate``, ``StickyDeny``,
``PendingSwap``, ``RollbackRecord``), one frozen keyword-only dataclass per event the shell
feeds in, and one per effect the machine hands out.  Every value is validated on
construction, so a malformed one fails where it is built, not deep inside a transition.

Import them from ``core.updater`` (which re-exports every name here): ``up.Nudged``,
``up.Swap``, ``up.Candidate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .documents import Allowlist, Scope
from .gates import GATE_ALLOWLIST, GATE_CAPACITY, GateResult, Target


class Rng(Protocol):
    """The randomness the updater draws from: ``random.Random`` fits; so does a stub.

    Only uniform draws in ``[0, 1)``: ``core.timing`` turns each into a wait, with the same
    arithmetic the simulations apply to arrays of draws.
    """

    def random(self) -> float: ...


# -- validation helpers -------------------------------------------------------------------


def _check_artifact(value: str, where: str) -> None:
    """Artifacts are named by lowercase hex sha256, as in every signed document."""
    if len(value) != 64 or value.strip("0123456789abcdef"):
        raise ValueError(f"{where}: artifact must be 64 lowercase hex digits, got {value!r}")


def _check_reason(value: str, where: str) -> None:
    if not value:
        raise ValueError(f"{where}: a reason is required (operators act on it)")


def _check_seconds(value: float, where: str) -> None:
    if not 0.0 <= value < float("inf"):
        raise ValueError(f"{where}: must be >= 0 and finite, got {value!r}")


# -- records ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """The artifact gates 1 and 2 allow this node to ask for, and what the ask binds to.

    ``allowlist_version`` and ``scope_serial`` go into the ask because the departure token is
    bound to them (README "Trust model"); ``counter`` decides whether a sticky deny is lifted.
    """

    artifact: str
    counter: int
    allowlist_version: int
    scope_serial: int
    force: bool = False

    def __post_init__(self) -> None:
        _check_artifact(self.artifact, "Candidate")
        if self.counter < 1 or self.allowlist_version < 1 or self.scope_serial < 1:
            raise ValueError("Candidate: counter, allowlist_version and scope_serial start at 1")

    @classmethod
    def from_target(
        cls, target: Target, *, allowlist: Allowlist | None, scope: Scope | None
    ) -> Candidate | None:
        """The candidate ``gates.choose_target`` found, or None when it found none.

        ``allowlist`` and ``scope`` are the documents the target was chosen from.
        """
        if target.artifact is None:
            return None
        if target.release is None or allowlist is None or scope is None:
            raise ValueError("a passing target needs its release, allowlist and scope")
        return cls(
            artifact=target.artifact,
            counter=target.release.counter,
            allowlist_version=allowlist.version,
            scope_serial=scope.serial,
            force=scope.force,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class StickyDeny:
    """An artifact that failed probation on this node; lifted only by a higher counter."""

    artifact: str
    counter: int

    def __post_init__(self) -> None:
        _check_artifact(self.artifact, "StickyDeny")


@dataclass(frozen=True, kw_only=True, slots=True)
class PendingSwap:
    """What the launcher's ``pending`` record must hold across the process boundary."""

    from_artifact: str
    to_artifact: str
    to_counter: int
    #: The departure token (signed envelope bytes): the rejoin report ends this lease.
    token: bytes

    def __post_init__(self) -> None:
        _check_artifact(self.from_artifact, "PendingSwap.from_artifact")
        _check_artifact(self.to_artifact, "PendingSwap.to_artifact")


@dataclass(frozen=True, kw_only=True, slots=True)
class RollbackRecord:
    """What the launcher records after rolling back (from ``RollBack`` or after a crash)."""

    artifact: str
    counter: int
    reason: str
    token: bytes | None = None

    def __post_init__(self) -> None:
        _check_artifact(self.artifact, "RollbackRecord")
        _check_reason(self.reason, "RollbackRecord")


@dataclass(frozen=True, kw_only=True, slots=True)
class RefusalCause:
    """What a refused node waits on, and what it saw when it was refused.

    The wait is bound to this cause (README "Node life cycle"): a scope serial or allowlist
    version above the ones the refused ask was bound to, a nudge, or (for a capacity
    refusal) the replica's word that a slot freed ends it early.  ``gate`` is the gate that
    said no (``capacity``, ``breaker``, ``allowlist``, ``scope``); a breaker pause lasts
    until an operator publishes a newer scope, so ``scope_serial`` is the breaker state the
    node saw.
    """

    gate: str
    reason: str
    artifact: str
    allowlist_version: int
    scope_serial: int
    #: Place in the replica's queue (capacity refusals), for status only.
    position: int | None = None

    def __post_init__(self) -> None:
        _check_artifact(self.artifact, "RefusalCause")
        _check_reason(self.reason, "RefusalCause")

    @property
    def capacity(self) -> bool:
        """A capacity refusal: only a freed slot (or its ``retry_after``) ends the wait;
        a new document does not free capacity, and waking on one would be a stampede."""
        return self.gate == GATE_CAPACITY


# -- events (shell -> updater) --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Something the shell tells the updater.  One frozen class per kind, keyword-only and
    validated on construction (README "Architecture")."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Started(Event):
    """Fed exactly once, right after construction: arms the first timer / first effects."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Timer(Event):
    """The timer from ``get_timer()`` expired.  Only ``handle_timer(now)`` creates it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Nudged(Event):
    """A verified nudge ("look now") for ``artifact``.  Skips the sleep, never a gate."""

    artifact: str

    def __post_init__(self) -> None:
        _check_artifact(self.artifact, "Nudged")


@dataclass(frozen=True, kw_only=True, slots=True)
class AllowlistLearned(Event):
    """A verified allowlist, newer than any the node held, that a peer gossiped.

    The shell delivers it and nothing else; the updater decides whether and when it starts
    a check (the module docstring: spread over ``notice_spread``).
    """

    version: int
    artifacts: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("AllowlistLearned: allowlist versions start at 1")
        for artifact in self.artifacts:
            _check_artifact(artifact, "AllowlistLearned")


@dataclass(frozen=True, kw_only=True, slots=True)
class ScopeLearned(Event):
    """A verified scope with a serial above any the node held (from a replica or gossip).

    A newer scope may let a node in, and it is what resumes a rollout the breaker paused:
    it ends a refusal's wait bound to an older serial, and brings a sleeping node's check
    forward like a learned allowlist.
    """

    serial: int

    def __post_init__(self) -> None:
        if self.serial < 1:
            raise ValueError("ScopeLearned: scope serials start at 1")


@dataclass(frozen=True, kw_only=True, slots=True)
class ReleaseLearned(Event):
    """A verified release record the node did not hold (from a replica or gossip).

    An allowlist can arrive before the release record it names (two documents, two rumors):
    gate 1 then says ``no-release-record`` and the node would sleep a whole check interval.
    The record's arrival ends that wait (within ``notice_spread``); anywhere else it is only
    remembered until the next check.
    """

    artifact: str

    def __post_init__(self) -> None:
        _check_artifact(self.artifact, "ReleaseLearned")


@dataclass(frozen=True, kw_only=True, slots=True)
class SlotFreed(Event):
    """A replica's signed word that a departure slot freed and this node heads its queue
    (verified by the shell).  Ends a capacity refusal's wait; anywhere else it is moot."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GatesEvaluated(Event):
    """The answer to ``EvaluateGates``: a candidate, or none (and the refusal, for status)."""

    candidate: Candidate | None
    refusal: GateResult | None = None

    def __post_init__(self) -> None:
        if self.candidate is not None and self.refusal is not None:
            raise ValueError("GatesEvaluated: a candidate passed every gate; no refusal")

    @classmethod
    def from_target(
        cls, target: Target, *, allowlist: Allowlist | None, scope: Scope | None
    ) -> GatesEvaluated:
        """Wrap ``gates.choose_target``'s answer (the shell's one-liner)."""
        candidate = Candidate.from_target(target, allowlist=allowlist, scope=scope)
        return cls(candidate=candidate, refusal=target.refusal if candidate is None else None)

    @classmethod
    def no_candidate(cls, *, reason: str, detail: str) -> GatesEvaluated:
        """No candidate, because gate 1 has nothing to pass: no documents yet, no source of
        builds, no offer above the installed counter.  ``reason`` is the code an operator
        sees in the status report, ``detail`` what it means here."""
        _check_reason(reason, "GatesEvaluated.no_candidate")
        refusal = GateResult(ok=False, gate=GATE_ALLOWLIST, reason=reason, detail=detail)
        return cls(candidate=None, refusal=refusal)


@dataclass(frozen=True, kw_only=True, slots=True)
class PrefetchDone(Event):
    """Every chunk of ``artifact`` is in the store, verified against the release record."""

    artifact: str

    def __post_init__(self) -> None:
        _check_artifact(self.artifact, "PrefetchDone")


@dataclass(frozen=True, kw_only=True, slots=True)
class PrefetchFailed(Event):
    """The swarm (and the origin) could not deliver ``artifact`` in the shell's time."""

    artifact: str
    reason: str

    def __post_init__(self) -> None:
        _check_artifact(self.artifact, "PrefetchFailed")
        _check_reason(self.reason, "PrefetchFailed")


@dataclass(frozen=True, kw_only=True, slots=True)
class Granted(Event):
    """A departure token the shell has verified (signature threshold, binding, expiry).

    ``lease_ttl`` is the time left on the lease when it arrived, in seconds (the shell turns
    the token's wall-clock ``expires`` into it).  A token that fails verification is fed as
    ``CoordinatorError`` instead.
    """

    token: bytes
    lease_ttl: float

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("Granted: empty token")
        _check_seconds(self.lease_ttl, "Granted.lease_ttl")


@dataclass(frozen=True, kw_only=True, slots=True)
class Refused(Event):
    """The coordinator said no, with the gate, a reason code and when to ask again."""

    gate: str
    reason: str
    retry_after: float | None = None
    #: Place in the coordinator's queue, where it knows one (for status only).
    position: int | None = None

    def __post_init__(self) -> None:
        _check_reason(self.reason, "Refused")
        if self.retry_after is not None:
            _check_seconds(self.retry_after, "Refused.retry_after")


@dataclass(frozen=True, kw_only=True, slots=True)
class CoordinatorError(Event):
    """No usable answer: unreachable, timeout, 5xx, or a token that did not verify."""

    reason: str

    def __post_init__(self) -> None:
        _check_reason(self.reason, "CoordinatorError")


@dataclass(frozen=True, kw_only=True, slots=True)
class Drained(Event):
    """No new work taken, in-flight work finished, state checkpointed."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SwapFailed(Event):
    """Staging the new slot failed before the process exited (disk full, bad unpack...)."""

    reason: str

    def __post_init__(self) -> None:
        _check_reason(self.reason, "SwapFailed")


@dataclass(frozen=True, kw_only=True, slots=True)
class HealthOk(Event):
    """The new version restored its work, rejoined gossip and passed its health check."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbationFailed(Event):
    """The new version is unhealthy (restore failed, health check failed for good)."""

    reason: str

    def __post_init__(self) -> None:
        _check_reason(self.reason, "ProbationFailed")


@dataclass(frozen=True, kw_only=True, slots=True)
class Confirmed(Event):
    """The launcher promoted the new slot to ``current``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Reported(Event):
    """The coordinator acknowledged a ``ReportRejoined`` / ``ReportFailure``."""


# -- effects (updater -> shell) -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Effect:
    """Something the shell must do and, where it says so, answer with an event."""


@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluateGates(Effect):
    """Run gates 1 and 2 (``gates.choose_target``) now; answer ``GatesEvaluated``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Prefetch(Effect):
    """Pull ``artifact`` into the store; answer ``PrefetchDone`` / ``PrefetchFailed``."""

    artifact: str
    counter: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AskCoordinator(Effect):
    """Ask for a departure; answer ``Granted`` / ``Refused`` / ``CoordinatorError``."""

    from_artifact: str
    candidate: Candidate


@dataclass(frozen=True, kw_only=True, slots=True)
class Drain(Effect):
    """Stop taking work, finish in-flight, checkpoint, by ``deadline`` (monotonic seconds).

    Answer ``Drained``; the updater gives up ``drain_grace`` after the deadline.
    """

    deadline: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Swap(Effect):
    """Unpack to ``slots/<sha>/``, fsync, write ``pending``, exit with the swap code.

    Answer ``SwapFailed`` only if that fails before the process exits.
    """

    pending: PendingSwap


@dataclass(frozen=True, kw_only=True, slots=True)
class ResumeServing(Effect):
    """Undo a drain: take work again on the running version."""

    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ReturnLease(Effect):
    """Hand a lease back unused (best effort; it lapses at expiry anyway)."""

    token: bytes
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RestoreWork(Effect):
    """On probation: restore the checkpoint, serve, rejoin gossip, run health checks.

    Answer ``HealthOk`` or ``ProbationFailed``.
    """


@dataclass(frozen=True, kw_only=True, slots=True)
class Confirm(Effect):
    """Ask the launcher to promote ``artifact``'s slot to ``current``; answer ``Confirmed``.

    Idempotent: emitted on every ``HealthOk``.
    """

    artifact: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RollBack(Effect):
    """Exit with the rollback code; the launcher restores ``previous`` and sticky-denies."""

    artifact: str
    counter: int
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportRejoined(Effect):
    """Tell the coordinator the node runs ``artifact`` and is healthy (ends the lease).

    Answer ``Reported`` / ``CoordinatorError``.
    """

    artifact: str
    token: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportFailure(Effect):
    """Tell the coordinator ``artifact`` failed probation here (feeds the circuit breaker).

    Answer ``Reported`` / ``CoordinatorError``.
    """

    artifact: str
    counter: int
    reason: str
    token: bytes | None


@dataclass(frozen=True, kw_only=True, slots=True)
class LiftDeny(Effect):
    """Tell the launcher to forget the sticky deny of ``artifact`` (a higher counter came)."""

    artifact: str
