#!/usr/bin/env python3
"""The swarm simulator over several seeds: one JSON object of means (and the spread).

    .venv/bin/python scripts/bench/swarm_seeds.py [--seeds 1-8] -- [simulator flags]

Runs ``python -m simulations swarm --json --seed S [simulator flags]`` for each seed, one
after the other (each run is single-threaded and deterministic in simulated time, so the
machine's other load changes only ``wall_s``), and prints ``runs``, the mean of ``t_all_s``,
``bound_ratio``, ``origin_copies``, ``origin_share`` and ``rejects``, ``t_all_s_sd`` and
``t_all_s_max``, and the flags.  A seed that does not verify every node is an error (exit 1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MEANS = ("t_all_s", "bound_ratio", "origin_copies", "origin_share", "rejects")


def seeds(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    try:
        first, last = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed range like 1-8") from None
    if not 0 <= first <= last or last - first >= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a range of at most 100 seeds, low-high")
    return list(range(first, last + 1))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="swarm_seeds.py",
        description="Run the swarm simulator over several seeds and print the means as JSON.",
        epilog="Flags after -- go to `python -m simulations swarm` (e.g. --latency-ms 250).",
    )
    ap.add_argument("--seeds", type=seeds, default=seeds("1-8"), help="low-high (1-8)")
    args, rest = ap.parse_known_args(argv)
    flags = [a for a in rest if a != "--"]
    runs = []
    for s in args.seeds:
        cmd = [sys.executable, "-m", "simulations", "swarm", "--json", "--seed", str(s), *flags]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"swarm_seeds: seed {s}: {done.stderr.strip()[-500:]}", file=sys.stderr)
            return 1
        got = json.loads(done.stdout)
        if got.get("all_verified") is not True:
            print(f"swarm_seeds: seed {s}: not every node verified", file=sys.stderr)
            return 1
        runs.append(got)
        print(f"swarm_seeds: seed {s}: t_all_s {got['t_all_s']}", file=sys.stderr)
    out: dict[str, object] = {"runs": len(runs), "seeds": args.seeds, "flags": flags}
    for k in MEANS:
        out[k] = round(statistics.mean(float(r[k]) for r in runs), 4)
    times = [float(r["t_all_s"]) for r in runs]
    out["t_all_s_sd"] = round(statistics.pstdev(times), 2)
    out["t_all_s_max"] = max(times)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
