"""The command line: a thin layer over the Python API. User errors print one line, exit 2.

    gated-sae cache  --site S --tokens N --out DIR [--model M --dataset D ...]
    gated-sae train  (--acts FILE|CACHE | --model M --site S [--dataset D]) --out DIR ...
    gated-sae eval   SAE_DIR (--acts FILE|CACHE | --model M [--site S --dataset D --tokens N])
    gated-sae synth  --out FILE ...
    gated-sae browse SAE_DIR [SAE_DIR ...] --out DIR [--serve]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from .browse.command import add_browse_command, cmd_browse
from .errors import ConfigError, DataError, GatedSAEError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_DATASET = "builtin:python-docs"  # as data.corpus.DEFAULT_DATASET, without importing it
MODEL_DTYPES = ("float32", "bfloat16", "float16")
CACHE_DTYPES = ("float32", "float16", "bfloat16")
BUFFER_TOKENS = 1 << 18  # shuffle buffer of cache and model streams
# Flags of train/eval that only mean something when activations come from a model.
_MODEL_FLAGS = ("site", "dataset", "context_size", "model_dtype", "lm_batch_size", "text_field")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"gated-sae: error: {message} (see {self.prog} --help)\n")


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), yaml.safe_load(value)


def _count(text: str) -> int:
    """An integer >= 1, for sizes the command line checks itself."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; accepted: an integer >= 1")
    return value


def _add_model_flags(parser: argparse.ArgumentParser, defaults: bool, eval_: bool = False) -> None:
    """Where activations come from when they are computed: site, corpus, windows, dtype.

    Without `defaults` they default to None, so that giving one where it does not apply
    (with --acts) is an error rather than silently ignored.
    """
    site_help = "activation site, e.g. blocks.3.hook_resid_post"
    dataset_default = "builtin:python-docs"
    context_default = "128"
    if eval_:
        site_help += " (default: the SAE's metadata hook_name)"
        dataset_default = "the SAE's training corpus if readable, else builtin:python-docs"
        context_default = "the SAE's metadata context_size, else 128"
    parser.add_argument("--site", help=site_help)
    parser.add_argument(
        "--dataset",
        default=DEFAULT_DATASET if defaults else None,
        help="builtin:python-docs, builtin:python-source, hf:NAME[:CONFIG[:SPLIT]], or a "
        f".txt/.jsonl/.parquet file or folder (default: {dataset_default})",
    )
    parser.add_argument("--text-field", default="text" if defaults else None,
                        help="field holding the text in .jsonl/.parquet/hf datasets")
    parser.add_argument("--context-size", type=int, default=128 if defaults else None,
                        help=f"tokens per window, BOS included (default: {context_default})")
    parser.add_argument("--model-dtype", choices=MODEL_DTYPES,
                        help="model weights (default: float32 on CPU, bfloat16 on CUDA)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gated-sae", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    cache = commands.add_parser("cache", help="cache a model's activations at a site to disk")
    cache.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"{DEFAULT_MODEL} (default), a .gguf file, a saved model folder or "
                       "a Hugging Face id")
    _add_model_flags(cache, defaults=True)
    cache.add_argument("--tokens", type=_count, required=True, help="tokens to cache")
    cache.add_argument("--out", required=True,
                       help="cache folder; rerun with the same arguments resumes")
    cache.add_argument("--dtype", choices=CACHE_DTYPES, default="float32",
                       help="stored activation dtype")
    cache.add_argument("--device", default="cpu")
    cache.add_argument("--batch-size", type=_count, default=32, help="windows per forward")
    cache.add_argument("--shard-tokens", type=_count, default=1 << 18, help="tokens per shard")

    train = commands.add_parser(
        "train", help="train one SAE, or several (--config) on one stream of activations"
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--acts", help="activations: a .npy/.safetensors/.pt file [N, d_in] or a cache folder"
    )
    source.add_argument("--model", help="stream activations from this model (no cache)")
    _add_model_flags(train, defaults=False)
    train.add_argument("--lm-batch-size", type=_count, help="windows per forward (default 32)")
    train.add_argument("--buffer-tokens", type=_count,
                       help="shuffle buffer of a cache or model stream, in tokens (default 2^18)")
    train.add_argument("--out", required=True, help="run folder; rerun with the same --out resumes")
    train.add_argument("--config", help="YAML file: run settings and a list 'saes'")
    train.add_argument("--arch", help="relu, gated, topk, batchtopk or jumprelu")
    train.add_argument("--d-sae", type=int, help="number of latents")
    train.add_argument("--lr", type=float, help="learning rate (default: the architecture's)")
    train.add_argument("--sparsity-coef", type=float, help="λ of the sparsity penalty")
    train.add_argument("--k", type=int, help="active latents per token (topk, batchtopk)")
    train.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="architecture option, e.g. b_mag=false (repeatable)",
    )
    for flag, kind, text in [
        ("--batch-size", int, "activations per SAE step (default 4096)"),
        ("--tokens", int, "training tokens (default 10M)"),
        ("--seed", int, "seed of initialisation and shuffling (default 0)"),
        ("--device", str, "cpu, cuda or cuda:N; a --model runs there too"),
        ("--checkpoint-every", int, "steps between checkpoints (default 500)"),
        ("--wandb-project", str, "also log to this wandb project"),
    ]:
        train.add_argument(flag, type=kind, help=text)
    train.add_argument("--step",
                       help="dense, sparse, or auto: the cheaper at each step's density "
                       "(default auto)")
    train.add_argument("--precision",
                       help="float32, or bf16: bfloat16 autocast over float32 weights "
                       "(default float32)")

    evaluate = commands.add_parser(
        "eval", help="measure a saved SAE; prints JSON, writes SAE_DIR/metrics.json"
    )
    evaluate.add_argument("sae_dir")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--acts", help="a .npy/.safetensors/.pt file [N, d_in] or a cache folder")
    source.add_argument("--model", help="held-out windows through this model, and LM metrics "
                        "(default: the SAE's metadata model_name)")
    _add_model_flags(evaluate, defaults=False, eval_=True)
    evaluate.add_argument("--tokens", type=_count,
                          help="tokens to measure (default: all with --acts, 16384 with --model)")
    evaluate.add_argument("--batch-size", type=_count, default=4096,
                          help="activations per SAE forward")
    evaluate.add_argument("--lm-batch-size", type=_count, help="windows per forward (default 8)")
    evaluate.add_argument("--device", default="cpu")

    demo = commands.add_parser(
        "demo", help="cache SmolLM2-135M activations, train relu/gated/topk, report (offline)"
    )
    demo.add_argument("--out", default="runs/demo", help="output folder; rerunning resumes")
    demo.add_argument("--cache-tokens", type=int, default=100_000)
    demo.add_argument("--train-tokens", type=int, default=400_000)
    demo.add_argument("--device", default="cpu")

    sweep = commands.add_parser(
        "sweep", help="train and evaluate a grid of SAEs; rerunning resumes"
    )
    sweep.add_argument("config", nargs="?", help="sweep YAML (or use --preset)")
    sweep.add_argument("--preset", help="questions (2-core CPU, ~1 hour) or paper (GPU scale)")
    sweep.add_argument("--out", required=True, help="sweep folder: results.csv, passes, cache")
    sweep.add_argument("--device", help="override the config's device")

    report = commands.add_parser("report", help="write report.md and report.html for a sweep")
    report.add_argument("sweep_dir")

    synth = commands.add_parser("synth", help="write synthetic activations with known features")
    synth.add_argument("--out", required=True, help="file: .npy, .safetensors or .pt")
    synth.add_argument("--n", type=int, default=100_000, help="number of samples")
    synth.add_argument("--features", type=int, default=512, help="ground-truth features G")
    synth.add_argument("--dim", type=int, default=128, help="dimension h (G > h: superposition)")
    synth.add_argument("--mean-active", type=float, default=5.0)
    synth.add_argument("--correlated", action="store_true", help="correlated feature activity")
    synth.add_argument("--seed", type=int, default=0)
    add_browse_command(commands, _count)
    return parser


# --- shared helpers ---------------------------------------------------------------------------


def _check_device(device: str) -> None:
    from .data.lm import _device

    _device(device)


def _check_model_flags_unused(args: argparse.Namespace) -> None:
    given = [name for name in _MODEL_FLAGS if getattr(args, name, None) is not None]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(f"{flag} applies when activations come from --model, not with --acts")


def _load_lm(name: str, device: str, dtype: str | None):
    from transformers.utils import logging as hf_logging

    from .data.lm import load_model

    # A user error found after loading (a bad site, say) must stay one line on stderr.
    hf_logging.disable_progress_bar()
    return load_model(name, device=device, dtype=dtype)


def _sae_metadata(sae_dir: str) -> dict:
    """The `metadata` of an SAE folder's cfg.json (load_sae has already validated the file)."""
    metadata = json.loads((Path(sae_dir) / "cfg.json").read_text()).get("metadata")
    return metadata if isinstance(metadata, dict) else {}


# --- cache ------------------------------------------------------------------------------------


def cmd_cache(args: argparse.Namespace) -> None:
    from .data.cache import build_cache
    from .data.corpus import check_context_size, check_dataset

    _check_device(args.device)
    check_context_size(args.context_size)
    check_dataset(args.dataset)
    if args.site is None:
        raise ConfigError("cache needs --site, e.g. blocks.3.hook_resid_post")
    lm = _load_lm(args.model, args.device, args.model_dtype)
    out = build_cache(
        lm,
        args.site,
        args.dataset,
        n_tokens=args.tokens,
        out=args.out,
        context_size=args.context_size,
        dtype=args.dtype,
        shard_tokens=args.shard_tokens,
        batch_size=args.batch_size,
        text_field=args.text_field,
    )
    print(out)


# --- train ------------------------------------------------------------------------------------


def _train_config(args: argparse.Namespace):
    from .train.trainer import TrainConfig

    if args.config:
        try:
            raw = yaml.safe_load(Path(args.config).read_text())
        except OSError as e:
            raise DataError(f"cannot read config {args.config}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(
                f"config {args.config} is not valid YAML: {str(e).splitlines()[0]}"
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config {args.config} must be a mapping of run settings")
        if args.arch or args.d_sae or args.option:
            raise ConfigError("give SAEs either in --config or with --arch/--d-sae, not both")
    else:
        if not args.arch or args.d_sae is None:
            raise ConfigError("train needs --arch and --d-sae (or --config FILE.yaml)")
        options = dict(args.option)
        if args.k is not None:
            options["k"] = args.k
        sae = {
            "arch": args.arch,
            "d_sae": args.d_sae,
            "lr": args.lr,
            "sparsity_coef": args.sparsity_coef,
            "options": options,
        }
        raw = {"saes": [sae]}
    for key in ("batch_size", "tokens", "seed", "device", "checkpoint_every", "wandb_project",
                "step", "precision"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    return TrainConfig.from_dict(raw)


def _train_source(args: argparse.Namespace, config) -> tuple[Any, dict]:
    """The batches to train on and the metadata they give the SAE folders."""
    from .data.cache import (
        ShuffledBatches,
        cache_batches,
        load_activations_file,
        load_cache,
        model_batches,
    )

    if args.acts is not None:
        _check_model_flags_unused(args)
        if Path(args.acts).is_dir():
            cache = load_cache(args.acts)
            manifest = cache.manifest
            batches = cache_batches(cache, config.batch_size, config.seed,
                                    buffer_tokens=args.buffer_tokens or BUFFER_TOKENS)
            return batches, {
                "model_name": manifest["model"],
                "hook_name": manifest["site"],
                "context_size": manifest["context_size"],
                "dataset_path": manifest["dataset"],
                "prepend_bos": True,
                "activation_cache": str(Path(args.acts).resolve()),
            }
        if args.buffer_tokens is not None:
            raise ConfigError("--buffer-tokens applies to a cache folder or --model, not to "
                              f"the activations file {args.acts}")
        acts = load_activations_file(args.acts)
        return ShuffledBatches(acts, config.batch_size, seed=config.seed), {
            "dataset_path": str(args.acts)
        }

    from .data.cache import _model_label
    from .data.corpus import check_context_size, check_dataset, describe_dataset

    if args.site is None:
        raise ConfigError("train --model needs --site, e.g. blocks.3.hook_resid_post")
    dataset = args.dataset or DEFAULT_DATASET
    context_size = 128 if args.context_size is None else args.context_size
    check_context_size(context_size)
    check_dataset(dataset)
    lm = _load_lm(args.model, config.device, args.model_dtype)
    batches = model_batches(
        lm,
        args.site,
        dataset,
        config.batch_size,
        config.seed,
        context_size=context_size,
        lm_batch_size=args.lm_batch_size or 32,
        buffer_tokens=args.buffer_tokens or BUFFER_TOKENS,
        text_field=args.text_field or "text",
    )
    return batches, {
        "model_name": _model_label(lm),
        "hook_name": args.site,
        "context_size": context_size,
        "dataset_path": describe_dataset(dataset),
        "prepend_bos": True,
    }


def cmd_train(args: argparse.Namespace) -> None:
    from .train.trainer import Trainer

    config = _train_config(args)
    _check_device(config.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder; give a folder")
    batches, metadata = _train_source(args, config)
    saes = Trainer(config, out, metadata=metadata).fit(batches)
    for name in saes:
        print(out / name)


# --- eval -------------------------------------------------------------------------------------


def _cache_rows(cache, tokens: int | None, batch_size: int) -> Iterator:
    """The cache's activations without BOS positions, window by window, as float32 batches
    [≤ batch_size, d_in]: the first `tokens` of them, or all."""
    per_window = cache.context_size - 1
    total = cache.n_seq * per_window if tokens is None else tokens
    windows = max(1, batch_size // per_window)
    for start in range(0, cache.n_seq, windows):
        if total <= 0:
            return
        rows = cache.activations.rows(start, start + windows)[:, 1:]
        flat = rows.reshape(-1, cache.d_in)[:total].float()
        total -= flat.shape[0]
        yield flat


def _eval_acts(args: argparse.Namespace, sae) -> dict:
    from .data.cache import load_activations_file, load_cache
    from .evaluate.metrics import activation_metrics

    _check_model_flags_unused(args)
    if Path(args.acts).is_dir():
        cache = load_cache(args.acts)
        width = cache.d_in
        available = cache.n_seq * (cache.context_size - 1)
        if args.tokens is not None and args.tokens > available:
            raise DataError(f"--tokens {args.tokens} is more than the {available} non-BOS "
                            f"tokens in cache {args.acts}")
        batches = _cache_rows(cache, args.tokens, args.batch_size)
    else:
        acts = load_activations_file(args.acts)
        width = acts.shape[1]
        if args.tokens is not None:
            if args.tokens > acts.shape[0]:
                raise DataError(f"--tokens {args.tokens} is more than the {acts.shape[0]} "
                                f"activations in {args.acts}")
            acts = acts[: args.tokens]
        batches = acts.split(args.batch_size)
    if width != sae.d_in:
        raise DataError(f"{args.acts} has d_in {width}, but the SAE expects {sae.d_in}")
    return activation_metrics(sae, batches)


def _trained_dataset(metadata: dict) -> str | None:
    """The corpus an SAE was trained on, if its metadata names one we can read."""
    from .data.corpus import check_dataset

    dataset = metadata.get("dataset_path")
    if not isinstance(dataset, str):
        return None
    try:
        check_dataset(dataset)
    except GatedSAEError:  # an activations file, or a SAELens hub name
        return None
    return dataset


def _eval_model(args: argparse.Namespace, sae, model: str, metadata: dict) -> dict:
    from .data.corpus import check_context_size, check_dataset, describe_dataset, token_windows
    from .evaluate.lm_metrics import lm_metrics
    from .evaluate.metrics import activation_metrics

    site = args.site or metadata.get("hook_name")
    if not site:
        raise ConfigError(f"eval --model needs --site: {args.sae_dir} records no hook_name")
    dataset = args.dataset or _trained_dataset(metadata) or DEFAULT_DATASET
    context_size = args.context_size
    if context_size is None:
        context_size = metadata.get("context_size") or 128
    tokens = args.tokens or 1 << 14
    lm_batch = args.lm_batch_size or 8
    check_context_size(context_size)
    check_dataset(dataset)
    lm = _load_lm(model, args.device, args.model_dtype)
    check_context_size(context_size, lm.n_ctx)
    windows = token_windows(lm.tokenizer, dataset, context_size=context_size, n_tokens=tokens,
                            split="heldout", text_field=args.text_field or "text",
                            bos_token_id=lm.bos_token_id)
    width = lm.activations(windows[:1, :2], site).shape[-1]
    if width != sae.d_in:
        raise DataError(f"site {site!r} of {model} has width {width}, but the SAE expects "
                        f"d_in {sae.d_in}")

    def batches() -> Iterator:
        for start in range(0, len(windows), lm_batch):
            acts = lm.activations(windows[start:start + lm_batch], site)
            yield acts[:, 1:].reshape(-1, acts.shape[-1]).float()

    metrics = activation_metrics(sae, batches())
    lm_result = lm_metrics(lm, sae, site, windows, batch_size=lm_batch)
    lm_result["lm_n_tokens"] = lm_result.pop("n_tokens")
    return {
        **metrics,
        **lm_result,
        "model": model,
        "site": site,
        "dataset": describe_dataset(dataset),
        "context_size": context_size,
        "split": "heldout",
    }


def cmd_eval(args: argparse.Namespace) -> None:
    from . import load_sae
    from .files import atomic_write_text

    _check_device(args.device)
    sae = load_sae(args.sae_dir, device=args.device)
    metadata = _sae_metadata(args.sae_dir)
    if args.acts is not None:
        metrics = _eval_acts(args, sae)
    else:
        model = args.model or metadata.get("model_name")
        if not model:
            raise ConfigError(f"eval needs --acts PATH or --model M: {args.sae_dir} records "
                              "no model_name")
        metrics = _eval_model(args, sae, model, metadata)
    metrics.pop("feature_density")
    text = json.dumps(metrics, indent=2)
    atomic_write_text(Path(args.sae_dir) / "metrics.json", text + "\n")
    print(text)


# --- synth ------------------------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> None:
    from .data.synthetic import features_path, write_synthetic

    write_synthetic(
        args.out,
        args.n,
        n_features=args.features,
        d=args.dim,
        mean_active=args.mean_active,
        correlated=args.correlated,
        seed=args.seed,
    )
    print(args.out)
    print(features_path(args.out))


def cmd_demo(args: argparse.Namespace) -> None:
    from .experiments.demo import run_demo

    report = run_demo(
        args.out, cache_tokens=args.cache_tokens, train_tokens=args.train_tokens,
        device=args.device,
    )
    print(f"report: {report}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .experiments.sweep import Sweep, load_sweep_config

    if (args.config is None) == (args.preset is None):
        raise ConfigError("sweep needs exactly one of a CONFIG file or --preset")
    config = load_sweep_config(args.config, args.preset)
    if args.device:
        config.device = args.device
    print(f"results: {Sweep(config, args.out).run()}")


def cmd_report(args: argparse.Namespace) -> None:
    from .experiments.report import write_report

    for path in write_report(args.sweep_dir):
        print(path)


COMMANDS = {
    "cache": cmd_cache, "train": cmd_train, "eval": cmd_eval, "demo": cmd_demo,
    "sweep": cmd_sweep, "report": cmd_report, "synth": cmd_synth, "browse": cmd_browse,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else 2
    try:
        COMMANDS[args.command](args)
    except GatedSAEError as e:
        print(f"gated-sae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gated-sae: interrupted", file=sys.stderr)
        return 130
    return 0
