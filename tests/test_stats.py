"""The report's statistics against independent float64 computations: metrics from per-window
sums (against the same metrics on the windows' tokens), the paired bootstrap over windows,
percentile intervals, and the power-law fit of the width question."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gated_sae.evaluate.heldout import metrics_from_totals
from gated_sae.experiments.report import stats


def _tokens(rng, windows=5, tokens=7, d=4):
    """Token-level x and two reconstructions, per window, and LM losses per prediction."""
    x = [rng.normal(1.0, 1.0, (tokens, d)) for _ in range(windows)]
    xhat = [[0.8 * w + rng.normal(0, 0.3, w.shape) for w in x],
            [0.95 * w + rng.normal(0, 0.2, w.shape) for w in x]]
    active = [[rng.integers(0, 5, tokens) for _ in range(windows)] for _ in range(2)]
    clean = [rng.uniform(1, 3, tokens) for _ in range(windows)]
    zero = [rng.uniform(8, 10, tokens) for _ in range(windows)]
    sae = [[c + rng.uniform(0, 2, tokens) for c in clean] for _ in range(2)]
    return x, xhat, active, clean, zero, sae


def _sums(x, xhat, active, clean, zero, sae) -> dict:
    """The contract's arrays, written out from the tokens."""
    mu = np.concatenate(x).mean(0)
    return {
        "window_tokens": np.array([len(w) for w in x], dtype=float),
        "x_sq": np.array([(w**2).sum() for w in x]), "x_mu": np.array([(w @ mu).sum() for w in x]),
        "mu_sq": float(mu @ mu),
        "err_sq": np.array([[((w - h) ** 2).sum() for w, h in zip(x, r, strict=True)]
                            for r in xhat]),
        "xhat_sq": np.array([[(h**2).sum() for h in r] for r in xhat]),
        "x_xhat": np.array([[(w * h).sum() for w, h in zip(x, r, strict=True)] for r in xhat]),
        "xhat_mu": np.array([[(h @ mu).sum() for h in r] for r in xhat]),
        "active": np.array([[a.sum() for a in r] for r in active], dtype=float),
        "lm_predictions": np.array([len(c) for c in clean], dtype=float),
        "ce_clean": np.array([c.sum() for c in clean]),
        "ce_zero": np.array([z.sum() for z in zero]),
        "ce_sae": np.array([[s.sum() for s in r] for r in sae]),
    }


def _direct(x, xhat, active, clean, zero, sae, windows: list[int], i: int) -> dict:
    """SAE i's metrics on the tokens of `windows` (repeats allowed), μ from every window."""
    mu = np.concatenate(x).mean(0)
    xs = np.concatenate([x[w] for w in windows])
    hs = np.concatenate([xhat[i][w] for w in windows])
    c = np.concatenate([clean[w] for w in windows])
    z = np.concatenate([zero[w] for w in windows])
    s = np.concatenate([sae[i][w] for w in windows])
    return {
        "fvu": ((xs - hs) ** 2).sum() / ((xs - mu) ** 2).sum(),
        "l0": np.concatenate([active[i][w] for w in windows]).mean(),
        "gamma": (hs**2).sum() / (xs * hs).sum(),
        "gamma_centred": ((hs - mu) ** 2).sum() / ((xs - mu) * (hs - mu)).sum(),
        "loss_recovered": (z.sum() - s.sum()) / (z.sum() - c.sum()),
        "delta_loss": (s.sum() - c.sum()) / len(s),
    }


def test_window_sums_give_the_metrics_of_the_windows_tokens():
    data = _tokens(np.random.default_rng(0))
    sums = _sums(*data)
    drawn = [0, 0, 3, 4, 4]  # a bootstrap multiset: windows 0 and 4 twice, 1 and 2 never
    counts = np.bincount(drawn, minlength=5).astype(float)[None, :]
    got = stats.window_metrics(sums, counts, counts)
    for i in range(2):
        expected = _direct(*data, drawn, i)
        for metric, value in expected.items():
            assert got[metric][0, i] == pytest.approx(value, rel=1e-12), metric
    # every window once: the metrics of the whole held-out set
    everything = metrics_from_totals({
        k: (v.sum(-1)[..., None] if isinstance(v, np.ndarray) else v) for k, v in sums.items()
    })
    for metric, value in _direct(*data, list(range(5)), 1).items():
        assert everything[metric][1, 0] == pytest.approx(value, rel=1e-12)


def test_resample_counts_keep_row_zero_as_measured_and_draw_n_each():
    counts = stats.resample_counts(np.random.default_rng(1), 6)
    assert counts.shape == (stats.REPLICATES + 1, 6)
    assert (counts[0] == 1).all() and (counts.sum(1) == 6).all()
    again = stats.resample_counts(np.random.default_rng(1), 6)
    assert (counts == again).all()
    # each window is drawn once per replicate on average
    assert counts[1:].mean() == pytest.approx(1.0, abs=0.05)


def test_paired_windows_make_a_constant_difference_exact():
    """SAE 1 loses exactly 0.1 of each window's variance more than SAE 0: its FVU is 0.1
    higher on any multiset of windows, so every replicate of the difference is 0.1."""
    rng = np.random.default_rng(2)
    var = rng.uniform(50, 150, 8)
    n = np.full(8, 10.0)
    err = rng.uniform(10, 20, 8)
    sums = {"window_tokens": n, "x_sq": var + n, "x_mu": n, "mu_sq": 1.0,
            "err_sq": np.stack([err, err + 0.1 * var]), "xhat_sq": np.ones((2, 8)),
            "x_xhat": np.ones((2, 8)), "xhat_mu": np.ones((2, 8)),
            "active": np.ones((2, 8)), "lm_predictions": np.zeros(0)}
    counts = stats.resample_counts(rng, 8)
    fvu = stats.window_metrics(sums, counts, np.ones((len(counts), 0)))["fvu"]
    assert fvu[:, 1] - fvu[:, 0] == pytest.approx(np.full(len(counts), 0.1))
    assert np.ptp(fvu[:, 0]) > 0.01  # while each SAE's own FVU moves with the draw


def test_interval_is_the_central_percentiles_of_the_finite_replicates():
    draws = np.concatenate([[0.5], np.arange(1000) / 999, [math.nan] * 10])
    iv = stats.interval(draws)
    assert iv.value == 0.5 and iv.valid == 1000
    assert iv.low == pytest.approx(0.025) and iv.high == pytest.approx(0.975)
    assert iv.excludes(-0.1) and iv.excludes(1.1) and not iv.excludes(0.5)
    empty = stats.interval(np.array([0.3, math.nan, math.nan]))
    assert empty.value == 0.3 and math.isnan(empty.low) and empty.valid == 0


def test_seed_bootstrap_of_two_seeds_on_a_tiny_case():
    """Seeds worth 0 and 1: a replicate's mean is 0, ½ or 1 with chances ¼, ½, ¼."""
    weights = stats.resample_counts(np.random.default_rng(3), 2)
    means = weights @ np.array([0.0, 1.0]) / 2
    assert means[0] == 0.5
    share = {v: np.mean(means[1:] == v) for v in (0.0, 0.5, 1.0)}
    assert share[0.0] == pytest.approx(0.25, abs=0.04)
    assert share[0.5] == pytest.approx(0.5, abs=0.05)
    iv = stats.interval(means)
    assert (iv.low, iv.high) == (0.0, 1.0)


def test_power_law_fit_recovers_exponent_and_irreducible_term():
    n = np.array([256.0, 512, 1024, 2048, 4096])
    exact = 3.0 * n**-0.45 + 0.08
    rows = np.stack([exact, 2.0 * n**-0.3 + 0.0, exact * np.nan])
    law = stats.fit_power_law(n, rows)
    assert law.b[0] == pytest.approx(0.45) and law.c[0] == pytest.approx(0.08, abs=1e-9)
    assert law.a[0] == pytest.approx(3.0, rel=1e-9)
    assert law.at(n) == pytest.approx(exact)
    assert law.b[1] == pytest.approx(0.3) and law.c[1] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(law.b[2])
    # data whose own law has c < 0 get the best law with c ≥ 0, not their own
    below = stats.fit_power_law(n, np.stack([1.0 * n**-0.2 - 0.05]))
    assert below.c[0] >= 0 and below.b[0] != pytest.approx(0.2)
