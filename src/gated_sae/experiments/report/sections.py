"""The report's sections as blocks (render.py): each question's headline, its supporting
sentences (prose.py) and tables, the results table, and how the sweep was run."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from ..pareto import sparsity_level
from . import formatting as fmt
from . import prose
from .findings import Q1, Q2, Q3, LrGrid
from .model import BASELINE, GATED, SweepResults, finite
from .render import Block


def results_table(res: SweepResults) -> list[Block]:
    head = ["variant", "sparsity", "best lr", "seeds", "L0", "FVU", "loss recovered", "γ", "dead"]
    body = [
        [
            s["variant"],
            fmt.level(s),
            fmt.lr(s["lr"]),
            str(s["n_seeds"]),
            fmt.with_spread(s, "l0", 1),
            fmt.with_spread(s, "fvu"),
            fmt.with_spread(s, "loss_recovered"),
            fmt.with_spread(s, "gamma"),
            fmt.num(s["dead_fraction"]),
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


# --- Q1 -------------------------------------------------------------------------------------


def section_q1(q1: Q1, metric_name: str) -> list[Block]:
    blocks: list[Block] = [("h2", "Q1. Is b_mag still necessary in the Gated SAE?")]
    if not q1.ablations:
        return [*blocks, ("p", f"The gated ablations were {fmt.NOT_MEASURED}.")]
    summary = f"The b_mag ablation (gated no b_mag) was {fmt.NOT_MEASURED}."
    details: list[Block] = []
    if q1.b_mag is not None:
        b_mag = next(a for a in q1.ablations if a.variant == "gated no b_mag")
        comparisons = q1.b_mag.comparisons
        summary = prose.b_mag_summary(q1.b_mag, metric_name)
        details += [
            (
                "p",
                f"At d_sae = {q1.width}, {prose.lr_note(b_mag)}, compared "
                f"{prose.basis(comparisons)}:",
            ),
            (
                "ul",
                [
                    prose.change_sentence(c, prose.change(b_mag.variant), metric_name)
                    for c in comparisons
                ],
            ),
        ]
    others = [
        prose.ablation_sentence(a, metric_name)
        for a in q1.ablations
        if a.variant != "gated no b_mag"
    ]
    if others:
        details += [("h3", "The other ablations, against gated"), ("ul", others)]
    return [*blocks, ("p", summary), *details, *_ablation_table(q1)]


def _ablation_table(q1: Q1) -> list[Block]:
    head = ["sparsity", "variant", "lr", "L0", "FVU", "loss recovered", "γ", "seeds"]
    body = []
    pairs = [(a.gated, a.ablated) for a in q1.ablations]
    levels = sorted({sparsity_level(s) for gated, ablated in pairs for s in gated + ablated})
    for level in levels:
        shown = set()
        for gated, ablated in pairs:
            for s in (*gated, *ablated):
                key = (s["variant"], s["lr"])
                if sparsity_level(s) != level or key in shown:
                    continue
                shown.add(key)
                body.append(
                    [
                        fmt.level(s),
                        s["variant"],
                        fmt.lr(s["lr"]),
                        fmt.with_spread(s, "l0", 1),
                        fmt.with_spread(s, "fvu"),
                        fmt.with_spread(s, "loss_recovered"),
                        fmt.with_spread(s, "gamma"),
                        str(s["n_seeds"]),
                    ]
                )
    return [
        ("h3", f"Ablation table (d_sae = {q1.width}, matched sparsity coefficient)"),
        (
            "p",
            "Mean over seeds; in brackets the seed spread (max − min) where there are "
            "several seeds. Gated is shown at each learning rate its ablations used.",
        ),
        ("table", head, body),
    ]


# --- Q2 -------------------------------------------------------------------------------------


def _lr_table(grid: LrGrid) -> Block:
    body = []
    for arch, best, values in grid.rows:
        cells = [arch, fmt.level(best)]
        for lr, value in zip(grid.lrs, values, strict=True):
            text = "–" if value is None else fmt.num(value)
            cells.append(f"**{text}**" if lr == best["lr"] else text)
        body.append(cells)
    return ("table", ["arch", "sparsity", *(f"lr {fmt.lr(x)}" for x in grid.lrs)], body)


def section_q2(q2: Q2 | None, res: SweepResults) -> list[Block]:
    blocks: list[Block] = [
        ("h2", "Q2. Were learning rates swept for the baseline as well as for the Gated SAE?")
    ]
    if q2 is None:
        return [*blocks, ("p", f"Relu and gated at the main width were {fmt.NOT_MEASURED}.")]
    details: list[Block] = [
        (
            "p",
            f"Learning rates at d_sae = {res.main_width} ({res.metric_name}, mean over seeds; "
            "best in bold):",
        ),
        _lr_table(q2.grid),
        ("ul", [prose.lr_sweep_sentence(s) for s in q2.sweeps]),
        ("p", prose.best_lrs_sentence(q2.best_lrs)),
    ]
    if q2.frontier:
        details.append(
            (
                "ul",
                [prose.versus_sentence(c, BASELINE, GATED, res.metric_name) for c in q2.frontier],
            )
        )
    if q2.shared_lr:
        details.append(("p", prose.shared_lr_sentence(q2.shared_lr)))
    details.append(("h3", "Shrinkage (γ)"))
    details.append(("ul", prose.shrinkage_sentences(q2.shrinkage)))
    return [*blocks, ("p", prose.q2_summary(q2, res.metric_name, res.sign)), *details]


# --- Q3 -------------------------------------------------------------------------------------


def section_q3(q3: Q3, metric_name: str) -> list[Block]:
    blocks: list[Block] = [
        ("h2", "Q3. How large is the dictionary, and does the result hold as it grows?"),
        ("p", prose.widths_sentence(q3)),
    ]
    if len(q3.gated_widths) < 2:
        return [*blocks, ("p", f"Relu and gated at two or more widths were {fmt.NOT_MEASURED}.")]
    head = ["gated d_sae", "setting", "relu d_sae", "compared at", "relu", "gated", "Δ", "verdict"]
    body = [
        [
            str(m.width),
            m.setting,
            str(m.relu_width),
            prose.where(c),
            fmt.num(c.ref),
            fmt.num(c.alt),
            fmt.delta(c.delta),
            c.verdict,
        ]
        for m in q3.margins
        for c in m.comparisons
    ]
    lines = [
        prose.width_line([m for m in q3.margins if m.width == w], metric_name)
        for w in q3.gated_widths
    ]
    trend = prose.trend_text(q3, metric_name)
    return [
        *blocks,
        ("p", "**In short:** " + " ".join(prose.hold_sentence(h) for h in q3.holds)),
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


# --- how it was run -------------------------------------------------------------------------


def section_run(res: SweepResults, sweep_dir: Path) -> list[Block]:
    cfg = res.config
    blocks: list[Block] = [("h2", "How this was run")]
    if not cfg:
        blocks.append(("p", "sweep.json is missing or unreadable: the settings were not recorded."))
    else:
        eval_tokens = sorted({int(r["eval_tokens"]) for r in res.rows if finite(r["eval_tokens"])})
        versions = res.record.get("versions")
        versions = versions if isinstance(versions, dict) else {}
        facts = [
            f"model: `{cfg.get('model', 'n/a')}`, site: `{cfg.get('site', 'n/a')}`",
            f"dataset: `{cfg.get('dataset', 'n/a')}`",
            f"training tokens per SAE: {fmt.count(cfg.get('tokens'))}",
            f"batch size: {cfg.get('batch_size', 'n/a')}; seeds: {cfg.get('seeds', 'n/a')}",
            f"held-out evaluation tokens per SAE: {', '.join(fmt.count(t) for t in eval_tokens)}"
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
