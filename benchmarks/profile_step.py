"""Where one training step's time goes: torch.profiler's table of its operations.

Each architecture is first trained on synthetic activations to the target L0 (as
benchmarks/peers.py does), then a few steps of each path are profiled; the table lists the
operations by their own device time (CUDA) or CPU time, with the wall time of a step.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch
from peers import Ours
from torch.profiler import ProfilerActivity, profile

import gated_sae  # noqa: F401, I001  (first: it sets KMP_BLOCKTIME before torch loads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="relu,gated,topk")
    p.add_argument("--paths", default="sparse,dense")
    p.add_argument("--d-in", type=int, default=2304)
    p.add_argument("--d-sae", type=int, default=65536)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--l0", type=int, default=32, help="target L0 (TopK's k)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", choices=("float32", "bf16"), default="bf16")
    p.add_argument("--steps", type=int, default=5, help="profiled steps per path")
    p.add_argument("--rows", type=int, default=22, help="operations listed")
    args = p.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(args.d_in, args.d_in, generator=g) / args.d_in**0.5
    acts = (torch.randn(args.batch * 8, args.d_in, generator=g) @ mixing).to(args.device)
    acts *= (args.d_in / acts.pow(2).sum(-1).mean()).sqrt()
    cursor = [0]

    def batches():
        cursor[0] = (cursor[0] + 1) % 8
        return acts[cursor[0] * args.batch : (cursor[0] + 1) * args.batch]

    settings = SimpleNamespace(device=args.device, precision=args.precision, batch=args.batch,
                               train_steps=400)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for arch in args.archs.split(","):
        ours = Ours(arch, args.d_in, args.d_sae, args.l0, settings, batches)
        for path in args.paths.split(","):
            for _ in range(2):
                ours.step(batches(), path)
            torch.cuda.synchronize() if cuda else None
            start = time.perf_counter()
            with profile(activities=activities) as prof:
                for _ in range(args.steps):
                    ours.step(batches(), path)
                torch.cuda.synchronize() if cuda else None
            ms = (time.perf_counter() - start) / args.steps * 1e3
            print(f"\n== {arch} {path}: L0 {ours.l0:.1f} after {ours.trained} steps, "
                  f"{ms:.1f} ms a step (profiled)", flush=True)
            key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=args.rows), flush=True)


if __name__ == "__main__":
    main()
