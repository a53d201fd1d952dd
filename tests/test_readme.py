"""The README's Python example runs as written, on the data its text says to make."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    (example,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert "gated-sae synth --out toy.npy" in text
    subprocess.run([sys.executable, "-m", "gated_sae", "synth", "--out", "toy.npy"],
                   cwd=tmp_path, check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, str(README), "exec"), scope)
    assert set(scope["saes"]) == {"gated", "topk"}
    assert 0 < scope["metrics"]["l0"] < 512 and scope["metrics"]["fvu"] < 1
    assert scope["x_hat"].shape == scope["acts"][:8].shape
    assert (tmp_path / "runs/toy/gated/cfg.json").is_file()
