"""P7 item 6: a damaged file in a replica's state dir never crashes it, and is never lost
silently.  Parametrized over every file a replica keeps (``statefiles.STATE_FILES``) and
the ways they were found damaged; each case starts a real ``p2pupdate-coordinator serve``
on the damaged state dir and reads its log and ``/status``."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.cli import render_status
from coordinator.errors import StateDamaged, StateUnwritable
from coordinator.service import Replica, ServiceConfig
from coordinator.statefiles import DB_FILE, STATE_FILES
from coordinator.store import AuditRow, BreakerRow, Store

from .service_helpers import REPO, Network, ReplicaProcesses, artifact_of, http

DATA = b"the build" * 300
SHA = artifact_of(DATA)


def populated(tmp_path: Path) -> tuple[Network, Path]:
    """A network and replica 1's state dir holding a release, an allowlist, a scope, a
    node, a breaker row and a grant horizon (made in-process: the start is the test)."""
    net = Network(tmp_path / "net")
    replica = Replica(ServiceConfig(network_dir=net.dir, replica=1, first_start=True))
    for doc in (net.release(DATA, "v2", 2), net.allowlist(1, [SHA]), net.scope(SHA, serial=1)):
        status, answer = replica.publish(doc)
        assert status == 200, answer
    status, answer = replica.put_artifact(SHA, DATA)
    assert status == 200, answer
    replica.registry.register("ab" * 32, "default", "v1", "0" * 64, "serving", None)
    replica.store.save_breaker(
        BreakerRow(artifact=SHA, paused=False, reason="", since=1.0, scope_serial=1)
    )
    replica.store.add_failure(SHA, "cd" * 32, "probation failed", 2.0)
    replica.store.audit(
        AuditRow(
            time=3.0,
            event="refuse",
            node="cd" * 32,
            pool="default",
            artifact=SHA,
            gate="capacity",
            reason="lease-budget",
        )
    )
    replica.store.close()
    return net, net.dir / "replica-1"


def _page_size(db: Path) -> int:
    size = int.from_bytes(db.read_bytes()[16:18], "big")
    return 65536 if size == 1 else size


def _sql(db: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute(statement, args)
    finally:
        conn.close()


def zero(db: Path) -> None:
    db.write_bytes(b"")


def half(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def header(db: Path) -> None:
    with db.open("r+b") as f:
        f.write(random.Random(1).randbytes(100))


def page(db: Path) -> None:
    size = _page_size(db)
    with db.open("r+b") as f:
        f.seek(size)  # page 2: the documents table's root
        f.write(random.Random(2).randbytes(size))


def directory(db: Path) -> None:
    db.unlink()
    (db / "x").mkdir(parents=True)


def documents_row(db: Path) -> None:
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        row_id, data = conn.execute(
            "SELECT id, data FROM documents WHERE type = 'scope'"
        ).fetchone()
        garbled = bytearray(data)
        garbled[len(garbled) // 2] ^= 0xFF
        conn.execute("UPDATE documents SET data = ? WHERE id = ?", (bytes(garbled), row_id))
    finally:
        conn.close()


def grant_horizon(db: Path) -> None:
    _sql(db, "UPDATE kv SET value = ? WHERE key = 'grant_horizon'", b"\x9fgarbage")


def trust(db: Path) -> None:
    _sql(db, "UPDATE kv SET value = ? WHERE key = 'trust'", b"\x81\xa1x\x01")


def nodes_row(db: Path) -> None:
    _sql(db, "UPDATE nodes SET seen = 'yesterday'")


def breaker_row(db: Path) -> None:
    _sql(db, "UPDATE breaker SET paused = 7")


def documents_type(db: Path) -> None:
    _sql(db, "UPDATE documents SET type = 'sc?pe' WHERE type = 'scope'")


def failures_row(db: Path) -> None:
    _sql(db, "UPDATE failures SET reason = x'00ff'")


def audit_row(db: Path) -> None:
    _sql(db, "UPDATE audit SET gate = x'00ff' WHERE event = 'refuse'")


def wal_header(db: Path) -> None:
    wal = db.with_name(db.name + "-wal")
    with wal.open("r+b") as f:
        f.write(b"\x00" * 32)


def wal_directory(db: Path) -> None:
    wal = db.with_name(db.name + "-wal")
    wal.unlink()
    wal.mkdir()


def shm_directory(db: Path) -> None:
    shm = db.with_name(db.name + "-shm")
    shm.unlink(missing_ok=True)
    shm.mkdir()


#: (file of ``STATE_FILES``, damage) -> the database must be quarantined and started empty.
QUARANTINED: dict[str, tuple[str, Callable[[Path], None]]] = {
    "zero": (DB_FILE, zero),
    "half": (DB_FILE, half),
    "header": (DB_FILE, header),
    "page": (DB_FILE, page),
    "directory": (DB_FILE, directory),
    "documents-row": (DB_FILE, documents_row),
    "documents-type": (DB_FILE, documents_type),
    "failures-row": (DB_FILE, failures_row),
    "audit-row": (DB_FILE, audit_row),
    "grant-horizon": (DB_FILE, grant_horizon),
    "trust": (DB_FILE, trust),
    "nodes-row": (DB_FILE, nodes_row),
    "breaker-row": (DB_FILE, breaker_row),
    "wal-header": (f"{DB_FILE}-wal", wal_header),
    "wal-directory": (f"{DB_FILE}-wal", wal_directory),
}


def with_wal(state: Path, tmp_path: Path) -> Path:
    """A copy of ``state`` as a kill leaves it: the database with its -wal and -shm."""
    conn = sqlite3.connect(str(state / DB_FILE), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("INSERT INTO kv (key, value) VALUES ('x', x'00')")
        copy = tmp_path / "killed"
        shutil.copytree(state, copy)
    finally:
        conn.close()
    assert (copy / f"{DB_FILE}-wal").stat().st_size > 32
    return copy


@pytest.mark.parametrize("case", sorted(QUARANTINED))
def test_a_damaged_database_is_quarantined_and_the_replica_starts_empty_and_says_so(
    case: str, tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net, state = populated(tmp_path)
    name, damage = QUARANTINED[case]
    if name != DB_FILE:
        state = with_wal(state, tmp_path)
    damage(state / DB_FILE)
    # --first-start is the operator's word that the replica never granted: a replica whose
    # database was quarantined may have, so it is ignored (wait one full lease TTL)
    rp = replicas.start(net, 1, "--state-dir", str(state), first=True)
    code, st = http("GET", f"{rp.url}/status")
    log = rp.log.read_text()
    assert "Traceback" not in log
    assert code == 200
    lines = [line for line in log.splitlines() if "state damaged" in line]
    assert len(lines) == 1, log
    assert "moved to state.sqlite.bad-1" in lines[0] and "started empty" in lines[0]
    assert (state / "state.sqlite.bad-1").exists()
    assert any("moved to state.sqlite.bad-1" in w for w in st["warnings"]), st["warnings"]
    assert st["state"]["damage"][0]["moved_to"] == "state.sqlite.bad-1"
    assert "WARNING: state damaged" in render_status(rp.url, st)
    assert st["documents"]["allowlist"] is None and st["documents"]["scope"] is None
    assert st["replica"]["warming_up_for"] > st["replica"]["lease_ttl"] - 30
    _code, metrics = http("GET", f"{rp.url}/metrics")
    assert b"p2pupdate_coordinator_state_damaged 1.0" in metrics
    # the copy is the evidence; the new database is a working one (a restart is quiet)
    rp.kill()
    again = replicas.start(net, 1, "--state-dir", str(state), first=True)
    code, st = http("GET", f"{again.url}/status")
    assert code == 200 and st["warnings"] == []
    assert "state damaged" not in again.log.read_text()
    assert (state / "state.sqlite.bad-1").exists() and not (state / "state.sqlite.bad-2").exists()


def test_a_second_damage_does_not_overwrite_the_first_copy(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net, state = populated(tmp_path)
    header(state / DB_FILE)
    (state / "state.sqlite.bad-1").write_bytes(b"an earlier copy")
    rp = replicas.start(net, 1, "--state-dir", str(state))
    _code, st = http("GET", f"{rp.url}/status")
    assert st["state"]["damage"][0]["moved_to"] == "state.sqlite.bad-2"
    assert (state / "state.sqlite.bad-1").read_bytes() == b"an earlier copy"


def test_an_intact_state_dir_and_a_garbage_shm_start_with_everything(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    """No false alarm: SQLite never trusts the -shm (it rebuilds it from the WAL); the
    documents, the registry and the horizon are all there, and nothing is moved."""
    net, state = populated(tmp_path)
    state = with_wal(state, tmp_path)
    (state / f"{DB_FILE}-shm").write_bytes(random.Random(3).randbytes(32768))
    rp = replicas.start(net, 1, "--state-dir", str(state), first=True)
    code, st = http("GET", f"{rp.url}/status")
    assert code == 200 and st["warnings"] == [], st["warnings"]
    assert st["documents"]["scope"]["serial"] == 1
    assert st["nodes"]["total"] == 1
    assert not list(state.glob("*.bad-*"))
    assert "Traceback" not in rp.log.read_text()


def test_a_shm_that_is_not_a_file_is_moved_aside_alone(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    """The WAL index is never trusted: a directory in its place is moved aside, the
    database and everything in it kept (no warm-up: the horizon is still known)."""
    net, state = populated(tmp_path)
    state = with_wal(state, tmp_path)
    shm_directory(state / DB_FILE)
    rp = replicas.start(net, 1, "--state-dir", str(state), first=False)
    code, st = http("GET", f"{rp.url}/status")
    log = rp.log.read_text()
    assert code == 200 and "Traceback" not in log
    assert f"moved to {DB_FILE}-shm.bad-1" in log
    assert (state / f"{DB_FILE}-shm.bad-1").is_dir()
    assert not (state / f"{DB_FILE}.bad-1").exists()
    assert st["documents"]["scope"]["serial"] == 1 and st["nodes"]["total"] == 1
    assert st["replica"]["warming_up_for"] == 0
    assert any(f"{DB_FILE}-shm is not a regular file" in w for w in st["warnings"])


def test_a_lock_or_artifacts_that_is_not_what_it_should_be_is_moved_aside(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net, state = populated(tmp_path)
    (state / "lock").unlink(missing_ok=True)
    (state / "lock").mkdir()
    shutil.rmtree(state / "artifacts")
    (state / "artifacts").write_bytes(b"not a directory")
    rp = replicas.start(net, 1, "--state-dir", str(state))
    code, st = http("GET", f"{rp.url}/status")
    log = rp.log.read_text()
    assert code == 200 and "Traceback" not in log
    for what in ("lock is not a regular file", "artifacts is not a directory"):
        line = [w for w in st["warnings"] if what in w]
        assert len(line) == 1, st["warnings"]
        assert f"moved to {what.split()[0]}.bad-1" in line[0] and "made again" in line[0]
        assert line[0] in log
    assert (state / "lock").is_file() and (state / "artifacts").is_dir()
    assert st["documents"]["scope"]["serial"] == 1  # the database was fine: kept


@pytest.mark.parametrize("damage", ["garbage", "empty", "directory"])
@pytest.mark.parametrize("name", ["root.msgpack", "keys/coordinator-1.pem"])
def test_a_damaged_network_file_refuses_the_start_in_one_line(
    name: str, damage: str, tmp_path: Path
) -> None:
    net = Network(tmp_path / "net")
    path = net.dir / name
    path.unlink()
    if damage == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"" if damage == "empty" else random.Random(4).randbytes(300))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "serve",
            "--dir",
            str(net.dir),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert name.split("/")[-1] in r.stderr


def test_every_file_a_replica_keeps_is_covered() -> None:
    """The table is the list: a file added to it without a damage test fails here."""
    covered = {name for name, _damage in QUARANTINED.values()} | {
        f"{DB_FILE}-shm",  # test_a_shm_that_is_not_a_file_is_moved_aside_alone
        "lock",
        "artifacts",
        "artifacts/<sha256>",  # test_a_damaged_artifact_is_not_served
        "root.msgpack",
        "network.msgpack",  # test_admission_replica: test_a_bad_network_document_...
        "keys/coordinator-<K>.pem",
    }
    assert {f.name for f in STATE_FILES} == covered


def test_a_damaged_artifact_is_not_served(tmp_path: Path, replicas: ReplicaProcesses) -> None:
    net, state = populated(tmp_path)
    rp = replicas.start(net, 1, "--state-dir", str(state))
    code, body = http("GET", f"{rp.url}/v1/artifacts/{SHA}/chunks/1")
    assert code == 200 and body == DATA[1024:2048]
    path = state / "artifacts" / SHA
    with path.open("r+b") as f:
        f.seek(1500)
        f.write(b"X")
    code, _ = http("GET", f"{rp.url}/v1/artifacts/{SHA}/chunks/1")
    assert code == 404
    assert not path.exists() and (state / "artifacts" / f"{SHA}.bad-1").exists()
    _code, st = http("GET", f"{rp.url}/status")
    assert any("chunk 1 does not match the release record" in w for w in st["warnings"])
    assert "Traceback" not in rp.log.read_text()


def test_damage_found_while_serving_is_quarantined_and_rebuilt_from_memory(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    """The database is damaged under a running replica (pages overwritten on disk): the
    next query meets it.  No traceback: the file is quarantined, a new one written from
    what the replica holds (documents, trust, grant horizon), and the publish that met it
    succeeds.  After a restart the replica serves the same and needs no warm-up (its
    horizon was written back, not forgotten)."""
    net = Network(tmp_path / "net")
    rp = replicas.start(net, 1)
    for doc in (net.release(DATA, "v2", 2), net.allowlist(1, [SHA]), net.scope(SHA, serial=1)):
        code, answer = http("POST", f"{rp.url}/v1/publish", doc)
        assert code == 200, answer
    db = net.dir / "replica-1" / DB_FILE
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:  # everything into the database file; a write of our own makes the replica re-read
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("INSERT INTO kv (key, value) VALUES ('poke', x'00')")
    finally:
        conn.close()
    size = _page_size(db)
    pages = db.stat().st_size // size
    with db.open("r+b") as f:
        f.seek(size)
        f.write(random.Random(5).randbytes(size * (pages - 1)))
    code, answer = http("POST", f"{rp.url}/v1/publish", net.scope(SHA, serial=2))
    assert code == 200, answer
    code, st = http("GET", f"{rp.url}/status")
    log = rp.log.read_text()
    assert code == 200 and "Traceback" not in log
    lines = [line for line in log.splitlines() if "state damaged" in line]
    assert len(lines) == 1 and "rebuilt from memory" in lines[0], log
    assert any("rebuilt from memory" in w for w in st["warnings"])
    assert (db.parent / "state.sqlite.bad-1").exists()
    assert st["documents"]["scope"]["serial"] == 2
    rp.kill()
    again = replicas.start(net, 1, first=False)
    code, st = http("GET", f"{again.url}/status")
    assert code == 200 and st["warnings"] == []
    assert st["documents"]["scope"]["serial"] == 2
    assert st["documents"]["allowlist"]["version"] == 1
    assert [r["artifact"] for r in st["documents"]["releases"]] == [SHA]
    assert st["replica"]["warming_up_for"] == 0


@pytest.mark.parametrize(
    "raw",
    [b"nan", b"inf", b"-inf", b"1e999", b"", b"12.5 0000000000000000", b"12.5 x y", b"\xff"],
)
def test_a_grant_horizon_that_is_not_a_finite_checked_time_is_damage(
    raw: bytes, tmp_path: Path
) -> None:
    """``nan`` would make the warm-up ``max(0, nan) == 0``: no wait at all.  Anything but a
    finite time with its check (or a plain finite time from before the check) is damage,
    and damage means the full wait."""
    store = Store(tmp_path / DB_FILE)
    try:
        store.put("grant_horizon", raw)
        with pytest.raises(StateDamaged):
            store.grant_horizon()
    finally:
        store.close()


def test_a_grant_horizon_round_trips_and_an_older_plain_one_is_read(tmp_path: Path) -> None:
    store = Store(tmp_path / DB_FILE)
    try:
        store.set_grant_horizon(1_800_000_123.25)
        assert store.grant_horizon() == 1_800_000_123.25
        store.put("grant_horizon", b"1800000000.5")  # as written before it carried a check
        assert store.grant_horizon() == 1_800_000_000.5
    finally:
        store.close()


class _FullDisk:
    """A connection whose batch writes fail as SQLite's do on a full disk (the fault)."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self.real = real

    def execute(self, *args: object) -> sqlite3.Cursor:
        return self.real.execute(*args)  # type: ignore[arg-type]

    def executemany(self, *_args: object) -> sqlite3.Cursor:
        raise sqlite3.OperationalError("database or disk is full")


def test_a_full_disk_is_not_damage_and_the_batch_is_kept(tmp_path: Path) -> None:
    """SQLITE_FULL is no reason to move a good database aside: the write fails with
    ``StateUnwritable``, nothing is quarantined, and the batch is written once it can be."""
    store = Store(tmp_path / DB_FILE)
    store.serving(lambda: None)
    real = store.db
    row = AuditRow(time=1.0, event="refuse", node="n", pool="p", artifact="a", reason="r")
    try:
        store.audit(row)
        store.db = _FullDisk(real)  # type: ignore[assignment]
        with pytest.raises(StateUnwritable):
            store.flush()
        assert store.pending() == 1 and store.damage == []
        assert not list(tmp_path.glob("*.bad-*"))
        store.db = real
        store.flush()
        assert store.audit_rows() == [row]
    finally:
        store.db = real
        store.close()
