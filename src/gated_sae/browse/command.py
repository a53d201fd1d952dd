"""The `browse` subcommand: its flags and what it runs (cli.py registers it)."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .build import BrowseOptions

# Flags that set a BrowseOptions field, with their help; the defaults are the dataclass's.
_OPTION_FLAGS = {
    "tokens": "tokens to read",
    "context_size": "tokens per window (default: the SAEs' metadata, else 128)",
    "skip_positions": "leading positions of each window left out, BOS first (default: the "
                      "SAEs' metadata skip_positions, else 1)",
    "top": "top activating contexts per latent",
    "random": "randomly sampled contexts per latent",
    "batch_size": "windows per forward",
}


def add_browse_command(commands, count) -> None:
    """Add `browse` to the subcommands; `count` parses integers >= 1."""
    browse = commands.add_parser(
        "browse", help="write a static feature-browser site for SAEs (--serve: prompt view)")
    browse.add_argument("sae_dirs", nargs="*", metavar="SAE_DIR")
    browse.add_argument("--out", required=True, help="site folder (rewritten if it holds a site)")
    browse.add_argument("--model", help="default: the SAEs' metadata model_name")
    browse.add_argument("--site", help="default: the SAEs' metadata hook_name")
    browse.add_argument("--dataset", help="default: the SAEs' corpus if readable, else "
                        "builtin:python-docs")
    browse.add_argument("--text-field", default="text")
    for name, text in _OPTION_FLAGS.items():
        default = getattr(BrowseOptions, name)
        browse.add_argument("--" + name.replace("_", "-"),
                            type=int if name == "skip_positions" else count,  # 0 keeps BOS
                            help=text if default is None else f"{text} (default {default})")
    browse.add_argument("--device", default="cpu")
    browse.add_argument("--model-dtype", choices=("float32", "bfloat16", "float16"))
    browse.add_argument("--serve", action="store_true",
                        help="then serve the site on 127.0.0.1 with the prompt view")
    browse.add_argument("--port", type=int, default=8000, help="port of --serve (0: any free)")


def cmd_browse(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    from .build import build_site
    from .server import make_server

    # A user error found after loading the model must stay one line on stderr.
    hf_logging.disable_progress_bar()
    if not args.sae_dirs and not args.serve:
        raise ConfigError("browse needs SAE_DIR folders (or --serve to serve the site in --out)")
    if args.sae_dirs:
        given = {name: getattr(args, name) for name in _OPTION_FLAGS
                 if getattr(args, name) is not None}
        index = build_site(args.sae_dirs, args.out, model=args.model, site=args.site,
                           dataset=args.dataset, text_field=args.text_field, device=args.device,
                           model_dtype=args.model_dtype, options=BrowseOptions(**given))
        print(index)
    if args.serve:
        server = make_server(args.out, port=args.port, device=args.device,
                             model_dtype=args.model_dtype)
        host, port = server.server_address[:2]
        print(f"serving {args.out} at http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr)
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # the way to stop a server: not an error
            pass
        finally:
            server.server_close()
