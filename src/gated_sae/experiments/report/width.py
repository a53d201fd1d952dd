"""Q3, the width question, answered as Gao et al. (2024) answer it: at a fixed L0 inside every
width's frontier, FVU against the number of latents n fitted as FVU(n) = a·n^(−b) + c per
architecture, with a bootstrap interval on the exponent b; and the check that at matched L0
a family's fidelity does not fall as its dictionary grows (each adjacent pair of widths).
Gated against relu at each width (and against relu 1.5× wider, equal compute, where the
sweep trained it) follows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..pareto import interpolate, matched_l0s, nearest_to_middle
from .findings import Comparer, Difference, split
from .model import BASELINE, GATED, Family, SweepResults, finite
from .stats import Interval, PowerLaw, fit_power_law, interval

FIT_L0S = 2  # fixed L0s per architecture at which the width law is fitted
EQUAL_COMPUTE_RATIO = 1.5  # a gated step costs about 1.5 baseline steps (paper, Sec. 3.2.2)


@dataclass
class WidthFit:
    """FVU against width at one L0 for one architecture, and the fitted law."""

    variant: str
    l0: float
    widths: list[int]
    fvu: list[Interval]  # per width, at `l0`
    law: PowerLaw | None  # None with fewer than three widths
    unconverged: list[int]  # widths whose frontier has a point failing the criterion

    @property
    def exponent(self) -> Interval | None:
        return interval(self.law.b) if self.law else None

    @property
    def irreducible(self) -> Interval | None:
        return interval(self.law.c) if self.law else None


@dataclass
class WidthStep:
    """One architecture from a width to the next wider, at the fit's L0s (wider − narrower)."""

    variant: str
    narrow: int
    wide: int
    differences: list[Difference]

    @property
    def falls(self) -> bool:
        """Fidelity falls with width beyond its interval on some metric at some L0."""
        return bool(split(self.differences)["worse"])


@dataclass
class Q3:
    widths: dict[str, list[int]]  # each variant's widths with a healthy frontier
    d_in: int | None
    tokens: dict[int, list[int]]  # training tokens per SAE found at each width
    fit_l0s: dict[str, list[float]]  # per architecture
    fits: list[WidthFit]
    steps: list[WidthStep]
    equal_width: list[tuple[int, list[Difference]]]  # gated − relu at each width but the main
    equal_compute: list[tuple[int, int, list[Difference]]]  # (gated width, relu width, Δs)


def equal_compute_width(widths: list[int], gated_width: int) -> int | None:
    """The relu width within 5% of 1.5× the gated width, if one was trained."""
    target = EQUAL_COMPUTE_RATIO * gated_width
    near = [w for w in widths if abs(w - target) <= 0.05 * target]
    return min(near, key=lambda w: abs(w - target)) if near else None


def width_families(res: SweepResults, variant: str) -> list[Family]:
    """The variant's families at every width, at the learning rates every width was trained
    at (so that the width comparison holds the lr fixed), else each at its own chosen lr."""
    widths = res.widths(variant)
    common = set.intersection(*(set(res.swept[(variant, w)]) for w in widths))
    families = [res.family(variant, w, lrs=common) for w in widths] if common else []
    return families if families and all(families) else [
        res.families[(variant, w)] for w in widths]


def _fit(families: list[Family], variant: str, l0: float) -> WidthFit:
    widths = [f.width for f in families]
    draws = np.stack([interpolate(*f.arrays("fvu"), l0) for f in families], 1)
    law = fit_power_law(np.array(widths), draws) if len(widths) >= 3 else None
    return WidthFit(
        variant, l0, widths, [interval(d) for d in draws.T], law,
        [w for w, f in zip(widths, families, strict=True) if f.unconverged],
    )


def analyse_q3(res: SweepResults, comparer: Comparer) -> Q3:
    d_in = res.record.get("d_in")
    tokens: dict[int, set] = {}
    for r in res.rows:
        if r.get("tokens") is not None:
            tokens.setdefault(r["d_sae"], set()).add(r["tokens"])
    q3 = Q3(
        widths={v: res.widths(v) for v in res.variants()},
        d_in=d_in if finite(d_in) and d_in > 0 else None,
        tokens={w: sorted(t) for w, t in sorted(tokens.items())},
        fit_l0s={}, fits=[], steps=[], equal_width=[], equal_compute=[],
    )
    for variant in (BASELINE, GATED):
        widths = res.widths(variant)
        if len(widths) < 2:
            continue
        families = width_families(res, variant)
        l0s = nearest_to_middle(matched_l0s([f.arrays("l0")[0] for f in families]), FIT_L0S)
        q3.fit_l0s[variant] = l0s
        q3.fits += [_fit(families, variant, l0) for l0 in l0s]
        for narrow, wide in zip(families, families[1:], strict=False):
            # at the fit's L0s; where no L0 suits every width, at the pair's own matched L0s
            diffs = comparer.at_l0s(narrow, wide, l0s or None, ("loss_recovered", "fvu"))
            q3.steps.append(WidthStep(variant, narrow.width, wide.width, diffs))
    relu_widths = res.widths(BASELINE)
    for width in res.widths(GATED):
        gated = res.families[(GATED, width)]
        if width != res.main_width and width in relu_widths:
            q3.equal_width.append(
                (width, comparer.at_l0s(res.families[(BASELINE, width)], gated)))
        wide = equal_compute_width(relu_widths, width)
        if wide is not None:
            q3.equal_compute.append(
                (width, wide, comparer.at_l0s(res.families[(BASELINE, wide)], gated)))
    return q3
