"""``core.reporting``: report on change, heartbeat under the replica's budget (P11)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p2pupdate.core import coordproto as proto
from p2pupdate.core import reporting as rp
from p2pupdate.core.errors import SchemaError

A = "a" * 64
B = "b" * 64
BASE = rp.Snapshot(version="v1", artifact=A, state="serving")


def test_first_report_and_no_change() -> None:
    assert rp.report_reason(None, BASE) == "first"
    assert rp.report_reason(BASE, BASE) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"version": "v2"}, "version"),
        ({"artifact": B}, "artifact"),
        ({"state": "draining"}, "state"),
        ({"held": ("scope", "not-selected")}, "held"),
    ],
)
def test_each_change_is_a_reason(change: dict[str, object], reason: str) -> None:
    now = rp.Snapshot(**{**_fields(BASE), **change})  # type: ignore[arg-type]
    assert rp.report_reason(BASE, now) == reason


def test_estimate_moves_are_no_reason_by_default() -> None:
    """A converged push-sum estimate moves at every node of the pool at once: reporting on
    it would make the whole pool report together, so by default it is no reason."""
    old = rp.Snapshot(**{**_fields(BASE), "estimate": (100.0, 50.0, 10)})  # type: ignore[arg-type]
    new = rp.Snapshot(**{**_fields(BASE), "estimate": (100.0, 90.0, 10)})  # type: ignore[arg-type]
    assert rp.report_reason(old, new) is None
    assert rp.report_reason(old, new, estimate_change=0.5) == "estimate"
    assert rp.report_reason(old, new, estimate_change=0.9) is None
    assert rp.report_reason(BASE, new, estimate_change=0.5) == "estimate"


def test_heartbeat_interval_keeps_the_budget() -> None:
    # small fleets keep the old 30 s
    assert rp.heartbeat_interval(10.0) == rp.MIN_HEARTBEAT
    assert rp.heartbeat_interval(6000.0) == rp.MIN_HEARTBEAT
    # 10^6 nodes, 200/s: one heartbeat per node every 5,000 s -> 200 reports/s
    one_m = rp.heartbeat_interval(1e6)
    assert one_m == 5000.0
    assert 1e6 / one_m == rp.DEFAULT_BUDGET
    assert rp.heartbeat_interval(1e6, budget=400.0) == 2500.0
    # past 17 M the daily floor wins over the budget
    assert rp.heartbeat_interval(1e9) == rp.MAX_HEARTBEAT
    with pytest.raises(ValueError, match="budget"):
        rp.heartbeat_interval(1e6, budget=0.0)


def test_small_pool_in_a_large_fleet_keeps_fresh_estimates() -> None:
    """A pool of 100 in a fleet of 10^6: 100 * 180 / 8 = 2,250 s, so ~8 of its estimates
    are younger than the replica's aggregate_max_age on average."""
    interval = rp.heartbeat_interval(1e6, 100.0)
    assert interval == 2250.0
    assert 100.0 * rp.POOL_MAX_AGE / interval == rp.FRESH_PER_POOL
    assert rp.heartbeat_interval(1e6, 1e6) == 5000.0
    assert rp.heartbeat_interval(1e6, 1.0) == rp.MIN_HEARTBEAT
    assert rp.heartbeat_interval(1e6, 100.0, max_age=math.inf) == 5000.0


def test_heartbeat_interval_on_arrays() -> None:
    got = rp.heartbeat_interval(np.array([10.0, 1e6, 1e9]), maximum=np.maximum, minimum=np.minimum)
    assert got.tolist() == [rp.MIN_HEARTBEAT, 5000.0, rp.MAX_HEARTBEAT]


def test_heartbeat_delay_is_spread_around_the_interval() -> None:
    assert rp.heartbeat_delay(100.0, 0.0) == 50.0
    assert rp.heartbeat_delay(100.0, 0.5) == 100.0
    assert rp.heartbeat_delay(100.0, 0.999) < 150.0


def test_status_ack_on_the_wire() -> None:
    """The answer a replica gives a status report carries the interval; a node still
    takes a plain ``Ack`` (an older replica)."""
    ack = proto.StatusAck(next_report_s=5000.0, allowlist=3, scope=2)
    wire = ack.to_wire()
    assert wire == {"ok": True, "next_report_s": 5000.0, "allowlist": 3, "scope": 2}
    assert proto.answer_of("status", {**wire, "id": 3}) == ack
    assert proto.answer_of("status", {"ok": True, "id": 3}) == proto.Ack()
    for bad in (0.0, -1.0, float(proto.MAX_REPORT_S) + 1.0, "x", math.nan):
        with pytest.raises(SchemaError):
            proto.answer_of("status", {**wire, "next_report_s": bad})


def test_documents_behind() -> None:
    assert rp.documents_behind(None, None, 1, 0)
    assert not rp.documents_behind(None, None, 0, 0)
    assert not rp.documents_behind(3, 2, 3, 2)
    assert rp.documents_behind(3, 2, 3, 5)
    assert not rp.documents_behind(4, 2, 3, 2)  # a replica behind the node: nothing to fetch


def _fields(s: rp.Snapshot) -> dict[str, object]:
    return {
        "version": s.version,
        "artifact": s.artifact,
        "state": s.state,
        "held": s.held,
        "estimate": s.estimate,
    }
