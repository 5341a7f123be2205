"""Rumors and anti-entropy: signed documents spread by push, pulled when large, and repaired.

README "Gossip and links".  Allowlists, releases, scope tokens, nudges and roots travel as
the signed envelopes themselves, so a forwarded nudge cannot be forged and needs no
coordinator.

* A rumor is new if its id (``rumor_id``: sha256 of the envelope bytes) is not in the
  seen-cache and the shell's ``Verifier`` accepts it as news; it is then delivered
  (``Deliver``) and pushed to ``fanout`` active peers per round, never twice to a peer, at
  most ``retransmit_limit(N)`` = ``4 * ceil(log10(N + 1))`` times in all (N from the
  aggregates, see ``Gossip.network_size``).
* Envelopes too large for one 1,200-byte message are announced (``IHave``) and pulled
  (``IWant`` -> ``Doc``); a ``Doc`` nobody asked this peer for is unsolicited.
* Anti-entropy: every ``anti_entropy_interval`` a node sends a ``Digest`` of the documents
  it holds (the newest per verifier slot) to one neighbour, who pulls what it lacks and
  announces what the digest lacks: a rumor that died out still reaches everyone.  Held
  documents are verified again before each digest, so one the trust store has since
  superseded or seen expire is not advertised.
* A document found bad once is remembered as bad (``_Seen.fault``): whoever sends it again
  is charged the same rule without a second verification.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from ..crypto import Envelope
from ..errors import P2PUpdateError, SchemaError
from .config import ID_LEN, MAX_IDS, MAX_INLINE_DOC
from .context import NodeContext, Out, send
from .events import Deliver, Publish, Send
from .membership import Membership
from .messages import Digest, Doc, IHave, IWant, Rumor
from .reputation import Penalty, rule_for
from .values import Verifier, rumor_id

#: Signed document types that travel as rumors (heartbeats have their own message).
RUMOR_TYPES: Final = frozenset({"root", "release", "allowlist", "scope", "nudge"})


def retransmit_limit(n: int, mult: int = 4) -> int:
    """How many times a node transmits one rumor: ``mult * ceil(log10(n + 1))``."""
    return max(1, mult * math.ceil(math.log10(max(n, 1) + 1)))


@dataclass(kw_only=True, slots=True)
class _Seen:
    at: float
    senders: set[str]
    fault: str | None = None


@dataclass(kw_only=True, slots=True)
class _Rumor:
    doc: bytes
    budget: int
    told: set[str]
    next_push: float
    expires: float


@dataclass(kw_only=True, slots=True)
class _Want:
    peer: str
    at: float


class Rumors:
    """The seen-cache, the rumors being spread, the documents held and the pulls pending.

    ``network_size`` is asked when a rumor starts, for its retransmit budget.
    """

    def __init__(
        self,
        ctx: NodeContext,
        membership: Membership,
        verify: Verifier,
        *,
        now: float,
        network_size: Callable[[], int],
    ) -> None:
        self._ctx = ctx
        self._membership = membership
        self._verify = verify
        self._network_size = network_size
        self._next_digest = now + ctx.rng.uniform(0.5, 1.0) * ctx.config.anti_entropy_interval
        self._seen: dict[bytes, _Seen] = {}
        self._rumors: dict[bytes, _Rumor] = {}
        self._held: dict[str, bytes] = {}  # slot -> id
        self._docs: dict[bytes, bytes] = {}  # id -> envelope, for held documents
        self._wants: dict[bytes, _Want] = {}
        self._served: dict[str, dict[bytes, float]] = {}

    @property
    def held(self) -> Mapping[str, bytes]:
        """The newest document per slot: what anti-entropy advertises."""
        return {slot: self._docs[i] for slot, i in self._held.items()}

    def has_seen(self, doc_or_id: bytes) -> bool:
        """True once this rumor (envelope bytes or its 32-byte id) has been received."""
        rid = doc_or_id if len(doc_or_id) == ID_LEN else rumor_id(doc_or_id)
        entry = self._seen.get(rid)
        return entry is not None and entry.fault is None

    def forget(self, peer: str) -> None:
        self._served.pop(peer, None)

    # -- events and messages ------------------------------------------------------------------

    def on_publish(self, ev: Publish, now: float, utc_now: int, out: Out) -> None:
        """Our own document: verified like any other (a bad one raises, it is our bug)."""
        rid = rumor_id(ev.doc)
        if rid in self._seen:
            return
        env = Envelope.from_wire(ev.doc)
        if env.type not in RUMOR_TYPES:
            raise ValueError(f"a {env.type!r} document is not spread as a rumor")
        accepted = self._verify(ev.doc)
        self._seen[rid] = _Seen(at=now, senders=set())
        if accepted.new:
            self._hold(rid, ev.doc, accepted.slot)
            self._start_rumor(rid, ev.doc, set(), now, out)

    def on_rumor(self, peer: str, msg: Rumor, now: float, utc_now: int, out: Out) -> None:
        self._receive_document(peer, msg.doc, rumor_id(msg.doc), now, out)

    def on_doc(self, peer: str, msg: Doc, now: float, utc_now: int, out: Out) -> None:
        rid = rumor_id(msg.doc)
        want = self._wants.get(rid)
        if want is None or want.peer != peer:
            raise Penalty("unsolicited", "a document nobody asked this peer for")
        del self._wants[rid]
        seen = self._seen.get(rid)
        if seen is not None and seen.fault is None:
            seen.senders.add(peer)  # it also came another way (or pushed by this very peer)
            return
        self._receive_document(peer, msg.doc, rid, now, out)

    def on_ihave(self, peer: str, msg: IHave, now: float, utc_now: int, out: Out) -> None:
        self._want(peer, msg.ids, now, out)

    def on_iwant(self, peer: str, msg: IWant, now: float, utc_now: int, out: Out) -> None:
        served = self._served.setdefault(peer, {})
        for rid in msg.ids:
            doc = self._docs.get(rid)
            if doc is None:
                rumor = self._rumors.get(rid)
                doc = rumor.doc if rumor is not None else None
            if doc is None:
                continue  # superseded since we announced it: not the asker's fault
            last = served.get(rid)
            if last is not None and now - last < self._ctx.config.want_timeout:
                raise Penalty("replayed", "asked twice for the same document")
            served[rid] = now
            rumor = self._rumors.get(rid)
            if rumor is not None:
                rumor.told.add(peer)
            send(peer, Doc(doc=doc), out)

    def on_digest(self, peer: str, msg: Digest, now: float, utc_now: int, out: Out) -> None:
        self._want(peer, msg.ids, now, out)
        theirs = set(msg.ids)
        extra = tuple(i for i in self._held.values() if i not in theirs)[:MAX_IDS]
        if extra:
            send(peer, IHave(ids=extra), out)

    # -- spreading ----------------------------------------------------------------------------

    def _receive_document(self, peer: str, doc: bytes, rid: bytes, now: float, out: Out) -> None:
        seen = self._seen.get(rid)
        if seen is not None:
            if seen.fault is not None:
                raise Penalty(seen.fault, "a document already found bad")
            if peer in seen.senders:
                raise Penalty("replayed", "the same document twice from one peer")
            seen.senders.add(peer)
            rumor = self._rumors.get(rid)
            if rumor is not None:
                rumor.told.add(peer)
            return
        entry = _Seen(at=now, senders={peer})
        self._seen[rid] = entry
        try:
            env = Envelope.from_wire(doc)
            if env.type not in RUMOR_TYPES:
                raise SchemaError(
                    f"a {env.type!r} document does not travel as a rumor", rule="unknown-document"
                )
            accepted = self._verify(doc)
        except P2PUpdateError as exc:
            entry.fault = rule_for(exc)
            raise Penalty(entry.fault, f"document: {exc.message}") from exc
        if not accepted.new:
            return
        self._hold(rid, doc, accepted.slot)
        out.append(Deliver(doc=doc, slot=accepted.slot))
        self._start_rumor(rid, doc, {peer}, now, out)

    def _hold(self, rid: bytes, doc: bytes, slot: str) -> None:
        old = self._held.pop(slot, None)
        if old is not None:  # superseded: stop spreading it too
            self._docs.pop(old, None)
            self._rumors.pop(old, None)
        self._held[slot] = rid
        self._docs[rid] = doc
        if len(self._held) > self._ctx.config.held_max:
            oldest = next(iter(self._held))
            self._docs.pop(self._held.pop(oldest), None)

    def _start_rumor(self, rid: bytes, doc: bytes, told: set[str], now: float, out: Out) -> None:
        cfg = self._ctx.config
        budget = retransmit_limit(self._network_size(), cfg.retransmit_mult)
        rumor = _Rumor(
            doc=doc,
            budget=budget,
            told=told,
            next_push=now + cfg.round_interval * 0.5,
            # long enough for every send at `fanout` per round, and for new neighbours
            expires=now + cfg.round_interval * (math.ceil(budget / cfg.fanout) + 10),
        )
        self._rumors[rid] = rumor
        self._push(rid, rumor, out)

    def _push(self, rid: bytes, rumor: _Rumor, out: Out) -> None:
        targets = [p for p in self._membership.active if p not in rumor.told]
        k = min(self._ctx.config.fanout, rumor.budget, len(targets))
        if k <= 0:
            return
        data = (
            Rumor(doc=rumor.doc) if len(rumor.doc) <= MAX_INLINE_DOC else IHave(ids=(rid,))
        ).to_wire()
        for p in self._ctx.sample(targets, k):
            rumor.told.add(p)
            out.append(Send(peer=p, data=data))
        rumor.budget -= k

    def push_rumors(self, now: float, out: Out) -> None:
        """This round's pushes of every rumor still within its budget."""
        for rid, rumor in list(self._rumors.items()):
            if rumor.budget <= 0:
                del self._rumors[rid]
            elif now >= rumor.next_push:
                self._push(rid, rumor, out)

    def _want(self, peer: str, ids: Iterable[bytes], now: float, out: Out) -> None:
        want: list[bytes] = []
        for rid in ids:
            if rid in self._seen or rid in self._wants:
                continue
            if len(self._wants) >= self._ctx.config.max_wants:
                break
            self._wants[rid] = _Want(peer=peer, at=now)
            want.append(rid)
        if want:
            send(peer, IWant(ids=tuple(want)), out)

    # -- anti-entropy -------------------------------------------------------------------------

    def digest_round(self, now: float, out: Out) -> None:
        """The periodic digest, when it is due."""
        if now >= self._next_digest:
            self._next_digest = now + self._ctx.config.anti_entropy_interval
            self._send_digest(out)

    def _send_digest(self, out: Out) -> None:
        """Advertise the documents held, after checking they are all still good.

        A held document can expire or be superseded in the shell's trust store (say, by a
        root rotation); announcing it would cost the peers who pull it, and us.
        """
        for slot, rid in list(self._held.items()):
            try:
                self._verify(self._docs[rid])
            except P2PUpdateError:
                del self._held[slot]
                self._docs.pop(rid, None)
        active = self._membership.active
        if not active or not self._held:
            return
        actives = list(active)
        peer = self._ctx.choice(actives)
        ids = tuple(self._held.values())[-MAX_IDS:]
        send(peer, Digest(ids=ids), out)

    # -- expiry -------------------------------------------------------------------------------

    def expire_wants(self, now: float) -> None:
        """Forget pulls that got no ``Doc`` within ``want_timeout``."""
        timeout = self._ctx.config.want_timeout
        if self._wants:
            for rid in [r for r, w in self._wants.items() if now - w.at > timeout]:
                del self._wants[rid]

    def expire_seen(self, now: float) -> None:
        """Trim the seen-cache (oldest first, by size and age) and drop rumors past their
        time."""
        cfg = self._ctx.config
        seen = self._seen
        while seen:
            rid, entry = next(iter(seen.items()))
            if len(seen) <= cfg.seen_max and now - entry.at <= cfg.seen_ttl:
                break
            del seen[rid]
        if self._rumors:
            for rid in [r for r, rm in self._rumors.items() if now >= rm.expires]:
                del self._rumors[rid]
