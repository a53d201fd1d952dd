"""How training scales over torchrun ranks: tokens/s with 1 and with N ranks of one thread
each, in one run of this script, per mode, with the bytes each step sends between ranks.

Mode `saes` (SAE parallel): one `gated-sae train --config` of several SAEs spread over the
ranks; every rank reads the same batches. Its throughput counts every SAE's tokens
(steps · batch · SAEs / the loop's wall time, from run.json); the requirement on a 2-core
machine is ≥ 1.8× with 2 ranks.

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


def run(ranks: int, acts: str, config: Path, out: Path) -> dict:
    """One torchrun of `train`; its run record."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={ranks}", "-m", "gated_sae", "train", "--acts", acts,
           "--config", str(config), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "run.json").read_text())


def gathered_bytes_per_step(out: Path, log_every: int) -> float:
    """What SAE parallel sends per step: the log rows every rank shares at a logged step."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    last_step = json.loads(lines[-1])["step"]
    rows = [json.loads(line) for line in lines if json.loads(line)["step"] == last_step]
    return len(pickle.dumps(rows)) / log_every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acts", required=True, help="an activation cache folder or file")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--archs", default="relu,gated,topk,jumprelu,relu,gated,topk,batchtopk")
    parser.add_argument("--out", default="benchmarks/results/distributed_cpu.json")
    args = parser.parse_args()

    log_every = 10
    saes = [{"arch": arch, "d_sae": args.d_sae, "lr": 1e-3, "name": f"{arch}-{i}",
             **({"options": {"k": 32}} if "topk" in arch else {})}
            for i, arch in enumerate(args.archs.split(","))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "run.yaml"
        config.write_text(yaml.safe_dump({
            "saes": saes, "batch_size": args.batch, "tokens": args.steps * args.batch,
            "checkpoint_every": 0, "log_every": log_every, "lr_warmup_steps": 5,
        }))
        for ranks in (1, args.ranks):
            out = Path(tmp) / f"ranks{ranks}"
            timing = run(ranks, args.acts, config, out)["timing"]
            tokens = timing["steps"] * args.batch * len(saes)
            rows.append({
                "mode": "saes", "ranks": ranks, "wall_seconds": timing["wall_seconds"],
                "tokens_per_second": tokens / timing["wall_seconds"],
                "bytes_per_step": gathered_bytes_per_step(out, log_every) if ranks > 1 else 0,
            })
    base = rows[0]["tokens_per_second"]
    for row in rows:
        row["speedup"] = row["tokens_per_second"] / base
    print(f"{len(saes)} SAEs ({args.archs}), d_sae {args.d_sae}, batch {args.batch}, "
          f"{args.steps} steps, one thread per rank")
    print(f"{'mode':<6}{'ranks':>6}{'tokens/s':>12}{'speedup':>9}{'bytes/step':>12}")
    for r in rows:
        print(f"{r['mode']:<6}{r['ranks']:>6}{r['tokens_per_second']:>12.0f}"
              f"{r['speedup']:>9.2f}{r['bytes_per_step']:>12.0f}")
    result = {"rows": rows, "saes": saes, "batch": args.batch, "steps": args.steps,
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
