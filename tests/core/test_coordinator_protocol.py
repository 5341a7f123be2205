"""The node <-> coordinator protocol pieces of the core: requests, session, departure tokens."""

from __future__ import annotations

import pytest

from p2pupdate.core import coordproto as proto
from p2pupdate.core import departure, wire
from p2pupdate.core import documents as docs
from p2pupdate.core import session as sess
from p2pupdate.core.errors import (
    BindingError,
    ExpiredError,
    SchemaError,
    VerificationError,
    WireError,
)
from p2pupdate.core.origin import check_artifact

from .harness import NOW, Network, key_for, sha256_hex

A = "a" * 64
B = "b" * 64
ZERO = "0" * 64


def session_pair() -> tuple[sess.Session, sess.Session]:
    node_kx, server_kx = sess.KeyExchange(bytes(range(32))), sess.KeyExchange(bytes(32 * [7]))
    nonce = bytes(32)
    node = node_kx.session(
        server_kx.public, nonce=nonce, node_kx=node_kx.public, server_kx=server_kx.public
    )
    server = server_kx.session(
        node_kx.public, nonce=nonce, node_kx=node_kx.public, server_kx=server_kx.public
    )
    return node, server


# -- requests ---------------------------------------------------------------------------


def status_fields() -> dict[str, object]:
    return {
        "version": "v1",
        "artifact": A,
        "state": "serving",
        "pool": "p",
        "estimate": {"capacity": 10, "load": 1.0, "serving": 3, "age": 0.0},
        "held": {"gate": "scope", "reason": "not-in-scope"},
        "addrs": ["tcp:1.2.3.4:5"],
    }


def test_a_request_round_trips_through_a_sealed_frame() -> None:
    node, server = session_pair()
    status = proto.request_of("status", status_fields())
    assert isinstance(status, proto.StatusReport)
    assert status.estimate == proto.Estimate(capacity=10.0, load=1.0, serving=3, age=0.0)
    assert status.held == proto.Held(gate="scope", reason="not-in-scope")
    assert status.addrs == ("tcp:1.2.3.4:5",)
    seq, back = proto.open_request(proto.seal_request(node, 3, status), session=server, last_seq=2)
    assert (seq, back) == (3, status)
    for request in (
        proto.AskRequest(token=b"t", capacity=1.0, load=0.0),
        proto.RejoinedReport(artifact=A, nonce=bytes(16)),
        proto.FailedReport(artifact=A, counter=2, reason="crash", nonce=b""),
        proto.ReturnReport(nonce=bytes(16), reason="no-quorum"),
        proto.DocsRequest(),
        proto.PeersRequest(count=proto.MAX_PEERS),
        proto.SignalRequest(to=B, data=b"x" * proto.MAX_SIGNAL),
    ):
        frame = proto.seal_request(node, 5, request)
        assert proto.open_request(frame, session=server, last_seq=4) == (5, request)


def test_requests_are_checked_on_construction_and_on_decoding() -> None:
    with pytest.raises(SchemaError):
        proto.RejoinedReport(artifact="A" * 64, nonce=b"")  # not lowercase hex
    with pytest.raises(SchemaError):
        proto.PeersRequest(count=proto.MAX_PEERS + 1)
    with pytest.raises(SchemaError):
        proto.SignalRequest(to=B, data=b"x" * (proto.MAX_SIGNAL + 1))
    with pytest.raises(SchemaError):
        proto.request_of("status", {**status_fields(), "extra": 1})
    with pytest.raises(SchemaError):
        proto.request_of("status", {**status_fields(), "estimate": {"capacity": 1.0}})
    with pytest.raises(SchemaError):
        proto.request_of("nope", {})
    node, server = session_pair()
    unknown = node.seal(wire.encode({"t": "nope", "seq": 1}))
    with pytest.raises(SchemaError):
        proto.open_request(unknown, session=server, last_seq=0)
    no_seq = node.seal(wire.encode({"t": "docs"}))
    with pytest.raises(SchemaError):
        proto.open_request(no_seq, session=server, last_seq=0)


def test_a_replayed_or_forged_request_frame_is_refused() -> None:
    node, server = session_pair()
    frame = proto.seal_request(node, 7, proto.DocsRequest())
    with pytest.raises(VerificationError) as info:
        proto.open_request(frame, session=server, last_seq=7)
    assert info.value.rule == "replay"
    forged = frame[:5] + bytes([frame[5] ^ 1]) + frame[6:]
    with pytest.raises(VerificationError) as info:
        proto.open_request(forged, session=server, last_seq=0)
    assert info.value.rule == "mac"
    with pytest.raises(SchemaError):
        server.open(b"short")


def test_a_refusal_from_a_replica_falls_back_to_safe_values() -> None:
    refusal = proto.AskRefusal(gate="scope", reason="x", detail="d", retry_after=3.0, position=2)
    assert proto.AskRefusal.from_wire(refusal.to_wire()) == refusal
    odd = proto.AskRefusal.from_wire({"retry_after": float("inf"), "position": "1"})
    assert odd == proto.AskRefusal(gate="capacity", reason="refused")


# -- session ----------------------------------------------------------------------------


def test_the_handshake_agrees_on_one_session_key_and_binds_the_challenge() -> None:
    replica, node = sess.Signer(key_for("coordinator-1")), sess.Signer(key_for("node-1"))
    server_kx = sess.KeyExchange(bytes(32 * [1]))
    challenge = sess.Challenge(
        nonce=bytes(32 * [9]),
        replica=replica.keyid,
        network="net",
        ttl=300,
        max_skew=30,
        time=float(NOW),
        kx=server_kx.public,
    )
    keys = {replica.keyid: replica.public_key}
    got = sess.Challenge.open(challenge.sign(replica), keys, limits=proto.ANSWER_LIMITS)
    assert got == challenge
    with pytest.raises(VerificationError):  # signed by a key that is not a coordinator's
        sess.Challenge.open(challenge.sign(node), keys, limits=proto.ANSWER_LIMITS)
    node_kx = sess.KeyExchange(bytes(32 * [2]))
    hello = sess.open_hello(
        sess.sign_hello(node, got, node_kx),
        nonce=challenge.nonce,
        replica=replica.keyid,
        network="net",
        kx=server_kx,
    )
    assert (hello.node, hello.pub) == (node.keyid, node.public_key)
    mine = node_kx.session(got.kx, nonce=got.nonce, node_kx=node_kx.public, server_kx=got.kx)
    assert hello.session.open(mine.seal(b"payload")) == b"payload"
    with pytest.raises(VerificationError) as info:  # a hello for another challenge
        sess.open_hello(
            sess.sign_hello(node, got, node_kx),
            nonce=bytes(32),
            replica=replica.keyid,
            network="net",
            kx=server_kx,
        )
    assert info.value.rule == "challenge"
    with pytest.raises(ValueError):
        sess.KeyExchange(b"short")
    with pytest.raises(VerificationError):
        server_kx.session(bytes(32), nonce=bytes(32), node_kx=bytes(32), server_kx=bytes(32))


# -- departure tokens -------------------------------------------------------------------


def binding(**over: object) -> departure.Binding:
    values: dict[str, object] = {
        "node": key_for("node-1").keyid,
        "pool": "p",
        "from_artifact": ZERO,
        "to_artifact": A,
        "allowlist_version": 2,
        "scope_serial": 3,
    }
    return departure.Binding(**(values | over))  # type: ignore[arg-type]


def test_a_token_is_proposed_combined_and_verified_for_its_binding() -> None:
    net = Network()
    store = net.trust_store()
    bound = binding()
    token = departure.propose_token(bound, ttl=300, now_wall=NOW + 0.5, nonce=bytes(16))
    assert (token.issued, token.expires, token.nonce) == (NOW, NOW + 300, bytes(16))
    assert departure.Binding.of(token) == bound
    payload = token.to_payload()
    assert departure.parse_token(payload) == docs.DepartureToken.from_payload(payload)
    key = net.keys["coordinator"][0]
    sig = sess.Signer(key).sign(docs.DepartureToken.TYPE, payload)
    data = departure.combine(payload, {key.keyid: sig})
    assert departure.verify_departure(store, data, bound, now_wall=NOW + 1) == token
    assert departure.token_nonce(data) == bytes(16)
    assert departure.token_nonce(b"garbage") == b"" and departure.token_nonce(None) == b""
    for other in (binding(pool="q"), binding(to_artifact=B), binding(scope_serial=4)):
        with pytest.raises(BindingError):
            departure.verify_departure(store, data, other, now_wall=NOW + 1)
    with pytest.raises(ExpiredError):  # strictly: no skew allowance on a lease
        departure.verify_departure(store, data, bound, now_wall=NOW + 300)
    with pytest.raises(WireError):
        departure.parse_token(b"\x00")


def test_the_token_ttl_is_the_replicas_or_the_default() -> None:
    assert departure.token_ttl([]) == departure.DEFAULT_TOKEN_TTL == 300
    assert departure.token_ttl([120, 60]) == 120
    assert departure.token_ttl([0]) == departure.DEFAULT_TOKEN_TTL


def test_merged_answers_show_the_most_fundamental_refusal() -> None:
    capacity = proto.AskRefusal(gate="capacity", reason="headroom", retry_after=30.0)
    scope = proto.AskRefusal(gate="scope", reason="not-in-scope", retry_after=300.0)
    short = proto.AskRefusal(gate="scope", reason="scope-changed", retry_after=1.0)
    merged = departure.merge_answers(
        [capacity, short, scope], signatures=1, threshold=2, errors=["x"]
    )
    assert (merged.gate, merged.reason, merged.retry_after) == ("scope", "not-in-scope", 300.0)
    unknown = proto.AskRefusal(gate="other", reason="r")
    assert departure.merge_answers(
        [unknown, capacity], signatures=0, threshold=1, errors=[]
    ).gate == ("capacity")


def test_merged_answers_without_refusals_say_no_quorum_or_the_errors() -> None:
    partial = departure.merge_answers([], signatures=1, threshold=2, errors=["e"])
    assert partial == departure.AskOutcome(
        gate="capacity",
        reason="no-quorum",
        detail="1 of 2 replica signatures",
        retry_after=departure.NO_QUORUM_RETRY,
    )
    failed = departure.merge_answers([], signatures=0, threshold=2, errors=["a", "b"])
    assert failed == departure.AskOutcome(error="a; b")
    nothing = departure.merge_answers([], signatures=0, threshold=1, errors=[])
    assert nothing.error == "no replica answered"


def test_origin_bytes_are_checked_chunk_by_chunk() -> None:
    data = bytes(range(256)) * 5
    chunk = 512
    chunks = tuple(
        bytes.fromhex(sha256_hex(data[i : i + chunk])) for i in range(0, len(data), chunk)
    )
    release = docs.Release(
        artifact=sha256_hex(data),
        name="v",
        counter=1,
        length=len(data),
        chunk_size=chunk,
        chunks=chunks,
        issued=NOW,
        expires=NOW + 100,
    )
    assert check_artifact(data, release, 10_000) == ""
    assert check_artifact(data, release, 100) == "more than 100 bytes"
    assert "the release says" in check_artifact(data[:-1], release, 10_000)
    bad = data[:600] + b"\xff" + data[601:]
    assert check_artifact(bad, release, 10_000) == "chunk 1 does not match the release record"


def test_answers_have_one_wire_form_each() -> None:
    peer = proto.Peer(node=A, pool="p", addrs=("tcp:h:1",), observed="1.2.3.4:5")
    assert proto.PeersAnswer(peers=(peer,)).to_wire() == {
        "ok": True,
        "peers": [{"node": A, "pool": "p", "addrs": ["tcp:h:1"], "observed": "1.2.3.4:5"}],
    }
    assert proto.DocsAnswer(docs=(b"d",)).to_wire() == {"ok": True, "docs": [b"d"]}
    assert proto.FailedAck(paused=True).to_wire() == {"ok": True, "paused": True}
    assert proto.Ack().to_wire() == {"ok": True}
    assert proto.ErrorAnswer(error="e", detail="d").to_wire() == {
        "ok": False,
        "error": "e",
        "detail": "d",
    }
    grant = proto.AskGrant(replica=A, sig=bytes(64), reason="granted", lease_expires=1.0)
    assert grant.to_wire()["granted"] is True


def test_pushes_have_one_wire_form_each() -> None:
    assert proto.DocumentPush(doc=b"n", nudge=True).to_wire() == {"push": "nudge", "doc": b"n"}
    assert proto.DocumentPush(doc=b"d").to_wire() == {"push": "doc", "doc": b"d"}
    assert proto.SignalPush(sender=A, data=b"x").to_wire() == {
        "push": "signal",
        "from": A,
        "data": b"x",
    }


def test_each_answer_decodes_back_for_the_kind_it_answers() -> None:
    peer = proto.Peer(node=A, pool="p", addrs=("tcp:h:1",), observed="1.2.3.4:5")
    grant = proto.AskGrant(replica=A, sig=bytes(64), reason="granted", lease_expires=1.0)
    refusal = proto.AskRefusal(gate="capacity", reason="full", retry_after=2.0, position=3)
    cases: list[tuple[str, proto.Answer]] = [
        ("status", proto.Ack()),
        ("ask", grant),
        ("ask", refusal),
        ("rejoined", proto.Ack()),
        ("failed", proto.FailedAck(paused=False)),
        ("return", proto.Ack()),
        ("docs", proto.DocsAnswer(docs=(b"d", b"e"))),
        ("peers", proto.PeersAnswer(peers=(peer,))),
        ("signal", proto.Ack()),
        ("ice", proto.IceAnswer(servers=(proto.IceServer(urls="stun:h:1"),), ttl=0)),
    ]
    assert {kind for kind, _ in cases} == set(proto.REQUESTS) == set(proto.ANSWERS)
    for kind, answer in cases:
        on_the_wire = wire.decode(wire.encode({**answer.to_wire(), "id": 7}))
        assert proto.answer_of(kind, on_the_wire) == answer, kind
        error = proto.ErrorAnswer(error="binding", detail="no")
        assert proto.answer_of(kind, {**error.to_wire(), "id": 7}) == error, kind


def test_a_malformed_answer_is_a_schema_error() -> None:
    bad: list[tuple[str, dict[str, object]]] = [
        ("status", {"id": 1}),  # neither ok nor an error
        ("status", {"id": 1, "ok": True, "extra": 1}),
        ("failed", {"id": 1, "ok": True}),  # no ``paused``
        ("docs", {"id": 1, "ok": True, "docs": ["text"]}),
        ("peers", {"id": 1, "ok": True, "peers": [{"node": "zz"}]}),
        ("ask", {"id": 1, "ok": True, "granted": True, "replica": A, "sig": "not bytes"}),
        ("ask", {"id": 1, "ok": False, "error": 3, "detail": ""}),
        ("nope", {"id": 1, "ok": True}),
    ]
    for kind, msg in bad:
        with pytest.raises(SchemaError):
            proto.answer_of(kind, msg)
    # the answer of one kind is not another's: a docs answer does not pass for an ack
    with pytest.raises(SchemaError):
        proto.answer_of("status", proto.DocsAnswer(docs=()).to_wire())
    # a refusal stays lenient: any ask answer that is ok and not a grant
    assert proto.answer_of("ask", {"id": 1, "ok": True}) == proto.AskRefusal(
        gate="capacity", reason="refused"
    )


def test_answers_and_pushes_are_validated_on_construction() -> None:
    with pytest.raises(SchemaError):
        proto.FailedAck(paused=1)  # type: ignore[arg-type]
    with pytest.raises(SchemaError):
        proto.Peer(node="zz", pool="p", addrs=(), observed="")
    with pytest.raises(SchemaError):
        proto.SignalPush(sender=A, data=bytes(proto.MAX_SIGNAL + 1))
    with pytest.raises(SchemaError):
        proto.AskRefusal(gate="g", reason="r", retry_after=float("nan"))


def test_each_push_decodes_back() -> None:
    pushes: list[proto.Push] = [
        proto.DocumentPush(doc=b"n", nudge=True),
        proto.DocumentPush(doc=b"d"),
        proto.SignalPush(sender=A, data=b"x"),
        proto.SlotPush(payload=b"p", sig=bytes(64)),
    ]
    for push in pushes:
        assert proto.push_of(wire.decode(wire.encode(push.to_wire()))) == push
    for bad in (
        {"push": "other", "doc": b"d"},
        {"push": "doc", "doc": "text"},
        {"push": "doc", "doc": b"d", "extra": 1},
        {"push": "signal", "from": "zz", "data": b"x"},
        {"push": "slot", "p": b"p", "s": bytes(63)},  # not a signature's length
        {"push": "slot", "p": bytes(513), "s": bytes(64)},  # over the payload's limit
        {"push": "slot", "p": b"p"},
    ):
        with pytest.raises(SchemaError):
            proto.push_of(bad)


def test_a_slot_push_names_a_replica_a_node_and_a_pool_and_is_signed() -> None:
    """The replica's nudge to the head of its queue (P7 item 3): opened only with a key of
    the root's coordinator role, only by the node it names; what it says is checked."""
    key = key_for("coordinator-1")
    freed = proto.SlotFreed(replica=key.keyid, node=A, pool="p", time=NOW)
    push = proto.SlotPush.sign(sess.Signer(key), freed)
    assert push.to_wire()["push"] == "slot"
    assert push.open(coordinators={key.keyid: key.public_key}, node=A) == freed
    other = key_for("coordinator-2")
    for coordinators, node in (
        ({other.keyid: other.public_key}, A),  # not the signer's key
        ({key.keyid: other.public_key}, A),  # a key id with someone else's key
        ({key.keyid: key.public_key}, B),  # addressed to another node
    ):
        with pytest.raises(VerificationError):
            push.open(coordinators=coordinators, node=node)
    garbled = proto.SlotPush(payload=b"\xc1", sig=push.sig)
    with pytest.raises(WireError):  # the sender's bytes
        garbled.open(coordinators={key.keyid: key.public_key}, node=A)
    for bad in (
        {"replica": "zz", "node": A, "pool": "p", "time": 1.0},
        {"replica": A, "node": A, "pool": "", "time": 1.0},
        {"replica": A, "node": A, "pool": "p", "time": -1.0},
    ):
        with pytest.raises(SchemaError):
            proto.SlotFreed(**bad)  # type: ignore[arg-type]
