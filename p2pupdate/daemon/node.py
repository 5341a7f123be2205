"""The trio shell around ``core.updater``: the daemon's one place of clock, RNG and effects.

The updater decides; this module only carries out its effects and reports back (STYLE.md
5).  It owns the nursery the work runs in, reads ``trio.current_time()`` as the updater's
``now``, draws from one ``random.Random``, and is the only module that executes ``Swap``.

How the effects are carried out (the updater's module docstring lists the duties):

=================  ==========================================================================
``EvaluateGates``  ``--coordinator``: gates 1-2 over the allowlist, scope and releases the
                   replicas sent; else stubbed: the newest build in ``--offer-dir``
``Prefetch``       the offered artifact if ``--offer-dir`` has it, else the coordinator's
                   origin; verified, copied to ``store/<sha>.tar.gz``
``AskCoordinator`` ``--coordinator``: every replica asked, ``q`` signatures combined, the
                   token verified (``coordinator.CoordinatorLink``); ``--grant-all``:
                   granted at once (test only); neither: a coordinator error
``Drain``          ``workload.drain(deadline)``, then ``work/checkpoint`` (atomic)
``Swap``           stage ``slots/<sha>/`` from the store, write ``pending``, exit 75
``ResumeServing``  serve again; the drain's checkpoint is withdrawn (it would be stale)
``RestoreWork``    restore ``work/checkpoint``, serve, then health checks (``health``)
``Confirm``        write ``verdict`` (confirm); ``Confirmed`` once the launcher promoted us
``RollBack``       drain + checkpoint (if ours), ``verdict`` (rollback + reason), exit 76
``Report*``        to every replica (ends the lease; failures feed the breaker); without a
                   coordinator, logged; a failure report marks the rollback log
``LiftDeny``       remove the artifact from ``denied``
``ReturnLease``    to every replica (best effort; the lease lapses anyway)
=================  ==========================================================================

Results of slow effects come back through one memory channel, tagged with the *generation*
in which they were started; the generation advances on every state change, cancelling
whatever was still running for the old state, so a result that arrives late (a drain that
finished after the drain deadline fired) is dropped instead of being fed to a state that
never asked for it.

The checkpoint is a handoff from one process to the next: written by a drain (before a
swap, on stop, before a rollback) and consumed -- renamed to ``checkpoint.restored`` --
right after the next process restored it, before it serves.  From then on the workload's own
durable state is newer, so an old checkpoint is never restored twice.  A process whose
restore failed never writes one (it would overwrite the state it could not read).
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

import p2pupdate

from ..coordclient import CoordinatorUnavailable
from ..core import documents as docs
from ..core import gossip as g
from ..core import updater as up
from ..core.gates import GateResult
from ..fsutil import FileTooLargeError, atomic_write, fsync_dir, read_limited
from ..launcher.artifact import ArtifactError, read_artifact
from ..launcher.codes import EXIT_ROLLBACK, EXIT_STOP, EXIT_SWAP
from ..launcher.faults import crash_point
from ..launcher.state import (
    Pending,
    RollbackEntry,
    SlotManifest,
    StateDir,
    StateError,
    Verdict,
    new_id,
)
from ..work.base import Workload
from .coordinator import CoordinatorLink
from .gossip import GossipService
from .health import self_test
from .offers import OfferError, OfferSource
from .options import DaemonOptions
from .truststate import TrustFile

#: A checkpoint larger than this is refused (the workload's own state should be on disk).
MAX_CHECKPOINT = 512 * 1024 * 1024
#: The lease a ``--grant-all`` grant pretends to have (seconds).
GRANT_ALL_LEASE = 3600.0
#: How long a stop or a rollback may spend draining (the launcher waits 15 s).
STOP_DRAIN = 10.0
#: Bounds on slow effects (the updater has no timer in these states: DESIGN 3).
PREFETCH_TIMEOUT = 600.0
SERVE_START_TIMEOUT = 60.0
#: Keep this much of the launcher's probation window for our own clean rollback.
PROBATION_MARGIN = 1.0
POLL = 0.05
#: Largest artifact fetched from the coordinator's origin.
MAX_ARTIFACT = 1 << 30
#: How often the status file's gossip view is refreshed (if it changed).
GOSSIP_STATUS_INTERVAL = 2.0
#: Events tagged with this are due in whatever state the updater is (nudges).
ANY_GENERATION = -1


#: Transitions of every routine check that found nothing: not logged (one line per check).
_QUIET = frozenset({(up.State.SLEEPING, up.State.NOTICED), (up.State.NOTICED, up.State.SLEEPING)})


class NodeError(Exception):
    """The daemon cannot start here (missing slot, no pending record on probation)."""


class RestoreError(Exception):
    """The checkpoint could not be restored."""


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    state_dir: Path
    slot: str
    mode: str  # "normal" | "probation"
    parent_pid: int | None
    options: DaemonOptions


def _log_to_stderr(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    version = p2pupdate.__version__
    print(
        f"{stamp} p2pupdate-daemon[{os.getpid()}] {version}: {message}",
        file=sys.stderr,
        flush=True,
    )


class Node:
    """One daemon process: the updater, the work, and the effects between them."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        make_workload: Callable[[], Workload],
        offers: OfferSource | None,
        rng: random.Random | None = None,
        log: Callable[[str], None] = _log_to_stderr,
        self_test: Callable[..., list[str]] = self_test,
        coordinator: CoordinatorLink | None = None,
        gossip: GossipService | None = None,
        trust: TrustFile | None = None,
    ) -> None:
        self.config = config
        self.opts = config.options
        #: Makes the work; called again to serve after an undone drain (a drained workload
        #: may not serve twice: ``KVWorkload`` closes its store when ``serve`` returns).
        self.make_workload = make_workload
        self.workload = make_workload()
        self.offers = offers
        self.rng = rng if rng is not None else random.Random()
        self.log = log
        #: ``health.self_test``; in-process tests (where the code is not the slot's) swap it.
        self.self_test = self_test
        self.coord = coordinator
        #: Why gates 1-2 hold this node back now (reported to the coordinator).
        self._held: GateResult | None = None
        if coordinator is not None:
            coordinator.status_fields = self._status_fields
            coordinator.on_nudge = self._nudged
        self.gossip = gossip
        self.trust = trust
        #: The newest allowlist version seen (gossip or coordinator), for the status file.
        self._allowlist_seen: int | None = None
        if gossip is not None:
            gossip.status = self._gossip_status
            gossip.on_deliver = self._gossip_delivered
            if coordinator is not None:
                gossip.introducer = coordinator.introductions
                coordinator.estimate_source = self._gossip_estimate
                coordinator.on_document = gossip.publish
        self.state = StateDir(config.state_dir)
        self.slot = config.slot
        manifest = self.state.slot_manifest(config.slot)
        if manifest is None:
            raise NodeError(f"slot {config.slot[:16]}... is missing or incomplete")
        self.manifest: SlotManifest = manifest
        self.mode = config.mode
        self.pending: Pending | None = None
        self.exit_code: int | None = None
        self.updater: up.Updater | None = None
        self._reporting: set[str] = set()
        self._send, self._recv = trio.open_memory_channel[tuple[int, up.Event]](32)
        self._gen = 0
        self._gen_scopes: list[trio.CancelScope] = []
        self._nursery: trio.Nursery | None = None
        self._serve_scope: trio.CancelScope | None = None
        self._serve_done: trio.Event | None = None
        self._stopping = False
        self._last_refusal = ""
        self._serving = False
        self._drained = False
        #: True once the checkpoint (if any) was restored: only then is our state the node's
        #: state, fit to hand on.  A failed or not yet attempted restore never writes one.
        self._may_checkpoint = False
        self._restored = False

    # -- building the updater from the launcher's records -------------------------------------

    def _denied(self) -> list[up.StickyDeny]:
        try:
            return [
                up.StickyDeny(artifact=d.artifact, counter=d.counter)
                for d in self.state.read_denied()
            ]
        except StateError as exc:
            self.log(f"warning: sticky-deny list unreadable ({exc}); the launcher will repair it")
            return []

    def build_updater(self, now_wall: float) -> up.Updater:
        opts = self.opts
        denied = self._denied()
        if self.mode == "probation":
            try:
                pending = self.state.read_pending()
            except StateError as exc:
                raise NodeError(
                    f"on probation, but the pending record is unusable: {exc}"
                ) from None
            if pending is None or pending.artifact != self.slot:
                raise NodeError("on probation, but no pending record names this slot")
            self.pending = pending
            left = (pending.deadline or now_wall + 120.0) - now_wall - PROBATION_MARGIN
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
            return up.Updater.on_probation(swap, rng=self.rng, config=config, denied=denied)
        config = up.UpdaterConfig(
            check_interval=opts.check_interval,
            drain_timeout=opts.drain_timeout,
            swap_margin=opts.swap_margin,
            notice_spread=opts.gossip_notice_spread,
        )
        try:
            unreported = [e for e in self.state.read_rollbacks() if e.reported is None]
        except StateError as exc:
            self.log(f"warning: rollback log unreadable ({exc}); nothing to report")
            unreported = []
        if unreported:
            last: RollbackEntry = unreported[-1]
            self._reporting = {e.id for e in unreported}
            record = up.RollbackRecord(
                artifact=last.artifact, counter=last.counter, reason=last.reason, token=last.token
            )
            return up.Updater.after_rollback(
                record, installed=self.slot, rng=self.rng, config=config, denied=denied
            )
        return up.Updater(installed=self.slot, rng=self.rng, config=config, denied=denied)

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve and update until told to stop or to swap; the process exit code."""
        self.updater = self.build_updater(time.time())
        self.log(
            f"running {self.manifest.version} from slot {self.slot[:16]}... ({self.mode}; "
            f"package at {Path(p2pupdate.__file__).parent})"
        )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_signals)
            if self.config.parent_pid is not None:
                nursery.start_soon(self._watch_parent, self.config.parent_pid)
            if self.gossip is not None:
                await nursery.start(self.gossip.run)
                self.log(
                    f"gossip: node {self.gossip.node[:16]}... links at {self.gossip.advertised}"
                )
                if self.coord is not None:
                    self.coord.addrs = [self.gossip.advertised]
                nursery.start_soon(self._gossip_status_file)
                if self.opts.zeroconf:
                    await self._start_zeroconf(nursery, self.gossip)
            if self.coord is not None:
                await nursery.start(self.coord.run)
            if self.mode == "normal":
                self.restore_checkpoint(strict=False)
                await self._start_serving()
            self.write_status()
            await self._drive()
        assert self.exit_code is not None
        self.write_status()
        return self.exit_code

    def finish(self, code: int) -> None:
        """Leave with ``code`` (first caller wins): everything in the nursery is cancelled."""
        if self.exit_code is None:
            self.exit_code = code
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _drive(self) -> None:
        self._handle(up.Started())
        while True:
            assert self.updater is not None
            when = self.updater.get_timer()
            with trio.move_on_at(math.inf if when is None else when):
                gen, event = await self._recv.receive()
                if gen == self._gen or gen == ANY_GENERATION:
                    self._handle(event)
                else:
                    self.log(f"dropped a stale {type(event).__name__} (its state has passed)")
                continue
            self._handle(None)

    def _handle(self, event: up.Event | None) -> None:
        """Feed one event (None: the timer) and start the effects that come out."""
        u = self.updater
        assert u is not None
        before = u.state
        now = trio.current_time()
        effects = u.handle_timer(now) if event is None else u.handle(event, now)
        if u.state is not before:
            self._gen += 1
            for scope in self._gen_scopes:
                scope.cancel()
            self._gen_scopes.clear()
            if (before, u.state) not in _QUIET:
                what = "timer" if event is None else type(event).__name__
                self.log(f"{before.value} -> {u.state.value} ({what})")
            self.write_status()
            if self.coord is not None:
                self.coord.status_changed()
        if isinstance(event, up.GatesEvaluated):
            self._held = event.refusal
        if isinstance(event, up.GatesEvaluated) and event.refusal is not None:
            said = str(event.refusal)
            if said != self._last_refusal:  # once per change, not once per check
                self._last_refusal = said
                self.log(f"no update: {said}")
        for effect in effects:
            self._perform(effect)

    def _spawn(self, fn: Callable[..., Awaitable[up.Event | None]], *args: Any) -> None:
        """Run a slow effect in the current generation; its answer is fed back if still due."""
        assert self._nursery is not None
        gen = self._gen
        scope = trio.CancelScope()
        self._gen_scopes.append(scope)

        async def runner() -> None:
            with scope:
                event = await fn(*args)
                if event is not None:
                    await self._send.send((gen, event))

        self._nursery.start_soon(runner)

    def _perform(self, effect: up.Effect) -> None:
        if isinstance(effect, up.EvaluateGates):
            self._spawn(self._evaluate_gates)
        elif isinstance(effect, up.Prefetch):
            self._spawn(self._prefetch, effect)
        elif isinstance(effect, up.AskCoordinator):
            self._spawn(self._ask, effect)
        elif isinstance(effect, up.Drain):
            self._spawn(self._drain, effect)
        elif isinstance(effect, up.Swap):
            self._spawn(self._swap, effect)
        elif isinstance(effect, up.ResumeServing):
            self._resume_serving(effect)
        elif isinstance(effect, up.ReturnLease):
            self.log(f"lease returned unused: {effect.reason}")
            if self.coord is not None and self._nursery is not None:
                self._nursery.start_soon(self.coord.return_lease, effect.token, effect.reason)
        elif isinstance(effect, up.RestoreWork):
            self._spawn(self._restore_work)
        elif isinstance(effect, up.Confirm):
            self._spawn(self._confirm, effect)
        elif isinstance(effect, up.RollBack):
            self._spawn(self._roll_back, effect)
        elif isinstance(effect, up.ReportRejoined):
            self._spawn(self._report_rejoined, effect)
        elif isinstance(effect, up.ReportFailure):
            self._spawn(self._report_failure, effect)
        elif isinstance(effect, up.LiftDeny):
            self._lift_deny(effect)
        else:  # pragma: no cover - a new effect type must be handled here first
            raise TypeError(f"unknown effect {effect!r}")

    # -- the work ---------------------------------------------------------------------------------

    async def _serve_task(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        done = self._serve_done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._serve_scope = scope
                self._serving, self._drained = True, False
                await self.workload.serve(task_status=task_status)
        finally:
            self._serving = False
            done.set()

    async def _stop_serving(self) -> None:
        if self._serve_scope is not None and self._serve_done is not None:
            self._serve_scope.cancel()
            await self._serve_done.wait()

    async def _start_serving(self) -> None:
        assert self._nursery is not None
        with trio.fail_after(SERVE_START_TIMEOUT):
            await self._nursery.start(self._serve_task)
        self.write_status()

    def restore_checkpoint(self, *, strict: bool) -> None:
        """Restore ``work/checkpoint`` if there is one, then consume it.

        ``strict`` (probation): a failure raises ``RestoreError`` and this process will not
        write a checkpoint.  Otherwise the unreadable checkpoint is moved aside (loudly) and
        the work starts from its own durable state.
        """
        path = self.state.checkpoint
        error: str | None = None
        data = b""
        try:
            data = read_limited(path, MAX_CHECKPOINT)
        except FileNotFoundError:
            self._may_checkpoint = True
            return
        except (OSError, FileTooLargeError) as exc:
            error = f"unreadable: {exc}"
        if error is None:
            try:
                self.workload.restore(data)
            except Exception as exc:  # not just ValueError: a checkpoint that cannot be
                error = f"{type(exc).__name__}: {exc}"  # restored must never stop the node
        if error is not None:
            if strict:
                raise RestoreError(error)
            aside = self.state.quarantine(path, error)
            self.log(f"WARNING: checkpoint not restored ({error}); moved to {aside.name}")
            self._may_checkpoint = True  # the work's own durable state is all there is now
            return
        os.replace(path, path.with_name("checkpoint.restored"))
        fsync_dir(path.parent)
        self._restored = self._may_checkpoint = True
        self.log(f"restored the work checkpoint ({len(data)} bytes)")

    async def _write_checkpoint(self) -> None:
        data = self.workload.checkpoint()
        await trio.to_thread.run_sync(atomic_write, self.state.checkpoint, data)

    def _withdraw_checkpoint(self) -> None:
        """A drain was undone: its checkpoint is older than what we will serve now."""
        path = self.state.checkpoint
        if path.exists():
            os.replace(path, path.with_name("checkpoint.withdrawn"))
            fsync_dir(path.parent)

    async def _drain_and_checkpoint(self, deadline: float) -> None:
        if self._serving and not self._drained:
            await self.workload.drain(deadline)
            self._drained = True
        if self._may_checkpoint:
            await self._write_checkpoint()

    # -- effects ----------------------------------------------------------------------------------

    async def _evaluate_gates(self) -> up.Event:
        if self.coord is not None:
            return self.coord.evaluate(installed=self.slot, installed_counter=self.manifest.counter)
        if self.offers is None:
            return up.GatesEvaluated.no_candidate(
                reason="no-source", detail="no --offer-dir (peer-to-peer discovery arrives later)"
            )
        offers = self.offers
        return await trio.to_thread.run_sync(
            lambda: offers.evaluate(installed=self.slot, installed_counter=self.manifest.counter)
        )

    async def _prefetch(self, effect: up.Prefetch) -> up.Event:
        offers = self.offers
        dest = self.state.store_path(effect.artifact)
        try:
            with trio.fail_after(PREFETCH_TIMEOUT):
                if offers is not None and (
                    self.coord is None or (offers.directory / f"{effect.artifact}.tar.gz").exists()
                ):
                    await trio.to_thread.run_sync(offers.fetch, effect.artifact, dest)
                elif self.coord is not None:
                    await self.coord.prefetch(effect.artifact, dest, MAX_ARTIFACT)
                else:  # pragma: no cover - no candidate without a source
                    return up.PrefetchFailed(artifact=effect.artifact, reason="no source")
        except (OfferError, OSError, trio.TooSlowError, CoordinatorUnavailable) as exc:
            self.log(f"prefetch of {effect.artifact[:16]}... failed: {exc}")
            return up.PrefetchFailed(artifact=effect.artifact, reason=str(exc) or "timeout")
        self.log(f"prefetched {effect.artifact[:16]}... (release counter {effect.counter})")
        return up.PrefetchDone(artifact=effect.artifact)

    async def _ask(self, effect: up.AskCoordinator) -> up.Event:
        if self.opts.grant_all:
            self.log(
                f"--grant-all: departure to {effect.candidate.artifact[:16]}... GRANTED "
                "without asking anyone (test only)"
            )
            token = b"grant-all:" + effect.candidate.artifact.encode()
            return up.Granted(token=token, lease_ttl=GRANT_ALL_LEASE)
        if self.coord is not None:
            w = self.workload
            return await self.coord.ask(effect, capacity=w.capacity(), load=w.load())
        return up.CoordinatorError(reason="no coordinator configured (--coordinator URL)")

    async def _drain(self, effect: up.Drain) -> up.Event:
        self.log("draining the work before the swap")
        await self._drain_and_checkpoint(effect.deadline)
        return up.Drained()

    async def _swap(self, effect: up.Swap) -> up.Event | None:
        """The only place a swap is executed: stage the slot, write ``pending``, exit 75."""
        p = effect.pending
        st = self.state
        try:
            if any(d.artifact == p.to_artifact for d in st.read_denied()):
                return up.SwapFailed(reason="sticky-denied on this node")
            data = await trio.to_thread.run_sync(
                read_artifact, st.store_path(p.to_artifact), p.to_artifact
            )

            def stage() -> SlotManifest:
                return st.stage_slot(
                    data,
                    p.to_artifact,
                    counter=p.to_counter,
                    on_entry=lambda n: crash_point("unpack") if n == 8 else None,
                )

            manifest = await trio.to_thread.run_sync(stage)
            crash_point("staged")
            record = Pending(
                id=new_id(),
                artifact=p.to_artifact,
                previous=self.slot,
                counter=p.to_counter,
                token=p.token,
                created=time.time(),
            )
            await trio.to_thread.run_sync(st.write_pending, record)
            crash_point("pending")
        except (ArtifactError, OSError, StateError) as exc:
            self.log(f"swap failed before leaving: {exc}")
            return up.SwapFailed(reason=str(exc) or type(exc).__name__)
        self.log(
            f"staged {manifest.version} ({p.to_artifact[:16]}...); exiting {EXIT_SWAP} so the "
            "launcher starts it on probation"
        )
        self.finish(EXIT_SWAP)
        return None

    def _resume_serving(self, effect: up.ResumeServing) -> None:
        """Not tied to a generation: serving again must finish whatever happens next."""
        self.log(f"resuming service on this version: {effect.reason}")
        self._withdraw_checkpoint()
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_again)

    async def _serve_again(self) -> None:
        await self._stop_serving()
        self.workload = self.make_workload()
        await self._start_serving()

    async def _restore_work(self) -> up.Event:
        try:
            self.restore_checkpoint(strict=True)
        except RestoreError as exc:
            return up.ProbationFailed(reason=f"checkpoint restore failed: {exc}")
        try:
            await self._start_serving()
        except Exception as exc:
            return up.ProbationFailed(reason=f"work did not start: {type(exc).__name__}: {exc}")
        passes = 0
        checked = False
        while True:
            problems = await trio.to_thread.run_sync(
                lambda: self.self_test(
                    slot_dir=self.state.slot_dir(self.slot),
                    slot_version=self.manifest.version,
                    state_dir=self.state.root,
                )
            )
            if problems:
                return up.ProbationFailed(reason="self-test: " + "; ".join(problems))
            if not checked:
                checked = True
                crash_point("probation")
            passes = passes + 1 if self.workload.healthy() else 0
            if passes >= self.opts.health_checks:
                self.log(f"healthy ({passes} checks passed); confirming")
                return up.HealthOk()
            await trio.sleep(self.opts.health_interval)

    async def _confirm(self, effect: up.Confirm) -> up.Event:
        pending = self.pending
        assert pending is not None and pending.artifact == effect.artifact
        verdict = Verdict(
            id=pending.id,
            artifact=pending.artifact,
            verdict="confirm",
            reason="healthy",
            time=time.time(),
            pid=os.getpid(),
        )
        await trio.to_thread.run_sync(self.state.write_verdict, verdict)
        crash_point("confirmed")
        while not self._promoted():
            await trio.sleep(POLL)
        self.mode = "normal"
        self.pending = None
        self.log("the launcher promoted this slot to current")
        return up.Confirmed()

    def _promoted(self) -> bool:
        try:
            return (
                not self.state.pending_path.exists()
                and self.state.read_link("current") == self.slot
            )
        except StateError:
            return False

    async def _roll_back(self, effect: up.RollBack) -> None:
        self.log(f"probation FAILED: {effect.reason}; handing back to the launcher")
        with trio.move_on_after(STOP_DRAIN):
            try:
                await self._drain_and_checkpoint(trio.current_time() + STOP_DRAIN / 2)
            except Exception as exc:
                self.log(f"checkpoint before rollback failed: {type(exc).__name__}: {exc}")
        pending = self.pending
        if pending is not None:
            verdict = Verdict(
                id=pending.id,
                artifact=pending.artifact,
                verdict="rollback",
                reason=effect.reason,
                time=time.time(),
                pid=os.getpid(),
            )
            await trio.to_thread.run_sync(self.state.write_verdict, verdict)
        self.finish(EXIT_ROLLBACK)

    async def _report_rejoined(self, effect: up.ReportRejoined) -> up.Event:
        if self.coord is not None:
            answer = await self.coord.report_rejoined(effect)
            if isinstance(answer, up.Reported):
                self.log(f"rejoined on {effect.artifact[:16]}...: reported (lease ended)")
            return answer
        self.log(f"rejoined on {effect.artifact[:16]}... (no coordinator: logged only)")
        return up.Reported()

    async def _report_failure(self, effect: up.ReportFailure) -> up.Event:
        where = "reported to the coordinator" if self.coord is not None else "logged only"
        self.log(
            f"ROLLBACK REPORT: {effect.artifact[:16]}... (release counter {effect.counter}) "
            f"failed probation here: {effect.reason} ({where})"
        )
        if self.coord is not None:
            answer = await self.coord.report_failure(effect)
            if not isinstance(answer, up.Reported):
                return answer
        if self._reporting:
            ids = set(self._reporting)
            try:
                await trio.to_thread.run_sync(self.state.mark_reported, ids, time.time())
            except (StateError, OSError) as exc:
                self.log(f"cannot mark the rollback reported: {exc}")
            self._reporting.clear()
        return up.Reported()

    # -- the coordinator's hooks ----------------------------------------------------------------

    def _status_fields(self) -> dict[str, Any]:
        u = self.updater
        held = self._held
        return {
            "version": self.manifest.version[:64],
            "artifact": self.slot,
            "state": u.state.heartbeat_state if u is not None else "serving",
            "held": None if held is None else {"gate": held.gate[:32], "reason": held.reason[:64]},
        }

    def _nudged(self, artifact: str) -> None:
        """A verified nudge: fed to the updater whatever state it is in now."""
        try:
            self._send.send_nowait((ANY_GENERATION, up.Nudged(artifact=artifact)))
        except trio.WouldBlock:
            self.log("nudge dropped: the updater is busy")

    def _allowlist_learned(self, allow: docs.Allowlist) -> None:
        """A newer allowlist from a peer: fed to the updater, which decides when to check."""
        event = up.AllowlistLearned(version=allow.version, artifacts=allow.artifacts)
        try:
            self._send.send_nowait((ANY_GENERATION, event))
        except trio.WouldBlock:
            self.log("allowlist notice dropped: the updater is busy")

    # -- gossip's hooks -------------------------------------------------------------------------

    def _gossip_status(self) -> g.Status:
        """What our heartbeats and push-sum contributions say (refreshed every round)."""
        u = self.updater
        w = self.workload
        try:
            load, capacity = float(w.load()), float(w.capacity())
        except Exception:
            load, capacity = 0.0, 0.0
        return g.Status(
            version=self.manifest.version[:64],
            artifact=self.slot,
            state=u.state.heartbeat_state if u is not None else "serving",
            pool=self.opts.pool,
            load=min(max(load, 0.0), 1e18) if math.isfinite(load) else 0.0,
            capacity=min(max(capacity, 0.0), 1e18) if math.isfinite(capacity) else 0.0,
        )

    def _gossip_estimate(self) -> dict[str, float] | None:
        """The pool's push-sum totals for the coordinator's status report."""
        assert self.gossip is not None
        got = self.gossip.estimate(self.opts.pool)
        if got is None:
            return None
        totals, age = got
        return {
            "capacity": totals.capacity,
            "load": totals.load,
            "serving": max(0, round(totals.serving)),
            "age": min(age, 1e9),
        }

    def _gossip_delivered(self, doc: bytes, slot: str) -> None:
        """A verified document that was news here, learned from a peer.

        Releases, allowlists and scopes go where the coordinator's go (gates 1-2 read them
        there).  A nudge is acted on at once, as from the coordinator.  A newer allowlist
        goes to the updater as ``AllowlistLearned``: it brings its check forward by a random
        delay within ``--gossip-notice-spread`` (``UpdaterConfig.notice_spread``).
        """
        kind = slot.partition(":")[0]
        held = self.coord.allowlist if self.coord is not None else None
        known = max(self._allowlist_seen or 0, held.version if held is not None else 0)
        if self.coord is not None and kind in ("release", "allowlist", "scope"):
            self.coord.take(doc, source="gossip")
        if self.trust is None:
            return
        now = int(time.time())
        if kind == "nudge":
            nudge = self.trust.store.verify(docs.Nudge, doc, now).doc
            self.log(f"gossip: nudged by a peer: {nudge.describe()}")
            self._nudged(nudge.artifact)
        elif kind == "allowlist":
            allow = self.trust.store.verify(docs.Allowlist, doc, now).doc
            if allow.version <= known:
                return  # the coordinator (or another peer) brought it first
            self._allowlist_seen = allow.version
            self.log(f"gossip: allowlist v{allow.version} learned from a peer")
            self.write_status()
            self._allowlist_learned(allow)
        elif kind == "root":
            self.log("gossip: a new trusted root was learned from a peer")

    async def _start_zeroconf(self, nursery: trio.Nursery, gossip: GossipService) -> None:
        from ..net.discovery import ZeroconfDiscovery

        me = gossip.contact
        disc = ZeroconfDiscovery(
            node=gossip.node,
            host=me.host,
            port=me.port,
            interfaces=self.opts.zeroconf,
            on_found=lambda c: gossip.add_contacts([c]),
            log=self.log,
        )
        await nursery.start(disc.run)
        self.log(f"zeroconf: announcing {me.host}:{me.port} on {', '.join(self.opts.zeroconf)}")

    async def _gossip_status_file(self) -> None:
        """Keep the status file's gossip view current (only when the view changed)."""
        assert self.gossip is not None
        last: tuple[object, ...] = ()
        while True:
            await trio.sleep(GOSSIP_STATUS_INTERVAL)
            s = self.gossip.summary()
            now = (s["active"], s["passive"], s["links"])
            if now != last:
                last = now
                self.write_status()

    def _lift_deny(self, effect: up.LiftDeny) -> None:
        try:
            lifted = self.state.lift_deny(effect.artifact)
        except (StateError, OSError) as exc:  # the launcher repairs the file; the updater
            self.log(f"cannot lift the deny of {effect.artifact[:16]}...: {exc}")  # already did
            return
        if lifted:
            self.log(f"sticky deny of {effect.artifact[:16]}... lifted (a higher release came)")

    # -- stopping -----------------------------------------------------------------------------------

    async def _watch_signals(self) -> None:
        """Stop on the first SIGTERM/SIGINT; keep catching them until the end (the launcher
        forwards one after a terminal or ``timeout`` may already have sent one)."""
        assert self._nursery is not None
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stopping:
                    continue
                self.log(f"{signal.Signals(signum).name}: stopping")
                self._nursery.start_soon(self.stop)

    async def _watch_parent(self, parent_pid: int) -> None:
        while True:
            await trio.sleep(0.5)
            if os.getppid() != parent_pid:
                self.log(f"the launcher (pid {parent_pid}) is gone: stopping")
                await self.stop()
                return

    async def stop(self) -> None:
        """Graceful stop: drain and checkpoint (unless mid-swap), then exit 0."""
        if self.exit_code is not None or self._stopping:
            return
        self._stopping = True
        u = self.updater
        if u is None or u.state is not up.State.SWAPPING:
            with trio.move_on_after(STOP_DRAIN):
                try:
                    await self._drain_and_checkpoint(trio.current_time() + STOP_DRAIN / 2)
                except Exception as exc:
                    self.log(f"checkpoint on stop failed: {type(exc).__name__}: {exc}")
        self.finish(EXIT_STOP)

    # -- status -------------------------------------------------------------------------------------

    def write_status(self) -> None:
        """``D/status``: what runs, from where, in which state (operators and tests)."""
        w = self.workload
        try:
            healthy = w.healthy()
        except Exception:
            healthy = False
        status = {
            "pid": os.getpid(),
            "version": p2pupdate.__version__,
            "package_dir": str(Path(p2pupdate.__file__).resolve().parent),
            "slot": self.slot,
            "slot_version": self.manifest.version,
            "counter": self.manifest.counter,
            "mode": self.mode,
            "state": self.updater.state.value if self.updater is not None else "starting",
            "exit_code": self.exit_code,
            "work": {
                "name": w.name,
                "serving": self._serving,
                "healthy": healthy,
                "restored": self._restored,
                "port": getattr(w, "port", None),
                "handoffs": getattr(w, "handoffs", None),
            },
            "time": time.time(),
        }
        if self.gossip is not None:
            allow = self._allowlist_seen
            held = self.coord.allowlist if self.coord is not None else None
            if held is not None and (allow is None or held.version > allow):
                allow = held.version
            status["gossip"] = {**self.gossip.summary(), "allowlist": allow}
        try:
            self.state.write_status(status)
        except OSError as exc:
            self.log(f"cannot write status: {exc}")
