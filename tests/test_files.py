"""Atomic writes: whole-or-nothing, and the permissions open() would give, not owner-only.
Out of space, a write is a WriteError naming the file and leaves the old one in place."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from gated_sae import WriteError, create_sae, load_sae
from gated_sae.files import (
    append_whole,
    atomic_write_bytes,
    atomic_write_npy,
    atomic_write_text,
)
from gated_sae.train.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture
def umask_027():
    """A umask that differs from the usual 022 in the group bits, so modes must follow it."""
    old = os.umask(0o027)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_file_gets_umask_mode_not_owner_only(tmp_path, umask_027):
    target = tmp_path / "report.md"
    atomic_write_text(target, "hello\n")
    assert target.read_text() == "hello\n"
    assert mode(target) == 0o640  # 0o666 & ~0o027


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old\n")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(target, fail)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_saved_sae_folder_is_readable_like_any_new_folder(tmp_path, umask_027):
    folder = create_sae("relu", d_in=4, d_sae=8).save(tmp_path / "sae")
    assert mode(folder) == 0o750  # 0o777 & ~0o027
    assert {p.name: mode(p) for p in folder.iterdir()} == {
        "cfg.json": 0o640,
        "sae_weights.safetensors": 0o640,
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16, np.int32])
def test_npy_written_in_parts_is_what_np_save_writes(tmp_path, dtype):
    array = np.random.default_rng(0).normal(size=(7, 3, 5)).astype(dtype)
    np.save(tmp_path / "whole.npy", array)
    atomic_write_npy(tmp_path / "parts.npy", array.shape, dtype,
                     [array[:2], array[2:3], array[3:].T.copy().T])  # the last not C-ordered
    assert (tmp_path / "parts.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


# --- out of space ----------------------------------------------------------------------------


@contextmanager
def file_size_limit(limit: int):
    """Files this process writes stop at `limit` bytes, as on a full disk: a write past it
    fails with EFBIG (SIGXFSZ, which would kill the process, ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def no_space(path) -> str:
    return (f"cannot write {path}: File too large; free some space or write elsewhere, "
            "then run again")


def test_out_of_space_keeps_the_old_file(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old\n")
    with file_size_limit(1000), pytest.raises(WriteError) as caught:
        atomic_write_text(target, "new\n" * 1000)
    assert str(caught.value) == no_space(target)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_out_of_space_in_npy_parts_keeps_no_partial_file(tmp_path):
    parts = (np.zeros((100, 64), np.float32) for _ in range(10))
    with file_size_limit(100_000), pytest.raises(WriteError) as caught:
        atomic_write_npy(tmp_path / "acts.npy", (1000, 64), np.float32, parts)
    assert str(caught.value) == no_space(tmp_path / "acts.npy")
    assert not list(tmp_path.iterdir())


def test_out_of_space_in_torch_save_is_found_behind_its_runtime_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 5})
    with file_size_limit(4096), pytest.raises(WriteError) as caught:
        save_checkpoint(path, {"step": 10, "weights": torch.zeros(4096)})
    assert str(caught.value) == no_space(path)
    assert load_checkpoint(path) == {"step": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_out_of_space_leaves_sae_folders_as_they_were(tmp_path):
    small, large = create_sae("relu", d_in=4, d_sae=8), create_sae("relu", d_in=64, d_sae=512)
    small.save(tmp_path / "sae")
    for name in ("sae", "new"):
        with file_size_limit(1 << 16), pytest.raises(WriteError) as caught:
            large.save(tmp_path / name)
        assert str(caught.value) == no_space(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    assert torch.equal(load_sae(tmp_path / "sae").W_enc, small.W_enc)


def test_out_of_space_cuts_a_partial_append_back_off(tmp_path):
    log = tmp_path / "metrics.jsonl"
    append_whole(log, "line 1\n")
    with file_size_limit(100), pytest.raises(WriteError) as caught:
        append_whole(log, "line 2 " + "x" * 200 + "\n")  # the first 93 bytes fit
    assert str(caught.value) == no_space(log)
    assert log.read_text() == "line 1\n"
    append_whole(log, "line 2\n")
    assert log.read_text() == "line 1\nline 2\n"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_each_out_of_space_errno_is_a_write_error_naming_its_cause(tmp_path, code):
    def fail(f):
        raise OSError(code, os.strerror(code))

    with pytest.raises(WriteError, match=f"^cannot write {tmp_path / 'x'}: {os.strerror(code)};"):
        atomic_write_bytes(tmp_path / "x", fail)


def test_other_write_failures_are_not_called_out_of_space(tmp_path):
    def fail(f):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(OSError) as caught:
        atomic_write_bytes(tmp_path / "x", fail)
    assert caught.type is OSError and caught.value.errno == errno.EIO


def test_an_error_raised_from_none_is_not_read_as_out_of_space(tmp_path):
    def fail(f):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise ValueError("not about space") from None

    with pytest.raises(ValueError, match="not about space"):
        atomic_write_bytes(tmp_path / "x", fail)
