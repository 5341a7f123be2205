"""Every file a node keeps in its state directory, and how a damaged one is recovered.

The one list of them (README "Node life cycle"): a node must come back serving, on its own,
whatever happened to any one of these files -- truncated, garbled, garbage appended --
without a crash loop.  The rule for every row is the same: the bad file is moved aside as
``NAME.bad-N`` (``fsutil.quarantine``; ``N`` grows, an earlier one is never overwritten),
what can be rebuilt is rebuilt, and one log line says both.  The tests walk a real node's
state directory and fail on a file no row matches, and damage every row's file.

``pattern`` is a regular expression over the path relative to the state directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["NODE_STATE_FILES", "StateFile", "classify"]

_SHA: Final = "[0-9a-f]{64}"


@dataclass(frozen=True, kw_only=True, slots=True)
class StateFile:
    """One kind of file in the state directory."""

    #: Short stable name (tests are parametrized by it).
    name: str
    #: Regular expression over the relative path (``fullmatch``).
    pattern: str
    #: Who writes it: ``launcher``, ``daemon`` or ``work``.
    writer: str
    #: What a damaged copy becomes.
    recovery: str
    #: Whether its bytes are ever read back (False: damage cannot matter).
    read: bool = True


NODE_STATE_FILES: Final[tuple[StateFile, ...]] = (
    StateFile(
        name="quarantined",
        pattern=".*\\.bad-[0-9]+",
        writer="any",
        recovery="a damaged file kept for a person; never read",
        read=False,
    ),
    StateFile(
        name="temporary",
        pattern="(.*/)?\\.[^/]+\\.tmp|slots/\\.tmp-[^/]+(/.*)?",
        writer="any",
        recovery="half-done writes of a crash; removed at the next start (by the launcher, "
        "and in work/kv by the store; one inside a slot is never imported)",
        read=False,
    ),
    StateFile(
        name="launcher.lock",
        pattern="launcher.lock",
        writer="launcher",
        recovery="an flock target only; its bytes are never read",
        read=False,
    ),
    StateFile(
        name="boot.lock",
        pattern="boot\\.lock",
        writer="stage0",
        recovery="an flock target only (one stage-0 per state dir); its bytes are never read",
        read=False,
    ),
    StateFile(
        name="boot",
        pattern="boot",
        writer="stage0",
        recovery="moved aside by stage-0 and read as empty: no launcher counts as proven, so "
        "the current slot's launcher is tried again (a failed one is not re-tried while "
        "its swap is pending: the launcher has rolled it back by then)",
    ),
    StateFile(
        name="boot-up",
        pattern="boot-up",
        writer="launcher",
        recovery="moved aside by stage-0 and read as absent: a launcher on trial writes it "
        "again when it starts a daemon",
    ),
    StateFile(
        name="link",
        pattern="current|previous",
        writer="launcher",
        recovery="a link that is not slots/<sha256> is moved aside; current is re-pointed at "
        "the newest other slot, else previous, else a bootstrapped one",
    ),
    StateFile(
        name="pending",
        pattern="pending",
        writer="launcher",
        recovery="moved aside; the swap it described is dropped and current runs",
    ),
    StateFile(
        name="verdict",
        pattern="verdict",
        writer="daemon",
        recovery="moved aside; a probation run without a verdict ends by its deadline",
    ),
    StateFile(
        name="denied",
        pattern="denied",
        writer="launcher",
        recovery="moved aside; the sticky-deny list starts empty (a bad build fails its "
        "probation again)",
    ),
    StateFile(
        name="rollbacks",
        pattern="rollbacks",
        writer="launcher",
        recovery="moved aside; the rollback log starts empty",
    ),
    StateFile(
        name="status",
        pattern="status",
        writer="daemon",
        recovery="rewritten by the daemon on its next state change (only people read it)",
    ),
    StateFile(
        name="slot-manifest",
        pattern=f"slots/{_SHA}/SLOT\\.json",
        writer="daemon",
        recovery="moved aside, rewritten from the slot's FILES.json",
    ),
    StateFile(
        name="slot-files",
        pattern=f"slots/{_SHA}/FILES\\.json",
        writer="daemon",
        recovery="moved aside, rebuilt from the verified artifact in store/",
    ),
    StateFile(
        name="slot-bytecode",
        pattern=f"slots/{_SHA}/.+/__pycache__/[^/]+\\.pyc",
        writer="python",
        recovery="Python's own cache, not in FILES.json: a damaged one costs one crash, "
        "after which the launcher drops the slot's caches and Python rebuilds them",
    ),
    StateFile(
        name="slot-source",
        pattern=f"slots/{_SHA}/(p2pupdate|coordinator)/.+",
        writer="daemon",
        recovery="checked against FILES.json before each start: a damaged file is moved "
        "aside and restored from the verified artifact in store/ (and __pycache__ dropped); "
        "without one the launcher falls back to previous (or rolls the swap back)",
    ),
    StateFile(
        name="store",
        pattern=f"store/{_SHA}\\.tar\\.gz",
        writer="daemon",
        recovery="verified by sha256 before every use; a bad copy is moved aside (a new "
        "one is fetched again when offered)",
    ),
    StateFile(
        name="checkpoint",
        pattern="work/checkpoint",
        writer="daemon",
        recovery="moved aside; the work starts from its own durable state",
    ),
    StateFile(
        name="checkpoint-done",
        pattern="work/checkpoint\\.(restored|withdrawn)",
        writer="daemon",
        recovery="consumed handoffs, kept for a person; never read again",
        read=False,
    ),
    StateFile(
        name="kv-lock",
        pattern="work/kv/lock",
        writer="work",
        recovery="an flock target only; its bytes are never read",
        read=False,
    ),
    StateFile(
        name="kv-snapshot",
        pattern="work/kv/snapshot\\.msgpack",
        writer="work",
        recovery="moved aside, rebuilt from the log when it reaches back to the first "
        "write, else the store starts empty",
    ),
    StateFile(
        name="kv-wal",
        pattern="work/kv/wal-[0-9a-f]{32}-[0-9a-f]{16}\\.log",
        writer="work",
        recovery="replayed up to its last valid record; the rest goes to NAME.bad-N",
    ),
    StateFile(
        name="trust",
        pattern="trust/store\\.msgpack",
        writer="daemon",
        recovery="moved aside, rebuilt from the pinned root; documents come back from the "
        "coordinator and gossip",
    ),
    StateFile(
        name="identity",
        pattern="identity\\.pem(\\.copy)?",
        writer="daemon",
        recovery="rewritten from the other copy; both lost: a new key, said loudly once",
    ),
)


def classify(relative: str) -> StateFile | None:
    """The row a path (relative to the state directory) belongs to; None: unknown."""
    for row in NODE_STATE_FILES:
        if re.fullmatch(row.pattern, relative):
            return row
    return None
