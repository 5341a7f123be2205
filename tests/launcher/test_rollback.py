"""Bad builds roll themselves back, within the probation window, and are never retried.

Two broken builds of this very tree (issue 3, "Done when"):

* ``import`` -- ``p2pupdate/daemon/__main__.py`` raises at import: every start crashes, the
  launcher gives it ``--max-attempts`` starts and rolls back;
* ``health`` -- the daemon starts and serves but its self-test fails: it asks for the
  rollback itself (exit 76) on the first start.

Both end with the node back on v1 (same slot, ``current`` never moved), the build
sticky-denied and logged, the rollback reported by v1, and no further attempt although the
build stays offered and the node keeps checking every 0.3 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Builds
from .harness import PROBATION, Nodes, base_args, launched_versions, offer

#: Real processes (launcher + daemon groups): run by scripts/test, deselect with -m 'not slow'.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["import", "health"])
def test_bad_build_is_rolled_back_and_never_retried(
    kind: str, tmp_path: Path, nodes: Nodes, builds: Builds
) -> None:
    v1 = builds.get("v1", 1)
    bad = builds.broken(kind, "v2bad", 2)
    offers = tmp_path / "offers"
    offers.mkdir()
    node = nodes.start(tmp_path / "state", base_args(v1, offers, "--work", "none"))
    before = node.wait_running("v1")
    st = node.state

    offer(offers, bad)
    pending = node.wait_for("the swap to the bad build", st.read_pending, timeout=20)
    started = pending.created
    entries = node.wait_for("the rollback", st.read_rollbacks, timeout=PROBATION * 3 + 10)
    [entry] = entries
    # rolled back within the probation window of a single start, all attempts included
    assert entry.time - started < PROBATION, (entry.time - started, node.tail())
    assert entry.artifact == bad.sha and entry.previous == v1.sha
    if kind == "import":
        assert entry.reason == "failed 3 of 3 starts: crashed (exit 1)"
        assert "broken build: dies at import" in node.log()
    else:
        assert entry.reason.startswith("self-test: injected: this build is broken")

    # back on v1: a new v1 process in after_rollback mode, which reports the failure
    after = node.wait_running("v1")
    assert after["slot"] == v1.sha and after["pid"] != before["pid"]
    assert st.read_link("current") == v1.sha
    assert [(d.artifact, d.counter) for d in st.read_denied()] == [(bad.sha, 2)]
    node.wait_for("the rollback report", lambda: st.read_rollbacks()[0].reported is not None)
    assert "ROLLBACK REPORT" in node.log()
    assert bad.sha not in st.list_slots()  # garbage-collected

    # never retried: the build is still offered and the node checks every 0.3 s; five more
    # gate checks (the status file counts them) see it and none starts a swap
    starts = launched_versions(node.log())
    checks = node.gate_checks()
    node.wait_for("five more gate checks", lambda: node.gate_checks() >= checks + 5)
    assert st.read_pending() is None
    assert launched_versions(node.log()) == starts
    assert starts.count("v2bad") == (3 if kind == "import" else 1)
    assert node.status()["pid"] == after["pid"]  # type: ignore[index]
    assert len(st.read_rollbacks()) == 1


def test_a_higher_release_lifts_the_sticky_deny(
    tmp_path: Path, nodes: Nodes, builds: Builds
) -> None:
    v1 = builds.get("v1", 1)
    bad = builds.broken("health", "v2bad", 2)
    v3 = builds.get("v3", 3)
    offers = tmp_path / "offers"
    offers.mkdir()
    node = nodes.start(tmp_path / "state", base_args(v1, offers, "--work", "none"))
    node.wait_running("v1")
    offer(offers, bad)
    node.wait_for("the rollback", node.state.read_rollbacks, timeout=30)
    node.wait_running("v1")
    assert [d.artifact for d in node.state.read_denied()] == [bad.sha]

    offer(offers, v3)  # counter 3 > the denied 2: the deny is lifted, v3 installed
    st = node.wait_running("v3")
    assert st["counter"] == 3
    assert node.state.read_denied() == []
    assert "sticky deny" in node.log() and "lifted" in node.log()
    assert node.state.read_link("previous") == v1.sha
