"""The Gated SAE (Rajamanoharan et al. 2024, arXiv 2404.16014, Eqs. 5–9 and App. G)."""

import torch
from torch import nn

from ..errors import ConfigError
from .base import SAE, LossTerms, TrainOutput, squared_error
from .jumprelu import JumpReLUSAE
from .sparse import pairs_above

# Elements per chunk, by device. CPU: 4 MiB of float32, to stay in cache. Smaller chunks are
# no faster on an idle CPU, and each chunk is a dozen multi-threaded ops: with another torch
# process on a 2-core machine, 512 KiB chunks made a gated step 7× a relu step, against 2×
# at this size. CUDA: a whole 4096 × 65536 batch at once; a GPU has no such cache to stay in,
# and on an H200 the CPU's 16-row chunks made 3,800 tiny kernels and a 250 ms gated step.
CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 28}


def row_chunks(t: torch.Tensor) -> list[slice]:
    """Slices of `t`'s rows, each of at most the device's CHUNK_ELEMENTS."""
    n_rows, row_length = t.shape
    per_chunk = CHUNK_ELEMENTS.get(t.device.type, CHUNK_ELEMENTS["cpu"])
    step = max(1, per_chunk // row_length)
    return [slice(i, i + step) for i in range(0, n_rows, step)]


class TiedGatedActivations(torch.autograd.Function):
    """`(f, ReLU(π_gate))` from `G = x_c W_gate`: `π_gate = G + b_gate`,
    `π_mag = G ⊙ exp(r_mag) + b_mag`, `f = 1[π_gate > 0] ⊙ ReLU(π_mag)`.

    The same values and gradients as the eager expressions (the Heaviside passes no
    gradient), computed a block of rows at a time so the [batch, d_sae] temporaries stay in
    cache: eagerly, the dozen full-size elementwise passes cost more than the extra decoder
    matmul.
    """

    @staticmethod
    def forward(ctx, gate_proj, b_gate, r_mag, b_mag):
        scale = r_mag.exp()
        f, gate_acts = torch.empty_like(gate_proj), torch.empty_like(gate_proj)
        for rows in row_chunks(gate_proj):
            pi_gate = gate_proj[rows] + b_gate
            torch.clamp_min(pi_gate, 0, out=gate_acts[rows])
            magnitude = torch.addcmul(b_mag, gate_proj[rows], scale, out=f[rows])
            magnitude.clamp_min_(0).mul_(pi_gate > 0)
        ctx.save_for_backward(gate_proj, f, gate_acts, scale)
        return f, gate_acts

    @staticmethod
    def backward(ctx, grad_f, grad_gate_acts):
        gate_proj, f, gate_acts, scale = ctx.saved_tensors
        grad_proj = torch.empty_like(gate_proj)
        grad_b_gate, grad_r_mag, grad_b_mag = (torch.zeros_like(scale) for _ in range(3))
        for rows in row_chunks(gate_proj):
            grad_mag = grad_f[rows] * (f[rows] > 0)
            grad_gate = grad_gate_acts[rows] * (gate_acts[rows] > 0)
            grad_b_gate += grad_gate.sum(0)
            grad_b_mag += grad_mag.sum(0)
            grad_r_mag += (grad_mag * gate_proj[rows]).sum(0)
            torch.addcmul(grad_gate, grad_mag, scale, out=grad_proj[rows])
        _, needs_b_gate, needs_r_mag, needs_b_mag = ctx.needs_input_grad
        return (
            grad_proj,
            grad_b_gate if needs_b_gate else None,
            grad_r_mag * scale if needs_r_mag else None,
            grad_b_mag if needs_b_mag else None,
        )


class GatedSAE(SAE):
    """Gate and magnitude paths over one encoder, as the paper defines them.

    `π_gate = W_gate x_c + b_gate`, `π_mag = W_mag x_c + b_mag` with the tying
    `W_mag = diag(exp(r_mag)) W_gate`, and `f = 1[π_gate > 0] ⊙ ReLU(π_mag)`.
    Loss: `‖x − x̂(f)‖² + λ‖ReLU(π_gate)‖₁ + ‖x − x̂_frozen(ReLU(π_gate))‖²`, where the
    auxiliary reconstruction uses stop-gradient copies of `W_dec` and `b_dec`.

    Ablations: `b_mag=False` fixes b_mag at zero (not trained); `r_mag=False` fixes r_mag at
    zero, so W_mag = W_gate; `tied=False` gives W_mag its own weights. `ri_l1=True` is the
    variant SAELens trains: L1 weighted by decoder-row norms, auxiliary term through the
    unfrozen decoder, no norm constraint.

    `W_enc` holds W_gate, as in SAELens.
    """

    architecture = "gated"
    relative_step_cost = 1.6
    saelens_reads = "gated"
    default_sparsity_coef = 5.0
    resamples_dead_latents = True
    latent_axes = {**SAE.latent_axes, "W_mag": 1, "b_gate": 0, "b_mag": 0, "r_mag": 0}
    option_labels = {"b_mag": "no b_mag", "r_mag": "no r_mag", "tied": "untied", "ri_l1": "RI-L1"}
    # b_mag or r_mag fixed at zero, the untied encoder, SAELens's RI-L1 loss.
    ablations = ({"b_mag": False}, {"r_mag": False}, {"tied": False}, {"ri_l1": True})

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        b_mag: bool = True,
        r_mag: bool = True,
        tied: bool = True,
        ri_l1: bool = False,
    ):
        if not tied and not r_mag:
            raise ConfigError("gated option r_mag=False needs tied=True (untied has no r_mag)")
        options = {"b_mag": b_mag, "r_mag": r_mag, "tied": tied, "ri_l1": ri_l1}
        super().__init__(d_in, d_sae, options)
        self.tied, self.ri_l1 = tied, ri_l1
        self.b_gate = nn.Parameter(torch.zeros(d_sae))
        zeros = torch.zeros(d_sae)
        # A disabled part stays in the module as a zero buffer, so it is saved (as zeros,
        # which SAELens reads) but never trained.
        self._param_or_buffer("b_mag", zeros.clone(), b_mag)
        if tied:
            self._param_or_buffer("r_mag", zeros.clone(), r_mag)
        else:
            self.W_mag = nn.Parameter(self.W_enc.detach().clone())
            self.input_weights = ("W_enc", "W_mag")

    def _param_or_buffer(self, name: str, value: torch.Tensor, trained: bool) -> None:
        if trained:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    @property
    def saelens_architecture(self) -> str:
        # SAELens cannot express the untied encoder: it gets a name of its own.
        return "gated" if self.tied else "gated_untied"

    @property
    def unit_norm_decoder(self) -> bool:
        return not self.ri_l1

    def fold_uncentred_input(self, tensors: dict[str, torch.Tensor]) -> None:
        """`b' = b + b_dec W` for both paths; tied, the magnitude path's W is W_gate·exp(r_mag)."""
        t = tensors
        shift = t["b_dec"] @ t["W_enc"]
        t["b_gate"] = t["b_gate"] + shift
        mag_shift = shift * t["r_mag"].exp() if self.tied else t["b_dec"] @ t["W_mag"]
        t["b_mag"] = t["b_mag"] + mag_shift

    def gate_and_magnitude(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(π_gate, π_mag). Tied: one matmul serves both, since `x_c W_mag = (x_c W_gate) ⊙ e^r`."""
        x_c = x - self.b_dec
        gate_proj = x_c @ self.W_enc
        pi_gate = gate_proj + self.b_gate
        if self.tied:
            pi_mag = torch.addcmul(self.b_mag, gate_proj, self.r_mag.exp())
        else:
            pi_mag = torch.addmm(self.b_mag, x_c, self.W_mag)
        return pi_gate, pi_mag

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pi_gate, pi_mag = self.gate_and_magnitude(x)
        return torch.relu(pi_mag) * (pi_gate > 0)

    def training_loss(self, x, sparsity_coef, dead_mask=None) -> TrainOutput:
        gate_proj = self.training_pre_activations(x, self.W_enc, torch.zeros_like(self.b_gate))
        if self.tied:
            f, gate_acts = TiedGatedActivations.apply(
                gate_proj, self.b_gate, self.r_mag, self.b_mag
            )
        else:
            pi_gate = gate_proj + self.b_gate
            pi_mag = self.training_pre_activations(x, self.W_mag, self.b_mag)
            f = torch.relu(pi_mag) * (pi_gate > 0)  # the Heaviside passes no gradient
            gate_acts = torch.relu(pi_gate)
        mse = squared_error(x, self.decode(f))
        if self.ri_l1:
            sparsity = (gate_acts @ self.W_dec.norm(dim=1)).mean()
            aux = squared_error(x, self.decode(gate_acts))
        else:
            sparsity = gate_acts.sum(-1).mean()
            frozen = self.decode_with(gate_acts, self.W_dec.detach(), self.b_dec.detach())
            aux = squared_error(x, frozen)
        loss = mse + sparsity_coef * sparsity + aux
        terms = LossTerms(mse=mse.detach(), sparsity=sparsity.detach(), aux=aux.detach())
        return TrainOutput.dense(loss, terms, f, (gate_acts > 0).sum())

    @torch.no_grad()
    def sparse_gradients(self, x, sparsity_coef, dead_mask=None, matmul_dtype=None) -> TrainOutput:
        """Active pairs: `π_gate > 0`, where the L1 and auxiliary terms live; `f` is non-zero on
        those of them with `π_mag > 0`. With `e = x̂(f) − x`, `a = x̂_frozen(ReLU(π_gate)) − x`:
        `∂L/∂π_gate = λ/n + (2/n)⟨a_i, W_dec,j⟩` and `∂L/∂π_mag = (2/n)⟨e_i, W_dec,j⟩·1[f > 0]`;
        tied, `π_mag = (π_gate − b_gate)·exp(r_mag) + b_mag` carries both to W_gate."""
        n, W_dec, x_c = x.shape[0], self.W_dec, x - self.b_dec
        bias = self.centred_bias(self.W_enc, self.b_gate)
        pairs, gate_acts = pairs_above(x, self.W_enc, bias, 0.0, matmul_dtype)
        cols = pairs.cols
        if self.tied:
            scale = self.r_mag.exp()[cols]
            gate_proj = gate_acts - self.b_gate[cols]
            pi_mag = gate_proj * scale + self.b_mag[cols]
        else:
            pi_mag = pairs.dot(x_c, self.W_mag.T) + self.b_mag[cols]
        f = torch.relu(pi_mag)

        error = pairs.decode(f, W_dec) + self.b_dec - x
        aux_error = pairs.decode(gate_acts, W_dec) + self.b_dec - x
        mse, aux = error.pow(2).sum() / n, aux_error.pow(2).sum() / n
        grad_x_hat, grad_aux_hat = error * (2 / n), aux_error * (2 / n)
        grad_mag = pairs.dot(grad_x_hat, W_dec) * (f > 0)
        grad_gate = pairs.dot(grad_aux_hat, W_dec)
        grad_W_dec = pairs.per_latent(f, grad_x_hat)
        if self.ri_l1:  # decoder-norm-weighted L1, auxiliary term through the live decoder
            norms = W_dec.norm(dim=1)
            sparsity = (gate_acts * norms[cols]).sum() / n
            grad_gate += (sparsity_coef / n) * norms[cols]
            grad_W_dec += pairs.per_latent(gate_acts, grad_aux_hat)
            totals = pairs.latent_totals(gate_acts) * (sparsity_coef / n) / norms
            grad_W_dec += totals[:, None] * W_dec
            grad_x_hat = grad_x_hat + grad_aux_hat
        else:
            sparsity = gate_acts.sum() / n
            grad_gate += sparsity_coef / n

        grad_b_gate, grad_b_mag = pairs.latent_totals(grad_gate), pairs.latent_totals(grad_mag)
        if self.tied:
            grad_proj = grad_gate + grad_mag * scale
            grad_proj_totals = pairs.latent_totals(grad_proj)
            mag_grads = {
                "r_mag": pairs.latent_totals(grad_mag * gate_proj) * self.r_mag.exp(),
                "W_enc": pairs.per_latent(grad_proj, x_c).T,
            }
            centring = [(self.W_enc, grad_proj_totals)]
        else:
            mag_grads = {
                "W_mag": pairs.per_latent(grad_mag, x_c).T,
                "W_enc": pairs.per_latent(grad_gate, x_c).T,
            }
            centring = [(self.W_enc, grad_b_gate), (self.W_mag, grad_b_mag)]
        self._set_grads(
            grad_x_hat, centring, b_gate=grad_b_gate, b_mag=grad_b_mag, W_dec=grad_W_dec,
            **mag_grads,
        )
        loss = mse + sparsity_coef * sparsity + aux
        terms = LossTerms(mse=mse, sparsity=sparsity, aux=aux)
        return TrainOutput(loss, terms, pairs.fired(f), pairs.l0(f), len(pairs))

    @torch.no_grad()
    def to_jumprelu(self) -> JumpReLUSAE:
        """The exact JumpReLU equivalent (paper App. E): `W_enc = W_mag`, `b_enc = b_mag`,
        `threshold = b_mag − exp(r_mag) ⊙ b_gate`. Only the tied encoder has one."""
        if not self.tied:
            raise ConfigError("only a tied gated SAE converts to jumprelu (this one is untied)")
        scale = self.r_mag.exp()
        # Built in our dtype and device before copying: a float32 detour would round float64
        # weights, and a CUDA SAE would come back on the CPU.
        out = JumpReLUSAE(self.d_in, self.d_sae).to(self.W_dec)
        out.W_enc.copy_(self.W_enc * scale)
        out.b_enc.copy_(self.b_mag)
        out.threshold.copy_(self.b_mag - scale * self.b_gate)
        out.W_dec.copy_(self.W_dec)
        out.b_dec.copy_(self.b_dec)
        return out
