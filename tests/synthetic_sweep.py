"""A synthetic sweep folder with known answers, for the report's tests: results.csv,
heldout.npz (per-window sums), curves.csv and sweep.json, all generated from the truths below.

The truth of an SAE at width n, L0 l and its family's constants c, b:
    FVU = c + A·(n/256)^(−b) − SLOPE·ln(l/20),  loss recovered = 1.05 − FVU
so at fixed L0 FVU follows a power law in n with exponent b, and both metrics are linear in
ln L0 (frontier interpolation is exact). A variant's OFFSET adds to loss recovered and takes
from FVU. A learning rate a step (3×) away from the family's best costs LR_PENALTY per step
on its frontier, and each step up divides L0 by LR_L0_STEP (a higher lr is sparser at the
same λ): a lower lr is so much denser that at a fixed λ it has the better loss recovered
(SLOPE·ln LR_L0_STEP > LR_PENALTY), though its frontier is lower. Seeds add SEED_OFFSET
(mean zero over three seeds). Every window
adds noise that the full sums cancel exactly, so results.csv holds the truths. `gated no
b_mag` is a copy of gated's SAEs at gated's best lr: its true difference is exactly zero.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from gated_sae.experiments.report.model import SweepResults, load_sweep
from gated_sae.experiments.results import results_text

D_IN, MAIN, BATCH = 64, 512, 1024
TOKENS_PER_LATENT = 500
WINDOWS, LM_WINDOWS, WINDOW_TOKENS = 64, 32, 127
LRS = (1e-4, 3e-4, 1e-3)
BEST_LR = {"relu": 3e-4, "gated": 1e-3}
LR_PENALTY, LR_L0_STEP = 0.02, 1.8
SLOPE, A = 0.05, 0.15
EXPONENT = {"relu": 0.3, "gated": 0.5}
IRREDUCIBLE = {"relu": 0.15, "gated": 0.12}
SEED_OFFSET = {0: 0.0, 1: 0.004, 2: -0.004}
SEEDS = tuple(SEED_OFFSET)
# L0 of each family's sparsity levels (λ, or k for TopK-like) at its best lr.
LEVELS = {
    "relu": {0.5: 160, 1.0: 80, 2.0: 40, 4.0: 20, 8.0: 10},
    "gated": {1.0: 120, 2.0: 60, 4.0: 30, 8.0: 15, 16.0: 7.5},
    "topk": {8: 8, 16: 16, 32: 32, 64: 64, 128: 128},
    "batchtopk": {16: 16, 32: 32, 64: 64},
    "jumprelu": {0.05: 100, 0.1: 50, 0.2: 25, 0.4: 12.5},
}
OFFSET = {"gated no r_mag": -0.02, "gated untied": 0.0, "gated RI-L1": -0.01,
          "topk": 0.03, "batchtopk": -0.03, "jumprelu": -0.04}
SHRINK = {"relu": {0.5: 0.9, 1.0: 0.88, 2.0: 0.85, 4.0: 0.82, 8.0: 0.8}}  # centred γ
# Collapsed: 80% dead, and its curve would otherwise be chosen (it raises relu's 1e-3 curve
# at L0 80, where the three lrs' curves are compared only with it).
DEAD = ("relu", MAIN, 1e-3, 0.5)
UNCONVERGED = ("gated", 2048, 1e-3, 16.0)
WIDTHS = (256, 1024, 2048)
EQUAL_COMPUTE = 768
MU_SQ = 1.0


def true_fvu(family: str, l0: float, width: int) -> float:
    return IRREDUCIBLE[family] + A * (width / 256) ** -EXPONENT[family] - SLOPE * math.log(l0 / 20)


@dataclass
class SAE:
    """One SAE's settings and truths."""

    arch: str
    variant: str
    width: int
    lr: float
    level: float | int
    seed: int
    l0: float
    fvu: float
    shrink: float = 1.0  # centred γ
    roles: tuple = ()
    options: dict = field(default_factory=dict)
    dead: float = 0.02
    slow: bool = False  # fails the convergence criterion
    noise: tuple = ()  # key of its window noise; equal keys, equal noise

    @property
    def k_like(self) -> bool:
        return self.arch in ("topk", "batchtopk")

    @property
    def name(self) -> str:
        level = f"k{self.level}" if self.k_like else f"c{self.level:g}"
        return f"{self.variant.replace(' ', '-')}_d{self.width}_lr{self.lr:g}_{level}_s{self.seed}"

    @property
    def loss_recovered(self) -> float:
        return 1.05 - self.fvu


def _family(variant, arch, width, lrs, seeds, levels, roles=(), options=None):
    """The SAEs of one variant at one width: each (lr, level, seed)."""
    base = arch if arch in ("relu", "gated") else "gated"
    best = BEST_LR.get(arch, lrs[0])
    out = []
    for lr in lrs:
        steps = round(math.log(lr / best) / math.log(3))
        for level, l0 in levels.items():
            l0 = l0 * LR_L0_STEP ** -steps
            for seed in seeds:
                fvu = (true_fvu(base, l0, width) + LR_PENALTY * abs(steps)
                       - OFFSET.get(variant, 0.0) - SEED_OFFSET[seed])
                out.append(SAE(
                    arch, variant, width, lr, level, seed, l0, fvu,
                    SHRINK.get(variant, {}).get(level, 1.0), roles, dict(options or {}),
                    noise=(variant, width, lr, level, seed),
                ))
    return out


def synthetic_saes() -> list[SAE]:
    saes = []
    for arch in ("relu", "gated"):
        saes += _family(arch, arch, MAIN, LRS, SEEDS, LEVELS[arch], ("lr_sweep",))
        four = dict(list(LEVELS[arch].items())[1:])
        for width in WIDTHS:
            saes += _family(arch, arch, width, (BEST_LR[arch],), SEEDS, four, ("width",))
    saes += _family("relu", "relu", EQUAL_COMPUTE, (BEST_LR["relu"],), SEEDS,
                    dict(list(LEVELS["relu"].items())[1:]), ("equal_compute",))
    gated_best = [s for s in saes if (s.variant, s.width, s.lr) == ("gated", MAIN, 1e-3)]
    saes += [replace(s, variant="gated no b_mag", options={"b_mag": False}, roles=("ablation",),
                     l0=s.l0) for s in gated_best]
    three = dict(list(LEVELS["gated"].items())[1:4])
    for variant, option in (("gated no r_mag", {"r_mag": False}),
                            ("gated untied", {"tied": False}), ("gated RI-L1", {"ri_l1": True})):
        saes += _family(variant, "gated", MAIN, (1e-3,), (0,), three, ("ablation",), option)
    for arch in ("topk", "batchtopk", "jumprelu"):
        saes += _family(arch, arch, MAIN, (3e-4,), (0,), LEVELS[arch], ("lr_sweep",))
    for s in saes:
        if (s.variant, s.width, s.lr, s.level) == DEAD:
            s.dead, s.fvu = 0.8, s.fvu - 0.1
        if (s.variant, s.width, s.lr, s.level) == UNCONVERGED:
            s.slow = True
    return saes


# --- files ----------------------------------------------------------------------------------


def _noise(key: tuple, size: int) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(repr(key).encode())).standard_normal(size)


def _balanced(base: float, noise: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """base + noise shifted so that the weighted mean is exactly base."""
    return base + noise - (weights * noise).sum() / weights.sum()


def heldout_sums(saes: list[SAE], windows: int = WINDOWS, lm_windows: int = LM_WINDOWS) -> dict:
    """Per-window sums whose totals give each SAE's truths exactly (the contract's arrays)."""
    shared = np.random.default_rng(7)
    n = np.full(windows, WINDOW_TOKENS, dtype=np.int64)
    var = n * (1 + 0.2 * shared.standard_normal(windows))  # Σ‖x − μ‖² per window
    m = np.full(lm_windows, WINDOW_TOKENS, dtype=np.int64)
    clean = m * 3.0 * (1 + 0.02 * shared.standard_normal(lm_windows))
    zero = m * 10.0 * (1 + 0.02 * shared.standard_normal(lm_windows))
    hard = shared.standard_normal(windows)  # every SAE finds the same windows harder
    out = {k: [] for k in ("err_sq", "xhat_sq", "x_xhat", "xhat_mu", "active", "ce_sae", "kl")}
    for s in saes:
        z = _noise(s.noise, 2 * windows + lm_windows)
        shrink = s.shrink * (1 + 0.01 * z[windows:2 * windows])
        gain = 2 * shrink - shrink**2
        p = (1 + 0.05 * hard + 0.03 * z[:windows])
        p *= (1 - s.fvu) * var.sum() / (var * p * gain).sum()  # Σ err_sq = fvu · Σ var
        out["err_sq"].append(var * (1 - p * gain))
        out["x_xhat"].append(n * MU_SQ + shrink * p * var)
        out["xhat_sq"].append(n * MU_SQ + shrink**2 * p * var)
        out["xhat_mu"].append(n * MU_SQ)
        active = n * (1 + 0.05 * hard + 0.03 * z[:windows])
        out["active"].append(active * s.l0 * n.sum() / active.sum())
        recovered = _balanced(s.loss_recovered, 0.02 * z[2 * windows:], zero - clean)
        ce_sae = clean + (1 - recovered) * (zero - clean)
        out["ce_sae"].append(ce_sae)
        out["kl"].append(0.9 * (ce_sae - clean))
    return {
        "names": np.array([s.name for s in saes]), "window_tokens": n, "x_sq": var + n * MU_SQ,
        "x_mu": n * MU_SQ, "mu_sq": np.float64(MU_SQ), "lm_predictions": m,
        "ce_clean": clean, "ce_zero": zero, **{k: np.array(v) for k, v in out.items()},
    }


def _metrics(h: dict, i: int) -> dict:
    """Row i's metrics over all windows, written out from the contract's formulas."""
    n = int(h["window_tokens"].sum())
    centred = (h["x_sq"] - 2 * h["x_mu"]).sum() + n * h["mu_sq"]
    sae, clean, zero = h["ce_sae"][i].sum(), h["ce_clean"].sum(), h["ce_zero"].sum()
    fvu = h["err_sq"][i].sum() / centred
    metrics = {
        "l0": h["active"][i].sum() / n, "fvu": fvu, "explained_variance": 1 - fvu,
        "mse": h["err_sq"][i].sum() / n / D_IN,
        "gamma": h["xhat_sq"][i].sum() / h["x_xhat"][i].sum(),
        "gamma_centred": (h["xhat_sq"][i].sum() - 2 * h["xhat_mu"][i].sum() + n * h["mu_sq"])
        / (h["x_xhat"][i].sum() - h["xhat_mu"][i].sum() - h["x_mu"].sum() + n * h["mu_sq"]),
        "dead_fraction": 0.0, "dense_fraction": 0.0,
        "ce_clean": clean / h["lm_predictions"].sum(), "ce_sae": sae / h["lm_predictions"].sum(),
        "ce_zero": zero / h["lm_predictions"].sum(),
        "loss_recovered": (zero - sae) / (zero - clean),
        "delta_loss": (sae - clean) / h["lm_predictions"].sum(),
        "kl": h["kl"][i].sum() / h["lm_predictions"].sum(),
    }
    return {k: float(v) for k, v in metrics.items()} | {
        "eval_tokens": n, "lm_eval_tokens": int(h["lm_predictions"].sum())}


def curve(s: SAE) -> list[dict]:
    """Held-out FVU, L0 and loss recovered approaching the truths; every other point has no
    loss recovered. The half-budget twin ends where the run was at half its steps, so a
    slow SAE's twin is still far from the end."""
    steps = s.width * TOKENS_PER_LATENT // BATCH
    tau = steps / (1.2 if s.slow else 16)

    def point(step: int, run_steps: int, measured: bool) -> dict:
        decay = math.exp(-step / tau)
        return {
            "name": s.name, "step": step, "tokens": step * BATCH, "run_tokens": run_steps * BATCH,
            "l0": s.l0 * (1 + 2 * decay), "fvu": s.fvu + (0.95 - s.fvu) * decay,
            "loss_recovered": s.loss_recovered - (s.loss_recovered - 0.3) * decay
            if measured else math.nan,
        }

    points = [point(step, steps, i % 2 == 0 or step == steps)
              for i, step in enumerate([*range(0, steps, 25), steps])]
    twin = point(steps // 2, steps // 2, True)
    return sorted([*points, twin], key=lambda p: (p["tokens"], p["run_tokens"]))


def _training(s: SAE, points: list[dict]) -> dict:
    """The training columns, lr_change read off the SAE's own curve as the contract says for
    a family of one: the end of the run against its half-budget twin."""
    final = points[-1]
    twin = next(p for p in points if p["run_tokens"] < final["run_tokens"])
    lr_change = final["loss_recovered"] - twin["loss_recovered"]
    tokens = s.width * TOKENS_PER_LATENT
    return {
        "train_dead_fraction": s.dead, "train_dead_tokens": 65_536,
        "converged": int(abs(lr_change) < 0.005), "lr_change": lr_change,
        "fvu_change": (final["fvu"] - twin["fvu"]) / final["fvu"],
        "train_seconds": tokens * s.width * (3e-8 if s.arch == "gated" else 2e-8),
        "pass_seconds": 60.0, "eval_seconds": 2.5, "tokens": tokens,
    }


def write_sweep(folder: Path, saes: list[SAE], record: dict | None = None,
                windows: int = WINDOWS, heldout: bool = True, curves: bool = True) -> Path:
    """Write the sweep folder of `saes` (heldout.npz and curves.csv optional)."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = heldout_sums(saes, windows, max(1, windows // 2))
    rows, curve_rows = [], []
    for i, s in enumerate(saes):
        points = curve(s)
        curve_rows += points
        rows.append({
            "name": s.name, "arch": s.arch, "variant": s.variant,
            "options": json.dumps({**s.options, **({"k": s.level} if s.k_like else {})}),
            "d_sae": s.width, "lr": s.lr, "sparsity_coef": "" if s.k_like else s.level,
            "k": s.level if s.k_like else "", "seed": s.seed, "batch_size": BATCH,
            "role": ";".join(sorted(s.roles)), **_metrics(sums, i), **_training(s, points),
        })
    (folder / "results.csv").write_text(results_text(rows))
    if heldout:
        np.savez(folder / "heldout.npz", **sums)
    if curves:
        columns = ("name", "step", "tokens", "run_tokens", "l0", "fvu", "loss_recovered")
        lines = [",".join(columns)] + [",".join(repr(p[c]) if isinstance(p[c], float)
                                                else str(p[c]) for c in columns)
                                       for p in curve_rows]
        (folder / "curves.csv").write_text("\n".join(lines) + "\n")
    if record is not None:
        (folder / "sweep.json").write_text(json.dumps(record))
    return folder


def sweep_results(folder: Path) -> SweepResults:
    """The sweep in `folder` as the report reads it."""
    return load_sweep(folder)


RECORD = {
    "config": {
        "model": "smollm2-135m",
        "site": "blocks.15.hook_resid_post",
        "dataset": "builtin:python-docs",
        "tokens": MAIN * TOKENS_PER_LATENT,
        "batch_size": BATCH,
        "seeds": list(SEEDS),
        "main_width": MAIN,
        "grid": [{"arch": "relu", "d_sae": MAIN}],
    },
    "d_in": D_IN,
    "machine": {"cpu": "Synthetic CPU", "cores": 2, "torch_threads": 2, "device": "cpu"},
    "total_seconds": 5400.0,
    "cache_seconds": 300.0,
    "versions": {"gated_sae": "0.1.0", "torch": "2.13.0"},
    "created": "2026-01-01T00:00:00+0000",
}
