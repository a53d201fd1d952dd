"""Atomic writes: whole-or-nothing, and the permissions open() would give, not owner-only."""

from __future__ import annotations

import os
import stat

import pytest

from gated_sae import create_sae
from gated_sae.files import atomic_write_bytes, atomic_write_text

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
