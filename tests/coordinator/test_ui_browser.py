"""The rollout page (``/ui``) in a real browser: a replica in this trio run, six light nodes
of the real protocol reporting to it (one granted, one whose move failed, two refused and
queued behind the lease budget, one in probation), Debian's chromium driven by Playwright.
The page must show the counts this fleet makes, a node's "why" from the search box, render
what nodes say as text (a failure reason with markup stays text), break no Content-Security
-Policy rule, and give a screenshot that is a real, non-blank PNG (kept in
``$P2PUPDATE_TEST_ARTIFACTS``, or ``tests/.artifacts/``, for CI).

``scene`` and ``drive`` are also what ``scripts/ui-screenshot`` runs to make the README's
picture, so the picture shows what this test checks."""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from coordinator.policy import PolicyConfig
from coordinator.readaccess import ReadAccess
from coordinator.server import Server
from coordinator.service import Replica, ServiceConfig
from coordinator.ui.history import History
from p2pupdate.core import crypto

from .service_helpers import LightNode, Network, ahttp, artifact_of

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BUILD_V2 = b"p2pupdate demo build v2\n" * 300
BUILD_V3 = b"p2pupdate demo build v3\n" * 200
V2 = artifact_of(BUILD_V2)
#: What a node says of its failed move: markup in it must reach the page as text.
FAILURE = "health check failed: <b>svc</b> exited 3"
#: The scene's replica is served with a read token (``serve --read-token-file``): the page
#: must ask for it, and send it.
TOKEN = "ui-test-read-token"


def key(i: int) -> crypto.SigningKey:
    return crypto.SigningKey.from_seed(bytes([i]) * 32)


@dataclass
class Scene:
    url: str
    replica: Replica
    nodes: dict[str, LightNode]
    #: What the page must show, computed from the fleet the scene made.
    expect: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def scene(tmp: Path, *, interval: float = 0.2, steps: int = 0) -> AsyncIterator[Scene]:
    """A replica (``max_concurrent=1``: one lease at a time) and six nodes.  ``steps``
    more rounds of status reports with a moving load, one history sample apart, give
    the charts a shape (the screenshot script)."""
    net = Network(tmp / "net")
    replica = Replica(
        ServiceConfig(
            network_dir=net.dir,
            first_start=True,
            policy=PolicyConfig(max_concurrent=1, min_serving=0),
        )
    )
    history = History(interval=interval)
    try:
        async with trio.open_nursery() as nursery:
            server = Server(replica, history=history, read_access=ReadAccess(token=TOKEN.encode()))
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            url = f"http://127.0.0.1:{port}"
            s = Scene(url=url, replica=replica, nodes={})
            ids = {name: key(i) for i, name in enumerate(("n1", "n2", "n3", "n4", "n5", "n6"), 1)}
            for doc in (
                net.release(BUILD_V2, "v2", 2),
                net.release(BUILD_V3, "v3", 3),
                net.allowlist(1, [V2]),
                # stage 1: a canary of two named nodes
                net.scope(V2, serial=1, kind="nodes", nodes=(ids["n5"].keyid, ids["n6"].keyid)),
            ):
                code, answer = await ahttp("POST", f"{url}/v1/publish", doc)
                assert code == 200, answer
            code, answer = await ahttp("PUT", f"{url}/v1/artifacts/{V2}", BUILD_V2)
            assert code == 200, answer
            code, got = await ahttp("GET", f"{url}/v1/artifacts/{V2}")  # the origin serves it
            assert code == 200 and got == BUILD_V2
            for name, k in ids.items():
                s.nodes[name] = LightNode(net, [url], key=k)
                await s.nodes[name].start(nursery)
            n = s.nodes
            await n["n5"].status(artifact=V2, version="v2", state="probation")
            await n["n6"].status(artifact=V2, version="v2", estimate=(1200.0, 300.0, 50))
            await wait_sample(history)
            # stage 2: everyone
            code, answer = await ahttp("POST", f"{url}/v1/publish", net.scope(V2, serial=2))
            assert code == 200, answer
            for name in ("n1", "n2", "n3", "n4"):
                await n[name].status(version="v1", estimate=(1200.0, 320.0, 50))
            first = await n["n1"].ask(V2, scope_serial=2)
            assert first.token is not None
            await n["n1"].failed(V2, FAILURE, first.token)  # ends its lease, feeds the breaker
            assert (await n["n2"].ask(V2, scope_serial=2)).token is not None
            for name in ("n3", "n4"):  # the budget is taken: refused, queued
                assert (await n[name].ask(V2, scope_serial=2)).token is None
            await wait_sample(history)
            for step in range(steps):
                load = 320.0 + 560.0 * (step % 12) / 11
                for name in ("n1", "n2", "n3", "n4"):
                    await n[name].status(version="v1", estimate=(1200.0, load, 50))
                if step % 4 == 1:
                    assert (await n["n3"].ask(V2, scope_serial=2)).token is None
                await wait_sample(history)
            status = replica.status()
            a = status["artifacts"][V2]
            s.expect = {
                "counted": 6,
                "versions": {"v1": 4, "v2": 2},
                "nodes_on": 2,
                "probation": 1,
                "leases": 1,
                "failed": 1,
                "lease_budget": 1,
                "refused": sum(a["refusals"].values()),
                "origin_bytes": len(BUILD_V2),
                "why": ids["n3"].keyid,
            }
            assert a["refusals"] == {"capacity/lease-budget": s.expect["refused"]}
            yield s
            nursery.cancel_scope.cancel()
    finally:
        replica.store.close()


async def wait_sample(history: History) -> None:
    """Until the flusher took one more sample (it samples every ``interval``)."""
    seen = len(history.samples)
    with trio.fail_after(10):
        while len(history.samples) <= seen:
            await trio.sleep(0.02)


def drive(url: str, why_prefix: str, out: Path, *, full_page: bool = True) -> dict[str, Any]:
    """Open ``url/ui`` in headless chromium, give it the read token it asks for, search
    for ``why_prefix``, save a screenshot to ``out``; returns what the page showed (texts
    by ``data-k``, console errors)."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"errors": []}
    with (
        tempfile.TemporaryDirectory(prefix="p2pupdate-chromium-") as profile,
        sync_playwright() as pw,
    ):
        ctx = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
            device_scale_factor=1,
        )
        try:
            page = ctx.new_page()
            page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
            page.on("pageerror", lambda e: seen["errors"].append(str(e)))
            page.goto(f"{url}/ui")
            page.wait_for_selector("#access:not([hidden])", timeout=10_000)
            seen["access-why"] = page.inner_text("#access-why")
            seen["before-token"] = page.content()
            page.fill("#token", TOKEN)
            page.click("#token-form button")
            page.wait_for_selector("[data-k=nodes-counted]", timeout=10_000)
            seen["access-hidden"] = page.locator("#access").is_hidden()
            seen["stored"] = page.evaluate("sessionStorage.getItem('p2pupdate.readToken')")
            card = page.locator(f"[data-artifact='{V2}']")
            pool = page.locator("[data-pool='default']")
            seen["replica"] = page.inner_text("#replica")
            for k in ("nodes-counted", "leases", "refusals", "origin-bytes"):
                seen[k] = page.inner_text(f"[data-k={k}]")
            seen["versions"] = {
                v: page.inner_text(f"[data-k=versions] tr[data-version='{v}'] td.n")
                for v in ("v1", "v2")
            }
            for k in ("nodes", "probation", "leases", "failed", "breaker", "failures"):
                seen[f"a-{k}"] = card.locator(f"[data-k={k}]").inner_text()
            seen["a-failures-elements"] = card.locator("[data-k=failures] b").count()
            seen["a-refusal-legend"] = card.locator(
                "[data-refusal='capacity/lease-budget']"
            ).inner_text()
            seen["a-refusal-bars"] = card.locator("[data-k=refusals-chart] rect").count()
            seen["pool-leases"] = pool.locator("[data-k=pool-leases]").inner_text()
            seen["spare-lines"] = pool.locator("[data-k=spare-chart] polyline").count()
            seen["stages"] = page.inner_text("[data-k=stages]")
            page.fill("#node", why_prefix)
            page.click("#search button")
            page.wait_for_selector("[data-k=why-gate]", timeout=10_000)
            for k in ("why-node", "why-holds", "why-gate", "why-reason", "why-queue"):
                seen[k] = page.inner_text(f"[data-k={k}]")
            seen["png"] = page.screenshot(path=str(out), full_page=full_page)
        finally:
            ctx.close()
    return seen


def unexpected(errors: list[str]) -> list[str]:
    """The console's errors but the one a tokened replica's first ``/status`` makes (401,
    before the page was given the token): a script error, a CSP violation, anything else."""
    return [e for e in errors if "status of 401" not in e]


def png_facts(data: bytes) -> tuple[int, int, bool]:
    """(width, height, more than one colour) of an 8-bit RGB/RGBA PNG, with the stdlib:
    the IDAT chunks inflated and the scanlines unfiltered, row by row until a pixel
    differs from the first one."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, head = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            head = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", head[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    first: bytes | None = None
    for y in range(height):
        kind_byte = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind_byte == 1:
                row[i] = (row[i] + a) & 255
            elif kind_byte == 2:
                row[i] = (row[i] + b) & 255
            elif kind_byte == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif kind_byte == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (row[i] + pred) & 255
        if first is None:
            first = bytes(row[:bpp])
        if row != first * width:
            return width, height, True
        prev = row
    return width, height, False


def artifacts_dir() -> Path:
    d = Path(os.environ.get("P2PUPDATE_TEST_ARTIFACTS") or Path(__file__).parents[1] / ".artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_png_facts_tells_a_blank_image_from_a_drawn_one() -> None:
    def png(rows: list[bytes], width: int) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            crc = zlib.crc32(kind + body)
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

        head = struct.pack(">IIBBBBB", width, len(rows), 8, 2, 0, 0, 0)
        raw = b"".join(b"\x00" + r for r in rows)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw))

    white = b"\xff\xff\xff" * 4
    assert png_facts(png([white] * 3, 4)) == (4, 3, False)
    assert png_facts(png([white, white, b"\x00\x00\x00" + white[3:]], 4)) == (4, 3, True)


async def test_the_rollout_page_shows_the_fleet_and_a_nodes_why(tmp_path: Path) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (scripts/test installs Debian's chromium as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (it is in the dev extra: pip install -e .[dev])")
    out = artifacts_dir() / "rollout-page.png"
    async with scene(tmp_path) as s:
        e = s.expect
        seen = await trio.to_thread.run_sync(drive, s.url, e["why"][:12], out)
    # the console's only errors: /status refused 401 until the token is given
    assert seen["errors"] and unexpected(seen["errors"]) == [], seen["errors"]
    assert "read-token-required" in seen["access-why"]
    assert e["why"] not in seen["before-token"] and "v1" not in seen["before-token"]
    assert seen["access-hidden"] and seen["stored"] == TOKEN
    assert seen["replica"].startswith("replica 1 of 1 (quorum 1) · network test")
    assert seen["nodes-counted"] == str(e["counted"])
    assert seen["versions"] == {v: str(c) for v, c in e["versions"].items()}
    assert seen["leases"] == f"{e['leases']} / {e['lease_budget']}"
    assert seen["refusals"] == str(e["refused"]) and e["refused"] >= 2
    assert seen["origin-bytes"] == f"{e['origin_bytes']:,} bytes"
    assert seen["a-nodes"] == str(e["nodes_on"])
    assert seen["a-probation"] == str(e["probation"])
    assert seen["a-leases"] == str(e["leases"])
    assert seen["a-failed"] == str(e["failed"])
    assert seen["a-breaker"] == "breaker closed"  # 1 failure: under the threshold of 2
    assert FAILURE in seen["a-failures"] and seen["a-failures-elements"] == 0  # text, not markup
    assert seen["a-refusal-legend"] == f"capacity/lease-budget {e['refused']}"
    assert seen["a-refusal-bars"] >= 1  # the history's sample after the refusals
    assert seen["pool-leases"] == f"{e['leases']} of {e['lease_budget']}"
    assert seen["spare-lines"] == 1
    assert "scope serial 1: 2 named nodes" in seen["stages"]
    assert "scope serial 2: everyone" in seen["stages"]
    # the search box: n3 waits behind the budget, first in the queue of two
    assert seen["why-node"] == e["why"]
    assert seen["why-gate"] == "capacity" and seen["why-reason"] == "lease-budget"
    assert seen["why-queue"] == "position 1 of 2 in pool default"
    assert seen["why-holds"].startswith("holds: gate capacity: lease-budget")
    width, height, drawn = png_facts(seen["png"])
    assert width == 1280 and height >= 900 and drawn
    assert out.read_bytes() == seen["png"]
