"""`gated-sae report DIR`: turn a sweep folder (results.csv, sweep.json, heldout.npz,
curves.csv) into report.md and a self-contained report.html (plots embedded as data URIs),
with the PNGs in DIR/plots/.

The report answers four questions about the Gated SAE (Rajamanoharan et al. 2024): Q1 is
b_mag necessary, Q2 does gated still win when relu gets its own best learning rate, Q3 how
fidelity scales with the dictionary at matched L0, Q4 how gated compares with TopK,
BatchTopK and JumpReLU; then how the SAEs trained, the paper's settings beside ours, compute,
and what the data do not settle. Every number is computed once (analysis.py), with bootstrap
intervals over held-out windows and seeds (stats.py), and the sentences, tables and figures
are written from those numbers; a question whose SAEs are not in the sweep is reported as
not measured.

The parts: inputs.py (the folder's files), model.py (runs, configurations, frontiers),
stats.py, findings.py and width.py and training.py (the answers as data), analysis.py (all
of them), prose.py (sentences), sections.py and sections_run.py (blocks), plots.py,
paper.py (the published settings), render.py (Markdown and HTML); this module puts them
together.
"""

from __future__ import annotations

from pathlib import Path

from ...files import atomic_write_bytes, atomic_write_text
from . import plots, sections, sections_run
from .analysis import Findings, analyse
from .model import SweepResults, load_sweep
from .render import Block, to_html, to_markdown

__all__ = ["write_report"]


def _figures(res: SweepResults, f: Findings) -> dict[str, bytes | None]:
    """Every figure, drawn from the same findings as the text."""
    l0s = sorted({d.at for d in f.q2.differences}) if f.q2 else []
    if not res.rows:
        return {}
    return {
        "frontiers.png": plots.plot_frontiers(res, l0s),
        "lr_sensitivity.png": plots.plot_lr_sensitivity(res),
        "shrinkage.png": plots.plot_shrinkage(res),
        "width.png": plots.plot_width(f.q3.fits),
        "budget_frontiers.png": plots.plot_budget_frontiers(res),
        "curves_fvu.png": plots.plot_curves(res, "fvu"),
        "curves_loss_recovered.png": plots.plot_curves(res, "loss_recovered"),
        "dead.png": plots.plot_dead(res),
    }


def write_report(sweep_dir: str | Path) -> tuple[Path, Path]:
    """Write DIR/report.md, DIR/report.html and DIR/plots/*.png for the sweep in DIR."""
    sweep_dir = Path(sweep_dir)
    res = load_sweep(sweep_dir)
    f = analyse(res)
    images = _figures(res, f)
    cfg = res.config
    title = f"Gated SAE questions: {cfg.get('model', 'unknown model')} {cfg.get('site', '')}"
    blocks: list[Block] = [
        ("h1", title.strip()),
        *sections_run.intro(res, f),
        *sections.section_q1(f.q1, res),
        *sections.section_q2(f.q2, res, images),
        *sections.section_q3(f.q3, res, images),
        *sections.section_rivals(f.rivals, res),
        *sections_run.section_training(res, f.convergence, images),
        *(sections_run.results_table(res) if res.families else []),
        *sections_run.section_paper(res, f),
        *sections_run.section_compute(f.compute),
        *sections_run.section_unsettled(f, res),
        *sections_run.section_run(res, sweep_dir),
    ]
    drawn = {name: png for name, png in images.items() if png is not None}
    plots_dir = sweep_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    for name, png in drawn.items():
        atomic_write_bytes(plots_dir / name, lambda out, png=png: out.write(png))
    md, page = sweep_dir / "report.md", sweep_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks))
    atomic_write_text(page, to_html(blocks, drawn, title))
    return md, page
