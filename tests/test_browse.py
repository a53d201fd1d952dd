"""The feature browser's numbers against independent computations: the streaming top-k and
reservoir against brute force, the whole pass against one forward over all windows, the
site's activations against a recomputation with the saved SAE, logit effects against the
final norm written out by family, neighbours against the full cosine matrix."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from browse_helpers import CTX, SITE, build_tiny_site, read_data, save_sparse_sae
from conftest import TINY_VOCAB

from gated_sae import ConfigError, DataError, create_sae, load_sae
from gated_sae.browse import BrowseOptions, build_site, make_server, site_pages
from gated_sae.browse.collect import Samples, bin_edges, collect
from gated_sae.browse.directions import (
    logit_effects,
    match_summary,
    nearest,
    norm_linear_map,
    unembedding,
    unit_rows,
)
from gated_sae.cli import main
from gated_sae.data.corpus import token_windows
from gated_sae.data.lm import load_model

pytestmark = pytest.mark.usefixtures("single_thread")


# --- the streaming samples ------------------------------------------------------------------


def offer_stream(samples: Samples, latents, scores, chunks) -> None:
    """Offer candidates chunk by chunk; a candidate's position is its index in the stream,
    and its span records that index, so a test can see spans travel with their samples."""
    start = 0
    for size in chunks:
        lat, score = latents[start : start + size], scores[start : start + size]
        first = start

        def describe(index, score=score, first=first):
            position = first + index
            span = samples.tokens.shape[2]
            return (
                score[index],
                position,
                position[:, None].int().expand(-1, span),
                score[index, None].expand(-1, span),
            )

        samples.offer(lat, score, describe)
        start += size


def test_streamed_top_k_is_the_top_k_with_ties_to_earlier_candidates():
    g = torch.Generator().manual_seed(0)
    d, size, n = 7, 5, 400
    latents = torch.randint(0, d, (n,), generator=g)
    scores = torch.randint(0, 30, (n,), generator=g).float() / 10  # many ties
    samples = Samples.empty(d, size, 3, torch.device("cpu"))
    offer_stream(samples, latents, scores, [13, 1, 50, 0, 97, 239])
    ordered = samples.in_order()
    for latent in range(d):
        mine = (latents == latent).nonzero().squeeze(1).tolist()
        expected = sorted(mine, key=lambda p: (-scores[p].item(), p))[:size]
        assert ordered.position[latent].tolist() == expected
        assert ordered.value[latent].tolist() == scores[expected].tolist()
        assert ordered.tokens[latent].tolist() == [[p] * 3 for p in expected]
        assert ordered.acts[latent, :, 0].tolist() == scores[expected].tolist()


def test_reservoir_keeps_a_uniform_sample():
    """Every latent sees the same 20 firings with its own random keys; each firing should
    be kept by about 5/20 of the latents, and each latent holds 5 distinct firings."""
    d, size, n = 4000, 5, 20
    g = torch.Generator().manual_seed(1)
    latents = torch.arange(d).repeat(n)  # firing k of every latent, then firing k + 1, ...
    samples = Samples.empty(d, size, 1, torch.device("cpu"))
    offer_stream(samples, latents, torch.rand(d * n, generator=g), [d * 5] * 4)
    firing = samples.position // d
    assert all(len(set(row)) == size for row in firing.tolist())
    kept = torch.bincount(firing.flatten(), minlength=n).double() / d
    assert torch.allclose(kept, torch.full((n,), size / n, dtype=torch.float64), atol=0.035)


# --- the pass against brute force ------------------------------------------------------------


def brute_force(lm, sae, windows):
    """Latents of every non-BOS token from one forward over all windows: [W, T-1, d_sae]."""
    with torch.no_grad():
        acts = lm.activations(windows, SITE)[:, 1:]
        return sae.encode(acts.reshape(-1, acts.shape[-1])).view(*acts.shape[:2], -1)


def test_pass_equals_brute_force(tiny_lm):
    torch.manual_seed(2)
    windows = torch.randint(3, TINY_VOCAB, (10, 12))
    windows[:, 0] = 0
    sae = create_sae("relu", d_in=tiny_lm.d_model, d_sae=24)
    with torch.no_grad():  # each latent fires on about 40% of the tokens
        x = tiny_lm.activations(windows, SITE)[:, 1:].reshape(-1, tiny_lm.d_model)
        sae.b_enc.copy_(-(x @ sae.W_enc).quantile(0.6, dim=0))
    top, random, before, after = 4, 3, 3, 2
    stats = collect(
        tiny_lm,
        {"s": sae},
        SITE,
        windows.split(3),
        context_size=12,
        progress=False,
        top=top,
        random=random,
        before=before,
        after=after,
    )["s"]
    sizes = {k: v.numel() for k, v in vars(stats.top).items()}
    stats = stats.finished()
    assert {k: v.numel() for k, v in vars(stats.top).items()} == sizes  # bounded state
    f = brute_force(tiny_lm, sae, windows)
    flat = f.permute(2, 0, 1).reshape(24, -1)  # [latent, window * 11 + t]
    fired = (flat > 0).sum(1)
    assert stats.n_tokens == 10 * 11
    assert stats.fired.tolist() == fired.tolist()
    assert 0 < fired.min() and fired.max() < 110  # every latent fires, none always
    torch.testing.assert_close(stats.total, flat.double().sum(1))

    edges = bin_edges().numpy()
    for latent in range(24):
        values = flat[latent][flat[latent] > 0].double().numpy()
        bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
        assert (
            stats.histogram[latent].tolist() == np.bincount(bins, minlength=len(edges) - 1).tolist()
        )

    def check_span(latent, k, samples, index):
        w, t = divmod(index, 11)
        assert samples.position[latent, k] == w * 12 + t + 1
        for j, offset in enumerate(range(-before, after + 1)):
            u = t + offset
            inside = 0 <= u < 11
            assert samples.tokens[latent, k, j] == (windows[w, u + 1] if inside else -1)
            assert samples.acts[latent, k, j] == (f[w, u, latent] if inside else 0)

    for latent in range(24):
        values, index = flat[latent].topk(top)
        torch.testing.assert_close(stats.top.value[latent], values)
        for k, i in enumerate(index.tolist()):
            check_span(latent, k, stats.top, i)
        held = stats.random.position[latent] >= 0
        assert held.sum() == min(random, fired[latent])
        for k in held.nonzero().squeeze(1).tolist():
            w, t = divmod(int(stats.random.position[latent, k]), 12)
            index = w * 11 + t - 1
            assert stats.random.value[latent, k] == flat[latent, index] > 0
            check_span(latent, k, stats.random, index)


# --- the written site against a recomputation -------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    return build_tiny_site(tmp_path_factory.mktemp("browse"))


def test_site_activations_equal_a_recomputation(built):
    root, dirs, index = built
    site = root / "site"
    assert index == site / "index.html" and index.is_file()
    manifest = json.loads((site / "site.json").read_text())
    assert manifest["site"] == SITE and manifest["context_size"] == CTX
    assert [s["name"] for s in manifest["saes"]] == ["relu", "topk"]
    assert manifest["pairs"] == [["relu", "topk"]]
    assert read_data(site, "site") == manifest
    lm = load_model(str(root / "model"))
    windows = token_windows(
        lm.tokenizer, str(root / "corpus.txt"), context_size=CTX, n_windows=manifest["windows"]
    )
    vocab = read_data(site, "vocab")
    for directory, info in zip(dirs, manifest["saes"], strict=True):
        sae = load_sae(directory)
        f = brute_force(lm, sae, windows)  # [W, CTX-1, d_sae]
        assert manifest["tokens"] == f.shape[0] * f.shape[1]
        table = read_data(site, f"{info['name']}/index")
        assert len(table["freq"]) == sae.d_sae
        for latent in range(sae.d_sae):
            record = read_data(site, f"{info['name']}/latents/{latent}")
            column = f[..., latent].flatten()
            assert record["fired"] == int((column > 0).sum())
            assert (latent in table["dead"]) == (record["fired"] == 0)
            top = column.topk(min(6, record["fired"])).values if record["fired"] else []
            assert [c[4][c[1] - c[2]] for c in record["top"]] == pytest.approx(
                list(map(float, top)), rel=1e-6
            )
            firing = [c[3][c[1] - c[2]] for c in record["top"]]
            assert table["top"][latent] == (max(firing, key=firing.count) if firing else -1)
            if firing:  # the search sees 8 tokens before the top firing and 3 after
                _, t, start, tokens = record["top"][0][:4]
                assert table["snippet"][latent] == tokens[max(0, t - 8 - start) : t + 4 - start]
            for context in record["top"] + record["random"]:
                w, t, start, tokens, acts = context[:5]
                one = brute_force(lm, sae, windows[w : w + 1])[0, :, latent]  # a forward alone
                assert tokens == windows[w, start : start + len(tokens)].tolist()
                torch.testing.assert_close(
                    torch.tensor(acts), one[start - 1 : start - 1 + len(acts)], rtol=2e-6, atol=1e-6
                )
                assert all(str(token) in vocab for token in tokens)
    assert site_pages(site) == {
        "home": "index.html",
        "relu": "sae.html#s=relu",
        "topk": "sae.html#s=topk",
    }


def test_cross_page_data_are_each_latents_best_partners(built):
    root, dirs, _ = built
    cross = read_data(root / "site", "cross/relu__topk")
    a, b = (unit_rows(load_sae(d).W_dec).double() for d in dirs)
    cos = a @ b.T
    assert cross["ab"][0] == cos.topk(3, dim=1).indices.tolist()
    assert cross["ba"][0] == cos.T.topk(3, dim=1).indices.tolist()
    best_a, best_b = cos.max(1), cos.max(0)
    mutual = best_b.indices[best_a.indices] == torch.arange(len(a))
    assert cross["summary"]["mutual"] == int(mutual.sum())
    assert cross["summary"]["a_above"]["0.5"] == int((best_a.values >= 0.5).sum())
    assert cross["summary"]["b_above"]["0.5"] == int((best_b.values >= 0.5).sum())


def test_skipped_positions_count_nowhere(built, tmp_path):
    """An SAE trained with skip_positions 2 (SmolLM2's outliers on the token after BOS): its
    site counts no firing at position 1, in the frequencies, histograms, top or random
    contexts, and no context shows it; the rest equals brute force over positions 2.."""
    root, _, _ = built
    sae_dir = save_sparse_sae(tmp_path / "skip2", root / "model", root / "corpus.txt",
                              skip_positions=2)
    options = BrowseOptions(tokens=1200, batch_size=7, top=6, random=5, before=5, after=2)
    site = tmp_path / "site"
    build_site([sae_dir], site, options=options, progress=False)
    manifest = read_data(site, "site")
    assert manifest["skip_positions"] == 2
    lm = load_model(str(root / "model"))
    windows = token_windows(lm.tokenizer, str(root / "corpus.txt"), context_size=CTX,
                            n_windows=manifest["windows"])
    f = brute_force(lm, load_sae(sae_dir), windows)  # positions 1..
    counted = f[:, 1:].reshape(-1, f.shape[2])  # positions 2..
    assert manifest["tokens"] == len(counted) == len(windows) * (CTX - 2)
    fired = (counted > 0).sum(0)
    table = read_data(site, "skip2/index")
    assert table["freq"] == pytest.approx((fired / len(counted)).tolist(), rel=1e-3)
    reaches_position_1 = 0  # latents whose top contexts would include position 1 unskipped
    for latent in range(48):
        record = read_data(site, f"skip2/latents/{latent}")
        assert record["fired"] == int(fired[latent]) == sum(record["hist"][1])
        assert record["freq"] == pytest.approx(float(fired[latent]) / len(counted), rel=1e-3)
        top = counted[:, latent].topk(min(6, record["fired"])).values
        assert [c[4][c[1] - c[2]] for c in record["top"]] == pytest.approx(top.tolist(),
                                                                           rel=1e-6)
        for w, t, start, *_ in record["top"] + record["random"]:
            assert t >= 2 and start >= 2
            assert f[w, t - 1, latent] > 0
        unskipped = f[..., latent].flatten().topk(6).indices % (CTX - 1)
        reaches_position_1 += bool((unskipped == 0).any() and f[:, 0, latent].max() > 0)
    assert reaches_position_1 > 0  # so the check above could fail


# --- decoder directions ------------------------------------------------------------------------


# --- decoder directions ------------------------------------------------------------------------


FINAL_NORM = {  # the final norm and how it treats a direction, written out per family
    "llama": (lambda m: m.model.norm, lambda d, n: d * n.weight),
    "gpt2": (lambda m: m.transformer.ln_f, lambda d, n: (d - d.mean(1, keepdim=True)) * n.weight),
    "gpt_neox": (
        lambda m: m.gpt_neox.final_layer_norm,
        lambda d, n: (d - d.mean(1, keepdim=True)) * n.weight,
    ),
}


def test_logit_effects_apply_the_final_norm(tiny_lm):
    get_norm, apply = FINAL_NORM[tiny_lm.family]
    norm = get_norm(tiny_lm.model)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, tiny_lm.d_model))  # a gain that matters
    w_dec = torch.randn(9, tiny_lm.d_model)
    w_u, linear = unembedding(tiny_lm)
    effects = logit_effects(w_dec, w_u, linear, 4, chunk=4)
    vocab = len(tiny_lm.tokenizer)
    expected = apply(w_dec, norm).detach() @ tiny_lm.model.get_output_embeddings().weight[:vocab].T
    top, bottom = expected.topk(4, dim=1), expected.topk(4, dim=1, largest=False)
    torch.testing.assert_close(effects["up"], top.values, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(effects["down"], bottom.values, rtol=1e-4, atol=1e-5)
    assert effects["up_ids"].tolist() == top.indices.tolist()
    assert effects["down_ids"].tolist() == bottom.indices.tolist()
    assert unembedding(dataclasses.replace(tiny_lm, family="unknown")) is None  # no logits


def test_norm_linear_map_reads_gemmas_one_plus_gain():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    norm = GemmaRMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(6.0) / 10)
    torch.testing.assert_close(
        norm_linear_map(norm, 6), torch.diag(1 + torch.arange(6.0) / 10), rtol=1e-4, atol=1e-6
    )


def test_nearest_latents_and_the_matching_summary():
    g = torch.Generator().manual_seed(3)
    a = unit_rows(torch.randn(30, 8, generator=g))
    b = unit_rows(
        torch.cat(
            [a[:10] + 0.05 * torch.randn(10, 8, generator=g), torch.randn(15, 8, generator=g)]
        )
    )
    full = a @ b.T
    ids, cos = nearest(a, b, 4, same=False, chunk=7)
    assert ids.tolist() == full.topk(4, dim=1).indices.tolist()
    torch.testing.assert_close(cos, full.topk(4, dim=1).values)
    own = a @ a.T
    own.fill_diagonal_(float("-inf"))
    ids_same, _ = nearest(a, a, 3, same=True, chunk=7)
    assert ids_same.tolist() == own.topk(3, dim=1).indices.tolist()
    ab, ba = nearest(a, b, 2, same=False), nearest(b, a, 2, same=False)
    summary = match_summary(*ab, *ba)
    assert summary["a_above"]["0.9"] == int((full.max(1).values >= 0.9).sum()) >= 10
    mutual = sum(int(full[:, int(full[i].argmax())].argmax()) == i for i in range(30))
    assert summary["mutual"] == mutual


# --- user errors ---------------------------------------------------------------------------------


def test_user_errors_are_one_line_and_keep_the_out_folder(built, tmp_path, capsys):
    root, dirs, _ = built
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a feature-browser site"):
        build_site(dirs, keep)
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]

    other = save_sparse_sae(
        tmp_path / "other", root / "model", root / "corpus.txt", site="blocks.2.hook_resid_post"
    )
    with pytest.raises(ConfigError, match="different hook_name.*--site"):
        build_site([dirs[0], other], tmp_path / "out")
    skip2 = save_sparse_sae(tmp_path / "skip2", root / "model", root / "corpus.txt",
                            skip_positions=2)  # relu records none: 1
    with pytest.raises(ConfigError, match=r"different skip_positions \(relu: 1, skip2: 2\); "
                                          "choose one with --skip-positions"):
        build_site([dirs[0], skip2], tmp_path / "out")
    with pytest.raises(ConfigError, match="skip_positions 15 is not accepted for windows of "
                                          "16 tokens; accepted: an integer from 0 to 14"):
        build_site([skip2], tmp_path / "out", options=BrowseOptions(skip_positions=15))
    wide = create_sae("relu", d_in=8, d_sae=4).save(
        tmp_path / "wide", metadata={"model_name": str(root / "model"), "hook_name": SITE}
    )
    with pytest.raises(DataError, match="width 32, but SAE wide expects d_in 8"):
        build_site([wide], tmp_path / "out", dataset=str(root / "corpus.txt"), progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="top 0 is not accepted"):
        build_site(dirs, tmp_path / "out", options=BrowseOptions(top=0))

    capsys.readouterr()
    assert main(["browse", "--out", str(tmp_path / "x")]) == 2
    assert main(["browse", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["browse", str(skip2), "--out", str(tmp_path / "x"), "--skip-positions",
                 "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "needs SAE_DIR" in err[0] and "not an SAE folder" in err[1]
    assert err[2].endswith("skip_positions -1 is not accepted; accepted: an integer >= 0")
    with pytest.raises(DataError, match="not a feature-browser site"):
        site_pages(tmp_path)
    with pytest.raises(DataError, match="not a feature-browser site"):
        make_server(tmp_path, port=0)


def test_cli_writes_a_site(built, tmp_path, capsys):
    root, dirs, _ = built
    out = tmp_path / "site"
    assert (
        main(
            [
                "browse",
                str(dirs[0]),
                "--out",
                str(out),
                "--tokens",
                "100",
                "--top",
                "2",
                "--random",
                "2",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    manifest = json.loads((out / "site.json").read_text())
    assert manifest["tokens"] == 7 * (CTX - 1) and manifest["options"]["top"] == 2
    assert len(read_data(out, "relu/latents/0")["top"]) <= 2
    # a site is rewritten in place, and two folders of one name get their parents' names
    assert main(["browse", str(dirs[0]), str(dirs[0]), "--out", str(out), "--tokens", "30"]) == 0
    manifest = json.loads((out / "site.json").read_text())
    assert [s["name"] for s in manifest["saes"]] == ["saes-relu-0", "saes-relu-1"]
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "cross",
        "saes-relu-0",
        "saes-relu-1",
        "site.js",
        "vocab.js",
    ]
    assert manifest["tokens"] == 2 * (CTX - 1)
    # --skip-positions overrides the metadata, and settles SAEs that disagree
    skip2 = save_sparse_sae(tmp_path / "skip2", root / "model", root / "corpus.txt",
                            skip_positions=2)
    assert main(["browse", str(dirs[0]), str(skip2), "--out", str(out), "--tokens", "30",
                 "--skip-positions", "3"]) == 0
    manifest = json.loads((out / "site.json").read_text())
    assert manifest["skip_positions"] == 3 and manifest["tokens"] == 2 * (CTX - 3)


@pytest.mark.slow
def test_smollm2_site(no_network, tmp_path):
    """The embedded SmolLM2-135M: a site builds from its GGUF, the logit effects are W_U
    times the RMSNorm gain times the decoder row, and token texts come from its tokenizer.
    Loading the model is nearly all of its time (the site itself: two windows of 32 tokens)."""
    lm = load_model("smollm2-135m")
    site = "blocks.15.hook_resid_post"
    torch.manual_seed(0)
    sae = create_sae("relu", d_in=lm.d_model, d_sae=16)
    path = sae.save(tmp_path / "sae", metadata={"model_name": "smollm2-135m", "hook_name": site})
    corpus = tmp_path / "text.txt"
    corpus.write_text(
        "Sparse autoencoders decompose a language model's activations into "
        "features. The quick brown fox jumps over the lazy dog. " * 8
    )
    out = tmp_path / "site"
    options = BrowseOptions(tokens=64, context_size=32, top=2, random=2, logits=3)
    build_site([path], out, lm=lm, dataset=str(corpus), options=options, progress=False)
    record = read_data(out, "sae/latents/0")
    expected = (sae.W_dec[0] * lm.model.model.norm.weight) @ lm.model.lm_head.weight.T
    top = expected.detach().topk(3)
    assert [i for i, _ in record["up"]] == top.indices.tolist()
    assert [v for _, v in record["up"]] == pytest.approx(top.values.tolist(), rel=1e-3)
    vocab = read_data(out, "vocab")
    assert vocab[str(top.indices[0].item())] == lm.tokenizer.decode([top.indices[0].item()])
    # latent 0 of a random SAE may fire on none of these tokens: look at the most frequent
    freq = read_data(out, "sae/index")["freq"]
    record = read_data(out, f"sae/latents/{freq.index(max(freq))}")
    assert record["top"] and all(str(t) in vocab for c in record["top"] for t in c[3])
