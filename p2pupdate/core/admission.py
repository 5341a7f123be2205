"""Admission: which node ids count, and how much one source subnet may weigh (P10).

Node keys cost nothing to make, so a replica that counted every id that can sign a hello
let 64 made-up reporters steer a pool's aggregate, 3 hold every departure slot and 2
pause a rollout.  The root-signed ``network`` document (``documents.NetworkConfig``)
names the rule; this module is its one home, for the replica and the node alike:

* ``admit_hello``: at the hello, is this id let in at all?  ``enrolled``: only with a
  fresh ``member`` document naming it, signed by the operator role.  ``open``: only if
  its id meets the proof of work (``pow_ok``: at least ``pow_bits`` leading zero bits of
  the keyid, as Storj's node identities have a difficulty).
* ``has_standing``: is an admitted id *counted* (version counts, the aggregate's
  reporters, the breaker)?  Enrolled: while its member document is fresh.  Open: once
  its session history with the replica spans ``standing_s`` (last seen at least that
  long after first seen), and while it was seen within ``STANDING_RECENT``.  Why session history and not
  "heartbeats relayed by several distinct peers": a Sybil relays its own heartbeats
  from its other ids for free, while session history costs wall time per id, and ids
  are capped per subnet at registration.
* ``subnet_of`` and ``under_cap``: every per-source cap counts by the /24 (IPv4) or
  /48 (IPv6) of the address the replica saw, never an address a node claims.
* ``registration_refused``: a node id the replica does not know yet is let in only
  while its subnet holds fewer than ``subnet_nodes`` ids seen within
  ``REGISTRATION_WINDOW``; a known id always gets back in.
* ``pick_reporters``: whose estimates enter a pool's median: counted nodes only, at most
  ``subnet_reporters`` per subnet, the longest-standing first.
* ``make_pow_key``: how a node makes its key at first start (the seeds are an
  argument: the shell draws them from ``os.urandom``).

Pure: time, addresses and randomness are arguments.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from . import crypto
from .documents import MAX_POW_BITS, Member, NetworkConfig, Root, Signed, check_fresh, open_signed
from .errors import P2PUpdateError, WrongNetworkError

__all__ = [
    "DEFAULT_CAPS",
    "FORGET_UNCOUNTED",
    "NETWORK_FILE",
    "REGISTRATION_WINDOW",
    "STANDING_RECENT",
    "Admitted",
    "Refused",
    "Reporter",
    "Standing",
    "admit_hello",
    "default_config",
    "forgettable",
    "has_standing",
    "leading_zero_bits",
    "make_pow_key",
    "open_member",
    "open_network",
    "pick_reporters",
    "pow_ok",
    "registration_refused",
    "subnet_of",
    "under_cap",
]

#: The network document's file name, in the network directory and beside a node's state.
NETWORK_FILE: Final = "network.msgpack"
#: A node's member document (``enrolled`` networks), in its state directory.
MEMBER_FILE: Final = "member.msgpack"

#: Per-subnet caps when the network document does not say (and for ``init``'s defaults).
#: A /24 of a residential ISP holds many homes, so the registration cap is generous; the
#: caps on what moves decisions are small: a median over a pool needs only a few
#: reporters per subnet, and one subnet never holds more than a few slots or counts
#: more than ``breaker_min_failures`` (2) failures of one artifact.
DEFAULT_CAPS: Final = {
    "subnet_nodes": 256,
    "subnet_reporters": 4,
    "subnet_leases": 4,
    "subnet_failures": 2,
}


def default_config(network: str, *, issued: int = 0) -> NetworkConfig:
    """What a replica applies when its network directory has no ``network`` document
    (a network made before admission existed): ``open`` without proof of work or a
    standing time -- every id counts at once, as before -- but the subnet caps hold."""
    return NetworkConfig(
        version=1,
        issued=issued,
        expires=2**40,
        network=network,
        admission="open",
        pow_bits=0,
        standing_s=0,
        **DEFAULT_CAPS,
    )


# -- the hello -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Admitted:
    """An id let in; ``member_expires`` is its member document's expiry (None: open)."""

    member_expires: int | None = None
    pool: str | None = None


@dataclass(frozen=True, slots=True)
class Standing:
    """What a replica's counts need of one node: whether it is counted (``has_standing``)
    and the subnet it was seen from (``subnet_of`` its session's address; None: unknown)."""

    counted: bool
    subnet: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Refused:
    """A hello turned away: ``reason`` is the error code the node sees (``admission/...``)."""

    reason: str
    detail: str


def leading_zero_bits(node: str) -> int:
    """Leading zero bits of a hex keyid (0..256)."""
    value = int(node, 16)
    return len(node) * 4 - value.bit_length()


def pow_ok(node: str, bits: int) -> bool:
    return leading_zero_bits(node) >= bits


def open_network(data: bytes, root: Root) -> Signed[NetworkConfig]:
    """A network document verified (root role threshold) and of ``root``'s network; raises
    the core's typed errors (``WireError``, ``VerificationError``, ``WrongNetworkError``).
    Freshness is the caller's: a replica refuses to start on an expired one, a node warns."""
    signed = open_signed(NetworkConfig, data, root)
    if signed.doc.network != root.network:
        raise WrongNetworkError(
            f"the network document is for network {signed.doc.network!r}, the root's is "
            f"{root.network!r}"
        )
    return signed


def open_member(data: bytes, root: Root, *, now: int) -> Signed[Member]:
    """A member document verified (operator role threshold) and fresh; raises the core's
    typed errors (``WireError``, ``VerificationError``, ``ExpiredError``)."""
    signed = open_signed(Member, data, root)
    check_fresh(signed.doc, now)
    return signed


def admit_hello(
    config: NetworkConfig, *, node: str, member: bytes | None, root: Root, now: int
) -> Admitted | Refused:
    """Whether ``node`` (its hello verified) may hold a session at all, and on what terms."""
    if config.admission == "enrolled":
        if member is None:
            return Refused(
                reason="admission/not-enrolled",
                detail="this network admits enrolled nodes only: the hello carries no "
                "member document (ask the operator for one: p2pupdate-coordinator member)",
            )
        try:
            doc = open_member(member, root, now=now).doc
        except P2PUpdateError as exc:
            return Refused(reason="admission/bad-member", detail=f"member document: {exc}")
        if doc.node != node:
            return Refused(
                reason="admission/bad-member",
                detail=f"the member document names node {doc.node[:16]}..., not this one",
            )
        return Admitted(member_expires=doc.expires, pool=doc.pool or "default")
    if not pow_ok(node, config.pow_bits):
        return Refused(
            reason="admission/proof-of-work",
            detail=f"this network needs node ids with {config.pow_bits} leading zero bits; "
            f"this one has {leading_zero_bits(node)} (a node makes such a key at first "
            "start when it knows the network document)",
        )
    return Admitted()


#: An ``open`` node counts only while it was seen within this long: standing is kept by
#: coming back, not earned once and held by an id nobody runs.
STANDING_RECENT: Final = 2 * 86400


def has_standing(
    config: NetworkConfig,
    *,
    first_seen: float,
    last_seen: float,
    member_expires: int | None,
    now: float,
) -> bool:
    """Whether an admitted node is counted now (module docstring).

    ``enrolled``: while its member document is fresh.  ``open``: once its session
    history spans ``standing_s`` -- it was last seen at least that long after it was
    first seen (a session held that long, or a return that much later) -- and only while
    it was seen within ``STANDING_RECENT``.  One hello and waiting earns nothing: each
    made-up id must come back, at least ``standing_s`` later and then every
    ``STANDING_RECENT``, through the per-subnet registration cap."""
    if config.admission == "enrolled":
        return member_expires is not None and now <= member_expires
    return last_seen - first_seen >= config.standing_s and now - last_seen <= STANDING_RECENT


# -- subnets -------------------------------------------------------------------------------


def subnet_of(host: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) of a literal address, as text; None for anything else.
    An IPv4-mapped IPv6 address counts as its IPv4 address."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def host_of(peer: str) -> str:
    """The host of ``HOST:PORT`` as a replica sees a peer (IPv6 unbracketed or bracketed)."""
    return peer.rpartition(":")[0].strip("[]") if ":" in peer else peer


def under_cap(subnets: Iterable[str | None], subnet: str | None, cap: int) -> bool:
    """Whether one more from ``subnet`` stays within ``cap``, given the subnets of those
    already counted.  An unknown subnet (no literal address) counts as one subnet."""
    return sum(1 for s in subnets if s == subnet) < cap


# -- registrations and reporters, per subnet ----------------------------------------------------

#: A registered id weighs on its subnet's ``subnet_nodes`` cap while it was seen (a hello or
#: a report) within this window.  A day: a home machine is on at least once a day or comes
#: back as a known id (never refused), while a stranger who wants another ``subnet_nodes``
#: ids from one /24 must wait a day for the first ones to age out -- and each new id then
#: still waits ``standing_s`` before it counts anywhere.
REGISTRATION_WINDOW: Final = 86400
#: An id that never earned standing and has not been seen for this long is forgotten (its
#: registry row deleted): what an open network keeps of made-up ids is bounded by the
#: subnet cap times this over the window (256 x 7 rows per /24), not by time.  A real
#: node that comes back later starts its standing over.
FORGET_UNCOUNTED: Final = 7 * 86400


def forgettable(
    config: NetworkConfig, *, first_seen: float, member_expires: int | None, seen: float, now: float
) -> bool:
    """Whether a registered id may be forgotten now (``FORGET_UNCOUNTED``): not counted,
    and not seen for that long.  A counted node is never forgotten by this rule."""
    if has_standing(
        config, first_seen=first_seen, last_seen=seen, member_expires=member_expires, now=now
    ):
        return False
    return now - seen > FORGET_UNCOUNTED


def registration_refused(
    config: NetworkConfig, *, subnet: str | None, recent: int
) -> Refused | None:
    """Whether a node id the replica does not know yet is turned away at its hello.

    ``recent``: how many ids of ``subnet`` are registered and were seen within
    ``REGISTRATION_WINDOW``, plus those holding an admitted session not registered yet
    (why: a burst of hellos of new ids would all pass before the first of them reports)."""
    if recent < config.subnet_nodes:
        return None
    return Refused(
        reason="admission/subnet-full",
        detail=f"{config.subnet_nodes} node ids of subnet {subnet or '(unknown)'} were seen "
        f"here within {REGISTRATION_WINDOW // 3600} h: no new ids from it until some age out "
        "(ids seen before always get back in)",
    )


class Reporter(NamedTuple):
    """A counted node with a fresh estimate of its pool, as ``pick_reporters`` needs it
    (a tuple, not a frozen dataclass: a replica makes one per reporter per aggregate)."""

    node: str
    subnet: str | None
    first_seen: float


def pick_reporters(reporters: Iterable[Reporter], cap: int) -> list[str]:
    """The reporters whose estimates enter a pool's median: at most ``cap`` per subnet (an
    unknown subnet counts as one subnet), the longest-standing of each first (earliest
    ``first_seen``, then node id, so the choice is deterministic); in that order.

    Why the longest-standing: standing costs wall time and nothing else, so new ids --
    however many a stranger makes in a subnet -- never displace the ones that were there
    before them; a stranger's ids of one subnet weigh at most ``cap`` estimates, and a
    median over many subnets is not moved by a few."""
    by_subnet: dict[str | None, list[Reporter]] = {}
    for r in reporters:
        by_subnet.setdefault(r.subnet, []).append(r)
    chosen: list[Reporter] = []
    for group in by_subnet.values():  # sorted only where the cap bites: most subnets fit
        chosen.extend(sorted(group, key=_standing_order)[:cap] if len(group) > cap else group)
    return [r.node for r in sorted(chosen, key=_standing_order)]


def _standing_order(r: Reporter) -> tuple[float, str]:
    return r.first_seen, r.node


# -- the node's side: a key that meets the difficulty ------------------------------------------


def make_pow_key(
    bits: int, seeds: Callable[[], bytes], *, max_tries: int | None = None
) -> tuple[crypto.SigningKey, int]:
    """A signing key whose id has at least ``bits`` leading zero bits, and the number of
    keys tried.  ``seeds`` gives 32 random bytes per try.  Expected tries: 2^bits.
    Raises ``ValueError`` past ``max_tries`` (tests) or for bits over ``MAX_POW_BITS``."""
    if not 0 <= bits <= MAX_POW_BITS:
        raise ValueError(f"proof of work: bits must be in [0, {MAX_POW_BITS}]")
    tries = 0
    while True:
        tries += 1
        key = crypto.SigningKey.from_seed(seeds())
        if pow_ok(key.keyid, bits):
            return key, tries
        if max_tries is not None and tries >= max_tries:
            raise ValueError(f"proof of work: no key with {bits} bits in {tries} tries")
