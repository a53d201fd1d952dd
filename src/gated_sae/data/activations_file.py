"""Activations held in one file, and the check that any activations are finite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

ACTIVATION_FILE_SUFFIXES = (".npy", ".safetensors", ".pt")


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
