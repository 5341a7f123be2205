"""Framing, decode limits and msgpack bombs (README "Protocol": a byte cap before parsing).

Each bomb asserts the *exact* ``WireError`` subclass: the class is the stable code an
operator or a peer-scoring rule matches on.  The property tests check the promise in
``wire.decode``'s docstring ("raises only ``WireError`` subclasses, whatever the input") and
its analogue for envelopes and every document kind (only ``P2PUpdateError``).  Hypothesis
runs derandomized with a fixed example budget, so the suite is fast and deterministic.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import struct
from functools import partial
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pupdate.core import admission, wire
from p2pupdate.core.crypto import Envelope
from p2pupdate.core.documents import (
    DOCUMENT_TYPES,
    Document,
    Member,
    open_heartbeat,
    open_root,
    open_signed,
)
from p2pupdate.core.errors import (
    DepthError,
    DuplicateKeyError,
    ExtTypeError,
    MalformedError,
    NonStrKeyError,
    OversizeError,
    P2PUpdateError,
    SchemaError,
    TrailingBytesError,
    TruncatedError,
    WireError,
)
from p2pupdate.core.trust import TrustStore

from .harness import NOW, Network, assert_raises_exactly, node_id, sha256_hex

FAST = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Signature checks cost more per example; fewer examples, same determinism.
SLOWER = settings(FAST, max_examples=150)

M = wire.MESSAGE_LIMITS


def decode_fails(exc: type[WireError], data: bytes, limits: wire.Limits = M) -> WireError:
    err: WireError = assert_raises_exactly(exc, lambda: wire.decode(data, limits))
    return err


# -- framing --------------------------------------------------------------------------------


def test_frame_round_trip() -> None:
    payloads = [b"", b"x", b"hello" * 100, bytes(range(256))]
    stream = b"".join(wire.frame(p) for p in payloads)
    assert wire.FrameDecoder().feed(stream) == payloads
    assert list(wire.iter_frames(stream)) == payloads


def test_frame_header_is_u32_big_endian() -> None:
    assert wire.frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_split_feeds_byte_by_byte() -> None:
    payloads = [b"first", b"", b"third" * 50]
    stream = b"".join(wire.frame(p) for p in payloads)
    dec = wire.FrameDecoder()
    got: list[bytes] = []
    for i in range(len(stream)):
        got += dec.feed(stream[i : i + 1])
    assert got == payloads
    assert dec.pending == 0


@given(cuts=st.lists(st.integers(0, 400), max_size=8))
@FAST
def test_split_feeds_anywhere(cuts: list[int]) -> None:
    payloads = [b"a" * 10, b"b" * 200, b"", b"c" * 77]
    stream = b"".join(wire.frame(p) for p in payloads)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    dec = wire.FrameDecoder()
    got: list[bytes] = []
    for a, b in itertools.pairwise(bounds):
        got += dec.feed(stream[a:b])
    assert got == payloads


def test_frame_at_exact_limit() -> None:
    dec = wire.FrameDecoder(max_frame=100)
    assert dec.feed(wire.frame(b"z" * 100, max_frame=100)) == [b"z" * 100]


def test_oversize_header_rejected_before_body_arrives() -> None:
    dec = wire.FrameDecoder(max_frame=100)
    assert dec.feed(b"\x00\x00") == []  # half a header: nothing to judge yet
    with pytest.raises(OversizeError) as info:
        dec.feed(b"\x00\x65")  # 101, and not one byte of body sent
    assert type(info.value) is OversizeError
    # The link's framing is lost: the decoder stays dead.
    assert_raises_exactly(MalformedError, lambda: dec.feed(b"\x00\x00\x00\x00"))


def test_huge_frame_header_rejected_at_once() -> None:
    dec = wire.FrameDecoder()
    assert_raises_exactly(OversizeError, lambda: dec.feed(b"\xff\xff\xff\xff"))


def test_oversize_header_after_good_frames() -> None:
    dec = wire.FrameDecoder(max_frame=10)
    assert dec.feed(wire.frame(b"ok")) == [b"ok"]
    assert_raises_exactly(OversizeError, lambda: dec.feed(struct.pack(">I", 11)))


def test_frame_refuses_oversize_payload() -> None:
    assert_raises_exactly(OversizeError, lambda: wire.frame(b"x" * 11, max_frame=10))


def test_iter_frames_with_partial_frame() -> None:
    stream = wire.frame(b"whole") + wire.frame(b"partial")[:-1]
    assert_raises_exactly(TruncatedError, lambda: list(wire.iter_frames(stream)))


# -- decode: the bombs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",  # array32
        b"\xdf\xff\xff\xff\xff",  # map32
        b"\xdb\xff\xff\xff\xff",  # str32
        b"\xc6\xff\xff\xff\xff",  # bin32
    ],
    ids=["array32", "map32", "str32", "bin32"],
)
def test_huge_declared_length_over_the_cap(header: bytes) -> None:
    """2^32-1 entries or bytes claimed in 5 bytes: over every cap, refused before any
    allocation (by the cap, which is checked first)."""
    for limits in (M, wire.DOCUMENT_LIMITS):
        decode_fails(OversizeError, header + b"\x00\x00", limits)


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff",
        b"\xc6\xff\xff\xff\xff",
    ],
    ids=["array32", "map32", "str32", "bin32"],
)
def test_huge_declared_length_past_the_end(header: bytes) -> None:
    """Even with caps that would allow it, a length past the end of the input is refused
    without allocating (each element takes at least one byte)."""
    lax = wire.Limits(
        max_bytes=1 << 20,
        max_container_len=1 << 33,
        max_str_len=1 << 33,
        max_bin_len=1 << 33,
        max_items=1 << 33,
    )
    decode_fails(TruncatedError, header + b"\x00\x00", lax)


@pytest.mark.parametrize(
    "data",
    [
        b"\x95\x01",  # fixarray of 5, one element
        b"\x85\xa1a\x01",  # fixmap of 5, one pair
        b"\xdc\x00\x05\x01",  # array16 of 5
        b"\xde\x00\x05\xa1a\x01",  # map16 of 5
        b"\xd9\xc8abc",  # str8 of 200
        b"\xda\x01\x00abc",  # str16 of 256
        b"\xc4\xc8abc",  # bin8 of 200
        b"\xc5\x01\x00abc",  # bin16 of 256
        b"\xa5ab",  # fixstr of 5
        b"\xcd\x01",  # uint16 missing a byte
        b"\xcb\x00\x00",  # float64 missing bytes
        b"\xdc\x00",  # array16 length missing a byte
        b"\xc6\x00\x00",  # bin32 length missing bytes
    ],
)
def test_declared_length_runs_past_the_end(data: bytes) -> None:
    decode_fails(TruncatedError, data)


def test_container_over_its_cap() -> None:
    limits = wire.Limits(max_container_len=3)
    wire.decode(wire.encode([1, 2, 3]), limits)
    decode_fails(OversizeError, wire.encode([1, 2, 3, 4]), limits)
    decode_fails(OversizeError, wire.encode({"a": 1, "b": 2, "c": 3, "d": 4}), limits)


def test_string_and_binary_over_their_caps() -> None:
    limits = wire.Limits(max_str_len=4, max_bin_len=4)
    assert wire.decode(wire.encode(["abcd", b"abcd"]), limits) == ["abcd", b"abcd"]
    decode_fails(OversizeError, wire.encode("abcde"), limits)
    decode_fails(OversizeError, wire.encode(b"abcde"), limits)


def test_too_many_items() -> None:
    limits = wire.Limits(max_items=10)
    wire.decode(wire.encode([0] * 9), limits)  # 9 ints + the array
    decode_fails(OversizeError, wire.encode([0] * 10), limits)
    decode_fails(OversizeError, wire.encode([[0] * 5, [0] * 5]), limits)


def _nested(depth: int, leaf: bytes = b"\x01") -> bytes:
    return b"\x91" * depth + leaf


def test_nesting_at_the_depth_limit_is_accepted() -> None:
    limits = wire.Limits(max_depth=8)
    assert wire.decode(_nested(8), limits) == [[[[[[[[1]]]]]]]]


def test_nesting_deeper_than_the_limit() -> None:
    limits = wire.Limits(max_depth=8)
    decode_fails(DepthError, _nested(9), limits)
    decode_fails(DepthError, b"\x81\xa1k" * 9 + b"\x01", limits)  # maps count too
    decode_fails(DepthError, b"\x91\x81\xa1k" * 5 + b"\x01", limits)  # and mixes


def test_deep_nesting_bomb() -> None:
    """100,000 nested one-element arrays: refused by the scanner, not a RecursionError or
    the C decoder's stack limit."""
    bomb = _nested(100_000)
    decode_fails(DepthError, bomb, wire.Limits(max_bytes=1 << 20))
    decode_fails(DepthError, b"\x91" * 9000 + b"\x90", M)


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\x01\x02",  # {1: 2}
        b"\x81\xc4\x01k\x02",  # {b"k": 2}
        b"\x81\xc0\x02",  # {None: 2}
        b"\x81\xc3\x02",  # {True: 2}
        b"\x81\xcb" + b"\x00" * 8 + b"\x02",  # {0.0: 2}
        b"\x81\x91\x01\x02",  # {[1]: 2}
        b"\x81\x81\xa1a\x01\x02",  # {{"a": 1}: 2}
        b"\x81\xa1a\x81\x01\x02",  # {"a": {1: 2}}: nested
        b"\x92\x01\x81\xc4\x00\x02",  # [1, {b"": 2}]: inside an array
    ],
    ids=["int", "bytes", "nil", "bool", "float", "array", "map", "nested-int", "nested-bytes"],
)
def test_non_str_map_keys(data: bytes) -> None:
    decode_fails(NonStrKeyError, data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xd4\x01\x00",  # fixext1
        b"\xd5\x01\x00\x00",  # fixext2
        b"\xd6\x01" + b"\x00" * 4,  # fixext4
        b"\xd7\x01" + b"\x00" * 8,  # fixext8
        b"\xd8\x01" + b"\x00" * 16,  # fixext16
        b"\xc7\x03\x05abc",  # ext8
        b"\xc8\x00\x03\x05abc",  # ext16
        b"\xc9\x00\x00\x00\x03\x05abc",  # ext32
        b"\xd6\xff\x00\x00\x00\x00",  # the timestamp extension (-1)
        b"\x92\x01\xd4\x01\x00",  # inside an array
        b"\x81\xa1t\xc7\x00\x01",  # empty ext8 as a map value
    ],
    ids=[
        "fixext1",
        "fixext2",
        "fixext4",
        "fixext8",
        "fixext16",
        "ext8",
        "ext16",
        "ext32",
        "timestamp",
        "in-array",
        "in-map",
    ],
)
def test_ext_types(data: bytes) -> None:
    decode_fails(ExtTypeError, data)


def test_ext_type_from_the_encoder() -> None:
    decode_fails(ExtTypeError, msgpack.packb(msgpack.ExtType(5, b"payload")))


@pytest.mark.parametrize(
    "data",
    [b"\x01\x02", b"\xc0\xc0", b"\x90\x00", wire.encode({"a": 1}) + b"\x00", b"\xa1a\xa1b"],
)
def test_trailing_bytes(data: bytes) -> None:
    decode_fails(TrailingBytesError, data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x82\xa1a\x01\xa1a\x02",  # {"a": 1, "a": 2}
        b"\x82\xa1a\x01\xa1a\x01",  # same value twice
        b"\x91\x82\xa1k\x90\xa1k\x90",  # nested in an array
        b"\x81\xa1o\x82\xa1x\x01\xa1x\x02",  # nested in a map
    ],
)
def test_duplicate_map_keys(data: bytes) -> None:
    decode_fails(DuplicateKeyError, data)


def test_oversize_input() -> None:
    limits = wire.Limits(max_bytes=100)
    ok = wire.encode(b"x" * 98)  # 2-byte header + 98
    assert len(ok) == 100
    wire.decode(ok, limits)
    decode_fails(OversizeError, wire.encode(b"x" * 99), limits)
    decode_fails(OversizeError, b"\x00" * (M.max_bytes + 1), M)


@pytest.mark.parametrize("data", [b"\xc1", b"\x91\xc1", b"\x81\xa1a\xc1", b"\xc1\x00"])
def test_reserved_byte(data: bytes) -> None:
    decode_fails(MalformedError, data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xa2\xff\xfe",  # not UTF-8 at all
        b"\xa2\xc0\xaf",  # overlong "/"
        b"\xa3\xed\xa0\x80",  # a UTF-16 surrogate
        b"\xa1\x80",  # lone continuation byte
        b"\x81\xa2\xff\xfe\x01",  # as a map key
    ],
    ids=["garbage", "overlong", "surrogate", "continuation", "key"],
)
def test_invalid_utf8(data: bytes) -> None:
    decode_fails(MalformedError, data)


def test_empty_input() -> None:
    decode_fails(TruncatedError, b"")


def test_not_bytes() -> None:
    bad_inputs: list[Any] = ["text", None, 5, [1]]
    for bad in bad_inputs:
        assert_raises_exactly(MalformedError, partial(wire.decode, bad))


def test_bytes_like_inputs() -> None:
    data = wire.encode({"k": [1, b"v"]})
    for form in (data, bytearray(data), memoryview(data)):
        assert wire.decode(form) == {"k": [1, b"v"]}  # type: ignore[arg-type]  # bytes-like is accepted


def test_schema_checks_are_exact() -> None:
    fields = {"a": wire.uint(), "b": wire.text()}
    assert wire.check_fields({"a": 1, "b": "x"}, fields, where="t") == {"a": 1, "b": "x"}
    for bad in (
        {"a": 1},
        {"a": 1, "b": "x", "c": 0},
        {"a": True, "b": "x"},
        {"a": -1, "b": "x"},
        [1],
    ):
        assert_raises_exactly(SchemaError, partial(wire.check_fields, bad, fields, where="t"))


# -- properties -------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
#: Any value msgpack can carry without ext types (str keys only, as on our wire).
values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
_DEEP = wire.Limits(max_depth=64)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, byte in edits:
        out[pos % len(out)] = byte
    return bytes(out if cut is None else out[: cut % (len(out) + 1)])


_edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4)
_cut = st.none() | st.integers(0, 1 << 20)
#: Bytes that are mostly msgpack: a valid encoding with a few bytes changed or cut off.
near_msgpack = st.builds(
    lambda v, e, c: _mutate(wire.encode(v) or b"\xc0", e, c), values, _edits, _cut
)
any_bytes = st.binary(max_size=300) | near_msgpack


@given(values)
@FAST
def test_round_trip(value: Any) -> None:
    assert wire.decode(wire.encode(value), _DEEP) == value


@given(any_bytes)
@FAST
def test_decode_raises_only_wire_errors(data: bytes) -> None:
    for limits in (M, wire.Limits(max_depth=2, max_container_len=3, max_str_len=5, max_items=8)):
        with contextlib.suppress(WireError):
            wire.decode(data, limits)


@given(any_bytes)
@FAST
def test_frame_decoder_raises_only_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        list(wire.iter_frames(data, max_frame=64))


def _envelope_like() -> st.SearchStrategy[bytes]:
    sig = st.tuples(
        st.sampled_from(["ab" * 32, "AB" * 32, "ab"])
        | st.text(max_size=70)
        | st.binary(max_size=70),
        st.binary(min_size=63, max_size=65) | values,
    ).map(list)
    env = st.fixed_dictionaries(
        {
            "t": st.sampled_from(["allowlist", "root", "", "é", "a\x00b"]) | values,
            "p": st.binary(max_size=64) | values,
            "s": st.lists(sig | values, max_size=4) | values,
        },
        optional={"x": values},
    )
    return env.map(wire.encode)


@given(any_bytes | _envelope_like())
@FAST
def test_envelope_from_wire_raises_only_p2pupdate_errors(data: bytes) -> None:
    try:
        env = Envelope.from_wire(data)
    except P2PUpdateError:
        return
    assert isinstance(env.payload, bytes)
    assert all(len(s) == 64 for _, s in env.signatures)


# Valid payloads of every kind, to fuzz one field at a time.
_NET = Network()
_A = sha256_hex(b"A")
VALID: dict[str, Document] = {
    "root": _NET.root,
    "release": _NET.release_doc("app", counter=3),
    "allowlist": _NET.allowlist_doc(4, [_A]),
    "scope": _NET.scope_doc(_A, kind="fraction", fraction=0.25, seed=b"12345678"),
    "departure": _NET.departure_doc(node_id(1), from_artifact=_A, to_artifact=_A),
    "nudge": _NET.nudge_doc(_A),
    "heartbeat": _NET.heartbeat_doc(1),
    "network": admission.default_config("test", issued=NOW - 10),
    "member": Member(node=node_id(1), pool="edge", issued=NOW - 10, expires=NOW + 3600),
}
_PLAUSIBLE = st.sampled_from(
    [
        0, 1, 2, 1023, 1024, 5000, 2**40, 2**40 + 1, 2**53, 2**53 + 1, -1, 0.0, 0.5, 1.0,
        1.5, float("inf"), float("nan"), True, False, None, "", "x", "ab" * 32, "AB" * 32,
        "ab" * 31, b"", b"\x00" * 8, b"\x00" * 16, b"\x00" * 32, b"\x00" * 33, [], {},
        ["ab" * 32], ["ab" * 32, "ab" * 32], [b"\x00" * 32], {"keys": [], "threshold": 1},
        "nobody", "nodes", "fraction", "everyone", "serving", "root", "operator",
    ]
)  # fmt: skip


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a payload object (the first few items of each list)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def _fuzzed_payload(draw: st.DrawFn, kind: str) -> bytes:
    """A valid payload of ``kind`` with one or two places replaced, dropped or added to,
    so the fuzzer reaches the rules behind the first schema check."""
    obj = copy.deepcopy(VALID[kind].to_obj())
    for path in draw(st.lists(st.sampled_from(_paths(obj)), min_size=1, max_size=2)):
        parent: Any = obj
        try:
            for step in path[:-1]:
                parent = parent[step]
            action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
            if action == "drop" and isinstance(parent, dict):
                del parent[path[-1]]
            elif action == "add" and isinstance(parent, dict):
                parent[draw(st.text(max_size=6))] = draw(values)
            else:
                parent[path[-1]] = draw(_PLAUSIBLE | values)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit changed the shape under this path
    return wire.encode(obj)


def test_valid_examples_parse() -> None:
    """Control for the fuzzers below: the unmutated payloads are accepted."""
    for kind, doc in VALID.items():
        assert DOCUMENT_TYPES[kind].from_payload(doc.to_payload()) == doc


@pytest.mark.parametrize("kind", sorted(DOCUMENT_TYPES))
@given(data=st.data())
@FAST
def test_document_from_payload_raises_only_p2pupdate_errors(kind: str, data: st.DataObject) -> None:
    cls = DOCUMENT_TYPES[kind]
    good = VALID[kind].to_payload()
    payload = data.draw(
        any_bytes | _fuzzed_payload(kind) | st.builds(_mutate, st.just(good), _edits, _cut)
    )
    try:
        doc = cls.from_payload(payload)
    except P2PUpdateError:
        return
    assert type(doc) is cls
    assert doc.expires >= doc.issued


def _signed_examples() -> dict[str, bytes]:
    out = {kind: _NET.sign(doc) for kind, doc in VALID.items() if kind not in ("root", "heartbeat")}
    out["root"] = _NET.roots[1]
    out["heartbeat"] = _NET.heartbeat(1)
    return out


SIGNED = _signed_examples()


@pytest.mark.parametrize("kind", sorted(DOCUMENT_TYPES))
@given(data=st.data())
@SLOWER
def test_opening_signed_bytes_raises_only_p2pupdate_errors(kind: str, data: st.DataObject) -> None:
    """The whole path a node takes on received bytes: envelope, type, signatures, payload."""
    raw = data.draw(any_bytes | st.builds(_mutate, st.just(SIGNED[kind]), _edits, _cut))
    try:
        if kind == "root":
            open_root(raw, signed_by=_NET.root)
        elif kind == "heartbeat":
            open_heartbeat(raw)
        else:
            open_signed(DOCUMENT_TYPES[kind], raw, _NET.root)
    except P2PUpdateError:
        pass


_STATE = _NET.trust_store().to_bytes()


@given(any_bytes | st.builds(_mutate, st.just(_STATE), _edits, _cut))
@SLOWER
def test_trust_state_from_bytes_raises_only_p2pupdate_errors(data: bytes) -> None:
    with contextlib.suppress(P2PUpdateError):
        TrustStore.from_bytes(data)


def test_signed_examples_open() -> None:
    """Control for the fuzzer above."""
    store = _NET.trust_store()
    for kind, raw in SIGNED.items():
        if kind == "root":
            assert open_root(raw).doc == _NET.root
        elif kind == "heartbeat":
            assert open_heartbeat(raw).doc == VALID["heartbeat"]
        else:
            assert store.verify(DOCUMENT_TYPES[kind], raw, NOW).doc == VALID[kind]


# -- a schema error names the bad value ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (float("nan"), "got nan"),
        (float("inf"), "got inf"),
        (-1.5, "got -1.5"),
        (True, "got True"),
        (None, "got None"),
        ("12", "got '12'"),
        ([1.0], "got a list of 1 entries"),
    ],
)
def test_a_schema_error_names_the_bad_value(value: Any, got: str) -> None:
    with pytest.raises(SchemaError) as caught:
        wire.nonneg_float()("capacity", value)
    assert str(caught.value) == f"field 'capacity': expected finite number in [0, 1e+18], {got}"


@pytest.mark.parametrize(
    "value",
    ["x" * 100_000, b"\xff" * 100_000, 2**4000, list(range(10_000)), object()],
    ids=["str", "bytes", "int", "list", "object"],
)
def test_the_value_named_is_bounded(value: Any) -> None:
    with pytest.raises(SchemaError) as caught:
        wire.uint()("n", value)
    shown = str(caught.value).partition(", got ")[2]
    assert shown and len(shown) <= wire.MAX_SHOWN


def test_hex_and_choice_checks_name_the_value_too() -> None:
    with pytest.raises(SchemaError, match=r"got 'ABC'"):
        wire.hex_digest()("artifact", "ABC")
    with pytest.raises(SchemaError, match=r"expected one of serving, draining, got 'x'"):
        wire.one_of("serving", "draining")("state", "x")
