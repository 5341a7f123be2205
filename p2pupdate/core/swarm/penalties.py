"""What misbehaviour in the swarm costs a peer: the one home of its points.

The rule names follow ``core.gossip.reputation`` where the offence is the same (malformed,
oversize, unknown, unsolicited, flood); the swarm adds its own.  A proven bad chunk (its
bytes fail the release's hash and only that peer sent them, or its block differs from the
verified chunk) costs ``ban_score`` at once: one is proof.  A wrong-length block is an
answer no honest peer gives.  A ``missing`` reject for a chunk the peer advertised is a
false claim.  A missed deadline can happen to an honest peer on a bad link, so it costs
little; ``SwarmConfig.max_misses`` in a row drops the peer anyway.

``Scores`` keeps the points (decaying with ``score_half_life``) and says what a new total
earns: nothing, a drop (``drop_score``) or a ban (``ban_score``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from ..errors import OversizeError, P2PUpdateError
from .config import SwarmConfig

BAN: Final = float("inf")  # stands for "config.ban_score": proof, whatever the score was

PENALTIES: Final[Mapping[str, float]] = {
    "bad_chunk": BAN,
    "wrong_length": 50.0,
    "oversize": 50.0,
    "malformed": 50.0,
    "false_claim": 25.0,
    "unknown": 20.0,
    "unsolicited": 10.0,
    "flood": 10.0,
    "missed_deadline": 5.0,
}


def rule_for(exc: P2PUpdateError) -> str:
    """The rule a message that failed to decode earns its sender."""
    if isinstance(exc, OversizeError):
        return "oversize"
    if exc.rule == "unknown-message":
        return "unknown"
    return "malformed"


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    """What a charge came to: the points, the new score, and ``drop``/``ban`` if earned."""

    points: float
    score: float
    drop: bool
    ban: bool


class Scores:
    """One node's swarm scores of its peers."""

    def __init__(self, config: SwarmConfig) -> None:
        self._config = config
        self._scores: dict[str, tuple[float, float]] = {}

    def score(self, peer: str, now: float) -> float:
        got = self._scores.get(peer)
        return 0.0 if got is None else self._decayed(got, now)

    def charge(self, peer: str, rule: str, now: float) -> Verdict:
        cfg = self._config
        points = PENALTIES[rule]
        if points == BAN:
            points = cfg.ban_score
        value = self.score(peer, now) + points
        self._scores[peer] = (value, now)
        return Verdict(
            points=points,
            score=value,
            drop=value >= cfg.drop_score,
            ban=value >= cfg.ban_score,
        )

    def _decayed(self, got: tuple[float, float], now: float) -> float:
        value, at = got
        dt = max(0.0, now - at)
        return value * math.exp(-math.log(2.0) * dt / self._config.score_half_life)
