"""``p2pupdate-coordinator bundle`` (P11), in-process through ``coordinator.cli.main``.

What a bundle means is the core's (``core.bundle``); these tests check that the command
writes what it was asked for, signed so ``open_bundle`` accepts it, and that a mistake is
one line and exit 2 with nothing written.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from p2pupdate.core import admission
from p2pupdate.core import bundle as bd
from tests.cli.test_admission_cli import coord, init, one_usage_line


def test_bundle_carries_root_network_document_and_urls_signed_by_the_root_role(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    root = init(capsys, d, "--root-keys", "3", "--root-threshold", "2", "--pow-bits", "0")
    out = tmp_path / "network.bundle"
    code, stdout, err = coord(
        capsys, "bundle", "--dir", d, "--url", "http://r1.example:8470",
        "--url", "http://10.0.0.2:8470", "--stun", "stun:stun.example:3478",
        "--turn", "turn:turn.example?transport=tcp", "--pool", "edge", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert "bundle of network" in stdout and str(out) in stdout
    opened = bd.open_bundle(out.read_bytes(), now=int(time.time()))
    b = opened.bundle
    assert opened.root.doc == root
    assert opened.root.envelope.to_wire() == (d / "root.msgpack").read_bytes()
    assert b.network_config == (d / admission.NETWORK_FILE).read_bytes()
    assert b.replicas == ("http://r1.example:8470", "http://10.0.0.2:8470")
    assert (b.stun, b.turn, b.pool) == (
        ("stun:stun.example:3478",),
        ("turn:turn.example?transport=tcp",),
        "edge",
    )
    assert len(opened.signers) >= 2 and opened.signers <= set(root.roles["root"].keys)
    assert b.expires == root.expires  # lives as long as the root that signs it


def test_bundle_of_a_network_without_network_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    init(capsys, d)
    (d / admission.NETWORK_FILE).unlink()  # a network made before admission
    out = tmp_path / "b"
    code, stdout, err = coord(capsys, "bundle", "--dir", d, "--url", "http://r:1", "-o", out)
    assert code == 0, err
    assert "default admission rule" in stdout
    assert bd.open_bundle(out.read_bytes(), now=int(time.time())).network_config is None


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--url", "https://r.example:8470"], "TLS is not built in yet"),
        (["--url", "ftp://r.example"], "is not http(s)://HOST[:PORT]"),
        (["--url", "http://r.example/path"], "is not http(s)://HOST[:PORT]"),
        (["--url", "http://r:1", "--stun", "http://s"], "argument --stun"),
        (["--url", "http://r:1", "--stun", "turn:t.example"], "expected a stun: URL"),
        (["--url", "http://r:1", "--pool", ""], "argument --pool"),
        (["--url", "http://r:1", "--expires", "5000d"], "outlive its root"),
        ([f"--url=http://r{i}:1" for i in range(bd.MAX_REPLICAS + 1)], "more than 32"),
        (
            ["--url", "http://r:1"]
            + [f"--stun=stun:s{i}" for i in range(5)]
            + [f"--turn=turn:t{i}" for i in range(4)],
            "at most 8 STUN and TURN",
        ),
    ],
)
def test_bundle_mistakes_are_one_line_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str], says: str
) -> None:
    d = tmp_path / "net"
    init(capsys, d)
    out = tmp_path / "network.bundle"
    code, _out, err = coord(capsys, "bundle", "--dir", d, *flags, "-o", out)
    line = one_usage_line(code, err)
    assert says in line, line
    assert not out.exists()


def test_bundle_needs_a_threshold_of_root_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    init(capsys, d, "--root-keys", "2", "--root-threshold", "2")
    for pem in sorted((d / "keys").glob("root-*.pem"))[:1]:
        if not pem.name.endswith(".pub.pem"):
            pem.unlink()
    out = tmp_path / "network.bundle"
    code, _out, err = coord(capsys, "bundle", "--dir", d, "--url", "http://r:1", "-o", out)
    assert "1 root keys of this root; 2 needed" in one_usage_line(code, err), err
    assert not out.exists()
    # operator keys are not root keys
    op = next(p for p in (d / "keys").glob("operator-*.pem") if not p.name.endswith(".pub.pem"))
    code, _out, err = coord(
        capsys, "bundle", "--dir", d, "--url", "http://r:1", "--key", op, "-o", out
    )
    assert "not a root key" in one_usage_line(code, err), err
    assert not out.exists()


def test_bundle_refuses_a_network_document_of_another_root(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    init(capsys, a)
    init(capsys, b)
    (a / admission.NETWORK_FILE).write_bytes((b / admission.NETWORK_FILE).read_bytes())
    out = tmp_path / "network.bundle"
    code, _out, err = coord(capsys, "bundle", "--dir", a, "--url", "http://r:1", "-o", out)
    assert code == 1 and "not a network document of this root" in err, err
    assert not out.exists()
