"""Scenarios: TOML in, a validated ``Scenario`` out, or one line that says what is wrong.

A scenario file has up to nine tables (all optional; every key has a default):

``[run]``       nodes, days, tick_seconds, engine, seed
``[churn]``     always_on, session, offline, diurnal_amplitude, arrival_peak_hour,
                timezones, departures_per_day
``[capacity]``  pools, node_capacity, demand, demand_amplitude, demand_peak_hour
``[node]``      the updater's timings (``p2pupdate.core.updater.UpdaterConfig`` fields; its
                defaults are the defaults here) and the durations of prefetch, drain,
                restart and health check
``[rollout]``   start_hours, stages (a fraction stage may carry a signed ramp), nudge,
                nudge_on_boot, failure_probability, scope_seed
``[policy]``    kind (ours | fleetlock | push | max-unavailable), the real
                ``coordinator.policy.PolicyConfig`` knobs (its defaults, its validation),
                slots, max_unavailable, retry_seconds, error_probability
``[output]``    plots
``[links]``     (optional) the NAT mix: open, cone, strict, punch_success, degree,
                relay_rate (``simulations.links``)
``[artifact]``  (optional) the swarm model: size_mib, origin_up_mib_s, peer_up_mib_s,
                peer_down_mib_s (``simulations.artifacts``); it turns ``[links]`` on

Without ``[links]`` and ``[artifact]`` a scenario runs exactly as before they existed
(``node.prefetch`` is the prefetch time; the summary has no link or origin fields).

Durations are written with their unit in the key (``median_hours``, ``median_minutes``,
``median_seconds``).  Validation is strict on purpose: an unknown key is a typo that would
otherwise silently run the default, so it is an error, and so is a wrong type or a value
out of range.  Every problem is a ``ScenarioError`` whose message is one line naming the
file, the table and the key; the CLI prints it and exits 2.

``resolve()`` returns the whole configuration with every default filled in, as plain data:
``run`` writes it next to the results (``scenario.resolved.toml``) so a run can be repeated
from its output directory alone.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from coordinator.policy import PolicyConfig
from p2pupdate.core.documents import MAX_NODES_IN_SCOPE, MAX_RAMP_STAGES, Scope
from p2pupdate.core.errors import SchemaError
from p2pupdate.core.updater import UpdaterConfig

from .links import DEFAULT_DEGREE, DEFAULT_MIX, LinkMix, calibrated_punch_success

HOUR: Final = 3600.0
DAY: Final = 86400.0

ENGINES: Final = ("tick", "exact")
POLICY_KINDS: Final = ("ours", "fleetlock", "push", "max-unavailable")
DISTS: Final = ("weibull", "lognormal", "exponential", "fixed")
SCOPE_KINDS: Final = ("everyone", "fraction", "nodes", "nobody")
#: The exact engine is for validation; past this it would take hours.
EXACT_MAX_NODES: Final = 100_000
MAX_NODES: Final = 20_000_000

_UNITS: Final = {"median_hours": HOUR, "median_minutes": 60.0, "median_seconds": 1.0}


class ScenarioError(ValueError):
    """A scenario (or sweep) file is unreadable or invalid; the message is one line."""


# -- distributions ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Dist:
    """A positive random duration (seconds) or size, given by its median.

    ``weibull`` needs ``shape`` (k; below 1 is heavy-tailed), ``lognormal`` needs ``sigma``
    (of the log), ``exponential`` and ``fixed`` need only the median.
    """

    dist: str
    median: float
    shape: float = 0.0
    sigma: float = 0.0

    def to_toml(self, unit_key: str) -> dict[str, Any]:
        scale = _UNITS.get(unit_key, 1.0)
        out: dict[str, Any] = {"dist": self.dist, unit_key: self.median / scale}
        if self.dist == "weibull":
            out["shape"] = self.shape
        if self.dist == "lognormal":
            out["sigma"] = self.sigma
        return out

    @property
    def mean(self) -> float:
        if self.dist == "weibull":
            scale = self.median / math.log(2.0) ** (1.0 / self.shape)
            return float(scale * math.gamma(1.0 + 1.0 / self.shape))
        if self.dist == "lognormal":
            return float(self.median * math.exp(self.sigma**2 / 2.0))
        if self.dist == "exponential":
            return self.median / math.log(2.0)
        return self.median


# -- the typed scenario ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    nodes: int = 10_000
    days: float = 2.0
    tick_seconds: float = 60.0
    engine: str = "tick"
    seed: int = 1


@dataclass(frozen=True, kw_only=True)
class TimeZone:
    utc_offset_hours: float
    weight: float


@dataclass(frozen=True, kw_only=True)
class ChurnConfig:
    #: Share of nodes that never go offline (servers, always-on boxes).
    always_on: float = 0.2
    session: Dist = field(
        default_factory=lambda: Dist(dist="weibull", median=2.0 * HOUR, shape=0.6)
    )
    offline: Dist = field(
        default_factory=lambda: Dist(dist="lognormal", median=8.0 * HOUR, sigma=1.2)
    )
    #: Arrival (offline -> online) rate swings by this share around its mean over a day.
    diurnal_amplitude: float = 0.25
    #: Local hour at which arrivals peak.
    arrival_peak_hour: float = 19.0
    timezones: tuple[TimeZone, ...] = (
        TimeZone(utc_offset_hours=-6.0, weight=0.3),
        TimeZone(utc_offset_hours=1.0, weight=0.4),
        TimeZone(utc_offset_hours=8.0, weight=0.3),
    )
    #: Share of the fleet that leaves for good per day (uninstalled, machine retired).
    departures_per_day: float = 0.002


@dataclass(frozen=True, kw_only=True)
class CapacityConfig:
    pools: int = 1
    node_capacity: Dist = field(
        default_factory=lambda: Dist(dist="lognormal", median=1.0, sigma=0.5)
    )
    #: Mean demand, as a share of the pool's expected online capacity.
    demand: float = 0.5
    #: Demand swings by this share around its mean in each time zone over a day.
    demand_amplitude: float = 0.4
    #: Local hour at which demand peaks.
    demand_peak_hour: float = 20.0
    #: The floor the metrics hold every policy to: load <= this x serving capacity.
    #: 0 (default): the policy's ``utilization`` (the rule's own floor).
    floor_utilization: float = 0.0


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    updater: UpdaterConfig = field(default_factory=UpdaterConfig)
    prefetch: Dist = field(default_factory=lambda: Dist(dist="lognormal", median=60.0, sigma=1.0))
    drain: Dist = field(default_factory=lambda: Dist(dist="lognormal", median=20.0, sigma=0.8))
    restart: Dist = field(default_factory=lambda: Dist(dist="lognormal", median=15.0, sigma=0.5))
    health: Dist = field(default_factory=lambda: Dist(dist="lognormal", median=30.0, sigma=0.5))


@dataclass(frozen=True, kw_only=True)
class Stage:
    """From ``after_hours`` past the rollout start, this scope is in force (a new serial)."""

    after_hours: float
    scope: str
    fraction: float = 0.0
    #: For ``scope = "nodes"``: how many named nodes (drawn at random: a canary set).
    nodes: int = 0
    force: bool = False
    #: For ``scope = "fraction"``: an optional staged ramp signed in the one scope,
    #: ``(after_hours, fraction)`` pairs from this stage's start; the last pair's fraction
    #: is the scope's ``fraction`` (README "A staged ramp in one signed scope").
    ramp: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    start_hours: float = 1.0
    stages: tuple[Stage, ...] = (Stage(after_hours=0.0, scope="everyone"),)
    #: Nudge every online node at each stage start (nudges still pass every gate).
    nudge: bool = False
    #: Nudge a node when it comes online during the rollout (the coordinator can, over
    #: the node's connection); otherwise its first check is U[0, check_interval] after boot.
    nudge_on_boot: bool = False
    #: The new build fails probation on this share of nodes (a bad build when > 0).
    failure_probability: float = 0.0
    #: The fraction scopes' seed (hex, 8..32 bytes); default: derived from the run seed.
    scope_seed: str = ""


@dataclass(frozen=True, kw_only=True)
class PolicySettings:
    kind: str = "ours"
    config: PolicyConfig = field(default_factory=PolicyConfig)
    #: FleetLock: semaphore size (per pool); default ``max_concurrent``.
    slots: int = 0
    #: Kubernetes-style: share of the pool's online nodes that may be away at once.
    max_unavailable: float = 0.25
    #: Baselines: wait before asking again after a refusal; default ``base_retry``.
    retry_seconds: float = 0.0
    #: An ask gets no usable answer (replica unreachable, timeout) with this probability;
    #: the node backs off exponentially (``p2pupdate.core.timing.backoff``).
    error_probability: float = 0.0

    @property
    def fleetlock_slots(self) -> int:
        return self.slots or self.config.max_concurrent

    @property
    def baseline_retry(self) -> float:
        return self.retry_seconds or self.config.base_retry


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    plots: bool = True


@dataclass(frozen=True, kw_only=True)
class ArtifactConfig:
    """The artifact every node prefetches, and the swarm's rates (MiB, MiB/s): the
    defaults are the swarm simulator's (``simulations.swarm``), where the model is fitted."""

    size_mib: float = 16.0
    origin_up_mib_s: float = 2.0
    peer_up_mib_s: float = 0.5
    peer_down_mib_s: float = 2.5


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str = "scenario"
    run: RunConfig = field(default_factory=RunConfig)
    churn: ChurnConfig = field(default_factory=ChurnConfig)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    policy: PolicySettings = field(default_factory=PolicySettings)
    output: OutputConfig = field(default_factory=OutputConfig)
    #: The NAT mix (``[links]``); None: not modelled (set whenever ``artifact`` is).
    links: LinkMix | None = None
    #: The swarm model (``[artifact]``); None: ``node.prefetch`` draws the prefetch time.
    artifact: ArtifactConfig | None = None

    @property
    def horizon(self) -> float:
        return self.run.days * DAY

    @property
    def floor_utilization(self) -> float:
        return self.capacity.floor_utilization or self.policy.config.utilization

    @property
    def rollout_start(self) -> float:
        return self.rollout.start_hours * HOUR


# -- reading -------------------------------------------------------------------------------


class _Reader:
    """Pulls typed values out of one table, collecting nothing: the first error raises."""

    def __init__(self, where: str, table: Mapping[str, Any], known: tuple[str, ...]) -> None:
        self.where = where
        self.table = table
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ScenarioError(
                f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )

    def _fail(self, key: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.where}: {key} {message}")

    def has(self, key: str) -> bool:
        return key in self.table

    def number(
        self,
        key: str,
        default: float,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, f"must be a number, got {_kind(value)}")
        value = float(value)
        if not math.isfinite(value):
            raise self._fail(key, "must be finite")
        if low is not None and (value < low or (low_open and value == low)):
            raise self._fail(key, f"must be {'>' if low_open else '>='} {low:g}, got {value:g}")
        if high is not None and (value > high or (high_open and value == high)):
            raise self._fail(key, f"must be {'<' if high_open else '<='} {high:g}, got {value:g}")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int | None = None) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            span = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise self._fail(key, f"must be {span}, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, f"must be true or false, got {_kind(value)}")
        return value

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, f"must be a string, got {_kind(value)}")
        if value not in options:
            raise self._fail(key, f"must be one of {', '.join(options)}; got {value!r}")
        return value

    def string(self, key: str, default: str) -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, f"must be a string, got {_kind(value)}")
        return value

    def table_of(self, key: str) -> Mapping[str, Any] | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self._fail(key, f"must be a table, got {_kind(value)}")
        return value

    def list_of_tables(self, key: str) -> list[Mapping[str, Any]] | None:
        value = self.table.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self._fail(key, "must be a list of tables")
        return value

    def dist(self, key: str, default: Dist, *, unitless: bool = False) -> Dist:
        table = self.table_of(key)
        if table is None:
            return default
        where = f"{self.where} {key}"
        median_keys = ("median",) if unitless else tuple(_UNITS)
        r = _Reader(where, table, ("dist", "shape", "sigma", *median_keys))
        kind = r.choice("dist", default.dist, DISTS)
        given = [k for k in median_keys if r.has(k)]
        if len(given) > 1:
            raise ScenarioError(f"{where}: give one of {', '.join(given)}, not several")
        if given:
            scale = 1.0 if unitless else _UNITS[given[0]]
            median = r.number(given[0], 0.0, low=0.0, low_open=True) * scale
        else:
            median = default.median
        shape = sigma = 0.0
        if kind == "weibull":
            shape = r.number("shape", default.shape or 1.0, low=0.05, high=20.0)
        elif r.has("shape"):
            raise ScenarioError(f'{where}: shape applies to dist = "weibull" only')
        if kind == "lognormal":
            sigma = r.number("sigma", default.sigma or 1.0, low=0.0, high=5.0, low_open=True)
        elif r.has("sigma"):
            raise ScenarioError(f'{where}: sigma applies to dist = "lognormal" only')
        return Dist(dist=kind, median=median, shape=shape, sigma=sigma)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


def _init_fields(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.init]


def _read_run(r: _Reader) -> RunConfig:
    d = RunConfig()
    engine = r.choice("engine", d.engine, ENGINES)
    nodes = r.integer("nodes", d.nodes, low=1, high=MAX_NODES)
    if engine == "exact" and nodes > EXACT_MAX_NODES:
        raise ScenarioError(
            f"{r.where}: nodes = {nodes}: the exact engine is for <= {EXACT_MAX_NODES:,} nodes"
        )
    tick = r.number("tick_seconds", d.tick_seconds, low=1.0, high=3600.0)
    if not (60.0 % tick == 0.0 or tick % 60.0 == 0.0):
        raise ScenarioError(
            f"{r.where}: tick_seconds must divide 60 or be a multiple of 60, got {tick:g}"
        )
    return RunConfig(
        nodes=nodes,
        days=r.number("days", d.days, low=0.0, high=365.0, low_open=True),
        tick_seconds=tick,
        engine=engine,
        seed=r.integer("seed", d.seed, low=0, high=2**63 - 1),
    )


def _read_churn(r: _Reader) -> ChurnConfig:
    d = ChurnConfig()
    zones = d.timezones
    listed = r.list_of_tables("timezones")
    if listed is not None:
        if not listed:
            raise ScenarioError(f"{r.where}: timezones must not be empty")
        out = []
        for i, table in enumerate(listed):
            z = _Reader(f"{r.where} timezones[{i}]", table, ("utc_offset_hours", "weight"))
            if not z.has("utc_offset_hours"):
                raise ScenarioError(f"{z.where}: utc_offset_hours is required")
            out.append(
                TimeZone(
                    utc_offset_hours=z.number("utc_offset_hours", 0.0, low=-12.0, high=14.0),
                    weight=z.number("weight", 1.0, low=0.0, low_open=True),
                )
            )
        zones = tuple(out)
    return ChurnConfig(
        always_on=r.number("always_on", d.always_on, low=0.0, high=1.0),
        session=r.dist("session", d.session),
        offline=r.dist("offline", d.offline),
        diurnal_amplitude=r.number("diurnal_amplitude", d.diurnal_amplitude, low=0.0, high=0.9),
        arrival_peak_hour=r.number(
            "arrival_peak_hour", d.arrival_peak_hour, low=0.0, high=24.0, high_open=True
        ),
        timezones=zones,
        departures_per_day=r.number(
            "departures_per_day", d.departures_per_day, low=0.0, high=1.0, high_open=True
        ),
    )


def _read_capacity(r: _Reader) -> CapacityConfig:
    d = CapacityConfig()
    return CapacityConfig(
        pools=r.integer("pools", d.pools, low=1, high=10_000),
        node_capacity=r.dist("node_capacity", d.node_capacity, unitless=True),
        demand=r.number("demand", d.demand, low=0.0, high=1.0),
        demand_amplitude=r.number("demand_amplitude", d.demand_amplitude, low=0.0, high=1.0),
        demand_peak_hour=r.number(
            "demand_peak_hour", d.demand_peak_hour, low=0.0, high=24.0, high_open=True
        ),
        floor_utilization=r.number("floor_utilization", d.floor_utilization, low=0.0, high=1.0),
    )


_NODE_DISTS: Final = ("prefetch", "drain", "restart", "health")


def _read_node(r: _Reader) -> NodeConfig:
    d = NodeConfig()
    knobs: dict[str, Any] = {}
    for name in _init_fields(UpdaterConfig):
        if not r.has(name):
            continue
        default = getattr(d.updater, name)
        if isinstance(default, int) and not isinstance(default, bool):
            knobs[name] = r.integer(name, default, low=-(2**31))
        else:
            knobs[name] = r.number(name, default)
    try:
        updater = UpdaterConfig(**knobs)
    except ValueError as exc:  # the updater's own validation names the knob
        raise ScenarioError(f"{r.where}: {exc}") from None
    dists = {name: r.dist(name, getattr(d, name)) for name in _NODE_DISTS}
    return NodeConfig(updater=updater, **dists)


def _read_stage(where: str, table: Mapping[str, Any]) -> Stage:
    r = _Reader(where, table, ("after_hours", "scope", "fraction", "nodes", "force", "ramp"))
    scope = r.choice("scope", "everyone", SCOPE_KINDS)
    fraction = 0.0
    ramp = _read_ramp(where, table.get("ramp")) if r.has("ramp") else ()
    if ramp and scope != "fraction":
        raise ScenarioError(f'{where}: ramp applies to scope = "fraction" only')
    if scope == "fraction":
        if ramp and not r.has("fraction"):
            fraction = ramp[-1][1]
        elif not r.has("fraction"):
            raise ScenarioError(f'{where}: scope = "fraction" needs fraction (or a ramp)')
        else:
            fraction = r.number("fraction", 0.0, low=0.0, high=1.0)
        if ramp and fraction != ramp[-1][1]:
            raise ScenarioError(f"{where}: fraction must equal the ramp's last fraction")
    elif r.has("fraction"):
        raise ScenarioError(f'{where}: fraction applies to scope = "fraction" only')
    nodes = 0
    if scope == "nodes":
        nodes = r.integer("nodes", 0, low=1, high=MAX_NODES_IN_SCOPE)
    elif r.has("nodes"):
        raise ScenarioError(f'{where}: nodes applies to scope = "nodes" only')
    return Stage(
        after_hours=r.number("after_hours", 0.0, low=0.0),
        scope=scope,
        fraction=fraction,
        nodes=nodes,
        force=r.boolean("force", False),
        ramp=ramp,
    )


def _read_ramp(where: str, value: Any) -> tuple[tuple[float, float], ...]:
    """``ramp = [[after_hours, fraction], ...]``: the shape only (bounded); the scope's own
    schema (``Scope.checked``) judges the stages when the simulator signs them."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_RAMP_STAGES:
        raise ScenarioError(f"{where}: ramp must be a list of 1 to {MAX_RAMP_STAGES} stages")
    out: list[tuple[float, float]] = []
    for i, pair in enumerate(value):
        ok = isinstance(pair, list) and len(pair) == 2
        ok = ok and all(isinstance(x, int | float) and not isinstance(x, bool) for x in pair)
        if not ok or not 0.0 <= pair[0] < 1e6 or not 0.0 <= pair[1] <= 1.0:
            raise ScenarioError(
                f"{where}: ramp[{i}] must be [after_hours >= 0, fraction in 0..1], got {pair!r}"
            )
        out.append((float(pair[0]), float(pair[1])))
    return tuple(out)


def _read_rollout(r: _Reader) -> RolloutConfig:
    d = RolloutConfig()
    stages = d.stages
    listed = r.list_of_tables("stages")
    if listed is not None:
        if not listed:
            raise ScenarioError(f"{r.where}: stages must not be empty")
        stages = tuple(_read_stage(f"{r.where} stages[{i}]", t) for i, t in enumerate(listed))
        times = [s.after_hours for s in stages]
        if times != sorted(times) or len(set(times)) != len(times):
            raise ScenarioError(f"{r.where}: stages must have increasing after_hours")
    seed = r.string("scope_seed", d.scope_seed)
    if seed:
        try:
            raw = bytes.fromhex(seed)
        except ValueError:
            raise ScenarioError(f"{r.where}: scope_seed must be hex, got {seed!r}") from None
        if not 8 <= len(raw) <= 32:
            raise ScenarioError(f"{r.where}: scope_seed must be 8 to 32 bytes (16-64 hex digits)")
    return RolloutConfig(
        start_hours=r.number("start_hours", d.start_hours, low=0.0),
        stages=stages,
        nudge=r.boolean("nudge", d.nudge),
        nudge_on_boot=r.boolean("nudge_on_boot", d.nudge_on_boot),
        failure_probability=r.number(
            "failure_probability", d.failure_probability, low=0.0, high=1.0
        ),
        scope_seed=seed,
    )


_POLICY_OWN: Final = ("kind", "slots", "max_unavailable", "retry_seconds", "error_probability")


def _read_policy(r: _Reader) -> PolicySettings:
    d = PolicySettings()
    knobs: dict[str, Any] = {}
    for name in _init_fields(PolicyConfig):
        if not r.has(name):
            continue
        default = getattr(d.config, name)
        if isinstance(default, int) and not isinstance(default, bool):
            knobs[name] = r.integer(name, default, low=-(2**62))
        else:
            knobs[name] = r.number(name, default)
    try:
        config = PolicyConfig(**knobs)
    except ValueError as exc:  # the policy's own validation names the knob
        raise ScenarioError(f"{r.where}: {exc}") from None
    return PolicySettings(
        kind=r.choice("kind", d.kind, POLICY_KINDS),
        config=config,
        slots=r.integer("slots", d.slots, low=0),
        max_unavailable=r.number(
            "max_unavailable", d.max_unavailable, low=0.0, high=1.0, low_open=True
        ),
        retry_seconds=r.number("retry_seconds", d.retry_seconds, low=0.0),
        error_probability=r.number(
            "error_probability", d.error_probability, low=0.0, high=1.0, high_open=True
        ),
    )


def _read_output(r: _Reader) -> OutputConfig:
    return OutputConfig(plots=r.boolean("plots", OutputConfig().plots))


_LINK_SHARES: Final = ("open", "cone", "strict")


def _read_links(r: _Reader) -> LinkMix:
    given = [k for k in _LINK_SHARES if r.has(k)]
    defaults = dict(zip(_LINK_SHARES, DEFAULT_MIX, strict=True))
    if given and len(given) < len(_LINK_SHARES):
        missing = [k for k in _LINK_SHARES if k not in given]
        raise ScenarioError(
            f"{r.where}: give all of open, cone, strict (the shares), not some: "
            f"missing {', '.join(missing)}"
        )
    shares = {k: r.number(k, defaults[k], low=0.0, high=1.0) for k in _LINK_SHARES}
    total = sum(shares.values())
    if abs(total - 1.0) > 1e-6:
        raise ScenarioError(f"{r.where}: open + cone + strict must sum to 1, got {total:g}")
    mix = (shares["open"], shares["cone"], shares["strict"])
    return LinkMix(
        open=mix[0],
        cone=mix[1],
        strict=mix[2],
        punch_success=r.number("punch_success", calibrated_punch_success(mix), low=0.0, high=1.0),
        degree=r.integer("degree", DEFAULT_DEGREE, low=0, high=64),
        relay_rate=r.number("relay_rate", 1.0, low=0.0, high=1.0, low_open=True),
    )


def _read_artifact(r: _Reader) -> ArtifactConfig:
    d = ArtifactConfig()
    return ArtifactConfig(
        size_mib=r.number("size_mib", d.size_mib, low=0.0, high=1e6, low_open=True),
        origin_up_mib_s=r.number(
            "origin_up_mib_s", d.origin_up_mib_s, low=0.0, high=1e6, low_open=True
        ),
        peer_up_mib_s=r.number("peer_up_mib_s", d.peer_up_mib_s, low=0.0, high=1e6, low_open=True),
        peer_down_mib_s=r.number(
            "peer_down_mib_s", d.peer_down_mib_s, low=0.0, high=1e6, low_open=True
        ),
    )


_SECTIONS: Final[dict[str, tuple[tuple[str, ...], Callable[[_Reader], Any]]]] = {
    "run": (tuple(_init_fields(RunConfig)), _read_run),
    "churn": (tuple(_init_fields(ChurnConfig)), _read_churn),
    "capacity": (tuple(_init_fields(CapacityConfig)), _read_capacity),
    "node": ((*_init_fields(UpdaterConfig), *_NODE_DISTS), _read_node),
    "rollout": (tuple(_init_fields(RolloutConfig)), _read_rollout),
    "policy": ((*_POLICY_OWN, *_init_fields(PolicyConfig)), _read_policy),
    "output": (tuple(_init_fields(OutputConfig)), _read_output),
    "links": (tuple(_init_fields(LinkMix)), _read_links),
    "artifact": (tuple(_init_fields(ArtifactConfig)), _read_artifact),
}
#: Tables that are off (None) when absent, so old scenarios run as before.
_OPTIONAL: Final = ("links", "artifact")


def parse(data: Mapping[str, Any], *, source: str = "scenario", name: str = "scenario") -> Scenario:
    """A ``Scenario`` from TOML data, or ``ScenarioError`` naming the first problem."""
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ScenarioError(
            f"{source}: unknown table [{unknown[0]}] (known: {', '.join(_SECTIONS)})"
        )
    parts: dict[str, Any] = {}
    for section, (known, reader) in _SECTIONS.items():
        if section in _OPTIONAL and section not in data:
            parts[section] = None
            continue
        table = data.get(section, {})
        if not isinstance(table, Mapping):
            raise ScenarioError(f"{source}: {section} must be a table [{section}]")
        parts[section] = reader(_Reader(f"{source}: [{section}]", table, known))
    if parts["artifact"] is not None and parts["links"] is None:
        parts["links"] = LinkMix()  # the swarm's relayed share needs a mix: the defaults
    scenario = Scenario(name=name, **parts)
    _check_across(scenario, source)
    return scenario


def _check_across(s: Scenario, source: str) -> None:
    """Rules between tables."""
    u, p = s.node.updater, s.policy.config
    if s.policy.kind == "ours" and p.lease_ttl <= u.swap_margin:
        raise ScenarioError(
            f"{source}: [policy] lease_ttl ({p.lease_ttl:g} s) must exceed [node] swap_margin "
            f"({u.swap_margin:g} s): every grant would be handed back as too short"
        )
    if s.rollout_start >= s.horizon:
        raise ScenarioError(
            f"{source}: [rollout] start_hours ({s.rollout.start_hours:g}) is past the end of "
            f"the run ({s.run.days:g} days)"
        )
    if s.policy.kind == "ours" and p.replicas != 1:
        raise ScenarioError(
            f"{source}: [policy] replicas > 1 is not simulated yet (one replica, n = q = 1)"
        )
    for i, st in enumerate(s.rollout.stages):
        if st.ramp:
            _check_ramp(s, st, f"{source}: [rollout] stages[{i}]")
    named = max((st.nodes for st in s.rollout.stages), default=0)
    if named > s.run.nodes:
        raise ScenarioError(f"{source}: [rollout] a stage names {named} nodes of {s.run.nodes}")


def _check_ramp(s: Scenario, st: Stage, where: str) -> None:
    """The ramp's stages judged by the scope's own schema (``Scope.checked``), on a scope
    timed as the simulator signs it (issued at the stage's start, expiring a day after the
    run), so a bad ramp is a one-line scenario error, not a traceback at run time."""
    issued = int(s.rollout_start + st.after_hours * HOUR)
    try:
        Scope(
            serial=1,
            issued=issued,
            expires=int(s.horizon + DAY),
            artifact="00" * 32,
            kind="fraction",
            fraction=st.fraction,
            seed=bytes(16),
            ramp=tuple((round(a * HOUR), f) for a, f in st.ramp),
        ).checked()
    except SchemaError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def load(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Scenario:
    """Read and validate a scenario file; ``overrides`` maps ``"table.key"`` to a value."""
    path = Path(path)
    data = read_toml(path)
    if overrides:
        data = apply_overrides(data, overrides, source=str(path))
    return parse(data, source=str(path), name=path.stem)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ScenarioError(f"{path}: is a directory, not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None


def apply_overrides(
    data: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str
) -> dict[str, Any]:
    """A copy of ``data`` with ``{"table.key": value}`` (or ``"table.key.sub"``) set."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) < 2 or not all(parts):
            raise ScenarioError(f"{source}: override {dotted!r} must look like table.key")
        node: dict[str, Any] = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise ScenarioError(f"{source}: override {dotted!r}: {part} is not a table")
            child = dict(child)
            node[part] = child
            node = child
        node[parts[-1]] = value
    return out


# -- writing back ---------------------------------------------------------------------------


def resolve(s: Scenario) -> dict[str, Any]:
    """The whole configuration, defaults filled in, as TOML-ready plain data."""
    u = s.node.updater
    return {
        "run": {
            "nodes": s.run.nodes,
            "days": s.run.days,
            "tick_seconds": s.run.tick_seconds,
            "engine": s.run.engine,
            "seed": s.run.seed,
        },
        "churn": {
            "always_on": s.churn.always_on,
            "session": s.churn.session.to_toml("median_hours"),
            "offline": s.churn.offline.to_toml("median_hours"),
            "diurnal_amplitude": s.churn.diurnal_amplitude,
            "arrival_peak_hour": s.churn.arrival_peak_hour,
            "timezones": [
                {"utc_offset_hours": z.utc_offset_hours, "weight": z.weight}
                for z in s.churn.timezones
            ],
            "departures_per_day": s.churn.departures_per_day,
        },
        "capacity": {
            "pools": s.capacity.pools,
            "node_capacity": s.capacity.node_capacity.to_toml("median"),
            "demand": s.capacity.demand,
            "demand_amplitude": s.capacity.demand_amplitude,
            "demand_peak_hour": s.capacity.demand_peak_hour,
            "floor_utilization": s.floor_utilization,
        },
        "node": {
            **{name: getattr(u, name) for name in _init_fields(UpdaterConfig)},
            **{name: getattr(s.node, name).to_toml("median_seconds") for name in _NODE_DISTS},
        },
        "rollout": {
            "start_hours": s.rollout.start_hours,
            "stages": [_stage_toml(st) for st in s.rollout.stages],
            "nudge": s.rollout.nudge,
            "nudge_on_boot": s.rollout.nudge_on_boot,
            "failure_probability": s.rollout.failure_probability,
            "scope_seed": s.rollout.scope_seed,
        },
        "policy": {
            "kind": s.policy.kind,
            **{name: getattr(s.policy.config, name) for name in _init_fields(PolicyConfig)},
            "slots": s.policy.fleetlock_slots,
            "max_unavailable": s.policy.max_unavailable,
            "retry_seconds": s.policy.baseline_retry,
            "error_probability": s.policy.error_probability,
        },
        "output": {"plots": s.output.plots},
        **_optional_toml(s),
    }


def _optional_toml(s: Scenario) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.links is not None:
        out["links"] = {name: getattr(s.links, name) for name in _init_fields(LinkMix)}
    if s.artifact is not None:
        out["artifact"] = {name: getattr(s.artifact, name) for name in _init_fields(ArtifactConfig)}
    return out


def _stage_toml(st: Stage) -> dict[str, Any]:
    out: dict[str, Any] = {"after_hours": st.after_hours, "scope": st.scope}
    if st.scope == "fraction":
        out["fraction"] = st.fraction
    if st.ramp:
        out["ramp"] = [[a, f] for a, f in st.ramp]
    if st.scope == "nodes":
        out["nodes"] = st.nodes
    if st.force:
        out["force"] = True
    return out


def to_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer for ``resolve()``'s shapes: tables of scalars, inline tables
    and lists (of scalars or of inline tables)."""
    lines: list[str] = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
