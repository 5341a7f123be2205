"""Verify a set of documents against a root, as a node would, and say what it may do.

Pure (bytes and ``now`` in, a report out), so the CLI, the demo and tests share it.
Documents are applied in the order a node would learn them: newer roots (by version),
then release records, allowlists (by version), scopes and nudges (by serial), departure
tokens and heartbeats.  Each document is checked against the trust state built from the
ones before it; one that fails is reported with its rule and leaves the state unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import documents as docs
from .crypto import Envelope
from .errors import P2PUpdateError
from .gates import Target, choose_target
from .trust import TrustStore

_ORDER = {
    "root": 0,
    "release": 1,
    "allowlist": 2,
    "scope": 3,
    "nudge": 4,
    "departure": 5,
    "heartbeat": 6,
}


@dataclass
class DocResult:
    name: str
    type: str
    ok: bool
    summary: str = ""
    rule: str = ""
    error: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        if self.ok:
            return f"OK    {self.name}: {self.summary}"
        return f"FAIL  {self.name} ({self.type}): {self.rule}: {self.error}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.name, "type": self.type, "ok": self.ok}
        if self.ok:
            out["summary"] = self.summary
            out["document"] = self.fields
        else:
            out["rule"] = self.rule
            out["error"] = self.error
        return out


@dataclass
class Report:
    root: DocResult
    documents: list[DocResult]
    store: TrustStore | None
    target: Target | None = None
    node: str | None = None
    allowlist: docs.Allowlist | None = None
    scope: docs.Scope | None = None

    @property
    def ok(self) -> bool:
        return self.root.ok and all(d.ok for d in self.documents)


def _jsonable(doc: docs.Document) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.to_obj().items():
        if isinstance(v, bytes):
            out[k] = v.hex()
        elif k == "chunks":
            out["chunk_count"] = len(v)
        elif k == "keys" and isinstance(v, dict):
            out[k] = sorted(v)
        else:
            out[k] = v
    return out


def verify_set(
    root_name: str,
    root_bytes: bytes,
    files: list[tuple[str, bytes]],
    *,
    now: int,
    as_node: str | None = None,
) -> Report:
    try:
        store = TrustStore.from_root(root_bytes, now)
        root_res = DocResult(
            root_name, "root", True, store.root.describe(), fields=_jsonable(store.root)
        )
    except P2PUpdateError as exc:
        return Report(
            root=DocResult(root_name, "root", False, rule=exc.rule, error=str(exc)),
            documents=[],
            store=None,
        )

    typed: list[tuple[int, int, str, bytes, str]] = []
    results: dict[str, DocResult] = {}
    for idx, (name, data) in enumerate(files):
        try:
            env = Envelope.from_wire(data)
        except P2PUpdateError as exc:
            results[f"{idx}"] = DocResult(name, "?", False, rule=exc.rule, error=str(exc))
            continue
        typed.append((_ORDER.get(env.type, 99), _order_key(env), name, data, f"{idx}"))
        results[f"{idx}"] = DocResult(name, env.type, False)

    latest_allow: docs.Allowlist | None = None
    latest_scope: docs.Scope | None = None
    releases: dict[str, docs.Release] = {}
    tokens: list[tuple[DocResult, docs.DepartureToken]] = []
    for _, _, _name, data, key in sorted(typed, key=lambda t: (t[0], t[1])):
        res = results[key]
        try:
            if res.type == "root":
                signed_root, store = store.update_root(data, now)
                doc: docs.Document = signed_root.doc
            elif res.type == "heartbeat":
                hb = docs.open_heartbeat(data)
                docs.check_fresh(hb.doc, store.effective_now(now))
                doc = hb.doc
            elif res.type in docs.DOCUMENT_TYPES:
                cls = docs.DOCUMENT_TYPES[res.type]
                signed, store = store.accept(cls, data, now)
                doc = signed.doc
            else:
                res.rule, res.error = "unknown-type", f"unknown document type {res.type!r}"
                continue
        except P2PUpdateError as exc:
            res.rule, res.error = exc.rule, str(exc)
            continue
        res.ok, res.summary, res.fields = True, doc.describe(), _jsonable(doc)
        if isinstance(doc, docs.Release):
            releases[doc.artifact] = doc
        elif isinstance(doc, docs.Allowlist):
            latest_allow = doc
        elif isinstance(doc, docs.Scope):
            latest_scope = doc
        elif isinstance(doc, docs.DepartureToken):
            tokens.append((res, doc))

    report = Report(
        root=root_res,
        documents=[results[f"{i}"] for i in range(len(files))],
        store=store,
        allowlist=latest_allow,
        scope=latest_scope,
    )
    if as_node is not None:
        report.node = as_node
        report.target = choose_target(
            as_node,
            installed=None,
            allowlist=latest_allow,
            releases=releases,
            scope=latest_scope,
            now=store.effective_now(now),
        )
        for res, token in tokens:  # a token only counts for the move it was granted for
            try:
                docs.check_binding(
                    token,
                    node=as_node,
                    from_artifact=token.from_artifact,
                    to_artifact=report.target.artifact or "",
                    allowlist_version=latest_allow.version if latest_allow else -1,
                    scope_serial=latest_scope.serial if latest_scope else -1,
                )
            except P2PUpdateError as exc:
                res.ok, res.rule, res.error = False, exc.rule, str(exc)
    return report


def _order_key(env: Envelope) -> int:
    """Version/serial for ordering within a kind, read without trusting it (order only)."""
    cls = docs.DOCUMENT_TYPES.get(env.type)
    if cls is None or cls.FLOOR_FIELD is None:
        return 0
    try:
        value = cls.from_payload(env.payload).floor_value
    except P2PUpdateError:
        return 0
    return int(value or 0)
