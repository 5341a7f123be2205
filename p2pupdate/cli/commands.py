"""``p2pupdate``: the node and operator command line (keys, release, scope, verify, node,
status: ``cli.nodestatus``).

The console script ``p2pupdate`` enters through :func:`p2pupdate.cli.main`, which loads
this module; what it shares with ``p2pupdate-coordinator`` is in :mod:`p2pupdate.cli.common`.

Exit codes: 0 ok, 1 rejected or verification failed, 2 usage or input mistake.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .. import __version__
from ..core import cdc, crypto
from ..core import documents as docs
from ..core.errors import OversizeError, P2PUpdateError
from ..core.verify import DocResult, Report, verify_set
from ..daemon.boot import PROBATION_MARGIN
from ..daemon.bundled import default_bundle_path
from ..daemon.options import add_daemon_arguments, check_node_options, forward_args, seconds
from ..fsutil import create_exclusive
from ..launcher.artifact import (
    SELF_CONTAINED_LIMITS,
    SLOT_TOPS,
    ArtifactError,
    is_plain_tar,
    read_build_manifest,
    unpack_into,
)
from ..launcher.codes import EXIT_CODES_HELP
from ..launcher.main import exec_launcher
from ..launcher.supervisor import LauncherConfig
from .common import (
    EXIT_OK,
    EXIT_REJECTED,
    Parser,
    UsageError,
    duration,
    int_range,
    load_signing_key,
    now_arg,
    positive_int,
    read_document,
    read_input,
    regular_input,
    run,
    safe_output,
    sha256_hex,
    size,
    wall_clock,
    write_output,
)
from .install import add_parsers as add_install_parsers
from .nodestatus import add_parser as add_status_parser

#: The release record's chunk size unless told: 64 KiB (the swarm simulator, 24 nodes: the
#: origin sent 1.07 copies at 64 KiB against 1.31 at 256 KiB, README "Artifacts peer to
#: peer"), doubled for an artifact so large that it would need more than ``MAX_CHUNKS``.
DEFAULT_CHUNK = 64 * 1024


def default_chunk_size(length: int) -> int:
    """``DEFAULT_CHUNK``, doubled until ``length`` bytes fit in ``docs.MAX_CHUNKS`` chunks."""
    chunk = DEFAULT_CHUNK
    while chunk < docs.MAX_CHUNK and -(-length // chunk) > docs.MAX_CHUNKS:
        chunk *= 2
    return min(chunk, docs.MAX_CHUNK)


# -- keys -------------------------------------------------------------------------------


def cmd_keys_new(args: argparse.Namespace) -> int:
    out = Path(args.output)
    pub_out = out.with_name(out.name.removesuffix(".pem") + ".pub.pem") if args.public else None
    for path in (out, pub_out):  # check everything before writing anything
        if path is not None:
            safe_output(path, exclusive=True)
    key = crypto.SigningKey.from_seed(os.urandom(32))
    try:
        create_exclusive(out, crypto.private_key_to_pem(key), mode=0o600)
        if pub_out is not None:
            create_exclusive(pub_out, crypto.public_key_to_pem(key.public_key), mode=0o644)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(key.keyid)
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    data = read_input(args.key, crypto.MAX_PEM_BYTES)
    try:
        pub = crypto.private_key_from_pem(data).public_key
    except P2PUpdateError:
        try:
            pub = crypto.public_key_from_pem(data)
        except P2PUpdateError:
            raise UsageError(f"{args.key}: not an Ed25519 PEM key (private or public)") from None
    print(crypto.keyid(pub))
    return EXIT_OK


# -- release ----------------------------------------------------------------------------


def hash_file(path: Path, chunk_size: int) -> tuple[str, int, tuple[bytes, ...]]:
    """Stream a file: whole-file sha256, length, per-chunk sha256 digests."""
    whole = hashlib.sha256()
    chunks: list[bytes] = []
    length = 0
    try:
        with regular_input(path) as f:
            while block := f.read(chunk_size):
                whole.update(block)
                chunks.append(hashlib.sha256(block).digest())
                length += len(block)
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    return whole.hexdigest(), length, tuple(chunks)


#: Bytes read at a time while cutting content-defined chunks (the peak memory of a release
#: is about this plus one chunk, whatever the artifact's size).
CDC_READ_BLOCK = 8 * 1024 * 1024


def hash_file_cdc(path: Path) -> tuple[str, int, tuple[bytes, ...], tuple[int, ...]]:
    """Stream a file cut into content-defined chunks (``core.cdc``, its default 16/64/256
    KiB): whole-file sha256, length, per-chunk sha256 digests, chunk sizes."""
    whole = hashlib.sha256()
    chunks: list[bytes] = []
    sizes: list[int] = []

    def blocks(f: BinaryIO) -> Iterator[bytes]:
        while block := f.read(CDC_READ_BLOCK):
            whole.update(block)
            yield block

    try:
        with regular_input(path) as f:
            for chunk in cdc.split_stream(blocks(f)):
                chunks.append(hashlib.sha256(chunk).digest())
                sizes.append(len(chunk))
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    except cdc.CdcError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return whole.hexdigest(), sum(sizes), tuple(chunks), tuple(sizes)


def is_plain_tar_file(path: Path) -> bool:
    """Whether ``path`` is an uncompressed tar (by its magic, never its name)."""
    try:
        with regular_input(path) as f:
            return is_plain_tar(f.read(512))
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None


def release_platform(path: Path, given: str | None) -> str:
    """What the release record says the build needs: ``--platform`` if given (``none``:
    nothing), else the ``platform`` of the artifact's ``deps/SLOT.json`` (a self-contained
    build), else nothing (a build of our code alone, or a file that is not a build)."""
    if given is not None:
        return "" if given == "none" else given
    try:
        with regular_input(path) as f:  # a FIFO or a device is refused unread
            manifest = read_build_manifest(f)
    except ArtifactError as exc:
        raise UsageError(
            f"{path}: cannot read its build manifest ({exc}); "
            "name the platform with --platform (or --platform none)"
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    return "" if manifest is None else str(manifest["platform"])


def cmd_release(args: argparse.Namespace) -> int:
    """Sign a release record.  A plain tar (a build written as ``.tar``: what P12's
    content-defined chunks cut) is cut with ``core.cdc`` and the record lists its chunk
    ``sizes``, unless ``--fixed-chunks`` or ``--chunk-size`` is given; any other file, fixed
    chunks as before.  Nodes from before ``sizes`` existed refuse such a record: release one
    build with fixed chunks first (``documents._RELEASE_OPTIONAL``)."""
    platform = release_platform(Path(args.file), args.platform)
    if not args.fixed_chunks and args.chunk_size is None and is_plain_tar_file(Path(args.file)):
        return _release_cdc(args, platform)
    if args.chunk_size is None:
        try:
            args.chunk_size = default_chunk_size(Path(args.file).stat().st_size)
        except OSError as exc:
            raise UsageError(f"{args.file}: {exc.strerror or exc}") from None
    if not docs.MIN_CHUNK <= args.chunk_size <= docs.MAX_CHUNK:
        raise UsageError(
            f"--chunk-size must be between {docs.MIN_CHUNK} and {docs.MAX_CHUNK} bytes"
        )
    safe_output(args.output)
    keys = [load_signing_key(k) for k in args.key]
    artifact, length, chunks = hash_file(Path(args.file), args.chunk_size)
    if length == 0:
        raise UsageError(f"{args.file}: file is empty")
    if len(chunks) > docs.MAX_CHUNKS:
        raise UsageError(
            f"{args.file}: {len(chunks)} chunks exceeds {docs.MAX_CHUNKS}; use a larger --chunk-size"
        )
    layout = f"{len(chunks)} chunks of {args.chunk_size}"
    return _sign_release(
        args, keys, platform, artifact, length, args.chunk_size, chunks, (), layout
    )


def _sign_release(
    args: argparse.Namespace,
    keys: list[crypto.SigningKey],
    platform: str,
    artifact: str,
    length: int,
    chunk_size: int,
    chunks: tuple[bytes, ...],
    sizes: tuple[int, ...],
    layout: str,
) -> int:
    """Build, check, sign and write the release record ``args`` describe (the keys were
    loaded before the file was hashed: a bad key fails at once); say what it is."""
    now = wall_clock()
    try:
        rel = docs.Release(
            name=args.name,
            counter=args.counter,
            artifact=artifact,
            length=length,
            chunk_size=chunk_size,
            chunks=chunks,
            sizes=sizes,
            issued=now,
            expires=now + args.expires,
            platform=platform,
        )
        rel = rel.checked()
    except P2PUpdateError as exc:
        raise UsageError(str(exc)) from None
    write_output(args.output, rel.sign(keys).to_wire())
    print(f"release {args.name!r} counter {args.counter}: artifact {artifact}")
    print(f"  {length} bytes in {layout}; wrote {args.output}")
    print(f"  platform {platform or 'none (runs wherever Python does)'}")
    return EXIT_OK


def _release_cdc(args: argparse.Namespace, platform: str) -> int:
    safe_output(args.output)
    keys = [load_signing_key(k) for k in args.key]
    artifact, length, chunks, sizes = hash_file_cdc(Path(args.file))
    if length == 0:
        raise UsageError(f"{args.file}: file is empty")
    if len(chunks) > docs.MAX_CHUNKS:
        raise UsageError(
            f"{args.file}: {len(chunks)} content-defined chunks exceeds {docs.MAX_CHUNKS}; "
            "use --fixed-chunks with a larger --chunk-size"
        )
    layout = (
        f"{len(chunks)} content-defined chunks "
        f"({min(sizes)}..{max(sizes)} bytes, {length // len(chunks)} on average)"
    )
    # chunk_size is nominal in a content-defined record: the sizes say where chunks lie
    avg = cdc.DEFAULT_PARAMS.avg_size
    return _sign_release(args, keys, platform, artifact, length, avg, chunks, sizes, layout)


# -- scope ------------------------------------------------------------------------------


def _node_ids(text: str) -> tuple[str, ...]:
    ids = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    if not ids:
        raise argparse.ArgumentTypeError("--nodes needs at least one node id")
    for i in ids:
        sha256_hex(i)
    return ids


def _fraction(text: str) -> float:
    try:
        v = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction like 0.05 or 5%") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1 (or 0% and 100%)")
    return v


def _seed(text: str) -> bytes:
    try:
        b = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None
    if not 8 <= len(b) <= 32:
        raise argparse.ArgumentTypeError("--seed must be 8 to 32 bytes (16 to 64 hex characters)")
    return b


def _ramp(text: str) -> tuple[tuple[int, float], ...]:
    """``0:0.01,3600:0.1,86400:1``: stages ``after seconds:fraction`` (fraction as --fraction)."""
    stages = []
    for part in text.split(","):
        after, sep, fraction = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a stage AFTER:FRACTION (e.g. 0:0.01,3600:0.1,86400:1)"
            )
        try:
            seconds = int(after)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{after!r} is not whole seconds") from None
        if seconds < 0:
            raise argparse.ArgumentTypeError(f"stage time {seconds} is negative")
        stages.append((seconds, _fraction(fraction)))
    return tuple(stages)


def cmd_scope(args: argparse.Namespace) -> int:
    safe_output(args.output)
    keys = [load_signing_key(k) for k in args.key]
    now = wall_clock()
    if args.nodes is not None:
        kind, nodes, fraction, seed = "nodes", args.nodes, 0.0, b""
    elif args.fraction is not None or args.ramp is not None:
        # A ramp is a fraction scope whose signed cap is its last stage.
        fraction = args.ramp[-1][1] if args.ramp else args.fraction
        kind, nodes = "fraction", ()
        seed = args.seed if args.seed is not None else os.urandom(16)
    else:
        kind, nodes, fraction, seed = ("nobody" if args.nobody else "everyone"), (), 0.0, b""
    if args.seed is not None and kind != "fraction":
        raise UsageError("--seed only goes with --fraction or --ramp")
    scope = docs.Scope(
        serial=args.serial if args.serial is not None else now,
        issued=now,
        expires=now + args.expires,
        artifact=args.artifact,
        kind=kind,
        nodes=nodes,
        fraction=fraction,
        seed=seed,
        force=args.force,
        ramp=args.ramp or (),
    )
    try:
        scope = scope.checked()
    except P2PUpdateError as exc:
        raise UsageError(str(exc)) from None
    write_output(args.output, scope.sign(keys).to_wire())
    print(f"{scope.describe(now)}; expires {scope.expires}; wrote {args.output}")
    return EXIT_OK


# -- verify -----------------------------------------------------------------------------


def _verify_files(root: str, files: list[str], *, now: int, as_node: str | None) -> Report:
    """:func:`~p2pupdate.core.verify.verify_set` over files, where a file too large to be
    a document is a refused document (rule ``oversize``) and is never read."""
    try:
        root_bytes = read_document(root)
    except OversizeError as exc:
        return Report(root=DocResult.refused(root, "root", exc), documents=(), store=None)
    readable: list[tuple[str, bytes]] = []
    too_large: dict[int, DocResult] = {}
    for i, name in enumerate(files):
        try:
            readable.append((name, read_document(name)))
        except OversizeError as exc:
            too_large[i] = DocResult.refused(name, "?", exc)
    report = verify_set(root, root_bytes, readable, now=now, as_node=as_node)
    if not too_large or report.store is None:  # a refused root judges no file
        return report
    judged = iter(report.documents)
    documents = tuple(too_large[i] if i in too_large else next(judged) for i in range(len(files)))
    return dataclasses.replace(report, documents=documents)


def cmd_verify(args: argparse.Namespace) -> int:
    now = args.now if args.now is not None else wall_clock()
    report = _verify_files(args.root, args.files, now=now, as_node=args.as_node)
    if args.json:
        out: dict[str, Any] = {
            "ok": report.ok,
            "now": now,
            "root": report.root.to_json(),
            "documents": [d.to_json() for d in report.documents],
        }
        if report.target is not None:
            t = report.target
            out["node"] = {
                "id": report.node,
                "may_move_to": t.artifact,
                "release": t.release.name if t.release and t.artifact else None,
                "gates": [
                    {"gate": r.gate, "ok": r.ok, "reason": r.reason, "detail": r.detail}
                    for r in t.results
                ],
            }
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print(report.root.line())
        for d in report.documents:
            print(d.line())
        if report.target is not None:
            t = report.target
            who = f"node {report.node[:16]}..." if report.node else "node"
            for r in t.results:
                print(f"  gate {r}")
            if t.artifact and t.release:
                print(
                    f"{who} may move to {t.artifact} "
                    f"(release {t.release.name!r} counter {t.release.counter}) "
                    "once the coordinator grants a departure"
                )
            else:
                refusal = t.refusal
                why = f"{refusal.gate}: {refusal.reason}" if refusal else "nothing to move to"
                print(f"{who} stays where it is ({why})")
        bad = sum(not d.ok for d in report.documents) + (not report.root.ok)
        print(
            f"{len(report.documents) + 1 - bad} verified, {bad} rejected"
            if bad
            else f"all {len(report.documents) + 1} documents verified"
        )
    return EXIT_OK if report.ok else EXIT_REJECTED


# -- node -------------------------------------------------------------------------------


#: Most starts a new build gets on probation.  Each start of a build that crashes is a
#: crash loop on the node, out of service and holding its departure lease; a build that
#: failed ten starts in a row is broken, and more only keeps the node away from the good
#: build it came from (1,000,000,000 would never roll back).
MAX_ATTEMPTS = 10


def default_state_dir() -> Path:
    """``/var/lib/p2pupdate`` for root, else ``$XDG_STATE_HOME/p2pupdate``.

    Where a node keeps its slots, records and keys: README "Node life cycle".
    """
    if os.geteuid() == 0:
        return Path("/var/lib/p2pupdate")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "p2pupdate"


def default_bundle(args: argparse.Namespace) -> Path | None:
    """The bundle ``p2pupdate node`` runs on when ``--bundle`` is not given: the default
    file (``bundled.default_bundle_path``: ``/etc/p2pupdate/network.bundle`` as root) if it
    is there and ``--trust-root`` is not given (a node given its root by hand is set up by
    hand); None -- the node runs on its flags alone, as before bundles -- otherwise."""
    if args.bundle is not None:
        return Path(args.bundle)
    if args.trust_root is not None:
        return None
    path = default_bundle_path(euid=os.geteuid(), env=os.environ, home=Path.home())
    return path if path.is_file() else None


def _check_state_dir(state_dir: Path) -> None:
    """``--state-dir`` is a directory we may write in, or can be made in one."""
    probe = state_dir
    while not probe.exists():  # the nearest part of the path that is there
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--state-dir {state_dir}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--state-dir {state_dir}: {probe} is not writable")


def check_node(args: argparse.Namespace, state_dir: Path) -> None:
    """Every ``node`` option, before anything starts (README "CLI"): a mistake is one line
    naming the option and exit 2, not a launcher whose daemon fails at every start.
    Nothing is written in the state dir (a build is test-unpacked in a scratch directory)
    and nothing is started."""
    # the daemon's default work is kv: refuse now rather than crash-loop in every slot
    if args.work in (None, "kv") and importlib.util.find_spec("p2pupdate.work.kv") is None:
        raise UsageError("--work kv is not available in this build; use --work none")
    _check_state_dir(state_dir)
    if args.initial_artifact is not None:
        artifact: Path = args.initial_artifact
        if not artifact.is_file():
            what = "not a regular file" if artifact.exists() else "no such file"
            raise UsageError(f"--initial-artifact {artifact}: {what}")
        try:
            data = read_input(artifact, SELF_CONTAINED_LIMITS.max_artifact_bytes)
        except UsageError as exc:
            raise UsageError(f"--initial-artifact {exc}") from None
        with tempfile.TemporaryDirectory(prefix="p2pupdate-check-") as scratch:
            try:  # the launcher's own unpacking, into a scratch directory (not the state dir)
                unpack_into(
                    data, Path(scratch), limits=SELF_CONTAINED_LIMITS, allowed_top=SLOT_TOPS
                )
            except ArtifactError as exc:
                raise UsageError(
                    f"--initial-artifact {artifact}: not a p2pupdate build ({exc})"
                ) from None
    check_node_options(
        args,
        probation=args.probation,
        confirm_margin=PROBATION_MARGIN,
        state_dir=state_dir,
        now=wall_clock(),
    )


def cmd_node(args: argparse.Namespace) -> int:
    state_dir = (args.state_dir or default_state_dir()).absolute()
    args.bundle = default_bundle(args)  # then forwarded to every daemon, as if given
    check_node(args, state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--state-dir {state_dir}: cannot create it: {exc.strerror or exc}"
        ) from None
    config = LauncherConfig(
        state_dir=state_dir,
        daemon_args=tuple(forward_args(args)),
        probation=args.probation,
        max_attempts=args.max_attempts,
        initial_artifact=args.initial_artifact.absolute() if args.initial_artifact else None,
    )
    # everything is checked: become the small launcher process (launcher.main), leaving
    # this one's imports -- the parser, the daemon's checks, the core -- behind
    if args.stage0 is not None and not args.stage0.is_file():
        raise UsageError(f"--stage0 {args.stage0}: no such file")
    exec_launcher(config, *([args.stage0.absolute()] if args.stage0 is not None else []))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="p2pupdate",
        description=(
            "p2pupdate: fleet self-update that asks before it moves. Nodes pull signed builds "
            "from each other and switch only when (1) the artifact is on a signed allowlist, "
            "(2) the node is in the operator's rollout scope and (3) the coordinator says the "
            "network can spare it."
        ),
        epilog="Exit codes: 0 ok, 1 rejected / verification failed, 2 usage error "
        "(`p2pupdate node --help` lists the node's).",
    )
    p.add_argument("--version", action="version", version=f"p2pupdate {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    keys = sub.add_parser("keys", help="node identity keys", description="Node identity keys.")
    ksub = keys.add_subparsers(title="commands", metavar="COMMAND")
    kn = ksub.add_parser(
        "new",
        help="create a node identity key and print its node id",
        description="Create an Ed25519 key (PKCS#8 PEM, mode 0600) and print its node id "
        "(hex sha256 of the public key). Never overwrites an existing file.",
    )
    kn.add_argument("-o", "--output", required=True, metavar="PEM", help="private key file")
    kn.add_argument("--public", action="store_true", help="also write PEM.pub.pem")
    kn.set_defaults(handler=cmd_keys_new)
    ks = ksub.add_parser("show", help="print the key id of a PEM key file")
    ks.add_argument("key", metavar="PEM")
    ks.set_defaults(handler=cmd_keys_show)
    keys.set_defaults(handler=lambda a: _help(keys))

    rel = sub.add_parser(
        "release",
        help="sign a release record for a build artifact",
        description="Hash FILE (whole and per chunk) and write a release record signed by the "
        "release key(s). Peers verify every chunk against it.",
    )
    rel.add_argument("file", metavar="FILE", help="the build artifact")
    rel.add_argument(
        "--key",
        action="append",
        required=True,
        metavar="PEM",
        help="release key (repeat for a threshold)",
    )
    rel.add_argument(
        "--counter",
        type=positive_int,
        required=True,
        metavar="N",
        help="release counter; a lower one is a downgrade",
    )
    rel.add_argument("--name", required=True, help="human name, e.g. v2.3.1")
    rel.add_argument(
        "--chunk-size",
        type=size,
        default=None,
        metavar="B",
        help="fixed chunk size (default 64KiB, doubled as often as a file larger than "
        f"{docs.MAX_CHUNKS:,} x 64KiB needs); implies --fixed-chunks",
    )
    rel.add_argument(
        "--fixed-chunks",
        action="store_true",
        help="cut a plain tar into fixed-size chunks too (default: content-defined chunks, "
        "16-256KiB, for a plain tar; nodes older than them need one fixed-chunk release "
        "first); any other file is always cut in fixed chunks",
    )
    rel.add_argument(
        "--expires",
        type=duration,
        default=365 * 86400,
        metavar="DUR",
        help="record lifetime (default 365d)",
    )
    rel.add_argument(
        "--platform",
        default=None,
        metavar="TAG",
        help="the platform the build needs, e.g. cp311-manylinux_2_34_x86_64 (default: the "
        "one a self-contained build's deps/SLOT.json names; none for a build of our code "
        "alone); 'none' records no platform. Gate 1 refuses the build on a node that "
        "cannot run it (wrong-platform)",
    )
    rel.add_argument("-o", "--output", required=True, metavar="OUT")
    rel.set_defaults(handler=cmd_release)

    sc = sub.add_parser(
        "scope",
        help="sign a rollout scope token (operator)",
        description="Say which nodes may move to ARTIFACT now: nobody, a named set, a seeded "
        "fraction (the same nodes on every machine; widening keeps earlier ones in) or everyone.",
    )
    sc.add_argument("--artifact", type=sha256_hex, required=True, metavar="SHA256")
    who = sc.add_mutually_exclusive_group(required=True)
    who.add_argument("--nobody", action="store_true", help="hold everyone back (pause)")
    who.add_argument("--nodes", type=_node_ids, metavar="ID[,ID...]", help="only these node ids")
    who.add_argument(
        "--fraction", type=_fraction, metavar="F", help="a seeded fraction, e.g. 0.05 or 5%%"
    )
    who.add_argument(
        "--ramp",
        type=_ramp,
        metavar="S:F[,S:F...]",
        help="a staged seeded fraction in one signature: at S seconds after issue the "
        "fraction becomes F, e.g. 0:0.01,3600:0.1,86400:1 (nobody before the first stage; "
        "times strictly increase, fractions never decrease; at most 16 stages)",
    )
    who.add_argument("--everyone", action="store_true")
    sc.add_argument("--seed", type=_seed, metavar="HEX", help="fraction seed (default: random)")
    sc.add_argument(
        "--force", action="store_true", help="skip the capacity gate (emergency budget; audited)"
    )
    sc.add_argument(
        "--key",
        action="append",
        required=True,
        metavar="PEM",
        help="operator key (repeat for a threshold)",
    )
    sc.add_argument(
        "--serial", type=positive_int, metavar="N", help="serial (default: now in unix seconds)"
    )
    sc.add_argument(
        "--expires", type=duration, default=86400, metavar="DUR", help="lifetime (default 1d)"
    )
    sc.add_argument("-o", "--output", required=True, metavar="OUT")
    sc.set_defaults(handler=cmd_scope)

    ve = sub.add_parser(
        "verify",
        help="verify documents against a root; optionally evaluate gates 1-2 for a node",
        description="Verify every FILE against ROOT and the trust state the files imply "
        "(newer roots, version floors, expiry). With --as-node, also evaluate the allowlist "
        "and scope gates for that node and say which artifact it may move to. "
        "Exit 1 if any document is rejected.",
    )
    ve.add_argument("--root", required=True, metavar="ROOT", help="trusted root document")
    ve.add_argument("files", nargs="+", metavar="FILE")
    ve.add_argument("--as-node", type=sha256_hex, metavar="NODE_ID")
    ve.add_argument("--now", type=now_arg, metavar="UNIX", help="judge expiry at this time")
    ve.add_argument("--json", action="store_true", help="print one JSON object")
    ve.set_defaults(handler=cmd_verify)

    no = sub.add_parser(
        "node",
        help="run this node: the launcher, which runs the daemon from a slot",
        description="Run the node. The launcher (this command, from the installed package) "
        "keeps unpacked builds in STATE_DIR/slots/<sha256>/ and runs the daemon from the slot "
        "`current` points at. When the daemon swaps to a new build, the launcher starts it "
        "on probation; it becomes current only once it confirms it is healthy, and is rolled "
        "back (and never tried again here, until a higher release counter) if it crashes "
        "--max-attempts times, reports itself unhealthy or does not confirm within "
        "--probation seconds. Stop with SIGTERM or Ctrl-C.",
        epilog=EXIT_CODES_HELP,
    )
    no.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="node state (default /var/lib/p2pupdate as root, else $XDG_STATE_HOME/p2pupdate)",
    )
    no.add_argument(
        "--probation",
        type=seconds,
        default=120.0,
        metavar="DUR",
        help="a new build must confirm within this long after each start (default 120s)",
    )
    no.add_argument(
        "--max-attempts",
        type=int_range(1, MAX_ATTEMPTS),
        default=3,
        metavar="N",
        help=f"starts a new build gets before it is rolled back (default 3, at most "
        f"{MAX_ATTEMPTS})",
    )
    no.add_argument(
        "--initial-artifact",
        type=Path,
        metavar="FILE",
        help="first start only: the build to install (default: this installed package)",
    )
    no.add_argument(
        "--stage0",
        type=Path,
        metavar="FILE",
        help="the boot program that starts the launcher from the current slot (default: "
        "this package's p2pupdate/launcher/stage0.py; `p2pupdate install` names its copy)",
    )
    add_daemon_arguments(no, for_launcher=True)
    no.set_defaults(handler=cmd_node)
    add_install_parsers(sub)
    add_status_parser(sub, default_state_dir=default_state_dir)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return run("p2pupdate", build_parser, argv)
