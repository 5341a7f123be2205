"""Attacks on the trust core, one test per attack (README "Trust model").

Each test stages one attack with the ``Network`` simulator, asserts the *exact* exception
class (the class says whose fault it was) and that the trust state did not move: the store
is an immutable value, so a rejection must leave ``store.to_bytes()`` as it was and produce
no new store.  Gate refusals are results, not exceptions: those tests assert ``ok`` and the
exact ``reason``.  Every attack has a positive control next to it (the honest document is
accepted), so a test cannot pass because the setup itself was broken.
"""

from __future__ import annotations

import contextlib
import hashlib
from functools import partial

import pytest

from p2pupdate.core import gates
from p2pupdate.core.crypto import Envelope
from p2pupdate.core.documents import (
    MAX_NODES_IN_SCOPE,
    SKEW,
    Allowlist,
    DepartureToken,
    Document,
    Nudge,
    Release,
    Role,
    Scope,
    check_binding,
    open_heartbeat,
    open_signed,
)
from p2pupdate.core.errors import (
    BindingError,
    EquivocationError,
    ExpiredError,
    InvalidRootError,
    KeyIdMismatchError,
    OversizeError,
    P2PUpdateError,
    RollbackError,
    RootRotationError,
    SchemaError,
    SignatureError,
    TrailingBytesError,
    WireError,
    WrongTypeError,
)
from p2pupdate.core.trust import MAX_ROOT_STEPS, TrustStore

from .harness import (
    DAY,
    HOUR,
    MINUTE,
    NOW,
    YEAR,
    Network,
    add_signatures,
    assert_raises_exactly,
    assert_rejected,
    duplicate_signatures,
    edit_root,
    envelope,
    flip_payload_bit,
    flip_signature_bit,
    key_for,
    node_id,
    node_key,
    resign,
    retype,
    sha256_hex,
    with_signatures,
)

A = sha256_hex(b"artifact A")
B = sha256_hex(b"artifact B")


@pytest.fixture
def net() -> Network:
    return Network()


@pytest.fixture
def store(net: Network) -> TrustStore:
    return net.trust_store()


# -- signatures ---------------------------------------------------------------------------


def test_flipped_bit_in_signature(net: Network, store: TrustStore) -> None:
    good = net.allowlist(1, [A])
    store.verify(Allowlist, good, NOW)  # control
    for bit in (0, 7):
        bad = flip_signature_bit(good, bit=bit)
        assert_rejected(store, SignatureError, partial(store.accept, Allowlist, bad, NOW))


def test_flipped_bit_in_payload_after_signing(net: Network, store: TrustStore) -> None:
    good = net.allowlist(1, [A])
    bad = flip_payload_bit(good, index=len(envelope(good).payload) - 1)
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, bad, NOW))


def test_signature_by_key_not_in_root(net: Network, store: TrustStore) -> None:
    bad = net.allowlist(1, [A], signers=[key_for("mallory")])
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, bad, NOW))


def test_signature_by_foreign_key_listed_under_a_trusted_keyid(
    net: Network, store: TrustStore
) -> None:
    """A valid signature by Mallory, filed under the coordinator's key id."""
    good = net.allowlist(1, [A])
    coordinator_id = net.keys["coordinator"][0].keyid
    _, mallory_sig = key_for("mallory").sign("allowlist", envelope(good).payload)
    bad = with_signatures(good, [(coordinator_id, mallory_sig)])
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, bad, NOW))


def test_signature_by_key_of_another_role(net: Network, store: TrustStore) -> None:
    """The operator key is in the root, but it does not sign allowlists."""
    bad = net.allowlist(1, [A], signers=net.keys["operator"])
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, bad, NOW))


def test_stolen_coordinator_key_cannot_sign_a_release() -> None:
    """Uptane's director/image split: the online key never vouches for a build."""
    net = Network()
    store = net.trust_store()
    _, good = net.release("app-2", counter=2)
    store.verify(Release, good, NOW)  # control
    _, bad = net.release("evil", counter=99, signers=net.keys["coordinator"])
    assert_rejected(store, SignatureError, lambda: store.verify(Release, bad, NOW))


def test_below_threshold() -> None:
    net = Network(key_counts={"coordinator": 2}, thresholds={"coordinator": 2})
    store = net.trust_store()
    store.verify(Allowlist, net.allowlist(1, [A]), NOW)  # control: both keys sign
    bad = net.allowlist(1, [A], signers=net.keys["coordinator"][:1])
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, bad, NOW))


def test_same_signature_counted_twice() -> None:
    net = Network(key_counts={"coordinator": 2}, thresholds={"coordinator": 2})
    store = net.trust_store()
    one = net.allowlist(1, [A], signers=net.keys["coordinator"][:1])
    bad = duplicate_signatures(one, 2)
    assert len(envelope(bad).signatures) == 2
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, bad, NOW))


def test_no_signatures_at_all(net: Network, store: TrustStore) -> None:
    bad = with_signatures(net.allowlist(1, [A]), [])
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, bad, NOW))


def test_unknown_signatures_do_not_hide_a_good_one(net: Network, store: TrustStore) -> None:
    """Control for the rules above: unknown keys are ignored, not fatal."""
    good = net.allowlist(1, [A])
    noisy = add_signatures(good, [key_for("mallory"), key_for("eve")])
    signed, _ = store.accept(Allowlist, noisy, NOW)
    assert signed.signers == {net.keys["coordinator"][0].keyid}


def test_junk_signature_before_a_good_one_does_not_hide_it(net: Network, store: TrustStore) -> None:
    """A relay that prepends a bad signature under the real key id cannot veto the
    document: each pair is judged on its own."""
    good = net.allowlist(1, [A])
    kid, sig = envelope(good).signatures[0]
    junk = bytes([sig[0] ^ 1]) + sig[1:]
    signed, _ = store.accept(Allowlist, with_signatures(good, [(kid, junk), (kid, sig)]), NOW)
    assert signed.signers == {kid}


def test_small_order_key_in_root_is_no_wildcard() -> None:
    """A root that lists the identity point as a coordinator key: with R = identity and
    S = 0 a naive Ed25519 verifier accepts *any* message under it.  libsodium must not."""
    net = Network()
    identity = b"\x01" + b"\x00" * 31
    weak_id = sha256_hex(identity)
    root = net.root_doc(1)
    weak_root = edit_root(
        root,
        keys={**root.keys, weak_id: identity},
        roles={**root.roles, "coordinator": Role(keys=(weak_id,), threshold=1)},
    )
    store = TrustStore.from_root(net.sign_root(weak_root, net.keys["root"]), NOW)
    wildcard = identity + b"\x00" * 32
    forged = with_signatures(net.allowlist(1, [B]), [(weak_id, wildcard)])
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, forged, NOW))


# -- roots: structure ---------------------------------------------------------------------


def test_one_key_under_two_ids_in_root() -> None:
    """A root lists the coordinator's key twice (once under a made-up id) so that one
    key would meet a threshold of 2."""
    net = Network()
    real = net.keys["coordinator"][0]
    fake_id = "ab" * 32
    root = net.root_doc(1)
    bad_root = edit_root(
        root,
        keys={**root.keys, fake_id: real.public_key},
        roles={**root.roles, "coordinator": Role(keys=(real.keyid, fake_id), threshold=2)},
    )
    data = net.sign_root(bad_root, net.keys["root"])
    assert_raises_exactly(KeyIdMismatchError, lambda: TrustStore.from_root(data, NOW))
    # ... and the same root offered as a rotation to a node that trusts v1.
    store = net.trust_store()
    rotated = net.sign_root(edit_root(bad_root, version=2), net.keys["root"])
    assert_rejected(store, KeyIdMismatchError, lambda: store.update_root(rotated, NOW))


@pytest.mark.parametrize("role", ["root", "release", "coordinator", "operator"])
def test_threshold_zero_in_root(role: str) -> None:
    net = Network()
    bad_root = net.root_doc(1, thresholds={role: 0})
    data = net.sign_root(bad_root, net.keys["root"])
    assert_raises_exactly(InvalidRootError, lambda: TrustStore.from_root(data, NOW))
    store = net.trust_store()
    rotated = net.sign_root(edit_root(bad_root, version=2), net.keys["root"])
    assert_rejected(store, InvalidRootError, lambda: store.update_root(rotated, NOW))


def test_threshold_above_key_count_in_root() -> None:
    net = Network()
    data = net.sign_root(net.root_doc(1, thresholds={"operator": 2}), net.keys["root"])
    assert_raises_exactly(InvalidRootError, lambda: TrustStore.from_root(data, NOW))


def test_root_missing_a_role() -> None:
    net = Network()
    root = net.root_doc(1)
    bad = edit_root(root, roles={k: v for k, v in root.roles.items() if k != "operator"})
    data = net.sign_root(bad, net.keys["root"])
    assert_raises_exactly(InvalidRootError, lambda: TrustStore.from_root(data, NOW))


def test_root_role_names_unlisted_key() -> None:
    net = Network()
    root = net.root_doc(1)
    stray = key_for("stray").keyid
    bad = edit_root(root, roles={**root.roles, "operator": Role(keys=(stray,), threshold=1)})
    data = net.sign_root(bad, net.keys["root"])
    assert_raises_exactly(InvalidRootError, lambda: TrustStore.from_root(data, NOW))


def test_root_version_zero() -> None:
    net = Network()
    data = net.sign_root(edit_root(net.root_doc(1), version=0), net.keys["root"])
    assert_raises_exactly(InvalidRootError, lambda: TrustStore.from_root(data, NOW))


def test_first_root_not_self_signed() -> None:
    net = Network()
    data = net.sign_root(net.root_doc(1), [key_for("mallory")])
    assert_raises_exactly(SignatureError, lambda: TrustStore.from_root(data, NOW))


def test_first_root_expired() -> None:
    net = Network(root_issued=NOW - 2 * DAY, root_expires=NOW - DAY)
    assert_raises_exactly(ExpiredError, lambda: TrustStore.from_root(net.roots[1], NOW))


# -- types ----------------------------------------------------------------------------------


def test_scope_token_used_as_departure_token(net: Network, store: TrustStore) -> None:
    scope = net.scope(A, signers=net.keys["operator"] + net.keys["coordinator"])
    assert_rejected(store, WrongTypeError, lambda: store.verify(DepartureToken, scope, NOW))


def test_departure_token_used_as_scope(net: Network, store: TrustStore) -> None:
    token = net.departure(node_id(1), from_artifact=A, to_artifact=B)
    store.verify(DepartureToken, token, NOW)  # control
    assert_rejected(store, WrongTypeError, lambda: store.accept(Scope, token, NOW))


def test_type_changed_after_signing(net: Network, store: TrustStore) -> None:
    """A coordinator-signed nudge re-labelled "allowlist" after signing.  Same role, so
    the keys match; only the type inside the signed bytes stops it."""
    nudge = net.nudge(A)
    store.verify(Nudge, nudge, NOW)  # control
    relabelled = retype(nudge, "allowlist")
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, relabelled, NOW))


def test_scope_relabelled_as_departure_token(net: Network, store: TrustStore) -> None:
    relabelled = retype(net.scope(A, signers=net.keys["coordinator"]), "departure")
    assert_rejected(store, SignatureError, lambda: store.verify(DepartureToken, relabelled, NOW))


def test_root_used_as_allowlist(net: Network, store: TrustStore) -> None:
    assert_rejected(store, WrongTypeError, lambda: store.accept(Allowlist, net.roots[1], NOW))


def test_allowlist_offered_as_root(net: Network, store: TrustStore) -> None:
    bad = net.allowlist(2, [A], signers=net.keys["root"])
    assert_rejected(store, WrongTypeError, lambda: store.update_root(bad, NOW))


# -- time -----------------------------------------------------------------------------------


def test_expired_document(net: Network, store: TrustStore) -> None:
    bad = net.allowlist(1, [A], issued=NOW - 2 * DAY, expires=NOW - DAY)
    assert_rejected(store, ExpiredError, lambda: store.accept(Allowlist, bad, NOW))


def test_expiry_allows_exactly_the_skew(net: Network, store: TrustStore) -> None:
    edge = net.allowlist(1, [A], issued=NOW - DAY, expires=NOW - SKEW)
    store.accept(Allowlist, edge, NOW)
    past = net.allowlist(1, [A], issued=NOW - DAY, expires=NOW - SKEW - 1)
    assert_rejected(store, ExpiredError, lambda: store.accept(Allowlist, past, NOW))


def test_clock_wound_back_does_not_revive_old_documents(net: Network, store: TrustStore) -> None:
    later = NOW + 10 * DAY
    _, store = store.accept(
        Allowlist, net.allowlist(5, [A], issued=later, expires=later + DAY), later
    )
    assert store.highest_time == later
    # An old departure token that expired before ``later`` but not before the wound-back NOW.
    old = net.departure(node_id(1), from_artifact=A, to_artifact=B, expires=NOW + HOUR)
    Network().trust_store().verify(DepartureToken, old, NOW)  # control: fine on a fresh node
    assert_rejected(store, ExpiredError, lambda: store.verify(DepartureToken, old, NOW))


def test_expired_trusted_root_blocks_everything() -> None:
    net = Network(root_expires=NOW + DAY)
    store = net.trust_store()
    later = NOW + 2 * DAY
    good_later = net.allowlist(1, [A], issued=later, expires=later + DAY)
    assert_rejected(store, ExpiredError, lambda: store.accept(Allowlist, good_later, later))


# -- floors ---------------------------------------------------------------------------------


def _signed_with_floor(net: Network, kind: type[Document], value: int, salt: str = "") -> bytes:
    artifact = sha256_hex(f"artifact{salt}".encode())
    if kind is Allowlist:
        return net.allowlist(value, [artifact])
    if kind is Scope:
        return net.scope(artifact, serial=value)
    return net.nudge(artifact, serial=value)


@pytest.mark.parametrize("kind", [Allowlist, Scope, Nudge], ids=lambda k: k.TYPE)
def test_version_rollback(net: Network, store: TrustStore, kind: type[Document]) -> None:
    _, store = store.accept(kind, _signed_with_floor(net, kind, 3), NOW)
    old = _signed_with_floor(net, kind, 2)
    Network().trust_store().accept(kind, old, NOW)  # control: fine on a fresh node
    assert_rejected(store, RollbackError, lambda: store.accept(kind, old, NOW))


@pytest.mark.parametrize("kind", [Allowlist, Scope, Nudge], ids=lambda k: k.TYPE)
def test_same_version_different_bytes(
    net: Network, store: TrustStore, kind: type[Document]
) -> None:
    first = _signed_with_floor(net, kind, 3)
    _, store = store.accept(kind, first, NOW)
    # Same bytes again (even with other signatures) is not equivocation.
    store.accept(kind, add_signatures(first, [key_for("mallory")]), NOW)
    other = _signed_with_floor(net, kind, 3, salt="other")
    assert_rejected(store, EquivocationError, lambda: store.accept(kind, other, NOW))


def test_higher_version_raises_the_floor(net: Network, store: TrustStore) -> None:
    _, s2 = store.accept(Allowlist, net.allowlist(2, [A]), NOW)
    _, s7 = s2.accept(Allowlist, net.allowlist(7, [A]), NOW)
    assert s2.floors["allowlist"].value == 2
    assert s7.floors["allowlist"].value == 7
    assert "allowlist" not in store.floors  # the original value never moves


# -- root rotation --------------------------------------------------------------------------


def test_rotation_control(net: Network, store: TrustStore) -> None:
    v2 = net.rotate("root")
    v3 = net.rotate("coordinator")
    store2 = store.update_roots([v2, v3], NOW)
    assert store2.root.version == 3
    assert len(store2.root_digests) == 3
    # Re-offering the current root is a no-op.
    _, same = store2.update_root(v3, NOW)
    assert same is store2


def test_rotation_not_signed_by_old_root_threshold(net: Network, store: TrustStore) -> None:
    old_root_keys = net.keys["root"]
    v2 = net.rotate("root", signers=[])  # placeholder; re-signed below
    new_root_keys = net.keys["root"]
    bad = resign(v2, new_root_keys)  # only the new key signs: a takeover
    assert old_root_keys != new_root_keys
    assert_rejected(store, SignatureError, lambda: store.update_root(bad, NOW))


def test_rotation_not_signed_by_new_root_threshold(net: Network, store: TrustStore) -> None:
    old_root_keys = net.keys["root"]
    v2 = net.rotate("root", signers=[])
    bad = resign(v2, old_root_keys)  # the new keys never agreed (typo, lost key)
    assert_rejected(store, SignatureError, lambda: store.update_root(bad, NOW))


def test_rotation_below_old_threshold_of_two() -> None:
    net = Network(key_counts={"root": 3}, thresholds={"root": 2})
    store = net.trust_store()
    old = net.keys["root"]
    v2 = net.rotate("coordinator", signers=old[:1])
    assert_rejected(store, SignatureError, lambda: store.update_root(v2, NOW))
    store.update_root(resign(v2, old[1:3]), NOW)  # control: 2 of 3


def test_rotation_skipping_a_version(net: Network, store: TrustStore) -> None:
    v3 = net.rotate("coordinator", version=3)
    assert_rejected(store, RootRotationError, lambda: store.update_root(v3, NOW))


def test_root_rollback(net: Network) -> None:
    v1 = net.roots[1]
    v2 = net.rotate("coordinator")
    _, store = net.trust_store().update_root(v2, NOW)
    assert_rejected(store, RollbackError, lambda: store.update_root(v1, NOW))


def test_root_rollback_after_root_key_rotation(net: Network) -> None:
    """The old root is not even signed by the keys now trusted: refused on signatures."""
    v1 = net.roots[1]
    v2 = net.rotate("root")
    _, store = net.trust_store().update_root(v2, NOW)
    assert_rejected(store, SignatureError, lambda: store.update_root(v1, NOW))


def test_root_equivocation(net: Network) -> None:
    v2 = net.rotate("coordinator")
    _, store = net.trust_store().update_root(v2, NOW)
    twin = net.sign_root(edit_root(net.root, network="twin"), net.keys["root"])
    assert_rejected(store, EquivocationError, lambda: store.update_root(twin, NOW))


def test_too_many_root_rotations_at_once(net: Network, store: TrustStore) -> None:
    chain = [net.rotate("coordinator") for _ in range(MAX_ROOT_STEPS + 1)]
    assert store.update_roots(chain[:MAX_ROOT_STEPS], NOW).root.version == MAX_ROOT_STEPS + 1
    assert_rejected(store, RootRotationError, lambda: store.update_roots(chain, NOW))


def test_expired_intermediate_root_can_be_walked(net: Network, store: TrustStore) -> None:
    """Control: a node offline for a long time walks through roots that have expired."""
    v2 = net.rotate("root", expires=NOW - DAY, issued=NOW - 2 * DAY)
    v3 = net.rotate("coordinator")
    assert store.update_roots([v2, v3], NOW).root.version == 3


def test_recovery_from_fast_forward_attack(net: Network, store: TrustStore) -> None:
    """A stolen coordinator key pushes the allowlist floor to 2**40; rotating the
    coordinator key in root resets that floor and the old key is dead."""
    stolen = net.keys["coordinator"]
    _, store = store.accept(Allowlist, net.allowlist(2**40, [B], signers=stolen), NOW)
    assert store.floors["allowlist"].value == 2**40
    honest = net.allowlist(5, [A])
    assert_rejected(store, RollbackError, lambda: store.accept(Allowlist, honest, NOW))

    _, store = store.update_root(net.rotate("coordinator"), NOW)
    assert "allowlist" not in store.floors
    fresh = net.allowlist(1, [A])  # signed by the new coordinator key
    signed, store = store.accept(Allowlist, fresh, NOW)
    assert signed.doc.version == 1
    replay = net.allowlist(2, [B], signers=stolen)
    assert_rejected(store, SignatureError, lambda: store.accept(Allowlist, replay, NOW))


def test_rotation_of_one_role_keeps_other_floors(net: Network, store: TrustStore) -> None:
    _, store = store.accept(Allowlist, net.allowlist(4, [A]), NOW)
    _, store = store.accept(Scope, net.scope(A, serial=9), NOW)
    _, store = store.update_root(net.rotate("operator"), NOW)
    assert "scope" not in store.floors
    assert store.floors["allowlist"].value == 4


def test_recovery_from_time_fast_forward_attack(net: Network, store: TrustStore) -> None:
    """A stolen coordinator key signs an allowlist *issued* far in the future.

    The store raises ``highest_time`` to it, so every document (and the trusted root
    itself) now looks expired.  Rotating the stolen key must recover the fleet, exactly as
    it does for a version fast-forward; a node must not be bricked for good by one stolen
    online key.
    """
    stolen = net.keys["coordinator"]
    far = NOW + 30 * YEAR
    evil = net.allowlist(1, [B], signers=stolen, issued=far, expires=far + DAY)
    # Refusing a document from the future is one acceptable fix; capping the time is another.
    with contextlib.suppress(P2PUpdateError):
        _, store = store.accept(Allowlist, evil, NOW)
    _, store = store.update_root(net.rotate("coordinator"), NOW)
    fresh = net.allowlist(1, [A])  # issued NOW - 60 by the new key
    signed, _ = store.accept(Allowlist, fresh, NOW)
    assert signed.doc.artifacts == (A,)


def test_future_dated_document_does_not_expire_the_present(net: Network, store: TrustStore) -> None:
    """Without any rotation: after a document dated years ahead, today's documents (and
    today's root) still verify.  Only signed time that was plausible when seen counts."""
    far = NOW + 30 * YEAR
    evil = net.allowlist(1, [B], issued=far, expires=far + DAY)
    with contextlib.suppress(P2PUpdateError):
        _, store = store.accept(Allowlist, evil, NOW)
    store.check_current_root(NOW)
    signed, _ = store.accept(Scope, net.scope(A), NOW)
    assert signed.doc.artifact == A


# -- gates: refusals are results ------------------------------------------------------------


def _gate1(
    net: Network,
    artifact: str,
    *,
    releases: dict[str, Release],
    installed: Release | None = None,
    scope: Scope | None = None,
) -> gates.GateResult:
    return gates.allowlisted(
        artifact,
        allowlist=net.allowlist_doc(1, [*list(releases), artifact]),
        releases=releases,
        now=NOW,
        installed=installed,
        scope=scope,
    )


def test_allowlisted_hash_without_release_record(net: Network) -> None:
    res = gates.allowlisted(
        A, allowlist=net.allowlist_doc(1, [A]), releases={}, now=NOW, installed=None
    )
    assert (res.ok, res.gate, res.reason) == (False, "allowlist", "no-release-record")


def test_release_not_on_allowlist(net: Network) -> None:
    rel = net.release_doc("app-2", counter=2)
    res = gates.allowlisted(
        rel.artifact, allowlist=net.allowlist_doc(1, [A]), releases={rel.artifact: rel}, now=NOW
    )
    assert (res.ok, res.reason) == (False, "not-allowlisted")


def test_expired_allowlist_at_decision_time(net: Network) -> None:
    rel = net.release_doc("app-2", counter=2)
    allow = net.allowlist_doc(1, [rel.artifact], issued=NOW - DAY, expires=NOW - HOUR)
    res = gates.allowlisted(rel.artifact, allowlist=allow, releases={rel.artifact: rel}, now=NOW)
    assert (res.ok, res.reason) == (False, "allowlist-expired")


def test_release_downgrade_without_force(net: Network) -> None:
    installed = net.release_doc("app-5", counter=5)
    old = net.release_doc("app-3", counter=3)
    res = _gate1(net, old.artifact, releases={old.artifact: old}, installed=installed)
    assert (res.ok, res.reason) == (False, "downgrade")
    same = net.release_doc("app-5-rebuilt", counter=5)  # equal counter is not an upgrade
    res = _gate1(net, same.artifact, releases={same.artifact: same}, installed=installed)
    assert (res.ok, res.reason) == (False, "downgrade")
    # A non-force scope naming it does not help.
    plain = net.scope_doc(old.artifact)
    res = _gate1(net, old.artifact, releases={old.artifact: old}, installed=installed, scope=plain)
    assert (res.ok, res.reason) == (False, "downgrade")


def test_release_downgrade_with_force_scope_for_another_artifact(net: Network) -> None:
    installed = net.release_doc("app-5", counter=5)
    old = net.release_doc("app-3", counter=3)
    force_other = net.scope_doc(B, force=True)
    res = _gate1(
        net, old.artifact, releases={old.artifact: old}, installed=installed, scope=force_other
    )
    assert (res.ok, res.reason) == (False, "downgrade")


def test_release_downgrade_with_force_scope_naming_it(net: Network) -> None:
    installed = net.release_doc("app-5", counter=5)
    old = net.release_doc("app-3", counter=3)
    force = net.scope_doc(old.artifact, force=True)
    res = _gate1(net, old.artifact, releases={old.artifact: old}, installed=installed, scope=force)
    assert (res.ok, res.reason) == (True, "forced-downgrade")


@pytest.mark.parametrize(
    ("scope_kw", "reason"),
    [
        ({"kind": "nodes", "nodes": [node_id(2), node_id(3)]}, "not-named"),
        ({"kind": "nobody"}, "scope-nobody"),
        ({"kind": "everyone", "artifact": B}, "scope-other-artifact"),
        ({"kind": "everyone", "issued": NOW - DAY, "expires": NOW - HOUR}, "scope-expired"),
    ],
    ids=["nodes-without-me", "nobody", "other-artifact", "expired"],
)
def test_scope_that_does_not_cover_the_node(
    net: Network, scope_kw: dict[str, object], reason: str
) -> None:
    kw = {"artifact": A, **scope_kw}
    scope = net.scope_doc(**kw)  # type: ignore[arg-type]
    res = gates.in_scope(node_id(1), A, scope=scope, now=NOW)
    assert (res.ok, res.gate, res.reason) == (False, "scope", reason)


def test_fraction_scope_with_the_node_outside(net: Network) -> None:
    seed = b"rollout-seed-001"
    me = node_id(1)
    point = gates.fraction_point(seed, me)
    # The largest fraction that still leaves this node out.
    fraction = point / 2**64
    while gates.in_fraction(seed, me, fraction):
        fraction = fraction * (1 - 1e-12)
    scope = net.scope_doc(A, kind="fraction", fraction=fraction, seed=seed)
    assert gates.in_scope(me, A, scope=scope, now=NOW).reason == "outside-fraction"
    wider = net.scope_doc(A, kind="fraction", fraction=min(1.0, fraction + 1e-9), seed=seed)
    assert gates.in_scope(me, A, scope=wider, now=NOW).reason == "in-fraction"


def test_no_scope_at_all() -> None:
    res = gates.in_scope(node_id(1), A, scope=None, now=NOW)
    assert (res.ok, res.reason) == (False, "no-scope")


# -- size -----------------------------------------------------------------------------------


def test_oversize_document(net: Network, store: TrustStore) -> None:
    huge = Envelope(type="allowlist", payload=b"\x00" * (1024 * 1024), signatures=()).to_wire()
    assert_rejected(store, OversizeError, lambda: store.accept(Allowlist, huge, NOW))


def test_oversize_departure_token(net: Network, store: TrustStore) -> None:
    """Departure tokens travel as messages: 16 KiB is the cap, not 1 MiB."""
    token = net.departure(node_id(1), from_artifact=A, to_artifact=B)
    padded = add_signatures(token, [key_for(f"pad-{i}") for i in range(30)])
    big = Envelope(
        type="departure", payload=envelope(token).payload + b"\x00" * 20_000, signatures=()
    ).to_wire()
    store.verify(DepartureToken, padded, NOW)  # control: 31 signatures still fit
    assert_rejected(store, OversizeError, lambda: store.verify(DepartureToken, big, NOW))


def test_release_record_of_a_large_artifact_is_accepted(net: Network, store: TrustStore) -> None:
    """Control for the size caps: wire.py sizes ``DOCUMENT_LIMITS`` for a 1 GiB artifact
    at 256 KiB chunks (4096 chunk hashes, ~140 KiB of payload).  Such a record must open."""
    chunks = tuple(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(4096))
    rel = Release(
        name="big",
        counter=7,
        artifact=A,
        length=1 << 30,
        chunk_size=256 * 1024,
        chunks=chunks,
        issued=NOW - HOUR,
        expires=NOW + YEAR,
    )
    rel.validate()
    signed = store.verify(Release, net.sign(rel), NOW)
    assert len(signed.doc.chunks) == 4096


def test_scope_naming_the_most_nodes_is_accepted(net: Network, store: TrustStore) -> None:
    """Control for the size caps: a scope may name ``MAX_NODES_IN_SCOPE`` nodes."""
    nodes = [sha256_hex(i.to_bytes(4, "big")) for i in range(MAX_NODES_IN_SCOPE)]
    signed = store.verify(Scope, net.scope(A, kind="nodes", nodes=nodes), NOW)
    assert len(signed.doc.nodes) == MAX_NODES_IN_SCOPE


# -- departure tokens -----------------------------------------------------------------------


@pytest.fixture
def quorum() -> Network:
    """Three coordinator replicas, tokens need two (q=2 of n=3)."""
    return Network(key_counts={"coordinator": 3}, thresholds={"coordinator": 2})


def test_departure_token_control(quorum: Network) -> None:
    store = quorum.trust_store()
    reps = quorum.keys["coordinator"]
    for pair in ([reps[0], reps[1]], [reps[1], reps[2]], [reps[0], reps[2]]):
        token = quorum.departure(node_id(1), from_artifact=A, to_artifact=B, signers=pair)
        assert store.verify(DepartureToken, token, NOW).signers == {k.keyid for k in pair}


def test_departure_token_below_coordinator_threshold(quorum: Network) -> None:
    store = quorum.trust_store()
    one = quorum.departure(
        node_id(1), from_artifact=A, to_artifact=B, signers=quorum.keys["coordinator"][:1]
    )
    assert_rejected(store, SignatureError, lambda: store.verify(DepartureToken, one, NOW))


def test_departure_token_one_replica_signing_twice(quorum: Network) -> None:
    store = quorum.trust_store()
    one = quorum.departure(
        node_id(1), from_artifact=A, to_artifact=B, signers=quorum.keys["coordinator"][:1]
    )
    twice = duplicate_signatures(one, 2)
    assert_rejected(store, SignatureError, lambda: store.verify(DepartureToken, twice, NOW))


def test_departure_token_wrong_type(quorum: Network) -> None:
    store = quorum.trust_store()
    nudge = quorum.nudge(A)  # signed by two coordinator replicas, but a nudge
    assert_rejected(store, WrongTypeError, lambda: store.verify(DepartureToken, nudge, NOW))


def test_departure_token_expired(quorum: Network) -> None:
    store = quorum.trust_store()
    token = quorum.departure(
        node_id(1), from_artifact=A, to_artifact=B, issued=NOW - HOUR, expires=NOW - 10 * MINUTE
    )
    assert_rejected(store, ExpiredError, lambda: store.verify(DepartureToken, token, NOW))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("node", node_id(2)),
        ("from_artifact", B),
        ("to_artifact", A),
        ("allowlist_version", 2),
        ("scope_serial", 2),
    ],
)
def test_departure_token_bound_to_another_move(net: Network, field: str, value: object) -> None:
    token = net.departure_doc(node_id(1), from_artifact=A, to_artifact=B)
    expected: dict[str, object] = {
        "node": node_id(1),
        "from_artifact": A,
        "to_artifact": B,
        "allowlist_version": 1,
        "scope_serial": 1,
    }
    check_binding(token, **expected)  # type: ignore[arg-type]  # control
    expected[field] = value
    assert_raises_exactly(BindingError, lambda: check_binding(token, **expected))  # type: ignore[arg-type]


# -- heartbeats -----------------------------------------------------------------------------


def test_heartbeat_control(net: Network) -> None:
    signed = open_heartbeat(net.heartbeat(1))
    assert signed.doc.node == node_id(1)


def test_heartbeat_signed_by_another_node(net: Network) -> None:
    forged = net.heartbeat(1, signers=[node_key(2)])
    assert_raises_exactly(SignatureError, lambda: open_heartbeat(forged))


def test_heartbeat_claiming_another_nodes_id(net: Network) -> None:
    forged = net.heartbeat(1, node_id_override=node_id(2))
    assert_raises_exactly(KeyIdMismatchError, lambda: open_heartbeat(forged))


def test_heartbeat_with_another_nodes_key_inside(net: Network) -> None:
    """Node 1 ships node 2's key and id but signs with its own key."""
    forged = net.heartbeat(
        1, pub=node_key(2).public_key, node_id_override=node_id(2), signers=[node_key(1)]
    )
    assert_raises_exactly(SignatureError, lambda: open_heartbeat(forged))


def test_open_signed_requires_the_role_threshold(quorum: Network) -> None:
    """``open_signed`` on its own (no store) applies the same rule."""
    one = quorum.allowlist(1, [A], signers=quorum.keys["coordinator"][:1])
    assert_raises_exactly(SignatureError, lambda: open_signed(Allowlist, one, quorum.root))


# -- persisted state ------------------------------------------------------------------------


def _busy_store(net: Network) -> TrustStore:
    store = net.trust_store()
    _, store = store.update_root(net.rotate("coordinator"), NOW)
    _, store = store.accept(Allowlist, net.allowlist(3, [A]), NOW)
    _, store = store.accept(Scope, net.scope(A, serial=4), NOW)
    _, store = store.accept(Nudge, net.nudge(A, serial=2), NOW + HOUR)
    return store


def test_persisted_state_round_trips(net: Network) -> None:
    store = _busy_store(net)
    data = store.to_bytes()
    again = TrustStore.from_bytes(data)
    assert again == store
    assert again.to_bytes() == data
    assert again.floors["scope"].value == 4
    # The reloaded store keeps enforcing its floors.
    stale = net.allowlist(2, [A])
    assert_rejected(again, RollbackError, lambda: again.accept(Allowlist, stale, NOW))


def test_persisted_state_truncated(net: Network) -> None:
    data = _busy_store(net).to_bytes()
    for cut in range(len(data)):
        with pytest.raises(WireError):
            TrustStore.from_bytes(data[:cut])


def test_persisted_state_with_trailing_bytes(net: Network) -> None:
    data = _busy_store(net).to_bytes()
    assert_raises_exactly(TrailingBytesError, lambda: TrustStore.from_bytes(data + b"\x00"))


def test_persisted_state_with_a_foreign_root(net: Network) -> None:
    """Somebody swapped the root inside the state file: its digest no longer matches."""
    store = _busy_store(net)
    other = Network(name="othernet")
    forged = TrustStore(
        root_bytes=other.roots[1],
        root=other.root,
        root_digests=store.root_digests,
        floors=store.floors,
        highest_time=store.highest_time,
    ).to_bytes()
    assert_raises_exactly(SchemaError, lambda: TrustStore.from_bytes(forged))


def test_persisted_state_with_an_unsigned_root(net: Network) -> None:
    store = _busy_store(net)
    bad_root = with_signatures(store.root_bytes, [])
    forged = TrustStore(
        root_bytes=bad_root,
        root=store.root,
        root_digests=store.root_digests,
        floors=store.floors,
        highest_time=store.highest_time,
    ).to_bytes()
    assert_raises_exactly(SignatureError, lambda: TrustStore.from_bytes(forged))


def test_persisted_state_corrupted_byte_by_byte(net: Network) -> None:
    """Flip every byte of the state file: either a typed error or a store that still
    holds a verified root; never any other exception."""
    data = _busy_store(net).to_bytes()
    for i in range(len(data)):
        corrupt = bytearray(data)
        corrupt[i] ^= 0xFF
        try:
            loaded = TrustStore.from_bytes(bytes(corrupt))
        except P2PUpdateError:
            continue
        assert loaded.root.version >= 1
