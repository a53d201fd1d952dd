"""JumpReLU SAE (Rajamanoharan et al. 2024b, arXiv 2407.14435; Gemma Scope, arXiv 2408.05147)."""

import math

import torch
from torch import nn

from .base import SAE, LossTerms, TrainOutput, squared_error
from .sparse import pairs_above


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The kernel `K(u) = 1[|u| < ½]`."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """`f = z ⊙ H(z − θ)`; straight-through gradients `∂f/∂z = H(z − θ)` and
    `∂f/∂θ = −(θ/ε) K((z − θ)/ε)` (paper Eq. 11)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > threshold)
        grad_threshold = -(threshold / eps) * rectangle((z - threshold) / eps) * grad
        return grad_z, grad_threshold.sum(0), None


class StepFunction(torch.autograd.Function):
    """`H(z − θ)`; no gradient to z, `∂H/∂θ = −(1/ε) K((z − θ)/ε)` (paper Eq. 12)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * rectangle((z - threshold) / eps) * grad
        return None, grad_threshold.sum(0), None


class JumpReLUSAE(SAE):
    """`z = W_enc x_c + b_enc`, `f = z ⊙ H(z − θ)`, loss `‖x − x̂‖² + λ Σ_i H(z_i − θ_i)`.

    `bandwidth` (ε) and `threshold_init` are given, as in the paper, for inputs scaled to unit
    mean squared norm. The trainer scales inputs to `E‖x‖² = d_in`, so both are multiplied by
    √d_in internally; otherwise ε would be far too narrow for the activations and L0 would
    barely move. θ is a direct fp32 parameter, clamped at ≥ 0 after each step.
    """

    architecture = "jumprelu"
    relative_step_cost = 1.5
    saelens_architecture = saelens_reads = "jumprelu"
    default_sparsity_coef = 0.5
    latent_axes = {**SAE.latent_axes, "b_enc": 0, "threshold": 0}
    # The pairs a step can touch: `z > θ − reach·ε`, the window's half-width and 1/64 of it
    # more, far above rounding. A whole ε kept twice the firing pairs (d_sae 4608, L0 43).
    window_reach = 0.5 * (1 + 2**-6)

    def window_start(self, threshold: torch.Tensor) -> torch.Tensor:
        """`θ − reach·ε`: above it lie the pairs that fire or sit in θ's gradient window."""
        return threshold - self.window_reach * self.bandwidth

    def __init__(
        self, d_in: int, d_sae: int, *, bandwidth: float = 0.001, threshold_init: float = 0.001
    ):
        super().__init__(d_in, d_sae, {"bandwidth": bandwidth, "threshold_init": threshold_init})
        self.bandwidth = bandwidth * math.sqrt(d_in)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.threshold = nn.Parameter(torch.full((d_sae,), threshold_init * math.sqrt(d_in)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pre_activations(x)
        return torch.relu(z) * (z > self.threshold)

    def training_loss(self, x, sparsity_coef, dead_mask=None) -> TrainOutput:
        z = self.training_pre_activations(x, self.W_enc, self.b_enc)
        threshold = self.threshold.float()
        f = JumpReLUFunction.apply(z, threshold, self.bandwidth)
        mse = squared_error(x, self.decode(f))
        l0 = StepFunction.apply(z, threshold, self.bandwidth).sum(-1).mean()
        loss = mse + sparsity_coef * l0
        terms = LossTerms(mse=mse.detach(), l0_penalty=l0.detach())
        return TrainOutput.dense(loss, terms, f, (z > self.window_start(threshold)).sum())

    @torch.no_grad()
    def sparse_gradients(self, x, sparsity_coef, dead_mask=None, matmul_dtype=None) -> TrainOutput:
        """Active pairs: those that fire (`z > θ`) and those inside the straight-through
        window `|z − θ| < ε/2`, kept as `z > θ − reach·ε` (a superset, so rounding at the
        edge cannot drop one). `∂L/∂z = (2/n)⟨e_i, W_dec,j⟩·1[z > θ]`, and each windowed pair adds
        `−(θ/ε)(2/n)⟨e_i, W_dec,j⟩ − λ/(nε)` to `∂L/∂θ_j` (paper Eqs. 11–12)."""
        n, eps = x.shape[0], self.bandwidth
        threshold = self.threshold.float()
        bias = self.centred_bias(self.W_enc, self.b_enc)
        pairs, z = pairs_above(x, self.W_enc, bias, self.window_start(threshold), matmul_dtype)
        theta = threshold[pairs.cols]
        fires = z > theta
        f = z * fires
        in_window = rectangle((z - theta) / eps)
        error = pairs.decode(f, self.W_dec) + self.b_dec - x
        mse, grad_x_hat = error.pow(2).sum() / n, error * (2 / n)
        grad_f = pairs.dot(grad_x_hat, self.W_dec)
        grad_z = grad_f * fires
        grad_theta = -(theta / eps) * in_window * grad_f - (sparsity_coef / (n * eps)) * in_window
        grad_b_enc = pairs.latent_totals(grad_z)
        self._set_grads(
            grad_x_hat,
            [(self.W_enc, grad_b_enc)],
            W_enc=pairs.per_latent(grad_z, x - self.b_dec).T,
            b_enc=grad_b_enc,
            W_dec=pairs.per_latent(f, grad_x_hat),
            threshold=pairs.latent_totals(grad_theta).to(self.threshold.dtype),
        )
        l0 = fires.sum().to(z.dtype) / n
        loss = mse + sparsity_coef * l0
        terms = LossTerms(mse=mse, l0_penalty=l0)
        return TrainOutput(loss, terms, pairs.fired(f), pairs.l0(f), len(pairs))

    @torch.no_grad()
    def after_step_(self) -> None:
        super().after_step_()
        self.threshold.clamp_(min=0.0)
