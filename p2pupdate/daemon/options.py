"""The daemon's options, in one table shared by ``python -m p2pupdate.daemon`` and
``p2pupdate node`` (which forwards the ones the user gave to every daemon it starts).

The launcher is the installed code and the daemon is whatever slot runs, so the launcher
forwards only options that were given explicitly: a daemon of another version then applies
its own defaults to the rest.

Each option's type checks the value alone (its syntax, and its range against the schema
the coordinator applies to it); :func:`check_node_options` checks what needs the machine
or several options at once (a root that parses, an address this machine has, a port not
in use, an option that needs another).  ``p2pupdate node`` runs both before anything
starts: a mistake there is one line and exit 2, never a launcher whose daemon crashes
over it at every start.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..cli.common import UsageError, int_range, pool_name, read_document
from ..core import admission
from ..core import bundle as bd
from ..core import coordproto as proto
from ..core import documents as docs
from ..core.documents import open_root
from ..core.errors import ExpiredError, P2PUpdateError, WrongNetworkError
from ..core.gossip import RTC_MODES, rtc_enabled
from ..core.timing import UpdaterConfig
from ..core.trust import STATE_LIMITS, TrustStore
from ..fsutil import read_limited
from ..net.addresses import bind_problem, is_host, is_ip, split_hostport
from ..net.websocket import parse_url
from .bundled import Bundled, lan_addresses, open_node_bundle
from .identity import UPGRADE_FLAG, peek_node_id
from .truststate import STORE_NAME

WORKLOADS: Final = ("kv", "none")
#: The updater's timings' one home; options that set one of them default to its value.
UPDATER_DEFAULTS: Final = UpdaterConfig()

_SECONDS = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?$")
_SECOND_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


#: The shortest duration an option takes: the launcher forwards durations in microseconds
#: (``forward_args``), and a shorter one would reach the daemon as 0, which it refuses.
MIN_SECONDS: Final = 0.001


def seconds(text: str) -> float:
    """'0.5', '2s', '250ms', '15m', '1h' -> seconds (at least 1 ms, at most a week)."""
    m = _SECONDS.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 0.5, 2s, 250ms, 15m")
    value = float(m.group(1)) * _SECOND_UNITS[m.group(2)]
    if not MIN_SECONDS <= value <= 7 * 86400.0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1ms and at most a week")
    return value


#: Longest gossip round: an active link silent for ``GossipConfig.silence_timeout`` (60 s)
#: is dropped, so rounds far longer than a few seconds would cut every link as silent.
MAX_GOSSIP_ROUND: Final = 10.0


def _gossip_round(text: str) -> float:
    value = seconds(text)
    if value > MAX_GOSSIP_ROUND:
        raise argparse.ArgumentTypeError(f"{text!r}: a gossip round is at most 10s")
    return value


_count = int_range(1, 1000)
_port = int_range(0, 65535, "a port number")


def _capacity(text: str) -> float:
    """A capacity the coordinator accepts in an ask: its schema's own check decides."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        checked: float = proto.AskRequest.CHECKS["capacity"]("capacity", v)
    except P2PUpdateError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range ({exc})") from None
    return checked


def _stub(text: str) -> str:
    """``C:L:S``, checked as the estimate a status report carries (``coordproto.Estimate``)."""
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        proto.Estimate(
            capacity=float(parts[0]), load=float(parts[1]), serving=int(parts[2]), age=0.0
        )
    except (ValueError, P2PUpdateError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not CAPACITY:LOAD:SERVING (finite numbers >= 0)"
        ) from None
    return text


def _host(text: str) -> str:
    if not is_host(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or IP address")
    return text


def _hostport(text: str, *, lowest_port: int) -> str:
    try:
        host, port = split_hostport(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT") from None
    if not is_host(host):
        raise argparse.ArgumentTypeError(f"{text!r}: {host!r} is not a host name or IP address")
    if port < lowest_port:
        raise argparse.ArgumentTypeError(f"{text!r}: port {port} cannot be dialed")
    return text.strip()


def _listen(text: str) -> str:
    """Where to listen: ``HOST:PORT``, port 0 for any free one."""
    return _hostport(text, lowest_port=0)


def _peer(text: str) -> str:
    """A peer to dial: ``HOST:PORT`` with a real port."""
    return _hostport(text, lowest_port=1)


def _interface(text: str) -> str:
    """A zeroconf interface, by its address (zeroconf takes addresses, never names)."""
    if not is_ip(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address")
    return text


def _coordinator(text: str) -> str:
    """A replica's URL, spelled out: ``http://HOST:PORT`` (``ws://`` too)."""
    if "://" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL like http://HOST:PORT")
    try:
        parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


_RATE = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*([kKmMgG])?$")
_RATE_UNITS = {None: 1.0, "k": 1024.0, "m": 1024.0**2, "g": 1024.0**3}
#: Swarm modes (``--swarm``).
SWARM_MODES: Final = ("on", "off")


def rate(text: str) -> float:
    """'512k', '2M', '1.5M', '65536' -> bytes per second (k, M, G: powers of 1024), at
    least 1 B/s and at most 1 TiB/s."""
    m = _RATE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate like 512k, 2M, 1.5M, 65536")
    unit = m.group(2).lower() if m.group(2) else None
    value = float(m.group(1)) * _RATE_UNITS[unit]
    if not 1.0 <= value <= 1024.0**4:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 byte/s and at most 1T")
    return value


@dataclass(frozen=True, kw_only=True)
class _Opt:
    flag: str
    kind: Callable[[str], Any] | None  # None: a boolean switch
    default: Any
    metavar: str | None
    help: str
    choices: tuple[str, ...] | None = None
    #: May be given several times (a list; forwarded once per value).
    repeat: bool = False

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


#: Every daemon option: the parser of both commands and the forwarding come from here.
OPTIONS: Final = (
    _Opt(
        flag="--work",
        kind=str,
        default="kv",
        metavar=None,
        choices=WORKLOADS,
        help="the work this node serves: the example key/value service, or none",
    ),
    _Opt(
        flag="--host", kind=_host, default="127.0.0.1", metavar="ADDR", help="work listen address"
    ),
    _Opt(
        flag="--port",
        kind=_port,
        default=0,
        metavar="N",
        help="work listen port (default 0: any free port)",
    ),
    _Opt(
        flag="--capacity",
        kind=_capacity,
        default=100.0,
        metavar="X",
        help="work units per second this node can carry",
    ),
    _Opt(
        flag="--offer-dir",
        kind=Path,
        default=None,
        metavar="DIR",
        help="take new builds from DIR: <sha256>.tar.gz with <sha256>.release (signed; "
        "needs --trust-root) or <sha256>.json ({name, counter}; unsigned, test only) -- a "
        "stand-in until peer-to-peer fetching arrives",
    ),
    _Opt(
        flag="--trust-root",
        kind=Path,
        default=None,
        metavar="ROOT",
        help="trusted root document: offers must carry a release record signed under it",
    ),
    _Opt(
        flag="--bundle",
        kind=Path,
        default=None,
        metavar="FILE",
        help="the network bundle (`p2pupdate-coordinator bundle`, signed by the root role): "
        "the trust root (on the first start; then the one held, rotated by the bundle's "
        "newer root), the replicas, the network document, the pool and the defaults gossip "
        "on (all interfaces, zeroconf on each private-range LAN address); every other flag "
        "overrides what it says. `p2pupdate node` reads "
        f"{bd.BUNDLE_FILE} as root (else $XDG_CONFIG_HOME/p2pupdate/network.bundle) when "
        "it is there and neither --bundle nor --trust-root is given",
    ),
    _Opt(
        flag="--coordinator",
        kind=_coordinator,
        default=None,
        metavar="URL",
        repeat=True,
        help="a coordinator replica, http://HOST:PORT (repeat for each replica); needs "
        "--trust-root: documents, departure tokens and reports go through the replicas",
    ),
    _Opt(
        flag="--network-config",
        kind=Path,
        default=None,
        metavar="FILE",
        help="the network document (signed by the root role: the admission rule, its proof "
        "of work, the per-subnet caps); needs --trust-root. Kept as "
        f"STATE_DIR/{admission.NETWORK_FILE}, which is the default when it is there",
    ),
    _Opt(
        flag="--member",
        kind=Path,
        default=None,
        metavar="FILE",
        help="this node's member document (signed by the operator role: node id, pool, "
        "expiry), carried in every hello to the replicas of an enrolled network; needs "
        f"--trust-root. Kept as STATE_DIR/{admission.MEMBER_FILE}, the default when there",
    ),
    _Opt(
        flag=UPGRADE_FLAG,
        kind=None,
        default=False,
        metavar=None,
        help="replace this node's key by one that meets the network document's proof of "
        "work, if it falls short (the old key kept as identity.pem.old-N; a new id: named "
        "scopes must name it). A key that meets it is kept",
    ),
    _Opt(
        flag="--pool",
        kind=pool_name,
        default="default",
        metavar="NAME",
        help="the pool this node serves in; capacity is weighed per pool (default: the "
        'member document\'s in an enrolled network, which --pool must match; else "default")',
    ),
    _Opt(
        flag="--aggregate-stub",
        kind=_stub,
        default=None,
        metavar="C:L:S",
        help="TEST OVERRIDE: report this pool aggregate estimate (capacity, load, serving "
        "nodes) to the coordinator instead of the gossip estimate; with neither, none",
    ),
    _Opt(
        flag="--gossip-listen",
        kind=_listen,
        default=None,
        metavar="HOST:PORT",
        help="run gossip: listen for peer links on HOST:PORT (port 0: any free port; "
        "needs --trust-root). Without it (and without --peer or --zeroconf) the node does "
        "not gossip",
    ),
    _Opt(
        flag="--gossip-advertise",
        kind=_host,
        default=None,
        metavar="HOST",
        help="the address peers are told to dial (default: the --gossip-listen host; "
        "needed when that is a wildcard like 0.0.0.0)",
    ),
    _Opt(
        flag="--peer",
        kind=_peer,
        default=None,
        metavar="HOST:PORT",
        repeat=True,
        help="a gossip peer to bootstrap from (repeat for several); implies gossip "
        "(listening on 127.0.0.1:0 unless --gossip-listen says otherwise)",
    ),
    _Opt(
        flag="--zeroconf",
        kind=_interface,
        default=None,
        metavar="ADDR",
        repeat=True,
        help="find gossip peers on the LAN by zeroconf (_p2pupdate._udp.local.) on the "
        "interface with this address (repeat for several; needs gossip and a specific "
        "--gossip-listen or --gossip-advertise address)",
    ),
    _Opt(
        flag="--rtc",
        kind=str,
        default="auto",
        metavar=None,
        choices=RTC_MODES,
        help="link to peers by WebRTC data channels (ICE: host candidates on a LAN, STUN "
        "and TURN from the coordinator across NATs), tcp as the fallback; auto (default): "
        "on when the gossip listen or advertise host is not a loopback address",
    ),
    _Opt(
        flag="--gossip-round",
        kind=_gossip_round,
        default=1.0,
        metavar="DUR",
        help="time between gossip rounds (default 1s, at most 10s)",
    ),
    _Opt(
        flag="--gossip-notice-spread",
        kind=seconds,
        default=UPDATER_DEFAULTS.notice_spread,
        metavar="DUR",
        help="a newer allowlist learned by gossip starts an update check after a random "
        "delay in [0, DUR], so a fleet does not check in one second "
        f"(default {UPDATER_DEFAULTS.notice_spread:g}s)",
    ),
    _Opt(
        flag="--swarm",
        kind=str,
        default="on",
        metavar=None,
        choices=SWARM_MODES,
        help="fetch builds from peers over the gossip links (the chunk swarm; the "
        "coordinator's origin only for chunks no peer has) and serve what this node holds; "
        "on (default) whenever gossip runs, off: the origin only",
    ),
    _Opt(
        flag="--swarm-upload-cap",
        kind=rate,
        default=None,
        metavar="RATE",
        help="the most this node uploads to swarm peers, bytes/s on the wire (TCP/IP headers "
        "and the ACKs of its downloads counted; 512k, 2M, 1.5M; default: no cap beyond half "
        "the uplink)",
    ),
    _Opt(
        flag="--swarm-uplink",
        kind=rate,
        default=None,
        metavar="RATE",
        help="the uplink this node assumes (bytes/s, like --swarm-upload-cap) until it has "
        "measured one; uploads use half of it (default 1M)",
    ),
    _Opt(
        flag="--report-interval",
        kind=seconds,
        default=30.0,
        metavar="DUR",
        help="time between status reports to the coordinator with --persistent-sessions; "
        "on demand, the heartbeat until a replica sets one (default 30s)",
    ),
    _Opt(
        flag="--persistent-sessions",
        kind=None,
        default=False,
        metavar=None,
        help="keep a session open to every replica (small fleets): pushes arrive at once; "
        "by default a session opens when the node has something to say and closes idle",
    ),
    _Opt(
        flag="--swap-margin",
        kind=seconds,
        default=UPDATER_DEFAULTS.swap_margin,
        metavar="DUR",
        help="lease time kept for the swap and restart after draining "
        f"(default {UPDATER_DEFAULTS.swap_margin:g}s)",
    ),
    _Opt(
        flag="--grant-all",
        kind=None,
        default=False,
        metavar=None,
        help="TEST ONLY: every departure request is granted at once, no coordinator asked",
    ),
    _Opt(
        flag="--check-interval",
        kind=seconds,
        default=UPDATER_DEFAULTS.check_interval,
        metavar="DUR",
        help=f"mean time between update checks, jittered +-{UPDATER_DEFAULTS.check_jitter * 100:g}%% "
        f"(default {UPDATER_DEFAULTS.check_interval:g}s)",
    ),
    _Opt(
        flag="--drain-timeout",
        kind=seconds,
        default=UPDATER_DEFAULTS.drain_timeout,
        metavar="DUR",
        help=f"longest drain before a swap (default {UPDATER_DEFAULTS.drain_timeout:g}s)",
    ),
    _Opt(
        flag="--health-checks",
        kind=_count,
        default=5,
        metavar="N",
        help="consecutive passing health checks a new version needs (default 5)",
    ),
    _Opt(
        flag="--health-interval",
        kind=seconds,
        default=1.0,
        metavar="DUR",
        help="time between health checks on probation (default 1s)",
    ),
)


@dataclass(frozen=True, kw_only=True)
class DaemonOptions:
    """The parsed daemon options (the daemon's own defaults filled in)."""

    work: str = "kv"
    host: str = "127.0.0.1"
    port: int = 0
    capacity: float = 100.0
    offer_dir: Path | None = None
    trust_root: Path | None = None
    bundle: Path | None = None
    coordinator: tuple[str, ...] = ()
    network_config: Path | None = None
    member: Path | None = None
    upgrade_identity: bool = False
    pool: str = "default"
    aggregate_stub: str | None = None
    gossip_listen: str | None = None
    gossip_advertise: str | None = None
    peer: tuple[str, ...] = ()
    zeroconf: tuple[str, ...] = ()
    rtc: str = "auto"
    gossip_round: float = 1.0
    gossip_notice_spread: float = UPDATER_DEFAULTS.notice_spread
    swarm: str = "on"
    swarm_upload_cap: float | None = None
    swarm_uplink: float | None = None
    report_interval: float = 30.0
    persistent_sessions: bool = False
    swap_margin: float = UPDATER_DEFAULTS.swap_margin
    grant_all: bool = False
    check_interval: float = UPDATER_DEFAULTS.check_interval
    drain_timeout: float = UPDATER_DEFAULTS.drain_timeout
    health_checks: int = 5
    health_interval: float = 1.0

    @property
    def gossip(self) -> bool:
        """Gossip runs when a listen address or a bootstrap peer is given."""
        return self.gossip_listen is not None or bool(self.peer) or bool(self.zeroconf)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> DaemonOptions:
        values = {o.dest: getattr(ns, o.dest) for o in OPTIONS}
        for o in OPTIONS:
            if o.repeat:
                values[o.dest] = tuple(values[o.dest] or ())
        return cls(**values)


def add_daemon_arguments(
    parser: argparse.ArgumentParser, *, for_launcher: bool, unset: bool | None = None
) -> None:
    """Add every daemon option.  For the launcher, defaults are None (= not forwarded);
    ``unset`` says the same for the daemon, which fills them in after its bundle
    (``apply_bundle``, then ``fill_defaults``): a flag given overrides the bundle."""
    group = parser.add_argument_group(
        "daemon options"
        + (" (forwarded to the daemon in the running slot)" if for_launcher else "")
    )
    none = for_launcher if unset is None else unset
    for o in OPTIONS:
        default = None if none else o.default
        if o.kind is None:
            group.add_argument(o.flag, action="store_true", default=default, help=o.help)
            continue
        if o.repeat:
            group.add_argument(
                o.flag, type=o.kind, action="append", default=None, metavar=o.metavar, help=o.help
            )
            continue
        shown = "" if o.default is None or "default" in o.help else f" (default {o.default})"
        group.add_argument(
            o.flag,
            type=o.kind,
            default=default,
            metavar=o.metavar,
            choices=o.choices,
            help=o.help + shown,
        )


def forward_args(ns: argparse.Namespace) -> list[str]:
    """The daemon arguments the user gave (paths made absolute: the daemon's cwd differs)."""
    out: list[str] = []
    for o in OPTIONS:
        value = getattr(ns, o.dest, None)
        if value is None or value is False:
            continue
        if o.kind is None:
            out.append(o.flag)
        elif isinstance(value, list | tuple):
            for item in value:
                out += [o.flag, str(item)]
        elif isinstance(value, Path):
            out += [o.flag, str(value.absolute())]
        elif isinstance(value, float):
            out += [o.flag, f"{value:.6f}"]
        else:
            out += [o.flag, str(value)]
    return out


def fill_defaults(ns: argparse.Namespace) -> None:
    """Every option not given (None) set to its default: what ``DaemonOptions`` reads."""
    for o in OPTIONS:
        if getattr(ns, o.dest, None) is None and not o.repeat:
            setattr(ns, o.dest, False if o.kind is None else o.default)


_WILDCARDS: Final = ("", "0.0.0.0", "::")


def apply_bundle(ns: argparse.Namespace, bundle: bd.Bundle, *, lan: list[str]) -> list[str]:
    """Fill the options not given (None, or empty for a repeated one) from ``bundle``;
    return what to log.  ``lan``: this machine's private-range LAN addresses
    (``bundled.lan_addresses``).  What a flag says is never changed:

    * ``--coordinator``: the bundle's replicas (those this version can dial: plain
      ``http``; the others are said and skipped);
    * ``--pool``: the bundle's (a member document's pool still comes first: the daemon);
    * gossip on (the bundle's ``gossip``): ``--gossip-listen 0.0.0.0:PORT`` (its
      ``gossip_port``, 0: a random one), ``--gossip-advertise`` the first LAN address
      when the listen address is a wildcard, and (its ``zeroconf``) ``--zeroconf`` on
      every LAN address -- none when the machine has no private-range address, or the
      announced address is not a specific one.

    The trust root and the network document are bytes, not options: ``Bundled``."""
    notes: list[str] = []
    if not ns.coordinator:
        urls: list[str] = []
        for url in bundle.replicas:
            try:
                urls.append(_coordinator(url))
            except argparse.ArgumentTypeError as exc:
                notes.append(f"bundle: replica {url} skipped ({exc})")
        ns.coordinator = urls or None
    if getattr(ns, "pool", None) is None:
        ns.pool = bundle.pool
    if not bundle.gossip:
        return notes
    if ns.gossip_listen is None:
        ns.gossip_listen = f"0.0.0.0:{bundle.gossip_port}"
    host, _port = split_hostport(ns.gossip_listen)
    if ns.gossip_advertise is None and host in _WILDCARDS and lan:
        ns.gossip_advertise = lan[0]
    if bundle.zeroconf and not getattr(ns, "zeroconf", None):
        announced = ns.gossip_advertise or host
        if not lan:
            notes.append("bundle: no private-range LAN address here: no zeroconf")
        elif announced in _WILDCARDS or not is_ip(announced):
            notes.append(f"bundle: gossip announces {announced!r}: no zeroconf")
        else:
            ns.zeroconf = list(lan)
    return notes


def _given(ns: argparse.Namespace, dest: str) -> Any:
    """The value of an option, its default when it was not given (the launcher's
    namespace holds None for options it does not forward)."""
    value = getattr(ns, dest, None)
    if value is None:
        value = next(o.default for o in OPTIONS if o.dest == dest)
    return value


def trust_root_missing(ns: argparse.Namespace) -> str | None:
    """Why these options cannot run without ``--trust-root`` (one line naming the option),
    or None.  The one home of the rule: ``check_node_options`` refuses it before anything
    starts, and the daemon, which can be started on its own, says the same."""
    if ns.trust_root is not None or getattr(ns, "bundle", None) is not None:
        return None  # (a bundle carries the root)
    if ns.coordinator:
        return "--coordinator needs --trust-root (tokens are verified against it)"
    for flag in ("--network-config", "--member"):
        if getattr(ns, flag[2:].replace("-", "_"), None) is not None:
            return f"{flag} needs --trust-root (the document is verified against it)"
    if ns.gossip_listen is not None or ns.peer or getattr(ns, "zeroconf", None):
        flag = "--gossip-listen" if ns.gossip_listen else "--peer" if ns.peer else "--zeroconf"
        return f"{flag} needs --trust-root (gossiped documents are verified)"
    return None


def check_node_options(
    ns: argparse.Namespace,
    *,
    probation: float,
    confirm_margin: float,
    state_dir: Path | None = None,
    now: int | None = None,
) -> None:
    """Everything about the daemon options that needs this machine or several options at
    once, checked before anything starts.  Raises ``UsageError`` (one line, naming the
    option) at the first problem; reads files and binds test sockets, writes nothing.

    ``probation`` is the launcher's window for a new build to confirm in, and
    ``confirm_margin`` what the daemon keeps of it for its own rollback
    (``daemon.boot.PROBATION_MARGIN``).  ``state_dir`` and ``now`` (unix seconds of the
    caller's wall clock; None: the admission documents are not checked): where the
    admission documents' kept copies and the node's key are read (``open_admission``).

    ``--bundle`` (or the default file ``p2pupdate node`` put there): judged as the daemon
    will (``bundled.open_node_bundle``, strict: a bad one is the usage error) and merged
    as the daemon will (``apply_bundle``), into a copy of ``ns``: the launcher forwards
    only the flags given, and each daemon start merges the bundle again.
    """
    given_pool = getattr(ns, "pool", None)
    trust_root: Path | None = ns.trust_root
    root: docs.Root | None = None
    if trust_root is not None:
        try:
            root = open_root(read_document(trust_root)).doc
        except UsageError as exc:
            raise UsageError(f"--trust-root {exc}") from None
        except P2PUpdateError as exc:
            raise UsageError(
                f"--trust-root {trust_root}: not a root document ({exc.rule}: {exc})"
            ) from None
    bundled: Bundled | None = None
    if getattr(ns, "bundle", None) is not None and now is not None:
        bundled = resolve_bundle(ns, state_dir, now=now, strict=True)
        ns = argparse.Namespace(**vars(ns))
        if bundled.opened is not None:
            apply_bundle(ns, bundled.opened.bundle, lan=lan_addresses())
        if root is None:
            root = bundled.opened.root.doc if bundled.opened is not None else bundled.pinned_root
    offer_dir: Path | None = ns.offer_dir
    if offer_dir is not None and not offer_dir.is_dir():
        what = "not a directory" if offer_dir.exists() else "no such directory"
        raise UsageError(f"--offer-dir {offer_dir}: {what}")
    missing = trust_root_missing(ns)
    if missing:
        raise UsageError(missing)
    if root is not None and now is not None:
        node = peek_node_id(state_dir) if state_dir is not None and state_dir.is_dir() else None
        held = held_root(state_dir) if state_dir is not None else None
        if held is not None and held.network == root.network and held.version > root.version:
            root = held  # rotated since: the documents are signed under the root the node holds
        found = open_admission(
            ns,
            state_dir,
            root,
            now=now,
            node=node,
            strict=True,
            bundled=bundled.network_bytes if bundled is not None else None,
        )
        found.pool(given_pool)  # a mismatch is refused now
    listen_host = None
    if ns.gossip_listen is not None:
        listen_host, port = split_hostport(ns.gossip_listen)
        problem = bind_problem(listen_host, port)
        if problem:
            raise UsageError(f"--gossip-listen {ns.gossip_listen}: cannot listen there ({problem})")
    for address in ns.zeroconf or ():
        problem = bind_problem(address, udp=True)
        if problem:
            raise UsageError(f"--zeroconf {address}: not an address of this machine ({problem})")
    if ns.zeroconf:
        announced = ns.gossip_advertise or listen_host
        if announced is None or announced in ("0.0.0.0", "::") or not is_ip(announced):
            raise UsageError(
                "--zeroconf announces the gossip address: it needs --gossip-listen or "
                "--gossip-advertise with a specific IP address"
            )
    if _given(ns, "rtc") == "on":
        gossip = ns.gossip_listen is not None or ns.peer or getattr(ns, "zeroconf", None)
        hosts = [listen_host or "127.0.0.1", ns.gossip_advertise]
        if not gossip:
            raise UsageError("--rtc on needs gossip (--gossip-listen, --peer or --zeroconf)")
        if not rtc_enabled("auto", hosts):
            raise UsageError(
                "--rtc on needs a gossip address beyond this machine (--gossip-listen or "
                "--gossip-advertise not loopback): ICE never offers a loopback candidate"
            )
    if _given(ns, "work") == "kv":
        host, port = _given(ns, "host"), _given(ns, "port")
        problem = bind_problem(host, port)
        if problem:
            raise UsageError(
                f"--host {host} --port {port}: the work cannot listen there ({problem})"
            )
    checks, interval = _given(ns, "health_checks"), _given(ns, "health_interval")
    if (checks - 1) * interval + confirm_margin >= probation:
        raise UsageError(
            f"--health-checks {checks} every --health-interval {interval:g}s cannot pass "
            f"inside --probation {probation:g}s: a new build could never confirm"
        )


# -- the admission documents (P10) ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Admission:
    """The network document and this node's member document, as verified at start.

    ``network_bytes`` / ``member_bytes`` are what to keep in the state dir and carry in
    the hello; ``warnings`` are what to log loudly (a kept copy that expired)."""

    network: docs.NetworkConfig | None = None
    network_bytes: bytes | None = None
    member: docs.Member | None = None
    member_bytes: bytes | None = None
    warnings: tuple[str, ...] = ()

    @property
    def pow_bits(self) -> int:
        """The proof of work a new node key needs (``open`` networks only)."""
        net = self.network
        return net.pow_bits if net is not None and net.admission == "open" else 0

    def pool(self, given: str | None) -> str | None:
        """The pool this node serves in: ``given`` (``--pool``; None: not given), which in
        a network that is not ``open`` must be the member document's; without it, the
        member document's.  Raises ``UsageError`` on a mismatch."""
        member = self.member
        if member is None or (self.network is not None and self.network.admission == "open"):
            return given
        named = member.pool or "default"
        if given is not None and given != named:
            raise UsageError(
                f"--pool {given}: the member document puts this node in pool {named!r}"
            )
        return named


def resolve_bundle(
    ns: argparse.Namespace, state_dir: Path | None, *, now: int, strict: bool
) -> Bundled:
    """``--bundle`` opened for this node (``bundled.open_node_bundle``), and checked
    against ``--trust-root`` when both are given (the flag's root is trusted; a bundle
    of another network cannot go with it).  Raises ``UsageError``."""
    found = open_node_bundle(ns.bundle, state_dir=state_dir, now=now, strict=strict)
    if ns.trust_root is not None and found.opened is not None:
        try:
            network = open_root(read_document(ns.trust_root)).doc.network
        except (UsageError, P2PUpdateError):
            return found  # the caller says what is wrong with --trust-root
        if network != found.opened.bundle.network:
            raise UsageError(
                f"--bundle {ns.bundle}: for network {found.opened.bundle.network!r}; "
                f"--trust-root is {network!r}'s"
            )
    return found


def held_root(state_dir: Path) -> docs.Root | None:
    """The root the node's trust store holds (rotated past ``--trust-root``, maybe), read
    only; None when there is none or it cannot be read (the daemon repairs it)."""
    try:
        data = read_limited(state_dir / "trust" / STORE_NAME, STATE_LIMITS.max_bytes)
        return TrustStore.from_bytes(data).root
    except (OSError, P2PUpdateError):
        return None


def admission_paths(
    ns: argparse.Namespace, state_dir: Path | None
) -> dict[str, tuple[Path, bool] | None]:
    """Where each admission document comes from: ``(path, given)`` -- the flag's file, or
    the copy kept in the state dir (``given`` False) -- or None."""
    out: dict[str, tuple[Path, bool] | None] = {}
    for flag, dest, name in (
        ("--network-config", "network_config", admission.NETWORK_FILE),
        ("--member", "member", admission.MEMBER_FILE),
    ):
        path: Path | None = getattr(ns, dest, None)
        if path is not None:
            out[flag] = (path, True)
        elif state_dir is not None and (state_dir / name).is_file():
            out[flag] = (state_dir / name, False)
        else:
            out[flag] = None
    return out


def _read_doc(flag: str, path: Path, given: bool) -> bytes:
    label = f"{flag} {path}" if given else f"{path} (the copy {flag} left; give {flag})"
    try:
        return read_document(path)
    except UsageError as exc:
        raise UsageError(f"{flag} {exc}" if given else f"{label}: {exc}") from None
    except P2PUpdateError as exc:
        raise UsageError(f"{label}: {exc.rule}: {exc}") from None


def open_admission(
    ns: argparse.Namespace,
    state_dir: Path | None,
    root: docs.Root,
    *,
    now: int,
    node: str | None,
    strict: bool,
    bundled: bytes | None = None,
) -> Admission:
    """The admission documents verified against ``root``: the network document (root
    role, this root's network) and the member document (operator role, naming ``node``
    when it is known).  Any fault is a ``UsageError`` naming the flag.  Expiry too when
    ``strict`` and the flag named the file (the operator is there to fix it); a kept copy
    that expired, or any after start (the daemon: time passed, the node must keep
    serving), is a warning -- the replicas will say no and the status shows why.

    ``bundled``: the network document of the node's bundle (``bundled.Bundled``), used
    when ``--network-config`` is not given -- or the copy a flag left in the state dir,
    if that one is newer.  Its expiry is a warning (nobody is at the box to fix it)."""
    paths = admission_paths(ns, state_dir)
    warnings: list[str] = []
    network = network_bytes = member = member_bytes = None

    def expired(flag: str, path: Path | str, given: bool, exc: ExpiredError) -> None:
        line = f"{flag} {path}: {exc} (ask the network's operator for a new one)"
        if strict and given:
            raise UsageError(line)
        warnings.append(f"WARNING: {line}")

    def open_network(label: str, data: bytes) -> docs.NetworkConfig:
        try:
            doc = admission.open_network(data, root).doc
        except WrongNetworkError as exc:
            raise UsageError(f"{label}: {exc}") from None
        except P2PUpdateError as exc:
            raise UsageError(
                f"{label}: not a network document signed by the root ({exc.rule}: {exc})"
            ) from None
        return doc

    found = paths["--network-config"]
    if bundled is not None and (found is None or not found[1]):
        network, network_bytes = open_network("--bundle (its network document)", bundled), bundled
        if found is not None:  # a copy a flag left: the newer of the two
            try:
                data = _read_doc("--network-config", *found)
                kept = open_network(str(found[0]), data)
            except UsageError:  # a bad old copy: the bundle's is there
                kept = None
            if kept is not None and kept.version > network.version:
                network, network_bytes = kept, data
        try:
            docs.check_fresh(network, now)
        except ExpiredError as exc:
            expired("--network-config", "(from the bundle)", False, exc)
    elif found is not None:
        path, given = found
        data = _read_doc("--network-config", path, given)
        network = open_network(f"--network-config {path}", data)
        try:
            docs.check_fresh(network, now)
        except ExpiredError as exc:
            expired("--network-config", path, given, exc)
        network_bytes = data
    if (found := paths["--member"]) is not None:
        path, given = found
        label = f"--member {path}"
        data = _read_doc("--member", path, given)
        try:
            member = admission.open_member(data, root, now=now).doc
        except ExpiredError as exc:
            expired("--member", path, given, exc)
            member = docs.open_signed(docs.Member, data, root).doc
        except P2PUpdateError as exc:
            raise UsageError(
                f"{label}: not a member document signed by the operator ({exc.rule}: {exc})"
            ) from None
        if node is not None and member.node != node:
            raise UsageError(f"{label}: names node {member.node}; this node is {node}")
        member_bytes = data
    return Admission(
        network=network,
        network_bytes=network_bytes,
        member=member,
        member_bytes=member_bytes,
        warnings=tuple(warnings),
    )
