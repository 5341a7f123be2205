"""The daemon's options, in one table shared by ``python -m p2pupdate.daemon`` and
``p2pupdate node`` (which forwards the ones the user gave to every daemon it starts).

The launcher is the installed code and the daemon is whatever slot runs, so the launcher
forwards only options that were given explicitly: a daemon of another version then applies
its own defaults to the rest.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..cli.common import int_range
from ..core.timing import UpdaterConfig

WORKLOADS: Final = ("kv", "none")
#: The updater's timings' one home; options that set one of them default to its value.
UPDATER_DEFAULTS: Final = UpdaterConfig()

_SECONDS = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?$")
_SECOND_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


def seconds(text: str) -> float:
    """'0.5', '2s', '250ms', '15m', '1h' -> seconds (> 0, finite, at most a week)."""
    m = _SECONDS.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 0.5, 2s, 250ms, 15m")
    value = float(m.group(1)) * _SECOND_UNITS[m.group(2)]
    if not 0.0 < value <= 7 * 86400.0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most a week")
    return value


_count = int_range(1, 1000)
_port = int_range(0, 65535, "a port number")


def _capacity(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def _pool(text: str) -> str:
    if not 1 <= len(text) <= 64 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r}: a pool name is 1-64 printable characters")
    return text


def _stub(text: str) -> str:
    parts = text.split(":")
    try:
        ok = (
            len(parts) == 3 and float(parts[0]) >= 0 and float(parts[1]) >= 0 and int(parts[2]) >= 0
        )
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} is not CAPACITY:LOAD:SERVING (numbers >= 0)")
    return text


def _hostport(text: str) -> str:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text.strip()


def _host(text: str) -> str:
    if not 1 <= len(text) <= 64 or not text.isprintable() or " " in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    return text


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
    _Opt(flag="--host", kind=str, default="127.0.0.1", metavar="ADDR", help="work listen address"),
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
        flag="--coordinator",
        kind=str,
        default=None,
        metavar="URL",
        repeat=True,
        help="a coordinator replica, http://HOST:PORT (repeat for each replica); needs "
        "--trust-root: documents, departure tokens and reports go through the replicas",
    ),
    _Opt(
        flag="--pool",
        kind=_pool,
        default="default",
        metavar="NAME",
        help='the pool this node serves in; capacity is weighed per pool (default "default")',
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
        kind=_hostport,
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
        kind=_hostport,
        default=None,
        metavar="HOST:PORT",
        repeat=True,
        help="a gossip peer to bootstrap from (repeat for several); implies gossip "
        "(listening on 127.0.0.1:0 unless --gossip-listen says otherwise)",
    ),
    _Opt(
        flag="--zeroconf",
        kind=_host,
        default=None,
        metavar="ADDR",
        repeat=True,
        help="find gossip peers on the LAN by zeroconf (_p2pupdate._udp.local.) on the "
        "interface with this address (repeat for several; needs gossip and a specific "
        "--gossip-listen or --gossip-advertise address)",
    ),
    _Opt(
        flag="--gossip-round",
        kind=seconds,
        default=1.0,
        metavar="DUR",
        help="time between gossip rounds (default 1s)",
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
        flag="--report-interval",
        kind=seconds,
        default=30.0,
        metavar="DUR",
        help="time between status reports to the coordinator (default 30s)",
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
    coordinator: tuple[str, ...] = ()
    pool: str = "default"
    aggregate_stub: str | None = None
    gossip_listen: str | None = None
    gossip_advertise: str | None = None
    peer: tuple[str, ...] = ()
    zeroconf: tuple[str, ...] = ()
    gossip_round: float = 1.0
    gossip_notice_spread: float = UPDATER_DEFAULTS.notice_spread
    report_interval: float = 30.0
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


def add_daemon_arguments(parser: argparse.ArgumentParser, *, for_launcher: bool) -> None:
    """Add every daemon option.  For the launcher, defaults are None (= not forwarded)."""
    group = parser.add_argument_group(
        "daemon options"
        + (" (forwarded to the daemon in the running slot)" if for_launcher else "")
    )
    for o in OPTIONS:
        default = None if for_launcher else o.default
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
