// latent.html#s=NAME&i=LATENT: one latent: how often and how strongly it fires, its top and
// randomly sampled contexts, the tokens it promotes and suppresses, its nearest latents.
"use strict";
(() => {
  const {el, link, fmt, pct, load, params, tokenBox, context, header, fail} = BROWSE;
  const main = document.querySelector("main");
  const BANDS = [[0.75, 1, "top quarter"], [0.5, 0.75, "second quarter"],
                 [0.25, 0.5, "third quarter"], [0, 0.25, "bottom quarter"]];

  // The log2-binned histogram of nonzero activations, in bars of `group` bins.
  function activationHistogram(site, record) {
    const [first, counts] = record.hist;
    const perOctave = site.histogram.bins_per_octave;
    const group = Math.max(1, Math.ceil(counts.length / 48));
    const bars = [];
    for (let k = 0; k < counts.length; k += group) {
      const lo = 2 ** (site.histogram.log2_low + (first + k) / perOctave);
      const hi = 2 ** (site.histogram.log2_low + (first + Math.min(k + group, counts.length)) / perOctave);
      const count = counts.slice(k, k + group).reduce((a, b) => a + b, 0);
      bars.push({count, label: fmt(lo, 3) + " \u2013 " + fmt(hi, 3), tick: fmt(lo, 2)});
    }
    return BROWSE.histogram(bars, {every: Math.max(1, Math.ceil(bars.length / 8)),
                                   xlabel: "activation (log scale)"});
  }

  function logitTable(title, rows) {
    return el("div", {class: "panel"}, el("h3", {}, title), el("table", {class: "logits"},
      rows.map(([id, v]) => el("tr", {}, el("td", {}, tokenBox(id)),
                               el("td", {class: "num"}, fmt(v))))));
  }

  function neighbours(site, record) {
    const box = el("div", {class: "row", id: "neighbours"});
    for (const [other, list] of Object.entries(record.near)) {
      const same = other === record.sae;
      box.append(el("div", {class: "panel"},
        el("h3", {}, same ? "In " + other : "In " + other + " (other SAE)"),
        el("table", {}, el("tr", {}, el("th", {}, "latent"), el("th", {}, "decoder cosine")),
          list.map(([i, cos]) => el("tr", {},
            el("td", {}, el("a", {href: link("latent.html", {s: other, i})}, other + " #" + i)),
            el("td", {class: "num"}, fmt(cos, 3)))))));
    }
    return box;
  }

  function render(site, record) {
    const info = site.saes.find((s) => s.name === record.sae);
    const i = record.i;
    const nav = el("span", {},
      i > 0 ? el("a", {href: link("latent.html", {s: record.sae, i: i - 1})}, "\u2190 #" + (i - 1)) : null,
      " ",
      i + 1 < info.d_sae ? el("a", {href: link("latent.html", {s: record.sae, i: i + 1})},
                              "#" + (i + 1) + " \u2192") : null);
    const flags = [];
    if (record.fired === 0) flags.push(el("span", {class: "flag dead"}, "dead"));
    if (record.freq >= site.options.dense) flags.push(el("span", {class: "flag dense"}, "dense"));
    main.replaceChildren(
      el("h1", {}, el("a", {href: link("sae.html", {s: record.sae})}, record.sae),
         " latent #" + i, ...flags),
      el("p", {}, nav),
      el("p", {id: "stats"}, "Fires on " + record.fired.toLocaleString() + " of " +
         site.tokens.toLocaleString() + " tokens (" + pct(record.freq) + "); max activation " +
         fmt(record.max, 6) + ", mean when firing " + fmt(record.mean) + "."));
    if (record.fired === 0) {
      main.append(el("p", {class: "muted"}, "This latent never fired on these tokens."));
    } else {
      main.append(el("h2", {}, "Activations when firing"), activationHistogram(site, record));
    }
    if (record.up) {
      main.append(el("h2", {}, "Direct logit effect"),
        el("p", {class: "muted"}, "W_U \u00b7 (final norm's linear map) \u00b7 decoder row: " +
           "the logit change per unit of activation, before the norm divides by the " +
           "residual stream's scale."),
        el("div", {class: "row"}, logitTable("promotes", record.up),
           logitTable("suppresses", record.down)));
    }
    if (record.top.length) {
      const scale = record.max;
      main.append(el("h2", {}, "Top activating contexts"),
        el("div", {id: "top"}, record.top.map((c) => context(c, scale, fmt(c[4][c[1] - c[2]], 4)))));
      const random = el("div", {id: "random"});
      for (const [lo, hi, label] of BANDS) {
        const inBand = record.random.filter((c) => c[5] >= lo && (c[5] < hi || hi === 1));
        random.append(el("h3", {}, label + " of firings (quantile " + lo + "\u2013" + hi + ")",
                         el("span", {class: "muted"}, " \u00b7 " + inBand.length + " sampled")),
          ...inBand.map((c) => context(c, scale, fmt(c[4][c[1] - c[2]], 4))));
      }
      main.append(el("h2", {}, "Random firings, by quantile of activation"),
        el("p", {class: "muted"}, "A uniform sample of all firings of this latent; shading " +
           "is relative to its maximum, " + fmt(scale, 4) + "."), random);
    }
    main.append(el("h2", {}, "Nearest latents by decoder cosine"), neighbours(site, record));
    document.title = record.sae + " #" + i + " \u00b7 gated-sae";
  }

  function show() {
    const {s, i} = params();
    Promise.all([load("site"), load(s + "/latents/" + Number(i))])
      .then(([site, record]) => render(site, record))
      .catch(fail);
  }

  header();
  window.addEventListener("hashchange", show);
  show();
})();
