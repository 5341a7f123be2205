"""The NAT mix (simulations/links.py): the pair rule, the calibration to the cited figure,
per-node draws without per-pair state, and the [links] table's validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simulations.config import ScenarioError, parse, resolve
from simulations.links import (
    CITED_DIRECT_SHARE,
    CITED_DIRECT_SPREAD,
    CONE,
    DEFAULT_PUNCH_SUCCESS,
    OPEN,
    STRICT,
    LinkMix,
    Links,
    calibrated_punch_success,
    pair_direct_probability,
)


def test_the_pair_rule() -> None:
    p = 0.6
    a = np.array([OPEN, OPEN, OPEN, CONE, CONE, STRICT, STRICT, CONE, STRICT])
    b = np.array([OPEN, CONE, STRICT, OPEN, CONE, STRICT, CONE, STRICT, OPEN])
    got = pair_direct_probability(a, b, p)
    # an open end: direct; two strict homes: TURN (as in netlab); the rest punch
    assert got.tolist() == [1.0, 1.0, 1.0, 1.0, p, 0.0, p, p, 1.0]
    # symmetric in its two ends
    assert (pair_direct_probability(b, a, p) == got).all()


def test_the_default_mix_reproduces_the_cited_direct_share() -> None:
    mix = LinkMix()
    # the campaign measured NAT-ed pairs (DCUtR attempts): 70% +- 7.1%
    assert mix.natted_direct_share() == pytest.approx(CITED_DIRECT_SHARE, abs=1e-9)
    assert abs(mix.natted_direct_share() - 0.70) < CITED_DIRECT_SPREAD
    assert mix.punch_success == DEFAULT_PUNCH_SUCCESS == pytest.approx(0.7225, abs=1e-4)
    # all pairs: open ends connect always
    assert mix.direct_share() == pytest.approx(1 - 0.85**2 * 0.30, abs=1e-9)
    assert mix.relayed_share() == pytest.approx(0.21675, abs=1e-9)


def test_calibration_follows_the_mix_and_caps_at_one() -> None:
    mix = (0.1, 0.5, 0.4)
    p = calibrated_punch_success(mix)
    m = LinkMix(open=0.1, cone=0.5, strict=0.4, punch_success=p)
    assert m.natted_direct_share() == pytest.approx(0.70)
    # with mostly strict homes even a perfect punch cannot reach 70%
    assert calibrated_punch_success((0.0, 0.1, 0.9)) == 1.0
    assert calibrated_punch_success((1.0, 0.0, 0.0)) == 1.0


def test_drawn_links_match_the_expected_shares() -> None:
    mix = LinkMix()
    links = Links(mix, seed=3)
    nodes = np.arange(200_000, dtype=np.int64)
    classes = links.nat_class(nodes)
    shares = np.bincount(classes, minlength=3) / len(nodes)
    assert np.allclose(shares, mix.shares, atol=0.005)
    relayed = links.relayed_fraction(nodes)
    assert set(np.unique(relayed * mix.degree).round(9)) <= set(range(mix.degree + 1))
    assert float(relayed.mean()) == pytest.approx(mix.relayed_share(), abs=0.005)
    # per class: open homes never relay; strict homes relay most
    by_class = [float(relayed[classes == k].mean()) for k in range(3)]
    assert by_class[OPEN] == 0.0
    expected = 1.0 - mix.class_direct_share()
    assert np.allclose(by_class, expected, atol=0.01)
    assert by_class[STRICT] > by_class[CONE]


def test_draws_are_per_node_and_counter_based() -> None:
    links = Links(LinkMix(), seed=9)
    nodes = np.arange(1000, dtype=np.int64)
    whole = links.relayed_fraction(nodes)
    # any order, any subset: the same numbers (no hidden state, no per-pair table)
    perm = np.random.default_rng(0).permutation(1000)
    assert (links.relayed_fraction(nodes[perm]) == whole[perm]).all()
    assert (Links(LinkMix(), seed=9).relayed_fraction(nodes[:10]) == whole[:10]).all()
    assert not (Links(LinkMix(), seed=10).relayed_fraction(nodes) == whole).all()
    assert (Links(LinkMix(degree=0), seed=9).relayed_fraction(nodes) == 0.0).all()


def error(links: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as info:
        parse({"links": links}, source="s.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("s.toml: [links]")
    return message


def test_links_table_validation() -> None:
    assert "sum to 1" in error({"open": 0.5, "cone": 0.5, "strict": 0.5})
    assert "missing strict" in error({"open": 0.5, "cone": 0.5})
    assert "open must be <= 1" in error({"open": 1.5, "cone": -0.25, "strict": -0.25})
    assert "cone must be >= 0" in error({"open": 0.5, "cone": -0.5, "strict": 1.0})
    assert "punch_success must be <= 1" in error({"punch_success": 2})
    assert "degree must be in [0, 64]" in error({"degree": 100})
    assert "relay_rate must be > 0" in error({"relay_rate": 0})
    assert "unknown key 'symmetric'" in error({"symmetric": 0.2})


def test_links_table_defaults_and_resolution() -> None:
    assert parse({}).links is None and "links" not in resolve(parse({}))
    s = parse({"links": {"open": 0.2, "cone": 0.4, "strict": 0.4}})
    assert s.links is not None
    assert s.links.natted_direct_share() == pytest.approx(0.70)  # calibrated to the mix
    assert parse(resolve(s)).links == s.links
    given = parse({"links": {"punch_success": 0.5}}).links
    assert given is not None and given.punch_success == 0.5
    # [artifact] alone turns the default mix on
    with_art = parse({"artifact": {}})
    assert with_art.links == LinkMix()
