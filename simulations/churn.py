"""Churn: when nodes come and go, drawn from measured-shape distributions.

Each node that is not always-on alternates online sessions and offline spells (an
alternating renewal process).  Session lengths default to a Weibull with shape 0.6 and a
median of 2 h (heavy-tailed: many short sessions, a few very long ones; see README for the
measurements).  Offline spells default to a log-normal.  On top of that:

* **Diurnal arrivals.**  Returns from offline are modulated over the day in each node's
  own time zone: the arrival intensity is ``1 + a cos(2 pi (t + tz - peak) / day)``.  The
  offline duration is drawn in *operational* time and mapped to wall time through the
  inverse of the integrated intensity (a time change, solved by Newton's method: the
  integrated intensity is strictly increasing because ``a < 1``).  So the durations keep
  their configured shape and returns bunch up around the local peak hour.
* **Permanent departures** at a constant rate per day: past its departure time a node is
  gone for good (an offline node never returns, an online one leaves).
* **Always-on nodes** (default 20%) never churn; they can still depart for good.

The start is in equilibrium: a churning node is online with probability
``E[session] / (E[session] + E[offline])`` and is part-way through its current spell with
the renewal-theory residual (a length-biased spell, cut at a uniform point), so there is no
start-up transient of everyone booting at t = 0.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from .config import DAY, Dist
from .rng import FloatArray

_LN2: Final = math.log(2.0)


def from_uniform(dist: Dist, u: FloatArray, z: FloatArray | None = None) -> FloatArray:
    """Draws of ``dist`` from uniforms ``u`` (or standard normals ``z`` for log-normal)."""
    if dist.dist == "weibull":
        scale = dist.median / _LN2 ** (1.0 / dist.shape)
        out: FloatArray = scale * (-np.log1p(-u)) ** (1.0 / dist.shape)
        return out
    if dist.dist == "exponential":
        out = (dist.median / _LN2) * -np.log1p(-u)
        return out
    if dist.dist == "lognormal":
        if z is None:
            raise ValueError("log-normal draws need normals")
        out = dist.median * np.exp(dist.sigma * z)
        return out
    return np.full(len(u), dist.median)


def cdf(dist: Dist, x: FloatArray) -> FloatArray:
    """P(X <= x), for the session-length check."""
    x = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    if dist.dist == "weibull":
        scale = dist.median / _LN2 ** (1.0 / dist.shape)
        out: FloatArray = -np.expm1(-((x / scale) ** dist.shape))
        return out
    if dist.dist == "exponential":
        out = -np.expm1(-x * _LN2 / dist.median)
        return out
    if dist.dist == "lognormal":
        with np.errstate(divide="ignore"):
            z = (np.log(x) - math.log(dist.median)) / dist.sigma
        out = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
        return out
    out = (x >= dist.median).astype(np.float64)
    return out


def _erf(x: FloatArray) -> FloatArray:
    """``math.erf`` elementwise (no scipy; the check runs on at most a few thousand bins)."""
    out: FloatArray = np.vectorize(math.erf, otypes=[np.float64])(x)
    return out


def length_biased(dist: Dist, rng: np.random.Generator, n: int) -> FloatArray:
    """Spells as an observer at a random instant finds them (density ``x f(x) / mean``)."""
    if dist.dist == "weibull":
        scale = dist.median / _LN2 ** (1.0 / dist.shape)
        # x f(x) for a Weibull: (x / scale)^k is Gamma(1 + 1/k) distributed.
        g = rng.gamma(1.0 + 1.0 / dist.shape, 1.0, n)
        out: FloatArray = scale * g ** (1.0 / dist.shape)
        return out
    if dist.dist == "exponential":
        out = (dist.median / _LN2) * rng.gamma(2.0, 1.0, n)
        return out
    if dist.dist == "lognormal":
        out = dist.median * np.exp(dist.sigma**2 + dist.sigma * rng.standard_normal(n))
        return out
    return np.full(n, dist.median)


class DiurnalClock:
    """The time change behind diurnal arrivals (module docstring).

    ``wall_end(t, d, tz)``: the wall time at which ``d`` seconds of operational time have
    passed since ``t`` for nodes in zone offset ``tz`` (seconds).
    """

    def __init__(self, amplitude: float, peak_hour: float) -> None:
        self.amplitude = amplitude
        self.phase = peak_hour * 3600.0
        self._k = 2.0 * math.pi / DAY
        self._c = amplitude / self._k

    def integrated(self, t: FloatArray, tz: FloatArray) -> FloatArray:
        out: FloatArray = t + self._c * np.sin(self._k * (t + tz - self.phase))
        return out

    def rate(self, t: FloatArray, tz: FloatArray) -> FloatArray:
        out: FloatArray = 1.0 + self.amplitude * np.cos(self._k * (t + tz - self.phase))
        return out

    def wall_end(self, t: FloatArray, d: FloatArray, tz: FloatArray) -> FloatArray:
        if self.amplitude == 0.0:
            out: FloatArray = t + d
            return out
        target = self.integrated(t, tz) + d
        end = t + d
        shift = tz - self.phase
        for _ in range(30):  # Newton; the rate is >= 1 - a > 0, so it converges fast
            angle = self._k * (end + shift)
            step = (end + self._c * np.sin(angle) - target) / (1.0 + self.amplitude * np.cos(angle))
            end = end - step
            if not bool(np.any(np.abs(step) > 1e-3)):  # a millisecond is plenty
                break
        out = np.maximum(end, t)
        return out


def stationary_online_share(session: Dist, offline: Dist) -> float:
    """Long-run share of time a churning node is online."""
    return session.mean / (session.mean + offline.mean)
