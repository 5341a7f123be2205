"""``p2pupdate release`` names the platform a self-contained build needs (P12): read from
the artifact's ``deps/SLOT.json`` (streamed, under the unpacking caps), overridden by
``--platform TAG`` or ``--platform none``; a build of our code alone, or a file that is not
a build, gets none (the record keeps its old bytes); a damaged build is a usage error."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from p2pupdate.cli.commands import main
from p2pupdate.core.crypto import Envelope
from p2pupdate.core.documents import Release
from p2pupdate.launcher.artifact import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    ArtifactError,
    Deps,
    UnpackLimits,
    build_artifact,
    read_build_manifest,
)
from tests.launcher.harness import REPO


def _release(tmp: Path, key: Path, artifact: Path, *extra: str) -> tuple[int, Release | None]:
    out = tmp / "release.msgpack"
    args = ["release", str(artifact), "--key", str(key), "--counter", "2", "--name", "v2"]
    code = main([*args, *extra, "-o", str(out)])
    if code != 0:
        return code, None
    doc: Release = Release.from_payload(Envelope.from_wire(out.read_bytes()).payload)
    return code, doc


def _manifest(path: Path, limits: UnpackLimits | None = None) -> dict[str, object] | None:
    with path.open("rb") as f:
        return read_build_manifest(f) if limits is None else read_build_manifest(f, limits)


def _tar_gz(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def test_a_self_contained_build_records_its_platform(
    tmp_path: Path, key: Path, small_deps: Deps
) -> None:
    artifact = tmp_path / "v2.tar.gz"
    artifact.write_bytes(build_artifact(REPO, "v2", deps=small_deps))
    code, rel = _release(tmp_path, key, artifact)
    assert code == 0 and rel is not None
    assert rel.platform == small_deps.platform != ""
    manifest = _manifest(artifact)
    assert manifest is not None and manifest["platform"] == small_deps.platform

    code, rel = _release(tmp_path, key, artifact, "--platform", "none")
    assert code == 0 and rel is not None and rel.platform == ""
    code, rel = _release(tmp_path, key, artifact, "--platform", "cp311-manylinux_2_17_x86_64")
    assert code == 0 and rel is not None and rel.platform == "cp311-manylinux_2_17_x86_64"


def test_a_build_of_our_code_alone_or_another_file_records_none(tmp_path: Path, key: Path) -> None:
    plain = tmp_path / "plain.tar.gz"
    plain.write_bytes(build_artifact(REPO, "v2"))
    assert _manifest(plain) is None
    code, rel = _release(tmp_path, key, plain)
    assert code == 0 and rel is not None and rel.platform == ""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"not a build at all" * 100)
    code, rel = _release(tmp_path, key, blob)
    assert code == 0 and rel is not None and rel.platform == ""
    # any tarball may be released (the trust walk-through signs one with pyproject.toml
    # in it): one with an entry outside a build's tops is no build, and names no platform
    others = [_tar_gz({"pyproject.toml": b"x", MANIFEST_FILE: b"{}"}), _tar_gz({"../e": b"x"})]
    others += [b"\x1f\x8b" + b"garbage" * 50, gzip.compress(b"not a tar" * 200)]
    for data in others:
        other = tmp_path / "other.tar.gz"
        other.write_bytes(data)
        assert _manifest(other) is None
        code, rel = _release(tmp_path, key, other)
        assert code == 0 and rel is not None and rel.platform == ""


def test_a_bad_platform_flag_is_a_usage_error(tmp_path: Path, key: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"x" * 1000)
    code, rel = _release(tmp_path, key, blob, "--platform", "not a tag")
    assert code == 2 and rel is None
    assert not (tmp_path / "release.msgpack").exists()


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: _tar_gz({"p2pupdate/../evil": b"x"}), "'..'"),
        (lambda: _tar_gz({MANIFEST_FILE: b"{not json"}), "not JSON"),
        (lambda: _tar_gz({MANIFEST_FILE: json.dumps({"format": 2}).encode()}), "format 1"),
        (lambda: _tar_gz({MANIFEST_FILE: b'{"format": 1}'}), "no platform"),
        (lambda: _tar_gz({MANIFEST_FILE: b" " * (MAX_MANIFEST_BYTES + 1)}), "at most"),
    ],
    ids=["dotdot", "json", "format", "no-platform", "oversize"],
)
def test_a_damaged_build_is_a_typed_error_and_signs_nothing(
    tmp_path: Path, key: Path, make: object, error: str
) -> None:
    artifact = tmp_path / "bad.tar.gz"
    artifact.write_bytes(make())  # type: ignore[operator]
    with pytest.raises(ArtifactError, match=error):
        _manifest(artifact)
    code, rel = _release(tmp_path, key, artifact)
    assert code == 2 and rel is None
    assert not (tmp_path / "release.msgpack").exists()


def test_the_manifest_reader_keeps_to_its_caps(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(_tar_gz({"p2pupdate/big": b"\0" * (4 << 20)}))
    with pytest.raises(ArtifactError, match="decompresses to more than"):
        _manifest(bomb, UnpackLimits(max_total_bytes=1 << 20, max_entries=10))
    with pytest.raises(ArtifactError, match="over the artifact cap"):
        _manifest(bomb, UnpackLimits(max_artifact_bytes=100))
    many = tmp_path / "many.tar.gz"
    many.write_bytes(_tar_gz({f"p2pupdate/f{i}": b"" for i in range(20)}))
    with pytest.raises(ArtifactError, match="more than 10 entries"):
        _manifest(many, UnpackLimits(max_entries=10))
