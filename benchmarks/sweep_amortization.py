"""Does one pass over a cache feed N SAEs for little more than the cost of their steps?

Trains N SAEs in one Trainer pass over an activation cache and compares the pass's wall time
with the time spent inside the SAE steps alone (both recorded by the Trainer in run.json):
the difference is what reading, shuffling and moving batches, logging and checkpoints cost.
The sweep requirement is a ratio of at most 1.15.

    gated-sae cache --site blocks.15.hook_resid_post --tokens 100000 --out /tmp/acts
    python benchmarks/sweep_amortization.py --cache /tmp/acts
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from gated_sae.data.batches import cache_batches
from gated_sae.data.cache import load_cache
from gated_sae.train.trainer import SAEConfig, TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="an activation cache folder")
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--archs", default="relu,gated,topk,jumprelu,relu,gated,topk,batchtopk")
    parser.add_argument("--out", default="benchmarks/results/sweep_amortization.json")
    args = parser.parse_args()

    cache = load_cache(args.cache)
    saes = [SAEConfig(arch, args.d_sae, lr=1e-3, options={"k": 32} if "topk" in arch else {})
            for arch in args.archs.split(",")]
    config = TrainConfig(saes=saes, batch_size=args.batch, tokens=args.steps * args.batch,
                         checkpoint_every=0, log_every=10)
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(config, run_dir).fit(cache_batches(cache, args.batch, seed=0))
        timing = json.loads((Path(run_dir) / "run.json").read_text())["timing"]
    step_total = sum(timing["step_seconds"].values())
    ratio = timing["wall_seconds"] / step_total
    print(f"{len(saes)} SAEs (d_in {cache.d_in}, d_sae {args.d_sae}, batch {args.batch}), "
          f"{timing['steps']} steps")
    print(f"{'SAE':<12}{'s in steps':>12}")
    for name, seconds in timing["step_seconds"].items():
        print(f"{name:<12}{seconds:>12.2f}")
    print(f"{'sum':<12}{step_total:>12.2f}")
    print(f"{'pass wall':<12}{timing['wall_seconds']:>12.2f}")
    print(f"pass / sum of SAE steps = {ratio:.3f} (requirement: <= 1.15)")
    result = {"ratio": ratio, **timing, "n_saes": len(saes), "d_in": cache.d_in,
              "d_sae": args.d_sae, "batch": args.batch, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu": platform.processor(),
              "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
