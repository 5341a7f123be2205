"""The swarm bench's figures, from what the nodes and the origin counted (pure: no I/O).

One home for the fields both columns print, so ours and libtorrent's are computed alike:
``t_min_s`` is the issue's bound ``max(F/u_s, F/d_min, N*F/(u_s + sum u_i))`` from the rates
set, and ``upload_cap_respected`` says whether any node's payload upload, over any window of
at least ``CAP_WINDOW_S`` (10 s) between two of its own counter readings, went over its cap (with
``CAP_SLACK`` for the readings' timing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

CAP_WINDOW_S = 10.0
CAP_SLACK = 1.05
#: The width of one step of ``upload_timeline`` (seconds from ``t0``).
TIMELINE_STEP_S = 5.0


@dataclass(frozen=True, kw_only=True)
class Run:
    """What one run of the job measured."""

    nodes: int
    artifact_bytes: int
    origin_bytes: int
    t0: float  # wall clock: the release published
    completed_at: Mapping[str, float | None]  # node -> wall clock it held the verified artifact
    samples: Mapping[str, Sequence[tuple[float, int]]]  # node -> (wall clock, bytes_up)


def t_min(n: int, size: int, origin_up: float, peer_up: float, peer_down: float) -> float:
    """The lower bound on the time to give ``n`` nodes ``size`` bytes from one origin."""
    return max(size / origin_up, size / peer_down, n * size / (origin_up + n * peer_up))


def peak_upload(samples: Sequence[tuple[float, int]], window: float = CAP_WINDOW_S) -> float:
    """The highest upload rate (bytes/s) over any window of at least ``window`` seconds."""
    pts = sorted(samples)
    peak = 0.0
    j = 0
    for i, (t, b) in enumerate(pts):
        j = max(j, i + 1)
        while j < len(pts) and pts[j][0] - t < window:
            j += 1
        if j >= len(pts):
            break
        dt = pts[j][0] - t
        peak = max(peak, (pts[j][1] - b) / dt)
    return peak


def _bytes_at(samples: Sequence[tuple[float, int]], t: float) -> float:
    """A node's upload counter at ``t``, read off its samples by linear interpolation (0
    before the first, the last after it)."""
    pts = sorted(samples)
    if not pts or t <= pts[0][0]:
        return 0.0 if not pts or t < pts[0][0] else float(pts[0][1])
    for (t1, b1), (t2, b2) in pairwise(pts):
        if t <= t2:
            return b1 + (b2 - b1) * (t - t1) / (t2 - t1) if t2 > t1 else float(b2)
    return float(pts[-1][1])


def upload_timeline(run: Run, peer_up: float, end: float,
                    step: float = TIMELINE_STEP_S) -> list[float]:  # fmt: skip
    """What the peers uploaded in each ``step`` from ``t0`` to ``end`` (seconds after
    ``t0``), as a share of what their uplinks could carry in it: where the time went."""
    out: list[float] = []
    t = 0.0
    while t < end:
        hi = min(end, t + step)
        sent = sum(
            _bytes_at(s, run.t0 + hi) - _bytes_at(s, run.t0 + t) for s in run.samples.values()
        )
        out.append(round(sent / (run.nodes * peer_up * (hi - t)), 3))
        t = hi
    return out


def figures(run: Run, *, origin_up: float, peer_up: float, peer_down: float,
            upload_cap: float) -> dict[str, Any]:  # fmt: skip
    """The bench's fields for one run (``t_all_s`` None when a node never completed)."""
    done = [t for t in run.completed_at.values() if t is not None]
    complete = len(done) == run.nodes
    t_all = round(max(done) - run.t0, 2) if complete else None
    bound = t_min(run.nodes, run.artifact_bytes, origin_up, peer_up, peer_down)
    peaks = {node: peak_upload(s) for node, s in run.samples.items()}
    peak = max(peaks.values(), default=0.0)
    sent = sum(max((b for _, b in s), default=0) for s in run.samples.values())
    return {
        "nodes": run.nodes,
        "artifact_bytes": run.artifact_bytes,
        "origin_bytes": run.origin_bytes,
        "origin_copies": round(run.origin_bytes / run.artifact_bytes, 3),
        "origin_share": round(run.origin_bytes / (run.nodes * run.artifact_bytes), 4),
        "t_all_s": t_all,
        "t_min_s": round(bound, 2),
        "bound_ratio": None if t_all is None else round(t_all / bound, 3),
        # None: no node reported an upload counter (a node without the swarm has none).
        "upload_cap_respected": (
            peak <= upload_cap * CAP_SLACK if any(run.samples.values()) else None
        ),
        "completed": len(done),
        "t_first_s": round(min(done) - run.t0, 2) if done else None,
        "upload_peak_bytes_s": round(peak),
        "upload_cap_bytes_s": round(upload_cap),
        # What the nodes uploaded to each other, and its share of what their uplinks could
        # have carried until the last one was done.
        "peer_bytes_up": sent,
        "peer_upload_use": (
            None if t_all is None or not t_all else round(sent / (run.nodes * peer_up * t_all), 3)
        ),
        # ``peer_upload_use`` step by step (``TIMELINE_STEP_S``), and when each node was done.
        "upload_timeline": upload_timeline(run, peer_up, t_all if t_all else 0.0),
        "t_done_s": sorted(round(t - run.t0, 1) for t in done),
    }
