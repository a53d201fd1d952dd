"""The architectures, by name: `create_sae` makes one, `load_sae` reads a saved folder."""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import ConfigError, DataError, check_positive_int
from .base import SAE, LossTerms, TrainOutput
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .relu import ReLUSAE
from .topk import BatchTopKSAE, TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {
    "relu": ReLUSAE,
    "gated": GatedSAE,
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
}

# Folders written by SAELens name their architecture in its own words.
_FROM_SAELENS = {cls.saelens_reads: cls for cls in ARCHITECTURES.values() if cls.saelens_reads}


def sae_class(arch: str) -> type[SAE]:
    """The class of architecture `arch`, which carries its facts (default lr, ...)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[arch]


def architecture_options(arch: str) -> dict[str, object]:
    """The options an architecture accepts, with their defaults."""
    return sae_class(arch).default_options()


def variant_label(arch: str, options: dict) -> str:
    """A short name for an architecture with its non-default options, e.g. 'gated no b_mag'."""
    return sae_class(arch).variant_label(options)


def variant_order() -> tuple[str, ...]:
    """The variants reports know, in their order: each architecture, then its ablations."""
    return tuple(
        cls.variant_label(options)
        for cls in ARCHITECTURES.values()
        for options in ({}, *cls.ablations)
    )


def create_sae(arch: str, *, d_in: int, d_sae: int, **options) -> SAE:
    """A freshly initialised SAE: `arch` in relu, gated, topk, batchtopk, jumprelu."""
    cls = sae_class(arch)
    check_positive_int("d_in", d_in)
    check_positive_int("d_sae", d_sae)
    accepted = architecture_options(arch)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} for {arch}; accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(d_in, d_sae, **options)


def load_sae(path: str | os.PathLike, device: str | torch.device = "cpu") -> SAE:
    """Load a folder written by `SAE.save` or by SAELens (v6 layout)."""
    path = Path(path)
    cfg_file, weights_file = path / "cfg.json", path / "sae_weights.safetensors"
    if not cfg_file.is_file() or not weights_file.is_file():
        inner = sorted(p.parent.name for p in path.glob("*/cfg.json"))
        hint = f"; SAE folders inside: {', '.join(inner)}" if inner else ""
        raise DataError(
            f"{path} is not an SAE folder (needs cfg.json and sae_weights.safetensors){hint}"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{cfg_file} is not valid JSON: {e}") from None
    try:
        tensors = load_file(weights_file)
    except (SafetensorError, OSError) as e:
        raise DataError(f"{weights_file} is not a readable safetensors file: {e}") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{cfg_file} must hold a JSON object, not {type(cfg).__name__}")
    metadata = cfg.get("metadata")
    ours = metadata.get("gated_sae") if isinstance(metadata, dict) else None
    try:
        if ours:
            arch, options = ours["architecture"], ours["options"]
        elif cfg.get("architecture") in _FROM_SAELENS:
            cls = _FROM_SAELENS[cfg["architecture"]]
            arch, options = cls.architecture, cls.saelens_options(cfg)
        else:
            raise DataError(
                f"{cfg_file}: architecture {cfg.get('architecture')!r} is not one we read; "
                f"accepted: {', '.join(_FROM_SAELENS)}"
            )
        sae = create_sae(arch, d_in=cfg["d_in"], d_sae=cfg["d_sae"], **options)
    except KeyError as e:
        raise DataError(f"{cfg_file} lacks the key {e}") from None
    except (ConfigError, TypeError) as e:
        raise DataError(f"{cfg_file}: {e}") from None
    expected = sae.saelens_tensors()
    if set(tensors) != set(expected):
        raise DataError(
            f"{weights_file} holds tensors {sorted(tensors)}; a {arch} SAE needs {sorted(expected)}"
        )
    for name, value in tensors.items():
        if value.shape != expected[name].shape:
            raise DataError(
                f"{weights_file}: {name} has shape {list(value.shape)}, "
                f"expected {list(expected[name].shape)}"
            )
    tensors = _fold_saelens_settings(cfg, cfg_file, sae, tensors)
    sae.to(tensors["W_dec"].dtype)
    sae.load_saelens_tensors(tensors)
    return sae.to(device)


def _fold_saelens_settings(cfg: dict, cfg_file: Path, sae: SAE, tensors: dict) -> dict:
    """`tensors` with the SAELens settings that change inference folded in, in float64 and
    back (`SAE.fold_saelens_settings`)."""
    norm = cfg.get("normalize_activations", "none")
    if norm in ("constant_norm_rescale", "layer_norm"):  # the others are identities at inference
        raise DataError(
            f"{cfg_file}: normalize_activations {norm!r} rescales each input at run time, "
            "which cannot be folded into the weights; accepted: none, expected_average_only_in"
        )
    folded = {name: value.double() for name, value in tensors.items()}
    sae.fold_saelens_settings(cfg, folded)
    return {name: folded[name].to(value.dtype) for name, value in tensors.items()}


__all__ = [
    "ARCHITECTURES",
    "SAE",
    "LossTerms",
    "TrainOutput",
    "architecture_options",
    "create_sae",
    "load_sae",
    "sae_class",
    "variant_label",
    "variant_order",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "ReLUSAE",
    "TopKSAE",
]
