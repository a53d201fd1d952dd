"""pareto.py on hand-worked cases: summaries over seeds, each variant's best learning rate,
the L0–fidelity frontier, interpolation in log L0, comparisons at matched L0 and seed noise."""

from __future__ import annotations

import math

import pytest

from gated_sae.experiments.pareto import (
    Comparison,
    best_lr_rows,
    compare,
    frontier,
    interpolate_at,
    matched_l0_grid,
    seed_noise,
    summarize,
)

NAN = math.nan


def row(variant="relu", lr=1e-3, coef=1.0, seed=0, k=None, d_sae=64, **metrics):
    arch = variant.split()[0]
    base = {m: NAN for m in ("l0", "fvu", "loss_recovered", "gamma")}
    return {
        "arch": arch,
        "variant": variant,
        "d_sae": d_sae,
        "lr": lr,
        "seed": seed,
        "k": k,
        "sparsity_coef": None if k is not None else coef,
        "roles": frozenset(),
        **base,
        **metrics,
    }


def test_summarize_mean_spread_and_seed_count():
    rows = [row(seed=0, l0=10, fvu=0.3), row(seed=1, l0=14, fvu=NAN), row(seed=2, l0=12)]
    (s,) = summarize(rows, ("variant", "lr"))
    assert s["n_seeds"] == 3
    assert s["l0"] == pytest.approx(12.0) and s["l0_spread"] == pytest.approx(4.0)
    # NaN values are left out of the mean and spread; an all-NaN metric stays NaN.
    assert s["fvu"] == pytest.approx(0.3) and s["fvu_spread"] == 0.0
    assert math.isnan(s["gamma"]) and math.isnan(s["gamma_spread"])
    assert s["arch"] == "relu" and "seed" not in s


def test_best_lr_takes_best_mean_over_seeds_per_variant_width_and_level():
    rows = [
        # lr 1e-3: seeds 0.80 and 0.90, mean 0.85; lr 3e-3: 0.86 twice, mean 0.86 → 3e-3
        row(lr=1e-3, seed=0, loss_recovered=0.80, l0=20),
        row(lr=1e-3, seed=1, loss_recovered=0.90, l0=22),
        row(lr=3e-3, seed=0, loss_recovered=0.86, l0=30),
        row(lr=3e-3, seed=1, loss_recovered=0.86, l0=34),
        # another sparsity level: 1e-3 is best there
        row(lr=1e-3, coef=2.0, loss_recovered=0.7),
        row(lr=3e-3, coef=2.0, loss_recovered=0.6),
        # topk levels are k, not λ
        row("topk", lr=1e-3, k=16, loss_recovered=0.5),
        row("topk", lr=1e-3, k=32, loss_recovered=0.6),
    ]
    best = {(b["variant"], b["sparsity"]): b for b in best_lr_rows(rows)}
    assert set(best) == {("relu", 1.0), ("relu", 2.0), ("topk", 16), ("topk", 32)}
    top = best[("relu", 1.0)]
    assert top["lr"] == 3e-3 and top["lrs"] == [1e-3, 3e-3]
    assert top["loss_recovered"] == pytest.approx(0.86) and top["loss_recovered_spread"] == 0
    assert top["l0"] == pytest.approx(32) and top["l0_spread"] == pytest.approx(4)
    assert top["n_seeds"] == 2
    assert best[("relu", 2.0)]["lr"] == 1e-3
    assert best[("topk", 32)]["k"] == 32


def test_best_lr_falls_back_to_fvu_and_breaks_ties_to_the_smaller_lr():
    no_lr = [row(lr=1e-3, fvu=0.3), row(lr=3e-3, fvu=0.2), row(lr=1e-2, fvu=NAN)]
    assert best_lr_rows(no_lr)[0]["lr"] == 3e-3
    # one lr with a loss recovered beats a better FVU without one
    mixed = [row(lr=1e-3, fvu=0.3, loss_recovered=0.5), row(lr=3e-3, fvu=0.1)]
    assert best_lr_rows(mixed)[0]["lr"] == 1e-3
    tie = [row(lr=3e-3, loss_recovered=0.5), row(lr=1e-3, loss_recovered=0.5)]
    assert best_lr_rows(tie)[0]["lr"] == 1e-3


def test_frontier_keeps_the_upper_left_points_in_l0_order():
    points = [
        (10, 0.8),
        (20, 0.85),
        (15, 0.7),
        (30, 0.85),
        (5, 0.6),
        (40, 0.9),
        (NAN, 1.0),
        (0, 0.99),
        (8, NAN),
    ]
    assert frontier(points) == [(5, 0.6), (10, 0.8), (20, 0.85), (40, 0.9)]
    # lower is better for FVU; a payload rides along
    fvu = [(10, 0.3, "a"), (20, 0.25, "b"), (15, 0.35, "c"), (40, 0.2, "d"), (10, 0.32, "e")]
    assert frontier(fvu, higher_is_better=False) == [
        (10, 0.3, "a"),
        (20, 0.25, "b"),
        (40, 0.2, "d"),
    ]
    assert frontier([]) == []


def test_interpolate_is_linear_in_log_l0_and_refuses_to_extrapolate():
    front = [(10, 0.8), (100, 0.9), (1000, 0.94)]
    assert interpolate_at(front, math.sqrt(10 * 100)) == pytest.approx(0.85)
    # 20 is log10(2) = 0.30103 of the way from 10 to 100 in log L0
    assert interpolate_at(front, 20) == pytest.approx(0.8 + 0.1 * math.log10(2))
    assert interpolate_at(front, 10) == 0.8 and interpolate_at(front, 1000) == 0.94
    assert interpolate_at(front, 100) == 0.9
    assert interpolate_at(front, 9.99) is None and interpolate_at(front, 1001) is None
    assert interpolate_at([], 10) is None


def test_matched_l0_grid_is_ends_and_geometric_middle_of_the_overlap():
    a, b = [(10, 0), (100, 0)], [(20, 0), (400, 0)]
    assert matched_l0_grid(a, b) == pytest.approx([20, math.sqrt(2000), 100])
    assert matched_l0_grid([(10, 0), (20, 0)], [(20, 0), (40, 0)]) == [20]
    assert matched_l0_grid([(10, 0), (20, 0)], [(30, 0), (40, 0)]) == []


def _summaries(variant, l0s, values, coefs=(1.0, 2.0, 4.0)):
    return [
        {**row(variant, coef=coef), "l0": l0, "loss_recovered": value}
        for l0, value, coef in zip(l0s, values, coefs, strict=True)
    ]


def test_compare_at_matched_l0_with_seed_noise():
    ref = _summaries("gated", [10, 100, 1000], [0.8, 0.9, 0.95])
    alt = _summaries("gated no b_mag", [20, 200, 2000], [0.84, 0.93, 0.97])
    out = compare(ref, alt, noise=0.02)
    assert [c.l0_ref for c in out] == pytest.approx([20, math.sqrt(20 * 1000), 1000])
    first = out[0]  # alt's own point; ref interpolated between L0 10 and 100
    assert first.alt == 0.84 and first.ref == pytest.approx(0.8 + 0.1 * math.log10(2))
    assert first.noise == 0.02 and first.verdict == "within seed noise"
    assert first.level is None


def test_compare_falls_back_to_matched_coefficient_and_knows_unknown_noise():
    ref = _summaries("relu", [10, 20, 40], [0.7, 0.8, 0.9])
    alt = _summaries("gated", [100, 200, 400], [0.6, 0.85, 0.95])
    out = compare(ref, alt)
    assert [c.level for c in out] == [1.0, 2.0, 4.0]
    assert out[1].delta == pytest.approx(0.05)
    assert out[1].noise is None and out[1].verdict == "seed noise unknown"
    assert Comparison(10, 10, 0.5, 0.52, 0.01).verdict == "larger than seed noise"


def _seed_rows(seed, lr, points):
    return [{**row("relu", lr=lr, coef=c, seed=seed), "l0": l0, "loss_recovered": v}
            for c, (l0, v) in zip((1.0, 2.0, 4.0), points, strict=False)]


def test_seed_noise_is_measured_at_matched_l0_not_matched_coefficient():
    """Seed 1 fires twice as often at every λ but sits on the same L0–fidelity curve
    (0.5 + 0.1·ln L0), 0.003 lower: its noise is 0.003, not the 0.1·ln 2 ≈ 0.069 that
    comparing the seeds at equal λ would give."""
    def curve(l0, shift=0.0):
        return (l0, 0.5 + 0.1 * math.log(l0) + shift)
    rows = (_seed_rows(0, 1e-3, [curve(10), curve(20), curve(40)])
            + _seed_rows(1, 1e-3, [curve(20, -0.003), curve(40, -0.003), curve(80, -0.003)]))
    assert seed_noise(rows) == pytest.approx(0.003)
    # Hand-worked with a bend: seed 0 at (10, 0.6), (40, 0.8); seed 1 at (20, 0.65), (40, 0.79).
    # At L0 20 seed 0 interpolates to 0.6 + 0.2·ln2/ln4 = 0.7: spread 0.05; at L0 40: 0.01.
    rows = (_seed_rows(0, 1e-3, [(10, 0.6), (40, 0.8)])
            + _seed_rows(1, 1e-3, [(20, 0.65), (40, 0.79)]))
    assert seed_noise(rows) == pytest.approx(0.05)


def test_seed_noise_unknown_without_two_seeds_at_one_lr():
    one_seed_each = (_seed_rows(0, 1e-3, [(10, 0.6), (40, 0.8)])
                     + _seed_rows(1, 3e-3, [(10, 0.5), (40, 0.7)]))
    assert seed_noise(one_seed_each) is None
    disjoint = (_seed_rows(0, 1e-3, [(10, 0.6), (20, 0.8)])
                + _seed_rows(1, 1e-3, [(40, 0.5), (80, 0.7)]))
    assert seed_noise(disjoint) is None

