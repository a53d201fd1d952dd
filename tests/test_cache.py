"""The activation cache: contents, dtypes, resume after a kill, corruption, batches."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _SENTENCES, save_tiny_model

from gated_sae.data.batches import cache_batches
from gated_sae.data.cache import MANIFEST, build_cache, load_cache
from gated_sae.data.corpus import token_windows
from gated_sae.data.lm import load_model
from gated_sae.errors import ConfigError, DataError

SITE = "blocks.1.hook_resid_post"
CTX = 16


@pytest.fixture(scope="module")
def text_path(tmp_path_factory) -> Path:
    """A jsonl corpus of random sentences over the tiny tokenizer's words."""
    words = sorted({w for s in _SENTENCES for w in s.split()})
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "docs.jsonl"
    with path.open("w") as f:
        for _ in range(300):
            f.write(json.dumps({"text": " ".join(rng.choices(words, k=rng.randint(3, 30)))}))
            f.write("\n")
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return save_tiny_model("gpt2", tmp_path_factory.mktemp("tiny-gpt2-cache"))


@pytest.fixture(scope="module")
def lm(gpt2_dir: Path):
    return load_model(str(gpt2_dir))


def build(lm, text_path: Path, out: Path, **options) -> Path:
    args = dict(n_tokens=300, context_size=CTX, shard_tokens=4 * CTX, batch_size=3,
                progress=False)
    return build_cache(lm, SITE, str(text_path), out=out, **{**args, **options})


def test_cached_activations_are_the_models(tiny_lm, text_path: Path, tmp_path: Path):
    out = build(tiny_lm, text_path, tmp_path / "cache")
    cache = load_cache(out)
    cache.verify()
    n_seq = -(-300 // CTX)
    windows = token_windows(tiny_lm.tokenizer, str(text_path), context_size=CTX, n_windows=n_seq)
    assert torch.equal(cache.tokens, windows) and cache.tokens.dtype == torch.long
    assert cache.activations.shape == (n_seq, CTX, tiny_lm.d_model)
    assert len(cache.manifest["shards"]) == 5  # 19 windows in shards of 4
    expected = tiny_lm.activations(windows, SITE)
    torch.testing.assert_close(cache.activations[:], expected, rtol=1e-5, atol=1e-6)
    # Row j, position i is the activation at token (j, i), across shard boundaries.
    for j, i in [(0, 0), (3, 5), (4, 0), (18, CTX - 1), (-1, 2)]:
        alone = tiny_lm.activations(cache.tokens[j][None], SITE)[0, i]
        torch.testing.assert_close(cache.activations[j, i], alone, rtol=1e-5, atol=1e-6)
    m = cache.manifest
    assert (m["site"], m["context_size"], m["d_in"], m["dtype"]) == (SITE, CTX, 32, "float32")
    assert m["n_seq"] == n_seq and m["n_tokens"] == n_seq * CTX and m["complete"]
    assert m["model"] == os.path.abspath(tiny_lm.name) and m["gated_sae_version"]
    assert all(len(s["acts_sha256"]) == 64 for s in m["shards"])


def test_indexing_across_shards(lm, text_path: Path, tmp_path: Path):
    cache = load_cache(build(lm, text_path, tmp_path / "c", shard_tokens=3 * CTX))
    full = cache.activations[:]
    acts = cache.activations
    assert torch.equal(acts[2:11], full[2:11])
    assert torch.equal(acts[1:17:5, 3], full[1:17:5, 3])
    assert torch.equal(acts[[17, 0, 5, 5]], full[[17, 0, 5, 5]])
    assert torch.equal(acts[torch.tensor([-1, 4])], full[[-1, 4]])
    assert torch.equal(acts[7, 2:4], full[7, 2:4])
    with pytest.raises(IndexError):
        acts[len(acts)]


@pytest.mark.parametrize("dtype, torch_dtype, itemsize", [
    ("float16", torch.float16, 2), ("bfloat16", torch.bfloat16, 2), ("float32", torch.float32, 4),
])
def test_dtypes_round_trip(lm, text_path, tmp_path, dtype, torch_dtype, itemsize):
    cache = load_cache(build(lm, text_path, tmp_path / dtype, dtype=dtype))
    cache.verify()
    assert cache.activations.dtype == torch_dtype == cache.dtype
    expected = lm.activations(cache.tokens, SITE).to(torch_dtype)
    got = cache.activations[:]
    assert got.dtype == torch_dtype
    torch.testing.assert_close(got.float(), expected.float(), rtol=1e-2, atol=1e-2)
    # The stored values are exactly the model's activations rounded to the dtype.
    assert (got.float() - expected.float()).abs().max() <= expected.float().abs().max() * 2e-2
    shard = cache.manifest["shards"][0]
    acts_file = cache.path / shard["acts"]
    assert acts_file.stat().st_size - 128 == shard["n_seq"] * CTX * 32 * itemsize


_CHILD = """
import sys, time
from gated_sae.data.cache import build_cache
from gated_sae.data.lm import load_model
lm = load_model(sys.argv[1])
forward = lm.activations
def slow(ids, site):  # slow enough that the parent kills it mid-run
    time.sleep(0.15)
    return forward(ids, site)
lm.activations = slow
build_cache(lm, sys.argv[2], sys.argv[3], out=sys.argv[4], n_tokens=int(sys.argv[5]),
            context_size=int(sys.argv[6]), shard_tokens=int(sys.argv[7]), batch_size=1,
            progress=False)
"""


def test_killed_run_resumes_and_completes(lm, gpt2_dir, text_path, tmp_path):
    out = tmp_path / "killed"
    args = dict(n_tokens=20 * CTX, context_size=CTX, shard_tokens=2 * CTX)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(gpt2_dir), SITE, str(text_path), str(out),
         *(str(v) for v in args.values())],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            try:
                if json.loads((out / MANIFEST).read_text())["shards"]:
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.02)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        time.sleep(0.2)  # land inside a later shard's write
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["complete"] and 1 <= len(manifest["shards"]) < 10
    with pytest.raises(DataError, match="incomplete"):
        load_cache(out)
    first = out / manifest["shards"][0]["acts"]
    first_inode = first.stat().st_ino

    build_cache(lm, SITE, str(text_path), out=out, progress=False, batch_size=4, **args)
    cache = load_cache(out)
    cache.verify()
    assert first.stat().st_ino == first_inode  # complete shards were kept, not rewritten
    assert len(cache.manifest["shards"]) == 10 and cache.manifest["complete"]
    assert not list(out.glob(".*.tmp"))
    windows = token_windows(lm.tokenizer, str(text_path), context_size=CTX, n_windows=20)
    assert torch.equal(cache.tokens, windows)
    torch.testing.assert_close(cache.activations[:], lm.activations(windows, SITE),
                               rtol=1e-5, atol=1e-6)


def test_rerun_with_other_arguments_is_refused(lm, text_path, tmp_path):
    out = build(lm, text_path, tmp_path / "c")
    before = (out / MANIFEST).read_text()
    assert build(lm, text_path, out) == out  # same arguments: already complete, nothing to do
    assert (out / MANIFEST).read_text() == before
    with pytest.raises(ConfigError, match="dtype='float32' there, 'float16' now"):
        build(lm, text_path, out, dtype="float16")
    with pytest.raises(ConfigError, match="n_seq=19 there, 20 now"):
        build(lm, text_path, out, n_tokens=20 * CTX)
    with pytest.raises(ConfigError, match="site='blocks.1.hook_resid_post' there"):
        build_cache(lm, "blocks.0.hook_mlp_out", str(text_path), out=out, n_tokens=300,
                    context_size=CTX, shard_tokens=4 * CTX, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not an activation cache"):
        build(lm, text_path, foreign)


@pytest.mark.parametrize("options, error, message", [
    (dict(context_size=65), ConfigError, "context size 65 is larger than .* 64"),
    (dict(dtype="int8"), ConfigError, "cache dtype 'int8' is not accepted; accepted: float32"),
    (dict(n_tokens=10**6), DataError, "has only .* train windows"),
    (dict(site="blocks.9.hook_resid_post"), ConfigError, "unknown site"),
    (dict(dataset="missing.jsonl"), DataError, "'missing.jsonl' is not an existing file"),
    (dict(n_tokens=0), ConfigError, "n_tokens must be a positive integer, got 0"),
])
def test_bad_input_leaves_no_folder(lm, text_path, tmp_path, options, error, message):
    out = tmp_path / "out"
    site = options.pop("site", SITE)
    dataset = options.pop("dataset", str(text_path))
    kwargs = {**dict(n_tokens=300, context_size=CTX, progress=False), **options}
    with pytest.raises(error, match=message):
        build_cache(lm, site, dataset, out=out, **kwargs)
    assert not out.exists()


def test_corruption_is_detected_naming_the_file(lm, text_path, tmp_path):
    out = build(lm, text_path, tmp_path / "c")
    shard = json.loads((out / MANIFEST).read_text())["shards"][2]
    acts = out / shard["acts"]
    data = bytearray(acts.read_bytes())
    data[len(data) // 2] ^= 0xFF
    acts.write_bytes(bytes(data))
    cache = load_cache(out)  # sizes still match: only the checksum tells
    with pytest.raises(DataError, match=f"{shard['acts']} does not match its checksum"):
        cache.verify()
    del cache
    acts.write_bytes(bytes(data[:-100]))
    with pytest.raises(DataError, match=f"{shard['acts']} has .* bytes, the manifest says"):
        load_cache(out)
    tokens = out / shard["tokens"]
    tokens.unlink()
    with pytest.raises(DataError, match=f"{shard['tokens']} is missing"):
        load_cache(out)


def test_batches_cover_every_token_once_per_epoch_and_resume(lm, text_path, tmp_path):
    cache = load_cache(build(lm, text_path, tmp_path / "c", shard_tokens=3 * CTX))
    n_seq, d = cache.n_seq, cache.d_in
    non_bos = cache.activations[:][:, 1:].reshape(-1, d)  # 19 * 15 = 285 tokens
    batches = cache_batches(cache, 57, seed=3, buffer_tokens=4 * (CTX - 1))
    assert batches.per_epoch == 5 and batches.blocks_per_buffer > 1
    it = iter(batches)
    epoch = [next(it) for _ in range(5)]
    assert all(b.shape == (57, d) and b.dtype == torch.float32 for b in epoch)
    seen = torch.cat(epoch)
    key = lambda x: x[np.lexsort(x.numpy().T[::-1])]  # noqa: E731  rows in sorted order
    assert torch.equal(key(seen), key(non_bos))
    assert not torch.equal(seen, non_bos)  # shuffled
    more = [next(it) for _ in range(6)]
    for step in (0, 3, 4, 5, 7):
        assert torch.equal(next(batches.iter_from(step)), (epoch + more)[step])
    assert not torch.equal(torch.cat(more[:5]), seen)  # the next epoch has another order
    again = cache_batches(cache.path, 57, seed=3, buffer_tokens=4 * (CTX - 1))
    assert all(torch.equal(a, b) for a, b in zip(again, epoch, strict=False))
    other = next(iter(cache_batches(cache, 57, seed=4, buffer_tokens=4 * (CTX - 1))))
    assert not torch.equal(other, epoch[0])

    with_bos = cache_batches(cache, n_seq * CTX, seed=0, skip_positions=0)
    assert torch.equal(key(next(iter(with_bos))), key(cache.activations[:].reshape(-1, d)))
    past_two = cache_batches(cache, n_seq * (CTX - 2), seed=0, skip_positions=2)
    assert torch.equal(key(next(iter(past_two))),
                       key(cache.activations[:][:, 2:].reshape(-1, d).float()))
    with pytest.raises(ConfigError, match=f"skip_positions {CTX - 1} is not accepted.*0 to "
                                          f"{CTX - 2}"):
        cache_batches(cache, 4, skip_positions=CTX - 1)
    with pytest.raises(DataError, match="batch size 286 is larger than the 285 activations"):
        cache_batches(cache, 286)
