"""How training scales over torchrun ranks: tokens/s with 1 and with N ranks of one thread
each, in one run of this script, per mode, with the bytes each step sends between ranks.

Mode `saes` (SAE parallel): one `gated-sae train --config` of several SAEs spread over the
ranks; every rank reads the same batches. Its throughput counts every SAE's tokens
(steps · batch · SAEs / the loop's wall time, from run.json); the requirement on a 2-core
machine is ≥ 1.8× with 2 ranks.

Mode `data` (data parallel): one SAE, every batch split over the ranks, which sum their
gradients in one all-reduce per step (its bytes: every gradient, the step's means and the
fired latents, 4 bytes each), at the trainer's default batch of 4,096 (`--data-batch`): every
rank still runs the whole Adam step and the 21 MB all-reduce, whose share shrinks as the batch
grows (at batch 1,024 it is about a third of a rank's step). The requirement on a 2-core
machine is ≥ 1.6× with 2 ranks.

Mode `latents` (latent parallel): one SAE whose latents are sharded over the ranks, which
sum their partial reconstructions every step (its bytes: the reconstruction, b_dec's
encoder gradient, the penalty, L0 and active pairs). Both runs take the dense step, the only
one latent parallel has.

    gated-sae cache --site blocks.15.hook_resid_post --tokens 65536 --out /tmp/acts
    python benchmarks/distributed.py --acts /tmp/acts
"""

import argparse
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml


def run(ranks: int, acts: str, config: Path, out: Path, mode: str) -> dict:
    """One torchrun of `train`; its run record."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={ranks}", "-m", "gated_sae", "train", "--acts", acts,
           "--config", str(config), "--out", str(out), "--parallel", mode]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "run.json").read_text())


def gathered_bytes_per_step(out: Path, log_every: int) -> float:
    """What SAE parallel sends per step: the log rows every rank shares at a logged step."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    last_step = json.loads(lines[-1])["step"]
    rows = [json.loads(line) for line in lines if json.loads(line)["step"] == last_step]
    return len(pickle.dumps(rows)) / log_every


def reduced_bytes_per_step(out: Path, name: str) -> int:
    """What data parallel sums per step: every gradient, the step's means (loss, its terms,
    L0), the fired latents and the active pairs, as float32."""
    from gated_sae import load_sae

    sae = load_sae(out / name)
    terms = 4  # at most: loss, two terms, L0
    return 4 * (sum(p.numel() for p in sae.parameters()) + terms + sae.d_sae + 1)


def sharded_bytes_per_step(batch: int, d_in: int) -> int:
    """What latent parallel sums per step for a relu SAE: the partial reconstructions, b_dec's
    centring gradient, and the penalty, L0 and active pairs, as float32."""
    return 4 * (batch * d_in + d_in + 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", required=True, help="an activation cache folder or file")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--archs", default="relu,gated,topk,jumprelu,relu,gated,topk,batchtopk",
                        help="the SAEs of mode saes")
    parser.add_argument("--data-arch", default="relu", help="the one SAE of mode data")
    parser.add_argument("--data-d-sae", type=int, default=4608)
    parser.add_argument("--data-batch", type=int, default=4096, help="mode data's batch")
    parser.add_argument("--latent-d-sae", type=int, default=9216,
                        help="the width of mode latents' one relu SAE")
    parser.add_argument("--out", default="benchmarks/results/distributed_cpu.json")
    args = parser.parse_args()

    log_every = 10

    def sae(arch: str, d_sae: int, name: str) -> dict:
        return {"arch": arch, "d_sae": d_sae, "lr": 1e-3, "name": name,
                **({"options": {"k": 32}} if "topk" in arch else {})}

    modes = {
        "saes": [sae(arch, args.d_sae, f"{arch}-{i}")
                 for i, arch in enumerate(args.archs.split(","))],
        "data": [sae(args.data_arch, args.data_d_sae, args.data_arch)],
        "latents": [sae("relu", args.latent_d_sae, "relu")],
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode, saes in modes.items():
            batch = args.data_batch if mode == "data" else args.batch
            config = Path(tmp) / f"{mode}.yaml"
            config.write_text(yaml.safe_dump({
                "saes": saes, "batch_size": batch, "tokens": args.steps * batch,
                "checkpoint_every": 0, "log_every": log_every, "lr_warmup_steps": 5,
                **({"step": "dense"} if mode == "latents" else {}),
            }))
            for ranks in (1, args.ranks):
                out = Path(tmp) / f"{mode}-ranks{ranks}"
                timing = run(ranks, args.acts, config, out, mode)["timing"]
                tokens = timing["steps"] * batch * len(saes)
                sent = 0
                if ranks > 1:
                    if mode == "saes":
                        sent = gathered_bytes_per_step(out, log_every)
                    elif mode == "data":
                        sent = reduced_bytes_per_step(out, saes[0]["name"])
                    else:
                        d_in = json.loads((out / "run.json").read_text())["d_in"]
                        sent = sharded_bytes_per_step(batch, d_in)
                rows.append({
                    "mode": mode, "batch": batch,
                    "saes": ", ".join(f"{s['arch']} {s['d_sae']}" for s in saes),
                    "ranks": ranks, "wall_seconds": timing["wall_seconds"],
                    "tokens_per_second": tokens / timing["wall_seconds"], "bytes_per_step": sent,
                })
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"])["tokens_per_second"]
        row["speedup"] = row["tokens_per_second"] / base
    print(f"{args.steps} steps, one thread per rank; batch {args.batch}, mode data "
          f"{args.data_batch}")
    print(f"{'mode':<8}{'SAEs':<42}{'ranks':>6}{'tokens/s':>12}{'speedup':>9}{'bytes/step':>12}")
    for r in rows:
        print(f"{r['mode']:<8}{r['saes'][:41]:<42}{r['ranks']:>6}{r['tokens_per_second']:>12.0f}"
              f"{r['speedup']:>9.2f}{r['bytes_per_step']:>12.0f}")
    result = {"rows": rows, "saes": modes, "batch": args.batch, "data_batch": args.data_batch,
              "steps": args.steps,
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
