"""How the SAEs trained, as numbers: which fail the convergence criterion (and which of those
sit on a frontier), and what the sweep cost: tokens and seconds per SAE at each width, the
whole sweep's wall time, the cache's, and the machine."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .model import Config, Family, SweepResults, finite, variant_key

# A group whose FVU at matched L0 fell by more than this fraction, median, when its tokens
# doubled is still learning, whatever its loss recovered (compressed near 1) says.
FVU_STILL_FALLING = 0.05


@dataclass
class Drift:
    """How the SAEs of one variant, width and lr moved at matched L0 from half their tokens
    to all: a systematic rise shows in the median, noise in the spread."""

    variant: str
    width: int
    lr: float
    saes: int
    passed: int
    lr_change: tuple[float, float, float]  # median, smallest, largest
    fvu_change: float  # median

    @property
    def fvu_still_falling(self) -> bool:
        return self.fvu_change < -FVU_STILL_FALLING


@dataclass
class Convergence:
    recorded: int  # runs whose `converged` was recorded
    failed: list[dict]  # runs that fail the criterion, excluded ones too
    unreadable: int  # of them, those whose L0 lies beyond the reach of the twins' frontier
    on_frontiers: list[tuple[Family, Config]]  # frontier points with a failing run
    drifts: list[Drift]  # per variant, width and lr, healthy runs only


def convergence(res: SweepResults) -> Convergence:
    recorded = [r for r in res.rows if r.get("converged") is not None]
    excluded = {r["name"] for r in res.excluded}
    groups: dict[tuple, list[dict]] = {}
    for r in recorded:
        if r["name"] not in excluded and finite(r.get("lr_change")):
            groups.setdefault((r["variant"], r["d_sae"], r["lr"]), []).append(r)
    drifts = [
        Drift(*key, len(rows), sum(bool(r["converged"]) for r in rows),
              (float(np.median(changes)), min(changes), max(changes)),
              _median([r.get("fvu_change") for r in rows]))
        for key, rows in sorted(groups.items(), key=lambda kv: (variant_key(kv[0][0]),
                                                                *kv[0][1:]))
        if (changes := [r["lr_change"] for r in rows])
    ]
    return Convergence(
        len(recorded),
        [r for r in recorded if not r["converged"]],
        sum(not finite(r.get("lr_change")) for r in recorded),
        [(f, c) for f in res.families.values() for c in f.unconverged],
        drifts,
    )


def _median(values: list) -> float:
    values = [v for v in values if finite(v)]
    return float(np.median(values)) if values else math.nan


@dataclass
class WidthCompute:
    width: int
    saes: int
    tokens: list[int]  # training tokens per SAE (one value when every SAE had the same)
    train_seconds: float  # mean over the width's SAEs, NaN if not recorded
    eval_seconds: float

    @property
    def tokens_per_latent(self) -> list[float]:
        return [t / self.width for t in self.tokens]


@dataclass
class Compute:
    widths: list[WidthCompute]
    train_seconds: float  # summed over every SAE (its share of its pass)
    total_seconds: float | None  # the whole sweep command, cache and evaluation included
    cache_seconds: float | None
    machine: dict


def _mean(values: list) -> float:
    values = [v for v in values if finite(v)]
    return float(np.mean(values)) if values else math.nan


def _seconds(value) -> float | None:
    return float(value) if finite(value) else None


def compute(res: SweepResults) -> Compute:
    widths = []
    for width in sorted({r["d_sae"] for r in res.rows}):
        rows = [r for r in res.rows if r["d_sae"] == width]
        widths.append(WidthCompute(
            width, len(rows), sorted({r["tokens"] for r in rows if r["tokens"] is not None}),
            _mean([r.get("train_seconds") for r in rows]),
            _mean([r.get("eval_seconds") for r in rows]),
        ))
    seconds = [r.get("train_seconds") for r in res.rows if finite(r.get("train_seconds"))]
    machine = res.record.get("machine")
    return Compute(
        widths,
        float(sum(seconds)) if seconds else math.nan,
        _seconds(res.record.get("total_seconds")),
        _seconds(res.record.get("cache_seconds")),
        machine if isinstance(machine, dict) else {},
    )
