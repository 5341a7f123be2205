"""``p2pupdate-coordinator rotate`` (P13, key rotation), run in-process through
``coordinator.cli.main`` (milliseconds each).

Each mode writes root N+1 to ``-o`` and DIR/root.msgpack, signed so that a node holding
root N takes it (``TrustStore.update_root``), new key files (0600, never over an existing
one) and the replaced key moved aside as ``.retired-N``; the commands that sign with the
rotated role then work with the new keys.  A mistake is one line, exit 2, nothing written.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

import pytest

from p2pupdate.cli import main as p2pupdate_main
from p2pupdate.core import admission, crypto
from p2pupdate.core import bundle as bd
from p2pupdate.core import documents as docs
from p2pupdate.core.trust import TrustStore

from .test_admission_cli import coord, init, network_doc, one_usage_line


def keyid_of(path: Path) -> str:
    return crypto.private_key_from_pem(path.read_bytes()).keyid


def snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``d``: bytes and mode (to show that nothing was written)."""
    return {
        str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mode)
        for p in sorted(d.rglob("*"))
        if p.is_file()
    }


def rotate(capsys: pytest.CaptureFixture[str], d: Path, out: Path, *flags: str) -> str:
    code, stdout, err = coord(capsys, "rotate", "--dir", d, *flags, "-o", out)
    assert code == 0, err
    return stdout


def test_replace_a_coordinator_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = tmp_path / "net"
    v1 = init(capsys, d, "--replicas", "2", "--quorum", "1")
    v1_bytes = (d / "root.msgpack").read_bytes()
    stolen = keyid_of(d / "keys" / "coordinator-2.pem")
    old_pem = (d / "keys" / "coordinator-2.pem").read_bytes()
    network_before = (d / admission.NETWORK_FILE).read_bytes()
    out = tmp_path / "root-v2.msgpack"
    said = rotate(capsys, d, out, "--role", "coordinator", "--replace", stolen[:16])

    data = out.read_bytes()
    assert (d / "root.msgpack").read_bytes() == data
    v2 = docs.open_root(data, signed_by=v1).doc
    _, store = TrustStore.from_root(v1_bytes, int(time.time())).update_root(data, int(time.time()))
    assert store.root.version == 2
    keys = d / "keys"
    new = keys / "coordinator-2.pem"
    assert (keys / "coordinator-2.pem.retired-1").read_bytes() == old_pem
    assert (keys / "coordinator-2.pub.pem.retired-1").is_file()
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    fresh = keyid_of(new)
    pub = crypto.public_key_from_pem((keys / "coordinator-2.pub.pem").read_bytes())
    assert crypto.keyid(pub) == keyid_of(new)
    assert v2.roles["coordinator"].keys == (v1.roles["coordinator"].keys[0], fresh)
    assert stolen not in v2.keys
    # the root role did not change: the network document is left as it was
    assert (d / admission.NETWORK_FILE).read_bytes() == network_before
    assert f"{stolen[:16]}..." in said and f"{fresh[:16]}..." in said
    for step in ("publish", "restart replica 2", "allow", "bundle"):
        assert step in said, said
    # ``allow`` signs with the coordinator keys the new root lists (the retired one is not
    # read: it no longer ends in .pem)
    release = tmp_path / "v2.release"
    build = tmp_path / "build.bin"
    build.write_bytes(os.urandom(2000))
    assert p2pupdate_main(
        [
            "release", str(build), "--key", str(keys / "release-1.pem"), "--counter", "2",
            "--name", "v2", "-o", str(release),
        ]
    ) == 0  # fmt: skip
    allow = tmp_path / "allow.msgpack"
    code, _o, err = coord(capsys, "allow", release, "--dir", d, "-o", allow)
    assert code == 0, err
    signed = store.verify(docs.Allowlist, allow.read_bytes(), int(time.time()))
    assert signed.signers <= set(v2.roles["coordinator"].keys)


def test_rotate_the_root_key_resigns_the_network_document_and_the_bundle_follows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    v1 = init(capsys, d)
    old_root = keyid_of(d / "keys" / "root-1.pem")
    out = tmp_path / "root-v2.msgpack"
    said = rotate(capsys, d, out, "--role", "root", "--replace", old_root)
    v2 = docs.open_root(out.read_bytes(), signed_by=v1).doc
    fresh = keyid_of(d / "keys" / "root-1.pem")
    assert v2.roles["root"].keys == (fresh,) and (d / "keys" / "root-1.pem.retired-1").is_file()
    config = network_doc(d, v2).doc  # signed by the new root key
    assert config.version == 2 and config.expires == v2.expires
    assert "network configuration v2" in said and "bundle" in said
    bundle = tmp_path / "network.bundle"
    code, _o, err = coord(
        capsys, "bundle", "--dir", d, "--url", "http://127.0.0.1:8470", "-o", bundle
    )
    assert code == 0, err
    opened = bd.open_bundle(bundle.read_bytes(), now=int(time.time()))
    assert opened.root.doc.version == 2
    assert opened.network_config is not None and opened.network_config.doc.version == 2


def test_add_remove_and_threshold(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = tmp_path / "net"
    v1 = init(capsys, d, "--replicas", "2", "--quorum", "2")
    said = rotate(capsys, d, tmp_path / "v2", "--role", "coordinator", "--add", "1")
    v2 = docs.open_root((tmp_path / "v2").read_bytes(), signed_by=v1).doc
    third = keyid_of(d / "keys" / "coordinator-3.pem")
    assert v2.roles["coordinator"] == docs.Role(
        keys=(*v1.roles["coordinator"].keys, third), threshold=2
    )
    assert "start the new replica(s) 3" in said
    first = keyid_of(d / "keys" / "coordinator-1.pem")
    said = rotate(
        capsys, d, tmp_path / "v3", "--role", "coordinator", "--remove", first, "--threshold", "1"
    )
    v3 = docs.open_root((tmp_path / "v3").read_bytes(), signed_by=v2).doc
    assert v3.roles["coordinator"].threshold == 1 and first not in v3.keys
    assert not (d / "keys" / "coordinator-1.pem").exists()
    assert (d / "keys" / "coordinator-1.pem.retired-2").is_file()
    assert "stop replica 1" in said
    # a new key never takes a retired index
    rotate(capsys, d, tmp_path / "v4", "--role", "coordinator", "--add", "1")
    assert (d / "keys" / "coordinator-4.pem").is_file()
    rotate(capsys, d, tmp_path / "v5", "--role", "operator", "--threshold", "1", "--add", "1")
    v5 = docs.open_root((d / "root.msgpack").read_bytes()).doc
    assert v5.version == 5 and len(v5.roles["operator"].keys) == 2


def test_root_keys_kept_offline_come_with_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    v1 = init(capsys, d)
    offline = tmp_path / "offline"
    offline.mkdir()
    shutil.move(d / "keys" / "root-1.pem", offline / "root-1.pem")
    before = snapshot(d)
    code, _o, err = coord(
        capsys, "rotate", "--dir", d, "--role", "operator", "--add", "1", "-o", tmp_path / "v2"
    )
    assert "holds 0 root keys of root v1; 1 needed (give them with --key)" in one_usage_line(
        code, err
    )
    assert snapshot(d) == before and not (tmp_path / "v2").exists()
    code, _o, err = coord(
        capsys, "rotate", "--dir", d, "--role", "operator", "--add", "1",
        "--key", d / "keys" / "operator-1.pem", "-o", tmp_path / "v2",
    )  # fmt: skip
    assert "not a root key" in one_usage_line(code, err)
    assert snapshot(d) == before
    # the root key's replacement is made here and signs too; the offline one signs for v1
    rotate(
        capsys, d, tmp_path / "v2", "--role", "root", "--replace", keyid_of(offline / "root-1.pem"),
        "--key", str(offline / "root-1.pem"),
    )  # fmt: skip
    v2 = docs.open_root((tmp_path / "v2").read_bytes(), signed_by=v1).doc
    assert v2.roles["root"].keys != v1.roles["root"].keys
    # its public half was in DIR/keys: moved aside, and the new key takes index 1
    assert keyid_of(d / "keys" / "root-1.pem") == v2.roles["root"].keys[0]
    assert (d / "keys" / "root-1.pub.pem.retired-1").is_file()
    assert keyid_of(offline / "root-1.pem") == v1.roles["root"].keys[0]  # untouched


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--role", "coordinator", "--replace", "00000000"],
            "not one of the coordinator keys of root v1",
        ),
        (["--role", "coordinator", "--replace", "zz"], "not a key id"),
        (["--role", "coordinator"], "nothing to change"),
        (["--role", "coordinator", "--threshold", "3"], "exceeds its 2 keys"),
        (["--role", "release", "--remove", "RELEASE"], "only release key"),
        (["--role", "coordinator", "--add", "1", "--remove", "x"], "not allowed with argument"),
        (["--role", "boss", "--add", "1"], "invalid choice"),
        (["--role", "coordinator", "--add", "0"], "--add"),
        (["--role", "coordinator", "--replace", "C1", "-o", "/dev/null"], "/dev/null"),
        (["--role", "coordinator", "--replace", "C1", "--dir", "NOWHERE"], "no such directory"),
        (["--role", "coordinator", "--replace", "C1", "RETIRED"], "refusing to overwrite"),
    ],
)
def test_mistakes_are_one_line_exit_2_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], message: str
) -> None:
    d = tmp_path / "net"
    init(capsys, d, "--replicas", "2")
    names = {
        "RELEASE": keyid_of(d / "keys" / "release-1.pem"),
        "C1": keyid_of(d / "keys" / "coordinator-1.pem"),
        "NOWHERE": str(tmp_path / "nowhere"),
    }
    if "RETIRED" in flags:  # a file already where the replaced key would be moved aside
        flags = [f for f in flags if f != "RETIRED"]
        (d / "keys" / "coordinator-1.pem.retired-1").write_bytes(b"kept")
    args = [names.get(f, f) for f in flags]
    out = tmp_path / "v2"
    if "-o" not in args:
        args += ["-o", str(out)]
    if "--dir" not in args:
        args = ["--dir", str(d), *args]
    before = snapshot(d)
    code, _o, err = coord(capsys, "rotate", *args)
    assert message in one_usage_line(code, err), err
    assert snapshot(d) == before and not out.exists()


def test_a_write_that_fails_half_way_is_undone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk when DIR/root.msgpack is written (the fault injected): the key files
    are put back as they were and OUT is removed, so nothing names a key that is gone."""
    import errno

    import coordinator.cli as cli

    d = tmp_path / "net"
    init(capsys, d, "--replicas", "2")
    before = snapshot(d)

    def full(path: object, data: bytes, **_kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "atomic_write", full)
    out = tmp_path / "v2"
    code, _o, err = coord(
        capsys, "rotate", "--dir", d, "--role", "coordinator",
        "--replace", keyid_of(d / "keys" / "coordinator-1.pem"), "-o", out,
    )  # fmt: skip
    assert "No space left on device (nothing changed" in one_usage_line(code, err)
    assert snapshot(d) == before and not out.exists()
