"""How the report writes numbers, intervals, learning rates, sparsity levels and lists."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .model import METRIC_NAMES, Config, Family, finite
from .stats import Interval

NOT_MEASURED = "not measured in this sweep"
UNCONVERGED_MARK = "†"  # a configuration with a run failing the convergence criterion


def num(x, digits: int = 3) -> str:
    return f"{x:.{digits}f}".replace("-", "−") if finite(x) else "n/a"


def signed(x, digits: int = 3) -> str:
    """+0.012 / −0.012, with a true minus sign."""
    return f"{x:+.{digits}f}".replace("-", "−") if finite(x) else "n/a"


def significant(x, figures: int = 3) -> str:
    """x to `figures` significant figures, zeros kept: 3.18, 0.400, 12.0."""
    if not finite(x):
        return "n/a"
    x = float(f"{x:.{figures}g}")  # rounded first: 9.996 → 10.0
    digits = max(0, figures - 1 - math.floor(math.log10(abs(x)))) if x else figures - 1
    return f"{x:.{digits}f}".replace("-", "−")


def l0(x: float) -> str:
    if not finite(x):
        return "n/a"
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def lr(x: float) -> str:
    """3e-4 style: the shortest mantissa, the exponent without padding."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def sparsity(level: float | int, k_like: bool) -> str:
    """'k = 32' for TopK-like SAEs, else 'λ = 2'."""
    return f"k = {level}" if k_like else f"λ = {level:g}"


def level(c: Config) -> str:
    return sparsity(c.level, c.k_like)


def count(x) -> str:
    return f"{x:,}" if isinstance(x, int) else "n/a"


def plural(n: int, noun: str) -> str:
    """'1 run', '3 runs'."""
    return f"{n} {noun}{'s' * (n != 1)}"


def series(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if not items:
        return ""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def interval(iv: Interval | None, digits: int = 3, sign: bool = False,
             write: Callable[[float], str] | None = None) -> str:
    """'0.912 [0.905, 0.918]' (signed: '+0.046 [+0.038, +0.053]'; or each number as `write`
    writes it); the estimate alone where there is no interval."""
    if iv is None:
        return "n/a"
    write = write or (lambda x: (signed if sign else num)(x, digits))
    if not finite(iv.low):
        return write(iv.value)
    return f"{write(iv.value)} [{write(iv.low)}, {write(iv.high)}]"


def metric(name: str) -> str:
    return METRIC_NAMES.get(name, name)


def where(at_metric: str, at: float) -> str:
    """'L0 20', or 'loss recovered 0.829' for a matched fidelity."""
    if at_metric == "l0":
        return f"L0 {l0(at)}"
    return f"{metric(at_metric)} {num(at)}"


def flagged(c: Config, text: str) -> str:
    """`text` with the unconverged mark when the configuration fails the criterion."""
    return text + UNCONVERGED_MARK if c.converged is False else text


def family(f: Family, name: str | None = None) -> str:
    """The family's name (`name` when given), marked when a point fails the criterion."""
    return (name or f.variant) + (UNCONVERGED_MARK if f.unconverged else "")
