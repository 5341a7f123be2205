"""The update state machine of one node: events in, effects out, every transition in one table.

Modelled on h11's ``_state.py`` (README "Architecture"): ``TRANSITIONS`` maps ``(State,
event type)`` to the one handler allowed to run there and the states it may lead to.  A
pair that is not in the table raises ``InvalidTransitionError``: an event the machine does
not expect is a bug in whoever fed it, never something to drop silently.  The table is
data, so ``render_table()`` / ``render_dot()`` draw the documentation from it and the tests
check that every row is exercised.  The values that cross the boundary (events, effects and
the records they carry) live in ``core.updater_events``, the timings and the waits they
give in ``core.timing``; both are re-exported here, so ``up.Nudged`` and
``up.UpdaterConfig`` are where a shell looks for them.

Sans-IO (README "Architecture"): nothing here reads a clock, draws randomness or touches
the disk or the network.  ``now`` is monotonic seconds (a float) passed to every call; randomness
comes from an ``Rng`` handed to the constructor (a ``random.Random`` in the daemon, a seeded
one in tests and simulations).  The shell (daemon + launcher) performs the returned effects
and reports back with events; it asks ``get_timer()`` when to call ``handle_timer(now)``.

The life cycle (README "Node life cycle")::

    sleeping --allowlist learned--> sleeping (timer within notice_spread)
    sleeping --timer/nudge--> noticed --gates ok--> prefetching --done--> noticed --> asking
    asking --refused--> refused --retry_after (jittered)--> noticed --> asking ...
    refused --its cause changed--> refused (timer within wake_spread) --> noticed ...
    asking --coordinator error--> backing_off --exponential backoff--> noticed --> asking ...
    asking --granted--> draining --drained--> swapping ==[process boundary]==>
    probation --health ok, confirmed--> rejoined --reported--> sleeping
    probation --unhealthy / no confirm in time--> rolling_back ==[launcher]==>
    rolled_back (the old version again) --reported--> sleeping

Design choices, and why:

* **Noticing is local.**  On its jittered timer (or a nudge) the node emits
  ``EvaluateGates``; the shell runs ``gates.choose_target`` over the documents it holds
  (allowlists and scopes arrive by gossip or from the coordinator at any time and update
  the shell's ``TrustStore``) and answers ``GatesEvaluated``.  Only the timer or a nudge
  starts a check.
* **A learned allowlist brings the timer forward, spread out.**  A newer allowlist a peer
  gossiped (``AllowlistLearned``) reaches the whole fleet within seconds; if every node
  checked on arrival the fleet would ask the coordinator in the same second, which is
  exactly what the jittered interval exists to prevent.  So in ``sleeping`` the updater
  moves its timer to ``now + uniform(0, notice_spread)`` -- unless a check is already due
  within ``notice_spread`` (it comes soon enough, spread by its own jitter), the version is
  not newer than one already learned, or the allowlist names nothing but the running and
  sticky-denied artifacts.  Anywhere else it is remembered like a nudge: the next check
  covers it, and a node that falls asleep with one remembered sleeps at most
  ``notice_spread`` (drawn the same way).
* **A release record that was missing ends the sleep it caused.**  An allowlist can arrive
  before the release record it names (two rumors); gate 1 then says ``no-release-record``.
  The record's arrival (``ReleaseLearned``) brings that sleep's timer within
  ``notice_spread``; one that came while the gates were being checked makes the sleep that
  check ends in as short; anywhere else it changes nothing now.
* **Every ask follows a fresh gate check.**  Prefetching can take minutes and a refusal can
  hold a node for longer; meanwhile the scope may be narrowed or the allowlist may expire.
  So ``prefetching``, ``refused`` and ``backing_off`` all lead back to ``noticed`` (a local,
  cheap check) instead of straight to ``asking``; an artifact already prefetched is not
  fetched again.
* **Nudges skip the sleep, never a gate.**  In ``sleeping`` a nudge starts the check at
  once.  Anywhere else it is remembered, not acted on: the check that is already running
  covers it, a refusal's ``retry_after`` is the coordinator pacing the herd and is respected,
  and a node that is draining or on probation has better things to do.  When the node next
  falls asleep with a nudge remembered, it checks immediately.  A nudge naming the running
  or a sticky-denied artifact is ignored outright.
* **Refused means wait and keep serving, bound to the cause.**  A refusal waits
  ``retry_after`` (one check interval if none, at least ``min_retry``), stretched by up to
  ``retry_jitter``, and keeps a ``RefusalCause`` (gate; allowlist version and scope serial
  the ask was bound to).  When the cause changes the wait ends within ``wake_spread``: a
  newer scope (what resumes a paused breaker) or allowlist, or a nudge, for a breaker or
  document refusal; the replica's ``SlotFreed`` (head of its queue) for a capacity one,
  which only remembers the rest: a document frees no capacity, ``retry_after`` paces herds.
* **Coordinator errors back off exponentially with "equal jitter"**: after the n-th
  consecutive error the wait is uniform in ``[d/2, d]`` with
  ``d = min(backoff_cap, backoff_base * 2**(n-1))`` (5 s .. 15 min by default).  Half fixed,
  half random: never the near-zero retries full jitter can draw, and a crowd that failed
  together spreads out.  Any answer from the coordinator (grant, refusal, report
  acknowledged) resets the count.
* **A lease is spent, not held.**  ``Granted`` goes straight to draining (the issue's
  "granted" is this edge, not a resting state): every second between grant and swap is
  capacity borrowed from the network.  The drain deadline leaves ``swap_margin`` of the lease
  for the swap and restart; a lease too short for that is handed back (``ReturnLease``) and
  counted as a coordinator error.  If the drain overruns, or the swap fails before the
  process exits, the node resumes serving on the old version and hands the lease back.
* **The process boundary.**  ``Swap`` carries the ``PendingSwap`` record the daemon's shell
  writes (with the launcher's state module) before the process exits with the swap code.
  The new process builds its updater with ``Updater.on_probation(pending, ...)``; if probation fails (``ProbationFailed`` or no
  ``Confirmed`` within ``probation_timeout``) it emits ``RollBack`` and exits, and the
  launcher restores the previous slot (it does the same, with no updater involved, when the
  new version crashes).  The old version then starts with
  ``Updater.after_rollback(record, ...)`` and reports the failure (the coordinator's circuit
  breaker counts it).
* **Sticky deny.**  An artifact that failed probation here is never tried again on this node,
  whatever nudges or scopes say (``force`` skips gate 3 only, and this is not gate 3) -- until
  a candidate with a *higher release counter* shows up, which lifts the deny (``LiftDeny``
  tells the launcher to forget it).  The launcher persists the denies and passes them in.
* **Reports are retried with the same backoff** (``report_attempts`` tries, then the node
  goes back to sleep: heartbeats still carry its version and state, and a lease lapses on its
  own).
* **States that wait on the shell have no timer.**  ``noticed``, ``prefetching``, ``asking``,
  ``swapping`` and reporting wait for the shell's answer; the shell bounds each effect with its
  own timeout and reports a failure as an event (``PrefetchFailed``, ``CoordinatorError``,
  ``SwapFailed``).  The states in ``TIMED_STATES`` always have a timer.
* The first check after start is uniform in ``[0, check_interval]``, so a fleet that boots
  together (a power cut) does not check in lockstep.
* **Every wait is computed in ``core.timing``** (with ``UpdaterConfig``, re-exported here):
  the updater passes it one ``rng.random()`` draw at a time, the simulations pass arrays of
  draws, so the simulated fleet waits exactly as the real one does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar, cast

from . import timing
from .gates import NO_RELEASE_RECORD
from .timing import UpdaterConfig
from .updater_events import (
    AllowlistLearned,
    AskCoordinator,
    Candidate,
    Confirm,
    Confirmed,
    CoordinatorError,
    Drain,
    Drained,
    Effect,
    EvaluateGates,
    Event,
    GatesEvaluated,
    Granted,
    HealthOk,
    LiftDeny,
    Nudged,
    PendingSwap,
    Prefetch,
    PrefetchDone,
    PrefetchFailed,
    ProbationFailed,
    RefusalCause,
    Refused,
    ReleaseLearned,
    Reported,
    ReportFailure,
    ReportRejoined,
    RestoreWork,
    ResumeServing,
    ReturnLease,
    Rng,
    RollBack,
    RollbackRecord,
    ScopeLearned,
    SlotFreed,
    Started,
    StickyDeny,
    Swap,
    SwapFailed,
    Timer,
    _check_artifact,
)
from .updater_states import INITIAL_STATES, TIMED_STATES, InvalidTransitionError, State

__all__ = [
    "INITIAL_STATES",
    "TIMED_STATES",
    "TRANSITIONS",
    "AllowlistLearned",
    "AskCoordinator",
    "Candidate",
    "Confirm",
    "Confirmed",
    "CoordinatorError",
    "Drain",
    "Drained",
    "Effect",
    "EvaluateGates",
    "Event",
    "GatesEvaluated",
    "Granted",
    "HealthOk",
    "InvalidTransitionError",
    "LiftDeny",
    "Nudged",
    "PendingSwap",
    "Prefetch",
    "PrefetchDone",
    "PrefetchFailed",
    "ProbationFailed",
    "RefusalCause",
    "Refused",
    "ReleaseLearned",
    "ReportFailure",
    "ReportRejoined",
    "Reported",
    "RestoreWork",
    "ResumeServing",
    "ReturnLease",
    "Rng",
    "RollBack",
    "RollbackRecord",
    "ScopeLearned",
    "SlotFreed",
    "Started",
    "State",
    "StickyDeny",
    "Swap",
    "SwapFailed",
    "Timer",
    "Transition",
    "Updater",
    "UpdaterConfig",
    "render_dot",
    "render_table",
    "table_rows",
]


# -- the table ------------------------------------------------------------------------------

Step = tuple[State, list[Effect]]
Handler = Callable[["Updater", Event, float], Step]
E = TypeVar("E", bound=Event)


@dataclass(frozen=True, kw_only=True, slots=True)
class Transition:
    """One row: the handler that runs, every state it may lead to, and why (for the docs)."""

    handler: Handler
    targets: tuple[State, ...]
    note: str


class Updater:
    """The update state machine of one node.  See the module docstring for the design.

    Construct with ``Updater(...)`` (a normal start: sleeping), ``Updater.on_probation(...)``
    (the new version, from the launcher's pending record) or ``Updater.after_rollback(...)``
    (the old version again), then feed ``Started()`` once.
    """

    def __init__(
        self,
        *,
        installed: str,
        rng: Rng,
        config: UpdaterConfig | None = None,
        denied: Iterable[StickyDeny] = (),
    ) -> None:
        _check_artifact(installed, "Updater.installed")
        self._config = config if config is not None else UpdaterConfig()
        self._rng = rng
        self._installed = installed
        self._denied: tuple[StickyDeny, ...] = tuple(denied)
        self._state = State.SLEEPING
        self._started = False
        self._timer: float | None = None
        self._timer_set = False
        self._nudge_pending = False
        #: A learned allowlist not yet covered by a check (brings the next sleep forward).
        self._notice_pending = False
        #: The newest allowlist version ``AllowlistLearned`` brought.
        self._allowlist_version = 0
        #: The newest scope serial ``ScopeLearned`` brought.
        self._scope_serial = 0
        #: The last check found an allowlisted artifact without its release record.
        self._awaits_release = False
        #: A release record learned since the last check started (``ReleaseLearned``).
        self._release_news = False
        #: Why the node is refused, and what it saw then (set in ``refused`` only).
        self._refusal: RefusalCause | None = None
        self._attempts = 0
        self._candidate: Candidate | None = None
        self._prefetched: str | None = None
        self._token: bytes | None = None
        self._pending: PendingSwap | None = None
        self._report: ReportRejoined | ReportFailure | None = None

    @classmethod
    def on_probation(
        cls,
        pending: PendingSwap,
        *,
        rng: Rng,
        config: UpdaterConfig | None = None,
        denied: Iterable[StickyDeny] = (),
    ) -> Updater:
        """The updater of a freshly swapped process, from the launcher's pending record."""
        updater = cls(installed=pending.to_artifact, rng=rng, config=config, denied=denied)
        updater._state = State.PROBATION
        updater._pending = pending
        return updater

    @classmethod
    def after_rollback(
        cls,
        record: RollbackRecord,
        *,
        installed: str,
        rng: Rng,
        config: UpdaterConfig | None = None,
        denied: Iterable[StickyDeny] = (),
    ) -> Updater:
        """The updater of the old version after the launcher rolled a failed swap back.

        Adds the sticky deny of the failed artifact (the launcher persists it too).
        """
        deny = StickyDeny(artifact=record.artifact, counter=record.counter)
        merged = (*(d for d in denied if d != deny), deny)
        updater = cls(installed=installed, rng=rng, config=config, denied=merged)
        updater._state = State.ROLLED_BACK
        updater._report = ReportFailure(
            artifact=record.artifact,
            counter=record.counter,
            reason=record.reason,
            token=record.token,
        )
        return updater

    # -- read-only views --------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def installed(self) -> str:
        return self._installed

    @property
    def candidate(self) -> Candidate | None:
        """The artifact being worked towards (from ``noticed`` until the swap or a sleep)."""
        return self._candidate

    @property
    def refusal(self) -> RefusalCause | None:
        """What a refused node waits on (None in every other state)."""
        return self._refusal

    @property
    def denied(self) -> tuple[StickyDeny, ...]:
        return self._denied

    @property
    def attempts(self) -> int:
        """Consecutive coordinator errors (drives the backoff)."""
        return self._attempts

    @property
    def config(self) -> UpdaterConfig:
        return self._config

    # -- the sans-IO interface --------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Feed one event; return the effects the shell must perform, in order."""
        if isinstance(event, Timer):
            raise TypeError("timers enter through handle_timer(now), which checks the deadline")
        return self._dispatch(event, now)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (monotonic seconds), or None."""
        return self._timer

    def handle_timer(self, now: float) -> list[Effect]:
        """Call at or after ``get_timer()``; an early or spurious call does nothing."""
        if self._timer is None or now < self._timer:
            return []
        self._timer = None
        return self._dispatch(Timer(), now)

    def _dispatch(self, event: Event, now: float) -> list[Effect]:
        state, kind = self._state, type(event)
        if kind is Started:
            if self._started:
                raise InvalidTransitionError(
                    f"updater already started (now {state.value})", state=state, event=kind.__name__
                )
        elif not self._started:
            raise InvalidTransitionError(
                f"{kind.__name__} before Started (feed Started() first)",
                state=state,
                event=kind.__name__,
            )
        transition = TRANSITIONS.get((state, kind))
        if transition is None:
            raise InvalidTransitionError(
                f"event {kind.__name__} is not valid in state {state.value}: "
                "no such row in updater.TRANSITIONS",
                state=state,
                event=kind.__name__,
            )
        self._timer_set = False
        next_state, effects = transition.handler(self, event, now)
        assert next_state in transition.targets, (state, kind, next_state)
        self._started = True
        if next_state is not state and not self._timer_set:
            self._timer = None
        self._state = next_state
        assert next_state not in TIMED_STATES or self._timer is not None, next_state
        return effects

    # -- helpers ----------------------------------------------------------------------------

    def _set_timer(self, when: float) -> None:
        self._timer = when
        self._timer_set = True

    def _is_denied(self, artifact: str) -> bool:
        return any(d.artifact == artifact for d in self._denied)

    def _ignores_nudge(self, nudge: Nudged) -> bool:
        return nudge.artifact == self._installed or self._is_denied(nudge.artifact)

    def _jittered_interval(self) -> float:
        return timing.check_interval(self._config, self._rng.random())

    def _backoff(self) -> float:
        """Equal jitter over the consecutive errors so far (``timing.backoff``)."""
        return timing.backoff(self._config, self._attempts, self._rng.random())

    def _takes_allowlist(self, event: AllowlistLearned) -> bool:
        """Whether a learned allowlist is news that may move this node: a version above
        every one learned before, naming an artifact that is neither running nor denied."""
        if event.version <= self._allowlist_version:
            return False
        self._allowlist_version = event.version
        return any(a != self._installed and not self._is_denied(a) for a in event.artifacts)

    def _takes_scope(self, event: ScopeLearned) -> bool:
        """Whether a learned scope is news: a serial above every one learned before."""
        if event.serial <= self._scope_serial:
            return False
        self._scope_serial = event.serial
        return True

    def _notice_soon(self, now: float) -> None:
        """Bring the check forward to a uniform point in ``[now, now + notice_spread]``,
        unless one is already due by then (it is spread by its own jitter)."""
        c = self._config
        if self._timer is not None and self._timer <= now + c.notice_spread:
            return
        self._set_timer(now + timing.notice_delay(c, self._rng.random()))

    def _check(self) -> Step:
        """Start a local gate check; it covers any nudge or allowlist received until now."""
        self._nudge_pending = False
        self._notice_pending = False
        self._release_news = False
        self._refusal = None
        return State.NOTICED, [EvaluateGates()]

    def _sleep(self, now: float) -> State:
        """Back to serving-and-waiting; a nudge that came while busy makes it a short sleep,
        an allowlist learned while busy one of at most ``notice_spread``."""
        self._attempts = 0
        self._candidate = None
        self._token = None
        self._set_timer(now if self._nudge_pending else now + self._jittered_interval())
        if self._notice_pending:
            self._notice_pending = False
            self._notice_soon(now)
        return State.SLEEPING

    def _unexpected(self, what: str, event: str = "") -> InvalidTransitionError:
        return InvalidTransitionError(
            f"{what} in state {self._state.value}", state=self._state, event=event
        )

    def _need_candidate(self) -> Candidate:
        if self._candidate is None:  # pragma: no cover - the table makes this unreachable
            raise self._unexpected("no candidate")
        return self._candidate

    def _need_refusal(self) -> RefusalCause:
        if self._refusal is None:  # pragma: no cover - set on entry to refused
            raise self._unexpected("no refusal")
        return self._refusal

    def _need_token(self) -> bytes:
        if self._token is None:  # pragma: no cover - the table makes this unreachable
            raise self._unexpected("no lease")
        return self._token

    def _need_pending(self) -> PendingSwap:
        if self._pending is None:  # pragma: no cover - only on_probation reaches probation
            raise self._unexpected("no pending swap")
        return self._pending

    def _need_report(self) -> ReportRejoined | ReportFailure:
        if self._report is None:  # pragma: no cover - set on entry to both reporting states
            raise self._unexpected("nothing to report")
        return self._report

    def _abort(self, now: float, reason: str) -> Step:
        """Give the lease back and serve on the old version again."""
        token = self._need_token()
        return self._sleep(now), [
            ResumeServing(reason=reason),
            ReturnLease(token=token, reason=reason),
        ]

    # -- handlers (one per table row or group of rows) --------------------------------------

    def _start_sleeping(self, event: Started, now: float) -> Step:
        self._set_timer(now + timing.first_check(self._config, self._rng.random()))
        return State.SLEEPING, []

    def _start_probation(self, event: Started, now: float) -> Step:
        self._set_timer(now + self._config.probation_timeout)
        return State.PROBATION, [RestoreWork()]

    def _start_reporting(self, event: Started, now: float) -> Step:
        return self._state, [self._need_report()]

    def _check_on_timer(self, event: Timer, now: float) -> Step:
        return self._check()

    def _nudged_while_sleeping(self, event: Nudged, now: float) -> Step:
        if self._ignores_nudge(event):
            return State.SLEEPING, []
        return self._check()

    def _remember_nudge(self, event: Nudged, now: float) -> Step:
        if not self._ignores_nudge(event):
            self._nudge_pending = True
        return self._state, []

    def _allowlist_learned_while_sleeping(self, event: AllowlistLearned, now: float) -> Step:
        if self._takes_allowlist(event):
            self._notice_soon(now)
        return State.SLEEPING, []

    def _remember_allowlist(self, event: AllowlistLearned, now: float) -> Step:
        if self._takes_allowlist(event):
            self._notice_pending = True
        return self._state, []

    def _scope_learned_while_sleeping(self, event: ScopeLearned, now: float) -> Step:
        if self._takes_scope(event):
            self._notice_soon(now)
        return State.SLEEPING, []

    def _remember_scope(self, event: ScopeLearned, now: float) -> Step:
        if self._takes_scope(event):
            self._notice_pending = True
        return self._state, []

    def _release_learned_while_sleeping(self, event: ReleaseLearned, now: float) -> Step:
        if self._remembers_release(event) and self._awaits_release:
            self._notice_soon(now)
        return State.SLEEPING, []

    def _remember_release(self, event: ReleaseLearned, now: float) -> Step:
        self._remembers_release(event)
        return self._state, []

    def _remembers_release(self, event: ReleaseLearned) -> bool:
        """Whether a learned release record is news that may move this node (one for the
        running or a denied artifact is not); remembered until the next check starts."""
        if event.artifact == self._installed or self._is_denied(event.artifact):
            return False
        self._release_news = True
        return True

    def _moot(self, event: SlotFreed, now: float) -> Step:
        return self._state, []

    def _wake(self, now: float) -> Step:
        """End the refusal's wait within ``wake_spread`` (never later than it was due)."""
        due = now + timing.wake_delay(self._config, self._rng.random())
        self._set_timer(min(due, self._timer if self._timer is not None else due))
        return State.REFUSED, []

    def _nudged_while_refused(self, event: Nudged, now: float) -> Step:
        if self._need_refusal().capacity:
            return self._remember_nudge(event, now)
        return (State.REFUSED, []) if self._ignores_nudge(event) else self._wake(now)

    def _allowlist_learned_while_refused(self, event: AllowlistLearned, now: float) -> Step:
        cause = self._need_refusal()
        if not cause.capacity and event.version > cause.allowlist_version:
            self._takes_allowlist(event)
            return self._wake(now)
        return self._remember_allowlist(event, now)

    def _scope_learned_while_refused(self, event: ScopeLearned, now: float) -> Step:
        cause = self._need_refusal()
        if not cause.capacity and event.serial > cause.scope_serial:
            self._takes_scope(event)
            return self._wake(now)
        return self._remember_scope(event, now)

    def _slot_freed_while_refused(self, event: SlotFreed, now: float) -> Step:
        return self._wake(now) if self._need_refusal().capacity else (State.REFUSED, [])

    def _gates_evaluated(self, event: GatesEvaluated, now: float) -> Step:
        effects: list[Effect] = []
        candidate = event.candidate
        if candidate is not None:
            lifted = [d for d in self._denied if d.counter < candidate.counter]
            if lifted:
                self._denied = tuple(d for d in self._denied if d not in lifted)
                effects.extend(LiftDeny(artifact=d.artifact) for d in lifted)
        refusal = event.refusal
        self._awaits_release = refusal is not None and refusal.reason == NO_RELEASE_RECORD
        if (
            candidate is None
            or candidate.artifact == self._installed
            or self._is_denied(candidate.artifact)
        ):
            state = self._sleep(now)
            if self._awaits_release and self._release_news:
                self._notice_soon(now)  # the record came while the gates were being checked
            return state, effects
        self._candidate = candidate
        if self._prefetched == candidate.artifact:
            effects.append(AskCoordinator(from_artifact=self._installed, candidate=candidate))
            return State.ASKING, effects
        effects.append(Prefetch(artifact=candidate.artifact, counter=candidate.counter))
        return State.PREFETCHING, effects

    def _check_prefetch_result(self, artifact: str, what: str) -> None:
        expected = self._need_candidate().artifact
        if artifact != expected:
            raise self._unexpected(
                f"{what} for {artifact[:16]}... while prefetching {expected[:16]}...", event=what
            )

    def _prefetch_done(self, event: PrefetchDone, now: float) -> Step:
        self._check_prefetch_result(event.artifact, "PrefetchDone")
        self._prefetched = event.artifact
        return self._check()

    def _prefetch_failed(self, event: PrefetchFailed, now: float) -> Step:
        self._check_prefetch_result(event.artifact, "PrefetchFailed")
        return self._sleep(now), []

    def _granted(self, event: Granted, now: float) -> Step:
        c = self._config
        budget = timing.drain_budget(c, event.lease_ttl)
        if budget <= 0.0:
            # Too short to drain and swap inside the lease: the coordinator is misconfigured
            # or our clocks disagree; do not leave on a lease that will lapse mid-swap.
            self._attempts += 1
            self._set_timer(now + self._backoff())
            return State.BACKING_OFF, [ReturnLease(token=event.token, reason="lease-too-short")]
        self._attempts = 0
        self._token = event.token
        deadline = now + budget
        self._set_timer(deadline + c.drain_grace)
        return State.DRAINING, [Drain(deadline=deadline)]

    def _refused(self, event: Refused, now: float) -> Step:
        self._attempts = 0
        c = self._need_candidate()
        self._refusal = RefusalCause(
            gate=event.gate,
            reason=event.reason,
            artifact=c.artifact,
            allowlist_version=c.allowlist_version,
            scope_serial=c.scope_serial,
            position=event.position,
        )
        wait = timing.refusal_wait(self._config, event.retry_after, self._rng.random())
        self._set_timer(now + wait)
        return State.REFUSED, []

    def _ask_failed(self, event: CoordinatorError, now: float) -> Step:
        self._attempts += 1
        self._set_timer(now + self._backoff())
        return State.BACKING_OFF, []

    def _drained(self, event: Drained, now: float) -> Step:
        candidate = self._need_candidate()
        pending = PendingSwap(
            from_artifact=self._installed,
            to_artifact=candidate.artifact,
            to_counter=candidate.counter,
            token=self._need_token(),
        )
        return State.SWAPPING, [Swap(pending=pending)]

    def _drain_overrun(self, event: Timer, now: float) -> Step:
        return self._abort(now, "drain-timeout")

    def _swap_failed(self, event: SwapFailed, now: float) -> Step:
        return self._abort(now, f"swap-failed: {event.reason}")

    def _health_ok(self, event: HealthOk, now: float) -> Step:
        return State.PROBATION, [Confirm(artifact=self._need_pending().to_artifact)]

    def _confirmed(self, event: Confirmed, now: float) -> Step:
        pending = self._need_pending()
        self._attempts = 0
        self._report = ReportRejoined(artifact=pending.to_artifact, token=pending.token)
        return State.REJOINED, [self._report]

    def _roll_back(self, reason: str) -> Step:
        pending = self._need_pending()
        effect = RollBack(artifact=pending.to_artifact, counter=pending.to_counter, reason=reason)
        return State.ROLLING_BACK, [effect]

    def _probation_failed(self, event: ProbationFailed, now: float) -> Step:
        return self._roll_back(event.reason)

    def _probation_expired(self, event: Timer, now: float) -> Step:
        return self._roll_back("no-confirm")

    def _reported(self, event: Reported, now: float) -> Step:
        self._report = None
        return self._sleep(now), []

    def _report_failed(self, event: CoordinatorError, now: float) -> Step:
        self._attempts += 1
        self._set_timer(now + self._backoff())
        return self._state, []

    def _report_retry(self, event: Timer, now: float) -> Step:
        if self._attempts >= self._config.report_attempts:
            self._report = None
            return self._sleep(now), []
        return self._state, [self._need_report()]


def _row(
    state: State,
    event: type[E],
    handler: Callable[[Updater, E, float], Step],
    targets: Iterable[State],
    note: str,
) -> tuple[tuple[State, type[Event]], Transition]:
    """One table row; ties the handler's parameter type to the row's event type."""
    return (state, event), Transition(
        handler=cast(Handler, handler), targets=tuple(targets), note=note
    )


S = State
_BUSY_WITH_NUDGE_MEMORY: Final = (
    S.NOTICED,
    S.PREFETCHING,
    S.ASKING,
    S.BACKING_OFF,
    S.DRAINING,
    S.SWAPPING,
    S.PROBATION,
    S.ROLLING_BACK,
    S.REJOINED,
    S.ROLLED_BACK,
)

#: Every transition of the update state machine.  A pair missing here raises.
# fmt: off
TRANSITIONS: Final[Mapping[tuple[State, type[Event]], Transition]] = dict(
    [
        # starting (one of the three constructors, then Started)
        _row(S.SLEEPING, Started, Updater._start_sleeping, [S.SLEEPING],
             "first check uniform in [0, check_interval]"),
        _row(S.PROBATION, Started, Updater._start_probation, [S.PROBATION],
             "RestoreWork; rolled back unless confirmed within probation_timeout"),
        _row(S.ROLLED_BACK, Started, Updater._start_reporting, [S.ROLLED_BACK],
             "ReportFailure of the artifact the launcher rolled back"),
        # noticing
        _row(S.SLEEPING, Timer, Updater._check_on_timer, [S.NOTICED],
             "jittered check: EvaluateGates"),
        _row(S.SLEEPING, Nudged, Updater._nudged_while_sleeping, [S.NOTICED, S.SLEEPING],
             "skip the wait: EvaluateGates (ignored for the running or a denied artifact)"),
        _row(S.SLEEPING, AllowlistLearned, Updater._allowlist_learned_while_sleeping,
             [S.SLEEPING],
             "timer to now + uniform(0, notice_spread), unless due by then or nothing new"),
        _row(S.SLEEPING, ScopeLearned, Updater._scope_learned_while_sleeping, [S.SLEEPING],
             "as a learned allowlist: within notice_spread, unless due by then or not newer"),
        _row(S.SLEEPING, ReleaseLearned, Updater._release_learned_while_sleeping, [S.SLEEPING],
             "the last check lacked a release record: within notice_spread; else remembered"),
        _row(S.SLEEPING, SlotFreed, Updater._moot, [S.SLEEPING], "moot: not refused"),
        _row(S.NOTICED, GatesEvaluated, Updater._gates_evaluated,
             [S.SLEEPING, S.PREFETCHING, S.ASKING],
             "none / denied: sleep; new: Prefetch; prefetched: AskCoordinator"),
        # prefetching
        _row(S.PREFETCHING, PrefetchDone, Updater._prefetch_done, [S.NOTICED],
             "re-check gates before asking"),
        _row(S.PREFETCHING, PrefetchFailed, Updater._prefetch_failed, [S.SLEEPING],
             "try again at the next check"),
        # asking
        _row(S.ASKING, Granted, Updater._granted, [S.DRAINING, S.BACKING_OFF],
             "Drain(deadline within the lease); a lease too short is returned"),
        _row(S.ASKING, Refused, Updater._refused, [S.REFUSED],
             "wait retry_after, stretched by up to retry_jitter; keep serving"),
        _row(S.ASKING, CoordinatorError, Updater._ask_failed, [S.BACKING_OFF],
             "exponential backoff, equal jitter"),
        _row(S.REFUSED, Timer, Updater._check_on_timer, [S.NOTICED],
             "re-check gates, then ask again"),
        # the refusal's cause changed: ask again within wake_spread (module docstring)
        _row(S.REFUSED, Nudged, Updater._nudged_while_refused, [S.REFUSED],
             "wake within wake_spread; remembered by a capacity refusal"),
        _row(S.REFUSED, AllowlistLearned, Updater._allowlist_learned_while_refused,
             [S.REFUSED], "newer than the refused ask's: wake (not capacity); else remembered"),
        _row(S.REFUSED, ScopeLearned, Updater._scope_learned_while_refused, [S.REFUSED],
             "newer serial (resumes a breaker): wake (not capacity); else remembered"),
        _row(S.REFUSED, SlotFreed, Updater._slot_freed_while_refused, [S.REFUSED],
             "a capacity refusal heads the replica's queue: wake within wake_spread"),
        _row(S.BACKING_OFF, Timer, Updater._check_on_timer, [S.NOTICED],
             "re-check gates, then ask again"),
        # leaving
        _row(S.DRAINING, Drained, Updater._drained, [S.SWAPPING],
             "Swap(pending record); the process exits"),
        _row(S.DRAINING, Timer, Updater._drain_overrun, [S.SLEEPING],
             "drain overran: ResumeServing, ReturnLease"),
        _row(S.SWAPPING, SwapFailed, Updater._swap_failed, [S.SLEEPING],
             "ResumeServing, ReturnLease"),
        # ==== process boundary: the launcher starts the new slot on probation ====
        _row(S.PROBATION, HealthOk, Updater._health_ok, [S.PROBATION],
             "Confirm (idempotent)"),
        _row(S.PROBATION, Confirmed, Updater._confirmed, [S.REJOINED],
             "ReportRejoined (ends the lease)"),
        _row(S.PROBATION, ProbationFailed, Updater._probation_failed, [S.ROLLING_BACK],
             "RollBack; the process exits, the launcher sticky-denies"),
        _row(S.PROBATION, Timer, Updater._probation_expired, [S.ROLLING_BACK],
             "no confirm in time: RollBack"),
        # reporting the outcome
        _row(S.REJOINED, Reported, Updater._reported, [S.SLEEPING], "back to the schedule"),
        _row(S.REJOINED, CoordinatorError, Updater._report_failed, [S.REJOINED],
             "retry the report after a backoff"),
        _row(S.REJOINED, Timer, Updater._report_retry, [S.REJOINED, S.SLEEPING],
             "ReportRejoined again, or give up after report_attempts"),
        _row(S.ROLLED_BACK, Reported, Updater._reported, [S.SLEEPING], "back to the schedule"),
        _row(S.ROLLED_BACK, CoordinatorError, Updater._report_failed, [S.ROLLED_BACK],
             "retry the report after a backoff"),
        _row(S.ROLLED_BACK, Timer, Updater._report_retry, [S.ROLLED_BACK, S.SLEEPING],
             "ReportFailure again, or give up after report_attempts"),
        # anywhere else: a nudge is remembered, never acted on mid-flight; a learned allowlist
        # or scope is remembered like it, spread on the next sleep; a freed slot is moot
        *(
            row
            for state in _BUSY_WITH_NUDGE_MEMORY
            for row in (
                _row(state, Nudged, Updater._remember_nudge, [state],
                     "remembered: the next check covers it (immediate on the next sleep)"),
                _row(state, AllowlistLearned, Updater._remember_allowlist, [state],
                     "remembered: the next check covers it (within notice_spread on the next "
                     "sleep)"),
                _row(state, ScopeLearned, Updater._remember_scope, [state],
                     "remembered like a learned allowlist"),
                _row(state, SlotFreed, Updater._moot, [state], "moot: not refused"),
            )
        ),
        # a release record: remembered until the next check (one lacking it ends early)
        *(
            _row(state, ReleaseLearned, Updater._remember_release, [state],
                 "remembered: a check that lacked it then sleeps at most notice_spread")
            for state in (*_BUSY_WITH_NUDGE_MEMORY, S.REFUSED)
        ),
    ]
)
# fmt: on


# -- drawing the docs from the table -----------------------------------------------------------


def table_rows() -> list[tuple[str, str, str, str]]:
    """``(state, event, next states, note)`` for every row, in table order."""
    return [
        (state.value, event.__name__, " | ".join(s.value for s in t.targets), t.note)
        for (state, event), t in TRANSITIONS.items()
    ]


def render_table() -> str:
    """The table as aligned text rows (for docs and ``p2pupdate`` status output)."""
    header = ("state", "event", "next", "note")
    rows = [header, *table_rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for state, event, targets, note in rows:
        lines.append(
            f"{state:<{widths[0]}}  {event:<{widths[1]}}  {targets:<{widths[2]}}  {note}".rstrip()
        )
    return "\n".join(lines)


def render_dot() -> str:
    """The table as a Graphviz digraph (h11 draws its state diagram the same way)."""
    lines = ["digraph updater {", "  rankdir=TB;"]
    for (state, event), t in TRANSITIONS.items():
        for target in t.targets:
            lines.append(f'  {state.value} -> {target.value} [label="{event.__name__}"];')
    lines.append("}")
    return "\n".join(lines)
