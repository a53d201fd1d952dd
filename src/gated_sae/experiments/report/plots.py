"""The report's five plots as PNG bytes: (a) the Pareto frontiers, (b) learning-rate
sensitivity, (c) shrinkage γ, (d) dead latents, (e) width scaling. Each returns None when
the sweep has nothing to draw; the PNGs carry no software or date metadata, so the same
results give the same bytes."""

from __future__ import annotations

import io
import math

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..pareto import interpolate_at, sparsity_level
from . import formatting as fmt
from .findings import width_families
from .model import BASE_ARCHS, BASELINE, GATED, VARIANT_ORDER, SweepResults, finite


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


def _measured(summaries, metric: str) -> bool:
    """Whether any summary has both an L0 and `metric` to plot on log axes."""
    return any(finite(s[metric]) and finite(s["l0"]) and s["l0"] > 0 for s in summaries)


def _not_measured(ax, what: str) -> None:
    ax.text(
        0.5, 0.5, f"{what}: {fmt.NOT_MEASURED}", ha="center", va="center", transform=ax.transAxes
    )
    ax.set_axis_off()


def _metric_label(metric: str) -> str:
    return {
        "loss_recovered": "loss recovered (higher is better)",
        "fvu": "FVU (lower is better)",
    }[metric]


def plot_pareto(res: SweepResults) -> bytes | None:
    """(a) L0 against loss recovered and against FVU: each variant's points at every lr and
    sparsity level, and the frontier through them."""
    variants = res.variants(res.main_width)
    if not variants:
        return None
    fig = Figure(figsize=(13, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    everything = [s for s in res.best if s["d_sae"] == res.main_width]
    for ax, metric in zip(axes, ("loss_recovered", "fvu"), strict=True):
        if not _measured(everything, metric):
            _not_measured(ax, _metric_label(metric))
            continue
        for variant in variants:
            family = res.points(variant, res.main_width)
            style = "--" if variant.startswith("gated ") else "-"
            ax.scatter(
                [s["l0"] for s in family],
                [s[metric] for s in family],
                color=_color(variant),
                s=22,
                alpha=0.5,
            )
            front = res.front(family, metric)
            ax.plot(
                [p[0] for p in front],
                [p[1] for p in front],
                style,
                marker="o",
                color=_color(variant),
                label=variant,
            )
        _log_l0_axis(ax, _metric_label(metric))
    handles = {}
    for ax in axes:
        handles.update((label, h) for h, label in zip(*ax.get_legend_handles_labels(), strict=True))
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=9)
    fig.suptitle(
        f"Pareto frontiers at d_sae = {res.main_width}, each over all of a variant's learning "
        "rates and sparsity levels\n(faint dots: points off the frontier)"
    )
    return _png(fig)


def _swept_archs(res: SweepResults) -> list[str]:
    """Base architectures trained at two or more lrs at the main width."""
    out = []
    for arch in BASE_ARCHS:
        family = res.family(arch, res.main_width)
        if family and max(len(s["lrs"]) for s in family) >= 2:
            out.append(arch)
    return out


def plot_lr_sensitivity(res: SweepResults) -> bytes | None:
    """(b) loss recovered and FVU against lr, one line per sparsity level, best lr starred."""
    archs = _swept_archs(res)
    if not archs:
        return None
    fig = Figure(figsize=(4.6 * len(archs), 7.5), layout="constrained")
    axes = fig.subplots(2, len(archs), squeeze=False)
    for col, arch in enumerate(archs):
        family = res.family(arch, res.main_width)
        for i, best in enumerate(family):
            color = f"C{i % 10}"
            points = sorted(
                (
                    s
                    for s in res.per_lr
                    if s["variant"] == arch
                    and s["d_sae"] == res.main_width
                    and sparsity_level(s) == sparsity_level(best)
                ),
                key=lambda s: s["lr"],
            )
            for row, metric in enumerate(("loss_recovered", "fvu")):
                ax = axes[row][col]
                if not _measured(points, metric):
                    continue
                ax.plot(
                    [s["lr"] for s in points],
                    [s[metric] for s in points],
                    "-o",
                    color=color,
                    label=fmt.level(best),
                )
                ax.plot(best["lr"], best[metric], "*", color=color, markersize=16)
        for row, metric in enumerate(("loss_recovered", "fvu")):
            ax = axes[row][col]
            if not ax.lines:
                _not_measured(ax, _metric_label(metric))
                continue
            ax.set_xscale("log")
            lrs = sorted({lr for s in family for lr in s["lrs"]})
            ax.set_xticks(lrs, [fmt.lr(x) for x in lrs])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("learning rate (log scale)")
            ax.set_ylabel(_metric_label(metric))
            ax.grid(alpha=0.3, which="both")
        axes[0][col].set_title(f"{arch}, d_sae = {res.main_width}")
        axes[int(not axes[0][col].lines)][col].legend(fontsize=9, title="sparsity level")
    fig.suptitle("Learning-rate sensitivity (star: best lr at that sparsity level)")
    return _png(fig)


def _plot_vs_l0(res: SweepResults, metric: str, ylabel: str, title: str, line: str | None):
    """`metric` against L0 for every variant at the main width; `line` labels a dotted
    horizontal line at 1."""
    variants = res.variants(res.main_width)
    if not _measured([s for s in res.best if s["d_sae"] == res.main_width], metric):
        return None
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for variant in variants:
        family = sorted(res.family(variant, res.main_width), key=lambda s: s["l0"])
        style = "--" if variant.startswith("gated ") else "-"
        ax.plot(
            [s["l0"] for s in family],
            [s[metric] for s in family],
            style,
            marker="o",
            color=_color(variant),
            label=variant,
        )
    if line is not None:
        ax.axhline(1.0, color="grey", linestyle=":", label=line)
    _log_l0_axis(ax, ylabel)
    ax.legend(fontsize=9, loc="best")
    ax.set_title(title)
    return _png(fig)


def plot_gamma(res: SweepResults) -> bytes | None:
    """(c) γ against L0 per variant; γ < 1 is shrinkage."""
    return _plot_vs_l0(
        res,
        "gamma",
        "γ (relative reconstruction bias)",
        f"Shrinkage at d_sae = {res.main_width}: γ = E‖x̂‖² / E[x·x̂]",
        "γ = 1 (unbiased)",
    )


def plot_dead(res: SweepResults) -> bytes | None:
    """(d) fraction of dead latents against L0 per variant."""
    return _plot_vs_l0(
        res,
        "dead_fraction",
        "dead-latent fraction",
        f"Dead latents at d_sae = {res.main_width}",
        None,
    )


def plot_width(res: SweepResults) -> bytes | None:
    """(e) loss recovered against width at matched L0: gated, relu at equal width, and relu
    1.5× wider (equal compute) drawn at the gated width it is matched with."""
    data = width_families(res)
    if len(data) < 2:
        return None
    fronts = [res.front(f) for d in data for f in (d.gated, d.relu, d.relu_wide)]
    fronts = [f for f in fronts if f]
    if not fronts:
        return None
    lo = max(f[0][0] for f in fronts)
    hi = min(f[-1][0] for f in fronts)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    widths = [d.width for d in data]
    lines = (
        (GATED, GATED, "-", [d.gated for d in data]),
        (f"{BASELINE} (equal width)", BASELINE, "-", [d.relu for d in data]),
        (f"{BASELINE} 1.5× wider (equal compute)", BASELINE, "--", [d.relu_wide for d in data]),
    )
    if lo <= hi:
        l0 = math.sqrt(lo * hi)
        for label, variant, style, families in lines:
            ys = [interpolate_at(res.front(f), l0) if f else None for f in families]
            ax.plot(
                widths,
                [math.nan if y is None else y for y in ys],
                style,
                marker="o",
                color=_color(variant),
                label=label,
            )
        ax.set_title(f"Width scaling at matched L0 ≈ {fmt.l0(l0)} (frontier interpolation)")
    else:
        levels = sorted({sparsity_level(s) for d in data for s in d.gated})
        level = levels[len(levels) // 2]  # every width has gated rows, so levels is not empty
        for label, variant, style, families in lines:
            ys = [
                next((s[res.metric] for s in f if sparsity_level(s) == level), math.nan)
                for f in families
            ]
            ax.plot(widths, ys, style, marker="o", color=_color(variant), label=label)
        ax.set_title(f"Width scaling at matched coefficient λ = {level:g} (no shared L0 range)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("d_sae of the gated SAE (log scale; relu equal-compute point is 1.5× wider)")
    ax.set_ylabel(_metric_label(res.metric))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    return _png(fig)
