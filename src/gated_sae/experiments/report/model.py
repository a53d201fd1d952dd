"""The sweep as the report sees it: its runs, which of them are healthy, the configurations
they replicate (variant, width, lr, sparsity level; the seeds are the replicates) with
bootstrap replicates of every metric, and each family's frontier at its one chosen lr.

A run with more than DEAD_LIMIT of its latents dead over the training stream's last window
is a failure of its configuration, not a point of a frontier: it is set apart
(`excluded`). Each family (variant, width) keeps one learning rate, chosen on the frontier
(`choose_lr`), never at a fixed sparsity level: at a fixed λ the lr moves L0, so the best
fidelity at fixed λ favours whichever lr leaves the SAE densest. The choice is made once,
on the data as measured, and kept in every replicate.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...saes import ARCHITECTURES, variant_order
from ...saes.gated import GatedSAE
from ...saes.relu import ReLUSAE
from ..pareto import interpolate, matched_l0s, sparsity_level
from ..results import read_results
from . import stats
from .inputs import read_curves, read_heldout, read_record

BASE_ARCHS = tuple(ARCHITECTURES)
VARIANT_ORDER = variant_order()
# The subjects of the questions: the Gated SAE, against the ReLU baseline.
GATED, BASELINE = GatedSAE.architecture, ReLUSAE.architecture
DEAD_LIMIT = 0.5  # train_dead_fraction above it: the run is excluded from frontiers
# The metrics every configuration carries replicates of.
DRAWN = ("l0", "fvu", "gamma", "gamma_centred", "loss_recovered", "delta_loss")
FIDELITY = ("loss_recovered", "delta_loss", "fvu")
HIGHER_IS_BETTER = {"loss_recovered": True, "delta_loss": False, "fvu": False}
METRIC_NAMES = {"loss_recovered": "loss recovered", "delta_loss": "Δloss", "fvu": "FVU",
                "l0": "L0", "gamma": "γ", "gamma_centred": "γ centred"}


def finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def variant_key(variant: str) -> tuple:
    """Sort key: the variants of VARIANT_ORDER in that order, then any other by name."""
    known = variant in VARIANT_ORDER
    return (not known, VARIANT_ORDER.index(variant) if known else 0, variant)


@dataclass
class Config:
    """One configuration: its healthy runs (the seeds) and replicates [R + 1] per metric."""

    variant: str
    width: int
    lr: float
    level: float | int
    k_like: bool  # the level is k (TopK-like), not λ
    runs: list[dict]
    draws: dict[str, np.ndarray]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def value(self, metric: str) -> float:
        return float(self.draws[metric][0])

    @property
    def converged(self) -> bool | None:
        """False when any run failed the criterion; None when none recorded it."""
        flags = [r["converged"] for r in self.runs if r.get("converged") is not None]
        return all(flags) if flags else None

    @property
    def dead(self) -> float:
        """Mean dead fraction over the training stream's last window, NaN if not measured."""
        values = [r["train_dead_fraction"] for r in self.runs]
        return float(np.mean(values)) if values else math.nan


def curve_arrays(points: list[Config], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(L0s, `metric`) of configurations as [R + 1, len(points)]."""
    return (np.stack([c.draws["l0"] for c in points], 1),
            np.stack([c.draws[metric] for c in points], 1))


# How a family's lr was chosen (LrChoice.rule).
ONLY, ON_FRONTIER, MOST_LEVELS = "only", "frontier", "most levels"


@dataclass
class LrChoice:
    """A family's one learning rate and how it was chosen. Each lr with healthy levels draws
    a curve (its levels in increasing L0, mean over seeds); the curves of two or more levels
    are read at `l0s`, the L0s where all of them can be read (`matched_l0s`), and the lr with
    the best mean `metric` over those L0s is chosen (ties: the smaller lr). Where not all of
    them share an L0, the largest group that does is compared (ties: the group with more
    levels, then the smaller lrs), and the others are `left_out`. Where no two share one,
    the lr with the most healthy levels is chosen, then the one with the most seeds at its
    fewest-seeded level, then the smaller lr."""

    swept: list[float]  # every lr swept for the family, dead runs' too, increasing
    curves: dict[float, list[Config]]  # each lr with a healthy level: its configurations
    metric: str
    l0s: list[float]  # where the compared curves were read; [] when they share none
    means: dict[float, np.ndarray]  # each compared lr: mean `metric` over `l0s`, [R + 1]
    lr: float
    left_out: list[float]  # lrs of two or more levels whose curve shares no L0 with `means`'s

    @property
    def rule(self) -> str:
        if len(self.curves) == 1:
            return ONLY
        return ON_FRONTIER if self.lr in self.means else MOST_LEVELS

    @property
    def edge(self) -> str | None:
        """'smallest' or 'largest' when the chosen lr is at that end of two or more swept."""
        if len(self.swept) < 2:
            return None
        return {self.swept[0]: "smallest", self.swept[-1]: "largest"}.get(self.lr)

    def difference(self, lr: float) -> np.ndarray:
        """lr's mean over `l0s` minus the chosen lr's, [R + 1]."""
        return self.means[lr] - self.means[self.lr]


def choose_lr(configs: list[Config], swept: list[float], metric: str) -> LrChoice:
    """The family of `configs` (healthy, finite L0) at one lr, chosen as LrChoice says."""
    curves: dict[float, list[Config]] = {}
    for c in sorted(configs, key=lambda c: (c.lr, c.value("l0"))):
        curves.setdefault(c.lr, []).append(c)
    readable = [lr for lr, points in curves.items() if len(points) >= 2]
    compared, l0s = [], []
    groups = [g for size in range(len(readable), 1, -1)
              for g in itertools.combinations(readable, size)]
    for group in sorted(groups, key=lambda g: (-len(g), -sum(len(curves[x]) for x in g), g)):
        l0s = matched_l0s([curve_arrays(curves[lr], "l0")[0] for lr in group])
        if l0s:
            compared = list(group)
            break
    means = {
        lr: np.mean([interpolate(*curve_arrays(curves[lr], metric), at) for at in l0s], 0)
        for lr in compared
    } if l0s else {}
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    scored = [lr for lr in means if math.isfinite(means[lr][0])]
    if scored:
        lr = max(scored, key=lambda x: (sign * means[x][0], -x))
    else:
        means = {}
        lr = max(curves, key=lambda x: (len(curves[x]), min(c.seeds for c in curves[x]), -x))
    left_out = [x for x in readable if x not in means] if means else []
    return LrChoice(swept, curves, metric, l0s, means, lr, left_out)


@dataclass
class Family:
    """A variant at one width: its chosen lr's configurations, one per sparsity level, in
    increasing L0."""

    variant: str
    width: int
    choice: LrChoice

    @property
    def points(self) -> list[Config]:
        return self.choice.curves[self.choice.lr]

    def arrays(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """(L0s, `metric`) as [R + 1, levels]."""
        return curve_arrays(self.points, metric)

    @property
    def seeds(self) -> int:
        return min(c.seeds for c in self.points)

    @property
    def unconverged(self) -> list[Config]:
        return [c for c in self.points if c.converged is False]


class SweepResults:
    """The runs, configurations, frontiers and settings that every section reads."""

    def __init__(self, rows: list[dict], record: dict, heldout: dict | None = None,
                 curves: dict | None = None):
        # A row without a width, lr or sparsity level cannot be placed on any comparison.
        usable = [
            r for r in rows
            if r["d_sae"] is not None and finite(r["lr"]) and finite(sparsity_level(r))
        ]
        self.skipped = len(rows) - len(usable)
        self.rows = usable
        self.record = record
        self.config = record.get("config") if isinstance(record.get("config"), dict) else {}
        self.curves = curves
        dead = [r.get("train_dead_fraction", math.nan) > DEAD_LIMIT for r in usable]
        self.excluded = [r for r, d in zip(usable, dead, strict=True) if d]
        healthy = [r for r, d in zip(usable, dead, strict=True) if not d]
        self.dead_measured = any(finite(r.get("train_dead_fraction")) for r in usable)
        self.dead_window = sorted({int(r["train_dead_tokens"]) for r in usable
                                   if finite(r.get("train_dead_tokens"))})
        # (activation windows, their tokens, LM windows, their predictions)
        self.held_out = tuple(
            int(f(heldout[k])) for k in ("window_tokens", "lm_predictions") for f in (len, sum)
        ) if heldout else None
        names = set(heldout["names"]) if heldout else set()
        # Resample windows only when the sums cover every healthy run.
        self.uncovered = [r["name"] for r in healthy if heldout and r["name"] not in names]
        self.windows = bool(heldout) and not self.uncovered
        self.lm_windows = self.windows and len(heldout["lm_predictions"]) > 0
        self.configs = self._configs(healthy, heldout if self.windows else None)
        self.swept: dict[tuple, set[float]] = {}  # (variant, width): every lr, dead runs' too
        for r in usable:
            self.swept.setdefault((r["variant"], r["d_sae"]), set()).add(r["lr"])
        has_lr = any(finite(c.value("loss_recovered")) for c in self.configs)
        self.metric = "loss_recovered" if has_lr else "fvu"
        self.metric_name = METRIC_NAMES[self.metric]
        self.main_width = self._main_width()
        self.families = {
            (v, w): f
            for v, w in sorted({(c.variant, c.width) for c in self.configs},
                               key=lambda k: (variant_key(k[0]), k[1]))
            if (f := self.family(v, w)) is not None
        }

    # --- building ---------------------------------------------------------------------------

    def _configs(self, rows: list[dict], heldout: dict | None) -> list[Config]:
        rng = np.random.default_rng(stats.RNG_SEED)
        if heldout is not None:
            index = {name: i for i, name in enumerate(heldout["names"])}
            windows = stats.resample_counts(rng, len(heldout["window_tokens"]))
            lm_windows = stats.resample_counts(rng, len(heldout["lm_predictions"]))
            per_window = stats.window_metrics(heldout, windows, lm_windows)
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            key = (r["variant"], r["d_sae"], sparsity_level(r), r["lr"])
            groups.setdefault(key, []).append(r)
        out = []
        for key in sorted(groups, key=lambda k: (variant_key(k[0]), *k[1:])):
            runs = sorted(groups[key], key=lambda r: (r["seed"] is None, r["seed"] or 0))
            seeds = stats.resample_counts(rng, len(runs))
            draws = {}
            for metric in DRAWN:
                if heldout is not None and metric in per_window:
                    per_run = per_window[metric][:, [index[r["name"]] for r in runs]]
                else:  # the table's value, the same in every replicate
                    per_run = np.tile([r.get(metric, math.nan) for r in runs], (len(seeds), 1))
                draws[metric] = (seeds * per_run).sum(1) / len(runs)
            variant, width, level, lr = key
            out.append(Config(variant, width, lr, level, runs[0]["k"] is not None, runs, draws))
        return out

    def _main_width(self) -> int | None:
        widths = [r["d_sae"] for r in self.rows]
        if self.config.get("main_width") in widths:
            return self.config["main_width"]
        swept = [r["d_sae"] for r in self.rows if "lr_sweep" in r["roles"]] or widths
        if not swept:
            return None
        return min(set(swept), key=lambda w: (-swept.count(w), w))

    def family(self, variant: str, width: int | None, lrs=None) -> Family | None:
        """`variant` at `width` at its chosen lr (among `lrs` when given); None when it has
        no healthy configuration there."""
        configs = [c for c in self.configs_of(variant, width)
                   if (lrs is None or c.lr in lrs) and math.isfinite(c.value("l0"))]
        if not configs:
            return None
        swept = sorted(x for x in self.swept[(variant, width)] if lrs is None or x in lrs)
        return Family(variant, width, choose_lr(configs, swept, self.metric))

    # --- reading ----------------------------------------------------------------------------

    def variants(self, width: int | None = None) -> list[str]:
        found = {v for v, w in self.families if width is None or w == width}
        return sorted(found, key=variant_key)

    def widths(self, variant: str) -> list[int]:
        return sorted(w for v, w in self.families if v == variant)

    def configs_of(self, variant: str, width: int) -> list[Config]:
        return [c for c in self.configs if c.variant == variant and c.width == width]

    def measured(self, metric: str) -> bool:
        """Whether `metric` can be resampled at all (LM metrics need the LM sums)."""
        return any(math.isfinite(c.value(metric)) for c in self.configs)


def load_sweep(folder: Path) -> SweepResults:
    """The sweep in `folder`: results.csv (required), sweep.json, heldout.npz, curves.csv."""
    return SweepResults(
        read_results(folder / "results.csv"),
        read_record(folder / "sweep.json"),
        read_heldout(folder / "heldout.npz"),
        read_curves(folder / "curves.csv"),
    )
