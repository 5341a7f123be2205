"""Creating a network directory: a key for every role and the signed root.

``p2pupdate-coordinator init`` (:mod:`coordinator.cli`) and the asks-per-second bench
(:mod:`coordinator.bench`), which builds a throwaway network before it starts a replica,
both call :func:`init_network`, so the bench measures a network made exactly as an
operator makes one, without importing the command line.

A network directory holds::

    DIR/root.msgpack                 the root document (give it to every node)
    DIR/keys/<role>-<i>.pem          private keys, mode 0600
    DIR/keys/<role>-<i>.pub.pem      their public keys
    DIR/allowlists/                  every allowlist signed (``allow``)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from p2pupdate.cli.common import UsageError
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.fsutil import atomic_write, create_exclusive, fsync_dir

__all__ = ["ROOT_FILE", "SMALLEST", "NetworkPlan", "init_network"]

ROOT_FILE = "root.msgpack"


@dataclass(frozen=True, kw_only=True, slots=True)
class NetworkPlan:
    """How many keys each role gets, and how many of them must sign.

    Validated on construction: a threshold above its key count could never be met, and a
    root lists at most ``documents.MAX_KEYS`` keys.  The messages name ``init``'s flags,
    because that is where the numbers come from.
    """

    replicas: int
    quorum: int
    operators: int
    operator_threshold: int
    root_keys: int
    root_threshold: int
    release_keys: int
    release_threshold: int

    def __post_init__(self) -> None:
        for n, t, what in (
            (self.replicas, self.quorum, "--quorum"),
            (self.operators, self.operator_threshold, "--operator-threshold"),
            (self.root_keys, self.root_threshold, "--root-threshold"),
            (self.release_keys, self.release_threshold, "--release-threshold"),
        ):
            if t > n:
                raise UsageError(f"{what} {t} is larger than the number of keys ({n})")
        total = self.replicas + self.operators + self.root_keys + self.release_keys
        if total > docs.MAX_KEYS:
            raise UsageError(f"{total} keys in all; a root lists at most {docs.MAX_KEYS}")

    def roles(self) -> dict[str, tuple[int, int]]:
        """Role name -> (key count, threshold), in the order the keys are made."""
        return {
            "root": (self.root_keys, self.root_threshold),
            "release": (self.release_keys, self.release_threshold),
            "coordinator": (self.replicas, self.quorum),
            "operator": (self.operators, self.operator_threshold),
        }


#: One key per role, each its own threshold: one replica, quorum 1.
SMALLEST = NetworkPlan(
    replicas=1,
    quorum=1,
    operators=1,
    operator_threshold=1,
    root_keys=1,
    root_threshold=1,
    release_keys=1,
    release_threshold=1,
)


def init_network(
    d: Path, plan: NetworkPlan, *, network: str | None, expires: int, now: int
) -> docs.Root:
    """Create the network ``plan`` describes in ``d`` and return its (signed) root.

    Writes ``d/keys/<role>-<i>.pem`` (+ ``.pub.pem``) and ``d/root.msgpack``, version 1,
    valid from ``now`` for ``expires`` seconds, named ``network`` (default: ``d``'s name).
    Refuses (:class:`UsageError`) to touch an existing network or a keys directory that
    already holds keys, so no key is ever overwritten.
    """
    if (d / ROOT_FILE).exists():
        raise UsageError(f"{d / ROOT_FILE} already exists; refusing to overwrite a network")
    name = d.resolve().name if network is None else network
    try:  # the root's own rule for the name, before any key is written
        docs.Root.FIELDS["network"]("network", name)
    except P2PUpdateError as exc:
        raise UsageError(f"network name {name!r}: {exc}") from None
    keys_dir = d / "keys"
    try:
        d.mkdir(parents=True, exist_ok=True)
        keys_dir.mkdir(mode=0o700, exist_ok=True)
        (d / "allowlists").mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {d}: {exc.strerror or exc}") from None
    existing = sorted(keys_dir.glob("*.pem"))
    if existing:
        raise UsageError(f"{keys_dir} already holds keys ({existing[0].name}); use an empty DIR")

    all_keys: dict[str, bytes] = {}
    roles: dict[str, docs.Role] = {}
    root_signers: list[crypto.SigningKey] = []
    for role, (count, threshold) in plan.roles().items():
        ids = []
        for i in range(1, count + 1):
            key = crypto.SigningKey.from_seed(os.urandom(32))
            create_exclusive(
                keys_dir / f"{role}-{i}.pem", crypto.private_key_to_pem(key), mode=0o600
            )
            create_exclusive(
                keys_dir / f"{role}-{i}.pub.pem",
                crypto.public_key_to_pem(key.public_key),
                mode=0o644,
            )
            all_keys[key.keyid] = key.public_key
            ids.append(key.keyid)
            if role == "root":
                root_signers.append(key)
        roles[role] = docs.Role(keys=tuple(ids), threshold=threshold)
    fsync_dir(keys_dir)
    unchecked = docs.Root(
        version=1,
        issued=now,
        expires=now + expires,
        network=name,
        keys=all_keys,
        roles=roles,
    )
    try:
        root: docs.Root = unchecked.checked()
    except P2PUpdateError as exc:
        raise UsageError(str(exc)) from None
    atomic_write(d / ROOT_FILE, root.sign(root_signers).to_wire())
    return root
