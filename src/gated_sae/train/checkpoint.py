"""Atomic writes of training checkpoints and small files."""

import os
import tempfile
from pathlib import Path

import torch

from ..errors import DataError


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a checkpoint we cannot read is never silently ignored
        raise DataError(f"corrupt checkpoint {path}: {str(e).splitlines()[0]}") from None
