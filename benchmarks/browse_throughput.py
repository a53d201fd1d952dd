"""Feature-browser throughput against the bare model forward plus SAE encode it is built on.

On one model, site, set of token windows and SAE(s), in one process:

  (a) bare    per batch of windows: `lm.activations` (the forward stops after the site) and
              `sae.encode` of the non-BOS positions, results dropped: the most the browser's
              pass could reach;
  (b) browse  `collect` (the browser's one streaming pass: the same forward and encode, plus
              the per-latent counts, histograms, top-k and reservoir samples with their
              contexts) over the same batches.

(a) and (b) alternate batch by batch: `collect` reads its batches from a generator that runs
(a) on each batch just before handing it over, and the time until `collect` asks for the
next batch is (b)'s time on it, so load from other processes hits both alike. The ratio is
total (a) time over total (b) time. Then (c) writes the site from (b)'s statistics (logit
effects, neighbours, every data file) into a temporary folder, timed, and its size counted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from gated_sae import load_sae
from gated_sae.browse import build
from gated_sae.browse.collect import collect
from gated_sae.data.corpus import token_windows
from gated_sae.data.lm import load_model

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sae", action="append", default=None,
                   help="SAE folder (repeatable; default runs/demo/saes/gated from make demo)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--site", default="blocks.15.hook_resid_post")
    p.add_argument("--dataset", default="builtin:python-docs")
    p.add_argument("--context", type=int, default=128, help="tokens per window")
    p.add_argument("--tokens", type=int, default=200_000)
    p.add_argument("--batch-size", type=int, default=32, help="windows per forward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep", type=Path, default=None,
                   help="write the site into this new folder and keep it (default: a temporary)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default results/browse_throughput_<device>.json)")
    args = p.parse_args()
    args.sae = args.sae or ["runs/demo/saes/gated"]
    args.out = args.out or RESULTS / f"browse_throughput_{torch.device(args.device).type}.json"
    return args


def folder_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    args = parse_args()
    for path in args.sae:
        if not (Path(path) / "cfg.json").is_file():
            raise SystemExit(f"no SAE at {path}: run `make demo` first, or give --sae DIR")
    names = build.sae_names([Path(p) for p in args.sae])
    saes = {name: load_sae(path, device=args.device)
            for name, path in zip(names, args.sae, strict=True)}
    start = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    load_s = time.perf_counter() - start
    windows = token_windows(lm.tokenizer, args.dataset, context_size=args.context,
                            n_tokens=args.tokens, bos_token_id=lm.bos_token_id)
    batches = windows.split(args.batch_size)
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)

    @torch.inference_mode()
    def bare(batch: torch.Tensor) -> None:
        acts = lm.activations(batch, args.site)[:, 1:]
        for sae in saes.values():
            sae.encode(acts.reshape(-1, acts.shape[-1]).to(sae.W_dec.dtype))
        sync()

    bare(batches[0][:1])  # warm-up, outside the timings
    bare_s, browse_s = [], []

    def interleaved():
        for batch in batches:
            t = time.perf_counter()
            bare(batch)
            bare_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            yield batch
            sync()
            browse_s.append(time.perf_counter() - t)

    options = build.BrowseOptions()
    stats = collect(lm, saes, args.site, interleaved(), context_size=args.context,
                    n_tokens=windows.numel(), progress=False, **options.sampling())
    n_tokens = windows.numel()

    manifest = build.new_manifest(args.model, args.site, args.dataset, args.context, 1,  # BOS
                                  next(iter(stats.values())).n_tokens, options)
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            tmp = args.keep
            args.keep.mkdir(parents=True)
        t = time.perf_counter()
        finished = {k: s.finished() for k, s in stats.items()}
        build._write(Path(tmp), lm, saes, [Path(p) for p in args.sae], finished, manifest,
                     options)
        write_s = time.perf_counter() - t
        size, files = folder_size(Path(tmp))
        per_sae = {name: folder_size(Path(tmp) / "data" / name)[0] for name in saes}

    result = {
        "benchmark": "browse_throughput", "model": args.model, "site": args.site,
        "dataset": args.dataset, "context": args.context, "batch_size": args.batch_size,
        "device": str(lm.device), "model_dtype": str(lm.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "saes": {n: {"path": str(Path(p).resolve()),
                                                         "d_sae": saes[n].d_sae,
                                                         "architecture": saes[n].architecture}
                                                     for n, p in zip(names, args.sae, strict=True)},
        "tokens": n_tokens, "tokens_note": "forwarded, BOS included", "batches": len(batches),
        "model_load_s": load_s,
        "bare_s": sum(bare_s), "browse_s": sum(browse_s),
        "bare_tokens_per_s": n_tokens / sum(bare_s),
        "browse_tokens_per_s": n_tokens / sum(browse_s),
        "ratio": sum(bare_s) / sum(browse_s),
        "ratio_median_per_batch": statistics.median(
            b / c for b, c in zip(bare_s, browse_s, strict=True)),
        "write_s": write_s,
        "ratio_with_writing": sum(bare_s) / (sum(browse_s) + write_s),
        "site_bytes": size, "site_files": files, "sae_data_bytes": per_sae,
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    rows = [
        ("bare forward + encode", f"{result['bare_tokens_per_s']:.0f} tok/s",
         f"{result['bare_s']:.1f} s"),
        ("browse pass (collect)", f"{result['browse_tokens_per_s']:.0f} tok/s",
         f"{result['browse_s']:.1f} s"),
        ("browse / bare", f"{result['ratio']:.3f}",
         f"median per batch {result['ratio_median_per_batch']:.3f}"),
        ("writing the site", f"{result['write_s']:.1f} s",
         f"with it: {result['ratio_with_writing']:.3f} of bare"),
        ("site size", f"{size / 2**20:.1f} MiB", f"{files} files"),
    ]
    print(f"{args.model} {args.site}, {n_tokens} tokens, {len(batches)} batches of "
          f"{args.batch_size}x{args.context}, {', '.join(f'{n} ({saes[n].d_sae})' for n in saes)}"
          f", {lm.device}")
    for row in rows:
        print(f"  {row[0]:<24} {row[1]:>16}   {row[2]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
