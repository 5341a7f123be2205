"""The node's state directory: slots, the ``current``/``previous`` links and the records.

Layout (``D`` is ``--state-dir``)::

    D/launcher.lock           flock: one launcher per state dir
    D/slots/<sha256>/         one unpacked artifact: p2pupdate/, coordinator/, in a
                              self-contained build deps/ (every runtime dependency and
                              deps/SLOT.json), SLOT.json, FILES.json (the sha256 of each
                              file, checked before each start)
    D/slots/.tmp-*            a slot being unpacked (deleted at launcher start)
    D/current -> slots/<sha>  the slot that runs; changes only when a new slot is confirmed
    D/previous -> slots/<sha> the slot that ran before it (kept for a manual rollback)
    D/pending                 a swap in progress: the new slot on probation (JSON)
    D/verdict                 the new slot's answer on probation: confirm / rollback (JSON)
    D/denied                  sticky denies: artifacts that failed probation here (JSON)
    D/rollbacks               the rollback log, newest last, capped (JSON)
    D/status                  what the running daemon says about itself (JSON)
    D/store/<sha>.tar.gz      artifacts fetched (offered) but not yet unpacked, and the
                              verified copies of ``current`` and ``previous`` (a damaged
                              slot file is restored from them)
    D/work/checkpoint         the workload's state handed from one process to the next
    D/work/<name>/            the workload's own durable state
    D/trust/                  the trust store (``daemon.truststate.TrustFile``)

Crash safety: every record is written with ``fsutil.atomic_write`` (temp file, fsync,
``os.replace``, fsync of the directory); a link is replaced by creating it under a temp
name and renaming it over the old one; a slot is unpacked into ``slots/.tmp-*``, fsynced,
described by ``SLOT.json`` and only then renamed into place, so a slot directory that
exists under its sha256 is always complete.  After a kill at any point every file here
either parses or is absent, and ``Launcher.decide`` resolves whatever was in flight.

Who writes what (never two at once: the launcher writes only while no daemon runs, except
``current``/``previous``/``pending`` on promotion, which the daemon only reads):

* the launcher: ``current``, ``previous``, ``pending`` (attempts, outcome), ``denied`` (add),
  ``rollbacks`` (add), and removes ``verdict``;
* the daemon: ``slots/<sha>`` and ``pending`` (creates it, then exits with the swap code),
  ``verdict``, ``status``, ``store/``, ``work/``, ``denied`` (lift), ``rollbacks`` (reported).

Records are JSON with a ``format`` number and exact keys, read with a size cap; anything
else raises ``StateError`` (the local state's fault, never a peer's).  In memory they are
``NamedTuple`` records (immutable; build them by keyword): the launcher process imports no
``dataclasses`` (README "A small box").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, NamedTuple

from ..errors import LocalStateFault
from ..fsutil import FileTooLargeError, atomic_write, fsync_dir, quarantine, read_limited
from .artifact import (
    SELF_CONTAINED_LIMITS,
    SLOT_TOPS,
    VERSION_FILE,
    ArtifactError,
    UnpackLimits,
    artifact_files,
    artifact_hashes,
    check_artifact,
    read_artifact,
    read_version,
    sha256_hex,
    unpack_into,
    version_in,
)

FORMAT: Final = 1
MAX_RECORD_BYTES: Final = 256 * 1024
MAX_ROLLBACK_RECORDS: Final = 100
MAX_DENIES: Final = 1000
SLOT_FILE: Final = "SLOT.json"
#: The slot's file manifest: the sha256 of every file its artifact holds.
FILES_FILE: Final = "FILES.json"
MAX_FILES_BYTES: Final = 8 * 1024 * 1024
LINK_NAMES: Final = ("current", "previous")
OUTCOME_ROLLBACK: Final = "rollback"
VERDICTS: Final = ("confirm", "rollback")
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_ID: Final = re.compile(r"^[0-9a-f]{32}$")


class StateError(LocalStateFault):
    """A state file that cannot be used as it is: the local state's fault."""

    rule = "state"


def new_id() -> str:
    return os.urandom(16).hex()  # = secrets.token_hex, without hmac/OpenSSL


# -- field checks -----------------------------------------------------------------------------


def _obj(
    raw: Any, where: str, keys: Mapping[str, tuple[type, ...]], *, top: bool = True
) -> dict[str, Any]:
    """Exactly ``keys`` (plus ``format`` in a top-level record), each of the given types."""
    if not isinstance(raw, dict):
        raise StateError(f"{where}: not a JSON object")
    if top and raw.get("format") != FORMAT:
        raise StateError(f"{where}: unknown format {raw.get('format')!r}")
    missing = set(keys) - set(raw)
    extra = set(raw) - set(keys) - ({"format"} if top else set())
    if missing or extra:
        raise StateError(f"{where}: missing {sorted(missing)} / unknown {sorted(extra)} keys")
    out: dict[str, Any] = {}
    for name, types in keys.items():
        value = raw[name]
        # bool is an int in Python; never accept one where a number is meant, or vice versa
        if isinstance(value, bool) and bool not in types:
            raise StateError(f"{where}.{name}: unexpected boolean")
        if not isinstance(value, types):
            raise StateError(f"{where}.{name}: unexpected {type(value).__name__}")
        if isinstance(value, float) and int in types and float not in types:
            raise StateError(f"{where}.{name}: not an integer")
        out[name] = value
    return out


def _sha(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise StateError(f"{where}: not a lowercase hex sha256")
    return value


def _unhex(value: str | None, where: str) -> bytes | None:
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise StateError(f"{where}: not hex") from None


NUM: Final = (int, float)
OPT_NUM: Final = (int, float, type(None))
OPT_STR: Final = (str, type(None))
OPT_INT: Final = (int, type(None))


def dump(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps({"format": FORMAT, **obj}, sort_keys=True, indent=1) + "\n").encode()


def load(path: Path, limit: int = MAX_RECORD_BYTES) -> Any | None:
    """The parsed JSON at ``path``, None if it does not exist; ``StateError`` if unreadable."""
    try:
        data = read_limited(path, limit)
    except FileNotFoundError:
        return None
    except FileTooLargeError as exc:
        raise StateError(str(exc)) from None
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror or exc}") from None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateError(f"{path}: not JSON ({exc})") from None


# -- records ----------------------------------------------------------------------------------


class SlotManifest(NamedTuple):
    """``slots/<sha>/SLOT.json``: written last, before the slot is renamed into place."""

    artifact: str
    version: str
    #: The release counter the slot was installed for (0: bootstrap, no release record).
    counter: int
    unpacked: float

    def to_bytes(self) -> bytes:
        return dump(self._asdict())

    @classmethod
    def parse(cls, raw: Any, where: str = "SLOT.json") -> SlotManifest:
        v = _obj(
            raw, where, {"artifact": (str,), "version": (str,), "counter": (int,), "unpacked": NUM}
        )
        _sha(v["artifact"], f"{where}.artifact")
        if v["counter"] < 0:
            raise StateError(f"{where}.counter: negative")
        return cls(**v)


class SlotFiles(NamedTuple):
    """``slots/<sha>/FILES.json``: what every file of the slot must be, from the artifact.

    Written at stage time from the verified artifact (not from what landed on disk), so a
    file damaged later -- or even while unpacking -- is found before the slot is started.
    It repeats ``version`` and ``counter``, so a damaged ``SLOT.json`` can be rewritten.
    """

    artifact: str
    version: str
    counter: int
    #: ``{path inside the slot: sha256 hex}``.
    files: Mapping[str, str]

    def to_bytes(self) -> bytes:
        return dump({**self._asdict(), "files": dict(sorted(self.files.items()))})

    @classmethod
    def parse(cls, raw: Any, where: str = FILES_FILE) -> SlotFiles:
        v = _obj(
            raw,
            where,
            {"artifact": (str,), "version": (str,), "counter": (int,), "files": (dict,)},
        )
        _sha(v["artifact"], f"{where}.artifact")
        files: dict[str, Any] = v["files"]
        if not files or len(files) > SELF_CONTAINED_LIMITS.max_entries:
            raise StateError(f"{where}.files: empty or too many entries")
        for name, digest in files.items():
            parts = name.split("/")
            if parts[0] not in SLOT_TOPS or any(part in ("", ".", "..") for part in parts):
                raise StateError(f"{where}.files: {name[:80]!r} is not a path inside the slot")
            _sha(digest, f"{where}.files[{name[:80]!r}]")
        return cls(**v)


def file_hashes(members: Mapping[str, tuple[bytes, int]]) -> dict[str, str]:
    """``artifact_files`` output -> ``{path: sha256}``."""
    return {name: sha256_hex(data) for name, (data, _mode) in members.items()}


def read_version_of(members: Mapping[str, tuple[bytes, int]]) -> str | None:
    """The ``__version__`` in an artifact's ``p2pupdate/_version.py`` (None if absent)."""
    entry = members.get(VERSION_FILE)
    return None if entry is None else version_in(entry[0])


def _hash_file(path: Path) -> str | None:
    try:
        return sha256_hex(read_limited(path, SELF_CONTAINED_LIMITS.max_file_bytes))
    except OSError:
        return None


def purge_bytecode(slot: Path) -> int:
    """Drop the slot's ``__pycache__`` directories (Python rebuilds them at the next start):
    a cache written from a damaged source, or damaged itself -- which no manifest covers,
    as Python writes it -- must not outlive a repair or a crash.  The number removed."""
    caches = list(slot.rglob("__pycache__"))
    for cache in caches:
        shutil.rmtree(cache, ignore_errors=True)
    return len(caches)


class Pending(NamedTuple):
    """``pending``: a swap in flight, from the daemon's swap until promotion or rollback.

    The daemon creates it (``attempts`` 0) right before exiting with the swap code.  The
    launcher then owns it: before each start of the new slot it raises ``attempts`` and
    sets a fresh ``deadline`` (wall clock); a crash records ``last_failure``; a decision to
    roll back is written here first (``outcome``) and carried out idempotently, so a kill
    between the two steps cannot lose or repeat it.
    """

    id: str
    artifact: str
    previous: str
    counter: int
    #: The departure token (lease) the swap was granted with; ends on the rejoin report.
    token: bytes
    created: float
    attempts: int = 0
    max_attempts: int | None = None
    window: float | None = None
    deadline: float | None = None
    last_failure: str | None = None
    outcome: str | None = None
    reason: str | None = None
    #: Whether the rollback (if any) sticky-denies the artifact (not when its slot vanished).
    deny: bool = True

    def to_bytes(self) -> bytes:
        d = self._asdict()
        d["token"] = self.token.hex()
        return dump(d)

    @classmethod
    def parse(cls, raw: Any, where: str = "pending") -> Pending:
        v = _obj(
            raw,
            where,
            {
                "id": (str,),
                "artifact": (str,),
                "previous": (str,),
                "counter": (int,),
                "token": (str,),
                "created": NUM,
                "attempts": (int,),
                "max_attempts": OPT_INT,
                "window": OPT_NUM,
                "deadline": OPT_NUM,
                "last_failure": OPT_STR,
                "outcome": OPT_STR,
                "reason": OPT_STR,
                "deny": (bool,),
            },
        )
        if not _ID.match(v["id"]):
            raise StateError(f"{where}.id: not 32 hex digits")
        _sha(v["artifact"], f"{where}.artifact")
        _sha(v["previous"], f"{where}.previous")
        if v["counter"] < 1 or v["attempts"] < 0:
            raise StateError(f"{where}: counter must be >= 1 and attempts >= 0")
        if v["outcome"] not in (None, OUTCOME_ROLLBACK):
            raise StateError(f"{where}.outcome: {v['outcome']!r}")
        v["token"] = _unhex(v["token"], f"{where}.token")
        return cls(**v)

    def with_(self, **changes: Any) -> Pending:
        return self._replace(**changes)


class Verdict(NamedTuple):
    """``verdict``: the daemon on probation answers the launcher (the confirmation channel).

    ``id`` is the pending record's id, so a verdict left over from an earlier swap of the
    same artifact is never mistaken for this one.
    """

    id: str
    artifact: str
    verdict: str
    reason: str
    time: float
    pid: int

    def to_bytes(self) -> bytes:
        return dump(self._asdict())

    @classmethod
    def parse(cls, raw: Any, where: str = "verdict") -> Verdict:
        v = _obj(
            raw,
            where,
            {
                "id": (str,),
                "artifact": (str,),
                "verdict": (str,),
                "reason": (str,),
                "time": NUM,
                "pid": (int,),
            },
        )
        _sha(v["artifact"], f"{where}.artifact")
        if v["verdict"] not in VERDICTS:
            raise StateError(f"{where}.verdict: {v['verdict']!r}")
        return cls(**v)

    def answers(self, pending: Pending) -> bool:
        return self.id == pending.id and self.artifact == pending.artifact


class Deny(NamedTuple):
    """A sticky deny: ``artifact`` failed probation here; lifted by a higher counter."""

    artifact: str
    counter: int
    reason: str
    time: float


class RollbackEntry(NamedTuple):
    """One rollback, as logged; ``reported`` is when the daemon reported it (or None)."""

    id: str
    artifact: str
    counter: int
    previous: str
    reason: str
    token: bytes | None
    time: float
    reported: float | None = None

    def to_obj(self) -> dict[str, Any]:
        d = self._asdict()
        d["token"] = None if self.token is None else self.token.hex()
        return d


def _parse_list(raw: Any, where: str, key: str, limit: int) -> list[Any]:
    v = _obj(raw, where, {key: (list,)})
    items: list[Any] = v[key]
    if len(items) > limit:
        raise StateError(f"{where}: more than {limit} entries")
    return items


def _parse_deny(raw: Any, where: str) -> Deny:
    v = _obj(
        raw,
        where,
        {"artifact": (str,), "counter": (int,), "reason": (str,), "time": NUM},
        top=False,
    )
    _sha(v["artifact"], f"{where}.artifact")
    return Deny(**v)


def _parse_rollback(raw: Any, where: str) -> RollbackEntry:
    v = _obj(
        raw,
        where,
        {
            "id": (str,),
            "artifact": (str,),
            "counter": (int,),
            "previous": (str,),
            "reason": (str,),
            "token": OPT_STR,
            "time": NUM,
            "reported": OPT_NUM,
        },
        top=False,
    )
    _sha(v["artifact"], f"{where}.artifact")
    _sha(v["previous"], f"{where}.previous")
    v["token"] = _unhex(v["token"], f"{where}.token")
    return RollbackEntry(**v)


# -- the directory ----------------------------------------------------------------------------


class StateDir:
    """Paths and crash-safe operations on one node's state directory."""

    def __init__(self, root: Path, limits: UnpackLimits = SELF_CONTAINED_LIMITS) -> None:
        self.root = root
        self.limits = limits

    def __repr__(self) -> str:
        return f"StateDir(root={self.root!r}, limits={self.limits!r})"

    # paths
    @property
    def slots(self) -> Path:
        return self.root / "slots"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def checkpoint(self) -> Path:
        return self.work / "checkpoint"

    @property
    def trust(self) -> Path:
        return self.root / "trust"

    @property
    def pending_path(self) -> Path:
        return self.root / "pending"

    @property
    def verdict_path(self) -> Path:
        return self.root / "verdict"

    @property
    def denied_path(self) -> Path:
        return self.root / "denied"

    @property
    def rollbacks_path(self) -> Path:
        return self.root / "rollbacks"

    @property
    def status_path(self) -> Path:
        return self.root / "status"

    @property
    def lock_path(self) -> Path:
        return self.root / "launcher.lock"

    def slot_dir(self, artifact: str) -> Path:
        return self.slots / _sha(artifact, "slot")

    def store_path(self, artifact: str) -> Path:
        return self.store / f"{_sha(artifact, 'artifact')}.tar.gz"

    def ensure(self) -> None:
        """Create the directories (idempotent), durably."""
        for d in (self.root, self.slots, self.store, self.work):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                fsync_dir(d.parent)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``launcher.lock`` (one launcher per state dir); ``StateError`` if taken."""
        self.ensure()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StateError(f"{self.root}: another launcher is running here") from None
            yield
        finally:
            os.close(fd)

    def clean_temp(self) -> list[str]:
        """Remove what a crash can leave half-done: temp files, half-unpacked slots."""
        removed: list[str] = []
        for d in (self.root, self.store, self.work, self.trust):
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.name.startswith(".") and p.name.endswith(".tmp") and not p.is_dir():
                    p.unlink(missing_ok=True)
                    removed.append(str(p.relative_to(self.root)))
        if self.slots.is_dir():
            for p in self.slots.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(str(p.relative_to(self.root)))
        for d in (self.root, self.store, self.work, self.trust, self.slots):
            if removed and d.is_dir():
                fsync_dir(d)
        return removed

    # links
    def read_link(self, name: str) -> str | None:
        """The sha256 ``current`` / ``previous`` points at, or None if the link is absent."""
        assert name in LINK_NAMES
        try:
            target = os.readlink(self.root / name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{name}: not a symlink ({exc.strerror or exc})") from None
        prefix = "slots/"
        if not target.startswith(prefix) or not _HEX64.match(target[len(prefix) :]):
            raise StateError(f"{name} -> {target!r}: not slots/<sha256>")
        return target[len(prefix) :]

    def set_link(self, name: str, artifact: str) -> None:
        """Point ``name`` at ``slots/<artifact>`` atomically (a reader sees old or new)."""
        assert name in LINK_NAMES
        target = f"slots/{_sha(artifact, name)}"
        if self._readlink_raw(name) == target:
            return
        tmp = self.root / f".{name}.{os.urandom(6).hex()}.tmp"
        os.symlink(target, tmp)
        try:
            os.replace(tmp, self.root / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.root)

    def remove_link(self, name: str) -> None:
        assert name in LINK_NAMES
        self._remove(self.root / name)

    def _readlink_raw(self, name: str) -> str | None:
        try:
            return os.readlink(self.root / name)
        except OSError:
            return None

    def _remove(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)

    # slots
    def slot_manifest(self, artifact: str) -> SlotManifest | None:
        """The manifest of a complete slot, or None when the slot is absent or unusable."""
        d = self.slot_dir(artifact)
        try:
            raw = load(d / SLOT_FILE)
            if raw is None:
                return None
            m = SlotManifest.parse(raw, f"slots/{artifact[:16]}.../{SLOT_FILE}")
        except StateError:
            return None
        if m.artifact != artifact or not (d / "p2pupdate" / "__init__.py").is_file():
            return None
        return m

    def list_slots(self) -> list[str]:
        if not self.slots.is_dir():
            return []
        return sorted(p.name for p in self.slots.iterdir() if _HEX64.match(p.name))

    def stage_slot(
        self,
        data: bytes,
        artifact: str,
        *,
        counter: int,
        on_entry: Callable[[int], None] | None = None,
    ) -> SlotManifest:
        """Verify ``data`` against ``artifact`` and make ``slots/<artifact>/`` from it.

        Idempotent: a complete slot already there is kept.  Raises ``ArtifactError`` for a
        bad artifact (nothing is left behind) and ``OSError`` for a local failure.
        """
        check_artifact(data, artifact)
        self.ensure()
        existing = self.slot_manifest(artifact)
        if existing is not None:
            return existing
        final = self.slot_dir(artifact)
        if final.exists():  # an unusable directory under the name (never made by us)
            self.remove_slot(artifact)
        tmp = self.slots / f".tmp-{artifact[:16]}-{os.urandom(4).hex()}"
        tmp.mkdir(mode=0o755)
        try:
            unpack_into(data, tmp, limits=self.limits, allowed_top=SLOT_TOPS, on_entry=on_entry)
            manifest = SlotManifest(
                artifact=artifact,
                version=read_version(tmp / "p2pupdate") or "unknown",
                counter=counter,
                unpacked=time.time(),
            )
            files = SlotFiles(
                artifact=artifact,
                version=manifest.version,
                counter=counter,
                files=artifact_hashes(data, limits=self.limits, allowed_top=SLOT_TOPS),
            )
            atomic_write(tmp / FILES_FILE, files.to_bytes())
            atomic_write(tmp / SLOT_FILE, manifest.to_bytes())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.slots)
        return manifest

    def remove_slot(self, artifact: str) -> None:
        """Delete a slot: renamed away first (one atomic step), then removed at leisure."""
        d = self.slot_dir(artifact)
        if not d.exists():
            return
        gone = self.slots / f".tmp-gc-{artifact[:16]}-{os.urandom(4).hex()}"
        os.rename(d, gone)
        fsync_dir(self.slots)
        shutil.rmtree(gone, ignore_errors=True)

    def verify_slot(self, artifact: str, log: Callable[[str], None]) -> bool:
        """Check the slot's files against ``FILES.json`` and repair what can be repaired;
        False when the slot must not be started (a damaged file and no verified artifact to
        restore it from, or nothing left to say what the slot is).

        * a damaged file: moved aside as ``NAME.bad-N``, rewritten from the verified
          artifact in ``store/`` (one log line);
        * a damaged ``FILES.json``: moved aside, rebuilt from the stored artifact;
        * no ``FILES.json`` (a slot staged by a version before it existed): built from the
          stored artifact if there is one, else recorded from the files as they are;
        * a damaged ``SLOT.json``: moved aside, rewritten from ``FILES.json``.
        """
        d = self.slot_dir(artifact)
        if not d.is_dir():
            return False
        name = f"slot {artifact[:12]}..."
        members: dict[str, tuple[bytes, int]] | None = None
        looked = False
        notes: list[str] = []  # said with the outcome, in its one line

        def say(message: str) -> None:
            log("; ".join([message, *notes]))
            notes.clear()

        def stored() -> dict[str, tuple[bytes, int]] | None:
            nonlocal members, looked
            if not looked:
                looked = True
                path = self.store_path(artifact)
                try:
                    members = artifact_files(
                        read_artifact(path, artifact, self.limits),
                        limits=self.limits,
                        allowed_top=SLOT_TOPS,
                    )
                except FileNotFoundError:
                    pass
                except (ArtifactError, OSError) as exc:
                    aside = quarantine(path)
                    notes.append(f"its stored artifact is unusable ({exc}): moved to {aside.name}")
            return members

        manifest: SlotManifest | None = None
        slot_error = ""
        try:
            raw = load(d / SLOT_FILE)
            if raw is None:
                slot_error = "missing"
            else:
                manifest = SlotManifest.parse(raw, f"{name}/{SLOT_FILE}")
                if manifest.artifact != artifact:
                    manifest, slot_error = None, "names another artifact"
        except StateError as exc:
            slot_error = str(exc)
        record: SlotFiles | None = None
        files_path = d / FILES_FILE
        try:
            raw = load(files_path, MAX_FILES_BYTES)
            if raw is not None:
                record = SlotFiles.parse(raw, f"{name}/{FILES_FILE}")
                if record.artifact != artifact:
                    raise StateError(f"{name}/{FILES_FILE}: names another artifact")
            damaged_record = ""
        except StateError as exc:
            aside = quarantine(files_path)
            damaged_record = f"{FILES_FILE} unusable ({exc}): moved to {aside.name}"
        if record is None:
            found = stored()
            if found is not None:
                version = read_version_of(found) or (manifest.version if manifest else "unknown")
                counter = manifest.counter if manifest is not None else 0
                record = SlotFiles(
                    artifact=artifact, version=version, counter=counter, files=file_hashes(found)
                )
                how = "from the verified artifact in the store"
            elif manifest is not None and not damaged_record:
                hashes = {}
                for path in sorted(d.rglob("*")):
                    rel = path.relative_to(d).as_posix()
                    if (
                        path.is_file()
                        and rel.split("/")[0] in SLOT_TOPS
                        and "__pycache__" not in rel
                        and ".bad-" not in path.name
                        and (digest := _hash_file(path)) is not None
                    ):
                        hashes[rel] = digest
                record = SlotFiles(
                    artifact=artifact,
                    version=manifest.version,
                    counter=manifest.counter,
                    files=hashes,
                )
                how = "from its files as they are (no verified artifact to check them against)"
            else:
                say(
                    f"{name}: {damaged_record or 'no ' + FILES_FILE}; nothing else says what its "
                    "files must be: not started"
                )
                return False
            atomic_write(files_path, record.to_bytes())
            if damaged_record:
                say(f"{name}: {damaged_record}, rebuilt {how}")
            else:
                say(f"{name}: wrote its file manifest {how}")
        if manifest is None:
            manifest = SlotManifest(
                artifact=artifact,
                version=record.version,
                counter=record.counter,
                unpacked=time.time(),
            )
            slot_path = d / SLOT_FILE
            moved = ""
            if slot_path.exists() or slot_path.is_symlink():
                moved = f": moved to {quarantine(slot_path).name}"
            atomic_write(slot_path, manifest.to_bytes())
            say(f"{name}: {SLOT_FILE} unusable ({slot_error}){moved}, rewritten from {FILES_FILE}")
        bad = [rel for rel, digest in record.files.items() if _hash_file(d / rel) != digest]
        if not bad:
            return True
        found = stored()
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        if found is None or any(rel not in found for rel in bad):
            say(f"{name}: {listed} damaged, and no verified artifact in the store to restore from")
            return False
        asides = []
        for rel in bad:
            path = d / rel
            if path.exists() or path.is_symlink():
                asides.append(quarantine(path).name)
            path.parent.mkdir(parents=True, exist_ok=True)
            data, mode = found[rel]
            atomic_write(path, data, mode=mode)
        purge_bytecode(d)
        kept = f" (moved aside as {', '.join(asides[:3])})" if asides else ""
        say(f"{name}: {listed} damaged{kept}; restored from the verified artifact in the store")
        return True

    # pending
    def read_pending(self) -> Pending | None:
        raw = load(self.pending_path)
        return None if raw is None else Pending.parse(raw)

    def write_pending(self, pending: Pending) -> None:
        atomic_write(self.pending_path, pending.to_bytes())

    def remove_pending(self) -> None:
        self._remove(self.pending_path)

    # verdict
    def read_verdict(self) -> Verdict | None:
        raw = load(self.verdict_path)
        return None if raw is None else Verdict.parse(raw)

    def write_verdict(self, verdict: Verdict) -> None:
        atomic_write(self.verdict_path, verdict.to_bytes())

    def remove_verdict(self) -> None:
        self._remove(self.verdict_path)

    # sticky denies
    def read_denied(self) -> list[Deny]:
        raw = load(self.denied_path)
        if raw is None:
            return []
        items = _parse_list(raw, "denied", "denied", MAX_DENIES)
        return [_parse_deny(item, f"denied[{i}]") for i, item in enumerate(items)]

    def write_denied(self, denies: list[Deny]) -> None:
        atomic_write(
            self.denied_path, dump({"denied": [d._asdict() for d in denies[-MAX_DENIES:]]})
        )

    def add_deny(self, deny: Deny) -> bool:
        """Sticky-deny ``deny.artifact`` (idempotent); True if it was not denied yet."""
        denies = self.read_denied()
        if any(d.artifact == deny.artifact for d in denies):
            return False
        self.write_denied([*denies, deny])
        return True

    def lift_deny(self, artifact: str) -> bool:
        denies = self.read_denied()
        kept = [d for d in denies if d.artifact != artifact]
        if len(kept) == len(denies):
            return False
        self.write_denied(kept)
        return True

    # rollback log
    def read_rollbacks(self) -> list[RollbackEntry]:
        raw = load(self.rollbacks_path)
        if raw is None:
            return []
        items = _parse_list(raw, "rollbacks", "rollbacks", MAX_ROLLBACK_RECORDS)
        return [_parse_rollback(item, f"rollbacks[{i}]") for i, item in enumerate(items)]

    def write_rollbacks(self, entries: list[RollbackEntry]) -> None:
        kept = entries[-MAX_ROLLBACK_RECORDS:]
        atomic_write(self.rollbacks_path, dump({"rollbacks": [e.to_obj() for e in kept]}))

    def add_rollback(self, entry: RollbackEntry) -> bool:
        """Log a rollback (idempotent by ``entry.id``); True if it was not logged yet."""
        entries = self.read_rollbacks()
        if any(e.id == entry.id for e in entries):
            return False
        self.write_rollbacks([*entries, entry])
        return True

    def mark_reported(self, ids: set[str], when: float) -> None:
        entries = self.read_rollbacks()
        changed = [
            e._replace(reported=when) if e.id in ids and e.reported is None else e for e in entries
        ]
        if changed != entries:
            self.write_rollbacks(changed)

    # status (written by the daemon; free-form, for operators and tests)
    def write_status(self, status: Mapping[str, Any]) -> None:
        atomic_write(self.status_path, dump(status))

    def read_status(self) -> dict[str, Any] | None:
        raw = load(self.status_path)
        if raw is None:
            return None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise StateError("status: not a status record")
        return raw

    def quarantine(self, path: Path, why: str) -> Path:
        """Move an unusable file aside as ``NAME.bad-N`` (kept for a human) so it stops
        blocking the node; ``why`` is for the caller's log line."""
        return quarantine(path)
