"""Every finding of the report in one object: the four questions, how the SAEs trained, what
the sweep cost, how many comparisons were made, and what the data leave unsettled."""

from __future__ import annotations

from dataclasses import dataclass

from .findings import (
    MIN_SEEDS,
    NO_DIFFERENCE,
    NO_INTERVAL,
    Q1,
    Q2,
    Comparer,
    Difference,
    Rival,
    Tally,
    analyse_q1,
    analyse_q2,
    analyse_rivals,
    tally,
)
from .model import MOST_LEVELS, Family, SweepResults
from .training import Compute, Convergence, Drift, compute, convergence
from .width import Q3, WidthFit, WidthStep, analyse_q3

WELL_FITTED = 4  # widths a three-parameter law needs before its residuals say anything


@dataclass
class Unsettled:
    """What the data leave open."""

    b_mag: list[Difference]  # b_mag's loss-recovered differences without a finding
    gated_relu: list[Difference]  # Q2's differences without a finding
    ratios: list[Difference]  # L0 ratios whose interval contains 1
    indicative: list[str]  # compared variants with fewer than MIN_SEEDS seeds somewhere
    thin_fits: list[WidthFit]  # width laws resting on fewer than WELL_FITTED widths
    falling: list[WidthStep]  # fidelity falls with width beyond its interval
    unconverged: int  # frontier points with a run failing the convergence criterion
    fvu_falling: list[Drift]  # groups whose FVU still fell when their tokens doubled
    drifts: int  # groups of healthy runs with a recorded change
    edges: list[Family]  # families whose chosen lr is at an end of the swept range
    unchosen: list[Family]  # families whose lr could not be chosen on the frontier


@dataclass
class Findings:
    q1: Q1
    q2: Q2 | None
    q3: Q3
    rivals: list[Rival]
    convergence: Convergence
    compute: Compute
    tally: Tally
    unsettled: Unsettled


def _open(differences: list[Difference], metric: str | None = None) -> list[Difference]:
    return [
        d for d in differences
        if d.verdict in (NO_DIFFERENCE, NO_INTERVAL) and metric in (None, d.metric)
    ]


def analyse(res: SweepResults) -> Findings:
    comparer = Comparer(res)
    q1, q2 = analyse_q1(res, comparer), analyse_q2(res, comparer)
    q3, rivals = analyse_q3(res, comparer), analyse_rivals(res, comparer)
    compared = [(a.variant, a.seeds) for a in q1.ablations]
    compared += [(r.variant, r.family.seeds) for r in rivals]
    if q2 is not None:
        compared += [(f.variant, f.seeds) for f in (q2.relu, q2.gated)]
    b_mag = q1.b_mag
    train = convergence(res)
    unsettled = Unsettled(
        b_mag=_open(b_mag.differences, "loss_recovered") if b_mag else [],
        gated_relu=_open(q2.differences) if q2 else [],
        ratios=_open(q2.ratios) if q2 else [],
        indicative=sorted({v for v, seeds in compared if seeds < MIN_SEEDS}),
        thin_fits=[f for f in q3.fits if f.law is not None and len(f.widths) < WELL_FITTED],
        falling=[s for s in q3.steps if s.falls],
        unconverged=len(train.on_frontiers),
        fvu_falling=[d for d in train.drifts if d.fvu_still_falling],
        drifts=len(train.drifts),
        edges=[f for f in res.families.values() if f.choice.edge],
        unchosen=[f for f in res.families.values() if f.choice.rule == MOST_LEVELS],
    )
    return Findings(q1, q2, q3, rivals, train, compute(res), tally(comparer.made), unsettled)
