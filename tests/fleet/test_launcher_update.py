"""P12's fleet test: the launcher and a dependency reach the fleet by the fleet's own means,
and a bad launcher is rolled back by stage-0.

Real processes: one ``p2pupdate-coordinator serve`` replica and two ``p2pupdate node``
processes (stage-0 -> launcher -> daemon each), started on v1 (a build of our code alone).
The operator publishes, through the replica only, a signed release, allowlist and scope for
v2: a self-contained build whose launcher changed (it says so at start) and one of whose
dependencies is at another version than the one the nodes run (``wsproto``, installed from
its wheel into a directory put first on the build path, as ``scripts/bench/delta.py``
does).  Each node asks, gets a departure token, fetches v2 from the replica's origin,
swaps, and stage-0 tries v2's launcher, which runs v2's daemon from the slot alone.  Then
v3, whose launcher exits 1 at once, is published the same way: on each node stage-0 falls
back to v2's launcher, which rolls v3 back and sticky-denies it with stage-0's reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pupdate.core import cdc, crypto
from p2pupdate.core import documents as docs
from p2pupdate.launcher import stage0
from p2pupdate.launcher.artifact import (
    DEPS_DIR,
    Deps,
    build_artifact,
    build_tar,
    is_plain_tar,
    project_requirements,
    sha256_hex,
)
from tests.coordinator.service_helpers import (
    Network,
    ReplicaProcesses,
    http,
    replicas,
)
from tests.launcher.conftest import Builds, builds  # noqa: F401 - the fixture
from tests.launcher.harness import (
    FAST,
    REPO,
    Build,
    NodeProcess,
    Nodes,
    nodes,
    patched_tree,
    wait_until,
)

pytestmark = pytest.mark.slow

__all__ = ["builds", "nodes", "replicas"]

MARK = "launcher v2 says hello"
DEP, DEP_VERSION = "wsproto", "1.2.0"


def _installed_version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


@pytest.fixture(scope="module")
def fleet_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Build]:
    tmp = tmp_path_factory.mktemp("fleet-builds")
    assert _installed_version(DEP) != DEP_VERSION
    site = tmp / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--target", str(site)),
            *("--no-deps", "--no-compile", "--only-binary", ":all:"),
            *("--disable-pip-version-check", f"{DEP}=={DEP_VERSION}"),
        ],
        check=True,
        timeout=300,
    )
    hello = {
        "p2pupdate/launcher/main.py": lambda t: t.replace(
            "    _booted_by_stage0(config)\n",
            f"    _booted_by_stage0(config)\n    print({MARK!r}, file=sys.stderr, flush=True)\n",
        )
    }
    broken = {
        "p2pupdate/launcher/__main__.py": lambda t: t.replace(
            "    sys.exit(main())", '    sys.exit("broken launcher: exits at start")'
        )
    }
    (tmp / "v2").mkdir()
    (tmp / "v3").mkdir()
    src2 = patched_tree(tmp / "v2", hello)
    (src2 / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    deps = Deps.collect(project_requirements(src2), search_path=[str(site), *sys.path])
    assert {d.name: d.version for d in deps.dists}[DEP] == DEP_VERSION
    out: dict[str, Build] = {}
    for version, counter, source, with_deps in (
        ("v1", 1, REPO, Deps.collect(project_requirements(REPO))),
        ("v2", 2, src2, deps),
        ("v3", 3, patched_tree(tmp / "v3", broken), None),
    ):
        # v1 and v2: self-contained plain tars (content-defined chunks); v3: our code, gzip
        if with_deps is None:
            data, name = build_artifact(source, version), f"{version}.tar.gz"
        else:
            data, name = build_tar(source, version, deps=with_deps), f"{version}.tar"
        path = tmp / name
        path.write_bytes(data)
        out[version] = Build(version=version, path=path, sha=sha256_hex(data), counter=counter)
    return out


def _release(net: Network, build: Build) -> bytes:
    """The signed release record, cut as ``p2pupdate release`` cuts it: content-defined
    chunks for a plain tar, fixed 64 KiB ones for a gzip file."""
    data = build.path.read_bytes()
    now = int(time.time())
    sizes = tuple(len(c) for c in cdc.split(data)) if is_plain_tar(data) else ()
    release = docs.Release.for_bytes(
        data,
        name=build.version,
        counter=build.counter,
        chunk_size=64 * 1024,
        issued=now - 10,
        expires=now + 86400,
        sizes=sizes,
    )
    assert bool(release.sizes) == build.path.name.endswith(".tar")
    return release.sign([net.key("release")]).to_wire()


def _publish(net: Network, url: str, build: Build, allowed: list[str], serial: int) -> None:
    data = build.path.read_bytes()
    for doc in (
        _release(net, build),
        net.allowlist(serial, allowed),
        net.scope(build.sha, serial=serial),
    ):
        code, answer = http("POST", f"{url}/v1/publish", doc)
        assert code == 200, answer
    code, answer = http("PUT", f"{url}/v1/artifacts/{build.sha}", data)
    assert code == 200, answer


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _launcher_argv(node: NodeProcess) -> list[str]:
    (launcher,) = _children(node.proc.pid)
    return Path(f"/proc/{launcher}/cmdline").read_bytes().decode().split("\0")[:-1]


def _runs_launcher_of(node: NodeProcess, sha: str) -> bool:
    try:
        argv = _launcher_argv(node)
    except (OSError, ValueError):
        return False
    return str(node.state.slot_dir(sha)) in argv


def _identity(state_dir: Path) -> None:
    state_dir.mkdir(parents=True)
    path = state_dir / "identity.pem"
    path.write_bytes(crypto.private_key_to_pem(crypto.SigningKey.from_seed(os.urandom(32))))
    path.chmod(0o600)


def test_the_fleet_rolls_a_new_launcher_and_dependency_and_stage0_rolls_back_a_bad_launcher(
    tmp_path: Path,
    nodes: Nodes,
    replicas: ReplicaProcesses,
    fleet_builds: dict[str, Build],
) -> None:
    v1, v2, v3 = fleet_builds["v1"], fleet_builds["v2"], fleet_builds["v3"]
    net = Network(tmp_path / "net")
    url = replicas.start(
        net, 1, "--lease-ttl", "60", "--max-skew", "2", "--max-concurrent", "2",
        "--min-serving", "0",
    ).url  # fmt: skip
    args = [
        *("--initial-artifact", str(v1.path), "--work", "none", *FAST),
        *("--probation", "30", "--coordinator", url),
        *("--trust-root", str(net.dir / "root.msgpack"), "--swap-margin", "5"),
        *("--report-interval", "1", "--aggregate-stub", "1000:100:10"),
    ]
    fleet = []
    for i in range(2):
        _identity(tmp_path / f"node-{i}")
        fleet.append(nodes.start(tmp_path / f"node-{i}", args, log_name=f"n{i}.log"))
    for node in fleet:
        node.wait_running("v1", state=None, timeout=120)  # a 229 MB slot to stage first
        node.wait_for("v1's launcher", lambda n=node: _runs_launcher_of(n, v1.sha))

    # v1's release record, as the operator published it when v1 went out: the nodes learn
    # how v1 is cut, so v2's chunks that v1 has are copied from the store, not fetched
    code, answer = http("POST", f"{url}/v1/publish", _release(net, v1))
    assert code == 200, answer
    # v2: a new launcher and a dependency at another version, by release + allowlist + scope
    _publish(net, url, v2, [v2.sha], serial=1)
    v2_chunks = len(cdc.split(v2.path.read_bytes()))
    for node in fleet:
        node.wait_for(
            "v2 promoted", lambda n=node: n.state.read_link("current") == v2.sha, timeout=180
        )
        node.wait_running("v2", state=None)
        node.wait_for("v2's launcher", lambda n=node: _runs_launcher_of(n, v2.sha))
        log = node.log()
        assert "GRANTED by the coordinator (token verified" in log
        assert MARK in log  # the launcher that came with v2 runs
        slot = node.state.slot_dir(v2.sha)
        manifest = json.loads((slot / DEPS_DIR / "SLOT.json").read_text())
        assert {d["name"]: d["version"] for d in manifest["dists"]}[DEP] == DEP_VERSION
        status = node.status() or {}
        daemon = Path(f"/proc/{status['pid']}/cmdline").read_bytes().decode().split("\0")
        assert daemon[1:3] == ["-I", "-S"] and str(slot) in daemon  # from the slot alone
        assert stage0.read_boot(str(node.state.root))["good"] == v2.sha
        # only what changed moved: v2's other chunks came out of v1's copy in the store
        [reuse] = [
            ln for ln in log.splitlines() if f"store: {v2.sha[:16]}" in ln and "reused" in ln
        ]
        reused = int(reuse.split(" reused ", 1)[1].split(" ", 1)[0])
        assert reused > 0.9 * v2_chunks, reuse
    origin = http("GET", f"{url}/status")[1]["origin"]["artifacts"][v2.sha]
    v2_length = v2.path.stat().st_size
    assert 0 < origin["bytes"] < 0.05 * 2 * v2_length, (origin, v2_length)

    # v3: its launcher exits 1 at once; stage-0 falls back to v2's, which rolls v3 back
    _publish(net, url, v3, [v2.sha, v3.sha], serial=2)
    reason = f"launcher of {v3.sha} failed to come up: exit 1"
    for node in fleet:
        st = node.state
        [entry] = node.wait_for("v3 rolled back", st.read_rollbacks, timeout=180)
        assert (entry.artifact, entry.previous, entry.reason) == (v3.sha, v2.sha, reason)
        assert [(d.artifact, d.reason) for d in st.read_denied()] == [(v3.sha, reason)]
        node.wait_running("v2", state=None)
        assert st.read_link("current") == v2.sha
        node.wait_for("v2's launcher again", lambda n=node: _runs_launcher_of(n, v2.sha))
        assert node.log().count(f"launcher of {v3.sha} on trial") == 1
    wait_until(
        "the replica to count both failures",
        lambda: (http("GET", f"{url}/status")[1]["artifacts"].get(v3.sha) or {}).get("failed") == 2,
        timeout=60,
    )
    for node in fleet:
        assert node.terminate() == 0
