"""The fleet's state and its transitions, shared by both engines.

``Fleet`` holds every node as columns (structure of arrays) and implements what happens to
a set of nodes at given times: churn (``_down`` / ``_up``), timer events (``_timer``: a
gate check, or the end of a departure), answers to asks (``_answer``), grants, failures and
the circuit breaker, and the time-series sample.  Every method takes node indices and
their event times as arrays, so the tick engine passes a tick's worth of nodes at once and
the event engine passes one.  The engines differ only in how they order time:

* ``tick.TickEngine`` buckets events by tick and decides a tick's asks together at the
  tick's end (``decide_batch``);
* ``exact.EventEngine`` pops one event at a time from a heap and decides each ask when it
  is made (``decide``).

Subclasses provide ``_schedule`` (a node's next timer), ``_push_churn`` (its next churn
transition) and ``_ask`` (what to do with nodes that ask now).
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from coordinator.policy import breaker_attempted, breaker_tripped

from .metrics import Recorder, summarize
from .model import DENIED, NEW, Model, Outcome, Phase
from .policies import Policy, PoolView
from .rng import FloatArray, IntArray

BoolArray = NDArray[np.bool_]
#: Asked, answer pending (the tick engine answers at the tick's end).
ASKING: Final = len(Phase)

_CHECKING: Final = np.array(
    [
        p in (Phase.IDLE, Phase.PREFETCH, Phase.REFUSED, Phase.BACKOFF, ASKING)
        for p in range(ASKING + 1)
    ],
    dtype=np.bool_,
)
_TIMED: Final = np.array(
    [
        p in (Phase.IDLE, Phase.PREFETCH, Phase.REFUSED, Phase.BACKOFF, Phase.AWAY)
        for p in range(ASKING + 1)
    ],
    dtype=np.bool_,
)

Aggregates = tuple[FloatArray, NDArray[np.int64], FloatArray, float]


class Fleet:
    """Node columns, pool sums and the transitions (module docstring)."""

    def __init__(self, model: Model, policy: Policy, sample_dt: float) -> None:
        self.m = model
        s = model.s
        pop = model.population
        n = pop.n
        self.n = n
        self.policy = policy
        self.sample_dt = sample_dt
        n_samples = math.floor(model.horizon / sample_dt + 1e-9) + 1
        self.rec = Recorder(scenario=s, sample_dt=sample_dt, n_samples=n_samples)
        #: ``[artifact]``: prefetch times from the swarm model, origin bytes (else None).
        self.art = model.artifact_tracker(sample_dt, n_samples)
        self.pool = pop.pool
        self.cap = pop.capacity
        self.K = model.pools
        self.u = s.floor_utilization

        self.online = pop.online.copy()
        self.departed = np.zeros(n, dtype=np.bool_)
        self.churn_t = pop.churn_t.copy()
        self.churn_n = np.zeros(n, dtype=np.int64)
        self.jitter_n = np.zeros(n, dtype=np.int64)
        self.attempt = np.zeros(n, dtype=np.int64)
        #: Asks made (the coordinator-error draw's counter) and consecutive coordinator
        #: errors (the updater's ``attempts``: drives the backoff; any answer resets it).
        self.ask_n = np.zeros(n, dtype=np.int64)
        self.errors = np.zeros(n, dtype=np.int64)
        self.phase = np.zeros(n, dtype=np.int8)
        self.next_t = np.full(n, math.inf)
        self.version = np.zeros(n, dtype=np.int8)
        self.prefetched = np.zeros(n, dtype=np.bool_)
        self.away_end = np.full(n, math.inf)
        self.drain_end = np.full(n, math.inf)
        self.outcome = np.zeros(n, dtype=np.int8)
        self.lease_exp = np.full(n, math.inf)
        self.interrupted = np.zeros(n, dtype=np.bool_)
        self.session_start = np.full(n, math.nan)
        self.seen = np.zeros(n, dtype=np.bool_)
        self.granted_ever = np.zeros(n, dtype=np.bool_)
        self.cohort = np.zeros(n, dtype=np.bool_)
        self.updated = 0
        self.updated_cohort = 0
        #: Nodes whose move's outcome reached the coordinator (rejoined or rolled back),
        #: and how many when the breaker paused.
        self.outcomes = 0
        self.outcomes_at_pause = 0
        self.denied = 0
        self.stage_done = -1
        self.activity = dict.fromkeys(
            ("checks", "asks", "grants", "completions", "arrivals", "departures_churn"), 0
        )
        self._recount()

    def _start(self) -> None:
        """Arm every online node's first check and every node's first churn transition."""
        everyone = np.arange(self.n, dtype=np.int64)
        on = everyone[self.online]
        first = self.m.first_check(on, self.jitter_n[on])
        self.jitter_n[on] += 1
        self._schedule(on, first)
        self._push_churn(everyone, self.churn_t)

    def _mark_start(self) -> None:
        """The rollout starts: who is online now is the initial cohort (and seen)."""
        self.seen |= self.online
        self.cohort = self.online.copy()

    # -- what subclasses provide ----------------------------------------------------------------

    def _schedule(self, nodes: IntArray, times: FloatArray) -> None:
        raise NotImplementedError

    def _push_churn(self, nodes: IntArray, times: FloatArray) -> None:
        raise NotImplementedError

    def _ask(self, nodes: IntArray, times: FloatArray) -> None:
        raise NotImplementedError

    # -- pool sums ------------------------------------------------------------------------------

    def _recount(self) -> None:
        """Pool sums from scratch (at the start, and daily against float drift)."""
        K, pool, cap = self.K, self.pool, self.cap
        online = self.online
        serving = online & (self.phase != Phase.AWAY)
        away = online & (self.phase == Phase.AWAY)
        self.cap_online: FloatArray = np.bincount(
            pool[online], weights=cap[online], minlength=K
        ).astype(np.float64)
        self.cap_serving: FloatArray = np.bincount(
            pool[serving], weights=cap[serving], minlength=K
        ).astype(np.float64)
        self.n_online = np.bincount(pool[online], minlength=K).astype(np.int64)
        self.n_serving = np.bincount(pool[serving], minlength=K).astype(np.int64)
        self.n_away = np.bincount(pool[away], minlength=K).astype(np.int64)

    def _add(self, nodes: IntArray, sign: int, *, online: bool, serving: bool, away: bool) -> None:
        """Add (``sign`` 1) or remove (-1) ``nodes`` from the flagged pool sums."""
        if len(nodes) == 0:
            return
        K = self.K
        if K == 1:
            c = float(self.cap[nodes].sum()) * sign
            m = len(nodes) * sign
            if online:
                self.cap_online[0] += c
                self.n_online[0] += m
            if serving:
                self.cap_serving[0] += c
                self.n_serving[0] += m
            if away:
                self.n_away[0] += m
            return
        p = self.pool[nodes]
        cw = np.bincount(p, weights=self.cap[nodes], minlength=K) * sign
        cn = np.bincount(p, minlength=K) * sign
        if online:
            self.cap_online += cw
            self.n_online += cn
        if serving:
            self.cap_serving += cw
            self.n_serving += cn
        if away:
            self.n_away += cn

    def aggregates(self, t: float) -> Aggregates:
        """What gossip tells the coordinator at ``t``: serving capacity, serving count and
        load per pool (the load is the true demand: push-sum converges in ~1 epoch)."""
        return (self.cap_serving.copy(), self.n_serving.copy(), self.m.demand(t), t)

    # -- the time series --------------------------------------------------------------------------

    def _sample(self, j: int, t: float) -> None:
        if j >= self.rec.n_samples:
            return
        sr = self.rec.series
        load = self.m.demand(t)
        spare = self.cap_serving - load / self.u
        sr["online"][j] = int(self.n_online.sum())
        sr["serving"][j] = int(self.n_serving.sum())
        sr["away"][j] = int(self.n_away.sum())
        sr["held"][j] = self.policy.held(t)
        sr["stuck"][j] = self.policy.stuck(self.online) if self.policy.name == "fleetlock" else 0
        sr["paused"][j] = int(math.isfinite(self.rec.paused_at) and self.rec.paused_at <= t)
        sr["capacity_online"][j] = float(self.cap_online.sum())
        sr["capacity_serving"][j] = float(self.cap_serving.sum())
        sr["load"][j] = float(load.sum())
        sr["spare"][j] = float(spare.sum())
        sr["spare_no_departures"][j] = float((self.cap_online - load / self.u).sum())
        sr["spare_share_min"][j] = float((spare / np.maximum(self.cap_online, 1e-12)).min())
        sr["deficit"][j] = float(np.maximum(-spare, 0.0).sum())
        for name, value in self.activity.items():
            sr[name][j] = value
            self.activity[name] = 0
        sr["updated"][j] = self.updated
        sr["updated_initial"][j] = self.updated_cohort
        sr["rolled_back"][j] = self.denied

    # -- stages -----------------------------------------------------------------------------------

    def _stage(self, index: int, t: float) -> None:
        """A scope comes into force; with ``nudge`` (or push) every sleeping node checks now."""
        self.stage_done = index
        if self.m.s.rollout.nudge or self.policy.pushes:
            idle = np.flatnonzero(self.online & (self.phase == Phase.IDLE))
            self._schedule(idle, np.full(len(idle), t))

    # -- churn ------------------------------------------------------------------------------------

    def _down(self, nodes: IntArray, t: FloatArray) -> None:
        """``nodes`` (online) go offline at ``t``, for good past their departure time."""
        m = self.m
        self.activity["departures_churn"] += len(nodes)
        leaving = t >= m.population.depart_t[nodes]
        start = self.session_start[nodes]
        ok = ~leaving & np.isfinite(start)
        if bool(ok.any()):
            self.rec.sessions(start[ok], t[ok] - start[ok], m.horizon)
        away = self.phase[nodes] == Phase.AWAY
        if bool(away.any()):
            done = away & (self.away_end[nodes] <= t)
            if bool(done.any()):  # ended before it went down (same tick): complete first
                self._complete(nodes[done], self.away_end[nodes[done]])
                away = self.phase[nodes] == Phase.AWAY
        if bool(away.any()):
            gone = nodes[away]
            staged = t[away] >= self.drain_end[gone]
            self.phase[gone[~staged]] = Phase.IDLE  # died draining: still the old build
            self.phase[gone[staged]] = Phase.PENDING  # new slot staged: probation at boot
            self.interrupted[gone[staged]] = True
            self._add(gone, -1, online=True, serving=False, away=True)
            self.policy.went_offline(gone, self.pool[gone], float(t.max()))
        self._add(nodes[~away], -1, online=True, serving=True, away=False)
        if self.art is not None:
            self.art.down(self.phase[nodes] == Phase.PREFETCH, self.prefetched[nodes])
        checking = _CHECKING[self.phase[nodes]]
        self.phase[nodes[checking]] = Phase.IDLE
        self.errors[nodes] = 0  # a restarted updater starts counting afresh
        self.online[nodes] = False
        self.next_t[nodes] = math.inf
        self.departed[nodes[leaving]] = True
        stay = ~leaving
        if bool(stay.any()):
            rest = nodes[stay]
            nxt = m.next_churn(rest, self.churn_n[rest], t[stay], np.zeros(len(rest), np.bool_))
            self.churn_n[rest] += 1
            self.churn_t[rest] = nxt
            self._push_churn(rest, nxt)

    def _up(self, nodes: IntArray, t: FloatArray) -> None:
        """``nodes`` (offline) boot at ``t``."""
        m = self.m
        self.activity["arrivals"] += len(nodes)
        self.online[nodes] = True
        self.session_start[nodes] = t
        self.seen[nodes[t >= m.s.rollout_start]] = True
        self.policy.booted(nodes, self.pool[nodes], float(t.min()))
        if self.art is not None:
            self.art.up(self.prefetched[nodes])
        pending = self.phase[nodes] == Phase.PENDING
        if bool(pending.any()):
            back = nodes[pending]
            self.phase[back] = Phase.AWAY
            end = m.plan_return(back, self.attempt[back] - 1, t[pending])
            self.away_end[back] = end
            self._add(back, 1, online=True, serving=False, away=True)
            self._schedule(back, end)
        rest, tr = nodes[~pending], t[~pending]
        self._add(rest, 1, online=True, serving=True, away=False)
        idle = self.phase[rest] == Phase.IDLE
        if bool(idle.any()):
            sleepers, ts = rest[idle], tr[idle]
            nudged = self.policy.pushes or self.m.s.rollout.nudge_on_boot
            if nudged and self.stage_done >= 0:
                when = ts  # nudged when it connects: checks at once
            else:
                when = ts + m.first_check(sleepers, self.jitter_n[sleepers])
                self.jitter_n[sleepers] += 1
            self._schedule(sleepers, when)
        nxt = m.next_churn(nodes, self.churn_n[nodes], t, np.ones(len(nodes), np.bool_))
        self.churn_n[nodes] += 1
        self.churn_t[nodes] = nxt
        self._push_churn(nodes, nxt)

    # -- timers -----------------------------------------------------------------------------------

    def _timer(self, nodes: IntArray, t: FloatArray) -> None:
        """Due timers of online nodes: departures end, the others check gates."""
        away = self.phase[nodes] == Phase.AWAY
        if bool(away.any()):
            self._complete(nodes[away], t[away])
            nodes, t = nodes[~away], t[~away]
        if len(nodes):
            self._check(nodes, t)

    def _check(self, nodes: IntArray, t: FloatArray) -> None:
        """A sleeping, prefetching, refused or backing-off node's timer: gates 1 and 2, then
        ask."""
        m = self.m
        self.activity["checks"] += len(nodes)
        fetched = self.phase[nodes] == Phase.PREFETCH
        self.prefetched[nodes[fetched]] = True
        if self.art is not None and bool(fetched.any()):
            self.art.fetched(nodes[fetched], t[fetched])
        gates = m.gates
        stage = np.searchsorted(gates.stage_times, t, side="right") - 1
        if len(stage) == 1 or bool((stage == stage[0]).all()):
            ok, codes = gates.evaluate(nodes, float(t[0]))
        else:
            ok = np.zeros(len(nodes), dtype=np.bool_)
            codes = np.zeros(len(nodes), dtype=np.int16)
            for st in np.unique(stage):
                sel = stage == st
                ok[sel], codes[sel] = gates.evaluate(nodes[sel], float(t[sel][0]))
        self.rec.count_codes(codes, lambda c: gates.labels[c])
        if not bool(ok.all()):
            no = nodes[~ok]
            self.phase[no] = Phase.IDLE
            self.errors[no] = 0  # Updater._sleep
            self._schedule(no, t[~ok] + m.check_interval(no, self.jitter_n[no]))
            self.jitter_n[no] += 1
            nodes, t = nodes[ok], t[ok]
            if len(nodes) == 0:
                return
        ready = self.prefetched[nodes]
        if not bool(ready.all()):
            fetch = nodes[~ready]
            self.phase[fetch] = Phase.PREFETCH
            if self.art is None:
                took = m.prefetch_time(fetch, self.churn_n[fetch])
            else:
                took = self.art.start(fetch, t[~ready], self.churn_n[fetch])
            self._schedule(fetch, t[~ready] + took)
            nodes, t = nodes[ready], t[ready]
            if len(nodes) == 0:
                return
        self.phase[nodes] = ASKING
        self.next_t[nodes] = math.inf
        self._ask(nodes, t)

    def _complete(self, nodes: IntArray, t: FloatArray) -> None:
        """Departures ending at ``t``: rejoined, rolled back, or drain abandoned."""
        rec = self.rec
        self.activity["completions"] += len(nodes)
        outcome = self.outcome[nodes]
        ok = outcome == Outcome.SUCCESS
        back = outcome == Outcome.ROLLBACK
        abort = outcome == Outcome.ABORT
        self.version[nodes[ok]] = NEW
        self.version[nodes[back]] = DENIED
        self.updated += int(ok.sum())
        self.updated_cohort += int(np.count_nonzero(self.cohort[nodes[ok]]))
        self.denied += int(back.sum())
        self.phase[nodes[ok | back]] = Phase.DONE
        self.away_end[nodes] = math.inf
        if math.isfinite(self.policy.lease_ttl):
            plain = ~abort & ~self.interrupted[nodes]
            over = t[plain] - self.lease_exp[nodes[plain]]
            over = over[over > 0.0]
            rec.overruns += len(over)
            rec.overrun_seconds += float(over.sum())
        self.policy.release(nodes, self.pool[nodes], float(t.max()))
        self._add(nodes, 1, online=False, serving=True, away=False)
        self._add(nodes, -1, online=False, serving=False, away=True)
        if bool(abort.any()):  # Updater._abort: resume serving, sleep a jittered interval
            ab = nodes[abort]
            self.phase[ab] = Phase.IDLE
            self.errors[ab] = 0
            self._schedule(ab, t[abort] + self.m.check_interval(ab, self.jitter_n[ab]))
            self.jitter_n[ab] += 1
        if bool(back.any()):
            self._failures(np.sort(t[back]), np.sort(t[ok]))
        else:
            self.outcomes += int(ok.sum())

    def _failures(self, times: FloatArray, rejoined: FloatArray) -> None:
        """Failure reports reach the coordinator, in time order with the rejoined reports
        of the same nodes' batch (``rejoined``, sorted); the real breaker rule decides a
        pause (``breaker_attempted``: of the grants, or of the outcomes)."""
        rec = self.rec
        config = self.m.policy
        before = self.outcomes
        for i, when in enumerate(times.tolist()):
            rec.failures += 1
            if not math.isfinite(rec.first_failure):
                rec.first_failure = when
            known = before + i + 1 + int(np.searchsorted(rejoined, when, side="right"))
            attempted = breaker_attempted(rec.attempted, min(known, rec.attempted), config)
            if (
                self.policy.has_breaker
                and not math.isfinite(rec.paused_at)
                and breaker_tripped(rec.failures, attempted, config)
            ):
                rec.paused_at = when
                rec.attempted_at_pause = rec.attempted
                rec.failures_at_pause = rec.failures
                self.outcomes_at_pause = min(known, rec.attempted)
                self.policy.pause()
        self.outcomes = before + len(times) + len(rejoined)

    # -- the coordinator's answers ------------------------------------------------------------------

    def _answer(self, nodes: IntArray, times: FloatArray, now: float, agg: Aggregates) -> None:
        """Decide asks (sorted by time) at ``now``; one policy call per pool."""
        m = self.m
        self.activity["asks"] += len(nodes)
        if m.s.policy.error_probability > 0.0:
            failed = m.ask_fails(nodes, self.ask_n[nodes])
            self.ask_n[nodes] += 1
            if bool(failed.any()):
                self._coordinator_error(nodes[failed], now)
                nodes, times = nodes[~failed], times[~failed]
                if len(nodes) == 0:
                    return
        cap_agg, serving_agg, load_agg, as_of = agg
        force_stage = m.gates.force_at(now)
        policy = self.policy
        if self.K == 1:
            groups = [(0, nodes, times)]
        else:
            by_pool = np.argsort(self.pool[nodes], kind="stable")
            nodes, times = nodes[by_pool], times[by_pool]
            pools = self.pool[nodes]
            cuts = np.flatnonzero(pools[1:] != pools[:-1]) + 1
            bounds = zip([0, *cuts.tolist()], [*cuts.tolist(), len(nodes)], strict=True)
            groups = [(int(pools[s]), nodes[s:e], times[s:e]) for s, e in bounds]
        for p, g_nodes, g_times in groups:
            cap = self.cap[g_nodes]
            c_p = float(cap_agg[p])
            l_p = float(load_agg[p])
            load = cap * (l_p / c_p) if c_p > 0.0 else np.zeros(len(cap))
            view = PoolView(
                capacity=c_p,
                load=l_p,
                serving=int(serving_agg[p]),
                as_of=as_of,
                online=int(self.n_online[p]),
                away=int(self.n_away[p]),
            )
            force = np.full(len(g_nodes), force_stage, dtype=np.bool_)
            granted, codes, retry = policy.decide(p, g_nodes, cap, load, force, g_times, now, view)
            self.rec.count_codes(codes, policy.label)
            self.errors[g_nodes] = 0  # an answer, either way
            if bool(granted.any()):
                self._grant(g_nodes[granted], now)
            refused = ~granted
            if bool(refused.any()):
                r_nodes = g_nodes[refused]
                self.phase[r_nodes] = Phase.REFUSED
                wait = m.retry_wait(r_nodes, self.jitter_n[r_nodes], retry[refused])
                self.jitter_n[r_nodes] += 1
                self._schedule(r_nodes, now + wait)

    def _coordinator_error(self, nodes: IntArray, now: float) -> None:
        """Asks with no usable answer: ``Updater._ask_failed`` (exponential backoff)."""
        self.errors[nodes] += 1
        self.phase[nodes] = Phase.BACKOFF
        wait = self.m.backoff_wait(nodes, self.jitter_n[nodes], self.errors[nodes])
        self.jitter_n[nodes] += 1
        self._schedule(nodes, now + wait)

    def _grant(self, nodes: IntArray, now: float) -> None:
        self.activity["grants"] += len(nodes)
        fresh = ~self.granted_ever[nodes]
        self.granted_ever[nodes] = True
        self.rec.attempted += int(fresh.sum())
        ttl = self.policy.lease_ttl
        end, drain_end, outcome = self.m.plan_departure(nodes, self.attempt[nodes], now, ttl)
        self.attempt[nodes] += 1
        self.away_end[nodes] = end
        self.drain_end[nodes] = drain_end
        self.outcome[nodes] = outcome
        self.lease_exp[nodes] = now + ttl
        self.interrupted[nodes] = False
        self.phase[nodes] = Phase.AWAY
        self._add(nodes, -1, online=False, serving=True, away=False)
        self._add(nodes, 1, online=False, serving=False, away=True)
        self._schedule(nodes, end)

    # -- the end ------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        in_scope = self.m.gates.final_members()
        target = in_scope & self.seen
        new = self.version == NEW
        return summarize(
            self.rec,
            in_scope_seen=int(np.count_nonzero(target)),
            in_scope_initial=int(np.count_nonzero(in_scope & self.cohort)),
            updated_final=int(np.count_nonzero(new & target)),
            denied_final=int(np.count_nonzero((self.version == DENIED) & target)),
            online_not_updated=int(np.count_nonzero(target & ~new & self.online)),
            n_nodes=self.n,
            pools=self.K,
            config=self.m.policy,
        )
