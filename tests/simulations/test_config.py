"""Scenario validation: every mistake is one line naming the file, table and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulations.config import (
    Scenario,
    ScenarioError,
    apply_overrides,
    load,
    parse,
    resolve,
    to_toml,
)
from simulations.sweep import plan

SCENARIOS = Path(__file__).resolve().parents[2] / "simulations" / "scenarios"


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as info:
        parse(data, source="s.toml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("s.toml")
    return message


def test_defaults_are_valid() -> None:
    s = parse({})
    assert isinstance(s, Scenario)
    assert s.policy.config.utilization == 0.8  # coordinator.policy's default
    assert s.node.updater.check_interval == 3600.0  # p2pupdate.core.updater's default
    assert s.floor_utilization == 0.8


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"runn": {}}, "unknown table [runn]"),
        ({"run": {"nodez": 5}}, "[run]: unknown key 'nodez'"),
        ({"run": {"nodes": "many"}}, "nodes must be an integer, got the string 'many'"),
        ({"run": {"nodes": 1.5}}, "nodes must be an integer"),
        ({"run": {"nodes": 0}}, "nodes must be in [1, "),
        ({"run": {"days": True}}, "days must be a number, got a boolean"),
        ({"run": {"tick_seconds": 7}}, "tick_seconds must divide 60"),
        ({"run": {"engine": "fast"}}, "engine must be one of tick, exact"),
        ({"run": {"engine": "exact", "nodes": 200_000}}, "exact engine is for <= 100,000"),
        ({"churn": {"always_on": 1.5}}, "always_on must be <= 1"),
        ({"churn": {"session": 2}}, "session must be a table"),
        ({"churn": {"session": {"dist": "gamma"}}}, "dist must be one of"),
        ({"churn": {"session": {"dist": "weibull", "sigma": 1}}}, "sigma applies to"),
        ({"churn": {"session": {"median_hours": 1, "median_seconds": 5}}}, "give one of"),
        ({"churn": {"offline": {"median_hours": -1}}}, "median_hours must be > 0"),
        ({"churn": {"timezones": []}}, "timezones must not be empty"),
        ({"churn": {"timezones": [{"weight": 1}]}}, "utc_offset_hours is required"),
        ({"capacity": {"demand": 2}}, "demand must be <= 1"),
        ({"node": {"check_interval": -5.0}}, "UpdaterConfig.check_interval"),
        ({"node": {"drain": {"dist": "fixed", "median_seconds": 0}}}, "must be > 0"),
        ({"rollout": {"stages": [{"scope": "fraction"}]}}, "needs fraction"),
        ({"rollout": {"stages": [{"scope": "everyone", "ramp": [[0, 1]]}]}}, "ramp applies"),
        ({"rollout": {"stages": [{"scope": "fraction", "ramp": []}]}}, "ramp must be a list"),
        ({"rollout": {"stages": [{"scope": "fraction", "ramp": [[0, 2]]}]}}, "ramp[0] must"),
        (
            {"rollout": {"stages": [{"scope": "fraction", "fraction": 0.5, "ramp": [[0, 1]]}]}},
            "must equal the ramp's last",
        ),
        (
            {"rollout": {"stages": [{"scope": "fraction", "ramp": [[2, 0.5], [1, 0.7]]}]}},
            "stages[0]: scope: ramp stage times must strictly increase",
        ),
        (
            {"run": {"days": 1}, "rollout": {"stages": [{"scope": "fraction", "ramp": [[72, 1]]}]}},
            "starts after the scope expires",
        ),
        ({"rollout": {"stages": [{"scope": "everyone", "fraction": 0.5}]}}, "fraction applies"),
        ({"rollout": {"stages": [{"after_hours": 2}, {"after_hours": 1}]}}, "increasing"),
        ({"rollout": {"scope_seed": "zz"}}, "scope_seed must be hex"),
        ({"rollout": {"start_hours": 100}, "run": {"days": 1}}, "past the end of the run"),
        ({"policy": {"kind": "magic"}}, "kind must be one of"),
        ({"policy": {"max_concurrent": 0}}, "max_concurrent must be >= 1"),
        ({"policy": {"lease_ttl": 30}}, "must exceed [node] swap_margin"),
        ({"policy": {"utilization": "high"}}, "utilization must be a number"),
        ({"output": {"plots": "yes"}}, "plots must be true or false"),
    ],
)
def test_mistakes_are_one_line(data: dict[str, Any], needle: str) -> None:
    assert needle in error(data)


def test_units_and_resolved_round_trip(tmp_path: Path) -> None:
    s = parse(
        {
            "churn": {"session": {"dist": "lognormal", "median_minutes": 30, "sigma": 1.5}},
            "rollout": {
                "stages": [
                    {"scope": "fraction", "fraction": 0.05},
                    {"after_hours": 24, "scope": "fraction", "ramp": [[0, 0.1], [12, 1.0]]},
                    {"after_hours": 48},
                ]
            },
            "policy": {"kind": "fleetlock", "max_concurrent": 50},
        }
    )
    assert s.churn.session.median == 1800.0
    assert s.policy.fleetlock_slots == 50  # defaults to max_concurrent
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(resolve(s)))
    again = load(path)
    assert resolve(again) == resolve(s)


def test_overrides_are_dotted_keys() -> None:
    data = apply_overrides(
        {"run": {"nodes": 5}}, {"run.days": 3, "policy.kind": "push"}, source="x"
    )
    assert data == {"run": {"nodes": 5, "days": 3}, "policy": {"kind": "push"}}
    with pytest.raises(ScenarioError, match=r"table\.key"):
        apply_overrides({}, {"nodes": 5}, source="x")


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_scenarios_are_valid(path: Path) -> None:
    if path.name.startswith("sweep-"):
        _, jobs, _, _ = plan(path)  # builds and validates every run of the sweep
        assert jobs
    else:
        load(path)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nnodes = 1\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(bad)
