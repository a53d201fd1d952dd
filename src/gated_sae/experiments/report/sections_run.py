"""The report's other sections as blocks: the introduction, training (convergence, excluded
runs), the results at the main width, the paper's settings beside ours, compute, what the
data do not settle, and how the sweep was run."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from ...saes import sae_class
from ..pareto import sparsity_level
from ..results import CONVERGENCE_REACH, CONVERGENCE_TOLERANCE
from . import formatting as fmt
from . import paper, prose
from .analysis import Findings
from .findings import MIN_SEEDS, outcome
from .model import BASE_ARCHS, DEAD_LIMIT, SweepResults, finite
from .render import Block
from .sections import Images, figure
from .stats import interval
from .training import Compute, Convergence


def intro(res: SweepResults, findings: Findings) -> list[Block]:
    text = (
        f"{len(res.rows)} SAEs in {len(res.configs)} healthy configurations (variant, width, "
        f"learning rate, sparsity level; the seeds are replicates); variants: "
        f"{', '.join(res.variants()) or 'none'}; main width d_sae = {res.main_width}."
    )
    if res.skipped:
        text += f" {res.skipped} rows without a width, lr or sparsity level were left out."
    if res.metric != "loss_recovered":
        text += " Loss recovered was not measured: learning rates are chosen on FVU."
    return [("p", text), ("h2", "How to read this report"),
            *(("p", t) for t in prose.methods(res, findings))]


def _run_cells(r: dict) -> list[str]:
    level = f"k = {r['k']}" if r["k"] is not None else f"λ = {r['sparsity_coef']:g}"
    return [f"`{r['name']}`", r["variant"], str(r["d_sae"]), fmt.lr(r["lr"]), level,
            str(r["seed"])]


def section_training(res: SweepResults, conv: Convergence, images: Images) -> list[Block]:
    blocks: list[Block] = [("h2", "Training: convergence and dead latents")]
    if conv.recorded:
        blocks.append(("p", (
            f"Criterion: twice the training tokens moved held-out loss recovered at the SAE's "
            f"L0 by less than {CONVERGENCE_TOLERANCE}. Every SAE has a half-budget twin: a copy "
            "taken where a run of half its tokens would begin its lr decay, decayed as that "
            "run would be, evaluated, and dropped. The SAE at the end of its run is compared "
            "with its family's frontier of twins (the SAEs that differ from it only in "
            "sparsity level), read at its L0 on the frontier's upper envelope, at most "
            f"{CONVERGENCE_REACH:g}× in L0 past its ends; at a fixed λ the L0 moves as an "
            "SAE trains, so its own twin is not the comparison. "
            f"{len(conv.failed)} of {conv.recorded} SAEs fail it ({conv.unreadable} of them "
            "because their L0 lies beyond that reach, or they never fired); "
            f"{fmt.plural(len(conv.on_frontiers), 'frontier point')} with such a run (marked "
            f"{fmt.UNCONVERGED_MARK} in the tables, hollow in the figures).")))
        if conv.drifts:
            blocks.append(("p", "Per variant, width and learning rate (healthy runs): a "
                           "frontier still rising with more tokens shows as a positive "
                           "median; a spread of both signs around a median near zero is "
                           "noise, of training and of the curves' few held-out predictions."))
            blocks.append(("table", ["variant", "d_sae", "lr", "SAEs", "meet it",
                                     "Δ loss recovered: median [smallest, largest]",
                                     "Δ FVU / FVU: median"],
                           [[d.variant, str(d.width), fmt.lr(d.lr), str(d.saes), str(d.passed),
                             f"{fmt.signed(d.lr_change[0])} [{fmt.signed(d.lr_change[1])}, "
                             f"{fmt.signed(d.lr_change[2])}]", fmt.signed(d.fvu_change)]
                            for d in conv.drifts]))
        if conv.failed:
            body = [[*_run_cells(r), fmt.signed(r.get("lr_change")),
                     fmt.signed(r.get("fvu_change"))] for r in conv.failed]
            blocks.append(("table", ["SAE", "variant", "d_sae", "lr", "sparsity", "seed",
                                     "Δ loss recovered at matched L0, ½ → all tokens",
                                     "Δ FVU / FVU at matched L0, ½ → all tokens"], body))
    else:
        blocks.append(("p", f"Convergence was {fmt.NOT_MEASURED}."))
    blocks += figure(images, "budget_frontiers.png", "Frontiers of half and of all the tokens",
                     "Held-out FVU against L0 of every run's half-budget twin (hollow, dashed: "
                     "mean per level) and of its end (filled, solid), one panel per family: "
                     "what the criterion compares.")
    for metric in ("fvu", "loss_recovered"):
        blocks += figure(images, f"curves_{metric}.png", f"Training curves ({fmt.metric(metric)})",
                         f"Held-out {fmt.metric(metric)} against training tokens for every run "
                         "on a frontier, one panel per family: the line joins its half-budget "
                         "twin and its end (both lr decayed), dots mark it at constant lr. At a "
                         "fixed λ the L0 falls as the SAE trains, so a flat line here can hide "
                         "a frontier that still moves (the figure above).")
    blocks.append(("h3", "Excluded runs"))
    if not res.dead_measured:
        blocks.append(("p", f"Dead latents over the training stream were {fmt.NOT_MEASURED}: "
                            "no run is excluded."))
    elif not res.excluded:
        blocks.append(("p", f"No run has more than {DEAD_LIMIT:.0%} of its latents dead."))
    else:
        body = [[*_run_cells(r), f"{r['train_dead_fraction']:.2f}",
                 fmt.count(int(r["train_dead_tokens"])) if finite(r.get("train_dead_tokens"))
                 else "n/a", fmt.l0(r["l0"])] for r in res.excluded]
        blocks += [
            ("p", f"{len(res.excluded)} runs have more than {DEAD_LIMIT:.0%} of their latents "
                  "dead over the last window of their training stream: failures of their "
                  "configuration, on no frontier."),
            ("table", ["SAE", "variant", "d_sae", "lr", "sparsity", "seed", "dead fraction",
                       "window (tokens)", "L0"], body),
        ]
    return blocks + figure(images, "dead.png", "Dead latents",
                           "Every run's dead fraction over the training stream's last window; "
                           "runs above the dotted line are excluded.")


def results_table(res: SweepResults) -> list[Block]:
    head = ["variant", "sparsity", "lr", "seeds", "L0", "loss recovered", "Δloss", "FVU", "γ",
            "centred γ", "dead (train)"]
    body = []
    for variant in res.variants(res.main_width):
        family = res.families[(variant, res.main_width)]
        edge = family.choice.edge
        for c in family.points:
            lr = fmt.lr(c.lr) + (f" ({edge})" if edge else "")
            body.append([variant, fmt.flagged(c, fmt.level(c)), lr, str(c.seeds),
                         *(fmt.interval(interval(c.draws[m]), 1 if m == "l0" else 3)
                           for m in ("l0", "loss_recovered", "delta_loss", "fvu", "gamma",
                                     "gamma_centred")),
                         fmt.num(c.dead, 2)])
    return [
        ("h2", f"Results at the main width (d_sae = {res.main_width})"),
        ("p", "Each variant at its chosen lr (in brackets: at an end of the swept range), "
              "mean over healthy seeds, with 95% bootstrap intervals."),
        ("table", head, body),
    ]


def section_paper(res: SweepResults, f: Findings) -> list[Block]:
    ours = _ours(res, f)
    settings = [[p.topic, p.text, ours.get(k, "–"), p.source] for k, p in paper.SETTINGS.items()]
    results = [[p.topic, p.text, ours.get(k, "–"), p.source] for k, p in paper.RESULTS.items()]
    scaling = [[p.topic, p.text, ours.get(k, "–"), p.source] for k, p in paper.SCALING.items()]
    head = ["", "published", "this sweep", "where"]
    return [
        ("h2", "The paper's settings beside ours"),
        ("p", f"Settings and results of {paper.GATED_PAPER}, paraphrased from the paper, with "
              "where each is stated:"),
        ("table", head, settings),
        ("table", head, results),
        ("p", f"Width scaling, {paper.SCALING_PAPER}:"),
        ("table", head, scaling),
    ]


def _lr_sweep(res: SweepResults, variant: str, width: int) -> str:
    """The lrs swept for `variant` at `width` (dead runs' too), each with the number of its
    sparsity levels where it did not run at all of them."""
    levels: dict[float, set] = {}
    for r in res.rows:
        if r["variant"] == variant and r["d_sae"] == width:
            levels.setdefault(r["lr"], set()).add(sparsity_level(r))
    every = len(set().union(*levels.values()))
    return f"{variant} " + ", ".join(
        fmt.lr(lr) + ("" if len(at) == every else f" (at {len(at)} of {every} levels)")
        for lr, at in sorted(levels.items())
    )


def _ours(res: SweepResults, f: Findings) -> dict[str, str]:
    width = res.main_width
    lrs = [_lr_sweep(res, v, width) for v in BASE_ARCHS if (v, width) in res.swept]
    betas = sorted({f"{v}: {sae_class(v).adam_betas}" for v in BASE_ARCHS
                    if any(c.variant == v for c in res.configs)})
    tokens = "; ".join(f"{w}: {', '.join(fmt.count(t) for t in ts)}"
                       for w, ts in f.q3.tokens.items())
    eval_tokens = sorted({int(r["eval_tokens"]) for r in res.rows if finite(r["eval_tokens"])})
    lm = sorted({int(r["lm_eval_tokens"]) for r in res.rows if finite(r.get("lm_eval_tokens"))})
    out = {
        "learning rate": "swept at every sparsity level unless counted: " + "; ".join(lrs),
        "optimiser": "Adam with (β1, β2) " + "; ".join(betas),
        "batch size": fmt.count(res.config.get("batch_size")),
        "training tokens": f"per SAE by width: {tokens}" if tokens else "n/a",
        "dictionary size": ", ".join(str(w) for w in sorted({r['d_sae'] for r in res.rows})),
        "equal compute": ", ".join(f"gated {g} against relu {r}" for g, r, _ in
                                   f.q3.equal_compute) or "not trained",
        "held-out evaluation": f"{', '.join(fmt.count(t) for t in eval_tokens)} tokens "
        f"(activation metrics); {', '.join(fmt.count(t) for t in lm) or 'n/a'} predictions "
        "(LM metrics)",
        "convergence": f"{f.convergence.recorded - len(f.convergence.failed)} of "
        f"{f.convergence.recorded} SAEs meet the criterion",
    }
    if f.q2 is not None:
        out["frontier"] = prose.compare_sentence(f.q2.differences, res.metric, "gated", "relu")
        ratio = prose.ratio_sentence(f.q2.ratios, "loss_recovered")
        out["L0 ratio"] = ratio or fmt.NOT_MEASURED
        out["shrinkage"] = prose.shrinkage_outcome(f.q2)
    words = {"better": "better than gated", "worse": "worse than gated",
             "none": "no detectable difference from gated", "unknown": "no interval",
             "mixed": "better than gated at some L0s, worse at others", "": "not compared"}
    out["ablations"] = "; ".join(
        f"{prose.ablation_name(a.variant)}: {words[outcome(a.differences)]}"
        + (" (indicative)" if a.seeds < MIN_SEEDS else "") for a in f.q1.ablations
    ) or fmt.NOT_MEASURED
    out["law"] = "; ".join(f"{x.variant} at L0 {fmt.l0(x.l0)}: b = {fmt.interval(x.exponent, 2)}"
                           for x in f.q3.fits if x.law is not None) or fmt.NOT_MEASURED
    out["tokens"] = "tokens per latent by width: " + "; ".join(
        f"{w}: {', '.join(f'{t / w:,.0f}' for t in ts)}" for w, ts in f.q3.tokens.items())
    return out


def section_compute(c: Compute) -> list[Block]:
    def seconds(x) -> str:
        return f"{x:,.0f} s ({x / 60:.1f} min)" if finite(x) else "not recorded"

    machine = ", ".join(f"{k}: {v}" for k, v in c.machine.items()) or "not recorded"
    facts = [
        f"machine: {machine}",
        f"whole sweep (cache, training, evaluation): {seconds(c.total_seconds)}; of which the "
        f"activation cache: {seconds(c.cache_seconds)}",
        f"training steps, summed over SAEs (each SAE's share of its pass): "
        f"{seconds(c.train_seconds)}",
    ]
    body = [[str(w.width), str(w.saes), ", ".join(fmt.count(t) for t in w.tokens),
             ", ".join(f"{t:,.0f}" for t in w.tokens_per_latent),
             fmt.num(w.train_seconds, 1), fmt.num(w.eval_seconds, 1)] for w in c.widths]
    return [
        ("h2", "Compute"),
        ("ul", facts),
        ("table", ["d_sae", "SAEs", "tokens per SAE", "tokens per latent",
                   "training s per SAE", "evaluation s per SAE"], body),
    ]


def section_unsettled(f: Findings, res: SweepResults) -> list[Block]:
    items = prose.unsettled_items(f, res.metric)
    return [
        ("h2", "What the data do not settle"),
        ("ul", items) if items else ("p", "Nothing in this sweep is flagged as unsettled."),
        ("p", "The run that would settle these is the same design at GPU scale: "
              "`gated-sae sweep --preset paper` (more tokens per latent, wider dictionaries, "
              "more seeds at every compared point), then `gated-sae report` on its folder."),
    ]


def section_run(res: SweepResults, sweep_dir: Path) -> list[Block]:
    cfg = res.config
    blocks: list[Block] = [("h2", "How this was run")]
    if not cfg:
        blocks.append(("p", "sweep.json is missing or unreadable: the settings were not recorded."))
    else:
        versions = res.record.get("versions")
        versions = versions if isinstance(versions, dict) else {}
        seeds = sorted({r["seed"] for r in res.rows if r["seed"] is not None})
        facts = [
            f"model: `{cfg.get('model', 'n/a')}`, site: `{cfg.get('site', 'n/a')}`",
            f"dataset: `{cfg.get('dataset', 'n/a')}`",
            f"batch size: {cfg.get('batch_size', 'n/a')}; seeds run: "
            f"{', '.join(map(str, seeds)) or 'n/a'}",
            f"SAEs in results.csv: {len(res.rows)}; main width: {res.main_width}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"created: {res.record.get('created', 'n/a')}",
        ]
        blocks.append(("ul", facts))
    blocks.append(("p", "To rerun, save the config below as CONFIG (YAML) and run:"))
    folder = shlex.quote(str(sweep_dir))
    blocks.append(("pre", f"gated-sae sweep CONFIG --out {folder}\ngated-sae report {folder}"))
    if cfg:
        blocks.append(("pre", yaml.safe_dump(cfg, sort_keys=False).rstrip()))
    return blocks
