"""The trio shell around ``core.updater``: the daemon's one place of clock, RNG and effects.

The updater decides; this module only carries out its effects and reports back (README
"Architecture").  It owns the nursery the work runs in, reads ``clock.monotonic()`` (trio's
clock) as the updater's ``now``, draws from one ``random.Random``, and is the only module
that executes ``Swap``.  What it starts from, the work it serves, the status it writes and
what gossip and the coordinator ask of it each have a module of their own:

* ``boot``     -- the updater built from the launcher's records (probation, rollback log)
* ``workhost`` -- serving, draining, the checkpoint handoff between processes
* ``status``   -- ``D/status`` and the fields of a coordinator report
* ``hooks``    -- what gossip and the coordinator link ask of the node, and tell it

How the effects are carried out (the updater's module docstring lists the duties):

=================  ==========================================================================
``EvaluateGates``  ``--coordinator``: gates 1-2 over the allowlist, scope and releases the
                   replicas sent; else stubbed: the newest build in ``--offer-dir``
``Prefetch``       the offered artifact if ``--offer-dir`` has it, else through the chunk
                   swarm when gossip runs (``swarm``: peers first, the coordinator's origin
                   only for what no peer has), else the origin chunk by chunk
                   (``chunkstore``: verified, resumed after a kill); ends as
                   ``store/<sha>.tar.gz``; then the store is cleaned up (what it removes
                   the swarm stops serving)
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

Time: ``clock.monotonic()`` for the updater, timers and drain deadlines; ``clock.wall()``
for what is written for the launcher and people (``pending``, ``verdict``, the rollback
log's ``reported``, ``D/status``'s ``time``) and for the probation deadline it compares with.
"""

from __future__ import annotations

import functools
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

from ..clock import Clock
from ..core import documents as docs
from ..core import swarm as sw
from ..core import updater as up
from ..core.swarm.chunks import ChunkMap
from ..launcher.artifact import ArtifactError, read_artifact
from ..launcher.codes import EXIT_ROLLBACK, EXIT_STOP, EXIT_SWAP
from ..launcher.faults import crash_point
from ..launcher.state import Pending, SlotManifest, StateDir, StateError, Verdict, new_id
from ..work.base import Workload
from . import status
from .boot import NodeError, build_updater
from .chunkstore import ChunkStore, StoreError
from .coordinator import CoordinatorLink
from .gossip import GossipService
from .health import self_test
from .hooks import NodeHooks
from .offers import OfferError, OfferSource
from .options import DaemonOptions
from .replica import CoordinatorUnavailable
from .swarm import SwarmService
from .truststate import TrustFile
from .workhost import RestoreError, RunBlocking, WorkHost, in_worker_thread

__all__ = ["Node", "NodeConfig", "NodeError", "RestoreError"]

#: The lease a ``--grant-all`` grant pretends to have (seconds).
GRANT_ALL_LEASE = 3600.0
#: How long a stop or a rollback may spend draining (the launcher waits 15 s).
STOP_DRAIN = 10.0
#: Bounds on slow effects (the updater has no timer in these states).
PREFETCH_TIMEOUT = 600.0
POLL = 0.05
#: Largest artifact fetched from the coordinator's origin.
MAX_ARTIFACT = 1 << 30
#: The swarm's overall deadline for a prefetch: chunks peers cannot bring by then (at the
#: rate measured) go to the origin, well before the prefetch itself times out.
SWARM_DEADLINE = PREFETCH_TIMEOUT / 2
#: Events tagged with this are due in whatever state the updater is (nudges).
ANY_GENERATION = -1


#: Transitions of every routine check that found nothing: not logged (one line per check).
_QUIET = frozenset({(up.State.SLEEPING, up.State.NOTICED), (up.State.NOTICED, up.State.SLEEPING)})


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    state_dir: Path
    slot: str
    mode: str  # "normal" | "probation"
    parent_pid: int | None
    options: DaemonOptions


def stderr_log(clock: Clock) -> Callable[[str], None]:
    """The daemon's log: one line on stderr per message, stamped from ``clock``'s wall time."""

    def log(message: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(clock.wall()))
        version = p2pupdate.__version__
        print(
            f"{stamp} p2pupdate-daemon[{os.getpid()}] {version}: {message}",
            file=sys.stderr,
            flush=True,
        )

    return log


class Node:
    """One daemon process: the updater, the work, and the effects between them."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        make_workload: Callable[[], Workload],
        offers: OfferSource | None,
        clock: Clock,
        rng: random.Random | None = None,
        log: Callable[[str], None] | None = None,
        self_test: Callable[..., list[str]] = self_test,
        coordinator: CoordinatorLink | None = None,
        gossip: GossipService | None = None,
        trust: TrustFile | None = None,
        run_blocking: RunBlocking = in_worker_thread,
    ) -> None:
        self.config = config
        #: How blocking file work runs: a worker thread; inline in fake-clock tests.
        self.run_blocking = run_blocking
        self.opts = config.options
        self.offers = offers
        #: The process's one clock (``daemon.main`` passes ``clock.SYSTEM``).
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.log = log if log is not None else stderr_log(clock)
        #: ``health.self_test``; in-process tests (where the code is not the slot's) swap it.
        self.self_test = self_test
        self.coord = coordinator
        self.gossip = gossip
        self.state = StateDir(config.state_dir)
        #: ``D/store/``: artifacts whole and in part, resumed chunk by chunk (``chunkstore``).
        self.store = ChunkStore(self.state.store, log=self.log)
        self.slot = config.slot
        manifest = self.state.slot_manifest(config.slot)
        if manifest is None:
            raise NodeError(f"slot {config.slot[:16]}... is missing or incomplete")
        self.manifest: SlotManifest = manifest
        self.work = WorkHost(
            make_workload, state=self.state, log=self.log, run_blocking=run_blocking
        )
        self.mode = config.mode
        self.pending: Pending | None = None
        self.exit_code: int | None = None
        self.updater: up.Updater | None = None
        #: Gate evaluations answered by this process (``D/status``'s ``gate_checks``): lets
        #: a test see that checks happened without watching the clock.
        self.gate_checks = 0
        self._reporting: set[str] = set()
        self._send, self._recv = trio.open_memory_channel[tuple[int, up.Event]](32)
        self._gen = 0
        self._gen_scopes: list[trio.CancelScope] = []
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._last_refusal = ""
        #: Wall time this process started, the departure lease in hand (artifact, granted,
        #: lapses: wall seconds) and the last coordinator error's reason: ``D/status``.
        self.started = clock.wall()
        self._lease: dict[str, Any] | None = None
        self._last_error: str | None = None
        self.hooks = NodeHooks(
            slot=self.slot,
            manifest=manifest,
            opts=self.opts,
            work=self.work,
            updater_state=lambda: self.updater.state if self.updater is not None else None,
            feed=self._feed_any_state,
            write_status=self.write_status,
            clock=clock,
            log=self.log,
            coordinator=coordinator,
            gossip=gossip,
            trust=trust,
            store_summary=self.store.summary,
        )
        self.hooks.attach()
        #: The chunk swarm over gossip's links (``--swarm on``, the default, with gossip).
        self.swarm: SwarmService | None = None
        if gossip is not None and self.opts.swarm == "on":
            swarm_config = sw.SwarmConfig(upload_cap=self.opts.swarm_upload_cap)
            swarm_config.check_frame_limit(gossip.link_config.max_frame)
            self.swarm = SwarmService(
                links=gossip,
                store=self.store,
                clock=clock,
                config=swarm_config,
                origin=(
                    functools.partial(coordinator.client.fetch_chunk, wait=False)
                    if coordinator is not None
                    else None
                ),
                uplink=self.opts.swarm_uplink,
                rng=random.Random(self.rng.getrandbits(64)),
                log=self.log,
                run_blocking=run_blocking,
            )
            gossip.swarm = self.swarm
            self.hooks.on_release.append(self._release_known)

    @property
    def workload(self) -> Workload:
        """The workload being served now (a new one after an undone drain)."""
        return self.work.workload

    # -- running --------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve and update until told to stop or to swap; the process exit code."""
        boot = build_updater(
            state=self.state,
            slot=self.slot,
            mode=self.mode,
            opts=self.opts,
            rng=self.rng,
            now_wall=self.clock.wall(),
            log=self.log,
        )
        self.updater = boot.updater
        if boot.pending is not None:
            self.pending = boot.pending
        self._reporting = set(boot.reporting)
        await self.run_blocking(self._clean_store, None)  # the cap (no allowlist held yet)
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
                    f" (rtc {'on' if self.gossip.rtc else 'off'})"
                )
                if self.coord is not None:
                    self.coord.addrs = [self.gossip.advertised]
                if self.swarm is not None:
                    await nursery.start(self.swarm.run)
                    self._seed_known()
                nursery.start_soon(
                    status.refresh_on_gossip_change,
                    self.gossip,
                    self.write_status,
                    self.swarm.summary if self.swarm is not None else dict,
                )
                if self.opts.zeroconf:
                    await self.hooks.start_zeroconf(nursery)
            if self.coord is not None:
                await nursery.start(self.coord.run)
                nursery.start_soon(status.refresh_on_change, self.coord.summary, self.write_status)
            if self.mode == "normal":
                self.work.restore_checkpoint(strict=False)
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

    def _feed_any_state(self, event: up.Event) -> bool:
        """Queue an event due in whatever state the updater is (False: the queue is full)."""
        try:
            self._send.send_nowait((ANY_GENERATION, event))
        except trio.WouldBlock:
            return False
        return True

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
        before, timer_before = u.state, u.get_timer()
        now = self.clock.monotonic()
        effects = u.handle_timer(now) if event is None else u.handle(event, now)
        if isinstance(event, up.GatesEvaluated):
            self.gate_checks += 1
            self.hooks.held = event.refusal  # before the status write below says it
        elif isinstance(event, up.CoordinatorError):
            self._last_error = event.reason
        elif isinstance(event, up.Granted) and u.state is up.State.DRAINING:
            wall = self.clock.wall()
            artifact = u.candidate.artifact if u.candidate is not None else None
            self._lease = {"artifact": artifact, "granted": wall, "lapses": wall + event.lease_ttl}
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
        elif u.get_timer() != timer_before:  # the next check moved (a learned allowlist, a
            self.write_status()  # refusal's cause changed): ``D/status`` says when it is
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

    # -- the work (``workhost``) -------------------------------------------------------------

    async def _start_serving(self) -> None:
        assert self._nursery is not None
        await self.work.start_serving(self._nursery)
        self.write_status()

    async def _drain_and_checkpoint(self, deadline: float) -> None:
        await self.work.drain_and_checkpoint(deadline)

    # -- effects ----------------------------------------------------------------------------------

    async def _evaluate_gates(self) -> up.Event:
        if self.coord is not None:
            return self.coord.evaluate(installed=self.slot, installed_counter=self.manifest.counter)
        if self.offers is None:
            return up.GatesEvaluated.no_candidate(
                reason="no-source", detail="no --offer-dir (peer-to-peer discovery arrives later)"
            )
        offers = self.offers
        return await self.run_blocking(
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
                    await self.run_blocking(offers.fetch, effect.artifact, dest)
                    how = "offered"
                elif self.coord is not None and self.swarm is not None:
                    cmap = self.coord.chunk_map(effect.artifact, MAX_ARTIFACT)
                    await self.coord.lend_held(self.store, effect.artifact)
                    deadline = self.clock.monotonic() + SWARM_DEADLINE
                    got = await self.swarm.fetch(cmap, deadline=deadline)
                    how = f"{got.peers} chunk(s) from peers, {got.origin} from the origin" + (
                        f", {got.held} held already" if got.held else ""
                    )
                elif self.coord is not None:
                    held, fetched = await self.coord.prefetch(
                        effect.artifact, self.store, MAX_ARTIFACT
                    )
                    how = f"{fetched} chunk(s) from the origin" + (
                        f", {held} held already" if held else ""
                    )
                else:  # pragma: no cover - no candidate without a source
                    return up.PrefetchFailed(artifact=effect.artifact, reason="no source")
        except (OfferError, OSError, trio.TooSlowError, CoordinatorUnavailable) as exc:
            self.log(f"prefetch of {effect.artifact[:16]}... failed: {exc}")
            return up.PrefetchFailed(artifact=effect.artifact, reason=str(exc) or "timeout")
        self.log(f"prefetched {effect.artifact[:16]}... (release counter {effect.counter}; {how})")
        await self.run_blocking(self._keep_release, effect.artifact)
        self._forget(await self.run_blocking(self._clean_store, effect.artifact))
        return up.PrefetchDone(artifact=effect.artifact)

    # -- the swarm's seeds -----------------------------------------------------------------------

    def _seed_known(self) -> None:
        """Seed every artifact whose release record is held already (at start): the
        records the store kept beside its complete artifacts too, verified again, so a
        node that just swapped serves its build at once, not after the first replica or
        peer sends the record again (on the homes demo that took 15 s, and a replica
        killed beside it made the next ramp stage fetch from the origin)."""
        if self.coord is not None:
            taken = self.coord.restore_releases(self.store.releases())
            if taken:
                self.log(f"store: {taken} kept release record(s) verified; serving their artifacts")
            for rel in list(self.coord.releases.values()):
                self._release_known(rel)

    def _keep_release(self, artifact: str) -> None:
        """Keep ``artifact``'s signed release record beside it in the store, if both are
        held (a worker thread: one atomic write).  A failure costs only the head start."""
        record = self.coord.release_records.get(artifact) if self.coord is not None else None
        if record is None:
            return
        try:
            self.store.keep_release(artifact, record)
        except StoreError as exc:
            self.log(f"{exc}; the artifact is served once the record comes again")

    def _release_known(self, rel: docs.Release) -> None:
        """A release record newly held: if the store holds its artifact whole, the swarm
        serves it (the running build, the previous one, one rolled out or fetched)."""
        swarm, nursery = self.swarm, self._nursery
        if swarm is None or nursery is None or swarm.holds(rel.artifact):
            return
        if not self.store.path(rel.artifact).is_file():
            return
        nursery.start_soon(self._seed, ChunkMap.of_release(rel))

    async def _seed(self, cmap: ChunkMap) -> None:
        assert self.swarm is not None
        await self.run_blocking(self._keep_release, cmap.artifact)
        try:
            await self.swarm.seed(cmap)
        except OSError as exc:
            self.log(f"swarm: cannot seed {cmap.artifact[:16]}...: {exc}")

    def _forget(self, removed: tuple[str, ...]) -> None:
        """What the store's cleanup removed is no longer served."""
        if self.swarm is not None:
            for artifact in removed:
                self.swarm.remove(artifact)

    def _clean_store(self, rolling_out: str | None) -> tuple[str, ...]:
        """Drop from the store what no held allowlist names and what is over its cap;
        never the running build, the previous one, or the one being rolled out."""
        protected = {self.slot}
        if rolling_out is not None:
            protected.add(rolling_out)
        if self.pending is not None:
            protected |= {self.pending.artifact, self.pending.previous}
        for name in ("current", "previous"):
            try:
                linked = self.state.read_link(name)
            except StateError:
                linked = None
            if linked is not None:
                protected.add(linked)
        allow = self.coord.allowlist if self.coord is not None else None
        try:
            return self.store.cleanup(
                named=set(allow.artifacts) if allow is not None else None, protected=protected
            ).removed
        except OSError as exc:
            self.log(f"store cleanup failed: {exc}")
            return ()

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
            data = await self.run_blocking(
                read_artifact, st.store_path(p.to_artifact), p.to_artifact, st.limits
            )

            def stage() -> SlotManifest:
                return st.stage_slot(
                    data,
                    p.to_artifact,
                    counter=p.to_counter,
                    on_entry=lambda n: crash_point("unpack") if n == 8 else None,
                )

            manifest = await self.run_blocking(stage)
            crash_point("staged")
            record = Pending(
                id=new_id(),
                artifact=p.to_artifact,
                previous=self.slot,
                counter=p.to_counter,
                token=p.token,
                created=self.clock.wall(),
            )
            await self.run_blocking(st.write_pending, record)
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
        self.work.withdraw_checkpoint()
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_again)

    async def _serve_again(self) -> None:
        assert self._nursery is not None
        await self.work.serve_again(self._nursery)
        self.write_status()

    async def _restore_work(self) -> up.Event:
        try:
            self.work.restore_checkpoint(strict=True)
        except RestoreError as exc:
            return up.ProbationFailed(reason=f"checkpoint restore failed: {exc}")
        try:
            await self._start_serving()
        except Exception as exc:
            return up.ProbationFailed(reason=f"work did not start: {type(exc).__name__}: {exc}")
        passes = 0
        checked = False
        while True:
            problems = await self.run_blocking(
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
            time=self.clock.wall(),
            pid=os.getpid(),
        )
        await self.run_blocking(self.state.write_verdict, verdict)
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
                await self._drain_and_checkpoint(self.clock.monotonic() + STOP_DRAIN / 2)
            except Exception as exc:
                self.log(f"checkpoint before rollback failed: {type(exc).__name__}: {exc}")
        pending = self.pending
        if pending is not None:
            verdict = Verdict(
                id=pending.id,
                artifact=pending.artifact,
                verdict="rollback",
                reason=effect.reason,
                time=self.clock.wall(),
                pid=os.getpid(),
            )
            await self.run_blocking(self.state.write_verdict, verdict)
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
                await self.run_blocking(self.state.mark_reported, ids, self.clock.wall())
            except (StateError, OSError) as exc:
                self.log(f"cannot mark the rollback reported: {exc}")
            self._reporting.clear()
        return up.Reported()

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
                    await self._drain_and_checkpoint(self.clock.monotonic() + STOP_DRAIN / 2)
                except Exception as exc:
                    self.log(f"checkpoint on stop failed: {type(exc).__name__}: {exc}")
        self.finish(EXIT_STOP)

    # -- status (``status``) ------------------------------------------------------------------------

    def write_status(self) -> None:
        """``D/status``: what runs, from where, in which state (operators and tests)."""
        doc = status.daemon_status(
            slot=self.slot,
            manifest=self.manifest,
            mode=self.mode,
            state=self.updater.state if self.updater is not None else None,
            exit_code=self.exit_code,
            work=self.work,
            wall=self.clock.wall(),
            refusal=self.updater.refusal if self.updater is not None else None,
        )
        doc["gate_checks"] = self.gate_checks
        doc["started"] = self.started
        u = self.updater
        timer = u.get_timer() if u is not None else None
        doc["updater"] = status.updater_view(
            u,
            held=self.hooks.held,
            next_check=None if timer is None else doc["time"] + (timer - self.clock.monotonic()),
            lease=self._lease,
            last_error=self._last_error,
        )
        if self.gossip is not None:
            doc["gossip"] = status.gossip_view(self.gossip, allowlist=self.hooks.newest_allowlist())
        if self.swarm is not None:
            doc["swarm"] = self.swarm.summary()
        if self.coord is not None:
            doc["coordinator"] = self.coord.summary()
        status.write_status(self.state, doc, self.log)
