"""The baseline ReLU SAE (Rajamanoharan et al. 2024, Sec. 2; Bricken et al. 2023)."""

import torch
from torch import nn

from .base import SAE, LossTerms, TrainOutput, squared_error
from .sparse import pairs_above


class ReLUSAE(SAE):
    """`f = ReLU(W_enc (x − b_dec) + b_enc)`, loss `‖x − x̂‖² + λ‖f‖₁` with unit-norm decoder rows.

    `decoder_norm_l1=True` is Anthropic's April 2024 update: no norm constraint, and the
    penalty `λ Σ_i f_i ‖W_dec,i‖₂` instead.
    """

    architecture = "relu"
    saelens_architecture = saelens_reads = "standard"
    default_sparsity_coef = 5.0
    resamples_dead_latents = True
    latent_axes = {**SAE.latent_axes, "b_enc": 0}
    option_labels = {"decoder_norm_l1": "decoder-norm L1"}

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
        terms = LossTerms(mse=mse.detach(), sparsity=sparsity.detach())
        return TrainOutput.dense(loss, terms, f, (f > 0).sum())

    @torch.no_grad()
    def sparse_gradients(self, x, sparsity_coef, dead_mask=None, matmul_dtype=None) -> TrainOutput:
        """Active pairs: `pre > 0`. With `e = x̂ − x` and `n` tokens, `∂L/∂pre_ij =
        (2/n)⟨e_i, W_dec,j⟩ + (λ/n)(‖W_dec,j‖)`, and `∂L/∂W_dec,j = Σ_i f_ij (2/n) e_i`."""
        n = x.shape[0]
        bias = self.centred_bias(self.W_enc, self.b_enc)
        pairs, f = pairs_above(x, self.W_enc, bias, 0.0, matmul_dtype)
        error = pairs.decode(f, self.W_dec) + self.b_dec - x
        mse = error.pow(2).sum() / n
        grad_x_hat = error * (2 / n)
        grad_pre = pairs.dot(grad_x_hat, self.W_dec)
        grad_W_dec = pairs.per_latent(f, grad_x_hat)
        if self.decoder_norm_l1:
            norms = self.W_dec.norm(dim=1)
            sparsity = (f * norms[pairs.cols]).sum() / n
            grad_pre += (sparsity_coef / n) * norms[pairs.cols]
            totals = pairs.latent_totals(f) * (sparsity_coef / n) / norms
            grad_W_dec += totals[:, None] * self.W_dec
        else:
            sparsity = f.sum() / n
            grad_pre += sparsity_coef / n
        grad_b_enc = pairs.latent_totals(grad_pre)
        self._set_grads(
            grad_x_hat,
            [(self.W_enc, grad_b_enc)],
            W_enc=pairs.per_latent(grad_pre, x - self.b_dec).T,
            b_enc=grad_b_enc,
            W_dec=grad_W_dec,
        )
        loss = mse + sparsity_coef * sparsity
        terms = LossTerms(mse=mse, sparsity=sparsity)
        return TrainOutput(loss, terms, pairs.fired(f), pairs.l0(f), len(pairs))
