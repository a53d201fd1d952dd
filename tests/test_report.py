"""The sweep report on a synthetic results table with known answers: each question's
findings checked as numbers and verdicts, a few of the sentences and tables they are
written into, the report's behaviour on missing data, and the HTML page as a headless
Chromium renders it."""

from __future__ import annotations

import base64
import html.parser
import io
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image
from synthetic_sweep import (
    ABLATION_LR,
    ABLATION_OFFSET,
    BEST_LR,
    COEFS,
    D_IN,
    GAMMA,
    GATED_MARGIN,
    LRS,
    MAIN,
    RECORD,
    SEED_NOISE,
    WIDTH_GAIN,
    fidelity,
    lr_penalty,
    sweep_results,
    synthetic_rows,
    write_sweep,
)

from gated_sae.errors import DataError
from gated_sae.experiments.pareto import Comparison
from gated_sae.experiments.report import findings, write_report
from gated_sae.experiments.report.model import SweepResults
from gated_sae.experiments.report.prose import b_mag_summary

NOT_MEASURED_TEXT = "not measured in this sweep"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str, Path]:
    folder = write_sweep(tmp_path_factory.mktemp("sweep"), synthetic_rows(), RECORD)
    md, page = write_report(folder)
    return folder, md.read_text(), page


def _section(md: str, heading: str) -> str:
    start = md.index(f"## {heading}")
    end = md.find("\n## ", start + 1)
    return md[start : end if end > 0 else None]


@pytest.fixture(scope="module")
def results(report) -> SweepResults:
    return sweep_results(report[0])


# --- findings: numbers and verdicts ---------------------------------------------------------


def test_q1_compares_each_ablation_with_gated_at_the_ablations_lr(results):
    q1 = findings.analyse_q1(results)
    assert q1.width == MAIN
    assert [a.variant for a in q1.ablations] == [
        "gated no b_mag",
        "gated no r_mag",
        "gated untied",
        "gated RI-L1",
    ]
    # gated L0 12–60, the ablations 5% higher (12.6–63): compared at 12.6, √(12.6·60), 60
    grid = [12.6, math.sqrt(12.6 * 60), 60]
    for ablation in q1.ablations:
        assert ablation.lrs == [ABLATION_LR] and ablation.gated_at_same_lrs
        # gated at the ablation's lr 3e-4, not at its own best lr 1e-3
        assert {s["lr"] for s in ablation.gated} == {ABLATION_LR}
        offset = ABLATION_OFFSET[ablation.variant.removeprefix("gated ")]
        comparisons = ablation.comparisons
        assert [c.l0_ref for c in comparisons] == pytest.approx(grid)
        assert all(c.level is None for c in comparisons)
        # both fidelities are linear in ln L0, so at matched L0 they differ by the offset
        assert [c.delta for c in comparisons] == pytest.approx([offset] * 3, abs=1e-12)
        assert [c.noise for c in comparisons] == pytest.approx([2 * SEED_NOISE] * 3)
    by_variant = {a.variant: findings.tally(a.comparisons) for a in q1.ablations}
    # |−0.002|, |+0.001| ≤ 0.004 < |−0.006|, |−0.010|
    assert by_variant == {
        "gated no b_mag": (0, 3),
        "gated no r_mag": (3, 3),
        "gated untied": (0, 3),
        "gated RI-L1": (3, 3),
    }
    assert q1.b_mag.verdict == findings.NO_SIGN and not q1.b_mag.beyond
    assert q1.b_mag.noise == pytest.approx(2 * SEED_NOISE)


def test_b_mag_verdict_names_the_points_beyond_seed_noise():
    comparisons = [
        Comparison(11.9, 11.9, 0.830, 0.817, 0.011),
        Comparison(40.6, 40.6, 0.921, 0.912, 0.011),
        Comparison(138, 138, 0.973, 0.971, 0.011),
    ]
    b_mag = findings.b_mag_verdict(comparisons, 1)
    assert b_mag.verdict == findings.MATTERS_SOMEWHERE
    assert b_mag.beyond == comparisons[:1] and b_mag.costs and b_mag.noise == 0.011
    # with lower-is-better (FVU) the same drops are gains
    assert not findings.b_mag_verdict(comparisons, -1).costs
    everywhere = [Comparison(10, 10, 0.8, 0.7, 0.01), Comparison(20, 20, 0.8, 0.9, 0.01)]
    b_mag = findings.b_mag_verdict(everywhere, 1)
    assert b_mag.verdict == findings.MATTERS_EVERYWHERE and not b_mag.costs
    unknown = [Comparison(10, 10, 0.8, 0.7, None)]
    assert findings.b_mag_verdict(unknown, 1).verdict == findings.NOISE_UNKNOWN
    # and in words: the verdict, the Δs and where
    assert b_mag_summary(findings.b_mag_verdict(comparisons, 1), "loss recovered") == (
        "**In short:** fixing b_mag at zero costs loss recovered (−0.013, −0.009, −0.002), by "
        "more than seed noise only at L0 ≈ 11.9 (1 of 3 compared points) and within it "
        "elsewhere: in this sweep b_mag matters there and nowhere else."
    )


def test_q2_finds_each_best_lr_the_frontier_margin_and_shrinkage(results):
    q2 = findings.analyse_q2(results)
    sweeps = {s.arch: s for s in q2.sweeps}
    assert list(sweeps) == ["relu", "gated", "topk", "jumprelu"]
    for arch in ("relu", "gated", "topk"):
        assert sweeps[arch].lrs == list(LRS)
        assert {s["lr"] for s in sweeps[arch].best} == {BEST_LR[arch]}
    assert sweeps["jumprelu"].lrs == [3e-4]
    # gated's best lr is the largest swept at every level, relu's is inside the range
    assert [s["sparsity_coef"] for s in sweeps["gated"].best_at_largest] == list(COEFS)
    assert not sweeps["gated"].best_at_smallest and not sweeps["relu"].best_at_largest
    assert q2.lr_counts == (3, 3)
    assert [(s["sparsity_coef"], r, g) for s, r, g in q2.best_lrs] == [
        (c, BEST_LR["relu"], BEST_LR["gated"]) for c in COEFS
    ]
    # the fidelity table: relu at λ = 1 (L0 80) loses 0.02 per lr step from 3e-4
    lrs, (arch, best, values) = q2.grid.lrs, q2.grid.rows[0]
    assert lrs == list(LRS) and arch == "relu" and best["sparsity_coef"] == 1.0
    assert values == pytest.approx([fidelity(80, -0.02), fidelity(80, 0), fidelity(80, -0.02)])
    # relu L0 16–80, gated 12–60: compared at 16, √(16·60), 60, gated 0.03 above
    assert [c.l0_ref for c in q2.frontier] == pytest.approx([16, math.sqrt(16 * 60), 60])
    assert [c.delta for c in q2.frontier] == pytest.approx([GATED_MARGIN] * 3)
    assert [c.verdict for c in q2.frontier] == ["larger than seed noise"] * 3
    assert q2.gated_ahead == 3
    # at one shared lr the margin is 0.03 − (gated's lr penalty − relu's)
    shared = {lr: c.delta for lr, c in q2.shared_lr}
    expected = {
        lr: GATED_MARGIN - lr_penalty("gated", lr) + lr_penalty("relu", lr) for lr in LRS
    }
    assert shared == pytest.approx(expected)
    gamma = q2.shrinkage
    assert gamma.gated_near_one and gamma.relu_below_one and gamma.relu_falling
    assert gamma.reproduces
    relu_gammas = [GAMMA["relu"][c] for c in COEFS]
    gated_gammas = [GAMMA["gated"][c] for c in COEFS]
    assert gamma.relu_mean == pytest.approx(sum(1 - g for g in relu_gammas) / 3)
    assert gamma.gated_mean == pytest.approx(sum(1 - g for g in gated_gammas) / 3)


def test_shrinkage_verdicts():
    def family(*gammas):
        return [
            {"gamma": g, "sparsity_coef": c, "k": None}
            for c, g in zip(COEFS, gammas, strict=True)
        ]

    flat = findings.shrinkage(family(0.9, 0.9, 0.9), family(1.04, 0.97, 1.0))
    assert flat.relu_below_one and not flat.relu_falling and flat.gated_near_one
    shrinking_gated = findings.shrinkage(family(0.9, 0.8, 0.7), family(0.99, 0.94, 0.99))
    assert not shrinking_gated.gated_near_one and not shrinking_gated.reproduces
    above = findings.shrinkage(family(1.01, 0.9, 0.8), family(1.0, 1.0, 1.0))
    assert not above.relu_below_one and above.relu_falling and not above.reproduces
    assert findings.shrinkage(family(0.9, math.nan, 0.8), family(1.0, 1.0, 1.0)) is None


def test_q3_finds_margins_at_equal_width_and_compute_and_the_trend(results):
    q3 = findings.analyse_q3(results)
    assert q3.widths["gated"] == [256, 512, 1024]
    assert q3.widths["relu"] == [256, 384, 512, 768, 1024, 1536]
    assert q3.d_in == D_IN and q3.expansion == [4, 6, 8, 12, 16, 24]
    assert q3.gated_widths == [256, 512, 1024] and q3.tokens == 250_000
    # equal compute: relu 1.5× wider gains 0.02·log2(1.5), so gated's margin shrinks by it
    expected = {
        "equal width": GATED_MARGIN,
        "equal compute": GATED_MARGIN - WIDTH_GAIN * math.log2(1.5),
    }
    for m in q3.margins:
        wide = {"equal width": m.width, "equal compute": m.width * 3 // 2}[m.setting]
        assert m.relu_width == wide
        assert [c.delta for c in m.comparisons] == pytest.approx([expected[m.setting]] * 3)
        assert all(c.verdict == "larger than seed noise" for c in m.comparisons)
    assert len(q3.margins) == 6
    for hold in q3.holds:
        assert hold.verdict == findings.EVERY_WIDTH and hold.ahead == [256, 512, 1024]
        assert not hold.noise_unknown
    # gated covers L0 12–60 and relu 16–80 at every width: read at the geometric middle
    gated, relu = q3.trends
    assert (gated.variant, relu.variant) == ("gated", "relu")
    assert gated.l0 == pytest.approx(math.sqrt(12 * 60))
    assert relu.l0 == pytest.approx(math.sqrt(16 * 80))
    for trend, margin in ((gated, GATED_MARGIN), (relu, 0.0)):
        assert [w for w, _ in trend.values] == [256, 512, 1024]
        gains = [WIDTH_GAIN * k for k in (-1, 0, 1)]
        assert [v for _, v in trend.values] == pytest.approx(
            [fidelity(trend.l0, margin + g) for g in gains]
        )
        assert trend.direction == findings.IMPROVES


def test_q3_gated_leads_at_some_widths_only(tmp_path):
    """Gated 0.05 lower at 1024 (0.02 behind relu at equal width) and no relu at 1536:
    equal width leads at 256 and 512 of 3 widths, equal compute at the 2 of 3 it measures,
    and gated's own fidelity rises then falls with width."""
    rows = [
        {**r, "loss_recovered": r["loss_recovered"] - 0.05}
        if r["variant"] == "gated" and r["d_sae"] == 1024
        else r
        for r in synthetic_rows()
        if r["d_sae"] != 1536
    ]
    q3 = findings.analyse_q3(sweep_results(write_sweep(tmp_path / "some", rows, RECORD)))
    equal_width, equal_compute = q3.holds
    assert equal_width.ahead == [256, 512] and equal_width.verdict == findings.SOME_WIDTHS
    assert equal_width.margins[-1][1].delta == pytest.approx(GATED_MARGIN - 0.05)
    assert [w for w, _ in equal_compute.margins] == [256, 512]
    assert equal_compute.verdict == findings.SOME_WIDTHS
    unmeasured = [m for m in q3.margins if not m.comparisons]
    assert [(m.width, m.setting, m.relu_width) for m in unmeasured] == [
        (1024, "equal compute", None)
    ]
    assert q3.trends[0].direction == findings.UNSTEADY
    assert q3.trends[1].direction == findings.IMPROVES


def test_ablation_off_the_gated_lrs_and_l0_range_is_compared_at_matched_coefficient(tmp_path):
    rows = []
    for r in synthetic_rows():
        if r["variant"] == "gated no b_mag":
            r = {**r, "lr": 5e-4, "l0": 10 * r["l0"]}  # no gated SAE at 5e-4; L0s 126–630
        rows.append(r)
    folder = write_sweep(tmp_path / "off", rows, RECORD)
    b_mag = findings.analyse_q1(sweep_results(folder)).ablations[0]
    assert b_mag.lrs == [5e-4] and not b_mag.gated_at_same_lrs
    assert {s["lr"] for s in b_mag.gated} == set(LRS)  # gated at every lr it was trained at
    comparisons = b_mag.comparisons
    assert [c.level for c in comparisons] == list(COEFS)
    # at λ = 3 gated's best row is at its best lr 1e-3 (L0 30), the ablation's at L0 315
    at_3 = comparisons[1]
    assert (at_3.l0_ref, at_3.l0_alt) == pytest.approx((30, 315))
    assert at_3.ref == pytest.approx(fidelity(30, GATED_MARGIN))
    md = write_report(folder)[0].read_text()
    q1 = _section(md, "Q1.")
    assert "the ablation at lr 5e-4, gated at its best lr (not trained at 5e-4)" in q1
    assert "compared at matched sparsity coefficient (the frontiers share no L0 range)" in q1
    assert "At λ = 3 (matched coefficient; L0 30 vs 315), fixing b_mag at zero" in q1


def test_q2_frontier_runs_over_all_learning_rates_not_the_best_lr_per_level(tmp_path):
    """Relu at lr 1e-3 loses to 3e-4 at every λ (0.02 lower) but reaches a quarter of the L0,
    which puts it 0.05·ln4 − 0.02 ≈ +0.049 above the 3e-4 curve at its own L0: its points
    belong on relu's frontier. Relu's frontier is then f(4·L0) − 0.02 from L0 4 to 20 and
    rises linearly in ln L0 to f(80) at L0 80; gated is f + 0.03 from L0 12 to 60."""
    rows = []
    for r in synthetic_rows():
        if r["variant"] == "relu" and r["d_sae"] == MAIN and r["lr"] == 1e-3:
            r = {**r, "l0": r["l0"] / 4}
        rows.append(r)
    q2 = findings.analyse_q2(sweep_results(write_sweep(tmp_path / "envelope", rows, RECORD)))
    assert {s["lr"] for s in q2.sweeps[0].best} == {BEST_LR["relu"]}  # per level, 3e-4 wins

    def relu(l0):
        if l0 <= 20:
            return fidelity(4 * l0, -0.02)
        return fidelity(80, -0.02) + 0.02 * math.log(l0 / 20) / math.log(4)

    grid = [12, math.sqrt(12 * 60), 60]
    assert [c.l0_ref for c in q2.frontier] == pytest.approx(grid)
    assert [c.delta for c in q2.frontier] == pytest.approx(
        [fidelity(x, GATED_MARGIN) - relu(x) for x in grid]
    )
    assert q2.gated_ahead == 1  # only at L0 60


def test_one_seed_and_no_loss_recovered_fall_back_to_fvu_with_unknown_noise(tmp_path):
    rows = [
        {**r, "loss_recovered": "", "ce_sae": ""}
        for r in synthetic_rows()
        if r["seed"] == 0 and r["d_sae"] == MAIN
    ]
    folder = write_sweep(tmp_path / "one", rows, RECORD)
    res = sweep_results(folder)
    assert (res.metric, res.sign) == ("fvu", -1)
    b_mag = findings.analyse_q1(res).b_mag
    assert b_mag.verdict == findings.NOISE_UNKNOWN and b_mag.noise is None
    # FVU = 1.2 − fidelity: the ablation's 0.002 loss is 0.002 more FVU
    assert [c.delta for c in b_mag.comparisons] == pytest.approx([0.002] * 3)
    md = write_report(folder)[0].read_text()
    assert "Fidelity is measured as FVU." in md
    assert "fixing b_mag at zero raises FVU" in _section(md, "Q1.")


def test_missing_questions_are_not_measured(tmp_path):
    only_relu = [r for r in synthetic_rows() if r["variant"] == "relu" and r["d_sae"] == MAIN]
    folder = write_sweep(tmp_path / "relu", only_relu)  # and no sweep.json
    res = sweep_results(folder)
    q1 = findings.analyse_q1(res)
    assert q1.ablations == [] and q1.b_mag is None
    assert findings.analyse_q2(res) is None
    q3 = findings.analyse_q3(res)
    assert q3.gated_widths == q3.margins == q3.holds == q3.trends == []
    assert q3.d_in is None and q3.tokens is None
    md = write_report(folder)[0].read_text()
    assert f"The gated ablations were {NOT_MEASURED_TEXT}." in _section(md, "Q1.")
    assert f"Relu and gated at the main width were {NOT_MEASURED_TEXT}." in _section(md, "Q2.")
    assert f"two or more widths were {NOT_MEASURED_TEXT}." in _section(md, "Q3.")
    assert f"Width scaling: {NOT_MEASURED_TEXT}." in md
    assert "sweep.json is missing or unreadable" in md
    assert (folder / "plots" / "pareto.png").is_file()


def test_empty_table_and_missing_table(tmp_path):
    md = write_report(write_sweep(tmp_path / "empty", [], RECORD))[0].read_text()
    assert md.count(NOT_MEASURED_TEXT) >= 8
    with pytest.raises(DataError, match="results.csv"):
        write_report(tmp_path / "nowhere")


# --- the report in words --------------------------------------------------------------------


def test_report_writes_the_findings_into_each_question(report):
    _, md, _ = report
    q1 = _section(md, "Q1.")
    assert "At d_sae = 512, both at lr 3e-4, compared at matched L0 (12.6, 27.5, 60):" in q1
    # gated at lr 3e-4: 0.70 + 0.05·ln 12.6 + 0.03 − 0.02 = 0.837; the ablation 0.002 lower
    assert (
        "- At L0 ≈ 12.6, fixing b_mag at zero lowers loss recovered from 0.837 to 0.835 "
        "(Δ −0.002); the seed spread at matched L0 is 0.004, so the difference is within "
        "seed noise."
    ) in q1
    assert (
        "- removing r_mag (W_mag = W_gate): Δ −0.010, −0.010, −0.010 in loss recovered at "
        "L0 ≈ 12.6, 27.5 and 60 (both at lr 3e-4; larger than seed noise at 3 of 3 points)."
    ) in q1
    assert "| λ = 3 | gated no b_mag | 3e-4 | 31.5 (0.0) | 0.320 (0.004) | 0.880 (0.004) |" in q1
    q2 = _section(md, "Q2.")
    # relu at λ = 1 (L0 80): 0.70 + 0.05·ln 80 = 0.919 at 3e-4, 0.02 less a step away
    assert "| relu | λ = 1 | 0.899 | **0.919** | 0.899 |" in q2
    assert (
        "- gated: swept lr 1e-4, 3e-4, 1e-3; best lr 1e-3 at λ = 1, λ = 3 and λ = 10. At λ = 1, "
        "λ = 3 and λ = 10 the best lr is the largest swept, so the optimum may lie outside "
        "the range."
    ) in q2
    assert "- jumprelu: only lr 3e-4 was trained, so its learning rate was not swept." in q2
    assert (
        "gated's frontier lies above relu's at all 3 compared points at matched L0 "
        "(16, 31, 60), by +0.030, +0.030, +0.030 in loss recovered "
        "(larger than seed noise at 3 of 3 points)"
    ) in q2
    assert "The paper's shrinkage finding (gated γ ≈ 1, relu γ < 1) reproduces here." in q2
    q3 = _section(md, "Q3.")
    assert "d_in = 64, so the expansion factors d_sae/d_in are 4, 6, 8, 12, 16, 24." in q3
    assert (
        "**In short:** At equal width, gated leads at every width trained: margins +0.030 at "
        "256, +0.030 at 512, +0.030 at 1024. At equal compute, gated leads at every width "
        "trained: margins +0.018 at 256, +0.018 at 512, +0.018 at 1024."
    ) in q3
    assert "| 512 | equal compute | 768 | L0 ≈ 31 |" in q3
    assert "undertraining" not in q3


def test_report_states_the_noise_rule_and_how_it_was_run(report):
    folder, md, _ = report
    assert "|Δ| ≤ the larger seed noise of the two families" in md
    assert "at matched λ the seeds' L0s differ" in md
    run = _section(md, "How this was run")
    assert "model: `smollm2-135m`, site: `blocks.15.hook_resid_post`" in run
    assert "training tokens per SAE: 250,000" in run
    assert f"gated-sae sweep CONFIG --out {folder}" in run
    assert f"gated-sae report {folder}" in run
    assert "torch 2.13.0" in run and "main_width: 512" in run


def test_the_committed_report_rebuilds_from_its_results(tmp_path):
    """results/questions-smollm2-cpu/report.md is what `gated-sae report` writes from the
    results.csv and sweep.json beside it (run in /work/runs/q8; the plots' bytes depend on
    the matplotlib version, so only the text is compared)."""
    committed = Path(__file__).parents[1] / "results" / "questions-smollm2-cpu"
    folder = tmp_path / "q8"
    folder.mkdir()
    for name in ("results.csv", "sweep.json"):
        shutil.copy(committed / name, folder / name)
    md = write_report(folder)[0].read_text()
    assert md.replace(str(folder), "/work/runs/q8") == (committed / "report.md").read_text()


def test_report_writes_every_plot_and_leaves_no_temporary_files(report):
    folder, md, _ = report
    names = {"pareto.png", "lr_sensitivity.png", "gamma.png", "dead.png", "width.png"}
    assert {p.name for p in (folder / "plots").iterdir()} == names
    for name in names:
        assert f"](plots/{name})" in md
        with Image.open(folder / "plots" / name) as image:
            assert image.size[0] >= 600 and image.size[1] >= 400
    assert not [p for p in folder.rglob(".*")]
    assert NOT_MEASURED_TEXT not in md


class _PageParts(html.parser.HTMLParser):
    """Tags and URL-bearing attributes of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]


def test_html_is_self_contained_and_every_image_decodes(report):
    _, _, page = report
    parts = _PageParts()
    parts.feed(page.read_text())
    assert "script" not in parts.tags and "link" not in parts.tags
    assert len(parts.urls) == 5 and parts.tags.count("img") == 5
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
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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
            headings = {tag: page.locator(tag).all_inner_texts() for tag in ("h1", "h2", "h3")}
            table_count = page.locator("table").count()
        finally:
            browser.close()
    assert not errors, errors
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    assert title == headings["h1"][0]
    assert title == "Gated SAE questions: smollm2-135m blocks.15.hook_resid_post"
    assert len(images) == 5 and all(done and width > 0 for done, width, _ in images), images
    assert headings["h2"] == [
        "Q1. Is b_mag still necessary in the Gated SAE?",
        "Q2. Were learning rates swept for the baseline as well as for the Gated SAE?",
        "Q3. How large is the dictionary, and does the result hold as it grows?",
        f"Results at the main width (d_sae = {MAIN})",
        "Plots",
        "How this was run",
    ]
    plots = ["Pareto frontiers", "Learning-rate sensitivity", "Shrinkage", "Dead latents"]
    assert headings["h3"][-5:] == [*plots, "Width scaling"]
    assert table_count == 4  # ablations, learning rates, widths, results at the main width
