"""The one place a shell reads a clock.

The sans-IO core takes time as arguments; the shells (daemon, links, coordinator client,
coordinator service) get a :class:`Clock` from the top of the process and read time only
through it.  Two readings, never mixed:

* ``monotonic()``: seconds on trio's clock (``trio.current_time()``).  Timers, deadlines,
  ``trio.sleep_until`` and the updater's ``now`` all use it, so a test that runs the shell on
  ``trio.testing.MockClock`` moves every timer at once.
* ``wall()``: unix seconds.  Document expiry, token ``issued``/``expires``, records written
  for people.  A shell never subtracts a wall reading from a monotonic one.

:data:`SYSTEM` is the production clock.  :func:`following_trio` gives a wall clock that
moves with trio's clock (virtual time under ``MockClock``), for shell tests that must pass
expiry checks while time jumps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

__all__ = ["SYSTEM", "Clock", "following_trio"]


@dataclass(frozen=True, slots=True)
class Clock:
    """A wall clock and a monotonic clock, injected into a shell from the top."""

    #: Unix seconds (float).
    wall: Callable[[], float]
    #: Seconds on trio's clock; only meaningful inside ``trio.run``.
    monotonic: Callable[[], float]

    def utc_now(self) -> int:
        """Whole unix seconds, as the core's ``utc_now`` arguments take them."""
        return int(self.wall())


#: The real clock: ``time.time()`` for the wall, trio's clock for timers.
SYSTEM = Clock(wall=time.time, monotonic=trio.current_time)


def following_trio(epoch: float = 1_800_000_000.0) -> Clock:
    """A clock whose wall reading is ``epoch + trio.current_time()``.

    Under ``MockClock`` both readings advance together in virtual time, so documents that
    expire, tokens with a TTL and timers agree with each other in a test that never sleeps.
    """
    return Clock(wall=lambda: epoch + trio.current_time(), monotonic=trio.current_time)
