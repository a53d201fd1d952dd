"""The answers as numbers and verdicts, without words (prose.py writes them): differences
between families at matched L0 with bootstrap intervals, the L0 ratio at matched fidelity,
shrinkage, and the questions built from them: Q1 (is b_mag needed), Q2 (relu and gated each
at its own best lr), Q4 (gated against TopK, BatchTopK and JumpReLU). Q3 is in width.py.

Every difference is made through one `Comparer`, which keeps them all, so the report can say
how many comparisons it made and how many would exclude their null by chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..pareto import fidelity_targets, interpolate, l0_at, matched_l0s
from .model import BASELINE, FIDELITY, GATED, HIGHER_IS_BETTER, Family, SweepResults
from .stats import CONFIDENCE, Interval, interval

MIN_SEEDS = 3  # a verdict resting on fewer seeds is indicative
# A difference's verdict: the interval lies above or below its null, contains it, or
# there is no interval (one seed and no per-window sums to resample).
HIGHER, LOWER = "higher", "lower"
NO_DIFFERENCE, NO_INTERVAL = "no detectable difference", "no interval"
ABLATED = ("gated no b_mag", "gated no r_mag", "gated untied", "gated RI-L1")
OTHERS = ("topk", "batchtopk", "jumprelu")


@dataclass(frozen=True)
class Basis:
    """Where an interval's uncertainty comes from."""

    windows: bool  # the held-out windows were resampled
    seeds: int  # the fewest seeds of any configuration involved

    @property
    def has_interval(self) -> bool:
        return self.windows or self.seeds >= 2

    @property
    def indicative(self) -> bool:
        return self.seeds < MIN_SEEDS


@dataclass(frozen=True)
class Difference:
    """`metric` of alt against ref at `at` (an L0, or a fidelity of `at_metric`): `delta` is
    alt − ref, or alt / ref for an L0 ratio (`null` 1). ref is None for a check of one value
    against its null (γ against 1)."""

    metric: str
    at_metric: str
    at: float
    ref: Interval | None
    alt: Interval
    delta: Interval
    basis: Basis
    null: float = 0.0

    @property
    def verdict(self) -> str:
        if not self.basis.has_interval or not math.isfinite(self.delta.low):
            return NO_INTERVAL
        if self.delta.excludes(self.null):
            return HIGHER if self.delta.low > self.null else LOWER
        return NO_DIFFERENCE

    @property
    def alt_better(self) -> bool | None:
        """Whether alt is better beyond the interval; None without a finding."""
        if self.verdict not in (HIGHER, LOWER):
            return None
        return (self.verdict == HIGHER) == HIGHER_IS_BETTER.get(self.metric, False)


class Comparer:
    """Makes every difference of the report, and keeps them for the tally."""

    def __init__(self, res: SweepResults):
        self.res = res
        self.made: list[Difference] = []

    def basis(self, metric: str, *families: Family) -> Basis:
        lm = metric in ("loss_recovered", "delta_loss")
        windows = self.res.lm_windows if lm else self.res.windows
        return Basis(windows, min(f.seeds for f in families))

    def _keep(self, d: Difference) -> Difference:
        self.made.append(d)
        return d

    def at_l0s(self, ref: Family, alt: Family, l0s: list[float] | None = None,
               metrics=FIDELITY) -> list[Difference]:
        """alt − ref at each matched L0 (default: every L0 of the report's grid both
        frontiers can be read at), for each measured metric."""
        if l0s is None:
            l0s = matched_l0s([ref.arrays("l0")[0], alt.arrays("l0")[0]])
        out = []
        for metric in (m for m in metrics if self.res.measured(m)):
            for l0 in l0s:
                a, b = (interpolate(*f.arrays(metric), l0) for f in (ref, alt))
                out.append(self._keep(Difference(
                    metric, "l0", l0, interval(a), interval(b), interval(b - a),
                    self.basis(metric, ref, alt))))
        return out

    def l0_ratios(self, ref: Family, alt: Family, metric: str, targets) -> list[Difference]:
        """L0_alt / L0_ref at each fidelity of `targets` (`metric`), each L0 found by
        inverse interpolation (log L0 against fidelity)."""
        out = []
        for target in targets:
            a, b = (l0_at(*f.arrays(metric), target) for f in (ref, alt))
            out.append(self._keep(Difference(
                "l0", metric, target, interval(a), interval(b), interval(b / a),
                self.basis(metric, ref, alt), null=1.0)))
        return out

    def against_one(self, family: Family, metric: str) -> list[Difference]:
        """`metric` of each of the family's points against 1 (γ: 1 is no shrinkage)."""
        out = []
        for c in family.points:
            draws = c.draws[metric]
            out.append(self._keep(Difference(
                metric, "l0", c.value("l0"), None, interval(draws), interval(draws),
                self.basis(metric, family), null=1.0)))
        return out


@dataclass(frozen=True)
class Tally:
    """How many intervals were judged against their null, and how many excluded it."""

    made: int
    excluded: int

    @property
    def by_chance(self) -> float:
        """Expected exclusions were every null true: (1 − CONFIDENCE) of those made."""
        return (1 - CONFIDENCE) * self.made


def tally(made: list[Difference]) -> Tally:
    judged = [d for d in made if d.verdict != NO_INTERVAL]
    return Tally(len(judged), sum(d.verdict in (HIGHER, LOWER) for d in judged))


def split(differences: list[Difference]) -> dict[str, list[Difference]]:
    """{'better': alt better beyond the interval, 'worse': worse, 'none': no detectable
    difference, 'unknown': no interval}."""
    out: dict[str, list[Difference]] = {"better": [], "worse": [], "none": [], "unknown": []}
    for d in differences:
        key = {True: "better", False: "worse"}.get(d.alt_better)
        if key is None:
            key = "none" if d.verdict == NO_DIFFERENCE else "unknown"
        out[key].append(d)
    return out


def outcome(differences: list[Difference]) -> str:
    """'better', 'worse' (alt against ref, beyond the intervals), 'mixed' (both), 'none' (no
    detectable difference anywhere), 'unknown' (no interval anywhere), '' (no comparison)."""
    groups = split(differences)
    if groups["better"] and groups["worse"]:
        return "mixed"
    for key in ("better", "worse", "none", "unknown"):
        if groups[key]:
            return key
    return ""


# --- Q1 -------------------------------------------------------------------------------------


@dataclass
class Ablation:
    """One gated ablation against gated at the ablations' width."""

    variant: str
    gated: Family
    ablated: Family
    same_lrs: bool  # gated restricted to the lrs the ablation was trained at
    differences: list[Difference]  # ablated − gated at matched L0

    @property
    def seeds(self) -> int:
        return min(self.gated.seeds, self.ablated.seeds)


@dataclass
class Q1:
    width: int | None
    ablations: list[Ablation]

    @property
    def b_mag(self) -> Ablation | None:
        return next((a for a in self.ablations if a.variant == "gated no b_mag"), None)


def analyse_q1(res: SweepResults, comparer: Comparer) -> Q1:
    widths = [w for v, w in res.families if v in ABLATED]
    if not widths:
        return Q1(None, [])
    width = res.main_width if res.main_width in widths else max(set(widths), key=widths.count)
    out = []
    for variant in (v for v in ABLATED if (v, width) in res.families):
        ablated = res.families[(variant, width)]
        lrs = {c.lr for c in ablated.points}
        gated_lrs = {c.lr for c in res.configs_of(GATED, width)}
        same = lrs <= gated_lrs
        gated = res.family(GATED, width, lrs if same else None)
        if gated is not None:
            diffs = comparer.at_l0s(gated, ablated)
            out.append(Ablation(variant, gated, ablated, same, diffs))
    return Q1(width, out)


# --- Q2 -------------------------------------------------------------------------------------


@dataclass
class Shrinkage:
    """γ and centred γ of one family, each point against 1."""

    family: Family
    gamma: list[Difference]
    centred: list[Difference]


@dataclass
class Q2:
    width: int
    relu: Family
    gated: Family
    differences: list[Difference]  # gated − relu at matched L0
    ratios: list[Difference]  # L0_gated / L0_relu at matched loss recovered, then FVU
    shrinkage: list[Shrinkage]  # relu, gated

    @property
    def relu_unshrunk(self) -> list[float]:
        """The L0s of relu's levels whose γ is not below 1."""
        return [d.at for d in self.shrinkage[0].gamma if d.verdict != LOWER]

    @property
    def reproduces_shrinkage(self) -> bool | None:
        """The paper's finding, at relu's levels whose γ is below 1 (more than half of them,
        or it does not reproduce; `relu_unshrunk` names the others): gated's γ, where it is
        below 1 at all, shrinks less than relu's does at any of those levels (1 − γ below
        relu's smallest). A gated γ of 0.998 that excludes 1 is not the shrinkage the paper
        describes."""
        relu, gated = self.shrinkage
        if not relu.gamma or any(d.verdict == NO_INTERVAL for d in relu.gamma + gated.gamma):
            return None
        shrunk = [1 - d.alt.value for d in relu.gamma if d.verdict == LOWER]
        if 2 * len(shrunk) <= len(relu.gamma):
            return False
        return all(1 - d.alt.value < min(shrunk) for d in gated.gamma if d.verdict == LOWER)


def shrinkage(comparer: Comparer, family: Family) -> Shrinkage:
    measured = [m for m in ("gamma", "gamma_centred") if comparer.res.measured(m)]
    tests = {m: comparer.against_one(family, m) for m in measured}
    return Shrinkage(family, tests.get("gamma", []), tests.get("gamma_centred", []))


def analyse_q2(res: SweepResults, comparer: Comparer) -> Q2 | None:
    """None when relu or gated has no frontier at the main width."""
    width = res.main_width
    relu, gated = res.families.get((BASELINE, width)), res.families.get((GATED, width))
    if relu is None or gated is None:
        return None
    ratios = []
    for metric in ("loss_recovered", "fvu"):
        if res.measured(metric):
            targets = fidelity_targets([relu.arrays(metric), gated.arrays(metric)])
            ratios += comparer.l0_ratios(relu, gated, metric, targets)
    return Q2(
        width, relu, gated, comparer.at_l0s(relu, gated), ratios,
        [shrinkage(comparer, relu), shrinkage(comparer, gated)],
    )


# --- Q4 -------------------------------------------------------------------------------------


@dataclass
class Rival:
    """Another architecture against gated at the main width (differences rival − gated)."""

    variant: str
    family: Family
    differences: list[Difference]


def analyse_rivals(res: SweepResults, comparer: Comparer) -> list[Rival]:
    gated = res.families.get((GATED, res.main_width))
    if gated is None:
        return []
    out = []
    for variant in OTHERS:
        family = res.families.get((variant, res.main_width))
        if family is not None:
            out.append(Rival(variant, family, comparer.at_l0s(gated, family)))
    return out
