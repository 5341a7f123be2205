"""The swarm simulator (simulations/swarm.py): real swarm cores over memory links with
per-node up/down rates and churn, one JSON object with the bench's field names."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from simulations import cli
from simulations.swarm import (
    CoreNode,
    Net,
    Node,
    _capped,
    artifact_bytes,
    chunk_map_of,
    fleet_run,
)

FIELDS = {
    "nodes",
    "artifact_bytes",
    "origin_bytes",
    "origin_copies",
    "origin_share",
    "t_all_s",
    "t_min_s",
    "bound_ratio",
    "wall_s",
}
TINY = ["--nodes", "12", "--artifact-mib", "0.5", "--chunk-kib", "32", "--seed", "3"]
TINY += ["--peer-down-mib", "0.5"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert cli.main(["swarm", *argv, "--json"]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_a_tiny_run_prints_the_bench_fields_and_every_node_ends_with_the_bytes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    got = run_cli(TINY, capsys)
    assert FIELDS <= got.keys()
    assert got["nodes"] == 12 and got["artifact_bytes"] == 512 * 1024
    assert got["all_verified"] is True and got["penalties"] == 0
    # the fetchers traded among themselves: the origin sent far fewer than N copies
    assert float(str(got["origin_share"])) < 0.5
    assert float(str(got["origin_copies"])) < 6
    assert float(str(got["bound_ratio"])) >= 1.0
    # F/d_min (0.5 MiB down at 0.5 MiB/s) is the bound here: 1 s (N*F/(u_s + sum u_i): 0.75)
    assert float(str(got["t_min_s"])) == 1.0


def test_the_same_seed_gives_the_same_result(capsys: pytest.CaptureFixture[str]) -> None:
    a, b = run_cli(TINY, capsys), run_cli(TINY, capsys)
    for k in ("wall_s", "peak_rss_mib"):
        a.pop(k), b.pop(k)
    assert a == b


def test_churn_nodes_leave_and_come_back_and_lose_nothing_verified() -> None:
    got = fleet_run(
        nodes=10,
        artifact_mib=0.5,
        chunk_size=32 * 1024,
        peer_down=1.0 * (1 << 20),
        churn_per_min=60.0,
        away_s=0.5,
        seed=5,
    )
    assert int(str(got["leaves"])) > 0
    assert got["all_verified"] is True
    assert got["refetched_chunks"] == 0  # a returning node resumes from what it verified
    assert float(str(got["bound_ratio"])) >= 1.0


def test_the_origin_cuts_a_chunk_by_the_artifacts_own_map() -> None:
    """A lone fetcher of 64 KiB chunks gets every chunk from the origin, and it verifies:
    the origin used to cut by a 4 KiB map whatever the artifact's chunk size was."""
    data = artifact_bytes(256 * 1024)
    cmap = chunk_map_of(data, chunk_size=64 * 1024)
    net = Net()
    f = CoreNode(name="alone", config=_capped(1 << 20), origin={cmap.artifact: data}, seed=1)
    net.add(f)
    f.start(cmap)
    net.run(120, stop=lambda: net.completions == 1)
    assert f.bytes_of(cmap.artifact) == data
    assert sorted(f.origin_asked) == list(range(cmap.count))


def test_a_bad_flag_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["swarm", "--nodes", "0"])
    assert exc.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("need --nodes >= 1, --artifact-mib > 0, --chunk-kib >= 1, --degree >= 0")
    )


def test_release_day_at_24_nodes_keeps_the_origin_rationed() -> None:
    """The brief's run (``--nodes 24 --artifact-mib 16``, seed 7): every node starts with
    nothing, the origin (2 MiB/s, the coordinator's cap of 8 downloaders) answers the rest
    "try-peers"; the origin stays rationed (at most 2 copies) and the fleet near the bound.
    P9's origin_share target (<= 0.05) is a measured figure, not asserted here: it holds on
    some seeds and block sizes and not others (README "Artifacts peer to peer").
    (Before the origin picks were rationed and random: 3.5 copies from a seed peer; with
    the HTTP origin and the old picker 24 copies, every node asking for every chunk.)"""
    got = fleet_run(
        nodes=24, artifact_mib=16, chunk_size=64 * 1024, peer_down=2.5 * (1 << 20), seed=7
    )
    assert got["all_verified"] is True and got["penalties"] == 0
    assert int(str(got["origin_refused"])) > 0  # the cap was in play
    assert float(str(got["origin_copies"])) <= 2.0
    assert float(str(got["origin_share"])) <= 0.05  # the repeat window (1.36 copies without)
    assert 1.0 <= float(str(got["bound_ratio"])) <= 1.5


def test_the_origin_cap_is_the_coordinators_and_a_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from coordinator.origin import DEFAULT_MAX_DOWNLOADERS, DEFAULT_REPEAT_WINDOW

    got = run_cli(TINY, capsys)
    assert got["origin_max_downloaders"] == DEFAULT_MAX_DOWNLOADERS
    assert got["origin_repeat_window"] == DEFAULT_REPEAT_WINDOW
    off = run_cli([*TINY, "--origin-repeat-window", "0"], capsys)
    assert off["origin_repeats_refused"] == 0 and off["all_verified"] is True
    one = run_cli([*TINY, "--origin-max-downloaders", "1", "--origin-repeat-window", "0"], capsys)
    assert one["origin_max_downloaders"] == 1 and one["all_verified"] is True
    assert int(str(one["origin_refused"])) > int(str(off["origin_refused"]))


@dataclass(kw_only=True, eq=False)
class _Recorder(Node):
    """Records what reaches it, and fires a timer it is told to hold."""

    got: list[tuple[float, str, bytes]] = field(default_factory=list)
    wake: float | None = None
    fired: list[float] = field(default_factory=list)

    def received(self, peer: str, data: bytes) -> None:
        assert self.net is not None
        self.got.append((self.net.now, peer, data))

    def timer(self) -> float | None:
        return self.wake

    def fire(self) -> None:
        assert self.net is not None
        self.fired.append(self.net.now)
        self.wake = None


def test_the_net_delivers_in_time_then_push_order_and_skips_stale_timers() -> None:
    """The queue's contract (entries are tuples since the N=10,000 work; guard): frames of
    one instant arrive as they were sent, a frame in flight on a link cut meanwhile is
    dropped, the downlink delays back-to-back frames, and a timer moved before it fell due
    fires once, at its new time."""
    net = Net(latency=0.5)
    a, b, c = (_Recorder(name=n) for n in "abc")
    for node in (a, b, c):
        net.add(node)
    net.adj = {a.id: {b.id, c.id}, b.id: {a.id}, c.id: {a.id}}
    net.down[c.id] = 10.0  # bytes/s
    for i in range(3):
        a.send(b.id, b"x%d" % i)
    a.send(c.id, b"12345")  # 0.5 s away, then 0.5 s through c's downlink
    a.send(c.id, b"67890")  # and 0.5 s more behind the first
    b.wake = 0.2
    net.retime(b)
    b.wake = 0.7  # moved: the entry at 0.2 is stale
    net.retime(b)
    net.at(0.6, lambda: net.adj[a.id].discard(c.id))  # the link to c goes: nothing lands
    net.run(10)
    assert b.got == [(0.5, a.id, b"x0"), (0.5, a.id, b"x1"), (0.5, a.id, b"x2")]
    assert c.got == [] and net.now == 1.5
    assert b.fired == [0.7]
    net.adj[a.id].add(c.id)
    a.send(c.id, b"abcde")  # the downlink is free again at 1.5: lands at 2.0 + 0.5
    net.run(10)
    assert c.got == [(2.5, a.id, b"abcde")]


def test_progress_lines_change_nothing_in_the_run() -> None:
    """``--progress`` is an observer (guard: new): the same figures with and without it,
    and a line every 5 virtual seconds while the fleet is at work."""
    kw: dict[str, Any] = dict(nodes=4, artifact_mib=0.25, chunk_size=32 * 1024, seed=3)
    kw["peer_down"] = 16 * 1024.0  # 16 s for the artifact through one's downlink
    lines: list[str] = []
    quiet, told = fleet_run(**kw), fleet_run(**kw, progress=lines.append)
    for k in ("wall_s", "peak_rss_mib"):
        quiet.pop(k), told.pop(k)
    assert quiet == told and told["all_verified"] is True
    assert len(lines) == int(float(str(told["t_all_s"])) // 5) >= 3
    assert lines[0].startswith("t=5s done=0/4 steps=")


def test_latency_is_an_option_and_the_run_counts_rejects(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Guard (new option): ``--latency-ms`` reaches the net (a slower link finishes no
    sooner) and the run reports the ``choked``/``busy`` answers the cores counted."""
    common = ["swarm", "--nodes", "6", "--artifact-mib", "0.5", "--chunk-kib", "32", "--json"]
    runs = []
    for ms in ("10", "250"):
        assert cli.main([*common, "--latency-ms", ms]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    fast, slow = runs
    assert slow["all_verified"] is True
    assert float(slow["t_all_s"]) > float(fast["t_all_s"])
    assert isinstance(fast["rejects"], int) and fast["rejects"] >= 0
    with pytest.raises(SystemExit) as exit_:
        cli.main([*common, "--latency-ms", "-1"])
    assert exit_.value.code == 2
