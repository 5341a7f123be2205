"""The launcher: the small, stable supervisor that runs the daemon from a slot.

``p2pupdate node --state-dir D ...`` runs this through stage-0 (``stage0``): from the
current slot's own copy once there is a slot with one, from the installed package for the
first start; it never imports the daemon code it runs.  It loops:

1. **decide** from what is on disk alone (so a launcher killed at any point resumes
   correctly): finish a rollback already decided, promote a slot that confirmed, roll back
   a pending swap whose attempts are spent, or start the pending slot on probation
   (``attempts += 1`` and a fresh deadline are written *before* it starts); otherwise run
   ``current`` (bootstrapping a first slot if there is none);
2. **supervise** the daemon, from the slot (``child_command``): a self-contained slot (one
   with ``deps/``) runs under ``python -I -S`` with ``sys.path`` = the slot, ``slot/deps``
   and the standard library, nothing else; an older slot of our code alone runs under
   ``python -P -m p2pupdate.daemon`` with ``PYTHONPATH`` = the slot, on top of the
   launcher's environment.  On probation, watch for its ``verdict`` file and the deadline;
3. **judge the exit** (``codes``): swap -> loop (decide finds ``pending``); rollback or no
   confirm in time -> roll back; crash on probation -> one attempt used; crash otherwise ->
   restart after an exponential backoff; stop -> stop.

**Confirmation channel: an atomic file.**  The daemon on probation writes ``D/verdict``
(``{"id": <pending id>, "verdict": "confirm"}``) with ``atomic_write``; the launcher polls it
(every 50 ms) and promotes: ``previous`` := the old slot, ``current`` := the new one, then
removes ``pending`` and ``verdict``.  The daemon sees ``pending`` gone and ``current``
pointing at its slot and feeds ``Confirmed`` to its updater.  A file, not a pipe, because it
survives the launcher: killed right after the daemon confirmed, the next launcher finds the
verdict and completes the promotion.  On failure the daemon writes the reason into the same
file (``"verdict": "rollback"``) and exits 76.

**Rollback** never touches ``current`` (it only changes on promotion): the decision and its
reason go into ``pending`` first, then the artifact is sticky-denied (``denied``) and logged
(``rollbacks``), then ``pending`` is removed -- every step idempotent, keyed by the pending
id.  The old version, started again, reads the unreported log entry and reports it.

**Under stage-0** a launcher runs only while stage-0 would pick it (``stage0.choose``):
before it starts a swap's slot that has its own launcher, or once a rollback made the pick
another slot's, ``decide`` returns a ``Plan`` with ``relaunch`` and the launcher exits
``LAUNCHER_RELAUNCH`` (nothing counted, nothing started), so stage-0 starts the right one --
on trial if it never came up here.  On trial it writes ``boot-up`` once its first daemon
runs (``_came_up``); a swap whose launcher stage-0 saw fail (``boot``'s ``failed``) is rolled
back and sticky-denied with stage-0's reason, like any failed probation.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

from ..errors import LocalStateFault
from ..fsutil import atomic_write, is_disk_full
from . import stage0
from .artifact import (
    DEPS_DIR,
    SELF_CONTAINED_LIMITS,
    ArtifactError,
    BuildError,
    UnpackLimits,
    build_artifact,
    sha256_hex,
)
from .codes import (
    EXIT_ROLLBACK,
    EXIT_STOP,
    EXIT_SWAP,
    LAUNCHER_FATAL,
    LAUNCHER_OK,
    LAUNCHER_RELAUNCH,
    describe_exit,
)
from .faults import crash_point
from .state import (
    Deny,
    Pending,
    RollbackEntry,
    StateDir,
    StateError,
    Verdict,
    purge_bytecode,
)

#: What the interpreter runs for a self-contained slot (``slot_python``): ``sys.path`` =
#: the slot, ``slot/deps``, then what ``-I -S`` left (the standard library alone), and the
#: daemon's ``__main__`` run as ``python -m`` would.  ``argv[1]`` is the slot.
SLOT_BOOT = (
    "import sys, runpy; s = sys.argv.pop(1); sys.path[:0] = [s, s + '/deps']; "
    "runpy.run_module('p2pupdate.daemon', run_name='__main__', alter_sys=True)"
)


def slot_python(python: str, slot: Path) -> list[str]:
    """The command line (less the daemon's arguments) that runs the daemon of the
    self-contained ``slot`` from the slot and the standard library alone."""
    return [python, "-I", "-S", "-c", SLOT_BOOT, str(slot)]


class LauncherError(LocalStateFault):
    """The launcher cannot run at all (no runnable slot, unreadable initial artifact)."""

    rule = "launcher"


class LauncherConfig:
    """What ``p2pupdate node`` configures; the defaults are for a real fleet.

    A plain class (keyword arguments only), not a dataclass: the launcher process imports
    no ``dataclasses`` (README "A small box"; ``state``'s records are ``NamedTuple``).
    """

    __slots__ = (
        "backoff_base",
        "backoff_cap",
        "boot_slot",
        "boot_trial",
        "daemon_args",
        "initial_artifact",
        "kill_grace",
        "limits",
        "max_attempts",
        "poll_interval",
        "probation",
        "python",
        "stable_after",
        "stage0",
        "stage0_seconds",
        "state_dir",
        "stop_grace",
    )

    def __init__(
        self,
        *,
        state_dir: Path,
        daemon_args: tuple[str, ...] = (),
        probation: float = 120.0,
        max_attempts: int = 3,
        initial_artifact: Path | None = None,
        python: str = sys.executable,
        poll_interval: float = 0.05,
        stop_grace: float = 15.0,
        kill_grace: float = 3.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        stable_after: float = 60.0,
        limits: UnpackLimits = SELF_CONTAINED_LIMITS,
        stage0: bool = False,
        boot_slot: str | None = None,
        boot_trial: bool = False,
        stage0_seconds: float = 60.0,
    ) -> None:
        if not probation > 0 or max_attempts < 1:
            raise ValueError("probation must be > 0 and max_attempts >= 1")
        self.state_dir = state_dir
        #: Passed to every daemon after the launcher's own (``--state-dir``, ``--slot``, ...).
        self.daemon_args = daemon_args
        #: A new slot must confirm within this many seconds of each start...
        self.probation = probation
        #: ...and gets this many starts before it is rolled back.
        self.max_attempts = max_attempts
        #: Bootstrap from this artifact instead of the installed package's own source.
        self.initial_artifact = initial_artifact
        self.python = python
        self.poll_interval = poll_interval
        #: On stop: SIGTERM, then SIGKILL after this long.
        self.stop_grace = stop_grace
        #: On a probation timeout: SIGTERM, then SIGKILL after this long.
        self.kill_grace = kill_grace
        #: Restart delay after a crash of a confirmed slot: base * 2**(n-1), capped.
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        #: A run this long resets the crash backoff.
        self.stable_after = stable_after
        self.limits = limits
        #: Started by stage-0 (``stage0.ENV_SLOT`` set): hand over when its pick changes.
        self.stage0 = stage0
        #: The slot this launcher's code came from (None: the installed copy; both from
        #: stage-0's environment, ``main._booted_by_stage0``)...
        self.boot_slot = boot_slot
        #: ...and whether stage-0 runs it on trial (it writes ``boot-up`` once it came up).
        self.boot_trial = boot_trial
        #: How long a launcher on trial has to come up (stage-0's argument).
        self.stage0_seconds = stage0_seconds

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"LauncherConfig({fields})"

    def restart_delay(self, crashes: int) -> float:
        """Seconds before restarting a confirmed slot after its ``crashes``-th crash in a row
        (``>= 1``): ``backoff_base * 2**(crashes-1)`` up to ``backoff_cap``, through
        ``timing.capped_exponential`` so a slot crashing for days never overflows it."""
        from ..core import timing  # after a crash only: it imports dataclasses

        return timing.capped_exponential(self.backoff_base, self.backoff_cap, crashes - 1)


class Plan(NamedTuple):
    """What to run next: a slot, on probation when ``pending`` is set."""

    slot: str
    pending: Pending | None = None
    #: Not run here: stage-0 should run another launcher, for this reason (``_hand_over``).
    relaunch: str | None = None


class Outcome(NamedTuple):
    """How a daemon run ended."""

    code: int
    runtime: float
    promoted: bool = False
    timed_out: bool = False
    stopped: bool = False


def installed_source_root() -> Path:
    """The directory holding the installed ``p2pupdate`` package (and ``coordinator``)."""
    import p2pupdate

    return Path(p2pupdate.__file__).resolve().parent.parent


def _log_to_stderr(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} p2pupdate-launcher[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the launcher dies (Linux).

    Otherwise a launcher killed hard would leave its daemon running, and the next launcher
    would start a second one on the same state.  The daemon also watches its parent pid.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


def _heap_trimmer() -> Callable[[], None]:
    """A function that hands the C heap's free pages back to the system (glibc's
    ``malloc_trim``; a no-op elsewhere).

    Python keeps what its allocator once took: after the imports (compiled from source
    when there is no bytecode) and a bootstrap (a whole artifact in memory, unpacked) the
    launcher would idle with megabytes it will not use again (README "A small box").
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def release() -> None:
        gc.collect()
        trim(0)

    return release


class Launcher:
    """One node's supervisor.  ``run()`` until stopped; the other methods are its steps."""

    def __init__(
        self, config: LauncherConfig, *, log: Callable[[str], None] = _log_to_stderr
    ) -> None:
        self.config = config
        self.state = StateDir(config.state_dir, limits=config.limits)
        self.log = log
        self._stop_requested = False
        self._crashes = 0
        self._preexec = _die_with_parent()
        self._trim_heap = _heap_trimmer()

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped; the launcher's exit code (``codes.LAUNCHER_*``)."""
        try:
            with self.state.locked(), self._signals():
                removed = self.state.clean_temp()
                if removed:
                    self.log(f"removed leftovers of an interrupted write: {', '.join(removed)}")
                self._check_records()
                while not self._stop_requested:
                    plan = self.decide()
                    if plan.relaunch is not None:
                        self.log(f"handing over to stage-0: {plan.relaunch}")
                        return LAUNCHER_RELAUNCH
                    outcome = self.supervise(plan)
                    if not self.after_exit(plan, outcome):
                        break
        except (LauncherError, StateError) as exc:
            self.log(f"fatal: {exc}")
            return LAUNCHER_FATAL
        except OSError as exc:  # disk full, permissions: say so in one line; a service
            self.log(f"fatal: {exc}")  # manager restarts us and decide() resumes
            return LAUNCHER_FATAL
        self.log("stopped")
        return LAUNCHER_OK

    def request_stop(self) -> None:
        self._stop_requested = True

    @contextlib.contextmanager
    def _signals(self) -> Any:
        def handler(signum: int, frame: FrameType | None) -> None:
            self._stop_requested = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # -- decide -----------------------------------------------------------------------------

    def decide(self) -> Plan:
        """What to run, from the state on disk alone; resolves anything left in flight."""
        st = self.state
        st.ensure()
        while True:
            pending = self._read_pending()
            if pending is None:
                self._drop_stale_verdict()
                current = self.ensure_current()
                self.collect_garbage()
                return Plan(slot=current, relaunch=self._hand_over(current))
            verdict = self._read_verdict()
            answered = verdict is not None and verdict.answers(pending)
            if pending.outcome is not None:
                self.finish_rollback(pending)
                continue
            boot = stage0.read_boot(str(st.root))
            if boot["failed"] == pending.artifact and boot["reason"]:
                self.mark_rollback(pending, boot["reason"])
                continue
            if answered and verdict is not None and verdict.verdict == "confirm":
                self.promote(pending)
                continue
            if answered and verdict is not None and verdict.verdict == "rollback":
                self.mark_rollback(pending, verdict.reason)
                continue
            if any(d.artifact == pending.artifact for d in self._read_denied()):
                self.mark_rollback(pending, "sticky-denied on this node")
                continue
            if not self._slot_ok(pending.artifact):
                self.mark_rollback(pending, "slot missing, incomplete or damaged", deny=False)
                continue
            self.ensure_current()
            if (why := self._hand_over(pending.artifact)) is not None:
                return Plan(slot=pending.artifact, relaunch=why)
            limit = pending.max_attempts or self.config.max_attempts
            if pending.attempts >= limit:
                last = pending.last_failure or "killed with the launcher"
                self.mark_rollback(pending, f"failed {pending.attempts} of {limit} starts: {last}")
                continue
            window = pending.window or self.config.probation
            pending = pending.with_(
                attempts=pending.attempts + 1,
                max_attempts=limit,
                window=window,
                deadline=time.time() + window,
            )
            try:
                st.write_pending(pending)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                # an attempt that cannot be counted must not be made: serve on the old
                # build; its daemon asks for the swap again once there is room
                self.log(
                    f"disk full ({exc.strerror}): cannot record probation attempt "
                    f"{pending.attempts} of {limit}; running current until there is room"
                )
                return Plan(slot=self.ensure_current())
            crash_point("attempt")
            self.log(
                f"starting {self._name(pending.artifact)} on probation "
                f"(attempt {pending.attempts} of {limit}, confirm within {window:g} s)"
            )
            return Plan(slot=pending.artifact, pending=pending)

    def _hand_over(self, slot: str) -> str | None:
        """Why stage-0 should now run another launcher than this one, before ``slot``
        starts (None: it should not): a swap to a slot that has its own launcher, or a
        rollback away from this one's -- stage-0's own rule (``stage0.choose``)."""
        if not self.config.stage0:
            return None
        wanted = stage0.choose(str(self.state.root))[0]
        if wanted == self.config.boot_slot:
            return None
        who = f"the launcher of {self._name(wanted)}" if wanted else "the installed launcher"
        return f"{who} should run {self._name(slot)}"

    def _came_up(self) -> None:
        """On trial: tell stage-0 this launcher came up (it started a daemon), once."""
        if self.config.boot_trial:
            self.config.boot_trial = False
            up = os.path.join(str(self.state.root), stage0.UP)
            stage0.write_json(up, {"launcher": self.config.boot_slot or ""})
            self.log("came up on trial (boot-up written for stage-0)")

    def ensure_current(self) -> str:
        """The slot ``current`` points at, repaired or bootstrapped if it is unusable."""
        st = self.state
        current = self._read_link("current")
        if current is not None and self._slot_ok(current):
            return current
        previous = self._read_link("previous")
        if previous is not None and previous != current and self._slot_ok(previous):
            self.log(f"current slot unusable; falling back to previous {previous[:16]}...")
            st.set_link("current", previous)
            return previous
        return self.bootstrap()

    def bootstrap(self) -> str:
        """Make the first slot: from ``--initial-artifact``, or the installed source."""
        cfg = self.config
        try:
            if cfg.initial_artifact is not None:
                data = cfg.initial_artifact.read_bytes()
                origin = str(cfg.initial_artifact)
            else:
                data = build_artifact(installed_source_root())
                origin = f"the installed package at {installed_source_root()}"
        except (OSError, BuildError) as exc:
            raise LauncherError(f"cannot bootstrap a first slot: {exc}") from None
        artifact = sha256_hex(data)
        try:
            manifest = self.state.stage_slot(data, artifact, counter=0)
            # the verified copy a damaged file of the slot is restored from
            atomic_write(self.state.store_path(artifact), data)
        except ArtifactError as exc:
            raise LauncherError(f"cannot bootstrap from {origin}: {exc}") from None
        self.state.set_link("current", artifact)
        self.log(f"bootstrapped slot {artifact[:16]}... (version {manifest.version}) from {origin}")
        return artifact

    def promote(self, pending: Pending) -> None:
        """The new slot confirmed: make it ``current`` (idempotent, restart-safe)."""
        st = self.state
        st.set_link("previous", pending.previous)
        crash_point("promote")
        st.set_link("current", pending.artifact)
        crash_point("promoted")
        st.remove_pending()
        st.remove_verdict()
        self._crashes = 0
        self.log(f"promoted {self._name(pending.artifact)} to current (confirmed on probation)")

    def mark_rollback(self, pending: Pending, reason: str, *, deny: bool = True) -> None:
        """Decide to roll back, durably, then carry it out."""
        decided = pending.with_(outcome="rollback", reason=reason, deny=deny)
        self.state.write_pending(decided)
        crash_point("rollback")
        self.finish_rollback(decided)

    def finish_rollback(self, pending: Pending) -> None:
        """Deny, log, forget the swap: every step idempotent (keyed by the pending id)."""
        st = self.state
        reason = pending.reason or "rolled back"
        now = time.time()
        if pending.deny:
            st.add_deny(
                Deny(artifact=pending.artifact, counter=pending.counter, reason=reason, time=now)
            )
        st.add_rollback(
            RollbackEntry(
                id=pending.id,
                artifact=pending.artifact,
                counter=pending.counter,
                previous=pending.previous,
                reason=reason,
                token=pending.token,
                time=now,
            )
        )
        st.remove_verdict()
        st.remove_pending()
        current = self._read_link("current")
        if current != pending.previous:
            self.log(f"warning: rolled back, but current is {current} not {pending.previous}")
        denied = "; sticky-denied here" if pending.deny else ""
        self.log(f"ROLLED BACK {self._name(pending.artifact)}: {reason}{denied}")

    def collect_garbage(self) -> None:
        """Delete slots that are neither ``current`` nor ``previous``, and stored artifacts
        that are denied or unpacked into another slot (never mid-swap: only called with no
        ``pending``).  The stored artifacts of ``current`` and ``previous`` are kept: they
        are the verified copies a damaged slot file is restored from."""
        st = self.state
        keep = {self._read_link("current"), self._read_link("previous")}
        for artifact in st.list_slots():
            if artifact not in keep:
                st.remove_slot(artifact)
        done = set(st.list_slots()) | {d.artifact for d in self._read_denied()}
        for artifact in done - keep:
            path = st.store_path(artifact)
            if path.exists():
                path.unlink()

    # -- supervise --------------------------------------------------------------------------

    def child_command(self, plan: Plan) -> tuple[list[str], dict[str, str]]:
        """argv and environment of the daemon: the slot's code, isolated from ours.

        A self-contained slot (``deps/`` holds every runtime dependency) is run by the slot
        alone: ``-I`` (no ``PYTHON*`` variables, no user site, no script directory) and
        ``-S`` (no ``site``: not this venv's site-packages either), then ``SLOT_BOOT`` puts
        the slot and ``slot/deps`` in front of the standard library.  A slot without
        ``deps/`` (a build of our code alone, what every release before P12 made) still
        needs the launcher's environment for trio, msgpack, PyNaCl...: it runs with
        ``PYTHONPATH`` = the slot over the interpreter's own site-packages, as it always did.
        """
        st = self.state
        slot = st.slot_dir(plan.slot)
        daemon_argv = [
            "--state-dir",
            str(st.root),
            "--slot",
            plan.slot,
            "--mode",
            "probation" if plan.pending is not None else "normal",
            "--parent-pid",
            str(os.getpid()),
            *self.config.daemon_args,
        ]
        ours = ("PYTHONPATH", "PYTHONSTARTUP", stage0.ENV_SLOT, stage0.ENV_TRIAL, stage0.ENV_PARENT)
        env = {k: v for k, v in os.environ.items() if k not in ours}
        if (slot / DEPS_DIR).is_dir():
            return [*slot_python(self.config.python, slot), *daemon_argv], env
        argv = [
            self.config.python,
            "-P",  # no script/cwd directory on sys.path: PYTHONPATH (the slot) comes first
            "-m",
            "p2pupdate.daemon",
            *daemon_argv,
        ]
        env["PYTHONPATH"] = str(slot)
        env["PYTHONSAFEPATH"] = "1"
        return argv, env

    def spawn(self, plan: Plan) -> subprocess.Popen[bytes]:
        argv, env = self.child_command(plan)
        return subprocess.Popen(
            argv,
            env=env,
            cwd=str(self.state.root),
            preexec_fn=self._preexec,
        )

    def supervise(self, plan: Plan) -> Outcome:
        """Run the daemon of ``plan`` until it exits (or must be stopped)."""
        cfg = self.config
        pending = plan.pending
        started = time.monotonic()
        self._trim_heap()  # what a bootstrap or repair took is not needed while it runs
        try:
            proc = self.spawn(plan)
        except OSError as exc:
            raise LauncherError(f"cannot start {cfg.python}: {exc}") from None
        self.log(f"daemon pid {proc.pid} runs {self._name(plan.slot)}")
        self._came_up()
        promoted = False
        while True:
            code = proc.poll()
            if code is not None:
                return Outcome(code=code, runtime=time.monotonic() - started, promoted=promoted)
            if self._stop_requested:
                self.log(f"stopping daemon pid {proc.pid}")
                code = self._terminate(proc, cfg.stop_grace)
                return Outcome(
                    code=code, runtime=time.monotonic() - started, promoted=promoted, stopped=True
                )
            if pending is not None and not promoted:
                verdict = self._read_verdict()
                if (
                    verdict is not None
                    and verdict.answers(pending)
                    and verdict.verdict == "confirm"
                ):
                    self.promote(pending)
                    promoted = True
                elif pending.deadline is not None and time.time() > pending.deadline:
                    self.log(f"no confirm within {pending.window:g} s: stopping pid {proc.pid}")
                    code = self._terminate(proc, cfg.kill_grace)
                    return Outcome(code=code, runtime=time.monotonic() - started, timed_out=True)
            time.sleep(cfg.poll_interval)

    def _terminate(self, proc: subprocess.Popen[bytes], grace: float) -> int:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.log(f"pid {proc.pid} ignored SIGTERM for {grace:g} s: SIGKILL")
            proc.kill()
            return proc.wait()

    # -- judge the exit ---------------------------------------------------------------------

    def after_exit(self, plan: Plan, outcome: Outcome) -> bool:
        """Record what the exit means; False when the launcher should stop."""
        what = describe_exit(outcome.code)
        self.log(f"daemon {self._name(plan.slot)} {what} after {outcome.runtime:.1f} s")
        if outcome.stopped:
            return False
        if plan.pending is not None and not outcome.promoted:
            return self._after_probation(plan.pending, outcome, what)
        if outcome.code == EXIT_STOP:
            return False
        if outcome.code == EXIT_SWAP:
            self._crashes = 0
            if self._read_pending() is None:
                self.log("warning: swap code without a pending record; restarting current")
            return True
        if outcome.runtime >= self.config.stable_after:
            self._crashes = 0
        self._crashes += 1
        self._drop_bytecode(plan.slot)
        delay = self.config.restart_delay(self._crashes)
        self.log(f"restarting in {delay:g} s (crash {self._crashes} in a row)")
        self._sleep(delay)
        return not self._stop_requested

    def _after_probation(self, pending: Pending, outcome: Outcome, what: str) -> bool:
        current = self._read_pending()
        if current is None or current.id != pending.id:
            return True  # resolved meanwhile (cannot happen with one launcher; harmless)
        if outcome.timed_out:
            self.mark_rollback(current, f"no confirm within the probation window ({what})")
            return True
        if outcome.code == EXIT_ROLLBACK:
            verdict = self._read_verdict()
            reason = (
                verdict.reason
                if verdict is not None
                and verdict.answers(current)
                and verdict.verdict == "rollback"
                else "unhealthy (no reason given)"
            )
            self.mark_rollback(current, reason)
            return True
        if outcome.code == EXIT_STOP:
            self.log("daemon on probation stopped; pending kept for the next start")
            return False
        self._drop_bytecode(pending.artifact)
        self.state.write_pending(current.with_(last_failure=what))
        return True

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop_requested and time.monotonic() < end:
            time.sleep(min(self.config.poll_interval * 4, max(0.0, end - time.monotonic())))

    # -- reading state, tolerating corruption -----------------------------------------------

    def _read_pending(self) -> Pending | None:
        try:
            return self.state.read_pending()
        except StateError as exc:
            aside = self.state.quarantine(self.state.pending_path, str(exc))
            self.log(f"pending record unusable ({exc}); moved to {aside.name}, running current")
            return None

    def _read_verdict(self) -> Verdict | None:
        try:
            return self.state.read_verdict()
        except StateError as exc:
            aside = self.state.quarantine(self.state.verdict_path, str(exc))
            self.log(f"verdict unusable ({exc}); moved to {aside.name}, ignored")
            return None

    def _drop_bytecode(self, artifact: str) -> None:
        """After a crash: the slot's files were checked before it started, its bytecode
        cache was not (Python writes it) -- drop it, so a damaged one crashes once only."""
        removed = purge_bytecode(self.state.slot_dir(artifact))
        if removed:
            self.log(f"dropped the bytecode cache of {self._name(artifact)} after the crash")

    def _slot_ok(self, artifact: str) -> bool:
        """Whether ``artifact``'s slot may be started: its files checked against its
        manifest (and repaired from the stored artifact where they can be)."""
        return self.state.verify_slot(artifact, self.log) and (
            self.state.slot_manifest(artifact) is not None
        )

    def _read_denied(self) -> list[Deny]:
        try:
            return self.state.read_denied()
        except StateError as exc:
            aside = self.state.quarantine(self.state.denied_path, str(exc))
            self.log(f"sticky-deny list unusable ({exc}); moved to {aside.name}")
            return []

    def _drop_stale_verdict(self) -> None:
        if self.state.verdict_path.exists():
            self.state.remove_verdict()

    def _read_link(self, name: str) -> str | None:
        try:
            return self.state.read_link(name)
        except StateError as exc:
            aside = self.state.quarantine(self.state.root / name, str(exc))
            self.log(f"{name} link unusable ({exc}); moved to {aside.name}")
            if name == "current":
                return self._guess_current()
            return None

    def _guess_current(self) -> str | None:
        """``current`` was damaged: the slot it most likely named -- the newest usable slot
        that is not ``previous``, a swap still on probation or a denied build (None: fall
        back to ``previous`` or bootstrap)."""
        previous = self._read_link("previous")
        pending = self._read_pending()
        skip = {previous, pending.artifact if pending is not None else None}
        skip |= {d.artifact for d in self._read_denied()}
        found = []
        for artifact in self.state.list_slots():
            manifest = self.state.slot_manifest(artifact)
            if artifact not in skip and manifest is not None:
                found.append((manifest.counter, manifest.unpacked, artifact))
        if not found:
            return None
        artifact = max(found)[2]
        self.state.set_link("current", artifact)
        self.log(f"current link rebuilt: {self._name(artifact)}, the newest slot")
        return artifact

    def _check_records(self) -> None:
        """Read every launcher record once at start; an unusable one is quarantined here,
        so no later step trips over it."""
        self._read_pending()
        self._read_verdict()
        self._read_denied()
        try:
            self.state.read_rollbacks()
        except StateError as exc:
            aside = self.state.quarantine(self.state.rollbacks_path, str(exc))
            self.log(f"rollback log unusable ({exc}); moved to {aside.name}, started anew")

    def _name(self, artifact: str) -> str:
        manifest = self.state.slot_manifest(artifact)
        version = manifest.version if manifest is not None else "?"
        return f"{version} ({artifact[:12]}...)"
