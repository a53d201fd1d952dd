"""Training throughput of each SAE architecture, against the matmul ceiling of the same process.

Times the real per-SAE training step (`TrainingSlot.step`: loss, backward, decoder-gradient
projection, Adam, constraints, dead-latent bookkeeping) on random Gaussian activations, one
SAE per slot. In the same process it times the three matmul shapes a dense step is made of:

    [B, d_in] @ [d_in, d_sae]    encoder forward
    [B, d_sae] @ [d_sae, d_in]   decoder forward (and the gradient into the latents)
    [d_in, B] @ [B, d_sae]       encoder weight gradient

The ceiling is the mean of their FLOP/s (2·B·d_in·d_sae FLOPs each, median time). A step
is credited 12·B·d_in·d_sae FLOPs (16 for gated, which also decodes its gate activations);
topk is credited the dense count too, though its decoder is sparse, so its fraction may
look better than the work it does.

The machine is shared, so nothing is compared across processes: every repeat is a round
that times one step of each architecture and each matmul, in a rotating order, and the
tables report medians over rounds; "x relu" is the median of the per-round ratios.

On CPU the shape is --d-in/--d-sae. With CUDA (and --device auto or cuda) the wide shape
--cuda-d-in/--cuda-d-sae also runs on the GPU, in float32: TrainingSlot.step has no
autocast or bfloat16 option, so the trainer trains in float32 and so does this benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from gated_sae.train.slot import TrainingSlot
from gated_sae.train.trainer import SAEConfig

ARCHS = ("relu", "gated", "topk", "batchtopk", "jumprelu")
FLOP_FACTOR = {"gated": 16}  # × B·d_in·d_sae; every other architecture: 12
DEAD_TOKENS = 10_000_000  # the trainer's largest default: no latent is dead in a short run
MATMULS = ("x @ W_enc", "f @ W_dec", "x.T @ grad")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=576, help="CPU shape: input width")
    p.add_argument("--d-sae", type=int, default=4608, help="CPU shape: latents")
    p.add_argument("--cuda-d-in", type=int, default=2304, help="GPU shape: input width")
    p.add_argument("--cuda-d-sae", type=int, default=65536, help="GPU shape: latents")
    p.add_argument("--batch", type=int, default=4096, help="tokens per step")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated architectures")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CPU, and the GPU shape too when CUDA is available")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=RESULTS,
                   help="folder for train_throughput_<device>.json")
    args = p.parse_args()
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = sorted(set(args.archs) - set(ARCHS))
    if unknown:
        p.error(f"unknown architecture {unknown[0]!r}; choose from {', '.join(ARCHS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but CUDA is not available")
    return args


def timed(fn, device: str) -> float:
    """Seconds `fn()` takes, waiting for the GPU before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(archs: list[str], d_in: int, d_sae: int, batch: int, device: str,
            repeats: int, warmup: int) -> dict:
    """Per-round seconds of one training step of each architecture and of each matmul."""
    gen = torch.Generator(device=device).manual_seed(0)
    # A few different batches, cycled, so the SAEs do not train on one batch over and over.
    xs = [torch.randn(batch, d_in, generator=gen, device=device) for _ in range(3)]
    slots = {}
    for arch in archs:
        slot = TrainingSlot(SAEConfig(arch, d_sae), d_in, device, seed=0)
        slot.sae.init_from_data(xs[0])  # what Trainer.fit does before the first step
        slots[arch] = slot

    # Operands of the matmuls, in the layouts the step uses (x.T is a transposed view).
    x = xs[0]
    w_enc = torch.randn(d_in, d_sae, generator=gen, device=device)
    w_dec = torch.randn(d_sae, d_in, generator=gen, device=device)
    f = torch.randn(batch, d_sae, generator=gen, device=device)
    matmuls = {
        MATMULS[0]: lambda: x @ w_enc,
        MATMULS[1]: lambda: f @ w_dec,
        MATMULS[2]: lambda: x.T @ f,
    }

    def step_fn(arch: str, round_index: int):
        batch_x = xs[round_index % len(xs)]
        return lambda: slots[arch].step(batch_x, 1.0, 1.0, DEAD_TOKENS)

    names = [*archs, *MATMULS]
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn = matmuls[name] if name in matmuls else step_fn(name, r)
            seconds = timed(fn, device)
            if r >= warmup:
                times[name].append(seconds)
    return times


def summarise(times: dict, archs: list[str], d_in: int, d_sae: int, batch: int) -> dict:
    unit = 2 * batch * d_in * d_sae
    matmul = {}
    for name in MATMULS:
        median = statistics.median(times[name])
        matmul[name] = {"ms": 1e3 * median, "flops_per_s": unit / median,
                        "ms_all": [1e3 * t for t in times[name]]}
    ceiling = statistics.mean(m["flops_per_s"] for m in matmul.values())
    rows = {}
    for arch in archs:
        median = statistics.median(times[arch])
        flops = FLOP_FACTOR.get(arch, 12) * batch * d_in * d_sae
        row = {
            "ms_per_step": 1e3 * median,
            "tokens_per_s": batch / median,
            "counted_flops_per_step": flops,
            "counted_flops_per_s": flops / median,
            "fraction_of_matmul_ceiling": flops / median / ceiling,
            "ms_all": [1e3 * t for t in times[arch]],
        }
        if "relu" in times:
            ratios = [t / r for t, r in zip(times[arch], times["relu"], strict=True)]
            row["step_time_over_relu"] = statistics.median(ratios)
        rows[arch] = row
    return {"matmul": matmul, "matmul_ceiling_flops_per_s": ceiling, "archs": rows}


def print_table(title: str, summary: dict, device: str) -> None:
    scale, unit = (1e12, "TFLOP/s") if device == "cuda" else (1e9, "GFLOP/s")
    print(f"\n{title}")
    for name, m in summary["matmul"].items():
        print(f"  matmul {name:<12} {m['ms']:9.1f} ms  {m['flops_per_s'] / scale:8.1f} {unit}")
    ceiling = summary["matmul_ceiling_flops_per_s"] / scale
    print(f"  matmul ceiling (mean)  {ceiling:8.1f} {unit}\n")
    header = f"{'arch':<10} {'ms/step':>9} {'tokens/s':>10} {unit:>9} {'of ceil':>8} {'x relu':>7}"
    print(header)
    print("-" * len(header))
    for arch, row in summary["archs"].items():
        ratio = row.get("step_time_over_relu")
        print(f"{arch:<10} {row['ms_per_step']:9.1f} {row['tokens_per_s']:10.0f} "
              f"{row['counted_flops_per_s'] / scale:9.2f} "
              f"{row['fraction_of_matmul_ceiling']:8.1%} "
              f"{'' if ratio is None else f'{ratio:7.2f}'}")
    gated = summary["archs"].get("gated", {}).get("step_time_over_relu")
    if gated is not None:
        print(f"\ngated/relu step time: {gated:.2f}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root,
                               check=True, capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty-src" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info(device: str) -> dict:
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        # glibc malloc settings change CPU timings by 10-20% (page faults on fresh memory)
        "malloc_env": {k: v for k, v in os.environ.items()
                       if k.startswith("MALLOC_") or k == "LD_PRELOAD"},
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "git": git_revision(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    if args.device in ("auto", "cpu"):
        runs.append(("cpu", args.d_in, args.d_sae))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        runs.append(("cuda", args.cuda_d_in, args.cuda_d_sae))
    args.out.mkdir(parents=True, exist_ok=True)
    for device, d_in, d_sae in runs:
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        times = measure(args.archs, d_in, d_sae, args.batch, device, args.repeats, args.warmup)
        summary = summarise(times, args.archs, d_in, d_sae, args.batch)
        title = (f"{device}: d_in={d_in} d_sae={d_sae} batch={args.batch}, float32, "
                 f"median of {args.repeats} interleaved rounds")
        print_table(title, summary, device)
        result = {
            "benchmark": "train_throughput",
            "device": device,
            "d_in": d_in,
            "d_sae": d_sae,
            "batch": args.batch,
            "precision": "float32 (TrainingSlot.step has no autocast or bfloat16 option)",
            "repeats": args.repeats,
            "warmup": args.warmup,
            "dead_tokens": DEAD_TOKENS,
            "flops_counted": "12*B*d_in*d_sae per step, 16*B*d_in*d_sae for gated",
            "gated_over_relu": summary["archs"].get("gated", {}).get("step_time_over_relu"),
            **summary,
            "machine": {**machine_info(device), "load_average_before": load_before,
                        "load_average_after": os.getloadavg()[0]},
            "wall_s": time.perf_counter() - start,
        }
        path = args.out / f"train_throughput_{device}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
