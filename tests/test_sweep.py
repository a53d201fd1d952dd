"""The sweep engine end to end on a tiny real model: grid expansion, passes, evaluation,
results.csv, and resuming an interrupted sweep to the same table."""

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import _SENTENCES, save_tiny_model

from gated_sae import load_sae
from gated_sae.cli import main
from gated_sae.data.cache import build_cache
from gated_sae.data.corpus import token_windows
from gated_sae.data.lm import load_model
from gated_sae.errors import ConfigError
from gated_sae.evaluate.heldout import metrics_from_totals
from gated_sae.evaluate.lm_metrics import lm_metrics
from gated_sae.evaluate.metrics import activation_metrics
from gated_sae.experiments.results import COLUMNS
from gated_sae.experiments.sweep import (
    CONVERGENCE_TOLERANCE,
    Sweep,
    SweepConfig,
    convergence,
    expand_grid,
    load_sweep_config,
    plan_passes,
)


def tiny_sweep(model_dir: Path, corpus: Path) -> dict:
    return {
        "model": str(model_dir),
        "site": "blocks.1.hook_resid_post",
        "dataset": str(corpus),
        "cache_tokens": 3000,
        "context_size": 16,
        "tokens": 2560,
        "batch_size": 128,
        "seeds": [0],
        "max_saes_per_pass": 2,
        "eval_windows": 4,
        "train": {"lr_warmup_steps": 2, "checkpoint_every": 4, "log_every": 4},
        "grid": [
            {"arch": "relu", "d_sae": 64, "lr": [1e-3, 1e-2], "sparsity_coef": 0.5,
             "role": "lr_sweep"},
            {"arch": "gated", "d_sae": 64, "lr": 1e-2, "sparsity_coef": [0.5, 1.0],
             "role": "lr_sweep"},
            {"arch": "gated", "d_sae": 64, "lr": 1e-2, "sparsity_coef": 0.5,
             "options": {"b_mag": False}, "seeds": [0, 1], "role": ["ablation", "seeds"]},
            {"arch": "relu", "d_sae": 64, "lr": 1e-2, "sparsity_coef": 0.5, "role": "seeds"},
            {"arch": "topk", "d_sae": 64, "lr": 1e-2, "k": 4},
        ],
    }


@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sweep-inputs")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_SENTENCES * 400))
    return save_tiny_model("llama", root / "model"), corpus


def test_grid_expansion_merges_roles_and_names_every_sae(sweep_inputs):
    config = SweepConfig.from_dict(tiny_sweep(*sweep_inputs))
    points = expand_grid(config)
    names = [p.sae.name for p in points]
    assert len(names) == len(set(names)) == 7  # 2 relu lr + 2 gated λ + 2 no-b_mag seeds + topk
    merged = next(p for p in points if p.sae.name == "relu_d64_lr0.01_c0.5_s0")
    assert merged.roles == {"lr_sweep", "seeds"}  # asked for twice, trained once
    no_b_mag = [p for p in points if p.variant == "gated no b_mag"]
    assert sorted(p.seed for p in no_b_mag) == [0, 1]
    assert next(p for p in points if p.sae.arch == "topk").sae.options == {"k": 4}
    passes = plan_passes(points, 2)
    assert all(len(group) <= 2 for _, group in passes)
    assert all(len({p.seed for p in group}) == 1 for _, group in passes)
    # tokens in proportion to width above the floor; a pass shares one budget
    wide = tiny_sweep(*sweep_inputs) | {"tokens_per_latent": 30}
    wide["grid"] = [{"arch": "relu", "d_sae": [64, 128], "lr": 1e-2, "sparsity_coef": 0.5}]
    points = expand_grid(SweepConfig.from_dict(wide))
    assert [p.tokens for p in points] == [2560, 3840]
    assert [len(group) for _, group in plan_passes(points, 4)] == [1, 1]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid": [{"arch": "nope", "d_sae": 8}]}, "unknown architecture 'nope'"),
        ({"grid": [{"arch": "relu", "d_sae": 8, "width": 3}]}, "unknown grid key 'width'"),
        ({"grid": [{"arch": "relu", "d_sae": 8, "role": "misc"}]}, "unknown role 'misc'"),
        ({"grid": []}, "non-empty list 'grid'"),
        ({"epochs": 3}, "unknown sweep setting 'epochs'"),
        ({"curve_points": 0}, "curve_points must be a positive integer"),
        ({"tokens_per_latent": -1}, "tokens_per_latent must be a positive integer"),
    ],
)
def test_bad_sweep_configs_name_the_problem(sweep_inputs, tmp_path, change, message):
    raw = {**tiny_sweep(*sweep_inputs), **change}
    with pytest.raises(ConfigError, match=message):
        Sweep(SweepConfig.from_dict(raw), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("preset", ["questions", "paper"])
def test_presets_hold_the_comparisons_the_three_questions_need(preset):
    """As issue 10 asks: at the main width relu, gated and gated without b_mag at 5+ sparsity
    levels and 3 seeds each, relu and gated each over 3+ learning rates at 3+ levels with
    the seeded lr strictly inside them; the other ablations at 3+ levels; relu and gated at
    3+ widths, 4+ levels and 3 seeds each; topk, batchtopk and jumprelu at the main width."""
    config = load_sweep_config(preset=preset)
    points = expand_grid(config)
    main = config.main_width

    def seeds(variant, width):
        """{(lr, level): number of seeds} of a variant at a width."""
        counts = {}
        for p in points:
            if p.variant == variant and p.sae.d_sae == width:
                key = (p.sae.lr, p.sae.sparsity_coef)
                counts[key] = counts.get(key, 0) + 1
        return counts

    for variant in ("relu", "gated", "gated no b_mag"):
        seeded = {key for key, n in seeds(variant, main).items() if n >= 3}
        assert len({level for _, level in seeded}) >= 5, variant
    assert ({level for _, level in seeds("gated", main)}
            >= {level for _, level in seeds("gated no b_mag", main)})
    for variant in ("relu", "gated"):
        trained = seeds(variant, main)
        seeded_lrs = {lr for (lr, _), n in trained.items() if n >= 3}
        swept = [level for level in {level for _, level in trained}
                 if len(lrs := sorted(lr for lr, c in trained if c == level)) >= 3
                 and all(lrs[0] < lr < lrs[-1] for lr in seeded_lrs)]
        assert len(swept) >= 3, variant
        widths = {p.sae.d_sae for p in points if p.variant == variant}
        assert len(widths) >= 3, variant
        for width in widths:
            levels = {level for (_, level), n in seeds(variant, width).items() if n >= 3}
            assert len(levels) >= 4, (variant, width)
    for variant in ("gated no r_mag", "gated untied"):  # the paper's ablations
        assert len(seeds(variant, main)) >= 3, variant
    assert {"topk", "batchtopk", "jumprelu"} <= {p.variant for p in points if p.sae.d_sae == main}


def _curve(twin, end):
    """An SAE's curve points from the (L0, FVU, loss recovered) of its half-budget twin and of
    the end of its run of 8 steps; at step 4 the run itself is elsewhere (constant lr)."""
    def point(step, run, values):
        l0, fvu, lr = values
        return {"step": step, "run_tokens": run, "l0": l0, "fvu": fvu, "loss_recovered": lr}

    return [point(4, 8, (99, 0.9, 0.5)), point(4, 4, twin), point(8, 8, end)]


def test_convergence_compares_each_sae_with_its_familys_half_budget_frontier_at_matched_l0():
    """Three levels. The twins (step 4, lr decayed) make the half-budget frontier (L0 10,
    0.90), (30, 0.95), (40, 0.98). At the end the sparse SAE sank to L0 20 at 0.945: the
    frontier reads 0.90 + 0.05·ln 2/ln 3 there, so it rose by more than 0.005 and fails
    though its own loss recovered fell. The dense one ends at L0 50, 1.25× past the last
    twin, inside the reach: the end segment continued."""
    sparse = _curve((10, 0.4, 0.90), (20, 0.27, 0.945))
    middle = _curve((30, 0.25, 0.95), (30, 0.25, 0.952))
    dense = _curve((40, 0.2, 0.98), (50, 0.15, 0.985))
    found = convergence({"sparse": sparse, "middle": middle, "dense": dense})
    x = math.log
    at20 = 0.90 + 0.05 * x(2) / x(3)
    assert found["sparse"]["lr_change"] == pytest.approx(0.945 - at20)
    fvu20 = 0.4 - 0.15 * x(2) / x(3)  # FVU's envelope (lower is better) has the same points
    assert found["sparse"]["fvu_change"] == pytest.approx((0.27 - fvu20) / 0.27)
    assert found["middle"]["lr_change"] == pytest.approx(0.002)  # at a twin's own L0
    beyond = 0.95 + 0.03 * x(50 / 30) / x(40 / 30)
    assert found["dense"]["lr_change"] == pytest.approx(0.985 - beyond)
    assert [found[n]["converged"] for n in ("sparse", "middle", "dense")] == [0, 1, 0]


def test_convergence_reads_the_envelope_and_nothing_far_past_its_ends():
    """A twin that a sparser twin beats is off the envelope; past 1.5× beyond the twins' L0
    range nothing is read; a family of one reads its own twin within that reach; an SAE
    that never fired cannot be judged."""
    beaten = _curve((40, 0.3, 0.93), (40, 0.3, 0.95))
    better = _curve((20, 0.2, 0.96), (20, 0.2, 0.962))
    far = _curve((60, 0.2, 0.97), (200, 0.1, 0.99))
    found = convergence({"beaten": beaten, "better": better, "far": far})
    # at L0 40 the envelope runs from (20, 0.96) to (60, 0.97), not through the beaten 0.93
    on_envelope = 0.96 + 0.01 * math.log(2) / math.log(3)
    assert found["beaten"]["lr_change"] == pytest.approx(0.95 - on_envelope)
    assert found["better"]["lr_change"] == pytest.approx(0.002)
    assert math.isnan(found["far"]["lr_change"]) and found["far"]["converged"] == 0
    alone = convergence({"a": _curve((8, 0.4, 0.93), (7, 0.4, 0.932))})
    assert alone["a"]["lr_change"] == pytest.approx(0.002) and alone["a"]["converged"] == 1
    dead = convergence({"d": _curve((0, 1, 0), (0, 1, 0))})
    assert math.isnan(dead["d"]["lr_change"]) and dead["d"]["converged"] == 0


def test_unknown_preset_is_named():
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        load_sweep_config(preset="fast")


SITE = "blocks.1.hook_resid_post"
CACHE_CTX = 12  # neither the default context size nor the tiny_sweep one


@pytest.fixture(scope="module")
def other_cache(sweep_inputs, tmp_path_factory) -> tuple[Path, Path]:
    """A cache of model A (sweep_inputs' model) on its corpus with windows of CACHE_CTX, and a
    model B of the same width with other weights."""
    model_a, corpus = sweep_inputs
    root = tmp_path_factory.mktemp("other-cache")
    cache = build_cache(load_model(str(model_a)), SITE, str(corpus), n_tokens=2400,
                        out=root / "cache", context_size=CACHE_CTX, progress=False)
    return cache, save_tiny_model("llama", root / "model-b", seed=1)


def _over_cache(cache: Path, **settings) -> dict:
    return {"cache": str(cache), "tokens": 1280, "batch_size": 128, "eval_windows": 4,
            "train": {"lr_warmup_steps": 2, "log_every": 5},
            "grid": [{"arch": "relu", "d_sae": 64, "lr": 1e-2, "sparsity_coef": 0.5}],
            **settings}


def test_a_sweep_over_a_cache_evaluates_with_the_caches_model_corpus_and_context(
    sweep_inputs, other_cache, tmp_path, single_thread
):
    (model_a, corpus), (cache, model_b) = sweep_inputs, other_cache
    # No model, dataset or context size: the defaults would name another model and corpus.
    results = Sweep(SweepConfig.from_dict(_over_cache(cache, site=SITE)), tmp_path).run()
    (row,) = csv.DictReader(results.open())
    (folder,) = (tmp_path / "passes").glob(f"*/{row['name']}")
    sae = load_sae(folder)
    metadata = json.loads((folder / "cfg.json").read_text())["metadata"]
    assert metadata["model_name"] == str(model_a.resolve())
    assert (metadata["dataset_path"], metadata["context_size"]) == (
        str(corpus.resolve()), CACHE_CTX)
    record = json.loads((tmp_path / "sweep.json").read_text())["config"]
    assert (record["model"], record["dataset"], record["context_size"]) == (
        str(model_a.resolve()), str(corpus.resolve()), CACHE_CTX)

    def measured_with(model: Path) -> dict:
        lm = load_model(str(model))
        windows = token_windows(lm.tokenizer, str(corpus), context_size=CACHE_CTX, n_windows=4,
                                split="heldout", bos_token_id=lm.bos_token_id)
        acts = lm.activations(windows, SITE)[:, 1:].flatten(0, 1)
        return {**activation_metrics(sae, acts), **lm_metrics(lm, sae, SITE, windows)}

    expected = measured_with(model_a)
    for key in ("l0", "fvu", "ce_clean", "ce_sae", "ce_zero", "loss_recovered", "kl"):
        assert float(row[key]) == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    assert int(row["lm_eval_tokens"]) == expected["n_tokens"] == 4 * (CACHE_CTX - 2)
    assert int(row["eval_tokens"]) == 4 * (CACHE_CTX - 1)
    assert measured_with(model_b)["ce_clean"] != pytest.approx(expected["ce_clean"])

    # heldout.npz: per-window sums that add up to the row's metrics
    with np.load(tmp_path / "heldout.npz") as sums:
        assert sums["names"].tolist() == [row["name"]] and sums["err_sq"].shape == (1, 4)
        totals = metrics_from_totals({k: sums[k].sum() if k != "mu_sq" else sums[k]
                                      for k in sums.files if k != "names"})
    for key in ("fvu", "l0", "gamma", "gamma_centred", "loss_recovered", "delta_loss"):
        assert float(row[key]) == pytest.approx(float(totals[key]), rel=1e-12), key
    # curves.csv: curve_points evaluations, the last one at the end, and the half-budget
    # twin's at step 5; convergence from them
    curve = list(csv.DictReader((tmp_path / "curves.csv").open()))
    assert [(int(r["step"]), int(r["run_tokens"])) for r in curve] == [
        *((s, 1280) for s in range(1, 6)), (5, 640), *((s, 1280) for s in range(6, 11))]
    assert {r["name"] for r in curve} == {row["name"]}
    # one SAE, so its own twin is the frontier the end is compared with, at an L0 near it
    twin, end = curve[5], curve[-1]
    assert 1 / 1.5 <= float(end["l0"]) / float(twin["l0"]) <= 1.5
    change = float(end["loss_recovered"]) - float(twin["loss_recovered"])
    assert float(row["lr_change"]) == pytest.approx(change)
    assert row["converged"] == str(int(abs(change) < CONVERGENCE_TOLERANCE))
    run = json.loads(next((tmp_path / "passes").glob("*/run.json")).read_text())
    assert float(row["train_dead_fraction"]) == run["dead_fraction"][row["name"]]
    assert int(row["train_dead_tokens"]) == 128  # tokens // 10, at least a batch
    assert 0 < float(row["train_seconds"]) < float(row["pass_seconds"])


@pytest.mark.parametrize("setting, given, held", [
    ("model", "B", "A"),
    ("dataset", "builtin:python-docs", "corpus"),
    ("context_size", 128, CACHE_CTX),
    ("site", "blocks.0.hook_resid_post", SITE),
])
def test_a_sweep_setting_that_contradicts_its_cache_is_a_one_line_error(
    sweep_inputs, other_cache, tmp_path, capsys, setting, given, held
):
    (model_a, corpus), (cache, model_b) = sweep_inputs, other_cache
    names = {"A": str(model_a.resolve()), "B": str(model_b), "corpus": str(corpus.resolve())}
    given, held = names.get(given, given), names.get(held, held)
    with pytest.raises(ConfigError, match=re.escape(f"{setting} {given!r} conflicts with")):
        Sweep(SweepConfig.from_dict(_over_cache(cache, **{setting: given})), tmp_path / "a").run()
    # The same through the command line, as a flag over a config that leaves it out.
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(_over_cache(cache)))
    flag = "--" + setting.replace("_", "-")
    assert main(["sweep", str(config), "--out", str(tmp_path / "b"), flag, str(given)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{setting} {given!r} conflicts with cache" in err, err
    assert f"holds {setting} {held!r}" in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _untimed(results: Path) -> list[dict]:
    """results.csv's rows without the columns of seconds, which differ run to run."""
    return [{k: v for k, v in row.items() if not k.endswith("_seconds")}
            for row in csv.DictReader(results.open())]


def _run_cli(config_path: Path, out: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gated_sae", "sweep", str(config_path), "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            **popen)


@pytest.mark.slow
def test_interrupted_sweep_resumes_to_the_same_table(sweep_inputs, tmp_path, single_thread):
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(tiny_sweep(*sweep_inputs)))
    whole = Sweep(load_sweep_config(str(config_path)), tmp_path / "whole").run()
    rows = whole.read_text().splitlines()
    assert rows[0].split(",") == COLUMNS
    assert len(rows) == 1 + 7

    out = tmp_path / "interrupted"
    child = _run_cli(config_path, out)
    deadline = time.monotonic() + 120
    while not (out / "results.csv").is_file():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "no pass finished in time"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished_before = {
        p.parent.name: p.stat().st_mtime_ns
        for p in (out / "passes").glob("*/run.json")
        if '"finished": true' in p.read_text()
    }
    assert finished_before, "the first pass should have finished before the kill"

    rerun = _run_cli(config_path, out)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    assert _untimed(out / "results.csv") == _untimed(whole)
    for name in ("curves.csv", "heldout.npz"):
        assert (out / name).read_bytes() == (whole.parent / name).read_bytes(), name
    for name, mtime in finished_before.items():  # finished passes were not trained again
        assert (out / "passes" / name / "run.json").stat().st_mtime_ns == mtime


def test_skip_positions_beyond_the_cache_windows_is_an_error_before_any_folder(
    other_cache, tmp_path
):
    cache, _ = other_cache
    config = SweepConfig.from_dict(_over_cache(cache, skip_positions=CACHE_CTX - 1))
    with pytest.raises(ConfigError, match=f"accepted: an integer from 0 to {CACHE_CTX - 2}"):
        Sweep(config, tmp_path / "out").run()
    assert not (tmp_path / "out").exists()
