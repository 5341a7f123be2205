"""Every error a shell raises on purpose says whose fault it was (``p2pupdate.errors``).

The operator's first question about a failure is "whose fault?": a peer's, a coordinator's,
this machine's state, or the caller's.  Each exception class the shells define must answer
it by deriving from exactly one of the four fault classes (and so from ``P2PUpdateError``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from p2pupdate.core.errors import P2PUpdateError, WireError
from p2pupdate.errors import CoordinatorFault, LocalStateFault, PeerFault, UsageFault

FAULTS = (PeerFault, CoordinatorFault, LocalStateFault, UsageFault)

#: The shell modules whose exception classes are checked (the packages in full).
PACKAGES = ("p2pupdate.net", "p2pupdate.launcher", "p2pupdate.work")
MODULES = (
    "p2pupdate.fsutil",
    "p2pupdate.cli.nodestatus",
    "p2pupdate.daemon.boot",
    "p2pupdate.daemon.gossip",
    "p2pupdate.daemon.health",
    "p2pupdate.daemon.hooks",
    "p2pupdate.daemon.main",
    "p2pupdate.daemon.node",
    "p2pupdate.daemon.nullwork",
    "p2pupdate.daemon.offers",
    "p2pupdate.daemon.options",
    "p2pupdate.daemon.status",
    "p2pupdate.daemon.truststate",
    "p2pupdate.daemon.workhost",
)


def _modules() -> list[str]:
    names = list(MODULES)
    for package in PACKAGES:
        mod = importlib.import_module(package)
        names.append(package)
        names.extend(m.name for m in pkgutil.walk_packages(mod.__path__, prefix=f"{package}."))
    return sorted(set(names))


def _shell_errors() -> list[tuple[str, type[BaseException]]]:
    found: list[tuple[str, type[BaseException]]] = []
    for name in _modules():
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if obj.__module__ == name and issubclass(obj, BaseException):
                found.append((f"{name}.{obj.__qualname__}", obj))
    return found


SHELL_ERRORS = _shell_errors()


def test_the_shells_define_errors_at_all() -> None:
    # a guard against this test silently checking nothing
    assert len(SHELL_ERRORS) >= 10


@pytest.mark.parametrize(("name", "cls"), SHELL_ERRORS, ids=[n for n, _ in SHELL_ERRORS])
def test_every_shell_error_names_exactly_one_fault(name: str, cls: type[BaseException]) -> None:
    faults = [f for f in FAULTS if issubclass(cls, f)]
    assert len(faults) == 1, f"{name} derives from {faults or 'none'} of the fault classes"
    assert issubclass(cls, P2PUpdateError)


def test_the_classes_callers_catch_keep_their_other_bases() -> None:
    from p2pupdate.fsutil import FileTooLargeError
    from p2pupdate.net.errors import LinkError
    from p2pupdate.work.protocol import BadRequestError, CorruptStateError

    # ``except OSError`` around a read still catches an oversized file
    assert issubclass(FileTooLargeError, OSError) and issubclass(FileTooLargeError, LocalStateFault)
    # ``Workload.restore`` promises ValueError for a checkpoint it cannot read
    assert issubclass(CorruptStateError, ValueError)
    # a malformed request is still a WireError, and now says it was the client's
    assert issubclass(BadRequestError, WireError) and issubclass(BadRequestError, PeerFault)
    assert issubclass(LinkError, PeerFault)
    err = FileTooLargeError("x is 9 bytes; the limit is 8")
    assert str(err) == "x is 9 bytes; the limit is 8" and err.fault == "local"
