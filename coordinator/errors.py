"""The replica's own errors, by whose fault they are (``p2pupdate.errors``)."""

from __future__ import annotations

from p2pupdate.errors import LocalStateFault, PeerFault

__all__ = ["ConfigError", "RequestError", "StateDamaged", "StateDirInUse", "StateUnwritable"]


class ConfigError(LocalStateFault):
    """The replica cannot start with this network directory or these settings."""

    rule = "config"


class StateDirInUse(LocalStateFault):
    """Another process already runs this replica on this state dir (``statelock``)."""

    rule = "state-dir-in-use"


class RequestError(PeerFault):
    """A request the node got wrong (not a refusal): answered ``ok: false``.

    ``error`` is the code the node sees (also this exception's ``rule``)."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail, rule=error)
        self.error = error
        self.detail = detail


class StateDamaged(LocalStateFault):
    """A file in the replica's state dir is damaged (``coordinator.statefiles``)."""

    rule = "state-damaged"


class StateUnwritable(LocalStateFault):
    """The state database refused a write that is not damage (disk full, I/O error)."""

    rule = "state-unwritable"
