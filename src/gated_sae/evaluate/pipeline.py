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
from ..errors import DataError, check_positive_int
from ..saes.base import SAE
from .lm_metrics import LM_BATCH_SIZE, lm_metrics
from .metrics import activation_metrics

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


def evaluate_saes(
    lm: LanguageModel, saes: Mapping[str, SAE], site: str, windows: torch.Tensor, *,
    lm_batch_size: int = LM_BATCH_SIZE, sae_batch_size: int = SAE_BATCH_SIZE,
) -> dict[str, dict]:
    """Each SAE's metrics on `windows` [n, T] (BOS at position 0), by name.

    The activation metrics (`activation_metrics`, without `feature_density`) are taken on the
    site's activations at positions 1..T−1, `n_tokens` of them; the LM metrics (`lm_metrics`)
    on the `lm_n_tokens` predictions made from those positions.
    """
    lm_results = lm_metrics(lm, saes, site, windows, batch_size=lm_batch_size)  # checks first
    acts = torch.cat([
        lm.activations(windows[start:start + lm_batch_size], site)[:, 1:].flatten(0, 1).float()
        for start in range(0, len(windows), lm_batch_size)
    ])
    results = {}
    for name, sae in saes.items():
        metrics = activation_metrics(sae, acts.split(sae_batch_size))
        metrics.pop("feature_density")
        lm_result = dict(lm_results[name])
        lm_result["lm_n_tokens"] = lm_result.pop("n_tokens")
        results[name] = {**metrics, **lm_result}
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
