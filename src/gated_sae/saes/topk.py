"""TopK SAE with AuxK (Gao et al. 2024, arXiv 2406.04093) and BatchTopK (Bussmann et al. 2024,
arXiv 2412.06410)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import SINGLE_PROCESS, World
from ..errors import ConfigError
from .base import SAE, LossTerms, TrainOutput, squared_error
from .sparse import Pairs, encoded_blocks, flat_nonzero

GROUP = 8  # row_topk's group size


def row_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns) of each row's `k` largest entries, as `pre.topk(k, dim=-1)` unsorted.

    The row's columns are dealt into groups of 8 (every d/8-th column); the k largest group
    maxima are k distinct entries, so the row's k-th largest is at least the k-th of them,
    and every entry that large lies in one of those k groups. So the k largest of the row are
    the k largest of those 8k entries: two small selections and a pass for the maxima where
    one `topk` over the whole row cost 0.35× the encoder product (d_sae 4608, k 64, CPU).
    On CUDA, not yet timed there, torch's own `topk` is used.
    """
    n, width = pre.shape
    if pre.device.type != "cpu" or width % GROUP or 4 * GROUP * k > width:
        return pre.topk(k, dim=-1, sorted=False)
    stride = width // GROUP
    with torch.no_grad():
        groups = pre.view(n, GROUP, stride).amax(1).topk(k, dim=-1, sorted=False).indices
        cols = (groups[:, :, None] + torch.arange(0, width, stride, device=pre.device)).view(n, -1)
        cols = cols.gather(1, pre.gather(1, cols).topk(k, dim=-1, sorted=False).indices)
    return pre.gather(1, cols), cols


def batch_variance(t: torch.Tensor, ranks: World = SINGLE_PROCESS) -> torch.Tensor:
    """`E‖t − E[t]‖²` over the whole batch, whose rows may be split over `ranks`."""
    if ranks.size == 1:
        return squared_error(t, t.mean(0))
    totals = ranks.sum(torch.cat([t.new_tensor([t.shape[0]]), t.sum(0)]))
    n, mean = totals[0], totals[1:] / totals[0]
    return ranks.sum((t - mean).pow(2).sum().reshape(1))[0] / n


def normalized_squared_error(
    target: torch.Tensor, estimate: torch.Tensor, ranks: World = SINGLE_PROCESS
) -> torch.Tensor:
    """`E‖t − t̂‖² / E‖t − E[t]‖²`, the normalised MSE of the reference code; with the batch
    split over `ranks`, this rank's mean over its tokens against the whole batch's variance."""
    return squared_error(target, estimate) / batch_variance(target, ranks)


class TopKSAE(SAE):
    """`f = ReLU(TopK_k(W_enc x_c + b_enc))`; loss: normalised MSE + α·AuxK.

    AuxK: with `e = x − x̂` (detached), `ê = W_dec · TopK_{k_aux}(pre-activations of dead
    latents)` without bias, `L_aux = ‖e − ê‖² / ‖e − E[e]‖²`. Which latents are dead is the
    trainer's to say (no firing in a window of tokens), passed as `dead_mask`.
    """

    architecture = "topk"
    relative_step_cost = 0.45
    saelens_architecture = saelens_reads = "topk"
    adam_betas = (0.9, 0.999)  # Gao et al.
    # On SmolLM2 at 810 steps, 1e-2 was no better than 3e-3 and left 1–6% of latents dead.
    max_short_run_lr = 5e-3
    default_sparsity_coef = 0.0  # unused: k sets the sparsity
    latent_axes = {**SAE.latent_axes, "b_enc": 0}

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        k: int = 32,
        k_aux: int | None = None,
        aux_coef: float = 1 / 32,
    ):
        # The default d_in/2 may exceed a narrow SAE's width (a SAELens folder names no k_aux).
        k_aux = max(1, min(d_in // 2, d_sae)) if k_aux is None else k_aux
        if not 0 < k <= d_sae:
            raise ConfigError(f"k must be in 1..d_sae={d_sae}, got {k}")
        if not 0 < k_aux <= d_sae:
            raise ConfigError(f"k_aux must be in 1..d_sae={d_sae}, got {k_aux}")
        if aux_coef < 0:
            raise ConfigError(f"aux_coef must be >= 0, got {aux_coef}")
        super().__init__(d_in, d_sae, {"k": k, "k_aux": k_aux, "aux_coef": aux_coef})
        self.k, self.k_aux, self.aux_coef = k, k_aux, aux_coef
        self.b_enc = nn.Parameter(torch.zeros(d_sae))

    @classmethod
    def default_lr(cls, d_sae: int) -> float:
        """Gao et al. 2024: `2e-4 / √(d_sae / 2^14)`."""
        return 2e-4 / math.sqrt(d_sae / 2**14)

    def saelens_cfg(self) -> dict:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def saelens_options(cls, cfg: dict) -> dict:
        return {"k": cfg["k"]}

    def fold_saelens_settings(self, cfg: dict, tensors: dict[str, torch.Tensor]) -> None:
        super().fold_saelens_settings(cfg, tensors)
        # SAELens ranks `pre·‖W_dec,i‖` and decodes `(f/‖W_dec,i‖) W_dec`: unit rows do the
        # same. A setting of its topk only (BatchTopK is saved as a jumprelu, which has none).
        if cfg.get("architecture") == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
            t = tensors
            n = t["W_dec"].norm(dim=1)
            t["W_enc"], t["b_enc"] = t["W_enc"] * n, t["b_enc"] * n
            t["W_dec"] = t["W_dec"] / n[:, None]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))

    def sparse_decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """`Σ_j values_j W_dec[indices_j]` per row, without a dense [batch, d_sae] matmul."""
        part = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")
        return self.latent_ranks.partial_sum(part)

    def token_topk(self, pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices) of each token's `k` largest pre-activations. With the latents
        sharded, each rank offers its own `k` largest and keeps those at or above the token's
        `k`-th largest of all offered; the others it drops, as −∞."""
        values, indices = row_topk(pre, min(k, pre.shape[-1]))
        ranks = self.latent_ranks
        if ranks.size == 1:
            return values, indices
        offered = ranks.cat_along(values.detach(), 1)
        cutoff = offered.topk(k, dim=-1, sorted=False).values.min(-1, keepdim=True).values
        return values.masked_fill(values < cutoff, float("-inf")), indices

    def auxk_loss(self, pre: torch.Tensor, residual: torch.Tensor, dead_mask) -> torch.Tensor:
        dead = 0 if dead_mask is None else self.latent_count(dead_mask)
        if not dead:
            return pre.new_zeros(())
        dead_pre = pre.masked_fill(~dead_mask, float("-inf"))
        values, indices = self.token_topk(dead_pre, min(self.k_aux, dead))
        residual_hat = self.sparse_decode(torch.relu(values), indices)
        return normalized_squared_error(residual.detach(), residual_hat, self.batch_ranks)

    def training_loss(self, x, sparsity_coef=0.0, dead_mask=None) -> TrainOutput:
        pre = self.training_pre_activations(x, self.W_enc, self.b_enc)
        values, indices = self.token_topk(pre, self.k)
        values = torch.relu(values)
        x_hat = self.sparse_decode(values, indices) + self.b_dec
        fvu = normalized_squared_error(x, x_hat, self.batch_ranks)
        aux = self.auxk_loss(pre, x - x_hat, dead_mask)
        loss = fvu + self.aux_coef * aux
        latents = torch.zeros_like(pre).scatter_(-1, indices, values.detach())
        mse = squared_error(x, x_hat).detach()
        terms = LossTerms(fvu=fvu.detach(), mse=mse, aux=aux.detach())
        return TrainOutput.dense(loss, terms, latents, (values > 0).sum())

    def selection_tokens(self, n: int) -> int:
        """The tokens a selection ranges over, of which this rank holds `n`: TopK selects
        within each token, so `n` itself."""
        return n

    def block_selection(self, pre: torch.Tensor, n_tokens: int):
        """(values, flat indices into the block) of the block's candidates: each row's top k;
        `n_tokens` is `selection_tokens`'s."""
        values, cols = row_topk(pre, self.k)
        rows = torch.arange(pre.shape[0], device=pre.device)[:, None]
        return values.flatten(), (rows * self.d_sae + cols).flatten()

    def batch_selection(self, values: torch.Tensor, flat: torch.Tensor, n_tokens: int):
        """The kept candidates of the whole batch (TopK: all of them)."""
        return values, flat

    @torch.no_grad()
    def sparse_gradients(self, x, sparsity_coef=0.0, dead_mask=None, matmul_dtype=None):
        """Active pairs: the selected k per token with a positive value, and the AuxK pairs.
        With `v = E‖x − E x‖²`: `∂L/∂x̂_i = 2(x̂_i − x_i)/(n v)`; AuxK likewise on the
        detached residual, with its own variance, times α."""
        n, W_dec, x_c = x.shape[0], self.W_dec, x - self.b_dec
        n_selected = self.selection_tokens(n)
        dead = dead_mask.nonzero().flatten() if dead_mask is not None else dead_mask
        k_aux = 0 if dead is None else min(self.k_aux, dead.numel())
        kept, aux = self.block_candidates(x, n_selected, dead, k_aux, matmul_dtype)
        candidates = (torch.cat(column) for column in zip(*kept, strict=True))
        pairs, f = Pairs.from_flat(*self.batch_selection(*candidates, n_selected), n, self.d_sae)
        self.after_selection(f, n_selected)

        error = pairs.decode(f, W_dec) + self.b_dec - x
        variance = batch_variance(x, self.batch_ranks)
        mse = error.pow(2).sum() / n
        grad_x_hat = error * (2 / (n * variance))
        grad_pre = pairs.dot(grad_x_hat, W_dec)
        grad_W_dec = pairs.per_latent(f, grad_x_hat)
        grad_W_enc = pairs.per_latent(grad_pre, x_c)
        grad_b_enc = pairs.latent_totals(grad_pre)
        aux_loss = x.new_zeros(())
        if aux:
            columns = (torch.cat(column) for column in zip(*aux, strict=True))
            aux_pairs, a = Pairs.from_flat(*columns, n, self.d_sae)
            residual = -error
            aux_error = aux_pairs.decode(a, W_dec) - residual
            aux_variance = batch_variance(residual, self.batch_ranks)
            aux_loss = aux_error.pow(2).sum() / (n * aux_variance)
            grad_residual_hat = aux_error * (2 * self.aux_coef / (n * aux_variance))
            grad_a = aux_pairs.dot(grad_residual_hat, W_dec)
            grad_W_dec += aux_pairs.per_latent(a, grad_residual_hat)
            grad_W_enc += aux_pairs.per_latent(grad_a, x_c)
            grad_b_enc += aux_pairs.latent_totals(grad_a)
        self._set_grads(
            grad_x_hat,
            [(self.W_enc, grad_b_enc)],
            W_enc=grad_W_enc.T,
            b_enc=grad_b_enc,
            W_dec=grad_W_dec,
        )
        fvu = mse / variance
        loss = fvu + self.aux_coef * aux_loss
        terms = LossTerms(fvu=fvu, mse=mse, aux=aux_loss)
        return TrainOutput(loss, terms, pairs.fired(f), pairs.l0(f), len(pairs))

    def block_candidates(self, x, n_selected, dead, k_aux, matmul_dtype):
        """Per block of rows, `(values, flat indices)` of its selection's candidates, and of
        its AuxK pairs among the `dead` latents."""
        kept, aux = [], []
        bias = self.centred_bias(self.W_enc, self.b_enc)
        for start, pre in encoded_blocks(x, self.W_enc, bias, matmul_dtype):
            values, flat = self.block_selection(pre, n_selected)
            kept.append((values, flat + start * self.d_sae))
            if k_aux:
                values, cols = pre[:, dead].topk(k_aux, dim=-1, sorted=False)
                rows = torch.arange(start, start + pre.shape[0], device=x.device)[:, None]
                aux.append((values.flatten(), (rows * self.d_sae + dead[cols]).flatten()))
        return kept, aux

    def after_selection(self, kept: torch.Tensor, n_tokens: int) -> None:
        """Hook for what a step learns from its kept values (BatchTopK: the threshold)."""


class BatchTopKSAE(TopKSAE):
    """Keeps the `B·k` largest activations across a batch of B tokens (mean L0 exactly k).

    Inference uses one global threshold θ, an exponential moving average of the smallest
    kept activation of each training batch: `f = ReLU(z)·1[z > θ]`, which is a JumpReLU,
    and that is how it is saved.
    """

    architecture = "batchtopk"
    relative_step_cost = 0.65
    saelens_architecture = "jumprelu"
    saelens_reads = None  # a SAELens jumprelu folder is a JumpReLU SAE
    threshold_momentum = 0.99
    # A selection keeps only values at or above a floor, checked to leave at least B·k:
    # selecting B·k among all B·d_sae values (a topk with k in the hundreds of thousands) cost
    # 2.5× the encoder product at d_sae 4608. The floor is this fraction of the last batch's
    # smallest kept activation, lowered further by its last fall, if it fell: early in
    # training it falls by 10–20% a step.
    floor_margin = 0.8
    latent_axes = {**TopKSAE.latent_axes, "threshold": 0}  # a buffer

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        k: int = 32,
        k_aux: int | None = None,
        aux_coef: float = 1 / 32,
    ):
        super().__init__(d_in, d_sae, k=k, k_aux=k_aux, aux_coef=aux_coef)
        # One value, stored per latent so the saved tensor is SAELens's jumprelu threshold.
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.register_buffer("threshold_initialised", torch.tensor(False))
        # Not saved: only speed depends on them; a resumed step selects the same without.
        self.selection_floor: float | None = None
        self.smallest_kept: float | None = None

    def saelens_cfg(self) -> dict:
        return {}

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().saelens_tensors()
        del tensors["threshold_initialised"]
        return tensors

    def load_saelens_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_saelens_tensors({**tensors, "threshold_initialised": torch.tensor(True)})

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pre_activations(x)
        return torch.relu(z) * (z > self.threshold)

    def training_loss(self, x, sparsity_coef=0.0, dead_mask=None) -> TrainOutput:
        pre = self.training_pre_activations(x, self.W_enc, self.b_enc)
        acts, n_selected = torch.relu(pre).flatten(), self.selection_tokens(x.shape[0])
        flat_indices = self.largest_above_floor(acts, n_selected)
        flat_values = acts[flat_indices]
        latents = torch.zeros_like(acts).scatter(0, flat_indices, flat_values).view_as(pre)
        self.after_selection(flat_values.detach(), n_selected)
        x_hat = self.decode(latents)
        fvu = normalized_squared_error(x, x_hat, self.batch_ranks)
        aux = self.auxk_loss(pre, x - x_hat, dead_mask)
        loss = fvu + self.aux_coef * aux
        mse = squared_error(x, x_hat).detach()
        terms = LossTerms(fvu=fvu.detach(), mse=mse, aux=aux.detach())
        return TrainOutput.dense(loss, terms, latents, (flat_values > 0).sum())

    @property
    def selection_ranks(self) -> World:
        """The ranks a selection spans: those the batch is split over, or the latents."""
        return self.batch_ranks if self.batch_ranks.size > 1 else self.latent_ranks

    def selection_tokens(self, n: int) -> int:
        """The whole batch's tokens, of which this rank holds `n`: BatchTopK selects across
        the batch."""
        ranks = self.batch_ranks
        return n if ranks.size == 1 else int(ranks.sum(self.b_dec.new_tensor([n]))[0])

    def block_selection(self, pre, n_tokens):
        """The block's activations at or above the selection floor, or without one its `n·k`
        largest: either way a superset of its share of the batch's."""
        if self.selection_floor is not None:
            flat = flat_nonzero(pre >= self.selection_floor)
            return pre.view(-1)[flat], flat
        return torch.relu(pre).flatten().topk(min(n_tokens * self.k, pre.numel()))

    def block_candidates(self, x, n_selected, *rest):
        """The blocks' candidates above the floor where the batch has at least `n·k` of them;
        otherwise (the floor dropped) the blocks are encoded again and selected without it."""
        if self.selection_floor is not None:
            kept, aux = super().block_candidates(x, n_selected, *rest)
            if self.enough(sum(values.numel() for values, _ in kept), n_selected):
                return kept, aux
            self.selection_floor = None
        return super().block_candidates(x, n_selected, *rest)

    def enough(self, count: int, n_tokens: int) -> bool:
        """Whether `count` values, summed over the selection's ranks, reach the batch's `n·k`."""
        ranks = self.selection_ranks
        if ranks.size > 1:
            count = int(ranks.sum(torch.tensor([count], device=self.b_dec.device))[0])
        return count >= n_tokens * self.k

    def batch_selection(self, values, flat, n_tokens):
        """The batch's `n·k` largest among the blocks' candidates."""
        order = self.largest(values, n_tokens)
        return values[order], flat[order]

    def largest_above_floor(self, values: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """`largest` among the values at or above the selection floor where at least `n·k`
        are (the dense step's selection: the whole batch's activations at once)."""
        if self.selection_floor is not None:
            pool = flat_nonzero(values >= self.selection_floor)
            if self.enough(pool.numel(), n_tokens):
                return pool[self.largest(values[pool], n_tokens)]
        return self.largest(values, n_tokens)

    def largest(self, values: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """The indices of the batch's `n·k` largest `values` (n the whole batch's tokens).
        With the batch or the latents split over ranks, each rank offers its own `n·k`
        largest, and keeps those at or above the smallest of the `n·k` largest offered by all."""
        ranks, kept = self.selection_ranks, n_tokens * self.k
        local = values.topk(min(kept, values.numel()), sorted=False)
        if ranks.size == 1:
            return local.indices
        offered = ranks.cat(local.values.detach())
        cutoff = offered.topk(min(kept, offered.numel()), sorted=False).values.min()
        return local.indices[local.values >= cutoff]

    @torch.no_grad()
    def after_selection(self, kept: torch.Tensor, n_tokens: int) -> None:
        """The threshold's moving average, and the next selection's floor: none where fewer
        than `n·k` activations were positive, as no floor above 0 would then leave enough."""
        positive = kept[kept > 0]
        smallest = positive.min() if positive.numel() else kept.new_tensor(math.inf)
        if self.selection_ranks.size > 1:
            smallest = self.selection_ranks.cat(smallest.reshape(1)).min()
        finite = bool(torch.isfinite(smallest))
        full = finite and self.enough(positive.numel(), n_tokens)
        previous, self.smallest_kept = self.smallest_kept, float(smallest) if full else None
        self.selection_floor = None
        if self.smallest_kept is not None:
            fall = min(1.0, self.smallest_kept / previous) if previous else 1.0
            self.selection_floor = self.floor_margin * self.smallest_kept * fall
        if not finite:
            return
        if bool(self.threshold_initialised):
            m = self.threshold_momentum
            self.threshold.mul_(m).add_(smallest, alpha=1 - m)
        else:
            self.threshold.fill_(smallest)
            self.threshold_initialised.fill_(True)
