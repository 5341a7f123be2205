"""Sweeps: many runs of one base scenario, side by side.

A sweep file::

    [sweep]
    base = "policy-100k.toml"      # the base scenario, relative to this file
    seeds = [1, 2]                 # every configuration runs with every seed
    plots = false                  # per-run PNGs (the comparison plot is always drawn)
    metrics = ["t95_h", "spare_min", ...]   # columns of comparison.md (default: a useful set)

    [set]                          # overrides for every run (table.key = value)
    "run.nodes" = 100_000

    [grid]                         # the cartesian product of these values
    "policy.kind" = ["ours", "fleetlock"]

    [[variant]]                    # optional: named combinations (each x grid x seeds)
    name = "ours-budget-100"
    set = { "policy.kind" = "ours", "policy.max_concurrent" = 100 }

Every run's scenario is built and validated before the first one starts, so a typo fails
in a second, not after an hour.  Runs go to joblib (``--jobs``, processes) or, with
``--scheduler ADDRESS``, to a Dask cluster (workers need this repository importable: start
them from its root).  Workers send results back; all files are written here:
``comparison.csv`` (every summary metric per run), ``comparison.md`` (the chosen
metrics), ``comparison.png`` and ``runs/<label>/`` (each run's full output).
"""

from __future__ import annotations

import importlib
import itertools
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ScenarioError, _Reader, apply_overrides, parse, read_toml
from .runner import RunResult, command_line, run_scenario, write_rows, write_run

DEFAULT_METRICS = (
    "t50_h",
    "t90_h",
    "t95_h",
    "t99_h",
    "spare_min",
    "minutes_below_floor",
    "peak_departures",
    "departure_budget",
    "peak_stuck",
    "stuck_slot_hours",
    "lease_overruns",
    "asks_per_s_peak",
    "blast_radius",
    "failed",
    "halted_after_h",
    "wall_seconds",
)


@dataclass(frozen=True)
class Job:
    label: str
    seed: int
    params: dict[str, Any]
    scenario: Any  # config.Scenario (kept Any so the job pickles without surprises)


def plan(path: Path) -> tuple[str, list[Job], bool, tuple[str, ...]]:
    data = read_toml(path)
    where = str(path)
    known = {"sweep", "set", "grid", "variant"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ScenarioError(
            f"{where}: unknown table [{unknown[0]}] (known: {', '.join(sorted(known))})"
        )
    head = data.get("sweep")
    if not isinstance(head, Mapping):
        raise ScenarioError(f'{where}: needs a [sweep] table with base = "SCENARIO.toml"')
    r = _Reader(f"{where}: [sweep]", head, ("base", "seeds", "plots", "metrics", "name"))
    base_name = r.string("base", "")
    if not base_name:
        raise ScenarioError(f"{where}: [sweep] base is required")
    base = (path.parent / base_name).resolve()
    name = r.string("name", path.stem)
    plots = r.boolean("plots", False)
    seeds = head.get("seeds", [1])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ScenarioError(f"{where}: [sweep] seeds must be a non-empty list of integers >= 0")
    metrics = head.get("metrics", list(DEFAULT_METRICS))
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ScenarioError(f"{where}: [sweep] metrics must be a list of column names")
    common = data.get("set", {})
    grid = data.get("grid", {})
    for table, label in ((common, "set"), (grid, "grid")):
        if not isinstance(table, Mapping):
            raise ScenarioError(f'{where}: [{label}] must be a table of "table.key" = value')
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ScenarioError(f"{where}: [grid] {key} must be a non-empty list of values")
    variants = data.get("variant", [{}])
    if not isinstance(variants, list) or not all(isinstance(v, Mapping) for v in variants):
        raise ScenarioError(f"{where}: [[variant]] entries must be tables")
    base_data = read_toml(base)
    jobs: list[Job] = []
    for i, variant in enumerate(variants):
        vr = _Reader(f"{where}: variant[{i}]", variant, ("name", "set"))
        vname = vr.string("name", "")
        vset = vr.table_of("set") or {}
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            params = {**common, **vset, **dict(zip(keys, combo, strict=True))}
            scenario = parse(
                apply_overrides(base_data, params, source=where),
                source=f"{where} -> {base.name}",
                name=base.stem,
            )
            parts = [vname] if vname else []
            parts += [f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo, strict=True)]
            for seed in seeds:
                label = "_".join([*parts, f"seed{seed}"]) if parts else f"seed{seed}"
                jobs.append(Job(label=label, seed=seed, params=params, scenario=scenario))
    labels = [j.label for j in jobs]
    if len(set(labels)) != len(labels):
        raise ScenarioError(f"{where}: two runs would get the same label; name the variants")
    return name, jobs, plots, tuple(metrics)


def _execute(job: Job) -> tuple[str, RunResult]:
    return job.label, run_scenario(job.scenario, job.seed)


def _local(jobs: Sequence[Job], n_jobs: int) -> Iterator[tuple[str, RunResult]]:
    from joblib import Parallel, delayed  # type: ignore[import-untyped]  # [sim] extra, on use

    if n_jobs == 1:
        for job in jobs:
            yield _execute(job)
        return
    parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    yield from parallel(delayed(_execute)(job) for job in jobs)


def _dask(jobs: Sequence[Job], address: str) -> Iterator[tuple[str, RunResult]]:
    distributed: Any = importlib.import_module("dask.distributed")  # untyped

    try:
        client = distributed.Client(address, timeout=10)
    except OSError as exc:
        raise ScenarioError(f"--scheduler {address}: cannot connect ({exc})") from None
    try:
        futures = client.map(_execute, list(jobs), pure=False)
        for future in distributed.as_completed(futures):
            yield future.result()
    finally:
        client.close()


def run_sweep(
    path: Path, *, jobs: int, scheduler: str | None, out: Path | None, quiet: bool
) -> int:
    if jobs < 1:
        raise ScenarioError("--jobs must be >= 1")
    name, runs, plots, metrics = plan(path)
    out = out or Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, RunResult] = {}
    stream = _dask(runs, scheduler) if scheduler else _local(runs, jobs)
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm  # type: ignore[import-untyped]

        bar = tqdm(total=len(runs), unit="run", desc=name, file=sys.stderr)
    command = command_line()
    for label, result in stream:
        results[label] = result
        write_run(result, out / "runs" / label, command=command, plots=plots)
        if bar is not None:
            bar.update(1)
        elif not quiet:
            print(f"  {label}: done in {result.wall_seconds:.1f} s", flush=True)
    if bar is not None:
        bar.close()
    ordered = [(job, results[job.label]) for job in runs]
    rows = [
        {"label": job.label, **{k: v for k, v in job.params.items()}, **res.summary}
        for job, res in ordered
    ]
    write_rows(out / "comparison.csv", rows)
    (out / "comparison.md").write_text(_markdown(rows, metrics))
    from .plots import plot_comparison  # matplotlib (the [sim] extra), on use

    plot_comparison(
        out / "comparison.png",
        [(job.label, res.series) for job, res in ordered],
        f"{name}: {len(runs)} runs",
    )
    if not quiet:
        print(_markdown(rows, metrics))
        print(f"wrote {out}/comparison.csv, comparison.md, comparison.png and runs/")
    return 0


def _markdown(rows: list[dict[str, Any]], metrics: Sequence[str]) -> str:
    cols = ["label", *[m for m in metrics if any(m in r for r in rows)]]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
