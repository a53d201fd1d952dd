"""Activation-level metrics: L0, FVU, γ, dead/dense latents, density histogram, MMCS.

Formulas in docs/formulas.md, "Metrics" and "Synthetic data with known features".
Every statistic is a sum accumulated in float64 over the stream of batches, so the result
does not depend on how the tokens were split into batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError, check_positive_int

DENSE_THRESHOLD = 0.1  # a latent firing on more than 10% of tokens counts as dense


class _Sums:
    """Float64 sufficient statistics of (x, x̂, f) over a stream of batches."""

    def __init__(self, d_sae: int, device: torch.device, track_last: bool):
        self.n = 0
        self.shift: torch.Tensor | None = None  # K in Σ(x − K); set from the first batch
        self.sum_x = torch.zeros((), dtype=torch.float64, device=device)  # becomes [d_in]
        self.sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
        self.sum_err2 = torch.zeros((), dtype=torch.float64, device=device)
        self.sum_xhat2 = torch.zeros((), dtype=torch.float64, device=device)
        self.sum_x_xhat = torch.zeros((), dtype=torch.float64, device=device)
        self.nonzero = torch.zeros((), dtype=torch.int64, device=device)
        self.fires = torch.zeros(d_sae, dtype=torch.int64, device=device)
        # Token index at which each latent last fired, −1 if never (for a dead window).
        self.last = (
            torch.full((d_sae,), -1, dtype=torch.int64, device=device) if track_last else None
        )

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        dev = self.fires.device
        x, x_hat = x.to(dev, torch.float64), x_hat.to(dev, torch.float64)
        fired = (f != 0).to(dev)
        if self.shift is None:
            # Shifting by a rough mean keeps E‖x−K‖² − ‖E[x−K]‖² free of cancellation.
            self.shift = x.mean(0)
        xc = x - self.shift
        self.sum_x = self.sum_x + xc.sum(0)
        self.sum_x2 += xc.pow(2).sum()
        self.sum_err2 += (x - x_hat).pow(2).sum()
        self.sum_xhat2 += x_hat.pow(2).sum()
        self.sum_x_xhat += (x * x_hat).sum()
        counts = fired.sum(0)
        self.nonzero += counts.sum()
        self.fires += counts
        if self.last is not None:
            # 1-based row of the last firing in this batch, 0 where the latent did not fire.
            rows = torch.arange(1, len(x) + 1, device=dev).unsqueeze(1)
            last_row = (fired * rows).amax(0)
            self.last = torch.where(last_row > 0, self.n + last_row - 1, self.last)
        self.n += len(x)


def _accumulator_device(t: torch.Tensor) -> torch.device:
    # MPS has no float64: accumulate there on the CPU instead.
    return torch.device("cpu") if t.device.type == "mps" else t.device


def _sae_dtype_device(sae: Any) -> tuple[torch.dtype | None, torch.device | None]:
    params = getattr(sae, "parameters", None)
    if params is None:
        return None, None
    p = next(iter(params()), None)
    return (None, None) if p is None else (p.dtype, p.device)


def activation_metrics(
    sae: Any, batches: Iterable[torch.Tensor] | torch.Tensor, *, dead_window: int | None = None
) -> dict[str, Any]:
    """Stream raw activation batches [B, d_in] through `sae.encode`/`sae.decode` and measure it.

    With N tokens, latents f = encode(x) and x̂ = decode(f), sums taken over all tokens:

    - `l0` = (1/N) Σ_t #{i : f_ti ≠ 0}
    - `mse` = (1/N) Σ_t ‖x_t − x̂_t‖² (summed over d_in)
    - `fvu` = E‖x − x̂‖² / E‖x − E[x]‖², the variance from one pass as
      E‖x − K‖² − ‖E[x − K]‖² (K = mean of the first batch, for numerical stability)
    - `explained_variance` = 1 − fvu
    - `gamma` = E‖x̂‖² / E[x·x̂] (relative reconstruction bias, Rajamanoharan et al. 2024,
      arXiv 2404.16014): the γ' minimising E‖x̂/γ' − x‖². 1 is unbiased, < 1 is shrinkage.
    - `feature_density` [d_sae] float64 = (1/N) Σ_t 1[f_ti ≠ 0]; drop it before writing JSON
    - `dense_fraction` = fraction of latents with density > 0.1
    - `dead_fraction` = fraction of latents that never fired over all N tokens, or, with
      `dead_window=W`, in the last min(W, N) tokens (`dead_window` in the result is that count)
    - `n_tokens` = N

    All sums are float64, so the numbers do not depend on the batching. fvu is NaN when the
    activations have zero variance and γ is NaN when E[x·x̂] = 0. A single 2-D tensor is
    taken as one batch. Batches are cast to the SAE's dtype and device for the forward pass,
    but errors are measured against the batches as given.
    """
    if dead_window is not None:
        check_positive_int("dead_window", dead_window)
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    d_in = getattr(sae, "d_in", None)
    dtype, device = _sae_dtype_device(sae)
    sums: _Sums | None = None
    with torch.no_grad():
        for i, x in enumerate(batches):
            if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
                shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise DataError(f"batch {i} must be a 2-D float tensor [B, d_in], got {shape}")
            if d_in is not None and x.shape[1] != d_in:
                raise DataError(f"batch {i} has width {x.shape[1]}; the SAE expects d_in={d_in}")
            if len(x) == 0:
                continue
            x_in = x.to(device=device or x.device, dtype=dtype or x.dtype)
            f = sae.encode(x_in)
            x_hat = sae.decode(f)
            if sums is None:
                sums = _Sums(sae.d_sae, _accumulator_device(x_hat), dead_window is not None)
            sums.add(x, x_hat, f)
    if sums is None:
        raise DataError("no activations to evaluate: the batches were empty")
    n = sums.n
    mean_xc = sums.sum_x / n
    variance = float(sums.sum_x2 / n - mean_xc.pow(2).sum())
    mse = float(sums.sum_err2) / n
    fvu = mse / variance if variance > 0 else float("nan")
    x_xhat = float(sums.sum_x_xhat)
    gamma = float(sums.sum_xhat2) / x_xhat if x_xhat != 0 else float("nan")
    density = (sums.fires.double() / n).cpu()
    result: dict[str, Any] = {
        "n_tokens": n,
        "l0": int(sums.nonzero) / n,
        "mse": mse,
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "gamma": gamma,
        "dense_fraction": float((density > DENSE_THRESHOLD).double().mean()),
    }
    if sums.last is None:
        result["dead_fraction"] = float((sums.fires == 0).double().mean())
    else:
        window = min(dead_window, n)
        # Fired in the window iff its last firing is at token index ≥ n − window.
        result["dead_fraction"] = float((sums.last < n - window).double().mean())
        result["dead_window"] = window
    result["feature_density"] = density
    return result


def density_histogram(
    freqs: torch.Tensor | np.ndarray,
    bins: int | Sequence[float] = 50,
    log10_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Histogram of log10(firing frequency) over the latents that fired at least once.

    Dead latents (frequency 0, where log10 is undefined) are counted apart under `dead`.
    `bins` is a number of equal-width bins over `log10_range` (default: the smallest to the
    largest alive log10 frequency) or explicit bin edges; alive values outside explicit
    edges or range are not counted. Returns `{"counts": [..], "edges": [..], "dead": int}`
    with len(edges) = len(counts) + 1.
    """
    f = torch.as_tensor(freqs).detach().double().cpu().numpy()
    if f.ndim != 1:
        raise DataError(f"firing frequencies must be 1-D [d_sae], got shape {list(f.shape)}")
    if f.size and (not np.isfinite(f).all() or f.min() < 0 or f.max() > 1):
        raise DataError(
            f"firing frequencies must lie in [0, 1], got values in [{f.min()}, {f.max()}]"
        )
    if isinstance(bins, int) and not isinstance(bins, bool) and bins <= 0:
        raise ConfigError(f"bins must be a positive integer or a sequence of edges, got {bins}")
    alive = f[f > 0]
    counts, edges = np.histogram(np.log10(alive), bins=bins, range=log10_range)
    return {
        "counts": [int(c) for c in counts],
        "edges": [float(e) for e in edges],
        "dead": int(f.size - alive.size),
    }


def mmcs(
    decoder_rows: torch.Tensor | np.ndarray,
    true_features: torch.Tensor | np.ndarray,
    chunk: int = 1024,
) -> float:
    """Mean max cosine similarity (Sharkey et al. 2022).

    `MMCS = (1/G) Σ_g max_i cos(g, W_dec,i)` with cos(a, b) = a·b / (‖a‖ ‖b‖), over the G
    ground-truth features g and the d_sae decoder rows. Signed: a feature learnt with the
    opposite sign scores −1. A zero row has cosine 0 with everything. Computed in float64,
    `chunk` ground-truth features at a time to bound memory.
    """
    dec = torch.as_tensor(decoder_rows).detach().double().cpu()
    true = torch.as_tensor(true_features).detach().double().cpu()
    if dec.ndim != 2 or true.ndim != 2 or dec.shape[1] != true.shape[1]:
        raise DataError(
            f"mmcs needs decoder rows [d_sae, d] and features [G, d] of the same d, got "
            f"{list(dec.shape)} and {list(true.shape)}"
        )
    if len(dec) == 0 or len(true) == 0:
        raise DataError(
            f"mmcs needs at least one decoder row and one feature, got {len(dec)} and {len(true)}"
        )
    dec = dec / dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    true = true / true.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    best = torch.cat([(part @ dec.T).amax(1) for part in true.split(chunk)])
    return float(best.mean())
