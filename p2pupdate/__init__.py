"""p2pupdate: peer-to-peer, capacity-aware self-update for fleets you do not own."""

from ._version import __version__

__all__ = ["__version__"]
