"""Every file a replica keeps, and what it does when one is damaged: one table.

A replica is started by a supervisor and nobody looks at it until something is wrong, so
a damaged file must neither keep it from starting (a crash loop) nor be papered over (a
replica that silently lost its documents serves an old scope and nobody knows).  The rule
for each file is written once, in ``STATE_FILES``; the tests are parametrized over it.

What "quarantine" means: the damaged file is renamed ``NAME.bad-N`` (``N`` the first
number not taken; the database keeps its ``-wal`` and ``-shm`` beside it as
``NAME.bad-N-wal`` / ``-shm``, so the copy still opens in ``sqlite3`` for a post-mortem),
the replica starts with an empty one, says so in one log line and in ``/status``
("state damaged: ..."), and fetches the documents again from the other replicas
(``coordinator.catchup``).  An empty database has no grant horizon, so the replica grants
nothing for one lease TTL even with ``--first-start`` (README "Capacity gate and departure
tokens": it cannot know what it granted before).

Files of the *network* directory (the root, the replica's key) cannot be rebuilt by the
replica: a damaged one refuses the start in one line (exit 2) and names the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from p2pupdate.fsutil import quarantine  # the one home of NAME.bad-N, node and replica

__all__ = ["DB_FILE", "STATE_FILES", "StateFile", "quarantine"]

#: The replica's SQLite database, in its state dir.
DB_FILE: Final = "state.sqlite"


@dataclass(frozen=True, kw_only=True, slots=True)
class StateFile:
    """One file (or directory) a replica keeps, and its rule when it is damaged."""

    #: Path relative to its directory (``<sha256>`` stands for any artifact).
    name: str
    #: ``state`` (the replica's state dir) or ``network`` (the network directory).
    where: str
    what: str
    on_damage: str


STATE_FILES: Final[tuple[StateFile, ...]] = (
    StateFile(
        name=DB_FILE,
        where="state",
        what="SQLite database: documents, trust store, grant horizon, registry, breaker, audit",
        on_damage="does not open, fails PRAGMA integrity_check, is 0 bytes, is not a file, or "
        "a row fails its check on load (a documents row is verified as a signed document "
        "and against its sha256; kv trust and grant_horizon must parse; registry and breaker "
        "rows must have their types): quarantined with -wal and -shm; started empty; the "
        "documents fetched again from the other replicas.  Found while serving (a query "
        "raising SQLITE_CORRUPT / SQLITE_NOTADB): quarantined, and a new database is written "
        "from what the replica holds in memory (its grant horizon included)",
    ),
    StateFile(
        name=f"{DB_FILE}-wal",
        where="state",
        what="SQLite write-ahead log (only while serving, or after a kill)",
        on_damage="a header that is not a WAL's, or not a file: the database is quarantined "
        "with it (SQLite would drop the log silently).  Frames torn by a kill are dropped "
        "by SQLite as after any crash: only batched audit and registry rows can be in them, "
        "because documents, the trust store, breaker rows and the grant horizon are "
        "checkpointed into the database file when written",
    ),
    StateFile(
        name=f"{DB_FILE}-shm",
        where="state",
        what="SQLite WAL index (shared memory)",
        on_damage="never trusted: SQLite rebuilds it from the WAL when the replica opens the "
        "database; not a file: quarantined alone (the database is kept) and rebuilt",
    ),
    StateFile(
        name="lock",
        where="state",
        what="the state dir's lock (coordinator.statelock); its content is a pid for people",
        on_damage="content is never read back; not a file: quarantined and made again",
    ),
    StateFile(
        name="artifacts",
        where="state",
        what="directory of artifacts served as the origin",
        on_damage="not a directory: quarantined and made again (artifacts are uploaded again)",
    ),
    StateFile(
        name="artifacts/<sha256>",
        where="state",
        what="one artifact's bytes, named by their sha256",
        on_damage="checked against its release record's chunk hashes whenever served: a "
        "mismatch is quarantined and answered 404 (nodes take it from peers), with a warning",
    ),
    StateFile(
        name="root.msgpack",
        where="network",
        what="the network's root document (the operator's, from init)",
        on_damage="read when the database holds no trust store (a new or emptied replica): "
        "then refused at start in one line (exit 2): a replica cannot make a root",
    ),
    StateFile(
        name="network.msgpack",
        where="network",
        what="the network document: admission rule and per-subnet caps (root-signed; P10)",
        on_damage="absent: the network predates admission (open, no proof of work, no "
        "standing time, default caps).  Unreadable, malformed, not signed by the root role, "
        "expired, or of another network: refused at start in one line (exit 2)",
    ),
    StateFile(
        name="keys/coordinator-<K>.pem",
        where="network",
        what="this replica's private key (the operator's, from init)",
        on_damage="refused at start in one line (exit 2): a new key would not be the root's",
    ),
)
