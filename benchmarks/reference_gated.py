"""Our Gated SAE trainer against the reference implementation, dictionary_learning's
`GatedSAETrainer` (issue 10, point 8), on the same batches, measured the same way.

For each seed, both implementations train on the same stream of batches: the activation cache's
shuffled batches (`cache_batches`, that seed), multiplied by the input scale our trainer
estimates on its first 64k tokens (`estimate_input_scale`). Same width, lr, λs, batch size and
steps. Ours is our `Trainer` as a sweep runs it: lr warmup over `--lr-warmup-steps`, our
default lr decay over the last 20% of steps and λ warmup over the first 5%, b_dec starting
at the mean of the scale sample; each `--variants` entry changes one or two things of it
(VARIANTS). Theirs is
`GatedSAETrainer.update(step, x)` with its own defaults but for its warmups, which by default
outlast a short run: its lr warms up over the same steps as ours and its λ over the same 5%.
It has no lr decay (its default) and starts b_dec at zero.

Their trained `GatedAutoEncoder` becomes our `GatedSAE` (`reference_to_gated`, exact: the
same parameters under our names); every SAE, input scale folded in, is measured by our
held-out evaluation: per-window sums (evaluate/heldout.py) on `--heldout-windows` held-out
windows of the cache's corpus read through its model, positions from `--skip-positions` on.

Comparison (the report's statistics, experiments/report/stats.py and pareto.py): each
implementation's frontier is its λ points, the metrics of a point averaged over seeds. A
bootstrap replicate draws the held-out windows (shared) and each implementation's seeds
(whole frontiers) with replacement. Frontiers are read at matched L0s √2 apart (as the
report reads them: linear in log L0 between neighbouring points ≤ 2.5× apart, never
extrapolated, and only where 95% of the replicates can be read); the FVU
ratio there, the L0 ratio at equal FVU and the L0 ratio at equal λ each get a 95% interval.

Trained SAEs and their window sums are kept under `--work`, in a folder per training setting
(one cache per work folder); a rerun trains only the seeds and λs it does not find there. The
summary goes to `--out` under `--label`, next to the other settings already there.

The committed results (`make bench` installs dictionary-learning; the cache is SmolLM2-135M's
blocks.15.hook_resid_post on builtin:python-source, 300k tokens; 1 thread):

    B="python benchmarks/reference_gated.py --cache CACHE"
    $B --label short --variants ours,ours-bdec0      # the reviewer's setting, λ 1–4
    $B --label short-seed0-variants --seeds 0 \
       --variants ours,ours-bdec0,ours-nodecay,ours-bdec0-nodecay
    $B --label long --d-sae 1152 --batch-size 512 --steps 600 --lambdas 1,1.8,3.2 \
       --variants ours,ours-bdec0
    $B --label short-1152-seed0 --d-sae 1152 --batch-size 512 --steps 195 \
       --lambdas 1,1.8,3.2 --seeds 0 --variants ours,ours-bdec0
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from peer_steps import _dictionary_learning_trainers, peer_versions

import gated_sae  # noqa: I001  (first: it sets KMP_BLOCKTIME before torch loads)
from gated_sae.data.batches import cache_batches
from gated_sae.data.cache import load_cache
from gated_sae.data.lm import load_model
from gated_sae.data.source import ActivationSource
from gated_sae.evaluate.heldout import ACTIVATION_SUMS, sae_window_sums, shared_window_sums
from gated_sae.evaluate.pipeline import heldout_windows, site_activations
from gated_sae.experiments.pareto import fidelity_targets, interpolate, l0_at, readable
from gated_sae.experiments.report.stats import interval, resample_counts, window_metrics
from gated_sae.saes import SAE, load_sae
from gated_sae.saes.gated import GatedSAE
from gated_sae.train.trainer import (
    SCALE_SAMPLE_TOKENS,
    SAEConfig,
    TrainConfig,
    Trainer,
    estimate_input_scale,
)

RESULTS = Path(__file__).resolve().parent / "results" / "reference_gated.json"
REFERENCE = "theirs"
MATCHED_L0S = tuple(round(10 * 2 ** (j / 2)) for j in range(12))  # 10, 14, 20, … 453
SPARSITY_WARMUP_FRACTION = TrainConfig.__dataclass_fields__["sparsity_warmup_fraction"].default
# Controlled variants of our trainer, one change or two each: TrainConfig settings, and whether
# b_dec starts at zero (as theirs does) instead of the mean of the scale sample (ours).
VARIANTS: dict[str, dict] = {
    "ours": {},
    "ours-bdec0": {"b_dec_zero": True},
    "ours-nodecay": {"train": {"lr_decay_fraction": 0.0}},  # their lr schedule's shape
    "ours-bdec0-nodecay": {"b_dec_zero": True, "train": {"lr_decay_fraction": 0.0}},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="activation cache folder (gated-sae cache)")
    p.add_argument("--skip-positions", type=int, default=2)
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=195)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-warmup-steps", type=int, default=30, help="both implementations")
    p.add_argument("--lambdas", default="1,2,3,4", help="sparsity coefficients, comma-separated")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="ours",
                   help=f"of ours, comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--heldout-windows", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="short", help="this setting's name in --out")
    p.add_argument("--work", type=Path, default=Path("runs/reference_gated"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    args.lambdas = [float(v) for v in args.lambdas.split(",")]
    args.seeds = [int(v) for v in args.seeds.split(",")]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; accepted: {', '.join(VARIANTS)}")
    return args


# --- the reference -----------------------------------------------------------------------------


@torch.no_grad()
def reference_to_gated(ae) -> GatedSAE:
    """dictionary_learning's `GatedAutoEncoder` as our `GatedSAE`, computing the same function.

    Both centre the input by the decoder bias and tie the magnitude path to the gate's
    encoder by `exp(r_mag)`; theirs keeps `nn.Linear` weights, [d_sae, d_in] for the encoder
    and [d_in, d_sae] for the decoder, ours `W_enc` [d_in, d_sae] and `W_dec` [d_sae, d_in].
    """
    sae = GatedSAE(ae.activation_dim, ae.dict_size)
    for ours, theirs in (
        (sae.W_enc, ae.encoder.weight.T),
        (sae.W_dec, ae.decoder.weight.T),
        (sae.b_dec, ae.decoder_bias),
        (sae.b_gate, ae.gate_bias),
        (sae.b_mag, ae.mag_bias),
        (sae.r_mag, ae.r_mag),
    ):
        ours.copy_(theirs)
    return sae


def reference_trainer(args: argparse.Namespace, d_in: int, coef: float, seed: int):
    """Their `GatedSAETrainer` for one λ; its warmups as ours, no lr decay (its default)."""
    trainers = _dictionary_learning_trainers()
    return trainers.GatedSAETrainer(
        steps=args.steps, activation_dim=d_in, dict_size=args.d_sae, layer=0,
        lm_name="reference_gated", lr=args.lr, l1_penalty=coef,
        warmup_steps=args.lr_warmup_steps,
        sparsity_warmup_steps=int(SPARSITY_WARMUP_FRACTION * args.steps) or None,
        seed=seed, device="cpu",
    )


# --- training ----------------------------------------------------------------------------------


def lambda_name(coef: float) -> str:
    return f"lambda{coef:g}"


def trained_run(base: Path, coef: float) -> Path | None:
    """The finished run under `base` that trained the SAE of this λ, if any."""
    for done in sorted(base.glob("run-*/done.json")):
        if lambda_name(coef) in json.loads(done.read_text())["seconds"]:
            return done.parent
    return None


def finish_run(folder: Path, seconds: dict[float, float], scale: float) -> None:
    """Mark a run finished: its SAEs' training seconds by λ, and the input scale."""
    by_name = {lambda_name(c): s for c, s in seconds.items()}
    record = {"seconds": by_name, "input_scale": scale}
    (folder / "done.json").write_text(json.dumps(record) + "\n")


def train_ours(args, cache, seed: int, variant: str, coefs: list[float], folder: Path) -> float:
    """Train our SAEs of one seed and variant, one per λ of `coefs`, in `folder`; returns the
    input scale our trainer estimated."""
    change = VARIANTS[variant]
    config = TrainConfig(
        saes=[SAEConfig("gated", args.d_sae, lr=args.lr, sparsity_coef=c, name=lambda_name(c))
              for c in coefs],
        batch_size=args.batch_size, tokens=args.steps * args.batch_size, seed=seed,
        lr_warmup_steps=args.lr_warmup_steps, checkpoint_every=0, log_every=args.steps,
        **change.get("train", {}),
    )
    # b_dec keeps its zero initialisation when init_from_data does nothing.
    zero = mock.patch.object(GatedSAE, "init_from_data", lambda self, sample: None)
    with zero if change.get("b_dec_zero") else nullcontext():
        Trainer(config, folder).fit(
            cache_batches(cache, args.batch_size, seed, skip_positions=args.skip_positions)
        )
    record = json.loads((folder / "run.json").read_text())
    step_seconds = record["timing"]["step_seconds"]
    finish_run(folder, {c: step_seconds[lambda_name(c)] for c in coefs}, record["input_scale"])
    return record["input_scale"]


def input_scale(args, cache, seed: int) -> float:
    """The scale our trainer estimates, on the same first batches of the stream."""
    stream = iter(cache_batches(cache, args.batch_size, seed, skip_positions=args.skip_positions))
    count = max(1, min(args.steps, -(-SCALE_SAMPLE_TOKENS // args.batch_size)))
    return estimate_input_scale(torch.cat([next(stream) for _ in range(count)]))


def train_theirs(args, cache, seed: int, coefs: list[float], scale: float, folder: Path) -> None:
    """Train their SAEs of one seed, one per λ of `coefs`, and save them in `folder` as ours
    (input scale folded in)."""
    trainers = {c: reference_trainer(args, cache.d_in, c, seed) for c in coefs}
    seconds = dict.fromkeys(coefs, 0.0)
    stream = cache_batches(cache, args.batch_size, seed, skip_positions=args.skip_positions)
    for step, batch in zip(range(args.steps), stream, strict=False):
        x = batch.to(torch.float32) * scale
        for c, trainer in trainers.items():
            started = time.perf_counter()
            trainer.update(step, x)
            seconds[c] += time.perf_counter() - started
    for c, trainer in trainers.items():
        sae = reference_to_gated(trainer.ae)
        sae.fold_input_scale_(scale)
        sae.save(folder / lambda_name(c))
    finish_run(folder, seconds, scale)


# --- measuring ---------------------------------------------------------------------------------


def heldout_activations(args, cache) -> torch.Tensor:
    """The site's activations [W, T, d_in] on held-out windows of the cache's corpus, kept
    in the work folder."""
    path = args.work / f"heldout-{args.heldout_windows}-skip{args.skip_positions}.pt"
    if path.is_file():
        return torch.load(path)
    source = ActivationSource.of_cache(cache.manifest)
    lm = load_model(source.model, dtype=cache.manifest["config"].get("model_dtype"))
    windows = heldout_windows(lm, source, n_windows=args.heldout_windows)
    acts = site_activations(lm, source.site, windows, args.skip_positions)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(acts, path)
    return acts


def window_sums(sae: SAE, acts: torch.Tensor, mu: torch.Tensor, path: Path) -> dict:
    """The SAE's per-window sums and dead fraction on the held-out activations, kept at `path`."""
    if path.is_file():
        return dict(np.load(path))
    sums, fires = sae_window_sums(sae, acts, mu, max(1, 4096 // acts.shape[1]))
    sums["dead_fraction"] = np.float64((fires == 0).double().mean())
    np.savez(path, **sums)
    return sums


def run_settings(args) -> str:
    """The name of the folder of the runs of these training settings (one cache per --work)."""
    return (f"d{args.d_sae}-batch{args.batch_size}-steps{args.steps}-lr{args.lr:g}"
            f"-warmup{args.lr_warmup_steps}-skip{args.skip_positions}")


def run_seed(args, cache, acts, mu, seed: int) -> list[dict]:
    """Train (the λs not trained before) and measure every implementation on one seed: one
    row per (implementation, λ)."""
    scale = input_scale(args, cache, seed)
    rows = []
    for who in [*args.variants, REFERENCE]:
        base = args.work / run_settings(args) / f"seed{seed}" / who
        missing = [c for c in args.lambdas if trained_run(base, c) is None]
        if missing:
            folder = base / ("run-" + ",".join(f"{c:g}" for c in missing))
            if who == REFERENCE:
                train_theirs(args, cache, seed, missing, scale, folder)
            elif (ours := train_ours(args, cache, seed, who, missing, folder)) != scale:
                raise RuntimeError(f"our trainer's input scale {ours} is not {scale}")
        for coef in args.lambdas:
            folder = trained_run(base, coef)
            seconds = json.loads((folder / "done.json").read_text())["seconds"]
            sae = load_sae(folder / lambda_name(coef))
            name = f"sums-{args.heldout_windows}-{lambda_name(coef)}.npz"
            rows.append({"who": who, "seed": seed, "lambda": coef,
                         "train_seconds": seconds[lambda_name(coef)],
                         "sums": window_sums(sae, acts, mu, folder / name)})
        print(f"seed {seed}: {who} done", flush=True)
    return rows


# --- comparing ---------------------------------------------------------------------------------


def frontiers(rows: list[dict], shared: dict, args) -> dict[str, dict[str, np.ndarray]]:
    """Each implementation's L0 and FVU per λ, [R + 1, n_λ]: row 0 the estimate (every window
    and seed once), the rest bootstrap replicates over windows (shared) and seeds."""
    rng = np.random.default_rng(0)
    windows = resample_counts(rng, len(shared["window_tokens"]))
    heldout = {**shared, **{k: np.stack([r["sums"][k] for r in rows]) for k in ACTIVATION_SUMS}}
    metrics = window_metrics(heldout, windows, np.ones((len(windows), 0)))
    out = {}
    for who in dict.fromkeys(r["who"] for r in rows):
        seeds = resample_counts(rng, len(args.seeds))  # whole frontiers, per implementation
        front = {"l0": [], "fvu": []}
        for coef in args.lambdas:
            index = [next(i for i, r in enumerate(rows)
                          if (r["who"], r["seed"], r["lambda"]) == (who, s, coef))
                     for s in args.seeds]
            for name in front:
                per_seed = metrics[name][:, index]
                front[name].append((per_seed * seeds).sum(1) / seeds.sum(1))
        out[who] = {name: np.stack(v, axis=1) for name, v in front.items()}
    return out


def summary(draws: np.ndarray) -> dict:
    iv = interval(draws)
    return {"value": iv.value, "low": iv.low, "high": iv.high}


def compare(a: dict, b: dict, lambdas: list[float]) -> dict:
    """`a` against `b`: FVU ratio a/b at matched L0s, L0 ratio a/b at equal FVU and at equal λ."""
    fvu_a, fvu_b = ({at: interpolate(f["l0"], f["fvu"], at) for at in MATCHED_L0S} for f in (a, b))
    at_l0 = [{"l0": at, "fvu_ratio": summary(fvu_a[at] / fvu_b[at])} for at in MATCHED_L0S
             if readable(fvu_a[at]) and readable(fvu_b[at])]
    fronts = [(a["l0"], a["fvu"]), (b["l0"], b["fvu"])]
    at_fvu = [{"fvu": t, "l0_ratio": summary(l0_at(a["l0"], a["fvu"], t)
                                             / l0_at(b["l0"], b["fvu"], t))}
              for t in fidelity_targets(fronts)]
    at_lambda = [{"lambda": c, "l0_ratio": summary(a["l0"][:, j] / b["l0"][:, j])}
                 for j, c in enumerate(lambdas)]
    return {"matched_l0": at_l0, "equal_fvu": at_fvu, "equal_lambda": at_lambda}


def analyse(args, rows: list[dict], shared: dict) -> dict:
    fronts = frontiers(rows, shared, args)
    points = {who: [{"lambda": c, "l0": summary(f["l0"][:, j]), "fvu": summary(f["fvu"][:, j])}
                    for j, c in enumerate(args.lambdas)] for who, f in fronts.items()}
    pairs = [(who, REFERENCE) for who in args.variants]
    pairs += [(who, "ours") for who in args.variants if who != "ours" and "ours" in fronts]
    comparisons = [{"a": a, "b": b, **compare(fronts[a], fronts[b], args.lambdas)}
                   for a, b in pairs]
    runs = [{k: v for k, v in r.items() if k != "sums"}
            | {"fvu": float(r["sums"]["err_sq"].sum() / shared_variance(shared)),
               "l0": float(r["sums"]["active"].sum() / shared["window_tokens"].sum()),
               "dead_fraction": float(r["sums"]["dead_fraction"])} for r in rows]
    return {"frontiers": points, "comparisons": comparisons, "runs": runs}


def shared_variance(shared: dict) -> float:
    n = shared["window_tokens"].sum()
    return float(shared["x_sq"].sum() - 2 * shared["x_mu"].sum() + n * shared["mu_sq"])


def ratio_text(s: dict) -> str:
    return f"{s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def print_tables(result: dict) -> None:
    print(f"\n{'implementation':<22}{'λ':>5}{'L0':>28}{'FVU':>28}")
    for who, points in result["frontiers"].items():
        for p in points:
            l0, fvu = p["l0"], p["fvu"]
            print(f"{who:<22}{p['lambda']:>5g}{l0['value']:>9.1f} [{l0['low']:7.1f}, "
                  f"{l0['high']:7.1f}]{fvu['value']:>10.4f} [{fvu['low']:.4f}, {fvu['high']:.4f}]")
    for c in result["comparisons"]:
        print(f"\n{c['a']} / {c['b']}")
        for m in c["matched_l0"]:
            print(f"  FVU ratio at L0 {m['l0']:g}: {ratio_text(m['fvu_ratio'])}")
        for m in c["equal_fvu"]:
            print(f"  L0 ratio at FVU {m['fvu']:g}: {ratio_text(m['l0_ratio'])}")
        for m in c["equal_lambda"]:
            print(f"  L0 ratio at λ {m['lambda']:g}: {ratio_text(m['l0_ratio'])}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    cache = load_cache(args.cache)
    acts = heldout_activations(args, cache)
    shared, mu = shared_window_sums(acts)
    rows = [row for seed in args.seeds for row in run_seed(args, cache, acts, mu, seed)]
    result = analyse(args, rows, shared)
    print_tables(result)
    setting = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out", "threads")}
        | {"cache": str(args.cache), "heldout_tokens": int(shared["window_tokens"].sum()),
           "theirs": "GatedSAETrainer: lr warmup as ours, λ warmup over the first "
                     f"{SPARSITY_WARMUP_FRACTION:.0%} of steps, no lr decay"},
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "versions": {"gated_sae": gated_sae.__version__, "torch": torch.__version__,
                     **peer_versions()},
        **result,
    }
    everything = json.loads(args.out.read_text()) if args.out.is_file() else {}
    everything[args.label] = setting
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(everything, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.out} ({args.label})")


if __name__ == "__main__":
    main()
