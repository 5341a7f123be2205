"""``p2pupdate release`` on a plain tar cuts content-defined chunks (P12), and the launcher
reads a plain tar as it reads a gzip one (told by magic, not by name).

A self-contained build of a few small dependencies is enough: the cut, the record's
``sizes``, the platform read from the plain tar's ``deps/SLOT.json``, ``--fixed-chunks``,
a ``.tar.gz`` cut as before, and a plain-tar slot unpacked under the same caps.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from p2pupdate.cli import commands
from p2pupdate.cli.commands import hash_file_cdc, main
from p2pupdate.core import cdc
from p2pupdate.core.crypto import Envelope
from p2pupdate.core.documents import Release
from p2pupdate.core.origin import check_artifact
from p2pupdate.launcher.artifact import (
    SELF_CONTAINED_LIMITS,
    SLOT_TOPS,
    ArtifactError,
    Deps,
    build_artifact,
    build_tar,
    read_artifact,
    sha256_hex,
    tar_cap,
    unpack_into,
)
from tests.launcher.harness import REPO


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, small_deps: Deps) -> Path:
    path = tmp_path_factory.mktemp("build") / "v2.tar"
    path.write_bytes(build_tar(REPO, "v2", deps=small_deps))
    return path


def _release(tmp: Path, key: Path, artifact: Path, *extra: str) -> Release:
    out = tmp / "release.msgpack"
    args = ["release", str(artifact), "--key", str(key), "--counter", "2", "--name", "v2"]
    assert main([*args, *extra, "-o", str(out)]) == 0
    doc: Release = Release.from_payload(Envelope.from_wire(out.read_bytes()).payload)
    return doc


def test_a_plain_tar_is_released_in_content_defined_chunks(
    tmp_path: Path, key: Path, plain: Path, small_deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = plain.read_bytes()
    rel = _release(tmp_path, key, plain)
    assert rel.artifact == hashlib.sha256(data).hexdigest()  # over the plain tar itself
    assert rel.platform == small_deps.platform != ""
    ends = cdc.boundaries(data)
    assert rel.sizes == tuple(b - a for a, b in zip((0, *ends[:-1]), ends, strict=True))
    assert rel.chunks == tuple(hashlib.sha256(c).digest() for c in cdc.split(data))
    assert rel.chunk_size == cdc.DEFAULT_PARAMS.avg_size
    assert check_artifact(data, rel, len(data)) == ""
    # the streamed cut is the whole-file cut, whatever the read block
    for block in (600_000, 1_000_003):
        monkeypatch.setattr(commands, "CDC_READ_BLOCK", block)
        assert hash_file_cdc(plain) == (rel.artifact, rel.length, rel.chunks, rel.sizes)


@pytest.mark.parametrize("flag", [["--fixed-chunks"], ["--chunk-size", "4096"]])
def test_fixed_chunks_on_request(tmp_path: Path, key: Path, plain: Path, flag: list[str]) -> None:
    rel = _release(tmp_path, key, plain, *flag)
    assert rel.sizes == () and "sizes" not in rel.to_obj()
    assert check_artifact(plain.read_bytes(), rel, 1 << 30) == ""


def test_a_gzip_build_is_cut_in_fixed_chunks_as_before(
    tmp_path: Path, key: Path, small_deps: Deps
) -> None:
    gz = tmp_path / "v2.tar"  # the name says tar; the magic says gzip
    gz.write_bytes(build_artifact(REPO, "v2", deps=small_deps))
    rel = _release(tmp_path, key, gz)
    assert rel.sizes == () and rel.platform == small_deps.platform


def test_the_launcher_unpacks_a_plain_tar_under_the_same_caps(tmp_path: Path, plain: Path) -> None:
    data = plain.read_bytes()
    art = tmp_path / "store.tar.gz"  # the store's name for either kind
    art.write_bytes(data)
    got = read_artifact(art, sha256_hex(data), SELF_CONTAINED_LIMITS)
    slot = tmp_path / "slot"
    slot.mkdir()
    assert unpack_into(got, slot, limits=SELF_CONTAINED_LIMITS, allowed_top=SLOT_TOPS) > 0
    assert (slot / "p2pupdate" / "_version.py").read_text() == '__version__ = "v2"\n'
    assert (slot / "deps" / "SLOT.json").is_file()
    # a plain tar over the cap is refused before it is parsed
    small = SELF_CONTAINED_LIMITS._replace(
        max_total_bytes=len(data) // 4, max_artifact_bytes=1 << 30
    )
    other = tmp_path / "small"
    other.mkdir()
    with pytest.raises(ArtifactError, match="over the cap"):
        unpack_into(data, other, limits=small, allowed_top=SLOT_TOPS)
    # and the artifact cap lets a 512 MB tar through (it is the unpack cap)
    assert SELF_CONTAINED_LIMITS.max_artifact_bytes == tar_cap(SELF_CONTAINED_LIMITS)
    assert SELF_CONTAINED_LIMITS.max_artifact_bytes >= 512 * 1024 * 1024


def test_build_artifact_writes_a_plain_tar_for_a_tar_name(tmp_path: Path) -> None:
    out = tmp_path / "v3.tar"
    script = str(REPO / "scripts" / "build-artifact")
    done = subprocess.run(
        [sys.executable, script, "--version", "v3", "--code-only", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "plain tar" in done.stdout
    data = out.read_bytes()
    assert data[257:262] == b"ustar" and data == build_tar(REPO, "v3")
    gz = tmp_path / "v3.tar.gz"
    subprocess.run(
        [sys.executable, script, "--version", "v3", "--code-only", "-o", str(gz)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
