"""``/status``'s ``history``: a small bounded ring of samples, for the rollout page's
"over time" charts (refusals by gate and reason, each pool's spare capacity against the
floor, the scopes seen: the rollout's stages).

``/status`` itself is a snapshot (cumulative refusal counts, the aggregate now); a page that
polls it sees only what happened while it was open.  So the replica keeps the last
``keep`` samples, one per ``interval`` seconds of its own monotonic clock (the one the
gates use, injected; ``Server``'s flusher calls ``record``, which asks ``due``), and
answers them with ``/status?history=1`` (the page asks so; a plain ``/status``, what
``status`` and ``/metrics`` read, stays as it was): 360 samples of 10 s are the last
hour, a few hundred bytes each for one pool and a few reasons, at most ~6 KiB (pools,
artifacts and reasons are capped per sample).

What a sample holds, and what it is computed from (``sample``, pure):

* ``t``: the wall time of the sample (for the chart's axis);
* ``refusals``: per artifact the operators named (others summed under ``(other)``), the
  refusals by ``gate/reason`` since the previous sample (the first sample is the
  baseline: refusals counted before it, on disk from earlier runs, are not a spike);
* ``pools``: per pool, the aggregate's capacity ``C``, load ``L``, serving nodes ``S``,
  and ``spare = C - L / u`` (``status.spare_capacity``: the capacity that may leave
  before the pool's load exceeds the utilisation target ``u``; the floor is 0, as in
  the simulations' ``spare.png``), and whether the aggregate is stale;
* ``scope``: the serial and description of the scope in force (a new serial is a new
  stage of the rollout).

It changes nothing in the replica; it is lost at a restart (a page shows the samples
since), which is fine for a view, and the audit log keeps every refusal.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from coordinator.asks import Asks
from coordinator.policy import Aggregate
from coordinator.publishing import Documents
from coordinator.registry import Registry
from coordinator.status import spare_capacity

__all__ = [
    "KEEP",
    "MAX_POOLS",
    "MAX_REASONS",
    "OTHER",
    "SAMPLE_INTERVAL",
    "History",
    "record",
    "refusal_deltas",
    "refusal_totals",
    "sample",
]

#: Seconds between two samples (of the replica's monotonic clock), and samples kept.
SAMPLE_INTERVAL: Final = 10.0
KEEP: Final = 360
#: Per sample at most this many pools (the most capacity first) and ``gate/reason``
#: keys per artifact (the most refusals first, the rest summed under ``OTHER``).
MAX_POOLS: Final = 16
MAX_REASONS: Final = 16
MAX_ARTIFACTS: Final = 8
#: Artifacts no document names, and reasons past the cap, are summed under this name.
OTHER: Final = "(other)"

Totals = dict[str, dict[str, int]]


def refusal_totals(refusals: Mapping[tuple[str, str, str], int], known: Iterable[str]) -> Totals:
    """The replica's cumulative refusals (``Asks.refusals``: (artifact, gate, reason) ->
    count) as artifact -> ``gate/reason`` -> count; artifacts not in ``known`` under
    ``OTHER`` (a stranger's made-up artifacts add no key)."""
    named = set(known)
    out: Totals = {}
    for (artifact, gate, reason), count in refusals.items():
        per = out.setdefault(artifact if artifact in named else OTHER, {})
        key = f"{gate}/{reason}"
        per[key] = per.get(key, 0) + count
    return out


def refusal_deltas(before: Totals | None, now: Totals) -> Totals:
    """What was refused between two totals, capped (``MAX_ARTIFACTS`` artifacts,
    ``MAX_REASONS`` reasons each, the largest first, the rest under ``OTHER``); zeros
    left out.  ``before`` None: the baseline, nothing."""
    if before is None:
        return {}
    out: Totals = {}
    for artifact, per in now.items():
        was = before.get(artifact, {})
        moved = {k: c - was.get(k, 0) for k, c in per.items() if c > was.get(k, 0)}
        if moved:
            out[artifact] = _capped(moved, MAX_REASONS)
    if len(out) > MAX_ARTIFACTS:
        ranked = sorted(out, key=lambda a: (-sum(out[a].values()), a))
        rest: dict[str, int] = {}
        for artifact in ranked[MAX_ARTIFACTS - 1 :]:
            for k, c in out.pop(artifact).items():
                rest[k] = rest.get(k, 0) + c
        out[OTHER] = _capped(rest, MAX_REASONS)
    return out


def _capped(counts: dict[str, int], n: int) -> dict[str, int]:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = dict(ranked[: n - 1] if len(ranked) > n else ranked)
    left = sum(c for _k, c in ranked[len(top) :])
    if left:
        top[OTHER] = top.get(OTHER, 0) + left
    return top


def sample(
    *,
    wall: float,
    now: float,
    before: Totals | None,
    totals: Totals,
    aggregates: Mapping[str, Aggregate],
    utilization: float,
    max_age: float,
    scope: tuple[int, str] | None,
) -> dict[str, Any]:
    """One sample (see the module docstring); ``now`` is the monotonic time the
    aggregates' ``as_of`` is on."""
    pools = sorted(aggregates.items(), key=lambda kv: (-kv[1].capacity, kv[0]))[:MAX_POOLS]
    return {
        "t": round(wall, 3),
        "refusals": refusal_deltas(before, totals),
        "pools": {
            pool: {
                "capacity": round(agg.capacity, 3),
                "load": round(agg.load, 3),
                "serving": agg.serving,
                "spare": round(spare_capacity(agg, utilization), 3),
                "stale": now - agg.as_of > max_age,
            }
            for pool, agg in pools
        },
        "scope": None if scope is None else {"serial": scope[0], "describe": scope[1]},
    }


@dataclass
class History:
    """The ring: ``due(now)`` says when the next sample is wanted, ``add`` keeps it."""

    interval: float = SAMPLE_INTERVAL
    keep: int = KEEP
    samples: deque[dict[str, Any]] = field(init=False)
    #: The refusal totals at the last sample (the next one's baseline).
    totals: Totals | None = field(default=None, init=False)
    _last: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.keep < 1:
            raise ValueError("history: interval must be > 0 and keep >= 1")
        self.samples = deque(maxlen=self.keep)

    def due(self, now: float) -> bool:
        """Whether a sample is wanted at monotonic ``now`` (the first one at once)."""
        return self._last is None or now - self._last >= self.interval

    def add(self, now: float, totals: Totals, made: dict[str, Any]) -> None:
        """Keep ``made`` (``sample(before=self.totals, totals=totals, ...)``) taken at
        ``now``; the oldest falls out past ``keep``."""
        self.samples.append(made)
        self.totals = totals
        self._last = now

    def view(self) -> dict[str, Any]:
        """``/status``'s ``history``."""
        return {"interval": self.interval, "keep": self.keep, "samples": list(self.samples)}


def record(history: History, *, asks: Asks, registry: Registry, documents: Documents) -> bool:
    """Take a sample of the replica's parts if one is due (``Server``'s flusher calls
    this every tick); True when it did.  Reads the same parts ``/status`` reads, on the
    replica's clocks (``asks.clock``, ``asks.wall``), and changes nothing of them."""
    now = asks.clock()
    if not history.due(now):
        return False
    named = {a for a, _g, _r in asks.refusals if asks.known(a)}
    totals = refusal_totals(asks.refusals, named)
    pools = set(registry.estimates) | set(asks.pools)
    scope = documents.scope.doc if documents.scope is not None else None
    made = sample(
        wall=asks.wall(),
        now=now,
        before=history.totals,
        totals=totals,
        aggregates={pool: registry.aggregate(pool) for pool in sorted(pools)},
        utilization=asks.policy.utilization,
        max_age=asks.policy.aggregate_max_age,
        scope=None if scope is None else (scope.serial, scope.describe()),
    )
    history.add(now, totals, made)
    return True
