"""The replica's documents: the trust store, what was published, and the artifact origin.

Operators publish signed documents over HTTP (``POST /v1/publish``); each is verified
against the replica's ``TrustStore`` (README "Trust model"), stored with the trust state
that accepting it produced, and pushed to connected nodes.  The newest allowlist, scope
and nudge and every release record are kept in memory for the ask path.  Artifact bytes
(``PUT /v1/artifacts/<sha256>``) are accepted only for a published release and only if
they are that release: streamed to a temp file, each chunk checked against the release's
chunk map as it completes (``ArtifactUpload``), renamed into place once whole.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import P2PUpdateError, SchemaError, SignatureError, WireError
from p2pupdate.core.origin import check_artifact
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.core.trust import TrustStore
from p2pupdate.errors import LocalStateFault, PeerFault
from p2pupdate.fsutil import AtomicFile, read_limited

from .errors import ConfigError, StateDamaged, StateUnwritable
from .statefiles import quarantine
from .store import Store

__all__ = [
    "PUBLISHABLE",
    "PUBLISH_ORDER",
    "ROOT_FILE",
    "ArtifactRefused",
    "ArtifactUpload",
    "Documents",
    "load_root",
    "open_trust",
]

ROOT_FILE: Final = "root.msgpack"
PUBLISHABLE: Final[dict[str, type[docs.Document]]] = {
    "release": docs.Release,
    "allowlist": docs.Allowlist,
    "scope": docs.Scope,
    "nudge": docs.Nudge,
}
#: The order documents are published in, so each one's signers are known when it arrives:
#: roots first (a rotation), then release records, the allowlist naming them, the scope.
PUBLISH_ORDER: Final[dict[str, int]] = {
    "root": 0,
    "release": 1,
    "allowlist": 2,
    "scope": 3,
    "nudge": 4,
}


class PublishCounter(Protocol):
    """Where publish results are counted (``Metrics.published``)."""

    def published(self, kind: str, result: str) -> None: ...


def load_root(network_dir: Path) -> bytes:
    path = network_dir / ROOT_FILE
    try:
        return read_limited(path, 1024 * 1024 + 4096)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None


def open_trust(store: Store, network_dir: Path, now_wall: float) -> TrustStore:
    """The trust state saved in the database, or a fresh one from the network's root.

    A saved state that does not parse is damage (``StateDamaged``: the database is
    quarantined); a root that does not is the operator's (``ConfigError``)."""
    saved = store.get("trust")
    if saved is not None:
        try:
            return TrustStore.from_bytes(saved)
        except P2PUpdateError as exc:
            raise StateDamaged(f"kv trust does not parse ({exc.rule})") from None
    try:
        trust = TrustStore.from_root(load_root(network_dir), int(now_wall))
    except P2PUpdateError as exc:
        raise ConfigError(f"{network_dir / ROOT_FILE}: {exc.rule}: {exc}") from None
    store.put("trust", trust.to_bytes())
    return trust


class Documents:
    """What this replica holds of the network's documents, and how new ones get in."""

    def __init__(
        self,
        *,
        store: Store,
        trust: TrustStore,
        directory: Path,
        max_artifact: int,
        wall: Callable[[], float],
        metrics: PublishCounter,
        push: Callable[[proto.Push], None],
        on_scope: Callable[[docs.Scope], list[str]],
        damaged: Callable[[str, str], None] = lambda _why, _moved: None,
    ) -> None:
        self.store = store
        self.trust = trust
        self.dir = directory
        self.max_artifact = max_artifact
        self.wall = wall
        self.metrics = metrics
        #: Push a message to every connected node.
        self.push = push
        #: A newer scope was published: the artifacts whose paused rollout it resumes.
        self.on_scope = on_scope
        #: A state file was found damaged and quarantined: ``(what, where it went)``.
        self.damaged = damaged
        self.allowlist: docs.Signed[docs.Allowlist] | None = None
        self.scope: docs.Signed[docs.Scope] | None = None
        self.nudge: docs.Signed[docs.Nudge] | None = None
        self.releases: dict[str, docs.Signed[docs.Release]] = {}
        #: Every root published here, oldest first (the chain a replica catching up needs).
        self.roots: list[bytes] = self.store.documents("root")
        #: Stored documents no longer signed by keys of the current root (rotated out).
        self.retired = self._load_documents()

    def _load_documents(self) -> int:
        """Every stored document, verified again; how many were signed by retired keys.

        A row that is not what was stored (its sha256), does not parse, or is of no known
        kind is damage (``StateDamaged``), never skipped: skipping is how documents were
        lost silently."""
        root = self.trust.root
        unknown = self.store.document_types() - set(PUBLISH_ORDER)
        if unknown:
            raise StateDamaged(f"documents rows of unknown type {sorted(unknown)[0][:32]!r}")
        retired = 0
        for kind, cls in PUBLISHABLE.items():
            for data in self.store.documents(kind):
                try:
                    signed: docs.Signed[Any] = docs.open_signed(cls, data, root)
                except WireError as exc:
                    raise StateDamaged(f"a stored {kind} does not parse ({exc.rule})") from None
                except P2PUpdateError:
                    retired += 1  # signed by keys a newer root rotated out
                    continue
                self._install(kind, signed)
        return retired

    def held(self) -> list[bytes]:
        """Every document this replica holds, in ``PUBLISH_ORDER``: the published roots,
        every release record, the newest allowlist, scope and nudge.  What a replica
        catching up fetches (``GET /v1/documents``) and what a rebuilt database gets."""
        out = list(self.roots)
        out += [s.envelope.to_wire() for _a, s in sorted(self.releases.items())]
        for signed in (self.allowlist, self.scope, self.nudge):
            if signed is not None:
                out.append(signed.envelope.to_wire())
        return out

    def persist(self) -> None:
        """Write the trust store and every document held into a new, empty database."""
        self.store.put("trust", self.trust.to_bytes())
        for data in self.held():
            env = crypto.Envelope.from_wire(data)
            kind = env.type
            signed: docs.Signed[Any] | None = None
            if kind in PUBLISHABLE:
                signed = docs.open_signed(PUBLISHABLE[kind], env, self.trust.root)
            self.store.add_document(
                type_=kind,
                floor=signed.doc.floor_value if signed else None,
                artifact=getattr(signed.doc, "artifact", None) if signed else None,
                digest=hashlib.sha256(env.payload).hexdigest(),
                data=data,
                trust=self.trust.to_bytes(),
            )

    def catch_up(self, data: bytes) -> tuple[str, int, dict[str, Any]] | None:
        """One document fetched from another replica, verified exactly as a publish is
        (``publish``: the floors decide).  None when this replica already holds it;
        else ``(kind, HTTP-like status, answer)``."""
        try:
            env = crypto.Envelope.from_wire(data)
        except WireError as exc:
            return "?", 400, {"ok": False, "error": exc.rule, "reason": str(exc)}
        if self.store.has_document(hashlib.sha256(env.payload).hexdigest()):
            return None
        status, answer = self.publish(data)
        return env.type, status, answer

    def _install(self, kind: str, signed: docs.Signed[Any]) -> None:
        doc = signed.doc
        if kind == "release":
            self.releases[doc.artifact] = signed
        elif kind == "allowlist":
            if self.allowlist is None or doc.version >= self.allowlist.doc.version:
                self.allowlist = signed
        elif kind == "scope":
            if self.scope is None or doc.serial >= self.scope.doc.serial:
                self.scope = signed
        elif kind == "nudge" and (self.nudge is None or doc.serial >= self.nudge.doc.serial):
            self.nudge = signed

    def publish(self, data: bytes) -> tuple[int, dict[str, Any]]:
        """Verify and store one signed document: ``(HTTP status, JSON answer)``.

        Anything that does not verify is a 400 with the rule and reason, and changes
        nothing (the ``TrustStore`` is a value; it is replaced only after success).
        """
        now = int(self.wall())
        try:
            kind = docs.peek_type(data)
        except WireError as exc:
            return self._bad("publish", exc.rule, f"not a signed document: {exc}")
        try:
            if kind == "root":
                signed_root, store = self.trust.update_root(data, now)
                store.check_current_root(now)
                self.store.add_document(
                    type_="root",
                    floor=signed_root.doc.version,
                    artifact=None,
                    digest=signed_root.digest,
                    data=data,
                    trust=store.to_bytes(),
                )
                self.trust = store
                self.roots.append(data)
                # What the new root's keys do not sign is served no more (as after a
                # restart): a stolen key's allowlist must not outlive the key.
                self.allowlist = self.scope = self.nudge = None
                self.releases = {}
                self.retired = self._load_documents()
                self.metrics.published("root", "ok")
                self.push(proto.DocumentPush(doc=data))  # connected nodes take it now
                return 200, {"ok": True, "type": kind, "describe": signed_root.doc.describe()}
            cls = PUBLISHABLE.get(kind)
            if cls is None:
                why = {
                    "departure": "departure tokens are issued by replicas, never published",
                    "heartbeat": "heartbeats are gossiped between nodes, never published",
                }.get(kind, f"unknown document type {kind!r}")
                return self._bad(kind, "wrong-type", why)
            try:
                accepted: tuple[docs.Signed[Any], TrustStore] = self.trust.accept(cls, data, now)
                signed, store = accepted
            except SignatureError as exc:
                raise self._explain_signers(kind, cls.ROLE, data, exc) from None
        except LocalStateFault as exc:  # storing a root: damage rebuilt once, or a full disk
            self.metrics.published(kind, "failed")
            return 503, {"ok": False, "error": exc.rule, "reason": str(exc)}
        except P2PUpdateError as exc:
            return self._bad(kind, exc.rule, str(exc))
        doc = signed.doc
        try:
            self.store.add_document(
                type_=kind,
                floor=doc.floor_value,
                artifact=getattr(doc, "artifact", None),
                digest=signed.digest,
                data=data,
                trust=store.to_bytes(),
            )
        except LocalStateFault as exc:  # damage already rebuilt once, or a full disk
            self.metrics.published(kind, "failed")
            return 503, {"ok": False, "error": exc.rule, "reason": str(exc)}
        self.trust = store
        self._install(kind, signed)
        answer: dict[str, Any] = {"ok": True, "type": kind, "describe": doc.describe()}
        if kind == "scope":
            resumed = self.on_scope(doc)
            if resumed:
                answer["resumed"] = resumed
        if kind == "nudge":
            self.push(proto.DocumentPush(doc=data, nudge=True))
        else:
            self.push(proto.DocumentPush(doc=data))
        self.metrics.published(kind, "ok")
        return 200, answer

    def _bad(self, kind: str, rule: str, reason: str) -> tuple[int, dict[str, Any]]:
        self.metrics.published(kind, "rejected")
        return 400, {"ok": False, "error": rule, "reason": reason}

    def _explain_signers(
        self, kind: str, role: str, data: bytes, exc: SignatureError
    ) -> P2PUpdateError:
        """A signature failure that is really a key of another role says so."""
        root = self.trust.root
        try:
            env = crypto.Envelope.from_wire(data)
        except P2PUpdateError:
            return exc
        good = env.valid_keyids(root.keys)
        others = sorted(
            {r for r, info in root.roles.items() if r != role and good & set(info.keys)}
        )
        if others and not good & set(root.roles[role].keys):
            return P2PUpdateError(
                f"a {kind} must be signed by {role} keys; this one is signed by "
                f"{', '.join(others)} key(s) only",
                rule="wrong-role",
            )
        return exc

    def begin_upload(self, artifact: str) -> ArtifactUpload:
        """A writer for ``artifact``'s bytes (``ArtifactRefused`` if none may be stored):
        only builds with a published release, checked chunk by chunk as they arrive."""
        release = self.releases.get(artifact)
        if release is None:
            raise ArtifactRefused(
                f"publish the release record of {artifact[:16]}... first",
                rule="no-release-record",
            )
        rel = release.doc
        if rel.length > self.max_artifact:
            raise ArtifactRefused(
                f"the release says {rel.length} bytes; the limit is {self.max_artifact}"
            )
        try:
            chunk_map = ChunkMap.of_release(rel)
        except SchemaError as exc:
            raise ArtifactRefused(exc.message) from None
        return ArtifactUpload(chunk_map, self.dir / "artifacts" / artifact)

    def put_artifact(self, artifact: str, data: bytes) -> tuple[int, dict[str, Any]]:
        """Store artifact bytes held in memory (``begin_upload``'s writer, fed at once)."""
        try:
            with self.begin_upload(artifact) as upload:
                upload.feed(data)
                length = upload.finish()
        except ArtifactRefused as exc:
            return 400, exc.answer()
        return 200, {"ok": True, "artifact": artifact, "length": length}

    def artifact_path(self, artifact: str) -> Path | None:
        if len(artifact) != 64 or artifact.strip("0123456789abcdef"):
            return None
        path = self.dir / "artifacts" / artifact
        return path if path.is_file() else None

    def origin_bytes(self, artifact: str, chunk: int | None) -> bytes | None:
        """What the origin serves of a published artifact: all of it, or one chunk; None
        if it is not here (or no such chunk).  The bytes are checked against the release
        record first (the chunk's hash, or every chunk's): a file that changed on disk is
        quarantined (``statefiles``), said in the log and ``/status``, and not served --
        nodes verify every chunk anyway and would only blame the origin."""
        path = self.artifact_path(artifact)
        release = self.releases.get(artifact)
        if path is None or release is None:
            return None
        rel = release.doc
        if chunk is None:
            out = read_limited(path, self.max_artifact)
            problem = check_artifact(out, rel, self.max_artifact)
        elif chunk >= len(rel.chunks):
            return None
        else:  # one chunk read where the chunk map puts it, not the whole file per chunk
            piece = ChunkMap.of_release(rel).chunks[chunk]
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(piece.offset)
                out = f.read(piece.length)
            ok = size == rel.length and piece.check(out)
            problem = "" if ok else f"chunk {chunk} does not match the release record"
        if not problem:
            return out
        moved = quarantine(path)
        self.damaged(f"artifacts/{artifact[:16]}...: {problem}", f"artifacts/{moved.name}")
        return None

    def current_documents(self) -> list[bytes]:
        # The published roots first, oldest first: a node walks them before it needs
        # them to verify what follows (and takes a rotation from its replica, not only
        # by gossip).
        out: list[bytes] = list(self.roots)
        wanted: set[str] = set()
        if self.allowlist is not None:
            out.append(self.allowlist.envelope.to_wire())
            wanted |= set(self.allowlist.doc.artifacts)
        if self.scope is not None:
            out.append(self.scope.envelope.to_wire())
            wanted.add(self.scope.doc.artifact)
        out += [self.releases[a].envelope.to_wire() for a in sorted(wanted) if a in self.releases]
        return out


class ArtifactRefused(PeerFault):
    """Bytes that may not be stored as the artifact: no release names it (``rule``
    ``no-release-record``), or they are not what its release says (``artifact-mismatch``;
    ``chunk``: the first wrong chunk's index, None when the length or sha256 is wrong).
    The uploader's fault; nothing was stored."""

    rule = "artifact-mismatch"

    def __init__(self, message: str, *, rule: str | None = None, chunk: int | None = None):
        super().__init__(message, rule=rule)
        self.chunk = chunk

    def answer(self) -> dict[str, Any]:
        """The HTTP answer's JSON (``ok: false``)."""
        return {"ok": False, "error": self.rule, "reason": str(self)}


class ArtifactUpload:
    """One upload on its way to ``path`` (``artifacts/<sha256>``), holding in memory only
    the chunk not yet complete (and one copy of it while it is checked) plus what one
    ``feed`` brings.  Each chunk is checked (``Chunk.check``, at the offsets and lengths of
    the chunk map, whatever their sizes) as its last byte arrives, and only checked chunks
    reach the temp file.  ``finish`` checks the length and the sha256 of the whole, then
    renames the temp file into place (``fsutil.AtomicFile``).  A refusal
    (``ArtifactRefused``), a disk error (``StateUnwritable``) or ``abort`` removes the temp
    file: an artifact already at ``path`` is never touched by an upload that fails.

    Not thread-safe: one caller at a time (the server feeds it from worker threads, one
    after another).  A context manager: leaving the block without ``finish`` aborts."""

    def __init__(self, chunk_map: ChunkMap, path: Path) -> None:
        self.chunks = chunk_map.chunks
        self.artifact = chunk_map.artifact
        self.length = chunk_map.length
        self.received = 0
        self._next = 0  # the index of the first chunk not yet complete
        self._pending = bytearray()  # its bytes so far
        self._whole = hashlib.sha256()
        try:
            self.staged = AtomicFile(path)
        except OSError as exc:
            raise self._unwritable(exc) from None

    @property
    def wanted(self) -> int:
        """Bytes still to come before the next chunk can be judged (0 once all are in)."""
        if self._next >= len(self.chunks):
            return 0
        return self.chunks[self._next].length - len(self._pending)

    def feed(self, data: bytes) -> None:
        """Append ``data``; ``ArtifactRefused`` (upload aborted) at the first bad chunk."""
        try:
            if self.received + len(data) > self.length:
                raise ArtifactRefused(f"more than the {self.length} bytes the release says")
            self.received += len(data)
            self._pending += data
            while self._next < len(self.chunks):
                piece = self.chunks[self._next]
                if len(self._pending) < piece.length:
                    break
                got = bytes(self._pending[: piece.length])
                del self._pending[: piece.length]
                if not piece.check(got):
                    raise ArtifactRefused(
                        f"chunk {piece.index} does not match the release record",
                        chunk=piece.index,
                    )
                self.staged.write(got)
                self._whole.update(got)
                self._next += 1
        except OSError as exc:
            self.abort()
            raise self._unwritable(exc) from None
        except BaseException:
            self.abort()
            raise

    def finish(self) -> int:
        """Check the whole and store it durably at ``path``; its length."""
        try:
            if self._next < len(self.chunks) or self.received != self.length:
                raise ArtifactRefused(f"{self.received} bytes, the release says {self.length}")
            if self._whole.hexdigest() != self.artifact:
                raise ArtifactRefused(
                    f"the bytes' sha256 is {self._whole.hexdigest()[:16]}..., not the artifact's"
                )
            self.staged.commit()
        except OSError as exc:
            self.abort()
            raise self._unwritable(exc) from None
        except BaseException:
            self.abort()
            raise
        return self.length

    def abort(self) -> None:
        """Drop the upload: its temp file is removed (nothing once finished or aborted)."""
        self._pending = bytearray()
        self.staged.discard()

    def _unwritable(self, exc: OSError) -> StateUnwritable:
        return StateUnwritable(f"artifacts/{self.artifact[:16]}...: {exc.strerror or exc}")

    def __enter__(self) -> ArtifactUpload:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.abort()
