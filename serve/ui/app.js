// ragtune's web page: chat (streamed, with citations), collections, adapters, router playground.
// Plain browser JavaScript, no build step, nothing fetched from anywhere but this server. All text
// that comes from the server or a model is put on the page with textContent, never as HTML.
"use strict";

const KEY_STORE = "ragtune.apiKey";
const $ = (sel) => document.querySelector(sel);

// -- small helpers -------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "text") node.textContent = v;
    else if (k === "className") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function headers(extra = {}) {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return `${resp.status}: ${(body.error && body.error.message) || JSON.stringify(body)}`;
  } catch {
    return `${resp.status} ${resp.statusText}`;
  }
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp.json();
}

function setStatus(node, text, kind = "") {
  node.textContent = text;
  node.className = `status ${kind}`;
}

function fmtTime(seconds) {
  if (!seconds) return "never";
  return new Date(seconds * 1000).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
}

function fmtNum(v, digits = 3) {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "n/a";
}

function fmtPct(v) {
  return typeof v === "number" && Number.isFinite(v) ? `${Math.round(v * 100)}%` : "n/a";
}

function shortName(path) {
  // A model served from a folder is named by its path: show the last part, keep the rest as title.
  return path && path.includes("/") ? path.split("/").filter(Boolean).pop() : path;
}

/** The last `n` parts of a file path (the full path stays in the element's title). */
function tailPath(path, n = 2) {
  const parts = String(path || "").split("/").filter(Boolean);
  return parts.length > n ? `…/${parts.slice(-n).join("/")}` : String(path || "");
}

/** The folder all `paths` share (with its trailing slash), or "". */
function commonFolder(paths) {
  if (paths.length < 2) return paths.length ? paths[0].slice(0, paths[0].lastIndexOf("/") + 1) : "";
  let prefix = paths[0];
  for (const p of paths) while (!p.startsWith(prefix)) prefix = prefix.slice(0, -1);
  return prefix.slice(0, prefix.lastIndexOf("/") + 1);
}

/** The JSON value in an answer (a ```json fence is tolerated), or undefined. */
function parseJson(text) {
  let t = text.trim();
  if (t.startsWith("```")) t = t.replace(/^`+(json)?/i, "").replace(/`+$/, "").trim();
  if (!t.startsWith("{") && !t.startsWith("[")) return undefined;
  try {
    return JSON.parse(t);
  } catch {
    return undefined;
  }
}

// -- tabs and the key ------------------------------------------------------------------------------

const loaders = {};

function showTab(name) {
  for (const b of document.querySelectorAll("nav [role=tab]")) {
    b.setAttribute("aria-selected", String(b.dataset.tab === name));
  }
  for (const p of document.querySelectorAll("main > section")) p.hidden = p.id !== `panel-${name}`;
  if (loaders[name]) loaders[name]();
}

function setupKey() {
  const input = $("#api-key");
  input.value = localStorage.getItem(KEY_STORE) || "";
  input.addEventListener("change", () => {
    const v = input.value.trim();
    if (v) localStorage.setItem(KEY_STORE, v);
    else localStorage.removeItem(KEY_STORE);
    loadChatOptions();
    const open = document.querySelector("nav [aria-selected=true]");
    if (open && loaders[open.dataset.tab]) loaders[open.dataset.tab]();
  });
}

// -- chat ------------------------------------------------------------------------------------------

async function loadChatOptions() {
  const status = $("#chat-status");
  const models = $("#chat-model");
  const cols = $("#chat-collection");
  try {
    const [m, c] = await Promise.all([api("/v1/models"), api("/v1/collections")]);
    const keepModel = models.value;
    const keepCol = cols.value;
    models.replaceChildren();
    for (const row of m.data) {
      let label = row.id;
      if (row.id === "auto") label = "auto (the applied plan decides)";
      else if (!row.parent) label = `${shortName(row.id)} (base model)`;
      models.append(el("option", { value: row.id, text: label, title: row.id }));
    }
    if ([...models.options].some((o) => o.value === keepModel)) models.value = keepModel;
    cols.replaceChildren(el("option", { value: "", text: "none" }));
    for (const row of c.data) {
      cols.append(el("option", { value: row.name, text: `${row.name} (${row.documents} docs)` }));
    }
    if (keepCol && [...cols.options].some((o) => o.value === keepCol)) cols.value = keepCol;
    else if (!keepCol && c.data.length && !cols.dataset.touched) cols.value = c.data[0].name;
    setStatus(status, "");
  } catch (e) {
    setStatus(status, `could not load models or collections: ${e.message}`, "error");
  }
}

/** Read a fetch() response of server-sent events, calling onData with each parsed `data:` JSON. */
async function readEvents(resp, onData) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      onData(JSON.parse(data));
    }
  }
}

function citationItem(c) {
  const where = c.page != null ? `${tailPath(c.source)}, page ${c.page}` : tailPath(c.source);
  const summary = el("summary", {},
    el("span", { className: "cite-index", text: c.index != null ? `[${c.index}]` : "•" }),
    el("span", { className: "cite-source", text: where, title: c.source }),
    el("span", { className: "cite-score", text: `score ${fmtNum(c.score, 3)}` }),
    c.cited ? el("span", { className: "badge cited", text: c.cited_by === "marker" ? "cited" : "used" })
      : el("span", { className: "badge", text: "retrieved" }));
  return el("details", { className: "citation" }, summary,
    el("div", { className: "cite-meta", text: `chunk ${c.chunk_id} · ingested ${fmtTime(c.ingested_at)}` }),
    el("pre", { className: "cite-text", text: c.text }));
}

// Thumbs up or down on an answer, with an optional correction: POST /v1/feedback
function feedbackBox(responseId) {
  const status = el("span", { className: "status" });
  const correction = el("textarea", { className: "correction", rows: 2,
    placeholder: "optional: the answer it should have been" });
  const send = async (rating) => {
    const body = { response_id: responseId, rating };
    if (correction.value.trim()) body.correction = correction.value.trim();
    try {
      await api("/v1/feedback", { method: "POST", body: JSON.stringify(body),
        headers: { "Content-Type": "application/json" } });
      setStatus(status, rating === "up" ? "thanks: marked good" : "thanks: marked wrong", "ok");
    } catch (e) {
      setStatus(status, `feedback failed: ${e.message}`, "error");
    }
  };
  return el("div", { className: "feedback" },
    el("button", { type: "button", className: "thumb up", title: "a good answer",
      text: "\u{1F44D}", onclick: () => send("up") }),
    el("button", { type: "button", className: "thumb down", title: "a wrong answer",
      text: "\u{1F44E}", onclick: () => send("down") }),
    correction, status);
}

async function sendChat(ev) {
  ev.preventDefault();
  const question = $("#chat-input").value.trim();
  if (!question) return;
  const model = $("#chat-model").value;
  const collection = $("#chat-collection").value;
  const body = {
    model, stream: true, stream_options: { include_usage: true },
    messages: [{ role: "user", content: question }],
  };
  const maxTokens = parseInt($("#chat-max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  const k = parseInt($("#chat-k").value, 10);
  if (collection) body.rag = k > 0 ? { collection, k } : { collection };
  if ($("#chat-json").checked) body.response_format = { type: "json_object" };

  const answer = el("div", { className: "answer", dataset: { chunks: "0" } });
  const meta = el("div", { className: "meta" });
  const extras = el("div");
  const turn = el("article", { className: "card turn" },
    el("div", { className: "question", text: question }),
    el("div", { className: "who", text: `${shortName(model)}${collection ? ` + ${collection}` : ""}` }),
    answer, meta, extras);
  $("#chat-log").prepend(turn);
  const send = $("#chat-send");
  send.disabled = true;
  setStatus($("#chat-status"), "generating...");
  let text = "";
  let chunks = 0;
  let final = null;
  let usage = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", body: JSON.stringify(body),
      headers: headers({ "Content-Type": "application/json" }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readEvents(resp, (obj) => {
      if (obj.error) throw new Error(obj.error.message);
      if (obj.usage) usage = obj.usage;
      const choice = obj.choices && obj.choices[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) {
        text += choice.delta.content;
        chunks += 1;
        answer.textContent = text;
        answer.dataset.chunks = String(chunks);
      }
      if (choice.finish_reason) final = obj;
    });
    turn.classList.add("done");
    if (!text) answer.textContent = "(empty answer)";
    const used = (final && final.ragtune) || {};
    const bits = [`finish: ${final ? final.choices[0].finish_reason : "?"}`];
    if (usage) bits.push(`${usage.completion_tokens} tokens`);
    if (used.adapter) bits.push(`adapter ${used.adapter}`);
    if (used.constrained) bits.push("JSON constrained");
    if (used.collection) bits.push(`${used.collection} generation ${used.generation}`);
    if (used.below_relevance_floor) bits.push("no chunk passed the relevance floor");
    if (used.auto) bits.push(`auto: ${used.auto.why}`);
    meta.textContent = bits.join(" · ");
    const parsed = parseJson(text);
    if (parsed !== undefined) {
      extras.append(el("div", { className: "label", text: "JSON" }),
        el("pre", { className: "json", text: JSON.stringify(parsed, null, 2) }));
    }
    const cites = (final && final.citations) || [];
    if (cites.length) {
      extras.append(el("div", { className: "label", text: `Sources (${cites.length})` }),
        el("div", { className: "citations" }, ...cites.map(citationItem)));
    }
    if (final && final.id) extras.append(feedbackBox(final.id));
    setStatus($("#chat-status"), "");
  } catch (e) {
    turn.classList.add("failed");
    meta.textContent = `error ${e.message}`;
    meta.classList.add("error");
    setStatus($("#chat-status"), "the request failed", "error");
  } finally {
    send.disabled = false;
  }
}

// -- collections -----------------------------------------------------------------------------------

async function loadCollections() {
  const status = $("#collections-status");
  const tbody = $("#collections-table tbody");
  const docs = $("#collections-docs");
  try {
    const list = await api("/v1/collections");
    const details = await Promise.all(list.data.map(
      (c) => api(`/v1/collections/${encodeURIComponent(c.name)}`)));
    const open = new Set([...docs.querySelectorAll("details[open]")].map((d) => d.dataset.collection));
    tbody.replaceChildren();
    docs.replaceChildren();
    $("#upload-names").replaceChildren(...list.data.map((c) => el("option", { value: c.name })));
    $("#collections-empty").hidden = list.data.length > 0;
    if (!$("#upload-collection").value && list.data.length) {
      $("#upload-collection").value = list.data[0].name;
    }
    for (const c of details) {
      const embedder = c.embedder ? `${shortName(c.embedder.name)} (${c.embedder.dim}-d)` : "";
      tbody.append(el("tr", { dataset: { collection: c.name } },
        el("td", { className: "name", text: c.name }),
        el("td", { className: "num documents", text: String(c.documents) }),
        el("td", { className: "num chunks", text: String(c.chunks) }),
        el("td", { className: "num", text: String(c.generation) }),
        el("td", { className: "updated", text: fmtTime(c.updated_at) }),
        el("td", { className: "muted", text: embedder, title: c.embedder ? c.embedder.name : "" })));
      const list = c.documents_list || [];
      const root = commonFolder(list.map((d) => d.source));
      const rows = list.map((d) => el("tr", {},
        el("td", { className: "source", text: d.source.slice(root.length), title: d.source }),
        el("td", { className: "num", text: String(d.chunks) }),
        el("td", { text: fmtTime(d.ingested_at) }),
        el("td", { className: "mono muted", text: (d.sha256 || "").slice(0, 12) })));
      docs.append(el("details", { className: "card docs", dataset: { collection: c.name },
        open: open.has(c.name) ? "" : null },
        el("summary", {}, el("span", { text: `${c.name}: ${c.documents} documents` }),
          root ? el("span", { className: "muted mono", text: ` in ${root}` }) : null),
        el("table", {},
          el("thead", {}, el("tr", {}, el("th", { text: "Source" }), el("th", { className: "num", text: "Chunks" }),
            el("th", { text: "Ingested" }), el("th", { text: "sha256" }))),
          el("tbody", {}, ...rows))));
    }
    setStatus(status, "");
  } catch (e) {
    setStatus(status, `could not load collections: ${e.message}`, "error");
  }
}

async function pollJob(id, onStatus) {
  for (;;) {
    const job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    onStatus(job);
    if (job.status === "succeeded" || job.status === "failed") return job;
    await new Promise((r) => setTimeout(r, 400));
  }
}

async function upload(ev) {
  ev.preventDefault();
  const name = $("#upload-collection").value.trim();
  const files = $("#upload-files").files;
  const status = $("#upload-status");
  const out = $("#upload-result");
  if (!name || !files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  $("#upload-send").disabled = true;
  out.hidden = true;
  setStatus(status, `uploading ${files.length} file(s)...`);
  try {
    const job = await api(`/v1/collections/${encodeURIComponent(name)}/documents`,
      { method: "POST", body: form });
    const done = await pollJob(job.id, (j) => setStatus(status, `ingest job ${j.id}: ${j.status}...`));
    if (done.status === "failed") throw new Error(done.error);
    const r = done.result;
    const lines = [
      `collection ${r.collection}, generation ${r.generation}, ${fmtNum(r.seconds, 1)} s`,
      `${r.ingested.length} ingested, ${r.replaced.length} replaced, ${r.unchanged.length} unchanged, ` +
        `${r.skipped.length} skipped`,
      `+${r.chunks_added} / -${r.chunks_removed} chunks`,
      ...r.skipped.map(([p, why]) => `skipped ${p}: ${why}`),
    ];
    out.textContent = lines.join("\n");
    out.hidden = false;
    setStatus(status, "done", "ok");
    $("#upload-form").reset();
    $("#upload-collection").value = name;
    await loadCollections();
    loadChatOptions();
  } catch (e) {
    setStatus(status, `upload failed: ${e.message}`, "error");
  } finally {
    $("#upload-send").disabled = false;
  }
}

// -- adapters --------------------------------------------------------------------------------------

/** A loss curve as inline SVG: training loss per step, validation loss as points on a line. */
function lossChart(loss) {
  const W = 340, H = 150, L = 40, R = 8, T = 10, B = 24;
  const train = (loss.train || []).filter(([, y]) => y != null);
  const val = (loss.val || []).filter(([, y]) => y != null);
  const all = train.concat(val);
  if (all.length < 2) return el("p", { className: "muted", text: "not enough loss history to plot" });
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => L + ((x - x0) / Math.max(x1 - x0, 1e-9)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const pts = (rows) => rows.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "loss", role: "img" });
  const title = svg("title");
  title.textContent = "loss curve: training loss per step and validation loss";
  root.append(title);
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
  root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
  const label = (x, y, text, anchor) => {
    const t = svg("text", { x, y, "text-anchor": anchor });
    t.textContent = text;
    root.append(t);
  };
  label(L - 4, T + 4, y1.toFixed(2), "end");
  label(L - 4, H - B, y0.toFixed(2), "end");
  label(L, H - 6, `step ${x0}`, "start");
  label(W - R, H - 6, `step ${x1}`, "end");
  if (train.length) root.append(svg("polyline", { points: pts(train), class: "train" }));
  if (val.length) {
    root.append(svg("polyline", { points: pts(val), class: "val" }));
    for (const [x, y] of val) root.append(svg("circle", { cx: sx(x), cy: sy(y), r: 3, class: "val" }));
  }
  const legend = el("div", { className: "legend" },
    el("span", { className: "key train", text: "train" }), el("span", { className: "key val", text: "validation" }));
  return el("figure", { className: "chart" }, root, legend);
}

function metricRows(m) {
  const rows = [];
  rows.push(["held-out loss (best)", fmtNum(m.best_val_loss), m.best_step != null ? `step ${m.best_step}/${m.steps}` : ""]);
  rows.push(["valid JSON", fmtPct(m.json_valid), m.json_valid_base != null ? `base ${fmtPct(m.json_valid_base)}` : "targets are not JSON"]);
  if (m.schema_valid != null) rows.push(["valid against schema", fmtPct(m.schema_valid), `base ${fmtPct(m.schema_valid_base)}`]);
  rows.push(["style similarity", fmtNum(m.style_similarity), `base ${fmtNum(m.style_similarity_base)}`]);
  const change = typeof m.perplexity_change === "number" ? `${m.perplexity_change >= 0 ? "+" : ""}${(m.perplexity_change * 100).toFixed(1)}%` : "n/a";
  rows.push(["forgetting (perplexity)", change,
    `${fmtNum(m.perplexity_before, 1)} → ${fmtNum(m.perplexity_after, 1)}${m.forgetting_flagged ? " FLAGGED" : ""}`]);
  if (m.effect_applied === false) rows.push(["effect", "none", "outputs equal the base model's"]);
  return rows;
}

function adapterCard(info) {
  const v = info.versions[0];
  const others = info.versions.map((x) => x.version + (x.aliases.length ? ` (${x.aliases.join(", ")})` : ""));
  const card = el("article", { className: "card adapter", dataset: { adapter: info.name } },
    el("header", {},
      el("h3", { text: info.name }),
      el("span", { className: "badge", text: v.version }),
      ...v.aliases.map((a) => el("span", { className: `badge alias ${a}`, text: a }))),
    el("dl", {},
      el("dt", { text: "Base model" }), el("dd", { text: shortName(v.base) || "?", title: v.base || "" }),
      el("dt", { text: "Created" }), el("dd", { text: fmtTime(v.created_at) }),
      el("dt", { text: "Versions" }), el("dd", { text: others.join(", ") })));
  if (!v.metrics) {
    card.append(el("p", { className: "muted", text: "No training card: registered without an evaluation." }));
    return card;
  }
  const m = v.metrics;
  if (m.train_examples != null) {
    card.querySelector("dl").append(el("dt", { text: "Data" }),
      el("dd", { text: `${m.train_examples} train / ${m.val_examples} held-out examples` }));
  }
  const table = el("table", { className: "metrics" },
    el("tbody", {}, ...metricRows(m).map(([k, a, b]) => el("tr", {},
      el("th", { text: k }), el("td", { className: "num", text: a }), el("td", { className: "muted", text: b })))));
  card.append(table, lossChart(v.loss || {}));
  if (m.forgetting_flagged) card.classList.add("warn");
  return card;
}

async function loadAdapters() {
  const status = $("#adapters-status");
  const list = $("#adapters-list");
  try {
    // Adapter names from /v1/models (honours the key's adapter limits), cards from /v1/adapters/{name}.
    const models = await api("/v1/models");
    const names = [...new Set(models.data.filter((m) => m.parent && m.id !== "auto")
      .map((m) => m.id.split("@")[0]))];
    const infos = await Promise.all(names.map((n) => api(`/v1/adapters/${encodeURIComponent(n)}`)));
    list.replaceChildren(...infos.map(adapterCard));
    $("#adapters-empty").hidden = infos.length > 0;
    setStatus(status, "");
  } catch (e) {
    setStatus(status, `could not load adapters: ${e.message}`, "error");
  }
}

// -- router ----------------------------------------------------------------------------------------

async function route(ev) {
  ev.preventDefault();
  const lines = $("#route-input").value.split("\n").map((l) => l.trim()).filter(Boolean);
  const status = $("#route-status");
  if (!lines.length) return;
  $("#route-send").disabled = true;
  setStatus(status, `routing ${lines.length} requirement(s)...`);
  try {
    const out = await api("/v1/route", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ requirements: lines }),
    });
    const tbody = $("#route-table tbody");
    tbody.replaceChildren(...out.data.map((d) => {
      const why = el("ul", { className: "reasons" }, ...d.reasons.map((r) => el("li", { text: r.why })));
      if (d.needs) why.append(el("li", { className: "muted", text: `needs: ${d.needs}` }));
      return el("tr", { dataset: { decision: d.decision } },
        el("td", { className: "requirement", text: d.text }),
        el("td", {}, el("span", { className: `decision ${d.decision.toLowerCase()}`, text: d.decision })),
        el("td", { className: "num", text: fmtPct(d.confidence) }),
        el("td", {}, why));
    }));
    $("#route-results").hidden = false;
    setStatus(status, "");
  } catch (e) {
    setStatus(status, `routing failed: ${e.message}`, "error");
  } finally {
    $("#route-send").disabled = false;
  }
}

// -- start -----------------------------------------------------------------------------------------

loaders.collections = loadCollections;
loaders.adapters = loadAdapters;

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  for (const b of document.querySelectorAll("nav [role=tab]")) {
    b.addEventListener("click", () => showTab(b.dataset.tab));
  }
  $("#chat-collection").addEventListener("change", (e) => { e.target.dataset.touched = "1"; });
  $("#chat-form").addEventListener("submit", sendChat);
  $("#chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("#chat-form").requestSubmit();
  });
  $("#upload-form").addEventListener("submit", upload);
  $("#route-form").addEventListener("submit", route);
  loadChatOptions();
});
