"""The rollout page's parts without a browser: the history ring ``/status`` carries
(``coordinator.ui.history``, pure), the page's files as the package ships them, the ``/ui``
routes with their headers, and who may load the page (``ReadAccess.check_page``).

In-process replicas on real sockets, as in test_read_access.py; the page itself in a real
browser is test_ui_browser.py."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

import pytest

from coordinator import ui
from coordinator.policy import Aggregate, PolicyConfig
from coordinator.readaccess import ReadAccess, is_page_path
from coordinator.service import Replica, ServiceConfig
from coordinator.status import spare_capacity
from coordinator.ui.history import (
    KEEP,
    MAX_ARTIFACTS,
    MAX_POOLS,
    MAX_REASONS,
    OTHER,
    History,
    record,
    refusal_deltas,
    refusal_totals,
    sample,
)

from .service_helpers import REPO, Network
from .test_read_access import TOKEN, aget, own_address, serving

UI_DIR = REPO / "coordinator" / "ui"
PAGE = ("index.html", "ui.js", "ui.css")


# -- the history (pure) -----------------------------------------------------------------------


def test_refusal_totals_sum_artifacts_nobody_named_under_other() -> None:
    got = refusal_totals(
        {
            ("a", "capacity", "lease-budget"): 3,
            ("x", "scope", "not-named"): 2,
            ("y", "scope", "not-named"): 1,
        },
        known=["a"],
    )
    assert got == {"a": {"capacity/lease-budget": 3}, OTHER: {"scope/not-named": 3}}


def test_refusal_deltas_are_what_moved_since_the_baseline() -> None:
    first = {"a": {"capacity/lease-budget": 40}}
    assert refusal_deltas(None, first) == {}  # the baseline: old refusals are no spike
    later = {"a": {"capacity/lease-budget": 43, "scope/not-named": 1}, "b": {"breaker/paused": 0}}
    assert refusal_deltas(first, later) == {"a": {"capacity/lease-budget": 3, "scope/not-named": 1}}
    assert refusal_deltas(later, later) == {}


def test_a_sample_is_bounded_however_many_reasons_artifacts_and_pools() -> None:
    now = {f"art{i}": {f"g/r{j}": 1 + j for j in range(50)} for i in range(30)}
    deltas = refusal_deltas({}, now)
    assert len(deltas) == MAX_ARTIFACTS and OTHER in deltas
    assert all(len(per) <= MAX_REASONS for per in deltas.values())
    # nothing is lost, only summed
    assert sum(sum(p.values()) for p in deltas.values()) == sum(
        sum(p.values()) for p in now.values()
    )
    aggs = {
        f"pool{i}": Aggregate(capacity=float(i), load=0.0, serving=1, as_of=0.0) for i in range(40)
    }
    made = sample(
        wall=1e9,
        now=1.0,
        before=None,
        totals={},
        aggregates=aggs,
        utilization=0.8,
        max_age=180.0,
        scope=None,
    )
    assert len(made["pools"]) == MAX_POOLS and "pool39" in made["pools"]  # the largest kept
    assert len(json.dumps(made)) < 4096


def test_a_pool_sample_has_the_spare_capacity_against_the_floor() -> None:
    agg = Aggregate(capacity=1000.0, load=900.0, serving=12, as_of=5.0)
    made = sample(
        wall=2e9,
        now=200.0,
        before=None,
        totals={},
        aggregates={"p": agg},
        utilization=0.8,
        max_age=180.0,
        scope=(3, "scope serial 3: everyone -> ab..."),
    )
    assert made["pools"]["p"] == {
        "capacity": 1000.0,
        "load": 900.0,
        "serving": 12,
        "spare": -125.0,  # 1000 - 900 / 0.8: under the floor
        "stale": True,
    }
    assert spare_capacity(agg, 0.8) == -125.0
    assert made["scope"] == {"serial": 3, "describe": "scope serial 3: everyone -> ab..."}


def test_the_ring_samples_once_per_interval_and_keeps_the_last() -> None:
    ring = History(interval=10.0, keep=3)
    assert ring.due(0.0)
    for i in range(5):
        ring.add(10.0 * i, {"a": {"g/r": i}}, {"t": i})
        assert not ring.due(10.0 * i + 9.9) and ring.due(10.0 * i + 10.0)
    assert [s["t"] for s in ring.view()["samples"]] == [2, 3, 4]
    assert ring.totals == {"a": {"g/r": 4}}
    assert History().view()["keep"] == KEEP
    with pytest.raises(ValueError):
        History(interval=0)


def test_record_samples_the_replicas_parts_on_its_own_clock(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    t = [100.0]
    replica = Replica(
        ServiceConfig(network_dir=net.dir, first_start=True, policy=PolicyConfig()),
        clock=lambda: t[0],
        wall=lambda: 1.7e9 + t[0],
    )
    try:
        ring = History(interval=10.0)
        kw = {"asks": replica.asks, "registry": replica.registry, "documents": replica.documents}
        assert record(ring, **kw)
        assert not record(ring, **kw)  # the same instant: not due
        replica.asks.refusals[("f" * 64, "capacity", "min-serving")] += 2  # what an ask counts
        t[0] += 10.0
        assert record(ring, **kw)
        first, second = ring.view()["samples"]
        assert first["t"] == 1.7e9 + 100 and first["refusals"] == {}
        assert second["refusals"] == {OTHER: {"capacity/min-serving": 2}}  # nobody named f*64
    finally:
        replica.store.close()


# -- the page's files --------------------------------------------------------------------------


def test_the_loaded_package_finds_the_page_and_a_wheel_carries_it() -> None:
    files = resources.files("coordinator.ui")
    for name in PAGE:
        assert files.joinpath(name).read_bytes(), name
    for path, (name, _ctype) in ui.PAGE_FILES.items():
        part = ui.page_file(path)
        assert part is not None and part.data == files.joinpath(name).read_bytes()
    assert ui.page_file("/ui/../server.py") is None and ui.page_file("/ui/history.py") is None
    # a non-editable install carries what package-data names: every page file matches it
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["coordinator"]
    shipped = [p for p in UI_DIR.iterdir() if p.is_file() and p.suffix != ".py"]
    assert {p.name for p in shipped} >= set(PAGE)
    for p in shipped:
        assert any(fnmatch(f"ui/{p.name}", g) for g in globs), p.name


def test_the_page_fetches_nothing_outside_the_replica_and_inserts_no_markup() -> None:
    for name in PAGE:
        text = (UI_DIR / name).read_text()
        urls = re.findall(r"(?:https?:)?//[\w.-]+", text)
        assert set(urls) <= {"http://www.w3.org"}, (name, urls)  # the SVG namespace name only
        assert "@import" not in text and "url(" not in text, name
    js = (UI_DIR / "ui.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, sink
    html = (UI_DIR / "index.html").read_text()
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["data:,", "/ui/ui.css", "/ui/ui.js"]


# -- the routes and who may load them --------------------------------------------------------------


def test_the_page_rule_without_a_token_is_loopback_with_one_anyone() -> None:
    for path in ("/ui", "/ui/", "/ui/ui.js"):
        assert is_page_path(path)
    for path in ("/uix", "/status", "/u"):
        assert not is_page_path(path)
    loopback = ReadAccess()
    assert loopback.check_page("127.0.0.1:1") is None
    refused = loopback.check_page("192.0.2.7:1")
    assert refused is not None and refused.status == 403 and refused.error == "loopback-only"
    tokened = ReadAccess(token=TOKEN)
    assert tokened.check_page("192.0.2.7:1") is None  # the page asks for the token itself
    assert tokened.check("192.0.2.7:1", None) is not None  # the data still wants it


async def test_ui_serves_the_page_with_its_headers_and_status_carries_the_history(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net")
    async with serving(net) as (_replica, url):
        code, headers, body = await aget(f"{url}/ui")
        assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
        assert b'<script src="/ui/ui.js"' in body
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"
        code, headers, _b = await aget(f"{url}/ui/ui.js")
        assert code == 200 and headers["content-type"].startswith("text/javascript")
        assert (await aget(f"{url}/ui/ui.css"))[0] == 200
        assert (await aget(f"{url}/ui/history.py"))[0] == 404
        code, _h, body = await aget(f"{url}/status")
        assert code == 200 and "history" not in json.loads(body)  # what `status` reads
        code, _h, body = await aget(f"{url}/status?history=1")
        st = json.loads(body)
        assert code == 200 and st["history"]["interval"] == 10.0 and st["history"]["keep"] == KEEP
        assert 1 <= len(st["history"]["samples"]) <= KEEP  # the flusher's first sample
        assert st["replica"]["min_serving"] == 1 and st["replica"]["utilization"] == 0.8


async def test_with_a_token_the_page_loads_and_its_data_still_wants_the_token(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net")
    hosts = ["127.0.0.1"] + [a for a in [own_address()] if a is not None]
    for host in hosts:
        async with serving(net, host, ReadAccess(token=TOKEN)) as (_replica, url):
            code, _h, body = await aget(f"{url}/ui")
            assert code == 200 and b"read token" in body
            assert b"default" not in body  # the page holds no data
            assert (await aget(f"{url}/status"))[0] == 401
            assert (await aget(f"{url}/status", f"Bearer {TOKEN.decode()}"))[0] == 200


async def test_without_a_token_a_stranger_gets_no_page(tmp_path: Path) -> None:
    addr = own_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    net = Network(tmp_path / "net")
    async with serving(net, addr) as (_replica, url):
        for path in ("/ui", "/ui/ui.js"):
            code, _h, body = await aget(f"{url}{path}")
            assert code == 403 and json.loads(body)["error"] == "loopback-only", path
