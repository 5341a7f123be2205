"""The node's artifact store: whole artifacts, partial downloads, and the chunks it serves.

Layout (in ``D/store/``, ``launcher.state``'s store directory)::

    <sha>.tar.gz    a complete artifact, every chunk verified: what the swap installs
                    (``StateDir.store_path``) and what the launcher restores a damaged slot
                    file from; it appears only by one rename, so it is never partial
    <sha>.part      a download in progress: the artifact's length, chunks written in place
                    at their ``Chunk.offset`` (the rest is a hole)
    <sha>.chunks    which chunks of ``<sha>.part`` are verified (JSON, atomic), and of which
                    chunk map (its digest: a release cut differently is another download)
    <sha>.release   the signed release record of a complete artifact, as received (kept so
                    a restarted node -- one that just swapped into it, say -- serves the
                    artifact at once, before any replica or peer sends the record again;
                    verified again when it is read, ``CoordinatorLink.restore_releases``)
    <sha>.layout    the chunk map the artifact was last opened with (each chunk's length and
                    digest, binary, renamed into place, not fsynced: a hint): what the content-addressed index reads for an
                    artifact held but not opened by this process

Why this order of writes: a chunk is verified against the release's chunk map first
(``ChunkMap.check``), written into ``.part`` and fsynced, and only then added to
``.chunks`` (``fsutil.atomic_write``).  A kill at any moment loses at most the chunks being
written (their bytes may be there, unrecorded) and never records a chunk whose bytes are
not on disk.  The swarm writes in batches (``put_chunk(..., durable=False)``, then one
:meth:`ChunkStore.sync`: one fsync of ``.part`` and one record for many chunks, since three
fsyncs per chunk cost more than the chunk's transfer): a chunk written but not yet synced
is held (served, counted) but not in the record, so a kill before the sync loses it and
it is fetched again -- never recorded without its bytes.  Opening a download re-verifies every recorded chunk against its digest (one
whose bytes changed is dropped, one log line), so a resumed download fetches exactly the
chunks it lacks, and nothing verified is fetched twice.  Chunks are never assumed to be
of one size: every read and write goes through ``Chunk.offset`` and ``Chunk.length``.

The store keeps serving what it holds: :meth:`ChunkStore.read_chunk` gives the swarm's
uploader a verified chunk (checked again on the way out: a chunk that rotted on disk is
dropped, not sent to a peer that would rightly ban us).  :meth:`ChunkStore.cleanup`
removes what no held allowlist names (except what is protected: the running and previous
builds, which the slots hold and the launcher restores from, and the one being rolled
out), then enforces a size cap, oldest first, never touching the protected ones.

**Content-addressed reuse** (issue P12: chunks addressed by the sha256 of their bytes, shared
by releases).  When a download opens, every chunk it lacks whose digest a held artifact also
has (a complete one, or a verified chunk of an open partial one, this artifact's own held
chunks included) is copied into the ``.part`` file before anything is fetched: read at the
holder's offset, checked against the *target* chunk (length and sha256: the index is only a
hint, so a damaged or lying holder is simply not reused and the chunk is fetched), written,
fsynced once, recorded.  So a node on v1 fetches only the chunks of v2 that v1 lacks.  And
a chunk put by a fetch also fills every other missing position with the same digest (a
record may list one chunk twice; it is fetched once).  Counters: :attr:`ChunkStore.reused_chunks`
and :attr:`ChunkStore.reused_bytes` (the swarm's status shows them), and one log line per
download, "reused N of M chunks (B bytes) from held artifacts".

Blocking file work: the node calls it from a worker thread; one lock keeps the uploader's
reads and a download's writes apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..core import documents as docs
from ..core import wire
from ..core.swarm.chunks import ChunkMap
from ..errors import LocalStateFault
from ..fsutil import atomic_write, fsync_dir, read_limited, temp_path

__all__ = ["DEFAULT_CAP", "ChunkStore", "CleanupResult", "StoreError", "map_digest"]

#: The store's size cap (bytes) when the node sets none: room for a handful of builds.
DEFAULT_CAP: Final = 4 << 30
#: Largest ``.chunks`` record read (16,384 chunk indices as JSON, and the header).
MAX_RECORD: Final = 256 * 1024
RECORD_FORMAT: Final = 1
_COMPLETE = ".tar.gz"
_PART = ".part"
_RECORD = ".chunks"
_LAYOUT = ".layout"
_RELEASE = ".release"
_SUFFIXES: Final = (_COMPLETE, _PART, _RECORD, _LAYOUT, _RELEASE)
#: Largest ``.release`` kept or read: a signed document's limit.
MAX_RELEASE: Final = wire.DOCUMENT_LIMITS.max_bytes
#: ``.layout``: this header, then per chunk its length (4 bytes, big-endian) and digest.
_LAYOUT_MAGIC: Final = b"p2pupdate-layout-1\n"
_LAYOUT_ENTRY: Final = 36
#: Largest ``.layout`` read: as many chunks as a release may list.
MAX_LAYOUT: Final = len(_LAYOUT_MAGIC) + _LAYOUT_ENTRY * docs.MAX_CHUNKS


class StoreError(LocalStateFault):
    """The store's files cannot be written or read (the disk, this machine's fault)."""

    rule = "store"


def map_digest(cmap: ChunkMap) -> str:
    """What identifies how ``cmap`` cuts its artifact: a record of another cut is void."""
    h = hashlib.sha256(f"{cmap.artifact}:{cmap.length}:".encode())
    for c in cmap.chunks:
        h.update(f"{c.index}:{c.offset}:{c.length}:".encode() + c.digest)
    return h.hexdigest()


def _is_sha(name: str) -> bool:
    return len(name) == 64 and not name.strip("0123456789abcdef")


@dataclass(frozen=True, kw_only=True, slots=True)
class CleanupResult:
    """What one :meth:`ChunkStore.cleanup` removed, and the store's bytes after it."""

    removed: tuple[str, ...]
    kept_bytes: int


class _Download:
    """One artifact's chunk map and which of its chunks this node holds verified."""

    def __init__(self, cmap: ChunkMap, have: set[int], complete: bool) -> None:
        self.cmap = cmap
        self.have = have
        self.complete = complete
        #: Chunks in ``have`` written but not yet fsynced: never in the record.
        self.unsynced: set[int] = set()

    def durable(self) -> set[int]:
        """What the record may say: the chunks held whose bytes are on disk."""
        return self.have - self.unsynced


class ChunkStore:
    """``D/store/``: complete artifacts and downloads in progress, chunk by chunk."""

    def __init__(self, directory: Path, *, log: Callable[[str], None] = lambda _m: None) -> None:
        self.dir = directory
        self.log = log
        self._lock = threading.Lock()
        self._open: dict[str, _Download] = {}
        #: Chunks (and their bytes) copied from held artifacts instead of fetched, since start.
        self.reused_chunks = 0
        self.reused_bytes = 0

    # -- paths ----------------------------------------------------------------------------

    def path(self, artifact: str) -> Path:
        """Where the complete artifact is (``StateDir.store_path``: what the swap reads)."""
        return self.dir / f"{artifact}{_COMPLETE}"

    def _part(self, artifact: str) -> Path:
        return self.dir / f"{artifact}{_PART}"

    def _record(self, artifact: str) -> Path:
        return self.dir / f"{artifact}{_RECORD}"

    def _layout(self, artifact: str) -> Path:
        return self.dir / f"{artifact}{_LAYOUT}"

    def _release(self, artifact: str) -> Path:
        return self.dir / f"{artifact}{_RELEASE}"

    # -- release records ----------------------------------------------------------------------

    def keep_release(self, artifact: str, record: bytes) -> bool:
        """Keep the signed release record of ``artifact`` beside it (atomic), if the
        artifact is held whole and the record is not there already.  The caller verified
        it; whoever reads it back verifies it again (:meth:`releases`).  True if written."""
        if not _is_sha(artifact) or len(record) > MAX_RELEASE:
            return False
        path = self._release(artifact)
        with self._lock:
            if not self.path(artifact).is_file():
                return False
            try:
                if path.stat().st_size == len(record) and path.read_bytes() == record:
                    return False
            except OSError:
                pass
            try:
                atomic_write(path, record)
            except OSError as exc:
                raise StoreError(f"cannot keep the release record {path}: {exc}") from exc
            return True

    def releases(self) -> list[tuple[str, bytes]]:
        """``(artifact, signed record)`` of every complete artifact whose record is kept
        here, unverified (the caller verifies each).  A record that cannot be read or is
        over ``MAX_RELEASE`` is skipped with one log line; nothing is changed."""
        out: list[tuple[str, bytes]] = []
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            return out
        for name in names:
            artifact = name.removesuffix(_RELEASE)
            if artifact == name or not _is_sha(artifact) or not self.path(artifact).is_file():
                continue
            try:
                out.append((artifact, read_limited(self._release(artifact), MAX_RELEASE)))
            except (OSError, ValueError) as exc:
                self.log(f"store: the release record of {artifact[:16]}... is not read: {exc}")
        return out

    # -- opening ----------------------------------------------------------------------------

    def open(self, cmap: ChunkMap) -> frozenset[int]:
        """Start or resume the download of ``cmap.artifact``: the verified chunks held.

        Every chunk held is verified against ``cmap`` first (a complete file's too): a
        chunk whose bytes no longer match is dropped (one log line), and a complete file
        with a bad chunk goes back to being a partial one that lacks only that chunk."""
        with self._lock:
            return frozenset(self._open_locked(cmap).have)

    def _open_locked(self, cmap: ChunkMap) -> _Download:
        artifact = cmap.artifact
        held = self._open.get(artifact)
        if held is not None and held.cmap == cmap:
            return held
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_layout(cmap)
        d = self._open_files(cmap)
        if not d.complete:
            self._reuse(d)
        return d

    def _open_files(self, cmap: ChunkMap) -> _Download:
        artifact = cmap.artifact
        complete, part = self.path(artifact), self._part(artifact)
        if complete.is_file():
            bad = self._verify_file(complete, cmap, range(len(cmap.chunks)))
            if not bad:
                self._record(artifact).unlink(missing_ok=True)
                part.unlink(missing_ok=True)
                d = _Download(cmap, set(range(len(cmap.chunks))), True)
                self._open[artifact] = d
                return d
            self.log(
                f"store: {artifact[:16]}... has {len(bad)} chunk(s) that no longer match "
                f"the release ({_few(bad)}): dropped, fetched again"
            )
            os.replace(complete, part)
            good = set(range(len(cmap.chunks))) - bad
            self._write_record(cmap, good)
            d = _Download(cmap, good, False)
            self._open[artifact] = d
            return d
        have: set[int] = set()
        if part.is_file() and os.stat(part).st_size == cmap.length:
            recorded = self._read_record(cmap)
            # No record (a kill before the first one): every chunk's digest is its proof.
            candidates = recorded if recorded is not None else range(len(cmap.chunks))
            bad = self._verify_file(part, cmap, candidates)
            have = set(candidates) - bad
            if recorded is not None and bad:
                self.log(
                    f"store: {artifact[:16]}... partial: {len(bad)} recorded chunk(s) no "
                    f"longer match the release ({_few(bad)}): dropped, fetched again"
                )
            if recorded is None or bad:
                self._write_record(cmap, have)
        else:
            if part.exists():
                self.log(
                    f"store: {artifact[:16]}... partial is not the release's length: restarted"
                )
            self._new_part(cmap)
            self._write_record(cmap, have)
        d = _Download(cmap, have, False)
        self._open[artifact] = d
        if len(have) == len(cmap.chunks):
            self._finish(d)
        return d

    def _new_part(self, cmap: ChunkMap) -> None:
        part = self._part(cmap.artifact)
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, cmap.length)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.dir)

    def _verify_file(self, path: Path, cmap: ChunkMap, indices: Iterable[int]) -> set[int]:
        """The chunks among ``indices`` whose bytes in ``path`` are not the map's."""
        bad: set[int] = set()
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != cmap.length:
                return set(indices)
            for i in indices:
                c = cmap.chunks[i]
                f.seek(c.offset)
                if not cmap.check(i, f.read(c.length)):
                    bad.add(i)
        return bad

    def _read_record(self, cmap: ChunkMap) -> set[int] | None:
        """The verified chunks recorded for this map (None: no usable record)."""
        path = self._record(cmap.artifact)
        try:
            obj = json.loads(read_limited(path, MAX_RECORD))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.log(f"store: {path.name} unreadable ({exc}): its chunks are checked one by one")
            return None
        n = len(cmap.chunks)
        if (
            not isinstance(obj, dict)
            or obj.get("format") != RECORD_FORMAT
            or obj.get("map") != map_digest(cmap)
            or not isinstance(obj.get("have"), list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in obj["have"])
            or not all(0 <= i < n for i in obj["have"])
        ):
            self.log(f"store: {path.name} is not a record of this chunk map: checked one by one")
            return None
        return set(obj["have"])

    def _write_record(self, cmap: ChunkMap, have: set[int]) -> None:
        body = {"format": RECORD_FORMAT, "map": map_digest(cmap), "have": sorted(have)}
        atomic_write(self._record(cmap.artifact), json.dumps(body).encode())

    def remember(self, cmap: ChunkMap) -> bool:
        """Note how a complete artifact held here is cut (its ``.layout``), without opening
        it: so its chunks serve a later download even if this process never opens it (the
        running build, with the swarm off).  False if it is not held whole."""
        with self._lock:
            if cmap.artifact in self._open or not self.path(cmap.artifact).is_file():
                return cmap.artifact in self._open
            self._write_layout(cmap)
            return True

    def _write_layout(self, cmap: ChunkMap) -> None:
        body = bytearray(_LAYOUT_MAGIC)
        for c in cmap.chunks:
            body += c.length.to_bytes(4, "big") + c.digest
        path = self._layout(cmap.artifact)
        try:
            if path.stat().st_size == len(body) and path.read_bytes() == body:
                return
        except OSError:
            pass
        # A hint, never trusted (each chunk copied from it is re-checked): renamed into
        # place whole, but not fsynced (a crash may leave an old or torn one: ignored by
        # ``_read_layout`` or refused by the re-check), so opening a download costs no
        # more fsyncs than before.
        tmp = temp_path(path)
        try:
            tmp.write_bytes(bytes(body))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _read_layout(self, artifact: str) -> list[tuple[int, int, bytes]] | None:
        """``(offset, length, digest)`` of each chunk of a held artifact's last layout (None:
        none, or unreadable: then its chunks are simply not offered for reuse)."""
        try:
            raw = read_limited(self._layout(artifact), MAX_LAYOUT)
        except (OSError, ValueError):
            return None
        if not raw.startswith(_LAYOUT_MAGIC) or (len(raw) - len(_LAYOUT_MAGIC)) % _LAYOUT_ENTRY:
            return None
        out: list[tuple[int, int, bytes]] = []
        at = 0
        for pos in range(len(_LAYOUT_MAGIC), len(raw), _LAYOUT_ENTRY):
            length = int.from_bytes(raw[pos : pos + 4], "big")
            out.append((at, length, raw[pos + 4 : pos + _LAYOUT_ENTRY]))
            at += length
        return out

    def _index(self) -> dict[bytes, tuple[Path, int, int]]:
        """digest -> (file, offset, length) of a chunk held somewhere in the store: every
        verified chunk of an open artifact (the target's own included), and every chunk of
        a complete artifact held but not open (from its ``.layout``).  Only a hint: whatever
        is copied from it is checked against the target's digest first."""
        index: dict[bytes, tuple[Path, int, int]] = {}
        for artifact, d in self._open.items():
            path = self.path(artifact) if d.complete else self._part(artifact)
            for i in d.have:
                c = d.cmap.chunks[i]
                index.setdefault(c.digest, (path, c.offset, c.length))
        try:
            names = sorted(e.name for e in os.scandir(self.dir))
        except FileNotFoundError:
            return index
        for name in names:
            stem = name.removesuffix(_COMPLETE)
            if stem == name or not _is_sha(stem) or stem in self._open:
                continue
            for offset, length, digest in self._read_layout(stem) or ():
                index.setdefault(digest, (self.dir / name, offset, length))
        return index

    def _reuse(self, d: _Download) -> None:
        """Fill the chunks ``d`` lacks from the chunks held elsewhere with the same digest,
        each re-checked against ``d``'s map; then one fsync and one record."""
        wanted = [c for c in d.cmap.chunks if c.index not in d.have]
        if not wanted:
            return
        index = self._index()
        if not any(c.digest in index for c in wanted):
            return
        reused = reused_bytes = refused = 0
        fd = os.open(self._part(d.cmap.artifact), os.O_WRONLY)
        try:
            for c in wanted:
                source = index.get(c.digest)
                if source is None:
                    continue
                path, offset, length = source
                data = _read_at(path, offset, length)
                if data is None or not d.cmap.check(c.index, data):
                    refused += 1  # a damaged holder: the chunk is fetched instead
                    continue
                _pwrite_all(fd, data, c.offset)
                d.have.add(c.index)
                reused += 1
                reused_bytes += c.length
            if reused:
                os.fsync(fd)
        finally:
            os.close(fd)
        self.reused_chunks += reused
        self.reused_bytes += reused_bytes
        self.log(
            f"store: {d.cmap.artifact[:16]}... reused {reused} of {len(d.cmap.chunks)} chunks "
            f"({reused_bytes} bytes) from held artifacts"
            + (f"; {refused} held chunk(s) did not match and will be fetched" if refused else "")
        )
        if len(d.have) == len(d.cmap.chunks):
            self._finish(d)
        elif reused:
            self._write_record(d.cmap, d.durable())

    # -- a download ---------------------------------------------------------------------------

    def missing(self, artifact: str) -> list[int]:
        """The chunks of an opened download not yet held, in order ([] when complete)."""
        with self._lock:
            d = self._open[artifact]
            return [c.index for c in d.cmap.chunks if c.index not in d.have]

    def have(self, artifact: str) -> frozenset[int]:
        """The verified chunks held of an opened artifact (empty if never opened)."""
        with self._lock:
            d = self._open.get(artifact)
            return frozenset(d.have) if d is not None else frozenset()

    def summary(self) -> dict[str, tuple[int, int]]:
        """Every opened artifact -> (chunks held verified, chunks in all): what a node can
        tell its peers it holds or is fetching, without a bitfield."""
        with self._lock:
            return {a: (len(d.have), len(d.cmap.chunks)) for a, d in sorted(self._open.items())}

    def complete(self, artifact: str) -> bool:
        with self._lock:
            d = self._open.get(artifact)
            return d is not None and d.complete

    def put_chunk(self, artifact: str, index: int, data: bytes, *, durable: bool = True) -> bool:
        """Keep chunk ``index`` if ``data`` is it (length and digest): False (nothing
        written) if not.  The last chunk held completes the artifact (one rename).

        ``durable=False`` writes the bytes without an fsync and leaves the chunk out of the
        record until :meth:`sync` (the chunk is held and served meanwhile; a kill before
        the sync loses it, and it is fetched again)."""
        with self._lock:
            d = self._open[artifact]
            if not 0 <= index < len(d.cmap.chunks) or not d.cmap.check(index, data):
                return False
            if index in d.have:
                return True
            chunk = d.cmap.chunks[index]
            # the same bytes at every position still missing that lists the same digest
            same = [
                c.index
                for c in d.cmap.chunks
                if c.digest == chunk.digest and c.length == chunk.length and c.index not in d.have
            ]
            fd = os.open(self._part(artifact), os.O_WRONLY)
            try:
                for i in same:
                    _pwrite_all(fd, data, d.cmap.chunks[i].offset)
                if durable:
                    os.fsync(fd)  # the bytes are on disk before the record says so
                    d.unsynced.clear()  # (the fsync made every earlier write durable too)
            finally:
                os.close(fd)
            d.have.update(same)
            if not durable:
                d.unsynced.update(same)
            if len(d.have) == len(d.cmap.chunks):
                self._finish(d)
            elif durable:
                self._write_record(d.cmap, d.durable())
            return True

    def sync(self, artifact: str) -> int:
        """Make the chunks written with ``durable=False`` durable: one fsync of the part
        file, then one record naming them.  Returns how many became durable (0: nothing
        to do, or the artifact is not open or already complete)."""
        with self._lock:
            d = self._open.get(artifact)
            if d is None or d.complete or not d.unsynced:
                return 0
            self._fsync_part(d)
            n = len(d.unsynced)
            d.unsynced.clear()
            self._write_record(d.cmap, d.durable())
            return n

    def _fsync_part(self, d: _Download) -> None:
        fd = os.open(self._part(d.cmap.artifact), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _finish(self, d: _Download) -> None:
        artifact = d.cmap.artifact
        if d.unsynced:  # the complete file appears only with every byte on disk
            self._fsync_part(d)
            d.unsynced.clear()
        os.replace(self._part(artifact), self.path(artifact))
        fsync_dir(self.dir)
        self._record(artifact).unlink(missing_ok=True)
        d.complete = True
        self.log(f"store: {artifact[:16]}... complete ({len(d.cmap.chunks)} chunks verified)")

    # -- serving --------------------------------------------------------------------------------

    def read_chunk(self, artifact: str, index: int) -> bytes | None:
        """A verified chunk for the swarm's uploader, or None (not held, or not opened).

        Checked again on the way out: bytes that changed on disk are dropped from what
        the store holds (one log line) instead of being sent."""
        with self._lock:
            d = self._open.get(artifact)
            if d is None or index not in d.have:
                return None
            chunk = d.cmap.chunks[index]
            path = self.path(artifact) if d.complete else self._part(artifact)
            try:
                with path.open("rb") as f:
                    f.seek(chunk.offset)
                    data = f.read(chunk.length)
            except OSError as exc:
                self.log(f"store: {artifact[:16]}... chunk {index} unreadable: {exc}")
                return None
            if d.cmap.check(index, data):
                return data
            self.log(
                f"store: {artifact[:16]}... chunk {index} no longer matches the release: "
                "dropped (not served; fetched again when needed)"
            )
            if d.complete:
                os.replace(self.path(artifact), self._part(artifact))
                d.complete = False
            d.have.discard(index)
            d.unsynced.discard(index)
            self._write_record(d.cmap, d.durable())
            return None

    # -- cleanup --------------------------------------------------------------------------------

    def held(self) -> dict[str, int]:
        """Every artifact with files here (complete or partial) -> the bytes they take."""
        sizes: dict[str, int] = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return {}
        for e in entries:
            for suffix in _SUFFIXES:
                stem = e.name.removesuffix(suffix)
                if stem != e.name and _is_sha(stem):
                    try:
                        size = e.stat().st_blocks * 512  # a partial's hole takes no room
                    except OSError:
                        continue
                    sizes[stem] = sizes.get(stem, 0) + size
        return sizes

    def cleanup(
        self,
        *,
        named: Collection[str] | None,
        protected: Collection[str],
        cap: int = DEFAULT_CAP,
    ) -> CleanupResult:
        """Remove what no held allowlist names (``named``; None: no allowlist is held, so
        nothing goes for that reason), except ``protected`` (the running build, the
        previous one, the one being rolled out); then, while the store takes more than
        ``cap`` bytes, the oldest unprotected artifact (by its files' change time)."""
        with self._lock:
            sizes = self.held()
            removed: list[str] = []
            for artifact in sorted(sizes):
                if artifact in protected or named is None or artifact in named:
                    continue
                self._remove(artifact)
                removed.append(artifact)
                del sizes[artifact]
            total = sum(sizes.values())
            if total > cap:
                for artifact in sorted((a for a in sizes if a not in protected), key=self._age_key):
                    if total <= cap:
                        break
                    self._remove(artifact)
                    removed.append(artifact)
                    total -= sizes.pop(artifact)
            if removed:
                self.log(
                    f"store: removed {len(removed)} artifact(s) no allowlist names or over the "
                    f"cap of {cap} bytes ({', '.join(a[:16] + '...' for a in removed)}); "
                    f"{total} bytes kept"
                )
            return CleanupResult(removed=tuple(removed), kept_bytes=total)

    def _age_key(self, artifact: str) -> float:
        times = []
        for suffix in (_COMPLETE, _PART, _RECORD):  # (not .layout: rewritten at each open)
            try:
                times.append(os.stat(self.dir / f"{artifact}{suffix}").st_mtime)
            except OSError:
                continue
        return max(times, default=0.0)

    def _remove(self, artifact: str) -> None:
        for suffix in _SUFFIXES:
            (self.dir / f"{artifact}{suffix}").unlink(missing_ok=True)
        self._open.pop(artifact, None)
        fsync_dir(self.dir)


def _few(indices: Collection[int], shown: int = 8) -> str:
    ordered = sorted(indices)
    more = f", ... {len(ordered) - shown} more" if len(ordered) > shown else ""
    return ", ".join(str(i) for i in ordered[:shown]) + more


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _read_at(path: Path, offset: int, length: int) -> bytes | None:
    """``length`` bytes of ``path`` at ``offset`` (None if it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(length)
    except OSError:
        return None
