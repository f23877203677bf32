"""Feature selectivity at full scale: 16,384 features x 30 emotions x 1,000 stories.

saekit.features.selectivity (ranks once, then one matrix product for all emotions) against a
named baseline run in the same process on the same data: scipy.stats.mannwhitneyu vectorised
over features (axis=0), called once per emotion, plus scipy's Benjamini-Hochberg. Both compute
AUROC (U / n1 n2) and tie-corrected asymptotic p-values; the script checks they agree.

    python benchmarks/rank_speed.py [--features 16384] [--emotions 30] [--stories 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import stats

from saekit.features import selectivity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--emotions", type=int, default=30)
    ap.add_argument("--stories", type=int, default=1000)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(args.stories, args.features, generator=g) - 1.0)  # sparse, with ties at 0
    emotions = [f"e{i}" for i in range(args.emotions)]
    labels = [emotions[i % args.emotions] for i in range(args.stories)]

    t = time.perf_counter()
    sel = selectivity(x, labels, emotions)
    ours = time.perf_counter() - t

    t = time.perf_counter()
    xn, y = x.numpy(), np.array(labels)
    auroc, pvals = [], []
    for e in emotions:
        res = stats.mannwhitneyu(xn[y == e], xn[y != e], axis=0, method="asymptotic", use_continuity=False)
        auroc.append(res.statistic / ((y == e).sum() * (y != e).sum()))
        pvals.append(res.pvalue)
    p = np.array(pvals)
    q = stats.false_discovery_control(p.ravel(), method="bh").reshape(p.shape)  # over all pairs
    base = time.perf_counter() - t

    assert np.allclose(sel.auroc.numpy(), np.array(auroc), atol=1e-5)
    assert np.allclose(sel.q_value.numpy(), q, rtol=1e-4, atol=1e-10)
    print(f"{args.features} features x {args.emotions} emotions x {args.stories} stories, "
          f"{torch.get_num_threads()} threads (results agree)")
    print(f"  saekit selectivity (AUROC, p, BH q, d, rates, ranks) {ours:7.2f} s")
    print(f"  scipy mannwhitneyu per emotion + BH (AUROC, p, q)    {base:7.2f} s")
    print(f"speed-up vs scipy: {base / ours:.1f}x")


if __name__ == "__main__":
    main()
