"""TURN credentials (``core/turn.py``): coturn's formula, and bad input refused.

The formula is checked against a value computed by hand from coturn's documentation here;
that coturn itself accepts what ``mint`` makes (and refuses a wrong or expired one) is shown
with a real coturn in ``tests/netlab/test_coturn.py`` and ``tests/netlab/test_ice.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from p2pupdate.core import turn


def test_the_username_is_expiry_colon_node_and_the_password_its_hmac_sha1() -> None:
    cred = turn.mint(secret=b"north", node="ab" * 32, expires=1_800_000_000)
    assert cred.username == "1800000000:" + "ab" * 32
    expected = hmac.new(b"north", cred.username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(cred.password) == expected
    assert cred.expires == 1_800_000_000
    # another secret, node or expiry: another password
    assert turn.mint(secret=b"south", node="ab" * 32, expires=1_800_000_000) != cred
    assert turn.mint(secret=b"north", node="cd" * 32, expires=1_800_000_000) != cred
    assert turn.mint(secret=b"north", node="ab" * 32, expires=1_800_000_001) != cred


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"secret": b""}, "secret"),
        ({"secret": b"x" * (turn.MAX_SECRET_LEN + 1)}, "secret"),
        ({"secret": "text"}, "secret"),
        ({"node": ""}, "node"),
        ({"node": "a:b"}, "node"),  # would change what coturn reads as the expiry
        ({"node": "a" * (turn.MAX_NODE_LEN + 1)}, "node"),
        ({"node": "é"}, "node"),
        ({"expires": 0}, "expires"),
        ({"expires": -5}, "expires"),
        ({"expires": True}, "expires"),
        ({"expires": 1.5}, "expires"),
        ({"expires": turn.MAX_EXPIRES}, "expires"),
    ],
)
def test_bad_input_is_refused_naming_the_argument(kwargs: dict[str, object], names: str) -> None:
    args: dict[str, object] = {"secret": b"s", "node": "n1", "expires": 10, **kwargs}
    with pytest.raises(ValueError, match=names):
        turn.mint(**args)  # type: ignore[arg-type]
