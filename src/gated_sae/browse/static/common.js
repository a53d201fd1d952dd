// Shared by every page: loading data files, page parameters, and the small views the pages
// are built from (tokens, contexts, histograms, sortable tables). Data files are scripts that
// call BROWSE.put(key, data): <script src> works from file://, where fetch() is refused.
"use strict";

const BROWSE = (() => {
  const store = new Map();
  const waiting = new Map();

  function put(key, value) {
    store.set(key, value);
    const pending = waiting.get(key);
    if (pending) {
      waiting.delete(key);
      pending.resolve(value);
    }
  }

  // The data of `key`, from data/<key>.js, loaded once.
  function load(key) {
    if (store.has(key)) return Promise.resolve(store.get(key));
    if (waiting.has(key)) return waiting.get(key).promise;
    const pending = {};
    pending.promise = new Promise((resolve, reject) => {
      pending.resolve = resolve;
      pending.reject = reject;
    });
    waiting.set(key, pending);
    const script = document.createElement("script");
    script.src = "data/" + key + ".js";
    script.onerror = () => {
      waiting.delete(key);
      pending.reject(new Error("missing data file data/" + key + ".js"));
    };
    document.head.appendChild(script);
    return pending.promise;
  }

  // Page parameters live in the hash (#s=gated&i=12): file:// links keep it everywhere.
  function params() {
    const out = {};
    for (const part of location.hash.replace(/^#/, "").split("&")) {
      if (!part) continue;
      const [k, v = ""] = part.split("=");
      out[decodeURIComponent(k)] = decodeURIComponent(v);
    }
    return out;
  }

  function link(page, args) {
    const query = Object.entries(args)
      .map(([k, v]) => encodeURIComponent(k) + "=" + encodeURIComponent(v)).join("&");
    return page + (query ? "#" + query : "");
  }

  // el("a", {href: "x", class: "y"}, "text", child, ...): children are nodes or text.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) node.append(child);
    return node;
  }

  function fmt(x, digits = 4) {
    if (x === undefined || x === null) return "";
    if (x === 0) return "0";
    const a = Math.abs(x);
    if (a >= 1e-3 && a < 1e5) return String(Number(x.toPrecision(digits)));
    return x.toExponential(digits - 1);
  }

  function pct(x) {
    return x === 0 ? "0" : (x >= 0.01 ? (100 * x).toPrecision(3) : (100 * x).toExponential(1)) + "%";
  }

  // A token's text as the tokenizer decodes it, with line breaks and tabs made visible.
  function tokenText(id) {
    const vocab = store.get("vocab") || {};
    const text = vocab[id];
    if (text === undefined) return "<" + id + ">";
    return text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  }

  function tokenBox(id) {
    return el("span", {class: "tokbox", title: "token " + id}, tokenText(id));
  }

  function shade(value, max) {
    const alpha = max > 0 ? Math.min(1, Math.max(0, value / max)) : 0;
    return "rgba(255, 140, 0, " + (0.85 * alpha).toFixed(3) + ")";
  }

  // One context: [window, t, start, tokens, acts(, q)], each token shaded by act / scale and
  // the firing itself outlined.
  function context(ctx, scale, label) {
    const [w, t, start, tokens, acts] = ctx;
    const row = el("div", {class: "context", "data-window": w, "data-t": t});
    row.append(el("span", {class: "val"}, label));
    tokens.forEach((id, k) => {
      const act = acts[k];
      const span = el("span", {class: "tok" + (start + k === t ? " peak" : ""),
                               title: tokenText(id) + "  activation " + fmt(act, 6)},
                      tokenText(id));
      span.style.background = shade(act, scale);
      row.append(span);
    });
    return row;
  }

  // A bar chart: bars [{count, label, cls}], labels under every `every`-th bar.
  function histogram(bars, {width = 520, height = 140, every = 4, xlabel = ""} = {}) {
    const max = Math.max(1, ...bars.map((b) => b.count));
    const pad = 28;
    const bw = (width - pad) / Math.max(1, bars.length);
    const chart = svg("svg", {width, height: height + 34, class: "hist"});
    bars.forEach((b, k) => {
      const h = b.count > 0 ? Math.max(1, (height * b.count) / max) : 0;
      const rect = svg("rect", {x: pad + k * bw, y: height - h, width: Math.max(1, bw - 1),
                                height: h, class: "bar " + (b.cls || "")});
      rect.append(svg("title", {}, b.label + ": " + b.count));
      chart.append(rect);
      if (k % every === 0) {
        chart.append(svg("text", {x: pad + k * bw, y: height + 12}, b.tick ?? b.label));
      }
    });
    chart.append(svg("text", {x: 0, y: 10}, String(max)));
    chart.append(svg("text", {x: pad, y: height + 28}, xlabel));
    return chart;
  }

  // A table whose headers sort it: columns [{title, key(row) -> value, cell(row) -> node|text,
  // num}]; returns {table, render(rows)}.
  function sortableTable(columns, {initial = null, descending = true} = {}) {
    const table = el("table");
    const head = el("tr");
    const body = el("tbody");
    table.append(el("thead", {}, head), body);
    let rows = [];
    let sortColumn = initial;
    let desc = descending;
    const headers = columns.map((column, k) => {
      const th = el("th", {class: column.key ? "sortable" : ""}, column.title);
      if (column.key) {
        th.addEventListener("click", () => {
          desc = sortColumn === k ? !desc : column.num !== false;
          sortColumn = k;
          draw();
        });
      }
      head.append(th);
      return th;
    });

    function draw() {
      headers.forEach((th, k) => {
        th.classList.toggle("sorted-desc", k === sortColumn && desc);
        th.classList.toggle("sorted-asc", k === sortColumn && !desc);
      });
      let ordered = rows;
      if (sortColumn !== null) {
        const key = columns[sortColumn].key;
        ordered = rows.map((r, k) => [key(r.data), k, r]).sort((a, b) => {
          const c = a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
          return (desc ? -c : c) || a[1] - b[1];
        }).map((x) => x[2]);
      }
      body.replaceChildren(...ordered.filter((r) => r.shown).map((r) => r.node));
    }

    function render(data) {
      rows = data.map((d) => ({data: d, shown: true, node: null}));
      for (const r of rows) {
        r.node = el("tr", {}, columns.map((c) => el("td", {class: c.num ? "num" : ""},
                                                       c.cell(r.data))));
      }
      draw();
    }

    function filter(keep) {
      for (const r of rows) r.shown = keep(r.data);
      draw();
      return rows.filter((r) => r.shown).length;
    }

    return {table, render, filter};
  }

  function header(extra) {
    const site = store.get("site");
    const bar = el("header", {},
      el("span", {class: "title"}, el("a", {href: "index.html"}, "gated-sae feature browser")),
      site ? el("span", {}, site.model + " \u00b7 " + site.site) : null,
      (site ? site.saes : []).map((s) => el("a", {href: link("sae.html", {s: s.name})}, s.name)),
      el("a", {href: "prompt.html"}, "prompt"), extra || null);
    document.body.prepend(bar);
  }

  function fail(error) {
    const main = document.querySelector("main");
    main.append(el("p", {class: "error"}, String(error.message || error)));
  }

  return {put, load, params, link, el, fmt, pct, tokenText, tokenBox, shade, context,
          histogram, sortableTable, header, fail};
})();
