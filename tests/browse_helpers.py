"""What the feature-browser tests share: a corpus the tiny tokenizer reads, sparse SAEs saved
with metadata, and reading the data files of a site back."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from conftest import _SENTENCES, TINY_D_MODEL, save_tiny_model

from gated_sae import create_sae
from gated_sae.browse import BrowseOptions, build_site

SITE = "blocks.1.hook_resid_post"
CTX = 16


def write_corpus(path: Path, sentences: int = 400, seed: int = 0) -> Path:
    """A .txt corpus of the tiny tokenizer's sentences in random order."""
    rng = random.Random(seed)
    path.write_text("\n".join(rng.choice(_SENTENCES) for _ in range(sentences)))
    return path


def save_sparse_sae(path: Path, model_dir: Path, corpus: Path, *, d_sae: int = 48,
                    seed: int = 0, arch: str = "relu", site: str = SITE, **metadata) -> Path:
    """A random SAE whose negative encoder bias makes each latent fire on some tokens only,
    saved with the metadata training would give it (and any `metadata` given)."""
    torch.manual_seed(seed)
    options = {"k": 6} if arch == "topk" else {}
    sae = create_sae(arch, d_in=TINY_D_MODEL, d_sae=d_sae, **options)
    with torch.no_grad():
        sae.W_enc.mul_(1 + torch.rand(d_sae))
        if arch == "relu":
            sae.b_enc.fill_(-1.0)
    return sae.save(path, metadata={"model_name": str(model_dir), "hook_name": site,
                                    "dataset_path": str(corpus), "context_size": CTX,
                                    **metadata})


def read_data(site: Path, key: str):
    """The data a page loads for `key` (data/<key>.js holds `BROWSE.put("key", data);`)."""
    text = (site / "data" / f"{key}.js").read_text(encoding="utf-8")
    prefix = f"BROWSE.put({json.dumps(key)},"
    assert text.startswith(prefix) and text.endswith(");\n")
    return json.loads(text[len(prefix):-3])


def build_tiny_site(root: Path) -> tuple[Path, list[Path], Path]:
    """A site of two SAEs (relu with 48 latents, topk with 64) on the tiny llama model and a
    small corpus, in `root/site`: returns (root, the SAE folders, the index page)."""
    model_dir = save_tiny_model("llama", root / "model")
    corpus = write_corpus(root / "corpus.txt")
    dirs = [save_sparse_sae(root / "saes" / "relu", model_dir, corpus),
            save_sparse_sae(root / "saes" / "topk", model_dir, corpus, d_sae=64, seed=1,
                            arch="topk")]
    options = BrowseOptions(tokens=1200, batch_size=7, top=6, random=5, before=5, after=2)
    index = build_site(dirs, root / "site", options=options, progress=False)
    return root, dirs, index
