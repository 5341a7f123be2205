"""P7 item 4, the full matrix: every file of ``NODE_STATE_FILES`` whose bytes are read, times
every kind of damage (truncated to 0, to half, random bytes, garbage appended), on real
files, through the very function that reads it at start.  Each case shows the file is moved
aside as ``NAME.bad-N`` (``N`` growing, never overwriting), that what can be rebuilt is, and
that one log line says so.  The real-process side is ``test_corrupt_state.py``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from p2pupdate.core import crypto
from p2pupdate.core.documents import Allowlist
from p2pupdate.core.trust import TrustStore
from p2pupdate.daemon.identity import COPY, IDENTITY, load_identity
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.daemon.workhost import WorkHost
from p2pupdate.fsutil import quarantine
from p2pupdate.launcher import stage0
from p2pupdate.launcher.state import (
    Deny,
    Pending,
    RollbackEntry,
    StateDir,
    Verdict,
    new_id,
)
from p2pupdate.launcher.statefiles import NODE_STATE_FILES
from p2pupdate.launcher.supervisor import Launcher, LauncherConfig, Outcome, Plan
from p2pupdate.work.kv import KVWorkload
from tests.core.harness import Network
from tests.work.helpers import Node, RawConnection

from .conftest import Builds
from .damage import KINDS, damage

NOW = int(time.time())
#: Rows checked here (every row whose bytes are read).
MATRIX_ROWS = sorted(row.name for row in NODE_STATE_FILES if row.read)


def _rng(*parts: str) -> random.Random:
    return random.Random(hashlib.sha256("/".join(parts).encode()).digest())


def test_every_read_row_is_in_the_matrix() -> None:
    assert set(MATRIX_ROWS) == set(CHECKS), set(MATRIX_ROWS) ^ set(CHECKS)


# -- one check per row ----------------------------------------------------------------------


def _launcher(tmp: Path, builds: Builds, lines: list[str]) -> Launcher:
    v1 = builds.get("v1", 1)
    launcher = Launcher(
        LauncherConfig(state_dir=tmp / "state", initial_artifact=v1.path, backoff_base=0.01),
        log=lines.append,
    )
    assert launcher.decide() == Plan(slot=v1.sha)
    return launcher


def _records(tmp: Path, builds: Builds, kind: str, name: str) -> None:
    lines: list[str] = []
    launcher = _launcher(tmp, builds, lines)
    st = launcher.state
    v1 = builds.get("v1", 1)
    sha = v1.sha
    writers: dict[str, Callable[[], None]] = {
        "pending": lambda: st.write_pending(
            Pending(id=new_id(), artifact=sha, previous=sha, counter=2, token=b"t", created=1.0)
        ),
        "verdict": lambda: st.write_verdict(
            Verdict(id=new_id(), artifact=sha, verdict="confirm", reason="ok", time=1.0, pid=1)
        ),
        "denied": lambda: st.write_denied([Deny(artifact=sha, counter=1, reason="x", time=1.0)]),
        "rollbacks": lambda: st.write_rollbacks(
            [
                RollbackEntry(
                    id=new_id(),
                    artifact=sha,
                    counter=1,
                    previous=sha,
                    reason="x",
                    token=None,
                    time=1.0,
                )
            ]
        ),
    }
    writers[name]()
    path = st.root / name
    damage(path, kind, _rng(name, kind))
    (st.root / f"{name}.bad-1").write_bytes(b"an earlier one, kept")
    launcher._check_records()
    assert (st.root / f"{name}.bad-1").read_bytes() == b"an earlier one, kept"
    assert (st.root / f"{name}.bad-2").exists() and not path.exists()
    assert len([line for line in lines if f"{name}.bad-2" in line]) == 1
    assert launcher.decide() == Plan(slot=sha)


def _boot(tmp: Path, builds: Builds, kind: str, name: str) -> None:
    """Stage-0's records: moved aside, read as empty (no proven launcher, no came-up)."""
    state = tmp / "state"
    state.mkdir()
    sha = builds.get("v1", 1).sha
    path = state / name
    stage0.write_json(
        str(path), {**stage0.EMPTY, "good": sha} if name == "boot" else {"launcher": sha}
    )
    damage(path, kind, _rng(name, kind))
    (state / f"{name}.bad-1").write_bytes(b"an earlier one, kept")
    if name == "boot":
        assert stage0.read_boot(str(state)) == stage0.EMPTY
    else:
        assert stage0.read_json(str(path)) is None
    assert (state / f"{name}.bad-1").read_bytes() == b"an earlier one, kept"
    assert (state / f"{name}.bad-2").exists() and not path.exists()


def _link(tmp: Path, builds: Builds, kind: str) -> None:
    lines: list[str] = []
    launcher = _launcher(tmp, builds, lines)
    st = launcher.state
    damage(st.root / "current", kind, _rng("current", kind))
    assert launcher.decide() == Plan(slot=builds.get("v1", 1).sha)
    assert st.read_link("current") == builds.get("v1", 1).sha
    assert (st.root / "current.bad-1").exists()
    assert any("current link unusable" in line for line in lines)


def _status(tmp: Path, builds: Builds, kind: str) -> None:
    st = StateDir(tmp / "state")
    st.ensure()
    st.write_status({"pid": 1})
    damage(st.status_path, kind, _rng("status", kind))
    st.write_status({"pid": 2})  # the daemon's next write replaces it whole
    assert st.read_status() == {"format": 1, "pid": 2}


def _slot(tmp: Path, builds: Builds, kind: str, which: str) -> None:
    lines: list[str] = []
    launcher = _launcher(tmp, builds, lines)
    st = launcher.state
    v1 = builds.get("v1", 1)
    slot = st.slot_dir(v1.sha)
    target = {
        "slot-manifest": slot / "SLOT.json",
        "slot-files": slot / "FILES.json",
        "slot-source": slot / "p2pupdate" / "daemon" / "node.py",
    }[which]
    good = target.read_bytes()
    damage(target, kind, _rng(which, kind))
    assert launcher.decide() == Plan(slot=v1.sha)
    assert target.read_bytes() == good or which == "slot-manifest"  # SLOT.json: new time
    assert st.slot_manifest(v1.sha) is not None and st.verify_slot(v1.sha, lines.append)
    assert (target.parent / f"{target.name}.bad-1").exists(), lines
    assert any(target.name in line for line in lines)


def _bytecode(tmp: Path, builds: Builds, kind: str) -> None:
    """Python's cache is not in the manifest: after a crash of the slot it is dropped."""
    lines: list[str] = []
    launcher = _launcher(tmp, builds, lines)
    v1 = builds.get("v1", 1)
    cache = launcher.state.slot_dir(v1.sha) / "p2pupdate" / "daemon" / "__pycache__"
    cache.mkdir()
    pyc = cache / "node.cpython-311.pyc"
    pyc.write_bytes(b"\xa7\r\r\n" + bytes(12) + b"\xe3" * 64)
    damage(pyc, kind, _rng("pyc", kind))
    plan = launcher.decide()
    assert launcher.after_exit(plan, Outcome(code=1, runtime=0.1))
    assert not cache.exists()
    assert any("dropped the bytecode cache" in line for line in lines)


def _store(tmp: Path, builds: Builds, kind: str) -> None:
    """A bad stored artifact is found when it is needed: the damaged slot cannot be restored
    from it, so the launcher falls back to the bootstrap (no previous here)."""
    lines: list[str] = []
    launcher = _launcher(tmp, builds, lines)
    st = launcher.state
    v1 = builds.get("v1", 1)
    damage(st.store_path(v1.sha), kind, _rng("store", kind))
    damage(st.slot_dir(v1.sha) / "p2pupdate" / "daemon" / "node.py", "random", _rng("src"))
    assert not st.verify_slot(v1.sha, lines.append)
    assert (st.store / f"{v1.sha}.tar.gz.bad-1").exists()
    assert any("stored artifact is unusable" in line for line in lines)


def _checkpoint(tmp: Path, builds: Builds, kind: str) -> None:
    st = StateDir(tmp / "state")
    st.ensure()
    lines: list[str] = []
    kv_dir = st.work / "kv"
    w = KVWorkload(kv_dir)
    data = w.checkpoint()
    w.close()
    st.checkpoint.write_bytes(data)
    damage(st.checkpoint, kind, _rng("checkpoint", kind))
    host = WorkHost(lambda: KVWorkload(kv_dir), state=st, log=lines.append)
    host.restore_checkpoint(strict=False)
    host.workload.close()  # type: ignore[attr-defined]
    assert (st.work / "checkpoint.bad-1").exists() and not st.checkpoint.exists()
    assert any("checkpoint not restored" in line for line in lines)


def _kv_log(directory: Path, count: int) -> None:
    async def run() -> None:
        async with trio.open_nursery() as nursery:
            node = Node(nursery, directory)
            w = await node.start()
            conn = await RawConnection.open(w.port)
            for i in range(count):
                answer = await conn.ask({"op": "put", "id": i, "key": f"k{i}", "value": b"v%d" % i})
                assert answer is not None and answer["ok"]
            await conn.aclose()
            await node.stop()

    trio.run(run)


def _kv(tmp: Path, builds: Builds, kind: str, which: str, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp / "kv"
    _kv_log(d, 10)
    (seg,) = sorted(d.glob("wal-*.log"))
    target = d / "snapshot.msgpack" if which == "kv-snapshot" else seg
    damage(target, kind, _rng(which, kind))
    with caplog.at_level(logging.WARNING, logger="p2pupdate.work.kv"):
        w = KVWorkload(d)
    got = [w.get(f"k{i}") for i in range(10)]
    w.close()
    said = [r.getMessage() for r in caplog.records]
    if which == "kv-snapshot":  # the log reaches back to lsn 1: nothing is lost
        assert got == [b"v%d" % i for i in range(10)]
        assert (d / "snapshot.msgpack.bad-1").exists() or (kind == "empty" and said)
        assert any("rebuilt from the log" in m for m in said), said
        return
    kept = next((i for i, v in enumerate(got) if v is None), 10)
    assert got[:kept] == [b"v%d" % i for i in range(kept)]  # a prefix, exactly
    if kind == "appended":
        assert kept == 10  # garbage after the last record costs nothing
    if kind == "half":  # indistinguishable from a torn final write: truncated
        assert any("torn" in m or "damaged" in m for m in said), said
    else:
        assert list(d.glob(f"{seg.name}.bad-1")), said
        assert any("damaged" in m for m in said), said
    again = KVWorkload(d)  # and the next start is clean
    assert again.lsn == kept
    again.close()


def _trust(tmp: Path, builds: Builds, kind: str) -> None:
    net = Network(now=NOW)
    lines: list[str] = []
    TrustFile.open(tmp / "trust", initial_root=net.roots[1], now=NOW)
    path = tmp / "trust" / "store.msgpack"
    damage(path, kind, _rng("trust", kind))
    tf = TrustFile.open(tmp / "trust", initial_root=net.roots[1], now=NOW, log=lines.append)
    assert tf.store == TrustStore.from_root(net.roots[1], NOW)
    assert TrustStore.from_bytes(path.read_bytes()) == tf.store
    assert (tmp / "trust" / "store.msgpack.bad-1").exists()
    assert len(lines) == 1 and "rebuilt from the pinned root" in lines[0]
    # and it refills as documents arrive again (here: an allowlist), on disk at once
    tf.accept(Allowlist, net.allowlist(5, ["ab" * 32]), NOW)
    assert TrustStore.from_bytes(path.read_bytes()).floors["allowlist"].value == 5


def _identity(tmp: Path, builds: Builds, kind: str) -> None:
    for name in (IDENTITY, COPY):
        d = tmp / name
        d.mkdir()
        key = load_identity(d)
        damage(d / name, kind, _rng(name, kind))
        lines: list[str] = []
        again = load_identity(d, lines.append)
        assert again.keyid == key.keyid
        assert (d / f"{name}.bad-1").exists()
        assert len(lines) == 1 and "rewritten from the other copy" in lines[0]
        assert load_identity(d, lines.append).keyid == key.keyid and len(lines) == 1


CHECKS: dict[str, Callable[..., None]] = {
    "link": _link,
    "pending": lambda t, b, k: _records(t, b, k, "pending"),
    "verdict": lambda t, b, k: _records(t, b, k, "verdict"),
    "denied": lambda t, b, k: _records(t, b, k, "denied"),
    "rollbacks": lambda t, b, k: _records(t, b, k, "rollbacks"),
    "status": _status,
    "boot": lambda t, b, k: _boot(t, b, k, "boot"),
    "boot-up": lambda t, b, k: _boot(t, b, k, "boot-up"),
    "slot-manifest": lambda t, b, k: _slot(t, b, k, "slot-manifest"),
    "slot-files": lambda t, b, k: _slot(t, b, k, "slot-files"),
    "slot-source": lambda t, b, k: _slot(t, b, k, "slot-source"),
    "store": _store,
    "slot-bytecode": _bytecode,
    "checkpoint": _checkpoint,
    "kv-snapshot": lambda t, b, k, c: _kv(t, b, k, "kv-snapshot", c),
    "kv-wal": lambda t, b, k, c: _kv(t, b, k, "kv-wal", c),
    "trust": _trust,
    "identity": _identity,
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("row", MATRIX_ROWS)
def test_damage(
    row: str, kind: str, tmp_path: Path, builds: Builds, caplog: pytest.LogCaptureFixture
) -> None:
    check = CHECKS[row]
    if row.startswith("kv-"):
        check(tmp_path, builds, kind, caplog)
    else:
        check(tmp_path, builds, kind)


def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "f"
    for i in range(1, 4):
        path.write_bytes(b"%d" % i)
        assert quarantine(path).name == f"f.bad-{i}"
    assert [(tmp_path / f"f.bad-{i}").read_bytes() for i in (1, 2, 3)] == [b"1", b"2", b"3"]


def test_both_identity_copies_lost(tmp_path: Path) -> None:
    key = load_identity(tmp_path)
    damage(tmp_path / IDENTITY, "random", _rng("a"))
    damage(tmp_path / COPY, "half", _rng("b"))
    lines: list[str] = []
    new = load_identity(tmp_path, lines.append)
    assert new.keyid != key.keyid
    assert len(lines) == 1 and "IDENTITY LOST" in lines[0] and key.keyid in lines[0]
    assert load_identity(tmp_path, lines.append).keyid == new.keyid and len(lines) == 1


def test_an_old_node_gets_its_second_copy(tmp_path: Path) -> None:
    key = crypto.SigningKey.from_seed(b"\x01" * 32)
    (tmp_path / IDENTITY).write_bytes(crypto.private_key_to_pem(key))
    lines: list[str] = []
    assert load_identity(tmp_path, lines.append).keyid == key.keyid
    assert (tmp_path / COPY).read_bytes().startswith(f"# node {key.keyid}\n".encode())
    assert lines == [f"wrote {COPY}: the second copy of this node's key"]


def test_a_damaged_current_link_never_names_a_slot_on_probation(
    tmp_path: Path, builds: Builds
) -> None:
    lines: list[str] = []
    launcher = _launcher(tmp_path, builds, lines)
    st = launcher.state
    v1, v2 = builds.get("v1", 1), builds.get("v2", 2)
    st.stage_slot(v2.path.read_bytes(), v2.sha, counter=2)
    st.write_pending(
        Pending(id=new_id(), artifact=v2.sha, previous=v1.sha, counter=2, token=b"t", created=1.0)
    )
    damage(st.root / "current", "random", _rng("current-probation"))
    plan = launcher.decide()
    assert plan.slot == v2.sha and plan.pending is not None  # v2 still only on probation
    assert st.read_link("current") == v1.sha
    assert (st.root / "current.bad-1").exists()


def test_a_slot_staged_before_file_manifests_gets_one_from_the_stored_build(
    tmp_path: Path, builds: Builds
) -> None:
    """A slot from an older version has no FILES.json: it is computed from the verified copy
    in the store (so a file damaged meanwhile is still found and restored)."""
    lines: list[str] = []
    launcher = _launcher(tmp_path, builds, lines)
    st = launcher.state
    v1 = builds.get("v1", 1)
    slot = st.slot_dir(v1.sha)
    (slot / "FILES.json").unlink()
    source = slot / "p2pupdate" / "launcher" / "codes.py"
    good = source.read_bytes()
    damage(source, "half", _rng("old-slot"))
    assert launcher.decide() == Plan(slot=v1.sha)
    assert source.read_bytes() == good
    assert (source.parent / "codes.py.bad-1").exists()
    assert any("from the verified artifact in the store" in line for line in lines)
    assert (slot / "FILES.json").exists()


def test_a_slot_without_manifest_or_stored_build_records_its_files(
    tmp_path: Path, builds: Builds
) -> None:
    """Nothing to check against: the files as they are become the manifest (said once), so
    damage from then on is found."""
    lines: list[str] = []
    launcher = _launcher(tmp_path, builds, lines)
    st = launcher.state
    v1 = builds.get("v1", 1)
    (st.slot_dir(v1.sha) / "FILES.json").unlink()
    st.store_path(v1.sha).unlink()
    assert launcher.decide() == Plan(slot=v1.sha)
    assert sum("from its files as they are" in line for line in lines) == 1
    assert launcher.decide() == Plan(slot=v1.sha)
    assert sum("file manifest" in line for line in lines) == 1  # once
    damage(st.slot_dir(v1.sha) / "p2pupdate" / "cli" / "common.py", "random", _rng("x"))
    assert not st.verify_slot(v1.sha, lines.append)  # found, and nothing to restore from
    assert "no verified artifact in the store" in lines[-1]
