// index.html: what the site was built from, its SAEs, and the comparisons between them.
"use strict";
(() => {
  const {el, link, fmt, load, header, fail} = BROWSE;
  const main = document.querySelector("main");

  function render(site) {
    header();
    const short = site.tokens < site.tokens_requested
      ? " (" + site.tokens_requested.toLocaleString() + " asked; the corpus has no more)" : "";
    const skip = site.skip_positions ?? 1;  // sites written before it was recorded skip BOS
    const kept = skip === 0 ? "BOS included"
      : "the first " + (skip === 1 ? "position (BOS)" : skip + " positions (BOS first)") +
        " kept out";
    main.append(
      el("h1", {}, "Feature browser"),
      el("p", {}, site.model + " at ", el("code", {}, site.site), ", corpus ",
         el("code", {}, site.dataset), ": " + site.tokens.toLocaleString() + " tokens" + short +
         " in windows of " + site.context_size + ", " + kept + "."),
      el("h2", {}, "SAEs"));

    const table = el("table", {id: "saes"},
      el("tr", {}, ["SAE", "architecture", "latents", "L0", "dead", "dense", "folder"]
        .map((t) => el("th", {}, t))));
    for (const s of site.saes) {
      table.append(el("tr", {},
        el("td", {}, el("a", {href: link("sae.html", {s: s.name})}, s.name)),
        el("td", {}, s.architecture), el("td", {class: "num"}, s.d_sae),
        el("td", {class: "num"}, fmt(s.l0)), el("td", {class: "num"}, s.dead),
        el("td", {class: "num"}, s.dense), el("td", {class: "muted"}, s.path)));
    }
    main.append(table, el("p", {class: "muted"},
      "Dead: never fired on these tokens. Dense: fired on at least " +
      fmt(100 * site.options.dense) + "% of them."));

    if (site.pairs.length) {
      main.append(el("h2", {}, "Across SAEs"));
      const list = el("ul", {id: "pairs"});
      main.append(list);
      for (const [a, b] of site.pairs) {
        const item = el("li", {}, el("a", {href: link("cross.html", {a, b})}, a + " \u2194 " + b));
        list.append(item);
        load("cross/" + a + "__" + b).then((cross) => {
          const s = cross.summary;
          item.append(el("span", {class: "muted"},
            ": " + s.a_above["0.9"] + " of " + s.a_latents + " " + a + " latents have a " + b +
            " partner at cosine \u2265 0.9, " + s.a_above["0.7"] + " at \u2265 0.7; " +
            s.mutual + " mutual best pairs"));
        }, fail);
      }
    }
    main.append(el("h2", {}, "Prompt"), el("p", {},
      el("a", {href: "prompt.html"}, "Type text"), " and see which latents fire on each token " +
      "(needs the local server: gated-sae browse --serve --out THIS_FOLDER)."));
  }

  load("site").then(render, fail);
})();
