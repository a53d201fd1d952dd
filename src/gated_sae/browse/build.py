"""`build_site`: SAE folders in, a static feature-browser site out.

One pass of the model over the corpus feeds every SAE (collect.py); the decoder rows give
logit effects and neighbours (directions.py); site.py writes the data the pages load. The
site is written to a temporary folder beside `out` and renamed into place, so `out` is
either the old site or the whole new one.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import corpus
from ..data.lm import LanguageModel, load_model
from ..errors import ConfigError, DataError, GatedSAEError
from ..files import umask_mode
from ..saes import SAE, load_sae
from ..saes.base import replace_dir
from . import site as data
from .collect import BINS_PER_OCTAVE, LOG2_LOW, LatentStats, collect
from .directions import logit_effects, match_summary, nearest, unembedding, unit_rows

MANIFEST = "site.json"


@dataclass
class BrowseOptions:
    """How much the browser gathers. `tokens` are read from the corpus (in windows of
    `context_size`, default the SAEs' metadata context_size, else 128 or the model's context
    length if shorter), past the first `skip_positions` of each (default the SAEs' metadata
    skip_positions, else 1: BOS), which count nowhere; `top` contexts and
    `random` uniformly sampled ones per latent, each `before` + 1 + `after` tokens wide;
    `neighbours` nearest latents per SAE; `logits` promoted and suppressed tokens; a latent
    firing on at least a `dense` fraction of tokens is marked dense."""

    tokens: int = 200_000
    context_size: int | None = None
    skip_positions: int | None = None
    batch_size: int = 32
    top: int = 20
    random: int = 20
    before: int = 16
    after: int = 4
    neighbours: int = 8
    logits: int = 10
    dense: float = 0.1
    seed: int = 0

    def sampling(self) -> dict:
        """The options of the pass itself (collect's LatentStats options)."""
        return {k: getattr(self, k) for k in ("top", "random", "before", "after", "seed")}

    def check(self) -> None:
        for name in ("tokens", "batch_size", "top", "neighbours", "logits"):
            _check_int(name, getattr(self, name), 1)
        for name in ("random", "before", "after", "seed"):
            _check_int(name, getattr(self, name), 0)
        if self.context_size is not None:
            corpus.check_context_size(self.context_size)
        if self.skip_positions is not None:
            _check_int("skip_positions", self.skip_positions, 0)
        if not isinstance(self.dense, int | float) or not 0 < self.dense <= 1:
            raise ConfigError(f"dense {self.dense!r} is not accepted; accepted: a fraction in "
                              "(0, 1]")


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} {value!r} is not accepted; accepted: an integer >= {low}")


def sae_names(sae_dirs: list[Path]) -> list[str]:
    """A short distinct name per SAE folder: its own name, or parent-name where two clash,
    with characters other than letters, digits, '.', '_' and '-' replaced by '_'."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "sae"

    own = [clean(p.name) for p in sae_dirs]
    names = [clean(f"{p.parent.name}-{p.name}") if own.count(name) > 1 else name
             for p, name in zip(sae_dirs, own, strict=True)]
    if len(set(names)) < len(names):
        names = [f"{name}-{k}" for k, name in enumerate(names)]
    return names


def sae_metadata(sae_dir: Path) -> dict:
    """The `metadata` of an SAE folder's cfg.json (call after load_sae has checked it)."""
    metadata = json.loads((sae_dir / "cfg.json").read_text()).get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _agreed(metadata: dict[str, dict], key: str, flag: str, default=None):
    """The value all SAEs' metadata give `key` (`default` for one that records none), None if
    none gives one; ConfigError if they disagree (the flag overrides it)."""
    values = {name: m.get(key, default) for name, m in metadata.items()
              if m.get(key, default) is not None}
    if len(set(map(str, values.values()))) > 1:
        listed = ", ".join(f"{name}: {value}" for name, value in values.items())
        raise ConfigError(f"the SAEs record different {key} ({listed}); choose one with {flag}")
    return next(iter(values.values()), None)


def _readable_dataset(dataset) -> str | None:
    try:
        corpus.check_dataset(dataset)
    except GatedSAEError:  # an activations file, or a corpus on another machine
        return None
    return dataset


def check_out(out: Path) -> None:
    """Refuse an `out` that is a file, or a non-empty folder that is not a browser site."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / MANIFEST).is_file())):
        raise ConfigError(f"--out {out} exists and is not a feature-browser site; give a new "
                          "folder, or a site written before to replace it")


def _batches(lm: LanguageModel, dataset: str, context_size: int, n_windows: int,
             batch_size: int, text_field: str) -> Iterator[torch.Tensor]:
    stream = itertools.islice(
        corpus.iter_windows(lm.tokenizer, dataset, context_size=context_size,
                            text_field=text_field, bos_token_id=lm.bos_token_id), n_windows)
    while batch := list(itertools.islice(stream, batch_size)):
        yield torch.tensor(batch, dtype=torch.long)


def build_site(
    sae_dirs: list[str | Path],
    out: str | Path,
    *,
    model: str | None = None,
    site: str | None = None,
    dataset: str | None = None,
    lm: LanguageModel | None = None,
    text_field: str = "text",
    device: str = "cpu",
    model_dtype: str | None = None,
    options: BrowseOptions | None = None,
    progress: bool = True,
) -> Path:
    """Write the feature browser of the SAEs in `sae_dirs` to `out`; return its index.html.

    `model`, `site` and `dataset` default to what the SAEs' metadata records (the dataset
    to builtin:python-docs when that is not a corpus we can read). Pass a loaded `lm` to
    reuse it; `model` then only labels the site.
    """
    options = options or BrowseOptions()
    options.check()
    out = Path(out)
    check_out(out)
    if not sae_dirs:
        raise ConfigError("browse needs at least one SAE folder")
    dirs = [Path(p) for p in sae_dirs]
    saes = {name: load_sae(path, device=device)
            for name, path in zip(sae_names(dirs), dirs, strict=True)}
    metadata = {name: sae_metadata(path) for name, path in zip(saes, dirs, strict=True)}
    model = model or (lm.name if lm is not None else _agreed(metadata, "model_name", "--model"))
    site = site or _agreed(metadata, "hook_name", "--site")
    if not model or not site:
        missing, flag = ("model_name", "--model") if not model else ("hook_name", "--site")
        raise ConfigError(f"the SAE metadata records no {missing}; give {flag}")
    dataset = dataset or _readable_dataset(_agreed(metadata, "dataset_path", "--dataset")) \
        or corpus.DEFAULT_DATASET
    corpus.check_dataset(dataset)
    context_size = options.context_size or _agreed(metadata, "context_size", "--context-size")
    if context_size is not None:
        corpus.check_context_size(context_size)
    skip = options.skip_positions
    if skip is None:
        skip = _agreed(metadata, "skip_positions", "--skip-positions", default=1)
    if context_size is not None:
        corpus.check_skip_positions(skip, context_size)
    lm = lm or load_model(model, device=device, dtype=model_dtype)
    context_size = context_size or min(128, lm.n_ctx or 128)
    corpus.check_context_size(context_size, lm.n_ctx)
    corpus.check_skip_positions(skip, context_size)

    bos = corpus.special_token_ids(lm.tokenizer, lm.bos_token_id)[0]
    width = lm.activations(torch.tensor([[bos, bos]]), site).shape[-1]  # checks the site too
    for name, sae in saes.items():
        if sae.d_in != width:
            raise DataError(f"site {site!r} of {model} has width {width}, but SAE {name} "
                            f"expects d_in {sae.d_in}")
    n_windows = corpus.windows_for_tokens(options.tokens, context_size)
    batches = _batches(lm, dataset, context_size, n_windows, options.batch_size, text_field)
    stats = collect(lm, saes, site, batches, context_size=context_size, skip_positions=skip,
                    n_tokens=n_windows * context_size, progress=progress, **options.sampling())
    n_tokens = next(iter(stats.values())).n_tokens
    if n_tokens == 0:
        raise DataError(f"dataset {dataset!r} has too little text for one window of "
                        f"{context_size} tokens")
    manifest = new_manifest(model, site, dataset, context_size, skip, n_tokens, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write(tmp, lm, saes, dirs, {k: s.finished() for k, s in stats.items()}, manifest,
               options)
        tmp.chmod(umask_mode(0o777))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"


def new_manifest(model: str, site: str, dataset: str, context_size: int, skip_positions: int,
                 n_tokens: int, options: BrowseOptions) -> dict:
    """What a site was built from; `_write` adds its SAEs and pairs."""
    return {
        "model": model, "site": site, "dataset": corpus.describe_dataset(dataset),
        "context_size": context_size, "skip_positions": skip_positions, "tokens": n_tokens,
        "windows": n_tokens // (context_size - skip_positions),
        "tokens_requested": options.tokens,
        "options": asdict(options),
        "histogram": {"log2_low": LOG2_LOW, "bins_per_octave": BINS_PER_OCTAVE},
        "saes": [], "pairs": [],
    }


def _write(root: Path, lm: LanguageModel, saes: dict[str, SAE], dirs: list[Path],
           stats: dict[str, LatentStats], manifest: dict, options: BrowseOptions) -> None:
    """Write the pages and the data of a site into `root`."""
    data.write_pages(root)
    unembed = unembedding(lm)
    manifest["logits"] = unembed is not None
    units = {name: unit_rows(sae.W_dec) for name, sae in saes.items()}
    near = {name: {other: nearest(units[name], units[other], options.neighbours,
                                  same=other == name) for other in saes} for name in saes}
    token_ids: set[int] = set()
    for (name, sae), path in zip(saes.items(), dirs, strict=True):
        s = stats[name]
        effects = logit_effects(sae.W_dec, *unembed, options.logits) if unembed else None
        contexts = {"top": data.Contexts(s.top, s), "random": data.Contexts(s.random, s)}
        for latent in range(sae.d_sae):
            record = data.latent_record(name, latent, s, contexts, effects, near[name])
            data.write_js(root, f"{name}/latents/{latent}", record)
            for context in record["top"] + record["random"]:
                token_ids.update(context[3])
            token_ids.update(i for i, _ in record.get("up", []) + record.get("down", []))
        data.write_js(root, f"{name}/index",
                      data.index_columns(name, s, effects, options.dense))
        manifest["saes"].append({
            "name": name, "path": str(path.resolve()), "architecture": sae.architecture,
            "d_sae": sae.d_sae, "d_in": sae.d_in, "l0": data.sig([s.fired.sum() / s.n_tokens])[0],
            "dead": int((s.fired == 0).sum()),
            "dense": int((s.fired >= options.dense * s.n_tokens).sum()),
        })
    names = list(saes)
    for k, a in enumerate(names):
        for b in names[k + 1:]:
            ab, ba = near[a][b], near[b][a]
            record = data.cross_record(a, b, ab, ba, match_summary(*ab, *ba))
            data.write_js(root, f"cross/{a}__{b}", record)
            manifest["pairs"].append([a, b])
    data.write_js(root, "vocab", data.vocabulary(lm.tokenizer, sorted(token_ids)))
    data.write_js(root, "site", manifest)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def site_pages(out: str | Path) -> dict[str, str]:
    """Links (relative to `out`) to a site's pages: "home", and each SAE's latent table by
    its name; for a report to point to. DataError if `out` holds no site."""
    manifest = read_manifest(out)
    return {"home": "index.html",
            **{s["name"]: f"sae.html#s={s['name']}" for s in manifest["saes"]}}


def read_manifest(out: str | Path) -> dict:
    path = Path(out) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"{out} is not a feature-browser site (no readable {MANIFEST}); "
                        "write one with gated-sae browse SAE_DIR --out DIR") from None
