"""The work host: serves the node's ``Workload`` and hands its state from process to process.

The node's work (``--work kv``, ``--work none``) runs in the daemon's nursery under a cancel
scope of its own, so the updater's effects can start it, drain it and serve again without
touching anything else.  ``WorkHost`` is the one place that does:

* **serve** -- ``start_serving(nursery)`` starts ``Workload.serve`` and waits until it is up
  (at most ``SERVE_START_TIMEOUT``); ``serve_again`` replaces a drained workload by a fresh
  one (a drained workload may not serve twice: ``KVWorkload`` closes its store when ``serve``
  returns).
* **drain + checkpoint** -- ``drain_and_checkpoint(deadline)`` drains once, then writes
  ``work/checkpoint`` atomically -- but only when this process may hand its state on.
* **restore** -- ``restore_checkpoint(strict=...)`` reads the checkpoint the previous process
  wrote and consumes it.

The checkpoint is a handoff from one process to the next: written by a drain (before a
swap, on stop, before a rollback) and consumed -- renamed to ``checkpoint.restored`` --
right after the next process restored it, before it serves.  From then on the workload's own
durable state is newer, so an old checkpoint is never restored twice.  A process whose
restore failed never writes one (it would overwrite the state it could not read), and a
drain that was undone withdraws its checkpoint (``checkpoint.withdrawn``): it is older than
what the node serves next.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

from ..errors import LocalStateFault
from ..fsutil import FileTooLargeError, atomic_write, fsync_dir, read_limited
from ..launcher.state import StateDir
from ..work.base import Workload

__all__ = [
    "MAX_CHECKPOINT",
    "SERVE_START_TIMEOUT",
    "RestoreError",
    "RunBlocking",
    "WorkHost",
    "in_worker_thread",
]

T = TypeVar("T")

#: A checkpoint larger than this is refused (the workload's own state should be on disk).
MAX_CHECKPOINT = 512 * 1024 * 1024
#: How long ``Workload.serve`` may take to say it is up (seconds).
SERVE_START_TIMEOUT = 60.0


class RunBlocking(Protocol):
    """How the daemon runs blocking file work (fsync'd writes, unpacking, hashing).

    In production: a worker thread (``in_worker_thread``), so the event loop keeps serving.
    A test on trio's fake clock runs it inline instead: with ``autojump_threshold=0`` the
    clock jumps whenever every task waits, and a task waiting for a thread counts as
    waiting, so timers would fire while the file work was still going on.
    """

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


async def in_worker_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """``trio.to_thread.run_sync(fn, *args)``: the production ``RunBlocking``."""
    return await trio.to_thread.run_sync(fn, *args)


class RestoreError(LocalStateFault):
    """The checkpoint could not be restored (on probation: the new build fails)."""

    rule = "restore"


class WorkHost:
    """One process's workload: serving, draining, and the checkpoint handoff."""

    def __init__(
        self,
        make_workload: Callable[[], Workload],
        *,
        state: StateDir,
        log: Callable[[str], None],
        run_blocking: RunBlocking = in_worker_thread,
    ) -> None:
        #: Makes the work; called again to serve after an undone drain.
        self.make_workload = make_workload
        self.workload = make_workload()
        self.state = state
        self.log = log
        self.run_blocking = run_blocking
        self.serving = False
        self.drained = False
        #: True once the checkpoint (if any) was restored: only then is our state the node's
        #: state, fit to hand on.  A failed or not yet attempted restore never writes one.
        self.may_checkpoint = False
        self.restored = False
        self._serve_scope: trio.CancelScope | None = None
        self._serve_done: trio.Event | None = None

    # -- serving ------------------------------------------------------------------------------

    async def _serve_task(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        done = self._serve_done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._serve_scope = scope
                self.serving, self.drained = True, False
                await self.workload.serve(task_status=task_status)
        finally:
            self.serving = False
            done.set()

    async def start_serving(self, nursery: trio.Nursery) -> None:
        """Serve in ``nursery`` (the node's); returns once the workload is up."""
        with trio.fail_after(SERVE_START_TIMEOUT):
            await nursery.start(self._serve_task)

    async def stop_serving(self) -> None:
        if self._serve_scope is not None and self._serve_done is not None:
            self._serve_scope.cancel()
            await self._serve_done.wait()

    async def serve_again(self, nursery: trio.Nursery) -> None:
        """An undone drain: stop the drained workload, serve a fresh one."""
        await self.stop_serving()
        self.workload = self.make_workload()
        await self.start_serving(nursery)

    # -- the checkpoint handoff -----------------------------------------------------------------

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
            self.may_checkpoint = True
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
            self.may_checkpoint = True  # the work's own durable state is all there is now
            return
        os.replace(path, path.with_name("checkpoint.restored"))
        fsync_dir(path.parent)
        self.restored = self.may_checkpoint = True
        self.log(f"restored the work checkpoint ({len(data)} bytes)")

    async def _write_checkpoint(self) -> None:
        data = self.workload.checkpoint()
        await self.run_blocking(atomic_write, self.state.checkpoint, data)

    def withdraw_checkpoint(self) -> None:
        """A drain was undone: its checkpoint is older than what we will serve now."""
        path = self.state.checkpoint
        if path.exists():
            os.replace(path, path.with_name("checkpoint.withdrawn"))
            fsync_dir(path.parent)

    async def drain_and_checkpoint(self, deadline: float) -> None:
        """Drain (once) by ``deadline`` (trio's clock), then hand the state on if ours."""
        if self.serving and not self.drained:
            await self.workload.drain(deadline)
            self.drained = True
        if self.may_checkpoint:
            await self._write_checkpoint()

    # -- what the status file and gossip report ---------------------------------------------------

    def healthy(self) -> bool:
        """``Workload.healthy()``; a workload that cannot say is not healthy."""
        try:
            return bool(self.workload.healthy())
        except Exception:
            return False

    def load_and_capacity(self) -> tuple[float, float]:
        """``(load, capacity)`` as floats; ``(0, 0)`` when the workload cannot say."""
        try:
            return float(self.workload.load()), float(self.workload.capacity())
        except Exception:
            return 0.0, 0.0
