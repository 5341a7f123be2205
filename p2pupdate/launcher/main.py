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
from .codes import LAUNCHER_USAGE
from .supervisor import Launcher, LauncherConfig, LauncherError, installed_source_root

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


def exec_launcher(config: LauncherConfig) -> NoReturn:
    """Become the launcher process of ``config`` (:func:`os.execve`; never returns, but
    raises :class:`~.supervisor.LauncherError` if the interpreter cannot be run)."""
    argv, env = launcher_command(config)
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
    try:
        return Launcher(config).run()
    except KeyboardInterrupt:  # before run() installed its handlers
        return 130
