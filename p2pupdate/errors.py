"""Whose fault it was: the one error hierarchy of the shells.

The core's errors (:mod:`p2pupdate.core.errors`) say what is wrong with bytes or a
document.  The shells (daemon, links, launcher, coordinator client and service, CLIs) add
the other question an operator asks first: *whose* fault was it?  Every error a shell
raises on purpose derives from exactly one of the classes below, so a log line, a status
field or an exit code can say "peer", "coordinator", "local state" or "usage" without a
table of exception names::

    P2PUpdateError                (p2pupdate.core.errors)
      PeerFault                   a remote node (or a link to it) misbehaved or went away
      CoordinatorFault            a coordinator replica was unreachable, refused, or lied
      LocalStateFault             this machine's files, disk or configuration are at fault
      UsageFault                  the person at the keyboard asked for something invalid

A gate's "no" is none of these: it is a ``GateResult`` with a reason.  Core errors keep
their own classes (a ``WireError`` from a peer's frame is the peer's fault by where it was
raised; a shell that wants to say so wraps it in a :class:`PeerFault` subclass).
"""

from __future__ import annotations

from .core.errors import P2PUpdateError

__all__ = ["CoordinatorFault", "LocalStateFault", "P2PUpdateError", "PeerFault", "UsageFault"]


class PeerFault(P2PUpdateError):
    """A remote peer, or the link to it, is at fault (bad frame, lie, timeout, hang-up)."""

    fault = "peer"


class CoordinatorFault(P2PUpdateError):
    """A coordinator replica is at fault (unreachable, protocol violation, bad answer)."""

    fault = "coordinator"


class LocalStateFault(P2PUpdateError):
    """This machine is at fault: a state file, the disk, a slot or the configuration."""

    fault = "local"


class UsageFault(P2PUpdateError):
    """The caller asked for something invalid (a bad flag, a missing file, a bad value)."""

    fault = "usage"
