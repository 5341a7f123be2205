"""A self-contained slot (P12) runs from itself: the launcher stages it -- deps/ and all --
and starts the real daemon with ``python -I -S`` and ``sys.path`` = the slot, ``slot/deps``
and the standard library.  The daemon reports, as it exits, where every module it imported
came from (``P2PUPDATE_TEST_MODULES``): nothing from the launcher's virtualenv or from this
checkout, though the launcher itself runs with this checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sysconfig
from pathlib import Path

import pytest

from p2pupdate.launcher.artifact import (
    DEPS_DIR,
    MANIFEST_FILE,
    Deps,
    build_artifact,
    project_requirements,
    sha256_hex,
)
from p2pupdate.launcher.codes import LAUNCHER_OK
from p2pupdate.launcher.faults import MODULES_ENV

from .harness import REPO, Build, Nodes, base_args, make_build, nodes, offer, read_links

__all__ = ["nodes"]  # the fixture, used by name


@pytest.fixture(scope="module")
def self_contained(tmp_path_factory: pytest.TempPathFactory) -> Build:
    data = build_artifact(REPO, "sc1", deps=Deps.collect(project_requirements(REPO)))
    path = tmp_path_factory.mktemp("builds") / "sc1.tar.gz"
    path.write_bytes(data)
    return Build(version="sc1", path=path, sha=sha256_hex(data), counter=1)


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@pytest.mark.slow
def test_the_daemon_of_a_self_contained_slot_imports_only_the_slot_and_stdlib(
    nodes: Nodes, tmp_path: Path, self_contained: Build
) -> None:
    dump = tmp_path / "modules.json"
    (tmp_path / "offers").mkdir()
    node = nodes.start(
        tmp_path / "state",
        base_args(self_contained, tmp_path / "offers"),
        extra_env={MODULES_ENV: str(dump)},
    )
    status = node.wait_running("sc1", timeout=120)
    assert read_links(node.state) == (self_contained.sha, None)
    slot = node.state.slot_dir(self_contained.sha)
    assert (slot / DEPS_DIR).is_dir() and (slot / MANIFEST_FILE).is_file()
    argv = _cmdline(status["pid"])
    assert argv[1:3] == ["-I", "-S"], argv[:6]  # isolated, no site: no venv site-packages
    assert argv[5] == str(slot)
    # the slot's FILES.json covers deps/ too (checked before each start)
    files = json.loads((slot / "FILES.json").read_text())["files"]
    assert MANIFEST_FILE in files and sum(name.startswith("deps/") for name in files) > 1000

    assert node.terminate(timeout=60) == LAUNCHER_OK
    modules: dict[str, str] = json.loads(dump.read_text())
    roots = [os.path.realpath(slot)] + [
        os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")
    ]
    outside = sorted(
        f"{name}: {f}"
        for name, f in modules.items()
        if not any(os.path.realpath(f).startswith(r + os.sep) for r in roots)
    )
    assert outside == []
    from_deps = {n for n, f in modules.items() if f.startswith(str(slot / DEPS_DIR) + os.sep)}
    assert {"trio", "msgpack", "nacl"} <= from_deps, sorted(from_deps)[:20]
    assert modules["p2pupdate"].startswith(str(slot) + os.sep)
    assert len(modules) > 300


@pytest.mark.slow
def test_a_slot_of_our_code_alone_still_runs_on_the_launchers_environment(
    nodes: Nodes, tmp_path: Path
) -> None:
    """Today's builds (no deps/) keep the old command: ``-P -m`` with ``PYTHONPATH`` = the
    slot, their dependencies from the launcher's environment."""
    data = build_artifact(REPO, "plain1")
    path = tmp_path / "plain1.tar.gz"
    path.write_bytes(data)
    build = Build(version="plain1", path=path, sha=sha256_hex(data), counter=1)
    dump = tmp_path / "modules.json"
    (tmp_path / "offers").mkdir()
    node = nodes.start(
        tmp_path / "state",
        base_args(build, tmp_path / "offers"),
        extra_env={MODULES_ENV: str(dump)},
    )
    status = node.wait_running("plain1")
    argv = _cmdline(status["pid"])
    assert argv[1:4] == ["-P", "-m", "p2pupdate.daemon"], argv[:6]
    assert node.terminate(timeout=60) == LAUNCHER_OK
    modules: dict[str, str] = json.loads(dump.read_text())
    slot = node.state.slot_dir(build.sha)
    assert modules["p2pupdate"].startswith(str(slot) + os.sep)
    assert not modules["trio"].startswith(str(slot) + os.sep)


@pytest.mark.slow
def test_a_node_updates_from_a_code_only_build_to_a_self_contained_one(
    nodes: Nodes, tmp_path: Path, self_contained: Build
) -> None:
    """The daemon of a build of our code alone fetches, stages (70 MB: over the old 64 MB
    cap) and swaps to a self-contained build, which confirms on probation and runs from
    its slot alone."""
    v1 = make_build(tmp_path, "v1", 1)
    offers = tmp_path / "offers"
    offers.mkdir()
    node = nodes.start(tmp_path / "state", base_args(v1, offers))
    node.wait_running("v1")
    sc = dataclasses.replace(self_contained, counter=2)
    offer(offers, sc)
    status = node.wait_running("sc1", timeout=180)
    assert read_links(node.state) == (sc.sha, v1.sha)
    argv = _cmdline(status["pid"])
    assert argv[1:3] == ["-I", "-S"] and argv[5] == str(node.state.slot_dir(sc.sha)), argv[:6]
    assert node.terminate(timeout=60) == LAUNCHER_OK
