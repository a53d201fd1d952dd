"""One SAE under training: its optimiser, its dead-latent counter, and the choice each step
between the dense and the sparse path (the same mathematics, saes/sparse.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from ..distributed import SINGLE_PROCESS, World
from ..saes import SAE, LossTerms, TrainOutput, create_sae

if TYPE_CHECKING:
    from .trainer import SAEConfig

STEPS = ("auto", "dense", "sparse")
PRECISIONS = {"float32": None, "bf16": torch.bfloat16}
# Below this fraction of active (token, latent) pairs a sparse step beats a dense one.
# CPU: measured on a 2-core EPYC (benchmarks/peers.py --crossover; relu, float32, d_in 576,
# batch 4096): sparse/dense time at density 0.1 and 0.2 is 0.76 and 1.19 at d_sae 4608,
# 0.82 and 1.65 at d_sae 18432, so the two cross near 0.16 and 0.12; with a faster sparse
# step (benchmarks/results/peers_cpu.json), 0.59 and 1.01 at 4608, 0.95 and 1.75 at 18432.
# CUDA: measured on an H200 (benchmarks/gpu.sh; bf16, d_in 2304, d_sae 65536, batch 4096)
# before the sparse step got CUDA-sized blocks and gathered dot products. Sparse/dense step
# time: relu 1.77 at density 0.005 (b_enc set), 1.77 at 0.0005 and 0.94 at 0.00013
# (trained), topk 0.93 at 0.0005; so they crossed between 0.00013 and 0.0005. To be
# measured again with them (gpu.sh reports the crossover).
SPARSE_CROSSOVER = {"cpu": 0.12, "cuda": 0.0003}
# ...and only for products of at least this many multiply-adds (batch·d_in·d_sae): below
# it, the sparse step's few dozen small operations cost more than the matmuls they save.
SPARSE_MIN_WORK = {"cpu": 1 << 28, "cuda": 1 << 32}


def init_seed(seed: int, cfg: SAEConfig, d_in: int) -> int:
    """The seed of an SAE's initial weights: a function of the run seed and the SAE's shape
    alone, so an SAE starts the same whichever SAEs share its run, and SAEs that differ
    only in lr or sparsity coefficient start from the same weights."""
    key = json.dumps([seed, cfg.arch, d_in, cfg.d_sae, cfg.options], sort_keys=True)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:7], "little")


class TrainingSlot:
    """One SAE under training with its optimiser, dead-latent counter and step density.

    In a data-parallel job (`batch_ranks` of several ranks) every rank holds the same SAE and
    the whole batch, steps on its own rows of it, and the ranks sum their gradients, each
    rank's mean over its tokens weighted by its share of the batch: the whole batch's.

    In a latent-parallel job (`latent_ranks` of several ranks) every rank holds a slice of
    the SAE's latents (`SAE.shard_latents_`), with their Adam moments and dead-latent
    counts, and steps on the whole batch on the dense path; `state` and `load_state` speak
    of the whole SAE, so a checkpoint resumes on any number of ranks.
    """

    def __init__(
        self, cfg: SAEConfig, d_in: int, device: str, seed: int, precision: str = "float32",
        batch_ranks: World = SINGLE_PROCESS, latent_ranks: World = SINGLE_PROCESS,
    ):
        self.cfg = cfg
        self.batch_ranks = batch_ranks
        self.device_type = torch.device(device).type
        self.matmul_dtype = PRECISIONS[precision]
        torch.manual_seed(init_seed(seed, cfg, d_in))
        # The slot's own draws (resampling), so that an SAE trains the same whichever SAEs,
        # or ranks, it shares a run with.
        self.generator = torch.Generator().manual_seed(init_seed(seed, cfg, d_in))
        self.sae: SAE = create_sae(cfg.arch, d_in=d_in, d_sae=cfg.d_sae, **cfg.options).to(device)
        self.sae.batch_ranks = batch_ranks
        self.latent_ranks = latent_ranks
        if latent_ranks.size > 1:  # drawn whole, then sliced: the one process's weights
            self.sae.shard_latents_(latent_ranks)
        # A run sets lr from its steps when it is not given (trainer.default_lr); a slot used
        # alone (benchmarks, tests) knows no steps and takes the architecture's published lr.
        self.lr = cfg.lr if cfg.lr is not None else self.sae.default_lr(cfg.d_sae)
        self.optimizer = torch.optim.Adam(
            self.sae.parameters(), lr=self.lr, betas=self.sae.adam_betas, eps=1e-8, fused=True
        )
        latents = self.sae.W_dec.shape[0]  # this rank's
        self.tokens_since_fired = torch.zeros(latents, dtype=torch.long, device=device)
        # Fraction of (token, latent) pairs the last step's sparse form touched: 1 before any.
        self.density = 1.0

    def state(self) -> dict:
        """The whole SAE's training state (sharded: gathered from every rank, a collective)."""
        state = {
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tokens_since_fired": self.tokens_since_fired,
            "density": self.density,
            "generator": self.generator.get_state(),
        }
        return self._resharded(state, self.latent_ranks.cat_along)

    def load_state(self, state: dict) -> None:
        """Resume from `state` (of the whole SAE; sharded, this rank takes its slice)."""
        ranks = self.latent_ranks
        state = self._resharded(state, lambda t, axis: ranks.shard(t, axis).contiguous())
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        # Fused Adam walks a parameter and its moments as one flat buffer: they must share a
        # memory layout (W_enc is stored transposed), which gathered or sliced moments lose.
        for p in self.sae.parameters():
            moments = self.optimizer.state.get(p, {})
            for name, moment in moments.items():
                if moment.shape == p.shape and moment.stride() != p.stride():
                    moments[name] = torch.empty_like(p).copy_(moment)
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.density = state["density"]
        self.generator.set_state(state["generator"])

    def _resharded(self, state: dict, along) -> dict:
        """`state` with `along(tensor, latent axis)` applied to every tensor indexed by latent:
        the SAE's, their Adam moments, the dead-latent counts. Unsharded, `state` itself."""
        if self.latent_ranks.size == 1:
            return state
        axes = {name: axis for name, _, axis in self.sae.latent_tensors()}
        order = [axes.get(name) for name, _ in self.sae.named_parameters()]
        moments = {
            i: {k: along(v, order[i]) if order[i] is not None and k != "step" else v
                for k, v in per_param.items()}
            for i, per_param in state["optimizer"]["state"].items()
        }
        return {
            **state,
            "sae": {k: along(v, axes[k]) if k in axes else v for k, v in state["sae"].items()},
            "optimizer": {**state["optimizer"], "state": moments},
            "tokens_since_fired": along(state["tokens_since_fired"], 0),
        }

    def dead_fraction(self, dead_tokens: int) -> float:
        """The fraction of the SAE's latents (all ranks' when sharded) silent for `dead_tokens`."""
        return self.sae.latent_count(self.tokens_since_fired >= dead_tokens) / self.cfg.d_sae

    def choose_step(self, step: str, batch_size: int) -> str:
        """`dense` or `sparse`: as forced, or (auto) whichever is cheaper at the density of
        the previous batch, a function of the training state alone, so resuming repeats it."""
        if self.latent_ranks.size > 1:
            return "dense"  # the sparse path has no latent-parallel form
        if step != "auto":
            return step
        work = batch_size * self.sae.d_in * self.sae.d_sae
        sparse_pays = work >= SPARSE_MIN_WORK[self.device_type]
        sparse_pays &= self.density < SPARSE_CROSSOVER[self.device_type]
        return "sparse" if sparse_pays else "dense"

    def step(
        self,
        x: torch.Tensor,
        lr_scale: float,
        coef_scale: float,
        dead_tokens: int,
        path: str = "dense",
    ) -> TrainOutput:
        """One optimiser step on a batch of scaled activations (this rank's rows of it in a
        data-parallel job), on the `dense` or `sparse` path (the same mathematics); returns
        the whole batch's output with the loss detached and without the dense latents."""
        sae, opt, batch = self.sae, self.optimizer, x
        x = self.batch_ranks.shard(batch)
        for group in opt.param_groups:
            group["lr"] = self.lr * lr_scale
        dead_mask = self.tokens_since_fired >= dead_tokens
        coef = self.cfg.sparsity_coef * coef_scale
        opt.zero_grad(set_to_none=True)
        if path == "sparse":
            out = sae.sparse_gradients(x, coef, dead_mask, self.matmul_dtype)
        else:
            precision = self.matmul_dtype or torch.float32
            autocast = self.matmul_dtype is not None
            with torch.autocast(self.device_type, dtype=precision, enabled=autocast):
                out = sae.training_loss(x, coef, dead_mask)
            out.loss.backward()
        if self.batch_ranks.size > 1:
            out = self._summed_over_ranks(out, x.shape[0] / batch.shape[0])
        if self.latent_ranks.size > 1:
            out = self._summed_over_latents(out, coef)
        if sae.unit_norm_decoder:
            sae.remove_parallel_decoder_grad_()
        opt.step()
        sae.after_step_()
        self.tokens_since_fired += batch.shape[0]
        self.tokens_since_fired[out.fired] = 0
        self.density = out.active_pairs / (batch.shape[0] * sae.d_sae)
        return replace(out, loss=out.loss.detach(), latents=None)

    @torch.no_grad()
    def _summed_over_ranks(self, out: TrainOutput, share: float) -> TrainOutput:
        """The whole batch's gradients and step output from this rank's, in one collective:
        means over tokens (gradients, loss, its terms, L0) weighted by the rank's `share` of
        the batch and summed; the latents that fired anywhere; all ranks' active pairs."""
        grads = [p.grad for p in self.sae.parameters() if p.grad is not None]
        terms = out.terms.present()
        means = torch.stack([out.loss.detach(), *terms.values(), out.l0]).float()
        packed = torch.cat([
            *(g.flatten() * share for g in grads), means * share, out.fired.float(),
            means.new_tensor([out.active_pairs]),
        ])
        packed = self.batch_ranks.sum(packed)
        start = 0
        for g in grads:
            g.copy_(packed[start : start + g.numel()].view_as(g))
            start += g.numel()
        means = packed[start : start + len(means)]
        fired = packed[start + len(means) : -1] > 0
        return replace(
            out, loss=means[0], terms=LossTerms(**dict(zip(terms, means[1:-1], strict=True))),
            l0=means[-1], fired=fired, active_pairs=int(packed[-1]),
        )

    @torch.no_grad()
    def _summed_over_latents(self, out: TrainOutput, coef: float) -> TrainOutput:
        """The whole SAE's step output from this rank's share of the latents: the penalties
        that sum over latents (and the loss through them), the L0, the active pairs, in one
        collective; `fired` stays this rank's, as its dead-latent counts do."""
        terms = out.terms.present()
        local = [name for name in terms if name in LossTerms.latent_sums]
        shares = torch.stack([*(terms[n] for n in local), out.l0.float(),
                              out.l0.new_tensor(float(out.active_pairs))])
        totals = self.latent_ranks.sum(shares)
        summed = dict(zip(local, totals[: len(local)], strict=True))
        loss = out.loss.detach() + coef * sum(summed[n] - terms[n] for n in local)
        return replace(out, loss=loss, terms=LossTerms(**{**terms, **summed}),
                       l0=totals[-2], active_pairs=int(totals[-1]))

    @torch.no_grad()
    def resample_dead(self, x: torch.Tensor, window_tokens: int) -> int:
        """Bricken et al. 2023: latents silent for the whole window restart from inputs drawn
        with probability ∝ loss² (`SAE.resample_latents_`), with fresh Adam state."""
        dead = torch.nonzero(self.tokens_since_fired >= window_tokens).flatten()
        # sharded: every rank draws for all ranks' dead latents, in order, and takes its own
        counts = self.latent_ranks.cat(dead.new_tensor([dead.numel()])).tolist()
        if sum(counts) == 0:
            return 0
        per_input_loss = (x - self.sae(x)).pow(2).sum(-1)
        weights = per_input_loss.pow(2).cpu()
        if float(weights.sum()) <= 0:
            return 0
        picks = torch.multinomial(weights, sum(counts), replacement=True,
                                  generator=self.generator)
        before = sum(counts[: self.latent_ranks.rank])
        picks = picks[before : before + dead.numel()]
        self.sae.resample_latents_(dead, x[picks.to(x.device)])
        for _, p, axis in self.sae.latent_parameters():
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in self.optimizer.state.get(p, {}):
                    self.optimizer.state[p][moment].index_fill_(axis, dead, 0.0)
        self.tokens_since_fired[dead] = 0
        return sum(counts)
