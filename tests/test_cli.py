"""The command line over real components: user errors, train → eval, resume after SIGKILL,
cache → train → eval on a tiny model, and training streamed from a model."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import _SENTENCES, TINY_N_CTX, save_tiny_model
from safetensors.torch import load_file

from gated_sae import load_sae
from gated_sae.cli import main
from gated_sae.data.activations_file import load_activations_file
from gated_sae.data.batches import model_batches
from gated_sae.data.corpus import token_windows
from gated_sae.data.lm import load_model
from gated_sae.evaluate.metrics import activation_metrics

pytestmark = pytest.mark.usefixtures("single_thread")

SITE = "blocks.1.hook_resid_post"
CTX = 16
D_IN = 32  # synthetic data and the tiny models alike
ACT_KEYS = {"l0", "fvu", "explained_variance", "gamma", "dead_fraction", "dense_fraction"}
LM_KEYS = {"ce_clean", "ce_sae", "ce_zero", "loss_recovered", "delta_loss", "kl"}
THREE_SAES = {
    "log_every": 1,
    "lr_warmup_steps": 5,
    "saes": [
        {"arch": "relu", "d_sae": 64},
        {"arch": "gated", "d_sae": 64},
        {"arch": "topk", "d_sae": 64, "options": {"k": 4}},
    ],
}


@pytest.fixture(scope="module")
def one_thread_module():
    """As conftest's single_thread, for the module-scoped fixtures that train or load models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_thread_module) -> dict[str, Path]:
    """Synthetic activations, an SAE trained on them, a tiny llama model, corpora, and the bad
    inputs of the error tests."""
    root = tmp_path_factory.mktemp("cli")
    synth = root / "synth.npy"
    assert main(["synth", "--out", str(synth), "--n", "4096", "--features", "64",
                 "--dim", str(D_IN)]) == 0
    run_dir = root / "run"
    assert main(["train", "--acts", str(synth), "--arch", "relu", "--d-sae", "64",
                 "--batch-size", "256", "--tokens", str(256 * 10), "--out", str(run_dir)]) == 0
    words = sorted({w for s in _SENTENCES for w in s.split()})
    rng = random.Random(0)
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(
        json.dumps({"text": " ".join(rng.choices(words, k=rng.randint(3, 30)))}) + "\n"
        for _ in range(300)
    ))
    small = root / "small.txt"  # about 40 windows of 16: streaming wraps around it
    small.write_text(" ".join(rng.choices(words, k=600)))
    (root / "empty.txt").write_text("")
    good = np.load(synth)
    bad = good[:64].copy()
    bad[3, 5] = np.nan
    np.save(root / "nan.npy", bad)
    bad[3, 5] = np.inf
    np.save(root / "inf.npy", bad)
    np.save(root / "narrow.npy", good[:64, :16])
    (root / "garbage.npy").write_bytes(b"\x93NUMPY garbage bytes" * 20)
    (root / "garbage.safetensors").write_bytes(b"\xff\x00garbage" * 20)
    corrupt = root / "corrupt-sae"
    shutil.copytree(run_dir / "relu", corrupt)
    (corrupt / "cfg.json").write_text("{not json")
    return {
        "root": root, "synth": synth, "sae": run_dir / "relu", "corpus": corpus, "small": small,
        "tiny": save_tiny_model("llama", root / "tiny"), "empty": root / "empty.txt",
        "nan": root / "nan.npy", "inf": root / "inf.npy", "narrow": root / "narrow.npy",
        "garbage_npy": root / "garbage.npy", "garbage_st": root / "garbage.safetensors",
        "corrupt": corrupt, "missing": root / "missing.npy", "nodir": root / "no-such-sae",
        "nomodel": root / "no-such-model",
    }


# --- user errors ------------------------------------------------------------------------------

TRAIN = ["train", "--acts", "{synth}", "--arch", "relu", "--d-sae", "64", "--out", "{out}"]
CACHE = ["cache", "--model", "{tiny}", "--site", SITE, "--dataset", "{corpus}",
         "--tokens", "200", "--context-size", str(CTX), "--out", "{out}"]
STREAM = ["train", "--model", "{tiny}", "--site", SITE, "--dataset", "{corpus}",
          "--context-size", str(CTX), "--arch", "relu", "--d-sae", "64", "--batch-size", "64",
          "--tokens", "640", "--out", "{out}"]
EVAL_MODEL = ["eval", "{sae}", "--model", "{tiny}", "--site", SITE, "--dataset", "{corpus}",
              "--tokens", "64", "--context-size", str(CTX)]


def _with(argv: list[str], **changes: str) -> list[str]:
    """`argv` with the value after each --flag replaced (flag names with _ for -)."""
    argv = list(argv)
    for flag, value in changes.items():
        argv[argv.index("--" + flag.replace("_", "-")) + 1] = value
    return argv


ERRORS = {
    "wrong-d-in": (["eval", "{sae}", "--acts", "{narrow}"], "d_in 16"),
    "nan": (_with(TRAIN, acts="{nan}"), "nan.npy contains NaN"),
    "inf": (_with(TRAIN, acts="{inf}"), "inf.npy contains NaN or Inf"),
    "eval-nan": (["eval", "{sae}", "--acts", "{nan}"], "nan.npy contains NaN"),
    "unknown-arch": (_with(TRAIN, arch="gatd"), "'gatd'; choose one of relu, gated"),
    "unknown-flag": ([*TRAIN, "--bogus", "1"], "--bogus"),
    "unknown-arch-option": ([*TRAIN, "--option", "nope=1"], "'nope' for relu; accepted"),
    "d-sae": (_with(TRAIN, d_sae="-3"), "d_sae must be a positive integer, got -3"),
    "lr": ([*TRAIN, "--lr=-0.5"], "lr must be a positive number, got -0.5"),
    "batch-size": ([*TRAIN, "--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    "train-tokens": ([*TRAIN, "--tokens=-7"], "tokens must be a positive integer, got -7"),
    "cache-tokens": (_with(CACHE, tokens="0"),
                     "argument --tokens: value must be a positive integer, got 0"),
    "eval-tokens": ([*EVAL_MODEL[:-4], "--tokens=-2"], "value must be a positive integer, got -2"),
    "eval-batch-size": (["eval", "{sae}", "--acts", "{synth}", "--batch-size", "0"],
                        "--batch-size: value must be a positive integer, got 0"),
    "missing-acts": (_with(TRAIN, acts="{missing}"), "missing.npy does not exist"),
    "garbage-npy": (_with(TRAIN, acts="{garbage_npy}"), "cannot read activations file"),
    "garbage-safetensors": (["eval", "{sae}", "--acts", "{garbage_st}"], "garbage.safetensors"),
    "missing-sae": (["eval", "{nodir}", "--acts", "{synth}"], "no-such-sae is not an SAE folder"),
    "corrupt-cfg": (["eval", "{corrupt}", "--acts", "{synth}"], "cfg.json is not valid JSON"),
    "unknown-site-cache": (_with(CACHE, site="blocks.9.hook_resid_post"),
                           "unknown site 'blocks.9.hook_resid_post'"),
    "unknown-site-stream": (_with(STREAM, site="blocks.7.hook_mlp_out"),
                            "unknown site 'blocks.7.hook_mlp_out'"),
    "unknown-site-eval": (_with(EVAL_MODEL, site="layers.9"), "unknown site 'layers.9'"),
    "unknown-model": (_with(CACHE, model="{nomodel}"), "no model at '{nomodel}'"),
    "unknown-model-eval": (_with(EVAL_MODEL, model="{nomodel}"), "no model at '{nomodel}'"),
    "empty-corpus-cache": (_with(CACHE, dataset="{empty}"), "empty.txt' contains no text"),
    "empty-corpus-stream": (_with(STREAM, dataset="{empty}"), "empty.txt' contains no text"),
    "context-size-cache": (_with(CACHE, context_size="65"),
                           f"context size 65 is larger than the model's context length "
                           f"{TINY_N_CTX}"),
    "context-size-stream": (_with(STREAM, context_size="65"), "context size 65 is larger"),
    "context-size-eval": (_with(EVAL_MODEL, context_size="65"), "context size 65 is larger"),
    "unknown-model-dtype": ([*CACHE, "--model-dtype", "int4"], "'int4'"),
    "acts-and-model": ([*TRAIN, "--model", "{tiny}"], "--model: not allowed with argument --acts"),
    "no-source": (TRAIN[:1] + TRAIN[3:], "one of the arguments --acts --model is required"),
    "buffer-with-file": ([*TRAIN, "--buffer-tokens", "512"], "--buffer-tokens applies"),
    "out-is-a-file": (_with(TRAIN, out="{synth}"), "synth.npy exists and is not a folder"),
    "site-with-acts": ([*TRAIN, "--site", SITE], "--site applies when activations come from"),
    "stream-without-site": ([a for a in STREAM if a != SITE and a != "--site"], "needs --site"),
}


@pytest.mark.parametrize("argv, message", ERRORS.values(), ids=ERRORS.keys())
def test_user_error_is_one_line_exit_2_and_writes_nothing(files, tmp_path, capsys, argv,
                                                          message):
    sae = tmp_path / "sae"
    shutil.copytree(files["sae"], sae)
    names = {**{k: str(v) for k, v in files.items()}, "out": str(tmp_path / "out"),
             "sae": str(sae)}
    code, out, err = run(capsys, *(a.format(**names) for a in argv))
    assert code == 2
    assert err.startswith("gated-sae: error: ") and err.endswith("\n"), err
    assert err.count("\n") == 1, err  # one line: no traceback, no progress bar
    assert message.format(**names) in err
    assert out == ""
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in sae.iterdir()) == ["cfg.json", "sae_weights.safetensors"]


# --- train and eval on a file -----------------------------------------------------------------


def test_train_then_eval_on_synthetic(files, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "--acts", files["synth"], "--arch", "gated",
                          "--d-sae", "48", "--batch-size", "256", "--tokens", 256 * 12,
                          "--out", out)
    assert code == 0 and stdout.split() == [str(out / "gated")]
    cfg = json.loads((out / "gated" / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"]) == ("gated", D_IN, 48)
    assert cfg["metadata"]["dataset_path"] == str(files["synth"])

    code, stdout, _ = run(capsys, "eval", out / "gated", "--acts", files["synth"],
                          "--tokens", 1000, "--batch-size", 300)
    assert code == 0
    printed = json.loads(stdout)
    assert ACT_KEYS <= set(printed) and printed["n_tokens"] == 1000
    assert json.loads((out / "gated" / "metrics.json").read_text()) == printed
    # The numbers are those of the API on the same 1000 rows.
    expected = activation_metrics(load_sae(out / "gated"),
                                  load_activations_file(files["synth"])[:1000])
    for key in ACT_KEYS:
        assert printed[key] == pytest.approx(expected[key], rel=1e-9), key


def test_config_with_two_saes_writes_two_folders(files, tmp_path, capsys):
    config = tmp_path / "two.yaml"
    config.write_text(yaml.safe_dump({"batch_size": 128, "tokens": 128 * 8, "saes": [
        {"arch": "relu", "d_sae": 40, "name": "narrow"},
        {"arch": "topk", "d_sae": 96, "options": {"k": 8}},
    ]}))
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "--acts", files["synth"], "--config", config,
                          "--out", out)
    assert code == 0
    assert stdout.split() == [str(out / "narrow"), str(out / "topk")]
    narrow, topk = load_sae(out / "narrow"), load_sae(out / "topk")
    assert (narrow.architecture, narrow.d_sae) == ("relu", 40)
    assert (topk.architecture, topk.d_sae, topk.k) == ("topk", 96, 8)
    assert json.loads((out / "run.json").read_text())["finished"]


# --- resume after SIGKILL -----------------------------------------------------------------------


def _last_step(log: Path) -> int:
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines[:-1]]  # the last may be half-written
    return max(steps, default=0)


def test_sigkill_then_rerun_gives_the_uninterrupted_weights(files, tmp_path):
    config = tmp_path / "three.yaml"
    config.write_text(yaml.safe_dump(THREE_SAES))
    steps = 120

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "gated_sae", "train", "--acts", str(files["synth"]),
                "--config", str(config), "--batch-size", "256", "--tokens", str(256 * steps),
                "--checkpoint-every", "5", "--out", str(out)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a, b = tmp_path / "A", tmp_path / "B"
    child = subprocess.Popen(command(a), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # Past the first checkpoint (step 5) with log lines after it, so the rerun must drop them.
        while child.poll() is None and time.monotonic() < deadline:
            if (a / "checkpoint.pt").exists() and _last_step(a / "metrics.jsonl") >= 7:
                break
            time.sleep(0.002)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert (a / "checkpoint.pt").exists()
    assert not json.loads((a / "run.json").read_text())["finished"]
    assert _last_step(a / "metrics.jsonl") < steps

    for out in (a, b):
        done = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    assert not (a / "checkpoint.pt").exists()
    for name in ("relu", "gated", "topk"):
        wa = load_file(a / name / "sae_weights.safetensors")
        wb = load_file(b / name / "sae_weights.safetensors")
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}.{key} differs after resume"
    rows_a = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["sae"]) for r in rows_a] == [(r["step"], r["sae"]) for r in rows_b]
    assert len(rows_b) == 3 * steps
    assert rows_a == rows_b


# --- a tiny language model: cache → train → eval, and streaming -----------------------------------


def test_cache_train_eval_on_a_tiny_model(files, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, stdout, _ = run(capsys, "cache", "--model", files["tiny"], "--site", SITE,
                          "--dataset", files["corpus"], "--tokens", 40 * CTX,
                          "--context-size", CTX, "--shard-tokens", 16 * CTX, "--out", cache)
    assert code == 0 and stdout.strip() == str(cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (manifest["n_seq"], manifest["site"], manifest["d_in"]) == (40, SITE, D_IN)
    assert len(manifest["shards"]) == 3 and manifest["complete"]

    run_dir = tmp_path / "run"
    code, _, _ = run(capsys, "train", "--acts", cache, "--arch", "relu", "--d-sae", "64",
                     "--batch-size", "100", "--tokens", 100 * 10, "--buffer-tokens", 200,
                     "--out", run_dir)
    assert code == 0
    metadata = json.loads((run_dir / "relu" / "cfg.json").read_text())["metadata"]
    assert metadata["model_name"] == str(files["tiny"].resolve())
    assert metadata["hook_name"] == SITE and metadata["context_size"] == CTX
    assert metadata["dataset_path"] == str(files["corpus"].resolve())
    assert metadata["prepend_bos"] is True

    # No --model, --site, --dataset, --context-size: all come from the SAE's metadata.
    code, stdout, _ = run(capsys, "eval", run_dir / "relu", "--tokens", 5 * CTX)
    assert code == 0
    printed = json.loads(stdout)
    assert ACT_KEYS | LM_KEYS <= set(printed)
    assert (printed["site"], printed["context_size"], printed["split"]) == (SITE, CTX, "heldout")
    assert printed["n_tokens"] == 5 * (CTX - 1)  # held-out windows, BOS dropped
    assert printed["lm_n_tokens"] == 5 * (CTX - 2)  # predictions from spliced positions
    assert all(np.isfinite(printed[k]) for k in ACT_KEYS | LM_KEYS)
    assert printed["ce_zero"] != printed["ce_clean"] and printed["kl"] > 0
    assert json.loads((run_dir / "relu" / "metrics.json").read_text()) == printed

    code, stdout, _ = run(capsys, "eval", run_dir / "relu", "--acts", cache)
    assert code == 0 and json.loads(stdout)["n_tokens"] == 40 * (CTX - 1)

    # skip_positions: trained past the first two positions, recorded, and evaluated so
    code, _, _ = run(capsys, "train", "--acts", cache, "--arch", "relu", "--d-sae", "64",
                     "--batch-size", "100", "--tokens", 100 * 10, "--skip-positions", 2,
                     "--out", tmp_path / "skip2")
    assert code == 0
    metadata = json.loads((tmp_path / "skip2" / "relu" / "cfg.json").read_text())["metadata"]
    assert metadata["skip_positions"] == 2
    code, stdout, _ = run(capsys, "eval", tmp_path / "skip2" / "relu", "--tokens", 5 * CTX)
    printed = json.loads(stdout)
    assert code == 0 and printed["skip_positions"] == 2
    assert (printed["n_tokens"], printed["lm_n_tokens"]) == (5 * (CTX - 2), 5 * (CTX - 3))
    code, _, err = run(capsys, "eval", tmp_path / "skip2" / "relu", "--acts", cache,
                       "--skip-positions", 1)
    assert code == 2 and "--skip-positions applies to eval --model" in err


def test_stream_batches_are_the_models_activations_and_resume(files, one_thread_module):
    lm = load_model(str(files["tiny"]))
    dataset = str(files["small"])
    batches = model_batches(lm, SITE, dataset, 40, seed=1, context_size=CTX,
                            lm_batch_size=3, buffer_tokens=4 * (CTX - 1))
    assert batches.chunk_windows == 4
    it = iter(batches)
    got = [next(it) for _ in range(40)]  # 1600 tokens: several passes over the corpus
    assert all(b.shape == (40, D_IN) and b.dtype == torch.float32 for b in got)
    windows = token_windows(lm.tokenizer, dataset, context_size=CTX)
    n_train = len(windows) * (CTX - 1)
    assert 1600 > 2 * n_train  # wrapped around the corpus at least twice
    expected = lm.activations(windows, SITE)[:, 1:].reshape(-1, D_IN)
    first_epoch = torch.cat(got)[:batches.chunk_tokens * (len(windows) // 4)]
    key = lambda x: x[np.lexsort(x.numpy().T[::-1])]  # noqa: E731  rows in sorted order
    torch.testing.assert_close(key(first_epoch), key(expected[:len(first_epoch)]),
                               rtol=1e-5, atol=1e-6)
    assert not torch.equal(first_epoch, expected[:len(first_epoch)])  # shuffled
    for step in (0, 1, 2, 13, 39):
        assert torch.equal(next(batches.iter_from(step)), got[step])


def test_train_streaming_from_a_tiny_model(files, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "--model", files["tiny"], "--site", SITE,
                          "--dataset", files["small"], "--context-size", CTX, "--config",
                          _three_saes(tmp_path), "--batch-size", 64, "--tokens", 64 * 12,
                          "--buffer-tokens", 128, "--lm-batch-size", 4, "--out", out)
    assert code == 0 and stdout.split() == [str(out / n) for n in ("relu", "gated", "topk")]
    for name in ("relu", "gated", "topk"):
        metadata = json.loads((out / name / "cfg.json").read_text())["metadata"]
        assert metadata["hook_name"] == SITE and metadata["context_size"] == CTX
        assert metadata["model_name"] == str(files["tiny"].resolve())
        assert load_sae(out / name).d_in == D_IN
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [s for s in range(1, 13) for _ in range(3)]


def _three_saes(folder: Path) -> Path:
    path = folder / "three.yaml"
    path.write_text(yaml.safe_dump(THREE_SAES))
    return path


# --- SAELens folders ------------------------------------------------------------------------------


def test_eval_reads_folders_written_by_saelens(files, tmp_path, capsys):
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(0)
    named = tmp_path / "named"
    theirs = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(
        d_in=D_IN, d_sae=64,
        metadata=SAEMetadata(hook_name=SITE, model_name=str(files["tiny"]), context_size=CTX),
    ))
    theirs.save_model(named)
    code, stdout, err = run(capsys, "eval", named, "--dataset", files["corpus"], "--tokens", 64)
    assert code == 0, err
    printed = json.loads(stdout)
    assert ACT_KEYS | LM_KEYS <= set(printed) and printed["site"] == SITE

    bare = tmp_path / "bare"
    sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=64)).save_model(bare)
    code, stdout, _ = run(capsys, "eval", bare, "--acts", files["synth"], "--tokens", 500)
    assert code == 0 and json.loads(stdout)["n_tokens"] == 500
    code, _, err = run(capsys, "eval", bare, "--model", files["tiny"])
    assert code == 2 and "needs --site" in err and err.count("\n") == 1
