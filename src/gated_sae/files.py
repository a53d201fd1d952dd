"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Every output the package writes (checkpoints, cache manifests, results tables, reports, SAE
folders) goes through here. Files get the permissions `open()` would give them (0o666 less
the umask), not the owner-only mode of a temporary file, so a run folder stays readable by
whoever could read its parent.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"  # temporary names are `.{name}.*.tmp`, so a cleanup can find them


def umask_mode(mode: int) -> int:
    """`mode` less the process umask: what a newly created file or folder would get."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders only on POSIX: Windows cannot
    open one)."""
    if path.is_dir() and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename `tmp`, already flushed to disk, over `path`, then flush the folder so the
    rename itself survives a crash."""
    os.replace(tmp, path)
    fsync_path(Path(path).parent)


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, and
    `replace_durably` it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), umask_mode(0o666))
            os.fsync(f.fileno())
        replace_durably(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
