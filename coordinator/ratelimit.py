"""A token bucket: how often one connection may ask for something costly to others.

The ``signal`` relay pushes a node's bytes to another node, so one node could flood
another through the replica; each connection gets a bucket (``Server``: 20 signals a
second, bursts of 40: a WebRTC setup takes two) on the replica's monotonic clock.  Pure:
the time is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Bucket"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Bucket:
    """``rate`` tokens a second up to ``burst``; ``tokens`` held at time ``at``."""

    rate: float
    burst: float
    tokens: float
    at: float

    @classmethod
    def full(cls, *, rate: float, burst: float, now: float) -> Bucket:
        if not (rate > 0 and burst >= 1):
            raise ValueError("a bucket needs rate > 0 and burst >= 1")
        return cls(rate=rate, burst=burst, tokens=burst, at=now)

    def take(self, now: float) -> tuple[bool, Bucket]:
        """Whether one token was there at ``now``, and the bucket after (time that runs
        backwards adds nothing)."""
        tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        at = max(self.at, now)
        if tokens >= 1.0:
            return True, replace(self, tokens=tokens - 1.0, at=at)
        return False, replace(self, tokens=tokens, at=at)
