"""A staged ramp in one signed scope (README "A staged ramp in one signed scope").

Schema, the gate's "fraction in force", monotonicity, and the attacks: a tampered stage,
a ramp that would widen past its signed stages, a clock wound back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core import gates, wire
from p2pupdate.core.documents import MAX_RAMP_STAGES, Scope
from p2pupdate.core.errors import SchemaError, SignatureError
from p2pupdate.core.trust import TrustStore

from .harness import DAY, HOUR, NOW, Network, assert_rejected, flip_payload_bit, node_id

SEED = b"ramp-seed-000001"
ART = "ab" * 32
RAMP = ((0, 0.01), (HOUR, 0.1), (DAY, 1.0))


def ramp_scope(ramp: tuple[tuple[int, float], ...] = RAMP, **kw: Any) -> Scope:
    args: dict[str, Any] = {
        "serial": 1,
        "issued": NOW,
        "expires": NOW + 2 * DAY,
        "artifact": ART,
        "kind": "fraction",
        "fraction": ramp[-1][1] if ramp else 0.5,
        "seed": SEED,
        "ramp": ramp,
    }
    args.update(kw)
    return Scope(**args).checked()  # type: ignore[no-any-return]


NODES = [node_id(i) for i in range(400)]


def admitted(scope: Scope, now: int) -> set[str]:
    return {n for n in NODES if gates.in_scope(n, ART, scope=scope, now=now).ok}


# -- old documents ----------------------------------------------------------------------

#: A ramp-less scope's payload as the code before ramps encoded it (generated at e110673).
OLD_PAYLOAD = bytes.fromhex(
    "89a6697373756564ce6b49d200a765787069726573ce6b4b2380a673657269616c07a86172746966616374"
    "d94061626162616261626162616261626162616261626162616261626162616261626162616261626162"
    "616261626162616261626162616261626162616261626162a46b696e64a86672616374696f6ea56e6f64"
    "657390a86672616374696f6ecb3fd0000000000000a473656564c4083132333435363738a5666f726365c2"
)


def test_old_scope_bytes_are_unchanged() -> None:
    old = Scope.from_payload(OLD_PAYLOAD)
    assert old.ramp == ()
    assert old.to_payload() == OLD_PAYLOAD
    assert "ramp" not in wire.decode(old.to_payload(), wire.DOCUMENT_LIMITS)


def test_old_scope_still_verifies(net: Network, store: TrustStore) -> None:
    old = Scope.from_payload(OLD_PAYLOAD)
    old = dataclasses.replace(old, issued=NOW - HOUR, expires=NOW + DAY)
    signed = store.verify(Scope, net.sign(old), NOW)
    assert signed.doc == old and signed.doc.ramp == ()


# -- schema -----------------------------------------------------------------------------


def test_ramp_round_trips(net: Network, store: TrustStore) -> None:
    scope = ramp_scope()
    assert Scope.from_payload(scope.to_payload()) == scope
    signed = store.verify(Scope, net.sign(scope), NOW)
    assert signed.doc.ramp == RAMP


@pytest.mark.parametrize(
    ("obj_ramp", "fraction", "kw", "message"),
    [
        ([], 0.5, {}, "empty"),
        ([[0, 0.1], [0, 0.2]], 0.2, {}, "strictly increase"),
        ([[0, 0.2], [10, 0.1]], 0.1, {}, "must not decrease"),
        ([[0, 0.1], [10, 0.2]], 0.5, {}, "last stage"),
        ([[0, 0.1], [3 * DAY, 1.0]], 1.0, {}, "after the scope expires"),
        ([[0, 1.5]], 1.5, {}, "finite float"),
        ([[0, 0.1, 3]], 0.1, {}, "expected [after"),
        ([[-1, 0.1]], 0.1, {}, "unsigned"),
        ([[i, 0.5] for i in range(MAX_RAMP_STAGES + 1)], 0.5, {}, "more than 16"),
        ([[0, 0.0]], 0.0, {"kind": "everyone", "seed": b""}, "fraction"),
    ],
    ids=[
        "empty",
        "same-time",
        "decreasing",
        "cap-mismatch",
        "after-expiry",
        "above-one",
        "three-items",
        "negative",
        "too-many",
        "not-fraction",
    ],
)
def test_bad_ramp_is_a_schema_error(
    obj_ramp: list[Any], fraction: float, kw: dict[str, Any], message: str
) -> None:
    obj = Scope(
        serial=1,
        issued=NOW,
        expires=NOW + 2 * DAY,
        artifact=ART,
        kind="fraction",
        fraction=0.5,
        seed=SEED,
    ).to_obj()
    obj.update({"ramp": obj_ramp, "fraction": fraction, **kw})
    with pytest.raises(SchemaError) as err:
        Scope.from_obj(obj)
    assert message in str(err.value) or message == "unsigned"


def test_ramp_only_with_fraction_kind() -> None:
    with pytest.raises(SchemaError, match="only with kind 'fraction'"):
        Scope(
            serial=1, issued=NOW, expires=NOW + DAY, artifact=ART, kind="everyone", ramp=((0, 0.0),)
        ).checked()


# -- the gate ---------------------------------------------------------------------------


def test_fraction_in_force_follows_the_stages() -> None:
    scope = ramp_scope()
    assert gates.fraction_in_force(scope, NOW - 1) == 0.0
    assert gates.fraction_in_force(scope, NOW) == 0.01
    assert gates.fraction_in_force(scope, NOW + HOUR - 1) == 0.01
    assert gates.fraction_in_force(scope, NOW + HOUR) == 0.1
    assert gates.fraction_in_force(scope, NOW + DAY) == 1.0
    assert len(admitted(scope, NOW + DAY)) == len(NODES)
    early = admitted(scope, NOW)
    mid = admitted(scope, NOW + HOUR)
    assert early <= mid and 10 < len(mid) < 80


def test_before_the_first_stage_is_nobody() -> None:
    scope = ramp_scope(((HOUR, 0.5), (DAY, 1.0)))
    res = gates.in_scope(NODES[0], ART, scope=scope, now=NOW)
    assert (res.ok, res.reason) == (False, "ramp-not-started")
    assert admitted(scope, NOW + HOUR - 1) == set()


def test_same_membership_as_a_plain_fraction_scope() -> None:
    """A stage admits exactly the nodes a plain fraction scope with that fraction does."""
    scope = ramp_scope()
    for after, fraction in RAMP:
        plain = dataclasses.replace(scope, ramp=(), fraction=fraction)
        assert admitted(scope, NOW + after) == admitted(plain, NOW + after)


def test_describe_shows_the_stages_and_the_one_in_force() -> None:
    scope = ramp_scope()
    assert "ramp 0:0.01,3600:0.1,86400:1" in scope.describe()
    assert "stage 2 of 3 in force: fraction 0.1" in scope.describe(NOW + HOUR + 5)
    assert "before stage 1 of 3" in scope.describe(NOW - 5)


stages = st.lists(
    st.tuples(st.integers(0, 10 * DAY), st.floats(0.0, 1.0)), min_size=1, max_size=16
).map(
    lambda xs: tuple(
        zip(
            sorted({a for a, _ in xs}),
            sorted(f for _, f in xs)[: len({a for a, _ in xs})],
            strict=False,
        )
    )
)


def reference_fraction(ramp: tuple[tuple[int, float], ...], issued: int, now: int) -> float:
    in_force = [f for a, f in ramp if issued + a <= now]
    return in_force[-1] if in_force else 0.0


@settings(max_examples=150, deadline=None)
@given(ramp=stages, t1=st.integers(-DAY, 12 * DAY), dt=st.integers(0, 5 * DAY))
def test_gate_matches_reference_and_is_monotone_in_now(
    ramp: tuple[tuple[int, float], ...], t1: int, dt: int
) -> None:
    scope = ramp_scope(ramp, expires=NOW + 20 * DAY)  # every now below is unexpired
    now1, now2 = NOW + t1, NOW + t1 + dt
    f1 = gates.fraction_in_force(scope, now1)
    assert f1 == reference_fraction(ramp, NOW, now1)
    assert f1 <= scope.fraction
    for n in NODES[:40]:
        ok1 = gates.in_scope(n, ART, scope=scope, now=now1).ok
        assert ok1 == gates.in_fraction(SEED, n, f1)
        if ok1:
            assert gates.in_scope(n, ART, scope=scope, now=now2).ok


# -- attacks ----------------------------------------------------------------------------


@pytest.fixture
def net() -> Network:
    return Network()


@pytest.fixture
def store(net: Network) -> TrustStore:
    return net.trust_store()


def test_tampered_stage_fails_the_signature(net: Network, store: TrustStore) -> None:
    scope = ramp_scope(((0, 0.25), (HOUR, 0.5)), fraction=0.5)
    good = net.sign(scope)
    store.verify(Scope, good, NOW)  # control
    payload = scope.to_payload()
    # The first stage's fraction 0.25 is the float 0x3fd0000000000000: make it 0.5.
    at = payload.index(bytes.fromhex("cb3fd0000000000000")) + 1
    bad = flip_payload_bit(good, index=at + 1, bit=4)
    assert_rejected(store, SignatureError, lambda: store.accept(Scope, bad, NOW))


def test_a_ramp_never_widens_past_its_last_signed_stage() -> None:
    scope = ramp_scope(((0, 0.01), (HOUR, 0.2)), fraction=0.2)
    capped = admitted(dataclasses.replace(scope, ramp=()), NOW)
    for now in (NOW, NOW + HOUR, NOW + DAY, NOW + 2 * DAY + 59, 2**39):
        assert gates.fraction_in_force(scope, now) <= 0.2
        assert admitted(scope, now) <= capped
    # Past expiry + SKEW the scope admits nobody at all.
    assert gates.in_scope(NODES[0], ART, scope=scope, now=NOW + 3 * DAY).reason == "scope-expired"


def test_a_clock_wound_back_cannot_un_ramp_a_node_that_moved(net: Network) -> None:
    """The docstring of ``gates.fraction_in_force``: a moved node stays moved; a wound-back
    clock only delays further admissions and never admits beyond the signed stages."""
    release = net.release_doc("v2", counter=2)
    art = release.artifact
    scope = ramp_scope(artifact=art)
    late = NOW + HOUR

    def ok(n: str, now: int) -> bool:
        return gates.in_scope(n, art, scope=scope, now=now).ok

    moved = next(n for n in NODES if ok(n, late) and not ok(n, NOW))
    # Clock wound back to before the stage: gate 2 says "not yet" ...
    back = gates.in_scope(moved, art, scope=scope, now=NOW)
    assert (back.ok, back.reason) == (False, "outside-fraction")
    # ... but a node already running the artifact is not moved back by anything here.
    target = gates.choose_target(
        moved, installed=release, allowlist=None, releases={art: release}, scope=scope, now=NOW
    )
    assert target.artifact is None and target.results[0].reason == "already-running"
    # Anyone admitted at a wound-back time is admitted at the true time (monotone in now).
    for t in range(NOW - HOUR, late + 1, HOUR // 4):
        assert {n for n in NODES if ok(n, t)} <= {n for n in NODES if ok(n, late)}
