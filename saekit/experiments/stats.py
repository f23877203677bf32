"""The statistics of experiment reports: bootstrap intervals of a mean, and Spearman's rank correlation.

The bootstrap stays on torch's generator rather than scipy.stats.bootstrap, which resamples
differently: stored reports keep their intervals. Spearman's r is scipy's (the same value as the
former hand-written rank correlation, to 1e-15), with NaN below 3 points or for a constant side.
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


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN under 3 points or for a constant side."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)
