"""Run one scenario and write what it measured.

``run_scenario`` builds the model, runs the engine the scenario names and returns the
summary row and the time series.  ``write_run`` puts them in a directory:

==========================  ===============================================================
``scenario.resolved.toml``  the full configuration, every default filled in (re-runnable)
``run.json``                seed, engine, package versions, wall time, the resolved config
``timeseries.csv``          one row per simulated minute (``metrics.STATE_COLUMNS`` and
                            ``ACTIVITY_COLUMNS``, plus hours and shares)
``summary.csv``             one row: the run's metrics (``metrics.summarize``)
``*.png``                   the plots (``plots.py``)
==========================  ===============================================================
"""

from __future__ import annotations

import csv
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .config import HOUR, Scenario, resolve, to_toml
from .exact import EventEngine
from .metrics import links_summary
from .model import Model
from .tick import TickEngine


@dataclass(frozen=True)
class RunResult:
    scenario: Scenario
    seed: int
    summary: dict[str, Any]
    series: dict[str, np.ndarray]
    wall_seconds: float


def run_scenario(
    scenario: Scenario, seed: int | None = None, progress: Callable[[float], None] | None = None
) -> RunResult:
    started = time.perf_counter()
    seed = scenario.run.seed if seed is None else seed
    scenario = replace(scenario, run=replace(scenario.run, seed=seed))
    model = Model(scenario)
    engine: TickEngine | EventEngine
    if scenario.run.engine == "exact":
        engine = EventEngine(model, progress=progress)
    else:
        engine = TickEngine(model, progress=progress)
    rec = engine.run()
    summary = engine.summary()
    summary.update(links_summary(scenario.links, engine.art))
    summary["seed"] = seed
    series = dict(rec.series)
    if engine.art is not None:
        series["origin_bytes"] = engine.art.origin_series()
        series["origin_mbit_s"] = series["origin_bytes"] * 8.0 / engine.sample_dt / 1e6
    denom = max(int(summary["in_scope_seen"]), 1)
    series["hours"] = series["minute"] / 60.0
    series["updated_share"] = series["updated"] / denom
    series["updated_share_all"] = series["updated"] / max(engine.n, 1)
    series["updated_share_initial"] = series["updated_initial"] / max(
        int(summary["in_scope_initial"]), 1
    )
    series["online_share"] = series["online"] / max(engine.n, 1)
    series["rolled_back_share"] = series["rolled_back"] / max(engine.n, 1)
    series["rollout_start_h"] = np.full(len(series["minute"]), scenario.rollout_start / HOUR)
    wall = time.perf_counter() - started
    summary["wall_seconds"] = round(wall, 3)
    return RunResult(
        scenario=scenario, seed=seed, summary=summary, series=series, wall_seconds=wall
    )


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("p2pupdate", "numpy", "matplotlib", "joblib", "tqdm", "dask", "distributed"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


_SERIES_ORDER = (
    "minute",
    "hours",
    "online",
    "serving",
    "away",
    "held",
    "stuck",
    "updated",
    "updated_initial",
    "updated_share",
    "updated_share_all",
    "updated_share_initial",
    "rolled_back",
    "paused",
    "capacity_online",
    "capacity_serving",
    "load",
    "spare",
    "spare_no_departures",
    "spare_share_min",
    "deficit",
    "checks",
    "asks",
    "grants",
    "completions",
    "arrivals",
    "departures_churn",
)
#: Columns only runs with ``[artifact]`` have.
_OPTIONAL_SERIES = ("origin_bytes", "origin_mbit_s")


def write_run(result: RunResult, out: Path, *, command: str = "", plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    resolved = resolve(result.scenario)
    path = out / "scenario.resolved.toml"
    path.write_text(
        f"# resolved from {result.scenario.name!r}; seed {result.seed}\n" + to_toml(resolved)
    )
    written.append(path)
    path = out / "run.json"
    path.write_text(
        json.dumps(
            {
                "scenario": result.scenario.name,
                "seed": result.seed,
                "engine": result.scenario.run.engine,
                "command": command,
                "wall_seconds": round(result.wall_seconds, 3),
                "versions": versions(),
                "config": resolved,
            },
            indent=2,
            default=_json_default,
        )
        + "\n"
    )
    written.append(path)
    path = out / "timeseries.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        names = [*_SERIES_ORDER, *(k for k in _OPTIONAL_SERIES if k in result.series)]
        w.writerow(names)
        columns = [result.series[name] for name in names]
        formats = [_formatter(col) for col in columns]
        for i in range(len(columns[0])):
            w.writerow([fmt(col[i]) for fmt, col in zip(formats, columns, strict=True)])
    written.append(path)
    path = out / "summary.csv"
    write_rows(path, [result.summary])
    written.append(path)
    if plots:
        from .plots import plot_run  # matplotlib (the [sim] extra) only when plots are asked for

        label = f"{result.scenario.name} ({result.scenario.policy.kind}, seed {result.seed})"
        written.extend(plot_run(out, result.series, result.summary, label))
    return written


def _formatter(col: np.ndarray) -> Callable[[Any], str]:
    if np.issubdtype(col.dtype, np.integer):
        return lambda v: str(int(v))
    return lambda v: f"{float(v):.6g}"


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """A CSV with the union of the rows' keys (first row's order first)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        for row in rows:
            w.writerow({k: _cell(v) for k, v in row.items()})


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o).__name__)


def command_line() -> str:
    return " ".join([Path(sys.executable).name, "-m", "simulations", *sys.argv[1:]])
