"""The SQL of `saekit compare`: what a comparison reads of two sides' rankings, and its `comparisons` row.

A side is a model's emotion vectors at one hook, or an SAE's per-emotion feature means, on one
corpus; saekit.compare resolves the sides through `vector_sources` and `sae_sources`, reads their
rows here, and stores the finished comparison with `record_comparison`. No other module of the
comparison holds SQL.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from saekit.db.connection import fetch_dicts

if TYPE_CHECKING:
    from saekit.db import Database


def vector_sources(db: Database) -> list[tuple[str, str, str]]:
    """(model_id, hook, corpus_id) of every set of emotion vectors, sorted."""
    return db.sql("SELECT DISTINCT model_id, hook, corpus_id FROM emotion_vectors ORDER BY ALL")


def sae_sources(db: Database) -> list[tuple[str, str, str, str | None]]:
    """(sae_id, model_id, hook, corpus_id) of every SAE; corpus_id NULL where it has no statistics."""
    return db.sql("SELECT DISTINCT s.sae_id, s.model_id, s.hook, f.corpus_id FROM saes s "
                  "LEFT JOIN (SELECT DISTINCT sae_id, corpus_id FROM feature_emotion_stats) f USING (sae_id) "
                  "ORDER BY ALL")


def emotion_vectors(db: Database, model_id: str, corpus_id: str, hook: str) -> dict[str, list[float]]:
    """emotion -> vector of the model at a hook, on a corpus."""
    return dict(db.sql("SELECT emotion, vector FROM emotion_vectors WHERE model_id = ? AND corpus_id = ? AND hook = ?",
                       [model_id, corpus_id, hook]))


def sae_emotion_means(db: Database, sae_id: str, corpus_id: str) -> dict[str, list[float]]:
    """emotion -> the SAE's mean feature activation on that emotion's train stories (mean_in), by feature."""
    return dict(db.sql("SELECT emotion, list(mean_in ORDER BY feature) FROM feature_emotion_stats "
                       "WHERE sae_id = ? AND corpus_id = ? GROUP BY emotion", [sae_id, corpus_id]))


def kmeans_k(db: Database, model_id: str, corpus_id: str, hook: str) -> int | None:
    """The k the ranking clustered these vectors with (emotion_clusters), or None."""
    return db.scalar("SELECT max(k) FROM emotion_clusters WHERE model_id = ? AND corpus_id = ? AND hook = ?",
                     [model_id, corpus_id, hook])


def probes(db: Database, corpus_id: str, *, model_id: str | None = None, hook: str | None = None,
           sae_id: str | None = None) -> list[dict[str, Any]]:
    """Test-split probe rows (not eval-corpus rows) of a model's hook (sae_id NULL) or of an SAE,
    the latest per method."""
    where = "sae_id = ?" if sae_id is not None else "model_id = ? AND hook = ? AND sae_id IS NULL"
    params = [sae_id] if sae_id is not None else [model_id, hook]
    return fetch_dicts(
        db, "SELECT p.method, p.accuracy, p.chance, p.n_test, p.ci_lo, p.ci_hi FROM probe_results p "
            "LEFT JOIN runs r USING (run_id) "
            f"WHERE p.corpus_id = ? AND p.train_corpus_id IS NULL AND {where} "
            "QUALIFY row_number() OVER (PARTITION BY p.method ORDER BY r.started_at DESC NULLS LAST) = 1 "
            "ORDER BY p.method", [corpus_id, *params])


def rating_rows(db: Database, model_id: str, corpus_id: str, hook: str) -> list[dict[str, Any]]:
    """The stored rating_geometry rows (valence and arousal against PCs and the leave-one-out decoding)."""
    return fetch_dicts(db, "SELECT target, predictor, r, ci_lo, ci_hi, p_value, n FROM rating_geometry "
                           "WHERE model_id = ? AND corpus_id = ? AND hook = ? ORDER BY target, predictor",
                       [model_id, corpus_id, hook])


def ratings(db: Database) -> dict[str, tuple[float, float]]:
    """emotion -> (valence, arousal) where the emotions table has both (a ranking given --ratings)."""
    rows = db.sql("SELECT emotion, valence, arousal FROM emotions WHERE valence IS NOT NULL AND arousal IS NOT NULL")
    return {e: (float(v), float(a)) for e, v, a in rows}


def stories(db: Database, corpus_id: str) -> list[tuple[str, str, str | None]]:
    """(emotion, split, text) of every story of the corpus, by story id."""
    return db.sql("SELECT emotion, split, text FROM stories WHERE corpus_id = ? ORDER BY story_id", [corpus_id])


def record_comparison(db: Database, config: dict[str, Any], row: dict[str, Any]) -> str:
    """The comparison's row, written inside a 'compare' run (its id is the comparison's); returns the id."""
    with db.run("compare", config) as run:
        db.insert("comparisons", [dict(row, comparison_id=run, run_id=run, metrics=json.dumps(row["metrics"]),
                                       created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None))])
    return run


def comparison(db: Database, comparison_id: str) -> dict[str, Any] | None:
    """A stored comparison's row (metrics as parsed JSON), or None."""
    rows = fetch_dicts(db, "SELECT * FROM comparisons WHERE comparison_id = ?", [comparison_id])
    if not rows:
        return None
    return dict(rows[0], metrics=json.loads(rows[0]["metrics"]))
