"""Under torchrun with 2 gloo ranks: SAE-parallel, data-parallel and latent-parallel training
and sweeps give what one process gives, and a rank that dies or hangs stops the job with an
error, after which the rerun resumes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import _SENTENCES, save_tiny_model
from test_sweep import _untimed, tiny_sweep

from gated_sae import load_sae
from gated_sae.data.synthetic import SyntheticFeatures
from gated_sae.distributed import World
from gated_sae.experiments.sweep import Sweep, load_sweep_config

pytestmark = pytest.mark.usefixtures("single_thread")
D_IN, STEPS = 16, 600
SAES = [
    {"arch": "relu", "d_sae": 32, "sparsity_coef": 1.0, "resample_every": 8},
    # λ so high that latents die and are resampled
    {"arch": "relu", "d_sae": 32, "sparsity_coef": 40.0, "resample_every": 8, "name": "relu-dying"},
    {"arch": "gated", "d_sae": 64, "sparsity_coef": 1.0},
    {"arch": "gated", "d_sae": 32, "sparsity_coef": 1.0, "options": {"b_mag": False},
     "name": "gated-nobmag"},
    {"arch": "gated", "d_sae": 32, "sparsity_coef": 1.0, "options": {"tied": False},
     "name": "gated-untied"},
    {"arch": "topk", "d_sae": 48, "options": {"k": 4}},
    {"arch": "batchtopk", "d_sae": 32, "options": {"k": 4}},
    {"arch": "jumprelu", "d_sae": 32, "sparsity_coef": 0.1},
]


def test_share_gives_every_item_to_one_rank_and_balances_the_cost():
    costs = [5.0, 1.0, 1.0, 3.0, 2.0, 2.0, 4.0]
    shares = [World(rank, 3).share(costs) for rank in range(3)]
    assert sorted(i for share in shares for i in share) == list(range(len(costs)))
    loads = [sum(costs[i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= max(costs) and sum(loads) == sum(costs)
    assert World().share(costs) == list(range(len(costs)))


def torchrun(args: list[str], ranks: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={ranks}", "-m", "gated_sae", *args]
    return subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_process(args: list[str]) -> None:
    run = subprocess.run([sys.executable, "-m", "gated_sae", *args], capture_output=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True)
    assert run.returncode == 0, run.stderr


def same_sae(a: Path, b: Path) -> None:
    """Two SAE folders hold the same weights up to round-off: within 1e-5 of each tensor's
    norm (Adam turns round-off in a near-zero gradient into a whole step, so single entries
    may differ by more)."""
    left, right = load_sae(a).state_dict(), load_sae(b).state_dict()
    for key in left:
        if not left[key].is_floating_point():  # BatchTopK's threshold_initialised
            assert torch.equal(left[key], right[key]), (a, key)
            continue
        gap = float((left[key] - right[key]).norm() / right[key].norm().clamp_min(1e-12))
        assert gap <= 1e-5, (a, key, gap)  # measured: at most 5e-6 (relu, resampling)


def same_saes_and_logs(a: Path, b: Path) -> list[list[dict]]:
    """Two run folders hold the same SAEs (`same_sae`) and logs up to round-off; the logs."""
    for s in SAES:
        same_sae(a / s.get("name", s["arch"]), b / s.get("name", s["arch"]))
    logs = [[json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()]
            for f in (a, b)]
    assert len(logs[0]) == len(logs[1])
    for ours, theirs in zip(*logs, strict=True):
        assert ours.keys() == theirs.keys() and ours["sae"] == theirs["sae"]
        for key, value in theirs.items():
            if key != "sae":
                assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (ours["sae"], key)
    return logs


def finished(child: subprocess.Popen, timeout: float = 300) -> str:
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distributed")
    acts = SyntheticFeatures(48, D_IN, mean_active=3, seed=0).sample(4096) * 10 + 1
    np.save(root / "acts.npy", acts.numpy())
    config = root / "run.yaml"
    # Long enough that a rank can be stopped between checkpoints.
    config.write_text(yaml.safe_dump({
        # lr 5e-3: at the default for 600 steps (1e-2) the small gated SAEs amplify round-off
        # until runs that differ only in it part by 1e-2
        "saes": [{**s, "lr": 5e-3} for s in SAES], "batch_size": 128, "tokens": 128 * STEPS,
        "lr_warmup_steps": 2, "log_every": 5, "checkpoint_every": 10, "dead_tokens": 256,
    }))
    return root / "acts.npy", config


def train_args(inputs: tuple[Path, Path], out: Path) -> list[str]:
    acts, config = inputs
    return ["train", "--acts", str(acts), "--config", str(config), "--out", str(out)]


def same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same SAEs, logs and run record (timings aside)."""
    for s in SAES:
        name = s.get("name", s["arch"])
        left, right = load_sae(a / name).state_dict(), load_sae(b / name).state_dict()
        for key in left:
            torch.testing.assert_close(left[key], right[key], rtol=1e-5, atol=1e-7, msg=key)
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    runs = [json.loads((f / "run.json").read_text()) for f in (a, b)]
    for key in ("config", "input_scale", "dead_fraction", "finished"):
        assert runs[0][key] == runs[1][key], key
    assert not (a / "checkpoint.pt").exists() and not (b / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def single_run(run_inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    child = subprocess.Popen([sys.executable, "-m", "gated_sae", *train_args(run_inputs, out)],
                             env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished(child)
    return out


@pytest.mark.slow
def test_sae_parallel_training_matches_one_process(run_inputs, single_run, tmp_path):
    out = tmp_path / "run"
    printed = finished(torchrun(train_args(run_inputs, out)))
    assert sorted(printed.split()) == sorted(str(out / s.get("name", s["arch"])) for s in SAES)
    same_run(single_run, out)


@pytest.mark.slow
def test_data_parallel_training_matches_one_process(run_inputs, single_run, tmp_path):
    """Each rank steps every SAE on its half of each batch and the ranks sum their gradients:
    the whole batch's, so the SAEs and their logs are one process's up to round-off. AuxK's
    and TopK's normalisers, BatchTopK's selection and relu's resampling see the whole batch."""
    out = tmp_path / "run"
    printed = finished(torchrun([*train_args(run_inputs, out), "--parallel", "data"]))
    names = [s.get("name", s["arch"]) for s in SAES]
    assert sorted(printed.split()) == sorted(str(out / name) for name in names)  # rank 0's
    same_saes_and_logs(out, single_run)
    runs = [json.loads((f / "run.json").read_text()) for f in (out, single_run)]
    assert runs[0]["input_scale"] == runs[1]["input_scale"]
    assert runs[0]["timing"]["parallel"] == "data" and runs[0]["timing"]["ranks"] == 2
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.slow
def test_latent_parallel_training_matches_one_process_and_resumes(
    run_inputs, single_run, tmp_path
):
    """Each rank holds half of every SAE's latents (and their Adam moments and dead-latent
    counts) and steps on the whole batch: the decoder's partial outputs and b_dec's encoder
    gradients are summed over the ranks, TopK's, AuxK's and BatchTopK's selections agree
    across them, relu's resampling draws for all ranks' dead latents. Stopped after a
    checkpoint (which holds the whole SAEs) and rerun, it ends with one process's SAEs,
    saved whole. (`--shard-latents` is `--parallel latents`.)"""
    out = tmp_path / "run"
    args = [*train_args(run_inputs, out), "--shard-latents", "--rank-timeout", "5"]
    launcher = torchrun(args)
    _wait_for_checkpoint(out, launcher)
    os.kill(_workers(launcher)[1], signal.SIGKILL)
    launcher.communicate(timeout=65)
    assert launcher.returncode != 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["slots"][2]["sae"][
        "W_dec"].shape == (64, D_IN)  # gated's, whole
    finished(torchrun(args))
    logs = same_saes_and_logs(out, single_run)
    assert any(row.get("resampled") for row in logs[0])  # relu's resampling was exercised
    assert any(row.get("aux") for row in logs[0] if row["sae"] == "topk")  # and AuxK
    run = json.loads((out / "run.json").read_text())
    assert run["timing"]["parallel"] == "latents" and run["timing"]["ranks"] == 2
    assert run["dead_fraction"] == pytest.approx(
        json.loads((single_run / "run.json").read_text())["dead_fraction"])


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """The worker processes torchrun started: pid by rank."""
    workers = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == launcher.pid:
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                workers[int(rank[0][5:])] = int(proc.name)
    return workers


def _wait_for_checkpoint(out: Path, launcher: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").is_file():
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_lost_rank_stops_the_job_with_an_error_and_the_rerun_resumes(
    run_inputs, single_run, tmp_path, fault
):
    out = tmp_path / "run"
    timeout = 5
    args = [*train_args(run_inputs, out), "--rank-timeout", str(timeout)]
    launcher = torchrun(args)
    _wait_for_checkpoint(out, launcher)
    rank1 = _workers(launcher)[1]
    lost = time.monotonic()
    os.kill(rank1, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
    try:
        _, err = launcher.communicate(timeout=timeout + 60)
    finally:
        if fault == "hung":
            with contextlib.suppress(ProcessLookupError):  # torchrun may have killed it
                os.kill(rank1, signal.SIGCONT)
    assert launcher.returncode != 0
    assert time.monotonic() - lost < timeout + 60
    assert "lost contact with another rank" in err, err[-3000:]
    assert (out / "checkpoint.pt").is_file()

    finished(torchrun(train_args(run_inputs, out)))
    same_run(single_run, out)


@pytest.mark.slow
def test_sae_parallel_sweep_writes_what_one_process_writes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_SENTENCES * 400))
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(tiny_sweep(save_tiny_model("llama", tmp_path / "lm"),
                                                 corpus)))
    whole = Sweep(load_sweep_config(str(config)), tmp_path / "whole").run()
    out = tmp_path / "parallel"
    printed = finished(torchrun(["sweep", str(config), "--out", str(out)])).splitlines()
    assert printed[-1] == f"results: {out / 'results.csv'}"
    assert len(printed) == 5  # a line per pass, from rank 0 alone
    assert _untimed(out / "results.csv") == _untimed(whole)
    for name in ("curves.csv", "heldout.npz"):
        assert (out / name).read_bytes() == (whole.parent / name).read_bytes(), name
    record = json.loads((out / "sweep.json").read_text())
    assert record["machine"]["ranks"] == 2


@pytest.mark.slow
def test_streaming_from_a_model_splits_its_forward_over_the_ranks(tmp_path):
    """Each rank runs the model on half of each shuffle buffer's windows and the ranks gather
    the activations: every rank trains on one process's batches (data parallel here)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_SENTENCES * 400))
    model = save_tiny_model("llama", tmp_path / "lm")
    args = ["train", "--model", str(model), "--site", "blocks.1.hook_resid_post", "--dataset",
            str(corpus), "--context-size", "16", "--arch", "relu", "--d-sae", "32",
            "--batch-size", "64", "--tokens", str(64 * 40), "--buffer-tokens", "512",
            "--lm-batch-size", "4", "--lr", "1e-2"]
    one_process([*args, "--out", str(tmp_path / "single")])
    finished(torchrun([*args, "--out", str(tmp_path / "split")]))
    same_sae(tmp_path / "split" / "relu", tmp_path / "single" / "relu")


@pytest.mark.slow
def test_caching_split_over_ranks_writes_the_cache_one_process_writes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_SENTENCES * 400))
    model = save_tiny_model("llama", tmp_path / "lm")
    args = ["cache", "--model", str(model), "--site", "blocks.1.hook_resid_post",
            "--dataset", str(corpus), "--context-size", "16", "--tokens", "1100",
            "--shard-tokens", "256", "--batch-size", "4"]
    one_process([*args, "--out", str(tmp_path / "single")])
    finished(torchrun([*args, "--out", str(tmp_path / "split")]))
    manifests = [json.loads((tmp_path / f / "manifest.json").read_text())
                 for f in ("single", "split")]
    assert len(manifests[0]["shards"]) == 5 and manifests[1]["complete"]
    assert manifests[0]["shards"] == manifests[1]["shards"]  # names, sizes and checksums
