"""A full disk is a user error: `gated-sae cache` and `gated-sae train` that run out of space
say so in one line naming the file and the cause, exit 2, and leave what they had written
whole, so that a rerun completes to the result of an uninterrupted run.

A file-size limit (RLIMIT_FSIZE) stands in for the full disk: a write past it fails with
EFBIG as a write to a full disk fails with ENOSPC. Only the failing run needs its own process
(for the limit); the reruns and the uninterrupted runs run in this one, on one thread like it.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import _SENTENCES, save_tiny_model
from safetensors.torch import load_file

from gated_sae.cli import main
from gated_sae.data.cache import MANIFEST, load_cache
from gated_sae.errors import DataError

pytestmark = pytest.mark.usefixtures("single_thread")

SITE = "blocks.1.hook_resid_post"
CTX = 16


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny gpt2 model, a corpus over its words, and a training config."""
    root = tmp_path_factory.mktemp("full-disk")
    words = sorted({w for s in _SENTENCES for w in s.split()})
    rng = random.Random(0)
    corpus = root / "docs.txt"
    corpus.write_text("\n\n".join(" ".join(rng.choices(words, k=rng.randint(3, 30)))
                                  for _ in range(200)))
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump({"log_every": 1, "saes": [{"arch": "relu", "d_sae": 32}]}))
    return {"model": save_tiny_model("gpt2", root / "tiny"), "corpus": corpus,
            "config": config}


def cache_args(inputs: dict, out: Path) -> list[str]:
    """160 tokens in shards of one window: 10 shards of 2176 bytes of activations each."""
    return ["cache", "--model", str(inputs["model"]), "--site", SITE, "--dataset",
            str(inputs["corpus"]), "--context-size", str(CTX), "--tokens", "160",
            "--shard-tokens", str(CTX), "--out", str(out)]


def train_args(inputs: dict, out: Path) -> list[str]:
    """300 steps of one relu SAE streamed from the model, a checkpoint (36.5 kB) every 25
    steps, a line of metrics.jsonl (about 210 bytes) every step."""
    return ["train", "--model", str(inputs["model"]), "--site", SITE, "--dataset",
            str(inputs["corpus"]), "--context-size", str(CTX), "--config", str(inputs["config"]),
            "--batch-size", "32", "--tokens", str(32 * 300), "--checkpoint-every", "25",
            "--buffer-tokens", "240", "--out", str(out)]


def run_with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the process is killed, not told
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(
            resource.RLIMIT_FSIZE)[1]))

    return subprocess.run(
        [sys.executable, "-m", "gated_sae", *args], capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=limit_file_size, timeout=300,
    )


def said(stderr: bytes) -> list[str]:
    """The lines of stderr, less the progress bars' (which start with a carriage return)."""
    return [line for line in stderr.decode().split("\n")[:-1] if not line.startswith("\r")]


def out_of_space(path: Path) -> str:
    return (f"gated-sae: error: cannot write {path}: File too large; free some space or "
            "write elsewhere, then run again")


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("uninterrupted")
    runs = {"cache": root / "cache", "train": root / "train"}
    torch.set_num_threads(1)
    assert main(cache_args(inputs, runs["cache"])) == 0
    assert main(train_args(inputs, runs["train"])) == 0
    return runs


@pytest.mark.parametrize("limit, failing, listed", [
    (2000, "shard_00000.acts.npy", 0),  # below the size of one shard
    (3000, MANIFEST, 5),  # above it; the manifest outgrows it after 5 shards
])
def test_cache_out_of_space_then_rerun(inputs, uninterrupted, tmp_path, limit, failing, listed):
    out = tmp_path / "cache"
    done = run_with_file_size_limit(cache_args(inputs, out), limit)
    assert (done.returncode, done.stdout) == (2, b"")
    assert said(done.stderr) == [out_of_space(out / failing)]

    # What is left is the last good state: a manifest listing whole shards, no temporaries.
    manifest = json.loads((out / MANIFEST).read_text())
    assert len(manifest["shards"]) == listed and not manifest["complete"]
    assert not list(out.glob(".*"))
    with pytest.raises(DataError, match=f"incomplete \\({listed} of 10 windows\\)"):
        load_cache(out)

    assert main(cache_args(inputs, out)) == 0
    load_cache(out).verify()
    reference = uninterrupted["cache"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    for file in reference.glob("*.npy"):
        assert (out / file.name).read_bytes() == file.read_bytes(), file.name

    def content(folder: Path) -> dict:
        manifest = json.loads((folder / MANIFEST).read_text())
        return {k: v for k, v in manifest.items() if k not in ("created", "updated")}

    assert content(out) == content(reference)


@pytest.mark.parametrize("limit, failing, resumes", [
    (20_000, "checkpoint.pt", False),  # the first checkpoint does not fit: starts over
    (45_000, "metrics.jsonl", True),  # checkpoints fit, the log outgrows the limit after them
])
def test_train_out_of_space_then_rerun(inputs, uninterrupted, tmp_path, limit, failing, resumes):
    out = tmp_path / "train"
    done = run_with_file_size_limit(train_args(inputs, out), limit)
    assert (done.returncode, done.stdout) == (2, b"")
    assert said(done.stderr) == [out_of_space(out / failing)]

    assert (out / "checkpoint.pt").exists() == resumes
    assert not list(out.glob(".*"))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # whole lines, one a step
    assert 0 < len(steps) < 300

    assert main(train_args(inputs, out)) == 0
    reference = uninterrupted["train"]
    got, expected = (load_file(run / "relu" / "sae_weights.safetensors")
                     for run in (out, reference))
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert (out / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
