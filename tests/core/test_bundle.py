"""The network bundle (``core.bundle``): one root-signed file a vendor bakes into a box."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from p2pupdate.core import admission, crypto, wire
from p2pupdate.core import bundle as bd
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import (
    ExpiredError,
    OversizeError,
    SchemaError,
    SignatureError,
    WrongTypeError,
)
from p2pupdate.core.trust import TrustStore

NOW = 1_800_000_000


def _key(tag: str) -> crypto.SigningKey:
    return crypto.SigningKey.from_seed(hashlib.sha256(tag.encode()).digest())


ROOT_A, ROOT_B, OPERATOR, COORD = _key("root-a"), _key("root-b"), _key("op"), _key("coord")


def _root(network: str = "t", *, threshold: int = 2) -> docs.Root:
    keys = {k.keyid: k.public_key for k in (ROOT_A, ROOT_B, OPERATOR, COORD)}
    roles = {
        "root": docs.Role(keys=(ROOT_A.keyid, ROOT_B.keyid), threshold=threshold),
        "release": docs.Role(keys=(OPERATOR.keyid,), threshold=1),
        "coordinator": docs.Role(keys=(COORD.keyid,), threshold=1),
        "operator": docs.Role(keys=(OPERATOR.keyid,), threshold=1),
    }
    return docs.Root(
        version=1, issued=NOW - 10, expires=NOW + 86400, network=network, keys=keys, roles=roles
    )


ROOT = _root()
ROOT_BYTES = ROOT.sign([ROOT_A, ROOT_B]).to_wire()
CONFIG = admission.default_config("t", issued=NOW - 5)
CONFIG_BYTES = CONFIG.sign([ROOT_A, ROOT_B]).to_wire()


def _pinned(root: docs.Root) -> TrustStore:
    return TrustStore.from_root(root.sign([ROOT_A, ROOT_B]).to_wire(), NOW)


PINNED = _pinned(ROOT)


def _bundle(**over: Any) -> bd.Bundle:
    values: dict[str, Any] = {
        "issued": NOW - 1,
        "expires": NOW + 3600,
        "network": "t",
        "root": ROOT_BYTES,
        "network_config": CONFIG_BYTES,
        "replicas": ("http://r1.example:8470", "https://[2001:db8::1]:8470/"),
        "stun": ("stun:stun.example:3478",),
        "turn": ("turn:turn.example:3478?transport=udp",),
    }
    values.update(over)
    return bd.Bundle(**values)


def _signed(doc: bd.Bundle, keys: list[crypto.SigningKey] | None = None) -> bytes:
    return doc.sign([ROOT_A, ROOT_B] if keys is None else keys).to_wire()


def test_a_bundle_signed_by_its_roots_root_role_opens_with_what_it_carries() -> None:
    opened = bd.open_bundle(_signed(_bundle()), now=NOW)
    assert opened.bundle.replicas == ("http://r1.example:8470", "https://[2001:db8::1]:8470/")
    assert opened.root.doc == ROOT
    assert opened.network_config is not None and opened.network_config.doc == CONFIG
    assert opened.signers == {ROOT_A.keyid, ROOT_B.keyid}
    # the defaults a vendor gets without asking: gossip on, random port, zeroconf, pool
    b = opened.bundle
    assert (b.gossip, b.gossip_port, b.zeroconf, b.pool) == (True, 0, True, "default")
    # an old network has no network document: the bundle still opens
    assert bd.open_bundle(_signed(_bundle(network_config=b"")), now=NOW).network_config is None


def test_forged_or_under_signed_bundles_are_refused() -> None:
    good = _signed(_bundle())
    env = crypto.Envelope.from_wire(good, bd.BUNDLE_LIMITS)
    # one of two root keys: under the threshold
    with pytest.raises(SignatureError):
        bd.open_bundle(_signed(_bundle(), [ROOT_A]), now=NOW)
    # signed by keys of other roles of the same root (operator, coordinator)
    with pytest.raises(SignatureError):
        bd.open_bundle(_signed(_bundle(), [OPERATOR, COORD]), now=NOW)
    # a replica URL swapped after signing: the signatures are over the original payload
    forged = _bundle(replicas=("http://evil.example:8470",)).to_payload()
    with pytest.raises(SignatureError):
        bd.open_bundle(crypto.Envelope(type="bundle", payload=forged, signatures=env.signatures)
                       .to_wire(), now=NOW)  # fmt: skip
    # an attacker's own root, self-signed, carried with the attacker's signatures
    evil = [_key("evil-1"), _key("evil-2")]
    evil_root = docs.Root(
        version=1, issued=NOW - 10, expires=NOW + 86400, network="t",
        keys={k.keyid: k.public_key for k in evil},
        roles={r: docs.Role(keys=(evil[0].keyid,), threshold=1) for r in docs.ROLES},
    )  # fmt: skip
    evil_bytes = evil_root.sign(evil).to_wire()
    opened = bd.open_bundle(_signed(_bundle(root=evil_bytes, network_config=b""), evil), now=NOW)
    # ... opens (a bundle is trust on first use), but under the attacker's root; a node
    # that has started before refuses a root of its network it never accepted
    assert opened.root.doc.keys != ROOT.keys
    with pytest.raises(bd.WrongNetworkError, match="never accepted"):
        bd.open_bundle(_signed(_bundle(root=evil_bytes, network_config=b""), evil), now=NOW,
                       pinned=PINNED)  # fmt: skip
    # ... and takes a newer root of its network: rotation reaches it the usual way
    v2 = docs.Root(**{**ROOT.__dict__, "version": 2}).sign([ROOT_A, ROOT_B]).to_wire()
    newer = bd.open_bundle(_signed(_bundle(root=v2)), now=NOW, pinned=PINNED)
    assert newer.root.doc.version == 2
    # a root that does not verify by its own root keys
    half_root = ROOT.sign([ROOT_A]).to_wire()
    with pytest.raises(SignatureError):
        bd.open_bundle(_signed(_bundle(root=half_root)), now=NOW)
    # not a root at all in the root slot
    with pytest.raises(WrongTypeError):
        bd.open_bundle(_signed(_bundle(root=CONFIG_BYTES)), now=NOW)
    # a network document of another root
    other_config = CONFIG.sign(evil).to_wire()
    with pytest.raises(SignatureError):
        bd.open_bundle(_signed(_bundle(network_config=other_config)), now=NOW)


def test_wrong_type_wrong_role_and_wrong_network() -> None:
    # a bundle's payload under another type's envelope, and another document as a bundle
    payload = _bundle().to_payload()
    as_network = crypto.Envelope.sign("network", payload, [ROOT_A, ROOT_B]).to_wire()
    with pytest.raises(WrongTypeError):
        bd.open_bundle(as_network, now=NOW)
    with pytest.raises(WrongTypeError):
        bd.open_bundle(CONFIG_BYTES, now=NOW)
    # a bundle opened as another kind is refused the same way
    with pytest.raises(WrongTypeError):
        docs.open_signed(docs.NetworkConfig, _signed(_bundle()), ROOT)
    # names disagreeing: bundle vs its root, network document vs root, bundle vs pinned
    with pytest.raises(bd.WrongNetworkError):
        bd.open_bundle(_signed(_bundle(network="u")), now=NOW)
    u_config = admission.default_config("u").sign([ROOT_A, ROOT_B]).to_wire()
    with pytest.raises(bd.WrongNetworkError):
        bd.open_bundle(_signed(_bundle(network_config=u_config)), now=NOW)
    with pytest.raises(bd.WrongNetworkError):
        bd.open_bundle(_signed(_bundle()), now=NOW, pinned=_pinned(_root("u")))


def test_expired_bundle_is_refused_at_first_start_only() -> None:
    old = _signed(_bundle(issued=NOW - 7200, expires=NOW - 3600))
    with pytest.raises(ExpiredError):
        bd.open_bundle(old, now=NOW)
    # within the clock skew allowance it still opens
    bd.open_bundle(_signed(_bundle(issued=NOW - 7200, expires=NOW - docs.SKEW)), now=NOW)
    # a fresh bundle carrying an expired root: no node could start from it
    stale = {**ROOT.__dict__, "issued": NOW - 7200, "expires": NOW - 3600}
    stale_root = docs.Root(**stale).sign([ROOT_A, ROOT_B])
    with pytest.raises(ExpiredError, match="root"):
        bd.open_bundle(_signed(_bundle(root=stale_root.to_wire())), now=NOW)
    # a node with a pinned root of the same network keeps using its bundle's URLs
    assert bd.open_bundle(old, now=NOW, pinned=PINNED).bundle.network == "t"


def test_oversize_and_malformed_bundles_are_refused_before_anything_is_verified() -> None:
    huge = b"\x00" * (bd.BUNDLE_LIMITS.max_bytes + 1)
    with pytest.raises(OversizeError):
        bd.open_bundle(huge, now=NOW)
    # a root slot larger than any root
    big_root = _bundle().to_obj() | {"root": b"x" * (bd.MAX_ROOT_BYTES + 1)}
    env = crypto.Envelope.sign("bundle", wire.encode(big_root), [ROOT_A, ROOT_B]).to_wire()
    with pytest.raises(SchemaError):
        bd.open_bundle(env, now=NOW)
    # unknown and missing keys
    for obj in (_bundle().to_obj() | {"extra": 1}, {"issued": NOW}):
        env = crypto.Envelope.sign("bundle", wire.encode(obj), [ROOT_A, ROOT_B]).to_wire()
        with pytest.raises(SchemaError):
            bd.open_bundle(env, now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("replicas", ()),
        ("replicas", tuple(f"http://r{i}.example:1" for i in range(bd.MAX_REPLICAS + 1))),
        ("replicas", ("ftp://r.example",)),
        ("replicas", ("ws://r.example:8470",)),
        ("replicas", ("http://r.example:8470/path",)),
        ("replicas", ("http://user@r.example:8470",)),
        ("replicas", ("http://r.example:70000",)),
        ("replicas", ("http://r.example:0",)),
        ("replicas", ("http://r.example:8470?x=1",)),
        ("replicas", ("http://bad_host:8470",)),
        ("replicas", ("http://r.example:1", "http://r.example:1")),
        ("replicas", ("stun:r.example",)),
        ("stun", ("turn:t.example",)),
        ("stun", ("stun:s.example?transport=udp",)),
        ("stun", ("http://s.example",)),
        ("turn", ("stun:s.example",)),
        ("turn", tuple(f"turn:t{i}.example" for i in range(bd.MAX_ICE_URLS + 1))),
        ("pool", ""),
        ("pool", "a\nb"),
        ("pool", "p" * 65),
        ("gossip_port", 65536),
    ],
)
def test_bad_urls_and_defaults_are_schema_errors(field: str, value: Any) -> None:
    obj = _bundle().to_obj()
    obj[field] = list(value) if isinstance(value, tuple) else value
    env = crypto.Envelope.sign("bundle", wire.encode(obj), [ROOT_A, ROOT_B]).to_wire()
    with pytest.raises(SchemaError):
        bd.open_bundle(env, now=NOW)
    with pytest.raises(SchemaError):  # and the signer's own check refuses it first
        bd.Bundle.from_obj(obj)


def test_stun_and_turn_together_are_capped() -> None:
    stun = tuple(f"stun:s{i}.example" for i in range(5))
    turn = tuple(f"turn:t{i}.example" for i in range(4))
    with pytest.raises(SchemaError):
        _bundle(stun=stun, turn=turn).checked()
    assert _bundle(stun=stun, turn=turn[:3]).checked().describe().startswith("bundle of")


def test_check_replica_url() -> None:
    for ok in ("http://10.0.0.1:8470", "https://r.example", "http://[::1]:1/"):
        assert bd.check_replica_url(ok) == ok
    for bad in ("", "http://", "http://r.example:8470#f", "HTTP://r.example", "x" * 400):
        with pytest.raises(ValueError):
            bd.check_replica_url(bad)
