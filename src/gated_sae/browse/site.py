"""The browser's data files: what the pages load, in compact JSON wrapped as scripts.

Pages load data with `<script src>` rather than `fetch`, because browsers refuse `fetch` of
`file://` URLs; each data file is one call `BROWSE.put("key", {...});`. Layout of a site:

    index.html sae.html latent.html cross.html prompt.html   the pages (see PAGES)
    static/                                                  their scripts and style sheet
    site.json                                                the manifest (plain JSON)
    data/site.js     the manifest, for the pages
    data/vocab.js    {id: text} for every token id the data mentions
    data/<sae>/index.js          one row per latent, columns as arrays
    data/<sae>/latents/<i>.js    one latent: histogram, contexts, logit effects, neighbours
    data/cross/<a>__<b>.js       the best partners of a's latents in b and of b's in a

A context is `[window, t, start, tokens, acts]` (+ its quantile `q` for random samples):
window `window` of the stream, the firing at position `t` of the window, and the tokens of
positions `start, start + 1, …` with the latent's activation on each. Activations are the
float32 values the SAE computed, written as the shortest decimal that reads back as the same
float32; other statistics are rounded to four significant digits.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from .collect import LatentStats, Samples, histogram_bins

SNIPPET = (8, 3)  # tokens before and after the top firing that the index's search sees
# The pages: file name -> (title, its script in static/). Each is the same shell around a
# script; the manifest and the vocabulary load first, with the page.
PAGES = {"index": ("Feature browser", "home"), "sae": ("Latents", "sae"),
         "latent": ("Latent", "latent"), "cross": ("Across SAEs", "cross"),
         "prompt": ("Prompt", "prompt")}
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} \u00b7 gated-sae</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/browse.css">
<script src="static/common.js"></script>
<script src="data/site.js"></script>
<script src="data/vocab.js"></script>
</head>
<body>
<main></main>
<script src="static/{script}.js"></script>
</body>
</html>
"""


def write_pages(root: Path) -> None:
    """The HTML pages, and their scripts and style sheet in `root/static`."""
    static = files("gated_sae.browse") / "static"
    (root / "static").mkdir()
    for item in static.iterdir():
        (root / "static" / item.name).write_bytes(item.read_bytes())
    for name, (title, script) in PAGES.items():
        (root / f"{name}.html").write_text(_PAGE.format(title=title, script=script),
                                           encoding="utf-8")


def f32(values) -> list:
    """Float32 values as the shortest decimals that read back as the same float32."""
    return [float(s) for s in np.asarray(values, dtype=np.float32).astype(str)]


def sig(values, digits: int = 4) -> list:
    """Values rounded to `digits` significant digits."""
    return [float(f"{x:.{digits}g}") for x in np.asarray(values, dtype=np.float64).tolist()]


def write_js(root: Path, key: str, data) -> None:
    """Write `data` to `root/data/<key>.js` as a script that hands it to the page:
    `BROWSE.put(key, data);` (pages load a key from that path)."""
    path = root / "data" / f"{key}.js"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    path.write_text(f"BROWSE.put({json.dumps(key)},{text});\n", encoding="utf-8")


class Contexts:
    """One SAE's samples as contexts (see the module docstring), converted for all latents at
    once: writing a site calls `of` for every latent."""

    def __init__(self, samples: Samples, stats: LatentStats):
        self.context_size, self.before = stats.context_size, stats.before
        self.position = samples.position.tolist()
        self.tokens = samples.tokens.tolist()
        # numpy prints a float32 as the shortest decimal that reads back as the same float32
        self.acts = samples.acts.numpy().astype(np.float32).astype(str).tolist()

    def of(self, latent: int) -> list[list]:
        """The latent's held samples, best first."""
        out = []
        for position, tokens, acts in zip(self.position[latent], self.tokens[latent],
                                          self.acts[latent], strict=True):
            if position < 0:
                break
            inside = [k for k, token in enumerate(tokens) if token >= 0]
            lo, hi = inside[0], inside[-1] + 1
            t = position % self.context_size
            out.append([position // self.context_size, t, t - self.before + lo, tokens[lo:hi],
                        [0 if a == "0.0" else float(a) for a in acts[lo:hi]]])
        return out


def _quantiles(stats: LatentStats, latent: int, values: torch.Tensor) -> list[float]:
    """Where each value lies in the latent's distribution of nonzero activations, from the
    histogram: the fraction of firings in lower bins plus half of those in its own bin."""
    counts = stats.histogram[latent].double()
    below = torch.cumsum(counts, 0) - counts
    bins = histogram_bins(values)
    q = (below[bins] + counts[bins] / 2) / counts.sum().clamp_min(1)
    return sig(q, 3)


def latent_record(name: str, latent: int, stats: LatentStats, contexts: dict[str, Contexts],
                  effects: dict | None,
                  near: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Everything the latent page shows about one latent; `contexts` holds the SAE's "top"
    and "random" samples."""
    fired = int(stats.fired[latent])
    counts = stats.histogram[latent]
    used = counts.nonzero().squeeze(1)
    record = {
        "sae": name, "i": latent, "fired": fired, "freq": sig([fired / stats.n_tokens])[0],
        "max": f32([stats.top.value[latent, 0]])[0] if fired else 0,
        "mean": sig([stats.total[latent] / max(fired, 1)])[0],
        "hist": [int(used[0]), counts[used[0]:used[-1] + 1].tolist()] if fired else [0, []],
        "top": contexts["top"].of(latent),
        "random": [],
        "near": {other: [[int(i), c] for i, c in zip(ids[latent].tolist(), sig(cos[latent]),
                                                     strict=True)]
                 for other, (ids, cos) in near.items()},
    }
    random = contexts["random"].of(latent)
    if random:
        values = stats.random.value[latent, :len(random)]
        quantiles = _quantiles(stats, latent, values)
        order = torch.argsort(values, descending=True, stable=True).tolist()
        record["random"] = [[*random[k], quantiles[k]] for k in order]
    if effects is not None:
        for key in ("up", "down"):
            record[key] = [[int(i), v] for i, v in zip(effects[f"{key}_ids"][latent].tolist(),
                                                       sig(effects[key][latent]), strict=True)]
    return record


def index_columns(name: str, stats: LatentStats, effects: dict | None, dense: float) -> dict:
    """The per-SAE table: one entry per latent in each column."""
    d = stats.d_sae
    freq = (stats.fired.double() / stats.n_tokens)
    top_token, tokens, snippets = [], [], []
    centre = stats.before
    for latent in range(d):
        held = stats.top.position[latent] >= 0
        firing = stats.top.tokens[latent, held, centre].tolist()
        counts = Counter(firing)
        top_token.append(max(firing, key=lambda t: counts[t]) if firing else -1)
        tokens.append(list(dict.fromkeys(firing))[:5])
        span = stats.top.tokens[latent, 0, max(0, centre - SNIPPET[0]):centre + SNIPPET[1] + 1]
        snippets.append([t for t in span.tolist() if t >= 0] if firing else [])
    columns = {
        "sae": name, "freq": sig(freq), "max": sig(stats.top.value[:, 0]),
        "dead": (stats.fired == 0).nonzero().squeeze(1).tolist(),
        "dense": (freq >= dense).nonzero().squeeze(1).tolist(),
        "top": top_token, "tokens": tokens, "snippet": snippets,
    }
    if effects is not None:
        columns["up"] = effects["up_ids"][:, :3].tolist()
    return columns


def cross_record(a: str, b: str, ab: tuple, ba: tuple, summary: dict, n: int = 3) -> dict:
    """The matching of two SAEs' latents: each latent's `n` best partners on the other side."""
    return {
        "a": a, "b": b, "summary": summary,
        "ab": [ab[0][:, :n].tolist(), [sig(row) for row in ab[1][:, :n]]],
        "ba": [ba[0][:, :n].tolist(), [sig(row) for row in ba[1][:, :n]]],
    }


def vocabulary(tokenizer, ids: list[int]) -> dict[str, str]:
    """`{id: text}` of each token id as the tokenizer decodes it alone."""
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return {str(i): text for i, text in zip(ids, texts, strict=True)}
