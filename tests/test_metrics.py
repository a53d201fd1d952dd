"""Activation-level metrics checked against hand-worked values and an independent numpy pass."""

import numpy as np
import pytest
import torch

from gated_sae import ConfigError, DataError, create_sae
from gated_sae.evaluate.metrics import activation_metrics, density_histogram, mmcs

SCALARS = ("n_tokens", "l0", "mse", "fvu", "explained_variance", "gamma", "dead_fraction",
           "dense_fraction")


def identity_sae(d_in: int, scale: float = 1.0, dtype=torch.float32):
    """ReLU SAE with d_sae = 2·d_in: W_enc = [I, −I], W_dec = scale·[I; −I], zero biases.

    Latent j fires iff x_j > 0, latent d_in + j iff x_j < 0, and x̂ = scale·x exactly.
    """
    sae = create_sae("relu", d_in=d_in, d_sae=2 * d_in).to(dtype)
    eye = torch.eye(d_in, dtype=dtype)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(scale * torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def numpy_reference(x: np.ndarray, sae) -> dict:
    """The metrics from their definitions, in float64 numpy, with a numpy forward pass."""
    W_enc, W_dec = sae.W_enc.detach().double().numpy(), sae.W_dec.detach().double().numpy()
    b_enc, b_dec = sae.b_enc.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    f = np.maximum((x - b_dec) @ W_enc + b_enc, 0.0)
    x_hat = f @ W_dec + b_dec
    mse = ((x - x_hat) ** 2).sum(1).mean()
    variance = ((x - x.mean(0)) ** 2).sum(1).mean()
    density = (f != 0).mean(0)
    return {
        "n_tokens": len(x),
        "l0": (f != 0).sum(1).mean(),
        "mse": mse,
        "fvu": mse / variance,
        "explained_variance": 1 - mse / variance,
        "gamma": (x_hat**2).sum() / (x * x_hat).sum(),
        "dead_fraction": (density == 0).mean(),
        "dense_fraction": (density > 0.1).mean(),
        "feature_density": density,
    }


def test_perfect_reconstruction_has_fvu_0_and_gamma_1():
    x = torch.randn(500, 6) * 2 + torch.arange(6.0)  # an offset mean, so E‖x‖² ≠ variance
    m = activation_metrics(identity_sae(6), x)
    assert m["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert m["mse"] == pytest.approx(0.0, abs=1e-12)
    assert m["gamma"] == pytest.approx(1.0, rel=1e-12)
    assert m["l0"] == 6.0  # Gaussian x has no zero coordinates: one latent per coordinate
    assert m["n_tokens"] == 500


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_decoder_scaled_by_0_8_gives_gamma_0_8(dtype, tol):
    x = torch.randn(400, 5, dtype=torch.float64) + 3.0
    m = activation_metrics(identity_sae(5, scale=0.8, dtype=dtype), x.to(dtype))
    xn = x.to(dtype).double().numpy()
    # x̂ = 0.8x: E‖0.2x‖² / E‖x − E[x]‖², worked by hand.
    fvu = 0.04 * (xn**2).sum(1).mean() / ((xn - xn.mean(0)) ** 2).sum(1).mean()
    assert m["gamma"] == pytest.approx(0.8, rel=tol)
    assert m["fvu"] == pytest.approx(fvu, rel=tol)
    assert m["mse"] == pytest.approx(0.04 * (xn**2).sum(1).mean(), rel=tol)
    assert m["fvu"] > 0.04  # the mean offset makes the variance smaller than E‖x‖²


def test_general_sae_matches_numpy_reference():
    torch.manual_seed(0)
    sae = create_sae("relu", d_in=8, d_sae=24).double()
    with torch.no_grad():
        sae.b_enc.uniform_(-0.5, 0.2)
        sae.b_dec.normal_()
        sae.W_dec.mul_(torch.rand(24, 1, dtype=torch.float64) + 0.3)
    x = torch.randn(300, 8, dtype=torch.float64) * torch.linspace(0.5, 2, 8) + 1.0
    m = activation_metrics(sae, x.split(64))
    ref = numpy_reference(x.numpy(), sae)
    for key in SCALARS:
        assert m[key] == pytest.approx(ref[key], rel=1e-10, abs=1e-12), key
    np.testing.assert_array_equal(m["feature_density"].numpy(), ref["feature_density"])
    assert 0 < m["l0"] < 24 and m["gamma"] != pytest.approx(1.0)


def test_l0_counts_only_nonzero_latents():
    x = torch.randn(200, 4)
    x[torch.rand(200, 4) < 0.3] = 0.0  # a zero coordinate fires neither of its two latents
    m = activation_metrics(identity_sae(4), x)
    assert m["l0"] == pytest.approx(float((x != 0).sum(1).double().mean()), rel=1e-12)


def test_metrics_do_not_depend_on_batching():
    torch.manual_seed(1)
    # Float64 forward: a float32 matmul rounds differently for different batch shapes, which
    # would blur what this tests, the accumulation.
    sae = create_sae("relu", d_in=16, d_sae=64).double()
    with torch.no_grad():
        sae.b_enc.fill_(-0.3)
    x = torch.randn(1000, 16, dtype=torch.float64) * 3 + 10.0
    sizes = [1, 7, 0, 100, 392, 500]
    for window in (None, 600, 5):  # 600 reaches back across a batch boundary
        whole = activation_metrics(sae, [x], dead_window=window)
        parts = activation_metrics(sae, list(x.split_with_sizes(sizes)), dead_window=window)
        for key in SCALARS:
            assert parts[key] == pytest.approx(whole[key], rel=1e-10, abs=1e-14), key
        assert torch.equal(parts["feature_density"], whole["feature_density"])
        assert 0 < whole["dead_fraction"] < 1 and 0 < whole["dense_fraction"] < 1


def test_dead_and_dense_fractions_on_a_constructed_case():
    n = 200
    x = torch.zeros(n, 4)
    x[:, 0] = 1.0  # latent 0 on every token (dense); latent 4 never (dead)
    x[:, 1] = -1.0
    x[:10, 1] = 1.0  # latent 1 on 5% of tokens; latent 5 on 95% (dense)
    x[50:80, 2] = 2.0  # latent 2 on 15% (dense); latent 6 dead
    x[100:120, 3] = -0.5  # latent 7 on exactly 10%: not dense (> 10% is); latent 3 dead
    m = activation_metrics(identity_sae(4), x.split(33))
    expected = torch.tensor([1.0, 0.05, 0.15, 0.0, 0.0, 0.95, 0.0, 0.1], dtype=torch.float64)
    torch.testing.assert_close(m["feature_density"], expected, rtol=0, atol=1e-15)
    assert m["dead_fraction"] == 3 / 8
    assert m["dense_fraction"] == 3 / 8


def test_dead_window_looks_at_the_last_tokens_only():
    x = torch.zeros(100, 2)
    x[:30, 0] = 1.0  # latent 0 last fires at token 29
    x[:, 1] = 1.0  # latent 1 fires throughout; latents 2 and 3 never fire
    sae = identity_sae(2)
    assert activation_metrics(sae, x.split(17), dead_window=70)["dead_fraction"] == 3 / 4
    assert activation_metrics(sae, x.split(17), dead_window=71)["dead_fraction"] == 2 / 4
    m = activation_metrics(sae, x.split(17), dead_window=10_000)
    assert m["dead_fraction"] == 2 / 4 and m["dead_window"] == 100
    assert activation_metrics(sae, x)["dead_fraction"] == 2 / 4


def test_low_precision_inputs_and_sae():
    x = torch.randn(256, 8).bfloat16()
    m = activation_metrics(identity_sae(8), x)  # bf16 batches into a float32 SAE
    assert m["fvu"] == pytest.approx(0.0, abs=1e-12)
    m = activation_metrics(identity_sae(8, scale=0.8, dtype=torch.bfloat16), x.float())
    assert m["gamma"] == pytest.approx(0.8, rel=1e-2)
    assert m["feature_density"].dtype == torch.float64


def test_user_errors_name_the_bad_value():
    sae = identity_sae(4)
    with pytest.raises(DataError, match="empty"):
        activation_metrics(sae, [])
    with pytest.raises(DataError, match="width 5.*d_in=4"):
        activation_metrics(sae, [torch.randn(3, 5)])
    with pytest.raises(DataError, match=r"\[4\]"):
        activation_metrics(sae, [torch.randn(4)])
    with pytest.raises(ConfigError, match="dead_window.*0"):
        activation_metrics(sae, [torch.randn(3, 4)], dead_window=0)


def test_density_histogram_counts_dead_apart():
    freqs = torch.tensor([0.0, 0.0, 10**-3.5, 10**-2.5, 10**-2.5, 10**-0.5, 1.0])
    h = density_histogram(freqs, bins=[-4.0, -3.0, -2.0, -1.0, 0.0])
    assert h == {"counts": [1, 2, 0, 2], "edges": [-4.0, -3.0, -2.0, -1.0, 0.0], "dead": 2}
    h = density_histogram(freqs, bins=7)
    assert sum(h["counts"]) == 5 and len(h["edges"]) == 8
    assert h["edges"][0] == pytest.approx(-3.5, abs=1e-6) and h["edges"][-1] == 0.0
    h = density_histogram(np.zeros(3), bins=4)
    assert h["dead"] == 3 and sum(h["counts"]) == 0


def test_density_histogram_rejects_bad_input():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        density_histogram(torch.tensor([0.5, 1.5]))
    with pytest.raises(ConfigError, match="bins.*0"):
        density_histogram(torch.tensor([0.5]), bins=0)


def test_mmcs_is_1_for_a_permuted_scaled_copy_and_less_for_random():
    gen = torch.Generator().manual_seed(3)
    true = torch.randn(20, 8, generator=gen)
    scales = torch.rand(20, 1, generator=gen) * 3 + 0.5
    decoder = torch.cat([true[torch.randperm(20, generator=gen)] * scales,
                         torch.randn(10, 8, generator=gen)])
    assert mmcs(decoder, true) == pytest.approx(1.0, abs=1e-12)
    assert mmcs(-true[:1], true[:1]) == pytest.approx(-1.0, abs=1e-12)  # signed cosine
    random_rows = torch.randn(30, 8, generator=gen)
    value = mmcs(random_rows, true)
    a = true.double().numpy()
    b = random_rows.double().numpy()
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
        b / np.linalg.norm(b, axis=1, keepdims=True)).T
    assert value < 0.99
    assert value == pytest.approx(cos.max(1).mean(), rel=1e-12)
    assert mmcs(random_rows, true, chunk=3) == pytest.approx(value, rel=1e-12)


def test_mmcs_rejects_mismatched_widths():
    with pytest.raises(DataError, match=r"\[5, 8\].*\[3, 7\]"):
        mmcs(torch.randn(5, 8), torch.randn(3, 7))
