"""The report's figures as PNG bytes, each drawn from the same findings as the text: frontiers
with their intervals and the matched L0s the text names, learning-rate sensitivity against L0,
shrinkage, dead latents, the width law, and training curves. Each returns None when the
sweep has nothing to draw. Points of configurations failing the convergence criterion are
hollow. The PNGs carry no software or date metadata, so the same results give the same bytes.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..results import half_budget_end
from . import formatting as fmt
from .model import (
    DEAD_LIMIT,
    FIDELITY,
    VARIANT_ORDER,
    Config,
    Family,
    SweepResults,
    variant_key,
)
from .stats import interval
from .width import WidthFit

LABELS = {
    "loss_recovered": "loss recovered (higher is better)",
    "delta_loss": "Δloss, nats per token (lower is better)",
    "fvu": "FVU (lower is better)",
    "gamma": "γ, uncentred (the paper's)",
    "gamma_centred": "γ, centred",
}


def _color(variant: str) -> str:
    return f"C{VARIANT_ORDER.index(variant) % 10}" if variant in VARIANT_ORDER else "black"


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _log_l0_axis(ax, ylabel: str) -> None:
    ax.set_xscale("log")
    # Plain numbers at 1, 2, 3, 5 × 10^n: L0 ranges span about one decade.
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("L0 (active latents per token, log scale)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")


def _not_measured(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: {fmt.NOT_MEASURED}", ha="center", va="center",
            transform=ax.transAxes)
    ax.set_axis_off()


def _errors(draws: np.ndarray) -> tuple[float, list[float]]:
    """The estimate and its error bar lengths [below, above] (0 without an interval)."""
    iv = interval(draws)
    if not math.isfinite(iv.low):
        return iv.value, [0.0, 0.0]
    return iv.value, [max(iv.value - iv.low, 0.0), max(iv.high - iv.value, 0.0)]


def _points(ax, configs: list[Config], metric: str, color: str, label: str | None,
            style: str = "-", marker: str = "o", linewidth: float = 1.5) -> None:
    """The configurations' metric against L0 with both intervals; unconverged ones hollow."""
    xs, ys = zip(*(( _errors(c.draws["l0"]), _errors(c.draws[metric])) for c in configs),
                 strict=True)
    x, y = [v for v, _ in xs], [v for v, _ in ys]
    ax.plot(x, y, style, color=color, label=label, linewidth=linewidth)
    for c, (xv, xe), (yv, ye) in zip(configs, xs, ys, strict=True):
        hollow = c.converged is False
        ax.errorbar([xv], [yv], xerr=np.array([xe]).T, yerr=np.array([ye]).T, fmt=marker,
                    color=color, mfc="white" if hollow else color, ms=6, capsize=2)


def plot_frontiers(res: SweepResults, l0s: list[float]) -> bytes | None:
    """Every variant's frontier at the main width in loss recovered, Δloss and FVU; dotted
    lines at the matched L0s the text compares relu and gated at."""
    variants = res.variants(res.main_width)
    if not variants:
        return None
    fig = Figure(figsize=(16, 5), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 3), FIDELITY, strict=True):
        if not res.measured(metric):
            _not_measured(ax, LABELS[metric])
            continue
        for variant in variants:
            family = res.families[(variant, res.main_width)]
            style = "--" if variant.startswith("gated ") else "-"
            _points(ax, family.points, metric, _color(variant), variant, style)
        for x in l0s:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        _log_l0_axis(ax, LABELS[metric])
    handles = dict(zip(*reversed(fig.axes[0].get_legend_handles_labels()), strict=True))
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=9)
    where = f"dotted: L0 {', '.join(fmt.l0(x) for x in l0s)}, where relu and gated are " \
        "compared; " if l0s else ""
    fig.suptitle(
        f"Frontiers at d_sae = {res.main_width}: each variant at its chosen lr, mean over seeds, "
        f"95% bootstrap intervals\n({where}hollow: fails the convergence criterion)"
    )
    return _png(fig)


def plot_lr_sensitivity(res: SweepResults) -> bytes | None:
    """Loss recovered and FVU against L0 for every lr swept, one line per lr (L0 moves with
    lr at a fixed λ, so lr is not an axis); the chosen lr drawn thick and starred, dotted
    lines at the L0s the lrs were compared at."""
    width = res.main_width
    variants = [v for v in res.variants(width)
                if len(res.families[(v, width)].choice.curves) >= 2]
    if not variants:
        return None
    fig = Figure(figsize=(5 * len(variants), 8), layout="constrained")
    axes = fig.subplots(2, len(variants), squeeze=False)
    for col, variant in enumerate(variants):
        choice = res.families[(variant, width)].choice
        for row, metric in enumerate(("loss_recovered", "fvu")):
            ax = axes[row][col]
            if not res.measured(metric):
                _not_measured(ax, LABELS[metric])
                continue
            for i, (lr, curve) in enumerate(choice.curves.items()):
                chosen = lr == choice.lr
                _points(ax, curve, metric, f"C{i}",
                        f"lr {fmt.lr(lr)}" + (" (chosen)" if chosen else ""),
                        linewidth=3.5 if chosen else 1.5)
            points = choice.curves[choice.lr]
            ax.plot([c.value("l0") for c in points], [c.value(metric) for c in points], "*",
                    color="black", ms=14, mfc="none")
            for x in choice.l0s:
                ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            _log_l0_axis(ax, LABELS[metric])
            ax.set_title(f"{variant}, d_sae = {width}")
            if row == 0 or not axes[0][col].lines:
                ax.legend(fontsize=8)
    fig.suptitle("Learning-rate sensitivity against L0 (mean over seeds, 95% intervals)")
    return _png(fig)


def plot_shrinkage(res: SweepResults) -> bytes | None:
    """γ (uncentred, the paper's) and centred γ against L0 per variant at the main width."""
    if not res.measured("gamma"):
        return None
    fig = Figure(figsize=(13, 5), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("gamma", "gamma_centred"), strict=True):
        if not res.measured(metric):
            _not_measured(ax, LABELS[metric])
            continue
        for variant in res.variants(res.main_width):
            family = res.families[(variant, res.main_width)]
            _points(ax, family.points, metric, _color(variant), variant)
        ax.axhline(1.0, color="grey", linestyle=":")
        _log_l0_axis(ax, LABELS[metric])
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"Shrinkage at d_sae = {res.main_width}: γ = 1 is unbiased, γ < 1 shrinks")
    return _png(fig)


def plot_dead(res: SweepResults) -> bytes | None:
    """Every run's dead fraction over the training stream's last window against its L0."""
    rows = [r for r in res.rows if r["d_sae"] == res.main_width
            and fmt.finite(r.get("train_dead_fraction")) and fmt.finite(r["l0"])]
    if not rows:
        return None
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for variant in sorted({r["variant"] for r in rows}, key=variant_key):
        mine = [r for r in rows if r["variant"] == variant]
        ax.scatter([r["l0"] for r in mine], [r["train_dead_fraction"] for r in mine],
                   color=_color(variant), label=variant, s=18)
    ax.axhline(DEAD_LIMIT, color="grey", linestyle=":", label="excluded above")
    _log_l0_axis(ax, "dead fraction over the training stream's last window")
    ax.legend(fontsize=8)
    ax.set_title(f"Dead latents at d_sae = {res.main_width} (every run)")
    return _png(fig)


def plot_width(fits: list[WidthFit]) -> bytes | None:
    """FVU at fixed L0 against the number of latents, with the fitted law."""
    if not fits:
        return None
    variants = list(dict.fromkeys(f.variant for f in fits))
    fig = Figure(figsize=(6 * len(variants), 5), layout="constrained")
    for ax, variant in zip(fig.subplots(1, len(variants), squeeze=False)[0], variants,
                           strict=True):
        for i, fit in enumerate(f for f in fits if f.variant == variant):
            color = f"C{i}"
            values = [iv.value for iv in fit.fvu]
            errors = np.array([[max(iv.value - iv.low, 0), max(iv.high - iv.value, 0)]
                               if fmt.finite(iv.low) else [0, 0] for iv in fit.fvu]).T
            ax.errorbar(fit.widths, values, yerr=errors, fmt="o", color=color, capsize=3,
                        label=f"L0 {fmt.l0(fit.l0)}")
            if fit.law is not None:
                n = np.geomspace(min(fit.widths), max(fit.widths), 50)
                ax.plot(n, fit.law.at(n), "-", color=color,
                        label=f"fit, b = {fmt.num(fit.law.b[0], 2)}")
        ax.set_xscale("log", base=2)
        widths = sorted({w for f in fits if f.variant == variant for w in f.widths})
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.set_xlabel("number of latents n (log scale)")
        ax.set_ylabel(LABELS["fvu"])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title(f"{variant}: FVU(n) = a·n^(−b) + c at fixed L0")
    return _png(fig)


def _family_panels(res: SweepResults, draw, title: str) -> bytes | None:
    """One panel per family with training curves, `draw(ax, family)` filling each; None
    when the sweep recorded no curves."""
    if res.curves is None:
        return None
    families = [f for f in res.families.values()
                if any(r["name"] in res.curves for c in f.points for r in c.runs)]
    if not families:
        return None
    cols = min(4, len(families))
    rows = math.ceil(len(families) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, family in zip(axes, families, strict=False):
        draw(ax, family)
        ax.set_title(f"{family.variant}, d_sae = {family.width}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    for ax in axes[len(families):]:
        ax.set_axis_off()
    fig.suptitle(title)
    return _png(fig)


def plot_curves(res: SweepResults, metric: str) -> bytes | None:
    """Held-out `metric` against training tokens, one panel per family, one line per run
    of its frontier points through what runs of each budget end with: its half-budget
    twin, then its own end (dashed: fails the convergence criterion); its points during the
    run, at constant lr, as dots."""
    return _family_panels(
        res, lambda ax, family: _curve_panel(ax, res, family, metric),
        f"Held-out {fmt.metric(metric)} of runs of half and of all the tokens, lr decayed in "
        "both (frontier points; dashed: fails the convergence criterion; dots: during the "
        "run, at constant lr)")


def plot_budget_frontiers(res: SweepResults) -> bytes | None:
    """What the convergence criterion reads, one panel per family: held-out FVU against L0
    of the half-budget twins (hollow, dashed: mean over seeds per level) and of the runs'
    ends (filled, solid). A frontier that moved down or left with twice the tokens was
    still learning."""
    def draw(ax, family: Family) -> None:
        for budget, (style, fill) in {"half": ("--", "none"), "all": ("-", "full")}.items():
            color = "C0" if budget == "half" else "C1"
            means = []
            for c in family.points:
                curves = [res.curves.get(r["name"]) for r in c.runs]
                points = [(curve[-1] if budget == "all" else half_budget_end(curve))
                          for curve in curves if curve]
                points = [p for p in points if p is not None and p["l0"] > 0]
                ax.plot([p["l0"] for p in points], [p["fvu"] for p in points], "o",
                        color=color, fillstyle=fill, markersize=3)
                if points:
                    means.append((np.mean([p["l0"] for p in points]),
                                  np.mean([p["fvu"] for p in points])))
            means.sort()
            ax.plot([m[0] for m in means], [m[1] for m in means], style, color=color,
                    linewidth=1, label=f"{budget} the tokens")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("L0")
        ax.set_ylabel("FVU")

    return _family_panels(res, draw, "Frontiers of runs of half and of all the tokens, lr "
                          "decayed in both (held-out FVU against L0; what the convergence "
                          "criterion compares)")


def _curve_panel(ax, res: SweepResults, family: Family, metric: str) -> None:
    for i, c in enumerate(family.points):
        for run in c.runs:
            points = [p for p in res.curves.get(run["name"], []) if fmt.finite(p[metric])]
            if not points:
                continue
            # the line joins what runs of each budget end with (twins, then the run's end);
            # the run's own points before its end, at constant lr, are dots
            ends = [p for p in (half_budget_end(points), points[-1]) if p is not None]
            during = [p for p in points[:-1] if p["run_tokens"] == points[-1]["run_tokens"]]
            ax.plot([p["tokens"] for p in ends], [p[metric] for p in ends],
                    "--" if run.get("converged") == 0 else "-", color=f"C{i}", linewidth=1,
                    marker="o", markersize=3, label=fmt.level(c) if run is c.runs[0] else None)
            ax.plot([p["tokens"] for p in during], [p[metric] for p in during], ".",
                    color=f"C{i}", markersize=2, alpha=0.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e6:g}M"))
    ax.set_xlabel("training tokens")
    ax.set_ylabel(fmt.metric(metric))
