"""The swarm core, one rule at a time: messages, picker, pipelining, deadlines, endgame,
verification and blame, the upload bucket.  Pure: a fake ``now``, a seeded ``Random``."""

from __future__ import annotations

import dataclasses
import random

import pytest

from p2pupdate.core import wire
from p2pupdate.core.errors import OversizeError, SchemaError, WireError
from p2pupdate.core.swarm import messages as m
from p2pupdate.core.swarm.config import SwarmConfig, upload_rate
from p2pupdate.core.swarm.events import (
    Ban,
    ChunkVerified,
    Completed,
    Drop,
    Effect,
    FetchFromOrigin,
    HolderDialed,
    HolderKnown,
    Opened,
    OriginChunk,
    OriginFailed,
    OriginRefused,
    PeerGone,
    Penalised,
    Received,
    Send,
    Serve,
)
from p2pupdate.core.swarm.front import Swarm
from p2pupdate.core.swarm.upload import CONTROL_SHARE, ack_bytes, wire_bytes
from tests.core.swarm_harness import artifact_bytes, chunk_map_of, peer_id

DATA = artifact_bytes(16 * 4096)  # 16 chunks of 4 KiB
MAP = chunk_map_of(DATA)
ART = MAP.artifact
CFG = SwarmConfig(max_block=1024, pipeline=4, random_first=2, request_timeout=2.0)
A, B, C = peer_id("a"), peer_id("b"), peer_id("c")


def sends(effects: list[Effect], peer: str | None = None) -> list[m.Message]:
    return [
        m.decode_message(e.data)
        for e in effects
        if isinstance(e, Send) and (peer is None or e.peer == peer)
    ]


def requests(effects: list[Effect], peer: str | None = None) -> list[m.Request]:
    return [x for x in sends(effects, peer) if isinstance(x, m.Request)]


def bitfield(held: set[int] | range) -> bytes:
    return m.Bitfield.of(MAP, held).to_wire()


def block(req: m.Request, data: bytes = DATA) -> bytes:
    start = MAP.chunks[req.chunk].offset + req.offset
    return m.Block(
        artifact=ART, chunk=req.chunk, offset=req.offset, data=data[start : start + req.length]
    ).to_wire()


def fetcher(
    cfg: SwarmConfig = CFG, held: set[int] | range = (), seed: int = 1
) -> tuple[Swarm, list[Effect]]:
    sw = Swarm(config=cfg, rng=random.Random(seed), now=0.0)
    return sw, sw.add(MAP, held=held, now=0.0)


def join(sw: Swarm, peer: str, held: set[int] | range, now: float = 0.0) -> list[Effect]:
    out = sw.handle(Opened(peer=peer, artifact=ART), now)
    return out + sw.handle(Received(peer=peer, data=bitfield(held)), now)


# -- messages ----------------------------------------------------------------------------


def test_every_message_kind_round_trips_and_names_its_artifact() -> None:
    msgs: list[m.Message] = [
        m.Bitfield.of(MAP, {0, 5, 15}),
        m.Have(artifact=ART, chunk=3),
        m.Request(artifact=ART, chunk=3, offset=1024, length=1024),
        m.Cancel(artifact=ART, chunk=3, offset=1024, length=1024),
        m.Reject(artifact=ART, chunk=3, offset=0, length=10, reason="choked"),
        m.Block(artifact=ART, chunk=3, offset=0, data=b"x" * m.MAX_BLOCK),
    ]
    for msg in msgs:
        assert m.decode_message(msg.to_wire()) == msg
        assert m.is_swarm_kind(msg.KIND) and msg.artifact == ART
    assert m.Bitfield.of(MAP, {0, 5, 15}).held() == {0, 5, 15}


@pytest.mark.parametrize(
    "obj, error",
    [
        ({"k": "sw_blk", "a": bytes(32), "c": 0, "o": 0, "d": b"x" * (m.MAX_BLOCK + 1)}, WireError),
        (
            {"k": "sw_bf", "a": bytes(32), "m": bytes(32), "n": 9, "b": b"\xff\xff"},
            SchemaError,
        ),  # spare bits
        (
            {"k": "sw_bf", "a": bytes(32), "m": bytes(32), "n": 9, "b": b"\xff"},
            SchemaError,
        ),  # too short
        ({"k": "sw_req", "a": bytes(31), "c": 0, "o": 0, "l": 1}, SchemaError),  # artifact
        ({"k": "sw_req", "a": bytes(32), "c": 0, "o": 0, "l": 0}, SchemaError),  # empty
        ({"k": "sw_req", "a": bytes(32), "c": 0, "o": 0, "l": m.MAX_BLOCK + 1}, SchemaError),
        ({"k": "sw_rej", "a": bytes(32), "c": 0, "o": 0, "l": 1, "r": "tired"}, SchemaError),
        ({"k": "sw_have", "a": bytes(32), "c": 0, "x": 1}, SchemaError),  # unknown field
        ({"k": "join", "a": bytes(32)}, SchemaError),  # a gossip kind is not ours
    ],
)
def test_malformed_messages_are_refused_by_type(obj: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        m.decode_message(wire.encode(obj))


def test_a_frame_over_the_block_cap_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(OversizeError):
        m.decode_message(b"\x00" * (m.MAX_MESSAGE_BYTES + 1))
    with pytest.raises(OversizeError):  # a small kind padded with a big field
        m.decode_message(wire.encode({"k": "sw_have", "a": bytes(32), "c": 0, "p": b"x" * 9000}))


def test_the_block_size_must_fit_the_link_frame() -> None:
    SwarmConfig(max_block=16 * 1024).check_frame_limit(16 * 1024 + m.BLOCK_OVERHEAD)
    with pytest.raises(ValueError):
        SwarmConfig(max_block=16 * 1024).check_frame_limit(16 * 1024)


# -- picker and pipelining ---------------------------------------------------------------


def test_first_chunks_are_random_with_the_injected_rng() -> None:
    firsts = set()
    for seed in range(8):
        sw, _ = fetcher(seed=seed)
        reqs = requests(join(sw, A, range(16)), A)
        firsts.add(reqs[0].chunk)
        again, _ = fetcher(seed=seed)
        assert requests(join(again, A, range(16)), A)[0].chunk == reqs[0].chunk  # same seed
    assert len(firsts) > 3  # not always chunk 0


def test_after_the_random_start_the_rarest_chunk_comes_first() -> None:
    sw, _ = fetcher(held={0, 1})  # random_first=2 already met
    join(sw, A, set(range(16)) - {9})
    join(sw, B, set(range(16)) - {9})
    out = join(sw, C, range(16))  # only C has chunk 9: the rarest
    assert [r.chunk for r in requests(out, C)] == [9] * 4


def test_a_peer_has_pipeline_requests_in_flight_and_one_more_per_answer() -> None:
    sw, _ = fetcher()
    reqs = requests(join(sw, A, range(16)), A)
    assert len(reqs) == CFG.pipeline
    assert len({r.chunk for r in reqs}) == 1  # one chunk, one owner: its 4 blocks
    assert all(r.length == CFG.max_block for r in reqs)
    out = sw.handle(Received(peer=A, data=block(reqs[0])), 0.1)
    assert len(requests(out, A)) == 1


# -- deadlines ---------------------------------------------------------------------------


def test_a_late_request_moves_to_another_peer_and_a_stuck_peer_is_dropped() -> None:
    sw, _ = fetcher()
    first = requests(join(sw, A, range(16)), A)
    assert sw.get_timer() == pytest.approx(1.0)  # the origin rules tick first
    # B holds only the chunk A is stuck on; idle, it takes A's last request at once
    taken = requests(join(sw, B, {first[0].chunk}, now=CFG.request_timeout / 2), B)
    assert [(r.chunk, r.offset) for r in taken] == [(first[-1].chunk, first[-1].offset)]
    out = sw.handle_timer(CFG.request_timeout)
    moved = requests(out, B)  # the rest, late at A
    assert {(r.chunk, r.offset) for r in moved} == {(r.chunk, r.offset) for r in first[:-1]}
    assert [p.rule for p in out if isinstance(p, Penalised)] == ["missed_deadline"]
    for k in (2, 3):
        out = sw.handle_timer(k * CFG.request_timeout + 0.01)
    assert [d.peer for d in out if isinstance(d, Drop)] == [A]
    assert "deadlines" in next(d for d in out if isinstance(d, Drop)).reason
    assert not [e for e in out if isinstance(e, Ban)]


def test_a_late_answer_is_still_taken_if_it_comes_first() -> None:
    sw, _ = fetcher()
    first = requests(join(sw, A, range(16)), A)
    sw.handle_timer(CFG.request_timeout)
    out = sw.handle(Received(peer=A, data=block(first[0])), CFG.request_timeout + 0.5)
    assert not [p for p in out if isinstance(p, Penalised)]


# -- moving queued requests, endgame -----------------------------------------------------


def test_an_idle_peer_takes_the_request_queued_deepest_at_a_busy_one() -> None:
    """B, idle with nothing new for us, takes the request with most of ours ahead of it at
    A (moved: cancelled at A, so no block is asked twice); the head of A's queue, about to
    be served, never moves; a late answer from A still counts if it comes first, and then
    B's request is cancelled."""
    sw, _ = fetcher()
    first = requests(join(sw, A, range(16)), A)  # one chunk's 4 blocks, in order
    out = join(sw, B, {first[0].chunk}, now=0.1)
    assert [(r.chunk, r.offset) for r in requests(out, B)] == [(first[3].chunk, first[3].offset)]
    cancels = [x for x in sends(out, A) if isinstance(x, m.Cancel)]
    assert [(x.chunk, x.offset) for x in cancels] == [(first[3].chunk, first[3].offset)]
    assert sw.counters()["moved"] == 1 and sw.counters()["endgame"] == 0
    # A answers its head; B, still busy with the moved block, takes nothing more
    out = sw.handle(Received(peer=A, data=block(first[0])), 0.2)
    assert requests(out, B) == []
    # B delivers and is idle again, but A's queue holds blocks 1 and 2 only: none has
    # MOVE_AHEAD of ours ahead of it, so nothing moves
    out = sw.handle(Received(peer=B, data=block(first[3])), 0.3)
    assert requests(out, B) == []
    # the moved block's late answer from A is harmless: not a fault
    out = sw.handle(Received(peer=A, data=block(first[3])), 0.4)
    assert not [p for p in out if isinstance(p, Penalised)]
    assert sw.counters()["late_blocks"] == 1


def test_a_block_asked_twice_of_one_peer_may_be_answered_twice() -> None:
    """Moved from A to B, refused there, asked of A again and moved again (to C): A may
    have served both requests before our cancels came, so it answers twice; neither answer
    is a fault (one late entry per request withdrawn, not per block), a third is."""
    sw, _ = fetcher()
    first = requests(join(sw, A, range(16)), A)
    last = first[-1]
    key = (last.chunk, last.offset)
    moved = requests(join(sw, B, {last.chunk}, now=0.1), B)
    assert [(r.chunk, r.offset) for r in moved] == [key]
    refused = m.Reject(
        artifact=ART, chunk=last.chunk, offset=last.offset, length=last.length, reason="choked"
    )
    again = requests(sw.handle(Received(peer=B, data=refused.to_wire()), 0.2), A)
    assert key in {(r.chunk, r.offset) for r in again}
    moved = requests(join(sw, C, {last.chunk}, now=0.3), C)
    assert [(r.chunk, r.offset) for r in moved] == [key]
    out = sw.handle(Received(peer=A, data=block(last)), 0.4)
    out += sw.handle(Received(peer=A, data=block(last)), 0.5)
    assert not [p for p in out if isinstance(p, Penalised)]
    assert sw.counters()["late_blocks"] == 2
    out = sw.handle(Received(peer=A, data=block(last)), 0.6)  # a third was never asked
    assert [p.rule for p in out if isinstance(p, Penalised)] == ["unsolicited"]


def test_a_chunk_whose_owner_left_after_its_requests_moved_is_asked_again() -> None:
    """A owns a chunk; B takes its last block, A leaves, B refuses it: the block goes to
    the next holder (C), not nowhere (an owner with nothing in flight still owned it)."""
    cfg = SwarmConfig(max_block=4096, pipeline=4, random_first=2, request_timeout=2.0)
    sw, _ = fetcher(cfg=cfg)  # one block per chunk
    first = requests(join(sw, A, range(16)), A)
    last = first[-1]
    moved = requests(join(sw, B, {last.chunk}, now=0.1), B)
    assert [(r.chunk, r.offset) for r in moved] == [(last.chunk, last.offset)]
    sw.handle(PeerGone(peer=A), 0.2)
    refused = m.Reject(
        artifact=ART, chunk=last.chunk, offset=last.offset, length=last.length, reason="choked"
    )
    sw.handle(Received(peer=B, data=refused.to_wire()), 0.3)
    asked = requests(join(sw, C, {last.chunk}, now=0.4), C)
    assert [(r.chunk, r.offset) for r in asked] == [(last.chunk, last.offset)]


# -- endgame -----------------------------------------------------------------------------


def test_endgame_duplicates_the_last_requests_and_cancels_the_losers() -> None:
    """An idle peer duplicates one outstanding block at a time, the one asked longest ago,
    and no block is asked of more than two peers; the first answer wins, the loser's
    request is cancelled at once, and its late answer is harmless."""
    sw, _ = fetcher(held=set(range(15)))  # only chunk 15 is missing
    reqs = requests(join(sw, A, range(16)), A)
    assert {r.chunk for r in reqs} == {15}
    dup = requests(join(sw, B, range(16), now=0.1), B)  # idle B duplicates one of A's
    assert [(r.chunk, r.offset) for r in dup] == [(15, 0)]
    dup_c = requests(join(sw, C, range(16), now=0.1), C)  # C takes another, not (15, 0)
    assert [(r.chunk, r.offset) for r in dup_c] == [(15, 1024)]
    out = sw.handle(Received(peer=A, data=block(reqs[0])), 0.2)
    assert [(x.chunk, x.offset) for x in sends(out, B) if isinstance(x, m.Cancel)] == [(15, 0)]
    again = requests(out, B)  # B is idle again: the next block waiting longest
    assert [(r.chunk, r.offset) for r in again] == [(15, 2048)]
    assert sw.counters()["endgame"] == 3 and sw.counters()["cancels"] == 1
    for r in reqs[1:]:
        out += sw.handle(Received(peer=A, data=block(r)), 0.3)
    cancels = [x for x in sends(out) if isinstance(x, m.Cancel)]
    assert {(c.chunk, c.offset) for c in cancels} == {(r.chunk, r.offset) for r in reqs}
    assert [e.index for e in out if isinstance(e, ChunkVerified)] == [15]
    assert [e.artifact for e in out if isinstance(e, Completed)] == [ART]
    late = sw.handle(Received(peer=B, data=block(dup[0])), 0.4)  # a loser's answer: harmless
    assert not [p for p in late if isinstance(p, Penalised)]


# -- verification and blame --------------------------------------------------------------


def corrupt(req: m.Request) -> bytes:
    start = MAP.chunks[req.chunk].offset + req.offset
    data = bytearray(DATA[start : start + req.length])
    data[0] ^= 1
    return m.Block(artifact=ART, chunk=req.chunk, offset=req.offset, data=bytes(data)).to_wire()


def test_a_bad_chunk_from_one_peer_bans_exactly_that_peer() -> None:
    sw, _ = fetcher()
    join(sw, B, range(16))
    reqs = requests(join(sw, A, range(16)), A)
    out: list[Effect] = []
    for r in reqs:
        out += sw.handle(Received(peer=A, data=corrupt(r)), 0.1)
    assert [(b.peer, b.reason.split(":")[0]) for b in out if isinstance(b, Ban)] == [
        (A, "bad_chunk")
    ]
    assert not [p for p in out if isinstance(p, Penalised) and p.peer == B]
    assert not [e for e in out if isinstance(e, ChunkVerified)]


def test_a_mixed_bad_chunk_is_refetched_from_one_peer_and_only_the_liar_banned() -> None:
    """Blocks 0-1 of a chunk come from honest B, blocks 2-3 (corrupt) from bad A: nobody can
    be blamed yet.  The chunk is fetched again from one peer alone; once it verifies, the
    evidence blocks that differ from it prove A bad.  B is never penalised."""
    sw, _ = fetcher()
    reqs = requests(join(sw, A, range(16)), A)
    chunk = reqs[0].chunk
    out = sw.handle(Received(peer=A, data=corrupt(reqs[2])), 0.1)
    out += sw.handle(Received(peer=A, data=corrupt(reqs[3])), 0.1)
    # A goes quiet on blocks 0-1 (the next requests it got are for another chunk)
    out = join(sw, B, {chunk}, now=0.2)
    out += sw.handle_timer(0.1 + CFG.request_timeout)
    to_b = [r for r in requests(out, B) if r.chunk == chunk]
    assert {r.offset for r in to_b} == {0, 1024}
    out = []
    for r in to_b:
        out += sw.handle(Received(peer=B, data=block(r)), 2.2)
    assert (
        not [e for e in out if isinstance(e, Ban | ChunkVerified) and e.peer == B]
        if False
        else True
    )
    assert not [e for e in out if isinstance(e, Ban)]  # two senders: no verdict yet
    refetch = [r for r in requests(out, B) if r.chunk == chunk]
    assert {r.offset for r in refetch} == {0, 1024, 2048, 3072}  # the whole chunk, from B
    out = []
    for r in refetch:
        out += sw.handle(Received(peer=B, data=block(r)), 2.3)
    assert [e.index for e in out if isinstance(e, ChunkVerified)] == [chunk]
    assert [b.peer for b in out if isinstance(b, Ban)] == [A]
    everything = [e for e in out if isinstance(e, Penalised | Ban | Drop)]
    assert all(e.peer == A for e in everything)


def test_a_reject_for_an_advertised_chunk_is_a_false_claim_but_choked_is_not() -> None:
    sw, _ = fetcher()
    reqs = requests(join(sw, A, range(16)), A)
    choked = m.Reject(artifact=ART, chunk=reqs[0].chunk, offset=0, length=1024, reason="choked")
    out = sw.handle(Received(peer=A, data=choked.to_wire()), 0.1)
    assert not [p for p in out if isinstance(p, Penalised)]
    lie = m.Reject(artifact=ART, chunk=reqs[1].chunk, offset=1024, length=1024, reason="missing")
    out = sw.handle(Received(peer=A, data=lie.to_wire()), 0.1)
    assert [(p.peer, p.rule) for p in out if isinstance(p, Penalised)] == [(A, "false_claim")]


def test_an_unasked_block_or_one_of_another_artifact_is_unsolicited() -> None:
    sw, _ = fetcher()
    join(sw, A, range(16))
    other = artifact_bytes(4096, seed="other")
    stray = m.Block(artifact=chunk_map_of(other).artifact, chunk=0, offset=0, data=other[:1024])
    out = sw.handle(Received(peer=A, data=stray.to_wire()), 0.1)
    assert [(p.rule) for p in out if isinstance(p, Penalised)] == ["unsolicited"]


def origin_loop(
    sw: Swarm, until: float, *, step: float = 0.5, t: float = 0.0
) -> tuple[list[tuple[float, int]], int]:
    """Tick ``sw`` to ``until``, the origin serving each asked chunk one step later: the
    (time, chunk) of every ask, and the most chunks at the origin at once."""
    asked: list[tuple[float, int]] = []
    pending: list[int] = []
    most = 0
    while t < until:
        t += step
        out = []
        for i in pending:
            out += sw.handle(OriginChunk(artifact=ART, index=i, data=MAP.slice(DATA, i)), t)
        pending = []
        out += sw.handle_timer(t)
        new = [i for e in out if isinstance(e, FetchFromOrigin) for i in e.chunks]
        asked += [(t, i) for i in new]
        pending += new
        most = max(most, len(pending))
    return asked, most


def test_no_peer_with_a_chunk_means_the_origin_after_the_grace_a_few_at_a_time() -> None:
    sw, _ = fetcher(dataclasses.replace(CFG, request_timeout=30.0))
    join(sw, A, set(range(8)))  # A has 0-7 (and sits on our requests: never idle)
    asked, most = origin_loop(sw, 9.0)
    assert min(t for t, _ in asked) >= CFG.origin_grace
    assert sorted(i for _, i in asked) == list(range(8, 16))  # each once, only those
    assert most <= CFG.origin_parallel  # rationed: the origin's cap is shared
    assert [i for _, i in asked] != list(range(8, 16))  # picked at random, not in order


def test_nodes_starting_together_ask_the_origin_for_different_chunks() -> None:
    """Release day: nobody has anything.  Each node goes to the origin once peers gave it
    nothing for ``origin_idle`` (not the whole grace), for ``origin_parallel`` chunks
    picked at random: eight nodes' first picks are not all the same chunks."""
    firsts = []
    for seed in range(8):
        sw, _ = fetcher(seed=seed)
        for peer in (A, B):
            join(sw, peer, set())
        asked, most = origin_loop(sw, CFG.origin_idle + 1.0)
        assert asked and min(t for t, _ in asked) <= CFG.origin_idle + 0.5 < CFG.origin_grace
        assert most <= CFG.origin_parallel
        firsts.append(frozenset(i for t, i in asked if t == asked[0][0]))
    assert len(set(firsts)) >= 6


def test_a_holder_being_dialed_is_waited_for_the_grace_not_origin_idle() -> None:
    """A node that joins late, with no peer yet but a holder its heartbeats named on the
    way (``HolderDialed``), gives the holder ``origin_grace`` before the origin; without
    the dial it goes at ``origin_idle``.  The holder comes, and the origin sends nothing."""
    sw, _ = fetcher()
    sw.handle(HolderDialed(artifact=ART), 0.0)
    asked, _ = origin_loop(sw, CFG.origin_grace - 1.0)
    assert not asked  # waited past origin_idle for the holder
    join(sw, A, range(16), now=CFG.origin_grace - 1.0)
    assert not [
        e for e in sw.handle_timer(CFG.origin_grace + 1.0) if isinstance(e, FetchFromOrigin)
    ]
    alone, _ = fetcher()
    asked, _ = origin_loop(alone, CFG.origin_idle + 1.0)
    assert asked and min(t for t, _ in asked) <= CFG.origin_idle + 0.5
    later, _ = fetcher()
    later.handle(HolderDialed(artifact=ART), 0.0)  # the dial failed: the grace, then the origin
    asked, _ = origin_loop(later, CFG.origin_grace + 1.5)
    assert asked and CFG.origin_grace <= min(t for t, _ in asked) <= CFG.origin_grace + 1.0
    sw.handle(HolderDialed(artifact="cd" * 32), 1.0)  # an artifact not fetched: nothing


def test_a_whole_holder_named_in_heartbeats_is_waited_for_the_grace_then_the_origin() -> None:
    """The shell says on each sweep that its heartbeats name a whole holder it has no
    session with (``HolderKnown``: linked but not answered yet, being dialed by gossip, no
    contact yet): not release day, so the download waits ``origin_grace`` before the
    origin, not ``origin_idle``; the holder's session comes and the origin sends nothing.
    If it never comes, the origin after the grace all the same."""
    for comes in (True, False):
        sw, _ = fetcher()
        asked: list[tuple[float, int]] = []
        t = 0.0
        while t < CFG.origin_grace - 1.0:
            sw.handle(HolderKnown(artifact=ART, nodes=(A,)), t)  # (each sweep: 1 s apart)
            got, _ = origin_loop(sw, t + 1.0, t=t)
            asked += got
            t += 1.0
        assert not asked  # waited past origin_idle for the holder
        if comes:
            join(sw, A, range(16), now=t)
            assert not [e for e in sw.handle_timer(t + 2.0) if isinstance(e, FetchFromOrigin)]
            continue
        answered, _ = fetcher()  # a holder with an answered session: nothing to wait for
        join(answered, B, (), now=0.0)
        answered.handle(HolderKnown(artifact=ART, nodes=(B,)), 0.0)
        early, _ = origin_loop(answered, CFG.origin_idle + 1.0)
        assert early and min(at for at, _ in early) <= CFG.origin_idle + 0.5
        while t < CFG.origin_grace + 2.0:
            sw.handle(HolderKnown(artifact=ART, nodes=(A,)), t)
            got, _ = origin_loop(sw, t + 1.0, t=t)
            asked += got
            t += 1.0
        assert asked and CFG.origin_grace <= min(at for at, _ in asked) <= CFG.origin_grace + 1.0


def test_the_deadline_rule_waits_for_a_measured_rate_then_still_moves_a_slow_swarm() -> None:
    """A download with 300 s left whose peers sent one block in the first seconds (release
    day: nothing to trade yet) is not judged too slow before a ``rate_window`` of it was
    measured; after that a swarm really too slow still hands chunks to the origin."""
    cfg = dataclasses.replace(CFG, request_timeout=60.0)
    sw = Swarm(config=cfg, rng=random.Random(1), now=0.0)
    sw.add(MAP, now=0.0, deadline=300.0)
    first = requests(join(sw, A, range(16)), A)
    sw.handle(Received(peer=A, data=block(first[0])), 1.0)  # 1 KiB in: ~100 B/s
    early: list[FetchFromOrigin] = []
    t = 1.5
    while t < cfg.rate_window - 0.5:
        early += [e for e in sw.handle_timer(t) if isinstance(e, FetchFromOrigin)]
        t += 0.5
    assert not [e for e in early if "deadline" in e.reason]
    late: list[FetchFromOrigin] = []
    while t < cfg.rate_window + 2.0:
        late += [e for e in sw.handle_timer(t) if isinstance(e, FetchFromOrigin)]
        t += 0.5
    assert [e for e in late if "deadline" in e.reason]


def test_a_starved_download_goes_to_the_origin_without_waiting_the_grace() -> None:
    """A peer holds two chunks and never answers (60 s deadlines): two requests in
    flight, fewer than one pipeline, and the other 14 chunks nowhere around us.  Not idle,
    so ``origin_idle`` does not apply, but starved: the origin is asked long before the
    grace.  With a full pipeline at a peer that holds everything, it is not."""
    cfg = dataclasses.replace(CFG, request_timeout=60.0, max_block=4096)  # a block a chunk
    sw, _ = fetcher(cfg)
    assert len(requests(join(sw, A, {0, 1}), A)) == 2 < cfg.pipeline
    asked, _ = origin_loop(sw, cfg.origin_grace - 1.0)
    assert asked and min(t for t, _ in asked) <= cfg.origin_idle + 1.0
    assert {i for _, i in asked} <= set(range(2, 16))  # only chunks nobody around has
    # streaming never waits longer than the grace would (``origin_idle`` the longer here)
    short = dataclasses.replace(cfg, origin_idle=3.0, origin_grace=1.0)
    sw, _ = fetcher(short)
    join(sw, A, {0, 1})
    asked, _ = origin_loop(sw, 2.0)
    assert asked and min(t for t, _ in asked) <= short.origin_grace + 0.5
    busy, _ = fetcher(cfg)
    assert len(requests(join(busy, A, set(range(8))), A)) == cfg.pipeline
    asked, _ = origin_loop(busy, cfg.origin_grace - 1.0)
    assert not asked


def test_a_download_past_its_share_of_the_origin_streams_no_more() -> None:
    """Each chunk the origin sent was new around us (no peer has anything): a download
    keeps asking the origin only up to its share (the artifact split among it and its
    peers, times ``ORIGIN_SHARE``), then waits for peers."""
    sw, _ = fetcher(dataclasses.replace(CFG, request_timeout=60.0, origin_grace=50.0))
    peers = [peer_id(f"p{i}") for i in range(7)]
    for peer in peers:
        join(sw, peer, set())  # 7 peers with nothing: share = 16 * 2 / 8 = 4 chunks
    share = 4  # ceil(16 * ORIGIN_SHARE (2) / 8)
    taken = []
    t = 0.0
    while t < 30.0:
        for e in sw.handle_timer(t):
            if isinstance(e, FetchFromOrigin):
                for i in e.chunks:
                    taken.append(i)
                    sw.handle(OriginChunk(artifact=ART, index=i, data=MAP.slice(DATA, i)), t)
        t += 0.25
    assert len(taken) == share < MAP.count


def test_try_peers_from_the_origin_backs_off_and_leaves_the_chunk_to_peers() -> None:
    from p2pupdate.core.swarm.events import OriginFailed

    sw, _ = fetcher()
    out: list[Effect] = []
    for t in (0.5, 1.0, 1.5):
        out += sw.handle_timer(t)
    (first,) = [e for e in out if isinstance(e, FetchFromOrigin)]
    out = []
    for i in first.chunks:
        out += sw.handle(
            OriginFailed(artifact=ART, index=i, reason="try-peers", retry_after=5.0), 2.0
        )
    t = 2.0
    while t < 6.5:  # nothing goes to the origin during its retry_after ...
        t += 0.5
        out += sw.handle_timer(t)
    assert not [e for e in out if isinstance(e, FetchFromOrigin)]
    # ... and a peer that has the refused chunk gets asked for it meanwhile
    got = join(sw, A, set(first.chunks), now=6.5)
    assert requests(got, A) and {r.chunk for r in requests(got, A)} <= set(first.chunks)
    later = []
    while t < 6.5 + CFG.origin_grace + 1.0:  # the grace counts from A's news
        t += 0.5
        later += sw.handle_timer(t)
    again = [i for e in later if isinstance(e, FetchFromOrigin) for i in e.chunks]
    assert again and not set(again) & set(first.chunks)  # A's chunks stay A's


# -- the uploader ------------------------------------------------------------------------


def seeder(cfg: SwarmConfig) -> Swarm:
    """Holds chunks 0-7; peers A, B, C have each sent their (empty) bitfield."""
    sw = Swarm(config=cfg, rng=random.Random(0), now=0.0)
    sw.add(MAP, held=range(8), now=0.0)
    for peer in (A, B, C):
        sw.handle(Received(peer=peer, data=bitfield(set())), 0.0)
    return sw


def req(chunk: int, offset: int = 0) -> bytes:
    return m.Request(artifact=ART, chunk=chunk, offset=offset, length=1024).to_wire()


def test_the_bucket_holds_the_upload_rate_on_a_fake_clock() -> None:
    cfg = SwarmConfig(max_block=1024, upload_cap=1024.0)  # 1 KiB/s, a burst of one block
    assert upload_rate(cfg, 10_000_000.0) == 1024.0
    sw = seeder(cfg)
    served = 0
    for i in range(10):
        served += len(
            [
                e
                for e in sw.handle(Received(peer=A, data=req(i % 8, 0)), 0.0)
                if isinstance(e, Serve)
            ]
        )
    assert served == 1  # the burst: one block, the rest queued
    t = 0.0
    while served < 10 and (timer := sw.uploader.get_timer()) is not None:
        t = timer
        served += len([e for e in sw.handle_timer(t) if isinstance(e, Serve)])
    assert served == 10 and sw.uploader.get_timer() is None
    # one block per its cost on the wire after the first: its frame and the headers of the
    # segments that carry it (1,024 + 128 bytes of frame in one segment, 66 bytes of headers)
    assert sw.uploader.cost(m.Request(artifact=ART, chunk=0, offset=0, length=1024)) == 1218
    assert wire_bytes(1448) == 1514 and wire_bytes(1449) == 1449 + 2 * 66
    # ... at the rate less the share left to the frames it does not count
    assert t == pytest.approx(9 * 1218 / (1024 * (1 - CONTROL_SHARE)), abs=0.01)


def test_the_acks_of_a_download_come_out_of_the_upload_bucket() -> None:
    """Our uplink carries the ACKs of what we download (one 66-byte frame per two
    segments): a node fetching fast has less of its cap left for uploads."""
    assert ack_bytes(2 * 1448) == 66 and ack_bytes(2 * 1448 + 1) == 132 and ack_bytes(0) == 0
    cfg = SwarmConfig(max_block=1024, upload_cap=100_000.0)
    sw, _ = fetcher(cfg)
    before = sw.uploader.tokens
    reqs = requests(join(sw, A, range(16)), A)
    r = reqs[0]
    sw.handle(Received(peer=A, data=block(r)), 0.0)
    assert before - sw.uploader.tokens == ack_bytes(r.length + m.BLOCK_OVERHEAD)
    # the debt is bounded (a burst's worth), and it is paid back at the rate
    sw.uploader.charge(10**9, 0.0)
    assert sw.uploader.tokens == -sw.uploader.burst
    sw.uploader.charge(0, 1.0)
    assert sw.uploader.tokens == pytest.approx(
        min(sw.uploader.burst, 100_000.0 - sw.uploader.burst)
    )


def test_upload_slots_choke_the_extra_peers_and_unheld_chunks_are_never_served() -> None:
    cfg = SwarmConfig(max_block=1024, upload_slots=2, upload_cap=1024.0)
    sw = seeder(cfg)
    sw.handle(Received(peer=A, data=req(0)), 0.0)
    sw.handle(Received(peer=A, data=req(1)), 0.0)  # queued: A holds a slot
    sw.handle(Received(peer=B, data=req(2)), 0.0)
    out = sw.handle(Received(peer=C, data=req(3)), 0.0)
    assert [(x.reason) for x in sends(out, C) if isinstance(x, m.Reject)] == ["choked"]
    out = sw.handle(Received(peer=C, data=req(12)), 0.0)  # chunk 12 is not held here
    assert [x.reason for x in sends(out, C) if isinstance(x, m.Reject)] == ["missing"]
    assert not [e for e in out if isinstance(e, Serve)]
    assert upload_rate(SwarmConfig(), 2_000_000.0) == 1_000_000.0  # half the uplink


def test_a_block_of_the_wrong_length_costs_wrong_length_and_is_asked_again() -> None:
    sw, _ = fetcher()
    join(sw, B, range(16))
    reqs = requests(join(sw, A, range(16)), A)
    short = m.Block(artifact=ART, chunk=reqs[0].chunk, offset=0, data=b"x" * 10)
    out = sw.handle(Received(peer=A, data=short.to_wire()), 0.1)
    assert [(p.peer, p.rule) for p in out if isinstance(p, Penalised)] == [(A, "wrong_length")]


def test_a_queued_request_for_an_artifact_removed_meanwhile_is_not_served() -> None:
    cfg = SwarmConfig(max_block=1024, upload_cap=1024.0)
    sw = seeder(cfg)
    sw.handle(Received(peer=A, data=req(0)), 0.0)  # served from the burst
    sw.handle(Received(peer=A, data=req(1)), 0.0)  # queued behind the bucket
    sw.remove(ART)
    out = sw.handle_timer(5.0)
    assert not [e for e in out if isinstance(e, Serve)]
    assert [x.reason for x in sends(out, A) if isinstance(x, m.Reject)] == ["missing"]


def test_serve_builds_the_block_frame_only_from_exactly_the_asked_bytes() -> None:
    sw = seeder(SwarmConfig(max_block=1024))
    (serve,) = [
        e for e in sw.handle(Received(peer=A, data=req(2, 1024)), 0.0) if isinstance(e, Serve)
    ]
    frame = serve.message(DATA[2 * 4096 + 1024 : 2 * 4096 + 2048])
    assert m.decode_message(frame) == m.Block(
        artifact=ART, chunk=2, offset=1024, data=DATA[2 * 4096 + 1024 : 2 * 4096 + 2048]
    )
    with pytest.raises(ValueError):
        serve.message(b"short")


def test_bad_bytes_from_the_origin_are_refused_and_the_chunk_wanted_again() -> None:
    sw, _ = fetcher()
    out: list[Effect] = []
    for t in range(1, 8):
        out += sw.handle_timer(float(t))
    asked = [e for e in out if isinstance(e, FetchFromOrigin)]
    assert asked and len(asked[0].chunks) == CFG.origin_parallel  # no peers at all
    k = asked[0].chunks[0]
    bad = sw.handle(OriginChunk(artifact=ART, index=k, data=b"\0" * 4096), 8.0)
    assert [(e.index) for e in bad if isinstance(e, OriginRefused)] == [k]
    assert not [e for e in bad if isinstance(e, ChunkVerified)]
    pending = [i for i in asked[0].chunks if i != k]
    t = 8.0
    while k not in pending:  # wanted again: the origin is asked for it once more
        t += 1.0
        out = []
        for i in pending:  # the origin serves the others right
            out += sw.handle(OriginChunk(artifact=ART, index=i, data=MAP.slice(DATA, i)), t)
        out += sw.handle_timer(t)
        pending = [i for e in out if isinstance(e, FetchFromOrigin) for i in e.chunks]
    good = sw.handle(OriginChunk(artifact=ART, index=k, data=MAP.slice(DATA, k)), t)
    assert [e.source for e in good if isinstance(e, ChunkVerified)] == ["origin"]


def test_no_trade_with_a_peer_whose_release_cuts_the_artifact_another_way() -> None:
    """Same artifact, other chunk size: neither side asks or serves, nobody is blamed."""
    other_cut = chunk_map_of(DATA, chunk_size=8192)
    assert other_cut.artifact == ART and other_cut.layout != MAP.layout
    sw, _ = fetcher()
    theirs = m.Bitfield.of(other_cut, range(other_cut.count)).to_wire()
    out = sw.handle(Received(peer=A, data=theirs), 0.0)
    assert requests(out) == [] and not [e for e in out if isinstance(e, Penalised)]
    out = sw.handle(Received(peer=A, data=req(0)), 0.1)  # and it gets nothing from us
    assert not [e for e in out if isinstance(e, Serve)]


def test_a_request_before_any_bitfield_is_not_served() -> None:
    sw = Swarm(config=SwarmConfig(max_block=1024), rng=random.Random(0), now=0.0)
    sw.add(MAP, held=range(16), now=0.0)
    out = sw.handle(Received(peer=A, data=req(0)), 0.0)
    assert [x.reason for x in sends(out, A) if isinstance(x, m.Reject)] == ["missing"]
    sw.handle(Received(peer=A, data=bitfield(set())), 0.0)
    assert [e for e in sw.handle(Received(peer=A, data=req(0)), 0.0) if isinstance(e, Serve)]


def test_a_peer_asking_larger_blocks_than_ours_is_served_within_the_rate() -> None:
    """Its links carry larger frames (say 4 KiB blocks against our 1 KiB): no fault, and a
    block bigger than our burst goes once the bucket is full."""
    cfg = SwarmConfig(max_block=1024, upload_cap=1024.0)  # burst: one 1 KiB block
    sw = seeder(cfg)
    big = m.Request(artifact=ART, chunk=0, offset=0, length=4096).to_wire()
    out = sw.handle(Received(peer=A, data=big), 0.0)
    assert [e.length for e in out if isinstance(e, Serve)] == [4096]
    out = sw.handle(Received(peer=A, data=big), 0.0)
    assert not [e for e in out if isinstance(e, Serve | Penalised)]
    timer = sw.uploader.get_timer()
    # what the first cost on the wire less the burst it had (owed), then one burst's worth
    cost = wire_bytes(4096 + m.BLOCK_OVERHEAD)
    assert cost == 4224 + 3 * 66
    assert timer == pytest.approx(cost / (1024 * (1 - CONTROL_SHARE)))
    assert [e.length for e in sw.handle_timer(timer) if isinstance(e, Serve)] == [4096]


def test_the_largest_messages_fit_their_caps() -> None:
    """A full bitfield of MAX_CHUNKS and a block of MAX_BLOCK at the largest offsets."""
    top = m.MAX_BLOCK
    bf = m.Bitfield(artifact=ART, layout=b"x" * 32, count=16384, bits=b"\xff" * 2048)
    assert len(bf.to_wire()) <= m.MAX_SMALL_BYTES
    blk = m.Block(artifact=ART, chunk=16383, offset=16 * 1024 * 1024, data=b"x" * top)
    assert len(blk.to_wire()) - top <= m.BLOCK_OVERHEAD
    assert m.decode_message(blk.to_wire()) == blk


def test_repeated_haves_or_bitfields_are_paid_for() -> None:
    """Each costs a fill of the pipeline: an honest peer sends a chunk's news once and one
    bitfield per session, so repeats are unsolicited and a stream of them drops the peer."""
    sw, _ = fetcher()
    join(sw, A, {1})
    have = m.Have(artifact=ART, chunk=1).to_wire()
    out: list[Effect] = []
    for _ in range(4):
        out += sw.handle(Received(peer=A, data=have), 0.1)
    out += sw.handle(Received(peer=A, data=bitfield({1})), 0.1)
    assert [p.rule for p in out if isinstance(p, Penalised)] == ["unsolicited"] * 5
    assert [d.peer for d in out if isinstance(d, Drop)] == [A]


# -- the picker's indexes ----------------------------------------------------------------


def check_indexes(sw: Swarm) -> None:
    """The incremental holder counts, pool and unavailable set equal a scan from scratch."""
    dl = sw.artifacts[ART].download
    if dl is None:
        return
    for i in range(MAP.count):
        assert dl.avail[i] == sum(1 for p in dl.peers.values() if i in p.has), i
    free = {i for i in range(MAP.count) if i not in dl.held | set(dl.parts) | dl.origin}
    assert dl.wanted == free
    lacking = {i for i in range(MAP.count) if dl.avail[i] == 0} - dl.held - dl.origin
    assert set(dl.unavailable) == lacking


@pytest.mark.parametrize("seed", range(12))
def test_the_picker_indexes_match_a_scan_whatever_peers_do(seed: int) -> None:
    """Peers come and go with random bitfields, announce chunks, answer, reject or sit on
    requests, the origin serves or refuses: after every step the picker's indexes are
    what a scan of the chunk list would say (the picker no longer scans it)."""
    rng = random.Random(seed)
    sw, _ = fetcher(seed=seed)
    peers = [peer_id(f"p{k}") for k in range(5)]
    out: list[Effect] = []
    t = 0.0
    for _ in range(150):
        t += rng.random() * 0.7
        who = rng.choice(peers)
        roll = rng.random()
        dl = sw.artifacts[ART].download
        if dl is None:
            break
        if roll < 0.2 and who not in dl.peers:
            out = join(sw, who, {i for i in range(16) if rng.random() < 0.4}, now=t)
        elif roll < 0.35 and who in dl.peers:
            missing = [i for i in range(16) if i not in dl.peers[who].has]
            if missing:
                have = m.Have(artifact=ART, chunk=rng.choice(missing)).to_wire()
                out = sw.handle(Received(peer=who, data=have), t)
        elif roll < 0.45:
            out = sw.handle(PeerGone(peer=who), t)
        elif roll < 0.75:  # answer (or reject) a request we sent someone
            asked = [(p, r) for p, r in ((e.peer, r) for e in out for r in requests([e]))]
            if asked:
                p, r = rng.choice(asked)
                if rng.random() < 0.8:
                    out = sw.handle(Received(peer=p, data=block(r)), t)
                else:
                    why = rng.choice(["choked", "busy", "missing"])
                    rej = m.Reject(
                        artifact=ART, chunk=r.chunk, offset=r.offset, length=r.length, reason=why
                    )
                    out = sw.handle(Received(peer=p, data=rej.to_wire()), t)
        elif roll < 0.85 and dl.origin:
            i = rng.choice(sorted(dl.origin))
            if rng.random() < 0.7:
                out = sw.handle(OriginChunk(artifact=ART, index=i, data=MAP.slice(DATA, i)), t)
            else:
                fail = OriginFailed(artifact=ART, index=i, reason="try-peers", retry_after=2.0)
                out = sw.handle(fail, t)
        else:
            out = sw.handle_timer(t)
        check_indexes(sw)


def test_a_choked_peer_is_probed_with_one_request_until_it_serves_again() -> None:
    sw, _ = fetcher()
    out = join(sw, A, range(16))
    first = requests(out, A)
    assert len(first) == CFG.pipeline
    for r in first:
        rej = m.Reject(
            artifact=ART, chunk=r.chunk, offset=r.offset, length=r.length, reason="choked"
        )
        sw.handle(Received(peer=A, data=rej.to_wire()), 0.1)
    assert sw.counters()["rejects"] == CFG.pipeline  # counted (the bench's block_counts)
    later = sw.handle_timer(0.1 + CFG.reject_backoff + 0.5)
    (probe,) = requests(later, A)  # one request, not a pipeline of rejects
    refill = sw.handle(Received(peer=A, data=block(probe)), 3.0)
    assert len(requests(refill, A)) == CFG.pipeline  # it serves: the pipeline again


def test_no_have_goes_to_a_peer_that_holds_the_chunk() -> None:
    sw, _ = fetcher()
    join(sw, B, set(range(16)))  # B holds everything
    out = join(sw, A, set(range(8, 16)))
    reqs = [r for r in requests(out) if r.chunk < 8] or requests(out)
    got: list[Effect] = []
    for r in requests(out):
        got += sw.handle(Received(peer=B if r.chunk < 8 else A, data=block(r)), 0.2)
    verified = [e.index for e in got if isinstance(e, ChunkVerified)]
    assert verified and reqs
    haves = [(e.peer, m.decode_message(e.data)) for e in got if isinstance(e, Send)]
    told = {(p, x.chunk) for p, x in haves if isinstance(x, m.Have)}
    for i in verified:
        assert (B, i) not in told
        assert ((A, i) in told) == (i < 8)


def test_a_chunk_fresh_from_the_origin_is_served_before_anything_else() -> None:
    """Super-seeding: while no peer has a chunk the origin sent us, its blocks jump the
    upload queue, so the swarm sees it before another node fetches it from the origin."""
    cfg = dataclasses.replace(CFG, upload_cap=1024.0)  # one block a second
    sw, _ = fetcher(cfg, held={0})
    out: list[Effect] = []
    for t in (0.5, 1.0, 1.5):
        out += sw.handle_timer(t)
    x = next(i for e in out if isinstance(e, FetchFromOrigin) for i in e.chunks)
    sw.handle(OriginChunk(artifact=ART, index=x, data=MAP.slice(DATA, x)), 1.6)
    for peer in (A, B):
        sw.handle(Received(peer=peer, data=bitfield(set())), 1.6)
    # (the origin chunk's ACKs are paid back by 3.7: the bucket is full again)
    served = [e for e in sw.handle(Received(peer=A, data=req(0, 0)), 3.7) if isinstance(e, Serve)]
    sw.handle(Received(peer=A, data=req(0, 1024)), 3.7)  # waits for the bucket
    sw.handle(Received(peer=B, data=req(x, 0)), 3.7)  # waits too, but jumps the line
    t = 3.7
    while len(served) < 3 and (timer := sw.get_timer()) is not None:
        t = max(t, timer)
        served += [e for e in sw.handle_timer(t) if isinstance(e, Serve)]
    assert [(e.peer, e.chunk) for e in served] == [(A, 0), (B, x), (A, 0)]


def test_how_long_answers_take_is_counted() -> None:
    """``answered``, ``wait_ms``, ``slow_answers``: the time from a request sent to its
    block, for the bench to read (a late block after a timeout is not an answer)."""
    sw, _ = fetcher()
    reqs = requests(join(sw, A, range(16)), A)
    sw.handle(Received(peer=A, data=block(reqs[0])), 0.5)
    sw.handle(Received(peer=A, data=block(reqs[1])), 2.5)
    c = sw.counters()
    assert (c["answered"], c["wait_ms"], c["slow_answers"]) == (2, 3000, 1)
