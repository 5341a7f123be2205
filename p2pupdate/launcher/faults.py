"""Fault injection for crash-safety tests: die at a named step, like a power cut would.

``P2PUPDATE_TEST_CRASH_AT=<step>`` makes the process that reaches ``crash_point(<step>)``
SIGKILL its whole process group (the launcher and the daemon it runs) at that exact point:
no ``finally`` blocks, no flushing, nothing written after it.  The crash-injection tests
set it for one run and start the node again without it; nothing else ever sets it.

Steps (who reaches them):

=============  ========  =====================================================================
``unpack``     daemon    staging a slot, after the first few entries of the archive are written
``staged``     daemon    the slot is renamed into ``slots/<sha>/``; ``pending`` not yet written
``pending``    daemon    ``pending`` written; before exiting with the swap code
``attempt``    launcher  ``pending.attempts`` incremented; before the new slot is started
``probation``  daemon    new slot restored and serving; before its health check passes
``confirmed``  daemon    ``verdict`` (confirm) written; before the launcher promotes the slot
``promote``    launcher  ``previous`` repointed; ``current`` not yet
``promoted``   launcher  ``current`` repointed; ``pending`` not yet removed
``rollback``   launcher  the rollback decision is in ``pending``; deny and log not yet written
=============  ========  =====================================================================

``P2PUPDATE_TEST_MODULES=<file>`` makes the daemon write, as it exits, where each module it
imported came from (``{name: __file__}``, JSON): the test that a self-contained slot runs
from itself alone reads it.  Nothing else ever sets it.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Final

ENV: Final = "P2PUPDATE_TEST_CRASH_AT"
MODULES_ENV: Final = "P2PUPDATE_TEST_MODULES"

STEPS: Final = (
    "unpack",
    "staged",
    "pending",
    "attempt",
    "probation",
    "confirmed",
    "promote",
    "promoted",
    "rollback",
)


def crash_point(step: str) -> None:
    """SIGKILL this process group now if the test asked for a crash at ``step``."""
    assert step in STEPS, step
    if os.environ.get(ENV) != step:
        return
    print(f"p2pupdate: test crash injected at {step!r} (pid {os.getpid()})", file=sys.stderr)
    sys.stderr.flush()
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:  # not the leader of a group we may kill: at least die ourselves
        os.kill(os.getpid(), signal.SIGKILL)


def dump_modules() -> None:
    """Write ``{module: __file__}`` of every module this process imported (those with a
    file) to ``$P2PUPDATE_TEST_MODULES``, atomically, if the test asked for it."""
    target = os.environ.get(MODULES_ENV)
    if not target:
        return
    import json
    from pathlib import Path

    from ..fsutil import atomic_write

    files = {
        name: f
        for name, mod in list(sys.modules.items())
        if isinstance(f := getattr(mod, "__file__", None), str)
    }
    atomic_write(Path(target), json.dumps(files, sort_keys=True).encode())
