"""The report's sentences, each written from the findings (findings.py): what was compared,
where, by how much, and the verdict against seed noise."""

from __future__ import annotations

from ..pareto import Comparison
from . import formatting as fmt
from .findings import (
    GAMMA_TOLERANCE,
    IMPROVES,
    MATTERS_EVERYWHERE,
    NO_SIGN,
    NO_WIDTH,
    NOISE_UNKNOWN,
    Q2,
    Q3,
    SOME_WIDTHS,
    UNSTEADY,
    WORSENS,
    Ablation,
    BMag,
    Hold,
    LrSweep,
    Shrinkage,
    WidthMargin,
    middle,
    tally,
)

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
# What each gated ablation changes, as the subject of a sentence.
ABLATION_CHANGES = {
    "gated no b_mag": "fixing b_mag at zero",
    "gated no r_mag": "removing r_mag (W_mag = W_gate)",
    "gated untied": "untying W_mag from W_gate",
    "gated RI-L1": "the RI-L1 loss",
}

TREND_WORDS = {
    IMPROVES: "improves as d_sae grows",
    WORSENS: "worsens as d_sae grows",
    UNSTEADY: "does not move steadily with d_sae",
}

# --- comparisons ----------------------------------------------------------------------------


def where(c: Comparison) -> str:
    """'L0 ≈ 40', or the sparsity level when compared at matched coefficient."""
    if c.level is None:
        return f"L0 ≈ {fmt.l0(c.l0_ref)}"
    return f"λ = {c.level:g} (matched coefficient; L0 {fmt.l0(c.l0_ref)} vs {fmt.l0(c.l0_alt)})"


def _noise_clause(c: Comparison) -> str:
    if c.noise is None:
        return "with one seed per family the seed noise is unknown."
    return f"the seed spread at matched L0 is {c.noise:.3f}, so the difference is {c.verdict}."


def _deltas(comparisons: list[Comparison]) -> str:
    return ", ".join(fmt.delta(c.delta) for c in comparisons)


def change_sentence(c: Comparison, change: str, metric_name: str) -> str:
    """'At L0 ≈ 40, fixing b_mag at zero lowers loss recovered from 0.912 to 0.897 …'."""
    if c.delta == 0:
        effect = f"leaves {metric_name} unchanged at {fmt.num(c.ref)}"
    else:
        verb = "raises" if c.delta > 0 else "lowers"
        effect = f"{verb} {metric_name} from {fmt.num(c.ref)} to {fmt.num(c.alt)}"
    return f"At {where(c)}, {change} {effect} (Δ {fmt.delta(c.delta)}); {_noise_clause(c)}"


def versus_sentence(c: Comparison, ref: str, alt: str, metric_name: str) -> str:
    return (
        f"At {where(c)}, {alt} reaches {metric_name} {fmt.num(c.alt)} against {ref}'s "
        f"{fmt.num(c.ref)} (Δ {fmt.delta(c.delta)}); {_noise_clause(c)}"
    )


def basis(comparisons: list[Comparison]) -> str:
    if comparisons[0].level is None:
        return "at matched L0 (" + ", ".join(fmt.l0(c.l0_ref) for c in comparisons) + ")"
    return "at matched sparsity coefficient (the frontiers share no L0 range)"


def _tally(comparisons: list[Comparison]) -> str:
    """'larger than seed noise at 2 of 3 points', or why the noise is unknown."""
    beyond, known = tally(comparisons)
    if not known:
        return "seed noise unknown, one seed per family"
    if not beyond:
        return f"within seed noise at all {known} points"
    return f"larger than seed noise at {beyond} of {known} points"


# --- Q1 -------------------------------------------------------------------------------------


def change(variant: str) -> str:
    """What an ablation changes, as the subject of a sentence."""
    return ABLATION_CHANGES.get(variant, f"the {variant} variant")


def lr_note(ablation: Ablation) -> str:
    named = ", ".join(fmt.lr(x) for x in ablation.lrs)
    if ablation.gated_at_same_lrs:
        return f"both at lr {named}"
    return f"the ablation at lr {named}, gated at its best lr (not trained at {named})"


def ablation_sentence(ablation: Ablation, metric_name: str) -> str:
    """One line per ablation: its Δs at the compared points and how many exceed the noise."""
    comparisons = ablation.comparisons
    if not comparisons:
        return f"{change(ablation.variant)}: nothing shared with gated to compare at."
    if comparisons[0].level is None:
        at = "L0 ≈ " + fmt.series([fmt.l0(c.l0_ref) for c in comparisons])
    else:
        at = "matched coefficient λ = " + fmt.series([f"{c.level:g}" for c in comparisons])
    return (
        f"{change(ablation.variant)}: Δ {_deltas(comparisons)} in {metric_name} at "
        f"{at} ({lr_note(ablation)}; {_tally(comparisons)})."
    )


def b_mag_summary(b_mag: BMag, metric_name: str) -> str:
    deltas = _deltas(b_mag.comparisons)
    if b_mag.verdict == NOISE_UNKNOWN:
        return (
            f"**In short:** fixing b_mag at zero changes {metric_name} by {deltas} at the "
            "compared points; with one seed per family the seed noise is unknown, so this sweep "
            "cannot tell whether b_mag matters."
        )
    if b_mag.verdict == NO_SIGN:
        return (
            f"**In short:** fixing b_mag at zero changes {metric_name} by {deltas} at the "
            "compared points, every difference within seed noise: this sweep finds no sign that "
            f"b_mag is needed, down to the seed noise of {b_mag.noise:.3f}."
        )
    direction = "costs" if b_mag.costs else "changes"
    if b_mag.verdict == MATTERS_EVERYWHERE:
        return (
            f"**In short:** fixing b_mag at zero {direction} {metric_name} ({deltas}), by more "
            "than seed noise at every compared point: in this sweep b_mag matters."
        )
    at = fmt.series([where(c) for c in b_mag.beyond])
    return (
        f"**In short:** fixing b_mag at zero {direction} {metric_name} ({deltas}), by more "
        f"than seed noise only at {at} ({len(b_mag.beyond)} of {len(b_mag.comparisons)} "
        "compared points) and within it elsewhere: in this sweep b_mag matters there and "
        "nowhere else."
    )


# --- Q2 -------------------------------------------------------------------------------------


def lr_sweep_sentence(sweep: LrSweep) -> str:
    if len(sweep.lrs) < 2:
        return (
            f"{sweep.arch}: only lr {fmt.lr(sweep.lrs[0])} was trained, so its learning rate "
            "was not swept."
        )
    by_lr: dict[float, list[str]] = {}
    for s in sweep.best:
        by_lr.setdefault(s["lr"], []).append(fmt.level(s))
    best = "; ".join(f"{fmt.lr(x)} at {fmt.series(levels)}" for x, levels in sorted(by_lr.items()))
    text = f"{sweep.arch}: swept lr {', '.join(fmt.lr(x) for x in sweep.lrs)}; best lr {best}."
    for end, at_edge in (("smallest", sweep.best_at_smallest), ("largest", sweep.best_at_largest)):
        if at_edge:
            text += (
                f" At {fmt.series([fmt.level(s) for s in at_edge])} the best lr is the {end} "
                "swept, so the optimum may lie outside the range."
            )
    return text


def best_lrs_sentence(best_lrs: list[tuple[dict, float, float]]) -> str:
    if not best_lrs:
        return "relu and gated share no sparsity level, so their best lrs cannot be compared."
    differs = sum(relu != gated for _, relu, gated in best_lrs)
    pairs = "; ".join(
        f"{fmt.level(s)}: relu {fmt.lr(relu)}, gated {fmt.lr(gated)}" for s, relu, gated in best_lrs
    )
    if not differs:
        return f"The best lr is the same for relu and gated at every shared level ({pairs})."
    return (
        f"The best lr differs between relu and gated at {differs} of {len(best_lrs)} shared "
        f"sparsity levels ({pairs}), so a single shared lr would have favoured one of them."
    )


def q2_summary(q2: Q2, metric_name: str, sign: int) -> str:
    relu, gated = q2.lr_counts
    swept = (
        "Both were swept" if min(relu, gated) >= 2 else "Not both were swept"
    ) + f": relu over {relu} learning rate{'s' * (relu != 1)}, gated over {gated}"
    comparisons = q2.frontier
    if not comparisons:
        return f"**In short:** {swept}. Relu and gated share no L0 range or sparsity level."
    ahead = "all" if q2.gated_ahead == len(comparisons) else f"{q2.gated_ahead} of"
    side = "above relu's" if sign > 0 else "below relu's (lower FVU is better)"
    return (
        f"**In short:** {swept}. With each architecture's frontier taken over all its learning "
        f"rates, gated's frontier lies {side} at {ahead} {len(comparisons)} compared points "
        f"{basis(comparisons)}, by {_deltas(comparisons)} in {metric_name} "
        f"({_tally(comparisons)})."
    )


def shared_lr_sentence(shared: list[tuple[float, Comparison]]) -> str:
    return (
        "Had both used one shared learning rate, the margin at the middle of the compared "
        "points would be: "
        + "; ".join(
            f"both at lr {fmt.lr(x)}, gated − relu = {fmt.delta(c.delta)} at {where(c)}"
            for x, c in shared
        )
        + "."
    )


def shrinkage_sentences(found: Shrinkage | None) -> list[str]:
    if found is None:
        return [f"γ of relu and gated at every sparsity level: {fmt.NOT_MEASURED}."]

    def values(family):
        return ", ".join(f"{fmt.num(s['gamma'])} at {fmt.level(s)}" for s in family)

    return [
        f"Gated γ: {values(found.gated)}: "
        + ("within" if found.gated_near_one else "not all within")
        + f" {GAMMA_TOLERANCE} of 1.",
        f"Relu γ: {values(found.relu)}: "
        + ("below 1 at every level" if found.relu_below_one else "at or above 1 at some level")
        + ("; falling as λ grows." if found.relu_falling else "; not falling steadily as λ grows."),
        "The paper's shrinkage finding (gated γ ≈ 1, relu γ < 1) "
        + ("reproduces" if found.reproduces else "does not reproduce")
        + f" here. Mean shrinkage 1 − γ over the sparsity levels: relu {fmt.num(found.relu_mean)}"
        f", gated {fmt.num(found.gated_mean)}.",
    ]


# --- Q3 -------------------------------------------------------------------------------------


def widths_sentence(q3: Q3) -> str:
    sizes = [f"{v}: " + ", ".join(str(w) for w in widths) for v, widths in q3.widths.items()]
    text = "Widths trained (d_sae): " + "; ".join(sizes) + "."
    if q3.d_in:
        ratios = ", ".join(f"{x:g}" for x in q3.expansion)
        text += f" d_in = {q3.d_in}, so the expansion factors d_sae/d_in are {ratios}."
    return text


def width_line(margins: list[WidthMargin], metric_name: str) -> str:
    """One gated width against relu, in both settings."""
    parts = []
    for m in margins:
        if not m.comparisons:
            parts.append(f"{m.setting}: {fmt.NOT_MEASURED}")
            continue
        c = middle(m.comparisons)
        parts.append(
            f"{m.setting}, against relu d_sae = {m.relu_width}: {fmt.delta(c.delta)} at "
            f"{where(c)}, {c.verdict}"
        )
    return f"d_sae = {margins[0].width}, gated − relu {metric_name}: " + "; ".join(parts) + "."


def hold_sentence(hold: Hold) -> str:
    if hold.verdict is None:
        return f"At {hold.setting}: {fmt.NOT_MEASURED}."
    margins = ", ".join(f"{fmt.delta(c.delta)} at {w}" for w, c in hold.margins)
    if hold.verdict == SOME_WIDTHS:
        verdict = f"gated leads at d_sae {fmt.series([str(w) for w in hold.ahead])} only"
    elif hold.verdict == NO_WIDTH:
        verdict = "gated does not lead beyond seed noise at any width"
    else:
        verdict = "gated leads at every width trained"
    noise = " (seed noise unknown)" if hold.noise_unknown else ""
    return f"At {hold.setting}, {verdict}{noise}: margins {margins}."


def trend_text(q3: Q3, metric_name: str) -> str | None:
    """How each architecture's own fidelity moves with width; with a caveat when it worsens."""
    sentences = []
    for t in q3.trends:
        listed = fmt.series([f"{fmt.num(v)} at {w}" for w, v in t.values])
        sentences.append(
            f"At L0 ≈ {fmt.l0(t.l0)}, {t.variant}'s {metric_name} is {listed}: it "
            f"{TREND_WORDS[t.direction]}."
        )
    if not sentences:
        return None
    if any(t.direction == WORSENS for t in q3.trends):
        budget = f"the same {q3.tokens:,} tokens" if q3.tokens is not None else "the same tokens"
        sentences.append(
            f"Every width trained on {budget}, so a wider dictionary has fewer tokens per "
            "latent: fidelity falling with width at a fixed budget points to undertraining, "
            "not to a dictionary that is too large. At equal width gated and relu share that "
            "handicap; at equal compute the relu is 1.5× wider and so further from converged, "
            "which flatters gated's equal-compute margins. A longer run (`--preset paper`) "
            "shows whether the margins hold once the wide SAEs converge."
        )
    return " ".join(sentences)
