"""Activations: single tensor files, the sharded activation cache, shuffled batches of either,
and shuffled batches streamed from a model without a cache."""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import json
import math
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import ConfigError, DataError, check_positive_int
from ..files import TMP_SUFFIX, atomic_write_text, fsync_path, replace_durably
from .corpus import (
    DEFAULT_CONTEXT_SIZE,
    DEFAULT_DATASET,
    check_context_size,
    check_dataset,
    describe_dataset,
    iter_windows,
    special_token_ids,
    token_windows,
    windows_for_tokens,
)
from .source import model_label

ACTIVATION_FILE_SUFFIXES = (".npy", ".safetensors", ".pt")
DEFAULT_BUFFER_TOKENS = 1 << 18  # the shuffle buffer of cache and model streams, in tokens


def load_activations_file(path: str | os.PathLike) -> torch.Tensor:
    """One [N, d_in] float tensor from a `.npy`, `.safetensors` (one tensor) or `.pt` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"activations file {path} does not exist")
    try:
        if path.suffix == ".npy":
            acts = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
            if len(tensors) != 1:
                raise DataError(f"{path} holds {len(tensors)} tensors; expected exactly one")
            (acts,) = tensors.values()
        elif path.suffix == ".pt":
            acts = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(
                f"unsupported activations file {path}; accepted: "
                f"{', '.join(ACTIVATION_FILE_SUFFIXES)} or a cache folder"
            )
    except DataError:
        raise
    except Exception as e:  # any reader's failure means the file is unreadable
        raise DataError(f"cannot read activations file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(acts, torch.Tensor) or acts.ndim != 2 or not acts.is_floating_point():
        shape = list(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
        raise DataError(f"{path} must hold one 2-D float tensor [N, d_in], got {shape}")
    check_finite(acts, str(path))
    return acts


def check_finite(acts: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(acts).all()):
        bad = int((~torch.isfinite(acts)).any(-1).sum())
        raise DataError(f"{where} contains NaN or Inf in {bad} rows; activations must be finite")


class ShuffledBatches:
    """Batches of rows of an in-memory [N, d_in] tensor, reshuffled every epoch from a seed.

    `iter_from(step)` starts at any step without reading the batches before it, so a resumed
    run sees exactly the batches an uninterrupted one would.
    """

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

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)


# --- the activation cache -----------------------------------------------------------------
#
# A cache is a folder:
#   manifest.json                what was cached and how, the shards, their sizes and checksums
#   shard_00000.tokens.npy       int32 [n_seq_shard, context_size]: the token windows
#   shard_00000.acts.npy         [n_seq_shard, context_size, d_in]: float32, float16, or
#                                bfloat16 stored as its raw uint16 bits (numpy has no bfloat16)
# Plain .npy files memory-map without copying, whatever their size. Each shard is written
# under a temporary name and renamed into place, then the manifest is rewritten the same way,
# so a killed run leaves complete shards that a rerun with the same arguments keeps.

MANIFEST = "manifest.json"
PROBE_POSITIONS = 8  # tokens of the probe forward that checks the site before any write
CACHE_FORMAT = "gated-sae-activation-cache"
CACHE_FORMAT_VERSION = 1
CACHE_DTYPES: dict[str, tuple[type, torch.dtype]] = {
    "float32": (np.float32, torch.float32),
    "float16": (np.float16, torch.float16),
    "bfloat16": (np.uint16, torch.bfloat16),
}
# What a rerun into the same folder must repeat exactly to resume.
_CONFIG_KEYS = (
    "model", "model_dtype", "site", "dataset", "text_field", "tokenizer", "bos_token_id",
    "context_size", "d_in", "dtype", "n_seq", "shard_seqs", "tokens_sha256",
)
_HASH_CHUNK = 1 << 23


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _replace(tmp: Path, final: Path) -> None:
    """Rename `tmp` over `final` after flushing it to disk, so `final` is whole or absent."""
    fsync_path(tmp)
    replace_durably(tmp, final)


def _write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} is not an activation cache: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is not a {CACHE_FORMAT} manifest")
    if manifest.get("format_version") != CACHE_FORMAT_VERSION:
        raise DataError(f"{path} has format version {manifest.get('format_version')!r}; "
                        f"this gated-sae reads version {CACHE_FORMAT_VERSION}")
    return manifest


def _check_resumable(out: Path, config: dict) -> dict | None:
    """The manifest already in `out` if it was built with `config`; None if `out` is new/empty.

    ConfigError if `out` holds something else: a file, a foreign folder, or a cache built
    with other arguments (naming each difference).
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"cache folder {out} exists and is not a folder; give a new folder")
    if not (out / MANIFEST).exists():
        if any(not p.name.endswith(TMP_SUFFIX) for p in out.iterdir()):
            raise ConfigError(f"cache folder {out} exists and is not an activation cache; "
                              "give a new or empty folder")
        return None
    try:
        manifest = _read_manifest(out)
    except DataError as e:
        raise ConfigError(f"cache folder {out} cannot be resumed: {e}") from None
    old = manifest.get("config", {})
    diffs = [f"{k}={old.get(k)!r} there, {config[k]!r} now" for k in _CONFIG_KEYS
             if old.get(k) != config[k]]
    if diffs:
        raise ConfigError(f"cache folder {out} was built with other arguments ("
                          + "; ".join(diffs) + "); use another folder or the same arguments")
    return manifest


def _storage_array(acts: torch.Tensor, dtype: str, where: str) -> np.ndarray:
    """`acts` converted to the cache dtype, as the numpy array written to the shard."""
    check_finite(acts, where)
    stored = acts.to(CACHE_DTYPES[dtype][1])
    if not bool(torch.isfinite(stored).all()):
        raise DataError(f"{where} exceed the range of {dtype} (largest |value| "
                        f"{acts.abs().max().item():.4g}); cache them as bfloat16 or float32")
    stored = stored.cpu()
    if dtype == "bfloat16":
        return stored.view(torch.int16).numpy().view(np.uint16)
    return stored.numpy()


def build_cache(
    lm: Any,
    site: str,
    dataset: str = DEFAULT_DATASET,
    *,
    n_tokens: int,
    out: str | os.PathLike,
    context_size: int = DEFAULT_CONTEXT_SIZE,
    dtype: str = "float32",
    shard_tokens: int = 1 << 18,
    batch_size: int = 32,
    text_field: str = "text",
    progress: bool = True,
) -> Path:
    """Cache the activations of `lm` at `site` on train windows of `dataset`; return `out`.

    Caches ``ceil(n_tokens / context_size)`` windows (each starting with BOS) in shards of
    about `shard_tokens` tokens, running `batch_size` windows per forward. Everything is
    validated before `out` is created. If `out` holds a partial cache built with the same
    arguments, the run resumes after its last complete shard; other arguments → ConfigError.
    """
    if dtype not in CACHE_DTYPES:
        raise ConfigError(f"cache dtype {dtype!r} is not accepted; accepted: "
                          f"{', '.join(CACHE_DTYPES)}")
    check_positive_int("n_tokens", n_tokens)
    check_positive_int("shard_tokens", shard_tokens)
    check_positive_int("batch_size", batch_size)
    check_context_size(context_size, lm.n_ctx)
    check_dataset(dataset)
    out = Path(out)
    n_seq = windows_for_tokens(n_tokens, context_size)
    windows = token_windows(
        lm.tokenizer, dataset, context_size=context_size, n_windows=n_seq,
        text_field=text_field, split="train", bos_token_id=lm.bos_token_id,
    ).to(torch.int32)
    # A few positions suffice to fail on a bad site and learn d_in before anything is written.
    probe_positions = min(PROBE_POSITIONS, context_size)
    probe = lm.activations(windows[:1, :probe_positions].long(), site)
    if probe.ndim != 3 or probe.shape[:2] != (1, probe_positions):
        raise ConfigError(f"site {site!r} gives activations of shape {list(probe.shape)}; "
                          "expected [batch, positions, d]")
    config = {
        "model": model_label(str(lm.name)),
        "model_dtype": str(lm.dtype).removeprefix("torch."),
        "site": site,
        "dataset": describe_dataset(dataset),
        "text_field": text_field,
        "tokenizer": str(getattr(lm.tokenizer, "name_or_path", type(lm.tokenizer).__name__)),
        "bos_token_id": int(windows[0, 0]),
        "context_size": context_size,
        "d_in": int(probe.shape[-1]),
        "dtype": dtype,
        "n_seq": n_seq,
        "shard_seqs": max(1, shard_tokens // context_size),
        "tokens_sha256": hashlib.sha256(windows.numpy().tobytes()).hexdigest(),
    }
    manifest = _check_resumable(out, config)

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f".*{TMP_SUFFIX}"):  # left by a killed run
        stale.unlink()
    if manifest is None:
        from .. import __version__
        from .corpus import HELDOUT_EVERY

        manifest = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_FORMAT_VERSION,
            "config": config,
            **{k: config[k] for k in ("model", "site", "dataset", "tokenizer", "context_size",
                                      "d_in", "dtype", "n_seq")},
            "n_tokens": n_seq * context_size,
            "split": f"train (windows k with k % {HELDOUT_EVERY} != {HELDOUT_EVERY - 1})",
            "complete": False,
            "shards": [],
            "gated_sae_version": __version__,
            "python_version": platform.python_version(),
            "torch_version": torch.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write_json_atomic(out / MANIFEST, manifest)
    else:
        for shard in manifest["shards"]:
            for kind in ("tokens", "acts"):
                _check_size(out / shard[kind], shard[f"{kind}_bytes"])

    shard_seqs = config["shard_seqs"]
    done = sum(shard["n_seq"] for shard in manifest["shards"])
    bar = tqdm(total=n_seq * context_size, initial=done * context_size, unit="tok",
               desc=f"caching {site}", disable=not progress)
    with bar:
        while done < n_seq:
            index = len(manifest["shards"])
            rows = windows[done:min(done + shard_seqs, n_seq)]
            entry = _write_shard(lm, site, out, index, rows, config, batch_size, bar)
            manifest["shards"].append(entry)
            done += entry["n_seq"]
            manifest["complete"] = done == n_seq
            manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
            _write_json_atomic(out / MANIFEST, manifest)
    if not manifest["complete"]:  # resumed a run whose last manifest write was cut short
        manifest["complete"] = True
        _write_json_atomic(out / MANIFEST, manifest)
    return out


def _write_shard(
    lm: Any, site: str, out: Path, index: int, rows: torch.Tensor, config: dict,
    batch: int, bar: tqdm,
) -> dict:
    """Write one shard's token and activation files atomically; return its manifest entry."""
    from numpy.lib.format import open_memmap

    n, ctx, d_in, dtype = rows.shape[0], config["context_size"], config["d_in"], config["dtype"]
    names = {"tokens": f"shard_{index:05d}.tokens.npy", "acts": f"shard_{index:05d}.acts.npy"}
    tmp = {kind: out / f".{name}{TMP_SUFFIX}" for kind, name in names.items()}
    with tmp["tokens"].open("wb") as f:
        np.save(f, rows.numpy())
    acts = open_memmap(tmp["acts"], mode="w+", dtype=CACHE_DTYPES[dtype][0], shape=(n, ctx, d_in))
    for start in range(0, n, batch):
        ids = rows[start:start + batch].long()
        got = lm.activations(ids, site)
        where = f"activations of {site} for cache shard {index}"
        acts[start:start + ids.shape[0]] = _storage_array(got, dtype, where)
        bar.update(ids.numel())
    acts.flush()
    del acts
    entry: dict[str, Any] = {"n_seq": n}
    for kind, name in names.items():
        entry[kind] = name
        entry[f"{kind}_bytes"] = tmp[kind].stat().st_size
        entry[f"{kind}_sha256"] = _sha256_file(tmp[kind])
    for kind, name in names.items():
        _replace(tmp[kind], out / name)
    return entry


def _check_size(path: Path, expected: int) -> None:
    if not path.is_file():
        raise DataError(f"cache shard {path} is missing")
    size = path.stat().st_size
    if size != expected:
        raise DataError(f"cache shard {path} has {size} bytes, the manifest says {expected}: "
                        "it is truncated or altered")


# --- reading a cache ----------------------------------------------------------------------


class ShardedActivations:
    """The activations of a cache as one [n_seq, context_size, d_in] array over its shards.

    Indexing with ``[j]``, ``[j, i]``, ``[a:b]``, ``[a:b, i]`` or a list/tensor of rows reads
    only the rows asked for from the memory-mapped shards and returns a torch tensor in the
    cache's dtype (bfloat16 included); ``[j, i]`` is the activation at token ``tokens[j, i]``.
    """

    def __init__(self, shards: list[torch.Tensor]):
        self.shards = shards
        self.starts = [0]
        for shard in shards:
            self.starts.append(self.starts[-1] + shard.shape[0])
        self.shape = torch.Size((self.starts[-1], *shards[0].shape[1:]))
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (clipped to the cache), reading each shard's part in one piece."""
        start, stop = max(0, start), min(len(self), stop)
        parts = []
        first = bisect.bisect_right(self.starts, start) - 1
        for s in range(max(first, 0), len(self.shards)):
            lo, hi = self.starts[s], self.starts[s + 1]
            if lo >= stop:
                break
            parts.append(self.shards[s][max(start, lo) - lo:min(stop, hi) - lo])
        if not parts:
            return self.shards[0][:0].clone()
        return parts[0].clone() if len(parts) == 1 else torch.cat(parts)

    def __getitem__(self, key: Any) -> torch.Tensor:
        row, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        n = len(self)
        if isinstance(row, int | np.integer):
            j = int(row) + n if row < 0 else int(row)
            if not 0 <= j < n:
                raise IndexError(f"row {row} is out of range for a cache of {n} windows")
            s = bisect.bisect_right(self.starts, j) - 1
            return self.shards[s][(j - self.starts[s], *rest)]
        if isinstance(row, slice) and row.step in (None, 1):
            start, stop, _ = row.indices(n)
            return self.rows(start, stop)[(slice(None), *rest)]
        if isinstance(row, slice):
            index = torch.arange(*row.indices(n))
        else:
            index = torch.as_tensor(row, dtype=torch.long).reshape(-1)
            index = torch.where(index < 0, index + n, index)
            if len(index) and (index.min() < 0 or index.max() >= n):
                raise IndexError(f"rows {row} are out of range for a cache of {n} windows")
        result = torch.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        shard_of = torch.bucketize(index, torch.tensor(self.starts[1:]), right=True)
        for s in shard_of.unique().tolist():
            picked = (shard_of == s).nonzero().flatten()
            result[picked] = self.shards[s][(index[picked] - self.starts[s]).numpy()]
        return result[(slice(None), *rest)]


@dataclass
class ActivationCache:
    """A loaded activation cache: token windows and activations, memory-mapped."""

    path: Path
    manifest: dict
    token_shards: list[np.ndarray]  # int32 [n_seq_shard, context_size] each
    activations: ShardedActivations  # [n_seq, context_size, d_in]

    @functools.cached_property
    def tokens(self) -> torch.Tensor:
        """LongTensor [n_seq, context_size]: the token ids whose activations are cached."""
        return torch.from_numpy(np.concatenate(self.token_shards).astype(np.int64))

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def context_size(self) -> int:
        return int(self.manifest["context_size"])

    @property
    def n_seq(self) -> int:
        return int(self.manifest["n_seq"])

    @property
    def n_tokens(self) -> int:
        return self.n_seq * self.context_size

    @property
    def dtype(self) -> torch.dtype:
        return CACHE_DTYPES[self.manifest["dtype"]][1]

    def verify(self) -> None:
        """Recompute every shard's size and sha256; DataError naming the first bad file."""
        for shard in self.manifest["shards"]:
            for kind in ("tokens", "acts"):
                path = self.path / shard[kind]
                _check_size(path, shard[f"{kind}_bytes"])
                if _sha256_file(path) != shard[f"{kind}_sha256"]:
                    raise DataError(f"cache shard {path} does not match its checksum in "
                                    f"{MANIFEST}: it was altered or corrupted")


def _open_npy(path: Path, expected_bytes: int, shape: tuple, dtype: type) -> np.ndarray:
    _check_size(path, expected_bytes)
    try:
        # Copy-on-write: a writable view (no warning from torch.from_numpy) that never
        # writes back to the file.
        array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"cache shard {path} is unreadable: {str(e).splitlines()[0]}") from None
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise DataError(f"cache shard {path} holds {array.dtype} {list(array.shape)}; the "
                        f"manifest says {np.dtype(dtype)} {list(shape)}")
    return array


def load_cache(path: str | os.PathLike) -> ActivationCache:
    """Open the cache folder `path`, checking file sizes and shapes (`verify()` for checksums)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"activation cache {path} does not exist or is not a folder")
    manifest = _read_manifest(path)
    if not manifest.get("complete"):
        done = sum(shard["n_seq"] for shard in manifest["shards"])
        raise DataError(f"activation cache {path} is incomplete ({done} of {manifest['n_seq']} "
                        "windows); rerun build_cache with the same arguments to finish it")
    ctx, d_in = manifest["context_size"], manifest["d_in"]
    np_dtype, torch_dtype = CACHE_DTYPES[manifest["dtype"]]
    tokens, shards = [], []
    for shard in manifest["shards"]:
        n = shard["n_seq"]
        tok = _open_npy(path / shard["tokens"], shard["tokens_bytes"], (n, ctx), np.int32)
        tokens.append(tok)
        acts = _open_npy(path / shard["acts"], shard["acts_bytes"], (n, ctx, d_in), np_dtype)
        if np_dtype is np.uint16:  # bfloat16 bits; torch reads them through int16
            shards.append(torch.from_numpy(acts.view(np.int16)).view(torch_dtype))
        else:
            shards.append(torch.from_numpy(acts))
    return ActivationCache(path, manifest, tokens, ShardedActivations(shards))


# --- shuffled batches from a cache ---------------------------------------------------------


class CacheBatches:
    """Shuffled float32 batches [batch_size, d_in] of a cache's token activations.

    Each epoch visits every token (BOS positions excluded when `skip_bos`) once, in an order
    fixed by the seed: the windows are cut into blocks, the blocks are permuted, consecutive
    blocks fill a shuffle buffer of about `buffer_tokens` tokens, and the tokens within a buffer
    are permuted. Blocks are read whole, so reads from the memory-mapped shards are sequential.
    Buffer sizes are known without reading, so `iter_from(step)` starts at any step by reading
    only the buffers that step needs. The last partial batch of an epoch is dropped.
    """

    BLOCKS_PER_BUFFER = 16

    def __init__(
        self, cache: ActivationCache, batch_size: int, seed: int = 0, *,
        skip_bos: bool = True, buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    ):
        check_positive_int("batch_size", batch_size)
        check_positive_int("buffer_tokens", buffer_tokens)
        self.cache, self.batch_size, self.seed, self.skip_bos = cache, batch_size, seed, skip_bos
        self.per_window = cache.context_size - 1 if skip_bos else cache.context_size
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
            if self.skip_bos:
                rows = rows[:, 1:]
            parts.append(rows.reshape(-1, rows.shape[-1]))
        flat = torch.cat(parts)
        order = np.random.default_rng([self.seed, epoch, index]).permutation(flat.shape[0])
        return flat[torch.from_numpy(order)]

    def iter_from(self, step: int) -> Iterator[torch.Tensor]:
        """The batches from `step` on, exactly those an iteration from 0 would give there."""
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

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)


def cache_batches(
    cache: ActivationCache | str | os.PathLike, batch_size: int, seed: int = 0, *,
    skip_bos: bool = True, buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
) -> CacheBatches:
    """Shuffled float32 batches of a cache (an ActivationCache or its folder): see CacheBatches."""
    if not isinstance(cache, ActivationCache):
        cache = load_cache(cache)
    return CacheBatches(cache, batch_size, seed, skip_bos=skip_bos, buffer_tokens=buffer_tokens)


# --- shuffled batches streamed from a model (no cache) -------------------------------------


class ModelBatches:
    """Shuffled float32 batches [batch_size, d_in] of `lm`'s activations at `site`, computed
    on the fly from the train windows of `dataset`: nothing is written to disk.

    The train windows are read in order, over and over (one epoch is one pass over the
    corpus), and cut into chunks of `buffer_tokens // per_window` windows (at least one). Each
    chunk goes through the model `lm_batch_size` windows per forward; its activations (BOS
    positions dropped when `skip_bos`) form a shuffle buffer permuted by a generator seeded
    with (seed, chunk index). The permuted chunks, one after another, are cut into batches, so
    one forward pass feeds every SAE that steps on a batch.

    Every chunk holds the same number of tokens, so `iter_from(step)` knows the chunk a step
    starts in. It skips the windows before that chunk by tokenizing them (no forward pass),
    then recomputes that chunk: a resumed run sees exactly the batches an uninterrupted one
    would, at the cost of re-reading the text it skips.
    """

    def __init__(
        self, lm: Any, site: str, dataset: str = DEFAULT_DATASET, batch_size: int = 4096,
        seed: int = 0, *, context_size: int = DEFAULT_CONTEXT_SIZE, lm_batch_size: int = 32,
        buffer_tokens: int = DEFAULT_BUFFER_TOKENS, text_field: str = "text", skip_bos: bool = True,
    ):
        for name, value in (("batch_size", batch_size), ("lm_batch_size", lm_batch_size),
                            ("buffer_tokens", buffer_tokens)):
            check_positive_int(name, value)
        check_context_size(context_size, lm.n_ctx)
        check_dataset(dataset)
        self.lm, self.site, self.dataset, self.text_field = lm, site, dataset, text_field
        self.batch_size, self.seed, self.skip_bos = batch_size, seed, skip_bos
        self.context_size, self.lm_batch_size = context_size, lm_batch_size
        self.bos = special_token_ids(lm.tokenizer, lm.bos_token_id)[0]
        probe = lm.activations(torch.tensor([[self.bos, self.bos]]), site)  # bad site fails here
        if probe.ndim != 3 or probe.shape[:2] != (1, 2):
            raise ConfigError(f"site {site!r} gives activations of shape {list(probe.shape)}; "
                              "expected [batch, tokens, d]")
        self.d_in = int(probe.shape[-1])
        self.per_window = context_size - 1 if skip_bos else context_size
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
        first = 1 if self.skip_bos else 0
        parts = []
        for start in range(0, len(ids), self.lm_batch_size):
            acts = self.lm.activations(ids[start:start + self.lm_batch_size], self.site)
            where = f"activations of {self.site} on training windows"
            check_finite(acts, where)
            parts.append(acts[:, first:].reshape(-1, acts.shape[-1]).float())
        flat = torch.cat(parts)
        order = np.random.default_rng([self.seed, index]).permutation(flat.shape[0])
        return flat[torch.from_numpy(order).to(flat.device)]

    def iter_from(self, step: int) -> Iterator[torch.Tensor]:
        """The batches from `step` on, exactly those an iteration from 0 would give there."""
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

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)


def model_batches(
    lm: Any, site: str, dataset: str = DEFAULT_DATASET, batch_size: int = 4096, seed: int = 0,
    **options: Any,
) -> ModelBatches:
    """Shuffled float32 batches streamed from `lm` at `site`: see ModelBatches."""
    return ModelBatches(lm, site, dataset, batch_size, seed, **options)
