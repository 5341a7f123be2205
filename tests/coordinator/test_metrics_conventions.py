"""``/metrics`` as Prometheus and Grafana expect it (README "Metrics").

One real replica (in process, real sockets) and a few light nodes of the real protocol
make the metric families move: asks granted and refused by gate and reason, a hello
refused by admission, a rollout paused by the breaker, origin bytes, a signal relayed
(the families nothing moved here, such as connections cut, still have their HELP and
TYPE).  Its exposition is then checked two ways:

* ``promtool check metrics`` (Debian's ``prometheus`` package; ``scripts/test`` installs
  it as root): the linter Prometheus itself ships, so names, units, HELP/TYPE and the
  ``_total`` of counters are what the ecosystem expects, not what we think it expects;
* the Grafana dashboard shipped in the package (``coordinator/dashboards``): every
  PromQL expression names only series this exposition has, so a renamed metric breaks
  this test rather than an operator's panel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto
from p2pupdate.daemon.replica import ReplicaLink

from .service_helpers import ZERO, LightNode, Network, artifact_of, http, in_process

DATA = bytes(range(256)) * 12  # 3 KiB: three 1 KiB chunks
ART = artifact_of(DATA)
DASHBOARD = "p2pupdate.json"


def _get_chunk(url: str, node: str) -> int:
    request = urllib.request.Request(url, headers={proto.ORIGIN_NODE_HEADER: node})
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()
        return int(resp.status)


def _key() -> crypto.SigningKey:
    return crypto.SigningKey.from_seed(os.urandom(32))


async def _fleet_exposition(d: Path) -> str:
    """``/metrics`` of a replica that has seen every kind of event it counts."""
    net = Network(d, admission="enrolled")
    async with in_process(net, min_serving=0, max_concurrent=2) as (_replica, url):
        for doc in (net.release(DATA, "v2", 2), net.allowlist(1, [ART]), net.scope(ART)):
            code, answer = await trio.to_thread.run_sync(http, "POST", f"{url}/v1/publish", doc)
            assert code == 200, answer
        code, _ = await trio.to_thread.run_sync(http, "PUT", f"{url}/v1/artifacts/{ART}", DATA)
        assert code == 200
        chunk = f"{url}/v1/artifacts/{ART}/chunks/0"
        assert await trio.to_thread.run_sync(_get_chunk, chunk, "a" * 64) == 200
        # a hello without a member document, on an enrolled network: refused
        stranger = ReplicaLink(url, _key())
        async with trio.open_nursery() as nursery:
            await nursery.start(stranger.run)
            with trio.fail_after(5):
                while stranger.refused is None:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
        keys = [_key() for _ in range(4)]
        nodes = [LightNode(net, [url], key=k, member=net.member(k.keyid)) for k in keys]
        async with trio.open_nursery() as nursery:
            for n in nodes:
                await n.start(nursery)
                await n.status(version="v1")
            granted = [await n.ask(ART) for n in nodes[:2]]
            assert all(g.token for g in granted), granted
            refused = await nodes[2].ask(ART)  # lease-budget: two away already
            assert refused.token is None
            for n, g in zip(nodes[:2], granted, strict=True):
                await n.failed(ART, "probation: self-test failed", g.token)
            assert (await nodes[3].ask(ART)).token is None  # paused by the breaker
            link = nodes[0].client.links[0]
            await link.send(proto.SignalRequest(to=nodes[1].node, data=b"sdp"))
            await nodes[2].ask(ZERO, allowlist_version=1)  # not-allowlisted (gate 1)
            nursery.cancel_scope.cancel()
        code, body = await trio.to_thread.run_sync(http, "GET", f"{url}/metrics")
        assert code == 200
        return bytes(body).decode()


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    return trio.run(_fleet_exposition, tmp_path_factory.mktemp("metrics") / "net")


# -- what the exposition holds -------------------------------------------------------------


def series_names(text: str) -> set[str]:
    """Every series name a query may use: the samples' names, and from the metadata (so a
    family that has no sample yet counts too) a counter's ``_total`` and a histogram's
    ``_bucket`` / ``_sum`` / ``_count``."""
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def test_every_family_has_the_prefix_help_and_no_created_series(exposition: str) -> None:
    families = list(text_string_to_metric_families(exposition))
    assert len(families) >= 25
    for family in families:
        assert family.name.startswith("p2pupdate_coordinator_"), family.name
        assert family.documentation, f"{family.name}: no HELP"
        if family.type == "counter":
            assert all(s.name == f"{family.name}_total" for s in family.samples), family
    # prometheus-client's per-child ``_created`` gauges double the series and say nothing
    assert "_created" not in exposition
    # what the scenario made move is there, with the conventions' names
    for line in (
        'p2pupdate_coordinator_asks_total{gate="capacity",reason="lease-budget",'
        'result="refused"} 1.0',
        'p2pupdate_coordinator_asks_total{gate="breaker",reason="paused",result="refused"} 1.0',
        'p2pupdate_coordinator_hellos_refused_total{reason="admission/not-enrolled"} 1.0',
        f'p2pupdate_coordinator_origin_bytes_total{{artifact="{ART}"}} 1024.0',
        f'p2pupdate_coordinator_breaker_paused{{artifact="{ART}"}} 1.0',
        f'p2pupdate_coordinator_breaker_failed_nodes{{artifact="{ART}"}} 2.0',
        f'p2pupdate_coordinator_artifact_info{{artifact="{ART}",name="v2"}} 1.0',
        'p2pupdate_coordinator_lease_budget{pool="default"} 2.0',
        'p2pupdate_coordinator_nodes{version="v1"} 4.0',
        'p2pupdate_coordinator_nodes_in_state{state="serving"} 4.0',
        'p2pupdate_coordinator_signals_total{result="relayed"} 1.0',
        'p2pupdate_coordinator_documents_published_total{result="ok",type="release"} 1.0',
    ):
        assert line in exposition.splitlines(), line


# -- promtool ---------------------------------------------------------------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install prometheus; "
    "scripts/test installs it when run as root)",
)


def _promtool(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )


@needs_promtool
def test_promtool_check_metrics_passes_on_a_real_replica(exposition: str) -> None:
    # promtool really lints what it reads on stdin: a counter without _total and a
    # non-base unit are complaints (exit 3), so a silent pass below means something
    bad = "".join(
        (
            "# HELP x_bytes x\n# TYPE x_bytes counter\nx_bytes 1\n",
            "# HELP y_milliseconds y\n# TYPE y_milliseconds gauge\ny_milliseconds 1\n",
        )
    )
    got = _promtool("check", "metrics", stdin=bad)
    said = got.stdout + got.stderr
    assert got.returncode != 0 and '"_total" suffix' in said and "base unit" in said, said
    got = _promtool("check", "metrics", stdin=exposition)
    assert got.returncode == 0 and not (got.stdout + got.stderr).strip(), got


# -- the Grafana dashboard --------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    """The dashboard as the installed package holds it."""
    text = resources.files("coordinator").joinpath("dashboards", DASHBOARD).read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def expressions(dash: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' targets (rows' nested panels too) and the
    template variables' queries (Grafana's ``label_values(SELECTOR, LABEL)``: the
    selector)."""
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", ()))
            walk(panel.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            query = query["query"] if isinstance(query, dict) else query
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            found.append(m.group(1) if m else query)
    return found


_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads: what is left once strings, label
    matchers, ranges, grouping clauses and Grafana's ``$variables`` are taken out, minus
    functions and aggregations (a name followed by ``(``) and keywords."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{[^}]*\}|\$\w+", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[m.end() :].lstrip().startswith("(") or m.group() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def test_metric_names_reads_promql() -> None:
    assert metric_names(
        'sum by (gate, reason) (rate(p2pupdate_coordinator_asks_total{result="refused",'
        'instance=~"$instance"}[$__rate_interval]))'
    ) == {"p2pupdate_coordinator_asks_total"}
    assert metric_names(
        "histogram_quantile(0.99, sum(rate(a_bucket[5m])) by (le)) > bool 1e3 "
        "* on (x) group_left (name) b_info offset 5m"
    ) == {"a_bucket", "b_info"}
    assert expressions(
        {"panels": [], "templating": {"list": [{"type": "query", "query": "label_values(c, i)"}]}}
    ) == ["c"]


def test_every_dashboard_query_names_a_metric_the_replica_exposes(exposition: str) -> None:
    dash = dashboard()
    exposed = series_names(exposition)
    exprs = expressions(dash)
    assert len(exprs) >= 20
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"names no metric: {expr}"
        assert names <= exposed, f"{sorted(names - exposed)} not in /metrics: {expr}"
        used |= names
    # the panels the operators asked for are there (issue 16, item 6)
    titles = {p["title"] for p in dash["panels"]}
    for title in (
        "Refusals by gate and reason",
        "Leases in flight vs budget",
        "Nodes per version",
        "Breaker state",
        "Origin bytes per artifact",
        "Hellos refused by reason",
        "Connection failures",
    ):
        assert title in titles, title
    assert {
        "p2pupdate_coordinator_asks_total",
        "p2pupdate_coordinator_lease_budget",
        "p2pupdate_coordinator_breaker_paused",
        "p2pupdate_coordinator_origin_bytes_total",
        "p2pupdate_coordinator_hellos_refused_total",
        "p2pupdate_coordinator_connections_cut_total",
    } <= used
    # every panel reads the dashboard's data source variable (importable anywhere)
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """PromQL syntax, by Prometheus' own parser: each expression as a recording rule
    (Grafana's variables replaced by what it would put there)."""
    exprs = expressions(dashboard())
    rules = [
        {
            "record": f"p2pupdate:dashboard_{i}",
            "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for i, e in enumerate(exprs)
    ]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    got = _promtool("check", "rules", str(path))
    assert got.returncode == 0, got.stdout + got.stderr


def test_the_dashboard_ships_in_the_package() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["coordinator"]
    assert any(Path("dashboards", DASHBOARD).match(g) for g in globs), globs
