"""``python -m simulations``: run, sweep, check, gossip dispatch, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulations import cli
from simulations import gossip as gossip_sim
from simulations.config import load

REPO = Path(__file__).resolve().parents[2]

TINY = """
[run]
nodes = 400
days = 0.25
[rollout]
start_hours = 0.5
nudge = true
[policy]
max_concurrent = 20
"""


def sim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


def one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr


def test_run_writes_everything(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "out"
    proc = sim("run", str(scenario), "--seed", "5", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "tiny: 400 nodes" in proc.stdout
    assert proc.stderr == ""  # no progress bar when stderr is not a terminal
    names = {p.name for p in out.iterdir()}
    assert names == {
        "scenario.resolved.toml",
        "run.json",
        "timeseries.csv",
        "summary.csv",
        "updated.png",
        "spare.png",
        "departures.png",
    }
    meta = json.loads((out / "run.json").read_text())
    assert meta["seed"] == 5 and meta["versions"]["numpy"]
    assert meta["config"]["policy"]["max_concurrent"] == 20
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 1 and rows[0]["seed"] == "5" and rows[0]["policy"] == "ours"
    series = list(csv.DictReader((out / "timeseries.csv").open()))
    assert len(series) == 6 * 60 + 1 and series[-1]["minute"] == "360"
    assert (out / "updated.png").read_bytes()[:4] == b"\x89PNG"
    again = load(out / "scenario.resolved.toml")  # the resolved config runs again
    assert again.run.seed == 5 and again.policy.config.max_concurrent == 20


def test_run_with_the_artifact_model_writes_origin_egress(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        TINY + "[artifact]\nsize_mib = 4\n[links]\nstrict = 0.3\nopen = 0.1\ncone = 0.6\n"
    )
    out = tmp_path / "out"
    proc = sim("run", str(scenario), "--seed", "5", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "artifact: " in proc.stdout and "Mbit/s" in proc.stdout
    assert (out / "origin.png").read_bytes()[:4] == b"\x89PNG"
    row = next(csv.DictReader((out / "summary.csv").open()))
    assert float(row["origin_bytes"]) > 0 and float(row["relayed_bytes"]) > 0
    assert float(row["natted_direct_share"]) == pytest.approx(0.70, abs=1e-6)
    series = list(csv.DictReader((out / "timeseries.csv").open()))
    sent = sum(float(r["origin_bytes"]) for r in series)
    assert sent == pytest.approx(float(row["origin_bytes"]), rel=1e-4)
    again = load(out / "scenario.resolved.toml")
    assert again.artifact is not None and again.artifact.size_mib == 4
    assert again.links is not None and again.links.strict == 0.3


def test_calibrate_swarm_is_dispatched(monkeypatch: pytest.MonkeyPatch) -> None:
    from simulations import artifacts

    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    monkeypatch.setattr(artifacts, "main", fake_main)
    assert cli.main(["calibrate-swarm", "--quick"]) == 3
    assert seen == [["--quick"]]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--set", "run.nodez=5"], "unknown key 'nodez'"),
        (["--set", "run.nodes=lots"], "nodes must be an integer"),
        (["--set", "policy.utilization=1.5"], "utilization must be in (0, 1]"),
        (["--seed", "x"], "invalid int value"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_mistakes_exit_2_with_one_line(tmp_path: Path, extra: list[str], needle: str) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    one_line_error(sim("run", str(scenario), *extra, cwd=tmp_path), needle)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    one_line_error(sim("run", "nope.toml", cwd=tmp_path), "nope.toml: no such file")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nnodes = [1,\n")
    one_line_error(sim("check", str(bad), cwd=tmp_path), "not valid TOML")


def test_check_prints_the_resolved_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    assert cli.main(["check", str(scenario), "--set", "policy.kind=fleetlock"]) == 0
    out = capsys.readouterr().out
    assert 'kind = "fleetlock"' in out and "check_interval = 3600.0" in out


def test_gossip_is_dispatched_to_the_gossip_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """``gossip ARGS`` hands ARGS, unparsed, to ``simulations.gossip.main``."""
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    monkeypatch.setattr(gossip_sim, "main", fake_main)
    assert cli.main(["gossip", "--nodes", "10"]) == 7
    assert seen == [["--nodes", "10"]]


def test_sweep_compares_runs(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "sweep.toml").write_text(
        """
[sweep]
base = "tiny.toml"
seeds = [1]
[set]
"run.nodes" = 300
[grid]
"policy.kind" = ["ours", "push"]
"""
    )
    out = tmp_path / "cmp"
    proc = sim("sweep", "sweep.toml", "--jobs", "2", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["label"] for r in rows] == ["kind=ours_seed1", "kind=push_seed1"]
    assert {r["policy"] for r in rows} == {"ours", "push"}
    assert (out / "comparison.png").exists() and "| label |" in (out / "comparison.md").read_text()
    assert (out / "runs" / "kind=push_seed1" / "summary.csv").exists()


def test_sweep_is_validated_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "sweep.toml").write_text(
        '[sweep]\nbase = "tiny.toml"\n[grid]\n"policy.kind" = ["ours", "pushy"]\n'
    )
    one_line_error(sim("sweep", "sweep.toml", cwd=tmp_path), "kind must be one of")
    assert not (tmp_path / "runs").exists()
