"""``GET /status``: what operators see of one replica, in one JSON-ready map.

Rollout progress per artifact (nodes, probation, failures, pauses, refusals by gate and
reason, leases handed back by the node's reason, why gates 1-2 hold nodes back), leases
and aggregates per pool, the documents in force, and the replica's own settings and
warm-up.  Only counted nodes (P10 admission: enrolled, or with standing; ``Registry.who``)
enter the node counts -- versions, states, each artifact's nodes, probation and held --
and the aggregates' reporters; the others are one number each (``nodes.uncounted``,
a pool's ``aggregate.ignored``), so an operator sees them without a stranger's made-up
ids showing as a version.  Built from the replica's parts on
each request (``/metrics`` gauges are set from the same map); it changes nothing, except
that leases past their expiry are dropped on the way (``Asks.active_leases``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from . import policy
from .asks import Asks
from .breakers import Breakers
from .publishing import Documents
from .registry import Registry

__all__ = ["MAX_MATCHES", "MAX_VERSIONS", "node_status", "replica_status", "spare_capacity"]

#: ``nodes.versions`` lists this many versions (the most nodes first); the rest are summed
#: under ``OTHER_VERSIONS``: a version is whatever a node reports, so strangers can make up
#: thousands.
MAX_VERSIONS: Final = 64
OTHER_VERSIONS: Final = "(other versions)"
#: An id prefix matching more nodes than this lists this many of them.
MAX_MATCHES: Final = 20
_HEX: Final = frozenset("0123456789abcdef")


def spare_capacity(aggregate: policy.Aggregate, utilization: float) -> float:
    """``C - L / u``: the pool's serving capacity beyond what carries its load at the
    utilisation target ``u``; below 0 the pool is under the floor (the simulations'
    ``spare``, simulations/README.md).  What the rollout page charts."""
    return aggregate.capacity - aggregate.load / utilization


def replica_status(
    *,
    index: int,
    token_ttl: int,
    connected: int,
    documents: Documents,
    registry: Registry,
    asks: Asks,
    breakers: Breakers,
    damage: list[dict[str, Any]] | None = None,
    peers: dict[str, Any] | None = None,
    ice: dict[str, Any] | None = None,
    origin: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``damage``: the database's quarantines (``Store.damage``); ``peers``: what the other
    replicas hold (``CatchUp.view``).  Both also give lines of ``warnings``, so nobody
    who reads the status misses a replica that started empty or disagrees.  ``origin``:
    bytes served and downloaders refused per artifact held (``origin.OriginGate``)."""
    now, now_wall = asks.clock(), asks.wall()
    root = documents.trust.root
    role = root.roles["coordinator"]
    warm = max(0.0, asks.started_at + asks.policy.lease_ttl - now)
    scope = documents.scope.doc if documents.scope is not None else None
    allow = documents.allowlist.doc if documents.allowlist is not None else None
    artifacts: dict[str, dict[str, Any]] = {}
    #: Everything about artifacts no document names, summed: a stranger's made-up
    #: artifacts (in asks, status reports, failure reports) add no row each here.
    other: dict[str, Any] = {
        "nodes": 0,
        "states": {},
        "probation": 0,
        "failed": 0,
        "refusals": {},
    }

    def entry(artifact: str) -> dict[str, Any]:
        if not asks.known(artifact):
            return other
        if artifact not in artifacts:
            rel = documents.releases.get(artifact)
            artifacts[artifact] = {
                "name": rel.doc.name if rel else None,
                "counter": rel.doc.counter if rel else None,
                "allowlisted": bool(allow and artifact in allow.artifacts),
                "in_scope": scope.describe(int(now_wall))
                if scope and scope.artifact == artifact
                else None,
                "nodes": 0,
                "states": {},
                "probation": 0,
                "failed": 0,
                "failures": [],
                "paused": False,
                "paused_reason": None,
                "leases": 0,
                "refusals": {},
                "returned": {},
                "held": {},
            }
        return artifacts[artifact]

    versions: Counter[str] = Counter()
    states: Counter[str] = Counter()
    counted = registry.counted_rows()
    for row in counted:
        versions[row.version] += 1
        states[row.state] += 1
        e = entry(row.artifact)
        e["nodes"] += 1
        e["states"][row.state] = e["states"].get(row.state, 0) + 1
        if row.state == "probation":
            e["probation"] += 1
        if row.held and scope is not None:
            held = entry(scope.artifact)["held"]  # the scope's artifact: always known
            held[row.held] = held.get(row.held, 0) + 1
    for artifact in allow.artifacts if allow else ():
        entry(artifact)
    if scope is not None:
        entry(scope.artifact)
    for artifact, b in breakers.breakers.items():
        if not b.failures and not b.paused:
            continue
        e = entry(artifact)
        if e is other:
            other["failed"] += len(b.failures)
            continue
        e["failed"] = len(b.failures)
        e["failures"] = [{"node": n, "reason": r} for n, r in b.failures.items()]
        e["paused"] = b.paused
        e["paused_reason"] = b.reason or None
    for (artifact, gate, reason), count in asks.refusals.items():
        refused = entry(artifact)["refusals"]
        name = f"{gate}/{reason}"
        refused[name] = refused.get(name, 0) + count
    returned: Counter[str] = Counter()
    for (artifact, reason), count in asks.returns.items():
        e = entry(artifact)
        if e is not other:
            e["returned"][reason or "unspecified"] = count
        returned[reason or "unspecified"] += count
    pools: dict[str, Any] = {}
    for pool, leases in asks.active_leases().items():
        pools[pool] = {"leases": []}
        for lease in leases:
            info = asks.leases.get(str(lease.node))
            if info is not None and asks.known(info.artifact):
                entry(info.artifact)["leases"] += 1
            pools[pool]["leases"].append(
                {
                    "node": lease.node,
                    "artifact": info.artifact if info else None,
                    "expires_in": round(lease.expires - now, 3),
                    "forced": lease.forced,
                }
            )
    for pool in set(registry.estimates) | set(asks.pools):
        agg = registry.aggregate(pool)
        p = pools.setdefault(pool, {"leases": []})
        age = now - agg.as_of
        reporters = len(registry.reporters(pool))
        p["aggregate"] = {
            "capacity": agg.capacity,
            "load": agg.load,
            "serving": agg.serving,
            "spare": round(spare_capacity(agg, asks.policy.utilization), 3),
            "age": round(age, 3),
            "stale": age > asks.policy.aggregate_max_age,
            "reporters": reporters,
            # estimates held but not in the median: stale, not counted, over a subnet's cap
            "ignored": len(registry.estimates.get(pool, {})) - reporters,
        }
    for pool, p in pools.items():
        # this replica's share of the pool's max_concurrent (``/metrics``' lease_budget)
        p["lease_budget"] = policy.replica_share(
            asks.policy.max_concurrent, policy.pool_slot(pool), asks.policy
        )
    refusals: Counter[str] = Counter()
    for (_a, gate, reason), count in asks.refusals.items():
        refusals[f"{gate}/{reason}"] += count
    held_all: Counter[str] = Counter(r.held for r in counted if r.held)
    warnings = [d["message"] for d in damage or ()]
    for url, peer in (peers or {}).items():
        if peer["state"] == "down":
            warnings.append(f"replica {url} cannot be asked for its documents: {peer['error']}")
        elif peer["state"] == "differs":
            kinds = ", ".join(
                f"{kind} here {v['here']} there {v['there']}" for kind, v in peer["differs"].items()
            )
            warnings.append(f"replica {url} disagrees: {kinds}")
    return {
        "warnings": warnings,
        "state": {"damage": list(damage or ())},
        "replicas": dict(peers or {}),
        "replica": {
            "index": index,
            "keyid": asks.keyid,
            "network": root.network,
            "replicas": len(role.keys),
            "quorum": role.threshold,
            "token_ttl": token_ttl,
            "lease_ttl": asks.policy.lease_ttl,
            "max_concurrent": asks.policy.max_concurrent,
            "lease_share": asks.policy.lease_share,
            "min_serving": asks.policy.min_serving,
            "utilization": asks.policy.utilization,
            "warming_up_for": round(warm, 3),
            "connected_nodes": connected,
            "time": now_wall,
        },
        "documents": {
            "allowlist": {
                "version": allow.version,
                "expires": allow.expires,
                "artifacts": list(allow.artifacts),
            }
            if allow
            else None,
            "scope": {
                "serial": scope.serial,
                "artifact": scope.artifact,
                "kind": scope.kind,
                "force": scope.force,
                "expires": scope.expires,
                "describe": scope.describe(int(now_wall)),
            }
            if scope
            else None,
            "releases": [
                {"artifact": a, "name": s.doc.name, "counter": s.doc.counter}
                for a, s in sorted(documents.releases.items(), key=lambda kv: kv[1].doc.counter)
            ],
        },
        "nodes": {
            "total": len(registry.nodes),
            "counted": len(counted),
            "uncounted": len(registry.nodes) - len(counted),
            "versions": _top(versions, MAX_VERSIONS, OTHER_VERSIONS),
            "versions_gossip": _gossip_versions(registry, counted, now),
            "states": dict(states),
        },
        "artifacts": artifacts,
        "other_artifacts": other,
        "pools": pools,
        "refusals": dict(refusals),
        "returned": dict(returned),
        "held": dict(held_all),
        "paused": {a: b.reason for a, b in breakers.breakers.items() if b.paused},
        "ice": dict(ice or {"configured": False}),
        "origin": dict(origin or {"bytes": 0, "refused": 0, "artifacts": {}}),
    }


def _gossip_versions(registry: Registry, counted: list[Any], now: float) -> dict[str, Any]:
    """``nodes.versions_gossip``: push-sum's whole-fleet counts (``Registry.gossip_versions``
    says how they differ from ``nodes.versions`` and how stale each can be); ``age``:
    seconds since the median reporter's epoch ended."""
    got = registry.gossip_versions({r.node for r in counted})
    if got is None:
        return {"counts": {}, "age": None}
    counts, as_of = got
    return {"counts": {v: round(c, 1) for v, c in counts.items()}, "age": round(now - as_of, 3)}


def _top(counts: Counter[str], n: int, rest: str) -> dict[str, int]:
    """The ``n`` largest counts, and the sum of the others under ``rest``."""
    top = dict(counts.most_common(n))
    left = sum(counts.values()) - sum(top.values())
    if left:
        top[rest] = left
    return top


def node_status(
    prefix: str, *, index: int, registry: Registry, asks: Asks
) -> tuple[int, dict[str, Any]]:
    """``GET /status/node/<prefix>``: one node's answer, ``(HTTP status, JSON map)``.

    What this replica knows of the node whose id starts with ``prefix`` (lowercase hex):
    its last status report (version, state, why its own gates 1-2 hold it), its lease
    here, this replica's last refusal of its ask (gate, reason, since when, its
    ``retry_after``) and its place in the pool's queue now, and ``holds``: the one line
    that answers "why is this node not updating?".  400 for a prefix that is not hex,
    404 when no node matches, 409 with ``matches`` (at most ``MAX_MATCHES``) when
    several do.  It changes nothing."""
    want = prefix.strip().lower()
    if not want or len(want) > 64 or not set(want) <= _HEX:
        return 400, {
            "ok": False,
            "error": "bad-node-id",
            "reason": f"{prefix[:80]!r} is not a node id or a prefix of one (hex)",
        }
    known = set(registry.nodes) | set(registry.sessions) | set(asks.last_refusals)
    known |= set(asks.leases)
    matches = sorted(n for n in known if n.startswith(want))
    if not matches:
        return 404, {"ok": False, "error": "no-such-node", "reason": f"no node {want} here"}
    if len(matches) > 1:
        return 409, {
            "ok": False,
            "error": "ambiguous",
            "reason": f"{len(matches)} nodes start with {want}",
            "matches": matches[:MAX_MATCHES],
            "more": max(0, len(matches) - MAX_MATCHES),
        }
    node = matches[0]
    now, wall = asks.clock(), asks.wall()
    row = registry.nodes.get(node)
    who = registry.who(node)
    report = (
        {
            "version": row.version,
            "artifact": row.artifact,
            "state": row.state,
            "held": row.held,
            "pool": row.pool,
            "seen": row.seen,
            "age": round(max(0.0, wall - row.seen), 3),
            "first_seen": row.first_seen,
        }
        if row is not None
        else None
    )
    info = asks.leases.get(node)
    lease = (
        {
            "artifact": info.artifact,
            "pool": info.pool,
            "expires_in": round(info.expires - now, 3),
            "forced": info.forced,
        }
        if info is not None and info.expires > now
        else None
    )
    last = asks.last_refusals.get(node)
    refusal = (
        {
            "gate": last.gate,
            "reason": last.reason,
            "detail": last.detail,
            "retry_after": last.retry_after,
            "retry_in": None
            if last.retry_after is None
            else round(max(0.0, last.at + last.retry_after - wall), 3),
            "position": last.position,
            "at": last.at,
            "since": last.since,
            "for": round(max(0.0, wall - last.since), 3),
        }
        if last is not None
        else None
    )
    queue = None
    for pool, waiting in sorted(asks.queues.items()):
        place = waiting.live(now).position(node)
        if place is not None:
            queue = {"pool": pool, "position": place, "of": len(waiting.live(now).waiting)}
            break
    cooldown = asks.cooldowns.get(node)
    cooling = (
        round(cooldown.until - now, 3) if cooldown is not None and cooldown.until > now else None
    )
    return 200, {
        "ok": True,
        "node": node,
        "replica": index,
        "connected": node in registry.sessions,
        "counted": who.counted,
        "report": report,
        "lease": lease,
        "refusal": refusal,
        "queue": queue,
        "cooldown": cooling,
        "holds": _holds(report, lease, refusal, queue),
    }


def _holds(
    report: dict[str, Any] | None,
    lease: dict[str, Any] | None,
    refusal: dict[str, Any] | None,
    queue: dict[str, Any] | None,
) -> str:
    """The one line: what holds the node back now, as this replica sees it."""
    if lease is not None:
        return f"nothing: it holds a lease here for {lease['expires_in']:.0f} s more"
    if refusal is not None:
        line = f"gate {refusal['gate']}: {refusal['reason']}, for {refusal['for']:.0f} s"
        if refusal["retry_in"] is not None:
            line += f", asks again in {refusal['retry_in']:.0f} s"
        if queue is not None:
            line += f", queue position {queue['position']} of {queue['of']} in pool {queue['pool']}"
        return line
    if report is not None and report["held"]:
        return f"its own gates: {report['held']} (its last report, {report['age']:.0f} s ago)"
    if report is not None:
        return (
            f"nothing here: no refusal; its last report says {report['state']} {report['version']}"
        )
    return "nothing here: it has not reported yet"
