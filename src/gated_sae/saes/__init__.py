"""The architectures, by name: `create_sae` makes one, `load_sae` reads a saved folder."""

import inspect
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import ConfigError, DataError, check_positive_int
from .base import SAE, TrainOutput
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
_FROM_SAELENS = {"standard": "relu", "gated": "gated", "topk": "topk", "jumprelu": "jumprelu"}


def architecture_options(arch: str) -> dict[str, object]:
    """The options an architecture accepts, with their defaults."""
    cls = _architecture(arch)
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


def _architecture(arch: str) -> type[SAE]:
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[arch]


def create_sae(arch: str, *, d_in: int, d_sae: int, **options) -> SAE:
    """A freshly initialised SAE: `arch` in relu, gated, topk, batchtopk, jumprelu."""
    cls = _architecture(arch)
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
            arch = _FROM_SAELENS[cfg["architecture"]]
            options = {"k": cfg["k"]} if arch == "topk" else {}
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
    tensors = _fold_saelens_settings(cfg, cfg_file, arch, tensors)
    dtype = tensors["W_dec"].dtype
    sae.to(dtype)
    sae.load_state_dict(tensors, strict=False)
    if arch == "batchtopk":
        sae.threshold_initialised.fill_(True)
    return sae.to(device)


def _fold_saelens_settings(cfg: dict, cfg_file: Path, arch: str, tensors: dict) -> dict:
    """Fold SAELens settings that change inference into the weights, so that our encoder
    (which always centres by b_dec and never rescales) gives SAELens's latents exactly."""
    norm = cfg.get("normalize_activations", "none")
    if norm in ("constant_norm_rescale", "layer_norm"):  # the others are identities at inference
        raise DataError(
            f"{cfg_file}: normalize_activations {norm!r} rescales each input at run time, "
            "which cannot be folded into the weights; accepted: none, expected_average_only_in"
        )
    t = dict(tensors)

    def f64(name: str) -> torch.Tensor:
        return t[name].double()

    if cfg.get("apply_b_dec_to_input", True) is False:
        # SAELens computes `x W + b`; we compute `(x − b_dec) W + b'`, so `b' = b + b_dec W`.
        shift = f64("b_dec") @ f64("W_enc")
        if arch == "gated":  # the magnitude path uses W_enc·exp(r_mag)
            t["b_gate"] = f64("b_gate") + shift
            t["b_mag"] = f64("b_mag") + shift * f64("r_mag").exp()
        else:
            t["b_enc"] = f64("b_enc") + shift
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        # SAELens ranks `pre·‖W_dec,i‖` and decodes `(f/‖W_dec,i‖) W_dec`: unit rows do the same.
        n = f64("W_dec").norm(dim=1)
        t["W_enc"], t["b_enc"] = f64("W_enc") * n, f64("b_enc") * n
        t["W_dec"] = f64("W_dec") / n[:, None]
    return {k: v.to(tensors[k].dtype) for k, v in t.items()}


__all__ = [
    "ARCHITECTURES",
    "SAE",
    "TrainOutput",
    "architecture_options",
    "create_sae",
    "load_sae",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "ReLUSAE",
    "TopKSAE",
]
