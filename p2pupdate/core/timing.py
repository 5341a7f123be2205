"""The updater's timings and the rules that turn them into waits: one home for both.

``UpdaterConfig`` holds every timing of the update state machine; the functions below are
the only place a wait is computed from it.  ``core.updater.Updater`` calls them with one
uniform draw at a time; ``simulations/model.py`` calls them with numpy arrays of draws for
thousands of nodes at once.  So the functions are plain arithmetic that works on a float
and on an array alike, and take the uniform draw ``u`` in ``[0, 1)`` as an argument: the
core draws nothing itself and imports no numpy (README "Architecture").  Where a rule needs
``min`` / ``max`` the caller passes the function that fits its numbers (``min`` / ``max``
for floats, the default; ``numpy.minimum`` / ``numpy.maximum`` for arrays).

Every uniform is ``low + (high - low) * u``, exactly the arithmetic of
``random.Random.uniform(low, high)``: an updater given ``rng.random()`` draws the same
numbers, bit for bit, as one that called ``rng.uniform``.

The rules (README "Node life cycle"):

* ``check_interval``: the jittered time between checks, ``interval * U[1 - j, 1 + j]``.
* ``first_check``: the first check after start, ``U[0, interval]``, so a fleet that boots
  together (a power cut) does not check in lockstep.
* ``refusal_wait``: ``retry_after`` (one check interval when the refusal gave none), never
  below ``min_retry``, stretched by up to ``retry_jitter`` and never shortened: the
  coordinator said "not before".
* ``capped_exponential``: ``min(cap, base * 2**n)`` with the exponent bounded, so no
  overflow however large ``n`` grows.  The one home of every exponential backoff in the
  project: the updater's ``backoff`` below, the daemon's gossip seek interval, the
  launcher's restart delay after a crash, the work client's retry of a failed node.  A
  counter of failures has no upper bound (a fleet of three never fills a gossip view of
  six, and keeps counting), and ``2.0 ** 1024`` raises ``OverflowError``.
* ``backoff``: after the n-th consecutive coordinator error, "equal jitter": uniform in
  ``[d/2, d]`` with ``d = capped_exponential(backoff_base, backoff_cap, n - 1)``.
* ``drain_budget``: the drain gets ``min(drain_timeout, lease_ttl - swap_margin)``; a budget
  of zero or less means the lease is too short to swap inside.
* ``notice_delay``: a learned allowlist starts a check within ``U[0, notice_spread]``.
* ``wake_delay``: a refusal whose cause changed (a newer scope or allowlist, a nudge, the
  replica's word that a slot freed) ends its wait within ``U[0, wake_spread]``, instead of
  sleeping out a ``retry_after`` that no longer says anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar, overload

__all__ = [
    "UpdaterConfig",
    "backoff",
    "capped_exponential",
    "check_interval",
    "drain_budget",
    "first_check",
    "notice_delay",
    "refusal_wait",
    "wake_delay",
]

#: Numbers the rules work on elementwise: a float, or (in the simulations) a numpy array.
X = TypeVar("X")

#: ``base * 2.0 ** 64`` is far past every cap a caller has (each cap here is under ``2**10``
#: times its base): the exponent stops there, so no overflow.
MAX_BACKOFF_EXPONENT: Final = 64


@dataclass(frozen=True, kw_only=True, slots=True)
class UpdaterConfig:
    """Timings, in seconds.  Defaults are for a real fleet; tests shrink them to seconds."""

    #: Mean time between checks, and the relative jitter around it (1 h +-20%).
    check_interval: float = 3600.0
    check_jitter: float = 0.2
    #: A refusal's ``retry_after`` is stretched by up to this fraction, never shortened.
    retry_jitter: float = 0.2
    #: Floor for a refusal's wait (a ``retry_after`` of 0 must not become a busy loop).
    min_retry: float = 1.0
    #: Exponential backoff on coordinator errors: 5 s, 10 s, ... up to 15 min (equal jitter).
    backoff_base: float = 5.0
    backoff_cap: float = 900.0
    #: Longest drain; also bounded by the lease minus ``swap_margin``.
    drain_timeout: float = 120.0
    #: How long after the drain deadline the shell may still report ``Drained``.
    drain_grace: float = 5.0
    #: Lease time kept for staging the slot, restarting and probation.
    swap_margin: float = 60.0
    #: The new version must be confirmed within this long or it is rolled back.
    probation_timeout: float = 180.0
    #: Tries for a rejoined / failure report before giving up (heartbeats still tell).
    report_attempts: int = 6
    #: A newer allowlist learned by gossip starts a check within this long (uniform), so a
    #: fleet that learns it in the same second does not check in the same second.
    notice_spread: float = 60.0
    #: A refusal whose cause changed asks again within this long (uniform): short, since
    #: what held the node is gone, but spread, so the nodes it held do not ask in one instant.
    wake_spread: float = 1.0

    def __post_init__(self) -> None:
        positive = {
            "check_interval": self.check_interval,
            "min_retry": self.min_retry,
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
            "drain_timeout": self.drain_timeout,
            "probation_timeout": self.probation_timeout,
        }
        for name, value in positive.items():
            if not value > 0.0 or value == float("inf"):
                raise ValueError(f"UpdaterConfig.{name} must be a positive finite number")
        for name, value in {
            "drain_grace": self.drain_grace,
            "swap_margin": self.swap_margin,
            "notice_spread": self.notice_spread,
            "wake_spread": self.wake_spread,
        }.items():
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"UpdaterConfig.{name} must be >= 0 and finite")
        for name, value in {
            "check_jitter": self.check_jitter,
            "retry_jitter": self.retry_jitter,
        }.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"UpdaterConfig.{name} must be in [0, 1)")
        if self.backoff_cap < self.backoff_base:
            raise ValueError("UpdaterConfig.backoff_cap must be >= backoff_base")
        if self.report_attempts < 1:
            raise ValueError("UpdaterConfig.report_attempts must be >= 1")


def _uniform(low: Any, high: Any, u: Any) -> Any:
    """``random.Random.uniform``'s arithmetic, for a given draw ``u`` in ``[0, 1)``."""
    return low + (high - low) * u


@overload
def check_interval(config: UpdaterConfig, u: float) -> float: ...
@overload
def check_interval(config: UpdaterConfig, u: X) -> X: ...
def check_interval(config: UpdaterConfig, u: Any) -> Any:
    """Time to the next check: ``check_interval * U[1 - check_jitter, 1 + check_jitter]``."""
    j = config.check_jitter
    return config.check_interval * _uniform(1.0 - j, 1.0 + j, u)


@overload
def first_check(config: UpdaterConfig, u: float) -> float: ...
@overload
def first_check(config: UpdaterConfig, u: X) -> X: ...
def first_check(config: UpdaterConfig, u: Any) -> Any:
    """Time from start to the first check: ``U[0, check_interval]``."""
    return _uniform(0.0, config.check_interval, u)


@overload
def notice_delay(config: UpdaterConfig, u: float) -> float: ...
@overload
def notice_delay(config: UpdaterConfig, u: X) -> X: ...
def notice_delay(config: UpdaterConfig, u: Any) -> Any:
    """Time from a learned allowlist to the check it brings forward: ``U[0, notice_spread]``."""
    return _uniform(0.0, config.notice_spread, u)


@overload
def wake_delay(config: UpdaterConfig, u: float) -> float: ...
@overload
def wake_delay(config: UpdaterConfig, u: X) -> X: ...
def wake_delay(config: UpdaterConfig, u: Any) -> Any:
    """Time from a refusal's cause changing to the check that asks again: ``U[0, wake_spread]``."""
    return _uniform(0.0, config.wake_spread, u)


@overload
def refusal_wait(
    config: UpdaterConfig,
    retry_after: float | None,
    u: float,
    *,
    maximum: Callable[[float, float], float] = ...,
) -> float: ...
@overload
def refusal_wait(
    config: UpdaterConfig, retry_after: X | None, u: X, *, maximum: Callable[[X, float], X]
) -> X: ...
def refusal_wait(
    config: UpdaterConfig,
    retry_after: Any,
    u: Any,
    *,
    maximum: Callable[[Any, float], Any] = max,
) -> Any:
    """Time a refused node waits before it checks again.

    ``retry_after`` is the coordinator's, or ``None`` when the refusal gave none: then one
    check interval.  Never below ``min_retry`` (a ``retry_after`` of 0 must not become a busy
    loop), then stretched by ``U[1, 1 + retry_jitter]``: longer, never shorter.
    """
    wait = maximum(config.check_interval if retry_after is None else retry_after, config.min_retry)
    return _uniform(wait, wait * (1.0 + config.retry_jitter), u)


@overload
def backoff(
    config: UpdaterConfig,
    attempts: int,
    u: float,
    *,
    minimum: Callable[[float, float], float] = ...,
) -> float: ...
@overload
def backoff(
    config: UpdaterConfig, attempts: Any, u: X, *, minimum: Callable[[Any, Any], X]
) -> X: ...
def backoff(
    config: UpdaterConfig, attempts: Any, u: Any, *, minimum: Callable[[Any, Any], Any] = min
) -> Any:
    """Time to wait after the ``attempts``-th consecutive coordinator error (``>= 1``).

    Equal jitter: uniform in ``[d/2, d]``, ``d = min(backoff_cap, backoff_base *
    2**(attempts-1))``.  Half fixed, half random: never the near-zero retries full jitter can
    draw, and a crowd that failed together spreads out.
    """
    ceiling = capped_exponential(
        config.backoff_base, config.backoff_cap, attempts - 1, minimum=minimum
    )
    return _uniform(ceiling / 2.0, ceiling, u)


@overload
def capped_exponential(
    base: float,
    cap: float,
    n: int,
    *,
    minimum: Callable[[float, float], float] = ...,
) -> float: ...
@overload
def capped_exponential(
    base: float, cap: float, n: Any, *, minimum: Callable[[Any, Any], X]
) -> X: ...
def capped_exponential(
    base: float, cap: float, n: Any, *, minimum: Callable[[Any, Any], Any] = min
) -> Any:
    """``min(cap, base * 2**n)`` for ``n >= 0`` failures in a row, whatever ``n`` is.

    The exponent stops at ``MAX_BACKOFF_EXPONENT``: past it every caller is at its cap
    anyway, and ``2.0 ** n`` for ``n >= 1024`` would raise ``OverflowError`` (a node that
    crashed on that took a good build's probation down with it).  For ``base, cap >= 0``
    the result is finite, in ``[0, cap]`` and never decreases as ``n`` grows.
    """
    exponent = minimum(n, MAX_BACKOFF_EXPONENT)
    return minimum(cap, base * 2.0**exponent)


@overload
def drain_budget(
    config: UpdaterConfig, lease_ttl: float, *, minimum: Callable[[float, float], float] = ...
) -> float: ...
@overload
def drain_budget(config: UpdaterConfig, lease_ttl: X, *, minimum: Callable[[float, X], X]) -> X: ...
def drain_budget(
    config: UpdaterConfig, lease_ttl: Any, *, minimum: Callable[[Any, Any], Any] = min
) -> Any:
    """How long a granted node may drain: ``min(drain_timeout, lease_ttl - swap_margin)``.

    ``lease_ttl`` is the time left on the lease (``inf`` for a policy without leases).  The
    rest of the lease is kept for staging the slot, restarting and probation; a budget of
    zero or less means the lease is too short to leave on.
    """
    return minimum(config.drain_timeout, lease_ttl - config.swap_margin)
