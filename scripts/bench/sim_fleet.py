"""Time the 10^6-node week (or any scenario) a few times; prints one JSON object.

    .venv/bin/python scripts/bench/sim_fleet.py [SCENARIO.toml] [--repeat 3] [--seed 1]

Each repeat runs ``python -m simulations run SCENARIO --quiet`` under ``/usr/bin/time -v``
in a fresh process (so peak RSS is that run's alone) and records wall time and maximum
resident set size, with the load average before it: other work on the machine shows up
as spread, so report the best and the spread.  The issue's target for
``simulations/scenarios/fleet-1m.toml``: <= 60 s wall and <= 1 GB peak RSS on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def one(scenario: Path, seed: int) -> dict[str, float]:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [
                "/usr/bin/time",
                "-v",
                sys.executable,
                "-m",
                "simulations",
                "run",
                str(scenario),
                "--seed",
                str(seed),
                "--out",
                out,
                "--quiet",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if wall is None or rss is None:
        raise SystemExit(f"cannot read /usr/bin/time output:\n{proc.stderr}")
    h, m, s = wall.groups()
    seconds = int(h or 0) * 3600 + int(m) * 60 + float(s)
    return {"wall_s": seconds, "max_rss_mb": int(rss.group(1)) / 1024, "load_before": load}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", nargs="?", default=str(REPO / "simulations/scenarios/fleet-1m.toml"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs /usr/bin/time (apt-get install -y time)")
    runs = [one(Path(args.scenario), args.seed) for _ in range(args.repeat)]
    walls = [r["wall_s"] for r in runs]
    print(
        json.dumps(
            {
                "scenario": args.scenario,
                "cpu_count": os.cpu_count(),
                "runs": runs,
                "wall_best_s": min(walls),
                "wall_worst_s": max(walls),
                "max_rss_mb": max(r["max_rss_mb"] for r in runs),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
