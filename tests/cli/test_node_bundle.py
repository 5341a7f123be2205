"""``p2pupdate node --bundle FILE``, and with no flags the default bundle (P11).

The merging of a bundle into the node's options is tested in process (``apply_bundle``,
``daemon.main.daemon_options``, ``bundled.open_node_bundle``): the bundle's replicas,
pool, gossip and zeroconf defaults, every flag still overriding, a bad bundle a usage
error (one line, exit 2, nothing written), a pinned node ignoring a foreign bundle and
walking to a newer root by rotation.  One real test runs ``p2pupdate node`` with only
``--bundle`` and ``--state-dir`` against a real replica process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from coordinator.cli import main as coordinator_main
from p2pupdate.cli import commands
from p2pupdate.cli.common import UsageError
from p2pupdate.core import bundle as bd
from p2pupdate.core import documents as docs
from p2pupdate.core.trust import TrustStore
from p2pupdate.daemon import bundled as nb
from p2pupdate.daemon.main import build_parser as daemon_parser
from p2pupdate.daemon.main import daemon_options
from p2pupdate.daemon.options import apply_bundle, check_node_options
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.launcher.state import StateDir, StateError
from tests.coordinator.service_helpers import REPO, Network, ReplicaProcesses

ZERO = "0" * 64


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return Network(tmp_path_factory.mktemp("bundle") / "net")


def make_bundle(net: Network, *, root: bytes | None = None, **over: Any) -> bytes:
    """A bundle of ``net`` signed by its root key (``over``: fields to change)."""
    now = int(time.time())
    values: dict[str, Any] = {
        "issued": now - 10,
        "expires": now + 86400,
        "network": net.root.network,
        "root": net.root_bytes if root is None else root,
        "network_config": (net.dir / "network.msgpack").read_bytes(),
        "replicas": ("http://127.0.0.1:9",),
        "stun": ("stun:stun.example:3478",),
        "pool": "edge",
    }
    signer = over.pop("signer", None) or net.key("root")
    values.update(over)
    return bd.Bundle(**values).sign([signer]).to_wire()


def launcher_ns(*argv: str) -> argparse.Namespace:
    """What ``p2pupdate node`` parsed (None: not given)."""
    return commands.build_parser().parse_args(["node", *argv])


# -- the merging ---------------------------------------------------------------------------


def _bundle(**over: Any) -> bd.Bundle:
    values: dict[str, Any] = {
        "issued": 1,
        "expires": 2,
        "network": "t",
        "root": b"r",
        "network_config": b"",
        "replicas": ("http://10.0.0.2:8470", "http://r2.example:8470"),
        "pool": "edge",
    }
    values.update(over)
    return bd.Bundle(**values)


def test_the_bundle_fills_replicas_pool_gossip_and_zeroconf_on_each_lan_address() -> None:
    ns = launcher_ns()
    notes = apply_bundle(ns, _bundle(gossip_port=7946), lan=["192.168.1.10", "10.0.0.5"])
    assert notes == []
    assert ns.coordinator == ["http://10.0.0.2:8470", "http://r2.example:8470"]
    assert ns.pool == "edge"
    assert ns.gossip_listen == "0.0.0.0:7946"  # every interface
    assert ns.gossip_advertise == "192.168.1.10"  # what zeroconf announces
    assert ns.zeroconf == ["192.168.1.10", "10.0.0.5"]


def test_every_flag_given_overrides_the_bundle() -> None:
    ns = launcher_ns(
        "--coordinator", "http://127.0.0.1:1", "--pool", "core",
        "--gossip-listen", "10.0.0.5:7000", "--zeroconf", "10.0.0.5",
    )  # fmt: skip
    apply_bundle(ns, _bundle(), lan=["192.168.1.10", "10.0.0.5"])
    assert ns.coordinator == ["http://127.0.0.1:1"]
    assert ns.pool == "core"
    assert ns.gossip_listen == "10.0.0.5:7000"
    assert ns.gossip_advertise is None  # a specific listen address is what is announced
    assert ns.zeroconf == ["10.0.0.5"]
    ns = launcher_ns("--gossip-advertise", "10.0.0.5")
    apply_bundle(ns, _bundle(), lan=["192.168.1.10"])
    assert (ns.gossip_listen, ns.gossip_advertise) == ("0.0.0.0:0", "10.0.0.5")
    assert ns.zeroconf == ["192.168.1.10"]


def test_no_lan_address_no_zeroconf_and_gossip_off_in_the_bundle_means_off() -> None:
    ns = launcher_ns()
    notes = apply_bundle(ns, _bundle(), lan=[])
    assert (ns.gossip_listen, ns.gossip_advertise, ns.zeroconf) == ("0.0.0.0:0", None, None)
    assert notes == ["bundle: no private-range LAN address here: no zeroconf"]
    ns = launcher_ns()
    apply_bundle(ns, _bundle(gossip=False), lan=["10.0.0.5"])
    assert (ns.gossip_listen, ns.zeroconf) == (None, None)
    ns = launcher_ns()
    apply_bundle(ns, _bundle(zeroconf=False), lan=["10.0.0.5"])
    assert (ns.gossip_listen, ns.gossip_advertise, ns.zeroconf) == ("0.0.0.0:0", "10.0.0.5", None)


def test_a_replica_this_version_cannot_dial_is_skipped_and_said() -> None:
    ns = launcher_ns()
    notes = apply_bundle(ns, _bundle(replicas=("https://r.example", "http://r:1")), lan=[])
    assert ns.coordinator == ["http://r:1"]
    assert len(notes) == 2 and "https://r.example skipped" in notes[0]


def test_private_lan_ranges_and_the_default_bundle_path() -> None:
    assert [nb.private_lan(a) for a in ("10.1.0.10", "172.16.4.1", "192.168.0.9")] == [True] * 3
    for other in ("192.0.2.2", "127.0.0.1", "100.64.0.1", "169.254.1.1", "fd00::1", "x"):
        assert not nb.private_lan(other), other
    home = Path("/home/u")
    assert nb.default_bundle_path(euid=0, env={}, home=home) == Path(bd.BUNDLE_FILE)
    user = nb.default_bundle_path(euid=1000, env={}, home=home)
    assert user == home / ".config" / "p2pupdate" / "network.bundle"
    xdg = nb.default_bundle_path(euid=1000, env={"XDG_CONFIG_HOME": "/x"}, home=home)
    assert xdg == Path("/x/p2pupdate/network.bundle")


def test_the_daemon_merges_the_bundle_under_its_flags(net: Network, tmp_path: Path) -> None:
    """The daemon's own parse: flags given stay, the bundle fills the rest, then the
    defaults; the bundle's root and network document are what it trusts first."""
    f = tmp_path / "b"
    f.write_bytes(make_bundle(net, replicas=("http://127.0.0.1:9", "http://127.0.0.1:10")))
    args = daemon_parser().parse_args(
        ["--state-dir", str(tmp_path / "s"), "--slot", ZERO, "--bundle", str(f),
         "--gossip-round", "2s", "--pool", "core"]
    )  # fmt: skip
    lines: list[str] = []
    opts, found = daemon_options(
        args, tmp_path / "s", now=int(time.time()), log=lines.append, lan=lambda: ["10.0.0.7"]
    )
    assert opts.coordinator == ("http://127.0.0.1:9", "http://127.0.0.1:10")
    assert (opts.pool, opts.gossip_round, opts.work) == ("core", 2.0, "kv")  # flag, flag, default
    assert (opts.gossip_listen, opts.gossip_advertise, opts.zeroconf) == (
        "0.0.0.0:0",
        "10.0.0.7",
        ("10.0.0.7",),
    )
    assert opts.gossip and opts.trust_root is None
    assert found is not None and found.pinned is None  # first start
    assert found.initial_root == net.root_bytes
    assert found.network_bytes == (net.dir / "network.msgpack").read_bytes()
    assert any("bundle of network" in line for line in lines)


# -- a bad bundle --------------------------------------------------------------------------


def _bad_bundles(net: Network, d: Path) -> dict[str, Path]:
    now = int(time.time())
    other = Network(d / "other")
    cases = {
        "garbage": b"\x93not a bundle" * 10,
        "oversize": b"\x00" * (bd.BUNDLE_LIMITS.max_bytes + 1),
        # signed by a key that is not the root role's (the operator's)
        "forged": make_bundle(net, signer=net.key("operator")),
        # carrying another network's root (its network document then fails under it)
        "wrong-root": make_bundle(net, root=other.root_bytes),
        "expired": make_bundle(net, issued=now - 7200, expires=now - 3600),
    }
    out = {}
    for name, data in cases.items():
        out[name] = d / f"{name}.bundle"
        out[name].write_bytes(data)
    return out


@pytest.fixture(scope="module")
def bad(net: Network, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _bad_bundles(net, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("kind", ["garbage", "oversize", "forged", "wrong-root", "expired"])
def test_a_bad_bundle_is_one_line_exit_2_and_nothing_written(
    bad: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    state = tmp_path / "state"
    code = commands.main(["node", "--bundle", str(bad[kind]), "--state-dir", str(state)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == "" and len(err.splitlines()) == 1, err
    assert "--bundle" in err and str(bad[kind]) in err
    assert not state.exists()


def test_the_default_bundle_is_read_with_no_flags_and_missing_is_no_bundle(
    bad: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    where = tmp_path / "etc" / "network.bundle"
    monkeypatch.setattr(commands, "default_bundle_path", lambda **_kw: where)
    assert commands.default_bundle(launcher_ns()) is None  # not there: as before bundles
    where.parent.mkdir()
    where.write_bytes(bad["forged"].read_bytes())
    assert commands.default_bundle(launcher_ns()) == where
    # a trust root given by hand: the node is set up by hand, the default file unread
    assert commands.default_bundle(launcher_ns("--trust-root", "r")) is None
    assert commands.default_bundle(launcher_ns("--bundle", "b")) == Path("b")
    state = tmp_path / "state"
    code = commands.main(["node", "--state-dir", str(state)])  # no other flag
    _, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1 and str(where) in err, err
    assert not state.exists()


def test_a_bundle_of_another_root_than_the_trust_root_flag_is_refused(
    net: Network, tmp_path: Path
) -> None:
    """``--trust-root`` overrides the bundle's root; a bundle signed under another root
    then cannot be used with it (its network document does not verify under the flag's
    root, or it names another network): one line naming ``--bundle``."""
    other = Network(tmp_path / "other")
    f = tmp_path / "b"
    f.write_bytes(make_bundle(net))
    ns = launcher_ns("--bundle", str(f), "--trust-root", str(other.dir / "root.msgpack"))
    with pytest.raises(UsageError, match=r"^--bundle"):
        check_node_options(
            ns, probation=120, confirm_margin=5, state_dir=None, now=int(time.time())
        )


# -- pinned ----------------------------------------------------------------------------------


def _pinned_state(net: Network, d: Path) -> Path:
    state = d / "state"
    TrustFile.open(state / "trust", initial_root=net.root_bytes, now=int(time.time()))
    return state


def test_a_pinned_node_ignores_a_foreign_bundle_and_falls_back_to_the_kept_copy(
    net: Network, tmp_path: Path
) -> None:
    state = _pinned_state(net, tmp_path)
    now = int(time.time())
    other = Network(tmp_path / "other")
    foreign = tmp_path / "foreign.bundle"
    foreign.write_bytes(make_bundle(other))
    # a good bundle of another network: never an exit, strict or not
    found = nb.open_node_bundle(foreign, state_dir=state, now=now, strict=True)
    assert found.opened is None and found.pinned is not None
    assert "not this node's network" in found.notes[0] and "ignored" in found.notes[0]
    assert found.initial_root == net.root_bytes  # what it holds
    # with a copy of the last bundle it accepted, that one is used
    mine = make_bundle(net, replicas=("http://127.0.0.1:5",))
    good = tmp_path / "good.bundle"
    good.write_bytes(mine)
    nb.keep_bundle(state, nb.open_node_bundle(good, state_dir=state, now=now, strict=True), print)
    assert (state / nb.KEPT_BUNDLE).read_bytes() == mine
    found = nb.open_node_bundle(foreign, state_dir=state, now=now, strict=False)
    assert found.opened is not None and found.opened.bundle.replicas == ("http://127.0.0.1:5",)
    assert "using the copy kept" in found.notes[0]
    # the daemon falls back to it for a garbage file too; the launcher refuses that file
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"garbage")
    assert nb.open_node_bundle(garbage, state_dir=state, now=now, strict=False).opened
    with pytest.raises(UsageError, match="--bundle"):
        nb.open_node_bundle(garbage, state_dir=state, now=now, strict=True)


def test_a_pinned_node_takes_an_expired_bundle_of_its_network(net: Network, tmp_path: Path) -> None:
    """The bundle's age counts on the first start only: a box that ran for years keeps
    its replica list (its trust is the held root)."""
    state = _pinned_state(net, tmp_path)
    now = int(time.time())
    f = tmp_path / "old.bundle"
    f.write_bytes(make_bundle(net, issued=now - 7200, expires=now - 3600))
    with pytest.raises(UsageError, match="expired"):
        nb.open_node_bundle(f, state_dir=tmp_path / "fresh", now=now, strict=True)
    assert nb.open_node_bundle(f, state_dir=state, now=now, strict=True).opened is not None


def _root_v2(net: Network) -> bytes:
    now = int(time.time())
    v2: docs.Root = docs.Root.from_obj({**net.root.to_obj(), "version": 2, "issued": now - 5})
    return v2.sign([net.key("root")]).to_wire()


def test_a_newer_root_in_the_bundle_is_walked_to_by_rotation_an_older_one_is_kept(
    net: Network, tmp_path: Path
) -> None:
    state = _pinned_state(net, tmp_path)
    now = int(time.time())
    f = tmp_path / "v2.bundle"
    f.write_bytes(make_bundle(net, root=_root_v2(net)))
    found = nb.open_node_bundle(f, state_dir=state, now=now, strict=True)
    trust = TrustFile.open(state / "trust", initial_root=found.initial_root, now=now)
    assert trust.store.root.version == 1  # pinned: the bundle's root is not taken as is
    lines: list[str] = []
    nb.adopt_root(trust.update_root, trust.store, found, now=now, log=lines.append)
    assert trust.store.root.version == 2 and "root v2 from the bundle accepted" in lines[0]
    held = TrustStore.from_bytes((state / "trust" / "store.msgpack").read_bytes())
    assert held.root.version == 2  # persisted
    # the old bundle (root v1, one this node accepted): its root is ignored, with a line
    f1 = tmp_path / "v1.bundle"
    f1.write_bytes(make_bundle(net))
    old = nb.open_node_bundle(f1, state_dir=state, now=now, strict=True)
    assert old.opened is not None
    nb.adopt_root(trust.update_root, trust.store, old, now=now, log=lines.append)
    assert trust.store.root.version == 2 and "holds v2: kept" in lines[1]


def test_a_root_that_does_not_rotate_is_a_line_not_an_exit(net: Network, tmp_path: Path) -> None:
    """A newer root signed by keys the held root never named (or skipping versions) is
    refused by the rotation; the node keeps the root it holds."""
    state = _pinned_state(net, tmp_path)
    now = int(time.time())
    forged: docs.Root = docs.Root.from_obj({**net.root.to_obj(), "version": 3, "issued": now - 5})
    f = tmp_path / "v3.bundle"
    f.write_bytes(make_bundle(net, root=forged.sign([net.key("root")]).to_wire()))
    found = nb.open_node_bundle(f, state_dir=state, now=now, strict=True)
    trust = TrustFile.open(state / "trust", initial_root=found.initial_root, now=now)
    lines: list[str] = []
    nb.adopt_root(trust.update_root, trust.store, found, now=now, log=lines.append)
    assert trust.store.root.version == 1
    assert "root v3 not taken" in lines[0] and "keeping v1" in lines[0]


async def test_the_bundles_stun_servers_serve_when_no_replica_gives_ice_servers(
    net: Network, tmp_path: Path
) -> None:
    """No replica answers (none is up): the node's rtc links still get the bundle's STUN
    servers (TURN needs a credential a replica mints, so none of those)."""
    from tests.daemon.test_coordinator_signal_ice import node_link

    link = node_link(tmp_path, net, ["http://127.0.0.1:9"], 7)
    assert await link.ice_servers() == []  # as before: nothing configured here
    link.fallback_stun = ("stun:stun.example:3478", "stun:10.0.0.1")
    assert await link.ice_servers() == [
        {"urls": "stun:stun.example:3478"},
        {"urls": "stun:10.0.0.1"},
    ]


# -- a real node on a bundle alone --------------------------------------------------------------


def _status(state: Path) -> dict[str, Any]:
    try:
        return StateDir(state).read_status() or {}
    except (StateError, OSError, ValueError):
        return {}


def test_a_node_started_with_only_a_bundle_connects_and_gossips(
    net: Network, tmp_path: Path
) -> None:
    """``p2pupdate node --bundle F --state-dir D``, nothing else: the replica the bundle
    names is connected (the other one, down, does not stop it), gossip listens on every
    interface, the trust store starts from the bundle's root and the bundle is kept."""
    replicas = ReplicaProcesses(tmp_path)
    state = tmp_path / "state"
    log = tmp_path / "node.log"
    proc = None
    try:
        url = replicas.start(net).url
        f = tmp_path / "network.bundle"
        with contextlib.redirect_stdout(io.StringIO()):
            assert coordinator_main(
                ["bundle", "--dir", str(net.dir), "--url", url, "--url", "http://127.0.0.1:9",
                 "--stun", "stun:stun.example:3478", "-o", str(f)]
            ) == 0  # fmt: skip
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "p2pupdate", "node", "--bundle", str(f),
                 "--state-dir", str(state)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=tmp_path,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 12
        while True:
            st = _status(state)
            replicas_seen = st.get("coordinator", {}).get("replicas", [])
            if any(r["connected"] for r in replicas_seen) and st.get("gossip", {}).get("port"):
                break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{st}\n{log.read_text()}"
            time.sleep(0.1)
        assert {r["url"]: r["connected"] for r in replicas_seen} == {
            url: True,
            "http://127.0.0.1:9": False,
        }
        assert st["gossip"]["address"] == f"tcp:0.0.0.0:{st['gossip']['port']}"
        store = TrustStore.from_bytes((state / "trust" / "store.msgpack").read_bytes())
        assert store.root_bytes == net.root_bytes
        assert (state / nb.KEPT_BUNDLE).read_bytes() == f.read_bytes()
        text = log.read_text()
        assert "bundle of network 'test'" in text and "Traceback" not in text
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        replicas.kill_all()
