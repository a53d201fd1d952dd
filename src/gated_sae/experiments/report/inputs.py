"""The files of a sweep folder besides results.csv: sweep.json (the settings and the machine),
curves.csv (training curves) and heldout.npz (per-window sums for the bootstrap). A sweep
written before curves or per-window sums were recorded has no such file: the readers then
return None and the report says what was not measured."""

from __future__ import annotations

import csv
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from ...errors import DataError

# Each array's windows: activation windows (those of `window_tokens`) or LM windows (those
# of `lm_predictions`); the per-SAE arrays have one row per SAE of `names`.
SHARED = {"x_sq": "window_tokens", "x_mu": "window_tokens",
          "ce_clean": "lm_predictions", "ce_zero": "lm_predictions"}
PER_SAE = {"err_sq": "window_tokens", "xhat_sq": "window_tokens", "x_xhat": "window_tokens",
           "xhat_mu": "window_tokens", "active": "window_tokens", "ce_sae": "lm_predictions",
           "kl": "lm_predictions"}
CURVE_COLUMNS = ("step", "tokens", "run_tokens", "l0", "fvu", "loss_recovered")


def read_record(path: Path) -> dict:
    """sweep.json, or {} when it is missing or unreadable (the report then says so)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _number(text: str | None) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_curves(path: Path) -> dict[str, list[dict]] | None:
    """curves.csv as {SAE name: its points in training order}, numbers parsed (NaN where a
    point has no value); None when the file is missing."""
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("name", *CURVE_COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} has no column {missing[0]!r}; it needs name, "
                            + ", ".join(CURVE_COLUMNS))
        curves: dict[str, list[dict]] = {}
        for row in reader:
            point = {c: _number(row[c]) for c in CURVE_COLUMNS}
            curves.setdefault(row["name"], []).append(point)
    for points in curves.values():
        points.sort(key=lambda p: (p["tokens"], p["run_tokens"]))
    return curves


def read_heldout(path: Path) -> dict | None:
    """heldout.npz as a dict of float64 arrays (`names` a list of str), its shapes checked;
    None when the file is missing."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read per-window sums {path}: {e}") from None
    needed = ("names", "mu_sq", "window_tokens", "lm_predictions", *SHARED, *PER_SAE)
    missing = [k for k in needed if k not in raw]
    if missing:
        raise DataError(f"{path} has no array {missing[0]!r}; it needs {', '.join(needed)}")
    out = {k: np.asarray(v, dtype=np.float64) for k, v in raw.items() if k != "names"}
    out["names"] = [str(n) for n in raw["names"]]
    out["mu_sq"] = float(out["mu_sq"])
    n_saes = len(out["names"])
    for key, axis in (*SHARED.items(), *PER_SAE.items()):
        expected = (len(out[axis]),) if key in SHARED else (n_saes, len(out[axis]))
        if out[key].shape != expected:
            raise DataError(
                f"{path}: {key} has shape {out[key].shape}, expected {expected} "
                f"(the windows of {axis})"
            )
    return out
