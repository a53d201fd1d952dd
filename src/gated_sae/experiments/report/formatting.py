"""How the report writes numbers, learning rates, sparsity levels and lists."""

from __future__ import annotations

from collections.abc import Sequence

from ..pareto import sparsity_level
from .model import finite

NOT_MEASURED = "not measured in this sweep"


def num(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if finite(x) else "n/a"


def delta(x: float) -> str:
    """+0.012 / −0.012, with a true minus sign."""
    return f"{x:+.3f}".replace("-", "−")


def l0(x: float) -> str:
    if not finite(x):
        return "n/a"
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def lr(x: float) -> str:
    """3e-4 style: the shortest mantissa, the exponent without padding."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def level(row: dict) -> str:
    """'k = 32' for TopK-like SAEs, else 'λ = 2'."""
    value = sparsity_level(row)
    return f"k = {value}" if row.get("k") is not None else f"λ = {value:g}"


def count(x) -> str:
    return f"{x:,}" if isinstance(x, int) else "n/a"


def series(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def with_spread(row: dict, metric: str, digits: int = 3) -> str:
    """The mean, and the seed spread in brackets where there are two or more seeds."""
    value = num(row[metric], digits)
    if row["n_seeds"] >= 2 and finite(row[f"{metric}_spread"]):
        return f"{value} ({row[f'{metric}_spread']:.{digits}f})"
    return value
