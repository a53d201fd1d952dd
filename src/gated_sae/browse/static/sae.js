// sae.html#s=NAME: every latent of one SAE in a sortable, searchable table, and the
// distribution of their firing frequencies.
"use strict";
(() => {
  const {el, link, fmt, pct, load, params, tokenText, tokenBox, header, fail} = BROWSE;
  const main = document.querySelector("main");

  // Log10-frequency histogram of all latents; dead ones in a bar of their own.
  function frequencyHistogram(index) {
    const live = index.freq.filter((f) => f > 0).map((f) => Math.log10(f));
    const step = 0.25;
    const low = live.length ? Math.floor(Math.min(...live) / step) * step : -1;
    const n = Math.max(1, Math.ceil(-low / step));
    const bars = Array.from({length: n}, (_, k) => {
      const lo = low + k * step;
      return {count: 0, label: "10^" + lo.toFixed(2) + " \u2013 10^" + (lo + step).toFixed(2),
              tick: "1e" + lo.toFixed(1)};
    });
    for (const f of live) bars[Math.min(n - 1, Math.floor((f - low) / step))].count += 1;
    bars.unshift({count: index.dead.length, label: "dead", tick: "dead", cls: "dead"});
    return BROWSE.histogram(bars, {every: 2, xlabel: "firing frequency (log scale)"});
  }

  function render(site, index) {
    const name = index.sae;
    const info = site.saes.find((s) => s.name === name);
    const dead = new Set(index.dead);
    const dense = new Set(index.dense);
    const rows = index.freq.map((freq, i) => {
      const tokens = index.tokens[i];
      const up = index.up ? index.up[i] : [];
      const texts = [...tokens, ...up].map(tokenText);
      const snippet = index.snippet[i].map(tokenText).join("");
      return {i, freq, max: index.max[i], top: index.top[i] >= 0 ? tokenText(index.top[i]) : "",
              tokens, up, snippet, dead: dead.has(i), dense: dense.has(i),
              text: (texts.join("\u0000") + "\u0000" + snippet).toLowerCase()};
    });

    main.append(
      el("h1", {}, name + " ", el("span", {class: "muted"},
        info.architecture + ", " + info.d_sae + " latents")),
      el("p", {}, "L0 " + fmt(info.l0) + " \u00b7 " + info.dead + " dead \u00b7 " + info.dense +
         " dense (firing on \u2265 " + fmt(100 * site.options.dense) + "% of " +
         site.tokens.toLocaleString() + " tokens)"),
      el("h2", {}, "Firing frequency of all latents"), frequencyHistogram(index),
      el("h2", {}, "Latents"));

    const columns = [
      {title: "latent", key: (r) => r.i, num: false,
       cell: (r) => el("a", {href: link("latent.html", {s: name, i: r.i})}, "#" + r.i)},
      {title: "frequency", key: (r) => r.freq, cell: (r) => pct(r.freq), num: true},
      {title: "max activation", key: (r) => r.max, cell: (r) => fmt(r.max), num: true},
      {title: "top token", key: (r) => r.top, num: false,
       cell: (r) => (r.top ? tokenBox(index.top[r.i]) : "")},
      {title: "fires on", cell: (r) => r.tokens.map(tokenBox)},
      {title: "promotes", cell: (r) => r.up.map(tokenBox)},
      {title: "top context", cell: (r) => el("span", {class: "tok"}, r.snippet)},
      {title: "", cell: (r) => [r.dead ? el("span", {class: "flag dead"}, "dead") : null,
                                r.dense ? el("span", {class: "flag dense"}, "dense") : null]},
    ];
    const view = BROWSE.sortableTable(columns, {initial: 1});
    view.table.id = "latents";
    const count = el("span", {id: "count", class: "muted"});
    const search = el("input", {type: "search", id: "search",
                                placeholder: "token or text (case-insensitive), or #latent"});
    search.addEventListener("input", () => {
      const query = search.value.toLowerCase();
      const id = /^#?\d+$/.test(query.trim()) ? Number(query.trim().replace("#", "")) : null;
      const shown = view.filter((r) => !query || r.i === id || r.text.includes(query));
      count.textContent = shown + " of " + rows.length + " latents";
    });
    main.append(el("div", {class: "controls"}, search, count), view.table);
    view.render(rows);
    count.textContent = rows.length + " of " + rows.length + " latents";
  }

  header();
  const name = params().s;
  Promise.all([load("site"), load(name + "/index")])
    .then(([site, index]) => render(site, index))
    .catch(fail);
})();
