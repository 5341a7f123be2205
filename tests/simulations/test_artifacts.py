"""The artifact swarm model (simulations/artifacts.py): its calibration against the swarm
simulator, monotonicity, and the fleet runs that use it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from simulations.artifacts import (
    CALIBRATION_DATA,
    FIT,
    FIT_RESIDUALS,
    MIB,
    OUT_OF_SAMPLE,
    SwarmModel,
    fit_runs,
    residuals,
    run_point,
)
from simulations.config import ScenarioError, parse
from simulations.exact import EventEngine
from simulations.model import Model
from simulations.runner import run_scenario
from simulations.tick import TickEngine


def model(
    *, origin_up: float = 2 * MIB, peer_up: float = 0.5 * MIB, peer_down: float = 2.5 * MIB
) -> SwarmModel:
    return SwarmModel(size=16 * MIB, origin_up=origin_up, peer_up=peer_up, peer_down=peer_down)


def test_fit_is_what_the_stored_runs_give() -> None:
    fit, resid = fit_runs(CALIBRATION_DATA)
    for name in ("a", "b", "c", "b0", "b1", "spread", "k"):
        assert getattr(fit, name) == pytest.approx(getattr(FIT, name), rel=1e-3), name
    for key, bound in FIT_RESIDUALS.items():
        assert resid[key] == pytest.approx(bound, abs=1e-3), key


def test_calibration_residual_bounds() -> None:
    resid = residuals(FIT, CALIBRATION_DATA)
    assert resid["t_all_rel_max"] < 0.05  # t_all within 5% on every run
    assert resid["origin_copies_rel_max"] < 0.25  # origin copies within 25%
    # out of sample (N = 10,000, README "swarm simulator"): within 5% both
    m = model()
    n = OUT_OF_SAMPLE["nodes"]
    assert abs(float(m.t_all(n)) / OUT_OF_SAMPLE["t_all_s"] - 1) < 0.05
    assert abs(float(m.origin_copies(n)) / OUT_OF_SAMPLE["origin_copies"] - 1) < 0.05


def test_a_live_swarm_run_agrees_with_the_model() -> None:
    run = run_point(24, 0.5)  # the real cores, ~2 s
    assert run["all_verified"]
    m = model()
    assert abs(float(m.t_all(24)) / run["t_all_s"] - 1) < 0.05
    copies = run["origin_bytes"] / run["artifact_bytes"]
    assert abs(float(m.origin_copies(24)) / copies - 1) < 0.25


def test_model_monotonicity() -> None:
    m = model()
    n = np.array([1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7])
    t = m.t_all(n)
    assert (np.diff(t) > 0).all()  # a bigger release-day swarm takes longer...
    copies = m.origin_copies(n)
    assert (np.diff(copies) >= 0).all()  # ...costs the origin more copies...
    share = copies / n
    assert (np.diff(share) < 0).all()  # ...but a smaller share of what it delivers
    assert float(copies[0]) == 1.0  # one node alone fetches all from the origin
    # faster peers: sooner; a faster origin: sooner
    assert float(model(peer_up=1 * MIB).t_all(1e5)) < float(m.t_all(1e5))
    assert float(model(origin_up=8 * MIB).t_all(10)) < float(m.t_all(10))
    # seeders: never slower, and the origin gives a joiner less
    s = np.array([0, 10, 1e3, 1e5])
    assert (np.diff(m.t_all(100, s)) <= 0).all()
    assert (np.diff(m.origin_bytes_per_node(100, s)) < 0).all()
    # the origin never sends faster than its uplink
    assert (m.origin_copies(n) * m.size / m.t_all(n) <= m.origin_up * 1.000001).all()
    # a node's time is within the swarm's completion window, the last at t_all
    q = np.linspace(0, 1, 11)
    times = m.node_time(q, 1000)
    assert times.max() == pytest.approx(float(m.t_all(1000)))
    assert times.min() == pytest.approx(float(m.t_all(1000)) * (1 - FIT.spread))
    assert (np.diff(times) <= 0).all()


def tables(nodes: int = 4000, **extra: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "run": {"nodes": nodes, "days": 1.0},
        "rollout": {"start_hours": 1, "nudge": True},
        "policy": {"max_concurrent": 200},
    }
    data.update(extra)
    return data


NEW_KEYS = ("origin_bytes", "origin_share", "peak_origin_mbit_s", "relayed_bytes")


def test_scenarios_without_the_new_tables_run_as_before() -> None:
    # figures of this scenario measured on the commit before [links] / [artifact] existed
    # (with that commit's policy: the flat queued wait and the breaker's share of grants,
    # since adopted otherwise -- README "What the simulations say about the core")
    old_rules = {"queue_retry_max": 60.0, "breaker_in_flight": 1.0}
    s = parse(
        {
            "run": {"nodes": 3000, "days": 1.0},
            "rollout": {"start_hours": 1, "nudge": True},
            "policy": {"max_concurrent": 100, **old_rules},
        }
    )
    r = run_scenario(s, 5)
    got = {k: r.summary[k] for k in ("asks_total", "attempted", "updated_final", "t50_h")}
    assert got == {"asks_total": 7561, "attempted": 2201, "updated_final": 2192, "t50_h": 0.75}
    assert r.summary["spare_min"] == pytest.approx(0.29016376811130057, rel=1e-12)
    assert int(r.series["checks"].sum()) == 11042
    assert not any(k in r.summary for k in (*NEW_KEYS, "direct_share_expected"))
    assert "origin_bytes" not in r.series
    # [links] alone adds the mix's figures and changes nothing else
    with_links = run_scenario(parse({**s_data(s), "links": {}}), 5)
    same = {k: v for k, v in with_links.summary.items() if k in r.summary}
    assert {k: v for k, v in same.items() if k != "wall_seconds"} == {
        k: v for k, v in r.summary.items() if k != "wall_seconds"
    }
    assert with_links.summary["natted_direct_share"] == pytest.approx(0.70)


def s_data(s: Any) -> dict[str, Any]:
    return {
        "run": {"nodes": s.run.nodes, "days": s.run.days},
        "rollout": {"start_hours": 1, "nudge": True},
        "policy": {"max_concurrent": 100, "queue_retry_max": 60.0, "breaker_in_flight": 1.0},
    }


def test_a_release_day_run_reports_origin_egress_and_relayed_bytes() -> None:
    s = parse(tables(artifact={"size_mib": 16}))
    base = run_scenario(parse(tables()), 2)
    r = run_scenario(s, 2)
    summ, series = r.summary, r.series
    for key in (*NEW_KEYS, "relayed_share", "fetches", "replica_msgs_per_s_mean"):
        assert key in summ and not (isinstance(summ[key], float) and math.isnan(summ[key])), key
    # the same churn: the swarm model changes prefetch times only
    assert (series["online"] == base.series["online"]).all()
    # the origin's bytes over time add up to its total
    assert float(series["origin_bytes"].sum()) == pytest.approx(summ["origin_bytes"], rel=1e-6)
    assert summ["peak_origin_mbit_s"] == pytest.approx(
        float(series["origin_mbit_s"].max()), rel=1e-9
    )
    assert summ["peak_origin_mbit_s"] <= 2 * MIB * 8 / 1e6  # the origin's uplink
    # everyone nudged at the start: the peak is in the rollout's first minutes
    peak_h = float(series["hours"][int(np.argmax(series["origin_bytes"]))])
    assert 1.0 < peak_h <= 1.1
    assert summ["peak_fetching"] > 1000
    assert 0.0 < summ["origin_share"] < 0.01
    assert summ["relayed_share"] == pytest.approx(summ["relayed_share_expected"], abs=0.02)
    assert summ["relayed_bytes"] == pytest.approx(summ["peer_bytes"] * summ["relayed_share"])
    assert summ["fetches"] * 16 * MIB == pytest.approx(summ["origin_bytes"] + summ["peer_bytes"])
    # the swarm is slower than a lone fetch but a minute or so, not hours
    assert 20.0 < summ["prefetch_max_s"] < 120.0


def test_relayed_links_that_run_slower_lengthen_the_prefetch() -> None:
    a = Model(parse(tables(artifact={})))
    b = Model(parse(tables(artifact={}, links={"relay_rate": 0.25})))
    assert a.swarm is not None and b.swarm is not None
    assert b.swarm.peer_up < a.swarm.peer_up
    assert float(b.swarm.t_all(1e5)) > float(a.swarm.t_all(1e5))


def test_both_engines_run_the_artifact_model() -> None:
    s = parse(tables(nodes=1500, artifact={}))
    tick = TickEngine(Model(s))
    tick.run()
    exact = EventEngine(Model(s))
    exact.run()
    assert tick.art is not None and exact.art is not None
    assert tick.art.fetches > 0 and exact.art.fetches > 0
    assert abs(tick.art.fetches / exact.art.fetches - 1) < 0.05
    assert tick.art.fetching >= 0 and exact.art.fetching >= 0
    # holders: online nodes that fetched, counted incrementally
    assert tick.art.holders == int((tick.online & tick.prefetched).sum())
    assert exact.art.holders == int((exact.online & exact.prefetched).sum())


def test_artifact_table_validation() -> None:
    for key in ("size_mib", "origin_up_mib_s", "peer_up_mib_s", "peer_down_mib_s"):
        with pytest.raises(ScenarioError, match=rf"\[artifact\]: {key} must be > 0"):
            parse({"artifact": {key: 0}}, source="s.toml")
    with pytest.raises(ScenarioError, match="unknown key 'size'"):
        parse({"artifact": {"size": 3}}, source="s.toml")
