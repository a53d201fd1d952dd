// prompt.html: type text, and see token by token which latents fire and how strongly. Needs
// the local server (gated-sae browse --serve), which runs the model and the SAEs.
"use strict";
(() => {
  const {el, link, fmt, load, header, fail, shade} = BROWSE;
  const main = document.querySelector("main");

  function render(site) {
    header();
    main.append(el("h1", {}, "Prompt"));
    if (location.protocol === "file:") {
      main.append(el("p", {class: "warn", id: "needs-server"},
        "This page needs the local server, which runs the model: gated-sae browse --serve " +
        "--out THIS_FOLDER, then open the address it prints."));
      return;
    }
    const text = el("textarea", {id: "text", placeholder: "Type text here"});
    const choose = el("select", {id: "sae"},
      site.saes.map((s) => el("option", {value: s.name}, s.name)));
    const status = el("span", {id: "status", class: "muted"});
    const strip = el("div", {id: "strip", class: "context"});
    const tokenLatents = el("div", {id: "token-latents"});
    const latents = el("div", {id: "prompt-latents"});
    let result = null;

    function perLatent(name) {
      // latent -> activation on every token of the prompt
      const acts = new Map();
      result.saes[name].forEach((fired, t) => {
        for (const [i, a] of fired) {
          if (!acts.has(i)) acts.set(i, new Array(result.tokens.length).fill(0));
          acts.get(i)[t] = a;
        }
      });
      return acts;
    }

    function paint(values) {
      const max = values ? Math.max(...values) : 0;
      [...strip.children].forEach((span, t) => {
        span.style.background = values ? shade(values[t], max) : "";
      });
    }

    function showToken(name, t) {
      [...strip.children].forEach((span, k) => span.classList.toggle("chosen", k === t));
      const fired = result.saes[name][t];
      tokenLatents.replaceChildren(el("h3", {}, "Latents on \u201c" + result.text[t] + "\u201d"),
        t < result.skipped
          ? el("p", {class: "muted"}, "not encoded: the site leaves out the first " +
                                      site.skip_positions + " positions of a window")
          : fired.length ? el("table", {}, fired.map(([i, a]) => el("tr", {},
            el("td", {}, el("a", {href: link("latent.html", {s: name, i})}, name + " #" + i)),
            el("td", {class: "num"}, fmt(a)))))
          : el("p", {class: "muted"}, "none fires"));
    }

    function draw() {
      const name = choose.value;
      strip.replaceChildren(...result.text.map((t, k) => {
        const span = el("span", {class: k < result.skipped ? "tok muted" : "tok"},
                        t.replace(/\n/g, "\u21b5"));
        span.addEventListener("click", () => showToken(name, k));
        return span;
      }));
      const acts = [...perLatent(name).entries()]
        .map(([i, values]) => ({i, values, max: Math.max(...values)}))
        .sort((x, y) => y.max - x.max || x.i - y.i);
      const rows = acts.slice(0, 100).map((r) => {
        const row = el("tr", {class: "latent-row"},
          el("td", {}, el("a", {href: link("latent.html", {s: name, i: r.i})}, "#" + r.i)),
          el("td", {class: "num"}, fmt(r.max)),
          el("td", {}, r.values.filter((v) => v > 0).length + " tokens"));
        row.addEventListener("mouseenter", () => paint(r.values));
        row.addEventListener("mouseleave", () => paint(null));
        return row;
      });
      latents.replaceChildren(el("h3", {}, acts.length + " latents fire on this text" +
                                         (acts.length > 100 ? " (strongest 100 shown)" : "")),
        el("table", {}, el("tr", {}, el("th", {}, "latent"), el("th", {}, "max"),
                           el("th", {}, "fires on")), rows));
      tokenLatents.replaceChildren(el("p", {class: "muted"}, "Click a token to list its latents; " +
                                        "hover a latent to shade the text by it."));
    }

    async function encode() {
      status.textContent = "encoding\u2026";
      try {
        const response = await fetch("api/encode", {method: "POST",
          headers: {"Content-Type": "application/json"}, body: JSON.stringify({text: text.value})});
        const body = await response.json();
        if (!response.ok) throw new Error(body.error || response.statusText);
        result = body;
        status.textContent = body.tokens.length + " tokens" +
          (body.truncated ? " (cut to the context size, " + site.context_size + ")" : "");
        draw();
      } catch (e) {
        status.textContent = "";
        status.append(el("span", {class: "error"}, e.message));
      }
    }

    choose.addEventListener("change", () => { if (result) draw(); });
    main.append(text, el("div", {class: "controls"},
      el("button", {id: "encode", onclick: encode}, "encode"), el("label", {}, "SAE ", choose),
      status), strip, el("div", {class: "row"}, el("div", {class: "panel"}, latents),
                         el("div", {class: "panel"}, tokenLatents)));
  }

  load("site").then(render, fail);
})();
