"""Synthetic superposition data: features, activity statistics, seeding and file output."""

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gated_sae import ConfigError, DataError
from gated_sae.data import synthetic
from gated_sae.data.synthetic import (
    SyntheticFeatures,
    activation_probabilities,
    features_path,
    write_synthetic,
)

N = 20_000  # samples for the statistical checks


def test_features_are_unit_norm_and_in_superposition():
    data = SyntheticFeatures(64, 16, seed=3)
    assert data.features.shape == (64, 16) and data.features.dtype == torch.float32
    torch.testing.assert_close(data.features.norm(dim=1), torch.ones(64), rtol=0, atol=1e-6)
    assert np.linalg.matrix_rank(data.features.numpy()) == 16  # G > h: they span the space


def test_probabilities_decay_and_sum_to_mean_active():
    p = activation_probabilities(64, 5.0, decay=5.0)
    assert float(p.sum()) == pytest.approx(5.0, rel=1e-12)
    assert bool((p[1:] < p[:-1]).all()) and float(p.max()) <= 1.0
    ratio = p[1:] / p[:-1]  # geometric: a constant ratio exp(−decay/G)
    torch.testing.assert_close(ratio, torch.full_like(ratio, np.exp(-5.0 / 64)))
    capped = activation_probabilities(10, 9.0, decay=5.0)  # needs some p_i capped at 1
    assert float(capped.sum()) == pytest.approx(9.0, rel=1e-12)
    assert float(capped.max()) == 1.0 and float(capped.min()) < 1.0
    assert bool((capped[1:] <= capped[:-1]).all())
    all_on = activation_probabilities(10, 10.0, decay=5.0)
    assert torch.equal(all_on, torch.ones(10, dtype=torch.float64))
    torch.testing.assert_close(activation_probabilities(8, 2.0, decay=0.0),
                               torch.full((8,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("correlated", [False, True])
def test_mean_active_count_and_marginals(correlated):
    data = SyntheticFeatures(64, 16, mean_active=5.0, correlated=correlated, seed=0)
    coef = data.sample_coefficients(N)
    active = (coef != 0).double()
    count = active.sum(1)
    # Five standard errors of the sample mean: the data are seeded, so this cannot flake.
    assert float(count.mean()) == pytest.approx(5.0, abs=5 * float(count.std()) / N**0.5)
    p = data.probabilities
    se = (p * (1 - p) / N).sqrt()
    assert bool(((active.mean(0) - p).abs() < 5 * se + 1e-12).all())  # marginals stay p_i
    assert float(coef.max()) <= 1.0 and float(coef[coef != 0].min()) > 0.0
    assert float(coef[coef != 0].mean()) == pytest.approx(0.5, abs=0.01)  # U(0, 1]


def test_correlated_activity_follows_the_copula():
    data = SyntheticFeatures(64, 16, mean_active=5.0, correlated=True, seed=0)
    C = data.correlation()
    torch.testing.assert_close(C.diagonal(), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(C, C.T)
    assert float(torch.linalg.eigvalsh(C).min()) > 0
    k = 10  # the most likely features, for precise estimates
    active = (data.sample_coefficients(N) != 0).double()[:, :k]
    emp = torch.corrcoef(active.T)
    off = ~torch.eye(k, dtype=torch.bool)
    strong = off & (C[:k, :k].abs() > 0.2)
    assert int(strong.sum()) >= 4
    # Activity correlation has the sign of the latent Gaussian correlation.
    assert bool((emp[strong].sign() == C[:k, :k][strong].sign()).all())
    indep = SyntheticFeatures(64, 16, mean_active=5.0, correlated=False, seed=0)
    emp_indep = torch.corrcoef((indep.sample_coefficients(N) != 0).double()[:, :k].T)
    assert float(emp[off].abs().mean()) > 5 * float(emp_indep[off].abs().mean())
    assert torch.equal(indep.correlation(), torch.eye(64, dtype=torch.float64))


def test_samples_are_the_coefficients_times_the_features():
    data = SyntheticFeatures(32, 8, seed=5)
    coef = data.sample_coefficients(50, torch.Generator().manual_seed(7))
    x = data.sample(50, torch.Generator().manual_seed(7))
    assert x.shape == (50, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x, coef @ data.features)


def test_sampling_in_chunks(monkeypatch):
    monkeypatch.setattr(synthetic, "_CHUNK_ELEMENTS", 32 * 3)  # 3 rows per chunk
    data = SyntheticFeatures(32, 8, seed=5)
    coef = data.sample_coefficients(10)
    assert coef.shape == (10, 32) and bool((coef != 0).any(1).any())


def test_same_seed_same_data():
    a = SyntheticFeatures(32, 8, correlated=True, seed=11)
    b = SyntheticFeatures(32, 8, correlated=True, seed=11)
    assert torch.equal(a.features, b.features)
    assert torch.equal(a.sample(100), b.sample(100))
    assert torch.equal(a.sample(100), b.sample(100))  # the streams stay in step
    c = SyntheticFeatures(32, 8, correlated=True, seed=12)
    assert not torch.equal(a.features, c.features)
    assert not torch.equal(a.sample(100), a.sample(100))  # a stream, not a repeat


def read_back(path):
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path))
    if path.suffix == ".safetensors":
        tensors = load_file(path)
        assert list(tensors) == ["activations"]
        return tensors["activations"]
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".pt"])
def test_write_synthetic_round_trip(tmp_path, suffix):
    path = tmp_path / "sub" / f"acts{suffix}"
    kwargs = dict(n_features=48, d=12, mean_active=4.0, correlated=True, seed=2)
    data = write_synthetic(path, 300, **kwargs)
    expected = SyntheticFeatures(48, 12, 4.0, True, 2).sample(300)
    x = read_back(path)
    assert x.shape == (300, 12) and x.dtype == torch.float32
    assert torch.equal(x, expected)
    assert features_path(path) == tmp_path / "sub" / "acts.features.npy"
    assert np.array_equal(np.load(features_path(path)), data.features.numpy())
    assert sorted(os.listdir(path.parent)) == sorted([path.name, "acts.features.npy"])
    write_synthetic(path, 300, **kwargs)  # overwriting in place keeps the content
    assert torch.equal(read_back(path), expected)


def test_write_synthetic_rejects_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match=r"'\.csv'.*\.npy, \.safetensors, \.pt"):
        write_synthetic(tmp_path / "acts.csv", 10, n_features=8, d=4)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_features=8, d=4, mean_active=0),
         r"mean_active must be in \(0, n_features=8\], got 0"),
        (dict(n_features=8, d=4, mean_active=9), r"mean_active .* got 9"),
        (dict(n_features=0, d=4), "n_features must be a positive integer, got 0"),
        (dict(n_features=8, d=-1), "d must be a positive integer, got -1"),
        (dict(n_features=8, d=4, decay=-1.0), "decay .* got -1.0"),
        (dict(n_features=8, d=4, seed=-3), "seed .* got -3"),
    ],
)
def test_bad_config_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SyntheticFeatures(**kwargs)


def test_bad_sample_count_is_a_config_error():
    with pytest.raises(ConfigError, match="n must be a positive integer, got 0"):
        SyntheticFeatures(8, 4).sample(0)
