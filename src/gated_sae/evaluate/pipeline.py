"""The evaluation pipeline: held-out windows of an SAE's training corpus, read through its
model, give each SAE its activation metrics at the site and its LM metrics with the SAE
spliced in. Many SAEs are measured at once, sharing the windows, the site's activations and
the clean and zero-ablation forwards. Stored activations (a file or a cache) give the
activation metrics alone."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ..data.activations_file import load_activations_file
from ..data.cache import ActivationCache, load_cache
from ..data.corpus import check_context_size, token_windows
from ..data.lm import LanguageModel
from ..data.source import ActivationSource
from ..errors import ConfigError, DataError, check_positive_int
from ..saes.base import SAE
from .heldout import metrics_from_totals, sae_window_sums, shared_window_sums
from .lm_metrics import LM_BATCH_SIZE, lm_metrics
from .metrics import DENSE_THRESHOLD, activation_metrics

SAE_BATCH_SIZE = 4096  # activations per SAE forward


def heldout_windows(
    lm: LanguageModel, source: ActivationSource, *, n_windows: int | None = None,
    n_tokens: int | None = None,
) -> torch.Tensor:
    """Held-out windows [n, context_size] of the source's corpus (BOS first): `n_windows`,
    or enough for `n_tokens`; never a window the source's training windows include."""
    check_context_size(source.context_size, lm.n_ctx)
    return token_windows(
        lm.tokenizer, source.dataset, context_size=source.context_size, n_windows=n_windows,
        n_tokens=n_tokens, split="heldout", text_field=source.text_field,
        bos_token_id=lm.bos_token_id,
    )


def site_activations(
    lm: LanguageModel, site: str, windows: torch.Tensor, skip_positions: int = 1,
    batch_size: int = LM_BATCH_SIZE,
) -> torch.Tensor:
    """float32 activations [n, T − skip_positions, d] of `site` on `windows` [n, T], past
    the first `skip_positions` positions of each."""
    return torch.cat([
        lm.activations(windows[start:start + batch_size], site)[:, skip_positions:].float()
        for start in range(0, len(windows), batch_size)
    ])


def evaluate_saes(
    lm: LanguageModel, saes: Mapping[str, SAE], site: str, windows: torch.Tensor, *,
    lm_windows: int | None = None, skip_positions: int = 1, lm_batch_size: int = LM_BATCH_SIZE,
    sae_batch_size: int = SAE_BATCH_SIZE, per_window: bool = False,
    acts: torch.Tensor | None = None,
) -> dict[str, dict]:
    """Each SAE's metrics on `windows` [n, T] (BOS at position 0), by name.

    The activation metrics (those of `activation_metrics` but `feature_density`, and
    `gamma_centred`) are taken on the site's activations at positions s..T−1 of every window
    (s = `skip_positions`, 1: all but BOS), `n_tokens` of them, as sums per window
    (heldout.py); the LM metrics (`lm_metrics`) on the `lm_n_tokens` predictions made from
    those positions in the first `lm_windows` windows (default: all). With `per_window`, each
    result also holds `windows`: the per-window sums of heldout.py and `lm_metrics`, from
    which every metric is recomputed. `acts`: the windows' `site_activations`, when the
    caller keeps them to measure many SAEs.
    """
    if lm_windows is not None:
        check_positive_int("lm_windows", lm_windows)
    lm_results = lm_metrics(lm, saes, site, windows[:lm_windows], batch_size=lm_batch_size,
                            skip_positions=skip_positions, per_window=per_window)  # checks first
    if acts is None:
        acts = site_activations(lm, site, windows, skip_positions, lm_batch_size)
    elif acts.shape[:2] != (len(windows), windows.shape[1] - skip_positions):
        raise ConfigError(f"acts of shape {list(acts.shape)} are not the site's activations "
                          f"of windows {list(windows.shape)} at positions {skip_positions}..")
    shared, mu = shared_window_sums(acts)
    n_tokens = acts.shape[0] * acts.shape[1]
    results = {}
    for name, sae in saes.items():
        sums, fires = sae_window_sums(sae, acts, mu, max(1, sae_batch_size // acts.shape[1]))
        totals = {k: v.sum() for k, v in {**shared, **sums}.items()}
        metrics = {k: float(v) for k, v in metrics_from_totals(totals).items()}
        density = fires.double() / n_tokens
        result = {
            "n_tokens": n_tokens,
            **metrics,
            "explained_variance": 1.0 - metrics["fvu"],
            "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
            "dead_fraction": float((fires == 0).double().mean()),
        }
        lm_result = dict(lm_results[name])
        lm_result["lm_n_tokens"] = lm_result.pop("n_tokens")
        if per_window:
            lm_result["windows"] = {**shared, **sums, **lm_result["windows"]}
        results[name] = {**result, **lm_result}
    return results


def evaluate_stored(
    sae: SAE, path: str | os.PathLike, *, tokens: int | None = None,
    batch_size: int = SAE_BATCH_SIZE,
) -> dict:
    """`sae`'s activation metrics (without `feature_density`) on stored activations: the rows
    of a file [N, d_in], or a cache folder's activations at non-BOS positions, window by
    window; the first `tokens` of them, or all."""
    check_positive_int("batch_size", batch_size)
    if tokens is not None:
        check_positive_int("tokens", tokens)
    if Path(path).is_dir():
        cache = load_cache(path)
        width, available = cache.d_in, cache.n_seq * (cache.context_size - 1)
        where = f"non-BOS tokens in cache {path}"
        batches: Iterator[torch.Tensor] = _cache_rows(cache, tokens or available, batch_size)
    else:
        acts = load_activations_file(path)
        (available, width), where = acts.shape, f"activations in {path}"
        batches = iter(acts[:tokens].split(batch_size))
    if tokens is not None and tokens > available:
        raise DataError(f"tokens {tokens} is more than the {available} {where}")
    if width != sae.d_in:
        raise DataError(f"{path} has d_in {width}, but the SAE expects {sae.d_in}")
    metrics = activation_metrics(sae, batches)
    metrics.pop("feature_density")
    return metrics


def _cache_rows(cache: ActivationCache, tokens: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The first `tokens` of a cache's non-BOS activations, as float32 batches of whole
    windows [≤ batch_size, d_in] (one window at least)."""
    per_window = cache.context_size - 1
    windows = max(1, batch_size // per_window)
    for start in range(0, cache.n_seq, windows):
        if tokens <= 0:
            return
        rows = cache.activations.rows(start, start + windows)[:, 1:]
        flat = rows.reshape(-1, cache.d_in)[:tokens].float()
        tokens -= flat.shape[0]
        yield flat
