"""What the papers themselves report, set beside this sweep: each entry paraphrased from the
paper's own text with its section, table or figure. Numbers derived from published ones say
how (tokens = steps × batch). Where a number could not be read in the paper, it is left out.

Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders",
arXiv 2404.16014; Gao et al. 2024, "Scaling and evaluating sparse autoencoders",
arXiv 2406.04093.
"""

from __future__ import annotations

from dataclasses import dataclass

GATED_PAPER = "Rajamanoharan et al. 2024 (arXiv 2404.16014)"
SCALING_PAPER = "Gao et al. 2024 (arXiv 2406.04093)"


@dataclass(frozen=True)
class Published:
    topic: str
    text: str
    source: str  # where in the paper


# Rajamanoharan et al.'s training settings.
SETTINGS = {
    "learning rate": Published(
        "learning rate",
        "3e-4 for every Gated SAE and for the GELU-1L baseline, where it was swept; 1e-3 and "
        "7.5e-4 for the Pythia-2.8B and Gemma-7B baselines, whose reconstruction loss is "
        "divided by E‖x‖²",
        "App. D.1.2; Tables 1–8",
    ),
    "optimiser": Published("optimiser", "Adam with β1 = 0, β2 = 0.999", "App. D.1.1"),
    "batch size": Published("batch size", "4,096 activations", "App. D.1.2"),
    "training tokens": Published(
        "training tokens",
        "300,000 steps for GELU-1L and Gemma-7B, 400,000 for Pythia-2.8B: 1.23B and 1.64B "
        "tokens at 4,096 per step",
        "App. D.1.2",
    ),
    "dictionary size": Published(
        "dictionary size",
        "131,072 (2^17) and 196,608 (3·2^16) latents, the baseline the wider; 2^15 and "
        "3·2^14 at Pythia-2.8B's residual stream",
        "Sec. 4.1; App. D.1.1; Tables 1–4",
    ),
    "equal compute": Published(
        "equal compute",
        "baselines get 50% more latents, since a Gated training step costs up to 1.5× a "
        "baseline step (one more decoder pass)",
        "Sec. 3.2.2, 4.1",
    ),
    "held-out evaluation": Published(
        "held-out evaluation", "over a million held-out tokens", "App. D.2"
    ),
    "convergence": Published(
        "convergence",
        "loss curves had plateaued after just over a billion tokens",
        "App. D.1.3",
    ),
}

# Rajamanoharan et al.'s results, beside the report's own answers.
RESULTS = {
    "frontier": Published(
        "frontier",
        "Gated SAEs are a Pareto improvement in loss recovered against L0 at equal compute at "
        "every Pythia-2.8B site tested and at all but one MLP-output or residual-stream site "
        "of Gemma-7B",
        "Sec. 4.1; App. B, Figs. 12–13",
    ),
    "L0 ratio": Published(
        "L0 ratio",
        "at many sites Gated SAEs need half the L0 for the same loss recovered (the abstract: "
        "half as many firing features for comparable fidelity)",
        "Sec. 7, Fig. 12",
    ),
    "shrinkage": Published(
        "shrinkage",
        "γ ≈ 1 for Gated SAEs; the baseline's γ < 1, falling further as λ grows",
        "Sec. 4.2, Fig. 6; App. C, Fig. 14",
    ),
    "ablations": Published(
        "ablations",
        "on GELU-1L: unfreezing the decoder in the auxiliary loss hurts; removing r_mag "
        "slightly hurts; untied encoders bring no gain (slightly worse). b_mag is not "
        "ablated alone. Shown as frontiers, without numbers",
        "Sec. 5.1, Fig. 8",
    ),
}

# Gao et al. on scaling.
SCALING = {
    "law": Published(
        "scaling-law form",
        "MSE as a power law plus an irreducible term, e.g. L(C) = 0.09 + 0.056·C^−0.084 in "
        "compute; clean scaling laws in autoencoder size and sparsity",
        "Abstract; Sec. 3, Fig. 1",
    ),
    "tokens": Published(
        "tokens to convergence",
        "grow about as n^0.6 (GPT-2 small) and n^0.65 (GPT-4) in the number of latents n",
        "Sec. 3, Fig. 11",
    ),
}
