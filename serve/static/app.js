// The neighbour explorer: a search box, a product view, its neighbours with "why similar" bars.
// Plain DOM code, no libraries, so it works offline; every text goes in through textContent.
"use strict";
const COLORS = {text: "#457b9d", title_lexical: "#e9c46a", mpn: "#f4a261", image: "#2a9d8f",
                brand: "#e76f51", category: "#8e7dbe", price: "#6a994e"};
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function filterParams() {
  const p = new URLSearchParams();
  const add = (name, id) => { const v = $(id).value.trim(); if (v) p.set(name, v); };
  add("brand", "f-brand"); add("category", "f-category"); add("price_min", "f-price-min"); add("price_max", "f-price-max");
  return p;
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json().catch(() => ({error: r.statusText}));
  if (!r.ok) throw new Error(body.detail || body.error || r.statusText);
  return body;
}

function image(src, alt) {
  if (!src) return el("div", {class: "noimg", text: "no image"});
  return el("img", {src, alt: alt || "", loading: "lazy"});
}

function price(p) { return p && p.price != null ? `${p.price.toFixed(2)} ${p.currency || ""}`.trim() : "–"; }

function bar(score, fields) {
  const b = el("div", {class: "bar", title: Object.entries(fields || {}).map(([f, v]) => `${f} ${v.toFixed(3)}`).join(", ")});
  for (const [f, v] of Object.entries(fields || {})) {
    if (v <= 0) continue;
    b.append(el("div", {class: "seg", "data-field": f, style: `width:${(100 * v).toFixed(2)}%;background:${COLORS[f] || "#999"}`}));
  }
  return el("div", {}, b, el("div", {class: "score", text: `score ${score.toFixed(3)}`}));
}

function card(n, cls) {
  const p = n.product || {};
  const c = el("div", {class: `card ${cls}`, "data-id": n.product_id},
    image(p.image_src, p.title),
    el("div", {class: "title", text: p.title || n.product_id}),
    el("div", {class: "meta", text: `${p.brand || "–"} · ${price(p)}`}),
    bar(n.score, n.fields));
  c.addEventListener("click", () => { location.hash = "#/product/" + encodeURIComponent(n.product_id); });
  return c;
}

function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : "–"; }

function legend() {
  $("legend").replaceChildren(...Object.entries(COLORS).map(([f, c]) => el("span", {style: `--c:${c}`, text: f})));
}

async function showSearch(q) {
  $("product-view").hidden = true;
  const params = filterParams(); params.set("q", q); params.set("k", "12");
  const r = await getJSON("/v1/search?" + params);
  const box = $("results");
  box.replaceChildren(el("h2", {text: `Results for “${q}” (fields used: ${r.query_fields.join(", ")})`}),
                      el("div", {class: "cards"}, ...r.neighbors.map((n) => card(n, "result-card"))));
  box.hidden = false;
}

async function showProduct(id) {
  $("results").hidden = true;
  const enc = encodeURIComponent(id);
  const params = filterParams();  // k: the published list's TOP_K
  const [p, nl] = await Promise.all([getJSON(`/v1/products/${enc}`), getJSON(`/v1/products/${enc}/neighbors?${params}`)]);
  const facts = [["brand", p.brand || "–"], ["price", price(p)], ["category", p.category || "–"], ["version", String(p.version)],
                 ["id", p.product_id]];
  $("product").replaceChildren(image(p.image_src, p.title),
    el("div", {}, el("h2", {id: "product-title", text: p.title || p.product_id}),
       el("dl", {}, ...facts.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: v})]))));
  $("freshness").textContent = nl.source === "published"
    ? `published list · computed ${when(nl.computed_at)} · source event ${when(nl.source_event_time)} · model ${nl.model}`
    : `computed live (${nl.fallback || "filters"}) with filters ${JSON.stringify(nl.filters)} · model ${nl.model}`;
  legend();
  $("neighbors").replaceChildren(...nl.neighbors.map((n) => card(n, "neighbor-card")));
  $("product-view").hidden = false;
  window.scrollTo(0, 0);
}

async function route() {
  $("status").textContent = "";
  const h = location.hash;
  try {
    if (h.startsWith("#/product/")) await showProduct(decodeURIComponent(h.slice(10)));
    else if (h.startsWith("#/search/")) await showSearch(decodeURIComponent(h.slice(9)));
  } catch (e) {
    $("status").textContent = e.message;
  }
  document.body.dataset.ready = h || "home";
}

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("search-input").value.trim();
  if (q) location.hash = "#/search/" + encodeURIComponent(q);
});
window.addEventListener("hashchange", route);
route();
