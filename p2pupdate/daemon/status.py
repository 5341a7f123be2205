"""The status the daemon reports: ``D/status`` on disk, and the fields of a coordinator report.

``D/status`` is for operators and tests: what runs, from where, in which state, and how its
work, gossip, the chunk swarm and the replicas are doing (``swarm``: ``SwarmService.summary``, README "The
swarm in the daemon").  It is rewritten atomically on every state change of the updater,
whenever the work starts serving, and -- with gossip -- when the gossip view or the
swarm's counters changed (checked every ``GOSSIP_STATUS_INTERVAL``), and -- with replicas --
when their entry changed (``coordinator``: ``CoordinatorLink.summary``: each replica
connected or not, ``heard``: the wall second of its last message, and
``admission_refused`` with the reason a replica turned the hello away).  Its ``time`` is
the wall clock of the write, ``started`` that of the process's start; ``updater``
(:func:`updater_view`) and ``gossip.links_detail`` (each link's peer, path kind,
direction, since when) are what ``p2pupdate status`` (``cli.nodestatus``) shows a support
person.

The coordinator sees much less (``report_fields``): version, artifact, the heartbeat form
of the state, and why gates 1-2 hold the node back (gate + reason, never the detail).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

import p2pupdate

from ..core import documents as docs
from ..core import updater as up
from ..core.gates import GateResult
from ..launcher.state import SlotManifest, StateDir
from .gossip import GossipService
from .workhost import WorkHost

__all__ = [
    "GOSSIP_STATUS_INTERVAL",
    "daemon_status",
    "gossip_view",
    "newest_allowlist",
    "refresh_on_change",
    "refresh_on_gossip_change",
    "report_fields",
    "updater_view",
    "write_status",
]

#: How often the status file's gossip view is refreshed (if it changed).
GOSSIP_STATUS_INTERVAL = 2.0


def report_fields(
    *, manifest: SlotManifest, slot: str, state: up.State | None, held: GateResult | None
) -> dict[str, Any]:
    """What a status report to the coordinator says about this node."""
    return {
        "version": manifest.version[:64],
        "artifact": slot,
        "state": state.heartbeat_state if state is not None else "serving",
        "held": None if held is None else {"gate": held.gate[:32], "reason": held.reason[:64]},
    }


def newest_allowlist(seen: int | None, held: docs.Allowlist | None) -> int | None:
    """The newest allowlist version this node knows: learned by gossip (``seen``) or held
    from the coordinator (``held``); None if neither."""
    if held is not None and (seen is None or held.version > seen):
        return held.version
    return seen


def gossip_view(gossip: GossipService, *, allowlist: int | None) -> dict[str, Any]:
    """The status file's ``gossip`` entry: the views, each link's path kind (``paths``:
    ``tcp`` / ``host`` / ``srflx`` / ``prflx`` / ``relay``), links per transport, and the
    bytes moved over TURN relays (``relayed_bytes``: relay is a cost); ``links_detail``:
    each link's peer, path kind, direction and since when (``GossipService.links_detail``)."""
    return {**gossip.summary(), "links_detail": gossip.links_detail(), "allowlist": allowlist}


def updater_view(
    updater: up.Updater | None,
    *,
    held: GateResult | None,
    next_check: float | None,
    lease: dict[str, Any] | None,
    last_error: str | None,
) -> dict[str, Any]:
    """The status file's ``updater`` entry: what the node works towards and what it waits
    for, so ``p2pupdate status`` can say why it has not moved (README "CLI").

    ``candidate``: the artifact gates 1-2 allow (and its release counter); ``held``: the
    last gate check's "no" when nothing is allowed (gate, reason, detail); ``next_check``:
    wall seconds of the updater's timer (the next check asleep, the end of a refusal's
    ``retry_after`` or of a backoff); ``coordinator_errors`` in a row and the last one's
    reason (while backing off); ``lease``: the departure granted (while draining and
    swapping: the artifact, when it was granted and when it lapses, wall seconds)."""
    state = updater.state if updater is not None else None
    c = updater.candidate if updater is not None else None
    return {
        "candidate": None
        if c is None
        else {"artifact": c.artifact, "counter": c.counter, "force": c.force},
        "held": None
        if held is None or held.ok
        else {"gate": held.gate[:32], "reason": held.reason[:64], "detail": held.detail[:300]},
        "next_check": next_check,
        "coordinator_errors": updater.attempts if updater is not None else 0,
        "last_error": last_error[:300]
        if last_error is not None and state is up.State.BACKING_OFF
        else None,
        "lease": lease if state in (up.State.DRAINING, up.State.SWAPPING) else None,
    }


def daemon_status(
    *,
    slot: str,
    manifest: SlotManifest,
    mode: str,
    state: up.State | None,
    exit_code: int | None,
    work: WorkHost,
    wall: float,
    refusal: up.RefusalCause | None = None,
) -> dict[str, Any]:
    """``D/status`` without its gossip entry (``wall``: unix seconds of this write).

    ``waiting_on`` says what a refused node waits for (its gate and reason, its place in
    the replica's queue for a capacity refusal, and the allowlist version and scope serial
    a newer one of which ends the wait), so an operator sees why it has not moved."""
    w = work.workload
    waiting = None
    if refusal is not None and state is up.State.REFUSED:
        waiting = {
            "gate": refusal.gate,
            "reason": refusal.reason,
            "queue_position": refusal.position,
            "allowlist_version": refusal.allowlist_version,
            "scope_serial": refusal.scope_serial,
        }
    return {
        "pid": os.getpid(),
        "version": p2pupdate.__version__,
        "package_dir": str(Path(p2pupdate.__file__).resolve().parent),
        "slot": slot,
        "slot_version": manifest.version,
        "counter": manifest.counter,
        "mode": mode,
        "state": state.value if state is not None else "starting",
        "exit_code": exit_code,
        "waiting_on": waiting,
        "work": {
            "name": w.name,
            "serving": work.serving,
            "healthy": work.healthy(),
            "restored": work.restored,
            "port": getattr(w, "port", None),
            "handoffs": getattr(w, "handoffs", None),
        },
        "time": wall,
    }


def write_status(state: StateDir, status: dict[str, Any], log: Callable[[str], None]) -> None:
    """Write ``D/status`` atomically; a failure is logged (the node keeps running)."""
    try:
        state.write_status(status)
    except OSError as exc:
        log(f"cannot write status: {exc}")


async def refresh_on_gossip_change(
    gossip: GossipService,
    write: Callable[[], None],
    swarm: Callable[[], object] = dict,
    interval: float = GOSSIP_STATUS_INTERVAL,
) -> None:
    """Keep the status file's gossip view and ``swarm`` object (``SwarmService.summary``)
    current (rewritten only when one changed)."""
    last: tuple[object, ...] = ()
    while True:
        await trio.sleep(interval)
        s = gossip.summary()
        now = (s["active"], s["passive"], s["links"], s["paths"], s["relayed_bytes"], swarm())
        if now != last:
            last = now
            write()


async def refresh_on_change(
    summary: Callable[[], object],
    write: Callable[[], None],
    interval: float = GOSSIP_STATUS_INTERVAL,
) -> None:
    """Rewrite the status file whenever ``summary()`` (the replicas' entry) changed: a
    replica connecting or refusing the hello is news to an operator, not an update step."""
    last = summary()
    while True:
        await trio.sleep(interval)
        now = summary()
        if now != last:
            last = now
            write()
