#!/usr/bin/env python3
"""Asks per second through a real coordinator replica over loopback (one JSON object).

    .venv/bin/python scripts/bench/asks.py [--asks 20000] [--concurrency 64]

The same as ``p2pupdate-coordinator bench --json`` (``coordinator/bench.py`` documents what
is measured); kept here next to the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from coordinator.bench import run_bench


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--asks", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--profile", metavar="FILE", help="cProfile the server into FILE")
    args = p.parse_args()
    print(json.dumps(run_bench(asks=args.asks, concurrency=args.concurrency, profile=args.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
