"""Which transport a dial uses, and what a link's path is called: one home for both rules.

README "Gossip and links".  The shell carries a ``Dial`` out by trying the transports
``link_plan`` lists, in order, until one gives a link proving ``contact.node``:

* ``rtc`` first (a WebRTC data channel: ICE with host candidates on a LAN, STUN's
  server-reflexive ones across NATs, TURN as the fallback) when this node runs rtc, the
  contact is not a loopback address (aioice never offers 127.0.0.1, so two ends on one
  machine have no candidate pair), a signaling path to the peer exists (a connected
  coordinator replica, or a linked peer that relays), and the peer did not leave this
  node's last offer unanswered (a node with rtc off, or of a version without it, never
  answers; trying again at every dial would cost a signaling timeout each time);
* ``tcp`` to the contact's address after it (the only transport for a loopback contact,
  and what links a LAN or a reachable host when rtc cannot).

``rtc_enabled`` is the rule behind ``--rtc auto``: rtc runs when a gossip address (the
listen or the advertised host) is not a loopback one.

A link's *path* (``PATH_KINDS``): ``tcp``, or the kind of the ICE candidate pair an rtc
link selected (``host`` / ``srflx`` / ``prflx`` / ``relay``; ``unknown`` when aiortc did not
say).  ``relay`` goes through a TURN server: it works behind any NAT, and it is a cost.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from .values import Contact

#: Transports a dial may try, in the order ``link_plan`` prefers them.
TRANSPORTS: Final = ("rtc", "tcp")
#: What a link runs over: tcp, or an rtc link's selected candidate pair kind.
PATH_KINDS: Final = ("tcp", "host", "srflx", "prflx", "relay", "unknown")
#: ``--rtc`` values.
RTC_MODES: Final = ("auto", "on", "off")


def is_loopback(host: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ``::1``.  A name other than
    ``localhost`` is not known to be loopback (it may resolve anywhere)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def rtc_enabled(mode: str, hosts: Iterable[str | None]) -> bool:
    """Whether a node with ``--rtc mode`` and these gossip hosts (listen, advertise; None
    for one not given) runs rtc: ``on``/``off`` say so; ``auto`` when any given host is
    not loopback (a wildcard listen address counts: the node is reachable beyond itself)."""
    if mode not in RTC_MODES:
        raise ValueError(f"rtc mode must be one of {', '.join(RTC_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    return any(h is not None and not is_loopback(h) for h in hosts)


def link_plan(
    contact: Contact, *, rtc: bool, signaling: bool, unanswered: bool = False
) -> tuple[str, ...]:
    """The transports to try for ``contact``, in order (see the module docstring).

    ``rtc``: this node runs rtc.  ``signaling``: an offer can reach the peer (a connected
    replica, or a linked peer other than the contact).  ``unanswered``: the peer left a
    recent offer of ours unanswered."""
    if rtc and signaling and not unanswered and not is_loopback(contact.host):
        return ("rtc", "tcp")
    return ("tcp",)
