"""Stage-0 in real processes (P12 item 2): the launcher runs from the current slot, a new
launcher comes with an update and is tried, a broken one is fallen back from.

Every node here is ``python -m p2pupdate node`` (stage-0 is its default path): its pid is
stage-0, whose one child is the launcher, whose child is the daemon.  The builds are
code-only builds of this tree (``build_artifact``) with one file patched before packing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pupdate.launcher import stage0

from .conftest import Builds
from .harness import (
    PROBATION,
    Build,
    NodeProcess,
    Nodes,
    base_args,
    make_build,
    offer,
    patched_tree,
)

pytestmark = pytest.mark.slow

#: What the launcher of the "launcher changed" build says at start (its main.py patched).
MARK = "launcher v2 says hello"


def _launcher_build(tmp: Path, version: str, counter: int, edit: str) -> Build:
    d = tmp / version
    d.mkdir()
    if edit == "hello":
        edits = {
            "p2pupdate/launcher/main.py": lambda t: t.replace(
                "    _booted_by_stage0(config)\n",
                f"    _booted_by_stage0(config)\n    print({MARK!r}, file=sys.stderr, flush=True)\n",
            )
        }
    else:  # the launcher exits 1 at once (its daemon would be fine)
        edits = {
            "p2pupdate/launcher/__main__.py": lambda t: t.replace(
                "    sys.exit(main())", '    sys.exit("broken launcher: exits at start")'
            )
        }
    return make_build(d, version, counter, source=patched_tree(d, edits))


@pytest.fixture(scope="module")
def launcher_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Build]:
    tmp = tmp_path_factory.mktemp("launcher-builds")
    return {
        "v2": _launcher_build(tmp, "v2", 2, "hello"),
        "v2bad": _launcher_build(tmp, "v2bad", 2, "exit"),
    }


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def _launcher_slot(node: NodeProcess) -> str:
    """The slot the node's launcher process runs from ('' for the installed copy), read
    from its command line (stage-0's only child), and its daemon is its child."""
    status = node.status() or {}
    (launcher,) = _children(node.proc.pid)
    assert status["pid"] in _children(launcher)
    argv = _cmdline(launcher)
    if "-c" in argv and argv[argv.index("-c") + 1] == stage0.SLOT_BOOT:
        return Path(argv[argv.index("-c") + 2]).name
    assert argv[argv.index("-m") + 1] == "p2pupdate.launcher", argv
    return ""


def test_the_launcher_runs_from_the_slot_and_a_new_one_is_tried(
    tmp_path: Path, nodes: Nodes, builds: Builds, launcher_builds: dict[str, Build]
) -> None:
    v1, v2 = builds.get("v1", 1), launcher_builds["v2"]
    offers = tmp_path / "offers"
    offers.mkdir()
    copy = tmp_path / "lib" / "stage0.py"  # as `p2pupdate install` copies it out of the package
    copy.parent.mkdir()
    copy.write_bytes(Path(stage0.__file__).read_bytes())
    args = base_args(v1, offers, "--work", "none", "--stage0", str(copy))
    node = nodes.start(tmp_path / "state", args)
    node.wait_running("v1")
    st = node.state
    assert _cmdline(node.proc.pid)[1:4] == ["-I", "-S", str(copy)]  # the node's pid: stage-0
    # the installed copy bootstrapped v1, then handed over to v1's own launcher, on trial
    assert node.wait_for("v1's launcher", lambda: _launcher_slot(node) == v1.sha)
    assert f"running from {st.slot_dir(v1.sha)}/p2pupdate/launcher" in node.log()
    assert stage0.read_boot(str(st.root))["good"] == v1.sha

    offer(offers, v2)
    node.wait_for("v2 promoted", lambda: st.read_link("current") == v2.sha, timeout=PROBATION * 3)
    node.wait_running("v2")
    assert node.wait_for("v2's launcher", lambda: _launcher_slot(node) == v2.sha)
    assert MARK in node.log()  # the new launcher's code ran: it came with the update
    assert f"launcher of {v2.sha} on trial" in node.log()
    assert stage0.read_boot(str(st.root))["good"] == v2.sha
    assert st.read_rollbacks() == [] and st.read_denied() == []
    assert node.terminate() == 0  # SIGTERM to stage-0 stops launcher and daemon in order


def test_a_launcher_that_fails_to_come_up_is_rolled_back_by_stage0(
    tmp_path: Path, nodes: Nodes, builds: Builds, launcher_builds: dict[str, Build]
) -> None:
    v1, bad = builds.get("v1", 1), launcher_builds["v2bad"]
    offers = tmp_path / "offers"
    offers.mkdir()
    node = nodes.start(tmp_path / "state", base_args(v1, offers, "--work", "none"))
    before = node.wait_running("v1")
    st = node.state
    node.wait_for("v1's launcher", lambda: _launcher_slot(node) == v1.sha)

    offer(offers, bad)
    [entry] = node.wait_for("the rollback", st.read_rollbacks, timeout=PROBATION * 3)
    reason = f"launcher of {bad.sha} failed to come up: exit 1"
    assert entry.artifact == bad.sha and entry.previous == v1.sha
    assert entry.reason == reason, node.tail()
    assert [(d.artifact, d.reason) for d in st.read_denied()] == [(bad.sha, reason)]
    assert "broken launcher: exits at start" in node.log()

    # the daemon is back on v1, under v1's launcher (the proven one), never on the bad slot
    after = node.wait_running("v1")
    assert after["pid"] != before["pid"] and st.read_link("current") == v1.sha
    assert node.wait_for("v1's launcher", lambda: _launcher_slot(node) == v1.sha)
    assert "v2bad" not in [line for line in node.log().splitlines() if "daemon pid" in line]
    boot = stage0.read_boot(str(st.root))
    assert boot["good"] == v1.sha and boot["failed"] == bad.sha and boot["reason"] == reason
    node.wait_for("the rollback report", lambda: st.read_rollbacks()[0].reported is not None)

    # never tried again: the bad build stays offered; more gate checks start nothing
    checks = node.gate_checks()
    node.wait_for("five more gate checks", lambda: node.gate_checks() >= checks + 5)
    assert st.read_pending() is None
    assert node.log().count(f"launcher of {bad.sha} on trial") == 1
    assert node.terminate() == 0


def test_a_daemon_that_fails_probation_under_its_own_launcher_hands_back_to_the_old_one(
    tmp_path: Path, nodes: Nodes, builds: Builds
) -> None:
    """The new launcher came up and ran its daemon on probation; the daemon failed its
    self-test: that launcher rolls back as always, then hands over, since stage-0's pick is
    the old slot again -- the node ends on the old slot's launcher, not the denied one's."""
    v1, bad = builds.get("v1", 1), builds.broken("health", "v2bad", 2)
    offers = tmp_path / "offers"
    offers.mkdir()
    node = nodes.start(tmp_path / "state", base_args(v1, offers, "--work", "none"))
    node.wait_running("v1")
    st = node.state
    offer(offers, bad)
    [entry] = node.wait_for("the rollback", st.read_rollbacks, timeout=PROBATION * 3)
    assert entry.reason.startswith("self-test: injected"), entry.reason
    node.wait_running("v1")
    assert node.wait_for("v1's launcher", lambda: _launcher_slot(node) == v1.sha)
    log = node.log()
    assert f"launcher of {bad.sha} came up" in log  # its launcher was fine...
    assert "handing over to stage-0: the launcher of v1" in log  # ...and handed back
    assert stage0.read_boot(str(st.root))["good"] == v1.sha
    assert node.terminate() == 0
