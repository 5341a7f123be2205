"""Reputation: what misbehaviour costs a peer, and how many identities one host may hold.

Defence (README "Gossip and links").  Forged, replayed, oversize, malformed, unknown and
unsolicited messages are dropped and cost the sender points (``PENALTIES``); a score that
reaches ``disconnect_score`` closes the link, ``ban_score`` also bans the node id for
``ban_seconds``.  Scores decay with a half-life of ``score_half_life``.  Honest peers never
trip these: every node verifies before it forwards, never sends the same rumor or heartbeat
twice to a peer, and only answers what it was asked.

Sybil caps.  Node keys cost nothing to make, so identities are also capped per source host
(``Contact.host``, or a link's observed address): at most ``max_links_per_host`` links,
``max_active_per_host`` active-view entries and ``max_passive_per_host`` passive-view
entries.  One machine with a thousand keys cannot fill a view, while a few nodes behind one
home router still fit.  Membership asks ``*_allowed`` before it links or adds a contact.

``Reputation`` keeps the scores and bans; it only judges.  Acting on a verdict (dropping the
contact, closing the link) is membership's, which the front asks to do.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from ..errors import (
    EquivocationError,
    ExpiredError,
    OversizeError,
    P2PUpdateError,
    RollbackError,
    VerificationError,
    WireError,
)
from .config import GossipConfig
from .context import Out
from .events import Penalised

#: Points a sender loses per offense (``disconnect_score`` / ``ban_score`` act on the sum).
#: A forged signature is proof of malice (every node verifies before it forwards): one ban.
#: "replayed" is the same message twice from one peer, which an honest peer never sends.
#: "stale" (a lower seq or version than known) and "expired" can happen to an honest
#: forwarder in a race, so they cost little; only a stream of them adds up.
PENALTIES: Final[Mapping[str, float]] = {
    "forged": 100.0,
    "oversize": 50.0,
    "malformed": 50.0,
    "unknown": 20.0,
    "replayed": 10.0,
    "unsolicited": 10.0,
    "flood": 10.0,
    "expired": 2.0,
    "stale": 1.0,
}


class Penalty(Exception):
    """Raised inside a message handler: drop the message, charge the sender ``rule``.

    Control flow inside the core only: the front catches it around every handler, so it
    never reaches the shell (it is not one of the shell's fault classes on purpose).
    """

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


def rule_for(exc: P2PUpdateError) -> str:
    """Map a typed parse/verify error to the penalty rule it earns the sender."""
    if isinstance(exc, OversizeError):
        return "oversize"
    if exc.rule in ("unknown-message", "unknown-document"):
        return "unknown"
    if isinstance(exc, WireError):
        return "malformed"
    if isinstance(exc, RollbackError | EquivocationError):
        return "stale"
    if isinstance(exc, ExpiredError):
        return "expired"
    if isinstance(exc, VerificationError):
        return "forged"
    return "malformed"


# -- Sybil caps ---------------------------------------------------------------------------


def from_host(hosts: Iterable[str | None], host: str) -> int:
    """How many of ``hosts`` (one per identity already holding a slot) are ``host``."""
    return sum(1 for h in hosts if h == host)


def link_allowed(same_host: int, config: GossipConfig) -> bool:
    """One more link from a host that already has ``same_host`` linked identities?"""
    return same_host < config.max_links_per_host


def active_allowed(same_host: int, config: GossipConfig) -> bool:
    """One more active neighbour from a host that already has ``same_host`` of them?"""
    return same_host < config.max_active_per_host


def passive_allowed(same_host: int, config: GossipConfig) -> bool:
    """One more passive contact from a host that already has ``same_host`` of them?"""
    return same_host < config.max_passive_per_host


# -- scores and bans ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Sanction:
    """A score crossed a line: close the link (``reason``), and refuse the node id until
    ``ban_until`` (monotonic seconds) when set."""

    reason: str
    ban_until: float | None = None


@dataclass(kw_only=True, slots=True)
class _Score:
    value: float
    at: float


class Reputation:
    """One node's scores of its peers and the bans they earned."""

    def __init__(self, config: GossipConfig) -> None:
        self._config = config
        self._scores: dict[str, _Score] = {}
        self._banned: dict[str, float] = {}

    def score(self, peer: str, now: float) -> float:
        s = self._scores.get(peer)
        return 0.0 if s is None else self._decayed(s, now)

    def is_banned(self, peer: str, now: float) -> bool:
        until = self._banned.get(peer)
        return until is not None and now < until

    def penalise(self, peer: str, rule: str, detail: str, now: float, out: Out) -> Sanction | None:
        """Charge ``peer`` for ``rule`` (reported as ``Penalised``); the sanction its new
        score earns, if any, for membership to carry out."""
        points = PENALTIES[rule]
        s = self._scores.get(peer)
        value = (0.0 if s is None else self._decayed(s, now)) + points
        self._scores[peer] = _Score(value=value, at=now)
        out.append(Penalised(peer=peer, rule=rule, points=points, score=value, detail=detail))
        cfg = self._config
        if value >= cfg.ban_score:
            until = now + cfg.ban_seconds
            self._banned[peer] = until
            return Sanction(reason=f"banned: {rule}", ban_until=until)
        if value >= cfg.disconnect_score:
            return Sanction(reason=f"misbehaving: {rule}")
        return None

    def ban(self, peer: str, until: float) -> None:
        """Refuse ``peer`` until ``until`` (a ban proven elsewhere: the chunk swarm's)."""
        self._banned[peer] = max(until, self._banned.get(peer, until))

    def expire_bans(self, now: float) -> None:
        if self._banned:
            for peer in [p for p, until in self._banned.items() if now >= until]:
                del self._banned[peer]

    def _decayed(self, s: _Score, now: float) -> float:
        dt = max(0.0, now - s.at)
        return s.value * math.exp(-math.log(2.0) * dt / self._config.score_half_life)
