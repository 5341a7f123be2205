"""A netlab topology: what a TOML file describes, validated before anything is built.

Parsing is separate from building so a bad file is refused whole (a typed error naming the
field) before the first namespace exists: half a lab is worse than none.  Every read is
bounded (file size, number of homes and hosts, name length), because interface names carry
the run prefix and the names given here, and Linux allows 15 characters.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pupdate.errors import UsageFault

MAX_FILE_BYTES = 64 * 1024
MAX_HOMES = 32
MAX_NODES_PER_HOME = 3
MAX_INET_HOSTS = 16
NAT_KINDS = ("cone", "strict")
# Prefix <= 5 and names <= 6 characters: "{prefix}-{kind}-{name}" stays within IFNAMSIZ-1.
PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,4}")
NAME_RE = re.compile(r"[a-z][a-z0-9]{0,5}")
RESERVED = frozenset({"inet"})


class TopologyError(UsageFault):
    """The topology file (or a name or prefix given on the command line) is invalid."""


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can prefix every name netlab makes, else raise."""
    if not PREFIX_RE.fullmatch(prefix):
        raise TopologyError(f"prefix {prefix!r}: 1-5 characters [a-z0-9], starting with a letter")
    return prefix


@dataclass(frozen=True, kw_only=True)
class Shaping:
    """One direction of a home's uplink: a rate cap (tbf), a fixed delay and random loss."""

    rate_kbit: int | None = None
    delay_ms: int = 0
    loss_pct: float = 0.0

    @property
    def active(self) -> bool:
        return self.rate_kbit is not None or self.delay_ms > 0 or self.loss_pct > 0


@dataclass(frozen=True, kw_only=True)
class Home:
    """A home: a NAT router of one kind and a LAN bridge with 1-3 node namespaces."""

    name: str
    nat: str
    nodes: tuple[str, ...]
    uplink: Shaping
    downlink: Shaping


@dataclass(frozen=True, kw_only=True)
class Topology:
    """The whole lab: hosts on the ``inet`` bridge and the homes behind their routers."""

    inet_hosts: tuple[str, ...]
    homes: tuple[Home, ...]

    def home(self, name: str) -> Home:
        for h in self.homes:
            if h.name == name:
                return h
        raise TopologyError(f"no home {name!r} in the topology")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or value in RESERVED:
        raise TopologyError(
            f"{where}: {value!r} is not a name (1-6 characters [a-z0-9], a letter first, "
            "not 'inet')"
        )
    return value


def _keys(table: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise TopologyError(f"{where}: expected a table")
    unknown = set(table) - allowed
    if unknown:
        raise TopologyError(f"{where}: unknown key(s) {sorted(unknown)}")
    return table


def _shaping(table: Any, where: str) -> Shaping:
    if table is None:
        return Shaping()
    t = _keys(table, {"rate_kbit", "delay_ms", "loss_pct"}, where)
    rate = t.get("rate_kbit")
    delay = t.get("delay_ms", 0)
    loss = t.get("loss_pct", 0.0)
    if rate is not None and (not isinstance(rate, int) or not 8 <= rate <= 10_000_000):
        raise TopologyError(f"{where}.rate_kbit: an integer in 8..10000000")
    if not isinstance(delay, int) or not 0 <= delay <= 5000:
        raise TopologyError(f"{where}.delay_ms: an integer in 0..5000")
    if not isinstance(loss, int | float) or not 0 <= loss <= 100:
        raise TopologyError(f"{where}.loss_pct: a number in 0..100")
    return Shaping(rate_kbit=rate, delay_ms=delay, loss_pct=float(loss))


def parse_topology(doc: dict[str, Any]) -> Topology:
    """Validate a parsed TOML document; raise :class:`TopologyError` naming the bad field."""
    doc = _keys(doc, {"inet", "homes"}, "topology")
    inet = _keys(doc.get("inet", {}), {"hosts"}, "inet")
    raw_hosts = inet.get("hosts", [])
    if not isinstance(raw_hosts, list) or len(raw_hosts) > MAX_INET_HOSTS:
        raise TopologyError(f"inet.hosts: a list of at most {MAX_INET_HOSTS} names")
    hosts = tuple(_name(h, "inet.hosts") for h in raw_hosts)
    raw_homes = doc.get("homes", [])
    if not isinstance(raw_homes, list) or not 1 <= len(raw_homes) <= MAX_HOMES:
        raise TopologyError(f"homes: 1..{MAX_HOMES} [[homes]] tables")
    homes = []
    for i, raw in enumerate(raw_homes):
        where = f"homes[{i}]"
        t = _keys(raw, {"name", "nat", "nodes", "uplink", "downlink"}, where)
        name = _name(t.get("name"), f"{where}.name")
        nat = t.get("nat", "strict")
        if nat not in NAT_KINDS:
            raise TopologyError(f"{where}.nat: one of {', '.join(NAT_KINDS)} (got {nat!r})")
        nodes = t.get("nodes")
        if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_NODES_PER_HOME:
            raise TopologyError(f"{where}.nodes: a list of 1..{MAX_NODES_PER_HOME} names")
        homes.append(
            Home(
                name=name,
                nat=nat,
                nodes=tuple(_name(n, f"{where}.nodes") for n in nodes),
                uplink=_shaping(t.get("uplink"), f"{where}.uplink"),
                downlink=_shaping(t.get("downlink"), f"{where}.downlink"),
            )
        )
    every = [*hosts, *(h.name for h in homes), *(n for h in homes for n in h.nodes)]
    dups = sorted({n for n in every if every.count(n) > 1})
    if dups:
        raise TopologyError(f"names must be unique across hosts, homes and nodes: {dups}")
    return Topology(inet_hosts=hosts, homes=tuple(homes))


def load_topology(path: Path) -> Topology:
    """Read and validate a topology file (at most 64 KiB)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise TopologyError(f"cannot read topology {path}: {e.strerror}") from e
    if len(data) > MAX_FILE_BYTES:
        raise TopologyError(f"topology {path} is over {MAX_FILE_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise TopologyError(f"topology {path}: {e}") from e
    return parse_topology(doc)
