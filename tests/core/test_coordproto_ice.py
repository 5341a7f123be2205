"""The ``ice`` request and its answer (``coordproto``), the ICE URL rule (``core/turn``)
and the signal relay's token bucket (``coordinator/ratelimit``): one wire form each, and
everything out of bounds refused by name."""

from __future__ import annotations

import pytest

from coordinator.ratelimit import Bucket
from p2pupdate.core import coordproto as proto
from p2pupdate.core import turn, wire
from p2pupdate.core.errors import SchemaError


def test_an_ice_answer_has_one_wire_form_and_decodes_back() -> None:
    cred = turn.mint(secret=b"s", node="ab" * 32, expires=1_800_000_600)
    answer = proto.IceAnswer(
        servers=(
            proto.IceServer(urls="stun:198.18.0.9:3478"),
            proto.IceServer(
                urls="turn:198.18.0.9:3478?transport=udp",
                username=cred.username,
                credential=cred.password,
            ),
        ),
        ttl=600,
    )
    assert answer.to_wire() == {
        "ok": True,
        "servers": [
            {"urls": "stun:198.18.0.9:3478", "username": None, "credential": None},
            {
                "urls": "turn:198.18.0.9:3478?transport=udp",
                "username": cred.username,
                "credential": cred.password,
            },
        ],
        "ttl": 600,
    }
    on_the_wire = wire.decode(wire.encode({**answer.to_wire(), "id": 3}))
    assert proto.answer_of("ice", on_the_wire) == answer
    assert [s.as_aiortc() for s in answer.servers] == [
        {"urls": "stun:198.18.0.9:3478"},
        {
            "urls": "turn:198.18.0.9:3478?transport=udp",
            "username": cred.username,
            "credential": cred.password,
        },
    ]
    assert proto.request_of("ice", {}) == proto.IceRequest()
    with pytest.raises(SchemaError):
        proto.request_of("ice", {"node": "someone else"})  # a node asks for itself only


@pytest.mark.parametrize(
    "servers",
    [
        [{"urls": "http://x", "username": None, "credential": None}],
        [{"urls": "stun:h", "username": "u", "credential": None}],  # half a credential
        [{"urls": "stun:h", "username": "", "credential": ""}],
        [{"urls": "stun:h", "username": None}],
        [{"urls": "stun:h", "username": None, "credential": None}] * (proto.MAX_ICE_SERVERS + 1),
        [{"urls": "turn:h", "username": "u" * 200, "credential": "c"}],
    ],
)
def test_a_malformed_ice_answer_is_a_schema_error(servers: list[dict[str, object]]) -> None:
    with pytest.raises(SchemaError):
        proto.answer_of("ice", {"id": 1, "ok": True, "servers": servers, "ttl": 0})


def test_an_ice_ttl_over_a_day_is_refused() -> None:
    with pytest.raises(SchemaError):
        proto.IceAnswer(servers=(), ttl=proto.MAX_ICE_TTL + 1)


@pytest.mark.parametrize(
    "url",
    [
        "stun:198.18.0.9",
        "stun:stun.example.org:3478",
        "turn:[2001:db8::1]:3478?transport=tcp",
        "turns:turn.example.org:5349",
        "turn:10.0.0.1?transport=udp",
    ],
)
def test_ice_urls_that_fit(url: str) -> None:
    assert turn.check_ice_url(url) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://198.18.0.9", "is not stun:"),
        ("stun:", "is not stun:"),
        ("stun:h?transport=udp", "takes no ?transport"),
        ("turn:h:0", "port must be"),
        ("turn:h:70000", "port must be"),
        ("turn:h?transport=sctp", "is not stun:"),
        ("turn:h;x=1", "is not stun:"),
        ("turn:user@h", "is not stun:"),
        ("stun:" + "a" * turn.MAX_ICE_URL_LEN, "characters"),
        ("", "characters"),
    ],
)
def test_ice_urls_that_do_not_fit_say_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("?", r"\?")):
        turn.check_ice_url(url)


def test_a_bucket_gives_its_burst_then_its_rate_and_time_backwards_adds_nothing() -> None:
    bucket = Bucket.full(rate=20.0, burst=40.0, now=100.0)
    taken = 0
    ok = True
    while ok:
        ok, bucket = bucket.take(100.0)
        taken += ok
    assert taken == 40
    ok, bucket = bucket.take(99.0)  # a clock that ran backwards
    assert not ok
    ok, bucket = bucket.take(100.125)  # two tokens' worth (2.5)
    assert ok
    ok, bucket = bucket.take(100.125)
    assert ok
    assert not bucket.take(100.125)[0]
    ok, bucket = bucket.take(1000.0)  # a long quiet time refills only to the burst
    assert ok and bucket.tokens == pytest.approx(39.0)
    with pytest.raises(ValueError):
        Bucket.full(rate=0.0, burst=1.0, now=0.0)
