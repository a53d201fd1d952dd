"""The report's statistics (numpy only): metrics from per-window sums, the bootstrap over
held-out windows and seeds, percentile intervals, and the power-law fit of the width question.

Replicate arrays have `REPLICATES + 1` rows: row 0 is the estimate on the data as measured
(every window once, every seed once); rows 1… are bootstrap replicates. One replicate draws
the held-out windows with replacement, the same draw for every SAE (so comparisons between
SAEs are paired), and for each configuration its seeds with replacement; a configuration's
metric is then the mean over its drawn seeds of the metric recomputed on the drawn windows.
The LM metrics are taken on the first of the held-out windows (fewer predictions cost a
forward pass each); their windows are drawn as a sample of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...evaluate.heldout import (
    ACTIVATION_SUMS,
    LM_SHARED_SUMS,
    SHARED_SUMS,
    metrics_from_totals,
)

REPLICATES = 1000
RNG_SEED = 0
CONFIDENCE = 0.95
# Exponents b tried by the power-law fit; a and c are solved for each.
EXPONENT_GRID = np.round(np.arange(0.02, 3.0 + 1e-9, 0.01), 2)



def resample_counts(rng: np.random.Generator, n: int) -> np.ndarray:
    """[REPLICATES + 1, n]: how often each of n items is drawn; row 0 takes each once."""
    if n == 0:
        return np.ones((REPLICATES + 1, 0))
    draws = rng.multinomial(n, np.full(n, 1 / n), size=REPLICATES)
    return np.vstack([np.ones(n), draws]).astype(np.float64)


def window_metrics(heldout: dict, windows: np.ndarray, lm_windows: np.ndarray) -> dict:
    """Every SAE's metrics [R + 1, S] on the windows drawn with counts `windows` [R + 1, W]
    (activation windows) and `lm_windows` [R + 1, V] (LM windows)."""
    sums = {
        k: windows @ heldout[k].T for k in ACTIVATION_SUMS
    } | {k: (windows @ heldout[k])[:, None] for k in SHARED_SUMS}
    sums["mu_sq"] = float(heldout["mu_sq"])
    if lm_windows.shape[1]:
        sums["ce_sae"] = lm_windows @ heldout["ce_sae"].T
        for k in LM_SHARED_SUMS:
            sums[k] = (lm_windows @ heldout[k])[:, None]
    return metrics_from_totals(sums)


@dataclass(frozen=True)
class Interval:
    """An estimate (on the data as measured) and its percentile bootstrap interval."""

    value: float
    low: float
    high: float
    valid: int  # replicates with a finite value (an interpolation can leave a range)

    def excludes(self, null: float) -> bool:
        return self.low > null or self.high < null


def interval(draws: np.ndarray) -> Interval:
    """`draws` [R + 1]: row 0 the estimate, the others replicates → the central
    CONFIDENCE interval of the replicates' finite values (NaN when there are none)."""
    replicates = draws[1:]
    finite = replicates[np.isfinite(replicates)]
    if not finite.size or not math.isfinite(draws[0]):
        return Interval(float(draws[0]), math.nan, math.nan, int(finite.size))
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(draws[0]), float(low), float(high), int(finite.size))


@dataclass(frozen=True)
class PowerLaw:
    """y(n) = a·n^(−b) + c fitted per replicate ([R + 1] each)."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray

    def at(self, n: np.ndarray) -> np.ndarray:
        """The fitted curve of the estimate (row 0) at widths n."""
        return self.a[0] * np.asarray(n, dtype=float) ** -self.b[0] + self.c[0]


def fit_power_law(n: np.ndarray, y: np.ndarray) -> PowerLaw:
    """Least squares fit of y = a·n^(−b) + c with c ≥ 0, for every row of y [R, k] at once.

    For each b of EXPONENT_GRID, a and c solve the linear least squares problem in
    u = n^(−b): a = cov(u, y) / var(u), c = ȳ − a·ū; where that c is negative, c = 0 and
    a = Σuy / Σu². The b with the smallest squared error wins. Rows with a non-finite y
    give NaN. n is rescaled by its smallest value (a changes accordingly, b and c do not).
    """
    n = np.asarray(n, dtype=float)
    scale = n.min()
    u = (n / scale)[None, :] ** -EXPONENT_GRID[:, None]  # [G, k]
    y = np.asarray(y, dtype=float)[:, None, :]  # [R, 1, k]
    u_mean, y_mean = u.mean(1), y.mean(2)  # [G], [R, 1]
    du = u - u_mean[:, None]
    a = ((du[None] * (y - y_mean[..., None])).sum(2)) / (du**2).sum(1)  # [R, G]
    c = y_mean - a * u_mean
    through_zero = (u[None] * y).sum(2) / (u**2).sum(1)
    a, c = np.where(c < 0, through_zero, a), np.maximum(c, 0.0)
    error = ((a[..., None] * u[None] + c[..., None] - y) ** 2).sum(2)  # [R, G]
    error = np.where(np.isfinite(error), error, np.inf)
    best = error.argmin(1)
    rows = np.arange(len(best))
    bad = ~np.isfinite(y).all(axis=(1, 2))
    pick = [np.where(bad, np.nan, v) for v in (a[rows, best], EXPONENT_GRID[best], c[rows, best])]
    return PowerLaw(pick[0] * scale ** pick[1], pick[1], pick[2])
