"""results.csv: what the sweep writes (`results_text`) reads back (`read_results`) with the
same numbers, missing values as None or NaN, roles and options parsed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gated_sae.errors import DataError
from gated_sae.experiments.results import (
    COLUMNS,
    EVAL_COUNTS,
    METRICS,
    SETTINGS,
    TRAINING,
    read_results,
    results_text,
)


def _row(**changes) -> dict:
    row = {
        "name": "relu_d512_lr0.0003_c1_s0",
        "arch": "relu",
        "variant": "relu",
        "options": "{}",
        "d_sae": 512,
        "lr": 3e-4,
        "sparsity_coef": 1.0,
        "k": "",
        "seed": 0,
        "tokens": 250_000,
        "batch_size": 1024,
        "role": "lr_sweep;seeds",
        **{m: 0.1 + i / 7 for i, m in enumerate(METRICS)},
        "eval_tokens": 32512,
        "lm_eval_tokens": 4064,
        "train_dead_fraction": 0.01,
        "train_dead_tokens": 65536,
        "converged": 1,
        "lr_change": 0.001,
        "fvu_change": -0.002,
        "train_seconds": 12.5,
        "pass_seconds": 60.0,
        "eval_seconds": 2.0,
    }
    return {**row, **changes}


def test_columns_are_the_settings_the_metrics_then_training():
    assert COLUMNS == [*SETTINGS, *METRICS, *EVAL_COUNTS, *TRAINING]
    assert COLUMNS[:3] == ["name", "arch", "variant"]
    assert {"gamma", "gamma_centred", "dead_fraction"} <= set(METRICS)
    assert {"train_dead_fraction", "converged", "lr_change", "train_seconds"} <= set(TRAINING)
    assert len(set(COLUMNS)) == len(COLUMNS)


def test_written_rows_read_back_with_the_same_numbers(tmp_path):
    relu = _row()
    topk = _row(
        name="topk",
        arch="topk",
        variant="topk",
        sparsity_coef="",
        k=32,
        role="lr_sweep",
        options='{"k": 32}',
        fvu=1 / 3,
    )
    gated = _row(
        name="gated",
        arch="gated",
        variant="gated no b_mag",
        options='{"b_mag": false}',
        role="",
        loss_recovered="",
        converged=0,
        gamma=np.float64(0.25) / 3,  # numpy's floats are written as plain numbers too
    )
    text = results_text([relu, topk, gated])
    assert text.splitlines()[0] == ",".join(COLUMNS)
    path = tmp_path / "results.csv"
    path.write_text(text)
    back = read_results(path)
    assert [r["name"] for r in back] == ["relu_d512_lr0.0003_c1_s0", "topk", "gated"]
    # floats at full precision: the same value bit for bit
    assert back[1]["fvu"] == 1 / 3 and back[0]["lr"] == 3e-4
    assert all(back[0][m] == relu[m] for m in METRICS)
    assert back[0]["d_sae"] == 512 and isinstance(back[0]["d_sae"], int)
    assert back[0]["eval_tokens"] == 32512.0 and back[0]["lm_eval_tokens"] == 4064.0
    assert back[0]["converged"] == 1 and back[2]["converged"] == 0
    assert back[2]["gamma"] == 0.25 / 3 and back[0]["train_dead_fraction"] == 0.01
    assert back[0]["k"] is None and back[0]["sparsity_coef"] == 1.0
    assert back[1]["k"] == 32 and back[1]["sparsity_coef"] is None
    assert back[0]["roles"] == frozenset({"lr_sweep", "seeds"}) and back[2]["roles"] == frozenset()
    assert back[1]["options"] == {"k": 32} and back[2]["options"] == {"b_mag": False}
    assert math.isnan(back[2]["loss_recovered"])


def test_a_hand_edited_table_still_reads(tmp_path):
    """Columns missing, a bad options cell, an empty variant: defaults, not a crash."""
    path = tmp_path / "results.csv"
    path.write_text("name,arch,variant,d_sae,lr,options\nx,gated,,64,1e-3,{not json\n")
    (row,) = read_results(path)
    assert row["variant"] == "gated" and row["options"] == {}
    assert row["d_sae"] == 64 and row["lr"] == 1e-3 and row["sparsity_coef"] is None
    assert row["seed"] is None and math.isnan(row["l0"]) and row["roles"] == frozenset()
    # written before training was recorded: unknown, not failed
    assert row["converged"] is None and math.isnan(row["train_dead_fraction"])


def test_a_missing_table_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"cannot read sweep results .*results\.csv"):
        read_results(tmp_path / "results.csv")
