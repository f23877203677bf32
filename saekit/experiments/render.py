"""Number formatting and the headless matplotlib the report tables and plots share."""

from __future__ import annotations

import math


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}g}" if abs(x) < 1e4 else f"{x:+.3e}"


def ci(lo: float, hi: float) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]" if not math.isnan(lo) else "-"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Lay out, write as PNG (110 dpi, as every experiment figure) and close; returns the path."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path

