// pitstore dashboard: polls /v1/metrics/series and draws tiles, tables and inline SVG charts. No dependencies.
"use strict";
(function () {
  const KEY = "pitstore.apiKey";
  const SVG = "http://www.w3.org/2000/svg";
  const W = 320, H = 130, PAD = { l: 38, r: 6, t: 6, b: 16 };
  let interval = 2000;
  let timer = null;

  // A key given once as ?key= is kept for this tab (sessionStorage) and removed from the address bar.
  const params = new URLSearchParams(location.search);
  if (params.has("key")) {
    sessionStorage.setItem(KEY, params.get("key"));
    params.delete("key");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }

  const $ = (sel) => document.querySelector(sel);
  const num = (v, digits) => v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
  const int = (v) => Math.round(v).toLocaleString("en-US");
  const pct = (v) => (v === null || v === undefined ? "–" : num(v * 100, 1) + "%");
  const ms = (v) => (v === null || v === undefined ? "–" : (v < 10 ? num(v, 2) : num(v, 1)) + " ms");
  const money = (v) => (Math.abs(v) >= 100 ? num(v, 2) : Number(v.toPrecision(4)).toString());
  function bytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? num(n, 1) : int(n)) + " " + units[i];
  }
  function duration(s) {
    s = Math.max(0, s);
    if (s < 90) return num(s, 0) + " s";
    if (s < 5400) return num(s / 60, 0) + " min";
    if (s < 172800) return num(s / 3600, 1) + " h";
    return num(s / 86400, 1) + " d";
  }
  const clock = (t) => new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
  // A short time: the time of day when today (UTC), else the date and minute.
  function when(t, now) {
    const iso = new Date(t * 1000).toISOString();
    const today = new Date(now * 1000).toISOString().slice(0, 10);
    return iso.slice(0, 10) === today ? iso.slice(11, 19) + "Z" : iso.slice(0, 10) + " " + iso.slice(11, 16) + "Z";
  }

  function tile(id, value, text, sub) {
    const el = document.getElementById(id);
    const v = el.querySelector(".value");
    v.textContent = text;
    v.dataset.value = value === null || value === undefined ? "" : String(value);
    el.querySelector(".sub").textContent = sub || "";
  }

  function cell(text, cls, data) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    for (const [k, v] of Object.entries(data || {})) td.dataset[k] = String(v);
    return td;
  }

  function rows(selector, items, build) {
    const body = $(selector + " tbody");
    body.replaceChildren(...items.map((item) => {
      const tr = document.createElement("tr");
      build(tr, item);
      return tr;
    }));
  }

  function badge(good, text) {
    const span = document.createElement("span");
    span.className = "badge " + (good ? "good" : "bad");
    span.textContent = text;
    const td = document.createElement("td");
    td.appendChild(span);
    return td;
  }

  function render(data) {
    const now = data.now, req = now.requests, span = duration(data.tile_span_s);
    tile("tile-rps", req.rps, req.rps === null ? "–" : num(req.rps, 1), int(req.total) + " requests in total");
    tile("tile-p50", req.p50_ms, ms(req.p50_ms), "last " + span);
    tile("tile-p99", req.p99_ms, ms(req.p99_ms), "last " + span);
    tile("tile-online-hit", req.online.hit_rate, pct(req.online.hit_rate),
      int(req.online.ok) + " ok of " + int(req.online.reads) + " reads; last " + span + " " + pct(req.online_hit_rate));
    tile("tile-cache-hit", now.cache.hit_rate, pct(now.cache.hit_rate),
      "compute cache: " + int(now.cache.hits) + " hits, " + int(now.cache.misses) + " misses");
    tile("tile-fallbacks", req.online.fallbacks, int(req.online.fallbacks), "served by a lower tier");
    tile("tile-errors", req.errors_total, int(req.errors_total),
      Object.entries(req.errors).map(([k, v]) => k + ": " + int(v)).join(", ") || "none");
    tile("tile-avoided", now.cost.avoided, money(now.cost.avoided), "spent " + money(now.cost.spent));

    for (const [id, v] of [["cost-spent", now.cost.spent], ["cost-avoided", now.cost.avoided],
      ["cost-per-query", now.cost.per_query], ["price-compute", now.cost.per_compute_second],
      ["price-call", now.cost.per_data_call]]) {
      const el = document.getElementById(id);
      el.textContent = money(v);
      el.dataset.value = String(v);
    }

    rows("#freshness", now.freshness, (tr, f) => {
      tr.dataset.set = f.feature_set;
      tr.dataset.fresh = String(f.fresh);
      tr.append(cell(f.feature_set), cell(when(f.newest, now.t)), cell(duration(f.age_s), "num", { value: f.age_s }),
        cell(duration(f.ttl_s), "num", { value: f.ttl_s }), badge(f.fresh, f.fresh ? "fresh" : "stale"));
    });
    if (!now.freshness.length) rows("#freshness", [0], (tr) => tr.append(cell("no feature rows yet", "muted")));

    rows("#tiers", Object.entries(now.tiers), (tr, [name, t]) => {
      tr.dataset.tier = name;
      tr.dataset.up = String(t.up);
      tr.title = t.error || "";
      tr.append(cell(name + (t.required ? "" : " (optional)")), badge(t.up, t.up ? "up" : "down"),
        cell(when(t.since, now.t) + " (" + duration(now.t - t.since) + ")"));
    });

    rows("#storage", now.storage.sets, (tr, s) => {
      tr.dataset.set = s.name;
      tr.append(cell(s.name + "@" + s.latest), cell(int(s.versions), "num", { value: s.versions }),
        cell(int(s.entries), "num", { value: s.entries }), cell(int(s.rows), "num", { value: s.rows }),
        cell(bytes(s.bytes), "num", { value: s.bytes }));
    });
    const st = now.storage;
    const totals = $("#storage-totals");
    totals.textContent = int(st.bars_live) + " bars in " + int(st.bar_entries_live) + " entries; " +
      int(st.feature_entries_live) + " feature entries; compute cache " + int(st.cache_entries) + " entries, " +
      bytes(st.cache_bytes);
    totals.dataset.cacheEntries = String(st.cache_entries);
    totals.dataset.cacheBytes = String(st.cache_bytes);

    const errs = Object.entries(req.errors);
    rows("#errors", errs, (tr, [status, n]) => {
      tr.dataset.status = status;
      tr.append(cell(status + " " + (REASONS[status] || "")), cell(int(n), "num", { value: n }));
    });
    if (!errs.length) rows("#errors", [0], (tr) => tr.append(cell("no errors", "muted")));

    const end = now.t, start = end - data.window_s;
    const pts = data.points;
    chart("rps", pts, start, end, [["requests/s", (p) => p.rps]], null);
    chart("latency", pts, start, end, [["p50", (p) => p.p50_ms], ["p99", (p) => p.p99_ms]], null);
    chart("hits", pts, start, end, [["online", (p) => p.online_hit_rate], ["compute cache", (p) => p.cache_hit_rate]], 1);
    chart("cost", pts, start, end, [["spent", (p) => p.cost_spent], ["avoided", (p) => p.cost_avoided]], null);
  }

  const REASONS = { 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 422: "Unprocessable", 429: "Too Many Requests",
    500: "Internal Error", 502: "Bad Gateway", 503: "Unavailable", 504: "Timeout" };

  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function nice(v) {  // a round upper bound for the y axis
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function axisLabel(v, fixedMax) {
    if (fixedMax === 1) return num(v * 100, 0) + "%";
    if (v >= 1000) return num(v / 1000, v >= 10000 ? 0 : 1) + "k";
    return Number(v.toPrecision(3)).toString();
  }

  function chart(name, points, start, end, series, fixedMax) {
    const svg = document.querySelector('svg[data-chart="' + name + '"]');
    const values = series.map(([, get]) => points.map((p) => [p.t, get(p)]));
    let max = 0;
    for (const s of values) for (const [, v] of s) if (v !== null && v > max) max = v;
    max = fixedMax || nice(max);
    const x = (t) => PAD.l + ((t - start) / (end - start)) * (W - PAD.l - PAD.r);
    const y = (v) => H - PAD.b - (v / max) * (H - PAD.t - PAD.b);
    const parts = [];
    for (const frac of [0, 0.5, 1]) {
      parts.push(el("line", { class: "grid", x1: PAD.l, x2: W - PAD.r, y1: y(max * frac), y2: y(max * frac) }));
      parts.push(el("text", { x: PAD.l - 3, y: y(max * frac) + 3, "text-anchor": "end" }, axisLabel(max * frac, fixedMax)));
    }
    parts.push(el("text", { x: PAD.l, y: H - 3 }, "-15 min"));
    parts.push(el("text", { x: W - PAD.r, y: H - 3, "text-anchor": "end" }, "now"));
    let drawn = 0, lx = PAD.l + 6;
    values.forEach((s, i) => {
      let run = [];
      const flush = () => {
        if (run.length === 1) parts.push(el("circle", { class: "s" + i, cx: run[0][0], cy: run[0][1], r: 1.6 }));
        else if (run.length > 1) parts.push(el("polyline", { class: "s" + i, points: run.map((q) => q.join(",")).join(" ") }));
        run = [];
      };
      for (const [t, v] of s) {
        if (v === null || v === undefined || t < start) { flush(); continue; }
        run.push([x(t).toFixed(1), y(Math.min(v, max)).toFixed(1)]);
        drawn++;
      }
      flush();
      parts.push(el("line", { class: "s" + i, x1: lx, x2: lx + 8, y1: PAD.t + 5, y2: PAD.t + 5, "stroke-width": 3 }));
      parts.push(el("text", { class: "legend", x: lx + 11, y: PAD.t + 8 }, series[i][0]));
      lx += 20 + 5 * series[i][0].length;
    });
    svg.replaceChildren(...parts);
    svg.dataset.points = String(drawn);
  }

  function setState(state, text) {
    document.body.dataset.state = state;
    $("#status").textContent = text;
  }

  async function poll() {
    const key = sessionStorage.getItem(KEY);
    const headers = key ? { "X-API-Key": key } : {};
    try {
      const resp = await fetch("/v1/metrics/series", { headers: headers, cache: "no-store" });
      if (resp.status === 401 || resp.status === 403) {
        const body = await resp.json().catch(() => ({}));
        $("#keyform").hidden = false;
        $("#keymsg").textContent = body.message || "an API key with read scope is needed";
        setState("auth", "API key needed");
        return;  // polling resumes once a key is given
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      $("#keyform").hidden = true;
      interval = Math.max(500, data.interval_s * 1000);
      render(data);
      const n = Number(document.body.dataset.updates) + 1;
      document.body.dataset.updates = String(n);
      setState("ok", "updated " + clock(data.now.t) + " · every " + data.interval_s + " s · last " +
        duration(data.window_s) + " charted");
    } catch (err) {
      setState("error", "cannot reach the server (" + err.message + "); retrying");
    }
    timer = setTimeout(poll, interval);
  }

  $("#keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("#keyinput").value.trim());
    clearTimeout(timer);
    poll();
  });
  poll();
})();
