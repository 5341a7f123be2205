"""The file-drop stand-in for gossip and the swarm: what counts as an offer, and fetching it.

With a trust root, only a release record signed by the release role counts, and the
artifact must match its length and every chunk hash; without one (tests), an unsigned
``{name, counter}`` record does.  Either way the newest counter above the installed one is
the candidate, and nothing unverified reaches the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pupdate.core.documents import Release
from p2pupdate.daemon.offers import OfferError, OfferSource
from p2pupdate.daemon.truststate import TrustFile
from p2pupdate.launcher.artifact import build_artifact, sha256_hex
from tests.core.harness import NOW, YEAR, Network, key_for
from tests.launcher.harness import REPO

CHUNK = 16 * 1024


@pytest.fixture(scope="module")
def artifacts() -> dict[str, bytes]:
    return {v: build_artifact(REPO, v) for v in ("v2", "v3")}


def _signed_release(net: Network, data: bytes, name: str, counter: int, **kw: object) -> bytes:
    doc = Release.for_bytes(
        data, name=name, counter=counter, chunk_size=CHUNK, issued=NOW - 60, expires=NOW + YEAR
    )
    return net.sign(doc, **kw)  # type: ignore[arg-type]


def _source(tmp: Path, net: Network | None) -> OfferSource:
    trust = None
    if net is not None:
        trust = TrustFile.open(tmp / "trust", initial_root=net.roots[1], now=NOW)
    offers = tmp / "offers"
    offers.mkdir(exist_ok=True)
    return OfferSource(offers, trust=trust, wall_clock=lambda: NOW)


def test_signed_offers(tmp_path: Path, artifacts: dict[str, bytes]) -> None:
    net = Network()
    src = _source(tmp_path, net)
    v2, v3 = artifacts["v2"], artifacts["v3"]
    s2, s3 = sha256_hex(v2), sha256_hex(v3)
    (src.directory / f"{s2}.tar.gz").write_bytes(v2)
    (src.directory / f"{s2}.release").write_bytes(_signed_release(net, v2, "v2", 2))
    (src.directory / f"{s3}.tar.gz").write_bytes(v3)
    # signed by a key that is not the release role's: ignored
    forged = _signed_release(net, v3, "v3", 3, signers=[key_for("mallory")])
    (src.directory / f"{s3}.release").write_bytes(forged)
    # an unsigned record does not count when there is a trust root
    (src.directory / f"{s3}.json").write_text('{"name": "v3", "counter": 3}')

    answer = src.evaluate(installed="0" * 64, installed_counter=1)
    assert answer.candidate is not None
    assert (answer.candidate.artifact, answer.candidate.counter) == (s2, 2)
    assert src.evaluate(installed=s2, installed_counter=2).candidate is None

    dest = tmp_path / "store.tar.gz"
    src.fetch(s2, dest)
    assert dest.read_bytes() == v2
    with pytest.raises(OfferError, match="no longer offered"):
        src.fetch(s3, dest)

    # an artifact swapped under a genuine record: its length, a chunk or the sha256 refuses
    # it (read a chunk at a time: the first check that fails says so)
    (src.directory / f"{s2}.tar.gz").write_bytes(v3)
    with pytest.raises(OfferError, match=r"sha256|does not match|the release says"):
        src.fetch(s2, tmp_path / "other.tar.gz")
    assert not (tmp_path / "other.tar.gz").exists()


def test_release_record_for_another_artifact(tmp_path: Path, artifacts: dict[str, bytes]) -> None:
    net = Network()
    src = _source(tmp_path, net)
    v2, v3 = artifacts["v2"], artifacts["v3"]
    s3 = sha256_hex(v3)
    (src.directory / f"{s3}.tar.gz").write_bytes(v3)
    (src.directory / f"{s3}.release").write_bytes(_signed_release(net, v2, "v2", 2))
    assert src.scan() == []


def test_unsigned_offers_for_tests(tmp_path: Path, artifacts: dict[str, bytes]) -> None:
    src = _source(tmp_path, None)
    v2, v3 = artifacts["v2"], artifacts["v3"]
    s2, s3 = sha256_hex(v2), sha256_hex(v3)
    (src.directory / f"{s2}.tar.gz").write_bytes(v2)
    (src.directory / f"{s2}.json").write_text('{"name": "v2", "counter": 2}')
    (src.directory / f"{s3}.json").write_text('{"name": "v3", "counter": 3}')  # no artifact
    bad = src.directory / f"{'ab' * 32}.json"
    bad.write_text('{"name": "x", "counter": true}')
    (src.directory / f"{'ab' * 32}.tar.gz").write_bytes(b"x")
    answer = src.evaluate(installed="0" * 64, installed_counter=0)
    assert answer.candidate is not None and answer.candidate.artifact == s2
    none = src.evaluate(installed="0" * 64, installed_counter=2)
    assert none.candidate is None and none.refusal is not None
    assert none.refusal.reason == "no-newer-offer"


def test_a_plain_tar_with_content_defined_chunks_is_copied_chunk_by_chunk(
    tmp_path: Path,
) -> None:
    """A CDC release of a plain tar (P12): copied and checked a chunk at a time; a chunk
    damaged in the drop is named, and nothing reaches the store."""
    from p2pupdate.core import cdc
    from p2pupdate.launcher.artifact import build_tar

    net = Network()
    src = _source(tmp_path, net)
    data = build_tar(REPO, "v2")
    ends = cdc.boundaries(data)
    sizes = tuple(b - a for a, b in zip((0, *ends[:-1]), ends, strict=True))
    assert len(sizes) > 3
    doc = Release.for_bytes(
        data, name="v2", counter=2, chunk_size=65536, issued=NOW - 60, expires=NOW + YEAR,
        sizes=sizes,
    )  # fmt: skip
    sha = sha256_hex(data)
    (src.directory / f"{sha}.tar.gz").write_bytes(data)
    (src.directory / f"{sha}.release").write_bytes(net.sign(doc))
    dest = tmp_path / "store.tar.gz"
    src.fetch(sha, dest)
    assert dest.read_bytes() == data
    bad = bytearray(data)
    bad[sizes[0] + sizes[1] + 5] ^= 1  # in chunk 2
    (src.directory / f"{sha}.tar.gz").write_bytes(bytes(bad))
    other = tmp_path / "other.tar.gz"
    with pytest.raises(OfferError, match="chunk 2 does not match"):
        src.fetch(sha, other)
    assert not other.exists() and not list(tmp_path.glob(".other*"))
