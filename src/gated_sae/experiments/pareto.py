"""Small pure functions behind the sweep report: each variant's best learning rate, the
L0–fidelity Pareto frontier, and comparisons of two frontiers at matched L0.

Rows are mappings with the columns of a sweep's results.csv, numbers already parsed
(missing metrics as NaN). A row's sparsity level is its `k` for TopK-like SAEs and its
`sparsity_coef` otherwise; `"sparsity"` names that level wherever a function takes keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .results import METRICS

# Settings copied into a summary row when every row of its group shares them.
CARRIED = ("arch", "variant", "d_sae", "lr", "sparsity_coef", "k")


def sparsity_level(row: Mapping) -> float | int | None:
    """The knob that sets sparsity: `k` when the row has one (topk, batchtopk), else λ."""
    k = row.get("k")
    return k if k is not None else row.get("sparsity_coef")


def _field(row: Mapping, key: str):
    return sparsity_level(row) if key == "sparsity" else row.get(key)


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def summarize(rows: Iterable[Mapping], by: Sequence[str]) -> list[dict]:
    """Mean and seed spread of every metric over the rows sharing the values of `by`.

    For a metric m measured on seeds s = 1..n: `m` = (1/n) Σ_s m_s, `m_spread` = max_s m_s −
    min_s m_s, and `n_seeds` = n (rows in the group). NaN values are left out of both; a
    metric with no finite value gets NaN. The `CARRIED` columns on which all rows of a group
    agree are kept; `roles` is the union of the rows' roles. Groups come in first-seen order.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(_field(row, k) for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        summary = dict(zip(by, key, strict=True))
        for name in CARRIED:
            values = {m.get(name) for m in members}
            if len(values) == 1:
                summary.setdefault(name, values.pop())
        summary["roles"] = frozenset().union(*(m.get("roles", ()) for m in members))
        summary["n_seeds"] = len(members)
        for metric in METRICS:
            values = [m.get(metric) for m in members if _finite(m.get(metric))]
            summary[metric] = sum(values) / len(values) if values else math.nan
            summary[f"{metric}_spread"] = max(values) - min(values) if values else math.nan
        out.append(summary)
    return out


def _choice_score(summary: Mapping) -> tuple[int, float]:
    """Higher is better: any finite mean loss recovered beats a fallback on FVU."""
    if _finite(summary["loss_recovered"]):
        return (2, summary["loss_recovered"])
    if _finite(summary["fvu"]):
        return (1, -summary["fvu"])
    return (0, 0.0)


def best_lr_rows(
    rows: Iterable[Mapping], by: Sequence[str] = ("variant", "d_sae", "sparsity")
) -> list[dict]:
    """For each group of `by` (default: variant, width, sparsity level), the learning rate
    with the best mean over seeds, as that lr's `summarize` row.

    best lr = argmax_lr mean_s loss_recovered(lr, s); where no lr of the group has a finite
    loss recovered, argmin_lr mean_s FVU(lr, s). Ties go to the smaller lr. Each returned
    row also lists `lrs`, the learning rates swept in its group, in increasing order.
    """
    per_lr = summarize(rows, (*by, "lr"))
    groups: dict[tuple, list[dict]] = {}
    for summary in per_lr:
        groups.setdefault(tuple(summary[k] for k in by), []).append(summary)
    out = []
    for candidates in groups.values():
        candidates.sort(key=lambda s: s["lr"])
        best = max(candidates, key=_choice_score)
        out.append({**best, "lrs": [s["lr"] for s in candidates]})
    return out


def frontier(points: Iterable[Sequence], higher_is_better: bool = True) -> list[tuple]:
    """The Pareto frontier of points (L0, fidelity, *payload): lower L0 is better, and higher
    fidelity (loss recovered) or, with `higher_is_better=False`, lower fidelity (FVU).

    A point p is kept when no other point q has L0_q ≤ L0_p and fidelity_q at least as good
    as fidelity_p (one of the two strictly). Points with a non-finite value or L0 ≤ 0 are
    dropped (comparisons work in log L0). Returned sorted by increasing L0, so the fidelity
    strictly improves along it; extra entries of a point ride along unchanged.
    """
    sign = 1.0 if higher_is_better else -1.0
    usable = [tuple(p) for p in points if _finite(p[0]) and _finite(p[1]) and p[0] > 0]
    usable.sort(key=lambda p: (p[0], -sign * p[1]))
    kept: list[tuple] = []
    for p in usable:
        if not kept or sign * p[1] > sign * kept[-1][1]:
            kept.append(p)
    return kept


def bracket(front: Sequence[Sequence], l0: float) -> list[Sequence]:
    """The frontier points that `interpolate_at` uses at `l0`: the point itself when `l0` is
    one of the frontier's L0s, else its two neighbours; [] outside [min L0, max L0]."""
    if not front or not _finite(l0) or l0 < front[0][0] or l0 > front[-1][0]:
        return []
    for i, p in enumerate(front):
        if p[0] == l0:
            return [p]
        if p[0] > l0:
            return [front[i - 1], p]
    return []


def interpolate_at(front: Sequence[Sequence], l0: float) -> float | None:
    """Fidelity of the frontier at `l0`, linear in log L0 between the neighbouring points:
    y = y_i + (y_{i+1} − y_i) · (ln l0 − ln l0_i) / (ln l0_{i+1} − ln l0_i).
    None when `l0` is outside the frontier's L0 range (no extrapolation)."""
    points = bracket(front, l0)
    if not points:
        return None
    if len(points) == 1:
        return points[0][1]
    (x0, y0, *_), (x1, y1, *_) = points
    t = (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return y0 + t * (y1 - y0)


def matched_l0_grid(a: Sequence[Sequence], b: Sequence[Sequence]) -> list[float]:
    """L0 values to compare two frontiers at: the ends and the geometric middle of the L0
    range both cover, [lo, √(lo·hi), hi]; [lo] when they touch at one L0; [] if disjoint."""
    if not a or not b:
        return []
    lo, hi = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
    if lo > hi:
        return []
    if lo == hi:
        return [lo]
    return [lo, math.sqrt(lo * hi), hi]


@dataclass(frozen=True)
class Comparison:
    """A metric of two SAE families compared at one point: at matched L0 (`level` None,
    `l0_ref == l0_alt`) or at a matched sparsity level (`level` set, L0s as measured).
    `noise` is the seed noise of the two families (`seed_noise`), None when unknown."""

    l0_ref: float
    l0_alt: float
    ref: float
    alt: float
    noise: float | None
    level: float | int | None = None

    @property
    def delta(self) -> float:
        return self.alt - self.ref

    @property
    def verdict(self) -> str:
        """|Δ| ≤ noise: within seed noise; larger: beyond it; unknown without two seeds."""
        if self.noise is None:
            return "seed noise unknown"
        if abs(self.delta) <= self.noise:
            return "within seed noise"
        return "larger than seed noise"


def seed_noise(
    rows: Iterable[Mapping], metric: str = "loss_recovered", higher_is_better: bool = True
) -> float | None:
    """Seed spread of `metric` at matched L0 for one SAE family (one variant at one width).

    For each learning rate run with two or more seeds, each seed's rows give its own frontier
    of (L0, metric). At every L0 that all these frontiers cover (both ends of the common range
    and each frontier point inside it) the spread is max_s − min_s of the seeds' interpolated
    values. Returns the largest spread over those L0s and learning rates; None when no
    learning rate has two seeds whose frontiers overlap. Spread at matched L0, not at
    matched λ: the same λ gives each seed a different L0, and that difference is not noise.
    """
    points: dict[float, dict[int, list[tuple]]] = {}
    for r in rows:
        if r.get("seed") is not None:
            per_seed = points.setdefault(r["lr"], {})
            per_seed.setdefault(r["seed"], []).append((r["l0"], r.get(metric)))
    spreads = []
    for per_seed in points.values():
        fronts = [f for f in (frontier(p, higher_is_better) for p in per_seed.values()) if f]
        if len(fronts) < 2:
            continue
        lo, hi = max(f[0][0] for f in fronts), min(f[-1][0] for f in fronts)
        inside = {p[0] for f in fronts for p in f if lo <= p[0] <= hi}
        for l0 in {lo, hi, *inside} if lo <= hi else ():
            values = [interpolate_at(f, l0) for f in fronts]
            spreads.append(max(values) - min(values))
    return max(spreads) if spreads else None


def compare(
    ref: Sequence[Mapping],
    alt: Sequence[Mapping],
    metric: str = "loss_recovered",
    higher_is_better: bool = True,
    noise: float | None = None,
) -> list[Comparison]:
    """Compare two families of summary rows (any number of lrs per sparsity level) on `metric`.

    At matched L0 when their frontiers overlap: each frontier interpolated (`interpolate_at`)
    at the L0s of `matched_l0_grid`. Otherwise at each sparsity level both have, the best row
    of each family at that level. Every comparison carries `noise`, the seed noise of the
    two families.
    """
    fronts = [
        frontier([(s["l0"], s[metric], s) for s in family], higher_is_better)
        for family in (ref, alt)
    ]
    grid = matched_l0_grid(*fronts)
    if grid:
        return [
            Comparison(l0, l0, interpolate_at(fronts[0], l0), interpolate_at(fronts[1], l0), noise)
            for l0 in grid
        ]
    sign = 1 if higher_is_better else -1
    best_ref, best_alt = (_best_per_level(family, metric, sign) for family in (ref, alt))
    return [
        Comparison(r["l0"], a["l0"], r[metric], a[metric], noise, level)
        for level, r in sorted(best_ref.items())
        if (a := best_alt.get(level)) is not None
    ]


def _best_per_level(family: Iterable[Mapping], metric: str, sign: int) -> dict:
    """{sparsity level: the row with the best finite `metric` at that level}."""
    best: dict = {}
    for s in family:
        level = sparsity_level(s)
        if not _finite(s[metric]):
            continue
        if level not in best or sign * s[metric] > sign * best[level][metric]:
            best[level] = s
    return best
