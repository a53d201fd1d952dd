"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Every output the package writes (checkpoints, cache manifests, results tables, reports, SAE
folders) goes through here. Files get the permissions `open()` would give them (0o666 less
the umask), not the owner-only mode of a temporary file, so a run folder stays readable by
whoever could read its parent.

A write that fails for want of space (a full disk or quota, a file-size limit) raises
WriteError naming the file, and leaves the file as it was: the user frees space and reruns.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import WriteError

TMP_SUFFIX = ".tmp"  # temporary names are `.{name}.*.tmp`, so a cleanup can find them
OUT_OF_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _out_of_space(error: BaseException | None) -> OSError | None:
    """The out-of-space OSError behind `error`, if any. Writers that call back into Python
    (torch.save) raise their own error and keep the OSError as its context; an error raised
    `from None` (a WriteError itself) has put its context aside."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in OUT_OF_SPACE:
            return error
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


@contextmanager
def writing_to(path: Path) -> Iterator[None]:
    """Turn a failure to write `path` for want of space into a one-line WriteError."""
    try:
        yield
    except Exception as e:
        cause = _out_of_space(e)
        if cause is None:
            raise
        raise WriteError(f"cannot write {path}: {cause.strerror}; free some space or write "
                         "elsewhere, then run again") from None


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
    with writing_to(path):
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


def atomic_write_npy(path: Path, shape: tuple, dtype: Any, parts: Iterable[np.ndarray]) -> None:
    """`atomic_write_bytes` the .npy file `np.save` writes for the C-ordered array of `shape`
    and `dtype` whose rows are `parts`, one after another: one part in memory at a time, and
    written by Python, so that a full disk is an OSError with its errno (numpy's own file
    writer drops it; in a memory map it is a SIGBUS)."""
    from numpy.lib.format import dtype_to_descr, write_array_header_1_0

    header = {"descr": dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}

    def write(f: BinaryIO) -> None:
        write_array_header_1_0(f, header)
        for part in parts:
            f.write(np.ascontiguousarray(part).data)

    atomic_write_bytes(path, write)


def append_whole(path: Path, text: str) -> None:
    """Append `text` to `path` whole or not at all: a write that fails is cut back off, so
    the file still ends where its last complete append did."""
    with writing_to(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            data = memoryview(text.encode())
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
