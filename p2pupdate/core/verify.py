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


@dataclass(frozen=True, kw_only=True, slots=True)
class DocResult:
    """What became of one file: accepted (with a summary and its fields) or refused.

    A refusal carries the core error's ``rule`` (a stable code people and tests match on)
    and its sentence; an acceptance carries neither.  Checked on construction.
    """

    name: str
    type: str
    ok: bool
    summary: str = ""
    rule: str = ""
    error: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ok and (self.rule or self.error):
            raise ValueError(f"{self.name}: an accepted document has no rule or error")
        if not self.ok and not self.rule:
            raise ValueError(f"{self.name}: a refused document needs the rule it broke")

    @classmethod
    def refused(cls, name: str, kind: str, exc: P2PUpdateError) -> DocResult:
        """``name`` (of type ``kind``) refused by the core with ``exc``."""
        return cls(name=name, type=kind, ok=False, rule=exc.rule, error=str(exc))

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


@dataclass(frozen=True, kw_only=True, slots=True)
class Report:
    """The root's result, each file's result (in the order given), and what they imply.

    ``store`` is the trust state after every accepted document (``None`` when the root
    itself is refused).  With ``as_node``, ``node`` and ``target`` say which artifact that
    node's gates 1-2 let it move to.
    """

    root: DocResult
    documents: tuple[DocResult, ...]
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


def _accepted(name: str, kind: str, doc: docs.Document) -> DocResult:
    return DocResult(name=name, type=kind, ok=True, summary=doc.describe(), fields=_jsonable(doc))


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
    except P2PUpdateError as exc:
        return Report(root=DocResult.refused(root_name, "root", exc), documents=(), store=None)
    root_res = _accepted(root_name, "root", store.root)

    results: list[DocResult | None] = [None] * len(files)  # filled in trust order below
    typed: list[tuple[int, int, int, str, bytes]] = []  # (kind order, floor, index, type, bytes)
    for idx, (name, data) in enumerate(files):
        try:
            env = Envelope.from_wire(data)
        except P2PUpdateError as exc:
            results[idx] = DocResult.refused(name, "?", exc)
            continue
        typed.append((_ORDER.get(env.type, 99), _order_key(env), idx, env.type, data))

    latest_allow: docs.Allowlist | None = None
    latest_scope: docs.Scope | None = None
    releases: dict[str, docs.Release] = {}
    tokens: list[tuple[int, str, docs.DepartureToken]] = []
    for _, _, idx, kind, data in sorted(typed, key=lambda t: (t[0], t[1])):
        name = files[idx][0]
        try:
            if kind == "root":
                signed_root, store = store.update_root(data, now)
                doc: docs.Document = signed_root.doc
            elif kind == "heartbeat":
                hb = docs.open_heartbeat(data)
                docs.check_fresh(hb.doc, store.effective_now(now))
                doc = hb.doc
            elif kind in docs.DOCUMENT_TYPES:
                cls = docs.DOCUMENT_TYPES[kind]
                signed, store = store.accept(cls, data, now)
                doc = signed.doc
            else:
                results[idx] = DocResult(
                    name=name,
                    type=kind,
                    ok=False,
                    rule="unknown-type",
                    error=f"unknown document type {kind!r}",
                )
                continue
        except P2PUpdateError as exc:
            results[idx] = DocResult.refused(name, kind, exc)
            continue
        results[idx] = _accepted(name, kind, doc)
        if isinstance(doc, docs.Release):
            releases[doc.artifact] = doc
        elif isinstance(doc, docs.Allowlist):
            latest_allow = doc
        elif isinstance(doc, docs.Scope):
            latest_scope = doc
        elif isinstance(doc, docs.DepartureToken):
            tokens.append((idx, kind, doc))

    target: Target | None = None
    if as_node is not None:
        target = choose_target(
            as_node,
            installed=None,
            allowlist=latest_allow,
            releases=releases,
            scope=latest_scope,
            now=store.effective_now(now),
        )
        for idx, kind, token in tokens:  # a token only counts for the move it was granted for
            try:
                docs.check_binding(
                    token,
                    node=as_node,
                    from_artifact=token.from_artifact,
                    to_artifact=target.artifact or "",
                    allowlist_version=latest_allow.version if latest_allow else -1,
                    scope_serial=latest_scope.serial if latest_scope else -1,
                )
            except P2PUpdateError as exc:
                results[idx] = DocResult.refused(files[idx][0], kind, exc)
    documents = tuple(r for r in results if r is not None)
    assert len(documents) == len(files)  # every file got exactly one result
    return Report(
        root=root_res,
        documents=documents,
        store=store,
        target=target,
        node=as_node,
        allowlist=latest_allow,
        scope=latest_scope,
    )


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
