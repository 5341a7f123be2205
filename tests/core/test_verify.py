"""``core.verify.verify_set``: a set of documents judged as a node would, in memory.

``tests/cli`` drives the same function through ``p2pupdate verify`` (text and JSON); here
it is called directly on documents from the repository simulator, to pin down what the
command line only shows in passing: trust order whatever the given order, one result per
file in the given order, a refused file leaving the trust state alone, and a departure
token counted only for the node and the move it was granted for.
"""

from __future__ import annotations

import pytest

from p2pupdate.core.verify import DocResult, verify_set

from .harness import NOW, Network, node_id, node_key, retype


@pytest.fixture
def network() -> Network:
    return Network()


def _set(net: Network) -> tuple[str, list[tuple[str, bytes]]]:
    """A genuine set: release, allowlist v1, everyone-scope, nudge, a heartbeat."""
    release, release_bytes = net.release("v2", counter=2)
    return release.artifact, [
        ("release", release_bytes),
        ("allow", net.allowlist(1, [release.artifact])),
        ("scope", net.scope(release.artifact)),
        ("nudge", net.nudge(release.artifact)),
        ("heartbeat", net.heartbeat(3)),
    ]


def test_a_genuine_set_verifies_in_any_order(network: Network) -> None:
    artifact, files = _set(network)
    for given in (files, files[::-1]):
        report = verify_set("root", network.roots[1], given, now=NOW)
        assert report.ok
        assert [d.name for d in report.documents] == [name for name, _ in given]
        assert report.allowlist is not None and report.allowlist.version == 1
        assert report.scope is not None and report.scope.artifact == artifact
        assert report.target is None and report.node is None


def test_as_node_says_where_the_node_may_move(network: Network) -> None:
    artifact, files = _set(network)
    report = verify_set("root", network.roots[1], files, now=NOW, as_node=node_id(1))
    assert report.node == node_id(1)
    assert report.target is not None and report.target.artifact == artifact


def test_a_refused_document_leaves_the_trust_state_alone(network: Network) -> None:
    artifact, files = _set(network)
    forged = network.allowlist(2, [], signers=[node_key(9)])
    report = verify_set("root", network.roots[1], [*files, ("forged", forged)], now=NOW)
    assert not report.ok
    (bad,) = [d for d in report.documents if not d.ok]
    assert (bad.name, bad.type, bad.rule) == ("forged", "allowlist", "signature-threshold")
    assert report.allowlist is not None and report.allowlist.version == 1
    assert report.allowlist.artifacts == (artifact,)


def test_files_that_are_not_documents_are_refused_with_their_rule(network: Network) -> None:
    _, files = _set(network)
    unknown = retype(network.nudge("00" * 32, serial=2), "mystery")
    report = verify_set(
        "root", network.roots[1], [("junk", b"\xc1"), *files, ("mystery", unknown)], now=NOW
    )
    by_name = {d.name: d for d in report.documents}
    assert by_name["junk"].type == "?" and not by_name["junk"].ok
    assert by_name["junk"].rule == "malformed"
    assert (by_name["mystery"].type, by_name["mystery"].rule) == ("mystery", "unknown-type")
    assert [d.ok for d in report.documents[1:-1]] == [True] * len(files)


def test_a_refused_root_refuses_everything(network: Network) -> None:
    _, files = _set(network)
    report = verify_set("root", b"\xc1", files, now=NOW)
    assert not report.ok and not report.root.ok
    assert report.root.rule == "malformed"
    assert report.documents == () and report.store is None


def test_a_departure_token_counts_only_for_its_node_and_move(network: Network) -> None:
    artifact, files = _set(network)
    mine = network.departure(node_id(1), from_artifact="00" * 32, to_artifact=artifact)
    theirs = network.departure(node_id(2), from_artifact="00" * 32, to_artifact=artifact)
    elsewhere = network.departure(node_id(1), from_artifact="00" * 32, to_artifact="ab" * 32)
    tokens = [("mine", mine), ("theirs", theirs), ("elsewhere", elsewhere)]

    without_node = verify_set("root", network.roots[1], [*files, *tokens], now=NOW)
    assert without_node.ok  # signatures alone: every token is genuine

    report = verify_set("root", network.roots[1], [*files, *tokens], now=NOW, as_node=node_id(1))
    by_name = {d.name: d for d in report.documents}
    assert by_name["mine"].ok
    for name in ("theirs", "elsewhere"):
        assert (by_name[name].type, by_name[name].rule) == ("departure", "binding")
        assert by_name[name].summary == "" and by_name[name].fields == {}


def test_doc_result_is_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="no rule"):
        DocResult(name="f", type="scope", ok=True, rule="expired")
    with pytest.raises(ValueError, match="needs the rule"):
        DocResult(name="f", type="scope", ok=False)
    ok = DocResult(name="f", type="scope", ok=True, summary="scope serial 1")
    assert ok.line() == "OK    f: scope serial 1"
    assert ok.to_json() == {
        "file": "f",
        "type": "scope",
        "ok": True,
        "summary": "scope serial 1",
        "document": {},
    }
