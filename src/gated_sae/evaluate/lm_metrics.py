"""Language-model metrics of an SAE: loss recovered, Δloss and KL with the SAE spliced in.

Formulas in docs/formulas.md, "Metrics":

    loss_recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)
    delta_loss     = CE_sae − CE_clean
    kl             = mean over tokens of KL(p_clean ‖ p_sae),
    KL(p ‖ q)      = Σ_v p(v) (log p(v) − log q(v))

CE_sae splices the SAE reconstruction x̂ in at the site, CE_zero splices zeros.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import torch
from tqdm import tqdm

from ..data.lm import LanguageModel
from ..errors import ConfigError, check_positive_int
from ..saes.base import SAE

LM_BATCH_SIZE = 8  # windows per forward


def lm_metrics(
    lm: LanguageModel,
    sae: SAE | Mapping[str, SAE],
    site: str,
    windows: torch.Tensor,
    *,
    batch_size: int = LM_BATCH_SIZE,
    skip_positions: int = 1,
    per_window: bool = False,
) -> dict:
    """Cross-entropy of `lm` on `windows` [n, T], clean, with x̂ spliced in, and with zeros.

    Positions: the activation is replaced at positions s..T−1 (s = `skip_positions`); the
    first s keep their clean activations. s = 1 (the default) keeps BOS (position 0) out,
    because BOS activations are outliers an SAE is not meant to reconstruct; a model whose
    first token after BOS carries such outliers too takes s = 2. CE and KL are measured on the
    logits of positions s..T−2, predicting tokens s+1..T−1: exactly the predictions made from
    a spliced position (earlier ones see no splice, the last position has no target). With
    s = 0 every position is replaced and positions 0..T−2 predict tokens 1..T−1.

    Returns `ce_clean`, `ce_sae`, `ce_zero`, `loss_recovered`, `delta_loss`, `kl` (nats per
    token) and `n_tokens` (predictions counted). Sums are taken per window in float64 and then
    over windows, so the result does not depend on `batch_size`; with `per_window`, the result
    also holds `windows`: float64 arrays [n] of each window's sums `ce_clean`, `ce_sae`,
    `ce_zero`, `kl` and its count `lm_predictions`, for a bootstrap over windows. The SAE runs in
    float32 whatever the model's dtype. Given a mapping of SAEs, returns a mapping of results,
    sharing the clean and zero passes.
    """
    saes = dict(sae) if isinstance(sae, Mapping) else {"": sae}
    first = skip_positions
    for one in saes.values():
        _check(lm, one, site, windows, first, batch_size)
    # float32 copies: the caller's SAEs keep their dtype
    saes = {k: v if _is_float32(v) else copy.deepcopy(v).float() for k, v in saes.items()}

    def reconstruct_with(one: SAE):
        device = next(one.parameters()).device

        def reconstruct(a: torch.Tensor) -> torch.Tensor:
            x = a[:, first:].reshape(-1, a.shape[-1]).to(device=device, dtype=torch.float32)
            x_hat = one.decode(one.encode(x)).reshape(a[:, first:].shape).to(a.device, a.dtype)
            return torch.cat([a[:, :first], x_hat], dim=1)

        return reconstruct

    def zero(a: torch.Tensor) -> torch.Tensor:
        return torch.cat([a[:, :first], torch.zeros_like(a[:, first:])], dim=1)

    shared: dict[str, list[np.ndarray]] = {"ce_clean": [], "ce_zero": []}
    per_sae: dict[str, dict[str, list[np.ndarray]]] = {k: {"ce_sae": [], "kl": []} for k in saes}
    with torch.inference_mode(), tqdm(total=len(windows), desc=f"LM metrics at {site}",
                                      unit="window", leave=False) as bar:
        for start in range(0, len(windows), batch_size):
            ids = windows[start:start + batch_size].to(lm.device)
            targets = ids[:, first + 1:]
            # logits at position t predict token t+1; keep those made from spliced positions
            clean = _log_probs(lm.logits(ids), first)
            with lm.splice(site, zero):
                shared["ce_zero"].append(_nll_sums(_log_probs(lm.logits(ids), first), targets))
            shared["ce_clean"].append(_nll_sums(clean, targets))
            for name, one in saes.items():
                with lm.splice(site, reconstruct_with(one)):
                    spliced = _log_probs(lm.logits(ids), first)
                per_sae[name]["ce_sae"].append(_nll_sums(spliced, targets))
                # KL(clean ‖ sae) per token = Σ_v p_clean (log p_clean − log p_sae)
                kl = (clean.exp() * (clean - spliced)).sum(-1)
                per_sae[name]["kl"].append(kl.double().sum(-1).cpu().numpy())
            bar.update(len(ids))

    n_pred = windows.shape[1] - first - 1
    window_sums = {k: np.concatenate(v) for k, v in shared.items()}
    window_sums["lm_predictions"] = np.full(len(windows), n_pred, dtype=np.int64)
    n_tokens = len(windows) * n_pred
    ce_clean = window_sums["ce_clean"].sum() / n_tokens
    ce_zero = window_sums["ce_zero"].sum() / n_tokens
    denominator = ce_zero - ce_clean
    results = {}
    for name, lists in per_sae.items():
        own = {k: np.concatenate(v) for k, v in lists.items()}
        ce_sae = own["ce_sae"].sum() / n_tokens
        results[name] = {
            "ce_clean": float(ce_clean),
            "ce_sae": float(ce_sae),
            "ce_zero": float(ce_zero),
            # undefined when zeroing the site changes nothing
            "loss_recovered": float((ce_zero - ce_sae) / denominator)
            if denominator != 0 else math.nan,
            "delta_loss": float(ce_sae - ce_clean),
            "kl": float(own["kl"].sum() / n_tokens),
            "n_tokens": n_tokens,
        }
        if per_window:
            results[name]["windows"] = {**window_sums, **own}
    return results if isinstance(sae, Mapping) else results[""]


def _is_float32(sae: SAE) -> bool:
    return all(p.dtype == torch.float32 for p in sae.parameters())


def _log_probs(logits: torch.Tensor, first: int) -> torch.Tensor:
    """log-softmax in float32 of the logits at positions first..T−2 (those with a target).

    float32, not float64: [B, T, vocab] in float64 would be gigabytes for a 50k vocabulary,
    and the per-token values are summed in float64 afterwards.
    """
    return torch.log_softmax(logits[:, first:-1].float(), dim=-1)


def _nll_sums(log_probs: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Each window's Σ over tokens of −log p(target), summed in float64: [n]."""
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -picked.double().sum(-1).cpu().numpy()


def _check(lm: LanguageModel, sae: SAE, site: str, windows: torch.Tensor, first: int,
           batch_size: int) -> None:
    check_positive_int("batch_size", batch_size)
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.is_floating_point():
        got = (f"a {windows.dtype} tensor of shape {list(windows.shape)}"
               if isinstance(windows, torch.Tensor) else type(windows).__name__)
        raise ConfigError(f"windows must be an integer tensor [n, tokens], got {got}")
    if isinstance(first, bool) or not isinstance(first, int) or first < 0:
        raise ConfigError(f"skip_positions must be an integer >= 0, got {first!r}")
    if len(windows) == 0 or windows.shape[1] < first + 2:
        raise ConfigError(f"windows of shape {list(windows.shape)} hold no prediction from a "
                          f"spliced position; need at least one window of {first + 2} tokens")
    # The site's width is known only from a forward; this one stops at the site and is cheap.
    width = lm.activations(windows[:1, :2], site).shape[-1]
    if width != sae.d_in:
        raise ConfigError(f"SAE d_in={sae.d_in} does not match the width {width} of site "
                          f"{site!r} of {lm.name}")
