"""The activation cache: a folder of shards and a manifest, written by `build_cache` (which
resumes a cut-short run) and read by `load_cache`, memory-mapped."""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
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

from ..distributed import SINGLE_PROCESS, World
from ..errors import ConfigError, DataError, check_positive_int
from ..files import TMP_SUFFIX, atomic_write_npy, atomic_write_text, writing_to
from .activations_file import check_finite
from .corpus import (
    DEFAULT_CONTEXT_SIZE,
    DEFAULT_DATASET,
    check_context_size,
    check_dataset,
    describe_dataset,
    token_windows,
    windows_for_tokens,
)
from .source import model_label

# --- the activation cache -----------------------------------------------------------------
#
# A cache is a folder:
#   manifest.json                what was cached and how, the shards, their sizes and checksums
#   shard_00000.tokens.npy       int32 [n_seq_shard, context_size]: the token windows
#   shard_00000.acts.npy         [n_seq_shard, context_size, d_in]: float32, float16, or
#                                bfloat16 stored as its raw uint16 bits (numpy has no bfloat16)
# Plain .npy files memory-map without copying, whatever their size. Each shard file is written
# under a temporary name and renamed into place, then the manifest is rewritten the same way,
# so a killed run, or one that ran out of space, leaves the complete shards its manifest lists,
# and a rerun with the same arguments keeps them.

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
    world: World = SINGLE_PROCESS,
) -> Path:
    """Cache the activations of `lm` at `site` on train windows of `dataset`; return `out`.

    Caches ``ceil(n_tokens / context_size)`` windows (each starting with BOS) in shards of
    about `shard_tokens` tokens, running `batch_size` windows per forward. Everything is
    validated before `out` is created. If `out` holds a partial cache built with the same
    arguments, the run resumes after its last complete shard; other arguments → ConfigError.

    In a `world` of several ranks each rank writes every world.size-th shard; rank 0 lists
    them in the one manifest, a round of shards at a time, so the manifest still lists only
    whole shards, in order, and the folder is the one a single process writes.
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
    world.barrier()  # every rank has read the folder before rank 0 prepares it
    if world.is_main:
        manifest = _prepare(out, config, manifest)
    manifest = world.broadcast(manifest)

    shard_seqs = config["shard_seqs"]
    n_shards = -(-n_seq // shard_seqs)
    done = len(manifest["shards"])
    bar = tqdm(total=n_seq * context_size, unit="tok", desc=f"caching {site}",
               initial=min(n_seq, done * shard_seqs) * context_size,
               disable=not progress or not world.is_main)
    with bar:
        while done < n_shards:
            index = done + world.rank
            rows = windows[index * shard_seqs:(index + 1) * shard_seqs]
            entry = (_write_shard(lm, site, out, index, rows, config, batch_size, bar,
                                  world.size) if index < n_shards else None)
            entries = [e for e in world.all_gather(entry) if e is not None]
            manifest["shards"] += entries
            done += len(entries)
            manifest["complete"] = done == n_shards
            manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
            if world.is_main:
                _write_json_atomic(out / MANIFEST, manifest)
    if not manifest["complete"] and world.is_main:  # a resumed run's last write was cut short
        manifest["complete"] = True
        _write_json_atomic(out / MANIFEST, manifest)
    world.barrier()
    return out


def _prepare(out: Path, config: dict, manifest: dict | None) -> dict:
    """The cache folder made ready to write shards into: created, cleared of a killed run's
    temporary files, with a manifest (a new one, or the resumed one with its shards checked)."""
    with writing_to(out):
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
            "n_tokens": config["n_seq"] * config["context_size"],
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
    return manifest


def _write_shard(
    lm: Any, site: str, out: Path, index: int, rows: torch.Tensor, config: dict,
    batch: int, bar: tqdm, ranks: int = 1,
) -> dict:
    """Write one shard's token and activation files atomically; return its manifest entry."""
    n, ctx, d_in, dtype = rows.shape[0], config["context_size"], config["d_in"], config["dtype"]
    names = {"tokens": f"shard_{index:05d}.tokens.npy", "acts": f"shard_{index:05d}.acts.npy"}

    def activations() -> Iterator[np.ndarray]:
        for start in range(0, n, batch):
            ids = rows[start:start + batch].long()
            got = lm.activations(ids, site)
            yield _storage_array(got, dtype, f"activations of {site} for cache shard {index}")
            bar.update(ids.numel() * ranks)  # the other ranks' shards move as fast

    # The large file first: where space runs out, it is likely to be while writing it, and
    # then no file of this shard is in place yet (the manifest lists only whole shards).
    atomic_write_npy(out / names["acts"], (n, ctx, d_in), CACHE_DTYPES[dtype][0], activations())
    atomic_write_npy(out / names["tokens"], (n, ctx), np.int32, [rows.numpy()])
    entry: dict[str, Any] = {"n_seq": n}
    for kind, name in names.items():
        entry[kind] = name
        entry[f"{kind}_bytes"] = (out / name).stat().st_size
        entry[f"{kind}_sha256"] = _sha256_file(out / name)
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
