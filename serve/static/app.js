// The neighbour explorer: a search box, a product view, its neighbours with "why similar" bars, and
// a weights panel that re-ranks live with query-time field weights.
// Plain DOM code, no libraries, so it works offline; every text goes in through textContent.
// Everything a view shows is in the URL (#/search/<q>?filters or #/product/<id>?filters): links share it.
"use strict";
const COLORS = {text: "#457b9d", title_lexical: "#e9c46a", mpn: "#f4a261", image: "#2a9d8f",
                brand: "#e76f51", category: "#8e7dbe", price: "#6a994e"};
const FILTERS = [["brand", "f-brand"], ["category", "f-category"], ["price_min", "f-price-min"],
                 ["price_max", "f-price-max"]];
const $ = (id) => document.getElementById(id);
let info = null;  // GET /v1/info: the model and its stored field weights

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

// --- the URL is the state -------------------------------------------------------------------
function parseHash() {
  const h = location.hash.slice(1);
  const [path, query] = h.split("?", 2);
  return {path: path || "/", params: new URLSearchParams(query || "")};
}

function paramsFromInputs() {
  const p = new URLSearchParams();
  for (const [name, id] of FILTERS) { const v = $(id).value.trim(); if (v) p.set(name, v); }
  const w = weightsParam();
  if (w) p.set("weights", w);
  return p;
}

function inputsFromParams(params) {
  for (const [name, id] of FILTERS) $(id).value = params.get(name) || "";
  const asked = Object.fromEntries((params.get("weights") || "").split(",").filter(Boolean)
    .map((x) => x.split(":")).map(([f, v]) => [f, Number(v)]));
  for (const input of document.querySelectorAll("#weights input[type=range]")) {
    const f = input.dataset.field;
    input.value = f in asked ? asked[f] : input.dataset.initial;
    showWeight(input);
  }
}

function go(path) {
  // the same URL again (a re-submitted query, an unchanged filter): route anyway
  const hash = "#" + path + (paramsFromInputs().toString() ? "?" + paramsFromInputs() : "");
  if (location.hash === hash) route(); else location.hash = hash;
}

// --- the API --------------------------------------------------------------------------------
async function getJSON(url) {
  const key = sessionStorage.getItem("simstream-key");
  const r = await fetch(url, {headers: key ? {"X-API-Key": key} : {}});
  const body = await r.json().catch(() => ({detail: r.statusText}));
  if (r.status === 401) $("key-form").hidden = false;
  if (!r.ok) throw new Error(body.detail || body.error || r.statusText);
  return body;
}

// --- the weights panel ----------------------------------------------------------------------
function showWeight(input) {
  input.nextElementSibling.textContent = Number(input.value).toFixed(2);
}

function weightsParam() {
  const changed = [...document.querySelectorAll("#weights input[type=range]")]
    .filter((i) => i.value !== i.dataset.initial);  // only the weights moved away from the stored ones
  return changed.map((i) => `${i.dataset.field}:${Number(i.value)}`).join(",");
}

async function buildWeights() {
  info = await getJSON("/v1/info");
  let timer = null;
  const rows = Object.entries(info.fields).map(([f, w]) => {
    const input = el("input", {type: "range", min: "0", max: String(Math.max(w * 3, 0.3).toFixed(3)), step: "any",
                               value: String(w), "data-field": f, "aria-label": `${f} weight`});
    input.dataset.initial = input.value;  // the stored weight, as the slider holds it
    if (w <= 0) { input.disabled = true; input.title = "stored at weight 0: cannot be raised at query time"; }
    input.addEventListener("input", () => {
      showWeight(input);
      clearTimeout(timer);
      timer = setTimeout(() => go(parseHash().path), 250);  // re-rank live
    });
    return el("label", {style: `--c:${COLORS[f] || "#999"}`}, el("span", {class: "wname", text: f}), input,
              el("output", {text: w.toFixed(2)}));
  });
  const reset = el("button", {type: "button", id: "weights-reset", text: "stored weights"});
  reset.addEventListener("click", () => {
    for (const i of document.querySelectorAll("#weights input[type=range]")) { i.value = i.dataset.initial; showWeight(i); }
    go(parseHash().path);
  });
  $("weights").replaceChildren(el("span", {class: "hint", text: "query-time weights:"}), ...rows, reset);
}

// --- views ----------------------------------------------------------------------------------
function image(src, alt) {
  if (!src) return el("div", {class: "noimg", text: "no image"});
  return el("img", {src, alt: alt || "", loading: "lazy"});
}

function price(p) { return p && p.price != null ? `${p.price.toFixed(2)} ${p.currency || ""}`.trim() : "–"; }

function bar(score, fields, match) {
  const b = el("div", {class: "bar", title: Object.entries(fields || {}).map(([f, v]) => `${f} ${v.toFixed(3)}`).join(", ")});
  for (const [f, v] of Object.entries(fields || {})) {
    if (v <= 0) continue;
    b.append(el("div", {class: "seg", "data-field": f, style: `width:${(100 * v).toFixed(2)}%;background:${COLORS[f] || "#999"}`}));
  }
  const line = el("div", {class: "score", text: `score ${score.toFixed(3)}`});
  // the model's match decision (docs/events.md): how likely the neighbour is the same product
  if (match != null) line.append(el("span", {class: "match", title: "match probability: the same product?",
                                             text: ` · same product ${Math.round(100 * match)} %`}));
  return el("div", {}, b, line);
}

function card(n, cls) {
  const p = n.product || {};
  const c = el("div", {class: `card ${cls}`, "data-id": n.product_id, tabindex: "0", role: "link",
                       "aria-label": `${p.title || n.product_id}, score ${n.score.toFixed(3)}`},
    image(p.image_src, p.title),
    el("div", {class: "title", text: p.title || n.product_id}),
    el("div", {class: "meta", text: `${p.brand || "–"} · ${price(p)}`}),
    bar(n.score, n.fields, n.match_probability));
  const open = () => go("/product/" + encodeURIComponent(n.product_id));
  c.addEventListener("click", open);
  c.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); open(); }
    else if (["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp"].includes(ev.key)) {
      ev.preventDefault();
      const all = [...c.parentElement.querySelectorAll(".card")];
      const step = ev.key === "ArrowRight" || ev.key === "ArrowDown" ? 1 : -1;
      const next = all[(all.indexOf(c) + step + all.length) % all.length];
      next.focus();
    }
  });
  return c;
}

function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "–"; }

function legend() {
  $("legend").replaceChildren(...Object.entries(COLORS).map(([f, c]) => el("span", {style: `--c:${c}`, text: f})));
}

async function showSearch(q, params) {
  $("product-view").hidden = true;
  $("search-input").value = q;
  const p = new URLSearchParams(params); p.set("q", q); p.set("k", "12");
  const r = await getJSON("/v1/search?" + p);
  const box = $("results");
  box.replaceChildren(el("h2", {text: `Results for “${q}” (fields used: ${r.query_fields.join(", ")})`}),
                      el("div", {class: "cards"}, ...r.neighbors.map((n) => card(n, "result-card"))));
  box.hidden = false;
}

async function showProduct(id, params) {
  $("results").hidden = true;
  const enc = encodeURIComponent(id);  // k: the published list's TOP_K
  const [p, nl] = await Promise.all([getJSON(`/v1/products/${enc}`), getJSON(`/v1/products/${enc}/neighbors?${params}`)]);
  const facts = [["brand", p.brand || "–"], ["price", price(p)], ["category", p.category || "–"], ["version", String(p.version)],
                 ["id", p.product_id]];
  $("product").replaceChildren(image(p.image_src, p.title),
    el("div", {}, el("h2", {id: "product-title", text: p.title || p.product_id}),
       el("dl", {}, ...facts.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: v})]))));
  $("freshness").textContent = nl.source === "published"
    ? `published list · computed ${when(nl.computed_at)} · source event ${when(nl.source_event_time)} · model ${nl.model}`
    : `computed live (${nl.fallback || "filters"}) · as of ${when(nl.as_of)} · filters ${JSON.stringify(nl.filters)}`
      + (nl.weights ? ` · weights ${JSON.stringify(nl.weights)}` : "") + ` · model ${nl.model}`;
  legend();
  $("neighbors").replaceChildren(...nl.neighbors.map((n) => card(n, "neighbor-card")));
  $("product-view").hidden = false;
}

async function route() {
  $("status").textContent = "";
  const {path, params} = parseHash();
  inputsFromParams(params);
  try {
    if (path.startsWith("/product/")) await showProduct(decodeURIComponent(path.slice(9)), params);
    else if (path.startsWith("/search/")) await showSearch(decodeURIComponent(path.slice(8)), params);
  } catch (e) {
    $("status").textContent = e.message;
  }
  document.body.dataset.ready = location.hash || "home";
  document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
}

// --- wiring ---------------------------------------------------------------------------------
$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("search-input").value.trim();
  if (q) go("/search/" + encodeURIComponent(q));
});
$("filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const {path} = parseHash();
  if (path !== "/") go(path);
});
$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("simstream-key", $("key-input").value.trim());
  $("key-form").hidden = true;
  buildWeights().catch(() => {}).then(route);
});
document.addEventListener("keydown", (ev) => {  // "/" focuses the search box
  if (ev.key === "/" && document.activeElement.tagName !== "INPUT") { ev.preventDefault(); $("search-input").focus(); }
});
window.addEventListener("hashchange", route);
buildWeights().catch((e) => { $("status").textContent = e.message; }).then(route);
