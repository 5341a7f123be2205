"""The update state machine, driven by hand with a fake ``now`` and a seeded RNG.

Every test builds an ``Updater``, feeds it events through a ``Driver`` (which owns the fake
monotonic clock and records which table rows ran) and asserts the exact effects, the state
and the timer.  ``test_every_table_row_is_exercised`` runs every scenario in this file again
and checks that together they used every row of ``TRANSITIONS``: a row nobody exercises is a
row nobody knows works.  The fleet test at the end wires a dozen updaters to a fake
coordinator in memory (README "Architecture") to check that the pieces compose: nudged together, they
all move, never more than the coordinator's budget at once.
"""

from __future__ import annotations

import ast
import hashlib
import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from types import ModuleType

import pytest

from p2pupdate.core import timing, updater_events, updater_states
from p2pupdate.core import updater as updater_module
from p2pupdate.core.documents import NODE_STATES, Allowlist, Release, Scope
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.core.gates import GATE_SCOPE, NO_RELEASE_RECORD, GateResult, choose_target
from p2pupdate.core.updater import (
    INITIAL_STATES,
    TIMED_STATES,
    TRANSITIONS,
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
    InvalidTransitionError,
    LiftDeny,
    Nudged,
    PendingSwap,
    Prefetch,
    PrefetchDone,
    PrefetchFailed,
    ProbationFailed,
    Refused,
    ReleaseLearned,
    Reported,
    ReportFailure,
    ReportRejoined,
    RestoreWork,
    ResumeServing,
    ReturnLease,
    RollBack,
    RollbackRecord,
    ScopeLearned,
    SlotFreed,
    Started,
    State,
    StickyDeny,
    Swap,
    SwapFailed,
    Timer,
    Updater,
    UpdaterConfig,
    render_dot,
    render_table,
    table_rows,
)

HOUR = 3600.0
START = 10_000.0  # an arbitrary monotonic origin: nothing may assume now starts at 0
CFG = UpdaterConfig()


def art(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


OLD = art("v1")
NEW = art("v2")
NEWER = art("v3")
SIDEWAYS = art("v1.5")
TOKEN = b"departure-token-envelope"


def cand(artifact: str = NEW, counter: int = 2, *, force: bool = False) -> Candidate:
    return Candidate(
        artifact=artifact, counter=counter, allowlist_version=7, scope_serial=3, force=force
    )


C = cand()
PENDING = PendingSwap(from_artifact=OLD, to_artifact=NEW, to_counter=2, token=TOKEN)
ROLLBACK = RollbackRecord(artifact=NEW, counter=2, reason="no-confirm", token=TOKEN)
SCOPE_REFUSAL = GateResult(ok=False, gate=GATE_SCOPE, reason="outside-fraction")

#: (state, event type) pairs that ran successfully, across every Driver ever made.
SEEN: set[tuple[State, type[Event]]] = set()


class Driver:
    """The fake shell: owns ``now``, feeds events, fires timers, records table rows used."""

    def __init__(self, updater: Updater, now: float = START) -> None:
        self.u = updater
        self.now = now

    def state(self) -> State:
        """The updater's state (a call, so type checkers do not narrow it across steps)."""
        return self.u.state

    def send(self, event: Event) -> list[Effect]:
        key = (self.u.state, type(event))
        effects = self.u.handle(event, self.now)
        SEEN.add(key)
        return effects

    def wait(self) -> float:
        """Seconds until the updater's timer."""
        timer = self.u.get_timer()
        assert timer is not None, f"no timer in state {self.u.state}"
        return timer - self.now

    def fire(self) -> list[Effect]:
        """Advance the clock exactly to the timer and fire it."""
        self.now += self.wait()
        key = (self.u.state, Timer)
        effects = self.u.handle_timer(self.now)
        SEEN.add(key)
        return effects


def fresh(seed: int = 1, config: UpdaterConfig = CFG) -> Driver:
    u = Updater(installed=OLD, rng=random.Random(seed), config=config)
    d = Driver(u)
    assert d.send(Started()) == []
    return d


def probation(seed: int = 1) -> Driver:
    d = Driver(Updater.on_probation(PENDING, rng=random.Random(seed), config=CFG))
    assert d.send(Started()) == [RestoreWork()]
    return d


def rolled_back(seed: int = 1) -> Driver:
    u = Updater.after_rollback(ROLLBACK, installed=OLD, rng=random.Random(seed), config=CFG)
    d = Driver(u)
    assert d.send(Started()) == [
        ReportFailure(artifact=NEW, counter=2, reason="no-confirm", token=TOKEN)
    ]
    return d


def reach(state: State, seed: int = 1) -> Driver:
    """A started updater driven through the table into ``state``."""
    if state is State.PROBATION:
        return probation(seed)
    if state is State.ROLLING_BACK:
        d = probation(seed)
        d.send(ProbationFailed(reason="unhealthy"))
    elif state is State.REJOINED:
        d = probation(seed)
        d.send(HealthOk())
        d.send(Confirmed())
    elif state is State.ROLLED_BACK:
        d = rolled_back(seed)
    else:
        d = fresh(seed)
        path = [
            State.SLEEPING,
            State.NOTICED,
            State.PREFETCHING,
            State.ASKING,
            State.DRAINING,
            State.SWAPPING,
        ]
        side = {State.REFUSED: State.ASKING, State.BACKING_OFF: State.ASKING}
        goal = side.get(state, state)
        steps: list[Callable[[], object]] = [
            d.fire,
            lambda: d.send(GatesEvaluated(candidate=C)),
            lambda: (d.send(PrefetchDone(artifact=NEW)), d.send(GatesEvaluated(candidate=C))),
            lambda: d.send(Granted(token=TOKEN, lease_ttl=300.0)),
            lambda: d.send(Drained()),
        ]
        for step in steps[: path.index(goal)]:
            step()
        if state is State.REFUSED:
            d.send(Refused(gate="capacity", reason="no-headroom", retry_after=60.0))
        elif state is State.BACKING_OFF:
            d.send(CoordinatorError(reason="unreachable"))
    assert d.state() is state
    return d


# -- the happy path -------------------------------------------------------------------------


def test_happy_path_to_swap() -> None:
    u = Updater(installed=OLD, rng=random.Random(1))
    d = Driver(u)
    assert u.get_timer() is None  # nothing is armed before Started
    assert d.send(Started()) == []
    assert d.state() is State.SLEEPING
    assert 0.0 <= d.wait() <= CFG.check_interval  # first check: uniform over one interval

    assert d.fire() == [EvaluateGates()]
    assert d.state() is State.NOTICED and u.get_timer() is None

    assert d.send(GatesEvaluated(candidate=C)) == [Prefetch(artifact=NEW, counter=2)]
    assert d.state() is State.PREFETCHING and u.candidate == C
    d.now += 40.0
    # prefetching took a while: gates are checked again before asking
    assert d.send(PrefetchDone(artifact=NEW)) == [EvaluateGates()]
    assert d.send(GatesEvaluated(candidate=C)) == [AskCoordinator(from_artifact=OLD, candidate=C)]
    assert d.state() is State.ASKING and d.state().heartbeat_state == "asking"

    assert d.send(Granted(token=TOKEN, lease_ttl=300.0)) == [
        Drain(deadline=d.now + CFG.drain_timeout)
    ]
    assert d.state() is State.DRAINING and d.state().heartbeat_state == "draining"
    assert d.wait() == CFG.drain_timeout + CFG.drain_grace

    d.now += 30.0
    assert d.send(Drained()) == [Swap(pending=PENDING)]
    assert d.state() is State.SWAPPING and u.get_timer() is None


def test_drain_deadline_leaves_swap_margin_of_the_lease() -> None:
    d = reach(State.ASKING)
    assert d.send(Granted(token=TOKEN, lease_ttl=100.0)) == [
        Drain(deadline=d.now + 100.0 - CFG.swap_margin)
    ]


def test_probation_confirmed_rejoins_and_ends_the_lease() -> None:
    d = probation()
    assert d.u.installed == NEW and d.state().heartbeat_state == "probation"
    assert d.wait() == CFG.probation_timeout
    assert d.send(HealthOk()) == [Confirm(artifact=NEW)]
    assert d.send(HealthOk()) == [Confirm(artifact=NEW)]  # idempotent
    assert d.wait() == CFG.probation_timeout  # health alone does not stop the clock
    assert d.send(Confirmed()) == [ReportRejoined(artifact=NEW, token=TOKEN)]
    assert d.state() is State.REJOINED and d.u.get_timer() is None
    assert d.send(Reported()) == []
    assert d.state() is State.SLEEPING
    assert 0.8 * HOUR <= d.wait() <= 1.2 * HOUR


# -- probation failure, rollback, sticky deny --------------------------------------------------


def test_unhealthy_probation_rolls_back() -> None:
    d = probation()
    assert d.send(ProbationFailed(reason="restore-failed")) == [
        RollBack(artifact=NEW, counter=2, reason="restore-failed")
    ]
    assert d.state() is State.ROLLING_BACK and d.u.get_timer() is None
    assert d.state().heartbeat_state == "failed"
    with pytest.raises(InvalidTransitionError):
        d.send(Confirmed())  # too late: this process is on its way out


def test_no_confirm_in_time_rolls_back() -> None:
    d = probation()
    d.send(HealthOk())
    assert d.fire() == [RollBack(artifact=NEW, counter=2, reason="no-confirm")]
    assert d.state() is State.ROLLING_BACK


def test_old_version_reports_the_failure_after_rollback() -> None:
    d = rolled_back()
    assert d.u.installed == OLD
    assert d.u.denied == (StickyDeny(artifact=NEW, counter=2),)
    assert d.u.get_timer() is None
    assert d.send(Reported()) == []
    assert d.state() is State.SLEEPING


def test_sticky_deny_holds_until_a_higher_counter_arrives() -> None:
    d = rolled_back()
    d.send(Reported())
    timer = d.u.get_timer()
    # a nudge for the denied artifact does not even wake the node
    assert d.send(Nudged(artifact=NEW)) == []
    assert d.state() is State.SLEEPING and d.u.get_timer() == timer

    # the gates (even a force scope) may name it; this node will not try it again
    for candidate in (C, cand(force=True)):
        assert d.fire() == [EvaluateGates()]
        assert d.send(GatesEvaluated(candidate=candidate)) == []
        assert d.state() is State.SLEEPING

    # a different artifact with a lower counter may proceed; it does not lift the deny
    d.fire()
    assert d.send(GatesEvaluated(candidate=cand(SIDEWAYS, 1))) == [
        Prefetch(artifact=SIDEWAYS, counter=1)
    ]
    assert d.u.denied == (StickyDeny(artifact=NEW, counter=2),)
    assert d.send(PrefetchFailed(artifact=SIDEWAYS, reason="no-peers")) == []

    # a higher counter lifts it (and the launcher is told to forget it)
    d.fire()
    assert d.send(GatesEvaluated(candidate=cand(NEWER, 3))) == [
        LiftDeny(artifact=NEW),
        Prefetch(artifact=NEWER, counter=3),
    ]
    assert not d.u.denied


def test_after_rollback_keeps_earlier_denies_without_duplicates() -> None:
    older = StickyDeny(artifact=SIDEWAYS, counter=1)
    again = StickyDeny(artifact=NEW, counter=2)
    u = Updater.after_rollback(ROLLBACK, installed=OLD, rng=random.Random(0), denied=[older, again])
    assert u.denied == (older, again)


# -- nudges -----------------------------------------------------------------------------------


def test_nudge_during_sleep_skips_the_wait_but_not_the_gates() -> None:
    d = fresh()
    assert d.wait() > 60.0
    d.now += 60.0  # well before the timer
    assert d.send(Nudged(artifact=NEW)) == [EvaluateGates()]
    assert d.state() is State.NOTICED and d.u.get_timer() is None
    # gate 2 says no: the nudge changed nothing about that
    assert d.send(GatesEvaluated(candidate=None, refusal=SCOPE_REFUSAL)) == []
    assert d.state() is State.SLEEPING
    assert 0.8 * HOUR <= d.wait() <= 1.2 * HOUR


def test_nudge_for_the_running_artifact_is_ignored() -> None:
    d = fresh()
    timer = d.u.get_timer()
    assert d.send(Nudged(artifact=OLD)) == []
    assert d.state() is State.SLEEPING and d.u.get_timer() == timer


BUSY = sorted(
    {s for (s, e) in TRANSITIONS if e is Nudged} - {State.SLEEPING}, key=lambda s: s.value
)


@pytest.mark.parametrize("state", BUSY, ids=lambda s: s.value)
def test_nudge_while_busy_is_remembered_not_acted_on(state: State) -> None:
    d = reach(state)
    timer = d.u.get_timer()
    assert d.send(Nudged(artifact=NEWER)) == []
    assert d.state() is state
    assert d.u.get_timer() == timer  # a refusal's retry_after, a drain deadline: untouched


def test_remembered_nudge_makes_the_next_sleep_short() -> None:
    d = reach(State.PREFETCHING)
    d.send(Nudged(artifact=NEWER))
    assert d.send(PrefetchFailed(artifact=NEW, reason="no-peers")) == []
    assert d.state() is State.SLEEPING
    assert d.wait() == 0.0  # check again at once
    assert d.fire() == [EvaluateGates()]
    d.send(GatesEvaluated(candidate=None))
    assert 0.8 * HOUR <= d.wait() <= 1.2 * HOUR  # the nudge was used up by that check


def test_nudge_during_check_is_covered_by_the_next_check() -> None:
    d = reach(State.REFUSED)
    d.send(Nudged(artifact=NEWER))
    d.fire()  # the retry's gate check covers the nudge
    assert d.send(GatesEvaluated(candidate=None)) == []
    assert d.wait() >= 0.8 * HOUR


# -- allowlists learned by gossip -------------------------------------------------------------

SPREAD = CFG.notice_spread


def learned(version: int = 8, *artifacts: str) -> AllowlistLearned:
    return AllowlistLearned(version=version, artifacts=artifacts or (OLD, NEW))


def test_learned_allowlist_brings_the_check_forward_within_the_spread() -> None:
    d = fresh()
    assert d.wait() > SPREAD
    d.now += 10.0
    assert d.send(learned()) == []
    assert d.state() is State.SLEEPING
    assert 0.0 <= d.wait() <= SPREAD
    assert d.fire() == [EvaluateGates()]  # the gates still decide
    d.send(GatesEvaluated(candidate=None))
    assert 0.8 * HOUR <= d.wait() <= 1.2 * HOUR


def test_learned_allowlist_spreads_a_fleet_over_the_spread() -> None:
    waits = []
    for seed in range(200):
        d = fresh(seed)
        d.now += 1.0
        if d.wait() <= SPREAD:
            continue  # due soon anyway
        d.send(learned())
        waits.append(d.wait())
    assert all(0.0 <= w <= SPREAD for w in waits)
    assert min(waits) < 0.05 * SPREAD and max(waits) > 0.95 * SPREAD


def test_learned_allowlist_leaves_a_check_due_within_the_spread() -> None:
    d = fresh()
    d.now = d.u.get_timer() - SPREAD / 2  # type: ignore[operator]
    timer = d.u.get_timer()
    assert d.send(learned()) == []
    assert d.u.get_timer() == timer


@pytest.mark.parametrize(
    "event",
    [
        learned(8, OLD),  # only the running build
        learned(8, NEW),  # only a sticky-denied build
        learned(8, OLD, NEW),
    ],
    ids=["running", "denied", "both"],
)
def test_learned_allowlist_naming_nothing_new_is_ignored(event: AllowlistLearned) -> None:
    d = rolled_back()
    d.send(Reported())
    timer = d.u.get_timer()
    assert d.send(event) == []
    assert d.state() is State.SLEEPING and d.u.get_timer() == timer


def test_learned_allowlist_of_an_old_version_is_ignored() -> None:
    d = fresh()
    d.send(learned(8))
    d.fire()
    d.send(GatesEvaluated(candidate=None))
    timer = d.u.get_timer()
    for version in (8, 7):
        assert d.send(learned(version, NEWER)) == []
        assert d.u.get_timer() == timer
    d.send(learned(9, NEWER))
    assert d.wait() <= SPREAD


def test_learned_allowlist_spread_is_configurable() -> None:
    d = fresh(config=UpdaterConfig(notice_spread=0.0))
    d.send(learned())
    assert d.wait() == 0.0


BUSY_LEARNING = sorted(
    {s for (s, e) in TRANSITIONS if e is AllowlistLearned} - {State.SLEEPING},
    key=lambda s: s.value,
)


def test_learned_allowlist_has_a_row_in_every_state() -> None:
    assert {s for (s, e) in TRANSITIONS if e is AllowlistLearned} == set(State)


@pytest.mark.parametrize("state", BUSY_LEARNING, ids=lambda s: s.value)
def test_learned_allowlist_while_busy_is_remembered_not_acted_on(state: State) -> None:
    d = reach(state)
    timer = d.u.get_timer()
    assert d.send(learned(8, NEWER)) == []
    assert d.state() is state
    assert d.u.get_timer() == timer  # a refusal's retry_after, a drain deadline: untouched


def test_remembered_allowlist_makes_the_next_sleep_at_most_the_spread() -> None:
    d = reach(State.PREFETCHING)
    d.send(learned(8, NEWER))
    assert d.send(PrefetchFailed(artifact=NEW, reason="no-peers")) == []
    assert d.state() is State.SLEEPING
    assert 0.0 <= d.wait() <= SPREAD
    assert d.fire() == [EvaluateGates()]
    d.send(GatesEvaluated(candidate=None))
    assert 0.8 * HOUR <= d.wait() <= 1.2 * HOUR  # used up by that check


def test_remembered_allowlist_is_covered_by_the_next_check() -> None:
    d = reach(State.REFUSED)
    d.send(learned(8, NEWER))
    d.fire()  # the retry's gate check covers it
    assert d.send(GatesEvaluated(candidate=None)) == []
    assert d.wait() >= 0.8 * HOUR


def test_remembered_nudge_wins_over_a_remembered_allowlist() -> None:
    d = reach(State.PREFETCHING)
    d.send(learned(8, NEWER))
    d.send(Nudged(artifact=NEWER))
    d.send(PrefetchFailed(artifact=NEW, reason="no-peers"))
    assert d.wait() == 0.0


def test_no_candidate_answer_says_why() -> None:
    answer = GatesEvaluated.no_candidate(reason="no-source", detail="no --offer-dir")
    assert answer.candidate is None
    assert answer.refusal == GateResult(
        ok=False, gate="allowlist", reason="no-source", detail="no --offer-dir"
    )
    with pytest.raises(ValueError):
        GatesEvaluated.no_candidate(reason="", detail="x")


# -- a release record after its allowlist ----------------------------------------------------

LACKS_RELEASE = GatesEvaluated.no_candidate(
    reason=NO_RELEASE_RECORD, detail="v2 has no signed release record"
)


def test_a_release_record_after_its_allowlist_ends_the_sleep_within_the_spread() -> None:
    """The swarm bench's stuck node: the allowlist came, gate 1 said no-release-record, the
    record came after the nudge, and the node slept its whole check interval."""
    d = fresh()
    d.fire()
    d.send(LACKS_RELEASE)
    assert d.wait() >= 0.8 * HOUR
    assert d.send(ReleaseLearned(artifact=NEW)) == []
    assert d.state() is State.SLEEPING and 0.0 <= d.wait() <= SPREAD
    assert d.fire() == [EvaluateGates()]
    d.send(GatesEvaluated(candidate=None))
    assert d.wait() >= 0.8 * HOUR  # used up by that check


def test_a_release_record_wakes_nobody_whose_check_lacked_nothing() -> None:
    d = fresh()
    d.fire()
    d.send(GatesEvaluated(candidate=None))
    timer = d.u.get_timer()
    assert d.send(ReleaseLearned(artifact=NEW)) == []
    assert d.u.get_timer() == timer


def test_the_running_or_a_denied_artifacts_release_record_is_no_news() -> None:
    d = fresh()
    d.fire()
    d.send(LACKS_RELEASE)
    timer = d.u.get_timer()
    d.send(ReleaseLearned(artifact=OLD))  # the running build's own record
    assert d.u.get_timer() == timer


def test_a_release_record_that_came_during_the_check_shortens_the_sleep_it_ends_in() -> None:
    d = fresh()
    assert d.fire() == [EvaluateGates()]
    assert d.send(ReleaseLearned(artifact=NEW)) == []  # while the gates are checked
    d.send(LACKS_RELEASE)  # the check saw the documents from before it
    assert d.state() is State.SLEEPING and 0.0 <= d.wait() <= SPREAD


def test_a_release_record_has_a_row_in_every_state() -> None:
    assert {s for (s, e) in TRANSITIONS if e is ReleaseLearned} == set(State)


BUSY_RELEASE = sorted(
    {s for (s, e) in TRANSITIONS if e is ReleaseLearned} - {State.SLEEPING},
    key=lambda s: s.value,
)


@pytest.mark.parametrize("state", BUSY_RELEASE, ids=lambda s: s.value)
def test_a_release_record_while_busy_changes_nothing_now(state: State) -> None:
    d = reach(state)
    timer = d.u.get_timer()
    assert d.send(ReleaseLearned(artifact=NEWER)) == []
    assert d.state() is state and d.u.get_timer() == timer


# -- refusals ---------------------------------------------------------------------------------


def test_refused_waits_retry_after_then_asks_again() -> None:
    d = reach(State.ASKING)
    refused = Refused(gate="capacity", reason="no-headroom", retry_after=120.0, position=4)
    assert d.send(refused) == []
    assert d.state() is State.REFUSED and d.state().heartbeat_state == "serving"
    assert 120.0 <= d.wait() <= 120.0 * 1.2
    timer = d.u.get_timer()
    assert timer is not None
    assert d.u.handle_timer(timer - 0.001) == []  # early: nothing happens
    assert d.state() is State.REFUSED
    assert d.fire() == [EvaluateGates()]
    # already prefetched: straight to asking, with whatever the gates say now
    moved = Candidate(artifact=NEW, counter=2, allowlist_version=8, scope_serial=4)
    assert d.send(GatesEvaluated(candidate=moved)) == [
        AskCoordinator(from_artifact=OLD, candidate=moved)
    ]


# -- a refusal's wait, bound to its cause (P7 item 3) -----------------------------------------

WAKE = CFG.wake_spread
#: The breaker's refusal as a replica sends it: an hour, until an operator acts.
BREAKER = Refused(gate="breaker", reason="paused", retry_after=HOUR)
CAPACITY = Refused(gate="capacity", reason="lease-budget", retry_after=60.0, position=1)


def refused(refusal: Refused = BREAKER, seed: int = 1) -> Driver:
    d = reach(State.ASKING, seed)
    d.send(refusal)
    assert d.state() is State.REFUSED
    return d


def asks_within_the_wake_spread(d: Driver) -> None:
    """The wait ended within ``wake_spread``; the check it starts leads to a new ask."""
    assert d.state() is State.REFUSED and 0.0 <= d.wait() <= WAKE
    assert d.fire() == [EvaluateGates()]
    assert d.send(GatesEvaluated(candidate=C)) == [AskCoordinator(from_artifact=OLD, candidate=C)]


CAUSE_CHANGES: dict[str, Event] = {
    "new-scope-serial": ScopeLearned(serial=C.scope_serial + 1),  # also what resumes a breaker
    "new-allowlist": AllowlistLearned(version=C.allowlist_version + 1, artifacts=(NEWER,)),
    "nudge": Nudged(artifact=NEW),
}


@pytest.mark.parametrize("change", CAUSE_CHANGES, ids=str)
def test_breaker_refusal_of_an_hour_ends_when_its_cause_changes(change: str) -> None:
    d = refused(BREAKER)
    assert d.wait() >= HOUR  # what a node slept before: until restarted, in practice
    cause = d.u.refusal
    assert cause is not None and (cause.gate, cause.scope_serial) == ("breaker", C.scope_serial)
    d.now += 30.0
    assert d.send(CAUSE_CHANGES[change]) == []
    asks_within_the_wake_spread(d)
    assert d.u.refusal is None  # the next answer binds the next wait


@pytest.mark.parametrize("gate", ["scope", "allowlist"])
def test_document_refusal_ends_on_a_newer_document(gate: str) -> None:
    d = refused(Refused(gate=gate, reason="held", retry_after=300.0))
    assert d.send(ScopeLearned(serial=C.scope_serial + 1)) == []
    asks_within_the_wake_spread(d)


def test_a_wake_never_postpones_a_wait_due_sooner() -> None:
    d = refused(Refused(gate="breaker", reason="paused", retry_after=0.0))
    due = d.u.get_timer()
    assert due is not None
    d.now = due - 0.001  # due in a millisecond; a wake would draw up to wake_spread
    d.send(Nudged(artifact=NEW))
    assert d.u.get_timer() == due


@pytest.mark.parametrize(
    "event",
    [
        ScopeLearned(serial=C.scope_serial),  # the serial the refused ask was bound to
        AllowlistLearned(version=C.allowlist_version, artifacts=(NEWER,)),
        Nudged(artifact=OLD),  # the running artifact
        SlotFreed(),  # a breaker pause is not a full pool
    ],
    ids=["same-scope", "same-allowlist", "nudge-for-the-running", "slot-freed"],
)
def test_breaker_refusal_is_not_woken_by_what_did_not_change(event: Event) -> None:
    d = refused(BREAKER)
    timer = d.u.get_timer()
    assert d.send(event) == []
    assert d.state() is State.REFUSED and d.u.get_timer() == timer


def test_capacity_refusal_asks_again_when_the_replica_says_a_slot_freed() -> None:
    d = refused(CAPACITY)
    assert 60.0 <= d.wait() and d.u.refusal is not None and d.u.refusal.position == 1
    d.now += 5.0  # the lease that blocked it ended after 5 s, not 60
    assert d.send(SlotFreed()) == []
    asks_within_the_wake_spread(d)


@pytest.mark.parametrize("change", CAUSE_CHANGES, ids=str)
def test_capacity_refusal_only_remembers_new_documents_and_nudges(change: str) -> None:
    d = refused(CAPACITY)
    timer = d.u.get_timer()
    assert d.send(CAUSE_CHANGES[change]) == []
    assert d.u.get_timer() == timer  # a new document frees no capacity: no stampede
    assert d.fire() == [EvaluateGates()]  # the retry's gate check covers what it remembered


def test_wake_spread_spreads_the_woken_over_it() -> None:
    waits = []
    for seed in range(100):
        d = refused(BREAKER, seed)
        d.send(ScopeLearned(serial=9))
        waits.append(d.wait())
    assert all(0.0 <= w <= WAKE for w in waits) and len(set(waits)) > 90


def test_learned_scope_brings_a_sleeping_check_forward_within_the_spread() -> None:
    d = fresh()
    d.now += 120.0
    assert d.wait() > SPREAD
    assert d.send(ScopeLearned(serial=5)) == []
    assert 0.0 <= d.wait() <= SPREAD
    timer = d.u.get_timer()
    d.send(ScopeLearned(serial=5))  # not newer: nothing moves
    d.send(SlotFreed())  # moot when not refused
    assert d.u.get_timer() == timer and d.state() is State.SLEEPING


BUSY_SCOPE = sorted(
    {s for (s, e) in TRANSITIONS if e is ScopeLearned} - {State.SLEEPING, State.REFUSED},
    key=lambda s: s.value,
)


def test_scope_and_slot_have_a_row_in_every_state() -> None:
    for kind in (ScopeLearned, SlotFreed):
        assert {s for (s, e) in TRANSITIONS if e is kind} == set(State)


@pytest.mark.parametrize("state", BUSY_SCOPE, ids=lambda s: s.value)
def test_learned_scope_and_freed_slot_while_busy_change_nothing_now(state: State) -> None:
    d = reach(state)
    timer = d.u.get_timer()
    assert d.send(ScopeLearned(serial=9)) == []
    assert d.send(SlotFreed()) == []
    assert d.state() is state and d.u.get_timer() == timer


def test_wake_spread_is_checked() -> None:
    with pytest.raises(ValueError):
        UpdaterConfig(wake_spread=-1.0)
    assert timing.wake_delay(UpdaterConfig(wake_spread=2.0), 0.5) == 1.0


def test_refusal_jitter_stays_within_bounds_and_varies() -> None:
    waits = []
    for seed in range(200):
        d = reach(State.ASKING, seed)
        d.send(Refused(gate="capacity", reason="no-headroom", retry_after=100.0))
        waits.append(d.wait())
    assert all(100.0 <= w <= 120.0 for w in waits)
    assert min(waits) < 102.0 and max(waits) > 118.0


@pytest.mark.parametrize(
    ("retry_after", "low"),
    [(None, CFG.check_interval), (0.0, CFG.min_retry), (0.2, CFG.min_retry)],
)
def test_refusal_without_usable_retry_after(retry_after: float | None, low: float) -> None:
    d = reach(State.ASKING)
    d.send(Refused(gate="scope", reason="paused", retry_after=retry_after))
    assert low <= d.wait() <= low * (1.0 + CFG.retry_jitter)


# -- coordinator errors -----------------------------------------------------------------------


def ceiling(n: int) -> float:
    return min(CFG.backoff_cap, CFG.backoff_base * 2.0 ** (n - 1))


def ask_again(d: Driver) -> None:
    assert d.fire() == [EvaluateGates()]
    assert d.send(GatesEvaluated(candidate=C)) == [AskCoordinator(from_artifact=OLD, candidate=C)]


def test_coordinator_errors_back_off_exponentially_and_reset_after_success() -> None:
    d = reach(State.ASKING)
    for n in range(1, 13):
        assert d.send(CoordinatorError(reason="timeout")) == []
        assert d.state() is State.BACKING_OFF and d.u.attempts == n
        assert ceiling(n) / 2 <= d.wait() <= ceiling(n)
        ask_again(d)
    assert ceiling(12) == CFG.backoff_cap  # 5 s doubling reaches the 15 min cap
    # an answer (here a refusal) resets the count
    d.send(Refused(gate="capacity", reason="no-headroom", retry_after=30.0))
    assert d.u.attempts == 0
    ask_again(d)
    d.send(CoordinatorError(reason="timeout"))
    assert CFG.backoff_base / 2 <= d.wait() <= CFG.backoff_base
    # and so does a grant
    ask_again(d)
    d.send(CoordinatorError(reason="timeout"))
    ask_again(d)
    assert d.u.attempts == 2
    d.send(Granted(token=TOKEN, lease_ttl=300.0))
    assert d.u.attempts == 0


def test_backoff_jitter_stays_within_bounds_and_varies() -> None:
    for n in (1, 3, 6, 20):
        waits = []
        for seed in range(100):
            d = reach(State.ASKING, seed)
            for _ in range(n - 1):
                d.send(CoordinatorError(reason="timeout"))
                ask_again(d)
            d.send(CoordinatorError(reason="timeout"))
            waits.append(d.wait())
        assert all(ceiling(n) / 2 <= w <= ceiling(n) for w in waits)
        assert max(waits) - min(waits) > 0.3 * ceiling(n)  # really jittered


def test_lease_too_short_to_swap_is_returned() -> None:
    d = reach(State.ASKING)
    assert d.send(Granted(token=TOKEN, lease_ttl=CFG.swap_margin)) == [
        ReturnLease(token=TOKEN, reason="lease-too-short")
    ]
    assert d.state() is State.BACKING_OFF and d.u.attempts == 1


# -- aborted departures -------------------------------------------------------------------------


def test_drain_overrun_resumes_serving_and_returns_the_lease() -> None:
    d = reach(State.DRAINING)
    assert d.fire() == [
        ResumeServing(reason="drain-timeout"),
        ReturnLease(token=TOKEN, reason="drain-timeout"),
    ]
    assert d.state() is State.SLEEPING and d.u.candidate is None
    with pytest.raises(InvalidTransitionError):
        d.send(Drained())  # a late answer for a drain that was called off


def test_swap_failure_resumes_serving_and_returns_the_lease() -> None:
    d = reach(State.SWAPPING)
    assert d.send(SwapFailed(reason="disk full")) == [
        ResumeServing(reason="swap-failed: disk full"),
        ReturnLease(token=TOKEN, reason="swap-failed: disk full"),
    ]
    assert d.state() is State.SLEEPING


# -- reports ----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.REJOINED, State.ROLLED_BACK], ids=lambda s: s.value)
def test_reports_retry_with_backoff_then_give_up(state: State) -> None:
    d = reach(state)
    report = (
        ReportRejoined(artifact=NEW, token=TOKEN)
        if state is State.REJOINED
        else ReportFailure(artifact=NEW, counter=2, reason="no-confirm", token=TOKEN)
    )
    for n in range(1, CFG.report_attempts):
        assert d.send(CoordinatorError(reason="unreachable")) == []
        assert d.state() is state
        assert ceiling(n) / 2 <= d.wait() <= ceiling(n)
        assert d.fire() == [report]
    d.send(CoordinatorError(reason="unreachable"))
    assert d.fire() == []  # gave up: heartbeats still tell, the lease lapses
    assert d.state() is State.SLEEPING and d.u.attempts == 0


def test_report_acknowledged_after_an_error() -> None:
    d = reach(State.ROLLED_BACK)
    d.send(CoordinatorError(reason="unreachable"))
    d.fire()
    assert d.send(Reported()) == []
    assert d.state() is State.SLEEPING and d.u.attempts == 0


# -- invalid transitions ----------------------------------------------------------------------


def test_invalid_transition_raises_a_typed_error() -> None:
    d = fresh()
    with pytest.raises(InvalidTransitionError) as info:
        d.send(Granted(token=TOKEN, lease_ttl=300.0))
    err = info.value
    assert isinstance(err, P2PUpdateError) and err.rule == "invalid-transition"
    assert "Granted" in str(err) and "sleeping" in str(err)
    assert err.state is State.SLEEPING and err.event == "Granted"
    assert d.state() is State.SLEEPING


def test_events_before_start_and_a_second_start_raise() -> None:
    u = Updater(installed=OLD, rng=random.Random(0))
    with pytest.raises(InvalidTransitionError, match="before Started"):
        u.handle(Nudged(artifact=NEW), START)
    u.handle(Started(), START)
    with pytest.raises(InvalidTransitionError, match="already started"):
        u.handle(Started(), START)


def test_timers_only_enter_through_handle_timer() -> None:
    d = fresh()
    with pytest.raises(TypeError):
        d.u.handle(Timer(), d.now + 2 * HOUR)
    assert d.u.handle_timer(d.now - 1.0) == []  # before the deadline: nothing
    assert d.state() is State.SLEEPING


def test_result_for_another_artifact_raises() -> None:
    d = reach(State.PREFETCHING)
    with pytest.raises(InvalidTransitionError, match="while prefetching"):
        d.send(PrefetchDone(artifact=NEWER))
    with pytest.raises(InvalidTransitionError):
        d.send(PrefetchFailed(artifact=NEWER, reason="no-peers"))
    assert d.state() is State.PREFETCHING


SAMPLES: dict[type[Event], Event] = {
    Started: Started(),
    Nudged: Nudged(artifact=NEWER),
    AllowlistLearned: AllowlistLearned(version=1, artifacts=(NEWER,)),
    GatesEvaluated: GatesEvaluated(candidate=C),
    PrefetchDone: PrefetchDone(artifact=NEW),
    PrefetchFailed: PrefetchFailed(artifact=NEW, reason="x"),
    Granted: Granted(token=TOKEN, lease_ttl=300.0),
    Refused: Refused(gate="capacity", reason="x", retry_after=1.0),
    CoordinatorError: CoordinatorError(reason="x"),
    Drained: Drained(),
    SwapFailed: SwapFailed(reason="x"),
    HealthOk: HealthOk(),
    ProbationFailed: ProbationFailed(reason="x"),
    Confirmed: Confirmed(),
    Reported: Reported(),
    ScopeLearned: ScopeLearned(serial=1),
    ReleaseLearned: ReleaseLearned(artifact=NEW),
    SlotFreed: SlotFreed(),
}


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_every_pair_missing_from_the_table_raises(state: State) -> None:
    for kind, event in SAMPLES.items():
        if (state, kind) in TRANSITIONS:
            continue
        d = reach(state)
        timer = d.u.get_timer()
        with pytest.raises(InvalidTransitionError):
            d.u.handle(event, d.now)
        assert d.state() is state and d.u.get_timer() == timer  # nothing moved


def test_every_event_kind_has_a_sample() -> None:
    kinds = {cls for cls in vars(updater_module).values() if _is_event_class(cls)}
    assert kinds - {Timer} == set(SAMPLES)


def _is_event_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Event) and obj is not Event


# -- the schedule -----------------------------------------------------------------------------


def schedule_gaps(config: UpdaterConfig, rounds: int, seed: int = 7) -> Iterator[float]:
    d = fresh(seed, config)
    for _ in range(rounds):
        d.fire()
        d.send(GatesEvaluated(candidate=None))
        yield d.wait()


def test_jittered_schedule_stays_within_20_percent() -> None:
    gaps = list(schedule_gaps(CFG, 1000))
    assert all(0.8 * HOUR <= g <= 1.2 * HOUR for g in gaps)
    assert min(gaps) < 0.81 * HOUR and max(gaps) > 1.19 * HOUR  # the whole band is used
    assert 0.97 * HOUR < sum(gaps) / len(gaps) < 1.03 * HOUR


def test_schedule_is_configurable_down_to_seconds() -> None:
    gaps = list(schedule_gaps(UpdaterConfig(check_interval=2.0, check_jitter=0.1), 200))
    assert all(1.8 <= g <= 2.2 for g in gaps)


def test_same_seed_same_schedule() -> None:
    assert list(schedule_gaps(CFG, 20, seed=3)) == list(schedule_gaps(CFG, 20, seed=3))
    assert list(schedule_gaps(CFG, 20, seed=3)) != list(schedule_gaps(CFG, 20, seed=4))


def test_first_checks_of_a_fleet_spread_over_one_interval() -> None:
    firsts = [fresh(seed).wait() for seed in range(300)]
    assert all(0.0 <= f <= HOUR for f in firsts)
    assert min(firsts) < 0.05 * HOUR and max(firsts) > 0.95 * HOUR


# -- the table itself -------------------------------------------------------------------------


def test_table_is_well_formed() -> None:
    for (state, kind), transition in TRANSITIONS.items():
        assert transition.targets and transition.note, (state, kind)
        assert kind is not Event and issubclass(kind, Event)
    states_in_table = {s for s, _ in TRANSITIONS} | {
        t for tr in TRANSITIONS.values() for t in tr.targets
    }
    assert states_in_table == set(State)
    # Started is accepted exactly where a constructor leaves the machine
    assert {s for s, e in TRANSITIONS if e is Started} == set(INITIAL_STATES)
    # every timed state can be left by its timer
    assert all((s, Timer) in TRANSITIONS for s in TIMED_STATES)


def test_table_renders_as_text_and_dot() -> None:
    text = render_table()
    lines = text.splitlines()
    assert len(lines) == len(TRANSITIONS) + 1
    assert lines[0].split() == ["state", "event", "next", "note"]
    for (state, kind), line in zip(TRANSITIONS, lines[1:], strict=True):
        assert line.split()[:2] == [state.value, kind.__name__]
    assert len(table_rows()) == len(TRANSITIONS)
    dot = render_dot()
    edges = [line for line in dot.splitlines() if "->" in line]
    assert len(edges) == sum(len(t.targets) for t in TRANSITIONS.values())
    assert '  asking -> draining [label="Granted"];' in edges


def test_heartbeat_states_are_node_states() -> None:
    assert {s.heartbeat_state for s in State} <= set(NODE_STATES)


@pytest.mark.parametrize(
    "module", [updater_module, updater_events, updater_states, timing], ids=lambda m: m.__name__
)
def test_updater_modules_are_pure(module: ModuleType) -> None:
    """The core imports no IO, no clock, no randomness (README "Architecture"); nor numpy:
    the timing rules work on the simulator's arrays without knowing them."""
    forbidden = {"trio", "asyncio", "socket", "os", "time", "random", "threading", "subprocess"}
    forbidden |= {"numpy"}
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported
    assert not imported & forbidden


def test_updater_re_exports_every_value() -> None:
    """``up.X`` works for every event, effect and record, and for the config."""
    public = {
        name
        for name, obj in vars(updater_events).items()
        if isinstance(obj, type) and obj.__module__ == updater_events.__name__
    }
    assert {"Candidate", "Nudged", "Swap", "Event", "Effect"} <= public
    exported = set(updater_module.__all__)
    assert not public - exported
    assert updater_module.UpdaterConfig is timing.UpdaterConfig
    assert all(getattr(updater_module, n) is getattr(updater_events, n) for n in public & exported)


def test_updater_module_stays_under_900_lines() -> None:
    for module in (updater_module, updater_events, updater_states, timing):
        assert module.__file__ is not None
        assert len(Path(module.__file__).read_text().splitlines()) < 900, module.__name__


# -- construction and validation --------------------------------------------------------------


def test_candidate_from_real_gates() -> None:
    now = 1_800_000_000
    data = b"new build" * 400
    release = Release.for_bytes(
        data, name="v2", counter=2, chunk_size=1024, issued=now - 10, expires=now + 86_400
    )
    allowlist = Allowlist(
        version=7, issued=now - 10, expires=now + 86_400, artifacts=(release.artifact,)
    )
    node = art("node-1")

    def evaluate(kind: str) -> GatesEvaluated:
        scope = Scope(
            serial=3, issued=now - 10, expires=now + 3600, artifact=release.artifact, kind=kind
        )
        target = choose_target(
            node,
            installed=None,
            allowlist=allowlist,
            releases={release.artifact: release},
            scope=scope,
            now=now,
        )
        return GatesEvaluated.from_target(target, allowlist=allowlist, scope=scope)

    ok = evaluate("everyone")
    assert ok.candidate == Candidate(
        artifact=release.artifact, counter=2, allowlist_version=7, scope_serial=3
    )
    assert ok.refusal is None
    held = evaluate("nobody")
    assert held.candidate is None
    assert held.refusal is not None and held.refusal.gate == GATE_SCOPE


@pytest.mark.parametrize(
    "build",
    [
        lambda: Nudged(artifact="ABC"),
        lambda: Nudged(artifact=NEW.upper()),
        lambda: AllowlistLearned(version=0, artifacts=(NEW,)),
        lambda: AllowlistLearned(version=1, artifacts=("ABC",)),
        lambda: UpdaterConfig(notice_spread=-1.0),
        lambda: UpdaterConfig(notice_spread=float("inf")),
        lambda: Candidate(artifact=NEW, counter=0, allowlist_version=1, scope_serial=1),
        lambda: Refused(gate="capacity", reason="x", retry_after=-1.0),
        lambda: Refused(gate="capacity", reason="", retry_after=1.0),
        lambda: Granted(token=b"", lease_ttl=300.0),
        lambda: Granted(token=TOKEN, lease_ttl=float("inf")),
        lambda: GatesEvaluated(candidate=C, refusal=SCOPE_REFUSAL),
        lambda: UpdaterConfig(check_jitter=1.0),
        lambda: UpdaterConfig(check_interval=0.0),
        lambda: UpdaterConfig(backoff_base=10.0, backoff_cap=5.0),
        lambda: UpdaterConfig(report_attempts=0),
        lambda: UpdaterConfig(swap_margin=-1.0),
        lambda: Updater(installed="old", rng=random.Random(0)),
    ],
)
def test_bad_values_are_refused_on_construction(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


def test_events_and_effects_are_frozen_keyword_only() -> None:
    event = Nudged(artifact=NEW)
    with pytest.raises(AttributeError):
        event.artifact = OLD  # type: ignore[misc]
    with pytest.raises(TypeError):
        Nudged(NEW)  # type: ignore[call-arg]
    assert [f.name for f in fields(AskCoordinator)] == ["from_artifact", "candidate"]


# -- coverage of the table ----------------------------------------------------------------------


SCENARIOS: list[Callable[[], None]] = [
    test_happy_path_to_swap,
    test_probation_confirmed_rejoins_and_ends_the_lease,
    test_unhealthy_probation_rolls_back,
    test_no_confirm_in_time_rolls_back,
    test_old_version_reports_the_failure_after_rollback,
    test_sticky_deny_holds_until_a_higher_counter_arrives,
    test_nudge_during_sleep_skips_the_wait_but_not_the_gates,
    test_nudge_for_the_running_artifact_is_ignored,
    *(lambda s=s: test_nudge_while_busy_is_remembered_not_acted_on(s) for s in BUSY),
    test_remembered_nudge_makes_the_next_sleep_short,
    test_learned_allowlist_brings_the_check_forward_within_the_spread,
    *(
        lambda s=s: test_learned_allowlist_while_busy_is_remembered_not_acted_on(s)
        for s in BUSY_LEARNING
    ),
    test_refused_waits_retry_after_then_asks_again,
    *(
        lambda c=c: test_breaker_refusal_of_an_hour_ends_when_its_cause_changes(c)
        for c in CAUSE_CHANGES
    ),
    test_capacity_refusal_asks_again_when_the_replica_says_a_slot_freed,
    *(
        lambda c=c: test_capacity_refusal_only_remembers_new_documents_and_nudges(c)
        for c in CAUSE_CHANGES
    ),
    test_learned_scope_brings_a_sleeping_check_forward_within_the_spread,
    *(
        lambda s=s: test_learned_scope_and_freed_slot_while_busy_change_nothing_now(s)
        for s in BUSY_SCOPE
    ),
    test_a_release_record_after_its_allowlist_ends_the_sleep_within_the_spread,
    test_a_release_record_that_came_during_the_check_shortens_the_sleep_it_ends_in,
    *(lambda s=s: test_a_release_record_while_busy_changes_nothing_now(s) for s in BUSY_RELEASE),
    test_coordinator_errors_back_off_exponentially_and_reset_after_success,
    test_lease_too_short_to_swap_is_returned,
    test_drain_overrun_resumes_serving_and_returns_the_lease,
    test_swap_failure_resumes_serving_and_returns_the_lease,
    lambda: test_reports_retry_with_backoff_then_give_up(State.REJOINED),
    lambda: test_reports_retry_with_backoff_then_give_up(State.ROLLED_BACK),
    test_report_acknowledged_after_an_error,
]


def test_every_table_row_is_exercised() -> None:
    SEEN.clear()
    for scenario in SCENARIOS:
        scenario()
    missing = set(TRANSITIONS) - SEEN
    assert not missing, sorted((s.value, e.__name__) for s, e in missing)
    assert SEEN <= set(TRANSITIONS)


# -- a fleet, in memory -------------------------------------------------------------------------


def test_nudged_fleet_moves_within_the_coordinators_budget() -> None:
    """Twelve nodes nudged at once; a fake coordinator grants at most two leases at a time.

    The fake shell performs each effect after a fixed delay and feeds the answer back; the
    loop always runs the earliest pending event or timer.  Everyone ends on NEW, refused
    nodes waited and retried, and concurrency never exceeded the budget.
    """
    n, budget = 12, 2
    nodes = [Updater(installed=OLD, rng=random.Random(i)) for i in range(n)]
    queue: list[tuple[float, int, int, Event | None]] = []
    seq = 0
    leases: set[int] = set()
    most_leases = refusals = 0

    def at(when: float, i: int, event: Event | None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(queue, (when, seq, i, event))

    def perform(i: int, effects: list[Effect], now: float) -> None:
        nonlocal most_leases, refusals
        u = nodes[i]
        for effect in effects:
            match effect:
                case EvaluateGates():
                    found = None if u.installed == NEW else C
                    at(now, i, GatesEvaluated(candidate=found))
                case Prefetch(artifact=artifact):
                    at(now + 10.0, i, PrefetchDone(artifact=artifact))
                case AskCoordinator():
                    if len(leases) < budget:
                        leases.add(i)
                        most_leases = max(most_leases, len(leases))
                        at(now + 0.1, i, Granted(token=b"t%d" % i, lease_ttl=300.0))
                    else:
                        refusals += 1
                        at(now + 0.1, i, Refused(gate="capacity", reason="busy", retry_after=30.0))
                case Drain():
                    at(now + 5.0, i, Drained())
                case Swap(pending=pending):
                    nodes[i] = Updater.on_probation(pending, rng=random.Random(100 + i))
                    at(now + 2.0, i, Started())
                case RestoreWork():
                    at(now + 3.0, i, HealthOk())
                case Confirm():
                    at(now, i, Confirmed())
                case ReportRejoined():
                    leases.discard(i)
                    at(now + 0.1, i, Reported())
                case _:
                    raise AssertionError(effect)
        timer = nodes[i].get_timer()
        if timer is not None:
            at(timer, i, None)

    for i in range(n):
        perform(i, nodes[i].handle(Started(), 0.0), 0.0)
        at(1.0, i, Nudged(artifact=NEW))
    now = 0.0
    while queue and now < 1800.0:
        now, _, i, event = heapq.heappop(queue)
        effects = nodes[i].handle_timer(now) if event is None else nodes[i].handle(event, now)
        perform(i, effects, now)

    assert all(u.installed == NEW and u.state is State.SLEEPING for u in nodes)
    assert most_leases == budget and not leases
    assert refusals > 0
