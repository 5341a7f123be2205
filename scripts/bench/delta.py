"""What an update would move with content-defined chunks (P12); prints one JSON object.

    .venv/bin/python scripts/bench/delta.py --json [--dep wsproto==1.2.0] [--file PATH] [--level 9]

Builds three self-contained slots (``build_tar`` with ``Deps.collect``, the same code as
``scripts/build-artifact --self-contained``):

* **v1**: this tree and the runtime dependencies installed for this python;
* **v2**: v1 with one source file changed (a line appended to ``--file``, default
  ``p2pupdate/core/gates.py``, in a copy of the tree) and the version string v2;
* **v3**: v2 with one dependency at another version (``--dep``, default ``wsproto==1.2.0``:
  ``pip install --target`` of that wheel from the package index -- the one step that needs
  the network -- put first on the search path).

Each *uncompressed* tar (entries sorted, so unchanged files stay in the same order) is cut
by ``p2pupdate.core.cdc.boundaries`` (FastCDC, 16/64/256 KiB), each chunk is compressed on
its own with zstd (``--level``) and named by the sha256 of its uncompressed bytes.  Then

* ``artifact_bytes``: the compressed bytes of all of v2's chunks (``dep_artifact_bytes``:
  v3's);
* ``code_change_bytes_moved``: the compressed bytes of v2's chunks whose hash v1 lacks;
  ``dep_change_bytes_moved``: the same for v3 against v2;
* ``*_ratio``: bytes moved / the new build's artifact bytes (targets: code <= 0.05,
  dep <= 0.35);
* ``fixed_*_ratio``: the fraction of the new build's bytes in fixed 256 KiB chunks of the
  same tars that the old build lacks (tar pads every file to 512 B, so a small edit often
  shifts nothing after it); ``gzip_fixed_*_ratio``: the same over the gzip artifacts, which
  is what today's release record chunks (an edit shifts the deflate stream after it);
* ``chunks``, ``avg_chunk_bytes`` (v1), ``cdc_mb_s`` (``boundaries`` over v1's tar),
  ``gzip_artifact_bytes`` (v1 as ``build_artifact`` writes it, for scale).

This measures what a content-addressed store would fetch: the release record, the node's
chunk store and the swarm still move today's fixed chunks of the gzip; wiring them to these
chunks is the next slice of P12.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zstandard

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from p2pupdate.core.cdc import DEFAULT_PARAMS, boundaries  # noqa: E402
from p2pupdate.launcher.artifact import Deps, build_tar, project_requirements  # noqa: E402

CHANGED_FILE = "p2pupdate/core/gates.py"
FIXED_CHUNK = 256 * 1024


def copy_tree(dest: Path) -> Path:
    """The packages and pyproject.toml of this repository, copied (bytecode left out)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for top in ("p2pupdate", "coordinator"):
        shutil.copytree(REPO / top, dest / top, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def install_dep(spec: str, target: Path) -> None:
    """``spec``'s wheel alone, installed into ``target`` (no deps, no bytecode)."""
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--target", str(target)),
            *("--no-deps", "--no-compile", "--only-binary", ":all:"),
            *("--disable-pip-version-check", spec),
        ],
        check=True,
    )


def chunk_hashes(tar: bytes, ends: tuple[int, ...]) -> list[tuple[str, bytes]]:
    out = []
    start = 0
    for end in ends:
        piece = tar[start:end]
        out.append((hashlib.sha256(piece).hexdigest(), piece))
        start = end
    return out


class Store:
    """Compressed size of each distinct chunk, compressed once (zstd, one frame each)."""

    def __init__(self, level: int) -> None:
        self.zstd = zstandard.ZstdCompressor(level=level)
        self.size: dict[str, int] = {}

    def add(self, chunks: list[tuple[str, bytes]]) -> None:
        for digest, piece in chunks:
            if digest not in self.size:
                self.size[digest] = len(self.zstd.compress(piece))

    def total(self, chunks: list[tuple[str, bytes]]) -> int:
        return sum(self.size[d] for d, _ in chunks)

    def moved(self, old: list[tuple[str, bytes]], new: list[tuple[str, bytes]]) -> int:
        have = {d for d, _ in old}
        fetched = {d for d, _ in new if d not in have}  # a chunk twice in new is fetched once
        return sum(self.size[d] for d in fetched)


def fixed_ratio(old: bytes, new: bytes) -> float:
    """Fraction of ``new``'s bytes in fixed 256 KiB chunks that ``old`` lacks."""

    def cut(b: bytes) -> list[bytes]:
        return [b[i : i + FIXED_CHUNK] for i in range(0, len(b), FIXED_CHUNK)]

    have = {hashlib.sha256(c).digest() for c in cut(old)}
    fresh = sum(len(c) for c in cut(new) if hashlib.sha256(c).digest() not in have)
    return fresh / len(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    ap.add_argument("--dep", default="wsproto==1.2.0", help="the dependency v3 changes, pinned")
    ap.add_argument("--level", type=int, default=9, help="zstd level of each chunk")
    ap.add_argument(
        "--file",
        default=CHANGED_FILE,
        help="the source file v2 changes (coordinator/... sorts first in the tar, which is "
        "the worst case for fixed-size chunks)",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="delta-") as tmp_name:
        tmp = Path(tmp_name)
        tree = copy_tree(tmp / "tree")
        reqs = project_requirements(tree)
        deps = Deps.collect(reqs)
        tar1 = build_tar(tree, "v1", deps=deps)
        gz1 = gzip.compress(tar1, compresslevel=6, mtime=0)  # as build_artifact writes it

        start = time.perf_counter()
        ends1 = boundaries(tar1, DEFAULT_PARAMS)
        cdc_s = time.perf_counter() - start

        changed = tree / args.file
        if not changed.is_file() or args.file.split("/")[0] not in ("p2pupdate", "coordinator"):
            raise SystemExit(f"delta: {args.file}: not a file of p2pupdate/ or coordinator/")
        changed.write_text(changed.read_text() + "# v2: one source line changed\n")
        tar2 = build_tar(tree, "v2", deps=deps)

        site = tmp / "site"
        install_dep(args.dep, site)
        deps3 = Deps.collect(reqs, search_path=[str(site), *sys.path])
        name = args.dep.split("==")[0].lower()
        before = {d.name: d.version for d in deps.dists}.get(name)
        after = {d.name: d.version for d in deps3.dists}.get(name)
        if before is None or before == after:
            raise SystemExit(f"delta: {args.dep} is not a dependency at another version")
        tar3 = build_tar(tree, "v2", deps=deps3)
        gz2 = gzip.compress(tar2, compresslevel=6, mtime=0)
        gz3 = gzip.compress(tar3, compresslevel=6, mtime=0)

        store = Store(args.level)
        c1 = chunk_hashes(tar1, ends1)
        c2 = chunk_hashes(tar2, boundaries(tar2, DEFAULT_PARAMS))
        c3 = chunk_hashes(tar3, boundaries(tar3, DEFAULT_PARAMS))
        for c in (c1, c2, c3):
            store.add(c)
        artifact2, artifact3 = store.total(c2), store.total(c3)
        code_moved, dep_moved = store.moved(c1, c2), store.moved(c2, c3)
        result: dict[str, Any] = {
            "artifact_bytes": artifact2,
            "dep_artifact_bytes": artifact3,
            "code_change_bytes_moved": code_moved,
            "dep_change_bytes_moved": dep_moved,
            "code_change_ratio": round(code_moved / artifact2, 5),
            "dep_change_ratio": round(dep_moved / artifact3, 5),
            "fixed_code_change_ratio": round(fixed_ratio(tar1, tar2), 5),
            "fixed_dep_change_ratio": round(fixed_ratio(tar2, tar3), 5),
            "code_change_chunks_moved": len({d for d, _ in c2} - {d for d, _ in c1}),
            "dep_change_chunks_moved": len({d for d, _ in c3} - {d for d, _ in c2}),
            "chunks": len(c1),
            "avg_chunk_bytes": round(len(tar1) / len(c1)),
            "tar_bytes": len(tar1),
            "gzip_fixed_code_change_ratio": round(fixed_ratio(gz1, gz2), 5),
            "gzip_fixed_dep_change_ratio": round(fixed_ratio(gz2, gz3), 5),
            "gzip_artifact_bytes": len(gz1),
            "cdc_mb_s": round(len(tar1) / cdc_s / 1e6, 1),
            "changed_file": args.file,
            "changed_dep": f"{name} {before} -> {after}",
            "dependencies": len(deps.dists),
            "platform": deps.platform,
            "zstd_level": args.level,
            "cdc": {
                "min": DEFAULT_PARAMS.min_size,
                "avg": DEFAULT_PARAMS.avg_size,
                "max": DEFAULT_PARAMS.max_size,
            },
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
