"""Gates 1 and 2 as pure functions: fraction membership and ``choose_target``.

Fraction membership must be the same on the node, on the coordinator and in the
simulations (a pure function of seed, node id and fraction), monotone in the fraction for a
fixed seed (widening 5% -> 25% keeps the first 5% in) and close to the fraction in size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pupdate.core import gates
from p2pupdate.core.documents import Release
from p2pupdate.core.errors import SchemaError

from .harness import DAY, HOUR, NOW, Network, node_id

SEED = b"rollout-2027-01"
#: 10,000 deterministic, uniformly spread node ids.
NODES = [hashlib.sha256(f"fleet-node-{i}".encode()).hexdigest() for i in range(10_000)]


def members(seed: bytes, fraction: float) -> set[str]:
    return {n for n in NODES if gates.in_fraction(seed, n, fraction)}


# -- fraction membership ----------------------------------------------------------------------


def test_fraction_membership_is_deterministic() -> None:
    first = [gates.in_fraction(SEED, n, 0.3) for n in NODES[:2000]]
    again = [gates.in_fraction(bytes(SEED), str(n), 0.3) for n in NODES[:2000]]
    assert first == again
    # A known value pins the function itself: node, coordinator and simulator must agree
    # across versions, so changing the hash silently would split a rollout.
    point = gates.fraction_point(SEED, NODES[0])
    digest = hashlib.sha256(b"p2pupdate/scope-fraction\x00" + SEED + bytes.fromhex(NODES[0]))
    assert point == int.from_bytes(digest.digest()[:8], "big")


def test_fraction_membership_depends_on_the_seed() -> None:
    a = members(b"seed-number-one", 0.5)
    b = members(b"seed-number-two", 0.5)
    assert a != b
    # Independent seeds overlap about as much as chance says (0.25 of the fleet).
    assert abs(len(a & b) / len(NODES) - 0.25) < 0.03


def test_fraction_membership_is_monotone() -> None:
    fractions = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]
    sets = [members(SEED, f) for f in fractions]
    for smaller, larger in itertools.pairwise(sets):
        assert smaller <= larger
    in_at_tenth = members(SEED, 0.1)
    assert in_at_tenth
    assert all(gates.in_fraction(SEED, n, 0.5) for n in in_at_tenth)


@given(
    seed=st.binary(min_size=8, max_size=32),
    node=st.integers(0, len(NODES) - 1),
    f1=st.floats(0.0, 1.0),
    f2=st.floats(0.0, 1.0),
)
@settings(max_examples=400, deadline=None, derandomize=True, database=None)
def test_fraction_membership_is_monotone_for_any_seed(
    seed: bytes, node: int, f1: float, f2: float
) -> None:
    low, high = sorted((f1, f2))
    if gates.in_fraction(seed, NODES[node], low):
        assert gates.in_fraction(seed, NODES[node], high)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9])
def test_fraction_size_matches(fraction: float) -> None:
    share = len(members(SEED, fraction)) / len(NODES)
    assert abs(share - fraction) < 0.02


def test_fraction_zero_is_nobody_and_one_is_everyone() -> None:
    assert members(SEED, 0.0) == set()
    assert members(SEED, 1.0) == set(NODES)
    # The extreme points of the hash space too.
    assert gates.fraction_threshold(0.0) == 0
    assert gates.fraction_threshold(1.0) == 2**64
    assert gates.fraction_threshold(0.5) == 2**63
    assert 2**64 - 1 < gates.fraction_threshold(1.0)


def test_fraction_scope_through_the_gate() -> None:
    net = Network()
    art = "ab" * 32
    none = net.scope_doc(art, kind="fraction", fraction=0.0, seed=SEED)
    everyone = net.scope_doc(art, kind="fraction", fraction=1.0, seed=SEED)
    for n in NODES[:500]:
        assert gates.in_scope(n, art, scope=none, now=NOW).reason == "outside-fraction"
        assert gates.in_scope(n, art, scope=everyone, now=NOW).reason == "in-fraction"


# -- choose_target ----------------------------------------------------------------------------


class Fleet:
    """One node's view: installed release 5, releases 6 (newer) and 3 (older) known."""

    def __init__(self) -> None:
        self.net = Network()
        self.me = node_id(1)
        self.r3 = self.net.release_doc("app-3", counter=3)
        self.r5 = self.net.release_doc("app-5", counter=5)
        self.r6 = self.net.release_doc("app-6", counter=6)
        self.releases = {r.artifact: r for r in (self.r3, self.r5, self.r6)}
        self.allowlist = self.net.allowlist_doc(1, list(self.releases))

    def choose(self, **kw: object) -> gates.Target:
        """``choose_target`` for this node; keyword arguments override the defaults."""
        args: dict[str, object] = {
            "installed": self.r5,
            "allowlist": self.allowlist,
            "releases": self.releases,
            "now": NOW,
        }
        args.update(kw)
        return gates.choose_target(self.me, **args)  # type: ignore[arg-type]


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


def reasons(target: gates.Target) -> list[tuple[str, bool, str]]:
    return [(r.gate, r.ok, r.reason) for r in target.results]


def test_choose_upgrade(fleet: Fleet) -> None:
    t = fleet.choose(scope=fleet.net.scope_doc(fleet.r6.artifact))
    assert t.ok
    assert t.artifact == fleet.r6.artifact
    assert t.release == fleet.r6
    assert t.refusal is None
    assert reasons(t) == [("allowlist", True, "allowlisted"), ("scope", True, "everyone")]


def test_choose_on_a_fresh_node(fleet: Fleet) -> None:
    t = fleet.choose(installed=None, scope=fleet.net.scope_doc(fleet.r3.artifact))
    assert t.ok
    assert t.artifact == fleet.r3.artifact


def test_choose_without_scope(fleet: Fleet) -> None:
    t = fleet.choose(scope=None)
    assert not t.ok
    assert t.artifact is None
    assert reasons(t) == [("scope", False, "no-scope")]


def test_choose_already_running(fleet: Fleet) -> None:
    t = fleet.choose(scope=fleet.net.scope_doc(fleet.r5.artifact))
    assert not t.ok
    assert t.release == fleet.r5
    assert reasons(t) == [("allowlist", True, "already-running")]
    assert t.refusal is None


def test_choose_named_node(fleet: Fleet) -> None:
    scope = fleet.net.scope_doc(fleet.r6.artifact, kind="nodes", nodes=[fleet.me, node_id(9)])
    assert fleet.choose(scope=scope).ok
    other = fleet.net.scope_doc(fleet.r6.artifact, kind="nodes", nodes=[node_id(9)])
    t = fleet.choose(scope=other)
    assert not t.ok
    assert t.refusal is not None
    assert (t.refusal.gate, t.refusal.reason) == ("scope", "not-named")


def test_choose_reports_both_gates_at_once(fleet: Fleet) -> None:
    """An operator sees every reason: not allowlisted *and* held back by scope."""
    stranger = "cd" * 32
    t = fleet.choose(scope=fleet.net.scope_doc(stranger, kind="nobody"))
    assert not t.ok
    assert t.release is None
    assert reasons(t) == [("allowlist", False, "not-allowlisted"), ("scope", False, "scope-nobody")]
    assert t.refusal is not None
    assert t.refusal.reason == "not-allowlisted"


def test_choose_held_back_by_scope_only(fleet: Fleet) -> None:
    t = fleet.choose(scope=fleet.net.scope_doc(fleet.r6.artifact, kind="nobody"))
    assert not t.ok
    assert t.release == fleet.r6  # the release is known; only the rollout holds it back
    assert reasons(t) == [("allowlist", True, "allowlisted"), ("scope", False, "scope-nobody")]


def test_choose_downgrade(fleet: Fleet) -> None:
    t = fleet.choose(scope=fleet.net.scope_doc(fleet.r3.artifact))
    assert reasons(t) == [("allowlist", False, "downgrade"), ("scope", True, "everyone")]
    forced = fleet.choose(scope=fleet.net.scope_doc(fleet.r3.artifact, force=True))
    assert forced.ok
    assert forced.artifact == fleet.r3.artifact
    assert reasons(forced) == [
        ("allowlist", True, "forced-downgrade"),
        ("scope", True, "everyone"),
    ]


# -- the counter rule: one home (gates.is_upgrade), whatever the node knows of its install ---


def test_counter_rule() -> None:
    assert gates.is_upgrade(6, 5)
    assert not gates.is_upgrade(5, 5)  # equal: not forward
    assert not gates.is_upgrade(4, 5)
    assert gates.is_upgrade(1, None)  # nothing known to be installed


def test_installed_floor_takes_the_higher_of_record_and_slot(fleet: Fleet) -> None:
    assert gates.installed_floor(None, None) is None
    assert gates.installed_floor(fleet.r5, None) == 5
    assert gates.installed_floor(None, 5) == 5
    assert gates.installed_floor(fleet.r5, 3) == 5
    assert gates.installed_floor(fleet.r3, 5) == 5
    assert gates.installed_floor(None, 0) == 0


@pytest.mark.parametrize(
    ("release", "force", "expected"),
    [
        ("r6", False, ("allowlist", True, "allowlisted")),
        ("r5", False, ("allowlist", False, "downgrade")),  # counter equal
        ("r3", False, ("allowlist", False, "downgrade")),  # counter lower
        ("r5", True, ("allowlist", True, "forced-downgrade")),
        ("r3", True, ("allowlist", True, "forced-downgrade")),
    ],
)
def test_downgrade_rule_with_only_the_slot_counter(
    fleet: Fleet, release: str, force: bool, expected: tuple[str, bool, str]
) -> None:
    """No release record of the running build is held (installed from an offer, or the
    coordinator has not sent it): the slot's counter is the floor, with the same rule."""
    target = getattr(fleet, release)
    t = fleet.choose(
        installed=None,
        installed_counter=5,
        scope=fleet.net.scope_doc(target.artifact, force=force),
    )
    assert reasons(t) == [expected, ("scope", True, "everyone")]
    assert t.ok is expected[1]
    if not expected[1]:
        assert t.refusal is not None and t.refusal.reason == "downgrade"
        assert t.refusal.detail == f"release counter {target.counter} is not above installed 5"


def test_downgrade_rule_uses_the_higher_floor(fleet: Fleet) -> None:
    """A record that says 5 and a slot that says 6: a release 6 is not forward."""
    t = fleet.choose(installed_counter=6, scope=fleet.net.scope_doc(fleet.r6.artifact))
    assert reasons(t)[0] == ("allowlist", False, "downgrade")
    t = fleet.choose(installed_counter=4, scope=fleet.net.scope_doc(fleet.r6.artifact))
    assert reasons(t)[0] == ("allowlist", True, "allowlisted")


def test_allowlisted_direct_counter_cases(fleet: Fleet) -> None:
    def gate(artifact: str, **kw: object) -> str:
        return gates.allowlisted(
            artifact,
            allowlist=fleet.allowlist,
            releases=fleet.releases,
            now=NOW,
            **kw,  # type: ignore[arg-type]
        ).reason

    assert gate(fleet.r6.artifact, installed_counter=5) == "allowlisted"
    assert gate(fleet.r5.artifact, installed_counter=5) == "downgrade"
    assert gate(fleet.r3.artifact, installed=fleet.r5) == "downgrade"
    forced = fleet.net.scope_doc(fleet.r3.artifact, force=True)
    assert gate(fleet.r3.artifact, installed_counter=5, scope=forced) == "forced-downgrade"
    # a force scope for another artifact does not lift the rule for this one
    assert gate(fleet.r5.artifact, installed_counter=5, scope=forced) == "downgrade"


def test_newest_upgrade() -> None:
    a, b, c, d = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    assert gates.newest_upgrade({}, installed=a, installed_counter=1) is None
    offered = {a: 1, b: 2, c: 3}
    assert gates.newest_upgrade(offered, installed=a, installed_counter=1) == c
    assert gates.newest_upgrade(offered, installed=c, installed_counter=3) is None  # equal
    assert gates.newest_upgrade(offered, installed=d, installed_counter=5) is None  # lower
    # the running artifact is never a candidate, whatever counter it is offered with
    assert gates.newest_upgrade({a: 9, b: 2}, installed=a, installed_counter=1) == b
    # ties go to the larger artifact id: every node picks the same
    assert gates.newest_upgrade({b: 4, c: 4, a: 4}, installed=d, installed_counter=0) == c


def test_choose_force_does_not_skip_the_scope_gate(fleet: Fleet) -> None:
    scope = fleet.net.scope_doc(fleet.r3.artifact, force=True, kind="nodes", nodes=[node_id(9)])
    t = fleet.choose(scope=scope)
    assert not t.ok
    assert reasons(t) == [("allowlist", True, "forced-downgrade"), ("scope", False, "not-named")]


def test_choose_force_does_not_skip_the_allowlist(fleet: Fleet) -> None:
    stranger = fleet.net.release_doc("unlisted", counter=9)
    releases = {**fleet.releases, stranger.artifact: stranger}
    t = fleet.choose(releases=releases, scope=fleet.net.scope_doc(stranger.artifact, force=True))
    assert not t.ok
    assert reasons(t)[0] == ("allowlist", False, "not-allowlisted")


def test_choose_without_allowlist(fleet: Fleet) -> None:
    t = fleet.choose(allowlist=None, scope=fleet.net.scope_doc(fleet.r6.artifact))
    assert reasons(t)[0] == ("allowlist", False, "no-allowlist")


def test_choose_with_expired_documents(fleet: Fleet) -> None:
    scope = fleet.net.scope_doc(fleet.r6.artifact)
    later = scope.expires + 61
    t = fleet.choose(scope=scope, now=later)
    assert ("scope", False, "scope-expired") in reasons(t)
    old_release = fleet.net.release_doc("app-7", counter=7, issued=NOW - 2 * DAY, expires=NOW - DAY)
    releases = {**fleet.releases, old_release.artifact: old_release}
    allow = fleet.net.allowlist_doc(2, list(releases))
    t = fleet.choose(
        allowlist=allow, releases=releases, scope=fleet.net.scope_doc(old_release.artifact)
    )
    assert reasons(t)[0] == ("allowlist", False, "release-expired")
    stale = fleet.net.allowlist_doc(3, list(releases), issued=NOW - DAY, expires=NOW - HOUR)
    t = fleet.choose(allowlist=stale, scope=fleet.net.scope_doc(fleet.r6.artifact))
    assert reasons(t)[0] == ("allowlist", False, "allowlist-expired")


def test_gate_result_says_why() -> None:
    res = gates.in_scope(node_id(1), "ab" * 32, scope=None, now=NOW)
    assert str(res) == "scope refused (no-scope): no verified scope token"
    assert res.retry_after is None


# -- platform (self-contained builds) ---------------------------------------------------------

X86 = frozenset(
    {"cp311-any", "cp311-linux_x86_64"} | {f"cp311-manylinux_2_{y}_x86_64" for y in range(36)}
)


def test_platform_supported() -> None:
    assert gates.platform_supported("", frozenset())  # our code alone runs anywhere
    assert gates.platform_supported("cp311-any", X86)
    assert gates.platform_supported("cp311-manylinux_2_34_x86_64", X86)
    assert not gates.platform_supported("cp311-manylinux_2_39_x86_64", X86)  # newer glibc
    assert not gates.platform_supported("cp312-manylinux_2_17_x86_64", X86)  # other python
    assert not gates.platform_supported("cp311-manylinux_2_17_aarch64", X86)  # other arch
    assert gates.platform_supported("cp311-linux_x86_64+manylinux_2_17_x86_64", X86)
    assert not gates.platform_supported("cp311-manylinux_2_17_x86_64+macosx_11_0_arm64", X86)


def test_gate_1_refuses_a_build_for_another_platform(fleet: Fleet) -> None:
    """Its own reason, distinct from every other refusal; unchecked when the caller does not
    know the node's platform (None), and a record without a platform runs anywhere."""
    arm = dataclasses.replace(fleet.r6, platform="cp311-manylinux_2_17_aarch64")
    x86 = dataclasses.replace(fleet.r6, platform="cp311-manylinux_2_17_x86_64")
    scope = fleet.net.scope_doc(fleet.r6.artifact)
    t = fleet.choose(releases={**fleet.releases, arm.artifact: arm}, scope=scope, platforms=X86)
    assert reasons(t)[0] == ("allowlist", False, gates.WRONG_PLATFORM)
    assert "cp311-manylinux_2_17_aarch64" in t.results[0].detail
    assert not t.ok
    t = fleet.choose(releases={**fleet.releases, x86.artifact: x86}, scope=scope, platforms=X86)
    assert reasons(t)[0] == ("allowlist", True, "allowlisted") and t.ok
    t = fleet.choose(releases={**fleet.releases, arm.artifact: arm}, scope=scope)
    assert t.ok  # platforms=None: not checked
    t = fleet.choose(scope=scope, platforms=frozenset())
    assert t.ok  # fleet.r6 has no platform


def test_release_platform_is_optional_on_the_wire(fleet: Fleet) -> None:
    """A record without a platform keeps the exact bytes it had before the field existed;
    one with a platform round-trips; a malformed one is a SchemaError."""
    plain = fleet.r6
    assert "platform" not in plain.to_obj()
    assert Release.from_payload(plain.to_payload()) == plain
    tagged = dataclasses.replace(plain, platform="cp311-manylinux_2_34_x86_64")
    assert tagged.to_obj()["platform"] == "cp311-manylinux_2_34_x86_64"
    assert Release.from_payload(tagged.to_payload()) == tagged
    assert "for cp311-manylinux_2_34_x86_64" in tagged.describe()
    for bad in ("", "x", "cp311-", "CP311-any", "cp311-any;rm", 7, "cp311-" + "a" * 300):
        obj = {**plain.to_obj(), "platform": bad}
        with pytest.raises(SchemaError):
            Release.from_obj(obj)
