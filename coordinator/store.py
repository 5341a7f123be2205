"""A replica's durable state: one SQLite database in WAL mode.

What is kept, and what is deliberately not:

* ``documents``: every document published here, as the exact signed bytes, so a restart
  serves the same allowlist, scope and release records it verified (``kv['trust']`` holds
  the ``TrustStore`` with its floors, so a rollback stays refused across restarts).
* ``nodes``: the node registry -- each node's pool, version, artifact, update state and
  why its own gates hold it back.  **No load and no capacity per node**: the coordinator
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

Writes on the ask path are batched (``flush`` runs every ~100 ms): the audit log may lose
the last fraction of a second when the process is killed mid-batch, the grant horizon
never.  ``synchronous=NORMAL`` in WAL mode survives a process kill; the horizon alone is
written with ``synchronous=FULL`` (once per TTL), so it survives a power cut as well.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    floor INTEGER,
    artifact TEXT,
    digest TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL,
    published REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    pool TEXT NOT NULL,
    version TEXT NOT NULL,
    artifact TEXT NOT NULL,
    state TEXT NOT NULL,
    held TEXT,
    seen REAL NOT NULL
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


@dataclass(frozen=True, kw_only=True)
class BreakerRow:
    artifact: str
    paused: bool
    reason: str
    since: float
    scope_serial: int


class Store:
    """The database of one replica.  Used from the trio thread only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        self._audit: list[AuditRow] = []
        self._nodes: dict[str, NodeRow] = {}

    def close(self) -> None:
        self.flush()
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- kv ---------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, key: str, value: bytes, db: sqlite3.Connection | None = None) -> None:
        (db or self.db).execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def grant_horizon(self) -> float | None:
        """None when this database never recorded one (new, or its state was lost)."""
        raw = self.get("grant_horizon")
        return float(raw.decode()) if raw else None

    def set_grant_horizon(self, wall: float) -> None:
        """Committed at once, fsynced: the one write on the ask path that is not batched."""
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.put("grant_horizon", repr(wall).encode())
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

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
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO documents (type, floor, artifact, digest, data, published) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (type_, floor, artifact, digest, data, time.time()),
            )
            self.put("trust", trust, db)

    def documents(self, type_: str) -> list[bytes]:
        """Documents of a kind, oldest first."""
        rows = self.db.execute("SELECT data FROM documents WHERE type = ? ORDER BY id", (type_,))
        return [bytes(r[0]) for r in rows]

    # -- registry -----------------------------------------------------------------------------

    def load_nodes(self) -> list[NodeRow]:
        rows = self.db.execute(
            "SELECT node, pool, version, artifact, state, held, seen FROM nodes"
        ).fetchall()
        return [
            NodeRow(
                node=r[0], pool=r[1], version=r[2], artifact=r[3], state=r[4], held=r[5], seen=r[6]
            )
            for r in rows
        ]

    def save_node(self, row: NodeRow) -> None:
        """Batched: written at the next ``flush``."""
        self._nodes[row.node] = row

    # -- breaker ------------------------------------------------------------------------------

    def add_failure(self, artifact: str, node: str, reason: str, when: float) -> None:
        self.db.execute(
            "INSERT INTO failures (artifact, node, reason, time) VALUES (?, ?, ?, ?)",
            (artifact, node, reason, when),
        )

    def failures_since(self, artifact: str, since: float) -> dict[str, str]:
        rows = self.db.execute(
            "SELECT node, reason FROM failures WHERE artifact = ? AND time >= ? ORDER BY time",
            (artifact, since),
        )
        return {r[0]: r[1] for r in rows}

    def save_breaker(self, row: BreakerRow) -> None:
        self.db.execute(
            "INSERT INTO breaker (artifact, paused, reason, since, scope_serial) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(artifact) DO UPDATE SET paused = excluded.paused, "
            "reason = excluded.reason, since = excluded.since, scope_serial = excluded.scope_serial",
            (row.artifact, int(row.paused), row.reason, row.since, row.scope_serial),
        )

    def load_breakers(self) -> list[BreakerRow]:
        rows = self.db.execute("SELECT artifact, paused, reason, since, scope_serial FROM breaker")
        return [
            BreakerRow(artifact=r[0], paused=bool(r[1]), reason=r[2], since=r[3], scope_serial=r[4])
            for r in rows
        ]

    # -- audit --------------------------------------------------------------------------------

    def audit(self, row: AuditRow) -> None:
        """Batched: written at the next ``flush``."""
        self._audit.append(row)

    def granted_nodes(self, artifact: str, since: float) -> set[str]:
        rows = self.db.execute(
            "SELECT DISTINCT node FROM audit WHERE artifact = ? AND event IN ('grant', 'force') "
            "AND time >= ?",
            (artifact, since),
        )
        return {r[0] for r in rows}

    def refusal_counts(self) -> list[tuple[str, str, str, int]]:
        rows = self.db.execute(
            "SELECT artifact, gate, reason, COUNT(*) FROM audit WHERE event = 'refuse' "
            "GROUP BY artifact, gate, reason"
        )
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def return_counts(self) -> list[tuple[str, str, int]]:
        """Leases handed back unused, by artifact and the node's reason (all time)."""
        rows = self.db.execute(
            "SELECT artifact, reason, COUNT(*) FROM audit WHERE event = 'return' "
            "GROUP BY artifact, reason"
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    def audit_rows(self, event: str | None = None) -> list[AuditRow]:
        self.flush()
        query = "SELECT time, event, node, pool, artifact, gate, reason, detail FROM audit"
        args: tuple[Any, ...] = ()
        if event is not None:
            query += " WHERE event = ?"
            args = (event,)
        rows = self.db.execute(query + " ORDER BY id", args)
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
        return len(self._audit) + len(self._nodes)

    def flush(self) -> None:
        """Write the batched audit rows and registry changes in one transaction."""
        if not self._audit and not self._nodes:
            return
        audit, self._audit = self._audit, []
        nodes, self._nodes = self._nodes, {}
        with self.transaction() as db:
            if audit:
                db.executemany(
                    "INSERT INTO audit (time, event, node, pool, artifact, gate, reason, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.values() for row in audit),
                )
            if nodes:
                db.executemany(
                    "INSERT INTO nodes (node, pool, version, artifact, state, held, seen) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(node) DO UPDATE SET "
                    "pool = excluded.pool, version = excluded.version, "
                    "artifact = excluded.artifact, state = excluded.state, "
                    "held = excluded.held, seen = excluded.seen",
                    _node_values(nodes.values()),
                )


def _node_values(rows: Iterable[NodeRow]) -> Iterator[tuple[Any, ...]]:
    for r in rows:
        yield (r.node, r.pool, r.version, r.artifact, r.state, r.held, r.seen)
