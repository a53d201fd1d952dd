"""Frontier geometry for the sweep report: reading an L0–fidelity frontier at a matched L0,
finding the L0 at which it reaches a fidelity, and choosing where two frontiers are compared.

A frontier is a family's points (one per sparsity level) as arrays [R, n]: L0s and a
fidelity, one row per bootstrap replicate (stats.py), so every function here works on all
replicates at once. A row's points are taken in increasing L0. Frontiers are read only
between two adjacent points no more than MAX_GAP apart in L0: a chord across a wider gap
misreads the curve between its ends. Nothing is extrapolated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

MAX_GAP = 2.5
# The L0s at which frontiers are compared wherever both cover them: one grid for the whole
# report, so every section and figure names the same L0s.
MATCHED_L0S = tuple(10 * 2.0**j for j in range(-1, 8))  # 5, 10, 20, … 1280
MIN_READABLE = 0.95  # of the replicates, for a frontier read to be compared


def sparsity_level(row: Mapping) -> float | int | None:
    """The knob that sets sparsity: `k` when the row has one (topk, batchtopk), else λ."""
    k = row.get("k")
    return k if k is not None else row.get("sparsity_coef")


def _sorted(l0s: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's points in increasing L0, as (log L0, value)."""
    l0s, values = np.atleast_2d(l0s), np.atleast_2d(values)
    order = np.argsort(l0s, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(np.take_along_axis(l0s, order, 1))
    return x, np.take_along_axis(values, order, 1)


def interpolate(l0s: np.ndarray, values: np.ndarray, at: float) -> np.ndarray:
    """The frontier's value at L0 = `at` in every row, linear in log L0 between the two
    neighbouring points: y = y_i + (y_{i+1} − y_i)·(ln at − ln L0_i)/(ln L0_{i+1} − ln L0_i).
    NaN where `at` is outside the row's L0 range or its neighbours are over MAX_GAP apart;
    at one of the row's own points, that point's value."""
    x, y = _sorted(l0s, values)
    t = math.log(at)
    exact = x == t
    out = np.where(exact.any(1), y[np.arange(len(y)), exact.argmax(1)], np.nan)
    for i in range(x.shape[1] - 1):
        x0, x1, y0, y1 = x[:, i], x[:, i + 1], y[:, i], y[:, i + 1]
        usable = (x0 <= t) & (t <= x1) & (x1 - x0 <= math.log(MAX_GAP)) & np.isnan(out)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(x1 > x0, (t - x0) / (x1 - x0), 0.0)
        out = np.where(usable, y0 + w * (y1 - y0), out)
    return out


def l0_at(l0s: np.ndarray, values: np.ndarray, target: float) -> np.ndarray:
    """The L0 at which each row's frontier reaches fidelity `target`: the first crossing in
    increasing L0, log L0 linear in fidelity between the two points around it (the inverse
    of `interpolate`). NaN where the row never reaches it inside its range, or the crossing
    lies between points over MAX_GAP apart."""
    x, y = _sorted(l0s, values)
    out = np.where(y[:, 0] == target, x[:, 0], np.nan)
    for i in range(x.shape[1] - 1):
        x0, x1, y0, y1 = x[:, i], x[:, i + 1], y[:, i], y[:, i + 1]
        between = (np.minimum(y0, y1) <= target) & (target <= np.maximum(y0, y1))
        usable = between & (y1 != y0) & (x1 - x0 <= math.log(MAX_GAP)) & np.isnan(out)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = (target - y0) / (y1 - y0)
        out = np.where(usable, x0 + w * (x1 - x0), out)
    return np.exp(out)


def envelope(l0s: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points [n] of a frontier no other point beats, in increasing L0: those whose value
    is higher than that of every point with a lower L0 (ties: the lowest L0)."""
    order = np.lexsort((-values, l0s))
    l0s, values = l0s[order], values[order]
    best = np.maximum.accumulate(values)
    keep = np.r_[True, values[1:] > best[:-1]]
    return l0s[keep], values[keep]


def _round(x: float, figures: int = 2) -> float:
    return float(f"{x:.{figures}g}")


def readable(values: np.ndarray) -> bool:
    """Whether a frontier read [R] is usable: the estimate (row 0) is finite and so are at
    least MIN_READABLE of the rows; near a frontier's end the replicates' own L0s move, and
    a value read in only some of them has no honest interval."""
    return bool(np.isfinite(values[0])) and np.isfinite(values).mean() >= MIN_READABLE


def matched_l0s(l0s: Sequence[np.ndarray]) -> list[float]:
    """Where to compare frontiers given by their L0s ([R, n] each, or [n]): the MATCHED_L0S
    every one of them can be read at; if none, the geometric middle of the L0 range they
    share (two significant figures) when all can be read there; else []."""
    def all_readable(at: float) -> bool:
        return all(readable(interpolate(x, x, at)) for x in l0s)

    if not l0s or any(np.size(x) == 0 for x in l0s):
        return []
    found = [at for at in MATCHED_L0S if all_readable(at)]
    if found:
        return found
    lo = max(float(np.atleast_2d(x)[0].min()) for x in l0s)
    hi = min(float(np.atleast_2d(x)[0].max()) for x in l0s)
    middle = _round(math.sqrt(lo * hi)) if lo <= hi else math.nan
    return [middle] if lo <= hi and all_readable(middle) else []


def nearest_to_middle(l0s: list[float], count: int) -> list[float]:
    """The `count` of `l0s` nearest (in log L0) the geometric middle of their range, sorted."""
    if len(l0s) <= count:
        return sorted(l0s)
    middle = math.sqrt(min(l0s) * max(l0s))
    return sorted(sorted(l0s, key=lambda x: abs(math.log(x / middle)))[:count])


def fidelity_targets(fronts: Sequence[tuple[np.ndarray, np.ndarray]], count: int = 3) -> list:
    """Fidelities at which to find each frontier's L0, for frontiers (L0s, values) given as
    [R, n] arrays: `count` points evenly inside the fidelity range every frontier spans as
    measured (at (i + ½)/count of it, three decimals), kept where every frontier's L0 can
    be read (`readable`)."""
    if not fronts or any(np.size(y) == 0 for _, y in fronts):
        return []
    lo = max(float(np.atleast_2d(y)[0].min()) for _, y in fronts)
    hi = min(float(np.atleast_2d(y)[0].max()) for _, y in fronts)
    if not lo < hi:
        return []
    targets = sorted({round(lo + (i + 0.5) / count * (hi - lo), 3) for i in range(count)})
    return [t for t in targets if all(readable(l0_at(x, y, t)) for x, y in fronts)]
