// The rollout page (coordinator/ui): reads this replica's /status every few seconds and
// /status/node/<prefix> for the search box, and draws what it reads.  No library, no
// build step, nothing fetched from anywhere but this replica.  Everything that comes from
// the replica (node ids, versions, reasons: nodes make them up) enters the DOM as text
// (textContent / text nodes), never as markup.
"use strict";
(() => {
  const REFRESH_MS = 3000;
  const TOKEN_KEY = "p2pupdate.readToken";
  const SVGNS = "http://www.w3.org/2000/svg";
  const COLOURS = ["#2457c5", "#d9730d", "#1b7f3b", "#b3261e", "#7b3fb5", "#0e8a8a", "#a0522d", "#c2185b", "#607d8b"];
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let lastStatus = null;

  // -- DOM helpers: text only ---------------------------------------------------------------
  function fill(e, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.setAttribute("class", v);
      else e.setAttribute(k, String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }
  const el = (tag, attrs, ...kids) => fill(document.createElement(tag), attrs, kids);
  const sv = (tag, attrs, ...kids) => fill(document.createElementNS(SVGNS, tag), attrs, kids);

  const num = (n) => (typeof n === "number" ? n.toLocaleString("en-US", { maximumFractionDigits: 1 }) : "-");
  const short = (id) => (typeof id === "string" ? id.slice(0, 16) : "-");
  function bytes(n) {
    const exact = `${num(n)} bytes`;
    if (typeof n !== "number" || n < 1024 * 1024) return exact;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n, u = -1;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u += 1; }
    return `${exact} (${v.toFixed(1)} ${units[u]})`;
  }
  const utc = (t) => (typeof t === "number" ? new Date(t * 1000).toISOString().slice(11, 19) + " UTC" : "-");
  const secs = (s) => (typeof s === "number" ? `${num(Math.round(s))} s` : "-");
  const kv = (rows) => el("table", {}, rows.filter(Boolean).map(([k, v, attrs]) => el("tr", {}, el("th", {}, k), el("td", attrs || {}, v))));
  const tile = (k, value, label, cls) => el("div", { class: "tile " + (cls || "") }, el("div", { class: "v", "data-k": k }, value), el("div", { class: "l" }, label));
  // A bar of used / budget; ``limit``: reaching the budget is worth a colour (leases).
  function bar(used, budget, limit) {
    const inner = el("div");
    inner.style.width = budget > 0 ? `${Math.min(100, (100 * used) / budget)}%` : "0%";
    return el("div", { class: "bar" + (limit && budget > 0 && used >= budget ? " full" : "") }, inner);
  }
  function swatch(colour) {
    const i = el("i");
    i.style.background = colour;
    return i;
  }

  // -- fetches -------------------------------------------------------------------------------
  async function getJSON(path) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const resp = await fetch(path, { headers, cache: "no-store", credentials: "omit", redirect: "error" });
    let body = null;
    try { body = await resp.json(); } catch (_e) { body = null; }
    return { status: resp.status, body };
  }

  function refusedText(body) {
    if (!body || typeof body !== "object") return "";
    return [body.error, body.reason, body.hint].filter((x) => typeof x === "string").join(": ");
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  function askToken(body) {
    const box = $("access");
    $("access-why").textContent = refusedText(body);
    if (box.hidden) {
      box.hidden = false;
      $("token").focus();
    }
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const { status, body } = await getJSON("/status?history=1");
      if (status === 401) {
        askToken(body);
        showError("");
      } else if (status !== 200 || !body || !body.replica) {
        showError(`GET /status: HTTP ${status}${body ? ": " + refusedText(body) : ""}`);
      } else {
        $("access").hidden = true;
        showError("");
        lastStatus = body;
        render(body);
        $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
      }
    } catch (e) {
      showError("cannot reach the replica: " + (e && e.message ? e.message : e));
    } finally {
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  // -- charts (inline SVG) ---------------------------------------------------------------
  const W = 560, H = 150, PAD = { l: 44, r: 8, t: 8, b: 20 };

  function axes(g, t0, t1, lo, hi) {
    const x = (t) => PAD.l + ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - PAD.l - PAD.r);
    const y = (v) => H - PAD.b - ((v - lo) / Math.max(1e-9, hi - lo)) * (H - PAD.t - PAD.b);
    for (const v of [lo, (lo + hi) / 2, hi]) {
      g.append(sv("line", { class: "grid-line", x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v) }));
      g.append(sv("text", { x: PAD.l - 4, y: y(v) + 3, "text-anchor": "end" }, num(v)));
    }
    g.append(sv("text", { x: PAD.l, y: H - 5 }, utc(t0)));
    g.append(sv("text", { x: W - PAD.r, y: H - 5, "text-anchor": "end" }, utc(t1)));
    return { x, y };
  }

  function chart(k, title) {
    return sv("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, "data-k": k });
  }

  // Lines over time, with an optional dashed floor line.
  function lineChart(k, title, series, floor) {
    const s = chart(k, title);
    const pts = series.flatMap((x) => x.points);
    if (!pts.length) { s.append(sv("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no samples yet")); return s; }
    const ts = pts.map((p) => p[0]), vs = pts.map((p) => p[1]);
    if (typeof floor === "number") vs.push(floor);
    let lo = Math.min(...vs), hi = Math.max(...vs);
    if (hi === lo) { hi += 1; lo -= 1; }
    const t0 = Math.min(...ts), t1 = Math.max(...ts, t0 + 1);
    const { x, y } = axes(s, t0, t1, lo, hi);
    if (typeof floor === "number") s.append(sv("line", { class: "floor", x1: PAD.l, x2: W - PAD.r, y1: y(floor), y2: y(floor) }));
    series.forEach((ser, i) => {
      const d = ser.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      s.append(sv("polyline", { class: "series", points: d, stroke: ser.colour || COLOURS[i % COLOURS.length] }));
      if (ser.points.length === 1) {
        const p = ser.points[0];
        s.append(sv("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: ser.colour || COLOURS[i % COLOURS.length] }));
      }
    });
    return s;
  }

  // Stacked columns: per sample, its count per key (refusals since the previous sample).
  function stackChart(k, title, samples, keys) {
    const s = chart(k, title);
    if (!samples.length) { s.append(sv("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no samples yet")); return s; }
    const totals = samples.map((x) => keys.reduce((a, key) => a + (x.counts[key] || 0), 0));
    const hi = Math.max(1, ...totals);
    const t0 = samples[0].t, t1 = Math.max(samples[samples.length - 1].t, t0 + 1);
    const { x, y } = axes(s, t0, t1, 0, hi);
    const step = (W - PAD.l - PAD.r) / Math.max(1, samples.length);
    const w = Math.max(1, Math.min(14, step * 0.8));
    samples.forEach((smp) => {
      let base = 0;
      keys.forEach((key, i) => {
        const c = smp.counts[key] || 0;
        if (!c) return;
        const top = y(base + c), bottom = y(base);
        s.append(sv("rect", { x: Math.min(x(smp.t), W - PAD.r - w), y: top, width: w, height: Math.max(1, bottom - top), fill: COLOURS[i % COLOURS.length] }, sv("title", {}, `${key}: ${c} at ${utc(smp.t)}`)));
        base += c;
      });
    });
    return s;
  }

  function legend(items) {
    return el("div", { class: "legend" }, items.map(([label, colour, attrs]) => el("span", attrs || {}, swatch(colour), label)));
  }

  // -- the view ----------------------------------------------------------------------------
  function render(st) {
    const r = st.replica;
    $("replica").textContent =
      `replica ${r.index} of ${r.replicas} (quorum ${r.quorum}) · network ${r.network} · key ${short(r.keyid)} · ${location.host}` +
      (r.warming_up_for > 0 ? ` · WARMING UP ${Math.round(r.warming_up_for)} s` : "");
    const samples = (st.history && st.history.samples) || [];
    const view = el("div");
    if (st.warnings && st.warnings.length) {
      view.append(el("div", { class: "panel bad", "data-k": "warnings" }, el("ul", { class: "plain" }, st.warnings.map((w) => el("li", {}, w)))));
    }
    view.append(overview(st));
    view.append(el("div", { class: "grid" }, documentsCard(st, samples), nodesCard(st)));
    view.append(el("h2", {}, "Artifacts and pools"));
    const arts = Object.entries(st.artifacts || {});
    const pools = Object.entries(st.pools || {}).sort((p, q) => p[0].localeCompare(q[0]));
    if (!arts.length) view.append(el("p", { class: "dim" }, "no artifact named by a document yet"));
    if (!pools.length) view.append(el("p", { class: "dim" }, "no pool has reported yet"));
    view.append(el("div", { class: "grid" },
      arts.map(([a, e]) => artifactCard(st, a, e, samples)),
      pools.map(([p, info]) => poolCard(st, p, info, samples))));
    $("view").replaceChildren(view);
  }

  function overview(st) {
    const n = st.nodes;
    const leases = Object.values(st.pools || {}).reduce((a, p) => a + p.leases.length, 0);
    const budget = Object.values(st.pools || {}).reduce((a, p) => a + (p.lease_budget || 0), 0);
    const refused = Object.values(st.refusals || {}).reduce((a, c) => a + c, 0);
    const paused = Object.keys(st.paused || {}).length;
    return el("div", { class: "tiles" },
      tile("nodes-counted", num(n.counted), "nodes counted"),
      tile("nodes-uncounted", num(n.uncounted), "not counted (no standing)"),
      tile("connected", num(st.replica.connected_nodes), "connected now"),
      tile("leases", `${leases} / ${budget}`, "leases in flight / budget"),
      tile("refusals", num(refused), "asks refused"),
      tile("paused", num(paused), "rollouts paused", paused ? "bad-text" : ""),
      tile("origin-bytes", bytes(st.origin ? st.origin.bytes : 0), "origin bytes served"));
  }

  function documentsCard(st, samples) {
    const d = st.documents;
    const a = d.allowlist, s = d.scope;
    const stages = [];
    for (const smp of samples) {
      if (smp.scope && (!stages.length || stages[stages.length - 1].serial !== smp.scope.serial)) stages.push({ ...smp.scope, t: smp.t });
    }
    return el("div", { class: "card" }, el("h2", {}, "Rollout"),
      kv([
        ["allowlist", a ? `v${a.version}: ${a.artifacts.length} artifacts, expires ${new Date(a.expires * 1000).toISOString().slice(0, 16)}Z` : "none published"],
        ["scope", s ? s.describe : "none published", { "data-k": "scope" }],
        s && ["kind", `${s.kind}${s.force ? " (FORCE: skips the capacity gate)" : ""}, serial ${s.serial}`],
        ["releases", (d.releases || []).map((x) => `${x.name} (#${x.counter})`).join(", ") || "none"],
      ]),
      el("h3", {}, "stages seen (scope serials, the last hour)"),
      stages.length
        ? el("ul", { class: "plain", "data-k": "stages" }, stages.map((x) => el("li", {}, el("span", { class: "dim" }, utc(x.t) + "  "), x.describe)))
        : el("p", { class: "dim" }, "no scope in the samples"),
      Object.keys(st.held || {}).length
        ? [el("h3", {}, "held back by their own gates (they report it)"), kv(Object.entries(st.held).map(([why, c]) => [why, num(c), { class: "n" }]))]
        : null);
  }

  function nodesCard(st) {
    const n = st.nodes;
    const versions = Object.entries(n.versions || {});
    const states = Object.entries(n.states || {});
    const most = Math.max(1, ...versions.map((x) => x[1]));
    return el("div", { class: "card" }, el("h2", {}, "Nodes"),
      el("h3", {}, "per version"),
      versions.length
        ? el("table", { class: "counts", "data-k": "versions" }, versions.map(([v, c]) => el("tr", { "data-version": v }, el("th", {}, v), el("td", { class: "n" }, num(c)), el("td", {}, bar(c, most)))))
        : el("p", { class: "dim" }, "no node has reported"),
      el("h3", {}, "per state"),
      el("table", { class: "counts", "data-k": "states" }, states.map(([s, c]) => el("tr", { "data-state": s }, el("th", {}, s), el("td", { class: "n" }, num(c))))));
  }

  function artifactCard(st, artifact, e, samples) {
    const origin = (st.origin && st.origin.artifacts && st.origin.artifacts[artifact]) || null;
    const badges = [
      e.allowlisted ? el("span", { class: "badge ok" }, "allowlisted") : el("span", { class: "badge" }, "not allowlisted"),
      e.in_scope ? el("span", { class: "badge ok" }, "in scope") : null,
      e.paused ? el("span", { class: "badge bad", "data-k": "breaker" }, "PAUSED by the breaker") : el("span", { class: "badge ok", "data-k": "breaker" }, "breaker closed"),
    ];
    // refusals by gate/reason over time, from the history
    const series = samples.map((x) => ({ t: x.t, counts: (x.refusals && x.refusals[artifact]) || {} }));
    const keys = [...new Set([...Object.keys(e.refusals || {}), ...series.flatMap((x) => Object.keys(x.counts))])].sort();
    const states = Object.entries(e.states || {});
    return el("div", { class: "card", "data-artifact": artifact },
      el("h2", {}, `${e.name || "(no release record)"}${e.counter !== null && e.counter !== undefined ? " #" + e.counter : ""} `, el("span", { class: "mono dim" }, short(artifact))),
      el("div", {}, badges),
      kv([
        ["nodes on it", num(e.nodes), { "data-k": "nodes", class: "n" }],
        ["states", states.map(([s, c]) => `${s} ${c}`).join(", ") || "-", { "data-k": "states" }],
        ["in probation", num(e.probation), { "data-k": "probation", class: "n" }],
        ["leases here", num(e.leases), { "data-k": "leases", class: "n" }],
        ["failed moves", num(e.failed), { "data-k": "failed", class: "n" }],
        e.paused && ["breaker: why", e.paused_reason || "-", { "data-k": "paused-reason", class: "bad-text" }],
        ["origin", origin ? `${bytes(origin.bytes)} served, ${num(origin.refused)} try-peers, ${num(origin.downloaders)} downloading now` : "not held here", { "data-k": "origin" }],
        Object.keys(e.returned || {}).length && ["handed back", Object.entries(e.returned).map(([w, c]) => `${w} ${c}`).join(", ")],
      ]),
      (e.failures || []).length
        ? [el("h3", {}, "failures (node: reason)"), el("ul", { class: "plain", "data-k": "failures" }, e.failures.map((f) => el("li", {}, el("span", { class: "mono" }, short(f.node)), ": ", f.reason)))]
        : null,
      el("h3", {}, "refusals by gate/reason"),
      keys.length
        ? [legend(keys.map((k, i) => [`${k} ${num((e.refusals || {})[k] || 0)}`, COLOURS[i % COLOURS.length], { "data-refusal": k }])),
           stackChart("refusals-chart", `refusals of ${artifact} per sample`, series, keys)]
        : el("p", { class: "dim" }, "none"));
  }

  function poolCard(st, pool, info, samples) {
    const agg = info.aggregate;
    const leases = info.leases || [];
    const budget = info.lease_budget || 0;
    const spare = samples.filter((x) => x.pools && x.pools[pool]).map((x) => [x.t, x.pools[pool].spare]);
    return el("div", { class: "card", "data-pool": pool },
      el("h2", {}, `pool ${pool}`),
      kv([
        ["leases in flight", el("span", {}, el("span", { "data-k": "pool-leases" }, `${leases.length} of ${budget}`), " (this replica's share of max_concurrent)")],
        ["", bar(leases.length, budget, true)],
        agg && ["aggregate", `capacity ${num(agg.capacity)}, load ${num(agg.load)}, ${num(agg.serving)} serving (min ${st.replica.min_serving})${agg.stale ? " · STALE" : ""}`, { "data-k": "aggregate" }],
        agg && ["spare capacity", `${num(agg.spare)} (capacity - load / ${st.replica.utilization})`, { "data-k": "spare", class: agg.spare < 0 ? "bad-text" : "" }],
      ]),
      leases.length
        ? [el("h3", {}, "leases"), el("ul", { class: "plain", "data-k": "lease-list" }, leases.map((l) => el("li", {}, el("span", { class: "mono" }, short(l.node)), ` -> ${short(l.artifact)}, ${secs(l.expires_in)} left${l.forced ? " FORCED" : ""}`)))]
        : null,
      el("h3", {}, "spare capacity against the floor (0)"),
      lineChart("spare-chart", `spare capacity of pool ${pool}`, [{ name: "spare", points: spare, colour: COLOURS[0] }], 0),
      legend([["spare = capacity - load / u", COLOURS[0]], ["floor", "#b3261e"], [`samples every ${st.history ? st.history.interval : "-"} s`, "transparent"]]));
  }

  // -- the search box: one node's "why" ----------------------------------------------------
  async function why(prefix) {
    const box = $("why");
    box.hidden = false;
    box.replaceChildren(el("p", { class: "dim" }, "asking..."));
    let got;
    try {
      got = await getJSON("/status/node/" + encodeURIComponent(prefix));
    } catch (e) {
      box.replaceChildren(el("p", { class: "bad-text" }, "cannot reach the replica: " + (e && e.message ? e.message : e)));
      return;
    }
    const { status, body } = got;
    if (status === 401) { askToken(body); box.replaceChildren(el("p", { class: "dim" }, "give the read token first")); return; }
    if (status === 409 && body && Array.isArray(body.matches)) {
      box.replaceChildren(el("p", {}, `${body.reason}; which one?`),
        el("ul", { class: "plain", "data-k": "why-matches" }, body.matches.map((m) => el("li", {}, fillButton(m))),
          body.more ? el("li", { class: "dim" }, `... and ${body.more} more`) : null));
      return;
    }
    if (status !== 200 || !body || !body.ok) {
      box.replaceChildren(el("p", { class: "bad-text", "data-k": "why-error" }, refusedText(body) || `HTTP ${status}`));
      return;
    }
    box.replaceChildren(renderWhy(body));
  }

  function fillButton(id) {
    const b = el("button", { type: "button", class: "link mono" }, id);
    b.addEventListener("click", () => { $("node").value = id; why(id); });
    return b;
  }

  function renderWhy(w) {
    const r = w.report, f = w.refusal, q = w.queue, l = w.lease;
    return el("div", { "data-node": w.node },
      el("div", {}, el("span", { class: "mono", "data-k": "why-node" }, w.node), ` at replica ${w.replica}`,
        w.connected ? "" : ", not connected now", w.counted ? "" : ", NOT COUNTED (no standing yet)"),
      el("div", { class: "holds", "data-k": "why-holds" }, "holds: ", w.holds),
      kv([
        ["report", r ? `${r.state} ${r.version} (${short(r.artifact)}) in pool ${r.pool}, ${secs(r.age)} ago${r.held ? ", held by its own gates: " + r.held : ""}` : "none yet", { "data-k": "why-report" }],
        f && ["gate", f.gate, { "data-k": "why-gate" }],
        f && ["reason", f.reason, { "data-k": "why-reason" }],
        f && f.detail && ["detail", f.detail],
        f && ["since", `${utc(f.since)} (for ${secs(f.for)}; last asked ${utc(f.at)})`, { "data-k": "why-since" }],
        f && ["retry_after", f.retry_after === null ? "-" : `${f.retry_after} s (asks again in ${secs(f.retry_in)})`, { "data-k": "why-retry" }],
        ["queue", q ? `position ${q.position} of ${q.of} in pool ${q.pool}` : "not queued", { "data-k": "why-queue" }],
        l && ["lease", `${short(l.artifact)} in pool ${l.pool}, ${secs(l.expires_in)} left${l.forced ? " FORCED" : ""}`, { "data-k": "why-lease" }],
        w.cooldown && ["cooldown", `${secs(w.cooldown)} left (a lease of it lapsed unreported)`],
      ]));
  }

  // -- wiring ------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("search").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const prefix = $("node").value.trim().toLowerCase();
      if (prefix) why(prefix);
    });
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      refresh();
    });
    refresh();
  });
})();
