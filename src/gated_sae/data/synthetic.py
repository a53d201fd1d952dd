"""Synthetic activations with known features (Sharkey et al. 2022, "Taking features out of
superposition with sparse autoencoders"), to check that an SAE recovers them (see MMCS in
gated_sae.evaluate.metrics and docs/formulas.md)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import ConfigError, DataError, check_positive_int
from ..files import atomic_write_bytes, atomic_write_npy

SYNTHETIC_SUFFIXES = (".npy", ".safetensors", ".pt")
_CHUNK_ELEMENTS = 1 << 22  # bounds the [rows, G] working tensors of `sample`


def activation_probabilities(n_features: int, mean_active: float, decay: float) -> torch.Tensor:
    """`p_i = min(1, s·exp(−decay·i/G))`, with s chosen so that `Σ_i p_i = mean_active`.

    Σ_i min(1, s·w_i) grows with s from 0 to G, so for mean_active in (0, G] one s fits; it is
    found by capping the k most likely features at 1 and solving `s = (m − k) / Σ_{i≥k} w_i`
    for the smallest k whose s keeps `s·w_k ≤ 1`. Float64, [G].
    """
    if mean_active >= n_features:  # every feature always active; skip the rounding below
        return torch.ones(n_features, dtype=torch.float64)
    w = torch.exp(-decay * torch.arange(n_features, dtype=torch.float64) / n_features)
    tail = w.flip(0).cumsum(0).flip(0)  # tail[k] = Σ_{i≥k} w_i
    for k in range(n_features):
        s = (mean_active - k) / float(tail[k])
        if s * float(w[k]) <= 1.0:
            return torch.cat([torch.ones(k, dtype=torch.float64), (s * w[k:]).clamp_max(1.0)])
    return torch.ones(n_features, dtype=torch.float64)


class SyntheticFeatures:
    """G unit-norm feature directions g_i in h dims; samples `x = Σ_i c_i a_i g_i`.

    - Activity a_i ∈ {0, 1} with `P(a_i = 1) = p_i` decaying with i (`activation_probabilities`),
      so that `E[Σ_i a_i] = mean_active`.
    - Coefficients `c_i ~ U(0, 1]`, independent of activity.
    - Independent variant: a_i = 1[u_i < p_i] with u_i ~ U[0, 1).
    - Correlated variant (Gaussian copula): `z = (L e + ε) / sqrt(diag(L Lᵀ) + 1)` with a fixed
      seeded loading matrix L ~ N(0, 1)^{G×n_factors}, e ~ N(0, I), ε ~ N(0, I), so z is
      N(0, C) with C the correlation matrix of `L Lᵀ + I`. a_i = 1[Φ(z_i) < p_i], i.e.
      z_i < Φ⁻¹(p_i), which keeps each marginal P(a_i = 1) = p_i.

    `features` [G, h] float32 and (correlated) L come from `seed`; `sample` draws from
    `generator`, by default the object's own generator seeded from `seed`, so the same seed
    gives the same features and the same stream of samples.
    """

    def __init__(
        self,
        n_features: int,
        d: int,
        mean_active: float = 5.0,
        correlated: bool = False,
        seed: int = 0,
        *,
        decay: float = 5.0,
        n_factors: int = 8,
    ):
        self.n_features = check_positive_int("n_features", n_features)
        self.d = check_positive_int("d", d)
        self.n_factors = check_positive_int("n_factors", n_factors)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        if not (isinstance(mean_active, int | float) and 0 < mean_active <= n_features):
            raise ConfigError(
                f"mean_active must be in (0, n_features={n_features}], got {mean_active!r}"
            )
        if not (isinstance(decay, int | float) and math.isfinite(decay) and decay >= 0):
            raise ConfigError(f"decay must be a finite number >= 0, got {decay!r}")
        self.mean_active, self.correlated, self.seed = float(mean_active), bool(correlated), seed
        self.decay = float(decay)

        gen = torch.Generator().manual_seed(seed)
        g = torch.randn(n_features, d, generator=gen, dtype=torch.float64)
        self.features = (g / g.norm(dim=1, keepdim=True)).float()
        self.probabilities = activation_probabilities(n_features, self.mean_active, self.decay)
        loadings = torch.randn(n_features, n_factors, generator=gen, dtype=torch.float64)
        self.loadings = loadings if self.correlated else None
        # Φ⁻¹(p_i); p_i = 1 gives +inf, always active.
        self.thresholds = torch.special.ndtri(self.probabilities)
        self.generator = torch.Generator().manual_seed(seed + 1)

    def correlation(self) -> torch.Tensor:
        """The copula's correlation matrix C [G, G] (identity for the independent variant)."""
        if self.loadings is None:
            return torch.eye(self.n_features, dtype=torch.float64)
        cov = self.loadings @ self.loadings.T + torch.eye(self.n_features, dtype=torch.float64)
        scale = cov.diagonal().rsqrt()
        return scale[:, None] * cov * scale[None, :]

    def _active(self, n: int, gen: torch.Generator) -> torch.Tensor:
        if self.loadings is None:
            u = torch.rand(n, self.n_features, generator=gen, dtype=torch.float64)
            return u < self.probabilities
        e = torch.randn(n, self.n_factors, generator=gen, dtype=torch.float64)
        eps = torch.randn(n, self.n_features, generator=gen, dtype=torch.float64)
        z = (e @ self.loadings.T + eps) * (self.loadings.pow(2).sum(1) + 1).rsqrt()
        return z < self.thresholds

    def sample_coefficients(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`c ⊙ a` [n, G] float32: each feature's coefficient in each sample, 0 where inactive."""
        n = check_positive_int("n", n)
        gen = self.generator if generator is None else generator
        rows = max(1, _CHUNK_ELEMENTS // self.n_features)
        parts = []
        for start in range(0, n, rows):
            m = min(rows, n - start)
            active = self._active(m, gen)
            coef = 1.0 - torch.rand(m, self.n_features, generator=gen)  # U(0, 1]: never 0
            parts.append(coef * active)
        return torch.cat(parts)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n samples `x = Σ_i c_i a_i g_i`, a [n, h] float32 tensor."""
        return self.sample_coefficients(n, generator) @ self.features


def features_path(path: str | os.PathLike) -> Path:
    """Where `write_synthetic` puts the true features of `path`: `<stem>.features.npy` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.features.npy")


def write_synthetic(
    path: str | os.PathLike,
    n: int,
    *,
    n_features: int,
    d: int,
    mean_active: float = 5.0,
    correlated: bool = False,
    seed: int = 0,
    decay: float = 5.0,
    n_factors: int = 8,
) -> SyntheticFeatures:
    """Write n samples of `SyntheticFeatures(...)` to `path` and the features beside it.

    `path` ends in .npy, .safetensors (one [n, h] float32 tensor under key "activations") or
    .pt; the true features [G, h] go to `<stem>.features.npy` (see `features_path`). Both
    writes are atomic: a temporary file in the same folder, then `os.replace`. Returns the
    generator object, whose `features` match the written file.
    """
    path = Path(path)
    if path.suffix not in SYNTHETIC_SUFFIXES:
        raise DataError(
            f"cannot write synthetic activations to {path}: suffix {path.suffix!r} is not "
            f"one of {', '.join(SYNTHETIC_SUFFIXES)}"
        )
    data = SyntheticFeatures(
        n_features, d, mean_active, correlated, seed, decay=decay, n_factors=n_factors
    )
    x = data.sample(n).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    features = data.features.numpy()
    atomic_write_npy(features_path(path), features.shape, features.dtype, [features])
    if path.suffix == ".npy":
        rows = x.numpy()
        atomic_write_npy(path, rows.shape, rows.dtype, [rows])
    elif path.suffix == ".safetensors":
        from safetensors.torch import save

        atomic_write_bytes(path, lambda fh: fh.write(save({"activations": x})))
    else:
        atomic_write_bytes(path, lambda fh: torch.save(x, fh))
    return data
