"""The node passes its platforms to gate 1 (P12): a release record for another platform is
refused as ``wrong-platform`` -- by the coordinator link's gates and by the signed
file-drop offers alike -- so the node stays on what it runs; one for this interpreter's
platform (``launcher.artifact.node_platforms``) is a candidate as before."""

from __future__ import annotations

import sys
from pathlib import Path

import trio
import trio.testing

from p2pupdate.clock import following_trio
from p2pupdate.core.documents import Release
from p2pupdate.core.gates import WRONG_PLATFORM
from p2pupdate.core.updater import State
from p2pupdate.daemon.node import Node, NodeConfig
from p2pupdate.daemon.nullwork import NullWorkload
from p2pupdate.daemon.offers import OfferSource
from p2pupdate.daemon.options import DaemonOptions
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.launcher.artifact import build_artifact, node_platforms, sha256_hex
from p2pupdate.launcher.codes import EXIT_STOP
from p2pupdate.launcher.state import StateDir
from tests.core.harness import NOW, YEAR, Network, artifact_bytes
from tests.daemon.test_node import _link, inline
from tests.launcher.conftest import Builds
from tests.launcher.harness import REPO

PY = f"cp{sys.version_info.major}{sys.version_info.minor}"
ELSEWHERE = f"{PY}-macosx_11_0_arm64"


def _release(data: bytes, name: str, counter: int, platform: str) -> Release:
    return Release.for_bytes(
        data,
        name=name,
        counter=counter,
        chunk_size=16 * 1024,
        issued=NOW - 60,
        expires=NOW + YEAR,
        platform=platform,
    )


def test_the_link_refuses_a_release_for_another_platform(tmp_path: Path) -> None:
    net = Network()
    link = _link(tmp_path, net)
    assert link.platforms == node_platforms()
    other = _release(artifact_bytes("mac", 5000), "mac", 3, ELSEWHERE)
    assert link.take(net.sign(other), source="test")
    assert link.take(net.allowlist(1, [other.artifact]), source="test")
    assert link.take(net.scope(other.artifact), source="test")
    answer = link.evaluate(installed="0" * 64, installed_counter=2)
    assert answer.candidate is None and answer.refusal is not None
    assert (answer.refusal.gate, answer.refusal.reason) == ("allowlist", WRONG_PLATFORM)
    assert ELSEWHERE in answer.refusal.detail

    here = sorted(p for p in node_platforms() if "manylinux" in p or p.endswith("-any"))[-1]
    mine = _release(artifact_bytes("here", 5000), "here", 4, here)
    assert link.take(net.sign(mine), source="test")
    assert link.take(net.allowlist(2, [mine.artifact]), source="test")
    assert link.take(net.scope(mine.artifact, serial=2), source="test")
    answer = link.evaluate(installed="0" * 64, installed_counter=2)
    assert answer.candidate is not None and answer.candidate.artifact == mine.artifact


def test_the_link_uses_the_platforms_it_is_given(tmp_path: Path) -> None:
    """``platforms=`` replaces the interpreter's tags (what a node checks is injectable)."""
    net = Network()
    link = _link(tmp_path, net)
    link.platforms = frozenset({ELSEWHERE})
    other = _release(artifact_bytes("mac", 5000), "mac", 3, ELSEWHERE)
    assert link.take(net.sign(other), source="test")
    assert link.take(net.allowlist(1, [other.artifact]), source="test")
    assert link.take(net.scope(other.artifact), source="test")
    answer = link.evaluate(installed="0" * 64, installed_counter=2)
    assert answer.candidate is not None and answer.candidate.artifact == other.artifact


def test_a_signed_offer_for_another_platform_is_skipped(tmp_path: Path) -> None:
    net = Network()
    trust = TrustFile.open(tmp_path / "trust", initial_root=net.roots[1], now=NOW)
    offers = tmp_path / "offers"
    offers.mkdir()
    lines: list[str] = []
    src = OfferSource(offers, trust=trust, wall_clock=lambda: NOW, log=lines.append)
    data = build_artifact(REPO, "v2")
    sha = sha256_hex(data)
    (offers / f"{sha}.tar.gz").write_bytes(data)
    (offers / f"{sha}.release").write_bytes(net.sign(_release(data, "v2", 2, ELSEWHERE)))
    answer = src.evaluate(installed="0" * 64, installed_counter=1)
    assert answer.candidate is None
    assert any(WRONG_PLATFORM in line and ELSEWHERE in line for line in lines), lines
    # the same build, signed for no platform (our code alone): a candidate
    (offers / f"{sha}.release").write_bytes(net.sign(_release(data, "v2", 2, "")))
    answer = src.evaluate(installed="0" * 64, installed_counter=1)
    assert answer.candidate is not None and answer.candidate.artifact == sha


async def test_a_node_offered_a_build_for_another_platform_stays(
    tmp_path: Path, builds: Builds, autojump_clock: trio.testing.MockClock
) -> None:
    """The whole daemon (in-process, fake clock): v2 signed for another platform is never a
    candidate -- gate checks go on, nothing is fetched, no swap -- and the same v2 signed
    for no platform is taken at once."""
    v1, v2 = builds.get("v1", 1), builds.get("v2", 2)
    state = StateDir(tmp_path / "state")
    state.stage_slot(v1.path.read_bytes(), v1.sha, counter=1)
    state.set_link("current", v1.sha)
    net = Network()
    trust = TrustFile.open(tmp_path / "trust", initial_root=net.roots[1], now=NOW)
    offers = tmp_path / "offers"
    offers.mkdir()
    data = v2.path.read_bytes()
    (offers / f"{v2.sha}.tar.gz").write_bytes(data)
    (offers / f"{v2.sha}.release").write_bytes(net.sign(_release(data, "v2", 2, ELSEWHERE)))
    lines: list[str] = []
    clock = following_trio()
    options = DaemonOptions(
        work="none", grant_all=True, check_interval=0.1, health_checks=2, health_interval=0.05
    )
    node = Node(
        NodeConfig(
            state_dir=state.root, slot=v1.sha, mode="normal", parent_pid=None, options=options
        ),
        make_workload=NullWorkload,
        offers=OfferSource(offers, trust=trust, wall_clock=lambda: NOW, log=lines.append),
        clock=clock,
        run_blocking=inline,
        log=lines.append,
        self_test=lambda **kw: [],
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        with trio.fail_after(30):
            while node.gate_checks < 20:
                assert node.updater is None or node.updater.state is State.SLEEPING, (
                    node.updater.state
                )
                await trio.sleep(0.05)
        assert state.read_pending() is None
        assert not state.store_path(v2.sha).exists()
        assert sum(WRONG_PLATFORM in line for line in lines) == 1, lines  # said once
        # the same build released for no platform: a candidate, fetched and swapped to
        (offers / f"{v2.sha}.release").write_bytes(net.sign(_release(data, "v2", 2, "")))
        with trio.fail_after(30):
            while state.read_pending() is None:
                await trio.sleep(0.05)
        node.finish(EXIT_STOP)
    pending = state.read_pending()
    assert pending is not None and pending.artifact == v2.sha
