"""``p2pupdate-coordinator``: set up a network's root of trust and sign allowlists.

A network directory holds::

    DIR/root.msgpack                 the root document (give it to every node)
    DIR/keys/<role>-<i>.pem          private keys, mode 0600 (move root/release/operator
    DIR/keys/<role>-<i>.pub.pem      keys offline in production; coordinator keys stay)
    DIR/allowlists/v<N>.msgpack      every allowlist signed, newest = highest N

Exit codes: 0 ok, 1 rejected, 2 usage or input mistake.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from p2pupdate import __version__
from p2pupdate.cliutil import (
    EXIT_OK,
    Parser,
    Rejected,
    UsageError,
    duration,
    load_signing_key,
    positive_int,
    read_input,
    run,
    wall_clock,
    write_output,
)
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.core.trust import TrustStore
from p2pupdate.fsutil import atomic_write, create_exclusive, fsync_dir

ROOT_FILE = "root.msgpack"
_ALLOW_RE = re.compile(r"^v(\d+)\.msgpack$")


def _check_counts(args: argparse.Namespace) -> None:
    for n, t, what in (
        (args.replicas, args.quorum, "--quorum"),
        (args.operators, args.operator_threshold, "--operator-threshold"),
        (args.root_keys, args.root_threshold, "--root-threshold"),
        (args.release_keys, args.release_threshold, "--release-threshold"),
    ):
        if t > n:
            raise UsageError(f"{what} {t} is larger than the number of keys ({n})")
    total = args.replicas + args.operators + args.root_keys + args.release_keys
    if total > docs.MAX_KEYS:
        raise UsageError(f"{total} keys in all; a root lists at most {docs.MAX_KEYS}")


def cmd_init(args: argparse.Namespace) -> int:
    _check_counts(args)
    d = Path(args.dir)
    if (d / ROOT_FILE).exists():
        raise UsageError(f"{d / ROOT_FILE} already exists; refusing to overwrite a network")
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

    plan = {
        "root": (args.root_keys, args.root_threshold),
        "release": (args.release_keys, args.release_threshold),
        "coordinator": (args.replicas, args.quorum),
        "operator": (args.operators, args.operator_threshold),
    }
    all_keys: dict[str, bytes] = {}
    roles: dict[str, docs.Role] = {}
    root_signers: list[crypto.SigningKey] = []
    for role, (count, threshold) in plan.items():
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
    now = wall_clock()
    root = docs.Root(
        version=1,
        issued=now,
        expires=now + args.expires,
        network=args.network or d.resolve().name,
        keys=all_keys,
        roles=roles,
    )
    try:
        root = root.checked()
    except P2PUpdateError as exc:
        raise UsageError(str(exc)) from None
    atomic_write(d / ROOT_FILE, root.sign(root_signers).to_wire())
    print(root.describe())
    print(f"wrote {d / ROOT_FILE} and {len(all_keys) * 2} key files in {keys_dir}")
    print("keep root-*, release-* and operator-* keys offline; give root.msgpack to every node")
    return EXIT_OK


def _load_network(d: Path) -> TrustStore:
    path = d / ROOT_FILE
    if not path.exists():
        raise UsageError(f"{path}: no such file (run `p2pupdate-coordinator init {d}` first)")
    try:
        return TrustStore.from_root(read_input(path), wall_clock())
    except P2PUpdateError as exc:
        raise Rejected(f"{path}: {exc.rule}: {exc}") from None


def _role_keys(d: Path, store: TrustStore, role: str) -> list[crypto.SigningKey]:
    """Private keys of ``role`` found in DIR/keys that the root lists for that role."""
    wanted = set(store.root.roles[role].keys)
    found = []
    for path in sorted((d / "keys").glob(f"{role}-*.pem")):
        if path.name.endswith(".pub.pem"):
            continue
        key = load_signing_key(path)
        if key.keyid in wanted:
            found.append(key)
    return found


def next_allowlist_version(d: Path) -> int:
    versions = [
        int(m.group(1))
        for p in (d / "allowlists").glob("v*.msgpack")
        if (m := _ALLOW_RE.match(p.name))
    ]
    return max(versions, default=0) + 1


def cmd_allow(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    store = _load_network(d)
    now = wall_clock()
    artifacts: list[str] = []
    for path in args.releases:
        try:
            signed = store.verify(docs.Release, read_input(path), now)
        except P2PUpdateError as exc:
            raise Rejected(f"{path}: {exc.rule}: {exc}") from None
        if signed.doc.artifact not in artifacts:
            artifacts.append(signed.doc.artifact)
        print(f"  {signed.doc.describe()}")
    signers = _role_keys(d, store, "coordinator")
    threshold = store.root.roles["coordinator"].threshold
    if len(signers) < threshold:
        raise UsageError(
            f"{d / 'keys'} holds {len(signers)} coordinator keys of this root; {threshold} needed"
        )
    (d / "allowlists").mkdir(exist_ok=True)
    version = next_allowlist_version(d)
    try:
        allow = docs.Allowlist(
            version=version, issued=now, expires=now + args.expires, artifacts=tuple(artifacts)
        ).checked()
    except P2PUpdateError as exc:
        raise UsageError(str(exc)) from None
    data = allow.sign(signers).to_wire()
    # Record in the network dir first: the version is used even if -o fails afterwards.
    atomic_write(d / "allowlists" / f"v{version}.msgpack", data)
    write_output(args.output, data)
    print(f"{allow.describe()}, expires {allow.expires}; wrote {args.output}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="p2pupdate-coordinator",
        description="The thin coordinator of a p2pupdate network: root of trust, allowlists, "
        "and (from later releases) the capacity gate that hands out departure tokens.",
        epilog="Exit codes: 0 ok, 1 rejected, 2 usage error.",
    )
    p.add_argument("--version", action="version", version=f"p2pupdate-coordinator {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    ini = sub.add_parser(
        "init",
        help="create a network: keys for every role and a signed root",
        description="Create DIR/root.msgpack and DIR/keys/<role>-<i>.pem (+ .pub.pem) for "
        "roles root, release, coordinator (one per replica) and operator. Refuses to touch "
        "an existing network.",
    )
    ini.add_argument("dir", metavar="DIR")
    ini.add_argument(
        "--replicas",
        type=positive_int,
        default=1,
        metavar="N",
        help="coordinator replicas (default 1)",
    )
    ini.add_argument(
        "--quorum",
        type=positive_int,
        default=1,
        metavar="Q",
        help="replica signatures per token (default 1)",
    )
    ini.add_argument(
        "--operators", type=positive_int, default=1, metavar="K", help="operator keys (default 1)"
    )
    ini.add_argument("--operator-threshold", type=positive_int, default=1, metavar="T")
    ini.add_argument("--root-keys", type=positive_int, default=1, metavar="K")
    ini.add_argument("--root-threshold", type=positive_int, default=1, metavar="T")
    ini.add_argument("--release-keys", type=positive_int, default=1, metavar="K")
    ini.add_argument("--release-threshold", type=positive_int, default=1, metavar="T")
    ini.add_argument("--network", metavar="NAME", help="network name (default: DIR's name)")
    ini.add_argument(
        "--expires",
        type=duration,
        default=365 * 86400,
        metavar="DUR",
        help="root lifetime (default 365d)",
    )
    ini.set_defaults(handler=cmd_init)

    al = sub.add_parser(
        "allow",
        help="sign the next allowlist from release records",
        description="Verify each RELEASE record against DIR's root and sign allowlist version "
        "N+1 listing exactly those artifacts with DIR's coordinator keys. A copy is kept as "
        "DIR/allowlists/vN.msgpack.",
    )
    al.add_argument("releases", nargs="+", metavar="RELEASE")
    al.add_argument("--dir", required=True, metavar="DIR", help="network directory from init")
    al.add_argument(
        "--expires", type=duration, default=7 * 86400, metavar="DUR", help="lifetime (default 7d)"
    )
    al.add_argument("-o", "--output", required=True, metavar="OUT")
    al.set_defaults(handler=cmd_allow)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run("p2pupdate-coordinator", build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
