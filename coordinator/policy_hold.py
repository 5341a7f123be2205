"""The lease hold a replica measured: how long its recent leases were held.

Pure, like ``coordinator.policy`` (no IO, no clock, no randomness): the durations are
arguments and every method returns a new value.

``policy_queue.queued_retry`` makes a node at place ``p`` behind ``k`` blocking leases wait
``p x hold / k`` (within ``[base_retry, queue_retry_max]``): the ``k`` slots serve the
nodes ahead in about that long, if one node holds a slot for ``hold``.
``PolicyConfig.queue_hold`` (90 s) is a guess of that hold; a fleet of fast swaps (the
demos: leases held 5-10 s) would make nodes wait ``p x 90 / k`` where a slot frees every
few seconds.  So the replica measures it: each lease that ends by a report (rejoined,
returned, failed) adds its duration, grant to end on the replica's monotonic clock, to
``Holds`` (the last ``HOLD_SAMPLES``), and the wait uses ``hold_in_force``:

* fewer than ``HOLD_MIN_SAMPLES`` ended: ``config.queue_hold`` (the prior);
* else ``min(config.queue_hold, max(config.min_retry, median))``.

Why the minimum of the two and not the median alone: ``queue_hold`` is the operator's
ceiling.  A hold measured shorter makes the nodes behind the leases ask sooner (a fleet
of fast swaps is not made to wait for a guessed 90 s); one measured longer would make
them wait longer than the prior, and the measurement only sees the leases that ended by
a report (a lease that lapsed unreported is not a sample), so it would lengthen waits on
evidence it partly lacks.  Erring short costs asks (bounded by ``base_retry`` between
two asks of one node), erring long costs time to update; a fleet of slow swaps sets a
larger ``serve --queue-hold``.  The median, not the mean: one stuck lease held for its
whole TTL does not move it.  The floor ``min_retry``: no node asks more often than that
anyway, and it keeps the hold positive, a valid ``PolicyConfig.queue_hold``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from .policy import PolicyConfig

__all__ = ["HOLD_MIN_SAMPLES", "HOLD_SAMPLES", "Holds", "hold_in_force", "median"]

#: The lease ends ``Holds`` keeps (the most recent).
HOLD_SAMPLES: Final = 64
#: The lease ends needed before the measured hold replaces ``queue_hold``.
HOLD_MIN_SAMPLES: Final = 8


def median(values: Iterable[float]) -> float:
    """The median (the mean of the two middle values of an even count); order-free."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median of no values")
    mid = n // 2
    if n % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2.0


@dataclass(frozen=True)
class Holds:
    """The durations (seconds) of the last ``HOLD_SAMPLES`` leases that ended by a report,
    oldest first."""

    recent: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.recent) > HOLD_SAMPLES:
            raise ValueError(f"holds: more than {HOLD_SAMPLES} samples")
        for s in self.recent:
            if not 0.0 <= s < math.inf:
                raise ValueError("holds: a hold must be finite and >= 0")

    def add(self, *seconds: float) -> Holds:
        """With ``seconds`` (in the order they ended); the oldest past ``HOLD_SAMPLES``
        go.  A duration that is negative, infinite or NaN raises ``ValueError`` (the
        caller's clock is wrong) and nothing changes."""
        for s in seconds:
            if not 0.0 <= s < math.inf:
                raise ValueError("holds: a hold must be finite and >= 0")
        kept = (*self.recent, *(float(s) for s in seconds))[-HOLD_SAMPLES:]
        return Holds(kept)

    def measured(self) -> float | None:
        """The median hold, or None while fewer than ``HOLD_MIN_SAMPLES`` ended."""
        if len(self.recent) < HOLD_MIN_SAMPLES:
            return None
        return median(self.recent)


def hold_in_force(holds: Holds, config: PolicyConfig) -> float:
    """The hold ``queued_retry`` computes with (module docstring): ``config.queue_hold``
    until ``HOLD_MIN_SAMPLES`` leases ended, then ``min(queue_hold, max(min_retry,
    median))``."""
    measured = holds.measured()
    if measured is None:
        return config.queue_hold
    return min(config.queue_hold, max(config.min_retry, measured))
