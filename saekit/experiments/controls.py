"""Random controls of matched statistics: features like the targets, or random unit directions."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from saekit.experiments.spec import ExperimentError


def matched_features(stats: dict[int, tuple[float, float]], targets: Sequence[int], n_draws: int,
                     generator: torch.Generator, pool: int = 10) -> list[list[int]]:
    """`n_draws` sets of random features, each feature drawn from the `pool` features closest to its
    target in (log max activation, log firing rate), never a target nor used twice."""
    eps = 1e-6
    feats = torch.tensor(sorted(stats), dtype=torch.long)
    if len(feats) == 0:
        raise ExperimentError("matched controls need feature statistics in the database (`saekit rank --sae`)")
    m = torch.tensor([stats[int(f)][0] for f in feats]).clamp_min(eps).log()
    r = torch.tensor([stats[int(f)][1] for f in feats]).clamp_min(eps).log()
    alive = torch.tensor([stats[int(f)][0] > 0 for f in feats])
    used = set(int(t) for t in targets)
    draws = []
    for _ in range(n_draws):
        chosen = []
        for t in targets:
            tm, tr = math.log(max(stats.get(int(t), (0, 0))[0], eps)), math.log(max(stats.get(int(t), (0, 0))[1], eps))
            dist = (m - tm).abs() + (r - tr).abs()
            free = torch.tensor([int(f) not in used for f in feats]) & alive
            if not free.any():
                raise ExperimentError("not enough active features left to draw matched controls from")
            dist = torch.where(free, dist, torch.inf)
            k = min(pool, int(free.sum()))
            nearest = dist.topk(k, largest=False).indices
            pick = int(feats[nearest[int(torch.randint(k, (1,), generator=generator))]])
            chosen.append(pick)
            used.add(pick)
        draws.append(chosen)
    return draws


def random_direction(d: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(d, generator=generator)
    return v / v.norm()


def control_direction(d: int, seed: int, k: int) -> torch.Tensor:
    """The k-th random unit direction of a spec (the same for every condition and task of one seed)."""
    return random_direction(d, torch.Generator().manual_seed(seed * 1000 + k))
