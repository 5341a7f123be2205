"""The origin's gate (``coordinator.origin.OriginGate``): the downloader cap and the repeat
window, on a fake clock."""

from __future__ import annotations

import pytest

from coordinator.origin import REPEAT_RETRY, OriginConfig, OriginGate

ART = "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(**config: float) -> tuple[OriginGate, Clock]:
    clock = Clock()
    return OriginGate(OriginConfig(**config), clock=clock), clock  # type: ignore[arg-type]


def test_a_chunk_just_sent_to_one_node_is_not_sent_to_another_within_the_window() -> None:
    g, clock = gate(repeat_window=2.0)
    assert g.admit(ART, "node:a", 3) is None
    assert g.admit(ART, "node:b", 3) == REPEAT_RETRY  # the swarm has it: try peers
    assert g.admit(ART, "node:b", 4) is None  # another chunk: served
    assert g.admit(ART, "node:a", 3) is None  # the same downloader again is no repeat
    clock.now += 1.0
    assert g.admit(ART, "node:c", 3) == REPEAT_RETRY  # a's second ask renewed it
    clock.now += 1.0
    assert g.admit(ART, "node:c", 3) is None  # the window passed: whoever asks gets it
    assert g.admit(ART, "node:b", None) is None  # a whole-artifact GET is never a repeat
    s = g.status(lambda _: True)
    assert s["repeat_window"] == 2.0
    assert s["artifacts"][ART]["repeats_refused"] == 2
    assert s["artifacts"][ART]["refused"] == 2


def test_no_chunk_is_withheld_longer_than_the_window_and_the_memory_stays_bounded() -> None:
    g, clock = gate(repeat_window=2.0, max_downloaders=1000)
    for i in range(500):  # 500 chunks to 500 nodes, 10 ms apart
        assert g.admit(ART, f"node:{i:03}", i) is None
        clock.now += 0.01
    clock.now += 2.0
    assert g.admit(ART, "node:late", 7) is None  # every earlier send is past the window
    assert len(g._per[ART].sent) == 1  # the others were forgotten


def test_a_zero_window_turns_it_off_and_a_bad_one_is_refused() -> None:
    g, _ = gate(repeat_window=0.0)
    assert g.admit(ART, "node:a", 3) is None
    assert g.admit(ART, "node:b", 3) is None
    with pytest.raises(ValueError, match="repeat window"):
        OriginConfig(repeat_window=-1.0)
    with pytest.raises(ValueError, match="repeat window"):
        OriginConfig(repeat_window=float("nan"))


def test_the_downloader_cap_still_holds_and_a_repeat_does_not_take_a_place() -> None:
    g, clock = gate(max_downloaders=1, window=5.0)
    assert g.admit(ART, "node:a", 0) is None
    assert g.admit(ART, "node:b", 0) == REPEAT_RETRY  # refused as a repeat, not counted
    assert g.admit(ART, "node:b", 1) == 5  # the cap: a is a downloader for 5 s more
    clock.now += 5.0
    assert g.admit(ART, "node:b", 1) is None
