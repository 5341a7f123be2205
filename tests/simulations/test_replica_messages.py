"""The per-replica message rate (P11): the simulator counts what ``core.reporting`` sends."""

from __future__ import annotations

import numpy as np
import pytest

from p2pupdate.core import reporting
from simulations.metrics import SESSION_MESSAGES, replica_messages, reports_along
from tests.simulations.test_engines import run, scenario


def test_reports_along_follows_the_core_rule() -> None:
    assert reports_along(("serving",), first=True) == 1  # the first report at start
    assert reports_along(("serving", "serving")) == 0  # nothing changed: nothing sent
    assert reports_along(("asking", "serving")) == 2
    assert reports_along(("probation", "serving"), first=True) == 2


def test_a_quiet_million_costs_the_heartbeat_budget() -> None:
    """No events, every node online: the heartbeats alone, at the budget (each report in
    its own session)."""
    n = 1_000_000
    series = {
        "online": np.array([float(n)] * 3),
        "arrivals": np.zeros(3),
        "asks": np.zeros(3),
        "grants": np.zeros(3),
    }
    got = replica_messages(series, n_nodes=n, pools=1, sample_dt=60.0)
    assert got.tolist() == pytest.approx([reporting.DEFAULT_BUDGET * (SESSION_MESSAGES + 1)] * 3)
    series["asks"] = np.array([0.0, 600.0, 0.0])  # 10 asks/s in the second minute
    got = replica_messages(series, n_nodes=n, pools=1, sample_dt=60.0)
    per_ask = SESSION_MESSAGES + 1 + 2
    assert got[1] - got[0] == pytest.approx(10.0 * per_ask)


def test_every_summary_has_the_message_columns() -> None:
    summary = run(scenario())[1]
    mean, peak = summary["replica_msgs_per_s_mean"], summary["replica_msgs_per_s_peak_minute"]
    assert 0.0 < mean <= peak
    # 2,000 nodes: the 30 s floor binds; the asks are part of the messages
    assert mean >= summary["asks_per_s_mean"]
