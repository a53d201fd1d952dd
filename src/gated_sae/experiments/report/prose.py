"""The report's sentences, each written from the findings: the answer first, then where and by
how much, with the bootstrap interval and its verdict."""

from __future__ import annotations

from ..pareto import MATCHED_L0S, MAX_GAP, MIN_READABLE
from ..results import CONVERGENCE_TOLERANCE
from . import formatting as fmt
from .analysis import Findings
from .findings import MIN_SEEDS, Q1, Q2, Ablation, Difference, Rival, Shrinkage, outcome, split
from .model import (
    DEAD_LIMIT,
    HIGHER_IS_BETTER,
    MOST_LEVELS,
    ON_FRONTIER,
    Family,
    SweepResults,
)
from .stats import CONFIDENCE, REPLICATES
from .width import Q3, WidthFit

ABLATION_NAMES = {
    "gated no b_mag": "gated without b_mag",
    "gated no r_mag": "gated without r_mag (W_mag = W_gate)",
    "gated untied": "gated with W_mag untied from W_gate",
    "gated RI-L1": "gated with the RI-L1 loss",
}
DIRECTION = "higher loss recovered is better, lower Δloss (nats per token) and FVU are better"


def methods(res: SweepResults, findings: Findings) -> list[str]:
    """How the report compares, how sure it is, and how many comparisons it made."""
    grid = ", ".join(fmt.l0(x) for x in MATCHED_L0S)
    t = findings.tally
    return [
        f"**Frontiers.** Runs with more than {DEAD_LIMIT:.0%} of their latents dead over the "
        "last " + (f"{' or '.join(fmt.count(t) for t in res.dead_window)} tokens (by run "
                   "length)" if res.dead_window else "window")
        + " of the training stream are set apart (\"Excluded runs\") and are on no frontier. "
        "Frontiers are compared at matched L0, never at matched λ: each is read linearly in "
        f"log L0 between adjacent levels at most {MAX_GAP}× apart, only inside the L0 range "
        f"all compared frontiers cover, at the L0s of one grid for the whole report ({grid}) "
        f"that all can be read at in at least {MIN_READABLE:.0%} of the bootstrap replicates "
        "(where no grid L0 qualifies, at the geometric middle of the shared range if all can "
        f"be read there). Fidelity is given three ways ({DIRECTION}).",
        "**Learning rate.** A family is one variant at one width, and it keeps one learning "
        "rate, chosen on the frontier: at a fixed λ the lr moves L0, so the best fidelity at "
        "a fixed λ would favour whichever lr leaves the SAE densest. Each lr swept for the "
        "family draws its own curve through its healthy levels (mean over seeds); the curves "
        "of two or more levels are read as above at the L0s where all of them can be read, "
        f"and the lr with the {_best(res.metric)} over those L0s is chosen (ties: the "
        "smaller lr). Where not all of them share such an L0, the largest group of curves "
        "that does is compared (ties: the group with more levels), and the report names the "
        "lrs left out. Where no two share one, the lr is not chosen on the frontier, and "
        "the report says so: the family takes the lr with the most healthy levels, then the "
        "one with the most seeds, then the smaller lr (fidelity at a fixed λ does not enter). "
        "The family's frontier is then every level at that lr, with all its seeds. A chosen "
        "lr that is the smallest or largest swept for the family (dead runs' lrs count as "
        "swept) is flagged: the best lr may lie outside the range.",
        f"**Uncertainty.** {_basis(res)} Each interval is the central {CONFIDENCE:.0%} of "
        f"{REPLICATES:,} bootstrap replicates (percentiles). A difference is a finding when "
        "its interval excludes zero (a ratio: one); otherwise the verdict is **no detectable "
        f"difference at this budget**, with the interval. Verdicts resting on fewer than "
        f"{MIN_SEEDS} seeds are marked indicative.",
        f"**Multiple comparisons.** This report judges {t.made} intervals against their null. "
        f"Were every null true, about {t.by_chance:.0f} of them "
        f"({1 - CONFIDENCE:.0%}) would exclude it by chance; {t.excluded} do."
        if t.made else "**Multiple comparisons.** No interval could be judged.",
        f"**Convergence.** An SAE has converged when twice the training tokens moved its "
        f"family's held-out loss recovered at its L0 by less than {CONVERGENCE_TOLERANCE} (the "
        "training section says how it is measured). Configurations with a run "
        f"that fails it are marked {fmt.UNCONVERGED_MARK} in every table and drawn hollow in "
        "every figure.",
    ]


def _best(metric: str) -> str:
    """'highest mean loss recovered', 'lowest mean FVU'."""
    return f"{'highest' if HIGHER_IS_BETTER[metric] else 'lowest'} mean {fmt.metric(metric)}"


def _basis(res: SweepResults) -> str:
    if res.uncovered:
        return (
            f"heldout.npz has no per-window sums for {fmt.plural(len(res.uncovered), 'run')} "
            f"(`{res.uncovered[0]}`, …), so only the seeds are resampled: a configuration "
            "with one seed has no interval."
        )
    if not res.windows:
        return (
            "Without per-window sums (heldout.npz) only the seeds are resampled: a "
            "configuration with one seed has no interval."
        )
    windows, tokens, lm_windows, predictions = res.held_out
    return (
        f"The held-out set: {windows} windows ({tokens:,} activation tokens); the LM metrics "
        f"on the first {lm_windows} of them ({predictions:,} predictions). "
        "One bootstrap replicate draws the held-out windows with replacement, the same windows "
        "for every SAE (so comparisons are paired; the LM metrics' windows, the first of them, "
        "are drawn as a sample of their own), and each configuration's seeds with "
        "replacement; a metric is then recomputed from the per-window sums and averaged over "
        "the drawn seeds. Each family's learning rate is chosen once, on the data as measured."
    )


# --- differences ----------------------------------------------------------------------------


def _span(ds: list[Difference], ratio: bool = False) -> str:
    """'Δ +0.012 [+0.004, +0.020]' or 'Δ +0.01 to +0.02, intervals within […]'; a ratio
    without the 'Δ', to three significant figures."""
    write = fmt.significant if ratio else fmt.signed
    if len(ds) == 1:
        return ("" if ratio else "Δ ") + fmt.interval(ds[0].delta, write=write)
    values = sorted({write(d.delta.value) for d in ds}, key=lambda t: t.replace("−", "-"))
    lows = [d.delta.low for d in ds if fmt.finite(d.delta.low)]
    highs = [d.delta.high for d in ds if fmt.finite(d.delta.high)]
    span = values[0] if len(values) == 1 else f"{values[0]} to {values[-1]}"
    text = span if ratio else f"Δ {span}"
    if lows:
        text += f", intervals within [{write(min(lows))}, {write(max(highs))}]"
    return text


def _values(ds: list[Difference]) -> str:
    """'20, 40 and 80': where the differences were taken (L0s, or fidelities)."""
    write = fmt.l0 if ds[0].at_metric == "l0" else fmt.num
    return fmt.series(list(dict.fromkeys(write(d.at) for d in sorted(ds, key=lambda d: d.at))))


def _places(ds: list[Difference]) -> str:
    """'L0 20, 40 and 80', or 'loss recovered 0.80 and 0.85'."""
    return f"{fmt.metric(ds[0].at_metric)} {_values(ds)}"


def compare_sentence(ds: list[Difference], metric: str, alt: str, ref: str) -> str:
    """Where `alt` is better, worse, or not detectably different from `ref` on `metric`."""
    groups = split([d for d in ds if d.metric == metric])
    words = {
        "better": f"{alt} is better than {ref}",
        "worse": f"{alt} is worse than {ref}",
        "none": "no detectable difference at this budget",
        "unknown": "no interval (one seed, no per-window sums)",
    }
    parts = [f"{words[k]} at {_places(g)} ({_span(g)})" for k, g in groups.items() if g]
    return f"on {fmt.metric(metric)}, " + "; ".join(parts) if parts else ""


def seeds_note(seeds: int) -> str:
    if seeds >= MIN_SEEDS:
        return f"{seeds} seeds or more at every point"
    return f"indicative: {seeds} seed{'s' * (seeds != 1)} at some point"


# --- Q1 -------------------------------------------------------------------------------------


def ablation_name(variant: str) -> str:
    return ABLATION_NAMES.get(variant, variant)


def answer_q1(q1: Q1, metric: str) -> str:
    a = q1.b_mag
    if a is None:
        return f"**Answer:** the b_mag ablation (gated no b_mag) was {fmt.NOT_MEASURED}."
    differences = [d for d in a.differences if d.metric == metric]
    found = outcome(differences)
    # A difference at some L0s and none detectable at the others is said to be partial.
    partial = found in ("worse", "better") and bool(split(differences)["none"])
    lead = {
        "worse": "b_mag matters in this sweep",
        "better": "b_mag is not needed in this sweep: the ablation does better",
        "mixed": "it depends on L0",
        "none": "no detectable effect of b_mag at this budget",
        "unknown": "not settled: there is no interval",
        "": "no L0 at which the two frontiers can be compared",
    }[found]
    if partial:
        lead = {"worse": "removing b_mag costs fidelity at part of the L0 range only",
                "better": "removing b_mag helps at part of the L0 range only"}[found]
    detail = compare_sentence(a.differences, metric, ablation_name(a.variant), "gated")
    return f"**Answer:** {lead}" + (f": {detail}" if detail else "") + f" ({seeds_note(a.seeds)})."


def ablation_sentence(a: Ablation, metric: str) -> str:
    lrs = ", ".join(fmt.lr(x) for x in sorted({c.lr for c in a.ablated.points}))
    at = "gated at the same lrs" if a.same_lrs else "gated at its chosen lr"
    detail = compare_sentence(a.differences, metric, ablation_name(a.variant), "gated")
    return f"{ablation_name(a.variant)} (lr {lrs}; {at}): {detail or 'no shared L0'} " \
        f"({seeds_note(a.seeds)})."


# --- Q2 -------------------------------------------------------------------------------------


def answer_q2(q2: Q2, metric: str) -> str:
    lrs = fmt.series([f"{f.variant} {fmt.lr(f.choice.lr)} of {len(f.choice.swept)} swept"
                      for f in (q2.relu, q2.gated)])
    detail = compare_sentence(q2.differences, metric, "gated", "relu")
    ratio = ratio_sentence(q2.ratios, "loss_recovered") or ratio_sentence(q2.ratios, "fvu")
    return (
        f"**Answer:** each at the lr chosen on its own frontier ({lrs}): "
        + (detail or "the frontiers share no L0 to compare at")
        + f" ({seeds_note(min(q2.relu.seeds, q2.gated.seeds))})."
        + (f" {ratio}" if ratio else "")
    )


def ratio_sentence(ratios: list[Difference], metric: str) -> str:
    """The paper's framing: gated's L0 as a fraction of relu's at equal fidelity."""
    ds = [d for d in ratios if d.at_metric == metric]
    if not ds:
        return ""
    needs = {"better": "fewer", "worse": "more", "none": "not detectably fewer or more",
             "mixed": "fewer at some and more at others of these"}.get(outcome(ds))
    verdict = (f"gated needs {needs} active latents than relu" if needs
               else "no interval on how many active latents gated needs against relu")
    return (
        f"At equal {fmt.metric(metric)} ({_values(ds)}) {verdict}: L0_gated / L0_relu = "
        f"{_span(ds, ratio=True)} (the paper: about one half)."
    )


def choice_sentence(f: Family) -> str:
    """How the family's lr was chosen, its frontier's seeds, and whether it is at an end."""
    c = f.choice
    swept = ", ".join(fmt.lr(x) for x in c.swept)
    if c.rule == ON_FRONTIER:
        how = (f"its curve has the {_best(c.metric)} of the {len(c.means)} compared at "
               f"L0 {fmt.series([fmt.l0(x) for x in c.l0s])}")
        for lr in c.left_out:
            l0s = [p.value("l0") for p in c.curves[lr]]
            how += (f" (lr {fmt.lr(lr)}'s curve, L0 {fmt.l0(min(l0s))} to "
                    f"{fmt.l0(max(l0s))}, shares no L0 with theirs and is left out)")
    elif c.rule == MOST_LEVELS:
        how = ("no L0 where every curve can be read, so not chosen on the frontier: the lr "
               f"with the most healthy levels ({len(f.points)}; ties: the most seeds, then "
               "the smaller lr)")
    else:
        how = "the only lr with healthy runs"
    seeds = {s.seeds for s in f.points}
    each = (f"{fmt.plural(min(seeds), 'seed')} each" if len(seeds) == 1
            else f"{min(seeds)} to {max(seeds)} seeds")
    text = (f"{f.variant}: lr {fmt.lr(c.lr)} of {swept}; {how}; its frontier has "
            f"{fmt.plural(len(f.points), 'level')}, {each}")
    if c.edge:
        text += f". It is the {c.edge} lr swept: the best lr may lie outside the range"
    return text + "."


def shrinkage_sentence(s: Shrinkage) -> str:
    def count(tests):
        values = [d.alt.value for d in tests]
        if all(d.verdict == "no interval" for d in tests):
            return f"{min(values):.3f}–{max(values):.3f} (no interval)"
        below = sum(d.verdict == "lower" for d in tests)
        above = sum(d.verdict == "higher" for d in tests)
        return (f"{min(values):.3f}–{max(values):.3f}, below 1 at {below} and above 1 at "
                f"{above} of {len(tests)} levels")

    text = f"{s.family.variant}: γ {count(s.gamma)}" if s.gamma else f"{s.family.variant}: γ n/a"
    return text + (f"; centred γ {count(s.centred)}." if s.centred else ".")


def shrinkage_outcome(q2: Q2) -> str:
    """Whether the paper's shrinkage finding reproduces, and at which of relu's levels."""
    reproduces = q2.reproduces_shrinkage
    if reproduces is None:
        return fmt.NOT_MEASURED
    unshrunk, levels = q2.relu_unshrunk, len(q2.shrinkage[0].gamma)
    if not reproduces:
        return "does not reproduce"
    if not unshrunk:
        return "reproduces"
    return (f"reproduces at the {levels - len(unshrunk)} of {levels} relu levels whose γ is "
            f"below 1 (relu's γ is not below 1 at L0 {fmt.series([fmt.l0(x) for x in unshrunk])})")


def shrinkage_verdict(q2: Q2) -> str:
    if q2.reproduces_shrinkage is None:
        return f"The paper's shrinkage finding: {fmt.NOT_MEASURED} with intervals."
    return (
        "On this run the paper's shrinkage finding (relu's γ below 1; gated's at 1, or "
        f"shrinking less than relu's at any level) {shrinkage_outcome(q2)}. The paper's γ is "
        "uncentred: the mean of x inflates both of its terms, so the centred γ shows the "
        "shrinkage of the varying part."
    )


# --- Q3 -------------------------------------------------------------------------------------


def fit_sentence(fit: WidthFit) -> str:
    widths = fmt.series([str(w) for w in fit.widths])
    if fit.law is None:
        return (f"{fit.variant} at L0 {fmt.l0(fit.l0)}: {len(fit.widths)} widths ({widths}) "
                "are too few to fit three parameters.")
    flagged = (f"; d_sae {fmt.series([str(w) for w in fit.unconverged])}: a point failing "
               "the convergence criterion" if fit.unconverged else "")
    return (
        f"{fit.variant} at L0 {fmt.l0(fit.l0)}: FVU(n) = a·n^(−b) + c with "
        f"b = {fmt.interval(fit.exponent, 2)} and c = {fmt.interval(fit.irreducible)}, resting "
        f"on {len(fit.widths)} widths ({widths}) for 3 parameters{flagged}."
    )


def answer_q3(q3: Q3) -> str:
    if not q3.fit_l0s:
        return f"**Answer:** relu or gated at two or more widths were {fmt.NOT_MEASURED}."
    if not q3.fits:
        return (
            "**Answer:** not settled: no L0 can be read on every width's frontier (their L0 "
            f"ranges do not overlap, or their levels are more than {MAX_GAP}× apart), so "
            "no width law is fitted" + (f"; {_width_check(q3)}." if q3.steps else ".")
        )
    exponents = [
        f"{f.variant}'s b = {fmt.interval(f.exponent, 2)} at L0 {fmt.l0(f.l0)}"
        for f in q3.fits if f.law is not None
    ]
    law = ("FVU falls with the number of latents n as a·n^(−b) + c with "
           + fmt.series(exponents) + "; " if exponents else "")
    return f"**Answer:** {law}{_width_check(q3)}."


def _width_check(q3: Q3) -> str:
    falls = [s for s in q3.steps if s.falls]
    compared = [s for s in q3.steps if s.differences]
    if not compared:
        return "no adjacent pair of widths can be compared at matched L0 either"
    if not falls:
        return ("at matched L0 no family's fidelity falls with width beyond its interval "
                f"({len(compared)} of {len(q3.steps)} adjacent pairs of widths compared)")
    return ("fidelity falls with width beyond its interval for "
            + fmt.series([f"{s.variant} {s.narrow} → {s.wide}" for s in falls])
            + ": those wider SAEs are undertrained (give them more tokens per latent)")


# --- Q4, training, what is open -------------------------------------------------------------


def rival_sentence(r: Rival, metric: str) -> str:
    detail = compare_sentence(r.differences, metric, r.variant, "gated")
    seeds = r.family.seeds
    note = (f"{r.variant} ran {seeds} seed{'s' * (seeds != 1)}: its intervals cover the "
            "held-out windows, not its seeds" if seeds < 2 else seeds_note(seeds))
    return f"{detail[0].upper() + detail[1:] if detail else 'No shared L0 with gated'} ({note})."


def unsettled_items(findings: Findings, metric: str) -> list[str]:
    u = findings.unsettled
    items = []
    if u.b_mag:
        items.append("Whether b_mag matters: " + compare_sentence(u.b_mag, metric, "gated "
                     "without b_mag", "gated") + ".")
    if u.gated_relu:
        groups = sorted({fmt.metric(d.metric) for d in u.gated_relu})
        items.append(f"Gated against relu on {fmt.series(groups)} at "
                     f"{_places(u.gated_relu)}: no detectable difference at this budget.")
    if u.ratios:
        items.append(f"The L0 ratio at {len(u.ratios)} matched fidelities: its interval "
                     "contains one.")
    if u.indicative:
        items.append(f"{fmt.series(u.indicative)}: fewer than {MIN_SEEDS} seeds, so their "
                     "verdicts are indicative.")
    for variant in dict.fromkeys(fit.variant for fit in u.thin_fits):
        widths = max(len(fit.widths) for fit in u.thin_fits if fit.variant == variant)
        items.append(f"The width law of {variant} rests on {widths} widths for 3 parameters: "
                     "it cannot show that the form fits.")
    items += [f"{step.variant} gets worse from d_sae {step.narrow} to {step.wide} at matched "
              "L0: the wider SAE needs more tokens." for step in u.falling]
    items += [f"{f.variant} at d_sae {f.width}: its lr was not chosen on its frontier (its "
              "lrs' curves share no L0 where all can be read)." for f in u.unchosen]
    items += [f"{f.variant} at d_sae {f.width}: the chosen lr {fmt.lr(f.choice.lr)} is the "
              f"{f.choice.edge} swept; a wider lr range could move it." for f in u.edges]
    if u.unconverged:
        items.append(f"{fmt.plural(u.unconverged, 'frontier point')} with a run failing the "
                     "convergence criterion: its fidelity was still moving.")
    if u.fvu_falling:
        changes = [-d.fvu_change for d in u.fvu_falling]
        items.append(
            f"In {len(u.fvu_falling)} of {u.drifts} groups of runs (variant, width, lr; the "
            "training section's table), twice the tokens still cut FVU at matched L0 by a "
            f"median {min(changes):.0%} to {max(changes):.0%}: by FVU they had not converged, "
            "whatever loss recovered, compressed near 1, says. Margins between families that "
            "were still improving at different rates may move with longer training.")
    return items
