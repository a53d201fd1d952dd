"""What every SAE shares: the decoder, initialisation, the unit-norm constraint, input-scale
folding, and the SAELens v6 folder format (see docs/formulas.md, "Shared pieces")."""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..distributed import SINGLE_PROCESS, World
from ..files import umask_mode, writing_to

SAELENS_VERSION = "6.0.0"  # the folder layout we write; SAELens >= 6 reads it unchanged


@dataclass
class LossTerms:
    """A step's loss terms (detached, before their coefficients), named and ordered as
    metrics.jsonl logs them; an architecture sets those its loss has."""

    fvu: torch.Tensor | None = None  # TopK: ‖x − x̂‖² / ‖x − E x‖², its reconstruction term
    mse: torch.Tensor | None = None  # ‖x − x̂‖²
    sparsity: torch.Tensor | None = None  # the L1 penalty that λ multiplies
    l0_penalty: torch.Tensor | None = None  # JumpReLU: Σ_i H(z_i − θ_i), which λ multiplies
    aux: torch.Tensor | None = None  # Gated: the auxiliary reconstruction; TopK: AuxK

    # The terms that sum over latents, which λ multiplies: with the latents sharded over
    # ranks, each rank's are its own latents' share.
    latent_sums = ("sparsity", "l0_penalty")

    def present(self) -> dict[str, torch.Tensor]:
        """The terms set, by name, in the order of the fields."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {name: value for name, value in values if value is not None}


@dataclass
class TrainOutput:
    """One training step's loss and its terms, and what the trainer tracks: which latents
    fired, the mean L0, and how many (token, latent) pairs the step's sparse form works on
    (its measure of density). `latents` is the dense [batch, d_sae] matrix, which only the
    dense step builds."""

    loss: torch.Tensor
    terms: LossTerms
    fired: torch.Tensor
    l0: torch.Tensor
    active_pairs: int
    latents: torch.Tensor | None = None

    @classmethod
    def dense(cls, loss, terms: LossTerms, latents: torch.Tensor, active_pairs) -> TrainOutput:
        firing = latents.detach() != 0
        l0 = firing.sum(-1).float().mean()
        return cls(loss, terms, firing.any(0), l0, int(active_pairs), latents)


def squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """`‖x − x̂‖²` summed over the vector, averaged over the batch."""
    return (x - x_hat).pow(2).sum(-1).mean()


class SAE(nn.Module):
    """A sparse autoencoder `x̂ = W_dec f(x) + b_dec` with encoders that see `x − b_dec`.

    Subclasses define `encode` (inference latents), `training_loss` and their options as
    keyword-only arguments of `__init__`, and the facts below that the trainer, the registry
    and the reports read. Weights use SAELens names and shapes: `W_enc` [d_in, d_sae],
    `W_dec` [d_sae, d_in].
    """

    architecture: ClassVar[str]  # name in our registry and in metadata
    saelens_architecture: ClassVar[str]  # name written to cfg.json
    saelens_reads: ClassVar[str | None]  # the SAELens architecture read back as this class
    adam_betas: ClassVar[tuple[float, float]] = (0.0, 0.999)  # Gated/JumpReLU papers
    # The highest default lr a short run gets (train.trainer.short_run_lr): on SmolLM2, at
    # 683–810 steps, relu and gated did best at 1e-2 of 3e-3, 1e-2 and 3e-2, and 3e-2
    # collapsed; JumpReLU's thresholds need it to move far enough (docs/training.md).
    max_short_run_lr: ClassVar[float] = 1e-2
    default_sparsity_coef: ClassVar[float]  # λ where a config names none
    resamples_dead_latents: ClassVar[bool] = False  # takes Bricken et al.'s resampling
    # A training step's time relative to relu's at the same width, which spreads SAEs evenly
    # over ranks. Measured on CPU (d_in 576, d_sae 2304, batch 1024, 60 steps from the start,
    # one thread): relu 0.145 s, gated 0.227, jumprelu 0.216, batchtopk 0.095, topk 0.064.
    relative_step_cost: ClassVar[float] = 1.0
    # The axis that indexes latents, for every parameter but b_dec that an option can give
    # (and the buffers that stand in for parameters an option turns off).
    latent_axes: ClassVar[dict[str, int]] = {"W_enc": 1, "W_dec": 0}
    # Parameters that multiply the (scaled) input: folding the input scale multiplies them by it.
    input_weights: ClassVar[tuple[str, ...]] = ("W_enc",)
    # Boolean options that, switched from their default, name a variant: option → its label.
    option_labels: ClassVar[dict[str, str]] = {}
    # Option sets that reports list as this architecture's ablations, in their order.
    ablations: ClassVar[tuple[dict, ...]] = ()
    # The ranks each training batch is split over (data parallel; the trainer sets it). Only
    # losses that look at the whole batch read it: TopK's normaliser and AuxK's, BatchTopK's
    # selection. Every other loss is a mean over tokens, which the trainer combines.
    batch_ranks: World = SINGLE_PROCESS
    # The ranks the latents are sharded over (latent parallel; `shard_latents_` sets it): each
    # holds a slice of every latent tensor and the whole batch. Decoding sums the ranks'
    # partial outputs, the encoders' centring sums b_dec's gradients, and TopK-like
    # selections agree across ranks; L1 and L0 penalties are each rank's own share.
    latent_ranks: World = SINGLE_PROCESS

    def __init__(self, d_in: int, d_sae: int, options: dict):
        super().__init__()
        self.d_in, self.d_sae, self.options = d_in, d_sae, dict(options)
        W_dec = torch.randn(d_sae, d_in)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # --- what the architecture is ----------------------------------------------------------

    @classmethod
    def default_options(cls) -> dict[str, object]:
        """The options the architecture accepts (`__init__`'s keyword-only arguments), with
        their defaults."""
        params = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}

    @classmethod
    def default_lr(cls, d_sae: int) -> float:
        """3e-4, as in the Gated SAE paper (Rajamanoharan et al. 2024)."""
        return 3e-4

    @classmethod
    def variant_label(cls, options: dict) -> str:
        """A short name for the architecture with its non-default options, e.g. 'gated no b_mag'."""
        defaults = cls.default_options()
        switched = [label for option, label in cls.option_labels.items()
                    if bool(options.get(option, defaults[option])) != defaults[option]]
        return " ".join([cls.architecture, *switched])

    def latent_parameters(self) -> list[tuple[str, nn.Parameter, int]]:
        """(name, parameter, the axis that indexes latents) of each trained parameter but b_dec."""
        trained = dict(self.named_parameters())
        return [(name, trained[name], axis) for name, axis in self.latent_axes.items()
                if name in trained]

    def latent_tensors(self) -> list[tuple[str, torch.Tensor, int]]:
        """(name, tensor, latent axis) of every parameter and buffer indexed by latent."""
        tensors = dict(self.state_dict(keep_vars=True))
        return [(name, tensors[name], axis) for name, axis in self.latent_axes.items()
                if name in tensors]

    # --- latent parallel -------------------------------------------------------------------

    @torch.no_grad()
    def shard_latents_(self, ranks: World) -> None:
        """Keep this rank's contiguous slice of the latents (sizes differ by at most one)."""
        for _, t, axis in self.latent_tensors():
            t.data = ranks.shard(t.data, axis).clone()
        self.latent_ranks = ranks

    @torch.no_grad()
    def gathered(self) -> SAE:
        """A whole copy of the SAE that runs alone; sharded, every rank's latents in rank
        order (a collective: every rank calls it)."""
        whole = copy.deepcopy(self)
        for _, t, axis in whole.latent_tensors():
            t.data = self.latent_ranks.cat_along(t.data, axis)
        whole.latent_ranks = SINGLE_PROCESS
        return whole

    def latent_count(self, mask: torch.Tensor) -> int:
        """How many latents of all ranks' shards `mask` (over this rank's) marks."""
        count = mask.sum()
        if self.latent_ranks.size > 1:
            count = self.latent_ranks.sum(count.reshape(1))[0]
        return int(count)

    # --- the model -------------------------------------------------------------------------

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """`W_enc (x − b_dec) + b_enc` for architectures with a single encoder."""
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)

    def training_pre_activations(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        """`(x − b_dec) W + b` computed as `x W + (b − b_dec W)` for training.

        The same value, but b_dec's gradient then flows through a [d_in]×[d_in, d_sae] product
        instead of the [batch, d_sae]×[d_sae, d_in] matmul autograd would spend on `x − b_dec`:
        one dense matmul of five saved on every step. Returned in the weights' dtype: under
        bf16 autocast the product runs in bf16, and the gates, thresholds and top-k that
        follow compare in float32.
        """
        return torch.addmm(self.centred_bias(weight, bias), x, weight).to(weight.dtype)

    def centred_bias(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """`b − b_dec W`: the bias with which an encoder `W` takes `x` for `x − b_dec`."""
        return bias - self.latent_ranks.shared_input(self.b_dec) @ weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.decode_with(f, self.W_dec, self.b_dec)

    def decode_with(self, f: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor):
        """`f W_dec + b_dec`; sharded, each rank's latents give a part of `f W_dec`."""
        if self.latent_ranks.size == 1:
            return torch.addmm(b_dec, f, W_dec)
        return self.latent_ranks.partial_sum(f @ W_dec) + b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def training_loss(
        self, x: torch.Tensor, sparsity_coef: float, dead_mask: torch.Tensor | None = None
    ) -> TrainOutput:
        """The loss as one autograd graph over dense [batch, d_sae] tensors (the dense step)."""
        raise NotImplementedError

    def sparse_gradients(
        self,
        x: torch.Tensor,
        sparsity_coef: float,
        dead_mask: torch.Tensor | None = None,
        matmul_dtype: torch.dtype | None = None,
    ) -> TrainOutput:
        """The same loss, with every parameter's `.grad` set by hand from the active pairs
        (the sparse step; saes/sparse.py). `matmul_dtype` is the encoder product's dtype."""
        raise NotImplementedError

    def _set_grads(
        self,
        grad_x_hat: torch.Tensor,
        centring: list[tuple[torch.Tensor, torch.Tensor]],
        **grads: torch.Tensor,
    ) -> None:
        """Set `.grad` of the trained parameters among `grads`, and of `b_dec`.

        `b_dec` enters twice: `x̂ = … + b_dec` gives `Σ_i ∂L/∂x̂_i`, and the centring
        `x − b_dec` of each encoder `W` gives `−W · Σ_i ∂L/∂pre_i`, passed as
        `centring=[(W, Σ_i ∂L/∂pre_i), …]`.
        """
        grad_b_dec = grad_x_hat.sum(0)
        for weight, pre_totals in centring:
            grad_b_dec -= weight @ pre_totals
        grads["b_dec"] = grad_b_dec
        trained = dict(self.named_parameters())
        for name, grad in grads.items():
            if name in trained:
                trained[name].grad = grad

    # --- training support ------------------------------------------------------------------

    @property
    def unit_norm_decoder(self) -> bool:
        return True

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor) -> None:
        """`b_dec` ← mean of a sample of (scaled) activations."""
        self.b_dec.copy_(sample.mean(0))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Keep the step on the sphere: drop each decoder row's gradient along that row."""
        if self.W_dec.grad is None:
            return
        rows, grad = self.W_dec, self.W_dec.grad
        grad -= (grad * rows).sum(1, keepdim=True) * rows

    @torch.no_grad()
    def after_step_(self) -> None:
        """Restore constraints after an optimiser step."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def resample_latents_(self, latents: torch.Tensor, inputs: torch.Tensor) -> None:
        """Restart `latents` from `inputs`, one each (Bricken et al. 2023): the decoder row
        becomes the input's direction `d = (x − b_dec)/‖x − b_dec‖`, each input weight's column
        `d × 0.2 × the alive latents' mean encoder norm`, every other latent parameter 0."""
        directions = inputs - self.b_dec
        directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
        alive = torch.ones(self.W_dec.shape[0], dtype=torch.bool, device=inputs.device)
        alive[latents] = False
        norms = self.W_enc[:, alive].norm(dim=0)
        if self.latent_ranks.size > 1:  # the mean over every rank's alive latents
            totals = self.latent_ranks.sum(torch.stack([norms.sum(), norms.new_tensor(len(norms))]))
            enc_norm = totals[0] / totals[1] if bool(totals[1] > 0) else 1.0
        else:
            enc_norm = norms.mean() if bool(alive.any()) else 1.0
        for name, p, axis in self.latent_parameters():
            if name == "W_dec":
                p.index_copy_(axis, latents, directions)
            elif name in self.input_weights:
                p.index_copy_(axis, latents, directions.T * (0.2 * enc_norm))
            else:  # biases, r_mag, thresholds
                p.index_fill_(axis, latents, 0.0)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Turn an SAE trained on `scale·x` into one that maps raw `x` to raw `x̂`.

        Pre-activations and latents are unchanged: `W_enc·s`, `W_dec/s`, `b_dec/s`.
        """
        for name in self.input_weights:
            getattr(self, name).mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    # --- saving -----------------------------------------------------------------------------

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of `sae_weights.safetensors`, under SAELens's names."""
        return {name: t.detach() for name, t in self.state_dict().items()}

    def saelens_cfg(self) -> dict:
        return {}

    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load the tensors `saelens_tensors` gives, as a folder holds them."""
        self.load_state_dict(tensors)

    @classmethod
    def saelens_options(cls, cfg: dict) -> dict:
        """Our options for a folder SAELens wrote (cfg.json without our metadata)."""
        return {}

    def fold_saelens_settings(self, cfg: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Fold the cfg.json settings that change inference into a folder's float64 `tensors`
        (in place), so that our encoder, which always centres by b_dec and never rescales,
        gives SAELens's latents exactly."""
        if cfg.get("apply_b_dec_to_input", True) is False:
            self.fold_uncentred_input(tensors)

    def fold_uncentred_input(self, tensors: dict[str, torch.Tensor]) -> None:
        """SAELens computes `x W + b`; we compute `(x − b_dec) W + b'`, so `b' = b + b_dec W`."""
        tensors["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write an SAELens v6 folder (cfg.json + sae_weights.safetensors), atomically."""
        path = Path(path)
        cfg = {
            "architecture": self.saelens_architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": str(self.W_dec.dtype).removeprefix("torch."),
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            **self.saelens_cfg(),
            "metadata": {
                "sae_lens_version": SAELENS_VERSION,
                **(metadata or {}),
                "gated_sae": {"architecture": self.architecture, "options": self.options},
            },
        }
        tensors = {k: v.contiguous().cpu() for k, v in self.saelens_tensors().items()}
        with writing_to(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
            try:
                # Written from Python, so that a full disk is an OSError with its errno
                # (safetensors' own file writer reports it without one).
                (tmp / "sae_weights.safetensors").write_bytes(safetensors_bytes(tensors))
                (tmp / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
                os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes it owner-only
                replace_dir(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return path


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder `src` to `dst`, replacing any folder there, never leaving `dst` half-written."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
