"""Held-out metrics as per-window sums, so that a report can resample windows (a bootstrap
over held-out tokens) and recompute every metric from the same sums the table was made of.

Per window w of activations x (positions 1..T−1 of a held-out window) and an SAE's x̂, f:
`err_sq` Σ‖x − x̂‖², `xhat_sq` Σ‖x̂‖², `x_xhat` Σ x·x̂, `xhat_mu` Σ μ·x̂, `active` Σ #{f ≠ 0};
shared by every SAE: `window_tokens`, `x_sq` Σ‖x‖², `x_mu` Σ μ·x, with μ the mean of x over
all windows and `mu_sq` = ‖μ‖². The LM metrics' window sums come from `lm_metrics`
(`ce_clean`, `ce_zero`, `ce_sae`, `kl`, `lm_predictions`). `metrics_from_totals` turns sums
over any multiset of windows into the metrics (docs/formulas.md, "Metrics").
"""

from __future__ import annotations

import numpy as np
import torch

from ..saes.base import SAE

ACTIVATION_SUMS = ("err_sq", "xhat_sq", "x_xhat", "xhat_mu", "active")
SHARED_SUMS = ("window_tokens", "x_sq", "x_mu")
LM_SHARED_SUMS = ("ce_clean", "ce_zero", "lm_predictions")  # lm_metrics' per-window sums
LM_SUMS = ("ce_sae", "kl")


def shared_window_sums(acts: torch.Tensor) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """The SAE-independent sums of activations [W, T, d_in], and μ [d_in] (float64)."""
    x = acts.double()
    mu = x.flatten(0, 1).mean(0)
    sums = {
        "window_tokens": np.full(len(acts), acts.shape[1], dtype=np.int64),
        "x_sq": x.pow(2).sum((1, 2)).numpy(),
        "x_mu": (x @ mu).sum(1).numpy(),
        "mu_sq": np.float64(mu.pow(2).sum()),
    }
    return sums, mu


def sae_window_sums(
    sae: SAE, acts: torch.Tensor, mu: torch.Tensor, windows_per_batch: int
) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """One SAE's per-window sums over activations [W, T, d_in] (float64 arrays [W]), and how
    many tokens each latent fired on [d_sae]."""
    parameter = next(sae.parameters())
    fires = torch.zeros(sae.d_sae, dtype=torch.int64)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ACTIVATION_SUMS}
    with torch.no_grad():
        for chunk in acts.split(windows_per_batch):
            flat = chunk.flatten(0, 1)
            f = sae.encode(flat.to(parameter.device, parameter.dtype))
            x_hat = sae.decode(f).cpu().double().view(chunk.shape)
            fired = (f != 0).cpu()
            x = chunk.double()
            parts["err_sq"].append((x - x_hat).pow(2).sum((1, 2)))
            parts["xhat_sq"].append(x_hat.pow(2).sum((1, 2)))
            parts["x_xhat"].append((x * x_hat).sum((1, 2)))
            parts["xhat_mu"].append((x_hat @ mu).sum(1))
            parts["active"].append(fired.view(*chunk.shape[:2], -1).sum((1, 2)).double())
            fires += fired.sum(0)
    return {k: torch.cat(v).numpy() for k, v in parts.items()}, fires


def metrics_from_totals(t: dict) -> dict:
    """The metrics from sums over a multiset of windows; each value a number or an array of
    them (a bootstrap's replicates), the keys those present of the module docstring's sums,
    with `mu_sq` unsummed. fvu, l0, gamma, gamma_centred from the activation sums;
    loss_recovered and delta_loss from the LM sums."""
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        out |= _activation_metrics(t) if "err_sq" in t else {}
        out |= _lm_metrics(t) if "ce_sae" in t else {}
    return out


def _activation_metrics(t: dict) -> dict:
    n, mu_sq = t["window_tokens"], t["mu_sq"]
    return {
        "fvu": t["err_sq"] / (t["x_sq"] - 2 * t["x_mu"] + n * mu_sq),
        "mse": t["err_sq"] / n,
        "l0": t["active"] / n,
        "gamma": t["xhat_sq"] / t["x_xhat"],
        "gamma_centred": (t["xhat_sq"] - 2 * t["xhat_mu"] + n * mu_sq)
        / (t["x_xhat"] - t["xhat_mu"] - t["x_mu"] + n * mu_sq),
    }


def _lm_metrics(t: dict) -> dict:
    return {
        "loss_recovered": (t["ce_zero"] - t["ce_sae"]) / (t["ce_zero"] - t["ce_clean"]),
        "delta_loss": (t["ce_sae"] - t["ce_clean"]) / t["lm_predictions"],
    }
