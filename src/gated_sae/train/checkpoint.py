"""Training checkpoints, written atomically."""

from pathlib import Path

import torch

from ..errors import DataError
from ..files import atomic_write_bytes


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a checkpoint we cannot read is never silently ignored
        raise DataError(f"corrupt checkpoint {path}: {str(e).splitlines()[0]}") from None
