"""Loading language models, reading activations at sites, and splicing replacements in."""

from __future__ import annotations

import platform
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY_D_MODEL, TINY_LAYERS, TINY_N_CTX

from gated_sae import ConfigError, DataError, create_sae
from gated_sae.data.lm import load_model

pytestmark = pytest.mark.usefixtures("single_thread")

# Written out here rather than taken from gated_sae.data.lm, so the tests check the mapping.
BLOCKS = {
    "llama": lambda m: m.model.layers,
    "gpt2": lambda m: m.transformer.h,
    "gpt_neox": lambda m: m.gpt_neox.layers,
}
FINAL_NORM = {
    "llama": lambda m: m.model.norm,
    "gpt2": lambda m: m.transformer.ln_f,
    "gpt_neox": lambda m: m.gpt_neox.final_layer_norm,
}
MODULE_NAMES = {  # (attention, mlp) module paths of block 1
    "llama": ("model.layers.1.self_attn", "model.layers.1.mlp"),
    "gpt2": ("transformer.h.1.attn", "transformer.h.1.mlp"),
    "gpt_neox": ("gpt_neox.layers.1.attention", "gpt_neox.layers.1.mlp"),
}


def hidden_states(lm, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return lm.model(ids, output_hidden_states=True, use_cache=False).hidden_states


def test_load_tiny_model(tiny_model_dir, no_network):
    lm = load_model(str(tiny_model_dir))
    assert lm.family in ("llama", "gpt2", "gpt_neox")
    assert (lm.d_model, lm.n_ctx, lm.bos_token_id) == (TINY_D_MODEL, TINY_N_CTX, 0)
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert len(lm.valid_sites()) == 4 * TINY_LAYERS
    assert lm.valid_sites()[:2] == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post"]


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="mallopt is glibc's")
def test_keep_freed_memory_sets_glibc_allocator():
    """Its effect, in fresh processes: glibc serves an 8 MiB malloc by mmap by default
    (mallinfo2's hblks counts such blocks), and from the heap once keep_freed_memory ran."""
    probe = """
import ctypes, sys
from gated_sae.data.lm import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
        "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()
before = libc.mallinfo2().hblks
block = libc.malloc(8 << 20)
print(libc.mallinfo2().hblks - before)
"""
    mapped = {}
    for mode in ("default", "keep"):
        run = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True,
                             text=True, check=True)
        mapped[mode] = int(run.stdout)
    assert mapped == {"default": 1, "keep": 0}


def test_load_in_bfloat16(tiny_model_dir, tiny_windows):
    lm = load_model(str(tiny_model_dir), dtype="bfloat16")
    assert lm.dtype == torch.bfloat16
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert lm.activations(tiny_windows, "blocks.1.hook_resid_post").dtype == torch.bfloat16


def test_resid_sites_equal_hidden_states(tiny_lm, tiny_windows):
    """resid_pre L = hidden_states[L]; resid_post L = hidden_states[L+1], except that the last
    hidden state has the final norm applied (transformers 5, all three families)."""
    hs = hidden_states(tiny_lm, tiny_windows)
    assert len(hs) == TINY_LAYERS + 1
    for layer in range(TINY_LAYERS):
        pre = tiny_lm.activations(tiny_windows, f"blocks.{layer}.hook_resid_pre")
        post = tiny_lm.activations(tiny_windows, f"blocks.{layer}.hook_resid_post")
        assert pre.shape == (*tiny_windows.shape, TINY_D_MODEL)
        torch.testing.assert_close(pre, hs[layer], rtol=1e-5, atol=1e-6)
        if layer < TINY_LAYERS - 1:
            torch.testing.assert_close(post, hs[layer + 1], rtol=1e-5, atol=1e-6)
    final_norm = FINAL_NORM[tiny_lm.family](tiny_lm.model)
    with torch.inference_mode():
        torch.testing.assert_close(final_norm(post), hs[-1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(post, hs[-1], atol=1e-3)  # the site is before the final norm


def test_block_decomposes_into_attn_and_mlp(tiny_lm, tiny_windows):
    """resid_post = resid_pre + attn_out + mlp_out holds for sequential blocks (llama, gpt2)
    and for GPT-NeoX's parallel residual alike: a check of all four sites at once."""
    acts = {p: tiny_lm.activations(tiny_windows, f"blocks.1.hook_{p}")
            for p in ("resid_pre", "attn_out", "mlp_out", "resid_post")}
    torch.testing.assert_close(
        acts["resid_pre"] + acts["attn_out"] + acts["mlp_out"], acts["resid_post"],
        rtol=1e-5, atol=1e-5,
    )


def test_mlp_and_attn_out_equal_module_outputs(tiny_lm, tiny_windows):
    attn_path, mlp_path = MODULE_NAMES[tiny_lm.family]
    seen = {}
    handles = [
        tiny_lm.model.get_submodule(path).register_forward_hook(
            lambda m, a, out, path=path: seen.__setitem__(path, out))
        for path in (attn_path, mlp_path)
    ]
    try:
        tiny_lm.logits(tiny_windows)
    finally:
        for h in handles:
            h.remove()
    attn = seen[attn_path][0] if isinstance(seen[attn_path], tuple) else seen[attn_path]
    torch.testing.assert_close(tiny_lm.activations(tiny_windows, "blocks.1.hook_attn_out"), attn)
    torch.testing.assert_close(tiny_lm.activations(tiny_windows, "blocks.1.hook_mlp_out"),
                               seen[mlp_path])
    # The same modules by path give the same activations.
    torch.testing.assert_close(tiny_lm.activations(tiny_windows, attn_path), attn)
    torch.testing.assert_close(tiny_lm.activations(tiny_windows, mlp_path), seen[mlp_path])


@pytest.mark.parametrize("site", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre",
                                  "blocks.0.hook_mlp_out"])
def test_forward_stops_after_site(tiny_lm, tiny_windows, site):
    calls = []
    later = [BLOCKS[tiny_lm.family](tiny_lm.model)[1], tiny_lm.model.get_output_embeddings()]
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in later]
    try:
        tiny_lm.activations(tiny_windows, site)
        assert calls == []
        tiny_lm.logits(tiny_windows)  # the hooks do fire on a full forward
        assert len(calls) == 2
    finally:
        for h in handles:
            h.remove()


def hooks(lm) -> dict[str, tuple[list, list]]:
    """Every forward hook and pre-hook of the model, by module."""
    return {name: (list(m._forward_hooks), list(m._forward_pre_hooks))
            for name, m in lm.model.named_modules()}


def test_no_hooks_left_behind(tiny_lm, tiny_windows):
    # Compare with the hooks before: transformers 5 installs output-capturing hooks of its
    # own the first time hidden states are requested, and keeps them.
    before = hooks(tiny_lm)
    clean = tiny_lm.logits(tiny_windows)
    tiny_lm.activations(tiny_windows, "blocks.1.hook_resid_pre")
    with tiny_lm.splice("blocks.1.hook_resid_post", torch.zeros_like):
        assert hooks(tiny_lm) != before
    with pytest.raises(RuntimeError), tiny_lm.splice("blocks.1.hook_attn_out", torch.zeros_like):
        raise RuntimeError  # hooks are removed even when the block fails
    assert hooks(tiny_lm) == before
    assert torch.equal(tiny_lm.logits(tiny_windows), clean)


def test_splice_identity_changes_nothing(tiny_lm, tiny_windows):
    clean = tiny_lm.logits(tiny_windows)
    for site in tiny_lm.valid_sites():
        with tiny_lm.splice(site, lambda a: a):
            assert torch.equal(tiny_lm.logits(tiny_windows), clean), site


def test_splice_zero_attn_out_keeps_module_structure(tiny_lm, tiny_windows):
    """Attention returns a tuple: the splice must return one too, or the block fails."""
    clean = tiny_lm.logits(tiny_windows)
    with tiny_lm.splice("blocks.1.hook_attn_out", torch.zeros_like):
        acts = {p: tiny_lm.activations(tiny_windows, f"blocks.1.hook_{p}")
                for p in ("resid_pre", "attn_out", "mlp_out", "resid_post")}
        spliced = tiny_lm.logits(tiny_windows)
    assert torch.count_nonzero(acts["attn_out"]) == 0
    torch.testing.assert_close(acts["resid_pre"] + acts["mlp_out"], acts["resid_post"],
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(spliced, clean, atol=1e-3)


def test_splice_resid_pre_equals_splice_previous_resid_post(tiny_lm, tiny_windows):
    double = lambda a: 2 * a  # noqa: E731
    with tiny_lm.splice("blocks.1.hook_resid_pre", double):
        via_pre = tiny_lm.logits(tiny_windows)
        pre = tiny_lm.activations(tiny_windows, "blocks.1.hook_resid_pre")
    with tiny_lm.splice("blocks.0.hook_resid_post", double):
        via_post = tiny_lm.logits(tiny_windows)
    torch.testing.assert_close(via_pre, via_post)
    clean_pre = tiny_lm.activations(tiny_windows, "blocks.1.hook_resid_pre")
    torch.testing.assert_close(pre, 2 * clean_pre)
    assert not torch.allclose(via_pre, tiny_lm.logits(tiny_windows), atol=1e-3)


@pytest.mark.parametrize("site", ["nonsense", "blocks.3.hook_resid_post", "blocks.0.hook_foo", ""])
def test_unknown_site_lists_valid_ones(tiny_lm, tiny_windows, site):
    with pytest.raises(ConfigError) as err:
        tiny_lm.activations(tiny_windows, site)
    message = str(err.value)
    assert "\n" not in message and repr(site) in message
    assert f"blocks.{{0..{TINY_LAYERS - 1}}}.hook_resid_pre|hook_resid_post|hook_mlp_out|" \
           "hook_attn_out" in message
    assert MODULE_NAMES[tiny_lm.family][1].replace(".1.", ".2.") in message  # a real module path
    with pytest.raises(ConfigError):
        with tiny_lm.splice(site, lambda a: a):
            pass


def test_too_long_input_names_both_lengths(tiny_lm):
    ids = torch.zeros(1, TINY_N_CTX + 1, dtype=torch.long)
    with pytest.raises(ConfigError, match=rf"{TINY_N_CTX + 1} tokens.*n_ctx={TINY_N_CTX}"):
        tiny_lm.activations(ids, "blocks.0.hook_resid_post")
    with pytest.raises(ConfigError, match="integer tensor"):
        tiny_lm.logits(torch.zeros(1, 4))


@pytest.mark.parametrize("name", ["/no/such/model", "no_such_model.gguf", "./missing", "a/b/c"])
def test_unknown_model_path(name, no_network):
    with pytest.raises(DataError, match=f"no model at '{name}'"):
        load_model(name)


def test_bad_model_file_and_options(tmp_path, tiny_model_dir, no_network):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(DataError, match="not a .gguf file"):
        load_model(str(weights))
    with pytest.raises(DataError, match="cannot load model"):
        load_model(str(tmp_path))  # a folder without a model
    with pytest.raises(ConfigError, match="unknown dtype 'float8'"):
        load_model(str(tiny_model_dir), dtype="float8")


@pytest.mark.slow
def test_smollm2_real_model(no_network, tmp_path):
    """The embedded SmolLM2-135M GGUF: residual stream matches hidden_states, and the
    perfect-reconstruction SAE recovers all the loss."""
    from gated_sae.evaluate.lm_metrics import lm_metrics

    start = time.perf_counter()
    lm = load_model("smollm2-135m")
    load_seconds = time.perf_counter() - start
    print(f"loading smollm2-135m (GGUF) took {load_seconds:.1f} s")
    assert (lm.family, lm.d_model, lm.n_layers, lm.n_ctx) == ("llama", 576, 30, 8192)

    text = ["The quick brown fox jumps over the lazy dog near the river bank.",
            "Sparse autoencoders decompose activations into interpretable features."]
    rows = [[lm.bos_token_id, *lm.tokenizer(t).input_ids][:12] for t in text]
    ids = torch.tensor(rows)
    assert ids.shape == (2, 12)
    acts = lm.activations(ids[:1], "blocks.15.hook_resid_post")
    torch.testing.assert_close(acts, hidden_states(lm, ids[:1])[16], rtol=1e-5, atol=1e-5)

    d = lm.d_model
    sae = create_sae("relu", d_in=d, d_sae=2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    result = lm_metrics(lm, sae, "blocks.15.hook_resid_post", ids)
    assert result["n_tokens"] == 2 * 10
    assert result["ce_zero"] > result["ce_clean"] + 1  # zeroing the residual stream hurts
    assert result["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert result["kl"] == pytest.approx(0.0, abs=1e-6)

    # the activation cache stores exactly the model's hidden states at the site
    from gated_sae.data.cache import build_cache, load_cache

    cache_dir = build_cache(lm, "blocks.15.hook_resid_post", n_tokens=256, context_size=32,
                            out=tmp_path / "cache", progress=False)
    cache = load_cache(cache_dir)
    cache.verify()
    torch.testing.assert_close(cache.activations[:], hidden_states(lm, cache.tokens)[16],
                               rtol=1e-5, atol=1e-4)
