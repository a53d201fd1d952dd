// cross.html#a=A&b=B: two SAEs' latents matched by decoder cosine. Each latent's best partner
// on the other side, how many pair up above 0.9 / 0.7 / 0.5, and per pair both latents'
// contexts side by side.
"use strict";
(() => {
  const {el, link, fmt, pct, load, params, tokenBox, context, header, fail} = BROWSE;
  const main = document.querySelector("main");
  const PAGE = 50;

  function summaryTable(cross) {
    const s = cross.summary;
    const thresholds = Object.keys(s.a_above);
    const row = (label, counts, total) => el("tr", {}, el("td", {}, label),
      thresholds.map((t) => el("td", {class: "num"},
        counts[t] + " (" + (100 * counts[t] / total).toFixed(1) + "%)")));
    return el("table", {id: "summary"},
      el("tr", {}, el("th", {}, "latents with a partner at cosine \u2265"),
         thresholds.map((t) => el("th", {}, t))),
      row(cross.a + " \u2192 " + cross.b + " (of " + s.a_latents + ")", s.a_above, s.a_latents),
      row(cross.b + " \u2192 " + cross.a + " (of " + s.b_latents + ")", s.b_above, s.b_latents),
      row("mutual best pairs (" + s.mutual + " in all)", s.mutual_above, s.a_latents));
  }

  function cosineHistogram(cosines) {
    const bars = Array.from({length: 20}, (_, k) => ({
      count: 0, label: (k / 20).toFixed(2) + " \u2013 " + ((k + 1) / 20).toFixed(2),
      tick: (k / 20).toFixed(1)}));
    for (const c of cosines) bars[Math.min(19, Math.max(0, Math.floor(c * 20)))].count += 1;
    return BROWSE.histogram(bars, {every: 4, xlabel: "best partner's decoder cosine"});
  }

  // One latent's column of the side-by-side view.
  function latentPanel(sae, record) {
    const panel = el("div", {class: "panel"},
      el("h3", {}, el("a", {href: link("latent.html", {s: sae, i: record.i})},
                      sae + " #" + record.i)),
      el("p", {class: "muted"}, "fires on " + pct(record.freq) + ", max " + fmt(record.max)));
    if (record.up) {
      panel.append(el("p", {}, "promotes ", record.up.slice(0, 5).map(([id]) => tokenBox(id))));
    }
    panel.append(...record.top.slice(0, 6).map((c) => context(c, record.max,
                                                          fmt(c[4][c[1] - c[2]], 4))));
    return panel;
  }

  function render(site, cross) {
    header();
    const {a, b} = cross;
    main.append(el("h1", {}, a + " \u2194 " + b),
      el("p", {class: "muted"}, "Each latent's best partner is the latent of the other SAE " +
         "whose decoder row has the largest cosine with its own."),
      summaryTable(cross));

    let direction = "ab";
    let page = 0;
    const hist = el("div", {id: "cosines"});
    const body = el("tbody");
    const table = el("table", {class: "pairs", id: "pairs"}, el("thead"), body);
    const minimum = el("input", {type: "number", id: "min-cos", value: "0", step: "0.05",
                                 min: "-1", max: "1"});
    const pager = el("span", {id: "pager"});
    const flip = el("button", {id: "flip"});

    function sides() {
      return direction === "ab" ? [a, b, cross.ab, cross.ba] : [b, a, cross.ba, cross.ab];
    }

    function draw() {
      const [from, to, forward, backward] = sides();
      flip.textContent = "show " + to + " \u2192 " + from;
      hist.replaceChildren(cosineHistogram(forward[1].map((c) => c[0])));
      table.tHead.replaceChildren(el("tr", {}, ["", from, to + " (best)", "cosine",
                                                 "next partners"].map((t) => el("th", {}, t))));
      const threshold = minimum.value === "" ? -1 : Number(minimum.value);
      const order = forward[0].map((_, i) => i).filter((i) => forward[1][i][0] >= threshold)
        .sort((x, y) => forward[1][y][0] - forward[1][x][0] || x - y);
      const pages = Math.max(1, Math.ceil(order.length / PAGE));
      page = Math.min(page, pages - 1);
      pager.replaceChildren(
        el("button", {onclick: () => { page = Math.max(0, page - 1); draw(); }}, "\u2190"),
        " page " + (page + 1) + " of " + pages + " (" + order.length + " latents) ",
        el("button", {onclick: () => { page = Math.min(pages - 1, page + 1); draw(); }}, "\u2192"));
      body.replaceChildren();
      for (const i of order.slice(page * PAGE, (page + 1) * PAGE)) {
        const [ids, cos] = [forward[0][i], forward[1][i]];
        const mutual = backward[0][ids[0]][0] === i;
        const detail = el("tr", {hidden: ""}, el("td", {colspan: 5, class: "detail"}));
        const button = el("button", {class: "show", onclick: () => toggle(detail, from, i, to, ids[0])},
                          "contexts");
        body.append(el("tr", {},
          el("td", {}, button),
          el("td", {}, el("a", {href: link("latent.html", {s: from, i})}, "#" + i)),
          el("td", {}, el("a", {href: link("latent.html", {s: to, i: ids[0]})}, "#" + ids[0]),
             mutual ? el("span", {class: "flag mutual"}, "mutual") : null),
          el("td", {class: "num"}, fmt(cos[0], 3)),
          el("td", {}, ids.slice(1).map((j, k) => [el("a", {href: link("latent.html", {s: to, i: j})},
                                                     "#" + j), " (" + fmt(cos[k + 1], 3) + ") "]))),
          detail);
      }
    }

    function toggle(detail, from, i, to, j) {
      if (!detail.hidden) {
        detail.hidden = true;
        return;
      }
      detail.hidden = false;
      const cell = detail.firstChild;
      cell.replaceChildren(el("span", {class: "muted"}, "loading\u2026"));
      Promise.all([load(from + "/latents/" + i), load(to + "/latents/" + j)])
        .then(([x, y]) => cell.replaceChildren(el("div", {class: "row"},
          latentPanel(from, x), latentPanel(to, y))))
        .catch((e) => cell.replaceChildren(el("span", {class: "error"}, e.message)));
    }

    flip.addEventListener("click", () => { direction = direction === "ab" ? "ba" : "ab"; page = 0; draw(); });
    minimum.addEventListener("change", () => { page = 0; draw(); });
    main.append(el("h2", {}, "Best partners"), hist,
      el("div", {class: "controls"}, flip, el("label", {}, "cosine \u2265 ", minimum), pager),
      table);
    draw();
  }

  const {a, b} = params();
  Promise.all([load("site"), load("cross/" + a + "__" + b)])
    .then(([site, cross]) => render(site, cross))
    .catch((e) => { header(); fail(e); });
})();
