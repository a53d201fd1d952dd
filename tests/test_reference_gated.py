"""dictionary_learning's Gated SAE becomes ours exactly (benchmarks/reference_gated.py): the
same latents, gate pre-activations and reconstructions in float32, before and after the input
scale is folded in. Skipped where dictionary-learning is not installed (`make bench`)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("dictionary_learning") is None,
                       reason="dictionary-learning is not installed (make bench)"),
    pytest.mark.usefixtures("single_thread"),
]
D_IN, D_SAE = 16, 48


@pytest.fixture(scope="module")
def reference_gated():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import reference_gated
    finally:
        sys.path.pop(0)
    return reference_gated


def trained_reference(reference_gated):
    """Their SAE after a few steps of their own trainer, so every parameter has moved."""
    args = type("Args", (), {"steps": 20, "d_sae": D_SAE, "lr": 3e-2, "lr_warmup_steps": 1})
    trainer = reference_gated.reference_trainer(args, D_IN, coef=0.5, seed=0)
    g = torch.Generator().manual_seed(1)
    for step in range(5):
        trainer.update(step, torch.randn(64, D_IN, generator=g) * 2 + 1)
    return trainer.ae


def randomised_reference(reference_gated):
    """Their SAE with every parameter random and r_mag far from 0."""
    ae = reference_gated._dictionary_learning_trainers().GatedSAETrainer(
        steps=2, activation_dim=D_IN, dict_size=D_SAE, layer=0, lm_name="t", warmup_steps=0,
        sparsity_warmup_steps=None, device="cpu",
    ).ae
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in ae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return ae


@pytest.mark.parametrize("build", [trained_reference, randomised_reference])
def test_conversion_agrees(reference_gated, build):
    ae = build(reference_gated)
    sae = reference_gated.reference_to_gated(ae)
    x = torch.randn(256, D_IN, generator=torch.Generator().manual_seed(3)) * 2 + 1
    with torch.no_grad():
        f, gate_acts = ae.encode(x, return_gate=True)
        pi_gate, _ = sae.gate_and_magnitude(x)
        assert (f != 0).any() and (f == 0).any()
        torch.testing.assert_close(sae.encode(x), f)
        torch.testing.assert_close(torch.relu(pi_gate), gate_acts)
        torch.testing.assert_close(sae.decode(f), ae.decode(f))
        torch.testing.assert_close(sae(x), ae(x))

        # Trained on s·x, folded: our SAE maps raw x to what theirs gives for s·x, over s.
        scale = 0.37
        sae.fold_input_scale_(scale)
        torch.testing.assert_close(sae.encode(x), ae.encode(x * scale))
        torch.testing.assert_close(sae(x), ae(x * scale) / scale)
