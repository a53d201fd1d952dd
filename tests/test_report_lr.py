"""How the report chooses each family's one learning rate, on the synthetic sweep
(synthetic_sweep.py), whose lower lrs leave SAEs denser at a fixed λ: chosen on the frontier
at matched L0, not at fixed λ; collapsed runs kept out of the choice; a fallback where the
lrs' curves share no L0; the flag when the chosen lr is at an end of the swept range. The
choice in the report's words is checked in test_report.py."""

from __future__ import annotations

import math

import pytest
from synthetic_sweep import (
    BEST_LR,
    DEAD,
    LR_PENALTY,
    LRS,
    MAIN,
    RECORD,
    sweep_results,
    synthetic_saes,
    write_sweep,
)

from gated_sae.experiments.report.analysis import analyse
from gated_sae.experiments.report.model import MOST_LEVELS, ON_FRONTIER, SweepResults
from gated_sae.experiments.report.stats import interval


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> SweepResults:
    return sweep_results(write_sweep(tmp_path_factory.mktemp("sweep"), synthetic_saes(), RECORD))


def test_each_family_keeps_the_lr_whose_curve_is_best_at_matched_l0(results):
    """At a fixed λ the smallest lr leaves the SAEs densest and has the best loss recovered;
    read at matched L0, the best lr's curve is LR_PENALTY per lr step above each other's."""
    for variant, l0s in (("relu", [20, 40]), ("gated", [40, 80])):
        configs = results.configs_of(variant, MAIN)
        for level in {c.level for c in configs}:
            at_level = [c for c in configs if c.level == level]
            assert max(at_level, key=lambda c: c.value("loss_recovered")).lr == LRS[0]
        family = results.families[(variant, MAIN)]
        choice, best = family.choice, BEST_LR[variant]
        assert choice.rule == ON_FRONTIER and choice.lr == best and choice.swept == list(LRS)
        assert choice.l0s == l0s and list(choice.means) == list(LRS)
        assert {c.lr for c in family.points} == {best}
        assert [c.seeds for c in family.points] == [3] * 5
        for lr in LRS:
            steps = abs(round(math.log(lr / best) / math.log(3)))
            delta = interval(choice.difference(lr))
            assert delta.value == pytest.approx(-LR_PENALTY * steps, abs=1e-9)
            assert delta.high < 0 if steps else delta.value == 0
    # relu's best lr is inside the range; gated's is the largest swept, so flagged
    assert results.families[("relu", MAIN)].choice.edge is None
    assert results.families[("gated", MAIN)].choice.edge == "largest"
    assert {f.choice.edge for (v, w), f in results.families.items()
            if (v, w) not in (("relu", MAIN), ("gated", MAIN))} == {None}


def test_dead_runs_leave_the_frontier_and_the_choice(results):
    variant, width, lr, level = DEAD
    assert sorted(r["seed"] for r in results.excluded) == [0, 1, 2]
    assert {(r["variant"], r["d_sae"], r["lr"], r["sparsity_coef"]) for r in results.excluded} \
        == {DEAD}
    assert all(r["train_dead_fraction"] == 0.8 for r in results.excluded)
    assert not any(c.lr == lr and c.level == level for c in results.configs_of(variant, width))
    choice = results.families[(variant, width)].choice
    assert len(choice.curves[lr]) == 4 and choice.lr == BEST_LR[variant]
    # counted healthy, the collapsed runs would lift relu's 1e-3 curve to be chosen
    revived = SweepResults([{**r, "train_dead_fraction": 0.0} for r in results.rows], {})
    choice = revived.families[(variant, width)].choice
    assert choice.lr == lr and choice.l0s == [20, 40, 80]


def test_curves_sharing_no_l0_fall_back_to_most_levels_then_most_seeds(tmp_path):
    """relu's 1e-4 at λ 0.5–2 (L0 72–288) and 1e-3 at λ 2–8 (L0 5.6–22): no L0 both can be
    read at. With one level fewer at 1e-3, 1e-4 is kept (and it is the smallest lr swept);
    with as many levels, the lr with more seeds."""
    relu = [s for s in synthetic_saes() if (s.variant, s.width) == ("relu", MAIN)]
    low = {(1e-4, level) for level in (0.5, 1.0, 2.0)}
    fewer = [s for s in relu if (s.lr, s.level) in low | {(1e-3, 4.0), (1e-3, 8.0)}]
    found = analyse(sweep_results(write_sweep(tmp_path / "fewer", fewer, RECORD)))
    [family] = found.unsettled.unchosen
    choice = family.choice
    assert (choice.rule, choice.lr, choice.l0s, choice.means) == (MOST_LEVELS, 1e-4, [], {})
    assert choice.edge == "smallest" and found.unsettled.edges == [family]
    assert [c.level for c in family.points] == [2.0, 1.0, 0.5]
    seeds = [s for s in relu if (s.lr, s.level) in low and s.seed == 0
             or (s.lr, s.level) in {(1e-3, 2.0), (1e-3, 4.0), (1e-3, 8.0)}]
    choice = sweep_results(write_sweep(tmp_path / "seeds", seeds, RECORD, heldout=False,
                                       curves=False)).families[("relu", MAIN)].choice
    assert (choice.rule, choice.lr, choice.edge) == (MOST_LEVELS, 1e-3, "largest")
