// ebr's web page: talks only to the server that served it, through its public API.
// Every value from the server is written with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { info: null, generation: null, version: null };

// -- the API ---------------------------------------------------------------------------

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const key = $("api-key").value.trim();
  if (key) headers.authorization = `Bearer ${key}`;
  if (options.body !== undefined) headers["content-type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { ...options, headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  } catch (e) {
    throw new ApiError(`the server could not be reached (${e.message})`);
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { /* not JSON: reported below */ }
  if (!resp.ok) {
    const message = body && body.status && body.status.error;
    throw new ApiError(message ? `${resp.status}: ${message}` : `HTTP ${resp.status}`);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// -- helpers ---------------------------------------------------------------------------

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fmtBytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtNum(x, digits = 4) {
  return typeof x === "number" ? Number(x.toFixed(digits)).toString() : String(x);
}

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [name, value, testid] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    const dt = el("dt", name);
    const dd = el("dd", value);
    if (testid) dd.dataset.testid = testid;
    dl.append(dt, dd);
  }
}

function lineChart(svg, points, xLabel, yLabel, tags) {
  // points: [[x, y, title], ...]: a polyline through them in order, a dot at each (its title
  // as a tooltip, its tag as a label when given), and the axes' labels
  svg.replaceChildren();
  if (points.length === 0) { svg.hidden = true; return; }
  svg.hidden = false;
  const [w, h, pad] = [320, svg.viewBox.baseVal.height, 34];
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => pad + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (w - pad - 10);
  const sy = (y) => h - pad + 10 - ((y - y0) / (y1 - y0)) * (h - pad - 10);
  const axis = document.createElementNS(SVG, "path");
  axis.setAttribute("d", `M${pad},8 V${h - pad + 10} H${w - 6}`);
  axis.setAttribute("class", "axis");
  svg.append(axis);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "));
  svg.append(line);
  for (const p of points) {
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", sx(p[0]));
    dot.setAttribute("cy", sy(p[1]));
    dot.setAttribute("r", 3);
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = p[2] || `${fmtNum(p[0])}, ${fmtNum(p[1])}`;
    dot.append(tip);
    svg.append(dot);
  }
  (tags || []).forEach((tag, i) => {
    const t = document.createElementNS(SVG, "text");
    const right = sx(points[i][0]) > w - 40;  // near the right edge: label to the left
    t.setAttribute("x", sx(points[i][0]) + (right ? -4 : 4));
    t.setAttribute("y", sy(points[i][1]) + 12);
    t.setAttribute("text-anchor", right ? "end" : "start");
    t.textContent = tag;
    svg.append(t);
  });
  const labels = [[xLabel, w / 2, h - 4, "middle"], [fmtNum(y1, 3), 2, 14, "start"],
                  [fmtNum(y0, 3), 2, h - pad + 10, "start"], [yLabel, pad + 4, 14, "start"]];
  for (const [text, x, y, anchor] of labels) {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", x);
    t.setAttribute("y", y);
    t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    svg.append(t);
  }
}

// -- the index panel -------------------------------------------------------------------

function codebookMethod(info) {
  const cb = info.codebooks || {};
  let method = { kmeans: "k-means", opq: "OPQ + k-means", distill: "Distill-VQ",
                 rq: "residual (RQ)", lsq: "LSQ", bidr: "BiDR" }[cb.method] || cb.method || "–";
  if (cb.labels) method += " + BiDR contrastive codes";
  if (info.towers) method += " + BiDR towers";
  return method;
}

function renderIndex(info) {
  state.info = info;
  const mem = info.memory || {};
  const denseRow = info.dim * (info.dense_dtype === "float16" ? 2 : 4);
  facts($("facts"), [
    ["spec", info.spec, "spec"],
    ["metric", info.metric],
    ["documents", info.count.toLocaleString("en"), "count"],
    ["dimension", info.dim],
    ["RAM per vector", `${fmtNum(mem.coarse_ram_bytes_per_vector ?? NaN, 1)} B (codes, lists, ids)`],
    ["dense per vector", `${denseRow} B on disk (${info.dense_dtype})`],
    ["RAM / dense", mem.ram_fraction_of_dense !== undefined
      ? `${(100 * mem.ram_fraction_of_dense).toFixed(1)}%` : null],
    ["coarse index in RAM", fmtBytes(mem.coarse_ram_bytes)],
    ["list points in RAM", mem.probe_bytes ? fmtBytes(mem.probe_bytes) : null],
    ["dense store on disk", fmtBytes(mem.dense_disk_bytes)],
    ["payloads", info.payloads],
    ["filter fields", Object.entries(info.fields || {}).map(([n, k]) => `${n}:${k}`).join(", ")],
    ["generation", info.generation, "info-generation"],
    ["index version", info.index_version, "index-version"],
    ["manifest sha256", info.manifest_sha256, "manifest-sha256"],
    ["written since build", info.live ? `${info.live.delta_live} live rows, `
      + `${info.live.tombstones} tombstones, epoch ${info.live.epoch}` : null],
    ["text queries", info.text_queries ? `yes (${(info.encoder || {}).name || "encoder"}, ${info.encoder_runtime})` : "no"],
  ]);
  const cb = info.codebooks || {};
  facts($("codebooks"), [
    ["method", codebookMethod(info), "codebook-method"],
    ["training vectors", cb.train_size],
    ["best epoch", cb.best_epoch],
    ["stopped", cb.stopped],
    ["seconds", cb.seconds && cb.seconds.total],
  ]);
  const history = Array.isArray(cb.history) ? cb.history : [];
  const watch = history.length ? Object.keys(history[0]).find((k) => k.startsWith("val_")) : null;
  const metric = watch || "loss";
  lineChart($("training"), history.filter((r) => typeof r[metric] === "number")
    .map((r) => [r.epoch, r[metric], `epoch ${r.epoch}: ${metric} ${fmtNum(r[metric])}`]),
    "epoch", metric);
  $("mode-text").disabled = !info.text_queries;
  const fields = Object.keys(info.fields || {});
  $("filter-box").hidden = fields.length === 0;
  $("filter-fields").textContent = fields.length ? `(fields: ${fields.join(", ")})` : "";
  if (fields.length) {
    const [name, kind] = Object.entries(info.fields)[0];
    const cond = kind === "int" || kind === "float" ? { range: { gte: 0 } }
      : { match: { value: kind === "bool" ? true : "…" } };
    $("filter").placeholder = JSON.stringify({ must: [{ key: name, ...cond }] });
  }
  $("query").placeholder = `a vector of ${info.dim} numbers: [0.1, 0.2, …] or separated by spaces`;
}

async function loadIndex() {
  try {
    renderIndex(await api("/index"));
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

async function watchGeneration() {
  // /readyz is public: the generation and version served, polled; a change reloads the panel
  try {
    const resp = await fetch("/readyz");
    const body = await resp.json();
    const text = body.generation ? `generation ${body.generation} · ${body.index_version}`
      : `not ready: ${(body.reasons || []).join("; ")}`;
    $("generation").textContent = text;
    if (body.generation && (body.generation !== state.generation
                            || body.index_version !== state.version)) {
      state.generation = body.generation;
      state.version = body.index_version;
      await loadIndex();
      $("recall").hidden = true;
      $("recall-chart").hidden = true;
    }
  } catch (e) {
    $("generation").textContent = "server unreachable";
  }
}

async function measureRecall() {
  const button = $("measure");
  button.disabled = true;
  button.textContent = "Measuring…";
  try {
    const report = await api("/index/recall?queries=50&k=10");
    const body = $("recall").querySelector("tbody");
    body.replaceChildren();
    for (const r of report.rows) {
      const tr = el("tr");
      tr.append(el("td", r.nprobe), el("td", r.candidates), el("td", fmtNum(r["recall@10"])),
                el("td", fmtNum(r.p50_ms, 3)));
      body.append(tr);
    }
    $("recall").hidden = false;
    lineChart($("recall-chart"), report.rows.map((r) => [r.p50_ms, r["recall@10"],
      `nprobe ${r.nprobe}: recall@10 ${fmtNum(r["recall@10"])} at ${fmtNum(r.p50_ms, 3)} ms`]),
      "p50 ms per query (labels: nprobe)", "recall@10", report.rows.map((r) => r.nprobe));
    showError("");
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
    button.textContent = "Measure recall";
  }
}

// -- the query -------------------------------------------------------------------------

function parseVector(text) {
  const t = text.trim();
  if (!t) throw new ApiError("query: paste a vector first");
  let v;
  if (t.startsWith("[")) {
    try { v = JSON.parse(t); } catch (e) { throw new ApiError("query: not a JSON array"); }
  } else {
    v = t.split(/[\s,]+/).filter(Boolean).map(Number);
  }
  if (!Array.isArray(v) || v.some((x) => typeof x !== "number" || !Number.isFinite(x))) {
    throw new ApiError("query: a vector is a list of finite numbers");
  }
  return v;
}

function positive(id) {
  const raw = $(id).value.trim();
  if (!raw) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n)) throw new ApiError(`${id}: a whole number, please`);
  return n;  // range checks are the server's (its message is shown)
}

async function buildRequest() {
  const mode = document.querySelector("input[name=mode]:checked").value;
  const exact = $("exact").checked;
  const body = { k: positive("k") ?? 10, with_payload: true, with_coarse: !exact,
                 params: { exact } };
  const nprobe = positive("nprobe");
  const candidates = positive("candidates");
  if (!exact && nprobe !== undefined) body.params.nprobe = nprobe;
  if (!exact && candidates !== undefined) body.params.candidates = candidates;
  const text = $("query").value;
  if (mode === "text") {
    if (!text.trim()) throw new ApiError("query: type some text first");
    body.text = text.trim();
  } else if (mode === "like") {
    const id = text.trim();
    if (!id) throw new ApiError("query: give a document id");
    const doc = await api(`/documents/${encodeURIComponent(id)}?with_vector=true`);
    body.vector = doc.vector;
  } else {
    body.vector = parseVector(text);
  }
  const filter = $("filter").value.trim();
  if (!$("filter-box").hidden && filter) {
    try { body.filter = JSON.parse(filter); } catch (e) {
      throw new ApiError("filter: not JSON");
    }
  }
  return body;
}

function snippet(payload) {
  if (!payload) return "";
  const title = payload.title ? String(payload.title) : "";
  const text = payload.text ? String(payload.text) : "";
  if (title || text) {
    const rest = text.length > 160 ? `${text.slice(0, 160)}…` : text;
    return title && rest ? `${title} — ${rest}` : title || rest;
  }
  const json = JSON.stringify(payload);
  return json.length > 160 ? `${json.slice(0, 160)}…` : json;
}

function renderResults(result) {
  const body = $("results").querySelector("tbody");
  body.replaceChildren();
  result.hits.forEach((h, i) => {
    const tr = el("tr");
    tr.dataset.testid = "hit";
    const id = el("td", h.id, "id");
    id.dataset.testid = "hit-id";
    let rank = "–";
    if (h.coarse_rank !== undefined && h.coarse_rank !== null) {
      const moved = h.coarse_rank - i;
      rank = moved > 0 ? `${h.coarse_rank} ↑${moved}` : moved < 0 ? `${h.coarse_rank} ↓${-moved}`
        : `${h.coarse_rank}`;
    }
    tr.append(el("td", i), id, el("td", fmtNum(h.score)),
              el("td", h.coarse_score !== undefined ? fmtNum(h.coarse_score) : "–"),
              el("td", rank), el("td", snippet(h.payload), "payload"));
    body.append(tr);
  });
  const s = result.stats;
  const parts = [`${result.hits.length} hits`, `mode ${s.mode}`];
  if (s.nprobe !== undefined) parts.push(`nprobe ${s.nprobe}`);
  if (s.candidates !== undefined) parts.push(`${s.found} of ${s.candidates} candidates found`);
  if (s.matches !== undefined) parts.push(`${s.matches} documents match the filter`);
  parts.push(`coarse ${fmtNum(s.coarse_ms, 3)} ms`, `re-rank ${fmtNum(s.rerank_ms, 3)} ms`,
             `${fmtBytes(s.dense_bytes_read)} dense read`);
  $("stats").textContent = parts.join(" · ");
}

async function search(event) {
  event.preventDefault();
  const button = $("search");
  button.disabled = true;
  try {
    const body = await buildRequest();
    const reply = await api("/search", { method: "POST", body });
    renderResults(reply.result);
    showError("");
  } catch (e) {
    showError(e.message);
    $("results").querySelector("tbody").replaceChildren();
    $("stats").textContent = "";
  } finally {
    button.disabled = false;
  }
}

// -- start -----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem("ebr-key") || "";
  $("api-key").addEventListener("change", () => {
    sessionStorage.setItem("ebr-key", $("api-key").value.trim());
    loadIndex();
  });
  $("query-form").addEventListener("submit", search);
  $("measure").addEventListener("click", measureRecall);
  watchGeneration();
  setInterval(watchGeneration, 2000);
});
