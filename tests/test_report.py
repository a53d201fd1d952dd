"""The sweep report on a synthetic sweep folder with known answers (synthetic_sweep.py): each
finding checked as numbers and verdicts against the folder's truths, a few of the sentences
and tables, old or partial folders, and the HTML page as a headless Chromium renders it."""

from __future__ import annotations

import base64
import html.parser
import io
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_sweep import (
    EQUAL_COMPUTE,
    EXPONENT,
    IRREDUCIBLE,
    MAIN,
    OFFSET,
    RECORD,
    SLOPE,
    UNCONVERGED,
    WIDTHS,
    sweep_results,
    synthetic_saes,
    true_fvu,
    write_sweep,
)

from gated_sae.errors import DataError
from gated_sae.experiments import report as report_module
from gated_sae.experiments.report import findings, prose, write_report
from gated_sae.experiments.report.analysis import analyse
from gated_sae.experiments.report.model import DRAWN, ON_FRONTIER, Config, SweepResults, choose_lr
from gated_sae.experiments.results import read_results, results_text

NOT_MEASURED_TEXT = "not measured in this sweep"
MARGIN = true_fvu("relu", 20, MAIN) - true_fvu("gated", 20, MAIN)  # gated's lead, any L0


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str, Path]:
    folder = write_sweep(tmp_path_factory.mktemp("sweep"), synthetic_saes(), RECORD)
    md, page = write_report(folder)
    return folder, md.read_text(), page


@pytest.fixture(scope="module")
def results(report) -> SweepResults:
    return sweep_results(report[0])


@pytest.fixture(scope="module")
def found(results):
    return analyse(results)


def _section(md: str, heading: str) -> str:
    start = md.index(f"## {heading}")
    end = md.find("\n## ", start + 1)
    return md[start : end if end > 0 else None]


def _by_metric(differences, metric):
    return [d for d in differences if d.metric == metric]


# --- the data: configurations ---------------------------------------------------------------


def test_each_configuration_reproduces_results_csv_from_the_window_sums(results):
    """The estimate of every metric, recomputed from heldout.npz over all windows and
    averaged over seeds, is the mean of results.csv's values."""
    assert results.windows and results.lm_windows
    for c in results.configs:
        for metric in DRAWN:
            table = np.mean([r[metric] for r in c.runs])
            assert c.value(metric) == pytest.approx(table, rel=1e-9), (c.variant, metric)


# --- Q1, Q2, Q4 -----------------------------------------------------------------------------


def test_gated_leads_relu_by_the_known_margin_at_matched_l0(found, report):
    q2 = found.q2
    lr = _by_metric(q2.differences, "loss_recovered")
    assert [d.at for d in lr] == [20, 40, 80]  # relu 10–160, gated 7.5–120, both read there
    sums = np.load(report[0] / "heldout.npz")
    nats = (sums["ce_zero"].sum() - sums["ce_clean"].sum()) / sums["lm_predictions"].sum()
    for metric, truth, verdict in (("loss_recovered", MARGIN, findings.HIGHER),
                                   ("fvu", -MARGIN, findings.LOWER),
                                   ("delta_loss", -MARGIN * nats, findings.LOWER)):
        for d in _by_metric(q2.differences, metric):
            assert d.delta.value == pytest.approx(truth, abs=1e-9)
            assert d.delta.low < truth < d.delta.high
            assert d.verdict == verdict and d.alt_better
            assert d.basis == findings.Basis(windows=True, seeds=3)


def test_l0_ratio_at_matched_fidelity_is_recovered(found):
    """Both frontiers rise by SLOPE per unit ln L0, gated MARGIN higher: at equal fidelity
    gated needs exp(−MARGIN / SLOPE) of relu's L0."""
    truth = math.exp(-MARGIN / SLOPE)
    ratios = found.q2.ratios
    assert {d.at_metric for d in ratios} == {"loss_recovered", "fvu"} and len(ratios) == 6
    for d in ratios:
        assert d.delta.value == pytest.approx(truth, rel=1e-9)
        assert d.delta.low < truth < d.delta.high < 1
        assert d.null == 1 and d.verdict == findings.LOWER and d.alt_better


def test_a_zero_b_mag_effect_is_no_detectable_difference(found):
    """gated no b_mag is a copy of gated's SAEs: its true difference is zero everywhere."""
    b_mag = found.q1.b_mag
    assert b_mag.same_lrs and b_mag.seeds == 3
    assert len(b_mag.differences) == 3 * 4  # three metrics at L0 10, 20, 40, 80
    for d in b_mag.differences:
        assert d.delta.value == pytest.approx(0, abs=1e-12)
        assert d.delta.low < 0 < d.delta.high and d.verdict == findings.NO_DIFFERENCE
    assert findings.outcome(b_mag.differences) == "none"
    assert found.unsettled.b_mag == _by_metric(b_mag.differences, "loss_recovered")


def test_a_b_mag_effect_at_part_of_the_range_is_answered_as_partial(found):
    """Worse beyond its interval at one L0 and no detectable difference at the others: the
    answer says the cost holds at part of the range, not that b_mag matters."""
    b_mag = found.q1.b_mag
    shifted = [replace(d, delta=findings.Interval(-0.002, -0.004, -0.0001, d.delta.valid))
               if d.metric == "loss_recovered" and d.at == 20 else d for d in b_mag.differences]
    q1 = replace(found.q1, ablations=[replace(b_mag, differences=shifted)])
    answer = prose.answer_q1(q1, "loss_recovered")
    assert answer.startswith("**Answer:** removing b_mag costs fidelity at part of the L0 "
                             "range only: on loss recovered, gated without b_mag is worse")
    everywhere = [replace(d, delta=findings.Interval(-0.002, -0.004, -0.0001, d.delta.valid))
                  if d.metric == "loss_recovered" else d for d in b_mag.differences]
    q1 = replace(found.q1, ablations=[replace(b_mag, differences=everywhere)])
    assert prose.answer_q1(q1, "loss_recovered").startswith("**Answer:** b_mag matters")


def _config(lr: float, level: float, l0: float, fidelity: float) -> Config:
    """A configuration of one seed whose every replicate holds the same values."""
    draws = {m: np.full(3, fidelity if m == "loss_recovered" else l0 if m == "l0" else 0.1)
             for m in DRAWN}
    return Config("relu", 64, lr, level, False, [{"seed": 0}], draws)


def test_an_lr_whose_curve_shares_no_l0_is_left_out_of_the_choice():
    """1e-3 and 1e-2 share L0 10–40 (1e-2 is 0.01 higher); 3e-2 collapsed to L0 2–3: the
    two that share an L0 are compared, and 3e-2 is named as left out."""
    configs = [_config(1e-3, c, l0, 0.90 + 0.01 * i) for i, (c, l0) in
               enumerate([(1, 40), (2, 20), (4, 10)])]
    configs += [_config(1e-2, c, l0, 0.91 + 0.01 * i) for i, (c, l0) in
                enumerate([(1, 40), (2, 20), (4, 10)])]
    configs += [_config(3e-2, c, l0, 0.5) for c, l0 in [(1, 3), (2, 2)]]
    choice = choose_lr(configs, [1e-3, 1e-2, 3e-2], "loss_recovered")
    assert (choice.lr, sorted(choice.means), choice.left_out) == (1e-2, [1e-3, 1e-2], [3e-2])
    assert choice.rule == ON_FRONTIER and choice.l0s == [10.0, 20.0, 40.0]
    assert choice.difference(1e-3)[0] == pytest.approx(-0.01)


def test_other_ablations_are_indicative_and_their_offsets_found(found):
    ablations = {a.variant: a for a in found.q1.ablations}
    assert list(ablations) == ["gated no b_mag", "gated no r_mag", "gated untied", "gated RI-L1"]
    for variant in ("gated no r_mag", "gated RI-L1"):
        a = ablations[variant]
        assert a.seeds == 1 and variant in found.unsettled.indicative
        for d in _by_metric(a.differences, "loss_recovered"):
            assert d.delta.value == pytest.approx(OFFSET[variant], abs=1e-9)
            assert d.alt_better is False
    assert findings.outcome(ablations["gated no r_mag"].differences) == "worse"


def test_rivals_are_compared_with_gated_and_the_winner_named(found):
    rivals = {r.variant: r for r in found.rivals}
    assert list(rivals) == ["topk", "batchtopk", "jumprelu"]
    expected = {"topk": "better", "batchtopk": "worse", "jumprelu": "worse"}
    for variant, r in rivals.items():
        assert r.family.seeds == 1
        assert findings.outcome(r.differences) == expected[variant]
        for d in _by_metric(r.differences, "loss_recovered"):
            assert d.delta.value == pytest.approx(OFFSET[variant], abs=1e-9)
            assert d.basis == findings.Basis(windows=True, seeds=1)


def test_shrinkage_reproduces_the_paper_with_both_gammas(found):
    relu, gated = found.q2.shrinkage
    assert all(d.verdict == findings.LOWER for d in relu.gamma + relu.centred)
    assert not any(d.verdict == findings.LOWER for d in gated.gamma + gated.centred)
    assert found.q2.reproduces_shrinkage
    # a gated γ below 1 by less than relu's smallest shrinkage still reproduces it; by more,
    # it does not
    least = min(1 - d.alt.value for d in relu.gamma)
    for shrink, reproduces in ((least / 2, True), (least * 2, False)):
        value = 1 - shrink
        low = findings.Interval(value, value - 1e-4, value + 1e-4, gated.gamma[0].alt.valid)
        shrunk = replace(gated.gamma[0], alt=low, delta=low)
        q2 = replace(found.q2, shrinkage=[relu, replace(gated, gamma=[shrunk, *gated.gamma[1:]])])
        assert q2.reproduces_shrinkage is reproduces
    # where λ is small relu's γ may reach 1: the finding holds at the levels that shrink, if
    # they are more than half of relu's, and the report names the others
    for unshrunk, reproduces in ((1, True), (3, False)):
        flat = [replace(d, alt=replace(d.alt, value=1.0), delta=findings.Interval(
            1.0, 0.999, 1.001, d.alt.valid)) for d in relu.gamma[:unshrunk]]
        q2 = replace(found.q2, shrinkage=[replace(relu, gamma=flat + relu.gamma[unshrunk:]),
                                          gated])
        assert q2.reproduces_shrinkage is reproduces
        assert q2.relu_unshrunk == [d.at for d in relu.gamma[:unshrunk]]
    assert prose.shrinkage_outcome(replace(found.q2, shrinkage=[
        replace(relu, gamma=flat[:1] + relu.gamma[1:]), gated])).startswith(
        "reproduces at the 4 of 5 relu levels whose γ is below 1 (relu's γ is not below 1 at L0 ")
    # the centred γ is the shrinkage of the varying part: relu's runs 0.8–0.9 by level
    assert [round(d.alt.value, 2) for d in relu.centred] == [0.8, 0.82, 0.85, 0.88, 0.9]
    assert all(g.alt.value > c.alt.value for g, c in zip(relu.gamma, relu.centred, strict=True))


# --- Q3 -------------------------------------------------------------------------------------


def test_width_law_recovers_each_architectures_exponent(found):
    q3 = found.q3
    assert q3.fit_l0s == {"relu": [20, 40], "gated": [10, 20]}
    for fit in q3.fits:
        expected_widths = sorted({*WIDTHS, MAIN} | ({EQUAL_COMPUTE} if fit.variant == "relu"
                                                   else set()))
        assert fit.widths == expected_widths
        b = EXPONENT[fit.variant]
        assert fit.exponent.value == pytest.approx(b) and fit.exponent.low < b < fit.exponent.high
        c = IRREDUCIBLE[fit.variant] - SLOPE * math.log(fit.l0 / 20)
        assert fit.irreducible.value == pytest.approx(c, abs=1e-9)
    assert [(f.variant, f.unconverged) for f in q3.fits] == [
        ("relu", []), ("relu", []), ("gated", [2048]), ("gated", [2048])]
    assert not any(s.falls for s in q3.steps) and len(q3.steps) == 7
    assert [w for w, _ in q3.equal_width] == [256, 1024, 2048]
    assert [(g, r) for g, r, _ in q3.equal_compute] == [(MAIN, EQUAL_COMPUTE)]
    assert q3.tokens == {w: [w * 500] for w in sorted({*WIDTHS, MAIN, EQUAL_COMPUTE})}


def test_fidelity_falling_with_width_is_caught(tmp_path):
    saes = [replace(s, fvu=s.fvu + 0.06) if (s.variant, s.width) == ("gated", 2048) else s
            for s in synthetic_saes()]
    found = analyse(sweep_results(write_sweep(tmp_path / "falls", saes, RECORD)))
    falling = [(s.variant, s.narrow, s.wide) for s in found.q3.steps if s.falls]
    assert falling == [("gated", 1024, 2048)]
    assert found.unsettled.falling[0].wide == 2048


# --- training, tally, compute ---------------------------------------------------------------


def test_unconverged_runs_are_counted_and_flagged(results, found, report):
    conv = found.convergence
    variant, width, lr, level = UNCONVERGED
    assert conv.recorded == len(synthetic_saes())
    assert {(r["variant"], r["d_sae"], r["lr"], r["sparsity_coef"]) for r in conv.failed} \
        == {UNCONVERGED}
    assert all(abs(r["lr_change"]) >= 0.005 for r in conv.failed)
    assert [(f.variant, f.width, c.level) for f, c in conv.on_frontiers] == [
        (variant, width, level)]
    assert found.unsettled.unconverged == 1
    # per variant, width and lr: the unconverged group's drift counts its failing runs
    healthy = [r for r in results.rows if r not in results.excluded]
    assert sum(d.saes for d in conv.drifts) == len(healthy)
    drift = next(d for d in conv.drifts if (d.variant, d.width, d.lr) == (variant, width, lr))
    group = [r["lr_change"] for r in healthy
             if (r["variant"], r["d_sae"], r["lr"]) == (variant, width, lr)]
    assert drift.saes - drift.passed == 3 and drift.lr_change == (
        pytest.approx(float(np.median(group))), min(group), max(group))
    # groups whose FVU still fell by more than 5% (median) when their tokens doubled
    by_group: dict[tuple, list[float]] = {}
    for r in healthy:
        by_group.setdefault((r["variant"], r["d_sae"], r["lr"]), []).append(r["fvu_change"])
    falling = {key for key, changes in by_group.items() if np.median(changes) < -0.05}
    assert {(d.variant, d.width, d.lr) for d in found.unsettled.fvu_falling} == falling
    training = _section(report[1], "Training")
    assert training.count("`gated_d2048_lr0.001_c16_s") == 3  # the failing runs, listed
    # flagged in the width question too, where their frontier is used
    fits = [line for line in _section(report[1], "Q3.").splitlines()
            if line.startswith("| gated | ") and "| 2048 |" in line]
    assert fits and all("]† |" in line for line in fits)


def test_the_tally_counts_every_judged_interval(found):
    every = [d for a in found.q1.ablations for d in a.differences]
    every += found.q2.differences + found.q2.ratios
    every += [d for s in found.q2.shrinkage for d in s.gamma + s.centred]
    every += [d for s in found.q3.steps for d in s.differences]
    every += [d for _, ds in found.q3.equal_width for d in ds]
    every += [d for _, _, ds in found.q3.equal_compute for d in ds]
    every += [d for r in found.rivals for d in r.differences]
    t = found.tally
    assert t.made == len(every)
    assert t.excluded == sum(d.verdict in (findings.HIGHER, findings.LOWER) for d in every)
    assert t.by_chance == pytest.approx(0.05 * len(every))


def test_compute_reads_the_sweep_record_and_rows(found):
    c = found.compute
    assert (c.total_seconds, c.cache_seconds) == (5400.0, 300.0)
    assert c.machine["cores"] == 2 and [w.width for w in c.widths] == sorted(
        {*WIDTHS, MAIN, EQUAL_COMPUTE})
    assert all(w.tokens_per_latent == [500.0] for w in c.widths)
    main = next(w for w in c.widths if w.width == MAIN)
    assert main.saes == sum(s.width == MAIN for s in synthetic_saes())


def test_the_frontier_figure_marks_the_l0s_the_text_compares(report, monkeypatch):
    drawn = {}
    real = report_module.plots.plot_frontiers

    def spy(res, l0s):
        drawn["l0s"] = l0s
        return real(res, l0s)

    monkeypatch.setattr(report_module.plots, "plot_frontiers", spy)
    md = write_report(report[0])[0].read_text()
    assert drawn["l0s"] == [20, 40, 80]
    assert "| gated − relu | loss recovered | L0 20 |" in md
    assert "gated is better than relu at L0 20, 40 and 80" in md


# --- partial and old folders ----------------------------------------------------------------


def test_without_per_window_sums_intervals_come_from_seeds_only(tmp_path):
    folder = write_sweep(tmp_path / "old", synthetic_saes(), RECORD, heldout=False,
                         curves=False)
    res = sweep_results(folder)
    assert not res.windows
    found = analyse(res)
    # three seeds each: an interval over seeds; the seed offsets make it contain 0 for b_mag
    for d in found.q1.b_mag.differences:
        assert d.basis == findings.Basis(windows=False, seeds=3)
        assert d.verdict == findings.NO_DIFFERENCE
    # one seed, nothing to resample: no interval, no verdict
    for r in found.rivals:
        assert {d.verdict for d in r.differences} == {findings.NO_INTERVAL}
    md = write_report(folder)[0].read_text()
    assert "Without per-window sums (heldout.npz) only the seeds are resampled" in md
    assert f"Training curves (FVU): {NOT_MEASURED_TEXT}." in md
    # sums that miss a run (a sweep resumed from an older one) are not used either
    partial = write_sweep(tmp_path / "partial", synthetic_saes()[:6], RECORD)
    sums = dict(np.load(partial / "heldout.npz"))
    np.savez(partial / "heldout.npz", **{k: v[:-1] if np.ndim(v) and len(v) == 6 else v
                                         for k, v in sums.items()})
    res = sweep_results(partial)
    assert res.uncovered == [sums["names"][-1]] and not res.windows
    assert "heldout.npz has no per-window sums for 1 run" in write_report(partial)[0].read_text()


def test_loss_recovered_not_measured_falls_back_to_fvu(tmp_path):
    folder = write_sweep(tmp_path / "fvu", synthetic_saes(), RECORD, heldout=False)
    rows = [{**r, "loss_recovered": "", "delta_loss": "", "ce_sae": "",
             "options": "{}", "role": ";".join(r["roles"]), "k": r["k"] or "",
             "sparsity_coef": r["sparsity_coef"] or ""}
            for r in read_results(folder / "results.csv")]
    (folder / "results.csv").write_text(results_text(rows))
    res = sweep_results(folder)
    assert res.metric == "fvu" and not res.measured("loss_recovered")
    found = analyse(res)
    assert {d.metric for d in found.q2.differences} == {"fvu"}
    md = write_report(folder)[0].read_text()
    assert "Loss recovered was not measured: learning rates are chosen on FVU." in md


def test_missing_questions_are_not_measured(tmp_path):
    only_relu = [s for s in synthetic_saes() if s.variant == "relu" and s.width == MAIN]
    folder = write_sweep(tmp_path / "relu", only_relu)  # and no sweep.json
    found = analyse(sweep_results(folder))
    assert found.q1.ablations == found.rivals == found.q3.fits == [] and found.q2 is None
    md = write_report(folder)[0].read_text()
    assert f"The gated ablations were {NOT_MEASURED_TEXT}." in _section(md, "Q1.")
    assert f"Relu and gated at the main width were {NOT_MEASURED_TEXT}." in _section(md, "Q2.")
    assert f"relu or gated at two or more widths were {NOT_MEASURED_TEXT}." in _section(md, "Q3.")
    assert "sweep.json is missing or unreadable" in md
    assert (folder / "plots" / "frontiers.png").is_file()


def test_empty_missing_and_malformed_inputs(tmp_path):
    empty = write_sweep(tmp_path / "empty", [], RECORD, heldout=False, curves=False)
    md = write_report(empty)[0].read_text()
    assert md.count(NOT_MEASURED_TEXT) >= 5
    with pytest.raises(DataError, match="results.csv"):
        write_report(tmp_path / "nowhere")
    folder = write_sweep(tmp_path / "bad", synthetic_saes()[:6], RECORD)
    sums = dict(np.load(folder / "heldout.npz"))
    np.savez(folder / "heldout.npz", **{**sums, "err_sq": sums["err_sq"][:, :-1]})
    with pytest.raises(DataError, match=r"heldout\.npz: err_sq has shape"):
        write_report(folder)
    np.savez(folder / "heldout.npz", **{k: v for k, v in sums.items() if k != "x_mu"})
    with pytest.raises(DataError, match=r"heldout\.npz has no array 'x_mu'"):
        write_report(folder)
    (folder / "heldout.npz").unlink()
    (folder / "curves.csv").write_text("name,step,tokens,run_tokens,l0,fvu\nx,0,0,1,1,1\n")
    with pytest.raises(DataError, match=r"curves\.csv has no column 'loss_recovered'"):
        write_report(folder)


# --- the report in words --------------------------------------------------------------------


def test_report_writes_the_findings_into_each_question(report):
    _, md, _ = report
    q1 = _section(md, "Q1.")
    assert q1.startswith("## Q1.") and "**Answer:** no detectable effect of b_mag" in q1
    assert "| gated no r_mag − gated | loss recovered | L0 20 |" in q1
    assert "−0.020 [" in q1 and "indicative: 1 seed" in q1
    q2 = _section(md, "Q2.")
    # every lr's loss recovered by level, the kept lr in bold though 1e-4 is higher at fixed λ
    assert "| relu | λ = 8 | 0.753 | **0.744** | 0.694 |" in q2
    assert "| relu | λ = 0.5 | 0.892 | **0.882** | dead |" in q2
    assert "gated: lr 1e-3 of 1e-4, 3e-4, 1e-3; its curve has the highest mean loss recovered " \
           "of the 3 compared at L0 40 and 80; its frontier has 5 levels, 3 seeds each. It is " \
           "the largest lr swept: the best lr may lie outside the range." in q2
    assert "| relu | 20 and 40 | **3e-4** | 5 | 3 | 0.795 [" in q2
    assert "| relu | 20 and 40 | 1e-3 | 4 | 3 | 0.775 [0.771, 0.780] | −0.020 [" in q2
    # ratios to three significant figures, without a repeated word
    assert "gated needs fewer active latents than relu: L0_gated / L0_relu = 0.400, " \
           "intervals within [0.3" in q2
    assert "| gated / relu | L0 | loss recovered 0.793 |" in q2 and "| 0.400 [0.3" in q2
    assert "On this run the paper's shrinkage finding (relu's γ below 1; gated's at 1, or " \
           "shrinking less than relu's at any level) reproduces. " in q2
    q3 = _section(md, "Q3.")
    assert "gated's b = 0.50 [" in q3 and "resting on 4 widths (256, 512, 1024 and 2048)" in q3
    assert "no family's fidelity falls with width beyond its interval (7 of 7 adjacent pairs" \
        in q3
    q4 = _section(md, "Q4.")
    assert "On loss recovered, topk is better than gated at L0 10, 20, 40 and 80" in q4
    assert "topk ran 1 seed: its intervals cover the held-out windows, not its seeds" in q4


def test_report_states_its_rules_paper_compute_and_what_is_open(report):
    folder, md, _ = report
    assert "at most 2.5× apart" in md and "1,000 bootstrap replicates" in md
    assert "64 windows (8,128 activation tokens); the LM metrics on the first 32 of them" in md
    assert "about 7 of them (5%) would exclude it by chance" in md
    paper = _section(md, "The paper's settings beside ours")
    assert "| batch size | 4,096 activations | 1,024 | App. D.1.2 |" in paper
    assert "swept at every sparsity level unless counted: relu 1e-4, 3e-4, 1e-3; gated " in paper
    assert "Sec. 5.1, Fig. 8" in paper and "Gao et al. 2024 (arXiv 2406.04093)" in paper
    compute = _section(md, "Compute")
    assert "5,400 s (90.0 min)" in compute and "| 512 | 126 | 256,000 | 500 |" in compute
    assert "`gated-sae sweep --preset paper`" in _section(md, "What the data do not settle")
    run = _section(md, "How this was run")
    assert "seeds run: 0, 1, 2" in run and f"gated-sae report {folder}" in run


def test_the_committed_report_rebuilds_from_its_results(tmp_path):
    """results/questions-smollm2-cpu/report.md is what `gated-sae report` writes from the files
    beside it (only the text is compared: plots depend on matplotlib)."""
    committed = Path(__file__).parents[1] / "results" / "questions-smollm2-cpu"
    folder = tmp_path / "q"
    folder.mkdir()
    for name in ("results.csv", "sweep.json", "heldout.npz", "curves.csv"):
        shutil.copy(committed / name, folder / name)
    md = write_report(folder)[0].read_text()
    assert md.replace(str(folder), "results/questions-smollm2-cpu") == (
        committed / "report.md").read_text()
    # the lrs off the main grid ran at some levels only, and the settings table counts them
    assert "relu 3e-3 (at 3 of 5 levels), 1e-2, 3e-2 (at 3 of 5 levels); " in md
    # three widths with four levels each: a width law per architecture at two L0s, and
    # fidelity that does not fall with width
    found = analyse(sweep_results(folder))
    q3 = found.q3
    assert q3.fit_l0s == {"relu": [20.0, 40.0], "gated": [20.0, 40.0]}
    assert [f.widths for f in q3.fits] == [[288, 576, 1152]] * 4
    assert q3.steps and not any(s.falls for s in q3.steps)
    # twice the tokens still cut FVU at matched L0 in all but one group of runs
    assert (len(found.unsettled.fvu_falling), found.unsettled.drifts) == (15, 16)


# --- files and the page ---------------------------------------------------------------------

PLOTS = {"frontiers.png", "lr_sensitivity.png", "shrinkage.png", "width.png",
         "budget_frontiers.png", "curves_fvu.png", "curves_loss_recovered.png", "dead.png"}


def test_report_writes_every_plot_and_leaves_no_temporary_files(report):
    folder, md, _ = report
    assert {p.name for p in (folder / "plots").iterdir()} == PLOTS
    for name in PLOTS:
        assert f"](plots/{name})" in md
        with Image.open(folder / "plots" / name) as image:
            assert image.size[0] >= 600 and image.size[1] >= 400
    assert not [p for p in folder.rglob(".*")]
    assert NOT_MEASURED_TEXT not in md


class _PageParts(html.parser.HTMLParser):
    """Tags and URL-bearing attributes of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]


def test_html_is_self_contained_and_every_image_decodes(report):
    _, _, page = report
    parts = _PageParts()
    parts.feed(page.read_text())
    assert "script" not in parts.tags and "link" not in parts.tags
    assert len(parts.urls) == len(PLOTS) and parts.tags.count("img") == len(PLOTS)
    prefix = "data:image/png;base64,"
    for url in parts.urls:
        assert url.startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))) as image:
            image.load()
            assert image.size[0] > 0


# --- the page in a headless browser ---------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The system Chromium, offline: no sandbox (CI runs as root), no GPU, and none of the
# background connections a closed network would refuse.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make chromium`)")
def test_html_renders_in_chromium_without_errors(report):
    _, _, page_path = report
    sync_api = pytest.importorskip("playwright.sync_api", reason="the `test` extra installs it")
    errors, requested = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=120_000
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
            page.on("request", lambda r: requested.append(r.url))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            title = page.title()
            images = page.evaluate(
                "Array.from(document.images, i => [i.complete, i.naturalWidth, i.alt])"
            )
            headings = page.locator("h2").all_inner_texts()
            h1 = page.locator("h1").all_inner_texts()
            table_count = page.locator("table").count()
        finally:
            browser.close()
    assert not errors, errors
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert title == h1[0] == "Gated SAE questions: smollm2-135m blocks.15.hook_resid_post"
    assert len(images) == len(PLOTS) and all(done and w > 0 for done, w, _ in images), images
    assert headings == [
        "How to read this report",
        "Q1. Is b_mag still necessary in the Gated SAE?",
        "Q2. Does gated still win when relu gets its own best learning rate?",
        "Q3. How does fidelity scale with the dictionary, at matched L0?",
        "Q4. Gated against TopK, BatchTopK and JumpReLU",
        "Training: convergence and dead latents",
        f"Results at the main width (d_sae = {MAIN})",
        "The paper's settings beside ours",
        "Compute",
        "What the data do not settle",
        "How this was run",
    ]
    assert table_count >= 15
