"""The pieces of a sparse training step: the same loss and gradients as the dense step.

Once an SAE is sparse, only the encoder's forward product needs the whole [batch, d_sae]
matrix. It is computed a block of rows at a time (`encoded_blocks`); each architecture keeps
the (token, latent) pairs its loss can touch, as `Pairs`, and everything after works on those:
the decoder forward is a gather-and-sum, the decoder and encoder weight gradients are
sparse-dense products, and the latents' gradient is a sampled dense-dense product.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F

# Pre-activations per block, by device. CPU: 64 MiB of float32, large enough that the block's
# matmul runs at the full-matrix rate on 2 cores, small enough that the [batch, d_sae]
# temporary a dense step holds several of is never built. CUDA: 1 GiB, a 4096 × 65536 batch
# in one block: each block's compaction waits for the GPU (a host sync), and on an H200
# 256-row blocks spent 11 ms a step in those waits.
BLOCK_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 28}
# Pairs per chunk of the gathered dot products on CUDA (below): 256 MiB of float32 at d_in 2304.
DOT_CHUNK_ELEMENTS = 1 << 26
# CPU block buffers kept from step to step, by (width, dtype). glibc maps an allocation over
# 32 MiB afresh from the OS each time, and first touching a new 64 MiB block's pages cost
# 12–15% of the encoder product (d_sae 4608 and 18432, 2 cores). CUDA's allocator caches.
_cpu_buffers: dict[tuple[int, torch.dtype], torch.Tensor] = {}
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def encoded_blocks(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """`(first row, x[rows] @ weight (+ bias))` for blocks of rows, in one buffer: a block is
    overwritten by the next, and on CPU by the next call's.

    `dtype=torch.bfloat16` runs the product in bfloat16 (the GPU's fast path) and returns
    blocks in the weight's own dtype, in which the rest of the step runs.
    """
    n, width, out_dtype = x.shape[0], weight.shape[1], weight.dtype
    step = max(1, BLOCK_ELEMENTS.get(x.device.type, BLOCK_ELEMENTS["cpu"]) // width)
    if dtype is not None and dtype != x.dtype:
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias if bias is None else bias.to(dtype)
    buffer = block_buffer(x, min(step, n), width)
    for start in range(0, n, step):
        rows = x[start : start + step]
        out = buffer[: rows.shape[0]]
        block = torch.mm(rows, weight, out=out) if bias is None else torch.addmm(
            bias, rows, weight, out=out
        )
        yield start, block.to(out_dtype)


def block_buffer(x: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """An uninitialised [rows, width] tensor like `x`; on CPU the one kept for this width."""
    if x.device.type != "cpu":
        return x.new_empty(rows, width)
    key = (width, x.dtype)
    buffer = _cpu_buffers.get(key)
    if buffer is None or buffer.shape[0] < rows:
        buffer = _cpu_buffers[key] = x.new_empty(rows, width)
    return buffer[:rows]


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """The flat indices of `mask`'s true entries, in order, as `mask.view(-1).nonzero()`.

    On CPU, found a 64-bit word (8 entries) at a time: a sparse mask has few nonzero words,
    and torch's nonzero over the bytes themselves took 14 ms for a 3640 × 4608 block at
    density 0.008, against 5 ms this way (2 cores).
    """
    flat = mask.view(-1)
    if mask.device.type != "cpu" or flat.numel() % 8 or flat.storage_offset() % 8:
        return flat.nonzero().view(-1)
    words = flat.view(torch.int64).nonzero().view(-1)
    word, byte = flat.view(-1, 8)[words].nonzero().unbind(1)
    return words[word] * 8 + byte


def pairs_above(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    threshold: torch.Tensor | float,
    dtype: torch.dtype | None = None,
) -> tuple[Pairs, torch.Tensor]:
    """The pairs where `pre = x W + bias` exceeds `threshold` (a number, or one per latent),
    with `pre` there.

    The block is compared with `threshold − bias` before the bias is added, and only the
    selected pairs get it: a pass over the [batch, d_sae] block saved. Rounding can then
    differ at the boundary, so each selected `pre` is checked against `threshold` again.
    """
    parts, values, width = [], [], weight.shape[1]
    per_latent = torch.as_tensor(threshold, dtype=bias.dtype, device=bias.device).expand_as(bias)
    cutoff = per_latent - bias
    for start, product in encoded_blocks(x, weight, None, dtype):
        flat = flat_nonzero(product > cutoff)
        cols = flat % width
        pre = product.view(-1)[flat] + bias[cols]
        rows = flat // width + start
        kept = pre > per_latent[cols]
        if not bool(kept.all()):  # rare: three masked copies saved where none is dropped
            rows, cols, pre = rows[kept], cols[kept], pre[kept]
        parts.append((rows, cols))
        values.append(pre)
    return Pairs.from_blocks(parts, x.shape[0], weight.shape[1]), torch.cat(values)


class Pairs:
    """Active (token, latent) pairs of one batch in CSR order: by token, then by latent.

    `rows[p]`, `cols[p]` name pair p; per-pair values are plain [n_pairs] tensors in the
    same order.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_tokens: int, n_latents: int):
        self.rows, self.cols = rows, cols
        self.shape = (n_tokens, n_latents)
        counts = torch.bincount(rows, minlength=n_tokens)
        self.crow = F.pad(counts.cumsum(0), (1, 0))
        self._by_latent: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_blocks(
        cls, parts: list[tuple[torch.Tensor, torch.Tensor]], n_tokens: int, n_latents: int
    ) -> Pairs:
        """Concatenate blocks' `(rows, cols)`, each already in CSR order and in row order."""
        rows, cols = (torch.cat(column) for column in zip(*parts, strict=True))
        return cls(rows, cols, n_tokens, n_latents)

    @classmethod
    def from_flat(
        cls, values: torch.Tensor, flat: torch.Tensor, n_tokens: int, n_latents: int
    ) -> tuple[Pairs, torch.Tensor]:
        """The pairs at flat indices `token · n_latents + latent` whose value is positive, put
        in CSR order, with their values."""
        positive = values > 0
        flat, order = flat[positive].sort()
        values = values[positive][order]
        return cls(flat // n_latents, flat % n_latents, n_tokens, n_latents), values

    def __len__(self) -> int:
        return self.rows.numel()

    def decode(self, values: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
        """`Σ_j values_ij W_dec[j]` for every token i: [n_tokens, d_in]."""
        return F.embedding_bag(
            self.cols, W_dec, self.crow[:-1], per_sample_weights=values, mode="sum"
        )

    def dot(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """`⟨left[i], right[j]⟩` at every pair (i, j): [n_pairs]."""
        if len(self) == 0:
            return left.new_zeros(0)
        if left.device.type == "cuda":
            return self.gathered_dot(left, right)
        pattern = torch.sparse_csr_tensor(
            self.crow, self.cols, left.new_zeros(len(self)), self.shape, check_invariants=False
        )
        return torch.sparse.sampled_addmm(pattern, left, right.T).values()

    def gathered_dot(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """`dot` as gathered rows multiplied and summed, a chunk of pairs at a time. On an H200
        cuSPARSE's sampled product took 7 ms for 110k pairs at d_in 2304, four times the
        dense encoder product; this reads the same rows once."""
        step = max(1, DOT_CHUNK_ELEMENTS // left.shape[1])
        out = left.new_empty(len(self))
        for start in range(0, len(self), step):
            rows, cols = self.rows[start : start + step], self.cols[start : start + step]
            torch.linalg.vecdot(left[rows], right[cols], out=out[start : start + step])
        return out

    def per_latent(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """`Σ_i values_ij dense[i]` for every latent j: [n_latents, dense.shape[1]]."""
        if self._by_latent is None:
            # Unique keys: sorting the latents alone, runs already sorted by token, hits a
            # slow path of torch's CPU sort (190 ms against 1 ms for 135k pairs).
            order = torch.argsort(self.cols * self.shape[0] + self.rows)
            counts = torch.bincount(self.cols, minlength=self.shape[1])
            self._by_latent = order, F.pad(counts.cumsum(0), (1, 0))
        order, ccol = self._by_latent
        # A bag of tokens per latent: embedding_bag runs 3x faster here than a CSR product.
        return F.embedding_bag(
            self.rows[order], dense, ccol[:-1], per_sample_weights=values[order], mode="sum"
        )

    def latent_totals(self, values: torch.Tensor) -> torch.Tensor:
        """`Σ_i values_ij` for every latent j: [n_latents]."""
        return values.new_zeros(self.shape[1]).index_add_(0, self.cols, values)

    def fired(self, values: torch.Tensor) -> torch.Tensor:
        """Which latents have a non-zero value on some token: [n_latents] bool."""
        out = torch.zeros(self.shape[1], dtype=torch.bool, device=values.device)
        return out.index_fill_(0, self.cols[values != 0], True)

    def l0(self, values: torch.Tensor) -> torch.Tensor:
        """Mean number of non-zero values per token."""
        return (values != 0).sum() / self.shape[0]
