"""End-to-end tests of the command-line tools, run as real subprocesses.

``p2pupdate`` runs as ``python -m p2pupdate`` and ``p2pupdate-coordinator`` as its
``coordinator.cli:main`` entry point, both with the interpreter running the tests, so the
suite works in any virtualenv where the package (or this checkout) is importable.

Contract under test (the issue): every command has ``--help``; any user mistake is a
one-line error on stderr, never a traceback, exit 2; exit 0 ok, 1 rejected /
verification failed.  One genuine network is built once per module (init, release,
allow, node key, scope) and copied when a test needs to change it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2pupdate.core.crypto import Envelope
from p2pupdate.core.gates import in_fraction

REPO = Path(__file__).resolve().parents[2]
P2P: tuple[str, ...] = (sys.executable, "-m", "p2pupdate")
COORD: tuple[str, ...] = (
    sys.executable,
    "-c",
    "import sys; from coordinator.cli import main; sys.exit(main())",
)
ROLES = ("root", "release", "coordinator", "operator")
#: Rules a malformed (not well-formed msgpack / envelope) file may be refused with.
WIRE_RULES = {
    "malformed",
    "truncated",
    "trailing-bytes",
    "oversize",
    "too-deep",
    "ext-type",
    "non-str-key",
    "duplicate-key",
    "schema",
}
#: argparse errors add this hint after the one error line; it is the only extra allowed.
HINT = re.compile(r"\(see [\w .-]+ --help\)")
ARTIFACT_SIZE = 600_000

Arg = str | Path | int


# -- running the tools ------------------------------------------------------------------


def run(
    tool: Sequence[str], *args: Arg, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [*tool, *(str(a) for a in args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def show(res: subprocess.CompletedProcess[str]) -> str:
    return (
        f"command: {res.args[3:] if res.args[1] == '-c' else res.args[1:]}\n"
        f"exit: {res.returncode}\n--- stdout ---\n{res.stdout}--- stderr ---\n{res.stderr}"
    )


def assert_ok(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, show(res)
    assert "Traceback" not in res.stderr, show(res)


def assert_usage_error(res: subprocess.CompletedProcess[str], prog: str) -> str:
    """Exit 2, no traceback, exactly one error line (plus at most argparse's hint)."""
    assert "Traceback" not in res.stderr, show(res)
    assert res.returncode == 2, show(res)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not HINT.fullmatch(ln)]
    assert len(errors) == 1, show(res)
    assert errors[0].startswith(prog) and ": error: " in errors[0], show(res)
    return errors[0]


def assert_rejected(res: subprocess.CompletedProcess[str], expected: dict[str, set[str]]) -> None:
    """``verify`` exit 1; exactly the files in ``expected`` fail, each on one line that
    names the file and one of the allowed rules."""
    assert "Traceback" not in res.stderr, show(res)
    assert res.returncode == 1, show(res)
    fails = [ln for ln in res.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(fails) == len(expected), show(res)
    for name, rules in expected.items():
        mine = [ln for ln in fails if f"FAIL  {name} (" in ln or f"/{name} (" in ln]
        assert len(mine) == 1, f"no single FAIL line for {name}\n{show(res)}"
        m = re.match(r"FAIL  (\S+) \((\S+)\): ([a-z-]+): ", mine[0])
        assert m, f"FAIL line not 'FAIL  FILE (type): rule: reason'\n{show(res)}"
        assert m.group(3) in rules, f"{name}: rule {m.group(3)!r}, wanted {rules}\n{show(res)}"


def verify_json(res: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in res.stderr, show(res)
    out = json.loads(res.stdout)  # the whole of stdout is one JSON object
    assert isinstance(out, dict), show(res)
    return out


# -- the genuine network ----------------------------------------------------------------


@dataclass(frozen=True)
class Net:
    base: Path  # working directory the network was made in
    dir: Path  # DIR of `p2pupdate-coordinator init`
    root: Path
    artifact_file: Path
    artifact: str
    release: Path
    allow: Path
    node_key: Path
    node: str
    scope: Path

    def key(self, role: str, i: int = 1) -> Path:
        return self.dir / "keys" / f"{role}-{i}.pem"

    def docs(self) -> list[Path]:
        return [self.release, self.allow, self.scope]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    base = tmp_path_factory.mktemp("cli-net")
    d = base / "net"
    assert_ok(run(COORD, "init", d, "--replicas", 3, "--quorum", 2, cwd=base))

    art = base / "build.bin"
    art.write_bytes(os.urandom(ARTIFACT_SIZE))
    artifact = hashlib.sha256(art.read_bytes()).hexdigest()
    release = base / "release.msgpack"
    res = run(
        P2P,
        "release",
        art,
        "--key",
        d / "keys" / "release-1.pem",
        "--counter",
        1,
        "--name",
        "v1.0.0",
        "-o",
        release,
        cwd=base,
    )
    assert_ok(res)
    assert artifact in res.stdout

    allow = base / "allow.msgpack"
    assert_ok(run(COORD, "allow", release, "--dir", d, "-o", allow, cwd=base))

    node_key = base / "node.pem"
    res = run(P2P, "keys", "new", "-o", node_key, cwd=base)
    assert_ok(res)
    node = res.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", node), show(res)

    scope = base / "scope.msgpack"
    res = run(
        P2P,
        "scope",
        "--artifact",
        artifact,
        "--nodes",
        node,
        "--key",
        d / "keys" / "operator-1.pem",
        "-o",
        scope,
        cwd=base,
    )
    assert_ok(res)
    return Net(
        base=base,
        dir=d,
        root=d / "root.msgpack",
        artifact_file=art,
        artifact=artifact,
        release=release,
        allow=allow,
        node_key=node_key,
        node=node,
        scope=scope,
    )


@pytest.fixture
def net_copy(net: Net, tmp_path: Path) -> Path:
    """A private copy of the network directory, for tests that sign more allowlists."""
    dst = tmp_path / "netcopy"
    shutil.copytree(net.dir, dst)
    return dst


def other_node(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def verify(
    net: Net, *files: Arg, cwd: Path, extra: Sequence[Arg] = ()
) -> subprocess.CompletedProcess[str]:
    return run(P2P, "verify", "--root", net.root, *files, *extra, cwd=cwd)


def flip_payload_byte(data: bytes, where: float) -> bytes:
    """Flip one bit of the signed payload, leaving the envelope well-formed."""
    env = Envelope.from_wire(data)
    start = data.find(env.payload)
    assert start > 0 and data.count(env.payload) == 1
    i = start + min(int(len(env.payload) * where), len(env.payload) - 1)
    out = bytearray(data)
    out[i] ^= 0x01
    return bytes(out)


# == 1. the genuine set verifies ========================================================


def test_genuine_set_verifies(net: Net, tmp_path: Path) -> None:
    res = verify(net, *net.docs(), cwd=tmp_path)
    assert_ok(res)
    lines = res.stdout.splitlines()
    for path in (net.root, *net.docs()):
        assert any(ln.startswith("OK    ") and str(path) in ln for ln in lines), show(res)
    assert "all 4 documents verified" in res.stdout
    assert "FAIL" not in res.stdout


def test_genuine_set_verifies_in_any_order(net: Net, tmp_path: Path) -> None:
    assert_ok(verify(net, net.scope, net.allow, net.release, cwd=tmp_path))


def test_named_node_may_move_to_the_artifact(net: Net, tmp_path: Path) -> None:
    res = verify(net, *net.docs(), cwd=tmp_path, extra=["--as-node", net.node])
    assert_ok(res)
    assert f"may move to {net.artifact}" in res.stdout, show(res)
    assert "stays" not in res.stdout


def test_json_is_one_object_with_the_target(net: Net, tmp_path: Path) -> None:
    res = verify(net, *net.docs(), cwd=tmp_path, extra=["--as-node", net.node, "--json"])
    assert_ok(res)
    out = verify_json(res)
    assert out["ok"] is True
    assert out["root"]["ok"] is True and out["root"]["type"] == "root"
    assert [d["type"] for d in out["documents"]] == ["release", "allowlist", "scope"]
    assert all(d["ok"] for d in out["documents"])
    node = out["node"]
    assert node["id"] == net.node
    assert node["may_move_to"] == net.artifact
    assert node["release"] == "v1.0.0"
    assert all(g["ok"] for g in node["gates"]), node


def test_release_record_describes_the_file(net: Net, tmp_path: Path) -> None:
    out = verify_json(verify(net, net.release, cwd=tmp_path, extra=["--json"]))
    rel = out["documents"][0]["document"]
    assert rel["artifact"] == net.artifact
    assert rel["length"] == ARTIFACT_SIZE
    assert rel["chunk_size"] == 64 * 1024  # the default
    assert rel["chunk_count"] == -(-ARTIFACT_SIZE // rel["chunk_size"])
    assert rel["counter"] == 1 and rel["name"] == "v1.0.0"


def test_the_default_chunk_size_grows_only_for_files_that_need_it() -> None:
    from p2pupdate.cli.commands import DEFAULT_CHUNK, default_chunk_size
    from p2pupdate.core import documents as docs

    assert default_chunk_size(1) == DEFAULT_CHUNK == 64 * 1024
    fits = docs.MAX_CHUNKS * DEFAULT_CHUNK
    assert default_chunk_size(fits) == DEFAULT_CHUNK
    assert default_chunk_size(fits + 1) == 2 * DEFAULT_CHUNK  # one chunk too many: doubled
    assert default_chunk_size(docs.MAX_CHUNKS * docs.MAX_CHUNK * 4) == docs.MAX_CHUNK


def test_root_lists_the_key_files_by_role(net: Net, tmp_path: Path) -> None:
    out = verify_json(verify(net, net.allow, cwd=tmp_path, extra=["--json"]))
    roles = out["root"]["document"]["roles"]
    assert roles["coordinator"]["threshold"] == 2
    assert len(roles["coordinator"]["keys"]) == 3
    for role in ("root", "release", "operator"):
        assert roles[role]["threshold"] == 1 and len(roles[role]["keys"]) == 1
    res = run(P2P, "keys", "show", net.key("coordinator", 2), cwd=tmp_path)
    assert_ok(res)
    assert res.stdout.strip() in roles["coordinator"]["keys"]
    res = run(P2P, "keys", "show", net.dir / "keys" / "operator-1.pub.pem", cwd=tmp_path)
    assert_ok(res)
    assert roles["operator"]["keys"] == [res.stdout.strip()]


def test_node_outside_the_named_set_stays(net: Net, tmp_path: Path) -> None:
    outsider = other_node("outsider")
    res = verify(net, *net.docs(), cwd=tmp_path, extra=["--as-node", outsider])
    assert_ok(res)  # every document verified; a gate saying no is not a failure
    assert "stays where it is" in res.stdout, show(res)
    assert "scope: not-named" in res.stdout, show(res)
    assert "may move to" not in res.stdout

    res = verify(net, *net.docs(), cwd=tmp_path, extra=["--as-node", outsider, "--json"])
    assert_ok(res)
    out = verify_json(res)
    assert out["ok"] is True
    assert out["node"]["may_move_to"] is None
    scope_gate = [g for g in out["node"]["gates"] if g["gate"] == "scope"]
    assert scope_gate and not scope_gate[0]["ok"] and scope_gate[0]["reason"] == "not-named"


@pytest.mark.parametrize(
    ("who", "moves", "reason"),
    [("--nobody", False, "scope-nobody"), ("--everyone", True, "everyone")],
)
def test_nobody_and_everyone_scopes(
    net: Net, tmp_path: Path, who: str, moves: bool, reason: str
) -> None:
    scope = tmp_path / "scope2.msgpack"
    assert_ok(
        run(
            P2P,
            "scope",
            "--artifact",
            net.artifact,
            who,
            "--key",
            net.key("operator"),
            "-o",
            scope,
            cwd=tmp_path,
        )
    )
    res = verify(
        net, net.release, net.allow, scope, cwd=tmp_path, extra=["--as-node", net.node, "--json"]
    )
    assert_ok(res)
    node = verify_json(res)["node"]
    assert node["may_move_to"] == (net.artifact if moves else None)
    assert reason in [g["reason"] for g in node["gates"]]


def test_newest_scope_serial_governs_whatever_the_order(net: Net, tmp_path: Path) -> None:
    named, paused = tmp_path / "s5.msgpack", tmp_path / "s6.msgpack"
    for serial, who, out in ((5, ["--nodes", net.node], named), (6, ["--nobody"], paused)):
        assert_ok(
            run(
                P2P,
                "scope",
                "--artifact",
                net.artifact,
                *who,
                "--serial",
                serial,
                "--key",
                net.key("operator"),
                "-o",
                out,
                cwd=tmp_path,
            )
        )
    for order in ((named, paused), (paused, named)):
        res = verify(
            net, net.release, net.allow, *order, cwd=tmp_path, extra=["--as-node", net.node]
        )
        assert_ok(res)
        assert "stays where it is (scope: scope-nobody)" in res.stdout, show(res)


# == 2. tampered documents are refused ===================================================


@pytest.mark.parametrize("kind", ["release", "allow", "scope"])
def test_flipped_payload_byte_is_refused(net: Net, tmp_path: Path, kind: str) -> None:
    data = getattr(net, kind).read_bytes()
    names = []
    for i, where in enumerate((0.0, 0.5, 1.0)):
        name = f"{kind}-flip{i}.msgpack"
        (tmp_path / name).write_bytes(flip_payload_byte(data, where))
        names.append(name)
    res = verify(net, *names, cwd=tmp_path)
    assert_rejected(res, {n: {"signature-threshold"} for n in names})


def test_tampered_allowlist_is_refused_beside_genuine_documents(net: Net, tmp_path: Path) -> None:
    bad = tmp_path / "allow-tampered.msgpack"
    bad.write_bytes(flip_payload_byte(net.allow.read_bytes(), 0.5))
    res = verify(net, net.release, bad, net.scope, cwd=tmp_path, extra=["--as-node", net.node])
    assert_rejected(res, {bad.name: {"signature-threshold"}})
    # gate 1 then has no allowlist, so the node may not move
    assert "stays where it is" in res.stdout, show(res)


def test_scope_signed_with_a_coordinator_key_is_refused(net: Net, tmp_path: Path) -> None:
    scope = tmp_path / "scope-by-coordinator.msgpack"
    assert_ok(
        run(
            P2P,
            "scope",
            "--artifact",
            net.artifact,
            "--everyone",
            "--key",
            net.key("coordinator", 1),
            "--key",
            net.key("coordinator", 2),
            "-o",
            scope,
            cwd=tmp_path,
        )
    )
    res = verify(net, net.release, net.allow, scope, cwd=tmp_path, extra=["--as-node", net.node])
    assert_rejected(res, {scope.name: {"signature-threshold"}})
    assert "may move to" not in res.stdout


@pytest.mark.parametrize("sigs", ["one", "one-twice"])
def test_allowlist_below_the_quorum_is_refused(net: Net, tmp_path: Path, sigs: str) -> None:
    env = Envelope.from_wire(net.allow.read_bytes())
    assert len(env.signatures) >= 2
    kept = env.signatures[:1] if sigs == "one" else env.signatures[:1] * 2
    bad = tmp_path / f"allow-{sigs}.msgpack"
    bad.write_bytes(Envelope(type=env.type, payload=env.payload, signatures=kept).to_wire())
    res = verify(net, bad, cwd=tmp_path)
    assert_rejected(res, {bad.name: {"signature-threshold"}})
    assert "1 of 2" in res.stdout, show(res)


@pytest.mark.parametrize(
    ("source", "relabel"),
    [("scope", "allowlist"), ("allow", "nudge"), ("allow", "departure"), ("release", "scope")],
)
def test_document_relabelled_as_another_type_is_refused(
    net: Net, tmp_path: Path, source: str, relabel: str
) -> None:
    """The type is inside the signed bytes: a signature never carries over to another kind
    (allowlist, nudge and departure are all signed by the same coordinator keys)."""
    env = Envelope.from_wire(getattr(net, source).read_bytes())
    bad = tmp_path / f"{source}-as-{relabel}.msgpack"
    bad.write_bytes(
        Envelope(type=relabel, payload=env.payload, signatures=env.signatures).to_wire()
    )
    res = verify(net, bad, cwd=tmp_path)
    assert_rejected(res, {bad.name: {"signature-threshold"}})
    assert f"({relabel})" in res.stdout, show(res)


def test_renamed_file_is_judged_by_its_signed_type(net: Net, tmp_path: Path) -> None:
    disguised = tmp_path / "allowlist-v99.msgpack"
    shutil.copy(net.scope, disguised)
    res = verify(net, disguised, cwd=tmp_path, extra=["--json"])
    assert_ok(res)
    assert verify_json(res)["documents"][0]["type"] == "scope"


def test_allowlist_used_as_root_is_refused(net: Net, tmp_path: Path) -> None:
    res = run(P2P, "verify", "--root", net.allow, net.release, cwd=tmp_path)
    assert_rejected(res, {net.allow.name: {"wrong-type"}})
    assert f"{net.allow.name} (root): wrong-type" in res.stdout


def test_allow_refuses_a_scope_given_as_a_release(net: Net, net_copy: Path, tmp_path: Path) -> None:
    res = run(
        COORD, "allow", net.scope, "--dir", net_copy, "-o", tmp_path / "a.msgpack", cwd=tmp_path
    )
    assert "Traceback" not in res.stderr, show(res)
    assert res.returncode == 1, show(res)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "wrong-type" in lines[0] and net.scope.name in lines[0], show(res)
    assert not (tmp_path / "a.msgpack").exists()
    assert sorted(p.name for p in (net_copy / "allowlists").iterdir()) == ["v1.msgpack"]


def test_allow_refuses_a_tampered_release(net: Net, net_copy: Path, tmp_path: Path) -> None:
    bad = tmp_path / "release-tampered.msgpack"
    bad.write_bytes(flip_payload_byte(net.release.read_bytes(), 0.5))
    res = run(COORD, "allow", bad, "--dir", net_copy, "-o", tmp_path / "a.msgpack", cwd=tmp_path)
    assert "Traceback" not in res.stderr, show(res)
    assert res.returncode == 1, show(res)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "signature-threshold" in lines[0] and bad.name in lines[0]
    assert not (tmp_path / "a.msgpack").exists()
    assert sorted(p.name for p in (net_copy / "allowlists").iterdir()) == ["v1.msgpack"]


def test_documents_from_another_network_are_refused(net: Net, tmp_path: Path) -> None:
    assert_ok(run(COORD, "init", tmp_path / "other", cwd=tmp_path))
    res = run(
        P2P, "verify", "--root", tmp_path / "other" / "root.msgpack", *net.docs(), cwd=tmp_path
    )
    assert_rejected(res, {p.name: {"signature-threshold"} for p in net.docs()})


def test_expired_documents_are_refused(net: Net, tmp_path: Path) -> None:
    later = int(time.time()) + 30 * 86400  # allowlist lives 7d, scope 1d, root/release 365d
    res = verify(net, *net.docs(), cwd=tmp_path, extra=["--now", later, "--as-node", net.node])
    assert_rejected(res, {net.allow.name: {"expired"}, net.scope.name: {"expired"}})
    assert "stays where it is" in res.stdout


def test_expired_root_is_refused(net: Net, tmp_path: Path) -> None:
    much_later = int(time.time()) + 3 * 365 * 86400
    res = verify(net, *net.docs(), cwd=tmp_path, extra=["--now", much_later])
    assert_rejected(res, {net.root.name: {"expired"}})
    assert f"{net.root.name} (root): expired" in res.stdout


def test_older_allowlist_after_newer_both_verify(net: Net, net_copy: Path, tmp_path: Path) -> None:
    newer = tmp_path / "allow-v2.msgpack"
    assert_ok(run(COORD, "allow", net.release, "--dir", net_copy, "-o", newer, cwd=tmp_path))
    res = verify(net, net.release, newer, net.allow, cwd=tmp_path, extra=["--json"])
    assert_ok(res)
    out = verify_json(res)
    versions = {d["file"]: d["document"]["version"] for d in out["documents"][1:]}
    assert versions == {str(newer): 2, str(net.allow): 1}


def test_same_version_different_bytes_is_equivocation(
    net: Net, net_copy: Path, tmp_path: Path
) -> None:
    # An operator who wipes DIR/allowlists makes the coordinator sign a second "v1".
    for p in (net_copy / "allowlists").iterdir():
        p.unlink()
    twin = tmp_path / "allow-v1-twin.msgpack"
    res = run(
        COORD, "allow", net.release, "--dir", net_copy, "--expires", "2d", "-o", twin, cwd=tmp_path
    )
    assert_ok(res)
    assert "allowlist v1" in res.stdout
    assert twin.read_bytes() != net.allow.read_bytes()
    res = verify(net, net.allow, twin, cwd=tmp_path)
    assert_rejected(res, {twin.name: {"equivocation"}})


def test_truncated_document_is_refused(net: Net, tmp_path: Path) -> None:
    data = net.allow.read_bytes()
    bad = tmp_path / "allow-truncated.msgpack"
    bad.write_bytes(data[: len(data) // 2])
    assert_rejected(verify(net, bad, cwd=tmp_path), {bad.name: {"truncated"}})


def test_random_bytes_file_is_refused(net: Net, tmp_path: Path) -> None:
    bad = tmp_path / "random.bin"
    bad.write_bytes(random.Random(20240601).randbytes(512))
    empty = tmp_path / "empty.msgpack"
    empty.write_bytes(b"")
    assert_rejected(
        verify(net, bad, empty, cwd=tmp_path), {bad.name: WIRE_RULES, empty.name: WIRE_RULES}
    )


def test_every_truncation_is_refused_without_a_traceback(net: Net, tmp_path: Path) -> None:
    names = []
    for doc in net.docs():
        data = doc.read_bytes()
        for cut in sorted({1, 2, 3, 10, len(data) // 3, len(data) // 2, len(data) - 1}):
            name = f"{doc.stem}-cut{cut}.msgpack"
            (tmp_path / name).write_bytes(data[:cut])
            names.append(name)
    res = verify(net, *names, cwd=tmp_path)
    assert_rejected(res, dict.fromkeys(names, WIRE_RULES))


def test_garbage_root_is_refused(net: Net, tmp_path: Path) -> None:
    root = tmp_path / "root-garbage.msgpack"
    root.write_bytes(net.root.read_bytes()[:-7])
    res = run(P2P, "verify", "--root", root, *net.docs(), cwd=tmp_path)
    assert_rejected(res, {root.name: WIRE_RULES})


# == 3. usage errors: exit 2, one line, no traceback =====================================

UsageCase = Callable[[Net, Path], tuple[Sequence[str], list[Arg]]]


def _release(
    net: Net,
    *extra: Arg,
    file: Arg | None = None,
    key: Arg | None = None,
    out: Arg = "out.msgpack",
) -> list[Arg]:
    """``p2pupdate release`` arguments for the network's artifact; ``extra`` overrides."""
    return [
        "release",
        net.artifact_file if file is None else file,
        "--key",
        net.key("release") if key is None else key,
        "--counter",
        1,
        "--name",
        "v1",
        *extra,
        "-o",
        out,
    ]


def _scope(
    net: Net,
    *extra: Arg,
    artifact: str | None = None,
    key: Arg | None = None,
    out: Arg = "out.msgpack",
) -> list[Arg]:
    """``p2pupdate scope`` arguments for the network's artifact; ``extra`` picks who."""
    return [
        "scope",
        "--artifact",
        net.artifact if artifact is None else artifact,
        "--key",
        net.key("operator") if key is None else key,
        *extra,
        "-o",
        out,
    ]


USAGE_CASES: dict[str, UsageCase] = {
    # files
    "verify-missing-file": lambda n, t: (P2P, ["verify", "--root", n.root, t / "missing.msgpack"]),
    "verify-missing-root": lambda n, t: (P2P, ["verify", "--root", t / "nope", n.allow]),
    "verify-directory-as-file": lambda n, t: (P2P, ["verify", "--root", n.root, t / "adir"]),
    "verify-directory-as-root": lambda n, t: (P2P, ["verify", "--root", n.dir, n.allow]),
    "release-missing-file": lambda n, t: (P2P, _release(n, file=t / "missing.bin")),
    "release-directory-as-file": lambda n, t: (P2P, _release(n, file=t / "adir")),
    "release-empty-file": lambda n, t: (P2P, _release(n, file=t / "empty.bin")),
    "release-output-dir-missing": lambda n, t: (P2P, _release(n, out=t / "no" / "out.msgpack")),
    "allow-missing-release": lambda n, t: (
        COORD,
        ["allow", t / "missing.msgpack", "--dir", n.dir, "-o", "a.msgpack"],
    ),
    "allow-dir-without-network": lambda n, t: (
        COORD,
        ["allow", n.release, "--dir", t / "adir", "-o", "a.msgpack"],
    ),
    # values
    "scope-bad-sha256": lambda n, t: (P2P, _scope(n, "--everyone", artifact="xyz")),
    "scope-sha256-too-short": lambda n, t: (P2P, _scope(n, "--everyone", artifact="ab" * 31)),
    "scope-bad-node-id": lambda n, t: (P2P, _scope(n, "--nodes", f"{n.node},12345")),
    "verify-bad-as-node": lambda n, t: (
        P2P,
        ["verify", "--root", n.root, n.allow, "--as-node", "x"],
    ),
    "verify-bad-now": lambda n, t: (P2P, ["verify", "--root", n.root, n.allow, "--now", "soon"]),
    "verify-as-node-too-short": lambda n, t: (
        P2P,
        ["verify", "--root", n.root, n.allow, "--as-node", "AAAAAA"],
    ),
    "verify-now-past-any-document": lambda n, t: (
        P2P,
        ["verify", "--root", n.root, n.allow, "--now", str(2**70)],
    ),
    "scope-bad-duration": lambda n, t: (P2P, _scope(n, "--everyone", "--expires", "3x")),
    "scope-zero-duration": lambda n, t: (P2P, _scope(n, "--everyone", "--expires", "0d")),
    "allow-bad-duration": lambda n, t: (
        COORD,
        ["allow", n.release, "--dir", n.dir, "--expires", "1y", "-o", "a.msgpack"],
    ),
    "scope-seed-not-hex": lambda n, t: (P2P, _scope(n, "--fraction", "0.5", "--seed", "zz")),
    "scope-seed-too-short": lambda n, t: (P2P, _scope(n, "--fraction", "0.5", "--seed", "00ff")),
    "scope-seed-with-everyone": lambda n, t: (
        P2P,
        _scope(n, "--everyone", "--seed", "00112233445566778899aabbccddeeff"),
    ),
    "scope-seed-with-nodes": lambda n, t: (
        P2P,
        _scope(n, "--nodes", n.node, "--seed", "00112233445566778899aabbccddeeff"),
    ),
    "scope-fraction-above-one": lambda n, t: (P2P, _scope(n, "--fraction", "1.5")),
    "scope-fraction-not-a-number": lambda n, t: (P2P, _scope(n, "--fraction", "half")),
    "scope-two-kinds": lambda n, t: (P2P, _scope(n, "--nobody", "--everyone")),
    "scope-no-kind": lambda n, t: (P2P, _scope(n)),
    "scope-serial-zero": lambda n, t: (P2P, _scope(n, "--everyone", "--serial", "0")),
    "release-counter-zero": lambda n, t: (P2P, _release(n, "--counter", "0")),
    "release-counter-not-int": lambda n, t: (P2P, _release(n, "--counter", "one")),
    "release-chunk-size-too-small": lambda n, t: (P2P, _release(n, "--chunk-size", "512")),
    "release-chunk-size-garbage": lambda n, t: (P2P, _release(n, "--chunk-size", "12q")),
    "release-name-too-long": lambda n, t: (P2P, _release(n, "--name", "v" * 200)),
    "release-missing-key-option": lambda n, t: (
        P2P,
        ["release", n.artifact_file, "--counter", "1", "--name", "v1", "-o", "x"],
    ),
    # keys
    "release-key-is-public-pem": lambda n, t: (
        P2P,
        _release(n, key=n.dir / "keys" / "release-1.pub.pem"),
    ),
    "release-key-is-text": lambda n, t: (P2P, _release(n, key=t / "notes.txt")),
    "release-key-missing": lambda n, t: (P2P, _release(n, key=t / "missing.pem")),
    "release-key-is-directory": lambda n, t: (P2P, _release(n, key=t / "adir")),
    "scope-key-is-public-pem": lambda n, t: (
        P2P,
        _scope(n, "--everyone", key=n.dir / "keys" / "operator-1.pub.pem"),
    ),
    "scope-key-is-text": lambda n, t: (P2P, _scope(n, "--everyone", key=t / "notes.txt")),
    "keys-new-existing-file": lambda n, t: (P2P, ["keys", "new", "-o", n.node_key]),
    "keys-new-dir-missing": lambda n, t: (P2P, ["keys", "new", "-o", t / "no" / "k.pem"]),
    "keys-show-text": lambda n, t: (P2P, ["keys", "show", t / "notes.txt"]),
    # init
    "init-existing-network": lambda n, t: (COORD, ["init", n.dir]),
    "init-quorum-above-replicas": lambda n, t: (
        COORD,
        ["init", t / "new", "--replicas", "2", "--quorum", "3"],
    ),
    "init-operator-threshold-above-operators": lambda n, t: (
        COORD,
        ["init", t / "new", "--operators", "2", "--operator-threshold", "3"],
    ),
    "init-replicas-zero": lambda n, t: (COORD, ["init", t / "new", "--replicas", "0"]),
    "init-dir-is-a-file": lambda n, t: (COORD, ["init", t / "notes.txt"]),
    "init-network-empty": lambda n, t: (COORD, ["init", t / "new", "--network", ""]),
    "init-network-too-long": lambda n, t: (COORD, ["init", t / "new", "--network", "n" * 129]),
    # commands
    "p2pupdate-unknown-command": lambda n, t: (P2P, ["frobnicate"]),
    "p2pupdate-unknown-option": lambda n, t: (P2P, ["verify", "--root", n.root, n.allow, "--nope"]),
    "keys-unknown-subcommand": lambda n, t: (P2P, ["keys", "rotate"]),
    "coordinator-unknown-command": lambda n, t: (COORD, ["frobnicate"]),
}


@pytest.mark.parametrize("case", sorted(USAGE_CASES))
def test_usage_error(net: Net, tmp_path: Path, case: str) -> None:
    (tmp_path / "adir").mkdir()
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a key\n")
    before = {p: p.read_bytes() for p in (net.node_key, net.root)}
    tool, args = USAGE_CASES[case](net, tmp_path)
    res = run(tool, *args, cwd=tmp_path)
    assert_usage_error(res, "p2pupdate-coordinator" if tool is COORD else "p2pupdate")
    # nothing was written or overwritten
    assert not (tmp_path / "out.msgpack").exists()
    assert not (tmp_path / "new").exists()
    assert {p: p.read_bytes() for p in before} == before


def test_init_refusal_leaves_nothing_behind(tmp_path: Path) -> None:
    res = run(COORD, "init", tmp_path / "n", "--replicas", "2", "--quorum", "3", cwd=tmp_path)
    assert_usage_error(res, "p2pupdate-coordinator")
    assert not (tmp_path / "n").exists()
    assert_ok(run(COORD, "init", tmp_path / "n", "--replicas", "2", "--quorum", "2", cwd=tmp_path))


def test_init_existing_network_keeps_its_keys(net: Net, net_copy: Path, tmp_path: Path) -> None:
    before = {p.name: p.read_bytes() for p in (net_copy / "keys").iterdir()}
    root = (net_copy / "root.msgpack").read_bytes()
    assert_usage_error(run(COORD, "init", net_copy, cwd=tmp_path), "p2pupdate-coordinator")
    assert {p.name: p.read_bytes() for p in (net_copy / "keys").iterdir()} == before
    assert (net_copy / "root.msgpack").read_bytes() == root


def test_missing_command_prints_usage_and_exits_2(tmp_path: Path) -> None:
    for tool, args in ((P2P, []), (P2P, ["keys"]), (COORD, [])):
        res = run(tool, *args, cwd=tmp_path)
        assert res.returncode == 2, show(res)
        assert "Traceback" not in res.stderr and "usage:" in res.stderr, show(res)


# -- usage errors the CLI gets wrong (see the report; these fail until fixed) -----------


def test_keys_new_into_a_path_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    res = run(P2P, "keys", "new", "-o", tmp_path / "notes.txt" / "k.pem", cwd=tmp_path)
    assert_usage_error(res, "p2pupdate")


def test_keys_new_public_refusal_writes_no_private_key(tmp_path: Path) -> None:
    (tmp_path / "k.pub.pem").write_text("someone else's public key\n")
    res = run(P2P, "keys", "new", "-o", tmp_path / "k.pem", "--public", cwd=tmp_path)
    assert_usage_error(res, "p2pupdate")
    assert not (tmp_path / "k.pem").exists(), "refused, yet left a private key nobody saw the id of"


@pytest.mark.parametrize("expires", ["99999999999999999999w", "100000000w"])
def test_allow_with_an_absurd_expiry_is_a_usage_error(
    net: Net, net_copy: Path, tmp_path: Path, expires: str
) -> None:
    """The first overflows msgpack; the second is past what any node accepts (2^40 s)."""
    out = tmp_path / "a.msgpack"
    res = run(
        COORD,
        "allow",
        net.release,
        "--dir",
        net_copy,
        "--expires",
        expires,
        "-o",
        out,
        cwd=tmp_path,
    )
    assert_usage_error(res, "p2pupdate-coordinator")
    assert not out.exists()
    assert sorted(p.name for p in (net_copy / "allowlists").iterdir()) == ["v1.msgpack"]


def test_init_never_writes_a_root_that_does_not_verify(net: Net, tmp_path: Path) -> None:
    """33 root keys: the root gets 33 signatures, over the envelope's cap of 32."""
    d = tmp_path / "wide"
    res = run(COORD, "init", d, "--root-keys", "33", cwd=tmp_path)
    if res.returncode == 0:
        assert_ok(
            run(P2P, "verify", "--root", d / "root.msgpack", d / "root.msgpack", cwd=tmp_path)
        )
    else:
        assert_usage_error(res, "p2pupdate-coordinator")


def test_allow_never_writes_an_allowlist_that_does_not_verify(net: Net, tmp_path: Path) -> None:
    """33 coordinator replicas, quorum 2: allow signs with every key it finds (33 > 32)."""
    d = tmp_path / "wide"
    assert_ok(run(COORD, "init", d, "--replicas", "33", "--quorum", "2", cwd=tmp_path))
    rel = tmp_path / "rel.msgpack"
    assert_ok(
        run(
            P2P,
            "release",
            net.artifact_file,
            "--key",
            d / "keys" / "release-1.pem",
            "--counter",
            1,
            "--name",
            "v1",
            "-o",
            rel,
            cwd=tmp_path,
        )
    )
    out = tmp_path / "allow.msgpack"
    res = run(COORD, "allow", rel, "--dir", d, "-o", out, cwd=tmp_path)
    if res.returncode == 0:
        assert_ok(run(P2P, "verify", "--root", d / "root.msgpack", rel, out, cwd=tmp_path))
    else:
        assert_usage_error(res, "p2pupdate-coordinator")


def test_init_refused_for_too_many_keys_can_be_retried(tmp_path: Path) -> None:
    """More keys than a root may list (64): the refusal must come before any key is written."""
    d = tmp_path / "n"
    res = run(COORD, "init", d, "--replicas", "60", "--operators", "5", cwd=tmp_path)
    assert_usage_error(res, "p2pupdate-coordinator")
    assert_ok(run(COORD, "init", d, "--replicas", "3", "--quorum", "2", cwd=tmp_path))


# -- what is not a regular file, names too long, documents too big ---------------------


def test_verify_oversize_document_is_a_rejected_document(net: Net, tmp_path: Path) -> None:
    """Too big to be a document is the document's fault (a FAIL line, exit 1), whatever its
    size: the file is not read, and the genuine documents beside it still verify."""
    just_over = tmp_path / "just-over.msgpack"
    just_over.write_bytes(b"\x00" * (1024 * 1024 + 1))
    huge = tmp_path / "huge.msgpack"
    with huge.open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: costs no disk
    res = verify(net, just_over, *net.docs(), huge, cwd=tmp_path)
    assert_rejected(res, {just_over.name: {"oversize"}, huge.name: {"oversize"}})
    assert res.stdout.count("OK    ") == 1 + len(net.docs()), show(res)


def test_verify_oversize_root_is_a_rejected_root(net: Net, tmp_path: Path) -> None:
    huge = tmp_path / "root-huge.msgpack"
    with huge.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    res = run(P2P, "verify", "--root", huge, net.allow, cwd=tmp_path)
    assert_rejected(res, {huge.name: {"oversize"}})


def _fifo(tmp_path: Path, name: str = "pipe") -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


def _outputs(net: Net, d: Path, out: Path) -> dict[str, tuple[Sequence[str], list[Arg]]]:
    """The commands that write ``-o``; ``allow`` signs with (and records in) network ``d``."""
    return {
        "release": (P2P, _release(net, out=out)),
        "scope": (P2P, _scope(net, "--everyone", out=out)),
        "allow": (COORD, ["allow", net.release, "--dir", d, "-o", out]),
    }


@pytest.mark.parametrize("command", ["release", "scope", "allow"])
def test_output_onto_a_fifo_is_refused_and_kept(
    net: Net, net_copy: Path, tmp_path: Path, command: str
) -> None:
    out = _fifo(tmp_path)
    tool, args = _outputs(net, net_copy, out)[command]
    res = run(tool, *args, cwd=tmp_path, timeout=60)
    assert_usage_error(res, "p2pupdate-coordinator" if tool is COORD else "p2pupdate")
    assert stat.S_ISFIFO(os.lstat(out).st_mode), "the FIFO was replaced by a regular file"
    # refused before anything was signed: the network's next allowlist version is unused
    assert sorted(p.name for p in (net_copy / "allowlists").iterdir()) == ["v1.msgpack"]


@pytest.mark.parametrize("command", ["release", "allow"])
def test_output_through_a_link_to_a_device_is_refused(
    net: Net, net_copy: Path, tmp_path: Path, command: str
) -> None:
    """As root, ``-o /dev/null`` would replace /dev/null; a link to it shows the same
    without touching the real one (the link would be replaced, the device never)."""
    out = tmp_path / "null"
    out.symlink_to(os.devnull)
    tool, args = _outputs(net, net_copy, out)[command]
    res = run(tool, *args, cwd=tmp_path, timeout=60)
    assert_usage_error(res, "p2pupdate-coordinator" if tool is COORD else "p2pupdate")
    assert out.is_symlink() and os.readlink(out) == os.devnull


def test_release_of_a_fifo_is_refused_without_reading_it(net: Net, tmp_path: Path) -> None:
    """Like ``release /dev/zero`` (which reads forever): only a regular file is an artifact."""
    src = _fifo(tmp_path, "build.fifo")
    res = run(P2P, *_release(net, file=src), cwd=tmp_path, timeout=30)
    assert_usage_error(res, "p2pupdate")
    assert not (tmp_path / "out.msgpack").exists()


@pytest.mark.parametrize("tool", ["verify", "keys-show", "release-key"])
def test_a_fifo_given_as_an_input_is_refused(net: Net, tmp_path: Path, tool: str) -> None:
    src = _fifo(tmp_path, "in.fifo")
    args: dict[str, list[Arg]] = {
        "verify": ["verify", "--root", net.root, src],
        "keys-show": ["keys", "show", src],
        "release-key": _release(net, key=src),
    }
    res = run(P2P, *args[tool], cwd=tmp_path, timeout=30)
    assert_usage_error(res, "p2pupdate")


@pytest.mark.parametrize("length", [300, 236])
def test_keys_new_with_a_name_too_long_is_one_line(tmp_path: Path, length: int) -> None:
    """300: longer than any file name; 236: the key would fit, its temporary name (and the
    public key's) would not, and a refusal must not leave a private key behind."""
    out = tmp_path / ("k" * (length - 4) + ".pem")
    res = run(P2P, "keys", "new", "-o", out, "--public", cwd=tmp_path)
    assert_usage_error(res, "p2pupdate")
    assert list(tmp_path.iterdir()) == []


# == 4. --help everywhere ================================================================

HELP = [
    (P2P, []),
    (P2P, ["keys"]),
    (P2P, ["keys", "new"]),
    (P2P, ["keys", "show"]),
    (P2P, ["release"]),
    (P2P, ["scope"]),
    (P2P, ["verify"]),
    (COORD, []),
    (COORD, ["init"]),
    (COORD, ["allow"]),
]


@pytest.mark.parametrize(
    ("tool", "args"),
    HELP,
    ids=[" ".join(["coordinator" if t is COORD else "p2pupdate", *a]) for t, a in HELP],
)
def test_help(tmp_path: Path, tool: Sequence[str], args: list[str]) -> None:
    for flag in ("--help", "-h"):
        res = run(tool, *args, flag, cwd=tmp_path)
        assert_ok(res)
        assert res.stdout.startswith("usage:"), show(res)
        assert res.stderr == ""


def test_version(tmp_path: Path) -> None:
    for tool, prog in ((P2P, "p2pupdate"), (COORD, "p2pupdate-coordinator")):
        res = run(tool, "--version", cwd=tmp_path)
        assert_ok(res)
        assert res.stdout.startswith(f"{prog} "), show(res)


# == 5. files, modes, versions, fractions ===============================================


def test_init_writes_root_and_one_key_pair_per_role(net: Net) -> None:
    assert net.root.is_file()
    expected = {
        f"{role}-{i}{ext}"
        for role, n in (("root", 1), ("release", 1), ("coordinator", 3), ("operator", 1))
        for i in range(1, n + 1)
        for ext in (".pem", ".pub.pem")
    }
    assert {p.name for p in (net.dir / "keys").iterdir()} == expected
    assert [p.name for p in (net.dir / "allowlists").iterdir()] == ["v1.msgpack"]
    assert (net.dir / "allowlists" / "v1.msgpack").read_bytes() == net.allow.read_bytes()


def test_private_keys_are_mode_0600(net: Net) -> None:
    keys = net.dir / "keys"
    assert keys.stat().st_mode & 0o077 == 0
    private = [p for p in keys.iterdir() if not p.name.endswith(".pub.pem")]
    assert len(private) == 6
    for p in [*private, net.node_key]:
        assert p.stat().st_mode & 0o777 == 0o600, p
        assert p.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for p in keys.glob("*.pub.pem"):
        assert p.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
        assert p.stat().st_mode & 0o022 == 0, p


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not on PATH")
def test_private_keys_are_readable_by_openssl(net: Net, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl
    for p in sorted((net.dir / "keys").glob("*.pem")):
        if p.name.endswith(".pub.pem"):
            continue
        res = subprocess.run(
            [openssl, "pkey", "-in", str(p), "-pubout"],
            capture_output=True,
            check=False,
            timeout=30,
        )
        assert res.returncode == 0, (p, res.stderr)
        # openssl derives the same public key that was written next to it
        assert res.stdout == p.with_name(p.name.removesuffix(".pem") + ".pub.pem").read_bytes()


def test_keys_new_prints_the_node_id_of_the_key(net: Net, tmp_path: Path) -> None:
    res = run(P2P, "keys", "show", net.node_key, cwd=tmp_path)
    assert_ok(res)
    assert res.stdout.strip() == net.node
    res = run(P2P, "keys", "new", "-o", tmp_path / "n.pem", "--public", cwd=tmp_path)
    assert_ok(res)
    shown = run(P2P, "keys", "show", tmp_path / "n.pub.pem", cwd=tmp_path)
    assert_ok(shown)
    assert shown.stdout.strip() == res.stdout.strip() != net.node
    assert (tmp_path / "n.pem").stat().st_mode & 0o777 == 0o600


def test_allow_increments_the_version_and_keeps_every_allowlist(
    net: Net, net_copy: Path, tmp_path: Path
) -> None:
    outs = []
    for version in (2, 3):
        out = tmp_path / f"allow-{version}.msgpack"
        res = run(COORD, "allow", net.release, "--dir", net_copy, "-o", out, cwd=tmp_path)
        assert_ok(res)
        assert f"allowlist v{version} " in res.stdout, show(res)
        assert (net_copy / "allowlists" / f"v{version}.msgpack").read_bytes() == out.read_bytes()
        outs.append(out)
    kept = sorted(p.name for p in (net_copy / "allowlists").iterdir())
    assert kept == ["v1.msgpack", "v2.msgpack", "v3.msgpack"]
    res = verify(net, net.release, outs[1], net.allow, outs[0], cwd=tmp_path, extra=["--json"])
    assert_ok(res)
    versions = sorted(d["document"]["version"] for d in verify_json(res)["documents"][1:])
    assert versions == [1, 2, 3]


def test_allow_from_a_fresh_network_starts_at_v1(net: Net, tmp_path: Path) -> None:
    d = tmp_path / "fresh"
    assert_ok(run(COORD, "init", d, cwd=tmp_path))
    rel = tmp_path / "rel.msgpack"
    assert_ok(run(P2P, *_release(net, key=d / "keys" / "release-1.pem", out=rel), cwd=tmp_path))
    for version in (1, 2):
        res = run(COORD, "allow", rel, "--dir", d, "-o", tmp_path / "a.msgpack", cwd=tmp_path)
        assert_ok(res)
        assert f"allowlist v{version} " in res.stdout, show(res)
    assert sorted(p.name for p in (d / "allowlists").iterdir()) == ["v1.msgpack", "v2.msgpack"]


def test_fraction_scope_agrees_with_in_fraction(net: Net, tmp_path: Path) -> None:
    seed = "5eed" * 8
    scope = tmp_path / "fraction.msgpack"
    assert_ok(
        run(
            P2P,
            *_scope(net, "--fraction", "0.5", "--seed", seed, out=scope),
            cwd=tmp_path,
        )
    )
    ins: list[str] = []
    outs: list[str] = []
    i = 0
    while len(ins) < 3 or len(outs) < 3:
        node = other_node(f"fraction-node-{i}")
        i += 1
        group = ins if in_fraction(bytes.fromhex(seed), node, 0.5) else outs
        if len(group) < 3:
            group.append(node)
    for node in ins + outs:
        res = verify(
            net, net.release, net.allow, scope, cwd=tmp_path, extra=["--as-node", node, "--json"]
        )
        assert_ok(res)
        out = verify_json(res)
        doc = out["documents"][2]["document"]
        assert doc["kind"] == "fraction" and doc["seed"] == seed and doc["fraction"] == 0.5
        expected = in_fraction(bytes.fromhex(seed), node, 0.5)
        assert (out["node"]["may_move_to"] == net.artifact) is expected, (node, out["node"])
        reasons = [g["reason"] for g in out["node"]["gates"]]
        assert ("in-fraction" if expected else "outside-fraction") in reasons


def test_fraction_accepts_a_percentage(net: Net, tmp_path: Path) -> None:
    scope = tmp_path / "pct.msgpack"
    res = run(P2P, *_scope(net, "--fraction", "5%", out=scope), cwd=tmp_path)
    assert_ok(res)
    out = verify_json(verify(net, scope, cwd=tmp_path, extra=["--json"]))
    doc = out["documents"][0]["document"]
    assert doc["fraction"] == 0.05
    assert len(bytes.fromhex(doc["seed"])) >= 8  # a random seed was chosen
