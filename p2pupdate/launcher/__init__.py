"""The launcher: slots on disk, probation, rollback, sticky denies (README "Node life cycle").

* ``codes``      -- the exit codes between launcher and daemon (the whole contract)
* ``artifact``   -- deterministic builds of ourselves; verified, capped, path-checked unpack
* ``state``      -- the state directory: slots, ``current``/``previous``, the JSON records
* ``supervisor`` -- the ``Launcher`` loop that ``p2pupdate node`` runs
* ``stage0``     -- the boot program: runs the current slot's launcher, tries a new one
* ``faults``     -- ``P2PUPDATE_TEST_CRASH_AT``: die at a named step (crash-safety tests)

Probation in one paragraph: the daemon stages ``slots/<sha>/``, writes ``pending`` and exits
75; the launcher starts that slot (``attempts`` += 1, a deadline ``--probation`` seconds
away); the daemon restores the work, passes its health checks and writes ``verdict``
(confirm) -- the confirmation channel is that atomic file, polled by the launcher -- and the
launcher promotes it (``previous`` := old, ``current`` := new).  A crash costs an attempt;
spent attempts, exit 76 (unhealthy) or no confirm by the deadline roll back: ``current`` was
never moved, the artifact is sticky-denied and the rollback logged for the old version to
report.

The daemon runs from a slot and imports ``state`` and ``codes`` from *its own* copy of this
package (to stage the next slot and answer on probation); the launcher is run by stage-0
(``stage0``) from the current slot's copy (the installed copy on a first start or for a slot
from before stage-0 existed).  So the on-disk formats and the codes are a contract between versions: add to them,
never change what an existing field or code means.
"""

from .codes import EXIT_ROLLBACK, EXIT_STOP, EXIT_SWAP

__all__ = ["EXIT_ROLLBACK", "EXIT_STOP", "EXIT_SWAP"]
