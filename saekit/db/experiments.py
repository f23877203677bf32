"""The SQL of experiments: what they read from the feature database, and how they store themselves.

saekit.experiments resolves a spec through these reads (feature statistics, selective features,
emotion vectors, an SAE's id and token rule) and stores one `experiments` row plus its
`intervention_results` through `store_experiment`; the experiment report reads them back with
`find_experiment` and `experiment_results`. No other module of the experiments holds SQL.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from saekit.db import Database

RESULT_COLUMNS = ("condition", "target", "strength", "is_control", "prompt_id", "metric", "value")
"""The columns of intervention_results an experiment writes per measurement (besides its ids)."""


def feature_stats(db: Database, sae_id: str) -> dict[int, tuple[float, float]]:
    """feature -> (max activation, firing rate) on the ranked corpus (0 where unknown)."""
    rows = db.sql("SELECT feature, max_activation, firing_rate FROM features WHERE sae_id = ?", [sae_id])
    return {int(f): (float(m or 0.0), float(r or 0.0)) for f, m, r in rows}


def ranked_emotions(db: Database, sae_id: str, corpus_id: str) -> list[str]:
    """Emotions the SAE's features were ranked for."""
    rows = db.sql("SELECT DISTINCT emotion FROM feature_emotion_stats WHERE sae_id = ? AND corpus_id = ?",
                  [sae_id, corpus_id])
    return sorted(r[0] for r in rows)


def vector_emotions(db: Database, model_id: str, corpus_id: str) -> list[str]:
    """Emotions with a vector for the model (at any hook)."""
    rows = db.sql("SELECT DISTINCT emotion FROM emotion_vectors WHERE model_id = ? AND corpus_id = ?",
                  [model_id, corpus_id])
    return sorted(r[0] for r in rows)


def top_selective_features(db: Database, sae_id: str, corpus_id: str, emotion: str, n: int) -> list[int]:
    """The n features most selective for an emotion (feature_emotion_stats.selectivity_rank), best first."""
    rows = db.sql("SELECT feature FROM feature_emotion_stats WHERE sae_id = ? AND corpus_id = ? AND emotion = ? "
                  "ORDER BY selectivity_rank LIMIT ?", [sae_id, corpus_id, emotion, n])
    return [int(r[0]) for r in rows]


def sae_token_rule(db: Database, sae_id: str) -> str | None:
    """The token rule (JSON) the SAE was ranked with, or None."""
    return db.scalar("SELECT r.token_rule FROM saes s JOIN runs r USING (run_id) WHERE s.sae_id = ?", [sae_id])


def sae_paths(db: Database) -> list[tuple[str, str | None]]:
    """(sae_id, folder) of every SAE in the database."""
    return [(sid, path) for sid, path in db.sql("SELECT sae_id, path FROM saes")]


def emotion_vectors(db: Database, model_id: str, corpus_id: str, hook: str) -> dict[str, list[float]]:
    """emotion -> vector of the model at a hook."""
    rows = db.sql("SELECT emotion, vector FROM emotion_vectors WHERE model_id = ? AND corpus_id = ? AND hook = ?",
                  [model_id, corpus_id, hook])
    return {e: v for e, v in rows}


def vector_sources(db: Database) -> list[tuple[str, str]]:
    """(model_id, hook) pairs that have emotion vectors, for error messages."""
    return db.sql("SELECT DISTINCT model_id, hook FROM emotion_vectors")


def store_experiment(db: Database, experiment_id: str, *, name: str, model_id: str, sae_id: str | None, spec: str,
                     token_rule: str, results: Sequence[dict[str, Any]]) -> None:
    """The experiment's row and its measurements, in one transaction (run id = experiment id); the token
    rule goes on the run's row."""
    with db.transaction():
        db.set_token_rule(experiment_id, token_rule)
        db.insert("experiments", [{"experiment_id": experiment_id, "name": name, "model_id": model_id,
                                   "sae_id": sae_id, "spec": spec,
                                   "created_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
                                   "run_id": experiment_id}])
        db.insert("intervention_results", [dict(r, experiment_id=experiment_id, run_id=experiment_id)
                                           for r in results])


def find_experiment(db: Database, key: str) -> dict[str, Any] | None:
    """The experiment whose id or run id is `key`, or the latest run named `key`; None if there is none."""
    rows = db.sql("SELECT experiment_id, name, model_id, sae_id, spec, created_at FROM experiments "
                  "WHERE experiment_id = ? OR run_id = ? OR name = ? ORDER BY created_at DESC LIMIT 1",
                  [key, key, key])
    if not rows:
        return None
    return dict(zip(("experiment_id", "name", "model_id", "sae_id", "spec", "created_at"), rows[0]))


def latest_experiment_ids(db: Database, n: int = 5) -> list[str]:
    return [r[0] for r in db.sql("SELECT experiment_id FROM experiments ORDER BY created_at DESC LIMIT ?", [n])]


def experiment_results(db: Database, experiment_id: str) -> list[dict[str, Any]]:
    """Every measurement of an experiment, as {column: value} over RESULT_COLUMNS."""
    rows = db.sql(f"SELECT {', '.join(RESULT_COLUMNS)} FROM intervention_results WHERE experiment_id = ?",
                  [experiment_id])
    return [dict(zip(RESULT_COLUMNS, r)) for r in rows]


def story_mean(db: Database, model_id: str, corpus_id: str, hook: str) -> tuple[list[float], int] | None:
    """(mean pooled activation of the training stories, how many) at a hook, as `saekit rank` stored
    it in story_means; None when the database has none (a ranking older than that table)."""
    if not db.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'story_means'"):
        return None
    rows = db.sql("SELECT mean, n FROM story_means WHERE model_id = ? AND corpus_id = ? AND hook = ?",
                  [model_id, corpus_id, hook])
    return (list(rows[0][0]), int(rows[0][1])) if rows else None
