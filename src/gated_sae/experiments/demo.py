"""`gated-sae demo`: the whole pipeline, offline, on the embedded model and corpus.

Caches SmolLM2-135M activations at the middle of the residual stream, trains relu, gated and
topk SAEs on the same stream, measures them (activation metrics and loss recovered on
held-out text), builds their feature browser and writes a short report with a table, a plot
and links to the browser.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..browse import BrowseOptions, build_site, site_pages
from ..browse.build import read_manifest
from ..data.batches import cache_batches
from ..data.cache import build_cache, load_cache
from ..data.lm import DEFAULT_MODEL, DEFAULT_SITE, LanguageModel, load_model
from ..data.source import ActivationSource
from ..errors import DataError
from ..evaluate.pipeline import evaluate_saes, heldout_windows
from ..files import atomic_write_bytes, atomic_write_text
from ..train.trainer import SAEConfig, TrainConfig, Trainer

D_SAE = 4608

# Short-run settings: at a few hundred steps the papers' lr (3e-4) leaves the encoder biases
# far from where sparsity needs them, so the demo trains at the rates the default rule gives
# a run of its length (docs/training.md), written out so that the report names them. The λs
# put relu and gated near topk's L0 of 32, so the table compares like with like (a probe on
# the demo's cache: relu λ 2 → L0 31, λ 3 → 11; gated λ 3 → 44, λ 5 → 14; at λ 1 they
# ended at 120 and 219).
DEMO_SAES = [
    SAEConfig("relu", D_SAE, lr=1e-2, sparsity_coef=2.0),
    SAEConfig("gated", D_SAE, lr=1e-2, sparsity_coef=3.5),
    SAEConfig("topk", D_SAE, lr=5e-3, options={"k": 32}),
]
# SmolLM2 puts outliers on the first token after BOS as well (docs/training.md).
SKIP_POSITIONS = 2
COLUMNS = ["l0", "fvu", "gamma", "dead_fraction", "loss_recovered", "delta_loss", "kl"]


def run_demo(
    out: str | Path,
    *,
    cache_tokens: int = 100_000,
    train_tokens: int = 400_000,
    eval_windows: int = 48,
    browse_tokens: int = 20_000,
    batch_size: int = 1024,
    device: str = "cpu",
    seed: int = 0,
) -> Path:
    """Run the demo into `out` (rerunning resumes) and return the report's path."""
    out = Path(out)
    lm = load_model(DEFAULT_MODEL, device=device)
    cache = load_cache(build_cache(lm, DEFAULT_SITE, n_tokens=cache_tokens, out=out / "cache"))
    source = ActivationSource.of_cache(cache.manifest)
    config = TrainConfig(
        saes=[SAEConfig(**{**vars(s), "options": dict(s.options)}) for s in DEMO_SAES],
        batch_size=batch_size,
        tokens=train_tokens,
        seed=seed,
        device=device,
        lr_warmup_steps=20,
        checkpoint_every=100,
    )
    metadata = source.sae_metadata(skip_positions=SKIP_POSITIONS)
    trainer = Trainer(config, out / "saes", metadata)
    saes = trainer.fit(cache_batches(cache, batch_size, seed, skip_positions=SKIP_POSITIONS))

    windows = heldout_windows(lm, source, n_windows=eval_windows)
    rows = evaluate_saes(lm, saes, source.site, windows, skip_positions=SKIP_POSITIONS)
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    plot_path = out / "demo.png"
    _plot(rows, source, plot_path)
    browse = _browse(lm, [trainer.sae_dir(name) for name in saes], out / "browse",
                     browse_tokens)
    report = out / "report.md"
    atomic_write_text(report, _report(rows, source, config, cache.n_tokens, plot_path.name)
                      + _browse_links(browse, report.parent))
    return report


def _browse(lm: LanguageModel, sae_dirs: list[Path], site: Path, tokens: int) -> Path:
    """The SAEs' feature browser in `site`, built unless it holds one built from these
    folders with these options (a finished run's SAEs never change: the trainer refuses
    other settings in the same folder)."""
    options = BrowseOptions(tokens=tokens)
    try:
        manifest = read_manifest(site)
    except DataError:  # none yet
        manifest = None
    if (manifest is None or manifest["options"] != asdict(options)
            or [s["path"] for s in manifest["saes"]] != [str(p.resolve()) for p in sae_dirs]):
        build_site(sae_dirs, site, lm=lm, options=options)
    return site


def _browse_links(site: Path, start: Path) -> str:
    """The report's paragraph linking to the browser in `site`, relative to `start`."""
    pages = site_pages(site)
    home = pages.pop("home")
    prefix = site.relative_to(start).as_posix()
    manifest = read_manifest(site)
    links = " · ".join(f"[{name}]({prefix}/{page})" for name, page in pages.items())
    return (
        f"\n[Feature browser]({prefix}/{home}) of the SAEs ({links}): each latent's "
        f"top and sampled contexts over {manifest['tokens']:,} tokens, its logit effects and "
        "its nearest latents, and the matching across SAEs. It opens from disk; "
        f"`gated-sae browse --serve --out {site}` adds the prompt view.\n"
    )


def _plot(rows: dict, source: ActivationSource, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, row in rows.items():
        for ax, key in zip(axes, ("loss_recovered", "fvu"), strict=True):
            ax.scatter(row["l0"], row[key], s=60, label=name)
            ax.annotate(name, (row["l0"], row[key]), textcoords="offset points", xytext=(6, 4))
    for ax, label in zip(
        axes, ("loss recovered (higher is better)", "FVU (lower is better)"), strict=True
    ):
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{source.model} {source.site}, d_sae {D_SAE}")
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def _report(
    rows: dict, source: ActivationSource, config: TrainConfig, cached_tokens: int, plot_name: str
) -> str:
    header = "| SAE | " + " | ".join(COLUMNS) + " |\n|" + "---|" * (len(COLUMNS) + 1) + "\n"
    body = "".join(
        f"| {name} | " + " | ".join(f"{row[c]:.4g}" for c in COLUMNS) + " |\n"
        for name, row in rows.items()
    )
    best = max(rows, key=lambda n: rows[n]["loss_recovered"])
    settings = "\n".join(
        f"- {s.name}: lr {s.lr:g}, "
        + (
            f"k {s.options['k']}"
            if "k" in s.options
            else f"sparsity coefficient {s.sparsity_coef:g}"
        )
        for s in config.saes
    )
    return (
        f"# gated-sae demo\n\n"
        f"{source.model} at `{source.site}`, corpus `{source.dataset}`: "
        f"{cached_tokens:,} cached tokens, "
        f"{config.tokens:,} training tokens (batch {config.batch_size}), d_sae {D_SAE}, "
        f"torch {torch.__version__}.\n\n{settings}\n\n"
        f"Measured on {rows[best]['n_tokens']:,} held-out tokens (BOS and the token after it "
        f"excluded: docs/training.md), the LM metrics on {rows[best]['lm_n_tokens']:,} "
        "predictions. "
        f"Best loss recovered: **{best}**, {rows[best]['loss_recovered']:.3f}.\n\n"
        f"{header}{body}\n![L0 against fidelity]({plot_name})\n\n"
        "A short run: these SAEs are far from converged, so the numbers show the pipeline "
        "working, not the architectures' final ranking; `gated-sae sweep` does the comparison.\n"
    )
