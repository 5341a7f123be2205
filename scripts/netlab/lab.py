"""Build and tear down a netlab: network namespaces, veths, bridges, nftables NAT, shaping.

Everything lives in namespaces named ``{prefix}-...`` (``-inet``, ``-r-HOME`` for a router,
``-n-NODE`` for a node, ``-h-HOST`` for a host on the inet bridge, ``-x-HOME`` for a home's
delay line).  Veths are created directly inside those namespaces (``ip -n A link add ...
peer name ... netns B``), so no interface ever exists in the root namespace and no nft rule
or sysctl is written there; deleting the namespaces removes everything.  :func:`down` finds
a lab by its prefix alone (``ip netns list``), so it also cleans up after a crashed ``up``.

Addresses (nothing leaves the machine): the inet bridge is 198.18.0.0/24 (the benchmarking
range; the inet namespace itself is .1, routers' WAN .10 up, inet hosts .200 up); home i's
LAN is 10.(i+1).0.0/24 with the router at .1 and the nodes at .10, .11, .12.

The inet namespace (198.18.0.1) is the default gateway of every router and inet host and
forwards nothing, so a packet to an address nobody has (a node's LAN address sent to by a
relay) is dropped silently, as on the internet.  Without it the sender got ENETUNREACH at
once, and coturn closed any allocation that relayed to a host candidate.

What the kernel shares with the root namespace, unavoidably: the conntrack and nf_tables
code (built in or loaded as modules on first use); no root sysctl is changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from p2pupdate.errors import LocalStateFault
from scripts.netlab.topology import Home, Shaping, Topology, TopologyError, check_prefix

REPO = Path(__file__).resolve().parents[2]
INET_NET = "198.18.0"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NetlabError(LocalStateFault):
    """A command that builds or inspects the lab failed on this machine (ip, nft, tc)."""


def sh(argv: Sequence[str], *, timeout: float = 20.0, check: bool = True) -> str:
    """Run one tool; on failure raise :class:`NetlabError` with its stderr's last line."""
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetlabError(f"{argv[0]}: {e}") from e
    if check and p.returncode != 0:
        err = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise NetlabError(f"`{' '.join(argv)}` failed: {err}")
    return p.stdout


def namespaces(prefix: str) -> list[str]:
    """The namespaces of the lab with this prefix (``{prefix}-...``)."""
    out = sh(["ip", "netns", "list"])
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def root_links(prefix: str) -> list[str]:
    """Links in the root namespace whose name carries the prefix (netlab never makes any)."""
    out = sh(["ip", "-o", "link", "show"])
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return sorted(n for n in names if n.startswith(f"{prefix}-"))


def leftovers(prefix: str) -> list[str]:
    """Everything with this prefix that still exists: namespaces and root links."""
    return namespaces(prefix) + root_links(prefix)


def down(prefix: str) -> list[str]:
    """Remove every namespace and root link with ``prefix``; return what was removed.

    Processes still inside a namespace (a node, turnserver, a delay line) are killed first:
    a namespace with a process in it outlives ``ip netns del`` and keeps its interfaces.
    """
    check_prefix(prefix)
    removed = []
    spaces = namespaces(prefix)
    for ns in spaces:
        for pid in sh(["ip", "netns", "pids", ns], check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    for ns in spaces:
        sh(["ip", "netns", "del", ns], check=False)
        removed.append(ns)
    for link in root_links(prefix):
        sh(["ip", "link", "del", link], check=False)
        removed.append(link)
    return removed


def status() -> dict[str, list[str]]:
    """Namespaces that look like netlab's (``P-inet`` marks a lab), grouped by prefix."""
    out = sh(["ip", "netns", "list"])
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    labs = sorted(n[: -len("-inet")] for n in names if n.endswith("-inet"))
    return {p: sorted(n for n in names if n.startswith(f"{p}-")) for p in labs}


def enter_netns(ns: str) -> None:
    """Move the calling thread (only it) into namespace ``ns``.

    For a thread that lives in the lab, e.g. a dedicated asyncio thread running aiortc for
    one node: every socket it opens, and the interfaces it enumerates, are the node's.
    """
    try:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    except OSError as e:
        raise NetlabError(f"no namespace {ns}: {e.strerror}") from e
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise NetlabError(f"setns({ns}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a short-lived thread that has entered namespace ``ns``.

    A socket keeps the namespace it was created in, so ``in_netns(ns, socket.socket)``
    gives the caller (a test, a benchmark) a socket inside the lab without a subprocess.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_netns(ns)
            box["v"] = fn()
        except BaseException as e:
            box["e"] = e

    t = threading.Thread(target=target, name=f"netns-{ns}")
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]  # type: ignore[no-any-return]


def _flush_conntrack() -> None:
    """Delete every conntrack entry of the calling thread's namespace (ctnetlink flush).

    The netlink message conntrack -F sends: IPCTNL_MSG_CT_DELETE with no tuple, here so
    the lab needs no conntrack-tools.  Waits for the kernel's acknowledgement.
    """
    nfnl_subsys_ctnetlink, ipctnl_msg_ct_delete = 1, 2
    nlm_f_request, nlm_f_ack, nlmsg_error = 0x1, 0x4, 2
    body = struct.pack("BBH", socket.AF_INET, 0, 0)  # nfgenmsg: family, version, res_id
    msg_type = (nfnl_subsys_ctnetlink << 8) | ipctnl_msg_ct_delete
    header = struct.pack("=IHHII", 16 + len(body), msg_type, nlm_f_request | nlm_f_ack, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12) as nl:  # NETLINK_NETFILTER
        nl.settimeout(5)
        nl.bind((0, 0))
        nl.send(header + body)
        reply = nl.recv(4096)
    if len(reply) >= 20 and struct.unpack("=H", reply[4:6])[0] == nlmsg_error:
        err = -struct.unpack("=i", reply[16:20])[0]
        if err:
            raise NetlabError(f"conntrack flush: {os.strerror(err)}")


@dataclass(frozen=True, kw_only=True)
class _Iface:
    ns: str
    name: str


class Lab:
    """A built lab: names to namespaces and addresses, commands run inside, teardown.

    Use as a context manager (or call :meth:`close`): teardown kills the processes the lab
    started and removes every namespace with the prefix, whatever state the build is in.
    """

    def __init__(self, topology: Topology, prefix: str) -> None:
        self.topology = topology
        self.prefix = check_prefix(prefix)
        self.procs: list[subprocess.Popen[Any]] = []
        self._ns: dict[str, str] = {"inet": f"{prefix}-inet"}
        self._addr: dict[str, str] = {"inet": f"{INET_NET}.1"}
        self._wan: dict[str, str] = {}
        self._inet_hosts: list[str] = []
        # Set once build() has claimed the prefix: a refused build must not remove the lab
        # that already holds it.
        self._claimed = False

    # -- names and addresses ----------------------------------------------------------

    def ns(self, name: str) -> str:
        """The namespace of a node, inet host, home (its router) or ``inet``."""
        try:
            return self._ns[name]
        except KeyError:
            raise TopologyError(f"no node, host or home {name!r} in lab {self.prefix}") from None

    def addr(self, node: str) -> str:
        """A node's LAN address (or an inet host's address)."""
        if node not in self._addr or node in self._wan:
            raise TopologyError(f"no node or host {node!r} in lab {self.prefix}")
        return self._addr[node]

    def wan(self, home: str) -> str:
        """A home router's WAN address on the inet bridge: what the inet sees of the home."""
        try:
            return self._wan[home]
        except KeyError:
            raise TopologyError(f"no home {home!r} in lab {self.prefix}") from None

    def inet_addr(self, name: str) -> str:
        """The address of a host on the inet bridge (``inet`` is the bridge's namespace)."""
        if name != "inet" and name not in self._inet_hosts:
            raise TopologyError(f"no inet host {name!r} in lab {self.prefix}")
        return self._addr[name]

    def _ifname(self, kind: str, name: str) -> str:
        return f"{self.prefix}-{kind}-{name}"

    # -- running things inside ----------------------------------------------------------

    def run(
        self, name: str, argv: Sequence[str], *, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``name``'s namespace and wait; output is captured as text."""
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns(name), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            err = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise NetlabError(f"in {name}: `{' '.join(argv)}` exited {p.returncode}: {err}")
        return p

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``name``'s namespace; the lab stops it on :meth:`close`."""
        p: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(name), *argv], **kwargs
        )
        self.procs.append(p)
        return p

    def socket(
        self, name: str, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM
    ) -> socket.socket:
        """A socket created inside ``name``'s namespace (it stays there)."""
        return in_netns(self.ns(name), lambda: socket.socket(family, type))

    def flush_conntrack(self, home: str) -> None:
        """Forget every flow the home's router tracks, as a router reboot does.

        Existing NAT mappings vanish: a reply on an old flow is unsolicited from then on,
        and the LAN host's next packet out makes a new mapping.
        """
        if home not in self._wan:
            raise TopologyError(f"no home {home!r} in lab {self.prefix}")
        in_netns(self.ns(home), _flush_conntrack)

    # -- building -------------------------------------------------------------------------

    def _ip(self, ns: str, *args: str) -> None:
        sh(["ip", "-n", ns, *args])

    def _veth(self, a: _Iface, b: _Iface) -> None:
        self._ip(a.ns, "link", "add", a.name, "type", "veth", "peer", "name", b.name, "netns", b.ns)

    def _netns(self, ns: str) -> None:
        sh(["ip", "netns", "add", ns])
        self._ip(ns, "link", "set", "lo", "up")

    def _bridge(self, ns: str, name: str) -> None:
        self._ip(ns, "link", "add", name, "type", "bridge", "mcast_snooping", "0")
        self._ip(ns, "link", "set", name, "up")

    def _port(self, ns: str, port: str, bridge: str) -> None:
        self._ip(ns, "link", "set", port, "master", bridge)
        self._ip(ns, "link", "set", port, "up")

    def build(self) -> None:
        """Create every namespace, link, address, route and rule of the topology."""
        if namespaces(self.prefix):
            raise NetlabError(
                f"a lab with prefix {self.prefix} exists already (netlab down --prefix "
                f"{self.prefix})"
            )
        self._claimed = True
        inet = self._ns["inet"]
        self._netns(inet)
        self._bridge(inet, self._ifname("b", "inet"))
        # The internet's edge: it routes nothing, so no ICMP either (see the module doc).
        sh(["ip", "netns", "exec", inet, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        self._ip(inet, "addr", "add", f"{INET_NET}.1/24", "dev", self._ifname("b", "inet"))
        for host in self.topology.inet_hosts:
            self.add_inet_host(host)
        for i, home in enumerate(self.topology.homes):
            self._build_home(i, home)

    def add_inet_host(self, name: str) -> str:
        """Add a namespace on the inet bridge (a coordinator, coturn); return its address."""
        if name in self._ns:
            raise TopologyError(f"name {name!r} is taken in lab {self.prefix}")
        if len(self._inet_hosts) >= 50:
            raise TopologyError("at most 50 inet hosts")
        addr = f"{INET_NET}.{200 + len(self._inet_hosts)}"
        self._inet_hosts.append(name)
        ns = f"{self.prefix}-h-{name}"
        inet = self._ns["inet"]
        self._netns(ns)
        self._ns[name] = ns
        self._addr[name] = addr
        eth, port = self._ifname("e", name), self._ifname("p", name)
        self._veth(_Iface(ns=ns, name=eth), _Iface(ns=inet, name=port))
        self._port(inet, port, self._ifname("b", "inet"))
        self._ip(ns, "addr", "add", f"{addr}/24", "dev", eth)
        self._ip(ns, "link", "set", eth, "up")
        self._ip(ns, "route", "add", "default", "via", f"{INET_NET}.1")
        return addr

    def _build_home(self, i: int, home: Home) -> None:
        inet = self._ns["inet"]
        router = f"{self.prefix}-r-{home.name}"
        self._netns(router)
        self._ns[home.name] = router
        wan_addr = f"{INET_NET}.{10 + i}"
        self._wan[home.name] = wan_addr
        self._addr[home.name] = wan_addr
        wan = _Iface(ns=router, name=self._ifname("w", home.name))
        uplink_port = _Iface(ns=inet, name=self._ifname("u", home.name))
        # The router's downlink is the egress of the interface that feeds its WAN side.
        feeder = uplink_port
        if home.uplink.delay_ms or home.downlink.delay_ms:
            wire_ns = f"{self.prefix}-x-{home.name}"
            self._netns(wire_ns)
            near = _Iface(ns=wire_ns, name=self._ifname("y", home.name))
            far = _Iface(ns=wire_ns, name=self._ifname("z", home.name))
            self._veth(wan, near)
            self._veth(far, uplink_port)
            for iface in (near, far):
                self._ip(wire_ns, "link", "set", iface.name, "up")
            self._start_wire(wire_ns, near.name, far.name, home.uplink, home.downlink)
            feeder = near
        else:
            self._veth(wan, uplink_port)
        self._port(inet, uplink_port.name, self._ifname("b", "inet"))
        self._ip(router, "addr", "add", f"{wan_addr}/24", "dev", wan.name)
        self._ip(router, "link", "set", wan.name, "up")
        self._ip(router, "route", "add", "default", "via", f"{INET_NET}.1")
        lan = self._ifname("l", home.name)
        self._bridge(router, lan)
        net = f"10.{i + 1}.0"
        self._ip(router, "addr", "add", f"{net}.1/24", "dev", lan)
        sh(["ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for k, node in enumerate(home.nodes):
            ns = f"{self.prefix}-n-{node}"
            self._netns(ns)
            self._ns[node] = ns
            addr = f"{net}.{10 + k}"
            self._addr[node] = addr
            eth, port = self._ifname("e", node), self._ifname("p", node)
            self._veth(_Iface(ns=ns, name=eth), _Iface(ns=router, name=port))
            self._port(router, port, lan)
            self._ip(ns, "addr", "add", f"{addr}/24", "dev", eth)
            self._ip(ns, "link", "set", eth, "up")
            self._ip(ns, "route", "add", "default", "via", f"{net}.1")
            # mDNS: multicast goes out of the LAN interface, not the default route.
            self._ip(ns, "route", "add", "224.0.0.0/4", "dev", eth)
        self._nat(router, wan.name, home, f"{net}.10")
        self._tbf(router, wan.name, home.uplink)
        self._tbf(feeder.ns, feeder.name, home.downlink)

    def _nat(self, router: str, wan: str, home: Home, dmz: str) -> None:
        """The router's nftables: masquerade, a stateful filter, the cone's DMZ, loss."""
        fwd = []
        if home.uplink.loss_pct:
            fwd.append(f'oifname "{wan}" numgen random mod 10000 < {_per10k(home.uplink)} drop')
        if home.downlink.loss_pct:
            fwd.append(f'iifname "{wan}" numgen random mod 10000 < {_per10k(home.downlink)} drop')
        fwd.append(f'iifname "{wan}" ct state established,related accept')
        pre = []
        if home.nat == "cone":
            # Endpoint-independent filtering: any inbound UDP to the WAN address goes to the
            # one LAN host, like a DMZ / UPnP router; masquerade keeps the source port.
            pre.append(f'iifname "{wan}" meta l4proto udp dnat to {dmz}')
            fwd.append(f'iifname "{wan}" ct status dnat accept')
        fwd.append(f'iifname "{wan}" drop')
        # strict is a symmetric NAT: every new flow gets a random source port, so the address
        # a STUN server saw is not the one a peer would have to hit, and two strict homes
        # never punch through, however the packets are timed (port-preserving masquerade
        # did, whenever one side's packet left its router first).
        masquerade = "masquerade" if home.nat == "cone" else "masquerade fully-random"
        rules = "\n".join(
            [
                "table ip netlab {",
                "  chain nat_pre { type nat hook prerouting priority dstnat; policy accept;",
                *(f"    {r}" for r in pre),
                "  }",
                "  chain nat_post { type nat hook postrouting priority srcnat; policy accept;",
                f'    oifname "{wan}" {masquerade}',
                "  }",
                "  chain filter_fwd { type filter hook forward priority filter; policy accept;",
                *(f"    {r}" for r in fwd),
                "  }",
                "}",
            ]
        )
        try:
            p = subprocess.run(
                ["ip", "netns", "exec", router, "nft", "-f", "-"],
                input=rules,
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NetlabError(f"nft: {e}") from e
        if p.returncode != 0:
            err = (p.stderr.strip().splitlines() or ["(no message)"])[0]
            raise NetlabError(f"nft in {router} failed: {err}")

    def _tbf(self, ns: str, dev: str, shaping: Shaping) -> None:
        if shaping.rate_kbit is None:
            return
        burst = max(1600, shaping.rate_kbit * 1000 // 8 // 100)  # ~10 ms of traffic
        sh(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf",
            "rate", f"{shaping.rate_kbit}kbit", "burst", str(burst), "latency", "100ms"])  # fmt: skip

    def _start_wire(self, ns: str, near: str, far: str, up: Shaping, downl: Shaping) -> None:
        """Start the delay line between a router and the inet bridge (see wire.py)."""
        argv = [sys.executable, "-m", "scripts.netlab.wire", near, far,
                str(up.delay_ms), str(downl.delay_ms)]  # fmt: skip
        # A new session: a lab brought up by the CLI keeps its delay lines after `up` exits.
        p: subprocess.Popen[str] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        p.stdout.close()
        if line.strip() != "ready":
            raise NetlabError(f"the delay line in {ns} did not start")

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the lab's processes (TERM, then KILL after 3 s) and remove the namespaces."""
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.terminate()
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._claimed:
            down(self.prefix)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _per10k(s: Shaping) -> int:
    return round(s.loss_pct * 100)


@contextlib.contextmanager
def lab_up(topology: Topology, prefix: str) -> Iterator[Lab]:
    """Build a lab and always tear it down (the pytest fixture's body)."""
    lab = Lab(topology, prefix)
    try:
        lab.build()
        yield lab
    finally:
        lab.close()
