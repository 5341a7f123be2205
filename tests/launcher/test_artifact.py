"""Artifacts of ourselves: reproducible builds, and an unpack that trusts nothing.

Every hostile archive is built by hand with ``tarfile`` (as an attacker would), then
``unpack_into`` / ``StateDir.stage_slot`` must refuse it with ``ArtifactError`` and leave
nothing behind -- no file outside the target, no half slot under its final name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pupdate.launcher.artifact import (
    ArtifactError,
    BuildError,
    UnpackLimits,
    build_artifact,
    gunzip_limited,
    read_artifact,
    read_version,
    sha256_hex,
    unpack_into,
)
from p2pupdate.launcher.state import SLOT_FILE, StateDir

from .harness import REPO

SCRIPT = REPO / "scripts" / "build-artifact"


# -- building -------------------------------------------------------------------------------


def test_build_is_reproducible_and_rewrites_the_version() -> None:
    a = build_artifact(REPO, "v1")
    assert build_artifact(REPO, "v1") == a  # same tree + version -> same bytes, same sha256
    b = build_artifact(REPO, "v2")
    assert sha256_hex(a) != sha256_hex(b)
    tar = tarfile.open(fileobj=io.BytesIO(a), mode="r:gz")  # noqa: SIM115 - in memory
    names = tar.getnames()
    assert names == sorted(names)
    assert {n.split("/")[0] for n in names} == {"p2pupdate", "coordinator"}
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    for m in tar.getmembers():
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.isdir() or m.isreg()
    version_file = tar.extractfile("p2pupdate/_version.py")
    assert version_file is not None
    assert version_file.read() == b'__version__ = "v1"\n'
    assert a[4:8] == b"\0\0\0\0"  # gzip header: no mtime


def test_build_refuses_bad_versions_and_links(tmp_path: Path) -> None:
    for bad in ("", "has space", "x" * 65, "-leading", 'quote"'):
        with pytest.raises(BuildError):
            build_artifact(REPO, bad)
    with pytest.raises(BuildError, match=r"p2pupdate/__init__\.py"):
        build_artifact(tmp_path, "v1")
    (tmp_path / "p2pupdate").mkdir()
    (tmp_path / "p2pupdate" / "__init__.py").write_text("")
    (tmp_path / "p2pupdate" / "evil").symlink_to("/etc/passwd")
    with pytest.raises(BuildError, match="not a regular file"):
        build_artifact(tmp_path, "v1")


def test_build_artifact_script(tmp_path: Path) -> None:
    out = tmp_path / "v7.tar.gz"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--version", "v7", "-o", str(out), "--code-only"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data == build_artifact(REPO, "v7")
    assert r.stdout.startswith(sha256_hex(data))
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), "--version", "no good", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


# -- hostile archives -------------------------------------------------------------------------


def _tar(add: Callable[[tarfile.TarFile], None], *, with_init: bool = True) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if with_init:
            _file(tar, "p2pupdate/__init__.py", b"")
        add(tar)
    return gzip.compress(raw.getvalue(), mtime=0)


def _file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def _special(tar: tarfile.TarFile, name: str, type_: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    tar.addfile(info)


HOSTILE: dict[str, tuple[Callable[[tarfile.TarFile], None], str]] = {
    "absolute": (lambda t: _file(t, "/tmp/p2p-evil", b"x"), "absolute"),
    "dotdot": (lambda t: _file(t, "p2pupdate/../../evil", b"x"), r"'\.\.'"),
    "dot": (lambda t: _file(t, "p2pupdate/./x.py", b"x"), r"'\.'"),
    "empty-part": (lambda t: _file(t, "p2pupdate//x.py", b"x"), "empty"),
    "backslash": (lambda t: _file(t, "p2pupdate\\..\\evil", b"x"), "backslash"),
    "outside-packages": (lambda t: _file(t, "setup.py", b"x"), "outside"),
    "symlink": (lambda t: _special(t, "p2pupdate/x", tarfile.SYMTYPE, "/etc/passwd"), "only"),
    "symlink-inside": (
        lambda t: _special(t, "p2pupdate/x", tarfile.SYMTYPE, "__init__.py"),
        "only",
    ),
    "hardlink": (lambda t: _special(t, "p2pupdate/x", tarfile.LNKTYPE, "/etc/passwd"), "only"),
    "chardev": (lambda t: _special(t, "p2pupdate/null", tarfile.CHRTYPE), "only"),
    "blockdev": (lambda t: _special(t, "p2pupdate/sda", tarfile.BLKTYPE), "only"),
    "fifo": (lambda t: _special(t, "p2pupdate/fifo", tarfile.FIFOTYPE), "only"),
    "duplicate": (
        lambda t: (_file(t, "p2pupdate/a.py", b"1"), _file(t, "p2pupdate/a.py", b"2")),
        "twice",
    ),
    "file-then-dir": (
        lambda t: (_file(t, "p2pupdate/a", b"1"), _file(t, "p2pupdate/a/b.py", b"2")),
        "conflicts",
    ),
    "too-deep": (lambda t: _file(t, "p2pupdate/" + "d/" * 40 + "x.py", b"x"), "deeper"),
    "long-name": (lambda t: _file(t, "p2pupdate/" + "n" * 600, b"x"), "longer"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_entries_are_refused(case: str, tmp_path: Path) -> None:
    add, message = HOSTILE[case]
    data = _tar(add)
    dest = tmp_path / "slot"
    dest.mkdir()
    with pytest.raises(ArtifactError, match=message):
        unpack_into(data, dest)
    assert not Path("/tmp/p2p-evil").exists()
    assert not (tmp_path / "evil").exists()
    # ...and through the slot staging, nothing is left under any name
    state = StateDir(tmp_path / "state")
    sha = sha256_hex(data)
    with pytest.raises(ArtifactError):
        state.stage_slot(data, sha, counter=1)
    assert list(state.slots.iterdir()) == []


LIMITS = UnpackLimits(
    max_artifact_bytes=1 << 20,
    max_total_bytes=64 * 1024,
    max_file_bytes=16 * 1024,
    max_entries=20,
)


def test_size_and_count_caps(tmp_path: Path) -> None:
    def unpack(data: bytes) -> None:
        d = tmp_path / f"u{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        unpack_into(data, d, limits=LIMITS)

    unpack(_tar(lambda t: _file(t, "p2pupdate/ok.py", b"x" * 16 * 1024)))  # at the cap: fine
    with pytest.raises(ArtifactError, match="per-file cap"):
        unpack(_tar(lambda t: _file(t, "p2pupdate/big.py", b"x" * (16 * 1024 + 1))))
    with pytest.raises(ArtifactError, match="unpacked size"):
        unpack(_tar(lambda t: [_file(t, f"p2pupdate/f{i}.py", b"x" * 15_000) for i in range(5)]))
    with pytest.raises(ArtifactError, match="more than 20 entries"):
        unpack(_tar(lambda t: [_file(t, f"p2pupdate/f{i}.py", b"") for i in range(25)]))


def test_gzip_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(b"\0" * (8 << 20), mtime=0)  # 8 MiB of zeros in ~8 KiB
    assert len(bomb) < 64 * 1024
    with pytest.raises(ArtifactError, match="more than"):
        gunzip_limited(bomb, 1 << 20)
    assert gunzip_limited(gzip.compress(b"abc"), 3) == b"abc"


def test_not_gzip_truncated_trailing(tmp_path: Path) -> None:
    good = _tar(lambda t: None)
    for data, message in (
        (b"not gzip at all", "not a gzip"),
        (good[: len(good) // 2], "truncated"),
        (good + b"trailing", "after the gzip"),
        (good + good, "after the gzip"),
        (gzip.compress(b"this is no tar archive" * 50), "tar"),
    ):
        d = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        with pytest.raises(ArtifactError, match=message):
            unpack_into(data, d)


def test_missing_package_and_nonempty_target(tmp_path: Path) -> None:
    d = tmp_path / "a"
    d.mkdir()
    with pytest.raises(ArtifactError, match=r"no p2pupdate/__init__\.py"):
        unpack_into(_tar(lambda t: _file(t, "coordinator/x.py", b""), with_init=False), d)
    (d / "junk").write_text("")
    with pytest.raises(ArtifactError, match="not empty"):
        unpack_into(_tar(lambda t: None), d)


def test_sha256_is_checked_before_the_archive_is_opened(tmp_path: Path) -> None:
    data = build_artifact(REPO, "v1")
    path = tmp_path / "a.tar.gz"
    path.write_bytes(data)
    assert read_artifact(path, sha256_hex(data)) == data
    with pytest.raises(ArtifactError, match="sha256"):
        read_artifact(path, "0" * 64)
    state = StateDir(tmp_path / "state")
    with pytest.raises(ArtifactError, match="sha256"):
        state.stage_slot(data, hashlib.sha256(b"other").hexdigest(), counter=1)
    with pytest.raises(ArtifactError, match="too large"):
        read_artifact(path, sha256_hex(data), UnpackLimits(max_artifact_bytes=1000))


def test_stage_slot_makes_a_complete_slot_once(tmp_path: Path) -> None:
    data = build_artifact(REPO, "v5")
    sha = sha256_hex(data)
    state = StateDir(tmp_path / "state")
    m = state.stage_slot(data, sha, counter=5)
    assert (m.artifact, m.version, m.counter) == (sha, "v5", 5)
    slot = state.slot_dir(sha)
    assert (slot / SLOT_FILE).is_file()
    assert read_version(slot / "p2pupdate") == "v5"
    assert state.slot_manifest(sha) == m
    mode = os.stat(slot / "p2pupdate" / "__init__.py").st_mode & 0o777
    assert mode == 0o644
    # idempotent: a second staging keeps the complete slot
    assert state.stage_slot(data, sha, counter=5) == m
    assert [p.name for p in state.slots.iterdir()] == [sha]
    # a directory under the final name without a manifest is not a slot, and is replaced
    other = build_artifact(REPO, "v6")
    fake = state.slot_dir(sha256_hex(other))
    fake.mkdir()
    (fake / "junk").write_text("half")
    assert state.slot_manifest(sha256_hex(other)) is None
    state.stage_slot(other, sha256_hex(other), counter=6)
    assert state.slot_manifest(sha256_hex(other)) is not None
    assert not (fake / "junk").exists()
