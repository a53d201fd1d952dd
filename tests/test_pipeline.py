"""The evaluation pipeline against its parts computed one SAE at a time: held-out windows of
the source, activation and LM metrics of many SAEs at once, and stored activations."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _SENTENCES, TINY_N_CTX, save_tiny_model

from gated_sae import create_sae
from gated_sae.data.cache import build_cache, load_cache
from gated_sae.data.corpus import token_windows
from gated_sae.data.lm import load_model
from gated_sae.data.source import ActivationSource
from gated_sae.errors import ConfigError, DataError
from gated_sae.evaluate.heldout import metrics_from_totals
from gated_sae.evaluate.lm_metrics import lm_metrics
from gated_sae.evaluate.metrics import activation_metrics
from gated_sae.evaluate.pipeline import (
    evaluate_saes,
    evaluate_stored,
    heldout_windows,
    site_activations,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SITE = "blocks.1.hook_resid_post"
CTX = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_SENTENCES * 100))
    lm = load_model(str(save_tiny_model("gpt2", root / "model")))
    torch.manual_seed(0)
    saes = {"relu": create_sae("relu", d_in=lm.d_model, d_sae=48),
            "topk": create_sae("topk", d_in=lm.d_model, d_sae=48, k=4)}
    for sae in saes.values():  # away from the initialisation's zero biases
        for p in sae.parameters():
            p.data += 0.05 * torch.randn_like(p)
    return lm, corpus, saes

LM_KEYS = ("ce_clean", "ce_zero", "ce_sae", "kl", "lm_predictions")


def test_heldout_windows_are_the_sources_heldout_split(setup):
    lm, corpus, _ = setup
    source = ActivationSource(lm.name, SITE, str(corpus), CTX)
    expected = token_windows(lm.tokenizer, str(corpus), context_size=CTX, n_windows=5,
                             split="heldout", bos_token_id=lm.bos_token_id)
    assert torch.equal(heldout_windows(lm, source, n_windows=5), expected)
    assert len(heldout_windows(lm, source, n_tokens=3 * CTX + 1)) == 4
    too_long = ActivationSource(lm.name, SITE, str(corpus), TINY_N_CTX + 1)
    with pytest.raises(ConfigError, match=f"larger than the model's context length {TINY_N_CTX}"):
        heldout_windows(lm, too_long, n_windows=1)


def test_many_saes_get_the_metrics_each_would_get_alone(setup):
    lm, corpus, saes = setup
    windows = heldout_windows(lm, ActivationSource(lm.name, SITE, str(corpus), CTX), n_windows=7)
    got = evaluate_saes(lm, saes, SITE, windows, lm_batch_size=3, sae_batch_size=20)
    acts = lm.activations(windows, SITE)[:, 1:].reshape(-1, lm.d_model)
    # Other batch shapes round differently in float32: equal to float32 precision.
    for name, sae in saes.items():
        alone = activation_metrics(sae, acts)
        alone.pop("feature_density")
        spliced = lm_metrics(lm, sae, SITE, windows)
        assert set(got[name]) == (
            set(alone) | set(spliced) - {"n_tokens"} | {"lm_n_tokens", "gamma_centred"}
        )
        for key, value in alone.items():
            assert got[name][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        for key in ("ce_clean", "ce_sae", "ce_zero", "loss_recovered", "delta_loss", "kl"):
            assert got[name][key] == pytest.approx(spliced[key], rel=1e-6), key
        assert got[name]["n_tokens"] == 7 * (CTX - 1)
        assert got[name]["lm_n_tokens"] == spliced["n_tokens"] == 7 * (CTX - 2)
    assert got["relu"]["ce_sae"] != got["topk"]["ce_sae"]


def test_window_sums_give_the_metrics_on_any_multiset_of_windows(setup):
    lm, corpus, saes = setup
    windows = heldout_windows(lm, ActivationSource(lm.name, SITE, str(corpus), CTX), n_windows=6)
    got = evaluate_saes(lm, saes, SITE, windows, lm_windows=4, per_window=True,
                        sae_batch_size=2 * CTX)
    acts = lm.activations(windows, SITE)[:, 1:].double()
    mu = acts.flatten(0, 1).mean(0)
    pick = [0, 0, 3, 5, 2]  # a bootstrap-like multiset of windows, LM ones among the first 4
    for name, sae in saes.items():
        sums = got[name]["windows"]
        assert got[name]["n_tokens"] == 6 * (CTX - 1) and got[name]["lm_n_tokens"] == 4 * (CTX - 2)
        # the whole-set metrics are the sums over every window
        whole = metrics_from_totals({k: np.sum(v) for k, v in sums.items()})
        for key, value in whole.items():
            assert got[name][key] == pytest.approx(value, rel=1e-12), key
        # ... and any multiset of windows gives the float64 metrics of those windows' tokens
        x = acts[pick].flatten(0, 1)
        with torch.no_grad():
            x_hat = sae.decode(sae.encode(x.float())).double()
        picked = metrics_from_totals({k: (v if k == "mu_sq" else v[pick].sum())
                                      for k, v in sums.items() if k not in LM_KEYS})
        assert picked["fvu"] == pytest.approx(
            float((x - x_hat).pow(2).sum() / (x - mu).pow(2).sum()), rel=1e-6)
        assert picked["gamma"] == pytest.approx(
            float(x_hat.pow(2).sum() / (x * x_hat).sum()), rel=1e-6)
        assert picked["gamma_centred"] == pytest.approx(
            float((x_hat - mu).pow(2).sum() / ((x - mu) * (x_hat - mu)).sum()), rel=1e-6)
        lm_pick = [1, 3, 3]
        alone = lm_metrics(lm, sae, SITE, windows[lm_pick])
        lm_sums = metrics_from_totals({k: sums[k][lm_pick].sum() for k in LM_KEYS})
        for key in ("loss_recovered", "delta_loss"):
            assert lm_sums[key] == pytest.approx(alone[key], rel=1e-6), key
    with pytest.raises(ConfigError, match="lm_windows must be a positive integer"):
        evaluate_saes(lm, saes, SITE, windows, lm_windows=0)
    # activations kept by the caller give the same numbers; others are refused
    acts = site_activations(lm, SITE, windows, skip_positions=2)
    kept = evaluate_saes(lm, saes, SITE, windows, skip_positions=2, acts=acts)
    assert kept == evaluate_saes(lm, saes, SITE, windows, skip_positions=2)
    with pytest.raises(ConfigError, match="not the site's activations"):
        evaluate_saes(lm, saes, SITE, windows, acts=acts)


def test_stored_activations_of_a_file_and_of_a_cache(setup, tmp_path):
    lm, corpus, saes = setup
    sae = saes["relu"]
    cache = build_cache(lm, SITE, str(corpus), n_tokens=30 * CTX, out=tmp_path / "cache",
                        context_size=CTX, progress=False)
    rows = load_cache(cache).activations[:][:, 1:].reshape(-1, lm.d_model).float()
    for tokens in (None, 100):
        expected = activation_metrics(sae, rows[:tokens])
        got = evaluate_stored(sae, cache, tokens=tokens, batch_size=25)
        assert got["n_tokens"] == len(rows[:tokens]) and "feature_density" not in got
        for key in ("l0", "fvu", "gamma", "dead_fraction"):
            assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    file = tmp_path / "acts.npy"
    np.save(file, rows.numpy())
    assert evaluate_stored(sae, file, tokens=100)["l0"] == pytest.approx(
        activation_metrics(sae, rows[:100])["l0"])
    with pytest.raises(DataError, match=f"tokens 1000 is more than the {len(rows)}"):
        evaluate_stored(sae, file, tokens=1000)
    with pytest.raises(DataError, match="has d_in 32, but the SAE expects 16"):
        evaluate_stored(create_sae("relu", d_in=16, d_sae=8), Path(cache))
