"""``GET /metrics``: the replica's counters in Prometheus text format (prometheus-client).

Each replica has its own ``CollectorRegistry`` (tests run several in one process).
Counters move on the ask path; gauges that describe state (leases and their budget,
nodes per version and state, the breaker per artifact) are set when scraped, from the
same values ``/status`` shows.

Names follow Prometheus' conventions, and ``promtool check metrics`` says so
(``tests/coordinator/test_metrics_conventions.py``): one ``p2pupdate_coordinator_``
prefix, base units in the name (``_seconds``, ``_bytes``), counters end in ``_total``
(prometheus-client appends it to a ``Counter``'s name), and labels only of bounded sets
(gates, reasons, versions capped by ``/status``, artifacts the replica knows).  The
Grafana dashboard ``coordinator/dashboards/p2pupdate.json`` queries these names; the
same test checks that every series it names exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import policy
from .policy import PolicyConfig

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_PREFIX = "p2pupdate_coordinator"

# No ``<counter>_created`` series: in the 0.0.4 text format they are gauges of their own,
# one per labelled child, that double what Prometheus stores and that no query here uses
# (``rate`` and ``increase`` handle a counter's reset without them).  Process-wide, and
# this process's only prometheus-client user is the replica.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Observed(Protocol):
    """What the gauges read at scrape time (a ``coordinator.service.Replica``)."""

    connected: Callable[[], int]

    @property
    def policy(self) -> PolicyConfig:
        """Gate 3's knobs (with this replica's rank): its share of each pool's budget."""

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
            f"{_PREFIX}_documents_published",
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
        self.lease_budget = Gauge(
            f"{_PREFIX}_lease_budget",
            "Unforced leases this replica may hold at once, by pool: its share of "
            "max_concurrent (policy.replica_share); asks past it are refused lease-budget",
            ["pool"],
            registry=r,
        )
        self.nodes = Gauge(
            f"{_PREFIX}_nodes",
            "Registered nodes counted (admission: enrolled, or with standing), by version",
            ["version"],
            registry=r,
        )
        self.node_states = Gauge(
            f"{_PREFIX}_nodes_in_state",
            "Registered nodes counted, by the state they last reported (serving, probation, ...)",
            ["state"],
            registry=r,
        )
        self.uncounted = Gauge(
            f"{_PREFIX}_uncounted_nodes",
            "Registered nodes not counted (no standing yet, or a lapsed member document)",
            registry=r,
        )
        self.hellos_refused = Counter(
            f"{_PREFIX}_hellos_refused",
            "Hellos turned away by admission, by reason (admission/not-enrolled, "
            "admission/bad-member, admission/proof-of-work, admission/subnet-full)",
            ["reason"],
            registry=r,
        )
        self.connected = Gauge(f"{_PREFIX}_connected_nodes", "Nodes connected now", registry=r)
        self.paused = Gauge(
            f"{_PREFIX}_paused_artifacts", "Artifacts paused by the circuit breaker", registry=r
        )
        self.breaker_paused = Gauge(
            f"{_PREFIX}_breaker_paused",
            "1 while the circuit breaker holds the artifact's rollout (by artifact)",
            ["artifact"],
            registry=r,
        )
        self.artifact_info = Gauge(
            f"{_PREFIX}_artifact_info",
            "1 for each artifact the replica knows, with its release's name (join on "
            "artifact to label per-artifact series with a version name)",
            ["artifact", "name"],
            registry=r,
        )
        self.breaker_failed = Gauge(
            f"{_PREFIX}_breaker_failed_nodes",
            "Nodes whose failed move the breaker counts against the artifact (by artifact)",
            ["artifact"],
            registry=r,
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
        #: The status map of the scrape under way (the origin's counters are read from it).
        self._status: dict[str, Any] | None = None
        r.register(_OriginCollector(self))

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

    def hello_refused(self, reason: str) -> None:
        self.hellos_refused.labels(reason).inc()

    def published(self, kind: str, result: str) -> None:
        self.publish.labels(kind, result).inc()

    def render(self) -> bytes:
        rep = self.replica
        status = self._status = rep.status()
        config = rep.policy
        self.leases.clear()
        self.lease_budget.clear()
        for pool, info in status["pools"].items():
            self.leases.labels(pool).set(len(info["leases"]))
            share = policy.replica_share(config.max_concurrent, policy.pool_slot(pool), config)
            self.lease_budget.labels(pool).set(share)
        self.nodes.clear()
        for version, count in status["nodes"]["versions"].items():
            self.nodes.labels(version).set(count)
        self.node_states.clear()
        for state, count in status["nodes"]["states"].items():
            self.node_states.labels(state).set(count)
        self.artifact_info.clear()
        self.breaker_paused.clear()
        self.breaker_failed.clear()
        for artifact, entry in status["artifacts"].items():
            self.artifact_info.labels(artifact, entry["name"] or "").set(1)
            self.breaker_paused.labels(artifact).set(1 if entry["paused"] else 0)
            self.breaker_failed.labels(artifact).set(entry["failed"])
        self.uncounted.set(status["nodes"]["uncounted"])
        self.connected.set(rep.connected())
        self.paused.set(len(status["paused"]))
        self.warming.set(status["replica"]["warming_up_for"])
        self.damage.set(len(status["state"]["damage"]))
        self.ice_configured.set(1 if status["ice"]["configured"] else 0)
        self.peers.clear()
        for peer in status["replicas"].values():
            self.peers.labels(peer["state"]).inc()
        try:
            return generate_latest(self.registry)
        finally:
            self._status = None


class _OriginCollector(Collector):
    """``origin_bytes_total`` / ``origin_refused_total`` / ``origin_downloaders`` per artifact,
    from ``/status``'s ``origin`` (``coordinator.origin``): counted there once, and bounded
    by what the replica holds, since only held artifacts are listed."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # no samples at registration: collect() reads the scrape's status

    def collect(self) -> Iterator[Any]:
        status = self.metrics._status
        per: dict[str, dict[str, int]] = (status or {}).get("origin", {}).get("artifacts", {})
        sent = CounterMetricFamily(
            f"{_PREFIX}_origin_bytes",
            "Artifact bytes the origin served, by artifact (only artifacts held)",
            labels=["artifact"],
        )
        refused = CounterMetricFamily(
            f"{_PREFIX}_origin_refused",
            "Origin requests answered try-peers (over the downloader cap), by artifact",
            labels=["artifact"],
        )
        now = GaugeMetricFamily(
            f"{_PREFIX}_origin_downloaders",
            "Downloaders the origin counts now, by artifact",
            labels=["artifact"],
        )
        for artifact, e in per.items():
            sent.add_metric([artifact], e["bytes"])
            refused.add_metric([artifact], e["refused"])
            now.add_metric([artifact], e["downloaders"])
        yield sent
        yield refused
        yield now
