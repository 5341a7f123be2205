"""Scripted malicious peers against real swarm cores (tests/core/swarm_harness.py).

For each attack: the download completes with the right bytes, the exact peer is banned or
penalised, honest peers are not, and the origin is asked only for what no honest peer
could give.
"""

from __future__ import annotations

import pytest

from p2pupdate.core.swarm.config import SwarmConfig
from tests.core.swarm_harness import (
    CoreNode,
    Corrupt,
    Flooder,
    Liar,
    Net,
    Replayer,
    Scripted,
    Trickler,
    Vanisher,
    artifact_bytes,
    chunk_map_of,
    fleet_run,
)

DATA = artifact_bytes(64 * 1024)  # 16 chunks of 4 KiB, 4 blocks each
MAP = chunk_map_of(DATA)
ART = MAP.artifact
CFG = SwarmConfig(max_block=1024, request_timeout=2.0, origin_grace=3.0)


def fleet(
    n_seeds: int = 2, n_fetchers: int = 1, seed_cfg: SwarmConfig = CFG
) -> tuple[Net, list[CoreNode], list[CoreNode]]:
    net = Net()
    seeds = [
        net.add(CoreNode(name=f"seed{i}", config=seed_cfg, origin={ART: DATA}, seed=i)).start(
            MAP, held=DATA
        )
        for i in range(n_seeds)
    ]
    fetchers = [
        net.add(CoreNode(name=f"fetch{i}", config=CFG, origin={ART: DATA}, seed=100 + i)).start(MAP)
        for i in range(n_fetchers)
    ]
    for f in fetchers:
        for s in seeds:
            net.link(s, f, ART)
    for i, a in enumerate(fetchers):
        for b in fetchers[i + 1 :]:
            net.link(a, b, ART)
    return net, seeds, fetchers


def attach(net: Net, bad: Scripted, fetchers: list[CoreNode]) -> Scripted:
    net.add(bad)
    for f in fetchers:
        net.link(f, bad, ART)
    return bad


def done(fetchers: list[CoreNode]) -> bool:
    return all(ART in f.completed_at for f in fetchers)


def assert_clean(node: CoreNode, honest: list[CoreNode]) -> None:
    for h in honest:
        assert node.penalised(h.id) == [], f"{h.name} was penalised"
        assert node.banned(h.id) == [] and node.dropped(h.id) == []


def test_honest_fleet_moves_the_artifact_peer_to_peer_without_the_origin() -> None:
    net, seeds, fetchers = fleet(n_seeds=1, n_fetchers=4)
    net.run(120, stop=lambda: done(fetchers))
    for f in fetchers:
        assert f.bytes_of(ART) == DATA
        assert f.origin_asked == []
        assert_clean(f, seeds + fetchers)
    # the fetchers traded among themselves: the seed sent fewer than 4 copies
    assert seeds[0].served_bytes < 4 * len(DATA)
    assert sum(f.served_bytes for f in fetchers) > 0


def test_a_peer_that_sends_corrupt_chunks_is_banned_and_honest_peers_are_not() -> None:
    net, seeds, fetchers = fleet(n_seeds=2)
    bad = attach(net, Corrupt(name="corrupt", data=DATA, cmap=MAP), fetchers)
    net.run(120, stop=lambda: done(fetchers))
    f = fetchers[0]
    assert f.bytes_of(ART) == DATA
    assert [b.reason.split(":")[0] for b in f.banned(bad.id)] == ["bad_chunk"]
    assert_clean(f, seeds)
    assert f.origin_asked == []


#: An honest seed that uploads 8 KiB/s: the download takes ~8 s, deadlines (2 s) matter.
SLOW_SEED = SwarmConfig(max_block=1024, upload_cap=8192.0)


def test_a_trickler_is_dropped_and_its_requests_go_to_honest_peers() -> None:
    net, seeds, fetchers = fleet(n_seeds=1, seed_cfg=SLOW_SEED)
    bad = attach(net, Trickler(name="trickle", data=DATA, cmap=MAP), fetchers)
    net.run(300, stop=lambda: done(fetchers))
    f = fetchers[0]
    assert f.bytes_of(ART) == DATA
    rules = {p.rule for p in f.penalised(bad.id)}
    assert rules == {"missed_deadline"}
    assert len(f.dropped(bad.id)) == 1
    assert "deadlines" in f.dropped(bad.id)[0].reason
    assert f.banned(bad.id) == []  # slow is not proof of malice
    assert_clean(f, seeds)
    assert f.origin_asked == []


def test_a_peer_that_lies_in_its_bitfield_is_penalised_for_each_false_claim() -> None:
    net, seeds, fetchers = fleet(n_seeds=1)
    bad = attach(net, Liar(name="liar", data=DATA, cmap=MAP), fetchers)
    net.run(120, stop=lambda: done(fetchers))
    f = fetchers[0]
    assert f.bytes_of(ART) == DATA
    pens = f.penalised(bad.id)
    assert pens and {p.rule for p in pens} == {"false_claim"}
    assert f.dropped(bad.id) or f.banned(bad.id)  # two lies reach the drop score
    assert_clean(f, seeds)
    assert f.origin_asked == []


@pytest.mark.parametrize("relabel, rule", [(True, "bad_chunk"), (False, "unsolicited")])
def test_blocks_replayed_from_another_artifact_are_caught(relabel: bool, rule: str) -> None:
    """Named as ours they fail the hash (proof: a ban); named as what they are, they were
    never asked for (unsolicited, dropped after a few)."""
    other = artifact_bytes(64 * 1024, seed="another build")
    net, seeds, fetchers = fleet(n_seeds=1)
    replayer = Replayer(name="replay", data=DATA, cmap=MAP, other=other, relabel=relabel)
    bad = attach(net, replayer, fetchers)
    net.run(120, stop=lambda: done(fetchers))
    f = fetchers[0]
    assert f.bytes_of(ART) == DATA
    assert {p.rule for p in f.penalised(bad.id)} == {rule}
    assert f.dropped(bad.id) or f.banned(bad.id)
    assert_clean(f, seeds)
    assert f.origin_asked == []


def test_a_request_flood_is_refused_busy_and_the_flooder_dropped() -> None:
    """Requests beyond the bucket wait in a queue of ``upload_queue``; past it each is
    refused ``busy`` and costs ``flood`` points, so the flooder is dropped after a few, its
    queue purged; the honest peer still gets its copy and the bucket held."""
    net, seeds, _ = fleet(n_seeds=1, n_fetchers=0)
    bad = attach(net, Flooder(name="flood", data=DATA, cmap=MAP, count=400), seeds)
    honest = net.add(CoreNode(name="honest", config=CFG, origin={ART: DATA}, seed=9)).start(MAP)
    net.link(seeds[0], honest, ART)
    net.run(120, stop=lambda: ART in honest.completed_at)
    s = seeds[0]
    assert honest.bytes_of(ART) == DATA
    pens = s.penalised(bad.id)
    assert {p.rule for p in pens} == {"flood"} and len(pens) == 5  # 5 x 10 = drop_score
    assert len(s.dropped(bad.id)) == 1
    assert_clean(s, [honest])
    assert s.swarm is not None and bad.id not in s.swarm.uploader.queues
    bucket = s.swarm.uploader
    assert s.served_bytes <= bucket.burst + bucket.rate * net.now + CFG.max_block


def test_a_peer_that_vanishes_mid_chunk_costs_nothing_but_a_refetch() -> None:
    net, seeds, fetchers = fleet(n_seeds=1)
    bad = attach(net, Vanisher(name="vanish", data=DATA, cmap=MAP, blocks=2), fetchers)
    net.run(120, stop=lambda: done(fetchers))
    f = fetchers[0]
    assert f.bytes_of(ART) == DATA
    assert f.penalised(bad.id) == []  # leaving is not a fault
    assert_clean(f, seeds)
    assert f.origin_asked == []


def test_chunks_no_peer_has_come_from_the_origin_and_only_those() -> None:
    net = Net()
    partial = set(range(0, 12))  # the only peer lacks chunks 12..15
    seed = net.add(Scripted(name="partial", data=DATA, cmap=MAP, claims=frozenset(partial)))
    f = net.add(CoreNode(name="fetch", config=CFG, origin={ART: DATA}, seed=5)).start(MAP)
    net.link(seed, f, ART)
    net.run(120, stop=lambda: ART in f.completed_at)
    assert f.bytes_of(ART) == DATA
    assert sorted(f.origin_asked) == [12, 13, 14, 15]
    assert f.penalised(seed.id) == []


def test_everything_from_the_origin_when_no_peer_is_reachable() -> None:
    net = Net()
    f = net.add(CoreNode(name="alone", config=CFG, origin={ART: DATA}, seed=5)).start(MAP)
    net.run(60, stop=lambda: ART in f.completed_at)
    assert f.bytes_of(ART) == DATA
    assert sorted(f.origin_asked) == list(range(MAP.count))


def test_peers_too_slow_for_the_deadline_hand_the_rest_to_the_origin() -> None:
    slow = SwarmConfig(
        max_block=1024, request_timeout=30.0, origin_grace=3.0, upload_cap=1024.0
    )  # the seed uploads 1 KiB/s: 64 s for the artifact
    net = Net()
    seed = net.add(CoreNode(name="slowseed", config=slow, origin={ART: DATA}, seed=1))
    seed.start(MAP, held=DATA)
    f = net.add(CoreNode(name="fetch", config=CFG, origin={ART: DATA}, seed=2))
    f.start(MAP, deadline=20.0)
    net.link(seed, f, ART)
    net.run(120, stop=lambda: ART in f.completed_at)
    assert f.bytes_of(ART) == DATA
    assert f.completed_at[ART] <= 20.0
    assert 0 < len(f.origin_asked) < MAP.count  # peers did part of it
    assert f.penalised(seed.id) == []


def test_a_fleet_with_several_attackers_at_once_blames_only_them() -> None:
    """Four fetchers, two slow honest seeds, and a corrupter, a trickler and a liar among
    them: deadlines, moved requests and endgame mix blocks of several peers into chunks,
    so this is where blame by evidence matters.  Every fetcher ends with the right bytes;
    no honest node is penalised by anyone; the origin is not needed."""
    net, seeds, fetchers = fleet(n_seeds=2, n_fetchers=4, seed_cfg=SLOW_SEED)
    bad = [
        attach(net, Corrupt(name="corrupt", data=DATA, cmap=MAP), fetchers),
        attach(net, Trickler(name="trickle", data=DATA, cmap=MAP), fetchers),
        attach(net, Liar(name="liar", data=DATA, cmap=MAP), fetchers),
    ]
    net.run(600, stop=lambda: done(fetchers))
    for f in fetchers:
        assert f.bytes_of(ART) == DATA
        assert_clean(f, seeds + fetchers)
        assert f.origin_asked == []
        for b in bad:
            assert f.penalised(b.id), f"{b.name} got away with it at {f.name}"
    for s in seeds:
        assert_clean(s, fetchers)
    assert all(f.banned(bad[0].id) for f in fetchers)  # corrupt chunks: proof, a ban


def test_a_small_fleet_runs_to_the_end_without_penalties_the_origin_sending_little() -> None:
    got = fleet_run(nodes=8, artifact_mib=1.0, chunk_size=64 * 1024)
    assert got["all_verified"] is True and got["penalties"] == 0
    assert float(str(got["origin_copies"])) < 3  # the fetchers traded among themselves


def test_when_the_only_peer_vanishes_mid_chunk_the_origin_brings_the_rest() -> None:
    """Even the half-fetched chunk: its part must not keep it from the origin."""
    net = Net()
    only = net.add(Vanisher(name="only", data=DATA, cmap=MAP, blocks=2))
    f = net.add(CoreNode(name="fetch", config=CFG, origin={ART: DATA}, seed=5)).start(MAP)
    net.link(only, f, ART)
    net.run(120, stop=lambda: ART in f.completed_at)
    assert ART in f.completed_at and f.bytes_of(ART) == DATA
    assert sorted(f.origin_asked) == list(range(MAP.count))  # no whole chunk came from it
    assert f.penalised(only.id) == []


def test_status_says_what_is_held_and_what_the_origin_was_asked() -> None:
    net = Net()
    partial = net.add(Scripted(name="p", data=DATA, cmap=MAP, claims=frozenset(range(12))))
    f = net.add(CoreNode(name="fetch", config=CFG, origin={ART: DATA}, seed=5)).start(MAP)
    net.link(partial, f, ART)
    assert f.swarm is not None
    (before,) = f.swarm.status()
    assert (before.held, before.chunks, before.sessions) == (0, 16, 1)
    net.run(120, stop=lambda: ART in f.completed_at)
    (after,) = f.swarm.status()
    assert (after.held, after.origin_chunks, after.fetching_from) == (16, 4, 0)


def test_honest_peers_with_two_cuts_of_one_build_never_blame_each_other() -> None:
    """Two release records of the same bytes at 4096 and 4000 bytes per chunk (16 chunks
    each): a fetcher of one cut must not take the other cut's chunks for lies."""
    data = artifact_bytes(62_000)
    cut_a, cut_b = chunk_map_of(data, 4096), chunk_map_of(data, 4000)
    assert cut_a.artifact == cut_b.artifact and cut_a.count == cut_b.count == 16
    art = cut_a.artifact
    net = Net()
    seed_a = net.add(CoreNode(name="sa", config=CFG, origin={art: data}, seed=1))
    seed_b = net.add(CoreNode(name="sb", config=CFG, origin={art: data}, seed=2))
    f = net.add(CoreNode(name="f", config=CFG, origin={art: data}, seed=3))
    seed_a.start(cut_a, held=data)
    seed_b.start(cut_b, held=data)
    f.start(cut_a)
    net.link(seed_a, f, art)
    net.link(seed_b, f, art)
    net.run(120, stop=lambda: art in f.completed_at)
    assert f.bytes_of(art) == data
    for node, other in ((f, seed_a), (f, seed_b), (seed_b, f), (seed_a, f)):
        assert node.penalised(other.id) == [] and node.banned(other.id) == []
