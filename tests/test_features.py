import numpy as np
import pytest
import torch
from scipy import stats

from saekit import features as Fe


def planted(seed=0, n_per=20, emotions=("calm", "afraid", "sad"), F=50, planted_feature=7):
    g = torch.Generator().manual_seed(seed)
    labels = [e for e in emotions for _ in range(n_per)]
    x = torch.relu(torch.randn(len(labels), F, generator=g) - 0.5)  # sparse, many exact zeros (ties)
    for i, lab in enumerate(labels):
        if lab == "afraid":
            x[i, planted_feature] += 2.0
    return x, labels


def test_planted_feature_ranks_first_for_its_emotion():
    x, labels = planted()
    sel = Fe.selectivity(x, labels)
    assert sel.top("afraid", 1) == [7]
    e = sel.emotions.index("afraid")
    assert sel.auroc[e, 7] == 1.0 and sel.q_value[e, 7] < 1e-6 and sel.cohens_d[e, 7] > 2
    assert sel.rate_in[e, 7] == 1.0
    assert sorted(sel.rank[e].tolist()) == list(range(1, 51))


def test_auroc_and_p_values_match_scipy_mann_whitney_with_ties():
    x, labels = planted(seed=3)
    sel = Fe.selectivity(x, labels)
    e = sel.emotions.index("sad")
    y = np.array([lab == "sad" for lab in labels])
    for f in (0, 7, 13, 42):
        col = x[:, f].numpy()
        res = stats.mannwhitneyu(col[y], col[~y], alternative="two-sided", method="asymptotic", use_continuity=False)
        assert sel.auroc[e, f].item() == pytest.approx(res.statistic / (y.sum() * (~y).sum()), abs=1e-6)
        assert sel.p_value[e, f].item() == pytest.approx(res.pvalue, rel=1e-5, abs=1e-12)
        d_ref = (col[y].mean() - col[~y].mean()) / np.sqrt(
            ((y.sum() - 1) * col[y].var(ddof=1) + ((~y).sum() - 1) * col[~y].var(ddof=1)) / (len(y) - 2))
        assert sel.cohens_d[e, f].item() == pytest.approx(d_ref, rel=1e-4)


def test_benjamini_hochberg_matches_scipy():
    p = torch.rand(200, generator=torch.Generator().manual_seed(1)) ** 3
    ref = stats.false_discovery_control(p.numpy(), method="bh")
    np.testing.assert_allclose(Fe.benjamini_hochberg(p).numpy(), ref, rtol=1e-6)


def test_unknown_emotion_is_an_error():
    x, labels = planted()
    with pytest.raises(ValueError, match="no stories labelled"):
        Fe.selectivity(x, labels, emotions=["calm", "joyful"])


def test_emotion_vectors_project_out_neutral_directions():
    g = torch.Generator().manual_seed(0)
    D = 16
    nuisance = torch.zeros(D)
    nuisance[0] = 1.0
    neutral = torch.randn(40, D, generator=g) * 0.1 + torch.randn(40, 1, generator=g) * 5 * nuisance
    x = torch.randn(60, D, generator=g)
    labels = ["a"] * 30 + ["b"] * 30
    x[:30, 3] += 2
    x[:30, 0] += 4  # emotion a also moves along the nuisance direction
    vecs, k = Fe.emotion_vectors(x, labels, ["a", "b"], neutral_ND=neutral)
    assert k >= 1
    assert vecs[:, 0].abs().max() < 0.2 * vecs[:, 3].abs().max()
    raw, k0 = Fe.emotion_vectors(x, labels, ["a", "b"])
    assert k0 == 0 and raw[0, 0] > 1.5
    torch.testing.assert_close(raw.sum(0), torch.zeros(D), atol=1e-5, rtol=0)


def test_probes_separate_separable_classes_and_report_chance():
    g = torch.Generator().manual_seed(0)
    emotions = ["a", "b", "c"]
    centers = torch.randn(3, 8, generator=g) * 3
    def sample(n):
        y = [emotions[i % 3] for i in range(n)]
        return torch.stack([centers[emotions.index(e)] + torch.randn(8, generator=g) for e in y]), y
    xtr, ytr = sample(60)
    xte, yte = sample(30)
    res = Fe.logistic_probe(xtr, ytr, xte, yte, emotions)
    assert res.accuracy > 0.9 and res.chance == pytest.approx(1 / 3)
    assert sum(map(sum, res.confusion)) == 30
    vecs, _ = Fe.emotion_vectors(xtr, ytr, emotions)
    assert Fe.projection_probe(vecs, xte - xtr.mean(0), yte, emotions, ytr).accuracy > 0.8
    shuffled = Fe.logistic_probe(xtr, ytr[1:] + ytr[:1], xte, yte, emotions)
    assert shuffled.accuracy < 0.6


def test_geometry_helpers():
    x = torch.tensor([[1.0, 0, 0], [2, 0, 0], [0, 1, 0], [0, 2, 0]])
    scores, ratio = Fe.pca(x, 2)
    assert ratio.sum() == pytest.approx(1.0, abs=1e-6)
    assert Fe.pearson(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 4, 6.5])) > 0.99
    labels = Fe.kmeans(torch.tensor([[0.0, 0], [0, 0.1], [5, 5], [5, 5.1]]), 2)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    assert Fe.hierarchical(x + 0.1).shape == (3, 4)
