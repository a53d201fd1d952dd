"""pareto.py on hand-worked cases: reading a frontier in log L0 (no extrapolation, no chord
across a gap wider than MAX_GAP), its inverse, and where two frontiers are compared."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gated_sae.experiments.pareto import (
    MATCHED_L0S,
    fidelity_targets,
    interpolate,
    l0_at,
    matched_l0s,
    nearest_to_middle,
    readable,
    sparsity_level,
)


def test_sparsity_level_is_k_for_topk_like_rows_else_lambda():
    assert sparsity_level({"k": 32, "sparsity_coef": None}) == 32
    assert sparsity_level({"k": None, "sparsity_coef": 2.0}) == 2.0


def test_interpolate_is_linear_in_log_l0_row_by_row():
    l0s = np.array([[10.0, 20.0, 40.0], [40.0, 10.0, 20.0]])  # the second row unsorted
    values = np.array([[0.8, 0.85, 0.9], [0.9, 0.8, 0.85]])
    # √(10·20) is halfway between 10 and 20 in log L0
    assert interpolate(l0s, values, math.sqrt(200)) == pytest.approx([0.825, 0.825])
    # 12 is log(1.2)/log(2) of the way from 10 to 20
    w = math.log(1.2) / math.log(2)
    assert interpolate(l0s, values, 12.0) == pytest.approx([0.8 + 0.05 * w] * 2)
    assert interpolate(l0s, values, 10.0) == pytest.approx([0.8, 0.8])
    assert interpolate(l0s, values, 40.0) == pytest.approx([0.9, 0.9])
    assert np.isnan(interpolate(l0s, values, 9.99)).all()
    assert np.isnan(interpolate(l0s, values, 40.01)).all()


def test_no_chord_across_a_gap_wider_than_two_and_a_half():
    l0s, values = np.array([10.0, 25.0, 70.0]), np.array([0.8, 0.85, 0.9])
    assert np.isfinite(interpolate(l0s, values, 20.0)[0])  # 10 → 25: 2.5×, allowed
    assert np.isnan(interpolate(l0s, values, 40.0)[0])  # 25 → 70: 2.8×, refused
    assert interpolate(l0s, values, 70.0)[0] == 0.9  # a point itself is always readable
    assert np.isnan(l0_at(l0s, values, 0.87)[0])


def test_l0_at_inverts_interpolate():
    l0s = np.array([[10.0, 20.0, 40.0]])
    values = np.array([[0.8, 0.85, 0.9]])
    for at in (10.0, 13.0, math.sqrt(800), 40.0):
        target = interpolate(l0s, values, at)[0]
        assert l0_at(l0s, values, target)[0] == pytest.approx(at)
    assert np.isnan(l0_at(l0s, values, 0.95)[0]) and np.isnan(l0_at(l0s, values, 0.7)[0])
    # falling fidelity (FVU) inverts the same way; the first crossing in L0 wins
    fvu = np.array([[0.3, 0.2, 0.25]])
    assert l0_at(l0s, fvu, 0.25)[0] == pytest.approx(math.sqrt(200))


def test_matched_l0s_are_the_grid_points_both_frontiers_can_be_read_at():
    a, b = np.array([8.0, 16, 32, 64]), np.array([12.0, 24, 48, 96])
    assert matched_l0s([a, b]) == [20.0, 40.0]
    assert set(matched_l0s([a, b])) <= set(MATCHED_L0S)
    # no grid point inside: the geometric middle of the shared range, two figures
    assert matched_l0s([np.array([11.0, 15]), np.array([12.0, 18])]) == [13.0]
    assert matched_l0s([np.array([11.0, 15]), np.array([16.0, 18])]) == []
    assert matched_l0s([]) == [] and matched_l0s([a, np.array([])]) == []


def test_an_l0_readable_in_too_few_replicates_is_not_compared():
    """Frontier b ends at L0 20 as measured, but in most replicates its last point falls
    below 20: 20 is not read there, so only 10 is compared."""
    rng = np.random.default_rng(0)
    a = np.tile([5.0, 10, 20, 40], (200, 1))
    b = np.tile([10.0, 20.0], (200, 1)) * np.exp(rng.normal(0, 0.01, (200, 2)))
    b[0] = [10.0, 20.0]
    b[:, 0] = np.minimum(b[:, 0], 10.0)
    assert matched_l0s([a, b]) == [10.0]
    assert not readable(np.array([1.0, math.nan, 1.0]))
    assert not readable(np.array([math.nan] + [1.0] * 99))


def test_nearest_to_middle_and_fidelity_targets():
    assert nearest_to_middle([10, 20, 40, 80, 160], 2) == [20, 40]
    assert nearest_to_middle([10, 20], 3) == [10, 20]
    relu = (np.array([10.0, 20, 40]), np.array([0.70, 0.75, 0.80]))
    gated = (np.array([10.0, 20, 40]), np.array([0.74, 0.79, 0.84]))
    # shared fidelity range 0.74–0.80: at 1/6, 1/2 and 5/6 of it
    assert fidelity_targets([relu, gated]) == [0.75, 0.77, 0.79]
    disjoint = (np.array([10.0, 20]), np.array([0.9, 0.95]))
    assert fidelity_targets([relu, disjoint]) == []
