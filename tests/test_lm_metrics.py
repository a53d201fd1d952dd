"""Loss recovered, Δloss and KL with an SAE spliced into a tiny real language model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_D_MODEL

from gated_sae import ConfigError, create_sae
from gated_sae.data.lm import load_model
from gated_sae.evaluate.lm_metrics import lm_metrics

pytestmark = pytest.mark.usefixtures("single_thread")

SITE = "blocks.1.hook_resid_post"
BLOCKS = {  # written out here so the independent computation does not use the site mapping
    "llama": lambda m: m.model.layers,
    "gpt2": lambda m: m.transformer.h,
    "gpt_neox": lambda m: m.gpt_neox.layers,
}


def perfect_sae(d: int):
    """ReLU SAE with `x̂ = ReLU(x) − ReLU(−x) = x` exactly: W_enc = [I, −I], W_dec = [I; −I]."""
    sae = create_sae("relu", d_in=d, d_sae=2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def independent_metrics(lm, sae, windows: torch.Tensor, first: int) -> dict[str, float]:
    """The same numbers by hand: our own hook on block 1, F.cross_entropy and F.kl_div."""
    block = BLOCKS[lm.family](lm.model)[1]

    def run(replace):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            if replace is not None:
                out = out.clone()
                out[:, first:] = replace(out[:, first:])
            return (out, *output[1:]) if isinstance(output, tuple) else out

        handle = block.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = lm.model(windows, use_cache=False).logits
        finally:
            handle.remove()
        return logits[:, first:-1].reshape(-1, logits.shape[-1]).double()

    def sae_fn(x):
        return sae(x.reshape(-1, x.shape[-1])).reshape(x.shape)

    targets = windows[:, first + 1:].reshape(-1)
    clean, spliced, zeroed = run(None), run(sae_fn), run(torch.zeros_like)
    return {
        "ce_clean": F.cross_entropy(clean, targets).item(),
        "ce_sae": F.cross_entropy(spliced, targets).item(),
        "ce_zero": F.cross_entropy(zeroed, targets).item(),
        "kl": F.kl_div(spliced.log_softmax(-1), clean.log_softmax(-1), log_target=True,
                       reduction="batchmean").item(),
    }


def test_perfect_sae_recovers_all_loss(tiny_lm, tiny_windows):
    result = lm_metrics(tiny_lm, perfect_sae(TINY_D_MODEL), SITE, tiny_windows)
    # the denominator is not tiny (random models can do better with zeros: either sign is fine)
    assert abs(result["ce_zero"] - result["ce_clean"]) > 0.05
    assert result["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert result["ce_sae"] == pytest.approx(result["ce_clean"], abs=1e-9)
    assert result["delta_loss"] == pytest.approx(0.0, abs=1e-9)
    assert result["kl"] == pytest.approx(0.0, abs=1e-9)
    assert result["n_tokens"] == tiny_windows.shape[0] * (tiny_windows.shape[1] - 2)


def test_zero_decoder_recovers_nothing(tiny_lm, tiny_windows):
    sae = perfect_sae(TINY_D_MODEL)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    result = lm_metrics(tiny_lm, sae, SITE, tiny_windows)
    assert result["loss_recovered"] == pytest.approx(0.0, abs=1e-3)
    assert result["ce_sae"] == pytest.approx(result["ce_zero"], abs=1e-9)
    assert result["kl"] > 0.01


@pytest.mark.parametrize("skip_positions", [1, 0, 2])
def test_matches_independent_computation(tiny_lm, tiny_windows, skip_positions):
    torch.manual_seed(0)
    sae = create_sae("relu", d_in=TINY_D_MODEL, d_sae=4 * TINY_D_MODEL)  # a random SAE
    expected = independent_metrics(tiny_lm, sae, tiny_windows, skip_positions)
    result = lm_metrics(tiny_lm, sae, SITE, tiny_windows, batch_size=3,
                        skip_positions=skip_positions)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert result["loss_recovered"] == pytest.approx(
        (expected["ce_zero"] - expected["ce_sae"]) / (expected["ce_zero"] - expected["ce_clean"]),
        rel=1e-4,
    )
    assert result["delta_loss"] == pytest.approx(expected["ce_sae"] - expected["ce_clean"],
                                                 rel=1e-4, abs=1e-6)
    n, t = tiny_windows.shape
    assert result["n_tokens"] == n * (t - 1 - skip_positions)


def test_skip_bos_keeps_the_bos_prediction_out(tiny_lm, tiny_windows):
    """Skipping BOS, the spliced model's prediction at BOS is untouched, and not counted."""
    sae = perfect_sae(TINY_D_MODEL)
    with torch.no_grad():
        sae.W_dec.zero_()
    with_bos = lm_metrics(tiny_lm, sae, SITE, tiny_windows, skip_positions=0)
    without = lm_metrics(tiny_lm, sae, SITE, tiny_windows, skip_positions=1)
    assert with_bos["n_tokens"] - without["n_tokens"] == tiny_windows.shape[0]
    assert with_bos["ce_zero"] != pytest.approx(without["ce_zero"])


def test_batch_size_does_not_change_the_result(tiny_lm, tiny_windows):
    torch.manual_seed(0)
    sae = create_sae("relu", d_in=TINY_D_MODEL, d_sae=2 * TINY_D_MODEL)
    a = lm_metrics(tiny_lm, sae, SITE, tiny_windows, batch_size=1)
    b = lm_metrics(tiny_lm, sae, SITE, tiny_windows, batch_size=4)
    assert a == pytest.approx(b, rel=1e-6, abs=1e-6)


def test_bfloat16_model_runs_the_sae_in_float32(tiny_model_dir, tiny_windows):
    lm = load_model(str(tiny_model_dir), dtype="bfloat16")
    result = lm_metrics(lm, perfect_sae(TINY_D_MODEL), SITE, tiny_windows)
    # bf16 → float32 → bf16 is exact for x̂ = x, so the spliced forward is the clean one
    assert result["ce_sae"] == result["ce_clean"]
    assert result["loss_recovered"] == pytest.approx(1.0, abs=1e-3)


def test_bfloat16_sae_runs_in_float32(tiny_lm, tiny_windows):
    sae = perfect_sae(TINY_D_MODEL).to(torch.bfloat16)  # I and −I are exact in bf16
    result = lm_metrics(tiny_lm, sae, SITE, tiny_windows)
    assert result["ce_sae"] == result["ce_clean"]  # x̂ = x exactly: x never went through bf16
    assert sae.W_dec.dtype == torch.bfloat16


def test_errors_name_the_bad_values(tiny_lm, tiny_windows):
    sae = perfect_sae(TINY_D_MODEL + 1)
    with pytest.raises(ConfigError, match=rf"d_in={TINY_D_MODEL + 1}.*width {TINY_D_MODEL}"):
        lm_metrics(tiny_lm, sae, SITE, tiny_windows)
    sae = perfect_sae(TINY_D_MODEL)
    with pytest.raises(ConfigError, match="no prediction"):
        lm_metrics(tiny_lm, sae, SITE, tiny_windows[:, :2])
    with pytest.raises(ConfigError, match="integer tensor"):
        lm_metrics(tiny_lm, sae, SITE, tiny_windows.float())
    with pytest.raises(ConfigError, match="unknown site"):
        lm_metrics(tiny_lm, sae, "blocks.9.hook_resid_post", tiny_windows)
