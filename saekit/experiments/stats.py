"""The statistics of experiment reports: bootstrap intervals of a mean, and Spearman's rank correlation.

The bootstrap stays on torch's generator rather than scipy.stats.bootstrap, which resamples
differently: stored reports keep their intervals. Spearman's r is scipy's (the same value as the
former hand-written rank correlation, to 1e-15), with NaN below 3 points or for a constant side.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
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


# ---------------------------------------------------------------------------- Spearman: tests and intervals


def _avg_ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank) along the last axis."""
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def _row_corr(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair; NaN for a row that is constant on either side."""
    dx = rx - rx.mean(-1, keepdims=True)
    dy = ry - ry.mean(-1, keepdims=True)
    den = np.sqrt((dx * dx).sum(-1) * (dy * dy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dx * dy).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _strata(n: int, groups: Sequence | None) -> list[np.ndarray]:
    """Index arrays of each group (one group of everything when there are none)."""
    if groups is None:
        return [np.arange(n)]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} points")
    order: dict = {}
    for i, g in enumerate(groups):
        order.setdefault(g, []).append(i)
    return [np.asarray(v) for v in order.values()]


def spearman_permutation(x: Sequence[float], y: Sequence[float], n_perm: int = 10_000, seed: int = 0,
                         groups: Sequence | None = None) -> tuple[float, float, int, bool]:
    """(rho, two-sided p, permutations used, exact?) of Spearman's rho against shuffled x.

    Exact (every ordering of x, identity included) when there are no groups and n! <= n_perm;
    otherwise `n_perm` orderings from a generator seeded with `seed`, p = (1 + #{|rho*| >= |rho|}) /
    (1 + n_perm). With `groups`, x is shuffled only within each group (a stratified null: the
    groups' own levels are kept, only the order inside each is broken). NaN p where rho is NaN.
    """
    import itertools
    import math

    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rho = spearman(list(xa), list(ya))
    n = len(xa)
    if math.isnan(rho):
        return rho, float("nan"), 0, False
    ry = _avg_ranks(ya)
    tol = 1e-12
    if groups is None and math.factorial(n) <= n_perm:
        perms = np.asarray(list(itertools.permutations(range(n))))
        null = _row_corr(_avg_ranks(xa[perms]), ry[None, :])
        return rho, float((np.abs(null) >= abs(rho) - tol).mean()), len(perms), True
    g = torch.Generator().manual_seed(seed)
    idx = np.tile(np.arange(n), (n_perm, 1))
    for s in _strata(n, groups):
        shuffle = torch.argsort(torch.rand(n_perm, len(s), generator=g), dim=1).numpy()
        idx[:, s] = s[shuffle]
    null = _row_corr(_avg_ranks(xa[idx]), ry[None, :])
    hits = int((np.abs(null) >= abs(rho) - tol).sum())
    return rho, (1 + hits) / (1 + n_perm), n_perm, False


def spearman_bootstrap_ci(x: Sequence[float], y: Sequence[float], n_boot: int = 1000, alpha: float = 0.05,
                          seed: int = 0, groups: Sequence | None = None) -> tuple[float, float]:
    """(lower, upper): percentile bootstrap interval of Spearman's rho over resampled (x, y) pairs.

    Pairs are drawn with replacement (within each group when `groups` is given, so every group keeps
    its size); resamples with a constant side have no rho and are dropped. NaN when fewer than 3 points.
    """
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xa)
    if n < 3 or n_boot == 0:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    idx = np.empty((n_boot, n), dtype=np.int64)
    for s in _strata(n, groups):
        idx[:, s] = s[torch.randint(len(s), (n_boot, len(s)), generator=g).numpy()]
    rhos = _row_corr(_avg_ranks(xa[idx]), _avg_ranks(ya[idx]))
    rhos = rhos[np.isfinite(rhos)]
    if len(rhos) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(rhos, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def pearson_r(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Pearson correlation; NaN under 3 points or for a constant side."""
    a, b = torch.as_tensor(x, dtype=torch.float64).flatten(), torch.as_tensor(y, dtype=torch.float64).flatten()
    if len(a) < 3:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else float("nan")


def _pearson_rows(x_BN: torch.Tensor, y_BN: torch.Tensor) -> torch.Tensor:
    """Pearson r of each row pair [B, N] -> [B] (NaN where a row is constant)."""
    a, b = x_BN - x_BN.mean(1, keepdim=True), y_BN - y_BN.mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def _quantiles(values: torch.Tensor, alpha: float) -> tuple[float, float]:
    v = values[torch.isfinite(values)]
    if len(v) == 0:
        return float("nan"), float("nan")
    lo, hi = torch.quantile(v, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)).tolist()
    return lo, hi


def bootstrap_corr(x: Sequence[float], y: Sequence[float], n_boot: int = 1000, alpha: float = 0.05,
                   seed: int = 0) -> tuple[float, float, float]:
    """(r, lower, upper): Pearson r and its percentile bootstrap interval, resampling the (x, y) pairs."""
    a, b = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    r = pearson_r(a, b)
    if r != r or n_boot == 0:
        return r, float("nan"), float("nan")
    idx = torch.randint(len(a), (n_boot, len(a)), generator=torch.Generator().manual_seed(seed))
    lo, hi = _quantiles(_pearson_rows(a[idx], b[idx]), alpha)
    return r, min(lo, r), max(hi, r)


def bootstrap_corr_diff(x1: Sequence[float], x2: Sequence[float], y: Sequence[float], n_boot: int = 1000,
                        alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """(r(x2, y) - r(x1, y), lower, upper): the paired difference of two predictors' correlations with
    one outcome, both computed on the same resamples (so what the items share cancels)."""
    a, b, c = (torch.as_tensor(v, dtype=torch.float64) for v in (x1, x2, y))
    d = pearson_r(b, c) - pearson_r(a, c)
    if d != d or n_boot == 0:
        return d, float("nan"), float("nan")
    idx = torch.randint(len(c), (n_boot, len(c)), generator=torch.Generator().manual_seed(seed))
    lo, hi = _quantiles(_pearson_rows(b[idx], c[idx]) - _pearson_rows(a[idx], c[idx]), alpha)
    return d, min(lo, d), max(hi, d)
