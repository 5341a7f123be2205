"""Self-contained builds (P12 part 1): our code plus every runtime dependency, reproducibly.

The dependencies come from the distributions installed in this test's own environment (no
network).  The fast tests build with two small dependencies; the slow ones build the whole
of pyproject's [project] dependencies (~200 MB unpacked) and run the code from the slot
alone.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from p2pupdate.launcher.artifact import (
    MANIFEST_FILE,
    SELF_CONTAINED_LIMITS,
    SLOT_TOPS,
    BuildError,
    Deps,
    build_artifact,
    build_tar,
    node_platforms,
    project_requirements,
    sha256_hex,
    slot_platform,
    unpack_into,
)

from .harness import REPO

SCRIPT = REPO / "scripts" / "build-artifact"
SMALL = ["h11>=0.14", "msgpack"]


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


def _manifest(data: bytes) -> dict[str, object]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        f = tar.extractfile(MANIFEST_FILE)
        assert f is not None
        doc: dict[str, object] = json.loads(f.read())
        return doc


def test_a_self_contained_build_is_reproducible_and_carries_its_dependencies() -> None:
    a = build_artifact(REPO, "v1", deps=Deps.collect(SMALL))
    b = build_artifact(REPO, "v1", deps=Deps.collect(SMALL))
    assert sha256_hex(a) == sha256_hex(b)
    names = _names(a)
    assert names == sorted(names)
    assert {n.split("/")[0] for n in names} == set(SLOT_TOPS)
    assert "deps/h11/__init__.py" in names and "deps/msgpack/__init__.py" in names
    assert any(n.startswith("deps/msgpack-") and n.endswith(".dist-info/METADATA") for n in names)
    assert not any(n.endswith((".pyc", "/RECORD", "/INSTALLER", "/direct_url.json")) for n in names)
    assert not any("__pycache__" in n for n in names)
    doc = _manifest(a)
    assert doc["version"] == "v1" and doc["format"] == 1
    assert doc["python"] == f"cp{sys.version_info.major}{sys.version_info.minor}"
    dists = {d["name"]: d for d in doc["dists"]}  # type: ignore[attr-defined]
    assert set(dists) == {"h11", "msgpack"}
    assert dists["h11"]["tags"] == ["py3-none-any"]
    # msgpack is a binary wheel: the slot needs this machine's kind of platform
    assert str(doc["platform"]).startswith(f"{doc['python']}-manylinux_")
    assert str(doc["platform"]).endswith(sysconfig.get_platform().split("-")[-1])


def test_the_code_alone_build_is_unchanged_by_the_option() -> None:
    """Without deps the tar holds p2pupdate/ and coordinator/ only, as before."""
    names = tarfile.open(fileobj=io.BytesIO(build_tar(REPO, "v1")), mode="r:").getnames()  # noqa: SIM115
    assert {n.split("/")[0] for n in names} == {"p2pupdate", "coordinator"}


def test_the_slot_runs_its_dependencies_from_itself(tmp_path: Path) -> None:
    """Unpacked with the self-contained caps, the slot's h11/msgpack are the ones imported
    by an isolated python (``-I -S``: no site-packages) whose sys.path is the slot."""
    data = build_artifact(REPO, "v1", deps=Deps.collect(SMALL))
    slot = tmp_path / "slot"
    slot.mkdir()
    unpack_into(data, slot, limits=SELF_CONTAINED_LIMITS, allowed_top=SLOT_TOPS)
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/deps'];"
        "import h11, msgpack; print(h11.__file__); print(msgpack.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(slot)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(slot / "deps") for p in out), out


def test_a_missing_or_unsatisfied_dependency_is_a_build_error() -> None:
    with pytest.raises(BuildError, match="not installed"):
        Deps.collect(["no-such-dist-p2pupdate-test"])
    with pytest.raises(BuildError, match="is required"):
        Deps.collect(["h11<0.1"])
    with pytest.raises(BuildError, match="requirement"):
        Deps.collect(["h11 >>> 1"])


def test_markers_leave_out_what_this_python_does_not_need() -> None:
    deps = Deps.collect(['h11; python_version < "3.0"', "msgpack"])
    assert [d.name for d in deps.dists] == ["msgpack"]


def test_search_path_first_wins(tmp_path: Path) -> None:
    """A directory put first on the search path overrides one dependency (how the delta
    bench builds "v2 with one dependency at another version")."""
    site = tmp_path / "site"
    info = site / "h11-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "h11").mkdir()
    (site / "h11" / "__init__.py").write_text("# an older h11\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: h11\nVersion: 0.1\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nTag: py3-none-any\n")
    (info / "RECORD").write_text("h11/__init__.py,,\nh11-0.1.dist-info/METADATA,,\n")
    deps = Deps.collect(["h11"], search_path=[str(site), *sys.path])
    assert [(d.name, d.version) for d in deps.dists] == [("h11", "0.1")]
    assert deps.files["deps/h11/__init__.py"] == (b"# an older h11\n", 0o644)
    assert deps.platform.endswith("-any")


@pytest.mark.parametrize(
    ("tags", "platform"),
    [
        ([("py3-none-any",)], "cp311-any"),
        (
            [("cp311-cp311-manylinux_2_27_x86_64", "cp311-cp311-manylinux_2_28_x86_64")],
            "cp311-manylinux_2_27_x86_64",
        ),
        (
            [("cp311-abi3-manylinux_2_28_x86_64",), ("cp311-abi3-manylinux_2_34_x86_64",)],
            "cp311-manylinux_2_34_x86_64",
        ),
        (
            [("cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64",), ("py3-none-any",)],
            "cp311-manylinux_2_17_x86_64",
        ),
        ([("cp311-cp311-linux_x86_64",)], "cp311-linux_x86_64"),
        (
            [("cp311-cp311-manylinux_2_17_aarch64",), ("cp311-cp311-manylinux_2_17_x86_64",)],
            "cp311-manylinux_2_17_aarch64+manylinux_2_17_x86_64",
        ),
    ],
)
def test_slot_platform(tags: list[tuple[str, ...]], platform: str) -> None:
    assert slot_platform("cp311", tags) == platform


@pytest.mark.slow
def test_the_full_self_contained_build_is_reproducible(tmp_path: Path) -> None:
    """scripts/build-artifact twice, by default and with --self-contained (the same
    build): the same sha256 (~10 s each)."""
    outs = []
    for i, flags in ((1, []), (2, ["--self-contained"])):
        out = tmp_path / f"v1-{i}.tar.gz"
        r = subprocess.run(
            [sys.executable, str(SCRIPT), "--version", "v1", "-o", str(out), *flags],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        assert "self-contained: " in r.stdout and "platform cp3" in r.stdout
        outs.append(out.read_bytes())
    assert sha256_hex(outs[0]) == sha256_hex(outs[1])
    carried = {d["name"] for d in _manifest(outs[0])["dists"]}  # type: ignore[attr-defined]
    wanted = {canonicalize_name(Requirement(r).name) for r in project_requirements(REPO)}
    assert wanted <= carried, wanted - carried


@pytest.mark.slow
def test_the_code_runs_from_the_slot_alone(tmp_path: Path) -> None:
    """Every module of p2pupdate and coordinator, imported by ``python -I -S -P`` with
    ``sys.path`` = the slot (+ slot/deps) and the standard library: no module comes from
    anywhere else (this venv's site-packages, the repository)."""
    data = build_artifact(REPO, "v1", deps=Deps.collect(project_requirements(REPO)))
    slot = tmp_path / "slot"
    slot.mkdir()
    unpack_into(data, slot, limits=SELF_CONTAINED_LIMITS, allowed_top=SLOT_TOPS)
    stdlib = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]]
    code = f"""
import importlib, json, pkgutil, sys
slot = sys.argv[1]
sys.path[:0] = [slot, slot + "/deps"]
failed = {{}}
for top in ("p2pupdate", "coordinator"):
    pkg = importlib.import_module(top)
    for m in pkgutil.walk_packages(pkg.__path__, top + "."):
        if m.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(m.name)
        except Exception as exc:
            failed[m.name] = repr(exc)
allowed = (slot + "/", *(p + "/" for p in {stdlib!r}))
outside = sorted(
    f"{{name}}: {{f}}" for name, mod in list(sys.modules.items())
    if (f := getattr(mod, "__file__", None)) and not f.startswith(allowed)
)
print(json.dumps({{"outside": outside, "failed": failed, "count": len(sys.modules)}}))
"""
    r = subprocess.run(
        [sys.executable, "-I", "-S", "-P", "-c", code, str(slot)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert result["outside"] == []
    assert result["failed"] == {}
    assert result["count"] > 300


def test_this_node_can_run_what_this_machine_builds() -> None:
    """The platform a build records is among the tags the same interpreter says it runs
    (what gate 1 checks on a node), and another platform is not."""
    from p2pupdate.core.gates import platform_supported

    supported = node_platforms()
    built = Deps.collect(SMALL).platform
    assert platform_supported(built, supported), (built, sorted(supported)[:5])
    assert platform_supported(f"cp{sys.version_info.major}{sys.version_info.minor}-any", supported)
    assert not platform_supported("cp311-macosx_11_0_arm64", supported)
    assert not platform_supported("cp27-manylinux_2_17_x86_64", supported)
    assert not platform_supported(built.replace("manylinux_2_", "manylinux_9_"), supported)
