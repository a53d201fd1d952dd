"""`gated-sae report DIR`: turn a sweep's results.csv and sweep.json into report.md and a
self-contained report.html (plots embedded as data URIs), with the PNGs in DIR/plots/.

The report answers three questions about the Gated SAE (Rajamanoharan et al. 2024):
Q1 is b_mag necessary, Q2 does gated still win when relu gets its own best learning rate,
Q3 does the result hold as the dictionary grows (at equal width and at equal compute, relu
1.5× wider). Every sentence is generated from the numbers; a question whose SAEs are not in
the table is reported as not measured. Comparisons are made along L0–fidelity frontiers
(pareto.py): at matched L0 where two frontiers overlap, else at matched sparsity level.

The parts: model.py (the sweep's rows and frontiers), findings.py (each question's answer as
numbers and verdicts), prose.py (the sentences), sections.py (headings, sentences and
tables), plots.py, render.py (Markdown and HTML); this module puts them together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...files import atomic_write_bytes, atomic_write_text
from ..results import read_results
from . import plots, prose, sections
from .findings import analyse_q1, analyse_q2, analyse_q3
from .formatting import NOT_MEASURED
from .model import SweepResults, read_record
from .render import Block, to_html, to_markdown

__all__ = ["write_report"]

PLOTS: tuple[tuple[str, Callable[[SweepResults], bytes | None], str, str], ...] = (
    (
        "pareto.png",
        plots.plot_pareto,
        "Pareto frontiers",
        "L0 against loss recovered and FVU; each frontier runs over all of a variant's "
        "learning rates and sparsity levels.",
    ),
    (
        "lr_sensitivity.png",
        plots.plot_lr_sensitivity,
        "Learning-rate sensitivity",
        "Loss recovered and FVU against lr, one line per sparsity level.",
    ),
    (
        "gamma.png",
        plots.plot_gamma,
        "Shrinkage",
        "γ against L0 per variant; the dotted line is γ = 1 (no shrinkage).",
    ),
    (
        "dead.png",
        plots.plot_dead,
        "Dead latents",
        "Fraction of dead latents against L0 per variant.",
    ),
    (
        "width.png",
        plots.plot_width,
        "Width scaling",
        "Loss recovered against width at matched L0: gated, relu at equal width, and relu 1.5× "
        "wider (equal compute).",
    ),
)


def write_report(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Write DIR/report.md, DIR/report.html and DIR/plots/*.png for the sweep in DIR."""
    sweep_dir = Path(sweep_dir)
    res = SweepResults(
        read_results(sweep_dir / "results.csv"), read_record(sweep_dir / "sweep.json")
    )
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
        ("p", prose.COMPARISON_RULE),
        *sections.section_q1(analyse_q1(res), res.metric_name),
        *sections.section_q2(analyse_q2(res), res),
        *sections.section_q3(analyse_q3(res), res.metric_name),
    ]
    if res.rows:
        blocks += sections.results_table(res)
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
    blocks += sections.section_run(res, sweep_dir)

    plots_dir = sweep_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    for name, png in images.items():
        atomic_write_bytes(plots_dir / name, lambda f, png=png: f.write(png))
    md, page = sweep_dir / "report.md", sweep_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks))
    atomic_write_text(page, to_html(blocks, images, title))
    return md, page
