"""Exit codes between the launcher and the daemon it runs, in one place.

The daemon runs from a slot (any version); the launcher is the installed, stable code.
These numbers are the whole contract of a daemon's exit, so they never change meaning:

==  =================  ========================================================================
 0  ``EXIT_STOP``      the daemon stopped on request (SIGTERM/SIGINT): the launcher stops too
75  ``EXIT_SWAP``      the daemon staged ``slots/<sha>/`` and wrote ``pending``: start the new
                       slot on probation (75 is ``EX_TEMPFAIL``: "come back, differently")
76  ``EXIT_ROLLBACK``  the daemon on probation found itself unhealthy (reason in ``verdict``):
                       roll back to the previous slot at once and sticky-deny the artifact
..  anything else      a crash (a Python traceback exits 1, a signal shows as negative): on
                       probation it costs an attempt; otherwise the slot restarts after backoff
==  =================  ========================================================================

The launcher process itself exits 0 when stopped, 1 when it cannot run at all (no runnable
slot, the state dir is locked by another launcher), 2 on a usage error, and 77
(``LAUNCHER_RELAUNCH``, to stage-0 only) when the launcher stage-0 should run is no longer
this one: a swap to a slot with its own launcher, or a rollback away from this launcher's
slot (``stage0``).
"""

from __future__ import annotations

import signal
from typing import Final

from . import stage0

EXIT_STOP: Final = 0
EXIT_SWAP: Final = 75
EXIT_ROLLBACK: Final = 76

#: The launcher's own exit codes.
LAUNCHER_OK: Final = 0
LAUNCHER_FATAL: Final = 1
LAUNCHER_USAGE: Final = 2
LAUNCHER_RELAUNCH: Final = stage0.RELAUNCH  # stage-0 stands alone: the number lives there

#: One line for ``--help`` epilogs.
EXIT_CODES_HELP: Final = (
    f"Daemon exit codes: {EXIT_STOP} stop (the launcher stops too), {EXIT_SWAP} swap "
    f"(pending written: start the new slot on probation), {EXIT_ROLLBACK} rollback "
    "(probation failed: back to the previous slot, artifact sticky-denied), anything else "
    "a crash (on probation: one attempt used). "
    f"The launcher exits {LAUNCHER_OK} when stopped, {LAUNCHER_FATAL} when it cannot run "
    f"(no runnable slot, state dir locked), {LAUNCHER_USAGE} on a usage error."
)


def describe_exit(code: int) -> str:
    """A daemon's exit status in words, for logs and rollback reasons."""
    if code == EXIT_STOP:
        return "stopped (exit 0)"
    if code == EXIT_SWAP:
        return f"swap requested (exit {EXIT_SWAP})"
    if code == EXIT_ROLLBACK:
        return f"rollback requested (exit {EXIT_ROLLBACK})"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"crashed (exit {code})"
