"""``p2pupdate scope --ramp``: one signed scope with staged fractions (in-process, ms)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pupdate.cli.commands import main
from p2pupdate.core import crypto
from p2pupdate.core.crypto import Envelope
from p2pupdate.core.documents import Scope

ART = "cd" * 32


def key_file(tmp_path: Path) -> Path:
    p = tmp_path / "operator.pem"
    p.write_bytes(crypto.private_key_to_pem(crypto.SigningKey.from_seed(b"\x01" * 32)))
    return p


def test_scope_ramp_signs_the_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scope.msgpack"
    argv = ["scope", "--artifact", ART, "--ramp", "0:0.01,3600:10%,86400:1"]
    rc = main([*argv, "--seed", "00" * 8, "--key", str(key_file(tmp_path)), "-o", str(out)])
    assert rc == 0
    scope = Scope.from_payload(Envelope.from_wire(out.read_bytes()).payload)
    assert scope.kind == "fraction" and scope.fraction == 1.0
    assert scope.ramp == ((0, 0.01), (3600, 0.1), (86400, 1.0))
    printed = capsys.readouterr().out
    assert "ramp 0:0.01,3600:0.1,86400:1" in printed and "stage 1 of 3 in force" in printed


@pytest.mark.parametrize(
    ("ramp", "message"),
    [
        ("0:0.1,0:0.2", "strictly increase"),
        ("0:0.5,10:0.1", "must not decrease"),
        ("0.1", "not a stage AFTER:FRACTION"),
        ("x:0.1", "not whole seconds"),
        ("0:2", "must be between 0 and 1"),
    ],
)
def test_scope_ramp_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ramp: str, message: str
) -> None:
    out = tmp_path / "scope.msgpack"
    argv = ["scope", "--artifact", ART, "--ramp", ramp, "--key", str(key_file(tmp_path))]
    with pytest.raises(SystemExit) as exit_:
        rc = main([*argv, "-o", str(out)])
        raise SystemExit(rc)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_scope_help_mentions_the_ramp(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["scope", "--help"])
    assert "--ramp" in capsys.readouterr().out
