"""The statistics of experiment reports: bootstrap intervals of a mean, and Spearman's rank correlation.

Both are computed here rather than with scipy so that stored reports keep their numbers: the
bootstrap draws its resamples from torch's generator (scipy.stats.bootstrap draws differently),
and `spearman` equals scipy.stats.spearmanr on the same data up to float rounding.
"""

from __future__ import annotations

from typing import Sequence

import torch


def bootstrap_ci(values: Sequence[float] | torch.Tensor, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lower, upper): percentile bootstrap interval of the mean over the given samples."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    x = x[torch.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if len(x) == 1 or n_boot == 0:
        return mean, mean, mean
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (n_boot, len(x)), generator=g)
    means = x[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)).tolist()
    return mean, min(lo, mean), max(hi, mean)


def _ranks(v: Sequence[float]) -> torch.Tensor:
    """Ranks from 0, ties sharing their average rank."""
    t = torch.as_tensor(v, dtype=torch.float64)
    order = t.argsort()
    r = torch.empty_like(t)
    r[order] = torch.arange(len(t), dtype=torch.float64)
    for val in t.unique():
        same = t == val
        r[same] = r[same].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN under 3 points or for a constant side."""
    if len(x) < 3:
        return float("nan")
    a, b = _ranks(x), _ranks(y)
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")
