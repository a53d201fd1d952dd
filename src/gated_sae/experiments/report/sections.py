"""The report's question sections as blocks (render.py): each answer (prose.py), its evidence
as tables of estimates with intervals, and its figures. Figures are given as {file name: PNG
or None}; a None figure becomes a 'not measured' line."""

from __future__ import annotations

from ..pareto import sparsity_level
from . import formatting as fmt
from . import prose
from .findings import Q1, Q2, Difference, Rival
from .model import BASE_ARCHS, BASELINE, GATED, Family, SweepResults
from .render import Block
from .stats import interval
from .width import Q3

Images = dict[str, bytes | None]


def figure(images: Images, name: str, heading: str, caption: str) -> list[Block]:
    if images.get(name) is None:
        return [("p", f"{heading}: {fmt.NOT_MEASURED}.")]
    return [("img", name, caption)]


def _verdict(d: Difference, alt: str, ref: str) -> str:
    if d.alt_better is None:
        return d.verdict
    return f"{alt if d.alt_better else ref} better".replace(fmt.UNCONVERGED_MARK, "")


def difference_table(rows: list[tuple[str, str, Difference]], ref_head: str,
                     alt_head: str) -> list[Block]:
    """One row per difference: (alt name, ref name, difference); nothing without rows.
    Names carry the unconverged mark of their family (`fmt.family`)."""
    body = []
    for alt, ref, d in rows:
        digits = 1 if d.metric == "l0" else 3
        body.append([
            f"{alt} / {ref}" if d.null else f"{alt} − {ref}",
            fmt.metric(d.metric),
            fmt.where(d.at_metric, d.at),
            fmt.interval(d.ref, digits),
            fmt.interval(d.alt, digits),
            fmt.interval(d.delta, write=fmt.significant) if d.null
            else fmt.interval(d.delta, sign=True),
            _verdict(d, alt, ref),
        ])
    delta = "Δ or ratio [95% interval]"
    head = ["compared", "metric", "at", ref_head, alt_head, delta, "verdict"]
    return [("table", head, body)] if body else []


# --- Q1 -------------------------------------------------------------------------------------


def section_q1(q1: Q1, res: SweepResults) -> list[Block]:
    blocks: list[Block] = [("h2", "Q1. Is b_mag still necessary in the Gated SAE?")]
    if not q1.ablations:
        return [*blocks, ("p", f"The gated ablations were {fmt.NOT_MEASURED}.")]
    blocks.append(("p", prose.answer_q1(q1, res.metric)))
    rows = [(fmt.family(a.ablated), fmt.family(a.gated), d)
            for a in q1.ablations for d in a.differences]
    others = [prose.ablation_sentence(a, res.metric) for a in q1.ablations]
    return [
        *blocks,
        ("p", f"Evidence at d_sae = {q1.width}, each ablation against gated at matched L0 "
              "(gated restricted to the learning rates the ablation was trained at where it "
              "has them). The paper's ablations, for comparison, are in \"The paper's "
              "settings beside ours\"."),
        ("ul", others),
        *difference_table(rows, "gated", "ablation"),
    ]


# --- Q2 -------------------------------------------------------------------------------------


def lr_table(res: SweepResults, variants: list[str]) -> Block:
    """Loss recovered (or FVU) at every (variant, level, lr) of the main width, levels from
    sparse to dense: each variant's chosen lr in bold, dead configurations named,
    unconverged marked."""
    width = res.main_width
    lrs = sorted({x for v in variants for x in res.families[(v, width)].choice.swept})
    dead = {(r["variant"], r["lr"], sparsity_level(r), r["k"] is not None)
            for r in res.excluded if r["d_sae"] == width}
    body = []
    for variant in variants:
        configs = {(c.lr, c.level): c for c in res.configs_of(variant, width)}
        levels = {(c.level, c.k_like) for c in configs.values()}
        levels |= {(level, k_like) for v, _, level, k_like in dead if v == variant}
        chosen = res.families[(variant, width)].choice.lr
        for level, k_like in sorted(levels, key=lambda x: x[0] if x[1] else -x[0]):
            cells = [variant, fmt.sparsity(level, k_like)]
            for lr in lrs:
                c = configs.get((lr, level))
                if c is None:
                    cells.append("dead" if (variant, lr, level, k_like) in dead else "–")
                else:
                    text = fmt.flagged(c, fmt.num(c.value(res.metric)))
                    cells.append(f"**{text}**" if lr == chosen else text)
            body.append(cells)
    return ("table", ["variant", "sparsity", *(f"lr {fmt.lr(x)}" for x in lrs)], body)


def _choice_cells(f: Family, lr: float) -> list[str]:
    """One lr of a family: its name (bold: chosen), healthy levels, seeds, the mean of its
    curve at the L0s compared and its difference from the chosen lr's, with intervals."""
    c = f.choice
    points = c.curves.get(lr, [])
    seeds = sorted({p.seeds for p in points}) or ["–"]
    cells = [f"**{fmt.lr(lr)}**" if lr == c.lr else fmt.lr(lr), str(len(points)),
             f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])]
    if lr in c.means:
        delta = interval(c.difference(lr))
        return cells + [fmt.interval(interval(c.means[lr])),
                        "chosen" if lr == c.lr else fmt.interval(delta, sign=True)]
    if not points:
        return cells + ["–", "dead"]
    return cells + ["–", "chosen" if lr == c.lr else "not compared"]


def lr_choice_table(res: SweepResults, families: list[Family]) -> list[Block]:
    """Each lr's curve of each family at the L0s its lrs were compared at: the mean there,
    and its difference from the chosen lr's with the 95% interval of the same bootstrap."""
    body = [[f.variant, fmt.series([fmt.l0(x) for x in f.choice.l0s]) or "–",
             *_choice_cells(f, lr)] for f in families for lr in f.choice.swept]
    head = ["variant", "at L0", "lr", "healthy levels", "seeds",
            f"mean {fmt.metric(res.metric)} [95% interval]", "Δ from the chosen lr"]
    return [("table", head, body)] if body else []


def section_q2(q2: Q2 | None, res: SweepResults, images: Images) -> list[Block]:
    blocks: list[Block] = [
        ("h2", "Q2. Does gated still win when relu gets its own best learning rate?")
    ]
    if q2 is None:
        return [*blocks, ("p", f"Relu and gated at the main width were {fmt.NOT_MEASURED}.")]
    swept = [v for v in BASE_ARCHS if (v, q2.width) in res.families]
    families = [res.families[(v, q2.width)] for v in swept]
    several = [f for f in families if len(f.choice.swept) > 1]
    names = fmt.family(q2.gated), fmt.family(q2.relu)
    rows = [(*names, d) for d in q2.differences]
    ratio_rows = [(*names, d) for d in q2.ratios]
    return [
        *blocks,
        ("p", prose.answer_q2(q2, res.metric)),
        ("p", f"{res.metric_name.capitalize()} at d_sae = {q2.width} for every learning rate "
              "and level (mean over healthy seeds; in bold, the lr each variant keeps; dead: "
              f"every run excluded; {fmt.UNCONVERGED_MARK}: fails the convergence criterion). "
              "Read across a row with care: at a fixed λ the lr moves L0, so a row compares "
              "SAEs of different sparsity."),
        lr_table(res, swept),
        *([("p", "How each variant's lr was chosen (\"How to read this report\"): each lr's "
                 "curve read at the L0s where all of the variant's curves can be read, the "
                 "mean over those L0s, and its difference from the chosen lr's with a 95% "
                 "bootstrap interval (the choice is made on the estimates)."),
           ("ul", [prose.choice_sentence(f) for f in several]),
           *lr_choice_table(res, several)] if several else []),
        *figure(images, "lr_sensitivity.png", "Learning-rate sensitivity",
                "Loss recovered and FVU against L0, one line per learning rate; stars and the "
                "thick line: the chosen lr; dotted: the L0s the lrs were compared at. L0 moves "
                "with lr at a fixed λ, so lr alone is not an axis."),
        ("h3", "Gated against relu at matched L0"),
        *(difference_table(rows, "relu", "gated")
          or [("p", "No L0 at which both frontiers can be read.")]),
        *figure(images, "frontiers.png", "Frontiers",
                "Every variant's frontier at the main width in loss recovered, Δloss and FVU, "
                "with 95% intervals on both axes; dotted lines at the matched L0s of the "
                "table above."),
        ("h3", "L0 ratio at matched fidelity"),
        ("p", " ".join(filter(None, (prose.ratio_sentence(q2.ratios, m)
                                     for m in ("loss_recovered", "fvu"))))
         or f"The L0 ratio: {fmt.NOT_MEASURED} (no fidelity both frontiers reach)."),
        *difference_table(ratio_rows, "relu L0", "gated L0"),
        ("h3", "Shrinkage (γ)"),
        ("ul", [prose.shrinkage_sentence(s) for s in q2.shrinkage]),
        ("p", prose.shrinkage_verdict(q2)),
        *shrinkage_table(q2),
        *figure(images, "shrinkage.png", "Shrinkage",
                "γ (the paper's, uncentred) and the centred γ against L0, with 95% intervals."),
    ]


def shrinkage_table(q2: Q2) -> list[Block]:
    """γ and centred γ per level of relu and gated, each against 1."""
    words = {"lower": "below 1", "higher": "above 1"}
    body = []
    for s in q2.shrinkage:
        for i, c in enumerate(s.family.points):
            cells = [s.family.variant, fmt.flagged(c, fmt.level(c)), fmt.l0(c.value("l0"))]
            for tests in (s.gamma, s.centred):
                d = tests[i] if tests else None
                cells += [fmt.interval(d.alt) if d else "n/a",
                          words.get(d.verdict, d.verdict) if d else "n/a"]
            body.append(cells)
    head = ["variant", "sparsity", "L0", "γ", "γ against 1", "centred γ", "centred against 1"]
    return [("table", head, body)] if any(s.gamma for s in q2.shrinkage) else []


# --- Q3 -------------------------------------------------------------------------------------


def _widths_sentence(q3: Q3) -> str:
    sizes = "; ".join(f"{v}: {', '.join(map(str, w))}" for v, w in q3.widths.items())
    text = f"Widths with a healthy frontier (d_sae): {sizes}."
    if q3.d_in:
        text += f" d_in = {q3.d_in}."
    budget = [
        f"{w}: {', '.join(fmt.count(t) for t in ts)} "
        f"({', '.join(f'{t / w:,.0f}' for t in ts)} per latent)"
        for w, ts in q3.tokens.items() if ts
    ]
    if budget:
        text += " Training tokens per SAE at each width: " + "; ".join(budget) + "."
    return text


def section_q3(q3: Q3, res: SweepResults, images: Images) -> list[Block]:
    blocks: list[Block] = [
        ("h2", "Q3. How does fidelity scale with the dictionary, at matched L0?"),
        ("p", prose.answer_q3(q3)),
        ("p", _widths_sentence(q3)),
    ]
    if not q3.fits:
        return blocks
    fit_rows = [
        [f.variant, fmt.l0(f.l0), str(w),
         fmt.interval(iv) + (fmt.UNCONVERGED_MARK if w in f.unconverged else ""),
         fmt.num(f.law.at([w])[0]) if f.law is not None else "–"]
        for f in q3.fits for w, iv in zip(f.widths, f.fvu, strict=True)
    ]
    steps = [(fmt.family(res.families[(s.variant, s.wide)], f"{s.variant} {s.wide}"),
              fmt.family(res.families[(s.variant, s.narrow)], f"{s.variant} {s.narrow}"), d)
             for s in q3.steps for d in s.differences]
    blocks += [
        ("ul", [prose.fit_sentence(f) for f in q3.fits]),
        ("table", ["variant", "L0", "d_sae", "FVU [95% interval]", "fitted"], fit_rows),
        *figure(images, "width.png", "Width law",
                "FVU at fixed L0 (interpolated on each width's frontier) against the number "
                "of latents, with 95% intervals and the fitted a·n^(−b) + c."),
        ("h3", "Does fidelity fall with width at matched L0?"),
        ("p", "Each family against the next narrower one at the L0s of its fit (wider − "
              "narrower):"),
        *difference_table(steps, "narrower", "wider"),
    ]
    if q3.equal_width:
        rows = [(fmt.family(res.families[(GATED, w)], f"gated {w}"),
                 fmt.family(res.families[(BASELINE, w)], f"relu {w}"), d)
                for w, ds in q3.equal_width for d in ds]
        blocks += [("h3", "Gated against relu at the other widths (equal width)"),
                   ("p", "d_sae " + ", ".join(str(w) for w, _ in q3.equal_width)
                    + "; the main width is in Q2."),
                   *difference_table(rows, "relu", "gated")]
    if q3.equal_compute:
        rows = [(fmt.family(res.families[(GATED, g)], f"gated {g}"),
                 fmt.family(res.families[(BASELINE, r)], f"relu {r}"), d)
                for g, r, ds in q3.equal_compute for d in ds]
        blocks += [("h3", "Gated against relu 1.5× wider (equal compute)"),
                   *difference_table(rows, "relu", "gated")]
    return blocks


# --- Q4 -------------------------------------------------------------------------------------


def section_rivals(rivals: list[Rival], res: SweepResults) -> list[Block]:
    blocks: list[Block] = [("h2", "Q4. Gated against TopK, BatchTopK and JumpReLU")]
    if not rivals:
        return [*blocks, ("p", f"Gated and another architecture at the main width were "
                               f"{fmt.NOT_MEASURED}.")]
    gated = fmt.family(res.families[(GATED, res.main_width)])
    rows = [(fmt.family(r.family), gated, d) for r in rivals for d in r.differences]
    return [
        *blocks,
        ("p", f"At d_sae = {res.main_width}, each at its chosen lr, against gated at matched "
              "L0 (rival − gated):"),
        ("ul", [prose.rival_sentence(r, res.metric) for r in rivals]),
        *difference_table(rows, GATED, "rival"),
    ]
