"""What an update moves with content-defined chunks (P12), through the real chunk store;
prints one JSON object.

    .venv/bin/python scripts/bench/delta.py --json [--dep wsproto==1.2.0] [--file PATH] [--level 3]

Builds three self-contained slots as plain tars (``build_tar`` with ``Deps.collect``: what
``scripts/build-artifact --self-contained -o vN.tar`` writes):

* **v1**: this tree and the runtime dependencies installed for this python;
* **v2**: v1 with one source file changed (a line appended to ``--file``, default
  ``p2pupdate/core/gates.py``, in a copy of the tree) and the version string v2;
* **v3**: v2 with one dependency at another version (``--dep``, default ``wsproto==1.2.0``:
  ``pip install --target`` of that wheel from the package index -- the one step that needs
  the network -- put first on the search path).

Each is released with the real CLI code (``p2pupdate release``: a plain tar is cut into
content-defined chunks, ``core.cdc``, 16/64/256 KiB, and the signed record lists their
sizes and sha256s).  Then the bytes an update moves are counted *through the node's real
chunk store* (``daemon.chunkstore.ChunkStore``): the store holds v1 complete; opening v2's
download copies every chunk a held artifact has (re-checked against v2's digest); what
it still lacks is "fetched" (``put_chunk``, which also fills a chunk listed twice, so such
a chunk is moved once); then v2 -> v3 the same way, v1 and v2 held.

**Raw or compressed.**  A chunk travels compressed on its own (issue P12: zstd, each chunk
its own frame), so "moved" is given both ways: ``*_bytes_moved`` is the sum of each fetched
chunk compressed alone with zstandard (``--level``, 3 by default), ``*_raw_bytes_moved`` the
uncompressed sum.  ``artifact_bytes`` is the *raw* length of the new build's tar (v2's;
``dep_artifact_bytes``: v3's), and ``*_ratio`` = compressed bytes moved / raw artifact
bytes (targets: code <= 0.05, dep <= 0.35); ``*_raw_ratio`` = raw moved / raw artifact;
``*_ratio_of_compressed`` = compressed moved / the whole new build compressed chunk by
chunk (``artifact_zstd_bytes``), the strictest reading.

Also: ``fixed_*_ratio``, the fraction of the new build's bytes in fixed 256 KiB chunks of
the same tars that the old build lacks (tar pads every file to 512 B, so a small edit often
shifts nothing after it); ``gzip_fixed_*_ratio``, the same over gzip artifacts (an edit
shifts the deflate stream after it); ``chunks``, ``avg_chunk_bytes`` (v1),
``reused_chunks`` / ``reused_bytes`` (the store's counters after both updates),
``release_seconds`` (the CLI's cut and hash of v1), ``gzip_artifact_bytes`` (v1 gzipped).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import zstandard

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from p2pupdate.cli.commands import main as cli  # noqa: E402
from p2pupdate.core.cdc import DEFAULT_PARAMS  # noqa: E402
from p2pupdate.core.crypto import Envelope  # noqa: E402
from p2pupdate.core.documents import Release  # noqa: E402
from p2pupdate.core.swarm.chunks import ChunkMap  # noqa: E402
from p2pupdate.daemon.chunkstore import ChunkStore  # noqa: E402
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


def release(tar: Path, key: Path, counter: int) -> Release:
    """``p2pupdate release`` of ``tar`` (its real code, in process), the record read back."""
    out = tar.with_suffix(".release")
    args = ["release", str(tar), "--key", str(key), "--counter", str(counter)]
    with redirect_stdout(io.StringIO()):
        code = cli([*args, "--name", tar.stem, "-o", str(out)])
    if code != 0:
        raise SystemExit(f"delta: p2pupdate release {tar.name} failed ({code})")
    rel: Release = Release.from_payload(Envelope.from_wire(out.read_bytes()).payload)
    if not rel.sizes:
        raise SystemExit(f"delta: {tar.name} was not cut into content-defined chunks")
    return rel


class Moved:
    """What one update fetched: chunks, raw bytes, bytes compressed chunk by chunk."""

    def __init__(self) -> None:
        self.chunks = self.raw = self.zstd = 0


def update(store: ChunkStore, cmap: ChunkMap, tar: Path, zstd: zstandard.ZstdCompressor) -> Moved:
    """Open ``cmap``'s download in ``store`` (which copies what held artifacts have), then
    fetch -- from ``tar``, standing in for the peers -- each chunk it still lacks."""
    moved = Moved()
    store.open(cmap)
    with tar.open("rb") as f:
        for i in store.missing(cmap.artifact):
            if i in store.have(cmap.artifact):
                continue  # a chunk listed twice: filled by the put of its first position
            c = cmap.chunks[i]
            f.seek(c.offset)
            data = f.read(c.length)
            if not store.put_chunk(cmap.artifact, i, data, durable=False):
                raise SystemExit(f"delta: chunk {i} of {tar.name} does not verify")
            moved.chunks += 1
            moved.raw += len(data)
            moved.zstd += len(zstd.compress(data))
    store.sync(cmap.artifact)
    if not store.complete(cmap.artifact):
        raise SystemExit(f"delta: {tar.name} did not complete in the store")
    return moved


def zstd_total(tar: Path, cmap: ChunkMap, zstd: zstandard.ZstdCompressor) -> int:
    """The whole artifact compressed chunk by chunk (what a node with nothing would fetch)."""
    total = 0
    with tar.open("rb") as f:
        for c in cmap.chunks:
            f.seek(c.offset)
            total += len(zstd.compress(f.read(c.length)))
    return total


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
    ap.add_argument("--level", type=int, default=3, help="zstd level of each chunk")
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
        tar3 = build_tar(tree, "v3", deps=deps3)

        fixed = {
            "fixed_code_change_ratio": round(fixed_ratio(tar1, tar2), 5),
            "fixed_dep_change_ratio": round(fixed_ratio(tar2, tar3), 5),
        }
        gz = [gzip.compress(t, compresslevel=6, mtime=0) for t in (tar1, tar2, tar3)]
        fixed["gzip_fixed_code_change_ratio"] = round(fixed_ratio(gz[0], gz[1]), 5)
        fixed["gzip_fixed_dep_change_ratio"] = round(fixed_ratio(gz[1], gz[2]), 5)
        gzip_bytes = len(gz[0])
        paths = []
        for n, data in enumerate((tar1, tar2, tar3), 1):
            paths.append(tmp / f"v{n}.tar")
            paths[-1].write_bytes(data)
        del tar1, tar2, tar3, gz

        key = tmp / "release.pem"
        with redirect_stdout(io.StringIO()):
            cli(["keys", "new", "-o", str(key)])
        started = time.perf_counter()
        rel1 = release(paths[0], key, 1)
        release_s = time.perf_counter() - started
        rel2, rel3 = release(paths[1], key, 2), release(paths[2], key, 3)
        m1, m2, m3 = (ChunkMap.of_release(r) for r in (rel1, rel2, rel3))

        zstd = zstandard.ZstdCompressor(level=args.level)
        store = ChunkStore(tmp / "store")
        update(store, m1, paths[0], zstd)  # a node that holds v1 (fetched whole)
        store.reused_chunks = store.reused_bytes = 0
        code = update(store, m2, paths[1], zstd)
        dep = update(store, m3, paths[2], zstd)
        for m, path in ((m2, paths[1]), (m3, paths[2])):
            if store.path(m.artifact).read_bytes() != path.read_bytes():
                raise SystemExit(f"delta: the store's {path.name} is not the build")
        zstd2, zstd3 = zstd_total(paths[1], m2, zstd), zstd_total(paths[2], m3, zstd)
        artifact2, artifact3 = rel2.length, rel3.length
        result: dict[str, Any] = {
            "artifact_bytes": artifact2,
            "dep_artifact_bytes": artifact3,
            "code_change_bytes_moved": code.zstd,
            "dep_change_bytes_moved": dep.zstd,
            "code_change_ratio": round(code.zstd / artifact2, 5),
            "dep_change_ratio": round(dep.zstd / artifact3, 5),
            "moved_is": f"zstd level {args.level}, each chunk compressed on its own",
            "code_change_raw_bytes_moved": code.raw,
            "dep_change_raw_bytes_moved": dep.raw,
            "code_change_raw_ratio": round(code.raw / artifact2, 5),
            "dep_change_raw_ratio": round(dep.raw / artifact3, 5),
            "artifact_zstd_bytes": zstd2,
            "dep_artifact_zstd_bytes": zstd3,
            "code_change_ratio_of_compressed": round(code.zstd / zstd2, 5),
            "dep_change_ratio_of_compressed": round(dep.zstd / zstd3, 5),
            "code_change_chunks_moved": code.chunks,
            "dep_change_chunks_moved": dep.chunks,
            "reused_chunks": store.reused_chunks,
            "reused_bytes": store.reused_bytes,
            **fixed,
            "chunks": m1.count,
            "avg_chunk_bytes": round(m1.length / m1.count),
            "tar_bytes": m1.length,
            "gzip_artifact_bytes": gzip_bytes,
            "release_seconds": round(release_s, 2),
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
