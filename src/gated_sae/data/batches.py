"""Shuffled batches of activations for the trainer, from a tensor in memory, an activation
cache, or a model run on the fly: three streams behind one protocol, `BatchStream`."""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..distributed import SINGLE_PROCESS, World
from ..errors import ConfigError, DataError, check_positive_int
from .activations_file import check_finite
from .cache import ActivationCache, load_cache
from .corpus import (
    DEFAULT_DATASET,
    check_context_size,
    check_dataset,
    check_skip_positions,
    iter_windows,
    special_token_ids,
)

DEFAULT_BUFFER_TOKENS = 1 << 18  # the shuffle buffer of cache and model streams, in tokens


@runtime_checkable
class BatchStream(Protocol):
    """Batches [batch_size, d_in] without end, that can start at any step.

    `iter_from(step)` yields exactly the batches an iteration from step 0 yields from `step`
    on, without computing the ones before it where it can: a run resumed at `step` trains on
    the batches an uninterrupted run would. The trainer resumes through it; any other
    iterable of batches it reads from the start and skips to the step.
    """

    def iter_from(self, step: int) -> Iterator[torch.Tensor]: ...

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)


class ShuffledBatches(BatchStream):
    """Batches of rows of an in-memory [N, d_in] tensor, reshuffled every epoch from a seed."""

    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int = 0):
        if batch_size > acts.shape[0]:
            raise DataError(
                f"batch size {batch_size} is larger than the {acts.shape[0]} activations given"
            )
        self.acts, self.batch_size, self.seed = acts, batch_size, seed
        self.per_epoch = acts.shape[0] // batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.acts.shape[0], generator=gen)

    def iter_from(self, step: int) -> Iterator[torch.Tensor]:
        epoch, offset = divmod(step, self.per_epoch)
        while True:
            order = self._order(epoch)
            for i in range(offset, self.per_epoch):
                yield self.acts[order[i * self.batch_size : (i + 1) * self.batch_size]]
            epoch, offset = epoch + 1, 0


# --- shuffled batches from a cache ---------------------------------------------------------


class CacheBatches(BatchStream):
    """Shuffled float32 batches [batch_size, d_in] of a cache's token activations.

    Each epoch visits every token (but the first `skip_positions` of each window) once, in an order
    fixed by the seed: the windows are cut into blocks, the blocks are permuted, consecutive
    blocks fill a shuffle buffer of about `buffer_tokens` tokens, and the tokens within a buffer
    are permuted. Blocks are read whole, so reads from the memory-mapped shards are sequential.
    Buffer sizes are known without reading, so `iter_from(step)` starts at any step by reading
    only the buffers that step needs. The last partial batch of an epoch is dropped.
    """

    BLOCKS_PER_BUFFER = 16

    def __init__(
        self, cache: ActivationCache, batch_size: int, seed: int = 0, *,
        skip_positions: int = 1, buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    ):
        check_positive_int("batch_size", batch_size)
        check_skip_positions(skip_positions, cache.context_size)
        check_positive_int("buffer_tokens", buffer_tokens)
        self.cache, self.batch_size, self.seed = cache, batch_size, seed
        self.skip_positions = skip_positions
        self.per_window = cache.context_size - skip_positions
        total = cache.n_seq * self.per_window
        if batch_size > total:
            raise DataError(f"batch size {batch_size} is larger than the {total} activations in "
                            f"cache {cache.path}")
        self.per_epoch = total // batch_size
        buffer_windows = max(1, buffer_tokens // self.per_window)
        self.block_windows = max(1, buffer_windows // self.BLOCKS_PER_BUFFER)
        self.blocks_per_buffer = max(1, buffer_windows // self.block_windows)
        self.n_blocks = math.ceil(cache.n_seq / self.block_windows)

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """The blocks of each shuffle buffer of `epoch`, in order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)
        return [order[i:i + self.blocks_per_buffer]
                for i in range(0, self.n_blocks, self.blocks_per_buffer)]

    def _tokens_in(self, blocks: np.ndarray) -> int:
        n_seq = self.cache.n_seq
        windows = sum(min(n_seq, (b + 1) * self.block_windows) - b * self.block_windows
                      for b in blocks.tolist())
        return windows * self.per_window

    def _buffer(self, epoch: int, index: int, blocks: np.ndarray) -> torch.Tensor:
        parts = []
        for b in blocks.tolist():
            rows = self.cache.activations.rows(b * self.block_windows,
                                               (b + 1) * self.block_windows)
            rows = rows[:, self.skip_positions:]
            parts.append(rows.reshape(-1, rows.shape[-1]))
        flat = torch.cat(parts)
        order = np.random.default_rng([self.seed, epoch, index]).permutation(flat.shape[0])
        return flat[torch.from_numpy(order)]

    def iter_from(self, step: int) -> Iterator[torch.Tensor]:
        bs = self.batch_size
        epoch, k = divmod(step, self.per_epoch)
        while True:
            plan = self._plan(epoch)
            ends = np.cumsum([self._tokens_in(blocks) for blocks in plan])
            position = k * bs
            b = int(np.searchsorted(ends, position, side="right"))
            pending = self._buffer(epoch, b, plan[b])[position - (ends[b - 1] if b else 0):]
            for _ in range(k, self.per_epoch):
                while pending.shape[0] < bs:
                    b += 1
                    pending = torch.cat([pending, self._buffer(epoch, b, plan[b])])
                yield pending[:bs].to(torch.float32)
                pending = pending[bs:]
            epoch, k = epoch + 1, 0


def cache_batches(
    cache: ActivationCache | str | os.PathLike, batch_size: int, seed: int = 0, *,
    skip_positions: int = 1, buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
) -> CacheBatches:
    """Shuffled float32 batches of a cache (an ActivationCache or its folder): see CacheBatches."""
    if not isinstance(cache, ActivationCache):
        cache = load_cache(cache)
    return CacheBatches(cache, batch_size, seed, skip_positions=skip_positions,
                        buffer_tokens=buffer_tokens)


# --- shuffled batches streamed from a model (no cache) -------------------------------------


class ModelBatches(BatchStream):
    """Shuffled float32 batches [batch_size, d_in] of `lm`'s activations at `site`, computed
    on the fly from the train windows of `dataset`: nothing is written to disk.

    The train windows are read in order, over and over (one epoch is one pass over the
    corpus), and cut into chunks of `buffer_tokens // per_window` windows (at least one). Each
    chunk goes through the model `lm_batch_size` windows per forward; its activations (the
    first `skip_positions` of each window dropped) form a shuffle buffer permuted by a
    generator seeded with (seed, chunk index). The permuted chunks, one after another, are
    cut into batches, so one forward pass feeds every SAE that steps on a batch.

    Every chunk holds the same number of tokens, so `iter_from(step)` knows the chunk a step
    starts in. It skips the windows before that chunk by tokenizing them (no forward pass),
    then recomputes that chunk: a resumed run sees exactly the batches an uninterrupted one
    would, at the cost of re-reading the text it skips.

    In a `world` of several ranks (torchrun) each rank runs the model on its own share of a
    chunk's windows and the ranks gather the activations, so that every rank holds the same
    chunks, hence the same batches.
    """

    def __init__(
        self, lm: Any, site: str, dataset: str = DEFAULT_DATASET, batch_size: int = 4096,
        seed: int = 0, *, context_size: int = 128, lm_batch_size: int = 32,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS, text_field: str = "text",
        skip_positions: int = 1, world: World = SINGLE_PROCESS,
    ):
        for name, value in (("batch_size", batch_size), ("lm_batch_size", lm_batch_size),
                            ("buffer_tokens", buffer_tokens)):
            check_positive_int(name, value)
        check_context_size(context_size, lm.n_ctx)
        check_skip_positions(skip_positions, context_size)
        check_dataset(dataset)
        self.lm, self.site, self.dataset, self.text_field = lm, site, dataset, text_field
        self.batch_size, self.seed, self.skip_positions = batch_size, seed, skip_positions
        self.context_size, self.lm_batch_size = context_size, lm_batch_size
        self.world = world
        self.bos = special_token_ids(lm.tokenizer, lm.bos_token_id)[0]
        probe = lm.activations(torch.tensor([[self.bos, self.bos]]), site)  # bad site fails here
        if probe.ndim != 3 or probe.shape[:2] != (1, 2):
            raise ConfigError(f"site {site!r} gives activations of shape {list(probe.shape)}; "
                              "expected [batch, tokens, d]")
        self.d_in = int(probe.shape[-1])
        self.per_window = context_size - skip_positions
        self.chunk_windows = max(1, buffer_tokens // self.per_window)
        self.chunk_tokens = self.chunk_windows * self.per_window

    def _windows(self) -> Iterator[list[int]]:
        """The train windows of the corpus, epoch after epoch, without end."""
        while True:
            count = 0
            for window in iter_windows(
                self.lm.tokenizer, self.dataset, context_size=self.context_size,
                text_field=self.text_field, split="train", bos_token_id=self.bos,
            ):
                count += 1
                yield window
            if count == 0:
                raise DataError(f"dataset {self.dataset!r} has too little text for one train "
                                f"window of {self.context_size} tokens")

    def _chunk(self, windows: Iterator[list[int]], index: int) -> torch.Tensor:
        ids = torch.tensor(list(itertools.islice(windows, self.chunk_windows)))
        mine = self.world.shard(ids)
        first = self.skip_positions
        parts = [torch.empty(0, self.d_in, device=self.lm.device)]
        for start in range(0, len(mine), self.lm_batch_size):
            acts = self.lm.activations(mine[start:start + self.lm_batch_size], self.site)
            where = f"activations of {self.site} on training windows"
            check_finite(acts, where)
            parts.append(acts[:, first:].reshape(-1, acts.shape[-1]).float())
        flat = self.world.cat(torch.cat(parts).flatten()).view(-1, self.d_in)
        order = np.random.default_rng([self.seed, index]).permutation(flat.shape[0])
        return flat[torch.from_numpy(order).to(flat.device)]

    def iter_from(self, step: int) -> Iterator[torch.Tensor]:
        bs = self.batch_size
        index, offset = divmod(step * bs, self.chunk_tokens)
        windows = self._windows()
        for _ in itertools.islice(windows, index * self.chunk_windows):
            pass
        pending = self._chunk(windows, index)[offset:]
        while True:
            while pending.shape[0] < bs:
                index += 1
                pending = torch.cat([pending, self._chunk(windows, index)])
            yield pending[:bs]
            pending = pending[bs:]


def model_batches(
    lm: Any, site: str, dataset: str = DEFAULT_DATASET, batch_size: int = 4096, seed: int = 0,
    **options: Any,
) -> ModelBatches:
    """Shuffled float32 batches streamed from `lm` at `site`: see ModelBatches."""
    return ModelBatches(lm, site, dataset, batch_size, seed, **options)
