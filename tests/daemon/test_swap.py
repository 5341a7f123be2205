"""A real node swaps itself from v1 to v2 (issue 3, first "Done when").

The node process runs from slot v1 (a build of this tree), is handed v2 by a file drop
with the gates stubbed to "granted" (``--grant-all``, test only), and must drain, swap,
restart from slot v2 -- the daemon reports version "v2" and runs the slot's files --
restore its work state, and confirm, after which the launcher promotes v2 to ``current``.

With ``--work kv`` a client keeps writing through the whole swap: every acknowledged write
is still there afterwards and the client saw zero failed requests (it retried across the
restart).  With ``--work none`` the handoff counter shows the checkpoint was restored.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from p2pupdate.core.documents import Release
from tests.core.harness import Network, key_for
from tests.launcher.conftest import Builds
from tests.launcher.harness import (
    FAST,
    Nodes,
    base_args,
    check_state_files,
    free_port,
    launched_versions,
    offer,
)

from .kvutil import lost, write_until

#: Real processes (launcher + daemon groups): run by scripts/test, deselect with -m 'not slow'.
pytestmark = pytest.mark.slow


def _assert_swapped(node, v1, v2, before) -> dict:  # type: ignore[no-untyped-def]
    st = node.wait_running("v2")
    state = node.state
    assert st["slot"] == v2.sha and st["counter"] == 2 and st["pid"] != before["pid"]
    assert st["package_dir"] == str((state.slot_dir(v2.sha) / "p2pupdate").resolve())
    assert (state.read_link("current"), state.read_link("previous")) == (v2.sha, v1.sha)
    assert state.read_pending() is None and state.read_verdict() is None
    assert state.read_denied() == [] and state.read_rollbacks() == []
    assert st["work"]["restored"] is True
    assert not state.checkpoint.exists()  # consumed by the restore
    assert launched_versions(node.log()) == ["v1", "v2"]
    log = node.log()
    for step in ("draining -> swapping", "exiting 75", "on probation", "promoted v2"):
        assert step in log, step
    assert check_state_files(state) == []
    return st


def test_swap_v1_to_v2_with_null_work(tmp_path: Path, nodes: Nodes, builds: Builds) -> None:
    v1, v2 = builds.get("v1", 1), builds.get("v2", 2)
    offers = tmp_path / "offers"
    offers.mkdir()
    node = nodes.start(tmp_path / "state", base_args(v1, offers, "--work", "none"))
    before = node.wait_running("v1")
    assert before["work"]["handoffs"] == 0
    offer(offers, v2)
    t0 = time.monotonic()
    st = _assert_swapped(node, v1, v2, before)
    assert st["work"]["handoffs"] == 1  # v2 restored what v1 checkpointed
    assert time.monotonic() - t0 < 15


def test_swap_v1_to_v2_with_kv_keeps_every_acknowledged_write(
    tmp_path: Path, nodes: Nodes, builds: Builds
) -> None:
    v1, v2 = builds.get("v1", 1), builds.get("v2", 2)
    offers = tmp_path / "offers"
    offers.mkdir()
    port = free_port()
    node = nodes.start(
        tmp_path / "state", base_args(v1, offers, "--work", "kv", "--port", str(port))
    )
    before = node.wait_running("v1")
    assert before["work"]["port"] == port
    endpoint = ("127.0.0.1", port)
    first = trio.run(lambda: write_until(endpoint, lambda: True, prefix="before", minimum=50))

    def swapped() -> bool:
        st = node.status()
        return bool(st and st["version"] == "v2" and st["state"] == "sleeping")

    offer(offers, v2)
    during = trio.run(lambda: write_until(endpoint, swapped, prefix="during", minimum=20))
    _assert_swapped(node, v1, v2, before)
    assert during.failed == 0 and during.client_failed == 0  # nobody saw the swap fail
    acked = first.acked | during.acked
    assert lost(endpoint, acked) == []


def test_signed_offers_under_a_trust_root(tmp_path: Path, nodes: Nodes, builds: Builds) -> None:
    """With ``--trust-root``, the build must come with a release record signed under it:
    a forged record is ignored (the node stays on v1), a genuine one is installed."""
    now = int(time.time())
    net = Network(now=now)
    root = tmp_path / "root.doc"
    root.write_bytes(net.roots[1])
    v1, v2 = builds.get("v1", 1), builds.get("v2", 2)
    data = v2.path.read_bytes()
    release = Release.for_bytes(
        data, name="v2", counter=2, chunk_size=64 * 1024, issued=now - 60, expires=now + 3600
    )
    offers = tmp_path / "offers"
    offers.mkdir()
    (offers / f"{v2.sha}.tar.gz").write_bytes(data)
    forged = net.sign(release, signers=[key_for("mallory")])
    (offers / f"{v2.sha}.release").write_bytes(forged)
    node = nodes.start(
        tmp_path / "state",
        [
            *("--initial-artifact", str(v1.path), "--grant-all", "--offer-dir", str(offers)),
            *("--trust-root", str(root), "--work", "none", *FAST),
        ],
    )
    node.wait_running("v1")
    node.wait_for("the forged record to be refused", lambda: "offer ignored" in node.log())
    # three more gate checks (the status file counts them) see the forgery and move nowhere
    checks = node.gate_checks()
    node.wait_for("three more gate checks", lambda: node.gate_checks() >= checks + 3)
    assert node.state.read_pending() is None
    assert launched_versions(node.log()) == ["v1"]

    (offers / f"{v2.sha}.release").write_bytes(net.sign(release))
    st = node.wait_running("v2")
    assert st["counter"] == 2
    assert (node.state.root / "trust" / "store.msgpack").is_file()
