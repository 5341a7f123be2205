from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from .helpers import RawConnection


@pytest.fixture(autouse=True)
def close_raw_connections() -> Iterator[None]:
    """Close the hand-made connections a test left open.  Sync, so it serves every test;
    the trio run is over by then, so the socket is detached and closed the stdlib way."""
    yield
    for conn in list(RawConnection.opened):
        socket.socket(fileno=conn.stream.socket.detach()).close()
    RawConnection.opened.clear()
