"""Training throughput of our SAEs against the peers' (SAELens, sparsify, dictionary_learning),
in one process, at the same d_in, d_sae, batch and precision.

Ours is timed at a trained SAE's sparsity: each SAE first trains on the activations (the
trainer's own auto step) until its L0 is at most the target (or a step budget runs out),
then its steady-state steps are timed on the sparse path and, for reference, the dense one.
Each peer first runs `--peer-warmup` steps of its own trainer, then is timed. Contenders are
timed a group at a time, one architecture and target L0 (ours and that architecture's peers),
so only a group's SAEs are in memory. Every timed round runs one step of each contender in a
rotating order, with the encoder's forward product `x @ W_enc` (the floor of any step; into
an output allocated once, so it is not charged for mapping fresh pages) timed in the same
round; tables report medians.

Per contender: tokens/s, "× floor" (step time over the encoder product's time: 1.0 is a
step that costs only its one necessary dense product), the fraction of the matmul ceiling
(2·B·d_in·d_sae FLOPs of that product over the step time, against the product's FLOP/s),
and peak memory of one step above what was resident before it (CUDA: allocator peak; CPU:
the kernel's resident high-water mark, reset before the step through /proc/self/clear_refs).

Activations: a cache folder (`--cache`, e.g. SmolLM2 blocks.15.hook_resid_post from
`gated-sae cache`), or `--synthetic` Gaussian activations of width `--d-in` (the GPU shape
has no offline model of that width). `--crossover` also times our relu step on both paths
at several densities, to check the trainer's SPARSE_CROSSOVER for this device.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import torch
from peer_steps import PEER_ARCHS, make_peer_step, peer_versions

import gated_sae  # noqa: I001  (first: it sets KMP_BLOCKTIME before torch loads)
from gated_sae.data.cache import load_cache
from gated_sae.train.slot import SPARSE_CROSSOVER, TrainingSlot
from gated_sae.train.trainer import SAEConfig

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = ("relu", "gated", "jumprelu", "topk", "batchtopk")
# Ours: learning rate and sparsity coefficient that reach L0 ≈ 32–64 within a few hundred
# steps on SmolLM2 layer 15 (from the questions preset's results); topk/batchtopk use k.
OURS = {
    "relu": {"lr": 1e-2, "sparsity_coef": 1.0},
    "gated": {"lr": 1e-2, "sparsity_coef": 2.0},
    "jumprelu": {"lr": 1e-2, "sparsity_coef": 1.0},
    "topk": {"lr": 3e-3},
    "batchtopk": {"lr": 3e-3},
}
PEER_COEF = {"relu": 5.0, "gated": 5.0, "jumprelu": 1.0, "topk": 0.0, "batchtopk": 0.0}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--cache", help="activation cache folder (gated-sae cache --out)")
    data.add_argument("--synthetic", action="store_true", help="Gaussian activations")
    p.add_argument("--d-in", type=int, default=2304, help="with --synthetic: input width")
    p.add_argument("--d-sae", default="4608", help="comma-separated widths")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", default="32,64", help="target L0s (TopK's k), comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--peers", default=",".join(PEER_ARCHS))
    p.add_argument("--train-steps", type=int, default=300, help="ours: most steps to reach L0")
    p.add_argument("--peer-warmup", type=int, default=5, help="peer steps before timing")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--crossover", action="store_true", help="also time dense vs sparse by density")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    args.widths = [int(w) for w in args.d_sae.split(",")]
    args.targets = [int(k) for k in args.k.split(",")]
    args.archs = [a for a in args.archs.split(",") if a]
    args.peers = [a for a in args.peers.split(",") if a]
    return args


def activations(args) -> torch.Tensor:
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        mixing = torch.randn(args.d_in, args.d_in, generator=g) / args.d_in**0.5
        return torch.randn(args.batch * 16, args.d_in, generator=g) @ mixing
    cache = load_cache(args.cache)
    acts = cache.activations[0 : len(cache.activations)].flatten(0, 1).float()
    return acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(0))]


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(seconds, peak bytes above what was resident before) of one call."""
    cuda = torch.device(device).type == "cuda"
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
    start = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - start
    if cuda:
        return seconds, torch.cuda.max_memory_allocated() - before
    return seconds, (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Ours:
    """One of our SAEs, trained to the target L0, stepping on a fixed path.

    While its L0 is above 1.5× the target, the sparsity coefficient grows 2% a step, so that
    every λ-penalised architecture gets there within the step budget whatever the data
    (synthetic Gaussian activations need a far larger coefficient than a model's); held from
    there, it lets L0 settle onto the target (ramping to the target itself overshot: relu
    aimed at 32 landed on 8.8 at d_sae 65536).
    """

    def __init__(self, arch, d_in, d_sae, target, args, batches):
        settings = dict(OURS[arch])
        options = settings.pop("options", {})
        if arch in ("topk", "batchtopk"):
            options = {**options, "k": target}
        cfg = SAEConfig(arch, d_sae, options=options, **settings)
        self.slot = TrainingSlot(cfg, d_in, args.device, 0, args.precision)
        self.l0, self.trained, self.coef_scale = float("inf"), 0, 1.0
        while self.trained < args.train_steps and not self.l0 <= target:
            path = self.slot.choose_step("auto", args.batch)
            self.step(batches(), path)
            self.trained += 1
            if self.l0 > 1.5 * target:
                self.coef_scale *= 1.02

    def step(self, x, path):
        self.l0 = float(self.slot.step(x, 1.0, self.coef_scale, 10**9, path).l0)


def run_width(args, acts, d_sae) -> tuple[list[dict], dict]:
    d_in, device, B = acts.shape[1], args.device, args.batch
    cursor = [0]

    def batches():
        start = cursor[0] % (acts.shape[0] - B + 1)
        cursor[0] += B
        return acts[start : start + B].to(device)

    # Inputs scaled as the trainer scales them: E‖x‖² = d_in.
    scale = (d_in / acts[:65536].pow(2).sum(-1).mean()).sqrt()
    acts.mul_(scale)
    # The floor runs in the step's precision: a bf16 step's encoder product is a bf16 product.
    floor_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    W = torch.randn(d_in, d_sae, device=device, dtype=floor_dtype)
    rows = []
    for target in args.targets:
        for arch in args.archs:
            group = time_group(args, arch, target, d_in, d_sae, batches, W)
            print_table(group, d_sae, group[0]["floor_seconds"], B, d_in)
            rows += group
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()  # each group's SAEs and optimisers are freed here
    floor_s = statistics.median(r["floor_seconds"] for r in rows)
    print_table(rows, d_sae, floor_s, B, d_in)
    return rows, {"floor_seconds": floor_s, "matmul_flops": 2 * B * d_in * d_sae / floor_s}


def time_group(args, arch, target, d_in, d_sae, batches, W) -> list[dict]:
    """Ours (both paths) and each peer for one architecture and target L0, in rotating rounds
    with the encoder product timed in each; only this group's SAEs are alive meanwhile."""
    device, B = args.device, args.batch
    print(f"d_sae {d_sae}: training ours ({arch}) to L0 ≤ {target}", flush=True)
    ours = Ours(arch, d_in, d_sae, target, args, batches)
    contenders = {("ours", path): (partial(ours.step, path=path), ours)
                  for path in ("sparse", "dense")}
    for peer in args.peers:
        if arch in PEER_ARCHS[peer]:
            step = make_peer_step(peer, arch, d_in, d_sae, B, device, args.precision,
                                  target, PEER_COEF[arch])
            for _ in range(args.peer_warmup):
                state = step(batches())
            contenders[(peer, "")] = (step, state)
    times = {key: [] for key in contenders}
    memory = {key: 0 for key in contenders}
    floor = []
    keys = list(contenders)
    product = torch.empty(B, d_sae, device=device, dtype=W.dtype)  # no first-touch cost
    for r in range(args.rounds):
        x = batches()
        floor.append(timed(partial(torch.mm, x.to(W.dtype), W, out=product), device)[0])
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            seconds, peak = timed(partial(contenders[key][0], x), device)
            times[key].append(seconds)
            memory[key] = max(memory[key], peak)
    floor_s = statistics.median(floor)
    rows = []
    for (who, path), (_, state) in contenders.items():
        seconds = statistics.median(times[(who, path)])
        rows.append({
            "d_sae": d_sae, "arch": arch, "target_l0": target, "who": who, "path": path,
            "l0": state.l0 if isinstance(state, Ours) else state["l0"],
            "seconds": seconds, "tokens_per_s": B / seconds, "floor_seconds": floor_s,
            "x_floor": seconds / floor_s, "ceiling_fraction": floor_s / seconds,
            "peak_mib": memory[(who, path)] / 2**20,
            "trained_steps": state.trained if isinstance(state, Ours) else args.peer_warmup,
            "coef_scale": state.coef_scale if isinstance(state, Ours) else None,
        })
    best = max((r for r in rows if r["who"] != "ours"), key=lambda r: r["tokens_per_s"],
               default=None)
    for row in rows:
        row["x_fastest_peer"] = row["tokens_per_s"] / best["tokens_per_s"] if best else None
    return rows


def crossover(args, acts, d_sae) -> list[dict]:
    """Our relu step on both paths at densities set through b_enc: where sparse stops paying."""
    d_in, rows = acts.shape[1], []
    x = acts[: args.batch].to(args.device)
    slot = TrainingSlot(SAEConfig("relu", d_sae, lr=1e-9, sparsity_coef=0.0), d_in,
                        args.device, 0, args.precision)
    pre = (x - slot.sae.b_dec) @ slot.sae.W_enc
    for density in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        kth = max(1, round((1 - density) * pre.shape[0]))
        with torch.no_grad():
            slot.sae.b_enc.copy_(-pre.kthvalue(kth, dim=0).values)
        seconds = {p: statistics.median(timed(lambda p=p: slot.step(x, 1.0, 1.0, 10**9, p),
                                              args.device)[0] for _ in range(args.rounds))
                   for p in ("dense", "sparse")}
        rows.append({"d_sae": d_sae, "density": slot.density, **seconds,
                     "sparse_over_dense": seconds["sparse"] / seconds["dense"]})
        print(f"  density {slot.density:.3f}: dense {seconds['dense']:.3f} s, "
              f"sparse {seconds['sparse']:.3f} s, ratio {rows[-1]['sparse_over_dense']:.2f}")
    return rows


def print_table(rows, d_sae, floor_s, batch, d_in) -> None:
    print(f"\nd_sae {d_sae}, d_in {d_in}, batch {batch}: encoder product {floor_s * 1e3:.1f} ms "
          f"({2 * batch * d_in * d_sae / floor_s / 1e9:.0f} GFLOP/s)")
    print(f"{'arch':<10}{'L0≈':>5}  {'who':<20}{'L0':>7}{'tok/s':>10}{'× floor':>9}"
          f"{'ceiling':>9}{'peak MiB':>10}{'× best peer':>13}")
    for r in sorted(rows, key=lambda r: (r["arch"], r["target_l0"], r["who"] != "ours", r["who"])):
        who = r["who"] + (f" ({r['path']})" if r["path"] else "")
        vs = f"{r['x_fastest_peer']:.2f}" if r["x_fastest_peer"] and r["who"] == "ours" else ""
        print(f"{r['arch']:<10}{r['target_l0']:>5}  {who:<20}{r['l0']:>7.1f}"
              f"{r['tokens_per_s']:>10.0f}{r['x_floor']:>9.2f}{r['ceiling_fraction']:>9.0%}"
              f"{r['peak_mib']:>10.0f}{vs:>13}")


def usable_peers(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The peers whose step builds (a tiny one, on CPU), and why each other one does not:
    a peer missing from this machine is reported and skipped, not fatal to the benchmark."""
    usable, skipped = [], {}
    for peer in names:
        try:
            make_peer_step(peer, PEER_ARCHS[peer][0], 8, 16, 4, "cpu", "float32", 2, 1.0)
            usable.append(peer)
        except Exception as error:  # noqa: BLE001  (any failure to import or build)
            skipped[peer] = f"{type(error).__name__}: {error}"
            print(f"skipping {peer}: {skipped[peer]}", flush=True)
    return usable, skipped


def main() -> None:
    args = parse_args()
    args.peers, skipped = usable_peers(args.peers)
    acts = activations(args)
    result = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if "cuda" in args.device else None},
        "versions": {"gated_sae": gated_sae.__version__, "torch": torch.__version__,
                     **peer_versions()},
        "peers_skipped": skipped,
        "sparse_crossover_setting": SPARSE_CROSSOVER,
        "widths": [],
        "crossover": [],
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for d_sae in args.widths:
        rows, floor = run_width(args, acts.clone(), d_sae)
        result["widths"].append({"d_sae": d_sae, **floor, "rows": rows})
        if args.crossover:
            result["crossover"] += crossover(args, acts.clone(), d_sae)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device).type
    path = args.out / f"peers_{device}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
