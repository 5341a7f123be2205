"""Links between homes: a NAT class per node, and which pairs connect direct or relayed.

A node's link kinds in the real daemon are host / srflx / prflx / relay
(``p2pupdate/net/rtc.py``); the netlab homes (``tests/netlab``) sit behind ``cone``
(endpoint-independent mapping) or ``strict`` (address+port-dependent: symmetric-like) NATs.
The model has three classes:

* ``open``: a public or mapped address (host candidate, UPnP / PCP): direct with anyone;
* ``cone``: behind an endpoint-independent NAT: its srflx candidate works for a hole punch;
* ``strict``: behind an address+port-dependent (symmetric-like) NAT.

The pair rule (``pair_direct_probability``): a pair with an ``open`` end connects direct; a
pair of two ``strict`` homes relays (TURN), as in netlab; every other pair (cone-cone,
cone-strict) tries a hole punch that succeeds with probability ``punch_success``.

**Calibration.**  Trautwein, Ihle, Schubotz and Gipp, "Challenging Tribal Knowledge --
Large Scale Measurement Campaign on Decentralized NAT Traversal" (arXiv:2510.27500, 2025):
libp2p's DCUtR in the IPFS network, 4.4 M traversal attempts from 85,000+ networks in 167
countries; **70% +- 7.1%** of hole punches succeed (TCP and QUIC alike; 97.6% of the
successes on the first attempt).  A DCUtR attempt is made between two peers that are not
publicly reachable, so the measured 70% is the direct share of *NAT-ed pairs* (no ``open``
end), strict-strict pairs included.  ``punch_success`` defaults to the value that makes the
default mix reproduce that figure: ``(1 - s'^2) * p = 0.70`` with ``s' = strict / (cone +
strict)`` (``calibrated_punch_success``).  The class shares themselves (15% open, 70% cone,
15% strict) are assumptions for a fleet of home machines: the campaign does not break its
attempts down by NAT type.  With them 78.3% of all pairs connect direct and 21.7% relay.

**Per node, no per-pair state.**  A node's class is a counter-based draw (``rng``) of its
index; a node holds ``degree`` links in the swarm (as ``simulations.swarm.fleet_run``), each
to a partner whose class and punch outcome are counter-based draws of (node, link index).
So a node's relayed share of links is a pure function of the seed and the node, computed
when needed, in O(nodes x degree) time and no memory kept between calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from .rng import COMPONENTS, FloatArray, IntArray, counter_uniform

OPEN: Final = 0
CONE: Final = 1
STRICT: Final = 2
CLASSES: Final = ("open", "cone", "strict")

#: The campaign's figure: share of hole punches (DCUtR, NAT-ed pairs) that succeed.
CITED_DIRECT_SHARE: Final = 0.70
#: Its +- (the spread over the campaign's networks and weeks).
CITED_DIRECT_SPREAD: Final = 0.071
#: Default shares of open / cone / strict homes (assumptions; module docstring).
DEFAULT_MIX: Final = (0.15, 0.70, 0.15)
#: Links a node holds in the swarm (``simulations.swarm.fleet_run``'s default degree).
DEFAULT_DEGREE: Final = 6

#: The streams of this module: keyed like ``rng.Streams`` children, past its components
#: (``SeedSequence(seed).spawn`` numbers its children 0, 1, ...; these take 100 + i, so a
#: component appended to ``rng.COMPONENTS`` can never collide with them).
_STREAM_BASE: Final = 100
_STREAMS: Final = ("nat-class", "link-partner", "link-punch")
assert len(COMPONENTS) < _STREAM_BASE


def calibrated_punch_success(
    mix: tuple[float, float, float] = DEFAULT_MIX, target: float = CITED_DIRECT_SHARE
) -> float:
    """The punch success that makes NAT-ed pairs of ``mix`` connect direct ``target`` of
    the time (``(1 - s'^2) * p = target``), capped at 1."""
    _, cone, strict = mix
    natted = cone + strict
    if natted <= 0.0:
        return 1.0
    s = strict / natted
    punchable = 1.0 - s * s
    return 1.0 if punchable <= 0.0 else min(1.0, target / punchable)


#: ``calibrated_punch_success(DEFAULT_MIX)``: 0.7225 (to 4 places).
DEFAULT_PUNCH_SUCCESS: Final = calibrated_punch_success()


def pair_direct_probability(a: IntArray, b: IntArray, punch_success: float) -> FloatArray:
    """The probability that a pair of classes ``a`` and ``b`` connects direct: 1 with an
    open end, 0 for strict-strict (TURN), ``punch_success`` otherwise."""
    a = np.asarray(a)
    b = np.asarray(b)
    out = np.full(np.broadcast(a, b).shape, punch_success, dtype=np.float64)
    out[(a == STRICT) & (b == STRICT)] = 0.0
    out[(a == OPEN) | (b == OPEN)] = 1.0
    return out


@dataclass(frozen=True, kw_only=True)
class LinkMix:
    """The fleet's NAT mix and pair rule (``[links]``)."""

    open: float = DEFAULT_MIX[0]
    cone: float = DEFAULT_MIX[1]
    strict: float = DEFAULT_MIX[2]
    punch_success: float = DEFAULT_PUNCH_SUCCESS
    degree: int = DEFAULT_DEGREE
    #: A relayed link's throughput as a share of a direct one's (TURN at the peers' rates: 1).
    relay_rate: float = 1.0

    @property
    def shares(self) -> FloatArray:
        return np.array([self.open, self.cone, self.strict], dtype=np.float64)

    def class_direct_share(self) -> FloatArray:
        """Per class: the expected share of its links that are direct (partners drawn
        from the mix)."""
        k = np.arange(3)
        p = pair_direct_probability(k[:, None], k[None, :], self.punch_success)
        out: FloatArray = p @ self.shares
        return out

    def direct_share(self) -> float:
        """Expected share of all pairs (links) that connect direct."""
        return float(self.shares @ self.class_direct_share())

    def relayed_share(self) -> float:
        """Expected share of peer bytes that go through a relay (every link carries the
        same bytes on average: a swarm spreads its requests over its links)."""
        return 1.0 - self.direct_share()

    def natted_direct_share(self) -> float:
        """The direct share of pairs with no open end: what the campaign measured."""
        natted = self.cone + self.strict
        if natted <= 0.0:
            return 1.0
        s = self.strict / natted
        return (1.0 - s * s) * self.punch_success


class Links:
    """Counter-based draws of the mix for one run (module docstring)."""

    def __init__(self, mix: LinkMix, seed: int) -> None:
        self.mix = mix
        self._keys = {
            name: np.uint64(
                np.random.SeedSequence(int(seed), spawn_key=(_STREAM_BASE + i,)).generate_state(
                    1, dtype=np.uint64
                )[0]
            )
            for i, name in enumerate(_STREAMS)
        }
        self._cum = np.cumsum(mix.shares / mix.shares.sum())

    def _classes(self, u: FloatArray) -> IntArray:
        out: IntArray = np.minimum(np.searchsorted(self._cum, u, side="right"), 2).astype(np.int64)
        return out

    def nat_class(self, nodes: IntArray) -> IntArray:
        """Each node's class (``OPEN`` / ``CONE`` / ``STRICT``)."""
        return self._classes(counter_uniform(self._keys["nat-class"], nodes, 0))

    def relayed_fraction(self, nodes: IntArray) -> FloatArray:
        """Share of each node's ``degree`` swarm links that relay (0 with degree 0)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        d = self.mix.degree
        if d == 0 or len(nodes) == 0:
            return np.zeros(len(nodes), dtype=np.float64)
        mine = self.nat_class(nodes)
        relayed = np.zeros(len(nodes), dtype=np.float64)
        for j in range(d):
            other = self._classes(counter_uniform(self._keys["link-partner"], nodes, j))
            p = pair_direct_probability(mine, other, self.mix.punch_success)
            relayed += counter_uniform(self._keys["link-punch"], nodes, j) >= p
        out: FloatArray = relayed / d
        return out
