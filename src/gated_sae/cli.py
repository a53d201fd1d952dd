"""The command line: a thin layer over the Python API. User errors print one line, exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from .errors import ConfigError, DataError, GatedSAEError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gated-sae", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one SAE, or several (--config) on one stream")
    train.add_argument(
        "--acts", required=True, help="activations: .npy, .safetensors or .pt [N, d_in]"
    )
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
    for flag, kind in [
        ("--batch-size", int),
        ("--tokens", int),
        ("--seed", int),
        ("--device", str),
        ("--checkpoint-every", int),
        ("--wandb-project", str),
    ]:
        train.add_argument(flag, type=kind)

    evaluate = commands.add_parser(
        "eval", help="measure a saved SAE; prints JSON, writes metrics.json"
    )
    evaluate.add_argument("sae_dir")
    evaluate.add_argument("--acts", required=True, help="activations file [N, d_in]")
    evaluate.add_argument("--batch-size", type=int, default=4096)

    synth = commands.add_parser("synth", help="write synthetic activations with known features")
    synth.add_argument("--out", required=True, help="file: .npy, .safetensors or .pt")
    synth.add_argument("--n", type=int, default=100_000, help="number of samples")
    synth.add_argument("--features", type=int, default=512, help="ground-truth features G")
    synth.add_argument("--dim", type=int, default=128, help="dimension h (G > h: superposition)")
    synth.add_argument("--mean-active", type=float, default=5.0)
    synth.add_argument("--correlated", action="store_true", help="correlated feature activity")
    synth.add_argument("--seed", type=int, default=0)
    return parser


def _train_config(args):
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
        if not args.arch or not args.d_sae:
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
    for key in ("batch_size", "tokens", "seed", "device", "checkpoint_every", "wandb_project"):
        if getattr(args, key) is not None:
            raw[key] = getattr(args, key)
    return TrainConfig.from_dict(raw)


def cmd_train(args) -> None:
    from .data.cache import ShuffledBatches, load_activations_file
    from .train.trainer import Trainer

    config = _train_config(args)
    acts = load_activations_file(args.acts)
    batches = ShuffledBatches(acts, config.batch_size, seed=config.seed)
    saes = Trainer(config, args.out, metadata={"dataset_path": str(args.acts)}).fit(batches)
    for name in saes:
        print(Path(args.out) / name)


def cmd_eval(args) -> None:
    from . import load_sae
    from .data.cache import load_activations_file
    from .evaluate.metrics import activation_metrics
    from .train.checkpoint import atomic_write_text

    sae = load_sae(args.sae_dir)
    acts = load_activations_file(args.acts)
    if acts.shape[1] != sae.d_in:
        raise DataError(f"{args.acts} has d_in {acts.shape[1]}, but the SAE expects {sae.d_in}")
    metrics = activation_metrics(sae, acts.split(args.batch_size))
    metrics.pop("feature_density")
    text = json.dumps(metrics, indent=2)
    atomic_write_text(Path(args.sae_dir) / "metrics.json", text + "\n")
    print(text)


def cmd_synth(args) -> None:
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


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "synth": cmd_synth}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except GatedSAEError as e:
        print(f"gated-sae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gated-sae: interrupted", file=sys.stderr)
        return 130
    return 0
