"""results.csv, the table a sweep writes and the report reads: its columns, how a row is
written (`results_text`) and how it is read back with numbers parsed (`read_results`).

One row per trained SAE: its settings (`name` … `role`), the metrics measured on held-out
text (`METRICS`, with the held-out token counts they were taken on), then what training
recorded (`TRAINING`). `sparsity_coef` is empty for TopK-like SAEs and `k` for the others;
`role` joins the row's role tags with ";"; `options` is a JSON object.

The training columns: `train_dead_fraction`, the fraction of latents that did not fire in
the last `train_dead_tokens` tokens of the training stream; `converged`, 1 when twice the
tokens moved loss recovered at the SAE's L0 by less than 0.005 (`lr_change`, that change:
the SAE at the end against the half-budget frontier of the SAEs differing from it only in
sparsity level; `fvu_change`, FVU's, relative to the final value; experiments.sweep.
convergence); `train_seconds`, this SAE's share of its pass's training steps, its
half-budget twin's included; `pass_seconds`, the wall time of that pass; `eval_seconds`,
the pass's evaluation time divided by its SAEs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import DataError

# The convergence criterion (experiments.sweep.convergence): twice the training tokens moved
# loss recovered at the SAE's L0 by less than CONVERGENCE_TOLERANCE, read on the half-budget
# frontier no further than CONVERGENCE_REACH (a factor in L0) past its ends.
CONVERGENCE_TOLERANCE = 0.005
CONVERGENCE_REACH = 1.5


def half_budget_end(curve: list[dict]) -> dict | None:
    """Where an SAE's half-budget twin ended (`TrainConfig.half_budget`): among the points of
    its training curve (curves.csv, in order, the run's end last) the last of a run shorter
    than the SAE's own; None without a twin."""
    twins = [p for p in curve if p["run_tokens"] < curve[-1]["run_tokens"]]
    return twins[-1] if twins else None


# The metrics of one SAE, as evaluate/ names them.
METRICS = (
    "l0",
    "fvu",
    "explained_variance",
    "mse",
    "gamma",
    "gamma_centred",
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
# Held-out tokens of the activation metrics, and predictions of the LM metrics (ce_*, kl,
# loss_recovered, delta_loss), which are taken on the first of the same held-out windows.
EVAL_COUNTS = ("eval_tokens", "lm_eval_tokens")
TRAINING = (
    "train_dead_fraction",
    "train_dead_tokens",
    "converged",
    "lr_change",
    "fvu_change",
    "train_seconds",
    "pass_seconds",
    "eval_seconds",
)
MEASURED = (*METRICS, *EVAL_COUNTS, *TRAINING)
COLUMNS = [*SETTINGS, *MEASURED]
INT_COLUMNS = ("d_sae", "seed", "tokens", "batch_size", "k", "converged")
FLOAT_COLUMNS = ("lr", "sparsity_coef", *(c for c in MEASURED if c not in INT_COLUMNS))


def _cell(value) -> str:
    """CSV text that reads back the same: floats (numpy's too) with full precision."""
    if isinstance(value, float):
        return repr(float(value))
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
    """The rows of a results.csv with numbers parsed: missing integers (k of a relu SAE, or
    `converged` in a table written before it was recorded) become None, missing metrics
    NaN, `role` a frozenset `roles`, `options` a dict."""
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
