"""The next root of a key rotation, from the current one (pure: keys and times are
arguments).

``p2pupdate-coordinator rotate`` (:mod:`coordinator.cli`) makes the new keys, finds the
signers and writes the files; this module decides what root N+1 says.  The rules are the
trust core's (DESIGN §4, ``trust.TrustStore.update_root``): root N+1 is version N+1, it is
accepted only when signed by a threshold of root N's root keys *and* of its own, and a
role whose keys or threshold change has the floors of what it signs reset on every node
(how the fleet recovers after a stolen key fast-forwarded a version).  Every refusal here
is the operator's mistake (:class:`RotationError`) and happens before anything is signed.

One change per rotation, to one role:

* ``replace``: one key out, one new key in its place (the threshold is kept);
* ``add``: ``N`` new keys;
* ``remove``: one key out (the role keeps at least one, and its threshold must still be
  reachable: lower it with ``threshold`` in the same rotation).

``threshold`` alone (no key change) is a rotation too: it resets the role's floors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import P2PUpdateError

__all__ = [
    "MIN_PREFIX",
    "Change",
    "Rotation",
    "RotationError",
    "find_key",
    "next_root",
]

#: Shortest key id prefix accepted for ``--replace`` / ``--remove`` (the CLI prints 16).
MIN_PREFIX = 8


class RotationError(ValueError):
    """The rotation asked for cannot be made (the operator's mistake; nothing is signed)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """What to change in one role: exactly one of ``replace``, ``add``, ``remove``, or
    only ``threshold``."""

    role: str
    replace: str | None = None
    add: int = 0
    remove: str | None = None
    threshold: int | None = None

    def __post_init__(self) -> None:
        if self.role not in docs.ROLES:
            raise RotationError(f"--role {self.role!r}: not one of {', '.join(docs.ROLES)}")
        modes = sum((self.replace is not None, self.add > 0, self.remove is not None))
        if modes > 1:
            raise RotationError("give one of --replace, --add, --remove")
        if modes == 0 and self.threshold is None:
            raise RotationError("nothing to change: give --replace, --add, --remove or --threshold")
        if self.add < 0:
            raise RotationError(f"--add {self.add}: must be at least 1")
        if self.threshold is not None and self.threshold < 1:
            raise RotationError(f"--threshold {self.threshold}: must be at least 1")

    @property
    def keys_needed(self) -> int:
        """How many new keys the rotation puts in the role."""
        return 1 if self.replace is not None else self.add


@dataclass(frozen=True, kw_only=True, slots=True)
class Rotation:
    """Root N+1 and what changed: the key ids taken out of the role and put in."""

    root: docs.Root
    role: str
    removed: tuple[str, ...]
    added: tuple[str, ...]
    old_threshold: int
    new_threshold: int

    @property
    def root_role_changed(self) -> bool:
        """True when root N+1's root keys differ from root N's (what the root role signs,
        the network document and the bundle, must be signed again by the new keys)."""
        return self.role == "root" and (
            bool(self.removed or self.added) or self.old_threshold != self.new_threshold
        )


def find_key(root: docs.Root, role: str, text: str) -> str:
    """The key id of ``role`` that ``text`` names: the whole id or a unique prefix of at
    least ``MIN_PREFIX`` hex characters (the CLI prints 16)."""
    t = text.strip().lower()
    if len(t) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in t):
        raise RotationError(
            f"{text!r} is not a key id (hex, at least {MIN_PREFIX} characters; "
            "`p2pupdate keys show PEM` prints one)"
        )
    keys = root.roles[role].keys
    hits = [k for k in keys if k.startswith(t)]
    if not hits:
        elsewhere = [r for r in docs.ROLES if any(k.startswith(t) for k in root.roles[r].keys)]
        where = f" (it is a {elsewhere[0]} key)" if elsewhere else ""
        raise RotationError(
            f"{text!r}: not one of the {role} keys of root v{root.version}{where}: "
            + ", ".join(k[:16] for k in keys)
        )
    if len(hits) > 1:
        raise RotationError(f"{text!r}: names {len(hits)} {role} keys; give more of the id")
    return hits[0]


def next_root(
    current: docs.Root,
    change: Change,
    new_keys: Sequence[bytes],
    *,
    now: int,
    lifetime: int,
) -> Rotation:
    """Root ``current.version + 1`` with ``change`` applied, issued at ``now`` and valid
    for ``lifetime`` seconds.

    ``new_keys``: the raw public keys the change puts in (``change.keys_needed`` of them),
    in order; a replaced key's successor takes its place in the role's list.  A key taken
    out of its last role leaves the root's key map.  The result is checked as a node
    checks a root (``Root.checked``).
    """
    if len(new_keys) != change.keys_needed:
        raise RotationError(f"{change.keys_needed} new keys needed, {len(new_keys)} given")
    role = current.roles[change.role]
    ids = [crypto.keyid(pub) for pub in new_keys]
    if len(set(ids)) != len(ids) or any(k in current.keys for k in ids):
        raise RotationError("a new key is already in the root (the same key twice)")
    keys = list(role.keys)
    removed: list[str] = []
    if change.replace is not None:
        old = find_key(current, change.role, change.replace)
        keys[keys.index(old)] = ids[0]
        removed.append(old)
    elif change.remove is not None:
        old = find_key(current, change.role, change.remove)
        if len(keys) == 1:
            raise RotationError(
                f"--remove: {old[:16]}... is the only {change.role} key; a role keeps at "
                "least one (use --replace)"
            )
        keys.remove(old)
        removed.append(old)
    else:
        keys += ids
    if len(keys) > docs.MAX_KEYS:
        raise RotationError(
            f"the {change.role} role would hold {len(keys)} keys; at most {docs.MAX_KEYS}"
        )
    threshold = role.threshold if change.threshold is None else change.threshold
    if threshold > len(keys):
        hint = "" if change.threshold is not None else " (lower it with --threshold)"
        raise RotationError(
            f"threshold {threshold} of the {change.role} role exceeds its {len(keys)} keys{hint}"
        )
    if not removed and not ids and threshold == role.threshold:
        raise RotationError(
            f"--threshold {threshold}: the {change.role} role has that threshold already"
        )
    roles = {**current.roles, change.role: docs.Role(keys=tuple(keys), threshold=threshold)}
    listed = {k for r in roles.values() for k in r.keys}
    all_keys: Mapping[str, bytes] = {
        **{k: pub for k, pub in current.keys.items() if k in listed},
        **dict(zip(ids, new_keys, strict=True)),
    }
    if len(all_keys) > docs.MAX_KEYS:
        raise RotationError(f"the root would list {len(all_keys)} keys; at most {docs.MAX_KEYS}")
    try:
        root: docs.Root = docs.Root(
            version=current.version + 1,
            issued=now,
            expires=now + lifetime,
            network=current.network,
            keys=all_keys,
            roles=roles,
        ).checked()
    except P2PUpdateError as exc:
        raise RotationError(f"root v{current.version + 1}: {exc}") from None
    return Rotation(
        root=root,
        role=change.role,
        removed=tuple(removed),
        added=tuple(ids),
        old_threshold=role.threshold,
        new_threshold=threshold,
    )
