"""The sweep as the report sees it: the usable rows of results.csv, the settings recorded in
sweep.json, and the families, frontiers and comparisons every part of the report reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ...saes import ARCHITECTURES, variant_order
from ...saes.gated import GatedSAE
from ...saes.relu import ReLUSAE
from ..pareto import (
    Comparison,
    best_lr_rows,
    compare,
    frontier,
    seed_noise,
    sparsity_level,
    summarize,
)

BASE_ARCHS = tuple(ARCHITECTURES)
VARIANT_ORDER = variant_order()
# The subjects of the three questions: the Gated SAE, against the ReLU baseline.
GATED, BASELINE = GatedSAE.architecture, ReLUSAE.architecture


def finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def variant_key(variant: str) -> tuple:
    """Sort key: the variants of VARIANT_ORDER in that order, then any other by name."""
    known = variant in VARIANT_ORDER
    return (not known, VARIANT_ORDER.index(variant) if known else 0, variant)


def read_record(path: Path) -> dict:
    """sweep.json, or {} when it is missing or unreadable (the report then says so)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


class SweepResults:
    """The rows, best-lr summaries and settings that every section reads."""

    def __init__(self, rows: list[dict], record: dict):
        # A row without a width, lr or sparsity level cannot be placed on any comparison.
        usable = [
            r
            for r in rows
            if r["d_sae"] is not None and finite(r["lr"]) and finite(sparsity_level(r))
        ]
        self.skipped = len(rows) - len(usable)
        self.rows = rows = usable
        self.record = record
        self.config = record.get("config") if isinstance(record.get("config"), dict) else {}
        self.best = best_lr_rows(rows)
        self.per_lr = summarize(rows, ("variant", "d_sae", "sparsity", "lr"))
        # Fidelity is loss recovered; a sweep that did not measure it falls back to FVU.
        has_lr = any(finite(r["loss_recovered"]) for r in rows)
        self.metric = "loss_recovered" if has_lr else "fvu"
        self.metric_name = "loss recovered" if has_lr else "FVU"
        self.sign = 1 if has_lr else -1  # sign · Δ > 0: the second family is better
        self.main_width = self._main_width()

    def _main_width(self) -> int | None:
        widths = [r["d_sae"] for r in self.rows if r["d_sae"] is not None]
        if self.config.get("main_width") in widths:
            return self.config["main_width"]
        swept = [r["d_sae"] for r in self.rows if "lr_sweep" in r["roles"]] or widths
        if not swept:
            return None
        return min(set(swept), key=lambda w: (-swept.count(w), w))

    def variants(self, width: int | None = None) -> list[str]:
        found = {r["variant"] for r in self.best if width is None or r["d_sae"] == width}
        return sorted(found, key=variant_key)

    def family(self, variant: str, width: int | None, rows: list[dict] | None = None) -> list:
        """Best-lr summaries of `variant` at `width`, one per sparsity level, in level order
        (of `rows` when given, else of the whole sweep)."""
        pool = self.best if rows is None else best_lr_rows(rows)
        found = [s for s in pool if s["variant"] == variant and s["d_sae"] == width]
        return sorted(found, key=sparsity_level)

    def points(self, variant: str, width: int | None, rows: list[dict] | None = None) -> list:
        """Per-lr summaries of `variant` at `width`, one per (sparsity level, lr): the points
        its frontier is built from (of `rows` when given, else of the whole sweep)."""
        by = ("variant", "d_sae", "sparsity", "lr")
        pool = self.per_lr if rows is None else summarize(rows, by)
        found = [s for s in pool if s["variant"] == variant and s["d_sae"] == width]
        return sorted(found, key=lambda s: (sparsity_level(s), s["lr"]))

    def compare(self, ref: list[dict], alt: list[dict]) -> list[Comparison]:
        """`ref` against `alt` at matched L0, with the larger of the two families' seed noise."""
        noises = [n for n in map(self.seed_noise, (ref, alt)) if n is not None]
        return compare(ref, alt, self.metric, self.metric != "fvu", max(noises, default=None))

    def seed_noise(self, family: list[dict]) -> float | None:
        """`seed_noise` of the sweep's rows of the family's variant at the family's width."""
        if not family:
            return None
        variant, width = family[0]["variant"], family[0]["d_sae"]
        rows = [r for r in self.rows if r["variant"] == variant and r["d_sae"] == width]
        return seed_noise(rows, self.metric, self.metric != "fvu")

    def front(self, family: list[dict], metric: str | None = None) -> list[tuple]:
        """The L0 frontier of `family` on `metric` (default: the report's fidelity)."""
        metric = metric or self.metric
        return frontier([(s["l0"], s[metric], s) for s in family], metric != "fvu")
