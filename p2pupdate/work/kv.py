"""The built-in example workload: a small key/value service whose acknowledged writes survive
anything short of losing the disk (README "The work a node serves").

**Durable before acknowledged.**  A put or delete is appended to a write-ahead log and
``fdatasync``-ed before its answer is sent; only then is it visible to reads.  Concurrent
writes share one fsync (group commit): while one batch is being synced the next one
gathers, so throughput grows with concurrency instead of being capped at one write per
disk flush.  A node SIGKILLed at any instant therefore loses nothing it acknowledged.

**On disk** (``state_dir``)::

    lock                         flock'ed while a KVWorkload owns the directory
    snapshot.msgpack             the map at log position N (fsutil.atomic_write)
    wal-<store>-<first lsn>.log  log segments: records N+1, N+2, ... (protocol.py)

The log is the truth and the snapshot the fast path.  When the current segment passes
``segment_bytes`` the log moves to a new segment, the map as of that point is written as
the new snapshot, and the older segments are deleted; a crash between any two of those
steps leaves a snapshot plus segments that replay to the same map.  Recovery replays the
segments after the snapshot and truncates a torn final append.  Damage is never a reason
not to serve (a node must come back by itself): a damaged record anywhere else or a gap in
the log positions ends the log there -- the records before it are served, the bytes from it
on are kept in ``NAME.bad-N`` beside the segment for a person, and one warning says so; a
missing or unusable snapshot is moved aside and rebuilt from the log when the log reaches
back to the first write (else the store starts empty, loudly).

**A full disk** refuses a write whole (``DiskFullError``, answered ``unavailable``: "disk
full"), leaves the log as it was and takes writes again once there is room; a failed fsync
still stops the store's writes for good (after it, the page cache cannot be trusted).

**Checkpoints** are the same bytes as a snapshot, tagged with the store's random id.
``restore`` never moves a store backwards: a checkpoint of this very store that is not
newer than the log is a no-op, a newer one (or any checkpoint into an empty store) is
adopted, and a checkpoint of a different, non-empty store is refused.

**Drain** closes the listening socket, answers ``going-away`` to every request that
arrives afterwards on open connections (clients move at once instead of timing out),
waits for in-flight requests until the deadline, and syncs the log.

Run one node from a shell (tests use this for the crash-injection test)::

    python -m p2pupdate.work.kv --state-dir DIR [--host H] [--port P]

It prints ``listening HOST PORT`` once it accepts connections, and drains on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import math
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import trio

from ..core import wire
from ..core.errors import P2PUpdateError, WireError
from ..errors import LocalStateFault
from ..fsutil import (
    atomic_write,
    fsync_dir,
    is_disk_full,
    quarantine,
    quarantine_name,
    read_limited,
)
from .base import Workload
from .protocol import (
    MAX_FRAME_BYTES,
    SEGMENT_MAGIC,
    WRITE_OPS,
    BadRequestError,
    CorruptStateError,
    ErrorCode,
    Record,
    Request,
    Response,
    Snapshot,
    StoreLimits,
    entry_size,
    scan_segment,
)

__all__ = ["CorruptStateError", "KVConfig", "KVWorkload", "StoreBusyError", "StoreLimits"]

logger = logging.getLogger(__name__)

SNAPSHOT_NAME: Final = "snapshot.msgpack"
LOCK_NAME: Final = "lock"
_SEGMENT_RE: Final = re.compile(r"^wal-([0-9a-f]{32})-([0-9a-f]{16})\.log$")
#: A segment is at most ``segment_bytes`` plus one batch; this only guards against a file
#: that is not ours (or a configuration far larger than the defaults).
MAX_SEGMENT_READ: Final = 512 * 1024 * 1024
RECV_BYTES: Final = 64 * 1024


class DiskFullError(LocalStateFault, OSError):
    """The disk has no room for a write: it was refused whole (the log is unchanged)."""

    rule = "disk-full"


class StoreBusyError(LocalStateFault):
    """Another KVWorkload (in this or another process) owns the state directory."""

    rule = "store-busy"


@dataclass(frozen=True, kw_only=True)
class KVConfig:
    """Bounds and tuning of one node.  Every limit a remote client can push against is here."""

    max_connections: int = 256
    max_inflight_per_connection: int = 64
    #: Requests in progress over all connections (bounds the memory of queued writes).
    max_inflight: int = 1024
    #: A connection that sends nothing (not even the rest of a frame) for this long is closed.
    idle_timeout: float = 120.0
    #: A client that does not read its answers for this long loses the connection.
    send_timeout: float = 30.0
    #: Start a new log segment (and write a snapshot) once the current one is this large.
    segment_bytes: int = 4 * 1024 * 1024
    #: Largest group commit; the rest waits for the next fsync.
    batch_max_bytes: int = 1024 * 1024
    #: Time constant of the request-rate average that ``load()`` reports.
    load_window: float = 10.0
    store: StoreLimits = field(default_factory=StoreLimits)


# -- the log on disk (blocking; called from worker threads) -----------------------------


def _segment_name(store_id: bytes, start: int) -> str:
    return f"wal-{store_id.hex()}-{start:016x}.log"


class _Log:
    """Snapshot + log segments in one directory.

    Every method blocks; the workload calls them through ``trio.to_thread``.  ``_lock``
    serialises the append file descriptor (append, sync, rotate, close) between the commit
    loop and ``drain``; snapshot writing touches other files and runs beside appends.
    """

    def __init__(self, directory: Path, limits: StoreLimits) -> None:
        self.directory = directory
        self.limits = limits
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.segment_size = 0
        self.store_id = b""
        #: The newest segment and the lsn its next record must have, if appending may
        #: continue there (set by ``recover``); otherwise a new segment is started.
        self._tail: tuple[Path, int] | None = None
        #: The lsn a segment could not be started at (the disk was full); the next append
        #: starts it.
        self._unborn: int | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreBusyError(f"{directory} is in use by another KV store") from None

    @property
    def is_open(self) -> bool:
        """Appending is possible: a segment is open, or one waits for disk space."""
        return self._fd is not None or self._unborn is not None

    def segments(self) -> list[tuple[bytes, int, Path]]:
        """All segment files as (store id, first lsn, path), oldest first."""
        found = []
        for path in self.directory.iterdir():
            m = _SEGMENT_RE.match(path.name)
            if m:
                found.append((bytes.fromhex(m.group(1)), int(m.group(2), 16), path))
        found.sort(key=lambda s: s[1])
        return found

    def recover(self) -> Snapshot:
        """Load the snapshot, replay the log after it, truncate a torn final append.

        Damage never stops the store (README "The work a node serves"): a damaged record
        ends the log there -- the records before it are replayed, the bytes from it on are
        moved to ``NAME.bad-N`` beside the segment (later segments too), one warning says
        so.  An unusable snapshot is moved aside and rebuilt from the log when the log
        reaches back to the store's first write; otherwise the store starts empty.
        """
        for stale in self.directory.glob(".*.tmp"):  # atomic_write leftovers of a crash
            stale.unlink(missing_ok=True)
        snap = self._load_snapshot()
        data = dict(snap.data)
        lsn = snap.lsn
        mine = []
        for store_id, start, path in self.segments():
            if store_id == snap.store_id:
                mine.append((start, path))
            else:  # left over from before a checkpoint of another store was adopted
                path.unlink(missing_ok=True)
        for i, (start, path) in enumerate(mine):
            last = i == len(mine) - 1
            try:
                raw = read_limited(path, MAX_SEGMENT_READ)
            except OSError as exc:
                self._cut(mine[i:], 0, b"", lsn, f"unreadable: {exc}")
                break
            try:
                scan = scan_segment(raw, last=last, name=path.name)
                damage = None
            except CorruptStateError as exc:
                scan = scan_segment(raw, last=last, name=path.name, salvage=True)
                damage = exc.message
            expected, cut, kept = start, len(SEGMENT_MAGIC), 0
            if start > lsn + 1:
                damage, cut = damage or f"log starts at {start} but the store ends at {lsn}", 0
            else:
                for rec in scan.records:
                    if rec.lsn != expected:
                        damage = f"record {rec.lsn} where {expected} was expected"
                        break
                    encoded = rec.encode()
                    if raw[cut : cut + len(encoded)] != encoded:  # pragma: no cover - defensive
                        damage, cut = "a record that does not re-encode", 0
                        break
                    expected, cut, kept = expected + 1, cut + len(encoded), kept + 1
                    if rec.lsn > lsn:
                        _apply(data, rec)
                        lsn = rec.lsn
            if damage is not None:
                self._tail = (path, expected) if cut >= len(SEGMENT_MAGIC) else None
                self._cut(mine[i:], cut, raw, lsn, damage)
                break
            if last:
                self._tail = (path, expected)
            if scan.torn_bytes:
                logger.warning(
                    "%s: truncating a torn final write of %d bytes", path.name, scan.torn_bytes
                )
                with open(path, "r+b") as f:
                    f.truncate(scan.good_end)
                    os.fsync(f.fileno())
        self.store_id = snap.store_id
        return Snapshot(store_id=snap.store_id, lsn=lsn, data=data)

    def _load_snapshot(self) -> Snapshot:
        """The snapshot; a missing or unusable one is rebuilt (from the log if it can be)."""
        snap_path = self.directory / SNAPSHOT_NAME
        if snap_path.exists():
            try:
                return Snapshot.decode(
                    read_limited(snap_path, self.limits.max_snapshot_bytes), self.limits
                )
            except (OSError, P2PUpdateError) as exc:
                why = getattr(exc, "message", None) or str(exc)
                aside = quarantine(snap_path).name
        elif self.segments():
            why, aside = "missing", ""
        else:
            fresh = Snapshot(store_id=secrets.token_bytes(16), lsn=0, data={})
            try:
                atomic_write(snap_path, fresh.encode(), mode=0o600)
            except OSError as exc:  # the log, once it can be written, rebuilds it
                if not is_disk_full(exc):
                    raise
                logger.warning("kv: cannot write a first snapshot (%s); serving empty", exc)
            self.store_id = fresh.store_id
            return fresh
        segments = self.segments()
        stores = {store_id for store_id, _, _ in segments}
        moved = f": moved to {aside}" if aside else ""
        if len(stores) == 1 and segments[0][1] == 1:  # the log holds every write
            snap = Snapshot(store_id=stores.pop(), lsn=0, data={})
            how = f"rebuilt from the log ({len(segments)} segments from lsn 1)"
        else:
            for _, _, path in segments:
                quarantine(path)
            snap = Snapshot(store_id=secrets.token_bytes(16), lsn=0, data={})
            how = (
                f"the log does not reach back to the first write, so the store starts empty "
                f"({len(segments)} segments moved aside as NAME.bad-N)"
            )
        atomic_write(snap_path, snap.encode(), mode=0o600)
        logger.warning("kv: %s unusable (%s)%s; %s", SNAPSHOT_NAME, why, moved, how)
        return snap

    def _cut(
        self, segments: list[tuple[int, Path]], cut: int, raw: bytes, lsn: int, why: str
    ) -> None:
        """End the log at byte ``cut`` of ``segments[0]``: the rest of it goes to
        ``NAME.bad-N``, the later segments are moved aside whole."""
        path = segments[0][1]
        if cut < len(SEGMENT_MAGIC):
            aside = quarantine(path)
            self._tail = None
        else:
            aside = quarantine_name(path)
            atomic_write(aside, raw[cut:], mode=0o600)
            with open(path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
        later = [quarantine(p).name for _, p in segments[1:]]
        also = f", and {len(later)} later segments moved aside" if later else ""
        logger.warning(
            "kv: %s damaged (%s): the log ends at lsn %d; the rest is in %s%s",
            path.name,
            why,
            lsn,
            aside.name,
            also,
        )

    def open_append(self, next_lsn: int) -> None:
        """Open the newest segment for appending, or start one at ``next_lsn``."""
        with self._lock:
            if self._tail is not None and self._tail[1] == next_lsn:
                self._fd = os.open(self._tail[0], os.O_WRONLY | os.O_APPEND)
                self.segment_size = os.fstat(self._fd).st_size
            else:  # fresh store, adopted checkpoint, or a tail that does not end at next_lsn
                try:
                    self._fd, self.segment_size = self._create_segment(next_lsn)
                except OSError as exc:
                    if not is_disk_full(exc):
                        raise
                    self._unborn = next_lsn  # serve reads; the first write tries again
            self._tail = None

    def _create_segment(self, start: int) -> tuple[int, int]:
        # Created whole (magic included) by atomic_write, so a segment file never exists
        # half-born; the directory is fsynced before the first record goes in.
        path = self.directory / _segment_name(self.store_id, start)
        atomic_write(path, SEGMENT_MAGIC, mode=0o600)
        return os.open(path, os.O_WRONLY | os.O_APPEND), len(SEGMENT_MAGIC)

    def append(self, blob: bytes) -> None:
        """Write whole records and make them durable.  On failure, cut the segment back so
        no partial record is left in front of later ones, and re-raise.

        A disk that is full (``ENOSPC`` from the write itself, and the cut back done) raises
        ``DiskFullError``: nothing of the batch is in the log, so the store stays sound and
        later writes may succeed once space is freed.  Anything else -- above all a failed
        fsync, after which the page cache cannot be trusted -- is re-raised as it is.
        """
        with self._lock:
            if self._fd is None and self._unborn is not None:
                try:
                    self._fd, self.segment_size = self._create_segment(self._unborn)
                except OSError as exc:
                    if is_disk_full(exc):
                        raise DiskFullError(
                            f"disk full ({exc.strerror}): the write was not made"
                        ) from None
                    raise
                self._unborn = None
            if self._fd is None:
                raise OSError("the log is closed")
            fd = self._fd
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                try:
                    os.ftruncate(fd, self.segment_size)
                except OSError:
                    raise exc from None
                if is_disk_full(exc):
                    raise DiskFullError(
                        f"disk full ({exc.strerror}): the write was not made"
                    ) from None
                raise
            try:
                os.fdatasync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self.segment_size)
                raise
            self.segment_size += len(blob)

    def sync(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fdatasync(self._fd)

    def rotate(self, start: int) -> None:
        """Continue in a new segment whose first record will be ``start``."""
        with self._lock:
            new_fd, size = self._create_segment(start)  # may raise: nothing changed then
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self.segment_size = new_fd, size

    def write_snapshot(self, blob: bytes, *, prune_before: int) -> None:
        """Make ``blob`` the snapshot, then delete the segments it covers."""
        atomic_write(self.directory / SNAPSHOT_NAME, blob, mode=0o600)
        removed = False
        for store_id, start, path in self.segments():
            if store_id != self.store_id or start < prune_before:
                path.unlink(missing_ok=True)
                removed = True
        if removed:
            fsync_dir(self.directory)

    def adopt(self, snap: Snapshot) -> None:
        """Replace the whole store with ``snap`` (the log is not open yet)."""
        self.store_id = snap.store_id
        self._tail = None
        self.write_snapshot(snap.encode(), prune_before=snap.lsn + 1)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                try:
                    os.fdatasync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _apply(data: dict[str, bytes], rec: Record) -> None:
    if rec.op == "put":
        assert rec.value is not None
        data[rec.key] = rec.value
    else:
        data.pop(rec.key, None)


# -- the service --------------------------------------------------------------------------


class _RateMeter:
    """Exponentially weighted events per second: each event adds ``1/tau`` and the sum
    decays as ``exp(-dt/tau)``, so a steady rate ``r`` reads as ``r``.  O(1), no buckets."""

    def __init__(self, tau: float, clock: Callable[[], float]) -> None:
        self.tau = tau
        self.clock = clock
        self._value = 0.0
        self._at = clock()

    def _decayed(self, now: float) -> float:
        return self._value * math.exp(-max(0.0, now - self._at) / self.tau)

    def tick(self, n: int = 1) -> None:
        now = self.clock()
        self._value = self._decayed(now) + n / self.tau
        self._at = now

    def rate(self) -> float:
        return self._decayed(self.clock())


class _Write:
    """A put or delete waiting for its group commit."""

    __slots__ = ("done", "error", "key", "op", "size", "value")

    def __init__(self, op: Literal["put", "delete"], key: str, value: bytes | None) -> None:
        self.op = op
        self.key = key
        self.value = value
        self.size = len(key) + (len(value) if value is not None else 0) + 32
        self.done = trio.Event()
        self.error: tuple[str, str] | None = None

    def fail(self, code: str, detail: str) -> None:
        self.error = (code, detail)
        self.done.set()


class _Connection:
    def __init__(self, stream: trio.SocketStream, config: KVConfig) -> None:
        self.stream = stream
        self.config = config
        self.slots = trio.Semaphore(config.max_inflight_per_connection)
        self.send_lock = trio.Lock()
        self.broken = False

    async def send(self, resp: Response) -> bool:
        """Send one answer; False (and the connection closed) if the client is gone or
        does not read within ``send_timeout``."""
        data = wire.frame(resp.to_wire(), MAX_FRAME_BYTES)
        async with self.send_lock:
            if self.broken:
                return False
            with trio.move_on_after(self.config.send_timeout):
                try:
                    await self.stream.send_all(data)
                    return True
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self.broken = True
            self.stream.socket.close()  # wakes the reader with ClosedResourceError
            return False


@dataclass
class KVStats:
    """Counters for benchmarks and status output."""

    requests: int = 0
    writes_committed: int = 0
    batches: int = 0
    bad_requests: int = 0
    going_away: int = 0
    connections_refused: int = 0
    #: Writes refused because the disk was full (each answered ``unavailable``).
    disk_full: int = 0


class KVWorkload(Workload):
    """The example key/value service (see the module docstring).

    One instance owns ``state_dir`` from construction until ``serve()`` returns or
    ``close()`` is called; recovery from the log happens in the constructor (a damaged
    log or snapshot is repaired there, see ``_Log.recover``).  Call ``restore()`` (if at all) before
    ``serve()``.  ``port`` holds the bound port once ``serve()`` has started.
    """

    name = "kv"

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        capacity: float = 100.0,
        *,
        config: KVConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(capacity) and capacity >= 0):
            raise ValueError("capacity must be a finite number >= 0")
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port
        self.config = config or KVConfig()
        self._capacity = float(capacity)
        self._rate = _RateMeter(self.config.load_window, clock)
        self.stats = KVStats()
        self._log = _Log(self.state_dir, self.config.store)
        try:
            snap = self._log.recover()
        except BaseException:
            self._log.close()
            raise
        self._store_id = snap.store_id
        self._lsn = snap.lsn
        self._data: dict[str, bytes] = dict(snap.data)
        self._bytes = sum(entry_size(k, v) for k, v in self._data.items())

        self._serving = False
        self._closed = False
        self._listening = False
        self._draining = False
        self._failed: str | None = None
        self._pending: list[_Write] = []
        self._wakeup: trio.Event | None = None
        self._inflight = 0
        self._slots = trio.Semaphore(self.config.max_inflight)
        self._idle: trio.Event | None = None
        self._accept_scope: trio.CancelScope | None = None
        self._accept_done: trio.Event | None = None
        self._connections = 0
        self._compacting = False

    # -- Workload ------------------------------------------------------------------------

    def capacity(self) -> float:
        return self._capacity

    def load(self) -> float:
        return self._rate.rate()

    def healthy(self) -> bool:
        return (
            self._listening
            and not self._draining
            and self._failed is None
            and self._log.is_open
            and self.state_dir.is_dir()
        )

    @property
    def lsn(self) -> int:
        """Log position of the last committed write."""
        return self._lsn

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> bytes | None:
        """The committed value of ``key`` (for tests and local inspection)."""
        return self._data.get(key)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._closed:
            raise RuntimeError("this KVWorkload is closed; make a new one")
        if self._serving:
            raise RuntimeError("serve() is already running")
        self._serving = True
        try:
            await trio.to_thread.run_sync(self._log.open_append, self._lsn + 1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commit_loop, nursery)
                listeners = await trio.open_tcp_listeners(self.port, host=self.host)
                if len(listeners) > 1 and self.port == 0:
                    for extra in listeners[1:]:  # port 0 would give each family its own port
                        await extra.aclose()
                    listeners = listeners[:1]
                self.port = listeners[0].socket.getsockname()[1]
                self._accept_scope = trio.CancelScope()
                self._accept_done = trio.Event()
                if self._draining:
                    self._accept_scope.cancel()
                nursery.start_soon(self._accept, listeners, nursery)
                self._listening = not self._draining
                logger.info(
                    "kv: serving on %s:%d (%d keys, lsn %d)",
                    self.host,
                    self.port,
                    len(self._data),
                    self._lsn,
                )
                task_status.started()
        finally:
            self._listening = False
            self._serving = False
            self.close()

    async def drain(self, deadline: float) -> None:
        self._draining = True
        self._listening = False
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        with trio.move_on_at(deadline):
            if self._accept_done is not None:
                await self._accept_done.wait()  # the port is closed when drain returns
            if self._inflight:
                self._idle = trio.Event()
                await self._idle.wait()
        if self._log.is_open:
            with trio.move_on_at(deadline):
                try:
                    await trio.to_thread.run_sync(self._log.sync)
                except OSError as exc:
                    self._fail(f"log sync failed: {exc}")
        if self._inflight:
            logger.warning("kv: drain deadline passed with %d requests in flight", self._inflight)

    def checkpoint(self) -> bytes:
        return Snapshot(store_id=self._store_id, lsn=self._lsn, data=self._data).encode()

    def restore(self, data: bytes) -> None:
        if self._serving or self._closed:
            raise RuntimeError("restore() must be called before serve()")
        snap = Snapshot.decode(data, self.config.store)
        if snap.store_id == self._store_id:
            if snap.lsn <= self._lsn:
                return  # the log already holds this state or a newer one: never go back
        elif self._data:
            raise CorruptStateError(
                f"checkpoint of store {snap.store_id.hex()} cannot replace store "
                f"{self._store_id.hex()}, which holds {len(self._data)} keys",
                rule="foreign-checkpoint",
            )
        self._log.adopt(snap)
        self._store_id = snap.store_id
        self._lsn = snap.lsn
        self._data = dict(snap.data)
        self._bytes = sum(entry_size(k, v) for k, v in self._data.items())

    def close(self) -> None:
        """Release the state directory (``serve()`` does this when it returns)."""
        if not self._closed:
            self._closed = True
            self._log.close()

    # -- accepting and reading -----------------------------------------------------------

    async def _accept(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        assert self._accept_scope is not None and self._accept_done is not None
        try:
            with self._accept_scope:
                await trio.serve_listeners(
                    self._handle_connection, listeners, handler_nursery=nursery
                )
        finally:
            for listener in listeners:  # closed already unless cancelled before starting
                listener.socket.close()
            self._accept_done.set()

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        if self._connections >= self.config.max_connections:
            self.stats.connections_refused += 1
            conn = _Connection(stream, self.config)
            with trio.move_on_after(1.0):
                await conn.send(
                    Response.failure(None, ErrorCode.OVERLOADED, "too many connections")
                )
            return
        self._connections += 1
        conn = _Connection(stream, self.config)
        try:
            async with trio.open_nursery() as nursery:
                await self._read_requests(conn, nursery)
        except Exception:  # a bug must cost one connection, never the node
            logger.exception("kv: connection handler failed")
        finally:
            self._connections -= 1

    async def _read_requests(self, conn: _Connection, nursery: trio.Nursery) -> None:
        decoder = wire.FrameDecoder(MAX_FRAME_BYTES)
        while True:
            with trio.move_on_after(self.config.idle_timeout) as idle:
                try:
                    data = await conn.stream.receive_some(RECV_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if idle.cancelled_caught or not data:
                return
            try:
                payloads = decoder.feed(data)
            except WireError as exc:  # oversize header: the framing is lost, so is the link
                self.stats.bad_requests += 1
                await conn.send(Response.failure(None, ErrorCode.BAD_REQUEST, exc.message))
                return
            for payload in payloads:
                await conn.slots.acquire()  # in-flight caps: the reader stops reading,
                await self._slots.acquire()  # and TCP pushes back on the client
                self._inflight += 1
                handed_off = False
                try:
                    handed_off = await self._dispatch(conn, payload, nursery)
                finally:
                    if not handed_off:
                        self._request_done(conn)
                if conn.broken:
                    return

    async def _dispatch(self, conn: _Connection, payload: bytes, nursery: trio.Nursery) -> bool:
        """Answer one request inline, or hand a write to its own task (returns True then;
        that task releases the slot and the in-flight count)."""
        self.stats.requests += 1
        self._rate.tick()
        try:
            req = Request.from_wire(payload)
        except BadRequestError as exc:
            self.stats.bad_requests += 1
            await conn.send(Response.failure(exc.request_id, ErrorCode.BAD_REQUEST, exc.message))
            return False
        if self._draining:
            self.stats.going_away += 1
            await conn.send(Response.failure(req.id, ErrorCode.GOING_AWAY, "node is draining"))
        elif req.op in WRITE_OPS:
            if self._failed is not None:
                await conn.send(Response.failure(req.id, ErrorCode.UNAVAILABLE, self._failed))
                return False
            nursery.start_soon(self._write, conn, req)
            return True
        elif req.op == "get":
            assert req.key is not None
            await conn.send(Response(id=req.id, ok=True, value=self._data.get(req.key)))
        else:
            await conn.send(Response(id=req.id, ok=True))
        return False

    def _request_done(self, conn: _Connection) -> None:
        conn.slots.release()
        self._slots.release()
        self._inflight -= 1
        if self._inflight == 0 and self._idle is not None:
            self._idle.set()

    async def _write(self, conn: _Connection, req: Request) -> None:
        try:
            assert req.key is not None and req.op in WRITE_OPS
            write = _Write("put" if req.op == "put" else "delete", req.key, req.value)
            self._pending.append(write)
            if self._wakeup is not None:
                self._wakeup.set()
            await write.done.wait()
            if write.error is None:
                await conn.send(Response(id=req.id, ok=True))
            else:
                await conn.send(Response.failure(req.id, *write.error))
        finally:
            self._request_done(conn)

    # -- group commit ----------------------------------------------------------------------

    async def _commit_loop(self, nursery: trio.Nursery) -> None:
        await self._maybe_rotate(nursery)
        while True:
            while not self._pending:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            n, size = 0, 0
            for write in self._pending:
                n += 1
                size += write.size
                if size >= self.config.batch_max_bytes:
                    break
            batch = self._pending[:n]
            del self._pending[:n]
            with trio.CancelScope(shield=True):  # the fsync runs to the end either way
                await self._commit(batch)
            await self._maybe_rotate(nursery)

    async def _commit(self, batch: list[_Write]) -> None:
        if self._failed is not None:
            for write in batch:
                write.fail(ErrorCode.UNAVAILABLE, self._failed)
            return
        limits = self.config.store
        size, count, lsn = self._bytes, len(self._data), self._lsn
        shadow: dict[str, int | None] = {}  # entry sizes as of the writes accepted so far
        accepted: list[tuple[_Write, Record]] = []
        for write in batch:
            if write.key in shadow:
                old = shadow[write.key]
            else:
                value = self._data.get(write.key)
                old = None if value is None else entry_size(write.key, value)
            if write.op == "put":
                assert write.value is not None
                new: int | None = entry_size(write.key, write.value)
                new_size = size - (old or 0) + (new or 0)
                new_count = count + (old is None)
                if new_count > limits.max_keys or new_size > limits.max_store_bytes:
                    write.fail(ErrorCode.STORE_FULL, "the store is at its key or byte limit")
                    continue
            else:
                new, new_size, new_count = None, size - (old or 0), count - (old is not None)
            shadow[write.key] = new
            size, count, lsn = new_size, new_count, lsn + 1
            accepted.append((write, Record(lsn=lsn, op=write.op, key=write.key, value=write.value)))
        if accepted:
            blob = b"".join(rec.encode() for _, rec in accepted)
            try:
                await trio.to_thread.run_sync(self._log.append, blob)
            except DiskFullError as exc:  # refused, not broken: reads go on, writes retry
                self.stats.disk_full += 1
                if self.stats.disk_full == 1 or self.stats.disk_full % 1000 == 0:
                    logger.warning("kv: %s (%d writes refused so far)", exc, self.stats.disk_full)
                for write, _ in accepted:
                    write.fail(ErrorCode.UNAVAILABLE, str(exc))
                return
            except OSError as exc:
                self._fail(f"log write failed: {exc}")
                for write, _ in accepted:
                    write.fail(ErrorCode.UNAVAILABLE, self._failed or "log write failed")
                return
            for _, rec in accepted:
                _apply(self._data, rec)
            self._bytes, self._lsn = size, lsn
            self.stats.batches += 1
            self.stats.writes_committed += len(accepted)
        for write, _ in accepted:
            write.done.set()

    def _fail(self, why: str) -> None:
        """Storage is broken (an fsync error cannot be retried safely): stop writing, answer
        ``unavailable`` so clients go elsewhere, and report unhealthy."""
        if self._failed is None:
            logger.error("kv: %s; the store stops taking writes", why)
            self._failed = why
        for write in self._pending:
            write.fail(ErrorCode.UNAVAILABLE, why)
        self._pending.clear()

    async def _maybe_rotate(self, nursery: trio.Nursery) -> None:
        if (
            self._compacting
            or self._failed is not None
            or self._log.segment_size < self.config.segment_bytes
        ):
            return
        start = self._lsn + 1
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._log.rotate, start)
        except OSError as exc:
            logger.warning("kv: cannot start a new log segment: %s", exc)
            return
        snap = Snapshot(store_id=self._store_id, lsn=self._lsn, data=dict(self._data))
        self._compacting = True
        nursery.start_soon(self._compact, snap, start)

    async def _compact(self, snap: Snapshot, start: int) -> None:
        try:
            blob = await trio.to_thread.run_sync(snap.encode)
            await trio.to_thread.run_sync(
                lambda: self._log.write_snapshot(blob, prune_before=start)
            )
        except OSError as exc:  # not fatal: the log still holds everything
            logger.warning("kv: snapshot failed: %s", exc)
        finally:
            self._compacting = False


# -- command line -------------------------------------------------------------------------


async def _run(workload: KVWorkload, drain_seconds: float) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(workload.serve)
            print(f"listening {workload.host} {workload.port}", flush=True)
            async for _ in signals:
                await workload.drain(trio.current_time() + drain_seconds)
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m p2pupdate.work.kv", description="Run one node of the example KV service."
    )
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--capacity", type=float, default=100.0)
    ap.add_argument("--drain-seconds", type=float, default=5.0, help="drain deadline on SIGTERM")
    ap.add_argument(
        "--segment-bytes",
        type=int,
        default=KVConfig.segment_bytes,
        help="log segment size that triggers a snapshot (small values exercise compaction)",
    )
    args = ap.parse_args(argv)
    if args.segment_bytes < 1:
        ap.error("--segment-bytes must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = KVConfig(segment_bytes=args.segment_bytes)
        workload = KVWorkload(args.state_dir, args.host, args.port, args.capacity, config=config)
    except (P2PUpdateError, OSError) as exc:
        print(f"kv: {exc}", file=sys.stderr)
        return 2
    trio.run(_run, workload, args.drain_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
