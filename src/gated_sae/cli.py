"""The command line: a thin layer over the Python API. User errors print one line, exit 2.

    gated-sae cache  --site S --tokens N --out DIR [--model M --dataset D ...]
    gated-sae train  (--acts FILE|CACHE | --model M --site S [--dataset D]) --out DIR ...
    gated-sae eval   SAE_DIR (--acts FILE|CACHE | --model M [--site S --dataset D --tokens N])
    gated-sae sweep  (CONFIG | --preset P) --out DIR [--SETTING VALUE ...]
    gated-sae report SWEEP_DIR
    gated-sae demo   [--out DIR]
    gated-sae synth  --out FILE ...
    gated-sae browse SAE_DIR [SAE_DIR ...] --out DIR [--serve]
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import typing
from collections.abc import Iterable
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .browse.command import add_browse_command, cmd_browse
from .data.batches import DEFAULT_BUFFER_TOKENS, ModelBatches
from .data.cache import CACHE_DTYPES, build_cache
from .data.corpus import (
    DATASET_FORMS,
    DEFAULT_CONTEXT_SIZE,
    DEFAULT_DATASET,
    check_skip_positions,
)
from .data.lm import DEFAULT_MODEL
from .data.source import ActivationSource
from .data.synthetic import write_synthetic
from .distributed import DEFAULT_TIMEOUT_SECONDS, World, init_world, leave_world, rank_device
from .errors import ConfigError, DataError, GatedSAEError, check_positive_int
from .evaluate.lm_metrics import LM_BATCH_SIZE
from .evaluate.pipeline import SAE_BATCH_SIZE, evaluate_saes, evaluate_stored, heldout_windows
from .experiments.demo import run_demo
from .experiments.sweep import SweepConfig
from .train.trainer import PARALLEL, SAEConfig, TrainConfig

EVAL_TOKENS = 1 << 14  # held-out tokens `eval --model` measures by default
# What the flags of train and eval that describe activations computed by a model map to.
_SOURCE_FLAGS = ("dataset", "context_size", "text_field")
_MODEL_FLAGS = ("site", *_SOURCE_FLAGS, "model_dtype", "lm_batch_size")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"gated-sae: error: {message} (see {self.prog} --help)\n")


# --- flags ------------------------------------------------------------------------------------
#
SKIP_HELP = "leading positions of each window kept out of training and metrics (1: BOS)"
# A flag left out is None, so the Python API's own default applies; the help quotes that
# default from where it is set (a config dataclass's field, a function's keyword).


def _flag(parser: argparse.ArgumentParser, name: str, help: str, default: Any = None,
          **kwargs: Any) -> None:
    if default is not None:
        help += f" (default: {default})"
    parser.add_argument("--" + name.replace("_", "-"), help=help, **kwargs)


def _keyword_flag(parser: argparse.ArgumentParser, function: Any, name: str, help: str,
                  **kwargs: Any) -> None:
    """A flag for `function`'s keyword argument `name`."""
    _flag(parser, name, help, inspect.signature(function).parameters[name].default, **kwargs)


def _flagged(config: type) -> list[str]:
    """The fields of the dataclass `config` that have a help text: those that are flags."""
    return [f.name for f in fields(config) if "help" in f.metadata]


def _field_flags(parser: argparse.ArgumentParser, config: type) -> None:
    """A flag for each flagged field of the dataclass `config`, typed by its annotation."""
    hints = typing.get_type_hints(config)
    for f in fields(config):
        if f.name in _flagged(config):
            kind = next(t for t in typing.get_args(hints[f.name]) or [hints[f.name]]
                        if t is not type(None))
            default = None if f.default is MISSING else f.default
            _flag(parser, f.name, f.metadata["help"], default, type=kind)


def _given(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), yaml.safe_load(value)


def _count(text: str) -> int:
    """An integer >= 1, for sizes the command line checks itself (argparse names the flag)."""
    try:
        value: object = int(text)
    except ValueError:
        value = text
    try:
        return check_positive_int("value", value)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_model_flags(parser: argparse.ArgumentParser, eval_: bool = False) -> None:
    """Where activations come from when a model computes them: site, corpus, windows, dtype."""
    site_help = "activation site, e.g. blocks.3.hook_resid_post"
    dataset_default, context_default = DEFAULT_DATASET, DEFAULT_CONTEXT_SIZE
    if eval_:
        site_help += " (default: the SAE's metadata hook_name)"
        dataset_default = f"the SAE's training corpus if readable, else {DEFAULT_DATASET}"
        context_default = f"the SAE's metadata context_size, else {DEFAULT_CONTEXT_SIZE}"
    parser.add_argument("--site", help=site_help)
    parser.add_argument("--dataset", help=f"{DATASET_FORMS} (default: {dataset_default})")
    _keyword_flag(parser, ActivationSource, "text_field",
                  "field holding the text in .jsonl/.parquet/hf datasets")
    parser.add_argument("--context-size", type=int,
                        help=f"tokens per window, BOS included (default: {context_default})")
    parser.add_argument("--model-dtype",
                        help="float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 "
                        "on CUDA)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gated-sae", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    model_help = "a .gguf file, a saved model folder or a Hugging Face id"

    cache = commands.add_parser("cache", help="cache a model's activations at a site to disk")
    _flag(cache, "model", f"{DEFAULT_MODEL}, {model_help}", DEFAULT_MODEL)
    _add_model_flags(cache)
    cache.add_argument("--tokens", type=_count, required=True, help="tokens to cache")
    cache.add_argument("--out", required=True,
                       help="cache folder; rerun with the same arguments resumes")
    _keyword_flag(cache, build_cache, "dtype", "stored activation dtype",
                  choices=list(CACHE_DTYPES))
    cache.add_argument("--device", default="cpu")
    _keyword_flag(cache, build_cache, "batch_size", "windows per forward", type=_count)
    _keyword_flag(cache, build_cache, "shard_tokens", "tokens per shard", type=_count)
    _add_rank_timeout(cache)

    train = commands.add_parser(
        "train", help="train one SAE, or several (--config) on one stream of activations"
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--acts", help="activations: a .npy/.safetensors/.pt file [N, d_in] or a cache folder"
    )
    source.add_argument("--model", help=f"stream activations from this model ({model_help})")
    _add_model_flags(train)
    _keyword_flag(train, ModelBatches, "lm_batch_size", "windows per forward", type=_count)
    _keyword_flag(train, ModelBatches, "skip_positions", SKIP_HELP, type=int)
    _flag(train, "buffer_tokens", "shuffle buffer of a cache or model stream, in tokens",
          DEFAULT_BUFFER_TOKENS, type=_count)
    train.add_argument("--out", required=True, help="run folder; rerun with the same --out resumes")
    train.add_argument("--config", help="YAML file: run settings and a list 'saes'")
    _field_flags(train, SAEConfig)
    train.add_argument("--k", type=int, help="active latents per token (topk, batchtopk)")
    train.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                       help="architecture option, e.g. b_mag=false (repeatable)")
    _field_flags(train, TrainConfig)
    _add_rank_timeout(train)
    train.add_argument("--parallel", choices=PARALLEL,
                       help="under torchrun: saes spreads the SAEs over the ranks, data splits "
                       "every batch over them, latents shards every SAE's latents over them "
                       "(default: data for one SAE, else saes)")
    train.add_argument("--shard-latents", dest="parallel", action="store_const",
                       const="latents", help="the same as --parallel latents")

    evaluate = commands.add_parser(
        "eval", help="measure a saved SAE; prints JSON, writes SAE_DIR/metrics.json"
    )
    evaluate.add_argument("sae_dir")
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--acts", help="a .npy/.safetensors/.pt file [N, d_in] or a cache folder")
    source.add_argument("--model", help="held-out windows through this model, and LM metrics "
                        "(default: the SAE's metadata model_name)")
    _add_model_flags(evaluate, eval_=True)
    evaluate.add_argument("--tokens", type=_count, help="tokens to measure (default: all with "
                          f"--acts, {EVAL_TOKENS} with --model)")
    evaluate.add_argument("--batch-size", type=_count, default=SAE_BATCH_SIZE,
                          help=f"activations per SAE forward (default: {SAE_BATCH_SIZE})")
    _flag(evaluate, "lm_batch_size", "windows per forward", LM_BATCH_SIZE, type=_count)
    _flag(evaluate, "skip_positions", SKIP_HELP + " with --model (default: the SAE's "
          "metadata skip_positions, else 1)", type=int)
    evaluate.add_argument("--device", default="cpu")

    demo = commands.add_parser(
        "demo", help="cache SmolLM2-135M activations, train relu/gated/topk, report (offline)"
    )
    demo.add_argument("--out", default="runs/demo", help="output folder; rerunning resumes")
    _keyword_flag(demo, run_demo, "cache_tokens", "tokens to cache", type=_count)
    _keyword_flag(demo, run_demo, "train_tokens", "training tokens per SAE", type=_count)
    _keyword_flag(demo, run_demo, "browse_tokens", "tokens the feature browser reads",
                  type=_count)
    _keyword_flag(demo, run_demo, "device", "cpu, cuda or cuda:N")

    sweep = commands.add_parser(
        "sweep", help="train and evaluate a grid of SAEs; rerunning resumes",
        description="A flag below --out overrides the config's setting; its default is the "
        "one a config that leaves the setting out gets.",
    )
    sweep.add_argument("config", nargs="?", help="sweep YAML (or use --preset)")
    sweep.add_argument("--preset", help="questions (2-core CPU, under 90 minutes) or paper (GPU "
                       "scale)")
    sweep.add_argument("--out", required=True, help="sweep folder: results.csv, passes, cache")
    _field_flags(sweep, SweepConfig)
    _add_rank_timeout(sweep)

    report = commands.add_parser("report", help="write report.md and report.html for a sweep")
    report.add_argument("sweep_dir")

    synth = commands.add_parser("synth", help="write synthetic activations with known features")
    synth.add_argument("--out", required=True, help="file: .npy, .safetensors or .pt")
    synth.add_argument("--n", type=int, default=100_000, help="number of samples")
    synth.add_argument("--features", type=int, default=512, help="ground-truth features G")
    synth.add_argument("--dim", type=int, default=128, help="dimension h (G > h: superposition)")
    _keyword_flag(synth, write_synthetic, "mean_active", "mean active features per sample",
                  type=float)
    synth.add_argument("--correlated", action="store_true", help="correlated feature activity")
    _keyword_flag(synth, write_synthetic, "seed", "seed of the features and samples", type=int)
    add_browse_command(commands, _count)
    return parser


# --- shared helpers ---------------------------------------------------------------------------


def _add_rank_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rank-timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others before the job stops "
             f"with an error (default: {DEFAULT_TIMEOUT_SECONDS})")


def _check_device(device: str) -> None:
    from .data.lm import resolve_device

    resolve_device(device)


def _check_model_flags_unused(args: argparse.Namespace) -> None:
    given = list(_given(args, _MODEL_FLAGS))
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(f"{flag} applies when activations come from --model, not with --acts")


def _model_source(args: argparse.Namespace, model: str, site: str,
                  **recorded: Any) -> ActivationSource:
    """The activations the model flags describe, over `recorded` settings; checked before
    the model loads, so a bad corpus or window size costs no model load."""
    from .data.corpus import check_context_size, check_dataset

    settings = {k: v for k, v in recorded.items() if v is not None}
    source = ActivationSource(model, site, **{**settings, **_given(args, _SOURCE_FLAGS)})
    check_context_size(source.context_size)
    check_dataset(source.dataset)
    return source


def _load_lm(name: str, device: str, dtype: str | None):
    from transformers.utils import logging as hf_logging

    from .data.lm import load_model

    # A user error found after loading (a bad site, say) must stay one line on stderr.
    hf_logging.disable_progress_bar()
    return load_model(name, device=device, dtype=dtype)


# --- commands ---------------------------------------------------------------------------------


def cmd_cache(args: argparse.Namespace) -> None:
    _check_device(args.device)
    if args.site is None:
        raise ConfigError("cache needs --site, e.g. blocks.3.hook_resid_post")
    model = args.model or DEFAULT_MODEL
    source = _model_source(args, model, args.site)
    world = init_world(args.device, args.rank_timeout)
    lm = _load_lm(model, rank_device(args.device), args.model_dtype)
    out = build_cache(
        lm, source.site, source.dataset, n_tokens=args.tokens, out=args.out,
        context_size=source.context_size, text_field=source.text_field, world=world,
        **_given(args, ("dtype", "shard_tokens", "batch_size")),
    )
    if world.is_main:
        print(out)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    sae_flags = _flagged(SAEConfig)
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
        if _given(args, [*sae_flags, "k"]) or args.option:
            raise ConfigError("give SAEs either in --config or with --arch/--d-sae, not both")
    else:
        if not args.arch or args.d_sae is None:
            raise ConfigError("train needs --arch and --d-sae (or --config FILE.yaml)")
        options = dict(args.option)
        if args.k is not None:
            options["k"] = args.k
        raw = {"saes": [{**_given(args, sae_flags), "options": options}]}
    return TrainConfig.from_dict({**raw, **_given(args, _flagged(TrainConfig))})


def _train_source(args: argparse.Namespace, config: TrainConfig, world: World) -> tuple[Any, dict]:
    """The batches to train on and the metadata they give the SAE folders; the model's
    forward, if they come from one, split over the ranks."""
    from .data.activations_file import load_activations_file
    from .data.batches import ShuffledBatches, cache_batches
    from .data.cache import load_cache

    if args.acts is not None:
        _check_model_flags_unused(args)
        if Path(args.acts).is_dir():
            cache = load_cache(args.acts)
            batches = cache_batches(cache, config.batch_size, config.seed,
                                    **_given(args, ["buffer_tokens", "skip_positions"]))
            return batches, ActivationSource.of_cache(cache.manifest).sae_metadata(
                activation_cache=str(Path(args.acts).resolve()),
                skip_positions=batches.skip_positions,
            )
        for flag in ("buffer_tokens", "skip_positions"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} applies to a cache folder or "
                                  f"--model, not to the activations file {args.acts}")
        acts = load_activations_file(args.acts)
        return ShuffledBatches(acts, config.batch_size, seed=config.seed), {
            "dataset_path": str(args.acts)
        }

    if args.site is None:
        raise ConfigError("train --model needs --site, e.g. blocks.3.hook_resid_post")
    source = _model_source(args, args.model, args.site)
    lm = _load_lm(args.model, config.device, args.model_dtype)
    batches = ModelBatches(
        lm, source.site, source.dataset, config.batch_size, config.seed,
        context_size=source.context_size, text_field=source.text_field, world=world,
        **_given(args, ("lm_batch_size", "buffer_tokens", "skip_positions")),
    )
    return batches, source.sae_metadata(skip_positions=batches.skip_positions)


def cmd_train(args: argparse.Namespace) -> None:
    from .train.trainer import Trainer

    config = _train_config(args)
    _check_device(config.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder; give a folder")
    world = init_world(config.device, args.rank_timeout)
    config.device = rank_device(config.device)
    batches, metadata = _train_source(args, config, world)
    parallel = args.parallel or ("data" if len(config.saes) == 1 else "saes")
    Trainer(config, out, metadata, world, parallel).fit(batches)
    if world.is_main:  # every rank's SAEs are saved once fit returns
        for sae in config.saes:
            print(out / sae.name)


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


def _eval_model(args: argparse.Namespace, sae: Any) -> dict:
    """Held-out windows of the SAE's corpus through its model: the flags, else its metadata."""
    metadata = json.loads((Path(args.sae_dir) / "cfg.json").read_text()).get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}  # load_sae checked the file
    model = args.model or metadata.get("model_name")
    if not model:
        raise ConfigError(f"eval needs --acts PATH or --model M: {args.sae_dir} records "
                          "no model_name")
    site = args.site or metadata.get("hook_name")
    if not site:
        raise ConfigError(f"eval --model needs --site: {args.sae_dir} records no hook_name")
    source = _model_source(args, model, site, dataset=_trained_dataset(metadata),
                           context_size=metadata.get("context_size"))
    lm = _load_lm(model, args.device, args.model_dtype)
    windows = heldout_windows(lm, source, n_tokens=args.tokens or EVAL_TOKENS)
    skip = args.skip_positions if args.skip_positions is not None else metadata.get(
        "skip_positions", 1)
    check_skip_positions(skip, source.context_size)
    metrics = evaluate_saes(lm, {"": sae}, site, windows, sae_batch_size=args.batch_size,
                            skip_positions=skip, **_given(args, ["lm_batch_size"]))[""]
    return {**metrics, "model": model, "site": site, "dataset": source.dataset,
            "context_size": source.context_size, "skip_positions": skip, "split": "heldout"}


def cmd_eval(args: argparse.Namespace) -> None:
    from . import load_sae
    from .files import atomic_write_text

    _check_device(args.device)
    sae = load_sae(args.sae_dir, device=args.device)
    if args.acts is not None:
        _check_model_flags_unused(args)
        if args.skip_positions is not None:
            raise ConfigError("--skip-positions applies to eval --model; stored activations "
                              "are measured at every position but BOS")
        metrics = evaluate_stored(sae, args.acts, tokens=args.tokens, batch_size=args.batch_size)
    else:
        metrics = _eval_model(args, sae)
    text = json.dumps(metrics, indent=2)
    atomic_write_text(Path(args.sae_dir) / "metrics.json", text + "\n")
    print(text)


def cmd_synth(args: argparse.Namespace) -> None:
    from .data.synthetic import features_path

    write_synthetic(args.out, args.n, n_features=args.features, d=args.dim,
                    correlated=args.correlated, **_given(args, ("mean_active", "seed")))
    print(args.out)
    print(features_path(args.out))


def cmd_demo(args: argparse.Namespace) -> None:
    report = run_demo(args.out, **_given(args, ("cache_tokens", "train_tokens",
                                                 "browse_tokens", "device")))
    print(f"report: {report}")


def cmd_sweep(args: argparse.Namespace) -> None:
    from .experiments.sweep import Sweep, load_sweep_config

    if (args.config is None) == (args.preset is None):
        raise ConfigError("sweep needs exactly one of a CONFIG file or --preset")
    config = load_sweep_config(args.config, args.preset)
    config = replace(config, **_given(args, _flagged(SweepConfig)))
    world = init_world(config.device, args.rank_timeout)
    results = Sweep(replace(config, device=rank_device(config.device)), args.out, world).run()
    if world.is_main:
        print(f"results: {results}")


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
        leave_world(together=True)
    except GatedSAEError as e:
        print(f"gated-sae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gated-sae: interrupted", file=sys.stderr)
        return 130
    finally:
        leave_world()
    return 0
