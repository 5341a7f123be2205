"""Every exponential backoff in the project, over any number of failures in a row.

``p2pupdate.core.timing.capped_exponential`` is the one home of the doubling; each site
below calls it.  For counts up to ``10**9`` (far past ``2.0 ** 1024``, where the old
inline ``2.0 ** n`` raised ``OverflowError``) every delay is finite, within ``[0, cap]`` and
never shrinks as the count grows; below the overflow it is the old formula, exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from p2pupdate.core import timing
from p2pupdate.daemon import gossip
from p2pupdate.launcher.supervisor import LauncherConfig
from p2pupdate.net import replica_link
from p2pupdate.work.client import ClientConfig

COUNTS = st.integers(min_value=0, max_value=10**9)
BASES = st.floats(min_value=1e-3, max_value=1e6)
#: A cap as a multiple of its base (every cap in the project is within 2**10 of its base).
RATIOS = st.floats(min_value=1.0, max_value=2.0**40)
UNIFORM = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def _bounded_and_monotone(delay: Callable[[int], float], cap: float, n1: int, n2: int) -> None:
    low, high = sorted((n1, n2))
    d_low, d_high = delay(low), delay(high)
    for d in (d_low, d_high):
        assert math.isfinite(d)
        assert 0.0 <= d <= cap
    assert d_low <= d_high
    assert delay(10**9) == cap


@given(base=BASES, ratio=RATIOS, n1=COUNTS, n2=COUNTS)
def test_capped_exponential(base: float, ratio: float, n1: int, n2: int) -> None:
    cap = base * ratio
    _bounded_and_monotone(lambda n: timing.capped_exponential(base, cap, n), cap, n1, n2)
    small = min(n1, 60)
    assert timing.capped_exponential(base, cap, small) == min(cap, base * 2.0**small)


@given(base=st.floats(0.0, 1e6), cap=st.floats(0.0, 1e9), n=COUNTS)
def test_capped_exponential_any_base_and_cap(base: float, cap: float, n: int) -> None:
    d = timing.capped_exponential(base, cap, n)
    assert math.isfinite(d) and 0.0 <= d <= cap


@given(base=BASES, ratio=st.floats(1.0, 2.0**20), u=UNIFORM, n1=COUNTS, n2=COUNTS)
def test_updater_backoff(base: float, ratio: float, u: float, n1: int, n2: int) -> None:
    config = timing.UpdaterConfig(backoff_base=base, backoff_cap=base * ratio)
    # attempts counts from 1; equal jitter keeps every wait in [ceiling / 2, ceiling]
    low, high = sorted((n1 + 1, n2 + 1))
    w_low, w_high = timing.backoff(config, low, u), timing.backoff(config, high, u)
    for w in (w_low, w_high):
        assert math.isfinite(w) and 0.0 <= w <= config.backoff_cap
    assert w_low <= w_high
    assert timing.backoff(config, 10**9, 0.0) == config.backoff_cap / 2.0


@given(n1=COUNTS, n2=COUNTS)
def test_gossip_seek_interval(n1: int, n2: int) -> None:
    def seek(n: int) -> float:
        return gossip.seek_interval(short=True, fruitless=n)

    _bounded_and_monotone(seek, gossip.SEEK_FULL, n1, n2)
    assert gossip.seek_interval(short=False, fruitless=n1) == gossip.SEEK_FULL
    small = min(n1, 60)
    assert seek(small) == min(gossip.SEEK_FULL, gossip.SEEK_SHORT * 2.0**small)


@given(base=BASES, ratio=st.floats(1.0, 2.0**20), n1=COUNTS, n2=COUNTS)
def test_launcher_restart_delay(base: float, ratio: float, n1: int, n2: int) -> None:
    config = LauncherConfig(state_dir=Path("unused"), backoff_base=base, backoff_cap=base * ratio)
    _bounded_and_monotone(lambda n: config.restart_delay(n + 1), config.backoff_cap, n1, n2)
    crashes = min(n1, 60) + 1
    old = min(config.backoff_cap, config.backoff_base * 2 ** (crashes - 1))
    assert config.restart_delay(crashes) == old


@given(base=BASES, ratio=st.floats(1.0, 2.0**20), n1=COUNTS, n2=COUNTS)
def test_work_client_retry_delay(base: float, ratio: float, n1: int, n2: int) -> None:
    config = ClientConfig(backoff_initial=base, backoff_max=base * ratio)
    _bounded_and_monotone(lambda n: config.retry_delay(n + 1), config.backoff_max, n1, n2)
    failures = min(n1, 30) + 1
    old = min(config.backoff_max, config.backoff_initial * 2 ** min(failures - 1, 30))
    assert config.retry_delay(failures) == old


@given(n1=COUNTS, n2=COUNTS)
def test_replica_link_reconnect_delay(n1: int, n2: int) -> None:
    _bounded_and_monotone(replica_link.reconnect_delay, replica_link.RECONNECT_CAP, n1, n2)


def test_defaults_unchanged() -> None:
    """The fleet's default schedules, second by second, as before the move."""
    seek = [gossip.seek_interval(short=True, fruitless=n) for n in range(7)]
    assert seek == [3.0, 6.0, 12.0, 24.0, 48.0, 60.0, 60.0]
    restart = [LauncherConfig(state_dir=Path("x")).restart_delay(n) for n in range(1, 9)]
    assert restart == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    retry = [ClientConfig().retry_delay(n) for n in range(1, 7)]
    assert retry == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    reconnect = [replica_link.reconnect_delay(n) for n in range(8)]
    assert reconnect == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
