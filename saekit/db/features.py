"""Typed reads of a ranking's results: SAEs, feature statistics, emotion vectors and their stored geometry.

Rows come back as TypedDicts (plain dicts, so callers index them by column name) or small
dataclasses where a caller wants tensors' inputs together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypedDict

from saekit.db.connection import Database, fetch_dicts


class SaeRow(TypedDict, total=False):
    """A row of `saes` (analysis/SCHEMA.md): the SAE, where it reads, its quality and token rule."""
    sae_id: str
    model_id: str
    hook: str
    layer: int | None
    architecture: str
    d_in: int
    d_sae: int
    path: str
    explained_variance: float | None
    mean_l0: float | None
    dead_fraction: float | None
    dense_fraction: float | None
    ce_loss_recovered: float | None
    kl_divergence: float | None
    token_rule: str | None
    counted_tokens: int | None
    dropped_tokens: int | None


class FeatureStat(TypedDict, total=False):
    """Columns of `feature_emotion_stats` (a query returns the ones it selects)."""
    sae_id: str
    corpus_id: str
    emotion: str
    feature: int
    selectivity_rank: int
    auroc: float
    cohens_d: float
    q_value: float
    mean_in: float
    mean_out: float
    rate_in: float
    rate_out: float
    top_story_precision: float | None


@dataclass(frozen=True)
class EmotionVector:
    emotion: str
    vector: list[float]


SAE_ROWS = "SELECT s.*, r.token_rule FROM saes s LEFT JOIN runs r USING (run_id)"
"""An SAE's row with the token rule of the ranking that wrote it (stored on the run)."""


def saes(db: Database) -> list[SaeRow]:
    return fetch_dicts(db, f"{SAE_ROWS} ORDER BY sae_id")  # type: ignore[return-value]


def sae(db: Database, sae_id: str) -> SaeRow | None:
    rows = fetch_dicts(db, f"{SAE_ROWS} WHERE s.sae_id = ?", [sae_id])
    return rows[0] if rows else None  # type: ignore[return-value]


def top_stats(db: Database, sae_id: str, corpus_id: str, max_rank: int) -> list[FeatureStat]:
    """Every emotion's features of selectivity_rank <= max_rank, by emotion then rank."""
    return fetch_dicts(db, "SELECT emotion, feature, cohens_d, auroc, q_value, selectivity_rank FROM feature_emotion_stats "
                           "WHERE sae_id = ? AND corpus_id = ? AND selectivity_rank <= ? ORDER BY emotion, selectivity_rank",
                       [sae_id, corpus_id, max_rank])  # type: ignore[return-value]


def cohens_d(db: Database, sae_id: str, corpus_id: str, features: Sequence[int]) -> list[FeatureStat]:
    """Cohen's d of the given features for every emotion."""
    return fetch_dicts(db, "SELECT emotion, feature, cohens_d FROM feature_emotion_stats WHERE sae_id = ? "
                           "AND corpus_id = ? AND list_contains(?, feature)",
                       [sae_id, corpus_id, list(features)])  # type: ignore[return-value]


def top_story_precision(db: Database, sae_id: str, corpus_id: str, feature: int, emotion: str) -> float | None:
    return db.scalar("SELECT top_story_precision FROM feature_emotion_stats WHERE sae_id = ? AND corpus_id = ? "
                     "AND feature = ? AND emotion = ?", [sae_id, corpus_id, feature, emotion])


def feature_lens(db: Database, sae_id: str, feature: int) -> dict[str, Any] | None:
    """A feature's logit lens: promoted_tokens and promoted_logits (None when the feature has no row)."""
    rows = fetch_dicts(db, "SELECT promoted_tokens, promoted_logits FROM features WHERE sae_id = ? AND feature = ?",
                       [sae_id, feature])
    return rows[0] if rows else None


def outside_examples(db: Database, sae_id: str, feature: int) -> list[dict[str, Any]]:
    """A feature's top passages from outside text (held-out broad text), best first."""
    return fetch_dicts(db, "SELECT story_id, tokens, token_activations, activation FROM feature_examples "
                           "WHERE sae_id = ? AND feature = ? AND kind = 'outside' ORDER BY example_rank", [sae_id, feature])


def story_examples(db: Database, sae_id: str, corpus_id: str, feature: int) -> list[dict[str, Any]]:
    """A feature's story examples (story_id, emotion, tokens, token_activations, activation), best first."""
    return fetch_dicts(db, "SELECT story_id, emotion, tokens, token_activations, activation FROM feature_examples "
                           "WHERE sae_id = ? AND corpus_id = ? AND feature = ? AND kind = 'story' ORDER BY example_rank",
                       [sae_id, corpus_id, feature])


# ---------------------------------------------------------------------------- emotion vectors and geometry


def emotion_vectors(db: Database, model_id: str, corpus_id: str, hook: str) -> list[EmotionVector]:
    """The vectors at one hook, by emotion name: the order the geometry tables' node numbers follow."""
    rows = db.sql("SELECT emotion, vector FROM emotion_vectors WHERE model_id = ? AND corpus_id = ? AND hook = ? "
                  "ORDER BY emotion", [model_id, corpus_id, hook])
    return [EmotionVector(e, list(v)) for e, v in rows]


def similarity(db: Database, model_id: str, corpus_id: str, hook: str, emotions: Sequence[str]) -> list[list[float]]:
    """The stored cosine matrix in `emotions`' order (empty when the ranking stored none)."""
    cos = {(a, b): c for a, b, c in db.sql("SELECT emotion_a, emotion_b, cosine FROM emotion_similarity "
                                           "WHERE model_id = ? AND corpus_id = ? AND hook = ?",
                                           [model_id, corpus_id, hook])}
    if not cos:
        return []
    return [[cos[a, b] for b in emotions] for a in emotions]


def linkage(db: Database, model_id: str, corpus_id: str, hook: str) -> list[list[float]]:
    """The stored linkage, one [left_node, right_node, distance, size] per merge (SciPy's layout)."""
    return [list(r) for r in db.sql("SELECT left_node, right_node, distance, size FROM emotion_linkage "
                                    "WHERE model_id = ? AND corpus_id = ? AND hook = ? ORDER BY step",
                                    [model_id, corpus_id, hook])]


def clusters(db: Database, model_id: str, corpus_id: str, hook: str) -> dict[str, int]:
    """Each emotion's k-means cluster at a hook."""
    return dict(db.sql("SELECT emotion, cluster FROM emotion_clusters WHERE model_id = ? AND corpus_id = ? AND hook = ? "
                       "ORDER BY emotion", [model_id, corpus_id, hook]))


def all_emotion_vectors(db: Database) -> list[dict[str, Any]]:
    """Every stored vector with its scope, norm, neutral PCs removed and run (for exports)."""
    return fetch_dicts(db, "SELECT model_id, corpus_id, hook, emotion, norm, neutral_pcs, vector, run_id "
                           "FROM emotion_vectors ORDER BY model_id, corpus_id, hook, emotion")


# ---------------------------------------------------------------------------- features, by list (exports)


def ranked_emotions(db: Database, sae_id: str) -> list[str]:
    """The emotions an SAE's features were ranked for."""
    return [r[0] for r in db.sql("SELECT DISTINCT emotion FROM feature_emotion_stats WHERE sae_id = ? ORDER BY 1",
                                 [sae_id])]


def most_selective(db: Database, sae_id: str, max_rank: int, emotions: Sequence[str]) -> list[int]:
    """The features of selectivity_rank <= max_rank for any of `emotions`, by emotion then rank (repeats kept)."""
    return [r[0] for r in db.sql("SELECT feature FROM feature_emotion_stats WHERE sae_id = ? AND selectivity_rank <= ? "
                                 "AND list_contains(?, emotion) ORDER BY emotion, selectivity_rank",
                                 [sae_id, max_rank, list(emotions)])]


def feature_rows(db: Database, sae_id: str, features: Sequence[int]) -> list[dict[str, Any]]:
    """The `features` rows (every column) of the given features."""
    return fetch_dicts(db, "SELECT * FROM features WHERE sae_id = ? AND list_contains(?, feature)",
                       [sae_id, list(features)])


def example_rows(db: Database, sae_id: str, features: Sequence[int]) -> list[dict[str, Any]]:
    """The `feature_examples` rows of the given features: by feature, windows, stories, then outside passages, by rank."""
    return fetch_dicts(db, "SELECT * FROM feature_examples WHERE sae_id = ? AND list_contains(?, feature) "
                           "ORDER BY feature, kind DESC, example_rank", [sae_id, list(features)])


def stats_by_rank(db: Database, sae_id: str, features: Sequence[int]) -> list[FeatureStat]:
    """Every emotion's statistics of the given features, by feature then selectivity_rank."""
    return fetch_dicts(db, "SELECT feature, emotion, selectivity_rank, auroc, cohens_d, q_value "
                           "FROM feature_emotion_stats WHERE sae_id = ? AND list_contains(?, feature) "
                           "ORDER BY feature, selectivity_rank", [sae_id, list(features)])  # type: ignore[return-value]


def first_corpus(db: Database) -> tuple[str, int] | None:
    """(source, stories) of the first corpus by id, or None when there is none."""
    rows = db.sql("SELECT c.corpus_id, c.source, count(s.story_id) FROM corpora c LEFT JOIN stories s "
                  "USING (corpus_id) GROUP BY ALL ORDER BY 1 LIMIT 1")
    return (rows[0][1], rows[0][2]) if rows else None
