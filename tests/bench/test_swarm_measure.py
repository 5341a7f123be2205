"""The swarm bench's figures (``scripts/bench/_swarm_measure.py``): the bound, the cap check.

The bench itself needs root, 50 namespaces and a minute or two (it is a bench, not a test);
what it computes from its readings is checked here on readings written by hand.
"""

from __future__ import annotations

import pytest

from scripts.bench._swarm_measure import CAP_WINDOW_S, Run, figures, peak_upload, t_min

MiB = 1024 * 1024
RATES = {"origin_up": 2 * MiB, "peer_up": MiB / 2, "peer_down": 2.5 * MiB}


def test_the_bound_of_the_issue() -> None:
    # N=24, 16 MiB, origin 2 MiB/s, peers up 0.5 down 2.5: the fleet's upload bounds it.
    assert t_min(24, 16 * MiB, **RATES) == pytest.approx(24 * 16 / (2 + 24 * 0.5))
    # One node: the origin's uplink (8 s) over its downlink (6.4 s).
    assert t_min(1, 16 * MiB, **RATES) == pytest.approx(8.0)


def test_peak_upload_is_over_windows_of_at_least_the_window() -> None:
    steady = [(float(t), t * 500_000) for t in range(0, 21, 2)]
    assert peak_upload(steady) == pytest.approx(500_000)
    assert CAP_WINDOW_S == 10.0
    # A burst of 2 MB within 2 s counts over its 10 s window, not as 1 MB/s.
    bursty = [(0.0, 0), (2.0, 0), (4.0, 2_000_000), *((float(t), 2_000_000) for t in range(6, 16))]
    assert peak_upload(bursty) == pytest.approx(2_000_000 / 10)
    assert peak_upload([(0.0, 0), (1.0, 10**9)]) == 0.0  # no window long enough


def _run(completed: dict[str, float | None], samples: dict[str, list[tuple[float, int]]]) -> Run:
    return Run(nodes=2, artifact_bytes=MiB, origin_bytes=3 * MiB // 2, t0=100.0,
               completed_at=completed, samples=samples)  # fmt: skip


def test_figures_of_a_complete_run() -> None:
    fast = [(100.0, 0), (110.0, 10 * 500_000)]
    f = figures(_run({"a": 101.0, "b": 103.5}, {"a": fast, "b": []}), upload_cap=MiB / 2,
                **RATES)  # fmt: skip
    assert f["nodes"] == 2 and f["artifact_bytes"] == MiB
    assert f["origin_copies"] == 1.5 and f["origin_share"] == 0.75
    assert f["t_all_s"] == 3.5 and f["t_first_s"] == 1.0
    assert f["t_min_s"] == round(t_min(2, MiB, **RATES), 2)
    assert f["bound_ratio"] == round(3.5 / t_min(2, MiB, **RATES), 3)
    assert f["upload_cap_respected"] is True
    assert f["peer_bytes_up"] == 5_000_000
    assert f["peer_upload_use"] == round(5_000_000 / (2 * MiB / 2 * 3.5), 3)


def test_figures_say_so_when_a_node_never_completed_or_went_over_its_cap() -> None:
    over = [(100.0, 0), (110.0, 10 * 600_000)]
    f = figures(_run({"a": 101.0, "b": None}, {"a": over, "b": []}), upload_cap=MiB / 2,
                **RATES)  # fmt: skip
    assert f["t_all_s"] is None and f["bound_ratio"] is None and f["completed"] == 1
    assert f["upload_cap_respected"] is False
    none = figures(_run({"a": 101.0, "b": 102.0}, {"a": [], "b": []}), upload_cap=MiB / 2,
                   **RATES)  # fmt: skip
    assert none["upload_cap_respected"] is None  # no counters read: not measured


def test_upload_timeline_is_the_peers_use_step_by_step() -> None:
    peer_up = MiB / 2
    # a: idle for 5 s, then at the full rate; b: at half the rate throughout (read every 2 s)
    a = [(100.0, 0), (105.0, 0), (115.0, int(10 * peer_up))]
    b = [(100.0 + t, int(t * peer_up / 2)) for t in range(0, 16, 2)]
    f = figures(_run({"a": 112.0, "b": 112.5}, {"a": a, "b": b}), upload_cap=MiB / 2,
                **RATES)  # fmt: skip
    # steps of 5 s up to t_all (12.5 s): (0 + 0.5) / 2, (1 + 0.5) / 2, and the last 2.5 s
    assert f["upload_timeline"] == [0.25, 0.75, 0.75]
    assert f["t_done_s"] == [12.0, 12.5]
    # a node never read, or read only after the step, adds nothing to it
    late = figures(_run({"a": 102.0, "b": 102.0}, {"a": [(103.0, 5)], "b": []}),
                   upload_cap=MiB / 2, **RATES)  # fmt: skip
    assert late["upload_timeline"] == [0.0]
