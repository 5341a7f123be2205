"""The simulated node waits exactly as the real updater does (one home: ``core.timing``).

One always-online node runs in the exact event engine (``simulations.fleet`` transitions,
``simulations.model`` waits) against a scripted coordinator: grants (whose drain always
overruns, so the grant's timing shows), refusals with and without ``retry_after``, and
coordinator errors in a row.  The real ``core.updater.Updater`` is driven through the same
answers by a small shell, with an ``Rng`` that hands it the model's own uniform draws in
order, and the prefetch time the model drew.  Every time either side sets the node's next
event (a timer, or the end of a prefetch), it is recorded with the state it waits in; the
two schedules must be equal, float for float.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from p2pupdate.core import updater as up
from simulations.config import parse
from simulations.exact import EventEngine
from simulations.model import Model, Phase
from simulations.policies import PoolView
from simulations.rng import FloatArray, IntArray

#: The lease a grant carries: shorter than drain_timeout + swap_margin, so the drain budget
#: is the lease's bound (``lease_ttl - swap_margin``), not ``drain_timeout``.
LEASE_TTL = 150.0
#: Answers in order: ("grant",) | ("refuse", retry_after or None) | ("error",).
SCRIPT: list[tuple[Any, ...]] = [
    ("refuse", 120.0),
    ("error",),
    ("error",),
    ("error",),
    ("refuse", None),  # no retry_after: one check interval (the branch the model lacked)
    ("error",),  # the refusal reset the count: back to the first backoff step
    ("grant",),  # the drain overruns: the lease is handed back, a jittered sleep follows
    ("refuse", 0.0),  # below min_retry
    *[("error",)] * 9,  # up to the backoff cap
    ("grant",),
    ("refuse", 30.0),
]
#: After the script: a refusal past the end of the run (both sides stop there).
DONE = ("refuse", 1e9)

PHASE_STATE = {
    Phase.IDLE: up.State.SLEEPING,
    Phase.PREFETCH: up.State.PREFETCHING,
    Phase.REFUSED: up.State.REFUSED,
    Phase.BACKOFF: up.State.BACKING_OFF,
    Phase.AWAY: up.State.DRAINING,
}


def _scenario_model() -> Model:
    scenario = parse(
        {
            "run": {"nodes": 1, "days": 3.0, "engine": "exact", "seed": 11},
            "churn": {"always_on": 1.0, "departures_per_day": 0.0},
            "rollout": {"start_hours": 0.0},
            # the drain always overruns: the grant's timing is what the schedule shows
            "node": {"drain": {"dist": "fixed", "median_seconds": 1e6}},
            "policy": {"error_probability": 0.5, "lease_ttl": LEASE_TTL},
        },
        source="test",
    )
    return Model(scenario)


class ScriptedCoordinator:
    """Gate 3 and the link for the model: the answers of ``SCRIPT``, in order."""

    name = "scripted"
    lease_ttl = LEASE_TTL
    pushes = False
    has_breaker = False

    def __init__(self) -> None:
        self.answers: Iterator[tuple[Any, ...]] = iter(SCRIPT)
        self.next = next(self.answers)

    def _take(self) -> tuple[Any, ...]:
        answer, self.next = self.next, next(self.answers, DONE)
        return answer

    def ask_fails(self, nodes: IntArray, counter: IntArray) -> np.ndarray[Any, Any]:
        """``Model.ask_fails``: an "error" answer is the link's, before gate 3 is asked."""
        assert len(nodes) == 1
        failed = self.next[0] == "error"
        if failed:
            self._take()
        return np.array([failed])

    def label(self, code: int) -> tuple[str, str]:
        return "capacity", ("granted", "refused")[code]

    def decide(
        self,
        pool: int,
        nodes: IntArray,
        capacity: FloatArray,
        load: FloatArray,
        force: np.ndarray[Any, Any],
        times: FloatArray,
        now: float,
        view: PoolView,
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], FloatArray]:
        answer = self._take()
        assert answer[0] in ("grant", "refuse"), answer
        granted = answer[0] == "grant"
        retry = math.nan if granted or answer[1] is None else float(answer[1])
        return (
            np.array([granted]),
            np.array([0 if granted else 1], dtype=np.int8),
            np.array([retry]),
        )

    def release(self, *_: object) -> None: ...

    def went_offline(self, *_: object) -> None: ...

    def booted(self, *_: object) -> None: ...

    def pause(self) -> None: ...

    def held(self, now: float) -> int:
        return 0

    def stuck(self, online: object) -> int:
        return 0


class RecordingEngine(EventEngine):
    """The exact engine, recording every (time, state) the node is scheduled to wait in."""

    schedule: list[tuple[float, up.State]]

    def _schedule(self, nodes: IntArray, times: FloatArray) -> None:
        if not hasattr(self, "schedule"):
            self.schedule = []
        for node, t in zip(nodes.tolist(), times.tolist(), strict=True):
            assert node == 0
            self.schedule.append((t, PHASE_STATE[Phase(int(self.phase[node]))]))
        super()._schedule(nodes, times)


def model_schedule() -> tuple[list[tuple[float, up.State]], Model]:
    model = _scenario_model()
    coordinator = ScriptedCoordinator()
    model.ask_fails = coordinator.ask_fails  # type: ignore[method-assign]
    engine = RecordingEngine(model, policy=coordinator)
    engine.run()
    return engine.schedule, model


class ModelDraws:
    """An ``Rng`` that hands out the model's jitter draws of node 0, in order."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.k = 0

    def random(self) -> float:
        u = float(self.model.jitter(np.array([0], dtype=np.int64), self.k)[0])
        self.k += 1
        return u


def _art(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def updater_schedule(model: Model, horizon: float) -> list[tuple[float, up.State]]:
    """The real updater through the same answers: a shell that answers every effect."""
    old, new = _art("old"), _art("new")
    candidate = up.Candidate(artifact=new, counter=2, allowlist_version=1, scope_serial=1)
    prefetch = float(model.prefetch_time(np.array([0]), np.array([0]))[0])
    u = up.Updater(installed=old, rng=ModelDraws(model), config=model.updater)
    answers: Iterator[tuple[Any, ...]] = iter(SCRIPT)
    schedule: list[tuple[float, up.State]] = []
    pending: list[tuple[float, up.Event]] = []  # the shell's answers still to come

    def perform(effects: list[up.Effect], now: float) -> None:
        for effect in effects:
            match effect:
                case up.EvaluateGates():
                    perform(u.handle(up.GatesEvaluated(candidate=candidate), now), now)
                case up.Prefetch():
                    pending.append((now + prefetch, up.PrefetchDone(artifact=new)))
                    schedule.append((now + prefetch, u.state))
                case up.AskCoordinator():
                    answer = next(answers, DONE)
                    event: up.Event
                    if answer[0] == "grant":
                        event = up.Granted(token=b"lease", lease_ttl=LEASE_TTL)
                    elif answer[0] == "error":
                        event = up.CoordinatorError(reason="unreachable")
                    else:
                        event = up.Refused(gate="capacity", reason="x", retry_after=answer[1])
                    perform(u.handle(event, now), now)
                case up.Drain() | up.ResumeServing() | up.ReturnLease():
                    pass  # the drain never finishes in time; the rest needs no answer
                case _:
                    raise AssertionError(effect)

    perform(u.handle(up.Started(), 0.0), 0.0)
    while True:
        timer = u.get_timer()
        if timer is not None:
            schedule.append((timer, u.state))
        if pending:
            now, event = pending.pop()
            perform(u.handle(event, now), now)
        elif timer is not None and timer < horizon:
            perform(u.handle_timer(timer), timer)
        else:
            return schedule


def test_model_and_updater_schedules_are_identical() -> None:
    got, model = model_schedule()
    want = updater_schedule(model, model.horizon)
    # the model also records the last, past-the-horizon wait; so does the updater side
    assert got == want
    states = [s for _, s in got]
    # the script really went through every kind of wait
    assert states.count(up.State.BACKING_OFF) == 13
    assert states.count(up.State.DRAINING) == 2
    assert states.count(up.State.REFUSED) == 5
    assert up.State.PREFETCHING in states and up.State.SLEEPING in states
    backoffs = [
        t2 - t1 for (t1, _), (t2, s) in itertools.pairwise(got) if s is up.State.BACKING_OFF
    ]
    assert max(backoffs) <= model.updater.backoff_cap


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_timing_rules_agree_on_floats_and_arrays(seed: int) -> None:
    """The core's rules give the same numbers for one draw and for an array of draws."""
    from p2pupdate.core import timing

    config = up.UpdaterConfig()
    rng = np.random.default_rng(seed)
    draws = rng.random(64)
    attempts = rng.integers(1, 80, 64)
    retry = rng.uniform(0.0, 600.0, 64)
    ttl = rng.uniform(0.0, 400.0, 64)
    arrays = {
        "check": timing.check_interval(config, draws),
        "first": timing.first_check(config, draws),
        "notice": timing.notice_delay(config, draws),
        "refused": timing.refusal_wait(config, retry, draws, maximum=np.maximum),
        "no-retry": timing.refusal_wait(config, None, draws, maximum=np.maximum),
        "backoff": timing.backoff(config, attempts, draws, minimum=np.minimum),
        "budget": timing.drain_budget(config, ttl, minimum=np.minimum),
    }
    for i, x in enumerate(draws.tolist()):
        scalars = {
            "check": timing.check_interval(config, x),
            "first": timing.first_check(config, x),
            "notice": timing.notice_delay(config, x),
            "refused": timing.refusal_wait(config, float(retry[i]), x),
            "no-retry": timing.refusal_wait(config, None, x),
            "backoff": timing.backoff(config, int(attempts[i]), x),
            "budget": timing.drain_budget(config, float(ttl[i])),
        }
        for name, value in scalars.items():
            assert value == arrays[name][i], name
