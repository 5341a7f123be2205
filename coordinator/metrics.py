"""``GET /metrics``: the replica's counters in Prometheus text format (prometheus-client).

Each replica has its own ``CollectorRegistry`` (tests run several in one process).
Counters move on the ask path; gauges that describe state (leases, nodes per version,
paused artifacts) are set when scraped, from the same values ``/status`` shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_PREFIX = "p2pupdate_coordinator"


class Observed(Protocol):
    """What the gauges read at scrape time (a ``coordinator.service.Replica``)."""

    connected: Callable[[], int]

    def status(self) -> dict[str, Any]: ...


class Metrics:
    def __init__(self, replica: Observed) -> None:
        self.replica = replica
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.asks = Counter(
            f"{_PREFIX}_asks",
            "Departure asks answered, by result, gate and reason",
            ["result", "gate", "reason"],
            registry=r,
        )
        self.ask_seconds = Histogram(
            f"{_PREFIX}_ask_seconds",
            "Time to answer an ask on the server (verify, decide, sign)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.requests = Counter(
            f"{_PREFIX}_requests", "Node requests, by kind", ["kind"], registry=r
        )
        self.bad_requests = Counter(
            f"{_PREFIX}_bad_requests",
            "Node requests refused as malformed, by error",
            ["error"],
            registry=r,
        )
        self.publish = Counter(
            f"{_PREFIX}_published",
            "Documents published, by type and result",
            ["type", "result"],
            registry=r,
        )
        self.leases = Gauge(
            f"{_PREFIX}_active_leases",
            "Leases this replica holds now, by pool",
            ["pool"],
            registry=r,
        )
        self.nodes = Gauge(
            f"{_PREFIX}_nodes", "Registered nodes, by version", ["version"], registry=r
        )
        self.connected = Gauge(f"{_PREFIX}_connected_nodes", "Nodes connected now", registry=r)
        self.paused = Gauge(
            f"{_PREFIX}_paused_artifacts", "Artifacts paused by the circuit breaker", registry=r
        )
        self.warming = Gauge(
            f"{_PREFIX}_warmup_seconds", "Seconds until this replica may grant again", registry=r
        )
        self.damage = Gauge(
            f"{_PREFIX}_state_damaged",
            "State files found damaged and quarantined since start (status 'warnings')",
            registry=r,
        )
        self.peers = Gauge(
            f"{_PREFIX}_peer_replicas",
            "Other replicas (serve --peer), by what they hold compared with this one",
            ["state"],
            registry=r,
        )

        self.turn_credentials = Counter(
            f"{_PREFIX}_turn_credentials_minted",
            "TURN credentials minted for authenticated nodes (ice requests answered)",
            registry=r,
        )
        self.signals = Counter(
            f"{_PREFIX}_signals",
            "Signal relay requests, by result (relayed, not-connected, rate-limited, timeout)",
            ["result"],
            registry=r,
        )
        self.ice_configured = Gauge(
            f"{_PREFIX}_ice_configured",
            "1 when serve was given STUN or TURN servers to hand to nodes",
            registry=r,
        )

        self._children: dict[tuple[str, ...], Any] = {}

    def count_ask(self, granted: bool, gate: str, reason: str) -> None:
        key = ("ask", gate, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.asks.labels(
                "granted" if granted else "refused", gate, reason
            )
        child.inc()

    def count_request(self, kind: str) -> None:
        key = ("request", kind)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(kind)
        child.inc()

    def published(self, kind: str, result: str) -> None:
        self.publish.labels(kind, result).inc()

    def render(self) -> bytes:
        rep = self.replica
        status = rep.status()
        self.leases.clear()
        for pool, info in status["pools"].items():
            self.leases.labels(pool).set(len(info["leases"]))
        self.nodes.clear()
        for version, count in status["nodes"]["versions"].items():
            self.nodes.labels(version).set(count)
        self.connected.set(rep.connected())
        self.paused.set(len(status["paused"]))
        self.warming.set(status["replica"]["warming_up_for"])
        self.damage.set(len(status["state"]["damage"]))
        self.ice_configured.set(1 if status["ice"]["configured"] else 0)
        self.peers.clear()
        for peer in status["replicas"].values():
            self.peers.labels(peer["state"]).inc()
        return generate_latest(self.registry)
