"""``python -m p2pupdate.daemon``: what the launcher runs from a slot.

Not meant to be typed by hand (``p2pupdate node`` runs it with ``--state-dir``, ``--slot``,
``--mode`` and ``--parent-pid`` filled in), but it has the usual ``--help``, one-line
errors and exit 2 on a usage mistake -- which the launcher counts as a crash of the slot.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from .. import clock
from ..cli.common import Parser, UsageError, sha256_hex
from ..core import admission, crypto
from ..core.errors import P2PUpdateError
from ..core.gossip import GossipConfig
from ..fsutil import atomic_write
from ..launcher.codes import EXIT_CODES_HELP
from ..work.base import Workload
from .boot import NodeError
from .bundled import Bundled, adopt_root, keep_bundle, lan_addresses
from .coordinator import CoordinatorLink, MemberSource, parse_stub
from .gossip import GossipService, parse_hostport, trust_verifier
from .identity import load_identity, weak_identity
from .node import Node, NodeConfig, stderr_log
from .nullwork import NullWorkload
from .offers import OfferSource
from .options import (
    Admission,
    DaemonOptions,
    add_daemon_arguments,
    apply_bundle,
    fill_defaults,
    open_admission,
    resolve_bundle,
    trust_root_missing,
)
from .truststate import TrustFile

EXIT_FATAL = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m p2pupdate.daemon",
        description="The p2pupdate node daemon, as the launcher runs it from a slot "
        "(use `p2pupdate node` instead).",
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument("--state-dir", type=Path, required=True, metavar="DIR")
    p.add_argument("--slot", type=sha256_hex, required=True, metavar="SHA256")
    p.add_argument("--mode", choices=("normal", "probation"), default="normal")
    p.add_argument("--parent-pid", type=int, metavar="PID", help="exit when this process is gone")
    add_daemon_arguments(p, for_launcher=False, unset=True)  # defaults after the bundle
    return p


def workload_factory(opts: DaemonOptions, state_dir: Path) -> Callable[[], Workload]:
    """What ``--work`` names; called once at start and again after an undone drain."""
    if opts.work == "none":
        return NullWorkload
    try:
        from ..work.kv import KVWorkload
    except ImportError as exc:
        raise NodeError(f"--work kv is not available in this build ({exc})") from None
    directory = state_dir / "work" / "kv"

    def make() -> Workload:
        directory.mkdir(parents=True, exist_ok=True)
        return KVWorkload(directory, host=opts.host, port=opts.port, capacity=opts.capacity)

    return make


def admission_documents(
    args: argparse.Namespace,
    state_dir: Path,
    trust: TrustFile,
    clk: clock.Clock,
    log: Callable[[str], None],
    bundled: Bundled | None = None,
) -> Admission:
    """The network and member documents verified (``options.open_admission``, under the
    root held now; an expired one is a warning here: time passed since the launcher's
    check, and the node must keep serving).  Raises ``UsageError``."""
    found = open_admission(
        args,
        state_dir,
        trust.store.root,
        now=clk.utc_now(),
        node=None,
        strict=False,
        bundled=bundled.network_bytes if bundled is not None else None,
    )
    for line in found.warnings:
        log(line)
    if found.network is not None:
        log(found.network.describe())
    return found


def keep_documents(
    args: argparse.Namespace, state_dir: Path, found: Admission, log: Callable[[str], None]
) -> None:
    """The documents the flags named, once every check passed, kept in the state dir
    (atomically): where the next start looks without the flags."""
    kept = (
        (args.network_config, admission.NETWORK_FILE, found.network_bytes),
        (args.member, admission.MEMBER_FILE, found.member_bytes),
    )
    for given, name, data in kept:
        if given is None or data is None:
            continue
        path = state_dir / name
        try:
            if not path.is_file() or path.read_bytes() != data:
                atomic_write(path, data, mode=0o644)
        except OSError as exc:  # the node runs on the flag's file; the next start needs it
            log(f"cannot keep {name} in {state_dir} ({exc.strerror or exc})")


def daemon_options(
    args: argparse.Namespace,
    state_dir: Path,
    *,
    now: int,
    log: Callable[[str], None],
    lan: Callable[[], list[str]] = lan_addresses,
) -> tuple[DaemonOptions, Bundled | None]:
    """The options this daemon runs with: the flags given (``args``, None where not
    given), then what ``--bundle`` says for the rest (``options.apply_bundle``; the bundle
    judged again, not strictly: the file may have changed since the launcher's check, and
    the kept copy is what a bad one falls back to), then the defaults.  ``args`` is
    filled in place (the admission code reads it).  Raises ``UsageError``."""
    bundled: Bundled | None = None
    if args.bundle is not None:
        bundled = resolve_bundle(args, state_dir, now=now, strict=False)
        for line in bundled.notes:
            log(line)
        if bundled.opened is not None:
            log(bundled.opened.bundle.describe())
            for line in apply_bundle(args, bundled.opened.bundle, lan=lan()):
                log(line)
    fill_defaults(args)
    return DaemonOptions.from_namespace(args), bundled


class _ToDaemonLog(logging.Handler):
    """Warnings of the libraries the daemon runs (the KV store's "log damaged: ..." lines)
    go to the daemon's own log, stamped like every other line."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                message = f"{message} ({type(exc).__name__}: {exc})"
            self._log(message)
        except Exception:  # pragma: no cover - a log line must never stop the node
            self.handleError(record)


def main(argv: Sequence[str] | None = None, *, clk: clock.Clock = clock.SYSTEM) -> int:
    """Parse, build the node's parts and run it; ``clk`` is the one clock they all read."""
    args = build_parser().parse_args(argv)
    log = stderr_log(clk)
    logging.getLogger().addHandler(_ToDaemonLog(log))
    state_dir: Path = args.state_dir.absolute()
    flag_pool: str | None = args.pool  # None: not given (the bundle's, or a member's)
    try:
        opts, bundled = daemon_options(args, state_dir, now=clk.utc_now(), log=log)
    except UsageError as exc:
        log(f"fatal: {exc}")
        return EXIT_USAGE
    if opts.grant_all:
        log(
            "WARNING: --grant-all: every departure is GRANTED without a coordinator. "
            "The capacity gate is OFF. Test use only."
        )
    offers = None
    trust = None
    missing = trust_root_missing(args)
    if missing:
        log(f"fatal: {missing}")
        return EXIT_USAGE
    if opts.trust_root is not None:
        try:
            trust = TrustFile.open(
                state_dir / "trust",
                initial_root=opts.trust_root.read_bytes(),
                log=log,
                now=clk.utc_now(),
            )
        except (OSError, P2PUpdateError) as exc:
            log(f"fatal: trust root {opts.trust_root}: {exc}")
            return EXIT_USAGE
    elif bundled is not None:
        try:  # trust on first use from the bundle's root; later the held one, rotated
            trust = TrustFile.open(
                state_dir / "trust", initial_root=bundled.initial_root, log=log, now=clk.utc_now()
            )
        except (OSError, P2PUpdateError) as exc:
            log(f"fatal: the bundle's root: {exc}")
            return EXIT_USAGE
        adopt_root(trust.update_root, trust.store, bundled, now=clk.utc_now(), log=log)
        keep_bundle(state_dir, bundled, log)
    found = Admission()
    if trust is not None:
        try:
            found = admission_documents(args, state_dir, trust, clk, log, bundled)
        except UsageError as exc:
            log(f"fatal: {exc}")
            return EXIT_USAGE
    identity: list[crypto.SigningKey] = []

    def key() -> crypto.SigningKey:
        """The node's key, read (and repaired) once: coordinator and gossip share it.  A
        new one meets the network document's proof of work; one that falls short is
        kept (unless ``--upgrade-identity``), and said once."""
        if not identity:
            identity.append(
                load_identity(
                    state_dir,
                    log,
                    pow_bits=found.pow_bits,
                    upgrade=opts.upgrade_identity,
                    timer=clk.wall,
                )
            )
            problem = weak_identity(identity[0].keyid, found.pow_bits)
            if problem:
                log(f"WARNING: {problem}")
        return identity[0]

    pool = opts.pool
    member = None
    if trust is not None:
        try:
            given = None if flag_pool in (None, "default") else flag_pool
            pool = found.pool(given) or opts.pool
            if found.member is not None and found.member_bytes is not None:
                if found.member.node != key().keyid:
                    raise UsageError(
                        f"--member: the member document names node {found.member.node}; "
                        f"this node is {key().keyid}"
                    )
                store = trust
                member = MemberSource(
                    state_dir / admission.MEMBER_FILE,
                    found.member_bytes,
                    found.member,
                    node=key().keyid,
                    root=lambda: store.store.root,
                    log=log,
                )
        except UsageError as exc:
            log(f"fatal: {exc}")
            return EXIT_USAGE
        keep_documents(args, state_dir, found, log)
    coordinator = None
    if opts.coordinator:
        assert trust is not None  # trust_root_missing said so above
        try:
            coordinator = CoordinatorLink(
                list(opts.coordinator),
                key(),
                trust,
                pool=pool,
                member=member,
                network=found.network,
                estimate=parse_stub(opts.aggregate_stub) if opts.aggregate_stub else None,
                report_interval=opts.report_interval,
                persistent=opts.persistent_sessions,
                docs_interval=opts.check_interval,
                log=log,
                clock=clk,
            )
        except (OSError, ValueError, P2PUpdateError) as exc:
            log(f"fatal: coordinator: {exc}")
            return EXIT_USAGE
        if bundled is not None and bundled.opened is not None:
            coordinator.fallback_stun = bundled.opened.bundle.stun
        log(f"node {coordinator.node} asks {len(opts.coordinator)} coordinator replica(s)")
    gossip = None
    if opts.gossip:
        assert trust is not None  # trust_root_missing said so above
        try:
            gossip = GossipService(
                key=key(),
                clock=clk,
                verify=trust_verifier(trust, clk),
                listen=parse_hostport(opts.gossip_listen or "127.0.0.1:0"),
                advertise=opts.gossip_advertise,
                peers=[parse_hostport(p) for p in opts.peer],
                config=GossipConfig(round_interval=opts.gossip_round),
                log=log,
            )
        except (OSError, ValueError, P2PUpdateError) as exc:
            log(f"fatal: gossip: {exc}")
            return EXIT_USAGE
    if opts.offer_dir is not None:
        if trust is None:
            log(
                f"WARNING: --offer-dir without --trust-root: UNSIGNED builds in "
                f"{opts.offer_dir} are accepted. Test use only."
            )
        offers = OfferSource(opts.offer_dir, trust=trust, log=log, wall_clock=clk.wall)
    # A signal outside trio's receiver (before it is installed, after it is gone) must not
    # kill us mid-write: the receiver handles the first one, the launcher escalates.
    signal.signal(signal.SIGTERM, lambda _s, _f: None)
    try:
        node = Node(
            NodeConfig(
                state_dir=state_dir,
                slot=args.slot,
                mode=args.mode,
                parent_pid=args.parent_pid,
                options=opts,
            ),
            make_workload=workload_factory(opts, state_dir),
            offers=offers,
            clock=clk,
            rng=random.Random(),
            log=log,
            coordinator=coordinator,
            gossip=gossip,
            trust=trust,
        )
        return trio.run(node.run)
    except (NodeError, P2PUpdateError, OSError) as exc:
        log(f"fatal: {type(exc).__name__}: {exc}")
        return EXIT_FATAL
    except KeyboardInterrupt:
        return EXIT_FATAL


if __name__ == "__main__":
    sys.exit(main())
