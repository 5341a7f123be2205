"""``scripts/bench/swarm_seeds.py``: the simulator over seeds, one JSON object of means."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench" / "swarm_seeds.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True
    )


def test_the_means_are_the_means_of_the_runs() -> None:
    flags = ["--nodes", "4", "--artifact-mib", "0.5"]
    done = run("--seeds", "1-2", "--", *flags)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    singles = []
    for s in (1, 2):
        one = subprocess.run(
            [sys.executable, "-m", "simulations", "swarm", "--json", "--seed", str(s), *flags],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        singles.append(json.loads(one.stdout))
    assert got["runs"] == 2 and got["seeds"] == [1, 2] and got["flags"] == flags
    mean = (singles[0]["t_all_s"] + singles[1]["t_all_s"]) / 2
    assert abs(got["t_all_s"] - mean) < 1e-3
    assert got["t_all_s_max"] == max(x["t_all_s"] for x in singles)


def test_a_bad_range_or_a_failing_run_is_an_error_not_a_traceback() -> None:
    bad = run("--seeds", "9-1")
    assert bad.returncode == 2 and "seed range" not in bad.stdout and "Traceback" not in bad.stderr
    failing = run("--seeds", "1", "--", "--nodes", "0")
    assert failing.returncode == 1 and "seed 1" in failing.stderr
    assert "Traceback" not in failing.stderr
