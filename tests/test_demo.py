"""The demo's feature browser on the tiny model: the report links to pages that exist, and a
rerun keeps a site built from the same SAEs with the same options."""

from __future__ import annotations

import re

import pytest
from browse_helpers import save_sparse_sae, write_corpus
from conftest import save_tiny_model

from gated_sae.browse.build import read_manifest
from gated_sae.data.lm import load_model
from gated_sae.experiments.demo import _browse, _browse_links

pytestmark = pytest.mark.usefixtures("single_thread")


def test_demo_browser_links_and_rerun(tmp_path):
    model_dir = save_tiny_model("llama", tmp_path / "model")
    corpus = write_corpus(tmp_path / "corpus.txt")
    dirs = [save_sparse_sae(tmp_path / "saes" / "relu", model_dir, corpus, skip_positions=2),
            save_sparse_sae(tmp_path / "saes" / "topk", model_dir, corpus, d_sae=64, seed=1,
                            arch="topk", skip_positions=2)]
    lm = load_model(str(model_dir))
    site = _browse(lm, dirs, tmp_path / "browse", 200)
    assert read_manifest(site)["skip_positions"] == 2

    text = _browse_links(site, tmp_path)
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links == ["browse/index.html", "browse/sae.html#s=relu", "browse/sae.html#s=topk"]
    assert all((tmp_path / link.split("#")[0]).is_file() for link in links)
    assert f"over {read_manifest(site)['tokens']:,} tokens" in text

    built = (site / "site.json").stat().st_ino
    assert _browse(lm, dirs, site, 200) == site
    assert (site / "site.json").stat().st_ino == built  # the same site: kept
    _browse(lm, dirs, site, 300)
    assert (site / "site.json").stat().st_ino != built  # other options: rebuilt
    assert read_manifest(site)["tokens_requested"] == 300
    _browse(lm, dirs[:1], site, 300)
    assert [s["name"] for s in read_manifest(site)["saes"]] == ["relu"]  # other SAEs: rebuilt
