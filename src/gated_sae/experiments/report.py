"""`gated-sae report DIR`: turn a sweep's results.csv and sweep.json into report.md and a
self-contained report.html (plots embedded as data URIs), with the PNGs in DIR/plots/.

The report answers three questions about the Gated SAE (Rajamanoharan et al. 2024):
Q1 is b_mag necessary, Q2 does gated still win when relu gets its own best learning rate,
Q3 does the result hold as the dictionary grows (at equal width and at equal compute, relu
1.5× wider). Every sentence is generated from the numbers; a question whose SAEs are not in
the table is reported as not measured. Comparisons are made along L0–fidelity frontiers
(pareto.py): at matched L0 where two frontiers overlap, else at matched sparsity level.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import shlex
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..errors import DataError
from ..files import atomic_write_bytes, atomic_write_text
from ..saes import variant_order
from .pareto import (
    METRICS,
    Comparison,
    best_lr_rows,
    compare,
    frontier,
    interpolate_at,
    seed_noise,
    sparsity_level,
    summarize,
)

BASE_ARCHS = ("relu", "gated", "topk", "batchtopk", "jumprelu")
VARIANT_ORDER = variant_order()
# What each gated ablation changes, as the subject of a sentence.
ABLATION_CHANGES = {
    "gated no b_mag": "fixing b_mag at zero",
    "gated no r_mag": "removing r_mag (W_mag = W_gate)",
    "gated untied": "untying W_mag from W_gate",
    "gated RI-L1": "the RI-L1 loss",
}
INT_COLUMNS = ("d_sae", "seed", "tokens", "batch_size", "k")
FLOAT_COLUMNS = ("lr", "sparsity_coef", *METRICS, "eval_tokens")
EQUAL_COMPUTE_RATIO = 1.5  # a gated step costs about 1.5 baseline steps (paper, Sec. 4)
GAMMA_TOLERANCE = 0.05  # "γ ≈ 1" for the shrinkage check
NOT_MEASURED = "not measured in this sweep"
COMPARISON_RULE = (
    "Two SAE families are compared at matched L0: each family's points (every learning rate "
    "and sparsity level it was trained at, mean over seeds) give an L0–fidelity Pareto "
    "frontier, so at each L0 a family is credited with the best any of its learning rates "
    "reached. Frontiers are interpolated linearly in log L0 and read at the two ends and the "
    "geometric middle of the L0 range both cover. Where two frontiers share no L0 range "
    "they are compared at matched sparsity coefficient instead (each family's best row at "
    "that level), and the text says so. Seed noise is measured at matched "
    "L0 too: for each family, every seed run at a shared learning rate gets its own "
    "frontier, and the noise is the largest spread (max − min over seeds) of those "
    "frontiers at the L0s they all cover (at matched λ the seeds' L0s differ, which is not "
    "noise). A difference Δ is called **within seed noise** when |Δ| ≤ the larger seed "
    "noise of the two families; where neither family has two seeds the noise is unknown "
    "and the text says so."
)

Block = tuple  # ("h1"|"h2"|"h3"|"p"|"pre", text) | ("ul", items) | ("table", head, rows)
# | ("img", file name, caption)


# --- reading --------------------------------------------------------------------------------


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_results(path: Path) -> list[dict]:
    """The rows of a results.csv with numbers parsed: missing integers (k of a relu SAE)
    become None, missing metrics NaN, `role` a frozenset `roles`, `options` a dict."""
    try:
        with open(path, newline="") as f:
            raw = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"cannot read sweep results {path}: {e.strerror}") from None
    rows = []
    for r in raw:
        row = {k: (v or "").strip() for k, v in r.items() if k is not None}
        for key in INT_COLUMNS:
            row[key] = _int(row.get(key, ""))
        for key in FLOAT_COLUMNS:
            row[key] = _float(row.get(key, ""))
        if math.isnan(row["sparsity_coef"]):
            row["sparsity_coef"] = None
        row["variant"] = row.get("variant") or row.get("arch", "")
        row["roles"] = frozenset(t for t in row.get("role", "").split(";") if t)
        try:
            row["options"] = json.loads(row.get("options") or "{}")
        except json.JSONDecodeError:
            row["options"] = {}
        rows.append(row)
    return rows


def _read_record(path: Path) -> dict:
    """sweep.json, or {} when it is missing or unreadable (the report then says so)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


# --- formatting -----------------------------------------------------------------------------


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _num(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "n/a"


def _delta(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def _l0(x: float) -> str:
    if not _finite(x):
        return "n/a"
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _lr(x: float) -> str:
    """3e-4 style: the shortest mantissa, the exponent without padding."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _level(row: dict) -> str:
    level = sparsity_level(row)
    return f"k = {level}" if row.get("k") is not None else f"λ = {level:g}"


def _count(x) -> str:
    return f"{x:,}" if isinstance(x, int) else "n/a"


def _series(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _with_spread(row: dict, metric: str, digits: int = 3) -> str:
    value = _num(row[metric], digits)
    if row["n_seeds"] >= 2 and _finite(row[f"{metric}_spread"]):
        return f"{value} ({row[f'{metric}_spread']:.{digits}f})"
    return value


def _variant_key(variant: str) -> tuple:
    known = variant in VARIANT_ORDER
    return (not known, VARIANT_ORDER.index(variant) if known else 0, variant)


def _color(variant: str) -> str:
    return f"C{VARIANT_ORDER.index(variant) % 10}" if variant in VARIANT_ORDER else "black"


# --- the sweep as the report sees it --------------------------------------------------------


class _Results:
    """The rows, best-lr summaries and settings that every section reads."""

    def __init__(self, rows: list[dict], record: dict):
        # A row without a width, lr or sparsity level cannot be placed on any comparison.
        usable = [
            r
            for r in rows
            if r["d_sae"] is not None and _finite(r["lr"]) and _finite(sparsity_level(r))
        ]
        self.skipped = len(rows) - len(usable)
        self.rows = rows = usable
        self.record = record
        self.config = record.get("config") if isinstance(record.get("config"), dict) else {}
        self.best = best_lr_rows(rows)
        self.per_lr = summarize(rows, ("variant", "d_sae", "sparsity", "lr"))
        # Fidelity is loss recovered; a sweep that did not measure it falls back to FVU.
        has_lr = any(_finite(r["loss_recovered"]) for r in rows)
        self.metric = "loss_recovered" if has_lr else "fvu"
        self.metric_name = "loss recovered" if has_lr else "FVU"
        self.sign = 1 if has_lr else -1  # sign · Δ > 0: the second family is better
        self.main_width = self._main_width()

    def _main_width(self) -> int | None:
        widths = [r["d_sae"] for r in self.rows if r["d_sae"] is not None]
        if self.config.get("main_width") in widths:
            return self.config["main_width"]
        swept = [r["d_sae"] for r in self.rows if "lr_sweep" in r["roles"]] or widths
        if not swept:
            return None
        return min(set(swept), key=lambda w: (-swept.count(w), w))

    def variants(self, width: int | None = None) -> list[str]:
        found = {r["variant"] for r in self.best if width is None or r["d_sae"] == width}
        return sorted(found, key=_variant_key)

    def family(self, variant: str, width: int | None, rows: list[dict] | None = None) -> list:
        """Best-lr summaries of `variant` at `width`, one per sparsity level, in level order
        (of `rows` when given, else of the whole sweep)."""
        pool = self.best if rows is None else best_lr_rows(rows)
        found = [s for s in pool if s["variant"] == variant and s["d_sae"] == width]
        return sorted(found, key=sparsity_level)

    def points(self, variant: str, width: int | None, rows: list[dict] | None = None) -> list:
        """Per-lr summaries of `variant` at `width`, one per (sparsity level, lr): the points
        its frontier is built from (of `rows` when given, else of the whole sweep)."""
        by = ("variant", "d_sae", "sparsity", "lr")
        pool = self.per_lr if rows is None else summarize(rows, by)
        found = [s for s in pool if s["variant"] == variant and s["d_sae"] == width]
        return sorted(found, key=lambda s: (sparsity_level(s), s["lr"]))

    def compare(self, ref: list[dict], alt: list[dict]) -> list[Comparison]:
        """`ref` against `alt` at matched L0, with the larger of the two families' seed noise."""
        noises = [n for n in map(self.seed_noise, (ref, alt)) if n is not None]
        return compare(ref, alt, self.metric, self.metric != "fvu", max(noises, default=None))

    def seed_noise(self, family: list[dict]) -> float | None:
        """`seed_noise` of the sweep's rows of the family's variant at the family's width."""
        if not family:
            return None
        variant, width = family[0]["variant"], family[0]["d_sae"]
        rows = [r for r in self.rows if r["variant"] == variant and r["d_sae"] == width]
        return seed_noise(rows, self.metric, self.metric != "fvu")

    def front(self, family: list[dict], metric: str | None = None) -> list[tuple]:
        """The L0 frontier of `family` on `metric` (default: the report's fidelity)."""
        metric = metric or self.metric
        return frontier([(s["l0"], s[metric], s) for s in family], metric != "fvu")


# --- sentences ------------------------------------------------------------------------------


def _where(c: Comparison) -> str:
    """'L0 ≈ 40', or the sparsity level when compared at matched coefficient."""
    if c.level is None:
        return f"L0 ≈ {_l0(c.l0_ref)}"
    return f"λ = {c.level:g} (matched coefficient; L0 {_l0(c.l0_ref)} vs {_l0(c.l0_alt)})"


def _noise_clause(c: Comparison) -> str:
    if c.noise is None:
        return "with one seed per family the seed noise is unknown."
    return f"the seed spread at matched L0 is {c.noise:.3f}, so the difference is {c.verdict}."


def _change_sentence(c: Comparison, change: str, metric_name: str) -> str:
    """'At L0 ≈ 40, fixing b_mag at zero lowers loss recovered from 0.912 to 0.897 …'."""
    if c.delta == 0:
        effect = f"leaves {metric_name} unchanged at {_num(c.ref)}"
    else:
        verb = "raises" if c.delta > 0 else "lowers"
        effect = f"{verb} {metric_name} from {_num(c.ref)} to {_num(c.alt)}"
    return f"At {_where(c)}, {change} {effect} (Δ {_delta(c.delta)}); {_noise_clause(c)}"


def _versus_sentence(c: Comparison, ref: str, alt: str, metric_name: str) -> str:
    return (
        f"At {_where(c)}, {alt} reaches {metric_name} {_num(c.alt)} against {ref}'s {_num(c.ref)} "
        f"(Δ {_delta(c.delta)}); {_noise_clause(c)}"
    )


def _basis(comparisons: list[Comparison]) -> str:
    if comparisons[0].level is None:
        return "at matched L0 (" + ", ".join(_l0(c.l0_ref) for c in comparisons) + ")"
    return "at matched sparsity coefficient (the frontiers share no L0 range)"


def _tally(comparisons: list[Comparison]) -> str:
    """'larger than seed noise at 2 of 3 points', or why the noise is unknown."""
    known = [c for c in comparisons if c.noise is not None]
    if not known:
        return "seed noise unknown, one seed per family"
    beyond = sum(c.verdict == "larger than seed noise" for c in known)
    if not beyond:
        return f"within seed noise at all {len(known)} points"
    return f"larger than seed noise at {beyond} of {len(known)} points"


def _middle(comparisons: list[Comparison]) -> Comparison:
    return comparisons[len(comparisons) // 2]


# --- plots ----------------------------------------------------------------------------------


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
    return any(_finite(s[metric]) and _finite(s["l0"]) and s["l0"] > 0 for s in summaries)


def _not_measured(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}: {NOT_MEASURED}", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _metric_label(metric: str) -> str:
    return {
        "loss_recovered": "loss recovered (higher is better)",
        "fvu": "FVU (lower is better)",
    }[metric]


def plot_pareto(res: _Results) -> bytes | None:
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


def _swept_archs(res: _Results) -> list[str]:
    """Base architectures trained at two or more lrs at the main width."""
    out = []
    for arch in BASE_ARCHS:
        family = res.family(arch, res.main_width)
        if family and max(len(s["lrs"]) for s in family) >= 2:
            out.append(arch)
    return out


def plot_lr_sensitivity(res: _Results) -> bytes | None:
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
                    label=_level(best),
                )
                ax.plot(best["lr"], best[metric], "*", color=color, markersize=16)
        for row, metric in enumerate(("loss_recovered", "fvu")):
            ax = axes[row][col]
            if not ax.lines:
                _not_measured(ax, _metric_label(metric))
                continue
            ax.set_xscale("log")
            lrs = sorted({lr for s in family for lr in s["lrs"]})
            ax.set_xticks(lrs, [_lr(x) for x in lrs])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("learning rate (log scale)")
            ax.set_ylabel(_metric_label(metric))
            ax.grid(alpha=0.3, which="both")
        axes[0][col].set_title(f"{arch}, d_sae = {res.main_width}")
        axes[int(not axes[0][col].lines)][col].legend(fontsize=9, title="sparsity level")
    fig.suptitle("Learning-rate sensitivity (star: best lr at that sparsity level)")
    return _png(fig)


def _plot_vs_l0(res: _Results, metric: str, ylabel: str, title: str, line: str | None):
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


def plot_gamma(res: _Results) -> bytes | None:
    """(c) γ against L0 per variant; γ < 1 is shrinkage."""
    return _plot_vs_l0(
        res,
        "gamma",
        "γ (relative reconstruction bias)",
        f"Shrinkage at d_sae = {res.main_width}: γ = E‖x̂‖² / E[x·x̂]",
        "γ = 1 (unbiased)",
    )


def plot_dead(res: _Results) -> bytes | None:
    """(d) fraction of dead latents against L0 per variant."""
    return _plot_vs_l0(
        res,
        "dead_fraction",
        "dead-latent fraction",
        f"Dead latents at d_sae = {res.main_width}",
        None,
    )


# --- Q3 data: widths ------------------------------------------------------------------------


def _width_rows(res: _Results) -> list[dict]:
    """The rows trained for the width question, else all rows."""
    tagged = [r for r in res.rows if r["roles"] & {"width", "equal_compute"}]
    return tagged or res.rows


def _equal_compute_width(widths: Sequence[int], gated_width: int) -> int | None:
    """The relu width within 5% of 1.5× the gated width, if one was trained."""
    target = EQUAL_COMPUTE_RATIO * gated_width
    near = [w for w in widths if abs(w - target) <= 0.05 * target]
    return min(near, key=lambda w: abs(w - target)) if near else None


def _width_families(res: _Results) -> list[tuple[int, list, list, int | None, list]]:
    """(gated width W, gated points, relu points at W, relu width ≈1.5W, its points)."""
    rows = _width_rows(res)
    gated_widths = sorted({r["d_sae"] for r in rows if r["variant"] == "gated"})
    relu_widths = sorted({r["d_sae"] for r in rows if r["variant"] == "relu"})
    out = []
    for w in gated_widths:
        wide = _equal_compute_width(relu_widths, w)
        out.append(
            (
                w,
                res.points("gated", w, rows),
                res.points("relu", w, rows),
                wide,
                res.points("relu", wide, rows) if wide is not None else [],
            )
        )
    return out


def plot_width(res: _Results) -> bytes | None:
    """(e) loss recovered against width at matched L0: gated, relu at equal width, and relu
    1.5× wider (equal compute) drawn at the gated width it is matched with."""
    data = _width_families(res)
    if len(data) < 2:
        return None
    fronts = [res.front(f) for d in data for f in (d[1], d[2], d[4])]
    fronts = [f for f in fronts if f]
    if not fronts:
        return None
    lo = max(f[0][0] for f in fronts)
    hi = min(f[-1][0] for f in fronts)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    widths = [w for w, *_ in data]
    lines = (
        ("gated", "gated", 1, "-"),
        ("relu (equal width)", "relu", 2, "-"),
        ("relu 1.5× wider (equal compute)", "relu", 4, "--"),
    )
    if lo <= hi:
        l0 = math.sqrt(lo * hi)
        for label, variant, index, style in lines:
            ys = [interpolate_at(res.front(d[index]), l0) if d[index] else None for d in data]
            ax.plot(
                widths,
                [math.nan if y is None else y for y in ys],
                style,
                marker="o",
                color=_color(variant),
                label=label,
            )
        ax.set_title(f"Width scaling at matched L0 ≈ {_l0(l0)} (frontier interpolation)")
    else:
        levels = sorted({sparsity_level(s) for d in data for s in d[1]})
        level = levels[len(levels) // 2]  # every width has gated rows, so levels is not empty
        for label, variant, index, style in lines:
            ys = [
                next((s[res.metric] for s in d[index] if sparsity_level(s) == level), math.nan)
                for d in data
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


# --- sections -------------------------------------------------------------------------------


def _results_table(res: _Results) -> list[Block]:
    head = ["variant", "sparsity", "best lr", "seeds", "L0", "FVU", "loss recovered", "γ", "dead"]
    body = [
        [
            s["variant"],
            _level(s),
            _lr(s["lr"]),
            str(s["n_seeds"]),
            _with_spread(s, "l0", 1),
            _with_spread(s, "fvu"),
            _with_spread(s, "loss_recovered"),
            _with_spread(s, "gamma"),
            _num(s["dead_fraction"]),
        ]
        for v in res.variants(res.main_width)
        for s in res.family(v, res.main_width)
    ]
    return [
        ("h2", f"Results at the main width (d_sae = {res.main_width})"),
        (
            "p",
            "Each variant at its best learning rate per sparsity level, mean over seeds; "
            "in brackets the seed spread (max − min) where there are several seeds.",
        ),
        ("table", head, body),
    ]


def _ablation_pairs(res: _Results) -> tuple[int | None, list[tuple[str, list, list, str]]]:
    """The width of the ablations and, for each ablation, (variant, gated family, ablation
    family, how the lrs were matched). Gated is taken at the lrs the ablation was trained
    at, so that the difference is the ablation's alone and not a learning rate's; where
    gated was not trained at them, at its own best lr, and the description says so."""
    ablations = [r for r in res.rows if r["arch"] == "gated" and r["variant"] != "gated"]
    if not ablations:
        return None, []
    widths = [r["d_sae"] for r in ablations]
    width = res.main_width if res.main_width in widths else max(set(widths), key=widths.count)
    all_gated = [r for r in res.rows if r["variant"] == "gated" and r["d_sae"] == width]
    out = []
    for variant in sorted({r["variant"] for r in ablations}, key=_variant_key):
        lrs = sorted(
            {r["lr"] for r in ablations if r["variant"] == variant and r["d_sae"] == width}
        )
        named = ", ".join(_lr(x) for x in lrs)
        gated = [r for r in all_gated if r["lr"] in lrs]
        lr_note = f"both at lr {named}"
        if not gated:
            gated = all_gated
            lr_note = f"the ablation at lr {named}, gated at its best lr (not trained at {named})"
        if lrs and gated:
            out.append(
                (variant, res.points("gated", width, gated), res.points(variant, width), lr_note)
            )
    return width, out


def section_q1(res: _Results) -> list[Block]:
    blocks: list[Block] = [("h2", "Q1. Is b_mag still necessary in the Gated SAE?")]
    width, pairs = _ablation_pairs(res)
    if not pairs:
        return [*blocks, ("p", f"The gated ablations were {NOT_MEASURED}.")]
    details: list[Block] = []
    summary = f"The b_mag ablation (gated no b_mag) was {NOT_MEASURED}."
    others = []
    for variant, gated, ablated, lr_note in pairs:
        comparisons = res.compare(gated, ablated)
        change = ABLATION_CHANGES.get(variant, f"the {variant} variant")
        if variant != "gated no b_mag":
            others.append(_ablation_sentence(comparisons, change, res.metric_name, lr_note))
        elif comparisons:
            summary = _q1_summary(comparisons, res.metric_name, res.sign)
            details += [
                ("p", f"At d_sae = {width}, {lr_note}, compared {_basis(comparisons)}:"),
                ("ul", [_change_sentence(c, change, res.metric_name) for c in comparisons]),
            ]
    if others:
        details += [("h3", "The other ablations, against gated"), ("ul", others)]
    return [*blocks, ("p", summary), *details, *_ablation_table(res, width, pairs)]


def _ablation_sentence(
    comparisons: list[Comparison], change: str, metric: str, lr_note: str
) -> str:
    """One line per ablation: its Δs at the compared points and how many exceed the noise."""
    if not comparisons:
        return f"{change}: nothing shared with gated to compare at."
    if comparisons[0].level is None:
        where = "L0 ≈ " + _series([_l0(c.l0_ref) for c in comparisons])
    else:
        where = "matched coefficient λ = " + _series([f"{c.level:g}" for c in comparisons])
    return (
        f"{change}: Δ {', '.join(_delta(c.delta) for c in comparisons)} in {metric} at "
        f"{where} ({lr_note}; {_tally(comparisons)})."
    )


def _q1_summary(comparisons: list[Comparison], metric_name: str, sign: int) -> str:
    deltas = ", ".join(_delta(c.delta) for c in comparisons)
    if all(c.noise is None for c in comparisons):
        return (
            f"**In short:** fixing b_mag at zero changes {metric_name} by {deltas} at the "
            "compared points; with one seed per family the seed noise is unknown, so this sweep "
            "cannot tell whether b_mag matters."
        )
    beyond = [c for c in comparisons if c.verdict == "larger than seed noise"]
    if not beyond:
        noise = max(c.noise for c in comparisons if c.noise is not None)
        return (
            f"**In short:** fixing b_mag at zero changes {metric_name} by {deltas} at the "
            "compared points, every difference within seed noise: this sweep finds no sign that "
            f"b_mag is needed, down to the seed noise of {noise:.3f}."
        )
    direction = "costs" if all(sign * c.delta < 0 for c in beyond) else "changes"
    if len(beyond) == len(comparisons):
        return (
            f"**In short:** fixing b_mag at zero {direction} {metric_name} ({deltas}), by more "
            "than seed noise at every compared point: in this sweep b_mag matters."
        )
    where = _series([_where(c) for c in beyond])
    return (
        f"**In short:** fixing b_mag at zero {direction} {metric_name} ({deltas}), by more "
        f"than seed noise only at {where} ({len(beyond)} of {len(comparisons)} compared "
        "points) and within it elsewhere: in this sweep b_mag matters there and nowhere else."
    )


def _ablation_table(res: _Results, width: int, pairs) -> list[Block]:
    head = ["sparsity", "variant", "lr", "L0", "FVU", "loss recovered", "γ", "seeds"]
    body = []
    levels = sorted({sparsity_level(s) for _, gated, ablated, _ in pairs for s in gated + ablated})
    for level in levels:
        shown = set()
        for _, gated, ablated, _ in pairs:
            for s in (*gated, *ablated):
                key = (s["variant"], s["lr"])
                if sparsity_level(s) != level or key in shown:
                    continue
                shown.add(key)
                body.append(
                    [
                        _level(s),
                        s["variant"],
                        _lr(s["lr"]),
                        _with_spread(s, "l0", 1),
                        _with_spread(s, "fvu"),
                        _with_spread(s, "loss_recovered"),
                        _with_spread(s, "gamma"),
                        str(s["n_seeds"]),
                    ]
                )
    return [
        ("h3", f"Ablation table (d_sae = {width}, matched sparsity coefficient)"),
        (
            "p",
            "Mean over seeds; in brackets the seed spread (max − min) where there are "
            "several seeds. Gated is shown at each learning rate its ablations used.",
        ),
        ("table", head, body),
    ]


def _lr_sentence(arch: str, family: list[dict]) -> str:
    lrs = sorted({lr for s in family for lr in s["lrs"]})
    if len(lrs) < 2:
        return f"{arch}: only lr {_lr(lrs[0])} was trained, so its learning rate was not swept."
    by_lr: dict[float, list[str]] = {}
    for s in family:
        by_lr.setdefault(s["lr"], []).append(_level(s))
    best = "; ".join(f"{_lr(lr)} at {_series(levels)}" for lr, levels in sorted(by_lr.items()))
    text = f"{arch}: swept lr {', '.join(_lr(x) for x in lrs)}; best lr {best}."
    for end, index in (("smallest", 0), ("largest", -1)):
        at_edge = [_level(s) for s in family if len(s["lrs"]) >= 2 and s["lr"] == s["lrs"][index]]
        if at_edge:
            text += (
                f" At {_series(at_edge)} the best lr is the {end} swept, so the optimum may lie "
                "outside the range."
            )
    return text


def _lr_table(res: _Results, archs: list[str]) -> Block:
    lrs = sorted(
        {s["lr"] for s in res.per_lr if s["variant"] in archs and s["d_sae"] == res.main_width}
    )
    body = []
    for arch in archs:
        for best in res.family(arch, res.main_width):
            cells = [arch, _level(best)]
            for lr in lrs:
                match = [
                    s
                    for s in res.per_lr
                    if s["variant"] == arch
                    and s["d_sae"] == res.main_width
                    and s["lr"] == lr
                    and sparsity_level(s) == sparsity_level(best)
                ]
                value = _num(match[0][res.metric]) if match else "–"
                cells.append(f"**{value}**" if lr == best["lr"] else value)
            body.append(cells)
    return ("table", ["arch", "sparsity", *(f"lr {_lr(x)}" for x in lrs)], body)


def _best_lr_differs(relu: list[dict], gated: list[dict]) -> str:
    relu_best = {sparsity_level(s): s for s in relu}
    shared = [s for s in gated if sparsity_level(s) in relu_best]
    if not shared:
        return "relu and gated share no sparsity level, so their best lrs cannot be compared."
    differs = [s for s in shared if s["lr"] != relu_best[sparsity_level(s)]["lr"]]
    pairs = "; ".join(
        f"{_level(s)}: relu {_lr(relu_best[sparsity_level(s)]['lr'])}, gated {_lr(s['lr'])}"
        for s in shared
    )
    if not differs:
        return f"The best lr is the same for relu and gated at every shared level ({pairs})."
    return (
        f"The best lr differs between relu and gated at {len(differs)} of {len(shared)} shared "
        f"sparsity levels ({pairs}), so a single shared lr would have favoured one of them."
    )


def _frontier_summary(comparisons: list[Comparison], metric_name: str, sign: int) -> str:
    above = [c for c in comparisons if sign * c.delta > 0]
    where = "all" if len(above) == len(comparisons) else f"{len(above)} of"
    side = "above relu's" if sign > 0 else "below relu's (lower FVU is better)"
    return (
        f"With each architecture's frontier taken over all its learning rates, gated's "
        f"frontier lies {side} at "
        f"{where} {len(comparisons)} compared points {_basis(comparisons)}, by "
        f"{', '.join(_delta(c.delta) for c in comparisons)} in {metric_name} "
        f"({_tally(comparisons)})."
    )


def _shared_lr_sentences(res: _Results) -> list[str]:
    """The margin had both used one shared lr, at each lr both swept."""
    out = []
    lrs = sorted(
        {s["lr"] for s in res.per_lr if s["variant"] == "gated" and s["d_sae"] == res.main_width}
        & {s["lr"] for s in res.per_lr if s["variant"] == "relu" and s["d_sae"] == res.main_width}
    )
    if len(lrs) < 2:  # with one lr, the shared-lr margin is the best-lr margin
        return []
    for lr in lrs:
        relu, gated = (
            sorted(
                (
                    s
                    for s in res.per_lr
                    if s["variant"] == v and s["d_sae"] == res.main_width and s["lr"] == lr
                ),
                key=sparsity_level,
            )
            for v in ("relu", "gated")
        )
        comparisons = res.compare(relu, gated)
        if comparisons:
            c = _middle(comparisons)
            out.append(f"both at lr {_lr(lr)}, gated − relu = {_delta(c.delta)} at {_where(c)}")
    return out


def _shrinkage(relu: list[dict], gated: list[dict]) -> list[str]:
    def values(family):
        return ", ".join(f"{_num(s['gamma'])} at {_level(s)}" for s in family)

    def mean_shrinkage(family):
        return sum(1 - s["gamma"] for s in family) / len(family)

    if not relu or not gated or not all(_finite(s["gamma"]) for s in (*relu, *gated)):
        return [f"γ of relu and gated at every sparsity level: {NOT_MEASURED}."]
    g_ok = all(abs(s["gamma"] - 1) <= GAMMA_TOLERANCE for s in gated)
    r_below = all(s["gamma"] < 1 for s in relu)
    r_falling = len(relu) >= 2 and all(b["gamma"] < a["gamma"] for a, b in pairwise(relu))
    verdict = "reproduces" if g_ok and r_below else "does not reproduce"
    return [
        f"Gated γ: {values(gated)}: "
        + ("within" if g_ok else "not all within")
        + f" {GAMMA_TOLERANCE} of 1.",
        f"Relu γ: {values(relu)}: "
        + ("below 1 at every level" if r_below else "at or above 1 at some level")
        + ("; falling as λ grows." if r_falling else "; not falling steadily as λ grows."),
        f"The paper's shrinkage finding (gated γ ≈ 1, relu γ < 1) {verdict} here. Mean "
        f"shrinkage 1 − γ over the sparsity levels: relu {_num(mean_shrinkage(relu))}, gated "
        f"{_num(mean_shrinkage(gated))}.",
    ]


def section_q2(res: _Results) -> list[Block]:
    blocks: list[Block] = [
        ("h2", "Q2. Were learning rates swept for the baseline as well as for the Gated SAE?")
    ]
    archs = [a for a in BASE_ARCHS if res.family(a, res.main_width)]
    relu = res.family("relu", res.main_width)
    gated = res.family("gated", res.main_width)
    if not relu or not gated:
        return [*blocks, ("p", f"Relu and gated at the main width were {NOT_MEASURED}.")]
    details: list[Block] = [
        (
            "p",
            f"Learning rates at d_sae = {res.main_width} ({res.metric_name}, mean over seeds; "
            "best in bold):",
        ),
        _lr_table(res, archs),
        ("ul", [_lr_sentence(a, res.family(a, res.main_width)) for a in archs]),
        ("p", _best_lr_differs(relu, gated)),
    ]
    comparisons = res.compare(res.points("relu", res.main_width),
                              res.points("gated", res.main_width))
    counts = [len({lr for s in family for lr in s["lrs"]}) for family in (relu, gated)]
    swept = (
        "Both were swept" if min(counts) >= 2 else "Not both were swept"
    ) + f": relu over {counts[0]} learning rate{'s' * (counts[0] != 1)}, gated over {counts[1]}"
    summary = f"**In short:** {swept}. Relu and gated share no L0 range or sparsity level."
    if comparisons:
        margin = _frontier_summary(comparisons, res.metric_name, res.sign)
        summary = f"**In short:** {swept}. {margin}"
        details.append(
            ("ul", [_versus_sentence(c, "relu", "gated", res.metric_name) for c in comparisons])
        )
    shared = _shared_lr_sentences(res)
    if shared:
        details.append(
            (
                "p",
                "Had both used one shared learning rate, the margin at the middle "
                "of the compared points would be: " + "; ".join(shared) + ".",
            )
        )
    details.append(("h3", "Shrinkage (γ)"))
    details.append(("ul", _shrinkage(relu, gated)))
    return [*blocks, ("p", summary), *details]


def section_q3(res: _Results) -> list[Block]:
    blocks: list[Block] = [
        ("h2", "Q3. How large is the dictionary, and does the result hold as it grows?")
    ]
    d_in = res.record.get("d_in")
    sizes = []
    for variant in res.variants():
        widths = sorted({r["d_sae"] for r in res.rows if r["variant"] == variant})
        sizes.append(f"{variant}: " + ", ".join(str(w) for w in widths))
    text = "Widths trained (d_sae): " + "; ".join(sizes) + "."
    if _finite(d_in) and d_in > 0:
        ratios = ", ".join(f"{w / d_in:g}" for w in sorted({r["d_sae"] for r in res.rows}))
        text += f" d_in = {d_in}, so the expansion factors d_sae/d_in are {ratios}."
    blocks.append(("p", text))
    data = _width_families(res)
    if len(data) < 2:
        return [*blocks, ("p", f"Relu and gated at two or more widths were {NOT_MEASURED}.")]
    head = ["gated d_sae", "setting", "relu d_sae", "compared at", "relu", "gated", "Δ", "verdict"]
    body, lines, holds = [], [], {"equal width": [], "equal compute": []}
    for w, gated, relu, wide, relu_wide in data:
        parts = []
        for setting, other, other_width in (
            ("equal width", relu, w),
            ("equal compute", relu_wide, wide),
        ):
            comparisons = res.compare(other, gated) if other else []
            if not comparisons:
                parts.append(f"{setting}: {NOT_MEASURED}")
                continue
            for c in comparisons:
                body.append(
                    [
                        str(w),
                        setting,
                        str(other_width),
                        _where(c),
                        _num(c.ref),
                        _num(c.alt),
                        _delta(c.delta),
                        c.verdict,
                    ]
                )
            c = _middle(comparisons)
            holds[setting].append((w, c))
            parts.append(
                f"{setting}, against relu d_sae = {other_width}: {_delta(c.delta)} at "
                f"{_where(c)}, {c.verdict}"
            )
        lines.append(f"d_sae = {w}, gated − relu {res.metric_name}: " + "; ".join(parts) + ".")
    summary = " ".join(
        _hold_sentence(setting, found, len(data), res.sign) for setting, found in holds.items()
    )
    trend = _width_trend(res, data)
    return [
        *blocks,
        ("p", "**In short:** " + summary),
        *([("p", trend)] if trend else []),
        ("ul", lines),
        (
            "p",
            "Each width's frontier runs over the learning rates trained at that width; the "
            "rows tagged `width` or `equal_compute` are used where the sweep has them. All "
            "compared points:",
        ),
        ("table", head, body),
    ]


def _width_trend(res: _Results, data: list[tuple]) -> str | None:
    """How each architecture's own fidelity moves with width, at one L0 all its widths cover
    (the geometric middle of their common L0 range); with a caveat when it worsens."""
    sentences, worsens = [], False
    for variant, index in (("gated", 1), ("relu", 2)):
        fronts = [(d[0], res.front(d[index])) for d in data]  # d: see _width_families
        fronts = [(w, f) for w, f in fronts if f]
        if len(fronts) < 2:
            continue
        lo, hi = max(f[0][0] for _, f in fronts), min(f[-1][0] for _, f in fronts)
        if lo > hi:
            continue
        l0 = math.sqrt(lo * hi)
        values = [(w, interpolate_at(f, l0)) for w, f in fronts]
        steps = [res.sign * (b - a) for (_, a), (_, b) in pairwise(values)]
        if all(step > 0 for step in steps):
            direction = "improves as d_sae grows"
        elif all(step < 0 for step in steps):
            direction, worsens = "worsens as d_sae grows", True
        else:
            direction = "does not move steadily with d_sae"
        listed = _series([f"{_num(v)} at {w}" for w, v in values])
        sentences.append(
            f"At L0 ≈ {_l0(l0)}, {variant}'s {res.metric_name} is {listed}: it {direction}."
        )
    if not sentences:
        return None
    if worsens:
        tokens = res.config.get("tokens")
        budget = f"the same {tokens:,} tokens" if isinstance(tokens, int) else "the same tokens"
        sentences.append(
            f"Every width trained on {budget}, so a wider dictionary has fewer tokens per "
            "latent: fidelity falling with width at a fixed budget points to undertraining, "
            "not to a dictionary that is too large. At equal width gated and relu share that "
            "handicap; at equal compute the relu is 1.5× wider and so further from converged, "
            "which flatters gated's equal-compute margins. A longer run (`--preset paper`) "
            "shows whether the margins hold once the wide SAEs converge."
        )
    return " ".join(sentences)


def _hold_sentence(
    setting: str, found: list[tuple[int, Comparison]], n_widths: int, sign: int
) -> str:
    if not found:
        return f"At {setting}: {NOT_MEASURED}."
    margins = ", ".join(f"{_delta(c.delta)} at {w}" for w, c in found)
    ahead = [w for w, c in found if sign * c.delta > 0 and c.verdict != "within seed noise"]
    if len(ahead) == len(found) == n_widths:
        verdict = "gated leads at every width trained"
    elif ahead:
        verdict = f"gated leads at d_sae {_series([str(w) for w in ahead])} only"
    else:
        verdict = "gated does not lead beyond seed noise at any width"
    noise = " (seed noise unknown)" if all(c.noise is None for _, c in found) else ""
    return f"At {setting}, {verdict}{noise}: margins {margins}."


def section_run(res: _Results, sweep_dir: Path) -> list[Block]:
    cfg = res.config
    blocks: list[Block] = [("h2", "How this was run")]
    if not cfg:
        blocks.append(("p", "sweep.json is missing or unreadable: the settings were not recorded."))
    else:
        eval_tokens = sorted({int(r["eval_tokens"]) for r in res.rows if _finite(r["eval_tokens"])})
        versions = res.record.get("versions")
        versions = versions if isinstance(versions, dict) else {}
        facts = [
            f"model: `{cfg.get('model', 'n/a')}`, site: `{cfg.get('site', 'n/a')}`",
            f"dataset: `{cfg.get('dataset', 'n/a')}`",
            f"training tokens per SAE: {_count(cfg.get('tokens'))}",
            f"batch size: {cfg.get('batch_size', 'n/a')}; seeds: {cfg.get('seeds', 'n/a')}",
            f"held-out evaluation tokens per SAE: {', '.join(_count(t) for t in eval_tokens)}"
            if eval_tokens
            else "held-out evaluation tokens: not recorded",
            f"SAEs in results.csv: {len(res.rows)}; main width: {res.main_width}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"created: {res.record.get('created', 'n/a')}",
        ]
        blocks.append(("ul", facts))
    blocks.append(("p", "To rerun, save the config below as CONFIG (YAML) and run:"))
    folder = shlex.quote(str(sweep_dir))
    blocks.append(("pre", f"gated-sae sweep CONFIG --out {folder}\ngated-sae report {folder}"))
    if cfg:
        blocks.append(("pre", yaml.safe_dump(cfg, sort_keys=False).rstrip()))
    return blocks


# --- rendering ------------------------------------------------------------------------------


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + block[1])
        elif kind == "p":
            out.append(block[1])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif kind == "pre":
            out.append(f"```\n{block[1]}\n```")
        elif kind == "img":
            out.append(f"![{block[2]}](plots/{block[1]})")
        elif kind == "table":
            head, body = block[1], block[2]
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; display: block; margin: 1rem 0; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; }
code { background: #f3f3f3; padding: 0 0.2rem; }
figcaption { font-size: 0.9rem; color: #555; }
"""


def to_html(blocks: list[Block], images: dict[str, bytes], title: str) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "pre":
            body.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "img":
            data = base64.b64encode(images[block[1]]).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}">'
                f"<figcaption>{_inline(block[2])}</figcaption></figure>"
            )
        elif kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in block[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# --- the report -----------------------------------------------------------------------------

PLOTS: tuple[tuple[str, Callable[[_Results], bytes | None], str, str], ...] = (
    (
        "pareto.png",
        plot_pareto,
        "Pareto frontiers",
        "L0 against loss recovered and FVU; each frontier runs over all of a variant's "
        "learning rates and sparsity levels.",
    ),
    (
        "lr_sensitivity.png",
        plot_lr_sensitivity,
        "Learning-rate sensitivity",
        "Loss recovered and FVU against lr, one line per sparsity level.",
    ),
    (
        "gamma.png",
        plot_gamma,
        "Shrinkage",
        "γ against L0 per variant; the dotted line is γ = 1 (no shrinkage).",
    ),
    ("dead.png", plot_dead, "Dead latents", "Fraction of dead latents against L0 per variant."),
    (
        "width.png",
        plot_width,
        "Width scaling",
        "Loss recovered against width at matched L0: gated, relu at equal width, and relu 1.5× "
        "wider (equal compute).",
    ),
)


def write_report(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Write DIR/report.md, DIR/report.html and DIR/plots/*.png for the sweep in DIR."""
    sweep_dir = Path(sweep_dir)
    res = _Results(read_results(sweep_dir / "results.csv"), _read_record(sweep_dir / "sweep.json"))
    cfg = res.config
    title = f"Gated SAE questions: {cfg.get('model', 'unknown model')} {cfg.get('site', '')}"
    blocks: list[Block] = [
        ("h1", title.strip()),
        (
            "p",
            f"{len(res.rows)} SAEs; variants: {', '.join(res.variants()) or 'none'}. "
            f"Fidelity is measured as {res.metric_name}."
            + (
                f" {res.skipped} rows without a width, lr or sparsity level were left out."
                if res.skipped
                else ""
            ),
        ),
        ("p", COMPARISON_RULE),
        *section_q1(res),
        *section_q2(res),
        *section_q3(res),
    ]
    if res.rows:
        blocks += _results_table(res)
    blocks.append(("h2", "Plots"))
    images = {}
    for name, plot, heading, caption in PLOTS:
        blocks.append(("h3", heading))
        png = plot(res) if res.rows else None
        if png is None:
            blocks.append(("p", f"{heading}: {NOT_MEASURED}."))
            continue
        images[name] = png
        blocks.append(("img", name, caption))
    blocks += section_run(res, sweep_dir)

    plots_dir = sweep_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    for name, png in images.items():
        atomic_write_bytes(plots_dir / name, lambda f, png=png: f.write(png))
    md, page = sweep_dir / "report.md", sweep_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks))
    atomic_write_text(page, to_html(blocks, images, title))
    return md, page
