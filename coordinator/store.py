"""A replica's durable state: one SQLite database in WAL mode.

What is kept, and what is deliberately not:

* ``documents``: every document published here, as the exact signed bytes, so a restart
  serves the same allowlist, scope and release records it verified (``kv['trust']`` holds
  the ``TrustStore`` with its floors, so a rollback stays refused across restarts).
* ``nodes``: the node registry -- each node's pool, version, artifact, update state and
  why its own gates hold it back; and what admission needs of it (P10): when this
  replica first saw it (``first_seen``, set once, never moved: standing in an ``open``
  network), the subnet it was last seen from, and its member document's expiry.  **No load and no capacity per node**: the coordinator
  sees aggregates only (README "Capacity gate and departure tokens"), and those stay in memory.
* ``failures`` and ``breaker``: failed swaps per artifact and which artifacts are paused,
  so a pause survives a restart.
* ``audit``: every grant, refusal, force, pause and resume, one row each.
* ``kv['grant_horizon']``: the wall time until which a lease granted by this replica may
  still be alive.  A restarted replica waits until then before granting (it keeps no
  lease table), which is the "grants nothing for one TTL" rule made exact: a replica
  that granted nothing recently need not wait at all.  It is committed *before* the
  first grant that needs it is answered.  No record at all means "unknown" (a lost
  state directory looks like a new one), so the replica waits a full TTL unless the
  operator says it is new (``serve --first-start``).

Damage (``coordinator.statefiles`` has the rule for every file): a database that does
not open or fails ``PRAGMA integrity_check`` when opened, or a row that fails its check on
load (``StateDamaged``, raised by the reader), is quarantined (``Store.quarantine``) and
the replica starts empty; ``damage`` keeps what happened for the log and ``/status``.  A
query that meets a corrupt page while serving (SQLITE_CORRUPT / SQLITE_NOTADB) does the
same, then ``on_rebuilt`` writes back what the replica holds in memory and the query is
tried once more on the new database.  Other SQLite errors (disk full, I/O) are not damage:
they are ``StateUnwritable``, and the file stays.

Writes on the ask path are batched (``flush`` runs every ~100 ms): the audit log may lose
the last fraction of a second when the process is killed mid-batch, the grant horizon
never.  ``synchronous=NORMAL`` in WAL mode survives a process kill; the horizon alone is
written with ``synchronous=FULL`` (once per TTL), so it survives a power cut as well.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sqlite3
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from .errors import StateDamaged, StateUnwritable
from .statefiles import quarantine

T = TypeVar("T")

#: SQLite's primary result codes that mean "this file is damaged" (not "cannot write").
_DAMAGE_CODES: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_WAL_MAGIC: Final = (0x377F0682, 0x377F0683)
_COMPANIONS: Final = ("-wal", "-shm")

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    floor INTEGER,
    artifact TEXT,
    digest TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL,
    published REAL NOT NULL,
    sha TEXT
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    version TEXT NOT NULL,
    artifact TEXT NOT NULL,
    state TEXT NOT NULL,
    held TEXT,
    seen REAL NOT NULL,
    first_seen REAL,
    subnet TEXT,
    member_expires INTEGER
);
CREATE TABLE IF NOT EXISTS failures (
    artifact TEXT NOT NULL,
    node TEXT NOT NULL,
    reason TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS breaker (
    artifact TEXT PRIMARY KEY,
    paused INTEGER NOT NULL,
    reason TEXT NOT NULL,
    since REAL NOT NULL,
    scope_serial INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    event TEXT NOT NULL,
    node TEXT NOT NULL,
    pool TEXT NOT NULL,
    artifact TEXT NOT NULL,
    gate TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_artifact ON audit (artifact, event);
"""


@dataclass(frozen=True, kw_only=True)
class AuditRow:
    time: float
    event: str  # grant | force | refuse | pause | resume | return | rejoined | failed
    node: str
    pool: str
    artifact: str
    gate: str = ""
    reason: str = ""
    detail: str = ""

    def values(self) -> tuple[Any, ...]:
        return (
            self.time,
            self.event,
            self.node,
            self.pool,
            self.artifact,
            self.gate,
            self.reason,
            self.detail,
        )


@dataclass(frozen=True, kw_only=True)
class NodeRow:
    node: str
    pool: str
    version: str
    artifact: str
    state: str
    held: str | None
    seen: float
    #: When this replica first registered the node (wall): standing counts from here.
    first_seen: float
    #: The /24 or /48 of the address its session came from (None: unknown).
    subnet: str | None = None
    #: Its member document's expiry (enrolled networks; None: none).
    member_expires: int | None = None


@dataclass(frozen=True, kw_only=True)
class BreakerRow:
    artifact: str
    paused: bool
    reason: str
    since: float
    scope_serial: int


@dataclass(frozen=True, kw_only=True)
class Damage:
    """One quarantine of a state file (``statefiles``): what was found, where the copy
    went, what followed."""

    time: float
    reason: str
    moved_to: str
    #: For the database: ``started empty`` (found on open) or ``rebuilt from memory``
    #: (found while serving).
    then: str

    def message(self) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time))
        return f"state damaged ({self.reason}): moved to {self.moved_to} at {stamp}; {self.then}"

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "reason": self.reason,
            "moved_to": self.moved_to,
            "then": self.then,
            "message": self.message(),
        }


#: The audit table's size cap: a refusal row is kept only while it is among this many
#: newest audit rows (grants, forces, pauses, returns and failures are never dropped).
#: Refusals are already one row per node, reason and minute (``asks``); this bounds the
#: table when a flood of made-up node ids each earns its own row: ~350 bytes a row, so
#: ~35 MB at most.
MAX_REFUSAL_ROWS: Final = 100_000
_REFUSALS: Final = ("refuse", "refuse-repeated")
_DROP_OLD_REFUSALS: Final = (
    f"DELETE FROM audit WHERE event IN ({', '.join('?' * len(_REFUSALS))}) "
    "AND id <= (SELECT MAX(id) FROM audit) - ?"
)


class Store:
    """The database of one replica.  Used from the trio thread only.

    Opening never fails on a damaged file: it is quarantined and an empty database made
    (``damage`` says so).  ``log`` gets one line per quarantine."""

    def __init__(
        self,
        path: Path,
        *,
        wall: Callable[[], float] = time.time,
        log: Callable[[str], None] = lambda _m: None,
        max_refusal_rows: int = MAX_REFUSAL_ROWS,
    ) -> None:
        if max_refusal_rows < 1:
            raise ValueError("max_refusal_rows must be >= 1")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_refusal_rows = max_refusal_rows
        self.wall = wall
        self.log = log
        self.damage: list[Damage] = []
        #: The database was quarantined: what it held (the grant horizon) is unknown.
        self.emptied = False
        #: Set by ``serving``: write what the replica holds into a new, empty database.
        self.on_rebuilt: Callable[[], None] | None = None
        self._audit: list[AuditRow] = []
        self._nodes: dict[str, NodeRow] = {}
        #: Node rows to delete at the next flush (``forget_node``).
        self._forget: set[str] = set()
        self._rebuilding = False
        #: The grant horizon last read or written (a rebuilt database gets it back).
        self.last_horizon: float | None = None
        shm = path.with_name(path.name + "-shm")
        if shm.is_symlink() or (shm.exists() and not shm.is_file()):
            # never trusted (SQLite rebuilds the WAL index from the WAL): moved aside alone
            self.damaged(f"{shm.name} is not a regular file", quarantine(shm).name, "rebuilt")
        problem = _file_problem(path)
        if problem is None:
            try:
                self.db = self._connect()
                problem = _integrity_problem(self.db)
            except sqlite3.DatabaseError as exc:
                problem = str(exc)
            except OSError as exc:
                problem = exc.strerror or str(exc)
        if problem is not None:
            self._quarantine(problem, "started empty")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            columns = {r[1] for r in db.execute("PRAGMA table_info(documents)")}
            if "sha" not in columns:  # a database from before rows carried their sha256
                db.execute("ALTER TABLE documents ADD COLUMN sha TEXT")
            _migrate_nodes(db)
        except BaseException:
            db.close()
            raise
        return db

    def _quarantine(self, reason: str, then: str) -> None:
        with contextlib.suppress(Exception):
            self.db.close()
        try:
            moved = quarantine(self.path, companions=_COMPANIONS)
        except OSError as exc:
            raise StateUnwritable(
                f"{self.path.name} is damaged ({reason}) and cannot be moved aside: "
                f"{exc.strerror or exc}"
            ) from None
        damage = Damage(time=self.wall(), reason=reason, moved_to=moved.name, then=then)
        self.damage.append(damage)
        self.log(damage.message())
        self.emptied = True
        try:
            self.db = self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise StateUnwritable(f"{self.path.name}: cannot make a new one: {exc}") from None

    def serving(self, on_rebuilt: Callable[[], None]) -> None:
        """The replica has loaded everything: from now on damage met by a query is
        quarantined and ``on_rebuilt`` writes the replica's memory into the new database.
        Before this, damage is ``StateDamaged`` (the loader quarantines and starts empty)."""
        self.on_rebuilt = on_rebuilt

    def damaged(self, reason: str, moved_to: str, then: str) -> None:
        """Another state file was found damaged and quarantined: kept with the rest."""
        damage = Damage(time=self.wall(), reason=reason, moved_to=moved_to, then=then)
        self.damage.append(damage)
        self.log(damage.message())

    def quarantine(self, reason: str) -> None:
        """A row failed its check on load (``StateDamaged``): move the database aside and
        start empty.  The caller loads again from the empty one."""
        self._audit, self._nodes = [], {}
        self.last_horizon = None
        self._quarantine(reason, "started empty")

    def _do(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run one database operation; damage met while serving is quarantined, the
        memory written back (``on_rebuilt``) and the operation tried once more."""
        try:
            return fn(self.db)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise StateUnwritable(f"{self.path.name}: {what}: {exc}") from None
            on_rebuilt = self.on_rebuilt
            if self._rebuilding or on_rebuilt is None:
                raise StateDamaged(f"{self.path.name}: {what}: {exc}") from None
            reason = f"{what}: {exc}"
        except sqlite3.Error as exc:  # a closed connection (a failed rebuild), a misuse
            raise StateUnwritable(f"{self.path.name}: {what}: {exc}") from None
        self._quarantine(reason, "rebuilt from memory")
        self._rebuilding = True
        try:
            on_rebuilt()
            return fn(self.db)
        except sqlite3.DatabaseError as exc:
            raise StateDamaged(f"{self.path.name}: {what}: {exc}") from None
        finally:
            self._rebuilding = False

    def close(self) -> None:
        with contextlib.suppress(StateDamaged, StateUnwritable):
            self.flush()
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    @contextmanager
    def transaction(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        conn = db or self.db
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _checkpoint(self, db: sqlite3.Connection) -> None:
        """Move what was just committed from the WAL into the database file: a damaged or
        lost WAL then costs batched audit rows only, never a document or the horizon."""
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- kv ---------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        def run(db: sqlite3.Connection) -> bytes | None:
            row = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            if row is not None and not isinstance(row[0], bytes):
                raise StateDamaged(f"kv row {key!r} is not bytes")
            return None if row is None else bytes(row[0])

        return self._do(f"read kv {key}", run)

    def put(self, key: str, value: bytes, db: sqlite3.Connection | None = None) -> None:
        sql = (
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        )
        if db is not None:  # inside the caller's transaction (and its _do)
            db.execute(sql, (key, value))
            return
        self._do(f"write kv {key}", lambda d: d.execute(sql, (key, value)))

    def grant_horizon(self) -> float | None:
        """None when this database never recorded one (new, or its state was lost).

        ``StateDamaged`` when the record does not parse, is not finite, or fails its check:
        a replica that forgot what it granted must wait, never guess."""
        raw = self.get("grant_horizon")
        if raw is None:
            return None
        self.last_horizon = _parse_horizon(raw)
        return self.last_horizon

    def set_grant_horizon(self, wall: float) -> None:
        """Committed at once, fsynced and checkpointed: the one write on the ask path that
        is not batched."""

        def run(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA synchronous=FULL")
            try:
                self.put("grant_horizon", _format_horizon(wall), db)
                self._checkpoint(db)
            finally:
                db.execute("PRAGMA synchronous=NORMAL")

        self._do("write the grant horizon", run)
        self.last_horizon = wall

    # -- documents ----------------------------------------------------------------------------

    def add_document(
        self,
        *,
        type_: str,
        floor: int | None,
        artifact: str | None,
        digest: str,
        data: bytes,
        trust: bytes,
    ) -> None:
        """The document and the trust state it raised, in one transaction."""

        def run(db: sqlite3.Connection) -> None:
            with self.transaction(db):
                db.execute(
                    "INSERT OR IGNORE INTO documents "
                    "(type, floor, artifact, digest, data, published, sha) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        type_,
                        floor,
                        artifact,
                        digest,
                        data,
                        self.wall(),
                        hashlib.sha256(data).hexdigest(),
                    ),
                )
                self.put("trust", trust, db)
            self._checkpoint(db)

        self._do(f"store a {type_}", run)

    def has_document(self, digest: str) -> bool:
        """Whether a document with this payload digest was stored here."""
        return self._do(
            "read documents",
            lambda db: (
                db.execute("SELECT 1 FROM documents WHERE digest = ?", (digest,)).fetchone()
                is not None
            ),
        )

    def documents(self, type_: str) -> list[bytes]:
        """Documents of a kind, oldest first; ``StateDamaged`` if a row is not the bytes
        that were stored (its sha256)."""

        def run(db: sqlite3.Connection) -> list[bytes]:
            rows = db.execute(
                "SELECT id, data, sha FROM documents WHERE type = ? ORDER BY id", (type_,)
            ).fetchall()
            out = []
            for row_id, data, sha in rows:
                if not isinstance(data, bytes) or (
                    sha is not None and hashlib.sha256(data).hexdigest() != sha
                ):
                    raise StateDamaged(f"documents row {row_id} ({type_}) is not what was stored")
                out.append(bytes(data))
            return out

        return self._do("read documents", run)

    def document_types(self) -> set[str]:
        return self._do(
            "read documents",
            lambda db: {r[0] for r in db.execute("SELECT DISTINCT type FROM documents")},
        )

    # -- registry -----------------------------------------------------------------------------

    def load_nodes(self) -> list[NodeRow]:
        rows = self._do(
            "read nodes",
            lambda db: db.execute(
                "SELECT node, pool, version, artifact, state, held, seen, first_seen, subnet, "
                "member_expires FROM nodes"
            ).fetchall(),
        )
        out = []
        for r in rows:
            if not (
                all(isinstance(v, str) for v in r[:5])
                and (r[5] is None or isinstance(r[5], str))
                and _finite(r[6])
                and _finite(r[7])
                and (r[8] is None or isinstance(r[8], str))
                and (r[9] is None or (isinstance(r[9], int) and not isinstance(r[9], bool)))
            ):
                raise StateDamaged(f"nodes row {str(r[0])[:16]!r} has fields of the wrong type")
            out.append(
                NodeRow(
                    node=r[0],
                    pool=r[1],
                    version=r[2],
                    artifact=r[3],
                    state=r[4],
                    held=r[5],
                    seen=float(r[6]),
                    first_seen=float(r[7]),
                    subnet=r[8],
                    member_expires=r[9],
                )
            )
        return out

    def save_node(self, row: NodeRow) -> None:
        """Batched: written at the next ``flush``."""
        self._forget.discard(row.node)
        self._nodes[row.node] = row

    def forget_node(self, node: str) -> None:
        """Batched: the node's row is deleted at the next ``flush``."""
        self._nodes.pop(node, None)
        self._forget.add(node)

    # -- breaker ------------------------------------------------------------------------------

    def add_failure(self, artifact: str, node: str, reason: str, when: float) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO failures (artifact, node, reason, time) VALUES (?, ?, ?, ?)",
                (artifact, node, reason, when),
            )
            self._checkpoint(db)

        self._do("store a failure", run)

    def failures_since(self, artifact: str, since: float) -> dict[str, str]:
        rows = self._do(
            "read failures",
            lambda db: db.execute(
                "SELECT node, reason FROM failures WHERE artifact = ? AND time >= ? ORDER BY time",
                (artifact, since),
            ).fetchall(),
        )
        if not all(isinstance(n, str) and isinstance(r, str) for n, r in rows):
            raise StateDamaged(f"failures rows of {artifact[:16]}... have fields of the wrong type")
        return {r[0]: r[1] for r in rows}

    def save_breaker(self, row: BreakerRow) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO breaker (artifact, paused, reason, since, scope_serial) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(artifact) DO UPDATE SET "
                "paused = excluded.paused, reason = excluded.reason, since = excluded.since, "
                "scope_serial = excluded.scope_serial",
                (row.artifact, int(row.paused), row.reason, row.since, row.scope_serial),
            )
            self._checkpoint(db)

        self._do("store a breaker", run)

    def load_breakers(self) -> list[BreakerRow]:
        rows = self._do(
            "read breakers",
            lambda db: db.execute(
                "SELECT artifact, paused, reason, since, scope_serial FROM breaker"
            ).fetchall(),
        )
        out = []
        for r in rows:
            if not (
                isinstance(r[0], str)
                and r[1] in (0, 1)
                and isinstance(r[2], str)
                and _finite(r[3])
                and isinstance(r[4], int)
            ):
                raise StateDamaged(f"breaker row {str(r[0])[:16]!r} has fields of the wrong type")
            out.append(
                BreakerRow(
                    artifact=r[0],
                    paused=bool(r[1]),
                    reason=r[2],
                    since=float(r[3]),
                    scope_serial=r[4],
                )
            )
        return out

    # -- audit --------------------------------------------------------------------------------

    def audit(self, row: AuditRow) -> None:
        """Batched: written at the next ``flush``."""
        self._audit.append(row)

    def granted_nodes(self, artifact: str, since: float) -> set[str]:
        rows = self._do(
            "read audit",
            lambda db: db.execute(
                "SELECT DISTINCT node FROM audit WHERE artifact = ? "
                "AND event IN ('grant', 'force') AND time >= ?",
                (artifact, since),
            ).fetchall(),
        )
        return {r[0] for r in rows if isinstance(r[0], str)}

    def refusal_counts(self) -> list[tuple[str, str, str, int]]:
        rows = self._do(
            "read audit",
            lambda db: db.execute(
                "SELECT artifact, gate, reason, COUNT(*) FROM audit WHERE event = 'refuse' "
                "GROUP BY artifact, gate, reason"
            ).fetchall(),
        )
        if not all(isinstance(v, str) for r in rows for v in r[:3]):
            raise StateDamaged("audit rows have fields of the wrong type")
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def return_counts(self) -> list[tuple[str, str, int]]:
        """Leases handed back unused, by artifact and the node's reason (all time)."""
        rows = self._do(
            "read audit",
            lambda db: db.execute(
                "SELECT artifact, reason, COUNT(*) FROM audit WHERE event = 'return' "
                "GROUP BY artifact, reason"
            ).fetchall(),
        )
        if not all(isinstance(v, str) for r in rows for v in r[:2]):
            raise StateDamaged("audit rows have fields of the wrong type")
        return [(r[0], r[1], int(r[2])) for r in rows]

    def audit_rows(self, event: str | None = None) -> list[AuditRow]:
        self.flush()
        query = "SELECT time, event, node, pool, artifact, gate, reason, detail FROM audit"
        args: tuple[Any, ...] = ()
        if event is not None:
            query += " WHERE event = ?"
            args = (event,)
        rows = self._do(
            "read audit", lambda db: db.execute(query + " ORDER BY id", args).fetchall()
        )
        return [
            AuditRow(
                time=r[0],
                event=r[1],
                node=r[2],
                pool=r[3],
                artifact=r[4],
                gate=r[5],
                reason=r[6],
                detail=r[7],
            )
            for r in rows
        ]

    def pending(self) -> int:
        return len(self._audit) + len(self._nodes) + len(self._forget)

    def flush(self) -> None:
        """Write the batched audit rows and registry changes in one transaction.

        A batch that cannot be written (``StateUnwritable``: disk full) is kept for the
        next flush; one met by damage is written to the rebuilt database."""
        if not self._audit and not self._nodes and not self._forget:
            return
        audit, self._audit = self._audit, []
        nodes, self._nodes = self._nodes, {}
        forget, self._forget = self._forget, set()

        def run(db: sqlite3.Connection) -> None:
            with self.transaction(db):
                if audit:
                    db.executemany(
                        "INSERT INTO audit "
                        "(time, event, node, pool, artifact, gate, reason, detail) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (row.values() for row in audit),
                    )
                    if any(row.event in _REFUSALS for row in audit):
                        # the size cap: refusals only among the newest rows (ids only grow:
                        # at most ``max_refusal_rows`` rows have an id above this line)
                        db.execute(_DROP_OLD_REFUSALS, (*_REFUSALS, self.max_refusal_rows))
                if nodes:
                    db.executemany(
                        "INSERT INTO nodes (node, pool, version, artifact, state, held, seen, "
                        "first_seen, subnet, member_expires) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node) DO UPDATE SET "
                        "pool = excluded.pool, version = excluded.version, "
                        "artifact = excluded.artifact, state = excluded.state, "
                        "held = excluded.held, seen = excluded.seen, "
                        "subnet = excluded.subnet, member_expires = excluded.member_expires",
                        _node_values(nodes.values()),
                    )
                if forget:
                    db.executemany("DELETE FROM nodes WHERE node = ?", ((n,) for n in forget))

        try:
            self._do("write the audit and registry batch", run)
        except StateUnwritable:
            self._audit = audit + self._audit
            self._nodes = {**nodes, **self._nodes}
            self._forget = (forget - set(self._nodes)) | self._forget
            raise


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in _DAMAGE_CODES
    return type(exc) is sqlite3.DatabaseError


def _file_problem(path: Path) -> str | None:
    """What is wrong with the database's files before SQLite sees them (it would make a
    0-byte file an empty database, and drop a WAL whose header is not one, silently)."""
    for suffix in ("", "-wal"):
        p = path.with_name(path.name + suffix)
        if p.is_symlink() or (p.exists() and not p.is_file()):
            return f"{p.name} is not a regular file"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path.name}: {exc.strerror or exc}"
    if size == 0:
        return f"{path.name} is 0 bytes"
    wal = path.with_name(path.name + "-wal")
    try:
        with wal.open("rb") as f:
            header = f.read(32)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{wal.name}: {exc.strerror or exc}"
    if header and not _wal_header_ok(header):
        return f"{wal.name} does not start with a WAL header"
    return None


def _wal_header_ok(header: bytes) -> bool:
    """SQLite's WAL header: magic, format 3007000, and its checksum over the first 24 bytes."""
    if len(header) < 32:
        return False
    magic, version = struct.unpack(">II", header[:8])
    if magic not in _WAL_MAGIC or version != 3007000:
        return False
    order = ">" if magic & 1 else "<"
    s0 = s1 = 0
    words = struct.unpack(f"{order}6I", header[:24])
    for i in range(0, 6, 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return (s0, s1) == struct.unpack(">II", header[24:32])


def _integrity_problem(db: sqlite3.Connection) -> str | None:
    rows = [str(r[0]) for r in db.execute("PRAGMA integrity_check(5)").fetchall()]
    if rows == ["ok"]:
        return None
    return "integrity check: " + "; ".join(rows)[:300]


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _format_horizon(wall: float) -> bytes:
    text = repr(float(wall))
    return f"{text} {hashlib.sha256(text.encode()).hexdigest()[:16]}".encode()


def _parse_horizon(raw: bytes) -> float:
    try:
        parts = raw.decode("ascii").split(" ")
        value = float(parts[0])
    except (UnicodeDecodeError, ValueError):
        raise StateDamaged("kv grant_horizon does not parse") from None
    if len(parts) == 2:
        if hashlib.sha256(parts[0].encode()).hexdigest()[:16] != parts[1]:
            raise StateDamaged("kv grant_horizon fails its check")
    elif len(parts) != 1:  # one part: written before the horizon carried a check
        raise StateDamaged("kv grant_horizon does not parse")
    if not math.isfinite(value):
        raise StateDamaged("kv grant_horizon is not a finite time")
    return value


def _node_values(rows: Iterable[NodeRow]) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        yield (
            r.node,
            r.pool,
            r.version,
            r.artifact,
            r.state,
            r.held,
            r.seen,
            r.first_seen,
            r.subnet,
            r.member_expires,
        )


#: Columns the ``nodes`` table gained after its first release (P10 admission), with their
#: types: ``_migrate_nodes`` adds those an older database lacks.
_NODE_COLUMNS: Final = (
    ("first_seen", "REAL"),
    ("subnet", "TEXT"),
    ("member_expires", "INTEGER"),
)


def _migrate_nodes(db: sqlite3.Connection) -> None:
    """Bring a ``nodes`` table from before admission up to date (as ``documents.sha`` is).

    Its rows' ``first_seen`` is unknown: they get their ``seen``, a time the replica did
    see them, and no later than their real first sight -- so an old row earns standing no
    sooner than it would have (a made-up id registered before the upgrade is not counted
    at once when the network document adds a standing time)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(nodes)")}
    for name, kind in _NODE_COLUMNS:
        if name not in columns:
            db.execute(f"ALTER TABLE nodes ADD COLUMN {name} {kind}")
    if "first_seen" not in columns:
        db.execute("UPDATE nodes SET first_seen = seen WHERE first_seen IS NULL")
