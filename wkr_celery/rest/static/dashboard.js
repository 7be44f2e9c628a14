// wkr-celery dashboard: polls /dashboard/data and draws SVG line charts from the differences
// between consecutive snapshots. No dependencies. An API key, if the API has one, is read from
// the page's #key=... fragment (never sent in a URL) and passed as X-API-Key.
"use strict";
(function () {
  // Rates span at least WINDOW_S: workers report their counters once a second (heartbeats),
  // so a shorter window would alternate between zero and double.
  const POLL_MS = 1000, POINTS = 120, WINDOW_S = 3;
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  const series = { rps: [], resps: [], batch: [], ms: [], queue: [], err: [], http: [] };
  const history = [];
  const $ = (id) => document.getElementById(id);
  const COLORS = ["--c0", "--c1", "--c2", "--c3", "--c4", "--c5", "--c6"].map(
    (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim());

  function fmt(x, digits) {
    if (x === null || x === undefined || !isFinite(x)) return "–";
    if (Math.abs(x) >= 1e6) return (x / 1e6).toFixed(1) + "M";
    if (Math.abs(x) >= 1e4) return (x / 1e3).toFixed(1) + "k";
    return Number(x).toFixed(digits === undefined ? 0 : digits);
  }
  function tick(x) {  // two significant digits for small axes, whole numbers for large ones
    if (x === 0) return "0";
    return Math.abs(x) >= 100 ? fmt(x) : String(Number(x.toPrecision(2)));
  }
  function duration(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
      m = Math.floor(s % 3600 / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    return m + "m " + (s % 60) + "s";
  }
  function setValue(id, value, text) {
    const el = $(id);
    el.dataset.value = String(value);
    el.textContent = text === undefined ? fmt(value) : text;
  }
  function push(name, value) {
    const s = series[name];
    s.push(value);
    if (s.length > POINTS) s.shift();
  }
  function el(tag, attrs, text) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  // A line chart of one or more series, with a light fill under the first one.
  function lines(svgId, names, colors, digits) {
    const svg = $(svgId), W = 400, H = 150, L = 38, B = 16, T = 6;
    svg.replaceChildren();
    let max = 0;
    for (const n of names) for (const v of series[n]) max = Math.max(max, v);
    max = max > 0 ? max * 1.15 : 1;
    for (let i = 0; i <= 3; i++) {
      const y = T + (H - B - T) * i / 3;
      svg.appendChild(el("line", { x1: L, x2: W, y1: y, y2: y, class: "grid-line" }));
      svg.appendChild(el("text", { x: L - 4, y: y + 3, "text-anchor": "end" },
        tick(max * (3 - i) / 3)));
    }
    svg.appendChild(el("text", { x: L, y: H - 3 }, (POINTS * POLL_MS / 1000) + " s ago"));
    svg.appendChild(el("text", { x: W, y: H - 3, "text-anchor": "end" }, "now"));
    names.forEach((n, k) => {
      const s = series[n];
      if (!s.length) return;
      const step = (W - L) / (POINTS - 1), x0 = W - (s.length - 1) * step;
      const pts = s.map((v, i) => [x0 + i * step, T + (H - B - T) * (1 - v / max)]);
      const d = pts.map((p, i) => (i ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1)).join("");
      if (k === 0 && pts.length > 1) {
        svg.appendChild(el("path", { d: d + "L" + pts[pts.length - 1][0] + " " + (H - B) + "L" +
          pts[0][0] + " " + (H - B) + "Z", fill: colors[k], opacity: 0.12 }));
      }
      svg.appendChild(el("path", { d: d, fill: "none", stroke: colors[k], "stroke-width": 2,
        "stroke-linejoin": "round" }));
    });
    const last = series[names[0]].length ? series[names[0]][series[names[0]].length - 1] : 0;
    svg.dataset.last = String(last);
    svg.dataset.max = String(Math.max(0, ...names.flatMap((n) => series[n])));
  }
  function histogram(sizes, batchSize) {
    const svg = $("chart-hist"), W = 400, H = 170, L = 38, B = 18, T = 6;
    svg.replaceChildren();
    const keys = Object.keys(sizes).map(Number).sort((a, b) => a - b);
    const total = keys.reduce((a, k) => a + sizes[k], 0);
    svg.dataset.total = String(total);
    svg.dataset.bars = String(keys.length);
    if (!keys.length) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no batches yet"));
      return;
    }
    // One bar per size from 1 to the largest seen (or the batch size), so gaps show.
    const top = Math.max(keys[keys.length - 1], Math.min(batchSize, 64));
    const n = Math.min(top, 64), per = Math.ceil(top / n);
    const bins = new Array(n).fill(0);
    for (const k of keys) bins[Math.min(n - 1, Math.floor((k - 1) / per))] += sizes[k];
    const max = Math.max(...bins), bw = (W - L) / n;
    for (let i = 0; i <= 2; i++) {
      const y = T + (H - B - T) * i / 2;
      svg.appendChild(el("line", { x1: L, x2: W, y1: y, y2: y, class: "grid-line" }));
      svg.appendChild(el("text", { x: L - 4, y: y + 3, "text-anchor": "end" }, fmt(max * (2 - i) / 2)));
    }
    bins.forEach((c, i) => {
      if (!c) return;
      const h = (H - B - T) * c / max;
      const bar = el("rect", { x: L + i * bw + 1, y: H - B - h, width: Math.max(1, bw - 2),
        height: h, class: "bar", rx: 2 });
      bar.appendChild(el("title", {}, "size " + (i * per + 1) + (per > 1 ? "–" + (i + 1) * per : "")
        + ": " + c + " batches"));
      svg.appendChild(bar);
    });
    svg.appendChild(el("text", { x: L, y: H - 4 }, "1"));
    svg.appendChild(el("text", { x: W, y: H - 4, "text-anchor": "end" }, String(top)));
  }
  function workers(list, base, dt) {
    const body = $("workers").tBodies[0];
    body.replaceChildren();
    for (const w of list) {
      const before = base.workers.find((p) => p.id === w.id);
      const util = before && dt > 0 ? Math.min(1, Math.max(0,
        (w.predict_seconds - before.predict_seconds) / dt)) : null;
      const tr = document.createElement("tr");
      tr.dataset.worker = w.id;
      for (const v of [w.id, w.device < 0 ? "cpu" : "gpu " + w.device, w.host, fmt(w.requests),
        fmt(w.batches), fmt(w.failed), fmt(w.buffered)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      td.innerHTML = '<span class="util"><span style="width:' + ((util || 0) * 100).toFixed(1) +
        '%"></span></span>' + (util === null ? "–" : (util * 100).toFixed(0) + "%");
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }
  function statistics(stats) {
    const body = $("stats").tBodies[0];
    body.replaceChildren();
    for (const k of Object.keys(stats).sort()) {
      const s = stats[k], tr = document.createElement("tr");
      for (const v of [k, fmt(s.count), fmt(s.sum / s.count, 3), fmt(s.min, 3), fmt(s.max, 3)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }
  function update(d) {
    const t = d.totals;
    $("service-name").textContent = d.name;
    $("service-meta").textContent = "protocol " + d.protocol + " · batch_size " + d.batch_size +
      (d.version ? " · v" + d.version : "");
    setValue("total-requests", t.requests);
    setValue("total-responses", t.responses);
    setValue("total-failed", t.failed);
    $("total-failed").classList.toggle("bad", t.failed > 0);
    setValue("total-workers", d.workers.length);
    const sc = d.scaling || {};
    $("scaling").hidden = !sc.ceiling;
    if (sc.ceiling) {  // -num_worker_max: the range, and the supervisor's last decision
      $("scaling").textContent = "elastic " + sc.floor + "–" + sc.ceiling +
        (sc.reason ? " · " + sc.last + ": " + sc.reason : "");
      $("scaling").title = "estimated queue wait " + Number(sc.wait_s).toFixed(2) + " s";
    }
    setValue("total-queue", d.queue_length);
    setValue("total-uptime", d.uptime_s, duration(d.uptime_s));
    $("max-batch").textContent = d.batch_size;
    if (d.flower_port) {
      const a = $("flower-link");
      a.href = location.protocol + "//" + location.hostname + ":" + d.flower_port + "/";
      a.hidden = false;
    }
    // Rates need two snapshots; the first poll shows lifetime means instead of blanks.
    while (history.length > 1 && d.t - history[1].t >= WINDOW_S) history.shift();
    const base = history[0] || { t: d.t - Math.max(d.uptime_s, 1e-9),
      totals: { requests: 0, responses: 0, failed: 0, batches: 0, predict_seconds: 0 },
      http_errors: 0, workers: [] };
    const dt = Math.max(1e-3, d.t - base.t);
    const dreq = Math.max(0, t.requests - base.totals.requests);
    const dres = Math.max(0, t.responses - base.totals.responses);
    const dbat = Math.max(0, t.batches - base.totals.batches);
    const dpred = Math.max(0, t.predict_seconds - base.totals.predict_seconds);
    const lastMean = series.batch.length ? series.batch[series.batch.length - 1] : 0;
    const lastMs = series.ms.length ? series.ms[series.ms.length - 1] : 0;
    push("rps", dreq / dt);
    push("resps", dres / dt);
    push("batch", dbat ? dres / dbat : (t.batches ? lastMean || t.responses / t.batches : 0));
    push("ms", dres ? dpred * 1000 / dres : (t.responses ? lastMs || t.predict_seconds * 1000 / t.responses : 0));
    push("queue", d.queue_length);
    push("err", Math.max(0, t.failed - base.totals.failed) / dt);
    push("http", Math.max(0, d.http_errors - base.http_errors) / dt);
    lines("chart-rate", ["rps", "resps"], [COLORS[0], COLORS[1]]);
    lines("chart-batch", ["batch"], [COLORS[2]]);
    lines("chart-ms", ["ms"], [COLORS[3]]);
    lines("chart-queue", ["queue"], [COLORS[4]]);
    lines("chart-err", ["err", "http"], [COLORS[5], COLORS[6]]);
    const last = (n) => series[n][series[n].length - 1];
    $("now-rps").textContent = fmt(last("rps"), 1);
    $("now-resps").textContent = fmt(last("resps"), 1);
    $("now-batch").textContent = fmt(last("batch"), 1);
    $("now-ms").textContent = fmt(last("ms"), 3);
    $("now-queue").textContent = fmt(last("queue"));
    $("now-err").textContent = fmt(last("err"), 1);
    $("now-http").textContent = fmt(last("http"), 1);
    histogram(d.batch_sizes, d.batch_size);
    workers(d.workers, base, dt);
    statistics(d.statistics);
    history.push(d);
  }
  async function poll() {
    const dot = $("live-dot"), line = $("status-line");
    try {
      const r = await fetch("/dashboard/data", { headers: key ? { "X-API-Key": key } : {},
        cache: "no-store" });
      const body = await r.json();
      if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
      update(body);
      dot.className = "dot on";
      line.textContent = "updated " + new Date().toLocaleTimeString() + " · polling every " +
        POLL_MS / 1000 + " s";
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    } catch (e) {
      dot.className = "dot off";
      line.textContent = "cannot read /dashboard/data: " + e.message;
    }
    setTimeout(poll, POLL_MS);
  }
  poll();
})();
