"""The operator's admission commands (P10): ``init``'s network document, ``network`` and
``member``, run in-process through ``coordinator.cli.main`` (milliseconds each).

What the documents they write mean is the core's (``core.admission``); these tests check
that the commands write exactly what they were asked for, signed so the core accepts it
(``open_signed`` / ``open_member`` / ``admit_hello`` against the network's own root), and
that a mistake is one line and exit 2 with nothing written.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from coordinator.cli import main as coordinator_main
from p2pupdate.cli import main as p2pupdate_main
from p2pupdate.core import admission, crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.crypto import Envelope
from p2pupdate.core.trust import TrustStore

PROG = "p2pupdate-coordinator"
NODE = "ab" * 32


def coord(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run ``p2pupdate-coordinator ARGS`` in-process: (exit code, stdout, stderr)."""
    try:
        code = coordinator_main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def one_usage_line(code: int, err: str, command: str = "") -> str:
    """Exit 2 and exactly one line on stderr, naming the tool."""
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}{command}") and ": error: " in lines[0], err
    return lines[0]


def init(capsys: pytest.CaptureFixture[str], d: Path, *flags: str) -> docs.Root:
    code, _out, err = coord(capsys, "init", d, *flags)
    assert code == 0, err
    return docs.open_root((d / "root.msgpack").read_bytes()).doc


def network_doc(d: Path, root: docs.Root) -> docs.Signed[docs.NetworkConfig]:
    return docs.open_signed(docs.NetworkConfig, (d / admission.NETWORK_FILE).read_bytes(), root)


def rule(config: docs.NetworkConfig) -> dict[str, object]:
    return {f: getattr(config, f) for f in ("admission", "pow_bits", "standing_s")} | {
        cap: getattr(config, cap) for cap in admission.DEFAULT_CAPS
    }


# -- init ---------------------------------------------------------------------------------


def test_init_writes_a_root_signed_network_document_with_the_defaults(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    before = int(time.time())
    root = init(capsys, d)
    signed = network_doc(d, root)
    config = signed.doc
    assert rule(config) == {
        "admission": "open",
        "pow_bits": 18,
        "standing_s": 3600,
        **admission.DEFAULT_CAPS,
    }
    assert config.version == 1 and config.network == root.network == "net"
    assert before <= config.issued <= int(time.time())
    assert config.expires == root.expires  # re-signed with the root, by the same keys
    root_key = crypto.private_key_from_pem((d / "keys" / "root-1.pem").read_bytes())
    assert signed.signers == {root_key.keyid}
    # what a replica or node does with it: fresh, above no floor
    TrustStore.from_root(root.sign([root_key]).to_wire(), int(time.time())).verify(
        docs.NetworkConfig, (d / admission.NETWORK_FILE).read_bytes(), int(time.time())
    )
    # and the rule it names holds: a plain key's id has no proof of work
    plain = crypto.SigningKey.from_seed(os.urandom(32)).keyid
    while admission.leading_zero_bits(plain) >= 18:  # 1 in 2^18
        plain = crypto.SigningKey.from_seed(os.urandom(32)).keyid
    refused = admission.admit_hello(config, node=plain, member=None, root=root, now=before)
    assert isinstance(refused, admission.Refused)
    assert refused.reason == "admission/proof-of-work"


def test_init_writes_the_rule_it_is_given(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    root = init(
        capsys,
        d,
        "--root-keys", "3", "--root-threshold", "2",
        "--admission", "enrolled",
        "--pow-bits", "0",
        "--standing", "0",
        "--subnet-nodes", "10",
        "--subnet-reporters", "3",
        "--subnet-leases", "2",
        "--subnet-failures", "1",
        "--network", "fleet",
    )  # fmt: skip
    signed = network_doc(d, root)  # a 2-of-3 threshold of root keys
    assert rule(signed.doc) == {
        "admission": "enrolled",
        "pow_bits": 0,
        "standing_s": 0,
        "subnet_nodes": 10,
        "subnet_reporters": 3,
        "subnet_leases": 2,
        "subnet_failures": 1,
    }
    assert signed.doc.network == "fleet" and len(signed.signers) == 3


def test_init_standing_takes_a_duration(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = init(capsys, tmp_path / "net", "--standing", "15m", "--pow-bits", "40")
    config = network_doc(tmp_path / "net", root).doc
    assert (config.standing_s, config.pow_bits) == (900, 40)


BAD_INIT = {
    "pow-bits-over-40": ["--pow-bits", "41"],
    "pow-bits-negative": ["--pow-bits", "-1"],
    "pow-bits-not-a-number": ["--pow-bits", "many"],
    "standing-over-30d": ["--standing", "31d"],
    "standing-not-a-duration": ["--standing", "1y"],
    "admission-unknown": ["--admission", "closed"],
    "subnet-nodes-zero": ["--subnet-nodes", "0"],
    "subnet-leases-over-a-million": ["--subnet-leases", "1000001"],
    "subnet-failures-not-a-number": ["--subnet-failures", "two"],
}


@pytest.mark.parametrize("case", sorted(BAD_INIT))
def test_init_bad_admission_flag_is_one_line_and_makes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str
) -> None:
    d = tmp_path / "net"
    code, _out, err = coord(capsys, "init", d, *BAD_INIT[case])
    line = one_usage_line(code, err, " init")
    assert BAD_INIT[case][0] in line
    assert not d.exists()


def test_init_help_says_what_each_flag_means(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _err = coord(capsys, "init", "--help")
    assert code == 0
    text = " ".join(out.split())
    for flag in ("--admission", "--pow-bits", "--standing", "--subnet-nodes",
                 "--subnet-reporters", "--subnet-leases", "--subnet-failures"):  # fmt: skip
        assert flag in text
    assert "default 18" in text and "2^18" in text and "default 1h" in text
    assert "(default 256)" in text and "/24" in text


# -- network ------------------------------------------------------------------------------


def test_network_bumps_the_version_and_keeps_what_it_is_not_told(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    root = init(capsys, d, "--pow-bits", "5", "--subnet-leases", "7")
    first = network_doc(d, root).doc

    code, out, err = coord(capsys, "network", d, "--admission", "enrolled")
    assert code == 0, err
    second = network_doc(d, root).doc
    assert second.version == 2
    assert rule(second) == {**rule(first), "admission": "enrolled"}
    assert second.expires == root.expires
    assert second.describe() in out
    assert "restart" in out and "--network-config" in out

    code, _out, err = coord(capsys, "network", d, "--standing", "10m", "--expires", "2d")
    assert code == 0, err
    third = network_doc(d, root).doc
    assert third.version == 3
    assert rule(third) == {**rule(second), "standing_s": 600}
    assert third.expires == third.issued + 2 * 86400

    # a node that saw every version takes each in turn (the version floor rises)
    store = TrustStore.from_root((d / "root.msgpack").read_bytes(), int(time.time()))
    signed = network_doc(d, root)
    store.accept(docs.NetworkConfig, signed.envelope.to_wire(), int(time.time()))


def test_network_without_flags_shows_the_document_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    root = init(capsys, d)
    before = (d / admission.NETWORK_FILE).read_bytes()
    code, out, err = coord(capsys, "network", d)
    assert code == 0, err
    assert network_doc(d, root).doc.describe() in out and "valid" in out
    assert (d / admission.NETWORK_FILE).read_bytes() == before


def forged(d: Path, how: str) -> bytes:
    """DIR's network document, forged ``how``."""
    genuine = Envelope.from_wire((d / admission.NETWORK_FILE).read_bytes())
    if how == "flipped-byte":
        payload = bytearray(genuine.payload)
        payload[-1] ^= 1
        return Envelope(
            type=genuine.type, payload=bytes(payload), signatures=genuine.signatures
        ).to_wire()
    config = docs.NetworkConfig.from_payload(genuine.payload)
    if how == "operator-signed":
        key = crypto.private_key_from_pem((d / "keys" / "operator-1.pem").read_bytes())
    else:  # a root key of no network of ours
        key = crypto.SigningKey.from_seed(os.urandom(32))
    return config.sign([key]).to_wire()


@pytest.mark.parametrize("how", ["flipped-byte", "operator-signed", "stranger-signed"])
def test_network_refuses_a_forged_current_document(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, how: str
) -> None:
    d = tmp_path / "net"
    init(capsys, d)
    bad = forged(d, how)
    (d / admission.NETWORK_FILE).write_bytes(bad)
    for args in ([], ["--admission", "enrolled"]):
        code, out, err = coord(capsys, "network", d, *args)
        assert code == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{PROG}: rejected: "), err
        assert str(d / admission.NETWORK_FILE) in lines[0] and "genuine copy" in lines[0]
        assert out == ""
        assert (d / admission.NETWORK_FILE).read_bytes() == bad


def test_network_refuses_a_missing_document_and_new_writes_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    root = init(capsys, d)
    (d / admission.NETWORK_FILE).unlink()  # a network made before admission existed
    code, _out, err = coord(capsys, "network", d, "--pow-bits", "20")
    line = one_usage_line(code, err)
    assert "no such file" in line and "--new" in line
    assert not (d / admission.NETWORK_FILE).exists()

    code, _out, err = coord(capsys, "network", d, "--new", "--subnet-nodes", "9")
    assert code == 0, err
    config = network_doc(d, root).doc
    assert config.version == 1
    assert rule(config) == {**rule(admission.default_config("net")), "subnet_nodes": 9}

    code, _out, err = coord(capsys, "network", d, "--new")  # once only
    assert "already exists" in one_usage_line(code, err)


def test_network_signs_with_root_keys_kept_elsewhere(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    root = init(capsys, d, "--root-keys", "2", "--root-threshold", "2")
    offline = tmp_path / "offline"
    offline.mkdir()
    for i in (1, 2):  # the root keys moved offline, as the README asks
        shutil.move(d / "keys" / f"root-{i}.pem", offline / f"root-{i}.pem")
    before = (d / admission.NETWORK_FILE).read_bytes()

    code, _out, err = coord(capsys, "network", d, "--pow-bits", "20")
    assert "holds 0 root keys of this root; 2 needed" in one_usage_line(code, err)
    code, _out, err = coord(
        capsys, "network", d, "--pow-bits", "20", "--key", offline / "root-1.pem"
    )
    assert "1 root keys of this root; 2 needed" in one_usage_line(code, err)
    code, _out, err = coord(
        capsys, "network", d, "--pow-bits", "20", "--key", d / "keys" / "operator-1.pem"
    )
    assert "not a root key" in one_usage_line(code, err)
    assert (d / admission.NETWORK_FILE).read_bytes() == before

    code, _out, err = coord(
        capsys, "network", d, "--pow-bits", "20",
        "--key", offline / "root-1.pem", "--key", offline / "root-2.pem",
    )  # fmt: skip
    assert code == 0, err
    signed = network_doc(d, root)
    assert (signed.doc.version, signed.doc.pow_bits, len(signed.signers)) == (2, 20, 2)


@pytest.mark.parametrize(
    "flags", [["--pow-bits", "41"], ["--standing", "soon"], ["--subnet-reporters", "0"]]
)
def test_network_bad_flag_is_one_line_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flags: list[str]
) -> None:
    d = tmp_path / "net"
    init(capsys, d)
    before = (d / admission.NETWORK_FILE).read_bytes()
    code, _out, err = coord(capsys, "network", d, *flags)
    assert flags[0] in one_usage_line(code, err, " network")
    assert (d / admission.NETWORK_FILE).read_bytes() == before


# -- member -------------------------------------------------------------------------------


def test_member_writes_an_operator_signed_document_naming_the_node_and_pool(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    root = init(capsys, d, "--admission", "enrolled", "--operators", "3",
                "--operator-threshold", "2")  # fmt: skip
    out_file = tmp_path / "m.msgpack"
    now = int(time.time())
    code, out, err = coord(
        capsys, "member", d, "--node", NODE.upper(), "--pool", "eu-west", "-o", out_file
    )
    assert code == 0, err
    assert NODE in out and str(out_file) in out
    data = out_file.read_bytes()
    signed = admission.open_member(data, root, now=now)
    assert (signed.doc.node, signed.doc.pool) == (NODE, "eu-west")
    assert now <= signed.doc.issued <= int(time.time())
    assert signed.doc.expires == signed.doc.issued + 365 * 86400
    assert len(signed.signers) == 3  # every operator key DIR holds (threshold 2)
    # what a replica does at the hello of an enrolled network
    config = network_doc(d, root).doc
    admitted = admission.admit_hello(config, node=NODE, member=data, root=root, now=now)
    assert admitted == admission.Admitted(member_expires=signed.doc.expires, pool="eu-west")
    other = admission.admit_hello(config, node="cd" * 32, member=data, root=root, now=now)
    assert isinstance(other, admission.Refused)


def test_verify_shows_network_and_member_documents(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    init(capsys, d)
    member = tmp_path / "m.msgpack"
    assert coord(capsys, "member", d, "--node", NODE, "--expires", "30d", "-o", member)[0] == 0
    code = p2pupdate_main(["verify", "--root", str(d / "root.msgpack"),
                           str(d / admission.NETWORK_FILE), str(member)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK    " + str(d / admission.NETWORK_FILE) + ": network configuration v1" in out
    assert f"OK    {member}: member {NODE[:16]}... of pool 'default'" in out


def test_member_enrolls_many_nodes_into_a_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    root = init(capsys, d)
    out_dir = tmp_path / "members"
    out_dir.mkdir()
    nodes = ["01" * 32, "02" * 32, "03" * 32]
    args = [a for n in nodes for a in ("--node", n)]
    code, _out, err = coord(capsys, "member", d, *args, "-o", out_dir)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{n}.member.msgpack" for n in nodes]
    for n in nodes:
        data = (out_dir / f"{n}.member.msgpack").read_bytes()
        assert admission.open_member(data, root, now=int(time.time())).doc.node == n


@pytest.mark.parametrize(
    "node", ["abc", "g" * 64, "ab" * 31, "ab" * 33, ""], ids=["short", "not-hex", "62", "66", ""]
)
def test_member_bad_node_id_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, node: str
) -> None:
    d = tmp_path / "net"
    init(capsys, d)
    out_file = tmp_path / "m.msgpack"
    code, _out, err = coord(capsys, "member", d, "--node", node, "-o", out_file)
    assert "--node" in one_usage_line(code, err, " member")
    assert "node id" in err
    assert not out_file.exists()


def test_member_mistakes_are_one_line_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = tmp_path / "net"
    init(capsys, d)
    out_file = tmp_path / "m.msgpack"
    cases = [
        (["--node", "01" * 32, "--node", "02" * 32, "-o", out_file], "not a directory"),
        (["--node", NODE, "--pool", "", "-o", out_file], "pool name"),
        (["--node", NODE, "--key", d / "keys" / "root-1.pem", "-o", out_file], "operator key"),
        (["--node", NODE, "-o", tmp_path / "no-such-dir" / "m"], "does not exist"),
    ]
    for args, why in cases:
        code, _out, err = coord(capsys, "member", d, *args)
        assert why in one_usage_line(code, err), err
    assert not out_file.exists()
    code, _out, err = coord(capsys, "member", tmp_path / "nowhere", "--node", NODE, "-o", out_file)
    assert "init" in one_usage_line(code, err)
