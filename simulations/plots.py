"""PNG plots of one run (matplotlib, Agg backend: no display needed).

* ``updated.png``: share of nodes on the new build over time (of the in-scope nodes seen
  online since the start, and of all nodes), with the 50/90/95/99% marks, the rollout
  start and, if the breaker tripped, the pause.
* ``spare.png``: the smallest pool's spare capacity as a share of its online capacity,
  with departures and without (what churn and demand alone leave), against the floor at 0.
* ``departures.png``: nodes away for an update at once, the policy's budget, leases or
  slots held, and slots held by offline nodes (FleetLock's stuck slots).
* ``origin.png`` (runs with ``[artifact]``): the origin's egress over time (Mbit/s per
  one-minute sample) and the bytes it has sent so far; the right panel zooms on the
  rollout's first two hours (release day's burst).

Each has two panels: the whole run, and the first day after the rollout start (most of
the action happens in the first hours; the long tail is nodes coming back online).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes


def _panels(title: str) -> tuple[Any, tuple[Axes, Axes]]:
    fig, (whole, zoom) = plt.subplots(
        1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]}, constrained_layout=True
    )
    fig.suptitle(title, fontsize=11)
    return fig, (whole, zoom)


def _zoom(ax: Axes, start_h: float, end_h: float) -> None:
    ax.set_xlim(start_h - 0.25, min(end_h, start_h + 24.0))
    ax.set_title("first day of the rollout", fontsize=9)


def _marks(ax: Axes, start_h: float, pause_h: float) -> None:
    ax.axvline(start_h, color="0.5", lw=0.8, ls=":")
    if math.isfinite(pause_h):
        ax.axvline(pause_h, color="tab:red", lw=1.0, ls="--", label="breaker paused")


def plot_run(
    out: Path, series: dict[str, np.ndarray], summary: dict[str, Any], label: str
) -> list[Path]:
    """Write the three PNGs into ``out``; returns their paths."""
    hours = series["minute"] / 60.0
    start_h = float(series["rollout_start_h"][0])
    end_h = float(hours[-1])
    pause_h = float(summary.get("halted_after_h", math.nan)) + start_h
    written = []

    fig, axes = _panels(f"{label}: nodes on the new build")
    for ax in axes:
        ax.plot(hours, series["updated_share"], lw=1.4, label="of in-scope nodes seen online")
        ax.plot(hours, series["updated_share_all"], lw=1.0, label="of all nodes")
        ax.plot(hours, series["online_share"], lw=0.8, color="0.6", label="online (churn)")
        if np.any(series["rolled_back_share"] > 0):
            ax.plot(
                hours, series["rolled_back_share"], lw=1.0, color="tab:red", label="rolled back"
            )
        for level in (0.5, 0.9, 0.95, 0.99):
            ax.axhline(level, color="0.85", lw=0.6, zorder=0)
        _marks(ax, start_h, pause_h)
        ax.set_xlabel("hours")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of nodes")
    axes[0].legend(loc="lower right", fontsize=8)
    _zoom(axes[1], start_h, end_h)
    written.append(_save(fig, out / "updated.png"))

    fig, axes = _panels(f"{label}: spare capacity vs the floor (smallest pool)")
    nodep = series["spare_no_departures"] / np.maximum(series["capacity_online"], 1e-12)
    for ax in axes:
        ax.plot(hours, nodep, lw=0.9, color="0.55", label="without departures (churn + demand)")
        ax.plot(hours, series["spare_share_min"], lw=1.2, color="tab:blue", label="with departures")
        below = series["spare_share_min"] < 0.0
        ax.fill_between(
            hours,
            series["spare_share_min"],
            0.0,
            where=below,
            color="tab:red",
            alpha=0.35,
            label="below the floor",
        )
        ax.axhline(0.0, color="tab:red", lw=1.0, label="floor: load = u x serving capacity")
        _marks(ax, start_h, pause_h)
        ax.set_xlabel("hours")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("(serving - load/u) / online capacity")
    axes[0].legend(loc="lower right", fontsize=8)
    _zoom(axes[1], start_h, end_h)
    written.append(_save(fig, out / "spare.png"))

    fig, axes = _panels(f"{label}: concurrent departures")
    budget = float(summary.get("departure_budget", math.nan))
    for ax in axes:
        ax.plot(hours, series["away"], lw=1.0, label="away for an update (online)")
        if np.any(series["held"] > 0):
            ax.plot(hours, series["held"], lw=0.8, ls="--", label="leases / slots held")
        if np.any(series["stuck"] > 0):
            ax.plot(
                hours, series["stuck"], lw=1.0, color="tab:red", label="slots held by offline nodes"
            )
        if math.isfinite(budget):
            ax.axhline(budget, color="0.3", lw=0.8, ls=":", label=f"budget ({budget:,.0f})")
        _marks(ax, start_h, pause_h)
        ax.set_xlabel("hours")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("nodes")
    axes[0].legend(loc="upper right", fontsize=8)
    _zoom(axes[1], start_h, end_h)
    written.append(_save(fig, out / "departures.png"))
    if "origin_mbit_s" in series:
        written.append(_plot_origin(out, hours, series, summary, label, start_h))
    return written


def _plot_origin(
    out: Path,
    hours: np.ndarray,
    series: dict[str, np.ndarray],
    summary: dict[str, Any],
    label: str,
    start_h: float,
) -> Path:
    fig, axes = _panels(
        f"{label}: origin egress (peak {summary.get('peak_origin_mbit_s', math.nan):.2f} Mbit/s, "
        f"total {summary.get('origin_bytes', math.nan) / 2**30:.2f} GiB, "
        f"{summary.get('origin_share', math.nan):.2e} of the bytes delivered)"
    )
    sent = np.cumsum(series["origin_bytes"]) / 2**30
    for ax in axes:
        ax.plot(hours, series["origin_mbit_s"], lw=1.0, label="origin egress (Mbit/s)")
        ax.axvline(start_h, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel("hours")
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        twin.plot(hours, sent, lw=0.9, color="tab:orange", label="sent so far (GiB)")
        twin.set_ylim(bottom=0)
    axes[0].set_ylabel("Mbit/s (one-minute mean)")
    axes[0].legend(loc="upper right", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    axes[1].set_xlim(start_h - 0.1, start_h + 2.0)
    axes[1].set_title("first two hours of the rollout", fontsize=9)
    return _save(fig, out / "origin.png")


def plot_comparison(out: Path, runs: list[tuple[str, dict[str, np.ndarray]]], title: str) -> Path:
    """Several runs side by side, one line per configuration (the first seed of each).

    Panels: the initial cohort updated (the policy's own speed), all in-scope nodes seen
    updated (bounded by churn), and the smallest pool's spare capacity; hours since the
    rollout start on a symlog axis, so the first minutes and the whole week both show.
    """
    seen: dict[str, dict[str, np.ndarray]] = {}
    for label, series in runs:
        config = label.rsplit("_seed", 1)[0]
        seen.setdefault(config, series)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    fig.suptitle(title, fontsize=11)
    colors = plt.get_cmap("tab20" if len(seen) > 10 else "tab10")
    for i, (config, series) in enumerate(seen.items()):
        hours = series["minute"] / 60.0 - float(series["rollout_start_h"][0])
        keep = hours >= 0.0
        style = {"lw": 1.3, "color": colors(i % colors.N), "label": config}
        axes[0].plot(hours[keep], series["updated_share_initial"][keep], **style)
        axes[1].plot(hours[keep], series["updated_share"][keep], **style)
        axes[2].plot(hours[keep], series["spare_share_min"][keep], **style)
    axes[0].set_ylabel("share updated")
    axes[0].set_title("nodes online at the start", fontsize=9)
    axes[1].set_title("in-scope nodes seen online since the start", fontsize=9)
    axes[2].set_title("spare capacity (smallest pool); floor at 0", fontsize=9)
    axes[2].axhline(0.0, color="tab:red", lw=1.0)
    for ax in axes[:2]:
        ax.set_ylim(0, 1.02)
        for level in (0.5, 0.9, 0.95):
            ax.axhline(level, color="0.85", lw=0.6, zorder=0)
    for ax in axes:
        ax.set_xlabel("hours since the rollout start")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(0, None)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    rows = -(-len(labels) // 4)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * rows, 1, 0.97))
    return _save(fig, out)


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
