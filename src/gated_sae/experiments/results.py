"""results.csv, the table a sweep writes and the report reads: its columns, how a row is
written (`results_text`) and how it is read back with numbers parsed (`read_results`).

One row per trained SAE: its settings (`name` … `role`), then the metrics measured on
held-out text. `sparsity_coef` is empty for TopK-like SAEs and `k` for the others; `role`
joins the row's role tags with ";"; `options` is a JSON object.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import DataError

# The metrics of one SAE, as evaluate/ names them.
METRICS = (
    "l0",
    "fvu",
    "explained_variance",
    "mse",
    "gamma",
    "dead_fraction",
    "dense_fraction",
    "ce_clean",
    "ce_sae",
    "ce_zero",
    "loss_recovered",
    "delta_loss",
    "kl",
)
SETTINGS = (
    "name",
    "arch",
    "variant",
    "options",
    "d_sae",
    "lr",
    "sparsity_coef",
    "k",
    "seed",
    "tokens",
    "batch_size",
    "role",
)
# eval_tokens: held-out tokens of the activation metrics; lm_eval_tokens: predictions of the
# LM metrics; train_dead_fraction: latents silent over the last train_dead_tokens of training;
# converged, lr_change, fvu_change: the last quarter of the training curve (sweep.convergence);
# seconds: the SAE's training steps, its pass's wall time, its share of the evaluation.
MEASURED = (
    *METRICS,
    "gamma_centred",
    "eval_tokens",
    "lm_eval_tokens",
    "train_dead_fraction",
    "train_dead_tokens",
    "converged",
    "lr_change",
    "fvu_change",
    "train_seconds",
    "pass_seconds",
    "eval_seconds",
)
COLUMNS = [*SETTINGS, *MEASURED]
INT_COLUMNS = ("d_sae", "seed", "tokens", "batch_size", "k")
FLOAT_COLUMNS = ("lr", "sparsity_coef", *MEASURED)


def _cell(value) -> str:
    """CSV text that reads back the same: floats with full precision."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def results_text(rows: Iterable[Mapping]) -> str:
    """results.csv for `rows` (each with every column of COLUMNS), in the order given."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row[k]) for k in COLUMNS})
    return buffer.getvalue()


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_results(path: Path) -> list[dict]:
    """The rows of a results.csv with numbers parsed: missing integers (k of a relu SAE)
    become None, missing metrics NaN, `role` a frozenset `roles`, `options` a dict."""
    try:
        with open(path, newline="") as f:
            raw = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"cannot read sweep results {path}: {e.strerror}") from None
    rows = []
    for r in raw:
        row = {k: (v or "").strip() for k, v in r.items() if k is not None}
        for key in INT_COLUMNS:
            row[key] = _int(row.get(key, ""))
        for key in FLOAT_COLUMNS:
            row[key] = _float(row.get(key, ""))
        if math.isnan(row["sparsity_coef"]):
            row["sparsity_coef"] = None
        row["variant"] = row.get("variant") or row.get("arch", "")
        row["roles"] = frozenset(t for t in row.get("role", "").split(";") if t)
        try:
            row["options"] = json.loads(row.get("options") or "{}")
        except json.JSONDecodeError:
            row["options"] = {}
        rows.append(row)
    return rows
