"""The node's side of admission (P10): its key, its network and member documents, and
what it says when a replica turns its hello away.

* At first start in an ``open`` network asking for proof of work, the node's new key
  meets it; an existing key that falls short is never replaced silently (the log and the
  status say what the replicas will do and how to fix it), only with
  ``--upgrade-identity``, which keeps the old key as ``identity.pem.old-N``.
* ``--network-config`` and ``--member`` are verified before anything starts: a bad one
  is one line naming the flag and exit 2; a member document naming another node says
  both ids; ``--pool`` must be the member document's pool (and is it, when not given).
* The status file's ``coordinator`` entry says per replica whether it is connected and
  the admission refusal it gave (``admission_refused``).
* One real run: an enrolled network's replica, a real ``p2pupdate node`` with
  ``--member``: it connects (its status says so), and keeps both documents.

All but the last are in-process and take milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pupdate.cli.commands import main as cli_main
from p2pupdate.core import admission, crypto
from p2pupdate.core import documents as docs
from p2pupdate.daemon import identity as ident
from p2pupdate.daemon.coordinator import MEMBER_WARN_BEFORE, CoordinatorLink, MemberSource
from p2pupdate.daemon.main import main as daemon_main
from p2pupdate.daemon.options import check_node_options, open_admission
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.launcher.state import StateDir, StateError
from p2pupdate.net.replica_link import AdmissionRefused

from ..coordinator.service_helpers import Network, ReplicaProcesses, in_process

BITS = 8


def _weak_state(state: Path, bits: int = BITS) -> crypto.SigningKey:
    """A state dir holding a key (both copies) that falls short of ``bits``."""
    while True:
        for name in (ident.IDENTITY, ident.COPY):
            (state / name).unlink(missing_ok=True)
        key = ident.load_identity(state)
        if not admission.pow_ok(key.keyid, bits):
            return key


# -- the key ------------------------------------------------------------------------------


def test_a_first_start_in_an_open_network_makes_a_key_with_the_proof_of_work(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    key = ident.load_identity(tmp_path, lines.append, pow_bits=BITS)
    assert admission.pow_ok(key.keyid, BITS)
    assert any(f"making a node key with {BITS} bits of proof of work" in m for m in lines)
    assert any("tries in" in m and key.keyid[:16] in m for m in lines), lines
    # both copies hold it, and the next start reads it (no second proof of work)
    again: list[str] = []
    assert ident.load_identity(tmp_path, again.append, pow_bits=BITS).keyid == key.keyid
    assert again == []
    assert ident.peek_node_id(tmp_path) == key.keyid


def test_an_existing_weak_key_is_kept_and_said_without_the_flag(tmp_path: Path) -> None:
    weak = _weak_state(tmp_path)
    lines: list[str] = []
    key = ident.load_identity(tmp_path, lines.append, pow_bits=BITS)
    assert key.keyid == weak.keyid
    assert lines == []  # nothing replaced, nothing rewritten
    assert not list(tmp_path.glob("identity.pem.old-*"))
    problem = ident.weak_identity(key.keyid, BITS)
    assert problem is not None
    assert "admission/proof-of-work" in problem and ident.UPGRADE_FLAG in problem
    assert ident.weak_identity(key.keyid, 0) is None


def test_the_upgrade_flag_replaces_a_weak_key_once_keeping_the_old_one(tmp_path: Path) -> None:
    weak = _weak_state(tmp_path)
    lines: list[str] = []
    key = ident.load_identity(tmp_path, lines.append, pow_bits=BITS, upgrade=True)
    assert key.keyid != weak.keyid and admission.pow_ok(key.keyid, BITS)
    old = crypto.private_key_from_pem((tmp_path / "identity.pem.old-1").read_bytes())
    assert old.keyid == weak.keyid
    assert (tmp_path / "identity.pem.old-1").stat().st_mode & 0o777 == 0o600
    assert any(weak.keyid in m and key.keyid in m for m in lines), lines
    # both copies hold the new key, untouched by the quarantine
    assert ident.peek_node_id(tmp_path) == key.keyid
    assert (tmp_path / ident.COPY).read_bytes().startswith(f"# node {key.keyid}\n".encode())
    assert not list(tmp_path.glob("*.bad-*"))
    # the flag left on: a key that meets the difficulty is kept
    assert ident.load_identity(tmp_path, pow_bits=BITS, upgrade=True).keyid == key.keyid
    assert sorted(p.name for p in tmp_path.glob("identity.pem.old-*")) == ["identity.pem.old-1"]


# -- the documents at start -----------------------------------------------------------------


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return Network(tmp_path_factory.mktemp("enrolled") / "net", admission="enrolled")


def _ns(net: Network, **values: object) -> argparse.Namespace:
    """A launcher namespace: every daemon option None (not given) but these."""
    base: dict[str, object] = {
        "trust_root": net.dir / "root.msgpack",
        "coordinator": None,
        "gossip_listen": None,
        "peer": None,
        "zeroconf": None,
        "offer_dir": None,
        "network_config": None,
        "member": None,
        "pool": None,
        "rtc": None,
        "work": "none",
        "health_checks": None,
        "health_interval": None,
        "host": None,
        "port": None,
    }
    base.update(values)
    return argparse.Namespace(**base)


def _check(ns: argparse.Namespace, state: Path | None = None) -> None:
    check_node_options(
        ns, probation=60.0, confirm_margin=5.0, state_dir=state, now=int(time.time())
    )


def _node_cli(state: Path, net: Network, *args: str) -> int:
    return cli_main(
        [
            "node",
            "--state-dir",
            str(state),
            "--work",
            "none",
            "--trust-root",
            str(net.dir / "root.msgpack"),
            *args,
        ]
    )


@pytest.mark.parametrize("fault", ["garbage", "operator-signed", "other-network", "expired"])
def test_a_bad_network_document_is_one_line_and_exit_2(
    tmp_path: Path, net: Network, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    now = int(time.time())
    bad = tmp_path / "network.bad"
    obj = net.config.to_obj()
    signer = net.key("root")
    if fault == "operator-signed":
        signer = net.key("operator")
    elif fault == "other-network":
        obj["network"] = "elsewhere"
    elif fault == "expired":
        obj.update(issued=now - 7200, expires=now - 3600)
    doc = docs.NetworkConfig.from_obj(obj)
    bad.write_bytes(b"\x93 not a document" if fault == "garbage" else doc.sign([signer]).to_wire())
    state = tmp_path / "state"
    assert _node_cli(state, net, "--network-config", str(bad)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--network-config" in err, err
    assert "Traceback" not in err
    assert not state.exists()  # nothing started, nothing written


def test_the_documents_need_a_trust_root(tmp_path: Path, net: Network) -> None:
    for flag in ("--network-config", "--member"):
        with pytest.raises(Exception, match=f"{flag} needs --trust-root"):
            _check(_ns(net, trust_root=None, **{flag[2:].replace("-", "_"): tmp_path / "x"}))


def test_a_member_document_naming_another_node_is_refused_with_both_ids(
    tmp_path: Path, net: Network, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ours = ident.load_identity(state)
    theirs = "ab" * 32
    (tmp_path / "member").write_bytes(net.member(theirs))
    assert _node_cli(state, net, "--member", str(tmp_path / "member")) == 2
    err = capsys.readouterr().err
    assert "--member" in err and theirs in err and ours.keyid in err, err
    assert len(err.splitlines()) == 1


def test_the_pool_is_the_member_documents(tmp_path: Path, net: Network) -> None:
    state = tmp_path / "state"
    state.mkdir()
    key = ident.load_identity(state)
    member = tmp_path / "member"
    member.write_bytes(net.member(key.keyid, pool="blue"))
    network = net.dir / admission.NETWORK_FILE
    with pytest.raises(Exception, match="--pool red: the member document puts this node in"):
        _check(_ns(net, member=member, network_config=network, pool="red"), state)
    _check(_ns(net, member=member, network_config=network, pool="blue"), state)
    found = open_admission(
        _ns(net, member=member), state, net.root, now=int(time.time()), node=key.keyid, strict=True
    )
    assert found.pool(None) == "blue"
    assert found.pow_bits == 0  # an enrolled network asks for no proof of work


def test_an_expired_kept_copy_is_a_warning_but_an_expired_flag_is_refused(
    tmp_path: Path, net: Network
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    key = ident.load_identity(state)
    now = int(time.time())
    old = docs.Member(node=key.keyid, pool="", issued=now - 7200, expires=now - 3600)
    (state / admission.MEMBER_FILE).write_bytes(old.sign([net.key("operator")]).to_wire())
    found = open_admission(_ns(net), state, net.root, now=now, node=key.keyid, strict=True)
    assert found.member == old and "expired" in found.warnings[0]
    with pytest.raises(Exception, match=r"--member .*expired"):
        open_admission(
            _ns(net, member=state / admission.MEMBER_FILE),
            state,
            net.root,
            now=now,
            node=key.keyid,
            strict=True,
        )


@pytest.mark.parametrize("fault", ["other-node", "other-pool"])
def test_the_daemon_on_its_own_refuses_the_same_member_faults(
    tmp_path: Path, net: Network, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    """Started without the launcher (or with a key made after the launcher's check), the
    daemon says the same, exit 2, before it connects anywhere."""
    state = tmp_path / "state"
    state.mkdir()
    key = ident.load_identity(state)
    named = "ab" * 32 if fault == "other-node" else key.keyid
    (tmp_path / "member").write_bytes(net.member(named, pool="blue"))
    code = daemon_main(
        [
            "--state-dir",
            str(state),
            "--slot",
            "0" * 64,
            "--work",
            "none",
            "--trust-root",
            str(net.dir / "root.msgpack"),
            "--coordinator",
            "http://127.0.0.1:9",
            "--member",
            str(tmp_path / "member"),
            *(["--pool", "red"] if fault == "other-pool" else []),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    if fault == "other-node":
        assert f"names node {named}; this node is {key.keyid}" in err
    else:
        assert "--pool red: the member document puts this node in pool 'blue'" in err


# -- the replicas' entry in the status file -----------------------------------------------------


def _link(
    tmp_path: Path,
    net: Network,
    member: MemberSource | None = None,
    *,
    urls: list[str] | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> CoordinatorLink:
    key = crypto.SigningKey.from_seed(os.urandom(32))
    trust = TrustFile.open(tmp_path / "trust", initial_root=net.root_bytes, now=int(time.time()))
    from p2pupdate import clock

    return CoordinatorLink(
        urls or ["http://127.0.0.1:9", "http://127.0.0.1:10"],
        key,
        trust,
        pool="default",
        estimate=None,
        report_interval=30.0,
        log=log,
        clock=clock.SYSTEM,
        member=member,
        network=net.config,
        persistent=True,  # these tests watch a kept-open link retry its hello
    )


def test_the_status_says_which_replica_refused_the_hello_and_why(
    tmp_path: Path, net: Network
) -> None:
    coord = _link(tmp_path, net)
    first, second = coord.client.links
    first.refused = AdmissionRefused("admission/not-enrolled", "ask the operator")
    summary = json.loads(json.dumps(coord.summary()))  # what the status file holds
    assert summary["admission"]["rule"] == "enrolled"
    assert summary["replicas"] == [
        {
            "url": first.base,
            "connected": False,
            "heard": None,
            "admission_refused": {"reason": "admission/not-enrolled", "detail": "ask the operator"},
        },
        {"url": second.base, "connected": False, "heard": None, "admission_refused": None},
    ]


def test_the_hello_carries_the_member_document_and_a_renewed_one(
    tmp_path: Path, net: Network
) -> None:
    node = crypto.SigningKey.from_seed(os.urandom(32)).keyid
    path = tmp_path / admission.MEMBER_FILE
    first = net.member(node, expires=3600)
    path.write_bytes(first)
    lines: list[str] = []
    source = MemberSource(
        path,
        first,
        docs.open_signed(docs.Member, first, net.root).doc,
        node=node,
        root=lambda: net.root,
        log=lines.append,
    )
    coord = _link(tmp_path, net, source)
    assert all(link.member is not None for link in coord.client.links)
    assert coord.client.links[0].member() == first  # type: ignore[misc]
    now = int(time.time())
    warning = source.expiry_warning(now)
    assert warning and "expires in" in warning and str(path) in warning
    assert source.expiry_warning(now) is None  # once per document
    # one naming another node is not taken; a renewed one is, and warns no more
    path.write_bytes(net.member("cd" * 32))
    assert source.current() == first and "names node" in lines[-1]
    renewed = net.member(node, expires=30 * 86400)
    path.write_bytes(renewed)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert source.current() == renewed
    assert source.expiry_warning(now) is None
    assert source.expiry_warning(now + 30 * 86400 - MEMBER_WARN_BEFORE + 1) is not None


async def test_a_refused_hello_reaches_the_status_and_the_log_once(
    tmp_path: Path, net: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real replica of the enrolled network, in this process, and a node link without a
    member document: the replica refuses every hello (``admission/not-enrolled``), the
    link's refusal reaches the status entry, and the log says it once over retries."""
    from p2pupdate.daemon import status as node_status

    monkeypatch.setattr("p2pupdate.net.replica_link.reconnect_wait", lambda *_a: 0.05)
    lines: list[str] = []
    writes: list[dict[str, Any]] = []
    async with in_process(net) as (replica, url), trio.open_nursery() as nursery:
        coord = _link(tmp_path, net, urls=[url], log=lines.append)
        nursery.start_soon(
            node_status.refresh_on_change,
            coord.summary,
            lambda: writes.append(coord.summary()),
            0.02,
        )
        await nursery.start(coord.client.run)
        with trio.fail_after(5):
            while replica.hellos_refused["admission/not-enrolled"] < 3 or not writes:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    refused = writes[-1]["replicas"][0]["admission_refused"]
    assert refused["reason"] == "admission/not-enrolled", refused
    assert "member document" in refused["detail"]
    told = [m for m in lines if "admission/not-enrolled" in m]
    assert len(told) == 1 and told[0].startswith(f"coordinator {url}: hello refused: "), told


# -- one real run ---------------------------------------------------------------------------------


def test_an_enrolled_node_with_its_member_document_connects(tmp_path: Path, net: Network) -> None:
    replicas = ReplicaProcesses(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    key = ident.load_identity(state)  # the id the operator enrolls
    (tmp_path / "member").write_bytes(net.member(key.keyid, pool="blue"))
    node = None
    try:
        replica = replicas.start(net)
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "p2pupdate",
                "node",
                "--state-dir",
                str(state),
                "--work",
                "none",
                "--trust-root",
                str(net.dir / "root.msgpack"),
                "--coordinator",
                replica.url,
                "--network-config",
                str(net.dir / admission.NETWORK_FILE),
                "--member",
                str(tmp_path / "member"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "node.log").open("wb"),
            start_new_session=True,
        )
        sd = StateDir(state)
        deadline = time.monotonic() + 15
        coordinator = None
        while time.monotonic() < deadline:
            st = None
            with contextlib.suppress(OSError, ValueError, StateError):
                st = sd.read_status()
            coordinator = (st or {}).get("coordinator")
            if coordinator and coordinator["replicas"][0]["connected"]:
                break
            assert node.poll() is None, (tmp_path / "node.log").read_text()
            time.sleep(0.1)
        assert coordinator and coordinator["replicas"][0]["connected"], (
            tmp_path / "node.log"
        ).read_text()
        assert coordinator["replicas"][0]["admission_refused"] is None
        assert coordinator["admission"]["member_pool"] == "blue"
        assert (state / admission.MEMBER_FILE).read_bytes() == (tmp_path / "member").read_bytes()
        kept = (state / admission.NETWORK_FILE).read_bytes()
        assert kept == (net.dir / admission.NETWORK_FILE).read_bytes()
    finally:
        if node is not None:
            os.killpg(node.pid, 15)
            node.wait(timeout=30)
        replicas.kill_all()
