"""Selectivity of features for emotions, probes, emotion vectors and their geometry.

Everything here works on plain tensors: pooled per-story feature activations [N, F] (SAE
latents, or any other features) and labels. Statistics are computed for all features x emotions
at once with matrix products, so 16k features x 30 emotions x 1,000 stories take seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from saekit.errors import SaekitError


class SelectivityError(SaekitError, ValueError):
    """The labels cannot be ranked against: an emotion asked for has no stories."""


# ---------------------------------------------------------------------------- selectivity


def average_ranks(x_NF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column ranks (1-based, ties averaged) [N, F] and per-column tie term sum(t^3 - t) [F].

    Works feature-major (contiguous rows) with tie groups found by a cumulative sum and sized by
    one bincount, so 16k features x 1,000 stories take about a second.
    """
    N, F = x_NF.shape
    vals_FN, order_FN = torch.sort(x_NF.T.contiguous(), dim=1)
    new_group = torch.ones_like(vals_FN, dtype=torch.long)
    new_group[:, 1:] = (vals_FN[:, 1:] != vals_FN[:, :-1]).long()
    group_FN = new_group.cumsum(1) - 1                                       # 0-based group id per row
    flat = group_FN + torch.arange(F, device=x_NF.device).unsqueeze(1) * N
    size_FG = torch.bincount(flat.flatten(), minlength=F * N).view(F, N).to(torch.float64)
    start_FG = size_FG.cumsum(1) - size_FG                                   # first 0-based position
    avg_FG = start_FG + (size_FG + 1) / 2                                    # mean 1-based rank of the group
    ranks_FN = torch.empty((F, N), dtype=torch.float64, device=x_NF.device)
    ranks_FN.scatter_(1, order_FN, avg_FG.gather(1, group_FN))
    ties_F = (size_FG**3 - size_FG).sum(1)
    return ranks_FN.T, ties_F


def benjamini_hochberg(p: torch.Tensor) -> torch.Tensor:
    """BH-adjusted q-values over all entries of p (any shape)."""
    flat = p.flatten().to(torch.float64)
    m = flat.numel()
    order = torch.argsort(flat)
    scaled = flat[order] * m / torch.arange(1, m + 1, dtype=torch.float64, device=p.device)
    q_sorted = torch.flip(torch.cummin(torch.flip(scaled, [0]), 0).values, [0]).clamp(max=1.0)
    q = torch.empty_like(flat)
    q[order] = q_sorted
    return q.view_as(p)


@dataclass
class Selectivity:
    """Feature x emotion statistics, each [E, F], for the emotions in `emotions` order."""
    emotions: list[str]
    n_in: torch.Tensor          # [E]
    mean_in: torch.Tensor
    mean_out: torch.Tensor
    cohens_d: torch.Tensor
    auroc: torch.Tensor
    rate_in: torch.Tensor
    rate_out: torch.Tensor
    p_value: torch.Tensor
    q_value: torch.Tensor
    rank: torch.Tensor          # 1 = most selective feature for that emotion

    def top(self, emotion: str, n: int = 10) -> list[int]:
        e = self.emotions.index(emotion)
        return torch.argsort(self.rank[e])[:n].tolist()


def selectivity(acts_NF: torch.Tensor, labels: list[str], emotions: list[str] | None = None,
                fire_threshold: float = 0.0) -> Selectivity:
    """One-vs-rest statistics of every feature for every emotion.

    Mann-Whitney U with tie correction gives AUROC and a two-sided p-value (normal approximation);
    q-values are Benjamini-Hochberg over all feature x emotion pairs. Ranks order features by
    AUROC, then Cohen's d.
    """
    emotions = emotions or sorted(set(labels))
    missing = set(emotions) - set(labels)
    if missing:
        raise SelectivityError(f"no stories labelled {sorted(missing)}")
    x = acts_NF.to(torch.float64)
    N = x.shape[0]
    Y_NE = torch.tensor([[lab == e for e in emotions] for lab in labels], dtype=torch.float64, device=x.device)
    n1 = Y_NE.sum(0)                                   # [E]
    n2 = N - n1
    s1 = Y_NE.T @ x                                    # [E, F]
    total = x.sum(0, keepdim=True)
    mean_in = s1 / n1[:, None]
    mean_out = (total - s1) / n2[:, None]
    sq_in = Y_NE.T @ (x * x)
    sq_out = (x * x).sum(0, keepdim=True) - sq_in
    var_in = ((sq_in - n1[:, None] * mean_in**2) / (n1[:, None] - 1).clamp(min=1)).clamp(min=0)
    var_out = ((sq_out - n2[:, None] * mean_out**2) / (n2[:, None] - 1).clamp(min=1)).clamp(min=0)
    pooled = (((n1[:, None] - 1) * var_in + (n2[:, None] - 1) * var_out) / (N - 2)).sqrt()
    d = torch.where(pooled > 0, (mean_in - mean_out) / pooled.clamp(min=1e-12), torch.zeros_like(pooled))
    fired = (x > fire_threshold).to(torch.float64)
    f_in = Y_NE.T @ fired
    rate_in = f_in / n1[:, None]
    rate_out = (fired.sum(0, keepdim=True) - f_in) / n2[:, None]

    ranks, ties = average_ranks(x)
    u = Y_NE.T @ ranks - (n1 * (n1 + 1) / 2)[:, None]  # [E, F]
    auroc = u / (n1 * n2)[:, None]
    mu = (n1 * n2 / 2)[:, None]
    sigma2 = (n1 * n2)[:, None] / 12 * ((N + 1) - ties[None, :] / (N * (N - 1)))
    sigma = sigma2.clamp(min=0).sqrt()
    z = torch.where(sigma > 0, (u - mu) / sigma.clamp(min=1e-12), torch.zeros_like(u))
    p = torch.erfc(z.abs() / math.sqrt(2))
    q = benjamini_hochberg(p)
    # rank by AUROC, ties broken by d: sort on a combined key
    key = auroc + 1e-9 * torch.tanh(d)
    order = torch.argsort(key, dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(1, x.shape[1] + 1, device=x.device).expand_as(order).contiguous())
    f32 = lambda t: t.to(torch.float32)  # noqa: E731
    return Selectivity(emotions, n1.long(), f32(mean_in), f32(mean_out), f32(d), f32(auroc), f32(rate_in),
                       f32(rate_out), p, q, rank)


# ---------------------------------------------------------------------------- probes


@dataclass
class ProbeResult:
    accuracy: float
    chance: float
    majority: float
    precision: dict[str, float]
    recall: dict[str, float]
    confusion: list[list[int]]   # rows: true emotion, columns: predicted
    emotions: list[str]
    n_test: int


def _score(pred: torch.Tensor, truth: torch.Tensor, emotions: list[str], train_truth: torch.Tensor) -> ProbeResult:
    E = len(emotions)
    conf = torch.zeros((E, E), dtype=torch.long)
    conf.index_put_((truth, pred), torch.ones_like(truth), accumulate=True)
    tp = conf.diag().double()
    precision = tp / conf.sum(0).double().clamp(min=1)
    recall = tp / conf.sum(1).double().clamp(min=1)
    majority_class = torch.bincount(train_truth, minlength=E).argmax()
    return ProbeResult(
        accuracy=float((pred == truth).double().mean()), chance=1 / E,
        majority=float((truth == majority_class).double().mean()),
        precision={e: round(float(precision[i]), 4) for i, e in enumerate(emotions)},
        recall={e: round(float(recall[i]), 4) for i, e in enumerate(emotions)},
        confusion=conf.tolist(), emotions=emotions, n_test=int(truth.numel()))


def logistic_probe(train_X: torch.Tensor, train_y: list[str], test_X: torch.Tensor, test_y: list[str],
                   emotions: list[str], l2: float = 1e-2, steps: int = 200, seed: int = 0) -> ProbeResult:
    """Multinomial logistic regression on standardised inputs (L-BFGS), scored on the test split."""
    torch.manual_seed(seed)
    mu, sd = train_X.mean(0), train_X.std(0).clamp(min=1e-6)
    xtr, xte = ((train_X - mu) / sd).float(), ((test_X - mu) / sd).float()
    ytr = torch.tensor([emotions.index(y) for y in train_y])
    yte = torch.tensor([emotions.index(y) for y in test_y])
    W = torch.zeros((xtr.shape[1], len(emotions)), requires_grad=True)
    b = torch.zeros(len(emotions), requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ W + b, ytr) + l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xte @ W + b).argmax(1)
    return _score(pred, yte, emotions, ytr)


def projection_probe(vectors_ED: torch.Tensor, test_X: torch.Tensor, test_y: list[str], emotions: list[str],
                     train_y: list[str]) -> ProbeResult:
    """The paper's probe: predict the emotion whose unit vector has the largest projection."""
    unit = vectors_ED / vectors_ED.norm(dim=1, keepdim=True).clamp(min=1e-12)
    pred = (test_X.float() @ unit.T.float()).argmax(1)
    yte = torch.tensor([emotions.index(y) for y in test_y])
    ytr = torch.tensor([emotions.index(y) for y in train_y])
    return _score(pred, yte, emotions, ytr)


# ---------------------------------------------------------------------------- emotion vectors


def neutral_components(neutral_ND: torch.Tensor, variance: float = 0.5) -> torch.Tensor:
    """Top principal directions [k, D] of neutral activations explaining `variance` of their variance."""
    x = neutral_ND.double() - neutral_ND.double().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    explained = (s**2).cumsum(0) / (s**2).sum()
    k = int((explained < variance).sum()) + 1
    return vh[:k].float()


def emotion_vectors(pooled_ND: torch.Tensor, labels: list[str], emotions: list[str],
                    neutral_ND: torch.Tensor | None = None, variance: float = 0.5) -> tuple[torch.Tensor, int]:
    """The paper's emotion vectors [E, D]: each emotion's mean minus the mean over emotions, with the
    neutral principal components that explain `variance` projected out. Returns (vectors, k removed)."""
    means = torch.stack([pooled_ND[[i for i, lab in enumerate(labels) if lab == e]].double().mean(0) for e in emotions])
    vecs = means - means.mean(0, keepdim=True)
    k = 0
    if neutral_ND is not None and neutral_ND.shape[0] > 1:
        U = neutral_components(neutral_ND, variance).double()   # [k, D]
        k = U.shape[0]
        vecs = vecs - (vecs @ U.T) @ U
    return vecs.float(), k


def cosine_matrix(a_AD: torch.Tensor, b_BD: torch.Tensor) -> torch.Tensor:
    a = a_AD / a_AD.norm(dim=1, keepdim=True).clamp(min=1e-12)
    b = b_BD / b_BD.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return a.float() @ b.float().T


# ---------------------------------------------------------------------------- geometry


def pca(x_ED: torch.Tensor, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [E, n], explained variance ratio [n]) of centred rows."""
    x = x_ED.double() - x_ED.double().mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    ratio = s**2 / (s**2).sum()
    return (u[:, :n] * s[:n]).float(), ratio[:n].float()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


def kmeans(x_ED: torch.Tensor, k: int, seed: int = 0, restarts: int = 20) -> list[int]:
    """Cluster labels from scipy's k-means++ (best of several seeded restarts)."""
    import numpy as np
    from scipy.cluster.vq import kmeans2

    data = x_ED.double().numpy()
    best, best_inertia = None, np.inf
    for r in range(restarts):
        centroids, labels = kmeans2(data, k, minit="++", seed=seed + r)
        inertia = float(((data - centroids[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    assert best is not None  # restarts >= 1
    return [int(v) for v in best]


def hierarchical(x_ED: torch.Tensor):
    """Average-linkage tree on cosine distance (scipy linkage matrix) for a dendrogram."""
    from scipy.cluster.hierarchy import linkage

    return linkage(x_ED.double().numpy(), method="average", metric="cosine")


# ---------------------------------------------------------------------------- intervals and human ratings


def accuracy_interval(n_correct: int, n: int, level: float = 0.95, n_boot: int = 2000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy (items resampled with replacement); NaNs for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    gen = torch.Generator().manual_seed(seed)
    correct_N = torch.zeros(n, dtype=torch.float64)
    correct_N[:n_correct] = 1.0
    draws_B = correct_N[torch.randint(0, n, (n_boot, n), generator=gen)].mean(1)
    tail = (1 - level) / 2
    lo, hi = torch.quantile(draws_B, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return lo, hi


def pearson_test(a: torch.Tensor, b: torch.Tensor, level: float = 0.95) -> tuple[float, float, float, float]:
    """(r, two-sided p, ci_lo, ci_hi): Pearson's r, its t-test p-value and Fisher-z interval.

    NaN where a side is constant, and for the interval below 4 points, rather than a number that
    means nothing.
    """
    import warnings

    from scipy.stats import pearsonr

    nan = float("nan")
    x, y = a.double().numpy(), b.double().numpy()
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return nan, nan, nan, nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pearsonr(x, y)
        ci = res.confidence_interval(level) if len(x) > 3 else None
    return float(res.statistic), float(res.pvalue), float(ci.low) if ci else nan, float(ci.high) if ci else nan


RIDGE_SCALES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Ridge strengths tried, as multiples of the mean squared norm of the centred rows."""


def _ridge(x_ND: torch.Tensor, y_N: torch.Tensor, scales=RIDGE_SCALES):
    """A ridge map fit on (x, y), its strength picked by the closed-form leave-one-out error; returns predict(x)."""
    mu, y_mean = x_ND.mean(0), y_N.mean()
    xc, yc = x_ND - mu, y_N - y_mean
    K_NN = xc @ xc.T
    n = len(y_N)
    base = float(K_NN.trace()) / n or 1.0
    eye = torch.eye(n, dtype=K_NN.dtype)
    best = None
    for s in scales:
        inv = torch.linalg.inv(K_NN + s * base * eye)
        hat_NN = K_NN @ inv + 1.0 / n                     # the intercept adds 1/n to every entry
        resid = (y_N - (y_mean + K_NN @ (inv @ yc))) / (1 - hat_NN.diag()).clamp(min=1e-12)
        err = float((resid**2).sum())
        if best is None or err < best[0]:
            best = (err, inv @ yc)
    assert best is not None  # the grid of strengths is never empty
    alpha = best[1]
    return lambda x_MD: y_mean + (x_MD - mu) @ xc.T @ alpha


def loo_ridge(x_ND: torch.Tensor, y_N: torch.Tensor) -> torch.Tensor:
    """Leave-one-out predictions [N] of y from the rows of x: each row's value from a ridge map fit on the
    others (its strength chosen inside that fold), so no row ever helps predict itself."""
    x, y = x_ND.double(), y_N.double()
    pred = torch.empty(len(y), dtype=torch.float64)
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        pred[i] = _ridge(x[keep], y[keep])(x[i:i + 1])[0]
    return pred


def rating_geometry(vecs_ED: torch.Tensor, rated: list[int], targets: dict[str, torch.Tensor],
                    n_pcs: int = 5) -> list[dict]:
    """How human ratings (e.g. valence, arousal) sit in the vectors' geometry, one row per target and predictor.

    Predictors: each of the first `n_pcs` principal components of all vectors (PCA over every
    emotion, correlated on the rated ones; at most E - 1, the rest carry no variance), and
    "loo_ridge", the leave-one-out ridge decoding of the rating from the rated vectors (its r with
    the truth and R^2), so a rating carried by a later PC, or by several, is still found.
    """
    E = vecs_ED.shape[0]
    scores, ratio = pca(vecs_ED, n=max(min(n_pcs, E - 1), 1))
    rows: list[dict] = []
    for name, y in targets.items():
        y = y.double()
        for j in range(scores.shape[1]):
            r, p, lo, hi = pearson_test(scores[rated, j], y)
            rows.append({"target": name, "predictor": f"PC{j + 1}", "r": r, "p_value": p, "ci_lo": lo, "ci_hi": hi,
                         "r2": None, "explained_variance": float(ratio[j]), "n": len(rated)})
        if len(rated) >= 4:
            pred = loo_ridge(vecs_ED[rated], y)
            r, p, lo, hi = pearson_test(pred, y)
            r2 = 1 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp(min=1e-12))
            rows.append({"target": name, "predictor": "loo_ridge", "r": r, "p_value": p, "ci_lo": lo, "ci_hi": hi,
                         "r2": r2, "explained_variance": None, "n": len(rated)})
    return rows
