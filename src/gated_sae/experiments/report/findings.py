"""The answers to the report's three questions as numbers and verdicts, without words:
Q1 is b_mag necessary (the gated ablations against gated), Q2 does gated still win when
relu gets its own best learning rate, Q3 does the result hold as the dictionary grows (at
equal width and at equal compute, relu 1.5× wider). Each `analyse_*` returns None or empty
lists where the sweep lacks the SAEs a question needs; prose.py puts the findings into words.

Verdict strings: a Comparison's own (`within seed noise`, `larger than seed noise`, `seed
noise unknown`), and the constants below for a question's summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from ..pareto import Comparison, interpolate_at, sparsity_level
from .model import BASE_ARCHS, BASELINE, GATED, SweepResults, finite, variant_key

EQUAL_COMPUTE_RATIO = 1.5  # a gated step costs about 1.5 baseline steps (paper, Sec. 4)
GAMMA_TOLERANCE = 0.05  # "γ ≈ 1" for the shrinkage check

# Q1: what fixing b_mag at zero does, judged against seed noise.
NOISE_UNKNOWN = "seed noise unknown"  # one seed per family
NO_SIGN = "within seed noise everywhere"
MATTERS_EVERYWHERE = "larger than seed noise everywhere"
MATTERS_SOMEWHERE = "larger than seed noise somewhere"
# Q3: where gated leads relu beyond seed noise, per setting.
EVERY_WIDTH = "every width"
SOME_WIDTHS = "some widths"
NO_WIDTH = "no width"
# Q3: how one architecture's fidelity moves with width.
IMPROVES, WORSENS, UNSTEADY = "improves", "worsens", "unsteady"


def middle(comparisons: list[Comparison]) -> Comparison:
    """The comparison at the middle of the compared points (the geometric-middle L0)."""
    return comparisons[len(comparisons) // 2]


def tally(comparisons: list[Comparison]) -> tuple[int, int]:
    """(points larger than seed noise, points whose seed noise is known)."""
    known = [c for c in comparisons if c.noise is not None]
    return sum(c.verdict == "larger than seed noise" for c in known), len(known)


# --- Q1 -------------------------------------------------------------------------------------


@dataclass
class Ablation:
    """One gated ablation against gated at the ablations' width. Gated is taken at the lrs
    the ablation was trained at, so that the difference is the ablation's alone and not a
    learning rate's; where gated was not trained at them, at its own best lr."""

    variant: str
    lrs: list[float]  # the learning rates the ablation was trained at
    gated_at_same_lrs: bool  # False: gated at its best lr, as it was not trained at `lrs`
    gated: list[dict]  # the frontier points (per-lr summaries) of gated
    ablated: list[dict]  # and of the ablation
    comparisons: list[Comparison]  # gated (ref) against the ablation (alt)


@dataclass
class BMag:
    """What fixing b_mag at zero does: `verdict` one of NOISE_UNKNOWN, NO_SIGN,
    MATTERS_EVERYWHERE, MATTERS_SOMEWHERE."""

    comparisons: list[Comparison]
    verdict: str
    beyond: list[Comparison]  # the comparisons larger than seed noise
    costs: bool  # every difference beyond seed noise makes fidelity worse
    noise: float | None  # the largest seed noise of the comparisons


@dataclass
class Q1:
    width: int | None  # of the ablations
    ablations: list[Ablation]  # [] when the sweep has none
    b_mag: BMag | None  # None: no b_mag ablation with a point shared with gated


def b_mag_verdict(comparisons: list[Comparison], sign: int) -> BMag:
    """The verdict on b_mag from gated (ref) against gated no b_mag (alt); `sign` +1 when
    higher fidelity is better."""
    known = [c.noise for c in comparisons if c.noise is not None]
    beyond = [c for c in comparisons if c.verdict == "larger than seed noise"]
    if not known:
        verdict = NOISE_UNKNOWN
    elif not beyond:
        verdict = NO_SIGN
    elif len(beyond) == len(comparisons):
        verdict = MATTERS_EVERYWHERE
    else:
        verdict = MATTERS_SOMEWHERE
    costs = all(sign * c.delta < 0 for c in beyond)
    return BMag(comparisons, verdict, beyond, costs, max(known, default=None))


def _ablations(res: SweepResults) -> tuple[int | None, list[Ablation]]:
    ablated_rows = [r for r in res.rows if r["arch"] == GATED and r["variant"] != GATED]
    if not ablated_rows:
        return None, []
    widths = [r["d_sae"] for r in ablated_rows]
    width = res.main_width if res.main_width in widths else max(set(widths), key=widths.count)
    all_gated = [r for r in res.rows if r["variant"] == GATED and r["d_sae"] == width]
    out = []
    for variant in sorted({r["variant"] for r in ablated_rows}, key=variant_key):
        lrs = sorted(
            {r["lr"] for r in ablated_rows if r["variant"] == variant and r["d_sae"] == width}
        )
        gated = [r for r in all_gated if r["lr"] in lrs]
        same_lrs = bool(gated)
        gated = gated or all_gated
        if lrs and gated:
            gated_points = res.points(GATED, width, gated)
            ablated = res.points(variant, width)
            comparisons = res.compare(gated_points, ablated)
            out.append(Ablation(variant, lrs, same_lrs, gated_points, ablated, comparisons))
    return width, out


def analyse_q1(res: SweepResults) -> Q1:
    width, ablations = _ablations(res)
    b_mag = next((a for a in ablations if a.variant == "gated no b_mag" and a.comparisons), None)
    return Q1(width, ablations, b_mag_verdict(b_mag.comparisons, res.sign) if b_mag else None)


# --- Q2 -------------------------------------------------------------------------------------


@dataclass
class LrSweep:
    """One architecture's learning rates at the main width."""

    arch: str
    lrs: list[float]  # every lr trained at any sparsity level, increasing
    best: list[dict]  # the best-lr summary per sparsity level, in level order
    best_at_smallest: list[dict]  # levels whose best lr is the smallest of two or more swept
    best_at_largest: list[dict]  # and the largest


@dataclass
class LrGrid:
    """Fidelity at every (architecture, sparsity level, lr) of the main width."""

    lrs: list[float]  # the columns
    rows: list[tuple[str, dict, list[float | None]]]  # (arch, best-lr summary, value per lr)


@dataclass
class Shrinkage:
    """γ of relu and gated at their best lrs, per sparsity level (in level order)."""

    relu: list[dict]
    gated: list[dict]
    gated_near_one: bool  # every gated |γ − 1| ≤ GAMMA_TOLERANCE
    relu_below_one: bool  # every relu γ < 1
    relu_falling: bool  # relu γ strictly falls as the level rises (two levels or more)
    relu_mean: float  # mean 1 − γ over the levels
    gated_mean: float

    @property
    def reproduces(self) -> bool:
        """The paper's finding: gated γ ≈ 1 and relu γ < 1."""
        return self.gated_near_one and self.relu_below_one


@dataclass
class Q2:
    sweeps: list[LrSweep]  # the base architectures trained at the main width
    grid: LrGrid
    lr_counts: tuple[int, int]  # learning rates trained for relu and for gated
    best_lrs: list[tuple[dict, float, float]]  # per shared level: (gated best, relu lr, gated lr)
    frontier: list[Comparison]  # relu (ref) against gated (alt), every lr on each frontier
    gated_ahead: int  # compared points where gated's frontier is the better one
    shared_lr: list[tuple[float, Comparison]]  # at each lr both swept: the middle comparison
    shrinkage: Shrinkage | None  # None: γ not measured for every level


def _lr_sweep(arch: str, family: list[dict]) -> LrSweep:
    lrs = sorted({x for s in family for x in s["lrs"]})

    def at(index: int) -> list[dict]:
        return [s for s in family if len(s["lrs"]) >= 2 and s["lr"] == s["lrs"][index]]

    return LrSweep(arch, lrs, family, at(0), at(-1))


def _lr_grid(res: SweepResults, archs: list[str]) -> LrGrid:
    width = res.main_width
    lrs = sorted({s["lr"] for s in res.per_lr if s["variant"] in archs and s["d_sae"] == width})
    rows = []
    for arch in archs:
        for best in res.family(arch, width):
            values = []
            for lr in lrs:
                match = [
                    s
                    for s in res.per_lr
                    if s["variant"] == arch
                    and s["d_sae"] == width
                    and s["lr"] == lr
                    and sparsity_level(s) == sparsity_level(best)
                ]
                values.append(match[0][res.metric] if match else None)
            rows.append((arch, best, values))
    return LrGrid(lrs, rows)


def _shared_lr(res: SweepResults) -> list[tuple[float, Comparison]]:
    """The margin had both used one shared lr, at each lr both swept."""
    width = res.main_width
    lrs = sorted(
        {s["lr"] for s in res.per_lr if s["variant"] == GATED and s["d_sae"] == width}
        & {s["lr"] for s in res.per_lr if s["variant"] == BASELINE and s["d_sae"] == width}
    )
    if len(lrs) < 2:  # with one lr, the shared-lr margin is the best-lr margin
        return []
    out = []
    for lr in lrs:
        relu, gated = (
            sorted(
                (
                    s
                    for s in res.per_lr
                    if s["variant"] == v and s["d_sae"] == width and s["lr"] == lr
                ),
                key=sparsity_level,
            )
            for v in (BASELINE, GATED)
        )
        comparisons = res.compare(relu, gated)
        if comparisons:
            out.append((lr, middle(comparisons)))
    return out


def shrinkage(relu: list[dict], gated: list[dict]) -> Shrinkage | None:
    """γ of each family (best-lr summaries in level order); None unless γ is finite for
    every level of both."""
    if not relu or not gated or not all(finite(s["gamma"]) for s in (*relu, *gated)):
        return None

    def mean_shrinkage(family):
        return sum(1 - s["gamma"] for s in family) / len(family)

    return Shrinkage(
        relu,
        gated,
        gated_near_one=all(abs(s["gamma"] - 1) <= GAMMA_TOLERANCE for s in gated),
        relu_below_one=all(s["gamma"] < 1 for s in relu),
        relu_falling=len(relu) >= 2 and all(b["gamma"] < a["gamma"] for a, b in pairwise(relu)),
        relu_mean=mean_shrinkage(relu),
        gated_mean=mean_shrinkage(gated),
    )


def analyse_q2(res: SweepResults) -> Q2 | None:
    """None when relu or gated is missing at the main width."""
    width = res.main_width
    relu, gated = res.family(BASELINE, width), res.family(GATED, width)
    if not relu or not gated:
        return None
    archs = [a for a in BASE_ARCHS if res.family(a, width)]
    relu_best = {sparsity_level(s): s["lr"] for s in relu}
    frontier = res.compare(res.points(BASELINE, width), res.points(GATED, width))
    return Q2(
        sweeps=[_lr_sweep(a, res.family(a, width)) for a in archs],
        grid=_lr_grid(res, archs),
        lr_counts=tuple(len({x for s in f for x in s["lrs"]}) for f in (relu, gated)),
        best_lrs=[
            (s, relu_best[sparsity_level(s)], s["lr"])
            for s in gated
            if sparsity_level(s) in relu_best
        ],
        frontier=frontier,
        gated_ahead=sum(res.sign * c.delta > 0 for c in frontier),
        shared_lr=_shared_lr(res),
        shrinkage=shrinkage(relu, gated),
    )


# --- Q3 -------------------------------------------------------------------------------------


@dataclass
class WidthFamilies:
    """The frontier points of gated at one width, relu at that width, and relu ≈1.5× wider."""

    width: int
    gated: list[dict]
    relu: list[dict]
    wide: int | None  # the equal-compute relu width, None if not trained
    relu_wide: list[dict]


@dataclass
class WidthMargin:
    """Gated against relu at one gated width, at equal width or at equal compute."""

    width: int  # of gated
    setting: str  # "equal width" or "equal compute"
    relu_width: int | None
    comparisons: list[Comparison]  # relu (ref) against gated (alt); [] when not measured


@dataclass
class Hold:
    """Whether gated leads relu beyond seed noise at every width, in one setting."""

    setting: str
    margins: list[tuple[int, Comparison]]  # per gated width: the middle comparison
    ahead: list[int]  # gated widths where gated is better and not within seed noise
    verdict: str | None  # EVERY_WIDTH, SOME_WIDTHS, NO_WIDTH; None when not measured
    noise_unknown: bool  # at every width


@dataclass
class Trend:
    """One architecture's fidelity at one L0 that all its widths cover."""

    variant: str
    l0: float  # the geometric middle of the common L0 range
    values: list[tuple[int, float]]  # (d_sae, fidelity)
    direction: str  # IMPROVES, WORSENS or UNSTEADY as d_sae grows


@dataclass
class Q3:
    widths: dict[str, list[int]]  # each variant's trained widths
    d_in: int | None
    expansion: list[float]  # d_sae / d_in of every width trained; [] when d_in is unknown
    gated_widths: list[int]  # with relu to compare against; fewer than two: not measured
    margins: list[WidthMargin]  # per gated width, equal width then equal compute
    holds: list[Hold]  # equal width, equal compute
    trends: list[Trend]  # gated, relu
    tokens: int | None  # training tokens per SAE, the same at every width


def _width_rows(res: SweepResults) -> list[dict]:
    """The rows trained for the width question, else all rows."""
    tagged = [r for r in res.rows if r["roles"] & {"width", "equal_compute"}]
    return tagged or res.rows


def equal_compute_width(widths: Sequence[int], gated_width: int) -> int | None:
    """The relu width within 5% of 1.5× the gated width, if one was trained."""
    target = EQUAL_COMPUTE_RATIO * gated_width
    near = [w for w in widths if abs(w - target) <= 0.05 * target]
    return min(near, key=lambda w: abs(w - target)) if near else None


def width_families(res: SweepResults) -> list[WidthFamilies]:
    """One entry per width gated was trained at."""
    rows = _width_rows(res)
    gated_widths = sorted({r["d_sae"] for r in rows if r["variant"] == GATED})
    relu_widths = sorted({r["d_sae"] for r in rows if r["variant"] == BASELINE})
    out = []
    for w in gated_widths:
        wide = equal_compute_width(relu_widths, w)
        out.append(
            WidthFamilies(
                w,
                res.points(GATED, w, rows),
                res.points(BASELINE, w, rows),
                wide,
                res.points(BASELINE, wide, rows) if wide is not None else [],
            )
        )
    return out


def _hold(setting: str, margins: list[tuple[int, Comparison]], n_widths: int, sign: int) -> Hold:
    ahead = [w for w, c in margins if sign * c.delta > 0 and c.verdict != "within seed noise"]
    if not margins:
        verdict = None
    elif len(ahead) == len(margins) == n_widths:
        verdict = EVERY_WIDTH
    elif ahead:
        verdict = SOME_WIDTHS
    else:
        verdict = NO_WIDTH
    unknown = all(c.noise is None for _, c in margins)
    return Hold(setting, margins, ahead, verdict, unknown)


def _trends(res: SweepResults, data: list[WidthFamilies]) -> list[Trend]:
    """How each architecture's own fidelity moves with width, at one L0 all its widths cover
    (the geometric middle of their common L0 range)."""
    out = []
    for variant in (GATED, BASELINE):
        fronts = [(d.width, res.front(getattr(d, variant))) for d in data]
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
            direction = IMPROVES
        elif all(step < 0 for step in steps):
            direction = WORSENS
        else:
            direction = UNSTEADY
        out.append(Trend(variant, l0, values, direction))
    return out


def analyse_q3(res: SweepResults) -> Q3:
    d_in = res.record.get("d_in")
    d_in = d_in if finite(d_in) and d_in > 0 else None
    tokens = res.config.get("tokens")
    data = width_families(res)
    if len(data) < 2:
        data = []
    margins, middles = [], {"equal width": [], "equal compute": []}
    for d in data:
        for setting, relu, relu_width in (
            ("equal width", d.relu, d.width),
            ("equal compute", d.relu_wide, d.wide),
        ):
            comparisons = res.compare(relu, d.gated) if relu else []
            margins.append(WidthMargin(d.width, setting, relu_width, comparisons))
            if comparisons:
                middles[setting].append((d.width, middle(comparisons)))
    return Q3(
        widths={
            variant: sorted({r["d_sae"] for r in res.rows if r["variant"] == variant})
            for variant in res.variants()
        },
        d_in=d_in,
        expansion=[w / d_in for w in sorted({r["d_sae"] for r in res.rows})] if d_in else [],
        gated_widths=[d.width for d in data],
        margins=margins,
        holds=[_hold(s, m, len(data), res.sign) for s, m in middles.items()] if data else [],
        trends=_trends(res, data),
        tokens=tokens if isinstance(tokens, int) else None,
    )
