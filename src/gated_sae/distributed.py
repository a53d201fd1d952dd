"""Running under torchrun: the ranks of the job, and the few collectives the trainer and the
sweep need, all torch.distributed's (gloo on CPU, NCCL on CUDA).

Without torchrun (no WORLD_SIZE in the environment, or 1) everything here is a no-op on a
world of one rank, so the single-process path and the distributed one are the same code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError, GatedSAEError

DEFAULT_TIMEOUT_SECONDS = 600


class RankLostError(GatedSAEError):
    """Another rank stopped answering: it died, or hung past the timeout."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a job."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, costs: list[float]) -> list[int]:
        """The indices of the items this rank owns when items of these costs are spread over
        the ranks: greedily, the costliest first to the least loaded rank (ties to the lower
        rank), so every rank computes the same assignment."""
        load = [0.0] * self.size
        owner = [0] * len(costs)
        for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
            rank = min(range(self.size), key=lambda r: (load[r], r))
            owner[i] = rank
            load[rank] += costs[i]
        return [i for i in range(len(costs)) if owner[i] == self.rank]

    def all_gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        gathered = [None] * self.size
        _collective(dist.all_gather_object, gathered, obj)
        return gathered

    def gather(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0; None elsewhere."""
        if self.size == 1:
            return [obj]
        gathered = [None] * self.size if self.is_main else None
        _collective(dist.gather_object, obj, gathered, dst=0)
        return gathered

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        _collective(dist.broadcast_object_list, box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            _collective(dist.barrier)

    # Tensor collectives, for a batch split over the ranks (data parallel) or an SAE's latents
    # (latent parallel).

    def shard(self, tensor: torch.Tensor, axis: int = 0) -> torch.Tensor:
        """This rank's part of a tensor every rank holds (a batch's rows, a latent slice):
        contiguous along `axis`, sizes differing by at most one."""
        return tensor.tensor_split(self.size, axis)[self.rank] if self.size > 1 else tensor

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise sum over the ranks of `tensor`, on every rank (`tensor` itself in
        a world of one)."""
        if self.size == 1:
            return tensor
        total = tensor.clone()
        _collective(dist.all_reduce, total)
        return total

    # Differentiable collectives, for an SAE whose latents are sharded over the ranks (latent
    # parallel): every rank holds the whole batch and computes the same loss from the sums.

    def partial_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the ranks of each rank's part of a value (a decoder's output from its
        own latents); its gradient passes back unchanged, since every rank's loss is the same
        function of the sum."""
        return tensor if self.size == 1 else _PartialSum.apply(tensor, self)

    def shared_input(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor`, which every rank holds, used with this rank's latents alone (b_dec in the
        encoder's centring): its gradient is the sum of the ranks' gradients."""
        return tensor if self.size == 1 else _SharedInput.apply(tensor, self)

    def cat_along(self, tensor: torch.Tensor, axis: int) -> torch.Tensor:
        """Every rank's `tensor` concatenated along `axis` in rank order (sizes along it may
        differ; every other axis alike)."""
        if self.size == 1:
            return tensor
        rows = tensor.movedim(axis, 0)
        flat = self.cat(rows.flatten())
        return flat.view(-1, *rows.shape[1:]).movedim(0, axis)

    def cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (1-D, lengths may differ) concatenated in rank order."""
        if self.size == 1:
            return tensor
        length = torch.tensor([tensor.numel()], device=tensor.device)
        lengths = [torch.zeros_like(length) for _ in range(self.size)]
        _collective(dist.all_gather, lengths, length)
        longest = int(max(lengths))
        padded = torch.zeros(longest, dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.numel()] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        _collective(dist.all_gather, parts, padded)
        return torch.cat([part[: int(n)] for part, n in zip(parts, lengths, strict=True)])


SINGLE_PROCESS = World()


class _PartialSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, world):
        return world.sum(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _SharedInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, world):
        ctx.world = world
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return ctx.world.sum(grad.contiguous()), None


def _collective(operation, *args, **kwargs):
    try:
        return operation(*args, **kwargs)
    except RuntimeError as e:  # gloo and NCCL report a lost or late peer this way
        raise RankLostError(
            f"rank {dist.get_rank()} lost contact with another rank "
            f"({str(e).splitlines()[0][:200]}); rerunning the same command resumes from "
            "the last checkpoint"
        ) from None


def init_world(device: str = "cpu", timeout_seconds: float | None = None) -> World:
    """The job's world: under torchrun, joins the process group (NCCL for CUDA devices,
    gloo otherwise; a collective waits at most `timeout_seconds` for the other ranks) and
    puts this rank on its own GPU; otherwise a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE_PROCESS
    if dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    timeout = DEFAULT_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
    if not timeout > 0:
        raise ConfigError(f"the rank timeout must be a positive number of seconds, got {timeout}")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
    return World(dist.get_rank(), dist.get_world_size())


def rank_device(device: str) -> str:
    """The device a rank trains on: under torchrun `cuda` means this rank's own GPU."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def leave_world(together: bool = False) -> None:
    """Leave the process group, if this process joined one; `together` first waits for every
    rank to finish (a gloo rank that tears its connections down while another still runs can
    abort at exit)."""
    if dist.is_initialized():
        if together:
            _collective(dist.barrier)
        dist.destroy_process_group()
