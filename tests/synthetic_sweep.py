"""A synthetic sweep with known answers, for the report's tests: relu and gated linear in
ln L0 (so frontier interpolation is exact), each lr away from the best one a fixed penalty,
two seeds ±SEED_NOISE apart, widths that gain WIDTH_GAIN per doubling, gated ablations at a
fixed offset, and topk and jumprelu at one lr or several."""

from __future__ import annotations

import json
import math
from pathlib import Path

from gated_sae.experiments.report.model import SweepResults, read_record
from gated_sae.experiments.results import read_results, results_text

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
ABLATION_OFFSET = {"no b_mag": -0.002, "no r_mag": -0.010, "untied": 0.001, "RI-L1": -0.006}
ABLATION_OPTIONS = {
    "no b_mag": {"b_mag": False},
    "no r_mag": {"r_mag": False},
    "untied": {"tied": False},
    "RI-L1": {"ri_l1": True},
}


def fidelity(l0: float, offset: float) -> float:
    """Loss recovered linear in ln L0, so frontier interpolation is exact."""
    return 0.70 + 0.05 * math.log(l0) + offset


def lr_penalty(arch: str, lr: float) -> float:
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
                    fidelity(l0, margin - lr_penalty(arch, lr)),
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
                    fidelity(l0, margin + WIDTH_GAIN * math.log2(width / MAIN)),
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
                fidelity(l0, WIDTH_GAIN * math.log2(width / MAIN)),
                GAMMA["relu"][coef],
            )
    for name, offset in ABLATION_OFFSET.items():
        for coef in COEFS:
            l0 = 1.05 * L0["gated"][coef]
            penalty = lr_penalty("gated", ABLATION_LR)
            add(
                "gated",
                f"gated {name}",
                MAIN,
                ABLATION_LR,
                coef,
                {"ablation"},
                l0,
                fidelity(l0, GATED_MARGIN - penalty + offset),
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
                fidelity(k, GATED_MARGIN + 0.005 - lr_penalty("topk", lr)),
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
            fidelity(l0, GATED_MARGIN),
            0.98,
        )
    return rows


def write_sweep(folder: Path, rows: list[dict], record: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.csv").write_text(results_text(rows))
    if record is not None:
        (folder / "sweep.json").write_text(json.dumps(record))
    return folder


def sweep_results(folder: Path) -> SweepResults:
    """The sweep in `folder` as the report reads it."""
    return SweepResults(read_results(folder / "results.csv"), read_record(folder / "sweep.json"))


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
