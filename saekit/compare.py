"""Compare two sides (two models, two layers, or two SAEs) ranked on one corpus, against a corpus-only baseline.

A side is a model's emotion vectors at a hook ("MODEL@HOOK", or "MODEL@LAYER" for blocks.LAYER.*)
or an SAE's per-emotion feature means (its sae_id), both read from the feature database. Both
sides are reduced to the emotions they share, then compared on: their probe accuracies (stored by
the ranking), the PCA variance of their emotion vectors, the representational similarity of
their emotion-by-emotion cosine matrices (Spearman over the upper triangles; a permutation
p-value from shuffling one side's emotion labels), the adjusted Rand index of their k-means
clusters, and valence and arousal correlations where ratings are stored.

Shared structure can come from the stories rather than the models, so a lexical baseline built
from the corpus alone runs beside them: TF-IDF of the train stories, each emotion's mean minus
the mean over emotions (the emotion vectors' centring), with its own cosine matrix, k-means
clusters and nearest-mean probe on the test split. The table gives each side's RSA and ARI with
the baseline, the pair's RSA, and the pair's partial Spearman controlling for the baseline: what
the two models share beyond what the words of the stories already share.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saekit import features as Fe
from saekit.corpus import NEUTRAL
from saekit.errors import SaekitError

DEFAULT_K = 10
"""k-means clusters when neither side's ranking stored its k (RankConfig.kmeans_k's default)."""

LEXICAL = "lexical TF-IDF"
LEXICAL_PROBE = "lexical_nearest_mean"
PAIRS = (("a", "b"), ("a", "baseline"), ("b", "baseline"))


class CompareError(SaekitError, ValueError):
    """A comparison cannot run on what it was given: the message lists what the database has."""


@dataclass(frozen=True)
class Side:
    """One resolved side: a model's vectors at a hook (sae_id None) or an SAE's feature means."""
    spec: str
    model_id: str
    hook: str
    sae_id: str | None
    corpora: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.sae_id if self.sae_id is not None else f"{self.model_id}@{self.hook}"

    @property
    def kind(self) -> str:
        return "sae" if self.sae_id is not None else "vectors"


@dataclass
class SideResult:
    label: str
    kind: str
    """"vectors" (a model's emotion vectors), "sae" (an SAE's per-emotion feature means) or "lexical"."""
    vectors_ED: torch.Tensor
    similarity_EE: np.ndarray
    clusters: list[int]
    explained_variance: list[float]
    probes: list[dict[str, Any]]
    ratings: dict[str, dict[str, Any]]
    model_id: str | None = None
    hook: str | None = None
    sae_id: str | None = None
    n_side_emotions: int = 0
    """Emotions the side has in all (the comparison uses the shared ones)."""

    def metrics(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "model_id": self.model_id, "hook": self.hook,
                "sae_id": self.sae_id, "dimensions": int(self.vectors_ED.shape[1]),
                "n_side_emotions": self.n_side_emotions, "explained_variance": self.explained_variance,
                "probes": self.probes, "ratings": self.ratings}


@dataclass
class Comparison:
    corpus_id: str
    emotions: list[str]
    k: int
    seed: int
    n_permutations: int
    sides: dict[str, SideResult]
    """"a", "b" and "baseline" (the lexical one)."""
    pairs: dict[str, dict[str, Any]]
    """"a~b", "a~baseline", "b~baseline": rsa, rsa_p, ari; "a~b | baseline": the partial Spearman."""
    order: list[int]
    """Emotion order of the figure's heatmaps: side A's average-linkage leaves."""
    ratings_source: str
    comparison_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """Everything but the matrices: what the comparisons table stores."""
        return {"corpus_id": self.corpus_id, "emotions": self.emotions, "k": self.k, "seed": self.seed,
                "n_permutations": self.n_permutations, "ratings_source": self.ratings_source,
                "sides": {k: s.metrics() for k, s in self.sides.items()}, "pairs": self.pairs, "notes": self.notes}

    def to_json(self) -> dict[str, Any]:
        """The metrics with each side's cosine matrix and clusters (emotions order), as compare.json holds them."""
        out = self.metrics()
        out["comparison_id"] = self.comparison_id
        out["order"] = [self.emotions[i] for i in self.order]
        out["similarity"] = {k: np.round(s.similarity_EE, 5).tolist() for k, s in self.sides.items()}
        out["clusters"] = {k: dict(zip(self.emotions, s.clusters)) for k, s in self.sides.items()}
        return out


# ---------------------------------------------------------------------------- statistics


def adjusted_rand(a: list[int], b: list[int]) -> float:
    """Adjusted Rand index of two labellings of the same items (Hubert & Arabie 1985): 1 for the same
    partition whatever the label names, about 0 for unrelated ones; 1 when both put everything in one
    cluster (or each item alone), the convention that makes identical partitions score 1."""
    if len(a) != len(b):
        raise CompareError(f"adjusted_rand: {len(a)} labels against {len(b)}")
    _, ia = np.unique(np.asarray(a), return_inverse=True)
    _, ib = np.unique(np.asarray(b), return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)
    pairs = lambda n: n * (n - 1) / 2  # noqa: E731
    index = pairs(table).sum()
    rows, cols, total = pairs(table.sum(1)).sum(), pairs(table.sum(0)).sum(), pairs(len(a))
    expected = rows * cols / total if total else 0.0
    top = (rows + cols) / 2
    if top == expected:
        return 1.0
    return float((index - expected) / (top - expected))


def tfidf(train: list[str], other: list[str]):
    """(train [N, V], other [M, V], vocabulary) TF-IDF as scipy CSR: lower-cased word counts times the
    smoothed idf ln((1 + N) / (1 + df)) + 1 of the train texts, each row scaled to unit length."""
    from scipy import sparse

    word = re.compile(r"[a-z0-9']+")
    docs = [word.findall(t.lower()) for t in train]
    vocab = {w: i for i, w in enumerate(sorted({w for d in docs for w in d}))}

    def counts(texts_tokens):
        rows, cols = [], []
        for r, toks in enumerate(texts_tokens):
            ids = [vocab[w] for w in toks if w in vocab]
            rows += [r] * len(ids)
            cols += ids
        return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts_tokens), len(vocab)))

    tr = counts(docs)
    df = np.asarray((tr > 0).sum(0)).ravel()
    idf = np.log((1 + len(docs)) / (1 + df)) + 1

    def weigh(x):
        x = x.multiply(idf[None, :]).tocsr()
        norm = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
        return sparse.diags(1 / np.where(norm > 0, norm, 1.0)) @ x

    return weigh(tr), weigh(counts([word.findall(t.lower()) for t in other])), sorted(vocab, key=vocab.__getitem__)


def _upper(m_EE: np.ndarray) -> np.ndarray:
    return m_EE[np.triu_indices(m_EE.shape[0], 1)]


def _rank_matrix(m_EE: np.ndarray) -> np.ndarray:
    """The matrix with its upper-triangle entries replaced by their ranks (ties averaged), mirrored."""
    from scipy.stats import rankdata

    E = m_EE.shape[0]
    iu = np.triu_indices(E, 1)
    out = np.zeros((E, E))
    out[iu] = rankdata(m_EE[iu])
    return out + out.T


def _corr_rows(x_PM: np.ndarray, y_M: np.ndarray) -> np.ndarray:
    """Pearson r of each row of x with y."""
    xc = x_PM - x_PM.mean(1, keepdims=True)
    yc = y_M - y_M.mean()
    den = np.sqrt((xc**2).sum(1) * (yc**2).sum())
    return np.where(den > 0, (xc @ yc) / np.where(den > 0, den, 1.0), np.nan)


def _partial(r_ab, r_ac, r_bc):
    return (r_ab - r_ac * r_bc) / np.sqrt(np.clip((1 - r_ac**2) * (1 - r_bc**2), 1e-12, None))


def rsa(a_EE: np.ndarray, b_EE: np.ndarray, n_permutations: int = 10000, seed: int = 0,
        control_EE: np.ndarray | None = None, chunk: int = 256) -> dict[str, float | None]:
    """Spearman rho between the upper triangles of two emotion-by-emotion matrices, with a one-sided
    permutation p-value (the emotion labels of `b` shuffled, rows and columns together: a Mantel test),
    (1 + perms with rho >= observed) / (1 + n). With `control_EE`, also the partial Spearman of a and b
    controlling for it, with the same permutations."""
    E = a_EE.shape[0]
    ra, rb = _upper(_rank_matrix(a_EE)), _rank_matrix(b_EE)
    iu, ju = np.triu_indices(E, 1)
    rho = float(_corr_rows(rb[iu, ju][None, :], ra)[0])
    out: dict[str, float | None] = {"rho": rho, "p_value": None}
    rc = _upper(_rank_matrix(control_EE)) if control_EE is not None else None
    if rc is not None:
        r_ac = float(_corr_rows(ra[None, :], rc)[0])
        r_bc = float(_corr_rows(rb[iu, ju][None, :], rc)[0])
        out["partial_rho"] = float(_partial(rho, r_ac, r_bc))
        out["partial_p_value"] = None
    if n_permutations <= 0:
        return out
    gen = np.random.default_rng(seed)
    hits = partial_hits = 0
    for start in range(0, n_permutations, chunk):
        n = min(chunk, n_permutations - start)
        perm_PE = np.argsort(gen.random((n, E)), axis=1)
        rb_PM = rb[perm_PE[:, iu], perm_PE[:, ju]]
        r_ab = _corr_rows(rb_PM, ra)
        hits += int((r_ab >= rho - 1e-12).sum())
        if rc is not None:
            p_ab = _partial(r_ab, r_ac, _corr_rows(rb_PM, rc))
            partial_hits += int((p_ab >= out["partial_rho"] - 1e-12).sum())  # type: ignore[operator]
    out["p_value"] = (1 + hits) / (1 + n_permutations)
    if rc is not None:
        out["partial_p_value"] = (1 + partial_hits) / (1 + n_permutations)
    return out


# ---------------------------------------------------------------------------- sides


def resolve_side(spec: str, vector_sources: list[tuple[str, str, str]],
                 sae_sources: list[tuple[str, str, str, str | None]]) -> Side:
    """A side from "MODEL@HOOK", "MODEL@LAYER" or an sae_id, checked against what the database holds."""
    saes: dict[str, tuple[str, str, list[str]]] = {}
    for sae_id, model_id, hook, corpus in sae_sources:
        saes.setdefault(sae_id, (model_id, hook, []))[2].extend([corpus] if corpus else [])
    if spec in saes:
        model_id, hook, corpora = saes[spec]
        if not corpora:
            raise CompareError(f"SAE {spec!r} has no feature statistics on any corpus; rank it (saekit rank --sae)")
        return Side(spec, model_id, hook, spec, tuple(sorted(corpora)))
    hooks: dict[str, dict[str, list[str]]] = {}
    for model_id, hook, corpus in vector_sources:
        hooks.setdefault(model_id, {}).setdefault(hook, []).append(corpus)
    have = _available(vector_sources, saes)
    if "@" not in spec:
        raise CompareError(f"side {spec!r} is neither MODEL@HOOK nor a known sae_id; {have}")
    model_id, hook = spec.rsplit("@", 1)
    if model_id not in hooks:
        raise CompareError(f"side {spec!r}: no emotion vectors of model {model_id!r}; {have}")
    if hook.isdigit():
        match = [h for h in hooks[model_id] if h.startswith(f"blocks.{hook}.")]
        if len(match) != 1:
            raise CompareError(f"side {spec!r}: layer {hook} matches {match or 'no hook'} of {model_id}; give the "
                               f"hook, one of {sorted(hooks[model_id])}")
        hook = match[0]
    if hook not in hooks[model_id]:
        raise CompareError(f"side {spec!r}: {model_id} has no emotion vectors at {hook!r}; its hooks: "
                           f"{sorted(hooks[model_id])}")
    return Side(spec, model_id, hook, None, tuple(sorted(hooks[model_id][hook])))


def _available(vector_sources, saes: dict) -> str:
    vec = sorted({f"{m}@{h}" for m, h, _ in vector_sources})
    return (f"the database has emotion vectors of {', '.join(vec) or 'nothing (run saekit rank)'}"
            f"{'; SAEs ' + ', '.join(sorted(saes)) if saes else ''}")


def choose_corpus(a: Side, b: Side, corpus_id: str | None) -> str:
    """The corpus both sides were ranked on: the one named, or the only one they share."""
    shared = sorted(set(a.corpora) & set(b.corpora))
    if corpus_id is not None:
        for s in (a, b):
            if corpus_id not in s.corpora:
                raise CompareError(f"side {s.spec!r} has no results on corpus {corpus_id!r}; its corpora: "
                                   f"{list(s.corpora)}")
        return corpus_id
    if not shared:
        raise CompareError(f"the sides were ranked on different corpora: {a.spec!r} on {list(a.corpora)}, "
                           f"{b.spec!r} on {list(b.corpora)}; compare sides of one corpus")
    if len(shared) > 1:
        raise CompareError(f"both sides have results on several corpora {shared}; choose one with --corpus")
    return shared[0]


def shared_emotions(a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str]) -> list[str]:
    shared = sorted(set(a) & set(b) - {NEUTRAL})
    if len(shared) < 3:
        raise CompareError(f"{labels[0]} and {labels[1]} share {len(shared)} emotions ({shared}); a comparison needs "
                           f"at least 3 (they have {sorted(a)} and {sorted(b)})")
    return shared


def _probe_ci(row: dict[str, Any], seed: int) -> dict[str, Any]:
    """A stored probe row with its 95% interval: stored, or bootstrapped from accuracy and n_test."""
    out = {k: row.get(k) for k in ("method", "accuracy", "chance", "n_test", "ci_lo", "ci_hi")}
    n = int(row.get("n_test") or 0)
    if out["ci_lo"] is None and n and out["accuracy"] is not None:
        out["ci_lo"], out["ci_hi"] = Fe.accuracy_interval(round(out["accuracy"] * n), n, seed=seed)
    return out


def geometry(vectors_ED: torch.Tensor, k: int, seed: int) -> tuple[np.ndarray, list[int], list[float]]:
    """(cosine matrix, k-means labels, PC1..PC5 variance shares): the ranking's own functions."""
    _, ratio = Fe.pca(vectors_ED, n=min(5, vectors_ED.shape[0]))
    return (Fe.cosine_matrix(vectors_ED, vectors_ED).double().numpy(), Fe.kmeans(vectors_ED, k, seed=seed),
            [round(float(r), 4) for r in ratio])


def summarise_ratings(rows: list[dict[str, Any]], source: str) -> dict[str, dict[str, Any]]:
    """Per target: the leave-one-out decoding's r (with CI) and the best-aligned PC's r."""
    out = {}
    for target in ("valence", "arousal"):
        pcs = [r for r in rows if r["target"] == target and r["predictor"].startswith("PC") and _finite(r["r"])]
        loo = [r for r in rows if r["target"] == target and r["predictor"] == "loo_ridge"]
        if not pcs and not loo:
            continue
        best = max(pcs, key=lambda r: abs(r["r"])) if pcs else None
        out[target] = {"loo_r": loo[0]["r"] if loo else None, "loo_ci": [loo[0]["ci_lo"], loo[0]["ci_hi"]] if loo
                       else None, "best_pc": best["predictor"] if best else None, "best_pc_r": best["r"] if best
                       else None, "n": (loo or pcs)[0]["n"], "source": source}
    return out


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


# ---------------------------------------------------------------------------- the lexical baseline


def lexical_baseline(stories: list[tuple[str, str, str | None]], emotions: list[str], corpus_id: str,
                     seed: int) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """(TF-IDF emotion vectors [E, V], nearest-mean probe row on the test split or None without test stories)."""
    train = [(e, t) for e, s, t in stories if s == "train" and e in emotions]
    test = [(e, t) for e, s, t in stories if s == "test" and e in emotions]
    if any(t is None for _, t in train + test) or not train:
        raise CompareError(f"the database has no story texts of corpus {corpus_id!r} for the shared emotions (the "
                           "lexical baseline needs them); rerun `saekit rank` where the corpus can be read")
    missing = sorted(set(emotions) - {e for e, _ in train})
    if missing:
        raise CompareError(f"corpus {corpus_id!r} has no train stories of {missing} in the database")
    from scipy import sparse

    X_train, X_test, _ = tfidf([t or "" for _, t in train], [t or "" for _, t in test])
    idx = {e: i for i, e in enumerate(emotions)}

    y = np.array([idx[e] for e, _ in train])
    onehot = sparse.csr_matrix((np.ones(len(y)), (y, np.arange(len(y)))), shape=(len(emotions), len(y)))
    means_EV = torch.from_numpy(np.asarray((onehot @ X_train).todense()) / np.bincount(y)[:, None])
    vectors, _ = Fe.emotion_vectors(means_EV, emotions, emotions)   # each mean minus the mean over emotions
    if not test:
        return vectors, None
    unit = (vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)).double().numpy()
    centre = np.asarray(X_train.mean(0)).ravel()                      # the train stories' mean, as the vector probe
    scores_NE = torch.from_numpy(X_test @ unit.T - centre @ unit.T)
    # projecting the scores on the identity takes their argmax: the vector probe's rule and scoring
    probe = Fe.projection_probe(torch.eye(len(emotions)), scores_NE, [e for e, _ in test], emotions,
                                [e for e, _ in train])
    return vectors, _probe_ci({"method": LEXICAL_PROBE, "accuracy": probe.accuracy, "chance": probe.chance,
                               "n_test": probe.n_test, "ci_lo": None, "ci_hi": None}, seed)


# ---------------------------------------------------------------------------- the comparison


def compare(db_path: str | Path | None, a: str, b: str, corpus_id: str | None = None, n_permutations: int = 10000,
            seed: int = 0, record: bool = True) -> Comparison:
    """Compare side `a` with side `b` on one corpus (see the module docstring); stored in `comparisons`
    unless `record` is False."""
    from saekit.db import Database, check_database_path
    from saekit.db import compare as Q

    if n_permutations < 0:
        raise CompareError(f"n_permutations must be >= 0, got {n_permutations}")
    db_path = check_database_path(db_path, must_exist=True)   # comparing needs rankings: never a new empty file
    with Database(db_path, read_only=not record) as db:
        vec_src, sae_src = Q.vector_sources(db), Q.sae_sources(db)
        sa, sb = resolve_side(a, vec_src, sae_src), resolve_side(b, vec_src, sae_src)
        corpus = choose_corpus(sa, sb, corpus_id)
        raw = {key: _read_side(db, s, corpus) for key, s in (("a", sa), ("b", sb))}
        emotions = shared_emotions(raw["a"], raw["b"], (sa.label, sb.label))
        ks = [k for s in (sa, sb) if s.sae_id is None and (k := Q.kmeans_k(db, s.model_id, corpus, s.hook))]
        k = max(2, min(min(ks) if ks else DEFAULT_K, len(emotions) - 1))
        lex_vectors, lex_probe = lexical_baseline(Q.stories(db, corpus), emotions, corpus, seed)
        rated = {e: r for e, r in Q.ratings(db).items() if e in emotions}
        ratings_source = "emotions table, shared emotions" if len(rated) >= 4 else "stored per side"
        sides = {}
        for key, s in (("a", sa), ("b", sb)):
            vecs = torch.tensor([raw[key][e] for e in emotions], dtype=torch.float32)
            if s.sae_id is None:
                stored_probes = Q.probes(db, corpus, model_id=s.model_id, hook=s.hook)
                stored_ratings = Q.rating_rows(db, s.model_id, corpus, s.hook)
            else:
                vecs, _ = Fe.emotion_vectors(vecs, emotions, emotions)   # feature means minus their mean
                stored_probes, stored_ratings = Q.probes(db, corpus, sae_id=s.sae_id), []
            sides[key] = _side_result(s.label, s.kind, vecs, k, seed, [_probe_ci(p, seed) for p in stored_probes],
                                      _ratings(vecs, emotions, rated, stored_ratings), model_id=s.model_id,
                                      hook=s.hook, sae_id=s.sae_id, n_side_emotions=len(raw[key]))
        sides["baseline"] = _side_result(LEXICAL, "lexical", lex_vectors, k, seed, [lex_probe] if lex_probe else [],
                                         _ratings(lex_vectors, emotions, rated, []), n_side_emotions=len(emotions))
        pairs = _pairs(sides, n_permutations, seed)
        order = _leaf_order(sides["a"].vectors_ED)
        notes = _notes(sa, sb, sides, emotions)
        result = Comparison(corpus, emotions, k, seed, n_permutations, sides, pairs, order,
                            ratings_source if rated or any(s.ratings for s in sides.values()) else "none", notes=notes)
        if record:
            result.comparison_id = Q.record_comparison(
                db, {"a": a, "b": b, "corpus_id": corpus, "n_permutations": n_permutations, "seed": seed},
                {"side_a": sa.label, "side_b": sb.label, "corpus_id": corpus, "n_emotions": len(emotions), "k": k,
                 "metrics": result.metrics(), "seed": seed, "n_permutations": n_permutations})
    return result


def _read_side(db, side: Side, corpus: str) -> dict[str, list[float]]:
    from saekit.db import compare as Q

    if side.sae_id is not None:
        return Q.sae_emotion_means(db, side.sae_id, corpus)
    return Q.emotion_vectors(db, side.model_id, corpus, side.hook)


def _side_result(label, kind, vecs, k, seed, probes, ratings, **ids) -> SideResult:
    sim, clusters, variance = geometry(vecs, k, seed)
    return SideResult(label, kind, vecs, sim, clusters, variance, probes, ratings, **ids)


def _ratings(vecs: torch.Tensor, emotions: list[str], rated: dict[str, tuple[float, float]],
             stored: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Computed on the shared emotions when the emotions table rates at least 4 of them (the same
    function the ranking uses, so every side and the baseline are scored alike), else the side's stored rows."""
    if len(rated) >= 4:
        idx = [i for i, e in enumerate(emotions) if e in rated]
        targets = {t: torch.tensor([rated[emotions[i]][j] for i in idx]) for j, t in enumerate(("valence", "arousal"))}
        return summarise_ratings(Fe.rating_geometry(vecs, idx, targets), "computed")
    return summarise_ratings(stored, "stored")


def _pairs(sides: dict[str, SideResult], n_permutations: int, seed: int) -> dict[str, dict[str, Any]]:
    pairs: dict[str, dict[str, Any]] = {}
    for x, y in PAIRS:
        control = sides["baseline"].similarity_EE if (x, y) == ("a", "b") else None
        r = rsa(sides[x].similarity_EE, sides[y].similarity_EE, n_permutations, seed, control_EE=control)
        pairs[f"{x}~{y}"] = {"rsa": r["rho"], "rsa_p": r["p_value"],
                             "ari": adjusted_rand(sides[x].clusters, sides[y].clusters)}
        if control is not None:
            pairs["a~b | baseline"] = {"rsa": r["partial_rho"], "rsa_p": r["partial_p_value"]}
    return pairs


def _leaf_order(vectors_ED: torch.Tensor) -> list[int]:
    from scipy.cluster.hierarchy import leaves_list

    return [int(i) for i in leaves_list(Fe.hierarchical(vectors_ED))]


def _notes(sa: Side, sb: Side, sides: dict[str, SideResult], emotions: list[str]) -> list[str]:
    notes = []
    for s, r in ((sa, sides["a"]), (sb, sides["b"])):
        if r.n_side_emotions > len(emotions):
            notes.append(f"{s.label} has {r.n_side_emotions} emotions; {len(emotions)} shared are compared (its "
                         "stored probes were scored on all of its own)")
        if s.sae_id is not None:
            notes.append(f"{s.label} is an SAE: its emotion 'vectors' are the per-emotion mean feature activations "
                         "minus their mean over emotions")
    if not any(r.ratings for r in sides.values()):
        notes.append("no valence/arousal ratings in the database (saekit rank --ratings FILE)")
    if sa.label == sb.label:
        notes.append("both sides are the same: RSA and ARI are 1 by construction")
    return notes
