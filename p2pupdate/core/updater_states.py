"""The update state machine's states, and the error for an event a state does not expect.

Split from ``core.updater`` (which re-exports every name here) so that module, the one
transition table and its handlers, stays small enough to read in one sitting; a shell
imports ``up.State`` from there.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from .documents import NODE_STATES
from .errors import P2PUpdateError

__all__ = ["INITIAL_STATES", "TIMED_STATES", "InvalidTransitionError", "State"]


class InvalidTransitionError(P2PUpdateError):
    """An event arrived in a state whose row of the table does not accept it.

    Always the local shell's fault (it fed a result for something the updater did not ask
    for, or fed events out of order), so it is raised, never swallowed.
    """

    rule = "invalid-transition"

    def __init__(self, message: str, *, state: State, event: str) -> None:
        super().__init__(message)
        #: Where the machine was and what arrived (the row that is missing).
        self.state = state
        self.event = event


# -- states -------------------------------------------------------------------------------


class State(enum.Enum):
    """Where the node is in its update cycle.  The value is the name operators see."""

    SLEEPING = "sleeping"  # serving; waiting for the jittered check (or a nudge)
    NOTICED = "noticed"  # serving; the shell is evaluating gates 1 and 2 locally
    PREFETCHING = "prefetching"  # serving; pulling the artifact peer-to-peer before asking
    ASKING = "asking"  # serving; a departure request is with the coordinator
    REFUSED = "refused"  # serving; waiting out retry_after, or until its cause changes
    BACKING_OFF = "backing_off"  # serving; the coordinator failed, waiting exponentially
    DRAINING = "draining"  # lease held; no new work, finishing in-flight, checkpointing
    SWAPPING = "swapping"  # staging the new slot; the process exits with the swap code
    PROBATION = "probation"  # new version running, not yet confirmed by the launcher
    ROLLING_BACK = "rolling_back"  # probation failed; the process exits with the rollback code
    REJOINED = "rejoined"  # confirmed; telling the coordinator (ends the lease)
    ROLLED_BACK = "rolled_back"  # old version again after a failed probation; reporting it

    @property
    def heartbeat_state(self) -> str:
        """The coarser state gossiped in heartbeats (``documents.NODE_STATES``)."""
        return _HEARTBEAT_STATE[self]


_HEARTBEAT_STATE: Final[Mapping[State, str]] = {
    State.SLEEPING: "serving",
    State.NOTICED: "serving",
    State.PREFETCHING: "serving",
    State.ASKING: "asking",
    State.REFUSED: "serving",
    State.BACKING_OFF: "serving",
    State.DRAINING: "draining",
    State.SWAPPING: "swapping",
    State.PROBATION: "probation",
    State.ROLLING_BACK: "failed",
    State.REJOINED: "serving",
    State.ROLLED_BACK: "serving",
}
assert set(_HEARTBEAT_STATE.values()) <= set(NODE_STATES)

#: States that are always left by a timer (among other ways); ``get_timer()`` is set there.
TIMED_STATES: Final = frozenset(
    {State.SLEEPING, State.REFUSED, State.BACKING_OFF, State.DRAINING, State.PROBATION}
)

#: States an updater can be constructed in (and so the only ones that accept ``Started``).
INITIAL_STATES: Final = (State.SLEEPING, State.PROBATION, State.ROLLED_BACK)
