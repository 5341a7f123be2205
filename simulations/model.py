"""The model both engines run: the fleet, its random draws, demand, departures and gates.

Nothing here knows about ticks or heaps.  Every function is vectorised over node indices,
so the numpy tick engine calls it with thousands of nodes at once and the heapq event
engine with one; both get the same numbers (``rng``: counter-based draws), so the two
engines differ only in *when* they act, which is what the cross-check measures.

A node, as the simulations see it (``Phase``), follows ``p2pupdate.core.updater``, and
every wait it draws is computed by the updater's own rules in ``p2pupdate.core.timing``
(applied to arrays of uniform draws; ``tests/simulations/test_updater_equivalence.py``
checks the schedules agree exactly):

* **IDLE** (``sleeping``): a timer at a jittered interval (``timing.check_interval``; the
  first check after boot is ``timing.first_check``).  On the timer the node evaluates gates
  1 and 2 with the *real* ``gates.allowlisted`` / ``gates.in_scope`` and real
  signed-document dataclasses; if they pass it prefetches (once) and asks.
* **PREFETCH** (``prefetching``): downloading; then gates again, then ask.
* **REFUSED**: waiting out the refusal (``timing.refusal_wait``: ``retry_after``, or one
  check interval when the refusal gave none), then gates again, then ask.
* **BACKOFF** (``backing_off``): the ask got no usable answer (``[policy]
  error_probability``); waiting ``timing.backoff`` over the consecutive errors, then gates
  again, then ask.  Any answer resets the count.
* **AWAY** (``draining`` .. ``rejoined``): granted; not serving.  The drain gets
  ``timing.drain_budget`` (``min(drain_timeout, lease_ttl - swap_margin)``) and is
  abandoned past that plus ``drain_grace`` (the lease is handed back); then restart, then
  probation: the health check must pass within ``probation_timeout`` or the launcher rolls
  back (restart again).  A bad build fails the health check on the nodes its failure draw
  picks.
* **PENDING**: went offline after the drain, so the new slot was staged; it runs its
  probation when the node next boots.
* **DONE**: on the new build, or sticky-denied after a rollback; nothing left to check.

Capacity is in arbitrary units (a node's share of serving work).  Demand per pool follows
a diurnal curve in each time zone, weighted by the zones' shares; a serving node carries
load in proportion to its capacity.  The *floor* is the policy's own headroom rule:
the pool is above it while ``load <= utilization * serving capacity``; the spare capacity
reported is ``serving capacity - load / utilization`` (negative: below the floor).
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from p2pupdate.core import timing
from p2pupdate.core.documents import Allowlist, Release, Scope
from p2pupdate.core.gates import (
    GATE_SCOPE,
    GateResult,
    allowlisted,
    fraction_in_force,
    fraction_point,
    fraction_threshold,
    in_fraction,
    in_scope,
)

from .artifacts import MIB, ArtifactTracker, SwarmModel
from .churn import DiurnalClock, from_uniform, length_biased, stationary_online_share
from .config import DAY, HOUR, Dist, Scenario
from .links import Links
from .rng import FloatArray, IntArray, Streams

BoolArray = NDArray[np.bool_]

#: Simulated t = 0 is this unix time (documents carry unix seconds).
EPOCH: Final = 1_767_225_600  # 2026-01-01T00:00:00Z


class Phase(enum.IntEnum):
    IDLE = 0
    PREFETCH = 1
    REFUSED = 2
    AWAY = 3
    PENDING = 4
    DONE = 5
    BACKOFF = 6


class Outcome(enum.IntEnum):
    """How a departure ends (decided at grant time from the node's draws)."""

    SUCCESS = 0
    ROLLBACK = 1
    ABORT = 2


OLD: Final = 0
NEW: Final = 1
DENIED: Final = 2  # rolled back: runs the old build, sticky-denies the new one


def node_id(i: int) -> str:
    """Node ``i``'s key id (64 hex digits, as real ids are)."""
    return f"{i:064x}"


@dataclass(frozen=True, kw_only=True, eq=False)
class Population:
    """The fleet at t = 0, drawn in node order from the ``init`` stream."""

    n: int
    pool: NDArray[np.int32]
    capacity: FloatArray
    tz: FloatArray  # seconds east of UTC
    always_on: BoolArray
    online: BoolArray
    churn_t: FloatArray  # first churn transition (wall seconds)
    depart_t: FloatArray  # permanent departure (inf: stays)
    fails: BoolArray  # a bad build fails probation here
    named: tuple[NDArray[np.int64], ...]  # per stage: the named nodes (empty unless "nodes")


class Model:
    """Everything both engines share (module docstring)."""

    def __init__(self, scenario: Scenario, seed: int | None = None) -> None:
        self.s = scenario
        self.seed = scenario.run.seed if seed is None else int(seed)
        self.streams = Streams(self.seed)
        self.updater = scenario.node.updater
        self.policy = scenario.policy.config
        self.horizon = scenario.horizon
        self.tick = scenario.run.tick_seconds
        self.clock = DiurnalClock(
            scenario.churn.diurnal_amplitude, scenario.churn.arrival_peak_hour
        )
        self.pools = scenario.capacity.pools
        self.population = self._populate()
        self.demand_ref = self._demand_reference()
        self._zone_offsets = np.array([z.utc_offset_hours * HOUR for z in scenario.churn.timezones])
        weights = np.array([z.weight for z in scenario.churn.timezones])
        self._zone_weights = weights / weights.sum()
        self.gates = GateView(self)
        #: ``[links]``: the NAT mix's draws (None: not modelled).
        self.links = Links(scenario.links, self.seed) if scenario.links is not None else None
        #: ``[artifact]``: the swarm model (None: ``node.prefetch`` draws prefetch times).
        self.swarm: SwarmModel | None = None
        art = scenario.artifact
        if art is not None and scenario.links is not None:
            mix = scenario.links
            slow = mix.relayed_share() * (1.0 - mix.relay_rate)  # relayed links run slower
            self.swarm = SwarmModel(
                size=art.size_mib * MIB,
                origin_up=art.origin_up_mib_s * MIB,
                peer_up=art.peer_up_mib_s * MIB * (1.0 - slow),
                peer_down=art.peer_down_mib_s * MIB,
            )

    # -- population ------------------------------------------------------------------------

    def _populate(self) -> Population:
        s, n = self.s, self.s.run.nodes
        rng = self.streams.generator("init")
        churn = s.churn
        always_on = rng.random(n) < churn.always_on
        pool = (
            rng.integers(0, self.pools, n).astype(np.int32)
            if self.pools > 1
            else np.zeros(n, dtype=np.int32)
        )
        weights = np.array([z.weight for z in churn.timezones], dtype=np.float64)
        zone = rng.choice(len(weights), size=n, p=weights / weights.sum())
        offsets = np.array([z.utc_offset_hours * HOUR for z in churn.timezones])
        tz = offsets[zone].astype(np.float64)
        cap_dist = s.capacity.node_capacity
        capacity = from_uniform(cap_dist, rng.random(n), rng.standard_normal(n))
        # Equilibrium start: online with the long-run share, part-way through the spell.
        p_on = stationary_online_share(churn.session, churn.offline)
        online = always_on | (rng.random(n) < p_on)
        cut = rng.random(n)
        on_left = length_biased(churn.session, rng, n) * cut
        off_left = length_biased(churn.offline, rng, n) * cut
        churn_t = np.where(online, on_left, 0.0)
        off = ~online
        churn_t[off] = self.clock.wall_end(np.zeros(int(off.sum())), off_left[off], tz[off])
        churn_t[always_on] = math.inf
        all_nodes = np.arange(n, dtype=np.int64)
        rate = churn.departures_per_day / DAY
        if rate > 0.0:
            u = self.streams.uniform("departure", all_nodes, 0)
            depart_t = -np.log1p(-u) / rate
        else:
            depart_t = np.full(n, math.inf)
        p = s.rollout.failure_probability
        fails = (
            self.streams.uniform("failure", all_nodes, 0) < p
            if p > 0.0
            else np.zeros(n, dtype=np.bool_)
        )
        named = tuple(
            np.sort(rng.choice(n, size=st.nodes, replace=False)).astype(np.int64)
            if st.scope == "nodes"
            else np.empty(0, dtype=np.int64)
            for st in s.rollout.stages
        )
        return Population(
            n=n,
            pool=pool,
            capacity=capacity,
            tz=tz,
            always_on=always_on,
            online=online,
            churn_t=np.minimum(churn_t, depart_t),
            depart_t=depart_t,
            fails=fails,
            named=named,
        )

    # -- churn -------------------------------------------------------------------------------

    def _draw(
        self, dist: Dist, stream: str, nodes: IntArray, counter: IntArray | int
    ) -> FloatArray:
        if dist.dist == "lognormal":
            z = self.streams.normal(stream, nodes, counter)
            return from_uniform(dist, np.empty(0), z)
        return from_uniform(dist, self.streams.uniform(stream, nodes, counter))

    def next_churn(
        self, nodes: IntArray, counter: IntArray, t: FloatArray, now_online: BoolArray
    ) -> FloatArray:
        """When nodes that just came up (``now_online``) or went down at ``t`` change next.

        Capped at the permanent departure time (the engines treat ``t == depart_t`` as
        leaving for good).
        """
        pop = self.population
        nxt = np.empty(len(nodes), dtype=np.float64)
        up = now_online
        if bool(up.any()):
            nxt[up] = t[up] + self._draw(self.s.churn.session, "session", nodes[up], counter[up])
        down = ~up
        if bool(down.any()):
            d = self._draw(self.s.churn.offline, "offline", nodes[down], counter[down])
            nxt[down] = self.clock.wall_end(t[down], d, pop.tz[nodes[down]])
        nxt[pop.always_on[nodes] & up] = math.inf
        out: FloatArray = np.minimum(nxt, pop.depart_t[nodes])
        return out

    # -- the updater's schedule -----------------------------------------------------------------

    def jitter(self, nodes: IntArray, counter: IntArray | int) -> FloatArray:
        """The uniform draws of the updater's schedule (one per wait, as ``rng.random()``)."""
        return self.streams.uniform("jitter", nodes, counter)

    def check_interval(self, nodes: IntArray, counter: IntArray) -> FloatArray:
        """``timing.check_interval``: interval * U[1 - jitter, 1 + jitter]."""
        return timing.check_interval(self.updater, self.jitter(nodes, counter))

    def first_check(self, nodes: IntArray, counter: IntArray) -> FloatArray:
        """``timing.first_check``: the first check after boot is U[0, interval]."""
        return timing.first_check(self.updater, self.jitter(nodes, counter))

    def retry_wait(self, nodes: IntArray, counter: IntArray, retry_after: FloatArray) -> FloatArray:
        """``timing.refusal_wait``; a NaN ``retry_after`` is a refusal that gave none."""
        u, x = self.updater, self.jitter(nodes, counter)
        given = timing.refusal_wait(u, retry_after, x, maximum=np.maximum)
        if not bool(np.isnan(retry_after).any()):
            return given
        none = timing.refusal_wait(u, None, x, maximum=np.maximum)
        out: FloatArray = np.where(np.isnan(retry_after), none, given)
        return out

    def backoff_wait(self, nodes: IntArray, counter: IntArray, errors: IntArray) -> FloatArray:
        """``timing.backoff`` after the ``errors``-th consecutive coordinator error."""
        return timing.backoff(self.updater, errors, self.jitter(nodes, counter), minimum=np.minimum)

    def ask_fails(self, nodes: IntArray, counter: IntArray) -> BoolArray:
        """Which asks get no usable answer (unreachable, timeout): ``error_probability``."""
        out: BoolArray = (
            self.streams.uniform("coordinator", nodes, counter) < self.s.policy.error_probability
        )
        return out

    def prefetch_time(self, nodes: IntArray, counter: IntArray) -> FloatArray:
        """``node.prefetch``'s draw (without ``[artifact]``; with it, ``artifacts``)."""
        return self._draw(self.s.node.prefetch, "prefetch", nodes, counter)

    def artifact_tracker(self, sample_dt: float, n_samples: int) -> ArtifactTracker | None:
        """The fleet's prefetch bookkeeping when ``[artifact]`` is on (its draws: the
        ``prefetch`` stream, as ``prefetch_time``'s)."""
        if self.swarm is None or self.links is None:
            return None

        def uniform(nodes: IntArray, counter: IntArray) -> FloatArray:
            return self.streams.uniform("prefetch", nodes, counter)

        return ArtifactTracker(
            self.swarm,
            self.links,
            uniform,
            nodes=self.population.n,
            sample_dt=sample_dt,
            n_samples=n_samples,
        )

    # -- departures ---------------------------------------------------------------------------

    def plan_departure(
        self, nodes: IntArray, attempt: IntArray, t: float | FloatArray, lease_ttl: float
    ) -> tuple[FloatArray, FloatArray, NDArray[np.int8]]:
        """``(away_end, drain_end, outcome)`` for departures granted at ``t``.

        ``lease_ttl`` is the lease's time left (``inf`` for the policies without leases).
        """
        u = self.updater
        nd = self.s.node
        drain = self._draw(nd.drain, "drain", nodes, attempt)
        restart = self._draw(nd.restart, "restart", nodes, attempt)
        health = self._draw(nd.health, "health", nodes, attempt)
        budget = timing.drain_budget(u, lease_ttl)
        abort = drain > budget + u.drain_grace
        rollback = self.population.fails[nodes] | (health > u.probation_timeout)
        probation = np.minimum(health, u.probation_timeout)
        t = np.asarray(t, dtype=np.float64)
        deadline = t + budget  # Updater._granted: Drain(deadline); gives up drain_grace later
        drain_end = np.where(abort, deadline + u.drain_grace, t + drain)
        away_end = np.where(
            abort, drain_end, drain_end + restart + probation + np.where(rollback, restart, 0.0)
        )
        outcome = np.where(
            abort, Outcome.ABORT, np.where(rollback, Outcome.ROLLBACK, Outcome.SUCCESS)
        )
        return away_end, drain_end, outcome.astype(np.int8)

    def plan_return(self, nodes: IntArray, attempt: IntArray, t: FloatArray) -> FloatArray:
        """A node whose new slot was staged before it went offline boots into probation."""
        u = self.updater
        nd = self.s.node
        restart = self._draw(nd.restart, "restart", nodes, attempt)
        health = self._draw(nd.health, "health", nodes, attempt)
        rollback = self.population.fails[nodes] | (health > u.probation_timeout)
        out: FloatArray = (
            t + restart + np.minimum(health, u.probation_timeout) + np.where(rollback, restart, 0.0)
        )
        return out

    # -- capacity and demand --------------------------------------------------------------------

    def _demand_reference(self) -> FloatArray:
        """Each pool's expected online capacity: what demand is a share of."""
        pop = self.population
        churn = self.s.churn
        p_on = stationary_online_share(churn.session, churn.offline)
        weight = np.where(pop.always_on, 1.0, p_on)
        out = np.bincount(pop.pool, weights=pop.capacity * weight, minlength=self.pools)
        return out.astype(np.float64)

    def diurnal_demand(self, t: float) -> float:
        """The demand curve's factor at ``t`` (mean 1 over a day), over the zone mix."""
        c = self.s.capacity
        phase = 2.0 * math.pi * (t + self._zone_offsets - c.demand_peak_hour * HOUR) / DAY
        return float(np.dot(self._zone_weights, 1.0 + c.demand_amplitude * np.cos(phase)))

    def demand(self, t: float) -> FloatArray:
        """Each pool's load at ``t``."""
        out: FloatArray = self.s.capacity.demand * self.demand_ref * self.diurnal_demand(t)
        return out


class GateView:
    """Gates 1 and 2 with the real functions and real documents, vectorised over nodes.

    At every evaluation the real ``allowlisted`` and ``in_scope`` run on the documents in
    force (so expiry, wrong artifact, "nobody" and "no scope" are the real answers); when
    ``in_scope`` says the answer depends on the node (a fraction or a named set) the
    per-node part is the real ``fraction_point`` (computed once per node and cached, as
    hashing 10^6 ids takes a second) compared with the real ``fraction_threshold``, i.e.
    exactly ``in_fraction``.  A sample of nodes is checked against ``in_scope`` itself.
    """

    MEMBERSHIP: Final = frozenset({"in-fraction", "outside-fraction", "named", "not-named"})

    def __init__(self, model: Model) -> None:
        self.model = model
        s = model.s
        self.old = _release("p2pupdate-old", 1, model.horizon)
        self.new = _release("p2pupdate-new", 2, model.horizon)
        self.releases = {r.artifact: r for r in (self.old, self.new)}
        expires = EPOCH + int(model.horizon + DAY)
        self.allowlist = Allowlist(
            version=1,
            issued=EPOCH,
            expires=expires,
            artifacts=(self.old.artifact, self.new.artifact),
        )
        seed = (
            bytes.fromhex(s.rollout.scope_seed)
            if s.rollout.scope_seed
            else hashlib.sha256(b"p2pupdate-sim-scope" + str(model.seed).encode()).digest()[:16]
        )
        self.scope_seed = seed
        start = s.rollout_start
        self.stage_times = np.array([start + st.after_hours * HOUR for st in s.rollout.stages])
        self.scopes = tuple(
            Scope(
                serial=i + 1,
                issued=EPOCH + int(t),
                expires=expires,
                artifact=self.new.artifact,
                kind=st.scope,
                nodes=tuple(node_id(int(j)) for j in model.population.named[i]),
                fraction=st.fraction,
                seed=seed if st.scope == "fraction" else b"",
                force=st.force,
                ramp=tuple((round(a * HOUR), f) for a, f in st.ramp),
            ).checked()
            for i, (st, t) in enumerate(zip(s.rollout.stages, self.stage_times, strict=True))
        )
        self.labels: list[tuple[str, str]] = []
        self._codes: dict[tuple[str, str], int] = {}
        self._points: NDArray[np.uint64] | None = None
        self._named_masks: dict[int, BoolArray] = {}
        self._checked: set[int] = set()
        self._cache: dict[tuple[int, int], tuple[GateResult, GateResult | None]] = {}

    def code(self, gate: str, reason: str) -> int:
        key = (gate, reason)
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = len(self.labels)
            self.labels.append(key)
        return code

    def stage_at(self, t: float) -> int:
        """Index of the scope in force at ``t`` (-1: none yet)."""
        return int(np.searchsorted(self.stage_times, t, side="right")) - 1

    def force_at(self, t: float) -> bool:
        stage = self.stage_at(t)
        return stage >= 0 and self.scopes[stage].force

    def points(self) -> NDArray[np.uint64]:
        if self._points is None:
            seed = self.scope_seed
            n = self.model.population.n
            self._points = np.fromiter(
                (fraction_point(seed, node_id(i)) for i in range(n)), dtype=np.uint64, count=n
            )
        return self._points

    def _uniform(self, stage: int, now: int) -> tuple[GateResult, GateResult | None]:
        """The real gate answers for a probe node; the second is None past a refusal."""
        key = (stage, now)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if stage < 0:
            answer: tuple[GateResult, GateResult | None] = (
                in_scope(node_id(0), "", scope=None, now=now),
                None,
            )
        else:
            scope = self.scopes[stage]
            r1 = allowlisted(
                scope.artifact,
                allowlist=self.allowlist,
                releases=self.releases,
                now=now,
                installed=self.old,
                scope=scope,
            )
            answer = (
                r1,
                in_scope(node_id(0), scope.artifact, scope=scope, now=now) if r1.ok else None,
            )
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = answer
        return answer

    def _members(self, stage: int, nodes: IntArray, now: int) -> BoolArray:
        if self.scopes[stage].kind == "nodes" and stage not in self._named_masks:
            mask = np.zeros(self.model.population.n, dtype=np.bool_)
            mask[self.model.population.named[stage]] = True
            self._named_masks[stage] = mask
        if stage not in self._checked:
            self._checked.add(stage)
            self._spot_check(stage)
        return self._members_raw(stage, nodes, now)

    def _spot_check(self, stage: int) -> None:
        """The cached membership must be ``in_scope``'s, node for node: at the scope's issue
        time and, for a ramp, at the start of every ramp stage."""
        scope = self.scopes[stage]
        n = self.model.population.n
        sample = np.unique(np.linspace(0, n - 1, min(n, 97)).astype(np.int64))
        if scope.kind == "nodes":
            sample = np.unique(np.concatenate((sample, self.model.population.named[stage][:32])))
        nows = [int(scope.issued)] + [int(scope.issued) + after for after, _ in scope.ramp]
        for now in nows:
            r2 = in_scope(node_id(0), scope.artifact, scope=scope, now=now)
            if r2.reason not in self.MEMBERSHIP:
                continue  # the same answer for every node (e.g. ramp-not-started)
            cached = self._members_raw(stage, sample, now)
            for i, member in zip(sample, cached, strict=True):
                real = in_scope(node_id(int(i)), scope.artifact, scope=scope, now=now).ok
                if scope.kind == "fraction":
                    frac = fraction_in_force(scope, now)
                    assert real == in_fraction(scope.seed, node_id(int(i)), frac)
                if real != bool(member):
                    raise AssertionError(
                        f"cached scope membership disagrees with in_scope at node {i}, now {now}"
                    )

    def _members_raw(self, stage: int, nodes: IntArray, now: int) -> BoolArray:
        scope = self.scopes[stage]
        if scope.kind == "fraction":
            threshold = fraction_threshold(fraction_in_force(scope, now))
            if threshold >= 1 << 64:
                return np.ones(len(nodes), dtype=np.bool_)
            out: BoolArray = self.points()[nodes] < np.uint64(threshold)
            return out
        return self._named_masks[stage][nodes]

    def evaluate(self, nodes: IntArray, t: float) -> tuple[BoolArray, NDArray[np.int16]]:
        """Gates 1 and 2 for ``nodes`` (all on the old build) at ``t``: pass mask and the
        label code of each answer (the first refusal, or the scope's pass reason)."""
        stage = self.stage_at(t)
        r1, r2 = self._uniform(stage, EPOCH + int(t))
        m = len(nodes)
        if r2 is None:  # no scope yet, or gate 1 refused: the same answer for every node
            code = self.code(r1.gate, r1.reason)
            return np.zeros(m, dtype=np.bool_), np.full(m, code, dtype=np.int16)
        if r2.reason not in self.MEMBERSHIP:
            code = self.code(r2.gate, r2.reason)
            return np.full(m, r2.ok, dtype=np.bool_), np.full(m, code, dtype=np.int16)
        member = self._members(stage, nodes, EPOCH + int(t))
        kind = self.scopes[stage].kind
        yes, no = (
            ("in-fraction", "outside-fraction") if kind == "fraction" else ("named", "not-named")
        )
        codes = np.where(member, self.code(GATE_SCOPE, yes), self.code(GATE_SCOPE, no))
        return member, codes.astype(np.int16)

    def final_members(self) -> BoolArray:
        """Nodes inside the last stage's scope (the rollout's target population)."""
        n = self.model.population.n
        stage = len(self.scopes) - 1
        kind = self.scopes[stage].kind
        if kind == "everyone":
            return np.ones(n, dtype=np.bool_)
        if kind == "nobody":
            return np.zeros(n, dtype=np.bool_)
        scope = self.scopes[stage]
        cap = scope.issued + (scope.ramp[-1][0] if scope.ramp else 0)  # the last ramp stage
        return self._members(stage, np.arange(n, dtype=np.int64), cap)


def _release(name: str, counter: int, horizon: float) -> Release:
    return Release.for_bytes(
        f"{name} build {counter}".encode(),
        name=name,
        counter=counter,
        chunk_size=1024,
        issued=EPOCH - int(DAY),
        expires=EPOCH + int(horizon + 2 * DAY),
    )
