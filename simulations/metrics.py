"""What a run measures: a per-minute time series and a one-row summary.

Both engines fill the same ``Recorder``: a sample of the fleet's state every minute (or
every tick, for ticks longer than a minute), counters of what happened in between, and a
few per-run tallies (gate answers by reason, lease overruns, breaker, sessions).
``summarize`` turns that into the issue's metrics; every figure is defined in its
docstring so a reader of ``summary.csv`` can check what a number means.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from coordinator.policy import PolicyConfig, breaker_threshold
from p2pupdate.core import reporting

from .artifacts import ArtifactTracker
from .churn import cdf
from .config import HOUR, Scenario
from .links import LinkMix
from .rng import FloatArray

#: Time series columns: (name, dtype).  State columns are sampled at the row's time;
#: activity columns count what happened since the previous row.
STATE_COLUMNS: Final = (
    ("online", np.int64),
    ("serving", np.int64),
    ("away", np.int64),
    ("updated", np.int64),
    ("updated_initial", np.int64),
    ("rolled_back", np.int64),
    ("held", np.int64),
    ("stuck", np.int64),
    ("paused", np.int64),
    ("capacity_online", np.float64),
    ("capacity_serving", np.float64),
    ("load", np.float64),
    ("spare", np.float64),
    ("spare_no_departures", np.float64),
    ("spare_share_min", np.float64),
    ("deficit", np.float64),
)
ACTIVITY_COLUMNS: Final = (
    ("checks", np.int64),
    ("asks", np.int64),
    ("grants", np.int64),
    ("completions", np.int64),
    ("arrivals", np.int64),
    ("departures_churn", np.int64),
)
#: Log-spaced bins for the session-length check (seconds).
SESSION_BINS: Final = np.logspace(0.0, math.log10(400.0 * 86400.0), 801)


@dataclass
class Recorder:
    """The buffers an engine fills (see module docstring)."""

    scenario: Scenario
    sample_dt: float
    n_samples: int
    series: dict[str, NDArray[Any]] = field(init=False)
    label_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    overruns: int = 0
    overrun_seconds: float = 0.0
    attempted: int = 0
    failures: int = 0
    first_failure: float = math.nan
    paused_at: float = math.nan
    attempted_at_pause: int = 0
    failures_at_pause: int = 0
    session_hist: NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(len(SESSION_BINS) + 1, dtype=np.int64)
    )
    peak_ask_rate_per_s: float = 0.0
    wall_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.series = {
            name: np.zeros(self.n_samples, dtype=dtype)
            for name, dtype in (*STATE_COLUMNS, *ACTIVITY_COLUMNS)
        }
        self.series["minute"] = np.arange(self.n_samples, dtype=np.float64) * (
            self.sample_dt / 60.0
        )

    def count(self, label: tuple[str, str], n: int) -> None:
        if n:
            self.label_counts[label] = self.label_counts.get(label, 0) + n

    def count_codes(self, codes: NDArray[Any], label_of: Callable[[int], tuple[str, str]]) -> None:
        if len(codes) == 0:
            return
        tally = np.bincount(codes.astype(np.int64))
        for code in np.flatnonzero(tally):
            self.count(label_of(int(code)), int(tally[code]))

    def sessions(self, start: FloatArray, length: FloatArray, horizon: float) -> None:
        """Completed sessions; only those that started in the first half of the run and
        lasted at most half of it are kept, so none of them is cut by the horizon."""
        half = horizon / 2.0
        keep = (start >= 0.0) & (start < half) & (length <= half)
        if bool(keep.any()):
            idx = np.searchsorted(SESSION_BINS, length[keep], side="right")
            self.session_hist += np.bincount(idx, minlength=len(self.session_hist))


def _hours(x: float) -> float:
    return x / HOUR


def _time_to(
    counts: NDArray[np.int64], total: int, share: float, times: FloatArray, start: float
) -> float:
    """Hours from ``start`` until ``counts`` first reaches ``share * total`` (NaN: never)."""
    if total <= 0:
        return math.nan
    need = math.ceil(share * total - 1e-9)
    hit = np.flatnonzero(counts >= need)
    if len(hit) == 0:
        return math.nan
    return max(0.0, _hours(float(times[hit[0]]) - start))


def _session_check(rec: Recorder, horizon: float) -> dict[str, float]:
    """Observed (complete) sessions vs the configured distribution, both conditioned on
    ``length <= horizon / 2``: sample size, both medians (hours) and the KS distance."""
    hist = rec.session_hist
    n = int(hist.sum())
    dist = rec.scenario.churn.session
    half = horizon / 2.0
    out = {"sessions_observed": float(n)}
    if n < 50:
        return {
            **out,
            "session_median_h": math.nan,
            "session_median_expected_h": math.nan,
            "session_ks": math.nan,
        }
    edges = SESSION_BINS
    observed = np.cumsum(hist)[:-1] / n  # P(X <= edges[i])
    cut = float(cdf(dist, np.array([half]))[0])
    expected = np.minimum(cdf(dist, edges) / cut, 1.0)
    ks = float(np.max(np.abs(observed - expected)))
    i = int(np.searchsorted(observed, 0.5))
    median_obs = float(edges[min(i, len(edges) - 1)])
    j = int(np.searchsorted(expected, 0.5))
    median_exp = float(edges[min(j, len(edges) - 1)])
    return {
        **out,
        "session_median_h": _hours(median_obs),
        "session_median_expected_h": _hours(median_exp),
        "session_ks": ks,
    }


#: What opening one session costs a replica in messages it handles: the WebSocket upgrade
#: and the hello (the close frame is not counted).  On demand a session opens for every
#: burst of things to say; the model below opens one for each burst it names.
SESSION_MESSAGES: Final = 2
#: An arriving node's requests besides its first report: introductions (``peers``) and
#: one documents fetch (an upper bound: gossip usually brings them first).
ARRIVAL_REQUESTS: Final = 2


def reports_along(states: tuple[str, ...], *, first: bool = False) -> int:
    """How many status reports ``core.reporting.report_reason`` sends as a node goes
    through ``states`` (from "serving" on the old build; ``first``: a process that just
    started and has reported nothing).  The version changes with "probation" (the new
    build runs).  The one rule: the daemon calls the same function."""
    last: reporting.Snapshot | None = (
        None if first else reporting.Snapshot(version="old", artifact="old", state="serving")
    )
    version, n = "old", 0
    for state in states:
        if state == "probation":
            version = "new"
        now = reporting.Snapshot(version=version, artifact=version, state=state)
        if reporting.report_reason(last, now) is not None:
            n += 1
            last = now
    return n


def replica_messages(
    series: dict[str, NDArray[Any]], *, n_nodes: int, pools: int, sample_dt: float
) -> NDArray[np.float64]:
    """Messages a second one replica receives, per sample, with the real defaults (P11).

    Every node sends every message to every replica, so this is the fleet's total:

    * heartbeats: ``online / reporting.heartbeat_interval(n_nodes, n_nodes / pools)`` a
      second (the registry counts every node that ever registered: ``n_nodes``), each
      in its own session;
    * an arrival (a node coming online): a session, its first report, ``ARRIVAL_REQUESTS``;
    * an ask: a session (a refused node's ``retry_after`` outlasts the idle close), the
      ask, and the reports of asking -> serving (refused: the conservative case);
    * a grant: the old process's reports of draining -> swapping (in the ask's session),
      then the new process's session, its reports of probation -> serving (first report
      included) and its ``rejoined``.
    """
    session = SESSION_MESSAGES
    interval = reporting.heartbeat_interval(float(n_nodes), float(n_nodes) / max(pools, 1))
    per_arrival = session + reports_along(("serving",), first=True) + ARRIVAL_REQUESTS
    per_ask = session + 1 + reports_along(("asking", "serving"))
    per_grant = (
        reports_along(("asking", "draining", "swapping"))
        - 1  # "asking": counted in the ask
        + session
        + reports_along(("probation", "serving"), first=True)
        + 1
    )
    events = (
        series["arrivals"] * per_arrival + series["asks"] * per_ask + series["grants"] * per_grant
    )
    beats = series["online"] / interval * (session + 1)
    return np.asarray(events / sample_dt + beats, dtype=np.float64)


def budget_of(scenario: Scenario, pools: int, mean_online: float) -> float:
    """The concurrent-departure budget a policy works to (NaN: it has none)."""
    p = scenario.policy
    if p.kind == "ours":
        return float(p.config.max_concurrent * pools)
    if p.kind == "fleetlock":
        return float(p.fleetlock_slots * pools)
    if p.kind == "max-unavailable":
        return float(math.floor(p.max_unavailable * mean_online))
    return math.nan


def summarize(
    rec: Recorder,
    *,
    in_scope_seen: int,
    in_scope_initial: int,
    updated_final: int,
    denied_final: int,
    online_not_updated: int,
    n_nodes: int,
    pools: int,
    config: PolicyConfig,
) -> dict[str, Any]:
    """The one-row summary.

    * ``t50_h`` .. ``t99_h``: hours from the rollout start until that share of the in-scope
      nodes that were online at some point after the start ran the new build;
      ``t50_all_h`` ..: the same share of all nodes; ``t50_initial_h`` ..: of the in-scope
      nodes online at the start (the policy's own speed, least mixed with churn: the
      others are bounded by when nodes come back).  NaN: not reached.
    * ``stragglers``: those in-scope, seen nodes not on the new build at the end
      (``stragglers_rolled_back`` of them sticky-denied it; ``stragglers_online`` were
      online at the end).
    * ``spare_min`` / ``spare_p1`` / ``spare_p5``: the smallest pool's spare capacity
      (``serving - load / utilization``) as a share of its online capacity, over the
      samples since the rollout start; below 0 is below the floor.
      ``spare_no_departures_min``: the same without anyone away (what churn alone leaves).
    * ``minutes_below_floor``: sampled minutes with some pool below the floor;
      ``deficit_capacity_hours``: the shortfall integrated over time (capacity units x h;
      a median node is 1 unit).
    * ``peak_departures`` (nodes online and away at once) vs ``departure_budget``.
    * ``lease_overruns``: departures still away when their lease lapsed (ours).
    * ``asks_per_s_mean`` / ``asks_per_s_peak``: coordinator ask rate since the start
      (peak over one-minute samples).
    * ``replica_msgs_per_s_mean`` / ``replica_msgs_per_s_peak_minute``: messages a second
      one replica receives with the real defaults (sessions on demand, reports on change,
      the budgeted heartbeat: ``replica_messages``), over the whole run / in the busiest
      one-minute sample.
    * ``attempted`` / ``failed``: distinct nodes granted the new build / that rolled it
      back; ``halted_after_h``: from the rollout start to the breaker's pause;
      ``blast_radius``: nodes granted the build by the end (a pause stops new grants).
    * ``availability``: mean share of nodes online; ``serving_share``: mean share of the
      online capacity serving (not away).
    * ``session_*``: the session-length check (``_session_check``).
    * ``gate.<gate>.<reason>``: every answer the gates gave, by gate and reason.
    """
    s = rec.scenario
    series = rec.series
    times = series["minute"] * 60.0
    start = s.rollout_start
    after = times >= start
    updated = series["updated"]
    summary: dict[str, Any] = {
        "scenario": s.name,
        "policy": s.policy.kind,
        "engine": s.run.engine,
        "nodes": n_nodes,
        "days": s.run.days,
        "in_scope_seen": in_scope_seen,
    }
    for share in (0.5, 0.9, 0.95, 0.99):
        key = f"t{round(share * 100)}_h"
        summary[key] = _time_to(updated, in_scope_seen, share, times, start)
    for share in (0.5, 0.9, 0.95, 0.99):
        summary[f"t{round(share * 100)}_all_h"] = _time_to(updated, n_nodes, share, times, start)
    summary["in_scope_initial"] = in_scope_initial
    for share in (0.5, 0.9, 0.95, 0.99):
        summary[f"t{round(share * 100)}_initial_h"] = _time_to(
            series["updated_initial"], in_scope_initial, share, times, start
        )
    summary["updated_final"] = updated_final
    summary["updated_share"] = updated_final / in_scope_seen if in_scope_seen else math.nan
    summary["stragglers"] = in_scope_seen - updated_final
    summary["stragglers_rolled_back"] = denied_final
    summary["stragglers_online"] = online_not_updated
    spare_share = series["spare_share_min"][after]
    nodep = series["spare_no_departures"][after] / np.maximum(
        series["capacity_online"][after], 1e-12
    )
    if len(spare_share):
        summary["spare_min"] = float(spare_share.min())
        summary["spare_p1"] = float(np.percentile(spare_share, 1))
        summary["spare_p5"] = float(np.percentile(spare_share, 5))
        summary["spare_no_departures_min"] = float(nodep.min())
    minutes = rec.sample_dt / 60.0
    below = series["deficit"][after] > 0.0
    summary["minutes_below_floor"] = float(np.count_nonzero(below) * minutes)
    summary["deficit_capacity_hours"] = float(series["deficit"][after].sum() * rec.sample_dt / HOUR)
    summary["peak_departures"] = int(series["away"].max())
    mean_online = float(series["online"][after].mean()) if bool(after.any()) else 0.0
    summary["departure_budget"] = budget_of(s, pools, mean_online / max(pools, 1))
    summary["peak_held"] = int(series["held"].max())
    summary["peak_stuck"] = int(series["stuck"].max())
    summary["stuck_slot_hours"] = float(series["stuck"].sum() * rec.sample_dt / HOUR)
    summary["lease_overruns"] = rec.overruns
    summary["lease_overrun_seconds"] = rec.overrun_seconds
    asks = series["asks"][after]
    span = max(float(times[-1]) - start, rec.sample_dt)
    summary["asks_total"] = int(series["asks"].sum())
    summary["asks_per_s_mean"] = float(asks.sum()) / span
    summary["asks_per_s_peak"] = float(asks.max()) / rec.sample_dt if len(asks) else 0.0
    msgs = replica_messages(series, n_nodes=n_nodes, pools=pools, sample_dt=rec.sample_dt)
    total = float(msgs.sum() * rec.sample_dt) + rec.failures  # one failed report each
    summary["replica_msgs_per_s_mean"] = total / max(float(len(msgs)) * rec.sample_dt, 1.0)
    summary["replica_msgs_per_s_peak_minute"] = float(msgs.max()) if len(msgs) else 0.0
    summary["attempted"] = rec.attempted
    summary["failed"] = rec.failures
    summary["failure_probability"] = s.rollout.failure_probability
    summary["breaker_threshold_now"] = breaker_threshold(rec.attempted, config)
    summary["halted_after_h"] = (
        _hours(rec.paused_at - start) if math.isfinite(rec.paused_at) else math.nan
    )
    summary["halt_after_first_failure_h"] = (
        _hours(rec.paused_at - rec.first_failure)
        if math.isfinite(rec.paused_at) and math.isfinite(rec.first_failure)
        else math.nan
    )
    summary["attempted_at_pause"] = rec.attempted_at_pause if math.isfinite(rec.paused_at) else 0
    summary["failed_at_pause"] = rec.failures_at_pause if math.isfinite(rec.paused_at) else 0
    summary["blast_radius"] = rec.attempted
    summary["availability"] = float(series["online"].mean() / max(n_nodes, 1))
    cap_on = np.maximum(series["capacity_online"], 1e-12)
    summary["serving_share"] = float((series["capacity_serving"] / cap_on).mean())
    summary.update(_session_check(rec, s.horizon))
    summary["wall_seconds"] = rec.wall_seconds
    for (gate, reason), n in sorted(rec.label_counts.items()):
        summary[f"gate.{gate}.{reason}"] = n
    return summary


def links_summary(mix: LinkMix | None, tracker: ArtifactTracker | None) -> dict[str, Any]:
    """The link and artifact figures, present only when ``[links]`` / ``[artifact]`` are
    (so the summary of a scenario without them is what it always was):

    * ``direct_share_expected``: share of pairs (links) that connect direct under the mix;
      ``natted_direct_share``: the same among pairs with no open end (the hole-punch
      success the mix is calibrated to, ``links.CITED_DIRECT_SHARE``);
      ``relayed_share_expected``: 1 - ``direct_share_expected``.
    * ``fetches``: prefetches finished; ``prefetch_mean_s`` / ``prefetch_max_s``: their
      times (the swarm model); ``peak_fetching``: prefetches in progress at once.
    * ``origin_bytes``: what the origin sent (the swarm model's share for each batch);
      ``origin_share``: of the bytes delivered (``fetches`` x the artifact);
      ``peak_origin_mbit_s``: the busiest sample's origin egress (Mbit/s, 10^6 bits,
      averaged over the sample: one minute).  ``timeseries.csv``: ``origin_bytes`` and
      ``origin_mbit_s`` per sample.
    * ``peer_bytes``: bytes from peers; ``relayed_bytes``: of those, what came over a
      relayed (TURN) link (each node's links drawn from the mix: ``links.Links``) -- the
      relay's cost; ``relayed_share`` = ``relayed_bytes / peer_bytes``.
    """
    out: dict[str, Any] = {}
    if mix is not None:
        out["direct_share_expected"] = mix.direct_share()
        out["natted_direct_share"] = mix.natted_direct_share()
        out["relayed_share_expected"] = mix.relayed_share()
    if tracker is not None and mix is not None:
        out.update(tracker.summary())
    return out
