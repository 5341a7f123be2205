"""P7 item 4 with real processes: whatever file of a node's state is damaged, the node comes
back serving on its own -- one start, no crash loop -- with the bad file kept as
``NAME.bad-N`` and one log line saying what was rebuilt.

One node is run once per module (v1, swapped to v2 with KV writes, trust root and gossip, so
every kind of file exists) and stopped; each case starts a copy of that state directory with
one file damaged.  The full matrix of damage kinds runs at the unit level
(``test_damage_matrix.py``); here there is one real-process case per file of
``NODE_STATE_FILES`` (a few files get two).
"""

from __future__ import annotations

import importlib.util
import json
import py_compile
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pupdate.core.documents import Release
from p2pupdate.launcher.statefiles import NODE_STATE_FILES, classify
from tests.core.harness import Network
from tests.daemon.kvutil import lost, write_until

from .conftest import Builds
from .damage import damage
from .harness import (
    FAST,
    Build,
    NodeProcess,
    Nodes,
    free_port,
    launched_versions,
    offer,
    pid_alive,
)

#: Real processes (launcher + daemon groups): run by scripts/test, deselect with -m 'not slow'.
pytestmark = pytest.mark.slow

CASE_WAIT = 20.0
#: The bytecode cache file of ``daemon/node.py`` (made by the case: this suite may run with
#: PYTHONDONTWRITEBYTECODE, and the node reads a cache it did not write all the same).
PYC = Path(importlib.util.cache_from_source("node.py")).as_posix()


@dataclass
class Golden:
    state: Path
    args: list[str]
    v1: Build
    v2: Build
    acked: dict[str, bytes]
    node_id: str
    files: list[str]


def _args(root: Path, offers: Path, v1: Build) -> list[str]:
    return [
        *("--initial-artifact", str(v1.path), "--grant-all", "--offer-dir", str(offers)),
        *("--trust-root", str(root), "--work", "kv", "--gossip-listen", "127.0.0.1:0"),
        *FAST,
    ]


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, builds: Builds) -> Iterator[Golden]:
    tmp = tmp_path_factory.mktemp("golden")
    nodes = Nodes(tmp)
    try:
        now = int(time.time())
        net = Network(now=now)
        root = tmp / "root.doc"
        root.write_bytes(net.roots[1])
        v1, v2 = builds.get("v1", 1), builds.get("v2", 2)
        offers = tmp / "offers"
        offers.mkdir()
        args = _args(root, offers, v1)
        port = free_port()
        node = nodes.start(tmp / "state", [*args, "--port", str(port)])
        node.wait_running("v1")
        endpoint = ("127.0.0.1", port)
        first = trio.run(lambda: write_until(endpoint, lambda: True, prefix="a", minimum=20))
        data = v2.path.read_bytes()
        release = Release.for_bytes(
            data, name="v2", counter=2, chunk_size=64 * 1024, issued=now - 60, expires=now + 3600
        )
        (offers / f"{v2.sha}.release").write_bytes(net.sign(release))
        offer(offers, v2)
        st = node.wait_running("v2")
        second = trio.run(lambda: write_until(endpoint, lambda: True, prefix="b", minimum=20))
        assert node.terminate() == 0
        state = tmp / "state"
        files = sorted(
            p.relative_to(state).as_posix()
            for p in state.rglob("*")
            if p.is_file() or p.is_symlink()
        )
        yield Golden(
            state=state,
            args=args,
            v1=v1,
            v2=v2,
            acked=first.acked | second.acked,
            node_id=st["gossip"]["node"],
            files=files,
        )
    finally:
        nodes.kill_all()


def test_every_file_of_a_real_node_has_a_row(golden: Golden) -> None:
    """A new kind of file in the state dir must get a row (and with it, a recovery)."""
    unknown = [f for f in golden.files if classify(f) is None]
    assert unknown == [], f"files without a NODE_STATE_FILES row: {unknown}"
    seen = {row.name for f in golden.files if (row := classify(f)) is not None}
    for expected in ("link", "slot-manifest", "slot-files", "slot-source", "store", "kv-wal"):
        assert expected in seen
    assert {"checkpoint", "kv-snapshot", "trust", "identity", "status"} <= seen


@dataclass(frozen=True)
class Case:
    """Damage ``target`` (relative path; ``{v1}``/``{v2}`` are the slots) with ``kind``."""

    row: str
    target: str
    kind: str
    #: A phrase of the one log line that says what happened.
    said: str
    #: The file kept aside (relative), None when nothing is moved.
    aside: str | None
    version: str = "v2"
    also_remove: str | None = None
    #: Daemon starts it takes (a damaged bytecode cache costs one crash, then it is dropped).
    starts: int = 1


CASES = [
    Case("link", "current", "random", "current link unusable", "current.bad-1"),
    Case("pending", "pending", "random", "pending record unusable", "pending.bad-1"),
    Case("verdict", "verdict", "random", "verdict unusable", "verdict.bad-1"),
    Case("denied", "denied", "appended", "sticky-deny list unusable", "denied.bad-1"),
    Case("rollbacks", "rollbacks", "half", "rollback log unusable", "rollbacks.bad-1"),
    Case("status", "status", "random", "running v2", None),
    Case("boot", "boot", "random", "boot unusable; moved to boot.bad-1", "boot.bad-1"),
    Case("boot-up", "boot-up", "half", "boot-up unusable; moved to boot-up.bad-1", "boot-up.bad-1"),
    Case(
        "slot-manifest",
        "slots/{v2}/SLOT.json",
        "empty",
        "SLOT.json unusable",
        "slots/{v2}/SLOT.json.bad-1",
    ),
    Case(
        "slot-files",
        "slots/{v2}/FILES.json",
        "random",
        "FILES.json unusable",
        "slots/{v2}/FILES.json.bad-1",
    ),
    Case(
        "slot-source",
        "slots/{v2}/p2pupdate/daemon/node.py",
        "appended",
        "restored from the verified artifact",
        "slots/{v2}/p2pupdate/daemon/node.py.bad-1",
    ),
    Case(
        "store",
        "store/{v2}.tar.gz",
        "random",
        "falling back to previous",
        "store/{v2}.tar.gz.bad-1",
        version="v1",
        also_remove="slots/{v2}/p2pupdate/daemon/node.py",
    ),
    Case(
        "slot-bytecode",
        "slots/{v2}/p2pupdate/daemon/" + PYC,
        "half",
        "dropped the bytecode cache",
        None,
        starts=2,
    ),
    Case(
        "checkpoint",
        "work/checkpoint",
        "random",
        "checkpoint not restored",
        "work/checkpoint.bad-1",
    ),
    Case(
        "kv-snapshot",
        "work/kv/snapshot.msgpack",
        "half",
        "rebuilt from the log",
        "work/kv/snapshot.msgpack.bad-1",
    ),
    Case("kv-wal", "work/kv/wal-*.log", "appended", "the rest is in", "work/kv/wal-*.log.bad-1"),
    Case(
        "trust", "trust/store.msgpack", "half", "trust store corrupt", "trust/store.msgpack.bad-1"
    ),
    Case(
        "identity", "identity.pem", "random", "rewritten from the other copy", "identity.pem.bad-1"
    ),
]


def _resolve(golden: Golden, state: Path, pattern: str) -> Path:
    rel = pattern.format(v1=golden.v1.sha, v2=golden.v2.sha)
    if "*" in rel:
        (found,) = sorted(state.glob(rel))
        return found
    return state / rel


def _start_damaged(
    golden: Golden, tmp_path: Path, nodes: Nodes, targets: list[tuple[str, str]]
) -> tuple[NodeProcess, tuple[str, int], Path]:
    state = tmp_path / "state"
    shutil.copytree(golden.state, state, symlinks=True)
    rng = random.Random(7)
    for target, kind in targets:
        path = _resolve(golden, state, target)
        if path.suffix == ".pyc":  # a valid cache first, for the source as it is
            source = path.parent.parent / (path.name.split(".")[0] + ".py")
            py_compile.compile(str(source), cfile=str(path), doraise=True)
        damage(path, kind, rng)
    port = free_port()
    node = nodes.start(state, [*golden.args, "--port", str(port)])
    return node, ("127.0.0.1", port), state


def _wait_serving(node: NodeProcess, version: str) -> dict[str, Any]:
    """The status of this start's daemon (not the copied one), serving ``version``."""

    def check() -> dict[str, Any] | None:
        st = node.status()
        if (
            st is not None
            and pid_alive(st["pid"])
            and st.get("version") == version
            and st["work"]["serving"]
            and st.get("gossip")
        ):
            return st
        return None

    return node.wait_for(f"{version} serving", check, CASE_WAIT)


def _assert_one_start(node: NodeProcess, starts: int = 1) -> None:
    log = node.log()
    assert len(launched_versions(log)) == starts, node.tail()
    if starts == 1:
        assert "Traceback" not in log and "restarting in" not in log, node.tail()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.row}-{c.kind}")
def test_a_damaged_file_never_loops(
    case: Case, golden: Golden, tmp_path: Path, nodes: Nodes
) -> None:
    targets = [(case.target, case.kind)]
    if case.also_remove:
        targets.append((case.also_remove, "appended"))
    node, endpoint, state = _start_damaged(golden, tmp_path, nodes, targets)
    _wait_serving(node, case.version)
    _assert_one_start(node, case.starts)
    log = node.log()
    lines = [line for line in log.splitlines() if case.said in line]
    assert lines, f"no line saying {case.said!r}\n{node.tail()}"
    if case.aside is not None:
        assert _resolve(golden, state, case.aside).exists(), sorted(
            p.name for p in _resolve(golden, state, case.aside).parent.iterdir()
        )
    # the work answers: every acknowledged write is still there (a WAL cut after the last
    # record and a snapshot rebuilt from the log lose nothing)
    assert lost(endpoint, golden.acked) == []
    if case.row == "identity":
        st = _wait_serving(node, case.version)
        assert st["gossip"]["node"] == golden.node_id  # the same node, not a new one
    if case.row == "status":
        assert json.loads((state / "status").read_text())["version"] == "v2"


def test_both_identity_copies_lost_makes_a_new_key_loudly_once(
    golden: Golden, tmp_path: Path, nodes: Nodes
) -> None:
    node, _, state = _start_damaged(
        golden, tmp_path, nodes, [("identity.pem", "random"), ("identity.pem.copy", "half")]
    )
    st = _wait_serving(node, "v2")
    _assert_one_start(node)
    loud = [line for line in node.log().splitlines() if "IDENTITY LOST" in line]
    assert len(loud) == 1, node.tail()
    assert golden.node_id in loud[0]  # the old id, read from the damaged copy's first line
    assert "named scopes no longer name this node" in loud[0].lower()
    assert st["gossip"]["node"] != golden.node_id
    assert (state / "identity.pem.bad-1").exists() and (state / "identity.pem.copy.bad-1").exists()


def test_rows_are_all_exercised() -> None:
    """Every row whose bytes are read has a real-process case here."""
    covered = {c.row for c in CASES}
    read = {row.name for row in NODE_STATE_FILES if row.read}
    assert read <= covered, read - covered
