"""``p2pupdate install`` and ``p2pupdate uninstall``: the node as a systemd service (P11).

``install --bundle FILE`` (as root) is all a box needs once: it verifies the bundle
(``core.bundle.open_bundle``), then makes

* a system user ``p2pupdate`` (``useradd --system``, no login shell, its home the state
  directory, not created by useradd), if there is none;
* the state directory (default ``/var/lib/p2pupdate``), mode 0700, owned by that user;
* ``/etc/p2pupdate/network.bundle``, a copy of the bundle (written atomically);
* ``/usr/local/lib/p2pupdate/stage0.py``, a copy of stage-0 (``launcher.stage0``: the boot
  program that starts the launcher from the current slot), out of the package so that no
  update of the package or of the node's slots touches the copy the unit runs (under
  ``ProtectSystem=strict`` the node cannot write it either); ``ExecStart`` names it
  (``node --stage0``);
* ``/etc/systemd/system/p2pupdate.service`` (``render_unit``: ``Restart=always`` and a
  sandbox that leaves the node what it needs: the network, its state directory, and
  running its daemon and work processes),

then ``systemctl daemon-reload`` and ``enable --now`` (and ``try-restart`` when a running
service's unit or bundle changed).  ``--print`` prints the unit and changes nothing.
``uninstall`` stops and disables the service and removes the unit and the bundle; the
state directory (keys, slots, trust) stays unless ``--purge``, which removes it and the
user.  Nothing prompts; the node logs to stdout and stderr, which the unit sends to
journald.

Where systemd is not running (a container, an image being built: no
``/run/systemd/system``, the test ``sd_booted()`` makes), ``install`` writes everything,
enables the unit offline if ``systemctl`` can, says it could not start the service, and
exits 0: what was asked for -- a node installed to start under systemd -- is done, and a
``RUN p2pupdate install ...`` in an image build must not fail for the lack of a service
manager that only the booted box will have.

``--root DIR`` writes under DIR as if it were ``/`` (tests, or staging a root file
system) and runs nothing: no user is made, the state directory is not given to it,
nothing is enabled or started; the output says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..core import bundle as bd
from ..core.errors import P2PUpdateError
from ..fsutil import atomic_write
from .common import EXIT_OK, Rejected, UsageError, read_input, wall_clock

__all__ = [
    "BUNDLE_PATH",
    "DEFAULT_STATE_DIR",
    "STAGE0_PATH",
    "UNIT_NAME",
    "UNIT_PATH",
    "USER",
    "Host",
    "add_parsers",
    "install",
    "node_command",
    "render_unit",
    "uninstall",
]

UNIT_NAME: Final = "p2pupdate.service"
UNIT_PATH: Final = Path("/etc/systemd/system") / UNIT_NAME
BUNDLE_PATH: Final = Path(bd.BUNDLE_FILE)
DEFAULT_STATE_DIR: Final = Path("/var/lib/p2pupdate")
USER: Final = "p2pupdate"
#: Where ``install`` copies stage-0 (``launcher.stage0``) and the unit runs it from.
STAGE0_PATH: Final = Path("/usr/local/lib/p2pupdate/stage0.py")
#: What ``sd_booted()`` looks at: systemd is the running service manager.
SYSTEMD_RUNNING: Final = Path("/run/systemd/system")
#: Directories a home-directory installation lives under: the unit then makes them
#: read-only for the node instead of hiding them.
HOME_DIRS: Final = (Path("/home"), Path("/root"), Path("/run/user"))
#: A word of ``ExecStart=`` or a path of ``ReadWritePaths=`` that needs no quoting: no
#: whitespace, quotes, backslashes, ``%`` (specifiers) or ``$`` (variables).
_PLAIN: Final = re.compile(r"[A-Za-z0-9._/+@:,=-]+")

#: Runs one system command; returns its exit code and its output (stdout and stderr).
Runner = Callable[[Sequence[str]], tuple[int, str]]


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """The real runner: never a shell, never a terminal (nothing can prompt)."""
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, f"{argv[0]}: no answer in 120 s"
    return done.returncode, (done.stdout + done.stderr).strip()


@dataclass(frozen=True, kw_only=True)
class Host:
    """Where ``install`` writes and whether it runs system commands.

    ``root`` is ``/`` for the machine itself; ``system`` says whether to run ``useradd``,
    ``chown`` and ``systemctl`` (through ``run``).  ``--root DIR`` is ``system=False``.
    """

    root: Path
    system: bool
    run: Runner

    def path(self, p: Path) -> Path:
        return self.root / p.relative_to("/")

    def systemd_running(self) -> bool:
        return self.path(SYSTEMD_RUNNING).is_dir()

    def must(self, *argv: str) -> str:
        code, out = self.run(argv)
        if code != 0:
            last = out.splitlines()[-1] if out else "no output"
            raise Rejected(f"`{' '.join(argv)}` failed (exit {code}): {last}")
        return out


# -- the unit ---------------------------------------------------------------------------


def _plain(what: str, word: str) -> str:
    if not _PLAIN.fullmatch(word):
        raise UsageError(
            f"{what} {word!r}: only letters, digits and ._/+@:,=- can go into the unit "
            "(no spaces, quotes, % or $)"
        )
    return word


def node_command(*, state_dir: Path, work: str | None) -> list[str]:
    """The node's command line in the unit: this installation's own Python and package
    (``sys.executable -m p2pupdate``: right in a virtualenv too, with no PATH needed)."""
    argv = [os.path.abspath(sys.executable), "-m", "p2pupdate", "node"]
    argv += ["--bundle", str(BUNDLE_PATH), "--state-dir", str(state_dir)]
    if work is not None:
        argv += ["--work", work]
    return [*argv, "--stage0", str(STAGE0_PATH)]


def stage0_source() -> bytes:
    """The bytes of this package's stage-0, which ``install`` copies to ``STAGE0_PATH``."""
    from ..launcher import stage0

    return Path(stage0.__file__).read_bytes()


def _installation() -> tuple[Path, Path]:
    """The Python the unit runs and the package it imports."""
    import p2pupdate

    return Path(os.path.abspath(sys.executable)), Path(p2pupdate.__file__).parent


def _installed_under_home() -> bool:
    return any(p.is_relative_to(h) for p in _installation() for h in HOME_DIRS)


def render_unit(*, command: Sequence[str], state_dir: Path, home_read_only: bool) -> str:
    """The systemd unit of a node.

    The sandbox keeps what a node needs: IPv4/IPv6 sockets (and netlink, to list the
    interfaces it gossips and announces on; unix sockets for its daemon), its state
    directory writable (slots, keys, trust, the work's data), and running the launcher,
    daemon and work processes it supervises.  Everything else is read-only or hidden.
    ``KillMode=mixed``: SIGTERM goes to the launcher, which stops its children in order;
    whatever is left gets SIGKILL after ``TimeoutStopSec``.  ``StartLimitIntervalSec=0``:
    systemd never gives up restarting (``Restart=always`` is the point).
    """
    words = " ".join(_plain("ExecStart", w) for w in command)
    state = _plain("--state-dir", str(state_dir))
    home = "read-only" if home_read_only else "yes"
    return f"""\
# Written by `p2pupdate install`; `p2pupdate uninstall` removes it.
[Unit]
Description=p2pupdate node (fleet self-update that asks before it moves)
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
User={USER}
Group={USER}
ExecStart={words}
Restart=always
RestartSec=5
KillMode=mixed
TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1
StandardOutput=journal
StandardError=journal
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={state}
ProtectHome={home}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
CapabilityBoundingSet=
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
"""


def _state_dir(args: argparse.Namespace) -> Path:
    state: Path = args.state_dir or DEFAULT_STATE_DIR
    if not state.is_absolute() or state == Path("/"):
        raise UsageError(f"--state-dir {state}: must be an absolute path other than /")
    return Path(os.path.normpath(state))


def _need_root(host: Host, what: str) -> None:
    if host.system and os.geteuid() != 0:
        raise UsageError(
            f"{what} changes the system: run it as root"
            + (" (or --print to see the unit)" if what == "install" else "")
        )


def _unreadable(path: Path) -> Path | None:
    """The first directory on the way to ``path`` that other users cannot enter."""
    for d in [*reversed(path.parents)]:
        try:
            if not os.stat(d).st_mode & 0o001:
                return d
        except OSError:
            return d
    return None


# -- install ----------------------------------------------------------------------------


def _write_if_changed(path: Path, data: bytes, mode: int) -> bool:
    try:
        if path.read_bytes() == data:
            os.chmod(path, mode)
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    atomic_write(path, data, mode=mode)
    return True


def install(
    host: Host, *, bundle: bytes, state_dir: Path, unit: str, say: Callable[[str], None]
) -> None:
    """Put a verified bundle and its unit in place and start the service (module doc)."""
    if host.system and host.run(["getent", "passwd", USER])[0] != 0:
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        host.must(
            "useradd", "--system", "--user-group", "--no-create-home",
            "--home-dir", str(state_dir), "--shell", nologin,
            "--comment", "p2pupdate node", USER,
        )  # fmt: skip
        say(f"made system user {USER}")
    state = host.path(state_dir)
    try:
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(state, 0o700)
        changed = _write_if_changed(host.path(BUNDLE_PATH), bundle, 0o644)
        changed |= _write_if_changed(host.path(UNIT_PATH), unit.encode(), 0o644)
        changed |= _write_if_changed(host.path(STAGE0_PATH), stage0_source(), 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None
    if host.system:
        # -R: a state dir a node run by hand (as root) left behind becomes the user's
        host.must("chown", "-R", f"{USER}:{USER}", str(state_dir))
    wrote = f"{host.path(BUNDLE_PATH)}, {host.path(STAGE0_PATH)} and {host.path(UNIT_PATH)}"
    say(f"wrote {wrote}; state in {state} (0700)")
    if not host.system:
        say(f"--root {host.root}: no user made, nothing enabled or started")
        return
    if not host.systemd_running():
        code, _out = host.run(["systemctl", "enable", UNIT_NAME])
        enabled = "enabled, so it starts at the next boot" if code == 0 else "not enabled"
        say(
            f"warning: systemd is not running here (no {SYSTEMD_RUNNING}): {UNIT_NAME} is "
            f"installed and {enabled}, but not started"
        )
        return
    host.must("systemctl", "daemon-reload")
    was_active = host.run(["systemctl", "is-active", "--quiet", UNIT_NAME])[0] == 0
    host.must("systemctl", "enable", "--now", UNIT_NAME)
    if was_active and changed:
        host.must("systemctl", "try-restart", UNIT_NAME)
        say(f"restarted {UNIT_NAME} (its unit or bundle changed)")
    say(f"{UNIT_NAME} enabled and started: journalctl -u {UNIT_NAME} -f shows its log")


def cmd_install(args: argparse.Namespace) -> int:
    host = _host(args)
    data = read_input(args.bundle, bd.BUNDLE_LIMITS.max_bytes)
    try:
        opened = bd.open_bundle(data, now=wall_clock())
    except P2PUpdateError as exc:
        raise Rejected(f"{args.bundle}: {exc.rule}: {exc}") from None
    state_dir = _state_dir(args)
    unit = render_unit(
        command=node_command(state_dir=state_dir, work=args.work),
        state_dir=state_dir,
        home_read_only=_installed_under_home(),
    )
    if args.print:
        sys.stdout.write(unit)
        return EXIT_OK
    _need_root(host, "install")
    print(opened.bundle.describe())
    blocked = next(filter(None, map(_unreadable, _installation())), None)
    if host.system and blocked is not None:
        print(
            f"warning: user {USER} cannot enter {blocked}, where this installation lives: "
            "install p2pupdate system-wide (e.g. a virtualenv in /opt)",
            file=sys.stderr,
        )
    install(host, bundle=data, state_dir=state_dir, unit=unit, say=print)
    return EXIT_OK


# -- uninstall --------------------------------------------------------------------------

_STATE_IN_UNIT: Final = re.compile(r"^ExecStart=.* --state-dir (\S+)", re.MULTILINE)


def uninstall(host: Host, *, state_dir: Path, purge: bool, say: Callable[[str], None]) -> None:
    """Stop, disable and remove the service; with ``purge`` the state and the user too."""
    unit_path = host.path(UNIT_PATH)
    if host.system:
        running = host.systemd_running()
        argv = ["systemctl", "disable", *(["--now"] if running else []), UNIT_NAME]
        code, out = host.run(argv)
        if code != 0 and unit_path.exists():
            say(f"warning: `{' '.join(argv)}` failed (exit {code}): {out[-200:]}")
    for path in (unit_path, host.path(BUNDLE_PATH), host.path(STAGE0_PATH)):
        path.unlink(missing_ok=True)
    for path in (host.path(BUNDLE_PATH), host.path(STAGE0_PATH)):
        with contextlib.suppress(OSError):  # not there, or holds something that is not ours
            path.parent.rmdir()
    if host.system and host.systemd_running():
        host.must("systemctl", "daemon-reload")
    say(f"removed {UNIT_NAME}, {host.path(BUNDLE_PATH)} and {host.path(STAGE0_PATH)}")
    state = host.path(state_dir)
    if not purge or state_dir == Path("/"):
        say(f"kept the node's state in {state} (uninstall --purge removes it and the user)")
        return
    shutil.rmtree(state, ignore_errors=True)
    if host.system and host.run(["getent", "passwd", USER])[0] == 0:
        host.must("userdel", USER)
    say(f"removed {state}" + (f" and user {USER}" if host.system else ""))


def cmd_uninstall(args: argparse.Namespace) -> int:
    host = _host(args)
    _need_root(host, "uninstall")
    state_dir = _state_dir(args)
    if args.state_dir is None:  # the one the installed unit names
        try:
            m = _STATE_IN_UNIT.search(host.path(UNIT_PATH).read_text())
        except OSError:
            m = None
        if m is not None:
            state_dir = Path(m.group(1))
    uninstall(host, state_dir=state_dir, purge=args.purge, say=print)
    return EXIT_OK


# -- parsers ----------------------------------------------------------------------------


def _host(args: argparse.Namespace) -> Host:
    if args.root is None:
        return Host(root=Path("/"), system=True, run=run_command)
    root = Path(args.root).absolute()
    if not root.is_dir():
        raise UsageError(f"--root {root}: not a directory")
    return Host(root=root, system=False, run=run_command)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"the node's state (default {DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--root",
        metavar="DIR",
        help="write under DIR as if it were / (tests, staging a root file system); run "
        "nothing: no user, no systemctl",
    )


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    """``install`` and ``uninstall`` on the ``p2pupdate`` command line."""
    from ..daemon.options import WORKLOADS

    ins = sub.add_parser(
        "install",
        help="run this node as a systemd service, from a network bundle (as root)",
        description=f"Verify the bundle, then make a system user {USER}, the state "
        f"directory (0700, theirs), {BUNDLE_PATH} and {UNIT_PATH}; enable and start it. "
        "Where systemd is not running (a container) the files are written and the service "
        "is not started (exit 0, with a warning). Never prompts.",
    )
    ins.add_argument("--bundle", required=True, metavar="FILE", help="the network bundle")
    ins.add_argument(
        "--work", choices=WORKLOADS, help="the work the node serves (default: the node's)"
    )
    ins.add_argument(
        "--print", action="store_true", help="print the unit and change nothing (any user)"
    )
    _common(ins)
    ins.set_defaults(handler=cmd_install)
    un = sub.add_parser(
        "uninstall",
        help="stop and remove the service (keeps the node's state unless --purge)",
        description=f"Stop and disable {UNIT_NAME}, remove it and {BUNDLE_PATH}. The state "
        f"directory stays unless --purge, which removes it and the user {USER}.",
    )
    un.add_argument("--purge", action="store_true", help="remove the state and the user too")
    _common(un)
    un.set_defaults(handler=cmd_uninstall)
