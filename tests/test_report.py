"""The sweep report: the frontier arithmetic on hand-worked cases, the sentences the report
generates from a synthetic results table with known answers, the report's behaviour on
missing data, and the HTML page as a headless Chromium renders it."""

from __future__ import annotations

import base64
import csv
import html.parser
import io
import json
import math
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from gated_sae.errors import DataError
from gated_sae.experiments.pareto import (
    Comparison,
    best_lr_rows,
    compare,
    frontier,
    interpolate_at,
    matched_l0_grid,
    seed_noise,
    summarize,
)
from gated_sae.experiments.report import _q1_summary, read_results, write_report

# --- pareto.py on hand-worked cases ---------------------------------------------------------

NAN = math.nan


def row(variant="relu", lr=1e-3, coef=1.0, seed=0, k=None, d_sae=64, **metrics):
    arch = variant.split()[0]
    base = {m: NAN for m in ("l0", "fvu", "loss_recovered", "gamma")}
    return {
        "arch": arch,
        "variant": variant,
        "d_sae": d_sae,
        "lr": lr,
        "seed": seed,
        "k": k,
        "sparsity_coef": None if k is not None else coef,
        "roles": frozenset(),
        **base,
        **metrics,
    }


def test_summarize_mean_spread_and_seed_count():
    rows = [row(seed=0, l0=10, fvu=0.3), row(seed=1, l0=14, fvu=NAN), row(seed=2, l0=12)]
    (s,) = summarize(rows, ("variant", "lr"))
    assert s["n_seeds"] == 3
    assert s["l0"] == pytest.approx(12.0) and s["l0_spread"] == pytest.approx(4.0)
    # NaN values are left out of the mean and spread; an all-NaN metric stays NaN.
    assert s["fvu"] == pytest.approx(0.3) and s["fvu_spread"] == 0.0
    assert math.isnan(s["gamma"]) and math.isnan(s["gamma_spread"])
    assert s["arch"] == "relu" and "seed" not in s


def test_best_lr_takes_best_mean_over_seeds_per_variant_width_and_level():
    rows = [
        # lr 1e-3: seeds 0.80 and 0.90, mean 0.85; lr 3e-3: 0.86 twice, mean 0.86 → 3e-3
        row(lr=1e-3, seed=0, loss_recovered=0.80, l0=20),
        row(lr=1e-3, seed=1, loss_recovered=0.90, l0=22),
        row(lr=3e-3, seed=0, loss_recovered=0.86, l0=30),
        row(lr=3e-3, seed=1, loss_recovered=0.86, l0=34),
        # another sparsity level: 1e-3 is best there
        row(lr=1e-3, coef=2.0, loss_recovered=0.7),
        row(lr=3e-3, coef=2.0, loss_recovered=0.6),
        # topk levels are k, not λ
        row("topk", lr=1e-3, k=16, loss_recovered=0.5),
        row("topk", lr=1e-3, k=32, loss_recovered=0.6),
    ]
    best = {(b["variant"], b["sparsity"]): b for b in best_lr_rows(rows)}
    assert set(best) == {("relu", 1.0), ("relu", 2.0), ("topk", 16), ("topk", 32)}
    top = best[("relu", 1.0)]
    assert top["lr"] == 3e-3 and top["lrs"] == [1e-3, 3e-3]
    assert top["loss_recovered"] == pytest.approx(0.86) and top["loss_recovered_spread"] == 0
    assert top["l0"] == pytest.approx(32) and top["l0_spread"] == pytest.approx(4)
    assert top["n_seeds"] == 2
    assert best[("relu", 2.0)]["lr"] == 1e-3
    assert best[("topk", 32)]["k"] == 32


def test_best_lr_falls_back_to_fvu_and_breaks_ties_to_the_smaller_lr():
    no_lr = [row(lr=1e-3, fvu=0.3), row(lr=3e-3, fvu=0.2), row(lr=1e-2, fvu=NAN)]
    assert best_lr_rows(no_lr)[0]["lr"] == 3e-3
    # one lr with a loss recovered beats a better FVU without one
    mixed = [row(lr=1e-3, fvu=0.3, loss_recovered=0.5), row(lr=3e-3, fvu=0.1)]
    assert best_lr_rows(mixed)[0]["lr"] == 1e-3
    tie = [row(lr=3e-3, loss_recovered=0.5), row(lr=1e-3, loss_recovered=0.5)]
    assert best_lr_rows(tie)[0]["lr"] == 1e-3


def test_frontier_keeps_the_upper_left_points_in_l0_order():
    points = [
        (10, 0.8),
        (20, 0.85),
        (15, 0.7),
        (30, 0.85),
        (5, 0.6),
        (40, 0.9),
        (NAN, 1.0),
        (0, 0.99),
        (8, NAN),
    ]
    assert frontier(points) == [(5, 0.6), (10, 0.8), (20, 0.85), (40, 0.9)]
    # lower is better for FVU; a payload rides along
    fvu = [(10, 0.3, "a"), (20, 0.25, "b"), (15, 0.35, "c"), (40, 0.2, "d"), (10, 0.32, "e")]
    assert frontier(fvu, higher_is_better=False) == [
        (10, 0.3, "a"),
        (20, 0.25, "b"),
        (40, 0.2, "d"),
    ]
    assert frontier([]) == []


def test_interpolate_is_linear_in_log_l0_and_refuses_to_extrapolate():
    front = [(10, 0.8), (100, 0.9), (1000, 0.94)]
    assert interpolate_at(front, math.sqrt(10 * 100)) == pytest.approx(0.85)
    # 20 is log10(2) = 0.30103 of the way from 10 to 100 in log L0
    assert interpolate_at(front, 20) == pytest.approx(0.8 + 0.1 * math.log10(2))
    assert interpolate_at(front, 10) == 0.8 and interpolate_at(front, 1000) == 0.94
    assert interpolate_at(front, 100) == 0.9
    assert interpolate_at(front, 9.99) is None and interpolate_at(front, 1001) is None
    assert interpolate_at([], 10) is None


def test_matched_l0_grid_is_ends_and_geometric_middle_of_the_overlap():
    a, b = [(10, 0), (100, 0)], [(20, 0), (400, 0)]
    assert matched_l0_grid(a, b) == pytest.approx([20, math.sqrt(2000), 100])
    assert matched_l0_grid([(10, 0), (20, 0)], [(20, 0), (40, 0)]) == [20]
    assert matched_l0_grid([(10, 0), (20, 0)], [(30, 0), (40, 0)]) == []


def _summaries(variant, l0s, values, coefs=(1.0, 2.0, 4.0)):
    return [
        {**row(variant, coef=coef), "l0": l0, "loss_recovered": value}
        for l0, value, coef in zip(l0s, values, coefs, strict=True)
    ]


def test_compare_at_matched_l0_with_seed_noise():
    ref = _summaries("gated", [10, 100, 1000], [0.8, 0.9, 0.95])
    alt = _summaries("gated no b_mag", [20, 200, 2000], [0.84, 0.93, 0.97])
    out = compare(ref, alt, noise=0.02)
    assert [c.l0_ref for c in out] == pytest.approx([20, math.sqrt(20 * 1000), 1000])
    first = out[0]  # alt's own point; ref interpolated between L0 10 and 100
    assert first.alt == 0.84 and first.ref == pytest.approx(0.8 + 0.1 * math.log10(2))
    assert first.noise == 0.02 and first.verdict == "within seed noise"
    assert first.level is None


def test_compare_falls_back_to_matched_coefficient_and_knows_unknown_noise():
    ref = _summaries("relu", [10, 20, 40], [0.7, 0.8, 0.9])
    alt = _summaries("gated", [100, 200, 400], [0.6, 0.85, 0.95])
    out = compare(ref, alt)
    assert [c.level for c in out] == [1.0, 2.0, 4.0]
    assert out[1].delta == pytest.approx(0.05)
    assert out[1].noise is None and out[1].verdict == "seed noise unknown"
    assert Comparison(10, 10, 0.5, 0.52, 0.01).verdict == "larger than seed noise"


def _seed_rows(seed, lr, points):
    return [{**row("relu", lr=lr, coef=c, seed=seed), "l0": l0, "loss_recovered": v}
            for c, (l0, v) in zip((1.0, 2.0, 4.0), points, strict=False)]


def test_seed_noise_is_measured_at_matched_l0_not_matched_coefficient():
    """Seed 1 fires twice as often at every λ but sits on the same L0–fidelity curve
    (0.5 + 0.1·ln L0), 0.003 lower: its noise is 0.003, not the 0.1·ln 2 ≈ 0.069 that
    comparing the seeds at equal λ would give."""
    def curve(l0, shift=0.0):
        return (l0, 0.5 + 0.1 * math.log(l0) + shift)
    rows = (_seed_rows(0, 1e-3, [curve(10), curve(20), curve(40)])
            + _seed_rows(1, 1e-3, [curve(20, -0.003), curve(40, -0.003), curve(80, -0.003)]))
    assert seed_noise(rows) == pytest.approx(0.003)
    # Hand-worked with a bend: seed 0 at (10, 0.6), (40, 0.8); seed 1 at (20, 0.65), (40, 0.79).
    # At L0 20 seed 0 interpolates to 0.6 + 0.2·ln2/ln4 = 0.7: spread 0.05; at L0 40: 0.01.
    rows = (_seed_rows(0, 1e-3, [(10, 0.6), (40, 0.8)])
            + _seed_rows(1, 1e-3, [(20, 0.65), (40, 0.79)]))
    assert seed_noise(rows) == pytest.approx(0.05)


def test_seed_noise_unknown_without_two_seeds_at_one_lr():
    one_seed_each = (_seed_rows(0, 1e-3, [(10, 0.6), (40, 0.8)])
                     + _seed_rows(1, 3e-3, [(10, 0.5), (40, 0.7)]))
    assert seed_noise(one_seed_each) is None
    disjoint = (_seed_rows(0, 1e-3, [(10, 0.6), (20, 0.8)])
                + _seed_rows(1, 1e-3, [(40, 0.5), (80, 0.7)]))
    assert seed_noise(disjoint) is None


# --- a synthetic sweep with known answers ---------------------------------------------------

D_IN, MAIN = 64, 512
LRS = (1e-4, 3e-4, 1e-3)
COEFS = (1.0, 3.0, 10.0)
L0 = {"relu": {1.0: 80, 3.0: 40, 10.0: 16}, "gated": {1.0: 60, 3.0: 30, 10.0: 12}}
GAMMA = {"relu": {1.0: 0.95, 3.0: 0.90, 10.0: 0.84}, "gated": {1.0: 0.995, 3.0: 0.99, 10.0: 0.985}}
BEST_LR = {"relu": 3e-4, "gated": 1e-3, "topk": 3e-4}
GATED_MARGIN = 0.03  # gated above relu at matched L0, each at its best lr
WIDTH_GAIN = 0.02  # loss recovered gained per doubling of d_sae
SEED_NOISE = 0.002  # seed 0 adds it, seed 1 subtracts it: spread 0.004
ABLATION_LR = 3e-4  # not gated's best lr: the report must compare gated at this lr
NOT_MEASURED_TEXT = "not measured in this sweep"
ABLATION_OFFSET = {"no b_mag": -0.002, "no r_mag": -0.010, "untied": 0.001, "RI-L1": -0.006}
ABLATION_OPTIONS = {
    "no b_mag": {"b_mag": False},
    "no r_mag": {"r_mag": False},
    "untied": {"tied": False},
    "RI-L1": {"ri_l1": True},
}


def _fidelity(l0: float, offset: float) -> float:
    """Loss recovered linear in ln L0, so frontier interpolation is exact."""
    return 0.70 + 0.05 * math.log(l0) + offset


def _lr_penalty(arch: str, lr: float) -> float:
    return 0.02 * abs(LRS.index(lr) - LRS.index(BEST_LR[arch]))


def _metrics(l0: float, loss_recovered: float, gamma: float, seed: int) -> dict:
    noise = SEED_NOISE if seed == 0 else -SEED_NOISE
    lr_ = loss_recovered + noise
    fvu = 1.2 - lr_
    ce_sae = 10.0 - 7.0 * lr_
    return {
        "l0": l0,
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "mse": 2 * fvu,
        "gamma": gamma + noise,
        "dead_fraction": 0.3 / l0,
        "dense_fraction": 0.0,
        "ce_clean": 3.0,
        "ce_sae": ce_sae,
        "ce_zero": 10.0,
        "loss_recovered": lr_,
        "delta_loss": ce_sae - 3.0,
        "kl": 0.9 * (ce_sae - 3.0),
        "eval_tokens": 4064,
    }


def synthetic_rows() -> list[dict]:
    rows = []

    def add(arch, variant, d_sae, lr, level, roles, l0, fidelity, gamma, options=None):
        k_like = arch in ("topk", "batchtopk")
        for seed in (0, 1):
            rows.append(
                {
                    "name": f"{variant}-{d_sae}-{lr}-{level}-{seed}".replace(" ", "_"),
                    "arch": arch,
                    "variant": variant,
                    "options": json.dumps(options or {}),
                    "d_sae": d_sae,
                    "lr": lr,
                    "sparsity_coef": "" if k_like else level,
                    "k": level if k_like else "",
                    "seed": seed,
                    "tokens": 250_000,
                    "batch_size": 1024,
                    "role": ";".join(sorted(roles)),
                    **_metrics(l0, fidelity, gamma, seed),
                }
            )

    for arch in ("relu", "gated"):
        margin = GATED_MARGIN if arch == "gated" else 0.0
        for lr in LRS:
            for coef in COEFS:
                roles = {"lr_sweep", "seeds"}
                if lr == BEST_LR[arch]:
                    roles.add("width")
                l0 = L0[arch][coef]
                add(
                    arch,
                    arch,
                    MAIN,
                    lr,
                    coef,
                    roles,
                    l0,
                    _fidelity(l0, margin - _lr_penalty(arch, lr)),
                    GAMMA[arch][coef],
                )
        for width in (256, 1024):
            for coef in COEFS:
                l0 = L0[arch][coef]
                add(
                    arch,
                    arch,
                    width,
                    BEST_LR[arch],
                    coef,
                    {"width"},
                    l0,
                    _fidelity(l0, margin + WIDTH_GAIN * math.log2(width / MAIN)),
                    GAMMA[arch][coef],
                )
    for width in (384, 768, 1536):  # relu 1.5× wider: equal compute
        for coef in COEFS:
            l0 = L0["relu"][coef]
            add(
                "relu",
                "relu",
                width,
                BEST_LR["relu"],
                coef,
                {"equal_compute"},
                l0,
                _fidelity(l0, WIDTH_GAIN * math.log2(width / MAIN)),
                GAMMA["relu"][coef],
            )
    for name, offset in ABLATION_OFFSET.items():
        for coef in COEFS:
            l0 = 1.05 * L0["gated"][coef]
            penalty = _lr_penalty("gated", ABLATION_LR)
            add(
                "gated",
                f"gated {name}",
                MAIN,
                ABLATION_LR,
                coef,
                {"ablation"},
                l0,
                _fidelity(l0, GATED_MARGIN - penalty + offset),
                0.99,
                ABLATION_OPTIONS[name],
            )
    for lr in LRS:
        for k in (16, 32, 64):
            add(
                "topk",
                "topk",
                MAIN,
                lr,
                k,
                {"lr_sweep"},
                k,
                _fidelity(k, GATED_MARGIN + 0.005 - _lr_penalty("topk", lr)),
                0.97,
                {"k": k},
            )
    for coef, l0 in ((0.05, 50), (0.1, 25), (0.2, 12)):
        add(
            "jumprelu",
            "jumprelu",
            MAIN,
            3e-4,
            coef,
            {"lr_sweep"},
            l0,
            _fidelity(l0, GATED_MARGIN),
            0.98,
        )
    return rows


def write_sweep(folder: Path, rows: list[dict], record: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else ["name", "arch", "variant", "d_sae", "lr"]
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if record is not None:
        (folder / "sweep.json").write_text(json.dumps(record))
    return folder


RECORD = {
    "config": {
        "model": "smollm2-135m",
        "site": "blocks.15.hook_resid_post",
        "dataset": "builtin:python-docs",
        "tokens": 250_000,
        "batch_size": 1024,
        "seeds": [0, 1],
        "main_width": MAIN,
        "grid": [{"arch": "relu", "d_sae": MAIN}],
    },
    "d_in": D_IN,
    "versions": {"gated_sae": "0.1.0", "torch": "2.13.0"},
    "created": "2026-01-01T00:00:00+0000",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str, Path]:
    folder = write_sweep(tmp_path_factory.mktemp("sweep"), synthetic_rows(), RECORD)
    md, page = write_report(folder)
    return folder, md.read_text(), page


def _section(md: str, heading: str) -> str:
    start = md.index(f"## {heading}")
    end = md.find("\n## ", start + 1)
    return md[start : end if end > 0 else None]


def test_read_results_parses_numbers_roles_and_levels(report):
    folder, _, _ = report
    rows = read_results(folder / "results.csv")
    topk = next(r for r in rows if r["arch"] == "topk")
    relu = next(r for r in rows if r["arch"] == "relu")
    assert topk["k"] == 16 and topk["sparsity_coef"] is None
    assert relu["k"] is None and relu["sparsity_coef"] == 1.0
    assert relu["roles"] == frozenset({"lr_sweep", "seeds"})
    assert relu["d_sae"] == MAIN and isinstance(relu["d_sae"], int)


def test_q1_b_mag_difference_is_within_seed_noise(report):
    _, md, _ = report
    q1 = _section(md, "Q1.")
    # the ablation is compared with gated at its own lr (3e-4), not gated's best (1e-3)
    assert "both at lr 3e-4" in q1
    assert "fixing b_mag at zero lowers loss recovered" in q1
    assert (
        "(Δ −0.002); the seed spread at matched L0 is 0.004, so the difference is within "
        "seed noise."
    ) in q1
    assert (
        "every difference within seed noise: this sweep finds no sign that b_mag is needed, "
        "down to the seed noise of 0.004."
    ) in q1
    assert (
        "removing r_mag (W_mag = W_gate): Δ −0.010, −0.010, −0.010 in loss recovered at "
        "L0 ≈ 12.6, 27.5 and 60 (both at lr 3e-4; larger than seed noise at 3 of 3 points)."
    ) in q1
    assert (
        "untying W_mag from W_gate: Δ +0.001, +0.001, +0.001 in loss recovered at "
        "L0 ≈ 12.6, 27.5 and 60 (both at lr 3e-4; within seed noise at all 3 points)."
    ) in q1
    # matched L0 comparison states the L0 used: overlap [12.6, 60]
    assert "At L0 ≈ 12.6," in q1 and "At L0 ≈ 60," in q1
    assert "### Ablation table" in q1 and "| λ = 3 | gated no b_mag | 3e-4 |" in q1


def test_q2_states_best_lrs_margin_and_shrinkage(report):
    _, md, _ = report
    q2 = _section(md, "Q2.")
    assert "relu: swept lr 1e-4, 3e-4, 1e-3; best lr 3e-4 at λ = 1, λ = 3 and λ = 10." in q2
    assert "gated: swept lr 1e-4, 3e-4, 1e-3; best lr 1e-3 at λ = 1, λ = 3 and λ = 10." in q2
    assert "the best lr is the largest swept" in q2
    assert "jumprelu: only lr 3e-4 was trained, so its learning rate was not swept." in q2
    assert "The best lr differs between relu and gated at 3 of 3 shared sparsity levels" in q2
    # relu L0 16–80, gated 12–60: compared at 16, √(16·60) ≈ 31, 60
    assert (
        "gated's frontier lies above relu's at all 3 compared points at matched L0 "
        "(16, 31, 60), by +0.030, +0.030, +0.030 in loss recovered "
        "(larger than seed noise at 3 of 3 points)"
    ) in q2
    # at one shared lr the margin moves with the lr: +0.010 at 1e-4 and 3e-4, +0.050 at 1e-3
    assert "both at lr 3e-4, gated − relu = +0.010 at L0 ≈ 31" in q2
    assert "both at lr 1e-3, gated − relu = +0.050 at L0 ≈ 31" in q2
    assert "Gated γ: 0.995 at λ = 1, 0.990 at λ = 3, 0.985 at λ = 10: within 0.05 of 1." in q2
    assert "0.840 at λ = 10: below 1 at every level; falling as λ grows." in q2
    assert "shrinkage finding (gated γ ≈ 1, relu γ < 1) reproduces here" in q2
    # means of 1 − γ: relu (0.05 + 0.10 + 0.16) / 3, gated (0.005 + 0.01 + 0.015) / 3
    assert "1 − γ over the sparsity levels: relu 0.103, gated 0.010." in q2


def test_q3_states_widths_and_margins_at_equal_width_and_compute(report):
    _, md, _ = report
    q3 = _section(md, "Q3.")
    assert "gated: 256, 512, 1024" in q3 and "relu: 256, 384, 512, 768, 1024, 1536" in q3
    assert "d_in = 64" in q3 and "expansion factors d_sae/d_in are 4, 6, 8, 12, 16, 24" in q3
    # equal compute: relu 1.5× wider gains 0.02·log2(1.5) = 0.0117, margin 0.0183
    for width, wide in ((256, 384), (512, 768), (1024, 1536)):
        assert (
            f"d_sae = {width}, gated − relu loss recovered: equal width, against relu "
            f"d_sae = {width}: +0.030 at L0 ≈ 31, larger than seed noise; equal compute, "
            f"against relu d_sae = {wide}: +0.018 at L0 ≈ 31, larger than seed noise."
        ) in q3
    assert "At equal width, gated leads at every width trained" in q3
    assert "At equal compute, gated leads at every width trained" in q3
    # gated covers L0 12–60 at every width: read at √(12·60), 0.02 gained per doubling
    l0 = math.sqrt(12 * 60)
    at = [0.70 + 0.05 * math.log(l0) + 0.03 + WIDTH_GAIN * k for k in (-1, 0, 1)]
    assert (
        f"At L0 ≈ {l0:.1f}, gated's loss recovered is {at[0]:.3f} at 256, {at[1]:.3f} at 512 "
        f"and {at[2]:.3f} at 1024: it improves as d_sae grows."
    ) in q3
    assert "undertraining" not in q3


def test_q1_summary_names_the_points_beyond_seed_noise():
    comparisons = [Comparison(11.9, 11.9, 0.830, 0.817, 0.011),
                   Comparison(40.6, 40.6, 0.921, 0.912, 0.011),
                   Comparison(138, 138, 0.973, 0.971, 0.011)]
    assert _q1_summary(comparisons, "loss recovered", 1) == (
        "**In short:** fixing b_mag at zero costs loss recovered (−0.013, −0.009, −0.002), by "
        "more than seed noise only at L0 ≈ 11.9 (1 of 3 compared points) and within it "
        "elsewhere: in this sweep b_mag matters there and nowhere else."
    )


def test_report_states_the_noise_rule_and_how_it_was_run(report):
    folder, md, _ = report
    assert "|Δ| ≤ the larger seed noise of the two families" in md
    assert "at matched λ the seeds' L0s differ" in md
    run = _section(md, "How this was run")
    assert "model: `smollm2-135m`, site: `blocks.15.hook_resid_post`" in run
    assert "training tokens per SAE: 250,000" in run
    assert f"gated-sae sweep CONFIG --out {folder}" in run
    assert f"gated-sae report {folder}" in run
    assert "torch 2.13.0" in run and "main_width: 512" in run


def test_report_writes_every_plot_and_leaves_no_temporary_files(report):
    folder, md, _ = report
    names = {"pareto.png", "lr_sensitivity.png", "gamma.png", "dead.png", "width.png"}
    assert {p.name for p in (folder / "plots").iterdir()} == names
    for name in names:
        assert f"](plots/{name})" in md
        with Image.open(folder / "plots" / name) as image:
            assert image.size[0] >= 600 and image.size[1] >= 400
    assert not [p for p in folder.rglob(".*")]
    assert NOT_MEASURED_TEXT not in md


class _PageParts(html.parser.HTMLParser):
    """Tags and URL-bearing attributes of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]


def test_html_is_self_contained_and_every_image_decodes(report):
    _, _, page = report
    parts = _PageParts()
    parts.feed(page.read_text())
    assert "script" not in parts.tags and "link" not in parts.tags
    assert len(parts.urls) == 5 and parts.tags.count("img") == 5
    prefix = "data:image/png;base64,"
    for url in parts.urls:
        assert url.startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))) as image:
            image.load()
            assert image.size[0] > 0


def test_ablation_off_the_gated_lrs_and_l0_range_says_how_it_was_compared(tmp_path):
    rows = []
    for r in synthetic_rows():
        if r["variant"] == "gated no b_mag":
            r = {**r, "lr": 5e-4, "l0": 10 * r["l0"]}  # no gated SAE at 5e-4; L0s 126–630
        rows.append(r)
    md = write_report(write_sweep(tmp_path / "off", rows, RECORD))[0].read_text()
    q1 = _section(md, "Q1.")
    assert "the ablation at lr 5e-4, gated at its best lr (not trained at 5e-4)" in q1
    assert "compared at matched sparsity coefficient (the frontiers share no L0 range)" in q1
    assert "At λ = 3 (matched coefficient; L0 30 vs 315), fixing b_mag at zero" in q1


def test_q2_frontier_runs_over_all_learning_rates_not_the_best_lr_per_level(tmp_path):
    """Relu at lr 1e-3 loses to 3e-4 at every λ (0.02 lower) but reaches a quarter of the L0,
    which puts it 0.05·ln4 − 0.02 ≈ +0.049 above the 3e-4 curve at its own L0: its points
    belong on relu's frontier. Relu's frontier is then (4, 10, 20 at +0.049; 80 on the
    curve), and against gated (+0.03 on the curve, L0 12–60) the margins are worked by hand:
    at 12: 0.03 − 0.0493; at √720: 0.03 + 0.05·ln(√720/20) − (0.0493 + 0.211·0.02); at 60:
    0.03 + 0.05·ln3 − (0.0493 + 0.792·0.02)."""
    rows = []
    for r in synthetic_rows():
        if r["variant"] == "relu" and r["d_sae"] == MAIN and r["lr"] == 1e-3:
            r = {**r, "l0": r["l0"] / 4}
        rows.append(r)
    md = write_report(write_sweep(tmp_path / "envelope", rows, RECORD))[0].read_text()
    q2 = _section(md, "Q2.")
    assert "relu: swept lr 1e-4, 3e-4, 1e-3; best lr 3e-4 at λ = 1, λ = 3 and λ = 10." in q2
    assert (
        "With each architecture's frontier taken over all its learning rates, gated's frontier "
        "lies above relu's at 1 of 3 compared points at matched L0 (12, 26.8, 60), by −0.019, "
        "−0.009, +0.020 in loss recovered"
    ) in q2


def test_missing_sections_say_not_measured(tmp_path):
    only_relu = [r for r in synthetic_rows() if r["variant"] == "relu" and r["d_sae"] == MAIN]
    folder = write_sweep(tmp_path / "relu", only_relu)  # and no sweep.json
    md = write_report(folder)[0].read_text()
    assert f"The gated ablations were {NOT_MEASURED_TEXT}." in _section(md, "Q1.")
    assert f"Relu and gated at the main width were {NOT_MEASURED_TEXT}." in _section(md, "Q2.")
    assert f"two or more widths were {NOT_MEASURED_TEXT}." in _section(md, "Q3.")
    assert f"Width scaling: {NOT_MEASURED_TEXT}." in md
    assert "sweep.json is missing or unreadable" in md
    assert (folder / "plots" / "pareto.png").is_file()


def test_one_seed_and_no_loss_recovered_fall_back_honestly(tmp_path):
    rows = [
        {**r, "loss_recovered": "", "ce_sae": ""}
        for r in synthetic_rows()
        if r["seed"] == 0 and r["d_sae"] == MAIN
    ]
    md = write_report(write_sweep(tmp_path / "one", rows, RECORD))[0].read_text()
    assert "Fidelity is measured as FVU." in md
    q1 = _section(md, "Q1.")
    assert "with one seed per family the seed noise is unknown." in q1
    assert "with one seed per family the seed noise is unknown" in q1
    assert "fixing b_mag at zero raises FVU" in q1  # FVU = 1.2 − fidelity: worse is higher


def test_empty_table_and_missing_table(tmp_path):
    md = write_report(write_sweep(tmp_path / "empty", [], RECORD))[0].read_text()
    assert md.count(NOT_MEASURED_TEXT) >= 8
    with pytest.raises(DataError, match="results.csv"):
        write_report(tmp_path / "nowhere")


# --- the page in a headless browser ---------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _DevTools:
    """Chrome DevTools Protocol over --remote-debugging-pipe: JSON messages ending in NUL,
    written to the browser's fd 3 and read from its fd 4 (no websocket library needed)."""

    def __init__(self, profile: Path):
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # bash, not sh: dash cannot redirect from file descriptors above 9.
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser} 4>&{from_browser}', CHROMIUM, *flags],
            pass_fds=(to_browser, from_browser),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self.messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._next_id = 0
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buffer = b""
        while chunk := os.read(self._read, 1 << 16):
            buffer += chunk
            *complete, buffer = buffer.split(b"\0")
            for message in complete:
                self.messages.put(json.loads(message))

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.messages.get(timeout=30)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self.messages.get(timeout=max(0.1, deadline - time.monotonic())))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:  # the browser may close the pipe before it answers
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it)")
def test_html_renders_in_chromium_without_errors(report, tmp_path):
    _, _, page = report
    browser = _DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.call(f"{domain}.enable", session)
        browser.call("Page.navigate", session, url=page.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        images = browser.call(
            "Runtime.evaluate",
            session,
            returnByValue=True,
            expression="Array.from(document.images, i => [i.complete, i.naturalWidth])",
        )["result"]["value"]
        title = browser.call(
            "Runtime.evaluate", session, returnByValue=True, expression="document.title"
        )["result"]["value"]
    finally:
        browser.close()
    assert title.startswith("Gated SAE questions")
    assert len(images) == 5 and all(done and width > 0 for done, width in images), images
    errors = [
        e
        for e in browser.events
        if e.get("method") in ("Runtime.exceptionThrown", "Network.loadingFailed")
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert not errors, errors
    requested = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
