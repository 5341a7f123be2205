"""The gossip shell links by rtc (P8 items 2 and 4, contract C3): real aiortc, real tcp,
a real in-process replica, inside a network namespace.

aioice never offers 127.0.0.1, so the fixture makes a namespace ``p2pG<pid>`` with three
non-loopback addresses (10.77.1.1-3/24 on one end of a veth pair inside it); each scenario
runs in a child ``ip netns exec`` process with its ``GossipService`` instances (one asyncio
sidecar, as in a node).  Scenarios:

* two services signal through a real replica (``CoordinatorLink.send_signal`` /
  ``on_signal``, contract C2) and link by rtc over host candidates;
* three services and no replica at all: two link by rtc, the offer and answer relayed by
  the third, to which both have tcp links;
* a link whose packets are dropped (nft in the namespace) goes silent, is closed as lost
  by the keepalive and comes back by rtc (measured: seconds from the drop);
* two services that dial each other at once end with one link, the same one at both ends;
* a peer with rtc off leaves the offer unanswered: the dial falls back to tcp and the peer
  is dialed by tcp only from then on;
* with every direct UDP pair dropped (nft) and a real coturn whose credential the replica
  minted, the link's path is ``relay`` and its bytes are counted as relayed.

The namespace is removed in teardown whatever happens; without root (or ``ip``/``nft``) the
tests are skipped with the reason.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from p2pupdate.clock import SYSTEM
from p2pupdate.core import crypto
from p2pupdate.core import gossip as g
from p2pupdate.core.errors import VerificationError
from p2pupdate.daemon.gossip import GossipService, Signals
from p2pupdate.net.base import LinkConfig

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_TOOLS = shutil.which("ip") is not None and shutil.which("nft") is not None
needs_netns = pytest.mark.skipif(
    not (IS_ROOT and HAS_TOOLS),
    reason=f"needs root, iproute2 and nftables to make a network namespace (aioice never "
    f"offers 127.0.0.1) (root: {IS_ROOT}, `ip` and `nft` found: {HAS_TOOLS})",
)
ADDRS = ("10.77.1.1", "10.77.1.2", "10.77.1.3")
ROUND = 0.2


def _status() -> g.Status:
    return g.Status(
        version="1.0", artifact="ab" * 32, state="serving", pool="default", load=1.0, capacity=1.0
    )


def _refuse(_doc: bytes) -> g.Accepted:
    raise VerificationError("no documents in this test")


def service(
    seed: int,
    host: str,
    *,
    peers: list[tuple[str, int]] | None = None,
    signals: Signals | None = None,
    rtc: bool = True,
    link_config: LinkConfig | None = None,
    lines: list[str] | None = None,
) -> GossipService:
    return GossipService(
        key=crypto.SigningKey.from_seed(bytes([seed]) * 32),
        status=_status,
        clock=SYSTEM,
        verify=_refuse,
        listen=(host, 0),
        peers=peers or [],
        rng=random.Random(seed),
        config=g.GossipConfig(round_interval=ROUND, heartbeat_interval=1.0),
        link_config=link_config,
        rtc=rtc,
        signals=signals,
        keepalive=0.25,
        link_dead=1.5,
        log=(lines if lines is not None else []).append,
    )


async def until(cond: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> float:
    """Poll ``cond`` every 20 ms; the seconds it took (fails naming ``what``, or what
    ``what()`` says at the time of the failure)."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.02)
        return trio.current_time() - start
    raise AssertionError(f"not within {timeout:g}s: {what if isinstance(what, str) else what()}")


def linked(a: GossipService, b: GossipService, path: str | None = None) -> bool:
    pa, pb = a.paths().get(b.node), b.paths().get(a.node)
    return pa is not None and pa == pb and (path is None or pa == path)


def one_link(a: GossipService, b: GossipService) -> bool:
    """Each end holds one link to the other, and it is the same link (opposite ends)."""
    ea, eb = a._peers.get(b.node), b._peers.get(a.node)
    return ea is not None and eb is not None and ea.outbound != eb.outbound


# -- scenarios (run inside the namespace) -----------------------------------------------


async def scenario_coordinator(tmp: str) -> None:
    """Signaling through a real replica: no tcp link between the two at any time."""
    from tests.coordinator.service_helpers import Network
    from tests.daemon.test_coordinator_signal_ice import connected, node_link, replica_at

    net = Network(Path(tmp) / "net")
    async with replica_at(net) as (_replica, url):
        ca = node_link(Path(tmp), net, [url], 1)
        cb = node_link(Path(tmp), net, [url], 2)
        offers: list[bytes] = []
        send_signal = ca.send_signal

        async def recording(to: str, data: bytes) -> bool:
            offers.append(data)
            return await send_signal(to, data)

        a = service(1, ADDRS[0], signals=ca)
        b = service(2, ADDRS[1], signals=cb)
        ca.send_signal = recording  # type: ignore[method-assign]
        ca.on_signal, cb.on_signal = a.on_signal, b.on_signal
        async with trio.open_nursery() as n:
            await connected(n, ca, cb)
            await n.start(a.run)
            await n.start(b.run)
            a.add_contacts([b.contact])
            took = await until(lambda: linked(a, b, "host"), 20, "an rtc link a-b")
            # the same offer again (a relay replaying it): refused by b's nonce cache before
            # any peer connection is made, and the link stays the one it was
            b.on_signal(a.node, offers[0])
            await until(lambda: b.stats.offers_replayed == 1, 5, "the replay refused")
            assert b.stats.offers_answered == 1 and b.stats.links_up == 1
            assert a.core is not None and a.core.paths == {b.node: "host"}
            assert a.summary()["transports"] == {"tcp": 0, "rtc": 1}
            assert a.summary()["relayed_bytes"] == 0  # host candidates: no TURN
            assert (a.stats.rtc_dials, b.stats.offers_answered) == (1, 1)
            assert a.core.can_relay(b.node) is False  # no third peer: the replica did it
            print(f"ok coordinator: rtc link in {took:.2f}s")
            n.cancel_scope.cancel()


async def scenario_altered(tmp: str) -> None:
    """A relay that alters every offer it carries (one byte of the SDP: say, the DTLS
    fingerprint): the signature catches it, the blob is refused and counted at b before any
    peer connection exists, no rtc link forms, and the dial falls back to tcp."""
    from tests.coordinator.service_helpers import Network
    from tests.daemon.test_coordinator_signal_ice import connected, node_link, replica_at

    net = Network(Path(tmp) / "net")
    async with replica_at(net) as (_replica, url):
        ca = node_link(Path(tmp), net, [url], 1)
        cb = node_link(Path(tmp), net, [url], 2)
        send_signal = ca.send_signal
        altered: list[bytes] = []

        async def altering(to: str, data: bytes) -> bool:
            at = data.find(b"fingerprint:sha-256 ")
            assert at > 0, "an offer carries its DTLS fingerprint"
            at += len(b"fingerprint:sha-256 ")
            bad = data[:at] + (b"0" if data[at : at + 1] != b"0" else b"1") + data[at + 1 :]
            altered.append(bad)
            return await send_signal(to, bad)

        lines: list[str] = []
        a = service(1, ADDRS[0], signals=ca)
        b = service(2, ADDRS[1], signals=cb, lines=lines)
        ca.send_signal = altering  # type: ignore[method-assign]
        ca.on_signal, cb.on_signal = a.on_signal, b.on_signal
        async with trio.open_nursery() as n:
            await connected(n, ca, cb)
            await n.start(a.run)
            await n.start(b.run)
            a.add_contacts([b.contact])
            await until(lambda: linked(a, b, "tcp"), 30, "the tcp fallback a-b")
            assert altered, "the offer went through the altering relay"
            assert b.stats.signals_refused >= 1 and b.stats.offers_answered == 0, b.stats
            assert any("refused" in line and "signature" in line for line in lines), lines
            assert b.summary()["signals_refused"] == b.stats.signals_refused
            print(f"ok altered: {b.stats.signals_refused} refused, linked by tcp instead")
            n.cancel_scope.cancel()


async def scenario_relay(tmp: str) -> None:
    """No replica: a and b link by rtc through p, to which both have tcp links."""
    async with trio.open_nursery() as n:
        p = service(1, ADDRS[1])
        port = await n.start(p.run)
        a = service(2, ADDRS[0], peers=[(ADDRS[1], port)])
        b = service(3, ADDRS[2], peers=[(ADDRS[1], port)])
        await n.start(a.run)
        await n.start(b.run)
        await until(lambda: linked(a, p, "tcp") and linked(b, p, "tcp"), 15, "tcp links to p")
        took = await until(lambda: linked(a, b, "host"), 20, "an rtc link a-b via p")
        assert one_link(a, b)
        assert a.paths() == {p.node: "tcp", b.node: "host"}
        assert a.core is not None and a.core.paths[b.node] == "host"
        # one or both dialed (p's ForwardJoin may send both at once: one link survives)
        assert a.stats.offers_answered + b.stats.offers_answered >= 1, (a.stats, b.stats)
        print(f"ok relay: rtc link through a common peer in {took:.2f}s")
        n.cancel_scope.cancel()


async def _nft(*args: str) -> None:
    await trio.run_process(["nft", *args], capture_stdout=True, capture_stderr=True)


async def scenario_dropped(tmp: str) -> None:
    """The rtc link's packets are dropped: closed as lost within ``link_dead``, redialed
    with backoff once the drop ends, back by rtc."""
    from tests.coordinator.service_helpers import Network
    from tests.daemon.test_coordinator_signal_ice import connected, node_link, replica_at

    net = Network(Path(tmp) / "net")
    async with replica_at(net) as (_replica, url):
        ca = node_link(Path(tmp), net, [url], 1)
        cb = node_link(Path(tmp), net, [url], 2)
        a = service(1, ADDRS[0], signals=ca)
        b = service(2, ADDRS[1], signals=cb)
        ca.on_signal, cb.on_signal = a.on_signal, b.on_signal
        async with trio.open_nursery() as n:
            await connected(n, ca, cb)
            await n.start(a.run)
            await n.start(b.run)
            a.add_contacts([b.contact])
            await until(lambda: linked(a, b, "host"), 20, "the first rtc link")
            lost_before = a.stats.links_lost + b.stats.links_lost
            await _nft("add", "table", "inet", "p2pdrop")
            hook = "{ type filter hook output priority 0 ; }"
            await _nft("add", "chain", "inet", "p2pdrop", "out", hook)
            await _nft("add", "rule", "inet", "p2pdrop", "out", "meta", "l4proto", "udp", "drop")
            dropped = trio.current_time()
            try:
                dead = await until(
                    lambda: a.stats.links_lost + b.stats.links_lost > lost_before,
                    10,
                    "the silent link closed as lost",
                )
            finally:
                await _nft("delete", "table", "inet", "p2pdrop")
            assert dead <= 1.5 + 1.0, dead  # link_dead, plus a keepalive's slack
            await until(lambda: linked(a, b, "host") and one_link(a, b), 25, "rtc link back")
            back = trio.current_time() - dropped
            assert back < 30, back
            print(f"ok dropped: closed as lost after {dead:.2f}s, back by rtc {back:.2f}s after")
            n.cancel_scope.cancel()


class HeldOffers:
    """Relayed blobs wait until both ends have sent their own offer, so the dials cross for
    certain: left to the rounds, a busy machine let one end link before the other dialed at
    all, and nothing crossed (a CI run failed waiting for the second answer)."""

    def __init__(self, a: GossipService, b: GossipService) -> None:
        self.ends = (a, b)
        self.held: list[tuple[GossipService, str, bytes]] = []
        self.released = False

    def to(self, end: GossipService) -> Callable[[str, bytes], None]:
        def on_signal(sender: str, data: bytes) -> None:
            if self.released:
                end.on_signal(sender, data)
            else:
                self.held.append((end, sender, data))

        return on_signal

    async def release_once_both_dialed(self) -> None:
        a, b = self.ends
        await until(lambda: a.stats.rtc_dials == b.stats.rtc_dials == 1, 20, "both dial")
        self.released = True
        for end, sender, data in self.held:
            end.on_signal(sender, data)
        self.held.clear()


async def scenario_crossed(tmp: str) -> None:
    """a and b learn each other at once and both dial by rtc: one link survives, the
    same at both ends, and stays the only one."""
    from tests.coordinator.service_helpers import Network
    from tests.daemon.test_coordinator_signal_ice import connected, node_link, replica_at

    net = Network(Path(tmp) / "net")
    async with replica_at(net) as (_replica, url):
        ca = node_link(Path(tmp), net, [url], 1)
        cb = node_link(Path(tmp), net, [url], 2)
        a = service(1, ADDRS[0], signals=ca)
        b = service(2, ADDRS[1], signals=cb)
        held = HeldOffers(a, b)
        ca.on_signal, cb.on_signal = held.to(a), held.to(b)
        async with trio.open_nursery() as n:
            await connected(n, ca, cb)
            await n.start(a.run)
            await n.start(b.run)
            a.add_contacts([b.contact])
            b.add_contacts([a.contact])
            await held.release_once_both_dialed()
            await until(lambda: linked(a, b) and one_link(a, b), 20, "one link a-b")
            # both offered and both answered: the dials did cross
            await until(
                lambda: a.stats.offers_answered + b.stats.offers_answered == 2,
                15,
                lambda: f"2 answers ({a.stats}, {b.stats})",
            )
            assert (a.stats.rtc_dials, b.stats.rtc_dials) == (1, 1), (a.stats, b.stats)
            await trio.sleep(2.0)
            assert one_link(a, b) and a.stats.links_up == b.stats.links_up == 1
            keeper = min(a.node, b.node)  # the link dialed by the lower node id
            assert (a._peers[b.node].outbound, b._peers[a.node].outbound) == (
                a.node == keeper,
                b.node == keeper,
            )
            print("ok crossed: one link")
            n.cancel_scope.cancel()


async def scenario_rtc_off(tmp: str) -> None:
    """b runs without rtc: a's offer goes unanswered, a links by tcp, and dials b by tcp
    only from then on."""
    from tests.coordinator.service_helpers import Network
    from tests.daemon.test_coordinator_signal_ice import connected, node_link, replica_at

    net = Network(Path(tmp) / "net")
    quick = LinkConfig(handshake_timeout=2.0)
    async with replica_at(net) as (_replica, url):
        ca = node_link(Path(tmp), net, [url], 1)
        cb = node_link(Path(tmp), net, [url], 2)
        a = service(1, ADDRS[0], signals=ca, link_config=quick)
        b = service(2, ADDRS[1], signals=cb, rtc=False)
        ca.on_signal, cb.on_signal = a.on_signal, b.on_signal
        async with trio.open_nursery() as n:
            await connected(n, ca, cb)
            await n.start(a.run)
            await n.start(b.run)
            a.add_contacts([b.contact])
            await until(lambda: linked(a, b, "tcp"), 15, "a tcp link after the silent offer")
            assert a.stats.rtc_failures == 1 and b.stats.offers_refused == 1
            assert a._was_unanswered(b.node)
            plan = g.link_plan(
                b.contact, rtc=True, signaling=True, unanswered=a._was_unanswered(b.node)
            )
            assert plan == ("tcp",)
            print("ok rtc off: tcp")
            n.cancel_scope.cancel()


TURN_SECRET = "the lab's coturn static-auth-secret"
#: coturn's relay ports; host candidates get ephemeral ports from another range, so nft
#: can refuse every direct pair while relayed ones pass.
RELAY_PORTS = "40000-40999"


async def _turnserver(tmp: str) -> trio.Process:
    d = Path(tmp) / "turn"
    d.mkdir()
    conf = d / "turnserver.conf"
    conf.touch(mode=0o600)
    lo, hi = RELAY_PORTS.split("-")
    conf.write_text(
        "\n".join(
            [
                f"listening-ip={ADDRS[2]}",
                f"relay-ip={ADDRS[2]}",
                "listening-port=3478",
                f"min-port={lo}",
                f"max-port={hi}",
                "use-auth-secret",
                f"static-auth-secret={TURN_SECRET}",
                "realm=p2pupdate-test",
                "no-cli",
                "no-tls",
                "no-dtls",
                f"pidfile={d / 'pid'}",
                f"userdb={d / 'db'}",
                f"log-file={d / 'log'}",
                "simple-log",
                "",
            ]
        )
    )
    return await trio.lowlevel.open_process(
        ["turnserver", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def scenario_turn(tmp: str) -> None:
    """Only relayed candidate pairs can connect (nft drops every direct UDP pair): the
    link's path is ``relay`` at both ends, with a TURN credential the replica minted, and
    the bytes over it are counted as relayed."""
    from coordinator.ice import IceConfig
    from tests.coordinator.service_helpers import Network
    from tests.daemon.test_coordinator_signal_ice import connected, node_link, replica_at

    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text("20000 29999\n")
    hook = "{ type filter hook output priority 0 ; }"
    await _nft("add", "table", "inet", "p2pturn")
    await _nft("add", "chain", "inet", "p2pturn", "out", hook)
    for rule in (
        "udp dport 3478 accept",
        "udp sport 3478 accept",
        f"udp dport {RELAY_PORTS} accept",
        f"udp sport {RELAY_PORTS} accept",
        "meta l4proto udp drop",
    ):
        await _nft("add", "rule", "inet", "p2pturn", "out", *rule.split())
    turnserver = await _turnserver(tmp)
    try:
        await trio.sleep(0.5)  # coturn binds its port
        net = Network(Path(tmp) / "net")
        ice = IceConfig(
            turn=(f"turn:{ADDRS[2]}:3478?transport=udp",), secret=TURN_SECRET.encode(), ttl=600
        )
        async with replica_at(net, ice=ice) as (_replica, url):
            ca = node_link(Path(tmp), net, [url], 1)
            cb = node_link(Path(tmp), net, [url], 2)
            a = service(1, ADDRS[0], signals=ca)
            b = service(2, ADDRS[1], signals=cb)
            ca.on_signal, cb.on_signal = a.on_signal, b.on_signal
            async with trio.open_nursery() as n:
                await connected(n, ca, cb)
                servers = await ca.ice_servers()
                assert servers and servers[0]["username"].endswith(":" + a.node), servers
                await n.start(a.run)
                await n.start(b.run)
                a.add_contacts([b.contact])
                took = await until(lambda: linked(a, b, "relay"), 25, "a relayed rtc link")
                await until(
                    lambda: a.stats.relayed_bytes > 1000 and b.stats.relayed_bytes > 1000,
                    10,
                    "gossip over the relay",
                )
                s = a.summary()
                assert s["paths"] == {b.node: "relay"} and s["relayed_bytes"] > 1000, s
                assert a.core is not None and a.core.paths == {b.node: "relay"}
                print(f"ok turn: relayed link in {took:.2f}s, {s['relayed_bytes']} B relayed")
                n.cancel_scope.cancel()
    finally:
        turnserver.terminate()
        await turnserver.wait()
        await _nft("delete", "table", "inet", "p2pturn")


# -- the namespace and the tests ---------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    ns = f"p2pG{os.getpid() % 100000}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        for addr in ADDRS:
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "d0")
        _ip("-n", ns, "link", "set", "d0", "up")
        _ip("-n", ns, "link", "set", "d1", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _run(ns: str, scenario: Callable[[str], object]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        code = f"import trio, {scenario.__module__} as t; trio.run(t.{scenario.__name__}, {tmp!r})"
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@needs_netns
def test_links_by_rtc_with_signaling_through_a_replica(netns: str) -> None:
    out = _run(netns, scenario_coordinator)
    assert "ok coordinator" in out, out
    print(out)


@needs_netns
def test_links_by_rtc_through_a_common_peer_without_any_replica(netns: str) -> None:
    out = _run(netns, scenario_relay)
    assert "ok relay" in out, out
    print(out)


@needs_netns
def test_an_offer_altered_by_the_relay_is_refused_and_counted(netns: str) -> None:
    out = _run(netns, scenario_altered)
    assert "ok altered" in out, out
    print(out)


@needs_netns
def test_a_link_whose_packets_are_dropped_is_closed_and_comes_back(netns: str) -> None:
    out = _run(netns, scenario_dropped)
    assert "ok dropped" in out, out
    print(out)


@needs_netns
def test_crossed_rtc_dials_end_with_one_link(netns: str) -> None:
    out = _run(netns, scenario_crossed)
    assert "ok crossed" in out, out


@needs_netns
def test_a_peer_without_rtc_is_linked_by_tcp(netns: str) -> None:
    out = _run(netns, scenario_rtc_off)
    assert "ok rtc off" in out, out


@needs_netns
@pytest.mark.skipif(shutil.which("turnserver") is None, reason="coturn is not installed")
def test_a_link_only_turn_can_carry_is_a_relay_path_and_its_bytes_are_counted(
    netns: str,
) -> None:
    out = _run(netns, scenario_turn)
    assert "ok turn" in out, out
    print(out)
