"""The command lines: ``p2pupdate`` here, and what ``p2pupdate-coordinator`` shares with it.

* :mod:`p2pupdate.cli.common` -- exit codes, one-line errors (:class:`UsageError`,
  :class:`Rejected`), argument types (``duration``, ``int_range``, ``sha256_hex``, ...),
  reading inputs and keys, writing outputs.  ``coordinator.cli`` and the daemon's own
  parser import it; it imports only the core, the file helpers and the error hierarchy.
* :mod:`p2pupdate.cli.commands` -- the ``p2pupdate`` commands (keys, release, scope,
  verify, node); ``node`` runs the launcher, so this module imports the launcher and the
  daemon's options.
* :mod:`p2pupdate.cli.nodestatus` -- ``p2pupdate status``: the node's report, read from its
  state dir without changing it (imports the launcher's record readers only).

:func:`main` is the console script (``p2pupdate = "p2pupdate.cli:main"``).  It loads
:mod:`~p2pupdate.cli.commands` when it is called, not when this package is imported:
importing :mod:`p2pupdate.cli.common` runs this file first, and the coordinator, which
imports ``common``, must not load the node's launcher and daemon along with it (a test
in ``tests/test_architecture.py`` imports every coordinator module and checks).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``p2pupdate`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    from .commands import main as run_commands  # deferred: see the module docstring

    return run_commands(argv)
