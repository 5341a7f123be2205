"""``python -m simulations``: run a scenario, run a sweep, or check a file.

    python -m simulations run SCENARIO.toml [--seed N] [--out DIR] [--set table.key=VALUE]...
    python -m simulations sweep SWEEP.toml [--jobs 2] [--scheduler ADDRESS] [--out DIR]
    python -m simulations check SCENARIO.toml          (validate; print the resolved config)
    python -m simulations gossip ...                   (simulations.gossip)
    python -m simulations swarm ...                    (simulations.swarm)
    python -m simulations calibrate-swarm [--quick]    (simulations.artifacts: refit, JSON)

Every user error (bad file, unknown key, wrong type, value out of range, bad flag) is one
line on stderr and exit status 2, never a traceback.  A progress bar goes to stderr on
long runs when stderr is a terminal (``--quiet`` turns it off).
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from . import artifacts, gossip, swarm
from .config import ScenarioError, load, resolve, to_toml
from .runner import command_line, run_scenario, write_run
from .sweep import run_sweep

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``table.key=VALUE`` pairs; VALUE is read as TOML (bare words as strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(f"--set {item!r}: expected table.key=VALUE")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[key.strip()] = value
    return out


@contextmanager
def progress_bar(
    total_days: float, *, quiet: bool, label: str
) -> Iterator[Callable[[float], None] | None]:
    """A tqdm bar in simulated days on stderr, or nothing when quiet or not a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm  # type: ignore[import-untyped]  # [sim] extra, only on a terminal

    bar = tqdm(
        total=round(total_days, 3),
        unit="day",
        desc=label,
        file=sys.stderr,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total:.2f} simulated days [{elapsed}<{remaining}]",
    )

    def update(fraction: float) -> None:
        bar.update(round(fraction * total_days, 3) - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _run(args: argparse.Namespace) -> int:
    overrides = _parse_set(args.set)
    if args.engine:
        overrides["run.engine"] = args.engine
    scenario = load(args.scenario, overrides)
    seed = scenario.run.seed if args.seed is None else args.seed
    out = Path(args.out) if args.out else Path("runs") / f"{scenario.name}-seed{seed}"
    _check_out(out)
    with progress_bar(scenario.run.days, quiet=args.quiet, label=scenario.name) as bar:
        result = run_scenario(scenario, seed, progress=bar)
    written = write_run(
        result, out, command=command_line(), plots=scenario.output.plots and not args.no_plots
    )
    s = result.summary
    if not args.quiet:
        print(
            f"{scenario.name}: {s['nodes']:,} nodes, {scenario.run.days:g} days, "
            f"policy {s['policy']}, seed {seed}: wall {result.wall_seconds:.1f} s"
        )
        print(
            f"  updated: t50 {_h(s['t50_h'])}  t90 {_h(s['t90_h'])}  t95 {_h(s['t95_h'])}  "
            f"t99 {_h(s['t99_h'])}  ({s['updated_final']:,} of {s['in_scope_seen']:,} in-scope "
            f"nodes seen online)"
        )
        print(
            f"  spare capacity: min {s.get('spare_min', float('nan')):.3f}, "
            f"{s['minutes_below_floor']:g} min below the floor; peak departures "
            f"{s['peak_departures']:,} (budget {s['departure_budget']:g})"
        )
        if "origin_bytes" in s:
            print(
                f"  artifact: {s['fetches']:,} fetches (mean {s['prefetch_mean_s']:.1f} s); origin "
                f"{s['origin_bytes'] / 2**20:,.1f} MiB ({s['origin_share']:.2e} of delivered), "
                f"peak {s['peak_origin_mbit_s']:.2f} Mbit/s; relayed {s['relayed_share']:.3f} "
                f"of peer bytes ({s['relayed_bytes'] / 2**30:,.1f} GiB)"
            )
        print(f"  wrote {len(written)} files to {out}/")
    return 0


def _h(x: float) -> str:
    return "never" if x != x else f"{x:.2f} h"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ScenarioError(f"--out {out}: exists and is not a directory")


def _check(args: argparse.Namespace) -> int:
    scenario = load(args.scenario, _parse_set(args.set))
    sys.stdout.write(to_toml(resolve(scenario)))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    return run_sweep(
        Path(args.sweep),
        jobs=args.jobs,
        scheduler=args.scheduler,
        out=Path(args.out) if args.out else None,
        quiet=args.quiet,
    )


def _gossip(argv: list[str]) -> int:
    """``gossip ...``: the gossip simulator parses its own arguments."""
    return gossip.main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m simulations", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run one scenario and write its results")
    r.add_argument("scenario", help="scenario TOML file")
    r.add_argument("--seed", type=int, help="seed (default: [run] seed, else 1)")
    r.add_argument("--out", help="output directory (default: runs/NAME-seedN)")
    r.add_argument("--engine", choices=("tick", "exact"), help="override [run] engine")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TABLE.KEY=VALUE",
        help="override a scenario value (repeatable), e.g. --set policy.kind=fleetlock",
    )
    r.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    r.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    r.set_defaults(handler=_run)

    s = sub.add_parser("sweep", help="run a grid of scenarios and compare them")
    s.add_argument("sweep", help="sweep TOML file")
    s.add_argument("--jobs", type=int, default=2, help="parallel runs (joblib; default 2)")
    s.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler instead")
    s.add_argument("--out", help="output directory (default: runs/NAME)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(handler=_sweep)

    c = sub.add_parser("check", help="validate a scenario and print it resolved")
    c.add_argument("scenario")
    c.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE")
    c.set_defaults(handler=_check)

    sub.add_parser("gossip", help="the gossip simulator (simulations/gossip.py)", add_help=False)
    sub.add_parser("swarm", help="the chunk-swarm simulator (simulations/swarm.py)", add_help=False)
    sub.add_parser(
        "calibrate-swarm",
        help="rerun the swarm runs behind the artifact model and print its fit (JSON)",
        add_help=False,
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "gossip":
        return _gossip(argv[1:])
    if argv and argv[0] == "swarm":
        return swarm.main(argv[1:])
    if argv and argv[0] == "calibrate-swarm":
        return artifacts.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except ScenarioError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except OSError as exc:
        sys.stderr.write(f"error: {exc.filename or ''}: {exc.strerror}\n")
        return 1
