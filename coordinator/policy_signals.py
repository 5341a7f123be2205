"""Whose signals count, and what holding a slot unused costs.  Pure and deterministic.

Node keys cost nothing to make (README "Abuse limits"), so a report or a claim is worth
only what ties it to something this replica did or saw itself:

* ``failure_counts``: a ``failed`` report feeds the circuit breaker only from a node this
  replica granted a lease for that artifact, naming that lease's nonce.  Anyone else's
  report (no lease, another artifact, a made-up nonce) is counted as ignored, nothing more.
* ``failure_ignored``: and only from a node that is counted (``admission``: enrolled, or
  with standing), and at most ``subnet_failures`` nodes of one source subnet per artifact:
  a subnet's ids, however many, weigh as much as ``subnet_failures`` nodes.  So do the
  nodes that moved, against which the breaker's share is taken (``weighed``): else a
  fleet in one /24 (a LAN) of more than 40 nodes, whose share threshold is above the 2
  failures its subnet may count, could never pause a broken rollout; and a stranger's
  ids could not raise the threshold by moving.
* ``subnet_lease_wait``: gate 3 grants a lease only while the asking node's subnet holds
  fewer than ``subnet_leases`` of this replica's live leases (all pools): 3 made-up ids of
  one subnet held all 3 departure slots of a pool; now they hold at most that cap and the
  other subnets' nodes get the rest.  The refusal is ``SUBNET_LEASES`` with the time until
  the subnet's first lease ends (at most a cap: leases usually end sooner, on ``rejoined``).
* ``after_lapse`` / ``cooling``: a lease that lapses without ``rejoined``, ``failed`` or
  ``return`` puts its node on a cooldown of ``cooldown_base`` seconds, doubling with each
  lapse in a row up to ``cooldown_cap``; a node that lapsed none for ``cooldown_forget``
  starts over.  An ask in the cooldown is refused by gate 3 (``LEASE_LAPSED``) with the
  time left as ``retry_after``.  Asking and vanishing held a slot for a whole lease TTL
  every TTL; now it holds one for a TTL and then for ever shorter shares of the time.
* ``introduced_addrs``: the gossip addresses an introduction carries are the host the
  replica saw the node's session come from, paired with the ports the node claims (at
  most ``max_ports``), and a claimed address only inside the observed host's subnet: a
  stranger can point others only at its own subnet, never at a host elsewhere.

* ``reconnect_nudge``: a node whose session opens (its first status report of the
  session) is pushed the nudge the replica holds when that nudge is for the build the
  scope in force puts out, has not expired, and the node is in that scope and does not
  run the build yet.  A node that was offline when the operator nudged otherwise finds
  the build on its first check, uniform over the check interval after boot, and with
  sessions of a median 2 h many leave again before it (simulations/README.md: the time to
  95% of the nodes seen, 85 h -> 74 h at 100k nodes, at no cost to the floor: gate 3
  refuses the herd a power cut brings back anyway).

Time is an argument (the replica's monotonic clock; the nudge's, the wall's in seconds).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from p2pupdate.core import gates
from p2pupdate.core.admission import Standing, default_config, subnet_of, under_cap
from p2pupdate.core.documents import SKEW, NetworkConfig, Nudge, Scope

#: Gate 3's reason for an ask inside a lapse cooldown.
LEASE_LAPSED: Final = "lease-lapsed"
#: Gate 3's reason for an ask whose subnet holds its cap of this replica's live leases.
SUBNET_LEASES: Final = "subnet-leases"
#: Why a ``failed`` report was not counted (``failure_ignored``).
NO_LEASE: Final = "no-lease"
NO_STANDING: Final = "no-standing"
SUBNET_FAILURES: Final = "subnet-failures"
#: The caps where no network document is given (``admission.DEFAULT_CAPS``).
DEFAULT_NETWORK: Final[NetworkConfig] = default_config("default")


@dataclass(frozen=True, kw_only=True)
class SignalsConfig:
    """The knobs of these rules (defaults: seconds of the replica's monotonic clock)."""

    #: The cooldown after a node's first lapsed lease; it doubles with each lapse in a row.
    cooldown_base: float = 60.0
    cooldown_cap: float = 3600.0
    #: A node whose last lapse is this long past starts again from ``cooldown_base``.
    cooldown_forget: float = 86400.0
    #: Ports of one node an introduction names (each paired with the observed host).
    max_ports: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.cooldown_base <= self.cooldown_cap < float("inf"):
            raise ValueError("signals: need 0 < cooldown_base <= cooldown_cap (finite)")
        if not self.cooldown_cap <= self.cooldown_forget < float("inf"):
            raise ValueError("signals: need cooldown_cap <= cooldown_forget (finite)")
        if self.max_ports < 1:
            raise ValueError("signals: max_ports must be >= 1")


def failure_counts(*, granted: Collection[bytes], nonce: bytes) -> bool:
    """Whether a ``failed`` report naming ``nonce`` counts for the breaker: ``granted``
    holds the nonces of the leases this replica granted that node for that artifact."""
    return bool(nonce) and nonce in granted


def failure_ignored(
    *,
    granted: Collection[bytes],
    nonce: bytes,
    standing: Standing,
    counted: Iterable[str | None],
    cap: int,
) -> str | None:
    """Why a ``failed`` report does not count for the breaker (None: it counts).

    ``granted``/``nonce``: as ``failure_counts`` (``NO_LEASE``); ``standing``: the
    reporter's (``NO_STANDING`` unless counted); ``counted``: the subnets of the *other*
    nodes whose failures of this artifact are counted already (``SUBNET_FAILURES`` when
    the reporter's subnet has ``cap`` of them; an unknown subnet counts as one subnet).
    """
    if not failure_counts(granted=granted, nonce=nonce):
        return NO_LEASE
    if not standing.counted:
        return NO_STANDING
    if not under_cap(counted, standing.subnet, cap):
        return SUBNET_FAILURES
    return None


def weighed(subnets: Iterable[str | None], cap: int) -> int:
    """How many nodes the breaker weighs, given each one's subnet: each subnet (an
    unknown one counts as one) at most ``cap``."""
    per: dict[str | None, int] = {}
    for s in subnets:
        per[s] = per.get(s, 0) + 1
    return sum(min(cap, n) for n in per.values())


def subnet_lease_wait(
    held: Iterable[tuple[str | None, float]],
    subnet: str | None,
    *,
    cap: int,
    now: float,
    max_wait: float,
) -> float | None:
    """Whether one more lease for a node of ``subnet`` stays within ``cap`` (None), else
    the ``retry_after`` to answer: seconds until the first of the subnet's leases lapses,
    within ``[1, max_wait]`` (leases usually end sooner, on the node's ``rejoined``).

    ``held``: ``(subnet, expires)`` of this replica's live leases of *other* nodes
    (``expires`` on the clock of ``now``); an unknown subnet (None) counts as one subnet.
    """
    leases = list(held)
    if under_cap((s for s, _ in leases), subnet, cap):
        return None
    first = min((expires for s, expires in leases if s == subnet), default=now + max_wait)
    return min(max_wait, max(1.0, first - now))


@dataclass(frozen=True, kw_only=True)
class Cooldown:
    """A node's record of lapsed leases: how many in a row, the last, the wait's end."""

    lapses: int
    last: float
    until: float


def after_lapse(prev: Cooldown | None, now: float, config: SignalsConfig) -> Cooldown:
    """The record after one more of the node's leases lapsed at ``now``."""
    fresh = prev is None or now - prev.last > config.cooldown_forget
    lapses = 1 if fresh or prev is None else prev.lapses + 1
    wait = min(config.cooldown_cap, config.cooldown_base * 2.0 ** min(lapses - 1, 60))
    return Cooldown(lapses=lapses, last=now, until=now + wait)


def cooling(record: Cooldown | None, now: float) -> float | None:
    """Seconds the node must still wait before it may ask (None: it may ask now)."""
    if record is None or now >= record.until:
        return None
    return record.until - now


def forgotten(record: Cooldown, now: float, config: SignalsConfig) -> bool:
    """Whether the record no longer matters (its next lapse would start over)."""
    return now - record.last > config.cooldown_forget


def introduced_addrs(
    claimed: Sequence[str], observed: str, config: SignalsConfig
) -> tuple[str, ...]:
    """The link addresses to introduce a node by, from the ``tcp:HOST:PORT`` addresses it
    claims: for each claimed port (at most ``max_ports``), ``tcp:OBSERVED_HOST:PORT``, then
    the claimed address itself only if its host is in the observed host's subnet (the
    same /24 for IPv4, /48 for IPv6: the unit a source is counted by), never a host
    elsewhere.  A node listening on another address of its own subnet than it connects
    from (several loopback or LAN addresses) stays reachable; a stranger can point others
    only at its own subnet, where the nodes' per-address dial limits bound what it gets.

    ``observed`` is ``HOST:PORT`` of its session as the replica saw it (an IPv6 host
    unbracketed, as ``getpeername`` gives it); without one, nothing is introduced.  A
    node keeps one contact per node id, the last it reads, so the claimed address of the
    subnet (where the node says it listens) comes after the observed one.
    """
    host = observed.rpartition(":")[0].strip("[]")
    seen = subnet_of(host)
    if seen is None:
        return ()
    out: list[str] = []
    ports: list[int] = []
    for addr in claimed:
        if not addr.startswith("tcp:"):
            continue
        claimed_host, _, port_text = addr[4:].rpartition(":")
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            continue
        port = int(port_text)
        if port not in ports:
            if len(ports) >= config.max_ports:
                continue
            ports.append(port)
        for h in (host, claimed_host.strip("[]")):
            if h != host and subnet_of(h) != seen:
                continue
            intro = f"tcp:[{h}]:{port}" if ":" in h else f"tcp:{h}:{port}"
            if intro not in out:
                out.append(intro)
    return tuple(out)


def reconnect_nudge(
    *, nudge: Nudge | None, scope: Scope | None, node: str, running: str, now: int
) -> bool:
    """Whether to push the ``nudge`` held to ``node``, whose session just opened and which
    reports that it runs ``running`` (module docstring): the nudge names the artifact of
    the ``scope`` in force, has not expired (within ``SKEW``), the node does not run that
    artifact, and gate 2 (``gates.in_scope``) lets the node move to it now."""
    if nudge is None or scope is None:
        return False
    if nudge.artifact != scope.artifact or now > nudge.expires + SKEW:
        return False
    if running == scope.artifact:
        return False
    return gates.in_scope(node, scope.artifact, scope=scope, now=now).ok
