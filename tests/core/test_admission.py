"""The admission rules (``core.admission``): the hello, standing, subnets, proof of work."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest

from p2pupdate.core import admission, crypto, session
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import SchemaError

NOW = 1_800_000_000


def _keys(tag: str) -> crypto.SigningKey:
    return crypto.SigningKey.from_seed(hashlib.sha256(tag.encode()).digest())


ROOT_KEY, OPERATOR, OTHER = _keys("root"), _keys("operator"), _keys("other")


def _root() -> docs.Root:
    keys = {k.keyid: k.public_key for k in (ROOT_KEY, OPERATOR, OTHER)}
    roles = {
        r: docs.Role(keys=(OPERATOR.keyid if r == "operator" else ROOT_KEY.keyid,), threshold=1)
        for r in docs.ROLES
    }
    return docs.Root(
        version=1, issued=NOW - 10, expires=NOW + 86400, network="t", keys=keys, roles=roles
    )


ROOT = _root()


def _config(**over: object) -> docs.NetworkConfig:
    base = admission.default_config("t").to_obj()
    base.update(over)
    return docs.NetworkConfig.from_obj(base)


def _member(node: str, *, signer: crypto.SigningKey = OPERATOR, expires: int = NOW + 60) -> bytes:
    doc = docs.Member(node=node, pool="edge", issued=NOW - 1, expires=expires)
    return doc.sign([signer]).to_wire()


def test_enrolled_admits_only_a_fresh_member_document_naming_the_node() -> None:
    cfg = _config(admission="enrolled")
    node = _keys("n").keyid
    ok = admission.admit_hello(cfg, node=node, member=_member(node), root=ROOT, now=NOW)
    assert ok == admission.Admitted(member_expires=NOW + 60, pool="edge")
    cases = {
        "admission/not-enrolled": None,
        "admission/bad-member": _member(_keys("other-node").keyid),
    }
    for reason, member in cases.items():
        got = admission.admit_hello(cfg, node=node, member=member, root=ROOT, now=NOW)
        assert isinstance(got, admission.Refused) and got.reason == reason, got
    for bad in (
        _member(node, signer=OTHER),  # not the operator role
        _member(node, expires=NOW - 3600),  # expired
        b"\x93garbage",
    ):
        got = admission.admit_hello(cfg, node=node, member=bad, root=ROOT, now=NOW)
        assert isinstance(got, admission.Refused) and got.reason == "admission/bad-member", got


def test_open_admits_an_id_only_with_its_proof_of_work() -> None:
    key, tries = admission.make_pow_key(8, _seeds())
    assert admission.leading_zero_bits(key.keyid) >= 8 and tries >= 1
    cfg = _config(pow_bits=8)
    assert admission.admit_hello(cfg, node=key.keyid, member=None, root=ROOT, now=NOW) == (
        admission.Admitted()
    )
    weak = next(k for k in map(_keys, map(str, range(100))) if k.keyid[0] in "89abcdef")
    got = admission.admit_hello(cfg, node=weak.keyid, member=None, root=ROOT, now=NOW)
    assert isinstance(got, admission.Refused) and got.reason == "admission/proof-of-work"
    assert "8 leading zero bits" in got.detail


def _seeds() -> Callable[[], bytes]:
    counter = itertools.count()
    return lambda: hashlib.sha256(b"seed%d" % next(counter)).digest()


def test_make_pow_key_gives_up_past_max_tries_and_refuses_absurd_bits() -> None:
    with pytest.raises(ValueError, match="no key with 30 bits"):
        admission.make_pow_key(30, _seeds(), max_tries=50)
    with pytest.raises(ValueError, match="bits must be"):
        admission.make_pow_key(docs.MAX_POW_BITS + 1, _seeds())


def test_leading_zero_bits() -> None:
    assert admission.leading_zero_bits("f" + "0" * 63) == 0
    assert admission.leading_zero_bits("1" + "0" * 63) == 3
    assert admission.leading_zero_bits("00" + "8" + "0" * 61) == 8
    assert admission.leading_zero_bits("0" * 64) == 256


def test_standing_open_needs_a_session_history_enrolled_needs_a_fresh_member() -> None:
    cfg = _config(standing_s=3600)

    def open_(first: float, last: float, now: float = NOW) -> bool:
        return admission.has_standing(
            cfg, first_seen=first, last_seen=last, member_expires=None, now=now
        )

    assert not open_(NOW - 7200, NOW - 7200), "one hello long ago earns nothing"
    assert not open_(NOW - 3599, NOW), "a history shorter than standing_s"
    assert open_(NOW - 3600, NOW), "seen again standing_s after first seen"
    recent = admission.STANDING_RECENT
    assert open_(NOW - recent - 3600, NOW - recent)
    assert not open_(NOW - recent - 3601, NOW - recent - 1), "not seen lately: not counted"
    enrolled = _config(admission="enrolled")

    def enrolled_(expires: int | None) -> bool:
        return admission.has_standing(
            enrolled, first_seen=NOW, last_seen=NOW, member_expires=expires, now=NOW
        )

    assert enrolled_(NOW) and not enrolled_(NOW - 1) and not enrolled_(None)


def test_an_uncounted_id_unseen_for_a_week_is_forgettable_a_counted_one_never() -> None:
    cfg = _config(standing_s=3600)
    week = admission.FORGET_UNCOUNTED

    def forget(first: float, seen: float) -> bool:
        return admission.forgettable(cfg, first_seen=first, member_expires=None, seen=seen, now=NOW)

    assert forget(NOW - week - 1, NOW - week - 1)
    assert not forget(NOW - week + 1, NOW - week + 1), "seen within the week"
    enrolled = _config(admission="enrolled")
    assert not admission.forgettable(
        enrolled, first_seen=0, member_expires=NOW + 60, seen=NOW - week - 1, now=NOW
    ), "a counted (enrolled) node is never forgotten"


def test_subnets_are_slash_24_and_slash_48() -> None:
    assert admission.subnet_of("192.0.2.77") == "192.0.2.0/24"
    assert admission.subnet_of("::ffff:192.0.2.9") == "192.0.2.0/24"
    assert admission.subnet_of("[2001:db8:1:2::5]") == "2001:db8:1::/48"
    assert admission.subnet_of("example.com") is None
    assert admission.host_of("192.0.2.7:4000") == "192.0.2.7"
    assert admission.host_of("2001:db8::1:4000") == "2001:db8::1"
    seen = ["192.0.2.0/24", "192.0.2.0/24", "198.51.100.0/24"]
    assert not admission.under_cap(seen, "192.0.2.0/24", 2)
    assert admission.under_cap(seen, "198.51.100.0/24", 2)


def test_the_network_document_refuses_bad_values() -> None:
    for over in ({"subnet_leases": 0}, {"pow_bits": 41}, {"admission": "anyone"}, {"version": 0}):
        with pytest.raises(SchemaError):
            _config(**over)


def test_a_hello_carries_a_member_document_outside_its_signed_payload() -> None:
    node = session.Signer(_keys("hello-node"))
    server_kx = session.KeyExchange(bytes(range(32)))
    challenge = session.Challenge(
        nonce=bytes(32),
        replica="a" * 64,
        network="t",
        ttl=60,
        max_skew=5,
        time=1.0,
        kx=server_kx.public,
    )
    member = _member(node.keyid)
    raw = session.sign_hello(
        node, challenge, session.KeyExchange(bytes(range(1, 33))), member=member
    )
    got = session.open_hello(raw, nonce=bytes(32), replica="a" * 64, network="t", kx=server_kx)
    assert got.member == member
    plain = session.sign_hello(node, challenge, session.KeyExchange(bytes(range(1, 33))))
    assert (
        session.open_hello(
            plain, nonce=bytes(32), replica="a" * 64, network="t", kx=server_kx
        ).member
        is None
    )
