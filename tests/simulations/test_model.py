"""The model's pieces: counter-based draws, churn distributions, the diurnal clock, gates."""

from __future__ import annotations

import numpy as np
import pytest

from p2pupdate.core.gates import in_scope
from simulations.churn import DiurnalClock, cdf, from_uniform, stationary_online_share
from simulations.config import HOUR, Dist, parse
from simulations.model import EPOCH, Model, node_id
from simulations.rng import Streams, counter_uniform, counter_uniform_scalar


def test_counter_draws_are_pure_functions_of_stream_node_counter() -> None:
    s = Streams(7)
    nodes = np.arange(1000, dtype=np.int64)
    a = s.uniform("session", nodes, 3)
    b = s.uniform("session", nodes[::-1], 3)[::-1]  # order does not matter
    assert np.array_equal(a, b)
    assert not np.array_equal(a, s.uniform("session", nodes, 4))
    assert not np.array_equal(a, s.uniform("offline", nodes, 3))
    assert not np.array_equal(a, Streams(8).uniform("session", nodes, 3))
    key = int(s.key("session"))
    assert all(counter_uniform_scalar(key, i, 3) == a[i] for i in range(0, 1000, 97))
    u = counter_uniform(s.key("jitter"), np.arange(200_000, dtype=np.int64), 0)
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005
    z = s.normal("drain", np.arange(200_000, dtype=np.int64), 0)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01


@pytest.mark.parametrize(
    "dist",
    [
        Dist(dist="weibull", median=7200.0, shape=0.6),
        Dist(dist="lognormal", median=600.0, sigma=1.2),
        Dist(dist="exponential", median=50.0),
    ],
    ids=lambda d: d.dist,
)
def test_draws_have_the_configured_median_and_cdf(dist: Dist) -> None:
    s = Streams(1)
    nodes = np.arange(100_000, dtype=np.int64)
    x = from_uniform(dist, s.uniform("session", nodes, 0), s.normal("session", nodes, 0))
    assert abs(np.median(x) / dist.median - 1.0) < 0.03
    assert abs(float(cdf(dist, np.array([dist.median]))[0]) - 0.5) < 1e-9
    assert abs(x.mean() / dist.mean - 1.0) < 0.1


def test_diurnal_clock_inverts_the_integrated_rate() -> None:
    clock = DiurnalClock(0.25, 19.0)
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 5 * 86400, 1000)
    d = rng.exponential(8 * HOUR, 1000)
    tz = rng.choice([-6 * HOUR, 1 * HOUR, 8 * HOUR], 1000)
    end = clock.wall_end(t, d, tz)
    assert np.all(end >= t)
    assert np.allclose(clock.integrated(end, tz) - clock.integrated(t, tz), d, atol=1e-3)
    assert np.array_equal(DiurnalClock(0.0, 19.0).wall_end(t, d, tz), t + d)


def test_arrivals_follow_the_local_day() -> None:
    """A time-changed exponential return has density rate(t) * exp(-Lambda(t) / mean):
    the share of returns within 6 h of the local peak matches that integral."""
    clock = DiurnalClock(0.25, 19.0)
    mean = 3 * 86400.0
    zero = np.zeros(200_000)
    d = np.random.default_rng(1).exponential(mean, 200_000)
    end = clock.wall_end(zero, d, zero)

    def near_peak(t: np.ndarray) -> np.ndarray:
        local = (t % 86400) / HOUR
        return np.abs(((local - 19.0 + 12.0) % 24.0) - 12.0) < 6.0

    grid = np.arange(0.0, 60 * 86400.0, 10.0)
    tz = np.zeros(len(grid))
    density = clock.rate(grid, tz) * np.exp(
        -(clock.integrated(grid, tz) - clock.integrated(np.zeros(1), np.zeros(1))) / mean
    )
    expected = float((density * near_peak(grid)).sum() / density.sum())
    assert expected > 0.53  # the modulation is visible...
    assert abs(near_peak(end).mean() - expected) < 0.005  # ...and the draws follow it


def test_start_is_in_equilibrium() -> None:
    s = parse({"run": {"nodes": 50_000, "seed": 3}})
    m = Model(s)
    p_on = stationary_online_share(s.churn.session, s.churn.offline)
    expected = s.churn.always_on + (1 - s.churn.always_on) * p_on
    assert abs(m.population.online.mean() - expected) < 0.01
    assert np.all(
        np.isinf(m.population.churn_t[m.population.always_on & ~np.isfinite(m.population.depart_t)])
    )


def test_gate_view_is_the_real_in_scope() -> None:
    s = parse(
        {
            "run": {"nodes": 3000},
            "rollout": {
                "start_hours": 1,
                "stages": [
                    {"scope": "nodes", "nodes": 40},
                    {"after_hours": 2, "scope": "fraction", "fraction": 0.2},
                    {"after_hours": 4, "scope": "nobody"},
                ],
            },
        }
    )
    m = Model(s)
    g = m.gates
    nodes = np.arange(3000, dtype=np.int64)
    ok, codes = g.evaluate(nodes, 0.5 * HOUR)
    assert not ok.any() and {g.labels[c] for c in codes} == {("scope", "no-scope")}
    for t, stage in ((1.5 * HOUR, 0), (3.5 * HOUR, 1)):
        ok, codes = g.evaluate(nodes, t)
        scope = g.scopes[stage]
        real = [
            in_scope(node_id(i), scope.artifact, scope=scope, now=EPOCH + int(t)).ok
            for i in range(3000)
        ]
        assert ok.tolist() == real
    assert ok.mean() == pytest.approx(0.2, abs=0.03)
    ok, codes = g.evaluate(nodes, 5 * HOUR)
    assert not ok.any() and {g.labels[c] for c in codes} == {("scope", "scope-nobody")}


def test_gate_view_follows_a_signed_ramp_with_the_real_gate() -> None:
    """One fraction stage carrying a ramp: the simulator's membership at every time is the
    real ``in_scope`` on the real signed scope (nobody before the first step, then each
    step's fraction), and the admitted set only grows."""
    s = parse(
        {
            "run": {"nodes": 3000},
            "rollout": {
                "start_hours": 1,
                "stages": [
                    {"scope": "fraction", "ramp": [[1, 0.05], [3, 0.3], [6, 1.0]]},
                ],
            },
        }
    )
    g = Model(s).gates
    scope = g.scopes[0]
    assert scope.fraction == 1.0 and scope.ramp == ((3600, 0.05), (10800, 0.3), (21600, 1.0))
    nodes = np.arange(3000, dtype=np.int64)
    ok, codes = g.evaluate(nodes, 1.5 * HOUR)  # stage issued, first step not yet begun
    assert not ok.any() and {g.labels[c] for c in codes} == {("scope", "ramp-not-started")}
    before = np.zeros(3000, dtype=np.bool_)
    for t, share in ((2.5 * HOUR, 0.05), (4.5 * HOUR, 0.3), (7.5 * HOUR, 1.0)):
        ok, _ = g.evaluate(nodes, t)
        real = [
            in_scope(node_id(i), scope.artifact, scope=scope, now=EPOCH + int(t)).ok
            for i in range(3000)
        ]
        assert ok.tolist() == real
        assert ok.mean() == pytest.approx(share, abs=0.03)
        assert np.all(ok[before])  # monotone: nobody admitted earlier is dropped
        before = ok
    assert g.final_members().all()
