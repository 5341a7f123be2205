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
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Final

ENV: Final = "P2PUPDATE_TEST_CRASH_AT"

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
