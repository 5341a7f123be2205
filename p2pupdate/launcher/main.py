"""The launcher as its own small process: what ``p2pupdate node`` becomes once it has checked.

``p2pupdate node`` parses and checks every option with the command line's parser and the
daemon's own checks (``daemon.options``: the core, PyNaCl, msgpack, ... -- some 45 MB of
RSS once imported).  None of that is needed to supervise, and a Python process never gives
back what its imports took.  So once everything has passed, :func:`exec_launcher` replaces
the process (same pid: a service manager or a test that signals it sees no change) by::

    python -S -P -m p2pupdate.launcher --state-dir D --probation S --max-attempts N \\
        [--initial-artifact F] -- DAEMON_ARGS...

which imports the standard library, this package and the few modules it stands on
(``errors``, ``fsutil``, ``core.errors``, ``core.timing``) and nothing else
(``tests/launcher/test_launcher_imports.py`` keeps it so): README "A small box".  ``-S``
skips ``site`` (the ``.pth`` files of every installed package); ``PYTHONPATH`` names the
directory the ``p2pupdate`` package was imported from, so the launcher is the same
installed copy (the daemons get their slot's ``PYTHONPATH`` instead: ``child_command``).

Since P12 the process ``p2pupdate node`` becomes is stage-0 (``stage0.py``, run as
``python -I -S``: :func:`stage0_command`), which starts this launcher -- from the current
slot when the slot has one, else the installed copy as above -- and stays its parent, so a
launcher that came with an update can be tried and fallen back from.  ``--stage0 FILE``
names the copy to run (``p2pupdate install`` writes one to a fixed path); by default it is
this package's own file, so every ``p2pupdate node`` boots through stage-0.

The arguments are an internal format between this module and itself, not a command line
for people: :func:`launcher_argv` writes them, :func:`config_from_argv` reads them back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ..errors import UsageFault
from . import stage0
from .codes import LAUNCHER_USAGE
from .supervisor import Launcher, LauncherConfig, LauncherError, installed_source_root

#: This package's stage-0, the default of ``p2pupdate node --stage0``.
STAGE0_FILE = Path(stage0.__file__).resolve()

#: The interpreter's options for the launcher process (see the module docstring).
INTERPRETER_FLAGS: tuple[str, ...] = ("-S", "-P")
ENTRY_MODULE = "p2pupdate.launcher"


class ArgvError(UsageFault):
    """Arguments :func:`launcher_argv` did not write: whoever ran the launcher by hand (it
    is started only by ``p2pupdate node``, which writes them)."""

    rule = "launcher-argv"


def launcher_argv(config: LauncherConfig) -> list[str]:
    """The arguments that make :func:`config_from_argv` return ``config``'s node settings
    (state dir, probation, attempts, initial artifact, daemon arguments)."""
    argv = [
        "--state-dir",
        str(config.state_dir),
        "--probation",
        repr(config.probation),  # repr: the float comes back exactly
        "--max-attempts",
        str(config.max_attempts),
    ]
    if config.initial_artifact is not None:
        argv += ["--initial-artifact", str(config.initial_artifact)]
    return [*argv, "--", *config.daemon_args]


def config_from_argv(argv: Sequence[str]) -> LauncherConfig:
    """The :class:`LauncherConfig` that :func:`launcher_argv` wrote; else :class:`ArgvError`."""
    args = list(argv)
    try:
        split = args.index("--")
    except ValueError:
        raise ArgvError("no '--' before the daemon's arguments") from None
    own, daemon_args = args[:split], tuple(args[split + 1 :])
    if len(own) % 2:
        raise ArgvError(f"an option without a value in {own}")
    values = dict(zip(own[::2], own[1::2], strict=True))
    known = {"--state-dir", "--probation", "--max-attempts", "--initial-artifact"}
    if unknown := sorted(set(values) - known):
        raise ArgvError(f"unknown options {unknown}")
    if len(values) != len(own) // 2:
        raise ArgvError("an option given twice")
    try:
        initial = values.get("--initial-artifact")
        return LauncherConfig(
            state_dir=Path(values["--state-dir"]),
            daemon_args=daemon_args,
            probation=float(values["--probation"]),
            max_attempts=int(values["--max-attempts"]),
            initial_artifact=Path(initial) if initial is not None else None,
        )
    except KeyError as exc:
        raise ArgvError(f"missing {exc.args[0]}") from None
    except ValueError as exc:
        raise ArgvError(str(exc)) from None


def launcher_command(config: LauncherConfig) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the launcher process that runs ``config``."""
    argv = [config.python, *INTERPRETER_FLAGS, "-m", ENTRY_MODULE, *launcher_argv(config)]
    env = dict(os.environ, PYTHONPATH=str(installed_source_root()))
    return argv, env


def stage0_command(config: LauncherConfig, stage0_file: Path = STAGE0_FILE) -> list[str]:
    """argv of the stage-0 process that starts the launcher of ``config`` (``stage0``:
    ``ROOT SECONDS -- LAUNCHER_ARGS``; it runs the installed copy with ``ROOT`` as its
    ``PYTHONPATH``, as :func:`launcher_command` does)."""
    return [
        config.python,
        "-I",
        "-S",
        str(stage0_file),
        str(installed_source_root()),
        repr(config.stage0_seconds),
        "--",
        *launcher_argv(config),
    ]


def exec_launcher(config: LauncherConfig, stage0_file: Path | None = STAGE0_FILE) -> NoReturn:
    """Become the stage-0 process of ``config`` (or, with ``stage0_file`` None, the launcher
    itself) with :func:`os.execve`; never returns, but raises
    :class:`~.supervisor.LauncherError` if the interpreter cannot be run."""
    argv, env = launcher_command(config)
    if stage0_file is not None:
        argv = stage0_command(config, stage0_file)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        raise LauncherError(f"cannot start the launcher with {argv[0]}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m p2pupdate.launcher``: run the launcher until it stops; its exit code."""
    try:
        config = config_from_argv(sys.argv[1:] if argv is None else argv)
    except ArgvError as exc:
        print(f"p2pupdate-launcher: bad arguments ({exc}); run `p2pupdate node`", file=sys.stderr)
        return LAUNCHER_USAGE
    _booted_by_stage0(config)
    try:
        return Launcher(config).run()
    except KeyboardInterrupt:  # before run() installed its handlers
        return 130


def _booted_by_stage0(config: LauncherConfig) -> None:
    """Read what stage-0 told this launcher (``stage0.ENV_*``), and die with stage-0: a
    SIGKILL of the node's pid (stage-0) takes the launcher along, as it did when that pid
    was the launcher (its daemon follows by its own parent-death signal)."""
    slot = os.environ.get(stage0.ENV_SLOT)
    if slot is None:
        return
    config.stage0 = True
    config.boot_slot = slot or None
    config.boot_trial = os.environ.get(stage0.ENV_TRIAL) == "1"
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    if str(os.getppid()) != os.environ.get(stage0.ENV_PARENT):
        os._exit(1)  # stage-0 died before the line above: so do we
    if config.boot_slot is not None:  # (the installed copy's first line stays its own)
        where = Path(__file__).resolve().parent
        print(
            f"p2pupdate-launcher[{os.getpid()}]: running from {where}", file=sys.stderr, flush=True
        )
