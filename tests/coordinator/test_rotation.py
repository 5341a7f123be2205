"""Root N+1 of a key rotation (``coordinator.rotation``, pure): what it says, and the
mistakes it refuses before anything is signed.  The root it builds is checked the way a
node checks one: signed by root N's and its own root keys, ``TrustStore.update_root``
takes it and resets the floors of the rotated role only."""

from __future__ import annotations

import pytest

from coordinator.rotation import Change, RotationError, find_key, next_root
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import SignatureError
from p2pupdate.core.trust import TrustStore

NOW = 1_800_000_000


def key(n: int) -> crypto.SigningKey:
    return crypto.SigningKey.from_seed(bytes([n]) * 32)


#: Root v1: root 1/1, release 1/1, coordinator 2/3 (keys 3, 4, 5), operator 1/1.
ROOT_KEY, RELEASE, C1, C2, C3, OPERATOR = key(1), key(2), key(3), key(4), key(5), key(6)


def root_v1() -> tuple[docs.Root, bytes]:
    roles = {
        "root": [ROOT_KEY],
        "release": [RELEASE],
        "coordinator": [C1, C2, C3],
        "operator": [OPERATOR],
    }
    thresholds = {"root": 1, "release": 1, "coordinator": 2, "operator": 1}
    root = docs.Root(
        version=1,
        issued=NOW - 100,
        expires=NOW + 1000,
        network="t",
        keys={k.keyid: k.public_key for ks in roles.values() for k in ks},
        roles={
            r: docs.Role(keys=tuple(k.keyid for k in ks), threshold=thresholds[r])
            for r, ks in roles.items()
        },
    ).checked()
    return root, root.sign([ROOT_KEY]).to_wire()


def test_replace_puts_the_new_key_in_the_old_ones_place_and_resets_only_that_roles_floors() -> None:
    v1, v1_bytes = root_v1()
    new = key(40)
    rot = next_root(
        v1,
        Change(role="coordinator", replace=C2.keyid[:12]),
        [new.public_key],
        now=NOW,
        lifetime=5000,
    )
    v2 = rot.root
    assert (v2.version, v2.issued, v2.expires, v2.network) == (2, NOW, NOW + 5000, "t")
    assert v2.roles["coordinator"] == docs.Role(keys=(C1.keyid, new.keyid, C3.keyid), threshold=2)
    assert C2.keyid not in v2.keys and v2.keys[new.keyid] == new.public_key
    assert {r: v2.roles[r] for r in ("root", "release", "operator")} == {
        r: v1.roles[r] for r in ("root", "release", "operator")
    }
    assert (rot.removed, rot.added) == ((C2.keyid,), (new.keyid,))
    assert not rot.root_role_changed
    # a node takes it (signed by the unchanged root key: v1's threshold and v2's)
    store = TrustStore.from_root(v1_bytes, NOW)
    forged = docs.Allowlist(version=2**40, issued=NOW, expires=NOW + 60, artifacts=())
    _, store = store.accept(docs.Allowlist, forged.sign([C1, C2]).to_wire(), NOW)
    scope = docs.Scope(
        serial=7, issued=NOW, expires=NOW + 60, artifact="a" * 64, kind="nobody", nodes=()
    )
    _, store = store.accept(docs.Scope, scope.sign([OPERATOR]).to_wire(), NOW)
    _, store = store.update_root(v2.sign([ROOT_KEY]).to_wire(), NOW)
    assert "allowlist" not in store.floors and store.floors["scope"].value == 7


def test_rotating_the_root_role_needs_the_new_key_too() -> None:
    v1, v1_bytes = root_v1()
    new = key(41)
    rot = next_root(
        v1, Change(role="root", replace=ROOT_KEY.keyid), [new.public_key], now=NOW, lifetime=5000
    )
    assert rot.root_role_changed and rot.root.roles["root"].keys == (new.keyid,)
    store = TrustStore.from_root(v1_bytes, NOW)
    with pytest.raises(SignatureError, match="new root"):
        store.update_root(rot.root.sign([ROOT_KEY]).to_wire(), NOW)  # only the old one
    with pytest.raises(SignatureError, match="previous root"):
        store.update_root(rot.root.sign([new]).to_wire(), NOW)  # only the new one
    _, store = store.update_root(rot.root.sign([ROOT_KEY, new]).to_wire(), NOW)
    assert store.root.version == 2


def test_add_and_remove_keys_and_change_thresholds() -> None:
    v1, _ = root_v1()
    a, b = key(50), key(51)
    added = next_root(
        v1,
        Change(role="operator", add=2, threshold=2),
        [a.public_key, b.public_key],
        now=NOW,
        lifetime=10,
    )
    assert added.root.roles["operator"] == docs.Role(
        keys=(OPERATOR.keyid, a.keyid, b.keyid), threshold=2
    )
    assert (added.old_threshold, added.new_threshold) == (1, 2)
    removed = next_root(
        v1, Change(role="coordinator", remove=C3.keyid, threshold=1), [], now=NOW, lifetime=10
    )
    assert removed.root.roles["coordinator"] == docs.Role(keys=(C1.keyid, C2.keyid), threshold=1)
    assert C3.keyid not in removed.root.keys
    only = next_root(v1, Change(role="coordinator", threshold=3), [], now=NOW, lifetime=10)
    assert only.root.roles["coordinator"].keys == v1.roles["coordinator"].keys
    assert (only.removed, only.added, only.root.roles["coordinator"].threshold) == ((), (), 3)


def test_a_key_in_two_roles_stays_listed_while_one_role_holds_it() -> None:
    v1, _ = root_v1()
    shared = v1.roles["coordinator"].keys[0]
    both = docs.Root(
        **{**v1.__dict__, "roles": {**v1.roles, "operator": docs.Role(keys=(shared,), threshold=1)}}
    )
    rot = next_root(both, Change(role="coordinator", remove=shared), [], now=NOW, lifetime=10)
    assert shared in rot.root.keys and rot.root.roles["operator"].keys == (shared,)


@pytest.mark.parametrize(
    ("change", "keys", "message"),
    [
        (
            lambda: Change(role="coordinator", remove="00000000"),
            0,
            "not one of the coordinator keys",
        ),
        (lambda: Change(role="coordinator", remove=ROOT_KEY.keyid), 0, "it is a root key"),
        (lambda: Change(role="coordinator", remove="0ab"), 0, "not a key id"),
        (lambda: Change(role="coordinator", remove="zzzzzzzz"), 0, "not a key id"),
        (lambda: Change(role="release", remove=RELEASE.keyid), 0, "only release key"),
        (lambda: Change(role="coordinator", threshold=4), 0, "exceeds its 3 keys"),
        (lambda: Change(role="coordinator", threshold=2), 0, "has that threshold already"),
        (lambda: Change(role="operator", add=64), 64, "at most 64"),
        (lambda: Change(role="nobody", add=1), 1, "not one of"),
        (lambda: Change(role="root"), 0, "nothing to change"),
        (lambda: Change(role="root", add=1, remove=ROOT_KEY.keyid), 1, "give one of"),
        (lambda: Change(role="root", add=1), 2, "1 new keys needed, 2 given"),
    ],
)
def test_mistakes_are_refused_with_a_reason(change: object, keys: int, message: str) -> None:
    v1, _ = root_v1()
    with pytest.raises(RotationError, match=message):
        made = change()  # type: ignore[operator]
        next_root(v1, made, [key(100 + i).public_key for i in range(keys)], now=NOW, lifetime=10)


def test_removing_below_the_threshold_says_to_lower_it() -> None:
    v1, _ = root_v1()
    smaller = next_root(v1, Change(role="coordinator", remove=C1.keyid), [], now=NOW, lifetime=10)
    assert smaller.root.roles["coordinator"].threshold == 2
    two = docs.Root(**{**smaller.root.__dict__, "version": 1})
    with pytest.raises(RotationError, match=r"threshold 2 .* exceeds its 1 keys \(lower it"):
        next_root(two, Change(role="coordinator", remove=C2.keyid), [], now=NOW, lifetime=10)


def test_a_new_key_already_listed_is_refused() -> None:
    v1, _ = root_v1()
    with pytest.raises(RotationError, match="already in the root"):
        next_root(v1, Change(role="operator", add=1), [C1.public_key], now=NOW, lifetime=10)


def test_find_key_wants_a_unique_prefix() -> None:
    v1, _ = root_v1()
    assert find_key(v1, "coordinator", C1.keyid.upper()) == C1.keyid
    assert find_key(v1, "coordinator", C1.keyid[:8]) == C1.keyid
