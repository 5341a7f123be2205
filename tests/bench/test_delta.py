"""The delta bench's measuring code (``scripts/bench/delta.py``) on small builds: the real
``p2pupdate release`` cut, and the bytes moved counted through the real chunk store.

The bench itself builds three self-contained slots (~230 MB each) and installs a wheel
(about a minute); here two code-only builds of this tree, one byte apart in one file.
"""

from __future__ import annotations

import io
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import zstandard

from p2pupdate.cli.commands import main as cli
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.daemon.chunkstore import ChunkStore
from p2pupdate.launcher.artifact import build_tar
from scripts.bench.delta import fixed_ratio, release, update
from tests.launcher.harness import REPO


def test_an_update_moves_only_the_chunks_the_store_lacks(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(
        REPO / "p2pupdate",
        tree / "p2pupdate",
        ignore=shutil.ignore_patterns("*.pyc", "__pycache__"),
    )
    v1 = tmp_path / "v1.tar"
    v1.write_bytes(build_tar(tree, "v1"))
    gates = tree / "p2pupdate" / "core" / "gates.py"
    gates.write_text(gates.read_text() + "# v2\n")
    v2 = tmp_path / "v2.tar"
    v2.write_bytes(build_tar(tree, "v2"))
    key = tmp_path / "k.pem"
    with redirect_stdout(io.StringIO()):
        assert cli(["keys", "new", "-o", str(key)]) == 0
    r1, r2 = release(v1, key, 1), release(v2, key, 2)
    assert r1.sizes and r2.sizes  # content-defined
    m1, m2 = ChunkMap.of_release(r1), ChunkMap.of_release(r2)
    zstd = zstandard.ZstdCompressor(level=3)
    store = ChunkStore(tmp_path / "store")
    first = update(store, m1, v1, zstd)
    assert first.chunks == m1.count and first.raw == m1.length and 0 < first.zstd < first.raw
    code = update(store, m2, v2, zstd)
    assert store.path(m2.artifact).read_bytes() == v2.read_bytes()
    assert 0 < code.chunks < m2.count // 2
    assert store.reused_chunks == m2.count - code.chunks
    assert code.raw + store.reused_bytes == m2.length
    assert 0 < fixed_ratio(v1.read_bytes(), v2.read_bytes()) <= 1
