"""Gates 1 and 2, as pure functions that return results, not exceptions.

A gate that says no is a normal answer with a reason an operator can act on ("held back
by rollout scope" must never look like "broken"), so each returns a ``GateResult``.
The documents passed in must already be verified (``TrustStore``); the gates check what
depends on *this node* and *now*: expiry at decision time, membership, downgrades.

Fraction scopes are a pure function of (seed, node id, fraction): the node, the
coordinator and the simulations compute exactly the same membership.  Membership is
monotone in the fraction for a fixed seed, so widening 5% -> 25% keeps the first 5% in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Final

from .documents import SKEW, Allowlist, Release, Scope

GATE_ALLOWLIST: Final = "allowlist"
GATE_SCOPE: Final = "scope"
GATE_CAPACITY: Final = "capacity"
#: Gate 1's "no" when the allowlist names an artifact whose release record is not held yet
#: (the updater waits for ``ReleaseLearned``, not a whole check interval).
NO_RELEASE_RECORD: Final = "no-release-record"

#: Gate 1's "no" for a self-contained build made for another platform than this node's.
WRONG_PLATFORM: Final = "wrong-platform"

FRACTION_DOMAIN: Final = b"p2pupdate/scope-fraction\x00"
_TWO_64: Final = 1 << 64


@dataclass(frozen=True, kw_only=True)
class GateResult:
    ok: bool
    gate: str
    reason: str
    detail: str = ""
    retry_after: float | None = None

    def __str__(self) -> str:
        verdict = "pass" if self.ok else "refused"
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.gate} {verdict} ({self.reason}){detail}"


def _no(gate: str, reason: str, detail: str) -> GateResult:
    return GateResult(ok=False, gate=gate, reason=reason, detail=detail)


def _yes(gate: str, reason: str, detail: str = "") -> GateResult:
    return GateResult(ok=True, gate=gate, reason=reason, detail=detail)


# -- fraction membership ----------------------------------------------------------------


def fraction_point(seed: bytes, node_id: str) -> int:
    """The node's fixed point in [0, 2^64) for this seed."""
    digest = hashlib.sha256(FRACTION_DOMAIN + seed + bytes.fromhex(node_id)).digest()
    return int.from_bytes(digest[:8], "big")


def fraction_threshold(fraction: float) -> int:
    """Points below this are in.  Exact for every float in [0, 1]."""
    if fraction >= 1.0:
        return _TWO_64
    if fraction <= 0.0:
        return 0
    return int(fraction * _TWO_64)  # scaling by a power of two is exact; int() truncates


def in_fraction(seed: bytes, node_id: str, fraction: float) -> bool:
    return fraction_point(seed, node_id) < fraction_threshold(fraction)


def fraction_in_force(scope: Scope, now: int) -> float:
    """The fraction a ``kind="fraction"`` scope admits at ``now``.

    Without a ramp: ``scope.fraction``.  With one: the fraction of the last stage whose
    ``issued + after <= now``, and 0 (nobody) before the first stage.  Never above the
    signed cap ``scope.fraction`` (the last stage), and non-decreasing in ``now``: with one
    seed, ``in_fraction`` is monotone in the fraction, so a node admitted at ``t`` is
    admitted at every ``t' >= t``.

    A clock wound back cannot un-ramp in a way that matters: gate 2 only decides whether a
    node may *start* moving.  A node that already moved runs the artifact and stays
    (``choose_target`` answers "already-running"; nothing here moves a node back), and a
    departure token already granted lasts to its own expiry.  A wound-back clock (node's or
    coordinator's) can only delay further admissions, as if the ramp were slower; it can
    never admit beyond the signed stages.
    """
    if not scope.ramp:
        return scope.fraction
    i = scope.stage_in_force(now)
    return 0.0 if i is None else scope.ramp[i][1]


# -- gate 1 -----------------------------------------------------------------------------


def is_upgrade(counter: int, installed_counter: int | None) -> bool:
    """The counter rule: a release moves a node forward only if its counter is above the
    installed one (``None``: nothing is known to be installed, so anything is forward).

    The one home of "a lower or equal release counter is a downgrade" (README "Trust
    model"): gate 1 applies it (with the ``force`` exception), and so does the file-drop
    stand-in for gossip (``newest_upgrade``).
    """
    return installed_counter is None or counter > installed_counter


def platform_supported(required: str, supported: Set[str]) -> bool:
    """Whether a node that can run the platform tags ``supported`` can run a build that
    needs ``required`` (a release record's ``platform``).

    ``required`` is ``<python>-<platform>[+<platform>...]`` (``cp311-manylinux_2_34_x86_64``);
    every ``<python>-<platform>`` it joins must be in ``supported``, which the shell lists
    from the running interpreter (``launcher.artifact.node_platforms``: ``cp311-any`` and
    ``cp311-manylinux_2_0_x86_64`` ... up to its glibc).  "" (a build of our code alone)
    runs anywhere.
    """
    if not required:
        return True
    python, _, platforms = required.partition("-")
    return all(f"{python}-{p}" in supported for p in platforms.split("+"))


def installed_floor(installed: Release | None, installed_counter: int | None) -> int | None:
    """The counter a candidate must be above: the higher of what is known of the install.

    ``installed`` is the release record of the running build when the node holds it;
    ``installed_counter`` is the counter the node's own slot records (a build installed
    from an offer drop, or one whose record the coordinator has not sent).  When both are
    known the higher wins: a node never moves below what it runs.
    """
    known = [installed_counter] if installed_counter is not None else []
    if installed is not None:
        known.append(installed.counter)
    return max(known) if known else None


def allowlisted(
    artifact: str,
    *,
    allowlist: Allowlist | None,
    releases: Mapping[str, Release],
    now: int,
    installed: Release | None = None,
    installed_counter: int | None = None,
    scope: Scope | None = None,
    platforms: Set[str] | None = None,
) -> GateResult:
    """Gate 1: the exact artifact is on an unexpired allowlist and has a release record.

    With ``platforms`` (the tags this node can run), a release whose ``platform`` is not
    among them is refused as ``wrong-platform``: its dependencies would not load here, so
    moving to it could only end in a rollback.  None skips the check (callers that do not
    know the node's platform: the coordinator, the simulator).

    A release with a counter not above the installed one (``installed_floor``) is a
    downgrade and passes only when ``scope`` is a ``force`` scope naming exactly this
    artifact.
    """
    g = GATE_ALLOWLIST
    if allowlist is None:
        return _no(g, "no-allowlist", "no verified allowlist")
    if now > allowlist.expires + SKEW:
        return _no(g, "allowlist-expired", f"allowlist v{allowlist.version} expired")
    if artifact not in allowlist.artifacts:
        return _no(
            g, "not-allowlisted", f"{artifact[:16]}... not on allowlist v{allowlist.version}"
        )
    release = releases.get(artifact)
    if release is None:
        return _no(g, NO_RELEASE_RECORD, f"{artifact[:16]}... has no signed release record")
    if now > release.expires + SKEW:
        return _no(g, "release-expired", f"release {release.name!r} record expired")
    if platforms is not None and not platform_supported(release.platform, platforms):
        return _no(
            g,
            WRONG_PLATFORM,
            f"release {release.name!r} is built for {release.platform}, which this node cannot run",
        )
    floor = installed_floor(installed, installed_counter)
    if not is_upgrade(release.counter, floor):
        forced = scope is not None and scope.force and scope.artifact == artifact
        if not forced:
            return _no(
                g,
                "downgrade",
                f"release counter {release.counter} is not above installed {floor}",
            )
        return _yes(g, "forced-downgrade", f"force scope {scope.serial if scope else '?'}")
    return _yes(g, "allowlisted", f"release {release.name!r} counter {release.counter}")


def newest_upgrade(
    counters: Mapping[str, int], *, installed: str, installed_counter: int
) -> str | None:
    """Of artifacts offered without documents (``counters``: artifact -> release counter),
    the one with the highest counter that ``is_upgrade``; ties go to the larger artifact id
    so every node given the same offers picks the same one.  None when nothing is newer.

    This is gate 1 for the file-drop stand-in for gossip (``daemon/offers.py``), where no
    allowlist or scope exists yet: only the counter rule applies.
    """
    newer = [
        (counter, artifact)
        for artifact, counter in counters.items()
        if artifact != installed and is_upgrade(counter, installed_counter)
    ]
    return max(newer)[1] if newer else None


# -- gate 2 -----------------------------------------------------------------------------


def in_scope(node_id: str, artifact: str, *, scope: Scope | None, now: int) -> GateResult:
    """Gate 2: this node is inside the operator's current rollout scope for ``artifact``."""
    g = GATE_SCOPE
    if scope is None:
        return _no(g, "no-scope", "no verified scope token")
    if now > scope.expires + SKEW:
        return _no(g, "scope-expired", f"scope serial {scope.serial} expired")
    if scope.artifact != artifact:
        return _no(
            g, "scope-other-artifact", f"scope serial {scope.serial} is for another artifact"
        )
    if scope.kind == "nobody":
        return _no(g, "scope-nobody", f"scope serial {scope.serial} holds everyone back")
    if scope.kind == "everyone":
        return _yes(g, "everyone")
    if scope.kind == "nodes":
        if node_id in scope.nodes:
            return _yes(g, "named")
        return _no(g, "not-named", f"node not among the {len(scope.nodes)} named")
    # fraction (a ramp: the fraction in force at ``now``; same membership function)
    fraction = fraction_in_force(scope, now)
    if in_fraction(scope.seed, node_id, fraction):
        return _yes(g, "in-fraction", f"fraction {fraction:g}")
    if scope.ramp and scope.stage_in_force(now) is None:
        return _no(g, "ramp-not-started", f"scope serial {scope.serial}: ramp starts later")
    return _no(g, "outside-fraction", f"node outside fraction {fraction:g}")


# -- both -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Target:
    """What gates 1 and 2 say for one node: the artifact it may ask to move to, or why not."""

    artifact: str | None
    release: Release | None
    results: tuple[GateResult, ...]

    @property
    def ok(self) -> bool:
        return self.artifact is not None

    @property
    def refusal(self) -> GateResult | None:
        return next((r for r in self.results if not r.ok), None)


def choose_target(
    node_id: str,
    *,
    installed: Release | None,
    allowlist: Allowlist | None,
    releases: Mapping[str, Release],
    scope: Scope | None,
    now: int,
    installed_counter: int | None = None,
    platforms: Set[str] | None = None,
) -> Target:
    """The candidate is the artifact the current scope names; both gates must pass.

    Gate 2 is evaluated even when gate 1 fails, so an operator sees every reason at once.
    ``installed`` is the running build's release record if the node holds it, and
    ``installed_counter`` the counter its slot records (see ``installed_floor``);
    ``platforms`` the tags this node can run (see ``allowlisted``).
    """
    if scope is None:
        res = in_scope(node_id, "", scope=None, now=now)
        return Target(artifact=None, release=None, results=(res,))
    artifact = scope.artifact
    if installed is not None and installed.artifact == artifact:
        res = _yes(GATE_ALLOWLIST, "already-running", f"release {installed.name!r}")
        return Target(artifact=None, release=installed, results=(res,))
    r1 = allowlisted(
        artifact,
        allowlist=allowlist,
        releases=releases,
        now=now,
        installed=installed,
        installed_counter=installed_counter,
        scope=scope,
        platforms=platforms,
    )
    r2 = in_scope(node_id, artifact, scope=scope, now=now)
    ok = r1.ok and r2.ok
    return Target(
        artifact=artifact if ok else None,
        release=releases.get(artifact),
        results=(r1, r2),
    )
