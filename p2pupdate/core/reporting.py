"""When a node tells the replicas its status: on change, plus a sampled heartbeat (P11).

One home for the rule; the daemon (``daemon.coordinator.CoordinatorLink``), the replica
(``coordinator.service``: the interval it answers each report with) and the fleet
simulator (``simulations.metrics``: the per-replica message rate) all call it.

Why not "every 30 s": at 10^6 nodes that is ~33,000 reports a second at every replica
(each node reports to every replica), for a view that changes a few hundred times a second.
What a replica needs from the reports is (a) each node's version, update state and why
gates 1-2 hold it back -- these change rarely, so they are sent **when they change** --
and (b) enough fresh aggregate estimates for the capacity gate's median, and a sign of
life: a **heartbeat**, sampled so that the fleet's total stays under a budget.

The rules:

* ``report_reason(last, now)``: why the status must be reported now (``"first"``,
  ``"version"``, ``"artifact"``, ``"state"``, ``"held"``, ``"estimate"``), or None.  An
  estimate moving is no reason by default (``estimate_change = inf``): every node of a pool
  holds the same converged push-sum estimate, so "report when it moves by X" would make
  the whole pool report in the same second -- the burst the budget exists to prevent.  The
  heartbeat already gives the median a steady stream of fresh estimates.
* ``heartbeat_interval(fleet, pool_size)``: what a replica answers each report with
  (``coordproto.StatusAck.next_report_s``): ``fleet / budget`` seconds, so that ``fleet``
  nodes reporting once per interval send ``budget`` reports a second, never below
  ``MIN_HEARTBEAT`` (today's ``--report-interval``: a small fleet is seen as often as
  before) and never above ``MAX_HEARTBEAT`` (a node is heard from at least daily, even
  past 17 M nodes, where the budget then gives).  A small pool in a large fleet would see
  too few fresh estimates for its median: the interval is also capped at
  ``pool_size * max_age / fresh`` so that ``fresh`` of the pool's estimates are younger
  than ``max_age`` on average (the replica's ``aggregate_max_age``); that adds at most
  ``fresh / max_age`` reports a second per pool (0.04/s with the defaults).
* ``heartbeat_delay(interval, u)``: the wait until the next heartbeat, uniform in
  ``[interval/2, 3*interval/2]`` (mean ``interval``) for a uniform draw ``u`` in
  ``[0, 1)``: the fleet's heartbeats spread out over time instead of arriving together
  after a replica restart or a power cut.
* ``documents_behind(held, replica)``: whether the replica's allowlist version or scope
  serial (``StatusAck``) is newer than the node's.  With sessions on demand a replica has
  few nodes to push a new document to, so the heartbeats probe for it: a node behind
  fetches the documents after ``DOCS_GRACE`` (gossip usually brings them first: then it
  fetches nothing), and gossip spreads what it took.  At 200 heartbeats a second a new
  document enters gossip within seconds of its publication, from a handful of fetches.
* ``CHANGE_COALESCE``: changes within this many seconds of the last report are sent
  together (draining -> swapping -> probation takes seconds: one report, not three).

Functions work on floats and on numpy arrays alike (the caller passes ``maximum`` /
``minimum`` for arrays), like ``core.timing``; the core draws nothing itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

__all__ = [
    "CHANGE_COALESCE",
    "DEFAULT_BUDGET",
    "DOCS_GRACE",
    "FRESH_PER_POOL",
    "MAX_HEARTBEAT",
    "MIN_HEARTBEAT",
    "POOL_MAX_AGE",
    "Snapshot",
    "documents_behind",
    "heartbeat_delay",
    "heartbeat_interval",
    "report_reason",
]

X = TypeVar("X")

#: Status reports a second one replica should receive from heartbeats (issue 14).
DEFAULT_BUDGET: Final = 200.0
#: The shortest heartbeat interval (seconds): the old fixed ``--report-interval``.
MIN_HEARTBEAT: Final = 30.0
#: The longest (seconds): a node is heard from at least once a day.
MAX_HEARTBEAT: Final = 86400.0
#: Fresh estimates a pool should have within ``POOL_MAX_AGE`` (the median's sample).
FRESH_PER_POOL: Final = 8.0
#: ``coordinator.policy.PolicyConfig.aggregate_max_age``'s default (seconds); the replica
#: passes its own.
POOL_MAX_AGE: Final = 180.0
#: Seconds within which changes after a report are gathered into the next one.
CHANGE_COALESCE: Final = 5.0
#: Seconds (before jitter) a node behind the replica's documents waits for gossip.
DOCS_GRACE: Final = 5.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Snapshot:
    """What a status report says, as far as "did it change" goes."""

    version: str
    artifact: str
    state: str
    #: (gate, reason) that holds the node back, or None.
    held: tuple[str, str] | None = None
    #: (capacity, load, serving) of the pool's estimate, or None.
    estimate: tuple[float, float, int] | None = None


def _moved(old: float, new: float, by: float) -> bool:
    return abs(new - old) > by * max(abs(old), 1e-9)


def report_reason(
    last: Snapshot | None, now: Snapshot, *, estimate_change: float = math.inf
) -> str | None:
    """Why ``now`` must be reported, given the ``last`` one reported (None: nothing yet);
    None when nothing worth a report changed.  ``estimate_change``: a relative move of the
    estimate's capacity or load that counts (default never: see the module docstring)."""
    if last is None:
        return "first"
    if now.version != last.version:
        return "version"
    if now.artifact != last.artifact:
        return "artifact"
    if now.state != last.state:
        return "state"
    if now.held != last.held:
        return "held"
    if math.isfinite(estimate_change) and now.estimate is not None:
        if last.estimate is None:
            return "estimate"
        (c0, l0, _s0), (c1, l1, _s1) = last.estimate, now.estimate
        if _moved(c0, c1, estimate_change) or _moved(l0, l1, estimate_change):
            return "estimate"
    return None


def heartbeat_interval(
    fleet: X,
    pool_size: X | None = None,
    *,
    budget: float = DEFAULT_BUDGET,
    max_age: float = POOL_MAX_AGE,
    fresh: float = FRESH_PER_POOL,
    maximum: Callable[[Any, Any], Any] = max,
    minimum: Callable[[Any, Any], Any] = min,
) -> X:
    """Seconds between heartbeats for a fleet of ``fleet`` nodes (the replica's registry
    count), in a pool of ``pool_size`` (None: no per-pool cap); see the module docstring."""
    if not budget > 0.0:
        raise ValueError("reporting: budget must be > 0")
    spread: Any = fleet / budget  # type: ignore[operator]
    if pool_size is not None:
        spread = minimum(spread, pool_size * max_age / fresh)  # type: ignore[operator]
    result: X = minimum(maximum(spread, MIN_HEARTBEAT), MAX_HEARTBEAT)
    return result


def heartbeat_delay(interval: float, u: float) -> float:
    """The wait before the next heartbeat: uniform in ``[interval/2, 3*interval/2]``."""
    return interval * (0.5 + u)


def documents_behind(
    held_allowlist: int | None, held_scope: int | None, replica_allowlist: int, replica_scope: int
) -> bool:
    """Whether the replica holds a newer allowlist or scope than the node (None / 0: none)."""
    return replica_allowlist > (held_allowlist or 0) or replica_scope > (held_scope or 0)
