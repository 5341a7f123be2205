"""Boot: the updater a daemon process starts with, built from the launcher's records.

A daemon process does not remember anything itself; what it must do first is written in
the state directory by the processes before it and by the launcher:

* ``--mode probation`` -- the ``pending`` record names the swap this process is the new
  side of (from/to artifact, release counter, departure token) and the launcher's deadline
  for it.  The updater starts ``on_probation`` with a probation timeout that ends
  ``PROBATION_MARGIN`` before that deadline, so the node rolls itself back cleanly instead of
  being killed by the launcher mid-write.
* unreported rollbacks in the rollback log -- the launcher rolled a bad build back to this
  one: the updater starts ``after_rollback`` and reports the failure first.  The ids go with
  it, so the report can mark them reported.
* otherwise a fresh updater on the installed slot.

The sticky-deny list goes to the updater in every case.  An unreadable record is logged and
treated as empty (the launcher repairs it); a probation process without a usable ``pending``
record naming its own slot cannot start at all (``NodeError``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core import updater as up
from ..errors import LocalStateFault
from ..launcher.state import Pending, RollbackEntry, StateDir, StateError
from .options import DaemonOptions

__all__ = ["PROBATION_MARGIN", "Boot", "NodeError", "build_updater", "read_denied"]

#: Keep this much of the launcher's probation window for our own clean rollback.
PROBATION_MARGIN = 1.0
#: The probation window assumed when a ``pending`` record carries no deadline (seconds).
DEFAULT_PROBATION_WINDOW = 120.0


class NodeError(LocalStateFault):
    """The daemon cannot start here (missing slot, no pending record on probation)."""

    rule = "cannot-start"


@dataclass(frozen=True, kw_only=True)
class Boot:
    """What the records said: the updater to start with, and what it was built from."""

    updater: up.Updater
    #: The swap this process is the new side of (probation only).
    pending: Pending | None = None
    #: Rollback-log ids the updater's first report covers (after a rollback only).
    reporting: frozenset[str] = field(default_factory=frozenset)


def read_denied(state: StateDir, log: Callable[[str], None]) -> list[up.StickyDeny]:
    """The launcher's sticky-deny list as the updater takes it (empty if unreadable)."""
    try:
        return [up.StickyDeny(artifact=d.artifact, counter=d.counter) for d in state.read_denied()]
    except StateError as exc:
        log(f"warning: sticky-deny list unreadable ({exc}); the launcher will repair it")
        return []


def build_updater(
    *,
    state: StateDir,
    slot: str,
    mode: str,
    opts: DaemonOptions,
    rng: random.Random,
    now_wall: float,
    log: Callable[[str], None],
) -> Boot:
    """The updater for a process of ``slot`` in ``mode`` (``now_wall``: unix seconds, to
    compare with the launcher's probation deadline)."""
    denied = read_denied(state, log)
    if mode == "probation":
        try:
            pending = state.read_pending()
        except StateError as exc:
            raise NodeError(f"on probation, but the pending record is unusable: {exc}") from None
        if pending is None or pending.artifact != slot:
            raise NodeError("on probation, but no pending record names this slot")
        deadline = pending.deadline or now_wall + DEFAULT_PROBATION_WINDOW
        left = deadline - now_wall - PROBATION_MARGIN
        config = up.UpdaterConfig(
            check_interval=opts.check_interval,
            drain_timeout=opts.drain_timeout,
            swap_margin=opts.swap_margin,
            probation_timeout=max(1.0, left),
            notice_spread=opts.gossip_notice_spread,
        )
        swap = up.PendingSwap(
            from_artifact=pending.previous,
            to_artifact=pending.artifact,
            to_counter=pending.counter,
            token=pending.token,
        )
        updater = up.Updater.on_probation(swap, rng=rng, config=config, denied=denied)
        return Boot(updater=updater, pending=pending)
    config = up.UpdaterConfig(
        check_interval=opts.check_interval,
        drain_timeout=opts.drain_timeout,
        swap_margin=opts.swap_margin,
        notice_spread=opts.gossip_notice_spread,
    )
    try:
        unreported = [e for e in state.read_rollbacks() if e.reported is None]
    except StateError as exc:
        log(f"warning: rollback log unreadable ({exc}); nothing to report")
        unreported = []
    if unreported:
        last: RollbackEntry = unreported[-1]
        record = up.RollbackRecord(
            artifact=last.artifact, counter=last.counter, reason=last.reason, token=last.token
        )
        updater = up.Updater.after_rollback(
            record, installed=slot, rng=rng, config=config, denied=denied
        )
        return Boot(updater=updater, reporting=frozenset(e.id for e in unreported))
    return Boot(updater=up.Updater(installed=slot, rng=rng, config=config, denied=denied))
