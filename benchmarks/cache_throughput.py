"""Activation caching throughput against the bare truncated forward it is built on.

On one model, site and set of token windows, in one process:

  (a) bare   `lm.activations` on batches of windows (the forward stops after the site),
             results dropped: the most caching could reach;
  (b) cache  `build_cache` writing the same windows' activations into a temporary folder,
             once per storage dtype (everything it does counts: tokenizing, the probe
             forward, storing, hashing, fsync);
  (c) full   the untruncated forward with logits (`lm.logits`), for context: what stopping
             at the site saves.

(a) and (b) alternate in rounds, in a rotating order, and the reported cache/bare ratio is
the median of the per-round ratios, so load from other processes hits both alike; the same
ratio in process CPU time is reported beside it as a cross-check. While build_cache runs,
its helpers are wrapped with timers (exclusive time, nothing in src is changed), which
splits its wall time into forwards and everything else.

Every measurement also records system time and minor page faults. With glibc's default
malloc, memory freed after a forward goes back to the kernel and is faulted in again by the
next one, which on CPU moved forward times by 10-20% whichever variant it hit; `load_model`
now keeps that memory in the process (`keep_freed_memory`), so both variants run with it.
The JSON records any MALLOC_* environment setting as well.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import torch

from gated_sae.data import cache as cache_module
from gated_sae.data.cache import build_cache
from gated_sae.data.corpus import token_windows
from gated_sae.data.lm import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--site", default="blocks.15.hook_resid_post")
    p.add_argument("--dataset", default="builtin:python-docs")
    p.add_argument("--context", type=int, default=128, help="tokens per window")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per measurement")
    p.add_argument("--batch-size", type=int, default=32,
                   help="windows per forward (build_cache's default)")
    p.add_argument("--repeats", type=int, default=5, help="rounds of (a) and (b)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="cache dtypes to measure")
    p.add_argument("--full-tokens", type=int, default=4096,
                   help="tokens for the full forward (c), measured once; 0 skips it")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--tmp-dir", default=None, help="where the temporary caches go")
    p.add_argument("--out", type=Path, default=RESULTS / "cache_throughput.json")
    args = p.parse_args()
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    return args


class Timers:
    """Exclusive wall time per label: a wrapped call nested in another is not counted twice."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._children: list[float] = []  # time spent in wrapped callees, per open call

    def wrap(self, label_of, fn):
        def wrapper(*args, **kwargs):
            label = label_of() if callable(label_of) else label_of
            self._children.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._children.pop()
                self.seconds[label] = self.seconds.get(label, 0.0) + elapsed - inner
                self.calls[label] = self.calls.get(label, 0) + 1
                if self._children:
                    self._children[-1] += elapsed

        return wrapper


@contextmanager
def instrumented(lm, timers: Timers):
    """Wrap what build_cache calls with timers; restore everything afterwards."""
    patches = [
        (cache_module, "token_windows", "tokenize (token_windows)"),
        (cache_module, "_storage_array", "storage conversion + finite checks"),
        (cache_module, "_sha256_file", "sha256 of shard files"),
        (cache_module, "atomic_write_npy", "shard file writes (write, fsync, rename)"),
        (cache_module, "_write_json_atomic", "manifest writes (fsync)"),
    ]
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, label in patches:
        setattr(obj, name, timers.wrap(label, getattr(obj, name)))
    # The first activations call of build_cache is its few-token probe; the rest are batches.
    def forward_label():
        return "forwards" if timers.calls.get("probe forward") else "probe forward"

    lm.activations = timers.wrap(forward_label, lm.activations)
    try:
        yield
    finally:
        del lm.activations  # back to the class's method
        for obj, name, original in originals:
            setattr(obj, name, original)


def bare_forward(lm, windows: torch.Tensor, site: str, batch_size: int) -> None:
    for start in range(0, len(windows), batch_size):
        lm.activations(windows[start:start + batch_size], site)


def full_forward(lm, windows: torch.Tensor, batch_size: int) -> None:
    for start in range(0, len(windows), batch_size):
        lm.logits(windows[start:start + batch_size])


def usage() -> dict:
    """Counters of this process: wall and CPU seconds, system seconds, minor page faults."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": time.perf_counter(), "cpu": time.process_time(), "sys": ru.ru_stime,
            "faults": ru.ru_minflt}


def since(start: dict) -> dict:
    now = usage()
    return {k: now[k] - start[k] for k in start}


def run_cache(lm, args, n_tokens: int, dtype: str, windows: torch.Tensor) -> tuple[dict, dict]:
    """The usage() counters of build_cache and the exclusive seconds of its helpers, for a
    cache written into a temporary folder."""
    timers = Timers()
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="cache-bench-") as tmp:
        out = Path(tmp) / "cache"
        with instrumented(lm, timers):
            start = usage()
            build_cache(lm, args.site, args.dataset, n_tokens=n_tokens, out=out,
                        context_size=args.context, dtype=dtype, batch_size=args.batch_size,
                        progress=False)
            used = since(start)
        manifest = json.loads((out / "manifest.json").read_text())
    # The cache must hold exactly the windows the bare forward ran on.
    expected = hashlib.sha256(windows.to(torch.int32).numpy().tobytes()).hexdigest()
    if manifest["config"]["tokens_sha256"] != expected or manifest["n_tokens"] != n_tokens:
        raise SystemExit("build_cache cached other windows than the bare forward ran on")
    breakdown = dict(timers.seconds)
    breakdown["other (progress bar, bookkeeping)"] = \
        used["wall"] - sum(timers.seconds.values())
    return used, breakdown


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        # glibc malloc settings change CPU timings by 10-20% (page faults on fresh memory)
        "malloc_env": {k: v for k, v in os.environ.items()
                       if k.startswith("MALLOC_") or k == "LD_PRELOAD"},
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    lm = load_model(args.model)
    load_s = time.perf_counter() - start

    n_windows = math.ceil(args.tokens / args.context)
    n_tokens = n_windows * args.context
    # The windows build_cache will take: the same call with the same arguments.
    windows = token_windows(lm.tokenizer, args.dataset, context_size=args.context,
                            n_windows=n_windows, split="train", bos_token_id=lm.bos_token_id)

    # Warm-up: a small bare forward and a one-window cache of each dtype.
    bare_forward(lm, windows[:4], args.site, args.batch_size)
    for dtype in args.dtypes:
        run_cache(lm, args, args.context, dtype, windows[:1])

    variants = ["bare", *(f"cache {d}" for d in args.dtypes)]
    used: dict[str, list[dict]] = {v: [] for v in variants}
    breakdowns: dict[str, list[dict]] = {d: [] for d in args.dtypes}
    for r in range(args.repeats):
        shift = r % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            if variant == "bare":
                start = usage()
                bare_forward(lm, windows, args.site, args.batch_size)
                used[variant].append(since(start))
            else:
                dtype = variant.removeprefix("cache ")
                counters, breakdown = run_cache(lm, args, n_tokens, dtype, windows)
                used[variant].append(counters)
                breakdowns[dtype].append(breakdown)
            u = used[variant][-1]
            print(f"round {r + 1}/{args.repeats} {variant:<14} {u['wall']:6.2f} s (cpu "
                  f"{u['cpu']:5.2f} s, sys {u['sys']:4.2f} s, {u['faults']:7d} page faults, "
                  f"load {os.getloadavg()[0]:.2f})", flush=True)
    seconds = {v: [u["wall"] for u in used[v]] for v in variants}
    cpu_seconds = {v: [u["cpu"] for u in used[v]] for v in variants}

    full = None
    if args.full_tokens:
        full_windows = windows[:max(1, math.ceil(args.full_tokens / args.context))]
        t0 = time.perf_counter()
        full_forward(lm, full_windows, args.batch_size)
        full_s = time.perf_counter() - t0
        full = {"tokens": full_windows.numel(), "seconds": full_s,
                "tokens_per_s": full_windows.numel() / full_s}

    bare_tps = n_tokens / statistics.median(seconds["bare"])
    rows = {}
    for variant in variants:
        median = statistics.median(seconds[variant])
        row = {"tokens": n_tokens, "seconds_median": median, "seconds_all": seconds[variant],
               "tokens_per_s": n_tokens / median, "cpu_seconds_all": cpu_seconds[variant],
               "sys_seconds_all": [u["sys"] for u in used[variant]],
               "minor_page_faults_all": [u["faults"] for u in used[variant]]}
        if variant != "bare":
            dtype = variant.removeprefix("cache ")
            ratios = [b / c for b, c in zip(seconds["bare"], seconds[variant], strict=True)]
            row["ratio_to_bare"] = statistics.median(ratios)  # tokens/s cache over tokens/s bare
            # The same ratio in process CPU time: less sensitive to other processes taking the
            # cores (though not to oversubscribed threads spinning), blind to I/O waits.
            row["cpu_ratio_to_bare"] = statistics.median(
                b / c for b, c in zip(cpu_seconds["bare"], cpu_seconds[variant], strict=True))
            # Tokenizing a first batch of documents and the probe forward cost about the same
            # for any cache size: without them, the ratio a large cache would approach.
            fixed = [p.get("tokenize (token_windows)", 0.0) + p.get("probe forward", 0.0)
                     for p in breakdowns[dtype]]
            row["ratio_to_bare_without_tokenize_and_probe"] = statistics.median(
                b / (c - f) for b, c, f in zip(seconds["bare"], seconds[variant], fixed,
                                               strict=True))
            # The split of one whole round, the one with the median time, so the parts add up.
            middle = seconds[variant].index(statistics.median_low(seconds[variant]))
            row["breakdown_round"] = middle + 1
            row["breakdown_s"] = dict(sorted(breakdowns[dtype][middle].items(),
                                             key=lambda kv: -kv[1]))
            row["breakdown_s_all_rounds"] = breakdowns[dtype]
        rows[variant] = row
    if full:
        full["ratio_bare_truncated_over_full"] = bare_tps / full["tokens_per_s"]
        rows["full forward"] = full

    print(f"\n{args.model} {args.site}, {args.dataset}, context {args.context}, "
          f"batch {args.batch_size} windows, median of {args.repeats} interleaved rounds")
    header = f"{'measurement':<26} {'tokens':>7} {'s':>8} {'tokens/s':>9} {'vs bare':>8}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        s = row.get("seconds_median", row.get("seconds"))
        vs = row.get("ratio_to_bare", row["tokens_per_s"] / bare_tps)
        label = {"bare": "(a) bare truncated forward", "full forward": "(c) full forward"}.get(
            name, f"(b) build_cache {name.removeprefix('cache ')}")
        print(f"{label:<26} {row['tokens']:7d} {s:8.2f} {row['tokens_per_s']:9.1f} {vs:8.3f}")
    for dtype in args.dtypes:
        row = rows[f"cache {dtype}"]
        verdict = "meets" if row["ratio_to_bare"] >= 0.9 else "FAILS"
        print(f"\ncache/bare {dtype}: {row['ratio_to_bare']:.3f} ({verdict} >= 0.90; "
              f"{row['ratio_to_bare_without_tokenize_and_probe']:.3f} without tokenize+probe; "
              f"{row['cpu_ratio_to_bare']:.3f} in CPU time)")
        total = sum(row["breakdown_s"].values())
        print(f"  where the time goes in round {row['breakdown_round']} ({total:.2f} s):")
        for k, v in row["breakdown_s"].items():
            print(f"    {k:<52} {v:7.3f} s  {v / total:6.1%}")
    if full:
        print(f"\nfull forward: {full['tokens_per_s']:.1f} tokens/s; stopping at {args.site} is "
              f"{full['ratio_bare_truncated_over_full']:.2f}x faster")

    result = {
        "benchmark": "cache_throughput",
        "model": args.model,
        "site": args.site,
        "dataset": args.dataset,
        "context": args.context,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "n_layers": lm.n_layers,
        "model_dtype": str(lm.dtype).removeprefix("torch."),
        "model_load_s": load_s,
        "results": rows,
        "machine": {**machine_info(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()[0]},
        "wall_s": time.perf_counter() - began,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
