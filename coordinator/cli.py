"""``p2pupdate-coordinator``: a network's root of trust, allowlists, and the service.

Commands: ``init``, ``allow``, ``network``, ``member`` and ``bundle`` (offline, in the network
directory), ``serve`` (one replica), and the operator's tools that talk to running replicas
over HTTP: ``status`` (``--watch``: a live table), ``why`` (one node), ``publish``, ``nudge``,
``bench``.

A network directory holds::

    DIR/root.msgpack                 the root document (give it to every node)
    DIR/network.msgpack              the admission rule and subnet caps (root-signed; give
                                     it to every node; replicas read it at start)
    DIR/keys/<role>-<i>.pem          private keys, mode 0600 (move root/release/operator
    DIR/keys/<role>-<i>.pub.pem      keys offline in production; coordinator keys stay)
    DIR/allowlists/v<N>.msgpack      every allowlist signed, newest = highest N

Exit codes: 0 ok, 1 rejected, 2 usage or input mistake (a replica that cannot be reached
is a usage mistake: the URL is wrong or the service is down).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio

from p2pupdate import __version__
from p2pupdate.cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    Parser,
    Rejected,
    UsageError,
    duration,
    int_range,
    load_signing_key,
    pool_name,
    positive_int,
    read_input,
    run,
    safe_output,
    sha256_hex,
    wall_clock,
    write_output,
)
from p2pupdate.core import admission, crypto, reporting, timing, turn
from p2pupdate.core import bundle as bd
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.core.trust import Floor, TrustStore
from p2pupdate.errors import LocalStateFault
from p2pupdate.fsutil import atomic_write, create_exclusive, fsync_dir
from p2pupdate.net.websocket import parse_url

from . import policy, policy_hold, rotation
from .bench import MAX_CONCURRENCY, MAX_SESSIONS, BenchError, run_bench
from .catchup import CatchUp, CatchUpConfig
from .ice import DEFAULT_TURN_TTL, MAX_TURN_TTL, MIN_TURN_TTL, IceConfig
from .limits import add_flags as add_limit_flags
from .limits import from_args as limits_from_args
from .network import ROOT_FILE, NetworkPlan, init_network
from .origin import DEFAULT_MAX_DOWNLOADERS, DEFAULT_REPEAT_WINDOW, DEFAULT_WINDOW, OriginConfig
from .policy import MAX_CONCURRENT_LIMIT, PolicyConfig
from .publishing import PUBLISH_ORDER
from .readaccess import add_flags as add_read_flags
from .readaccess import from_args as read_access_from_args
from .readaccess import read_token_file
from .service import ConfigError, Replica, ServiceConfig
from .statelock import LOCK_FILE, StateDirLock

#: ``serve``'s defaults are the dataclasses' own (written once, in policy.py / service.py).
POLICY_DEFAULTS: Final = PolicyConfig()
SERVE_DEFAULTS: Final = ServiceConfig(network_dir=Path("."))

_ALLOW_RE = re.compile(r"^v(\d+)\.msgpack$")


def cmd_init(args: argparse.Namespace) -> int:
    plan = NetworkPlan(
        replicas=args.replicas,
        quorum=args.quorum,
        operators=args.operators,
        operator_threshold=args.operator_threshold,
        root_keys=args.root_keys,
        root_threshold=args.root_threshold,
        release_keys=args.release_keys,
        release_threshold=args.release_threshold,
    )
    d = Path(args.dir)
    now = wall_clock()
    rule = _admission_flags(args)
    # The flags checked as the document's own rules before any key is made, so a refusal
    # leaves nothing behind (the name is the root's: ``init_network`` checks it).
    _network_doc({**rule, "version": 1, "network": "n", "issued": now, "expires": now})
    root = init_network(d, plan, network=args.network, expires=args.expires, now=now)
    # Valid as long as the root that signs it: both are signed by the root keys, which
    # live offline, so they are re-signed together (a root rotation is when the operator
    # has those keys out anyway), and an admission rule that lapsed on its own while the
    # root still held would stop the fleet admitting anyone with no key at hand.
    config = _network_doc(
        {**rule, "version": 1, "network": root.network, "issued": now, "expires": root.expires}
    )
    signers = _role_keys(d, root, "root")
    _write_network(d, root, config, signers)
    print(root.describe())
    print(config.describe())
    print(
        f"wrote {d / ROOT_FILE}, {d / admission.NETWORK_FILE} and {len(root.keys) * 2} key "
        f"files in {d / 'keys'}"
    )
    print(
        "keep root-*, release-* and operator-* keys offline; give root.msgpack and "
        "network.msgpack to every node"
    )
    return EXIT_OK


def _load_network(d: Path) -> TrustStore:
    path = d / ROOT_FILE
    if not path.exists():
        raise UsageError(f"{path}: no such file (run `p2pupdate-coordinator init {d}` first)")
    data = read_input(path)  # outside the try: a UsageError is a P2PUpdateError too
    try:
        return TrustStore.from_root(data, wall_clock())
    except P2PUpdateError as exc:
        raise Rejected(f"{path}: {exc.rule}: {exc}") from None


def _role_keys(d: Path, root: docs.Root, role: str) -> list[crypto.SigningKey]:
    """Private keys of ``role`` found in DIR/keys that the root lists for that role."""
    wanted = set(root.roles[role].keys)
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
    safe_output(args.output)  # before a version is signed and recorded in the network dir
    d = Path(args.dir)
    store = _load_network(d)
    now = wall_clock()
    artifacts: list[str] = []
    for path in args.releases:
        data = read_input(path)  # outside the try: a UsageError is a P2PUpdateError too
        try:
            signed = store.verify(docs.Release, data, now)
        except P2PUpdateError as exc:
            raise Rejected(f"{path}: {exc.rule}: {exc}") from None
        if signed.doc.artifact not in artifacts:
            artifacts.append(signed.doc.artifact)
        print(f"  {signed.doc.describe()}")
    signers = _role_keys(d, store.root, "coordinator")
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


# -- admission (P10): the network document and member documents --------------------------

#: ``init``'s proof of work: a node makes ~2^18 keys at its first start to find an id with
#: 18 leading zero bits (~25 us a key on a 2-core test machine: ~6-8 s, once per node id);
#: a stranger pays that for every made-up id.  Each bit more doubles it.
DEFAULT_POW_BITS: Final = 18
#: ``init``'s standing time: an admitted id counts (version counts, the aggregate, the
#: breaker) after one hour of session history with the replica.
DEFAULT_STANDING: Final = 3600
#: Member documents' default lifetime: a year, like a root's.
DEFAULT_MEMBER_LIFETIME: Final = 365 * 86400
#: The network document's rule fields (every field but version, times and name).
RULE_FIELDS: Final = ("admission", "pow_bits", "standing_s", *admission.DEFAULT_CAPS)
_CAP_HELP: Final = {
    "subnet_nodes": "node ids one source subnet (/24 IPv4, /48 IPv6) may register",
    "subnet_reporters": "reporters of one subnet whose estimates enter a pool's median",
    "subnet_leases": "departure leases one subnet may hold at once",
    "subnet_failures": "failure reports of one subnet the breaker counts, per artifact",
}
_ZERO = re.compile(r"^0+[smhdw]?$")


def _standing(text: str) -> int:
    """``--standing``: a duration, or 0 (every admitted id counts at once)."""
    if _ZERO.match(text.strip()):
        return 0
    seconds = duration(text)
    if seconds > docs.MAX_STANDING:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than {docs.MAX_STANDING // 86400}d")
    return seconds


def _node_id(text: str) -> str:
    t = text.strip().lower()
    if len(t) != 64 or any(c not in "0123456789abcdef" for c in t):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a node id (64 hex characters, as `p2pupdate keys show` prints)"
        )
    return t


def add_rule_flags(p: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The admission flags: ``init``'s with its defaults, ``network``'s without (a flag
    not given keeps the current document's value)."""
    caps = admission.DEFAULT_CAPS

    def dflt(value: object, text: str) -> tuple[object, str]:
        return (value, f" (default {text})") if defaults else (None, "")

    value, said = dflt("open", "open")
    p.add_argument(
        "--admission",
        choices=docs.ADMISSION_RULES,
        default=value,
        help="who may count as a node: 'open' (anyone, paying the proof of work and the "
        "standing time) or 'enrolled' (only nodes with a member document signed by the "
        f"operator role: `p2pupdate-coordinator member`){said}",
    )
    value, said = dflt(DEFAULT_POW_BITS, str(DEFAULT_POW_BITS))
    p.add_argument(
        "--pow-bits",
        dest="pow_bits",
        type=int_range(0, docs.MAX_POW_BITS),
        default=value,
        metavar="N",
        help=f"open networks: leading zero bits a node id needs, 0..{docs.MAX_POW_BITS}; a node "
        "makes ~2^N keys at its first start (18 bits: ~2^18 keys at ~25 us each, ~6-8 s "
        f"on a small machine; each bit doubles it){said}",
    )
    value, said = dflt(DEFAULT_STANDING, "1h")
    p.add_argument(
        "--standing",
        dest="standing_s",
        type=_standing,
        default=value,
        metavar="DUR",
        help="open networks: session history an admitted id needs before it is counted in "
        "version counts, the aggregate and the breaker (0: at once; at most "
        f"{docs.MAX_STANDING // 86400}d){said}",
    )
    for name, what in _CAP_HELP.items():
        value, said = dflt(caps[name], str(caps[name]))
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=int_range(1, 1_000_000),
            default=value,
            metavar="N",
            help=f"{what}{said}",
        )


def _admission_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The rule fields the command line gave (``network``: only those given)."""
    return {f: getattr(args, f) for f in RULE_FIELDS if getattr(args, f) is not None}


def _network_doc(values: dict[str, Any]) -> docs.NetworkConfig:
    """A network document from its fields, checked as a receiver checks it."""
    try:
        config: docs.NetworkConfig = docs.NetworkConfig.from_obj(values)
    except P2PUpdateError as exc:
        raise UsageError(str(exc)) from None
    return config


def _signers(
    d: Path, root: docs.Root, role: str, key_files: Sequence[str] | None
) -> list[crypto.SigningKey]:
    """``role``'s keys to sign with: the ``--key`` files (each must be a ``role`` key of
    this root), else those in DIR/keys; fewer than the role's threshold is a usage error."""
    wanted = set(root.roles[role].keys)
    if key_files:
        keys: dict[str, crypto.SigningKey] = {}
        for path in key_files:
            key = load_signing_key(path)
            if key.keyid not in wanted:
                raise UsageError(f"--key {path}: not a {role} key of this network's root")
            keys[key.keyid] = key
        found, where = list(keys.values()), "the --key files hold"
    else:
        found, where = _role_keys(d, root, role), f"{d / 'keys'} holds"
    threshold = root.roles[role].threshold
    if len(found) < threshold:
        raise UsageError(f"{where} {len(found)} {role} keys of this root; {threshold} needed")
    return found


def _write_network(
    d: Path, root: docs.Root, config: docs.NetworkConfig, signers: list[crypto.SigningKey]
) -> None:
    """Sign ``config`` and write DIR/network.msgpack atomically, once it verifies."""
    data = config.sign(signers).to_wire()
    try:  # never write a document no replica would accept
        docs.open_signed(docs.NetworkConfig, data, root)
    except P2PUpdateError as exc:
        raise UsageError(f"the network document would not verify: {exc}") from None
    path = d / admission.NETWORK_FILE
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _current_network(d: Path, root: docs.Root) -> docs.NetworkConfig:
    """DIR/network.msgpack, verified against DIR's root (signatures, not expiry: an
    expired one is what the operator comes to replace)."""
    path = d / admission.NETWORK_FILE
    if not path.is_file():
        default = admission.default_config(root.network)
        raise UsageError(
            f"{path}: no such file (a network made before admission has none; its replicas "
            f"apply {default.describe()}; write one with `p2pupdate-coordinator network {d} "
            "--new`)"
        )
    data = read_input(path)  # outside the try: a UsageError is a P2PUpdateError too
    try:
        config = docs.open_signed(docs.NetworkConfig, data, root).doc
    except P2PUpdateError as exc:
        raise Rejected(
            f"{path}: {exc.rule}: {exc} (not a network document of this root: restore a "
            "genuine copy, every replica and node has one)"
        ) from None
    if config.network != root.network:
        raise Rejected(f"{path}: names network {config.network!r}, not {root.network!r}")
    return config


def cmd_network(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    store = _load_network(d)
    root = store.root
    now = wall_clock()
    changes = _admission_flags(args)
    path = d / admission.NETWORK_FILE
    if args.new:
        if path.exists():
            raise UsageError(f"{path} already exists; change it without --new")
        current, version = admission.default_config(root.network, issued=now), 1
    else:
        current = _current_network(d, root)
        version = current.version + 1
        if not changes and args.expires is None:  # show, change nothing
            state = "EXPIRED" if now > current.expires + docs.SKEW else "valid"
            print(current.describe())
            print(f"  issued {current.issued}, expires {current.expires} ({state}); {path}")
            return EXIT_OK
    # Default expiry: the root's own (init's reason: both are re-signed with the root keys).
    expires = now + args.expires if args.expires is not None else root.expires
    values = {
        **current.to_obj(),
        **changes,
        "version": version,
        "network": root.network,
        "issued": now,
        "expires": expires,
    }
    config = _network_doc(values)
    signers = _signers(d, root, "root", args.key)
    _write_network(d, root, config, signers)
    print(config.describe())
    print(f"  expires {config.expires}; wrote {path}")
    print(
        "replicas read it at start: restart each replica (serve) to apply it; give every "
        f"node a copy (p2pupdate node --network-config {admission.NETWORK_FILE})"
    )
    return EXIT_OK


def cmd_member(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    store = _load_network(d)
    root = store.root
    nodes = list(dict.fromkeys(args.node))
    out = Path(args.output)
    into_dir = out.is_dir()
    if len(nodes) > 1 and not into_dir:
        raise UsageError(
            f"-o {out}: not a directory; {len(nodes)} nodes need one (each is written as "
            "<node>.member.msgpack)"
        )
    targets = [(n, out / f"{n}.member.msgpack" if into_dir else out) for n in nodes]
    for _node, target in targets:  # every path checked before anything is signed
        safe_output(target)
    signers = _signers(d, root, "operator", args.key)
    now = wall_clock()
    for node, target in targets:
        try:
            member: docs.Member = docs.Member(
                node=node, pool=args.pool, issued=now, expires=now + args.expires
            ).checked()
        except P2PUpdateError as exc:
            raise UsageError(str(exc)) from None
        data = member.sign(signers).to_wire()
        try:  # never write a document no replica would accept (the hello's size limit too)
            admission.open_member(data, root, now=now)
        except P2PUpdateError as exc:
            raise UsageError(f"the member document would not verify: {exc}") from None
        write_output(target, data)
        print(f"member {node} of pool {member.pool!r}, expires {member.expires}; wrote {target}")
    print(
        f"give each node its file as {admission.MEMBER_FILE} in its state directory; it "
        "counts on networks whose admission is 'enrolled'"
    )
    return EXIT_OK


def _bundle_url(text: str) -> str:
    """``bundle --url``: the document's rule (``core.bundle``), then the node's own dial
    rule (``parse_url``): never sign a URL no node of this version could dial."""
    try:
        bd.check_replica_url(text)
        parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cmd_bundle(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    store = _load_network(d)  # the root verified and fresh: a node would refuse it otherwise
    root = store.root
    out = safe_output(args.output)
    config = b""
    if (d / admission.NETWORK_FILE).is_file():
        _current_network(d, root)
        config = read_input(d / admission.NETWORK_FILE)
    now = wall_clock()
    expires = now + args.expires if args.expires is not None else root.expires
    if expires > root.expires:
        raise UsageError(
            f"--expires: the bundle would outlive its root (expires {root.expires}); no node "
            "could start from it then"
        )
    try:
        bundle: bd.Bundle = bd.Bundle(
            issued=now,
            expires=expires,
            network=root.network,
            root=store.root_bytes,
            network_config=config,
            replicas=tuple(dict.fromkeys(args.url)),
            stun=tuple(dict.fromkeys(args.stun or ())),
            turn=tuple(dict.fromkeys(args.turn or ())),
            pool=args.pool,
        ).checked()
    except P2PUpdateError as exc:
        raise UsageError(str(exc)) from None
    data = bundle.sign(_signers(d, root, "root", args.key)).to_wire()
    try:  # never write a bundle no node would accept
        bd.open_bundle(data, now=now)
    except P2PUpdateError as exc:
        raise UsageError(f"the bundle would not verify: {exc}") from None
    write_output(out, data)
    print(bundle.describe())
    if not config:
        print(f"  no {d / admission.NETWORK_FILE}: nodes apply the default admission rule")
    print(f"  expires {bundle.expires}; wrote {out} ({len(data)} bytes)")
    print(f"install it on every box as root: p2pupdate install --bundle {out.name}")
    return EXIT_OK


# -- key rotation (P13): root N+1 ---------------------------------------------------------

_KEY_FILE = re.compile(
    r"^(?P<role>[a-z]+)-(?P<i>\d+)\.(?P<pub>pub\.)?pem(?P<retired>\.retired-\d+)?$"
)


def _key_files(d: Path, role: str) -> tuple[dict[str, int], int]:
    """``role``'s key files in DIR/keys: key id -> file index (from the private key or,
    for a key kept offline, its ``.pub.pem``), and the highest index ever used (retired
    files count: an index is never given to a second key)."""
    found: dict[str, int] = {}
    highest = 0
    keys_dir = d / "keys"
    for path in sorted(keys_dir.glob(f"{role}-*")):
        m = _KEY_FILE.match(path.name)
        if m is None or m["role"] != role:
            continue
        i = int(m["i"])
        highest = max(highest, i)
        if m["retired"]:
            continue
        data = read_input(path, crypto.MAX_PEM_BYTES)
        try:
            pub = (
                crypto.public_key_from_pem(data)
                if m["pub"]
                else crypto.private_key_from_pem(data).public_key
            )
        except P2PUpdateError as exc:
            raise UsageError(f"{path}: {exc}") from None
        found.setdefault(crypto.keyid(pub), i)
    return found, highest


def _root_candidates(
    d: Path, key_files: Sequence[str] | None, allowed: set[str]
) -> dict[str, crypto.SigningKey]:
    """The root keys at hand: the ``--key`` files (each must be a root key of root N or
    N+1), else DIR/keys/root-*.pem."""
    if not key_files:
        paths = [
            p for p in sorted((d / "keys").glob("root-*.pem")) if not p.name.endswith(".pub.pem")
        ]
        return {k.keyid: k for k in map(load_signing_key, paths)}
    keys: dict[str, crypto.SigningKey] = {}
    for path in key_files:
        key = load_signing_key(path)
        if key.keyid not in allowed:
            raise UsageError(f"--key {path}: not a root key of this network's root")
        keys[key.keyid] = key
    return keys


def _threshold_of(
    root: docs.Root, keys: dict[str, crypto.SigningKey], what: str, where: str
) -> list[crypto.SigningKey]:
    role = root.roles["root"]
    mine = [keys[k] for k in role.keys if k in keys]
    if len(mine) < role.threshold:
        raise UsageError(
            f"{where} {len(mine)} root keys of {what} v{root.version}; {role.threshold} "
            "needed (give them with --key)"
        )
    return mine


def cmd_rotate(args: argparse.Namespace) -> int:
    d = _network_dir(Path(args.dir))
    out = safe_output(args.output)
    now = wall_clock()
    old_bytes = read_input(d / ROOT_FILE)
    try:  # signatures only: an expired root is one an operator may come to replace
        old_signed = docs.open_root(old_bytes)
    except P2PUpdateError as exc:
        raise Rejected(f"{d / ROOT_FILE}: {exc.rule}: {exc}") from None
    old = old_signed.doc
    try:
        change = rotation.Change(
            role=args.role,
            replace=args.replace,
            add=args.add or 0,
            remove=args.remove,
            threshold=args.threshold,
        )
        fresh = [crypto.SigningKey.from_seed(os.urandom(32)) for _ in range(change.keys_needed)]
        lifetime = args.expires if args.expires is not None else old.expires - old.issued
        rot = rotation.next_root(
            old, change, [k.public_key for k in fresh], now=now, lifetime=max(lifetime, 1)
        )
    except rotation.RotationError as exc:
        raise UsageError(str(exc)) from None
    new = rot.root

    # Who signs: a threshold of root N's root keys and of root N+1's (a new root key is
    # one of those just made).
    at_hand = _root_candidates(d, args.key, {*old.roles["root"].keys, *new.roles["root"].keys})
    where = "the --key files hold" if args.key else f"{d / 'keys'} holds"
    old_signers = _threshold_of(old, at_hand, "root", where)
    with_fresh = {**at_hand, **{k.keyid: k for k in fresh}}
    new_signers = _threshold_of(new, with_fresh, "the new root", where)
    signers = list({k.keyid: k for k in (*old_signers, *new_signers)}.values())
    data = new.sign(signers).to_wire()
    try:  # exactly what every replica and node does with it, before anything is written
        docs.open_root(data, signed_by=old)
        store = TrustStore(
            root_bytes=old_bytes,
            root=old,
            root_digests=(old_signed.digest,),
            floors={"root": Floor(value=old.version, digest=old_signed.digest)},
        )
        _signed, store = store.update_root(data, now)
        store.check_current_root(now)
    except P2PUpdateError as exc:  # pragma: no cover - next_root checked every rule
        raise UsageError(f"root v{new.version} would not verify: {exc.rule}: {exc}") from None

    # The network document is the root role's: re-signed when that role's keys changed.
    net_path = d / admission.NETWORK_FILE
    net_data: bytes | None = None
    net_doc: docs.NetworkConfig | None = None
    if rot.root_role_changed and net_path.is_file():
        current = _current_network(d, old)
        net_doc = _network_doc(
            {
                **current.to_obj(),
                "version": current.version + 1,
                "issued": now,
                "expires": new.expires,
            }
        )
        net_data = net_doc.sign(new_signers).to_wire()
        try:
            docs.open_signed(docs.NetworkConfig, net_data, new)
        except P2PUpdateError as exc:  # pragma: no cover - signed by the new root's keys
            raise UsageError(f"the network document would not verify: {exc}") from None

    # Key files: a replaced key's successor takes its file index (replica K keeps reading
    # DIR/keys/coordinator-K.pem); the old files are moved aside, never deleted.
    keys_dir = d / "keys"
    indexes, highest = _key_files(d, rot.role)
    moves: list[tuple[Path, Path]] = []
    slots: list[int] = []
    for kid in rot.removed:
        i = indexes.get(kid)
        if i is None:
            continue
        for name in (f"{rot.role}-{i}.pem", f"{rot.role}-{i}.pub.pem"):
            src = keys_dir / name
            if src.exists():
                moves.append((src, keys_dir / f"{name}.retired-{old.version}"))
        if rot.added:
            slots.append(i)
    while len(slots) < len(fresh):
        highest += 1
        slots.append(highest)
    writes = [
        (keys_dir / f"{rot.role}-{i}.pem", keys_dir / f"{rot.role}-{i}.pub.pem", key)
        for i, key in zip(slots, fresh, strict=True)
    ]
    moved_away = {src for src, _dst in moves}
    for _src, dst in moves:
        if dst.exists() or dst.is_symlink():
            raise UsageError(f"{dst} already exists; refusing to overwrite a retired key")
    for priv, pub, _key in writes:
        for path in (priv, pub):
            if path not in moved_away and (path.exists() or path.is_symlink()):
                raise UsageError(f"{path} already exists; refusing to overwrite a key")

    # Everything checked: write.  OUT first (a wrong -o then leaves DIR as it was), the
    # key files next, DIR/root.msgpack last: it never names a key whose file is missing.
    # A write that fails half-way is undone: the old key files back, the new ones gone.
    write_output(out, data)
    done: list[Path] = []
    undo: list[tuple[Path, Path]] = []
    try:
        for src, dst in moves:
            os.link(src, dst)  # fails if dst exists: never overwrites
            os.unlink(src)
            undo.append((src, dst))
        for priv, pub, key in writes:
            create_exclusive(priv, crypto.private_key_to_pem(key), mode=0o600)
            done.append(priv)
            create_exclusive(pub, crypto.public_key_to_pem(key.public_key), mode=0o644)
            done.append(pub)
        fsync_dir(keys_dir)
        atomic_write(d / ROOT_FILE, data)
    except OSError as exc:
        for path in done:
            with contextlib.suppress(OSError):
                path.unlink()
        for src, dst in reversed(undo):
            with contextlib.suppress(OSError):
                os.link(dst, src)
                os.unlink(dst)
        with contextlib.suppress(OSError):
            out.unlink()
        raise UsageError(
            f"cannot write in {d}: {exc.strerror or exc} (nothing changed; {out} removed)"
        ) from None
    if net_data is not None:
        try:
            atomic_write(net_path, net_data)
        except OSError as exc:
            raise UsageError(
                f"root v{new.version} written, but not {net_path}: {exc.strerror or exc} "
                f"(sign it again: p2pupdate-coordinator network {d} --expires ...)"
            ) from None

    role = new.roles[rot.role]
    print(new.describe())
    replaced = rot.removed[0] if rot.removed and rot.added else None
    for kid in rot.removed if replaced is None else ():
        print(f"  {rot.role}: removed {kid[:16]}...")
    for priv, _pub, key in writes:
        what = f"replaced {replaced[:16]}... by" if replaced else "added"
        print(f"  {rot.role}: {what} {key.keyid[:16]}... ({priv}, mode 0600)")
    for src, dst in moves:
        print(f"    {src.name} moved aside as {dst.name}")
    if rot.old_threshold != rot.new_threshold:
        print(f"  {rot.role}: threshold {rot.old_threshold} -> {rot.new_threshold}")
    print(
        f"  {rot.role} now {role.threshold} of {len(role.keys)}; signed by "
        f"{len(old_signers)} root keys of v{old.version} and {len(new_signers)} of "
        f"v{new.version}; expires {new.expires}"
    )
    print(f"wrote {out} and {d / ROOT_FILE}" + (f", {net_path}" if net_data else ""))
    if net_doc is not None:
        print(f"  {net_doc.describe()}, signed by the new root keys")
    for line in _rotate_next_steps(d, out, rot, old, indexes, slots, net_data is not None):
        print(line)
    return EXIT_OK


def _rotate_next_steps(
    d: Path,
    out: Path,
    rot: rotation.Rotation,
    old: docs.Root,
    indexes: dict[str, int],
    slots: list[int],
    network_resigned: bool,
) -> list[str]:
    """What the operator does after ``rotate``, in order."""
    new = rot.root
    steps = [
        f"publish it to every replica while they still run: p2pupdate-coordinator publish "
        f"{out} --url URL [--url URL ...] (a replica or node takes v{new.version} only on "
        f"top of v{old.version}; nodes learn it from replicas and by gossip)"
    ]
    if rot.role == "coordinator":
        retired = [indexes[k] for k in rot.removed if k in indexes]
        if rot.removed and rot.added:
            steps.append(
                "then restart "
                + ", ".join(
                    f"replica {i} (serve --replica {i} signs with the new "
                    f"{d / 'keys' / f'coordinator-{i}.pem'}: copy it to that replica's host, "
                    "mode 0600)"
                    for i in slots
                )
                + f"; nodes take its tokens once they hold v{new.version}"
            )
        elif rot.added:
            steps.append(
                "then start the new replica(s) " + ", ".join(map(str, slots)) + " (serve "
                "--replica K, with DIR/keys/coordinator-K.pem on its host) and restart the "
                "others: each reads n, q and its share from the root at start"
            )
        else:
            steps.append(
                "then restart every replica: each reads n, q and its share from the root at "
                "start" + "".join(f"; stop replica {i}, it has no key any more" for i in retired)
            )
        steps.append(
            f"sign a new allowlist with the new keys (p2pupdate-coordinator allow ... --dir "
            f"{d}) and publish it: at v{new.version} nodes reset the allowlist and nudge "
            "floors, and what the old keys signed stops verifying"
        )
    elif rot.role == "release":
        steps.append(
            "sign the good builds' release records again with the new key (p2pupdate release "
            "...) and publish them: the old key's records stop verifying"
        )
    elif rot.role == "operator":
        steps.append(
            "sign a new scope (p2pupdate scope ...) and, on an enrolled network, new member "
            "documents: at v" + str(new.version) + " nodes reset the scope floor and the old "
            "keys' documents stop verifying"
        )
    if network_resigned:
        steps.append(
            f"restart the replicas once they hold v{new.version} (they read "
            f"{admission.NETWORK_FILE} at start); give nodes started with --network-config "
            "the new copy"
        )
    steps.append(
        f"re-issue the bundle (p2pupdate-coordinator bundle --dir {d} --url ...): needed, "
        f"a box installed from the old one trusts v{old.version}"
        + (" and the key it retired" if rot.removed else "")
        + f" until it learns v{new.version}"
    )
    if rot.role == "root":
        steps.append("move the new root-*.pem offline")
    return ["next:"] + [f"  {n}. {text}" for n, text in enumerate(steps, 1)]


# -- talking to replicas ------------------------------------------------------------------

DEFAULT_URL = "http://127.0.0.1:8470"


def _urls(args: argparse.Namespace) -> list[str]:
    urls = args.url or [DEFAULT_URL]
    out = []
    for u in urls:
        try:
            out.append(parse_url(u)[2])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return out


def _http(
    method: str,
    url: str,
    body: bytes | None = None,
    timeout: float = 30.0,
    token: bytes | None = None,
) -> tuple[int, bytes]:
    """One HTTP request; (status, body).  Connection problems are a usage error.
    ``token``: the replica's read token, sent as ``Authorization: Bearer``."""
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("content-type", "application/octet-stream")
    if token is not None:
        req.add_header("authorization", f"Bearer {token.decode('ascii')}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(url, getattr(exc, "reason", exc)) from None


class Unreachable(UsageError):
    """A replica URL that did not answer at all (refused, timed out, no such host)."""

    def __init__(self, url: str, reason: object) -> None:
        self.url = url
        self.why = f"cannot reach the coordinator ({reason})"
        super().__init__(f"{url}: {self.why}")


class NotAReplica(Rejected):
    """A URL that answered, but not as a coordinator replica does (a JSON object with ``ok``)."""

    def __init__(self, url: str, why: str) -> None:
        self.url = url
        self.why = f"not a coordinator replica ({why})"
        super().__init__(f"{url}: {self.why}")


def _replica_answer(url: str, code: int, body: bytes) -> dict[str, Any]:
    """A replica's JSON answer to a request, or ``NotAReplica`` (a web server that is not
    one: an HTML 404, or a 200 that is not a replica's answer is never taken for a publish)."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("ok"), bool):
        return obj
    if code in (200, 404, 405):  # no replica answers a publish so: another kind of server
        raise NotAReplica(url, f"HTTP {code}, not a replica's answer")
    # a replica's plain-text refusal (413: the body is over its limit), or a proxy's error
    first = body.decode(errors="replace").strip().splitlines()[:1]
    return {"ok": False, "error": f"http-{code}", "reason": first[0][:200] if first else ""}


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} p2pupdate-coordinator[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def _network_dir(d: Path) -> Path:
    """``--dir``: an existing directory holding a root (checked before anything is made)."""
    if not d.is_dir():
        what = "not a directory" if d.exists() else "no such directory"
        raise UsageError(f"--dir {d}: {what} (run `p2pupdate-coordinator init {d}` first)")
    if not (d / ROOT_FILE).is_file():
        raise UsageError(f"{d / ROOT_FILE}: no such file (run `p2pupdate-coordinator init {d}`)")
    return d


async def _bind(host: str, port: int) -> list[trio.SocketListener]:
    """The replica's listening sockets; an address that cannot be had is a usage mistake."""
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _lock_state_dir(replica: int, config: ServiceConfig) -> StateDirLock:
    """One process per replica: the state dir's lock, taken before anything in it is opened
    (a second process on it stops here: ``StateDirInUse``, one line, exit 1)."""
    state_dir = config.replica_dir
    if state_dir.exists() and not state_dir.is_dir():
        raise UsageError(f"state directory {state_dir}: not a directory")
    try:
        return StateDirLock(replica, state_dir)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _open_replica(config: ServiceConfig) -> Replica:
    state_dir = config.replica_dir
    try:
        return Replica(config, log=_log)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"state directory {state_dir}: {exc.strerror or exc}") from None
    except (sqlite3.Error, LocalStateFault) as exc:  # an empty database cannot be made
        raise UsageError(f"state directory {state_dir}: {exc}") from None


def lease_ttl_warning(token_ttl: int) -> str | None:
    """The start-up warning for a lease TTL no node with default settings can use, or None.

    A granted node keeps ``swap_margin`` of its lease for the swap and restart and drains
    in the rest (``timing.drain_budget``); with nothing left it hands the grant back
    (``lease-too-short``), asks again after a backoff, and is granted and hands it back
    again, forever.  The nodes' default margin is the updater's own
    (``UpdaterConfig().swap_margin``).
    """
    nodes = timing.UpdaterConfig()
    if timing.drain_budget(nodes, float(token_ttl)) > 0.0:
        return None
    return (
        f"warning: --lease-ttl {token_ttl}s is not longer than the nodes' default "
        f"--swap-margin {nodes.swap_margin:g}s: nodes hand every grant back (lease-too-short, "
        f"counted under 'returned' in /status); serve with --lease-ttl above "
        f"{nodes.swap_margin:g}s (default {SERVE_DEFAULTS.token_ttl}s) or start the nodes "
        "with a smaller --swap-margin"
    )


def _ice_url(text: str) -> str:
    """``--stun`` / ``--turn``: the URL rule of ``core/turn.py`` (one home)."""
    try:
        return turn.check_ice_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _turn_ttl(text: str) -> int:
    seconds = duration(text)
    if not MIN_TURN_TTL <= seconds <= MAX_TURN_TTL:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be {MIN_TURN_TTL}s .. {MAX_TURN_TTL // 3600}h"
        )
    return seconds


def read_turn_secret(path: str) -> bytes:
    """coturn's ``static-auth-secret`` from ``--turn-secret-file``: a regular file of one
    line (surrounding whitespace and the final newline dropped), 1..``turn.MAX_SECRET_LEN``
    bytes; a missing, empty or oversize file is a usage mistake."""
    data = read_input(path, turn.MAX_SECRET_LEN + 2)
    secret = data.strip()
    if not secret:
        raise UsageError(
            f"--turn-secret-file {path}: empty (put coturn's static-auth-secret in it)"
        )
    if len(secret) > turn.MAX_SECRET_LEN:
        raise UsageError(f"--turn-secret-file {path}: more than {turn.MAX_SECRET_LEN} bytes")
    if b"\n" in secret or b"\r" in secret:
        raise UsageError(f"--turn-secret-file {path}: more than one line")
    return secret


def secret_file_warning(path: str) -> str | None:
    """The start-up warning for a secret file other users can read, or None: allowed (an
    operator's choice), but said."""
    with contextlib.suppress(OSError):
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            return (
                f"warning: --turn-secret-file {path} is readable by other users "
                f"(mode {mode:o}); chmod 600 it"
            )
    return None


def _ice_config(args: argparse.Namespace) -> IceConfig:
    """``--stun/--turn/--turn-secret-file/--turn-ttl`` as the replica's settings; what fits
    together is ``IceConfig``'s rule (a usage mistake here, before anything is bound)."""
    secret = read_turn_secret(args.turn_secret_file) if args.turn_secret_file else b""
    try:
        config = IceConfig(
            stun=tuple(args.stun or ()),
            turn=tuple(args.turn or ()),
            secret=secret,
            ttl=args.turn_ttl,
        )
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    warning = secret_file_warning(args.turn_secret_file) if args.turn_secret_file else None
    if warning is not None:
        _log(warning)
    return config


def serve_config(args: argparse.Namespace, d: Path, ice: IceConfig) -> ServiceConfig:
    """The replica's configuration from ``serve``'s flags (``d``: the network directory)."""
    return ServiceConfig(
        network_dir=d,
        replica=args.replica,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        token_ttl=args.lease_ttl,
        max_skew=args.max_skew,
        policy=PolicyConfig(
            max_concurrent=args.max_concurrent,
            min_serving=args.min_serving,
            utilization=args.utilization,
            emergency_budget=args.emergency_budget,
            aggregate_max_age=args.aggregate_max_age,
            queue_retry_max=float(args.queue_retry_max),
            queue_hold=float(args.queue_hold),
        ),
        first_start=args.first_start,
        ice=ice,
        origin=OriginConfig(
            max_downloaders=args.origin_max_downloaders,
            repeat_window=float(args.origin_repeat_window),
        ),
        report_budget=float(args.report_budget),
        nudge_on_connect=args.nudge_on_connect,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import Server

    d = _network_dir(Path(args.dir))
    ice = _ice_config(args)
    read_access = read_access_from_args(args)  # a bad token file: exit 2 before binding
    config = serve_config(args, d, ice)
    host, port = args.listen
    peers = [_peer_url(u) for u in args.peer or ()]
    try:
        catch_config = CatchUpConfig(interval=args.peer_interval)
    except ValueError as exc:
        raise UsageError(f"--peer-interval: {exc}") from None

    async def main() -> None:
        # Bind first: an address in use or not on this machine is refused before the
        # replica's state directory and database are made.
        listeners = await _bind(host, port)
        try:
            lock = _lock_state_dir(args.replica, config)
            try:
                replica = _open_replica(config)
            except BaseException:
                lock.release()
                raise
        except BaseException:
            for listener in listeners:
                await listener.aclose()
            raise
        if lock.quarantined is not None:
            replica.store.damaged(
                f"{LOCK_FILE} is not a regular file", lock.quarantined.name, "made again"
            )
        warning = lease_ttl_warning(config.token_ttl)
        if warning is not None:
            _log(warning)
        try:
            await _serve(replica, listeners)
        finally:
            replica.store.close()
            lock.release()

    async def _serve(replica: Replica, listeners: list[trio.SocketListener]) -> None:
        server = Server(replica, log=_log, limits=limits_from_args(args), read_access=read_access)
        catchup = CatchUp(
            documents=replica.documents,
            peers=peers,
            index=replica.index,
            keyid=replica.keyid,
            wall=time.time,
            rng=random.Random(),
            config=catch_config,
            log=_log,
        )
        replica.peers = catchup.view
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(server.serve_on, listeners)
            nursery.start_soon(catchup.run)
            p = replica.policy
            warm = max(0.0, replica.warm_until_wall - time.time())
            print(
                f"replica {args.replica} ({replica.keyid[:16]}...) of network "
                f"{replica.trust.root.network!r} listening on http://{host}:{bound} "
                f"(n={p.replicas} q={p.quorum} share of pool 'default' "
                f"{policy.replica_share(p.max_concurrent, policy.pool_slot('default'), p)}"
                f"/{p.max_concurrent}, "
                f"token ttl {config.token_ttl} s, warm-up {warm:.0f} s)",
                flush=True,
            )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    _log(f"{signal.Signals(signum).name}: stopping")
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return EXIT_OK


def _peer_url(text: str) -> str:
    try:
        return parse_url(text)[2]
    except ValueError as exc:
        raise UsageError(f"--peer {text!r}: {exc}") from None


def _read_token(args: argparse.Namespace) -> bytes | None:
    """``--token-file``: the replicas' read token (``serve --read-token-file``), or None."""
    path = getattr(args, "token_file", None)
    return read_token_file(path, "--token-file") if path else None


def _refusal_text(body: bytes) -> str:
    """A replica's JSON refusal (``error``, ``reason``, ``hint``) as one line, or ''."""
    try:
        obj = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), str):
        return ""
    text = f"{obj['error']}: {obj.get('reason', '')}"
    return f"{text}; {obj['hint']}" if isinstance(obj.get("hint"), str) else text


def _fetch_status(url: str, token: bytes | None = None) -> dict[str, Any]:
    code, body = _http("GET", f"{url}/status", token=token)
    if code in (401, 403) and (why := _refusal_text(body)):
        raise NotAReplica(url, f"GET /status: HTTP {code}: {why}")
    if code != 200:
        raise NotAReplica(url, f"GET /status: HTTP {code}")
    try:
        obj = json.loads(body)
    except ValueError:
        raise NotAReplica(url, "GET /status: not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("replica"), dict):
        raise NotAReplica(url, "GET /status: not a replica's status")
    return obj


def cmd_status(args: argparse.Namespace) -> int:
    """Every replica's status; one that is down is marked, the others still shown.

    Exit 0 when every replica answered, 1 when some did not (or a URL is not a replica),
    2 when a single URL, or every URL, cannot be reached at all.  ``--watch S``: the
    table drawn again every S seconds until Ctrl-C (exit 0)."""
    urls = _urls(args)
    token = _read_token(args)
    if args.watch is not None:
        return watch_status(urls, token, args.watch)
    return _status_once(urls, token, as_json=args.json)


#: ``status --watch``'s wait between two tables (a test replaces it).
_watch_sleep = time.sleep
_CLEAR: Final = "\x1b[H\x1b[2J"


def watch_status(urls: list[str], token: bytes | None, every: float) -> int:
    """Clear the terminal and print every replica's table, every ``every`` seconds, until
    Ctrl-C (exit 0).  A replica that cannot be reached is marked DOWN, and the next round
    asks it again (a watch outlives a replica's restart)."""
    try:
        while True:
            frame = [
                _CLEAR + time.strftime("%Y-%m-%d %H:%M:%S") + f"  every {every:g} s, Ctrl-C to stop"
            ]
            for url in urls:
                try:
                    frame.append(render_status(url, _fetch_status(url, token)))
                except (Unreachable, NotAReplica) as exc:
                    frame.append(f"{url}: DOWN: {exc.why}")
            print("\n".join(frame), flush=True)
            _watch_sleep(every)
    except KeyboardInterrupt:
        print()
        return EXIT_OK


def _status_once(urls: list[str], token: bytes | None, *, as_json: bool) -> int:
    answers: list[tuple[str, dict[str, Any] | Unreachable | NotAReplica]] = []
    for url in urls:
        try:
            answers.append((url, _fetch_status(url, token)))
        except (Unreachable, NotAReplica) as exc:
            if len(urls) == 1:
                raise
            answers.append((url, exc))
    missing = [exc for _url, exc in answers if not isinstance(exc, dict)]
    if as_json:
        obj: Any = (
            answers[0][1]
            if len(answers) == 1
            else {u: (a if isinstance(a, dict) else {"error": a.why}) for u, a in answers}
        )
        json.dump(obj, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        for url, answer in answers:
            print(
                render_status(url, answer)
                if isinstance(answer, dict)
                else f"{url}: DOWN: {answer.why}"
            )
    if not missing:
        return EXIT_OK
    print(f"{len(missing)} of {len(answers)} replicas did not answer", file=sys.stderr)
    if len(missing) == len(answers) and all(isinstance(m, Unreachable) for m in missing):
        return EXIT_USAGE
    return EXIT_REJECTED


def cmd_why(args: argparse.Namespace) -> int:
    """One node's answer from one replica (``status.node_status``)."""
    url = _urls(argparse.Namespace(url=[args.url] if args.url else None))[0]
    token = _read_token(args)
    prefix = args.node.strip().lower()
    code, body = _http(
        "GET", f"{url}/status/node/{urllib.parse.quote(prefix, safe='')}", token=token
    )
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise NotAReplica(url, f"GET /status/node/: HTTP {code}, not a replica's answer")
    if code == 409 and isinstance(obj.get("matches"), list):
        more = f"\n  ... and {obj['more']} more" if obj.get("more") else ""
        listed = "\n".join(f"  {m}" for m in obj["matches"])
        raise UsageError(
            f"{prefix} matches {len(obj['matches']) + int(obj.get('more') or 0)} nodes; give more of the id:\n{listed}{more}"
        )
    if not obj["ok"]:
        why = _refusal_text(body) or f"HTTP {code}"
        if code in (401, 403):
            raise NotAReplica(url, why)
        raise UsageError(f"{url}: {why}")
    if args.json:
        json.dump(obj, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(render_why(url, obj))
    return EXIT_OK


def render_why(url: str, w: dict[str, Any]) -> str:
    """``why``'s lines: the answer first, then what it comes from."""
    lines = [
        f"node {w['node']} at replica {w['replica']} ({url})"
        + ("" if w["connected"] else ", not connected now")
        + ("" if w["counted"] else ", NOT COUNTED (no standing yet)"),
        f"  holds:    {w['holds']}",
    ]
    r = w.get("report")
    if r:
        held = f", held by its own gates: {r['held']}" if r["held"] else ""
        lines.append(
            f"  report:   {r['state']} {r['version']} ({r['artifact'][:16]}) in pool "
            f"{r['pool']}, {r['age']:.0f} s ago{held}"
        )
    else:
        lines.append("  report:   none yet")
    f = w.get("refusal")
    if f:
        retry = "-" if f["retry_after"] is None else f"{f['retry_after']:g} s"
        lines.append(
            f"  refused:  gate {f['gate']} {f['reason']}: {f['detail']} "
            f"(for {f['for']:.0f} s; retry_after {retry})"
        )
    q = w.get("queue")
    if q:
        lines.append(f"  queue:    position {q['position']} of {q['of']} in pool {q['pool']}")
    lease = w.get("lease")
    if lease:
        forced = " FORCED" if lease["forced"] else ""
        lines.append(
            f"  lease:    {lease['artifact'][:16]} in pool {lease['pool']}, "
            f"{lease['expires_in']:.0f} s left{forced}"
        )
    if w.get("cooldown"):
        lines.append(f"  cooldown: {w['cooldown']:.0f} s left (a lease of it lapsed unreported)")
    return "\n".join(lines)


def render_status(url: str, st: dict[str, Any]) -> str:
    """The table an operator reads: documents, progress per artifact, leases, refusals."""
    r = st["replica"]
    lines = [
        f"{url}: replica {r['index']} of {r['replicas']} (quorum {r['quorum']}), network "
        f"{r['network']!r}, {r['connected_nodes']} nodes connected"
        + (f", WARMING UP {r['warming_up_for']:.0f} s" if r["warming_up_for"] > 0 else "")
    ]
    for warning in st.get("warnings", ()):
        lines.append(f"  WARNING: {warning}")
    d = st["documents"]
    allow = d["allowlist"]
    lines.append(
        f"  allowlist: v{allow['version']} ({len(allow['artifacts'])} artifacts)"
        if allow
        else "  allowlist: none published"
    )
    lines.append(
        f"  scope:     {d['scope']['describe']}" if d["scope"] else "  scope:     none published"
    )
    n = st["nodes"]
    versions = ", ".join(f"{v} {c}" for v, c in sorted(n["versions"].items())) or "-"
    lines.append(f"  nodes:     {n['total']} ({versions})")
    ice = st.get("ice") or {}  # an older replica's status has none
    if ice.get("configured"):
        turn_part = (
            f", {len(ice['turn'])} TURN (credentials {ice['turn_ttl']} s, "
            f"{ice['credentials_minted']} minted)"
            if ice["turn"]
            else ", no TURN"
        )
        lines.append(f"  ice:       {len(ice['stun'])} STUN{turn_part}")
    rows = [("ARTIFACT", "RELEASE", "NODES", "PROBATION", "FAILED", "LEASES", "STATE")]
    for sha, a in sorted(st["artifacts"].items(), key=lambda kv: (kv[1]["counter"] or 0, kv[0])):
        name = f"{a['name']} #{a['counter']}" if a["name"] else "(no release)"
        state = "PAUSED" if a["paused"] else ("in scope" if a["in_scope"] else "")
        if not a["allowlisted"] and a["name"]:
            state = (state + " not allowlisted").strip()
        rows.append(
            (
                sha[:16],
                name,
                str(a["nodes"]),
                str(a["probation"]),
                str(a["failed"]),
                str(a["leases"]),
                state,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    for sha, reason in sorted(st["paused"].items()):
        lines.append(f"  PAUSED {sha[:16]}...: {reason}")
    for pool, p in sorted(st["pools"].items()):
        agg = p.get("aggregate")
        agg_text = (
            f"capacity {agg['capacity']:g}, load {agg['load']:g}, serving {agg['serving']} "
            f"({agg['reporters']} reporters{', STALE' if agg['stale'] else ''})"
            if agg
            else "no estimate"
        )
        lines.append(f"  pool {pool}: {len(p['leases'])} leases; {agg_text}")
        for lease in p["leases"]:
            forced = " FORCED" if lease["forced"] else ""
            lines.append(
                f"    lease {lease['node'][:16]}... -> {(lease['artifact'] or '?')[:16]} "
                f"{lease['expires_in']:.0f} s left{forced}"
            )
    if st["refusals"]:
        lines.append("  refusals (coordinator, all time):")
        for reason, count in sorted(st["refusals"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    {count:6d}  {reason}")
    if st.get("returned"):
        lines.append("  leases handed back unused (by the node's reason, all time):")
        for reason, count in sorted(st["returned"].items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {count:6d}  {reason}")
    for url, peer in sorted(st.get("replicas", {}).items()):
        which = f"replica {peer['replica']} " if peer.get("replica") else ""
        if peer["state"] == "differs":
            what = "; ".join(
                f"{kind} here {v['here']}, there {v['there']}"
                for kind, v in sorted(peer["differs"].items())
            )
            lines.append(f"  peer {which}{url}: DIFFERS: {what}")
        elif peer["state"] == "down":
            lines.append(f"  peer {which}{url}: DOWN: {peer['error']}")
        else:
            lines.append(f"  peer {which}{url}: {peer['state']}")
    if st["held"]:
        lines.append("  held back by their own gates (nodes now):")
        for reason, count in sorted(st["held"].items(), key=lambda kv: -kv[1]):
            lines.append(f"    {count:6d}  {reason}")
    return "\n".join(lines)


def cmd_publish(args: argparse.Namespace) -> int:
    items: list[tuple[int, str, bytes, str | None]] = []
    for path in args.files:
        data = read_input(path, MAX_ARTIFACT_UPLOAD)
        try:
            kind = crypto.Envelope.from_wire(data).type
        except P2PUpdateError:
            kind = None
        order = PUBLISH_ORDER.get(kind, 4) if kind else 9
        items.append((order, path, data, kind))
    items.sort(key=lambda item: item[0])
    failed = 0
    for url in _urls(args):
        for i, (_order, path, data, kind) in enumerate(items):
            try:
                if kind is None:
                    sha = hashlib.sha256(data).hexdigest()
                    code, body = _http("PUT", f"{url}/v1/artifacts/{sha}", data, timeout=600)
                    what = f"artifact {sha[:16]}... ({len(data)} bytes)"
                else:
                    code, body = _http("POST", f"{url}/v1/publish", data)
                    what = kind
                answer = _replica_answer(url, code, body)
            except (Unreachable, NotAReplica) as exc:
                # this replica misses the rest too; say so once, and go on with the others
                missed = ", ".join(item[1] for item in items[i:])
                print(f"{url}: {missed}: NOT PUBLISHED: {exc.why}", file=sys.stderr)
                failed += 1
                break
            if code == 200 and answer["ok"]:
                print(f"{url}: {path}: published {answer.get('describe') or what}")
                for sha in answer.get("resumed", []):
                    print(f"{url}:   rollout of {sha[:16]}... RESUMED (the breaker had paused it)")
            else:
                failed += 1
                print(
                    f"{url}: {path}: REFUSED ({code}): {answer.get('error', '?')}: "
                    f"{answer.get('reason', '')}",
                    file=sys.stderr,
                )
    return EXIT_OK if not failed else EXIT_REJECTED


MAX_ARTIFACT_UPLOAD = 1 << 30


def cmd_nudge(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    store = _load_network(d)
    signers = _role_keys(d, store.root, "coordinator")
    threshold = store.root.roles["coordinator"].threshold
    if len(signers) < threshold:
        raise UsageError(
            f"{d / 'keys'} holds {len(signers)} coordinator keys of this root; {threshold} needed"
        )
    now = wall_clock()
    nudge = docs.Nudge(
        serial=args.serial if args.serial is not None else time.time_ns() // 1_000_000,
        issued=now,
        expires=now + args.expires,
        artifact=args.artifact,
    ).checked()
    data = nudge.sign(signers).to_wire()
    failed = 0
    for url in _urls(args):
        code, body = _http("POST", f"{url}/v1/publish", data)
        if code == 200:
            print(f"{url}: {nudge.describe()} sent to the connected nodes")
        else:
            failed += 1
            print(
                f"{url}: nudge REFUSED ({code}): {body[:300].decode(errors='replace')}",
                file=sys.stderr,
            )
    return EXIT_OK if not failed else EXIT_REJECTED


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        result = run_bench(
            asks=args.asks,
            concurrency=args.concurrency,
            sessions=args.sessions,
            profile=args.profile,
        )
    except BenchError as exc:
        print(f"p2pupdate-coordinator {exc}", file=sys.stderr)
        return EXIT_REJECTED
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="p2pupdate-coordinator",
        description="The thin coordinator of a p2pupdate network: root of trust, allowlists, "
        "and the service (one process per replica) that weighs departures against aggregate "
        "load and hands out leased departure tokens.",
        epilog="Exit codes: 0 ok, 1 rejected, 2 usage error.",
    )
    p.add_argument("--version", action="version", version=f"p2pupdate-coordinator {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    ini = sub.add_parser(
        "init",
        help="create a network: keys for every role, a signed root and network document",
        description="Create DIR/root.msgpack and DIR/keys/<role>-<i>.pem (+ .pub.pem) for "
        "roles root, release, coordinator (one per replica) and operator, and "
        "DIR/network.msgpack: the admission rule and per-subnet caps, version 1, signed by "
        "the root keys, expiring with the root (change it later with `network`). Refuses "
        "to touch an existing network.",
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
        help="root lifetime (default 365d); the network document lives as long",
    )
    add_rule_flags(ini, defaults=True)
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

    ne = sub.add_parser(
        "network",
        help="show or change the network document (admission rule, subnet caps)",
        description="Without flags: show DIR/network.msgpack (verified against "
        "DIR/root.msgpack). With flags: sign version N+1 with the root keys (DIR/keys, or "
        "--key), the flags given changed and every other field kept, and replace "
        "DIR/network.msgpack. Replicas read it at start (restart them); nodes need a copy "
        "(p2pupdate node --network-config FILE).",
    )
    ne.add_argument("dir", metavar="DIR", help="network directory from init")
    add_rule_flags(ne, defaults=False)
    ne.add_argument(
        "--expires",
        type=duration,
        metavar="DUR",
        help="lifetime from now (default: until the root expires)",
    )
    ne.add_argument(
        "--key",
        action="append",
        metavar="PEM",
        help="root key (repeat for a threshold; default: DIR/keys/root-*.pem)",
    )
    ne.add_argument(
        "--new",
        action="store_true",
        help="a network made before admission (no network.msgpack): write version 1, "
        "from what its replicas apply without one (open, no proof of work, standing 0, "
        "default caps) and the flags given",
    )
    ne.set_defaults(handler=cmd_network)

    me = sub.add_parser(
        "member",
        help="enroll nodes: sign member documents (operator)",
        description="Sign a member document for each --node (node id, pool, expiry) with "
        "the operator keys (DIR/keys, or --key; a threshold is needed). On a network whose "
        "admission is 'enrolled', a node counts only with one; it carries it in its hello.",
    )
    me.add_argument("dir", metavar="DIR", help="network directory from init")
    me.add_argument(
        "--node",
        action="append",
        required=True,
        type=_node_id,
        metavar="ID",
        help="node id (repeatable: then -o is a directory)",
    )
    me.add_argument(
        "--pool",
        type=pool_name,
        default="default",
        metavar="NAME",
        help="the pool the node serves in (default 'default')",
    )
    me.add_argument(
        "--expires",
        type=duration,
        default=DEFAULT_MEMBER_LIFETIME,
        metavar="DUR",
        help="lifetime (default 365d)",
    )
    me.add_argument(
        "--key",
        action="append",
        metavar="PEM",
        help="operator key (repeat for a threshold; default: DIR/keys/operator-*.pem)",
    )
    me.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="the file, or a directory: one <node>.member.msgpack per node",
    )
    me.set_defaults(handler=cmd_member)

    bu = sub.add_parser(
        "bundle",
        help="sign the network bundle: the one file a box needs to join (root keys)",
        description="Sign one file holding DIR/root.msgpack, DIR/network.msgpack (if "
        "any), the replicas' URLs, the STUN/TURN URLs and the pool, with the root keys "
        "(DIR/keys, or --key; a threshold is needed). A node started with it needs no "
        "other flag; it trusts the bundle's root on its first start only, then its own "
        "stored root.",
    )
    bu.add_argument("--dir", required=True, metavar="DIR", help="network directory from init")
    bu.add_argument(
        "--url",
        action="append",
        required=True,
        type=_bundle_url,
        metavar="URL",
        help=f"a replica, http://HOST:PORT (repeat for each, at most {bd.MAX_REPLICAS})",
    )
    bu.add_argument(
        "--stun",
        action="append",
        type=_ice_url,
        metavar="URL",
        help="a STUN server for WebRTC links (repeatable): stun:HOST[:PORT]",
    )
    bu.add_argument(
        "--turn",
        action="append",
        type=_ice_url,
        metavar="URL",
        help="a TURN server (repeatable): turn[s]:HOST[:PORT][?transport=udp|tcp]; nodes "
        "get their credentials from a replica, none is in the bundle",
    )
    bu.add_argument(
        "--pool",
        type=pool_name,
        default="default",
        metavar="NAME",
        help="the pool the boxes serve in (default 'default')",
    )
    bu.add_argument(
        "--expires",
        type=duration,
        metavar="DUR",
        help="lifetime from now: a box first started later refuses it (default: until the "
        "root expires)",
    )
    bu.add_argument(
        "--key",
        action="append",
        metavar="PEM",
        help="root key (repeat for a threshold; default: DIR/keys/root-*.pem)",
    )
    bu.add_argument("-o", "--output", required=True, metavar="OUT")
    bu.set_defaults(handler=cmd_bundle)

    ro = sub.add_parser(
        "rotate",
        help="rotate a role's keys: sign root N+1 (root keys), new key files",
        description="Sign root N+1 of DIR/root.msgpack with one change to one role: "
        "--replace a key by a new one (a stolen key: the new key takes its file, "
        "DIR/keys/<role>-<i>.pem, and the old files are moved aside as .retired-N), --add N "
        "new keys, --remove one, or only a new --threshold. It is signed by a threshold of "
        "root N's root keys and of root N+1's (DIR/keys, or --key), verified as every "
        "replica and node will verify it, then written to OUT and DIR/root.msgpack; when "
        "the root role itself changes, DIR/network.msgpack is signed again by the new root "
        "keys. Nodes reset the floors of what a rotated role signs. Prints what to do next "
        "(publish, restart, re-sign, re-issue the bundle).",
    )
    ro.add_argument("--dir", required=True, metavar="DIR", help="network directory from init")
    ro.add_argument("--role", required=True, choices=docs.ROLES, help="the role to change")
    how = ro.add_mutually_exclusive_group()
    how.add_argument(
        "--replace",
        metavar="KEYID",
        help="a key of the role to replace by a new key (id or prefix)",
    )
    how.add_argument("--add", type=positive_int, metavar="N", help="add N new keys to the role")
    how.add_argument(
        "--remove", metavar="KEYID", help="a key to take out of the role (id or prefix)"
    )
    ro.add_argument(
        "--threshold",
        type=positive_int,
        metavar="T",
        help="the role's new threshold (default: kept)",
    )
    ro.add_argument(
        "--expires",
        type=duration,
        metavar="DUR",
        help="root N+1's lifetime from now (default: root N's lifetime)",
    )
    ro.add_argument(
        "--key",
        action="append",
        metavar="PEM",
        help="root key of root N or N+1 (repeat for the thresholds; default: DIR/keys/root-*.pem)",
    )
    ro.add_argument("-o", "--output", required=True, metavar="OUT", help="root N+1, to publish")
    ro.set_defaults(handler=cmd_rotate)

    se = sub.add_parser(
        "serve",
        help="run one coordinator replica (HTTP + node WebSocket on one port)",
        description="Run replica K of the network in DIR with its key DIR/keys/coordinator-K.pem. "
        "State (SQLite, artifacts) goes to DIR/replica-K/ unless --state-dir is given. "
        "Quorum n and q come from the root. Stop with SIGTERM or Ctrl-C.",
    )
    se.add_argument("--dir", required=True, metavar="DIR", help="network directory from init")
    se.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8470),
        metavar="HOST:PORT",
        help="default 127.0.0.1:8470 (port 0: any free port, printed at start)",
    )
    se.add_argument("--replica", type=positive_int, default=1, metavar="K", help="default 1")
    se.add_argument("--state-dir", metavar="PATH", help="default DIR/replica-K")
    se.add_argument(
        "--lease-ttl",
        type=duration,
        default=SERVE_DEFAULTS.token_ttl,
        metavar="DUR",
        help=f"departure token lifetime (default {SERVE_DEFAULTS.token_ttl}s)",
    )
    se.add_argument(
        "--max-skew",
        type=int_range(0),
        default=SERVE_DEFAULTS.max_skew,
        metavar="S",
        help=f"clock difference tolerated with nodes, seconds (default {SERVE_DEFAULTS.max_skew})",
    )
    se.add_argument(
        "--max-concurrent",
        type=int_range(1, MAX_CONCURRENT_LIMIT),
        default=POLICY_DEFAULTS.max_concurrent,
        metavar="N",
        help="global budget of concurrent departures per pool "
        f"(default {POLICY_DEFAULTS.max_concurrent})",
    )
    se.add_argument(
        "--min-serving",
        type=int_range(0),
        default=POLICY_DEFAULTS.min_serving,
        metavar="N",
        help=f"nodes that must keep serving per pool (default {POLICY_DEFAULTS.min_serving})",
    )
    se.add_argument(
        "--utilization",
        type=_unit,
        default=POLICY_DEFAULTS.utilization,
        metavar="U",
        help="share of the remaining capacity the load may use "
        f"(default {POLICY_DEFAULTS.utilization:g})",
    )
    se.add_argument(
        "--emergency-budget",
        type=int_range(0),
        default=POLICY_DEFAULTS.emergency_budget,
        metavar="N",
        help=f"concurrent forced departures per pool (default {POLICY_DEFAULTS.emergency_budget})",
    )
    se.add_argument(
        "--aggregate-max-age",
        type=duration,
        default=POLICY_DEFAULTS.aggregate_max_age,
        metavar="DUR",
        help="an aggregate estimate older than this grants nothing "
        f"(default {POLICY_DEFAULTS.aggregate_max_age:g}s)",
    )
    se.add_argument(
        "--queue-retry-max",
        type=_queue_seconds,
        default=int(POLICY_DEFAULTS.queue_retry_max),
        metavar="SECONDS",
        help="longest wait given to a refused node that queues behind the leases of a full "
        "pool: the node at place P behind K leases asks again after P x HOLD / K seconds, "
        f"at least {POLICY_DEFAULTS.base_retry:g} and at most this (at most "
        f"{POLICY_DEFAULTS.base_retry:g}: no growth, every queued node asks again within "
        f"that; default {POLICY_DEFAULTS.queue_retry_max:g})",
    )
    se.add_argument(
        "--queue-hold",
        type=_queue_seconds,
        default=int(POLICY_DEFAULTS.queue_hold),
        metavar="SECONDS",
        help="the longest HOLD (a lease's grant to 'rejoined') that wait is computed with: "
        f"this until {policy_hold.HOLD_MIN_SAMPLES} leases ended by a report, then the "
        f"median of the last {policy_hold.HOLD_SAMPLES} this replica measured when "
        "shorter, so a fleet of fast swaps waits less; raise it for a fleet whose swaps "
        f"take longer (default {POLICY_DEFAULTS.queue_hold:g})",
    )
    se.add_argument(
        "--no-nudge-on-connect",
        dest="nudge_on_connect",
        action="store_false",
        help="do not push the operator's nudge to a node whose session opens (by default a "
        "node in the scope and behind the build the nudge names gets it at reconnect)",
    )
    se.add_argument(
        "--first-start",
        action="store_true",
        help="this replica is new and never granted a lease: skip the warm-up (a restarted "
        "replica otherwise grants nothing for one lease TTL; ignored once it has granted)",
    )
    se.add_argument(
        "--peer",
        action="append",
        metavar="URL",
        help="another replica of the network (repeatable): its documents are fetched at "
        "start and every --peer-interval, verified like a publish, and /status says where "
        "the replicas disagree",
    )
    se.add_argument(
        "--peer-interval",
        type=duration,
        default=CatchUpConfig().interval,
        metavar="DUR",
        help=f"mean time between two fetches from a peer, +-20%% "
        f"(default {CatchUpConfig().interval:g}s)",
    )
    se.add_argument(
        "--stun",
        action="append",
        type=_ice_url,
        metavar="URL",
        help="a STUN server nodes use for WebRTC links (repeatable): stun:HOST[:PORT]",
    )
    se.add_argument(
        "--turn",
        action="append",
        type=_ice_url,
        metavar="URL",
        help="a TURN server (coturn, use-auth-secret) nodes may relay through (repeatable): "
        "turn:HOST[:PORT][?transport=udp|tcp] or turns:...; needs --turn-secret-file",
    )
    se.add_argument(
        "--turn-secret-file",
        metavar="FILE",
        help="coturn's static-auth-secret (one line; keep it mode 0600): the replica mints "
        "each authenticated node a time-limited credential (username EXPIRY:NODE-ID)",
    )
    se.add_argument(
        "--turn-ttl",
        type=_turn_ttl,
        default=DEFAULT_TURN_TTL,
        metavar="DUR",
        help=f"lifetime of a minted TURN credential, {MIN_TURN_TTL}s .. {MAX_TURN_TTL // 3600}h "
        f"(default {DEFAULT_TURN_TTL // 3600}h)",
    )
    se.add_argument(
        "--origin-max-downloaders",
        type=int_range(1, 100_000),
        default=DEFAULT_MAX_DOWNLOADERS,
        metavar="N",
        help="nodes that may download one artifact from this origin at once (one that asked "
        f"in the last {DEFAULT_WINDOW:g}s counts); the rest are told to try peers and when to "
        f"come back (default {DEFAULT_MAX_DOWNLOADERS})",
    )
    se.add_argument(
        "--origin-repeat-window",
        type=int_range(0, 60),
        default=int(DEFAULT_REPEAT_WINDOW),
        metavar="SECONDS",
        help="a chunk this origin sent to one node is not sent to another within this many "
        "seconds: they are told to try peers, who have it by then (0: off; default "
        f"{DEFAULT_REPEAT_WINDOW:g})",
    )
    se.add_argument(
        "--report-budget",
        type=int_range(1, 1_000_000),
        default=int(reporting.DEFAULT_BUDGET),
        metavar="N",
        help="status heartbeats per second this replica asks its fleet to stay under: each "
        "report is answered with the interval for the next one, registered nodes / N seconds "
        f"(at least 30 s; default {int(reporting.DEFAULT_BUDGET)})",
    )
    add_limit_flags(se)  # README "Abuse limits"
    add_read_flags(se)  # who may read /status, /metrics, /ui
    se.set_defaults(handler=cmd_serve)

    st = sub.add_parser(
        "status",
        help="rollout progress, leases, pauses and refusal reasons of running replicas",
        description="Fetch GET /status from each replica and print a table (or the JSON). "
        "A replica that does not answer is marked DOWN and the others are still shown. "
        "Exit 0 when every replica answered, 1 when some did not (or a URL is not a replica), "
        "2 when none could be reached.",
    )
    st.add_argument(
        "--url", action="append", metavar="URL", help=f"replica (repeatable; default {DEFAULT_URL})"
    )
    st.add_argument("--json", action="store_true", help="print the JSON")
    st.add_argument(
        "--watch",
        type=_watch_every,
        nargs="?",
        const=2.0,
        metavar="S",
        help="draw the table again every S seconds (default 2) until Ctrl-C",
    )
    st.add_argument("--token-file", metavar="FILE", help=_TOKEN_FILE_HELP)
    st.set_defaults(handler=cmd_status)

    wh = sub.add_parser(
        "why",
        help="why one node is not updating: its last report, the gate that holds it, its wait",
        description="Ask a replica (GET /status/node/<id>) what it knows of one node: its last "
        "status report (version, state, what its own gates hold it for), its lease, the "
        "replica's last refusal of its ask (gate, reason, since when, when it asks again) and "
        "its place in the pool's queue. NODE_ID may be a prefix; one matching several nodes "
        "is a usage mistake that lists them. Exit 0 when the replica knows the node, "
        "2 when it does not (or the prefix is ambiguous, or the replica cannot be reached).",
    )
    wh.add_argument("node", metavar="NODE_ID", help="a node id or a prefix of one (hex)")
    wh.add_argument("--url", metavar="URL", help=f"replica (default {DEFAULT_URL})")
    wh.add_argument("--json", action="store_true", help="print the JSON")
    wh.add_argument("--token-file", metavar="FILE", help=_TOKEN_FILE_HELP)
    wh.set_defaults(handler=cmd_why)

    pu = sub.add_parser(
        "publish",
        help="publish signed documents and artifacts to running replicas",
        description="Each FILE is a signed document (root, release record, allowlist, scope, "
        "nudge), sent to POST /v1/publish, or artifact bytes, sent to PUT /v1/artifacts/<sha256> "
        "(its release record must be published). Documents go first, in trust order. "
        "A replica refuses anything that does not verify (HTTP 400 with the reason) and keeps "
        "what it had. A replica that cannot be reached, or a URL that is not a replica, is "
        "named in one line and the others still get everything. Exit 1 if anything was "
        "refused or missed.",
    )
    pu.add_argument("files", nargs="+", metavar="FILE")
    pu.add_argument(
        "--url", action="append", metavar="URL", help=f"replica (repeatable; default {DEFAULT_URL})"
    )
    pu.set_defaults(handler=cmd_publish)

    nu = sub.add_parser(
        "nudge",
        help="sign a nudge ('look now') for an artifact and push it to connected nodes",
        description="Sign a nudge with DIR's coordinator keys (a threshold is needed) and publish "
        "it; replicas push it to their connected nodes. A nudge skips the wait, never a gate.",
    )
    nu.add_argument("--artifact", type=sha256_hex, required=True, metavar="SHA256")
    nu.add_argument(
        "--dir", required=True, metavar="DIR", help="network directory (coordinator keys)"
    )
    nu.add_argument("--serial", type=positive_int, metavar="N", help="default: now in unix ms")
    nu.add_argument("--expires", type=duration, default=3600, metavar="DUR", help="default 1h")
    nu.add_argument(
        "--url", action="append", metavar="URL", help=f"replica (repeatable; default {DEFAULT_URL})"
    )
    nu.set_defaults(handler=cmd_nudge)

    be = sub.add_parser(
        "bench",
        help="asks per second through a real replica over loopback",
        description="Start a replica of a throwaway network on 127.0.0.1 (a child process), connect "
        "C nodes speaking the real protocol, and time N asks (each: signed ask, verify, decide, "
        "sign; then the node reports rejoined), each node from its own loopback /24. Also "
        "measures the Ed25519 sign+verify floor.",
    )
    be.add_argument("--asks", type=positive_int, default=20000, metavar="N")
    be.add_argument(
        "--concurrency",
        type=int_range(1, MAX_CONCURRENCY),
        default=64,
        metavar="C",
        help=f"asking nodes (1..{MAX_CONCURRENCY}, default 64)",
    )
    be.add_argument(
        "--sessions",
        type=int_range(0, MAX_SESSIONS),
        default=0,
        metavar="S",
        help="first open S idle node sessions (hello + one status report each) and report the "
        "replica's memory per session (rss_per_session_kib) and the asks' p99 with them open",
    )
    be.add_argument("--json", action="store_true", help="print one JSON object")
    be.add_argument("--profile", metavar="FILE", help="cProfile the server into FILE")
    be.set_defaults(handler=cmd_bench)
    return p


_TOKEN_FILE_HELP: Final = (
    "the replicas' read token (what they serve with --read-token-file), sent as a bearer "
    "token; needed for a replica with one, and for any replica not on this machine"
)


def _watch_every(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= v <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0.1 .. 3600 seconds")
    return v


#: Longest ``--queue-retry-max`` / ``--queue-hold``: a day (a node keeps its place in the
#: queue for twice the longest wait).
MAX_QUEUE_SECONDS: Final = 86400


def _queue_seconds(text: str) -> int:
    """``--queue-retry-max`` / ``--queue-hold``: a duration of 1 s .. a day."""
    seconds = duration(text)
    if seconds > MAX_QUEUE_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than a day")
    return seconds


def _unit(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    return run("p2pupdate-coordinator", build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
