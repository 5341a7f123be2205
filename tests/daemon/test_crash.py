"""Crash injection: SIGKILL the node at every step of the swap (issue 3, third "Done when").

For each step the node (launcher + daemon, one process group) runs v1 with
``P2PUPDATE_TEST_CRASH_AT=<step>`` and is handed v2; at that step the process that reaches
it SIGKILLs the whole group (``launcher.faults``).  Then, with no fault injected:

* right after the kill, every state file parses and every link names a complete slot;
* the restarted launcher runs exactly the old or the new version first -- the one the step
  implies (before ``pending`` exists: v1; after: v2 on probation or already promoted);
* the node converges (v2 confirmed and current; for the rollback step, v1 with v2 denied),
  and again every state file parses, with no leftovers;
* no write the KV workload acknowledged -- before the swap, or while the swap was running
  until the moment of the kill -- is lost;
* once the restarted node is stopped (so no write can be in flight), no temp file is left.

Over all steps the number of corrupted files must be 0: each step asserts its own count is
0 (after the kill and after the restart), so the sum is 0 exactly when every case passes --
no separate summary test that would depend on the others running first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pupdate.launcher.faults import STEPS
from p2pupdate.work.protocol import Snapshot, StoreLimits
from tests.launcher.conftest import Builds
from tests.launcher.harness import (
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

#: step -> the version the restarted launcher must start first.
FIRST_AFTER_RESTART = {
    "unpack": "v1",  # slot half-unpacked in slots/.tmp-*: removed, v1 runs and swaps again
    "staged": "v1",  # slot complete but no pending: v1 runs (and swaps again)
    "pending": "v2",  # pending written, exit 75 never happened: v2 on probation, attempt 1
    "attempt": "v2",  # attempt 1 counted, never started: attempt 2
    "probation": "v2",  # v2 restored and serving, killed before its health check passed
    "confirmed": "v2",  # v2 confirmed, not promoted yet: the launcher promotes, runs v2
    "promote": "v2",  # previous repointed, current not yet: promotion completed
    "promoted": "v2",  # current repointed, pending not removed: promotion completed
    "rollback": "v1",  # a bad build's rollback decided, not carried out: finished, v1 runs
}
assert set(FIRST_AFTER_RESTART) == set(STEPS)


def parse_checkpoint(data: bytes) -> object:
    """The KV workload's own reader of its checkpoint (raises on a damaged one)."""
    return Snapshot.decode(data, StoreLimits())


def temp_files(*dirs: Path) -> list[str]:
    """Temp files in ``dirs`` (``.name.xxxx.tmp``, ``slots/.tmp-*``).  Called once the node
    has stopped, when no write can be in flight: every one is a leftover."""
    return sorted(f"{d.name}/{p.name}" for d in dirs for p in d.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_every_step_of_the_swap(
    step: str, tmp_path: Path, nodes: Nodes, builds: Builds
) -> None:
    v1 = builds.get("v1", 1)
    target = builds.broken("health", "v2", 2) if step == "rollback" else builds.get("v2", 2)
    offers = tmp_path / "offers"
    offers.mkdir()
    state_dir = tmp_path / "state"
    port = free_port()
    args = base_args(v1, offers, "--work", "kv", "--port", str(port))
    endpoint = ("127.0.0.1", port)

    node = nodes.start(state_dir, args, crash_at=step, log_name="crash.log")
    node.wait_running("v1")
    writes = trio.run(lambda: write_until(endpoint, lambda: True, prefix="pre", minimum=30))
    offer(offers, target)
    # keep writing until the node dies; only acknowledged writes count
    during = trio.run(
        lambda: write_until(endpoint, lambda: not node.alive(), prefix="during", fast_fail=True)
    )
    writes.acked |= during.acked
    code = node.wait_exit()
    assert code == -9, node.tail()
    assert f"test crash injected at {step!r}" in node.log()
    node.kill()  # reap; the daemon died with the group
    assert not node.group_alive()

    problems = check_state_files(node.state, parse_checkpoint)
    assert problems == [], f"after the kill at {step!r}: {problems}"

    again = nodes.start(state_dir, args, log_name="restart.log")
    if step == "rollback":
        again.wait_running("v1")
        assert [d.artifact for d in again.state.read_denied()] == [target.sha]
        [entry] = again.state.read_rollbacks()
        assert entry.reason.startswith("self-test: injected")
    else:
        st = again.wait_running("v2")
        assert st["slot"] == target.sha
        assert again.state.read_link("current") == target.sha
        assert again.state.read_link("previous") == v1.sha
    first = launched_versions(again.log())[0]
    assert first == FIRST_AFTER_RESTART[step], again.tail()
    assert again.state.read_pending() is None

    problems = check_state_files(again.state, parse_checkpoint)
    assert problems == [], f"after the restart from {step!r}: {problems}"
    assert len(writes.acked) >= 30
    assert lost(endpoint, writes.acked) == []

    # stopped, the node has no write in flight: any temp file now is a leftover of the crash
    assert again.terminate() == 0, again.tail()
    leftovers = temp_files(again.state.root, again.state.slots, again.state.store)
    assert leftovers == [], f"left behind by the kill at {step!r}: {leftovers}"
    assert check_state_files(again.state, parse_checkpoint) == []
