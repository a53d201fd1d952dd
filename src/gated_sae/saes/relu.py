"""The baseline ReLU SAE (Rajamanoharan et al. 2024, Sec. 2; Bricken et al. 2023)."""

import torch
from torch import nn

from .base import SAE, TrainOutput, squared_error


class ReLUSAE(SAE):
    """`f = ReLU(W_enc (x − b_dec) + b_enc)`, loss `‖x − x̂‖² + λ‖f‖₁` with unit-norm decoder rows.

    `decoder_norm_l1=True` is Anthropic's April 2024 update: no norm constraint, and the
    penalty `λ Σ_i f_i ‖W_dec,i‖₂` instead.
    """

    architecture = "relu"
    saelens_architecture = "standard"

    def __init__(self, d_in: int, d_sae: int, *, decoder_norm_l1: bool = False):
        super().__init__(d_in, d_sae, {"decoder_norm_l1": decoder_norm_l1})
        self.decoder_norm_l1 = decoder_norm_l1
        self.b_enc = nn.Parameter(torch.zeros(d_sae))

    @property
    def unit_norm_decoder(self) -> bool:
        return not self.decoder_norm_l1

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre_activations(x))

    def training_loss(self, x, sparsity_coef, dead_mask=None) -> TrainOutput:
        f = torch.relu(self.training_pre_activations(x, self.W_enc, self.b_enc))
        mse = squared_error(x, self.decode(f))
        if self.decoder_norm_l1:
            sparsity = (f @ self.W_dec.norm(dim=1)).mean()
        else:
            sparsity = f.sum(-1).mean()
        loss = mse + sparsity_coef * sparsity
        return TrainOutput(loss, {"mse": mse.detach(), "sparsity": sparsity.detach()}, f)
