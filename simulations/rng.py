"""Random numbers for the simulations: one ``SeedSequence`` stream per component.

Comparing rollout policies is only fair if every policy meets the *same* fleet: the same
sessions, the same offline spells, the same slow drains, the same nodes hit by a bad build
(common random numbers).  A single generator cannot give that, because the policies make
different numbers of draws (a refused node draws a retry jitter, a granted one does not),
so every draw after the first difference would shift.  Two things keep the streams apart:

* **One stream per component** (``COMPONENTS``), each spawned from the run's
  ``numpy.random.SeedSequence``: churn draws never share a stream with schedule jitter or
  swap timings, so a policy that changes one cannot move the others.
* **Counter-based draws within a stream.**  The k-th draw of node ``i`` from stream ``s`` is
  a pure function ``u(key_s, i, k)`` (a SplitMix64-style mix of the three), not "the next
  number".  So node 7's third session is the same whatever order the engine visits nodes
  in, whichever policy runs, and whether the numpy tick engine or the heapq event engine
  asks for it: both engines and all policies see bit-identical churn.

The initial state (classes, pools, capacities, time zones, where each node is in its
on/off cycle) is drawn once, in node order, from the ``init`` component's
``numpy.random.Generator``; both engines build it with the same function.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: The components, each with its own stream.  Append only: reordering changes every key.
COMPONENTS: Final = (
    "init",  # initial state (a Generator: classes, pools, capacity, zones, cycle phase)
    "session",  # online session lengths
    "offline",  # offline durations
    "departure",  # permanent departure times
    "jitter",  # the updater's jittered check interval and retry stretch
    "prefetch",  # artifact download time before asking
    "drain",  # drain duration of each departure
    "restart",  # staging + restart duration
    "health",  # time to pass the health check on probation
    "failure",  # whether a bad build fails probation on this node
    "coordinator",  # whether an ask gets no usable answer (a coordinator error)
)

_MASK: Final = (1 << 64) - 1
_GOLDEN: Final = np.uint64(0x9E3779B97F4A7C15)
_COUNTER: Final = np.uint64(0xD1B54A32D192ED03)
_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)
_TO_UNIT: Final = 2.0**-53


def _mix(x: NDArray[np.uint64]) -> None:
    """SplitMix64's finaliser, in place (uint64 arithmetic wraps, as it should)."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)


class Streams:
    """The run's streams: ``key(name)`` for counter draws, ``generator("init")``."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        children = np.random.SeedSequence(self.seed).spawn(len(COMPONENTS))
        self._children = dict(zip(COMPONENTS, children, strict=True))
        self._keys = {
            name: np.uint64(child.generate_state(1, dtype=np.uint64)[0])
            for name, child in self._children.items()
        }

    def key(self, name: str) -> np.uint64:
        return self._keys[name]

    def generator(self, name: str) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(self._children[name]))

    def uniform(self, name: str, node: IntArray, counter: IntArray | int) -> FloatArray:
        """``u(stream, node, counter)`` in [0, 1), elementwise; see the module docstring."""
        return counter_uniform(self._keys[name], node, counter)

    def normal(self, name: str, node: IntArray, counter: IntArray | int) -> FloatArray:
        """Standard normal variates (Box-Muller over draws ``2k`` and ``2k + 1``)."""
        k = np.asarray(counter, dtype=np.int64) * 2
        u1 = counter_uniform(self._keys[name], node, k)
        u2 = counter_uniform(self._keys[name], node, k + 1)
        radius: FloatArray = np.sqrt(-2.0 * np.log1p(-u1))
        return radius * np.cos(2.0 * np.pi * u2)


def counter_uniform(key: np.uint64, node: IntArray, counter: IntArray | int) -> FloatArray:
    """Uniform [0, 1) from (key, node, counter): two SplitMix64 rounds, 53 bits kept."""
    x = np.asarray(node, dtype=np.int64).astype(np.uint64) * _GOLDEN
    x += key
    _mix(x)
    x += np.asarray(counter, dtype=np.int64).astype(np.uint64) * _COUNTER
    _mix(x)
    return (x >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def counter_uniform_scalar(key: int, node: int, counter: int) -> float:
    """The same number as ``counter_uniform`` for one (node, counter), in plain Python."""

    def mix(x: int) -> int:
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & _MASK
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & _MASK
        return x ^ (x >> 31)

    x = (node * 0x9E3779B97F4A7C15 + key) & _MASK
    x = mix(x)
    x = (x + counter * 0xD1B54A32D192ED03) & _MASK
    x = mix(x)
    return (x >> 11) * _TO_UNIT
