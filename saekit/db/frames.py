"""The notebook handle's questions (saekit.open_db), each one statement over a table or view,
answered as a pandas or polars DataFrame through the same read-only check as `saekit query`."""

from __future__ import annotations

from saekit.db.connection import Database
from saekit.db.user_sql import query_frame

KNOWN = {"emotion": "SELECT DISTINCT emotion FROM feature_emotion_stats",
         "hook": "SELECT DISTINCT hook FROM emotion_vectors",
         "experiment": "SELECT experiment_id FROM experiments UNION SELECT name FROM experiments "
                       "UNION SELECT run_id FROM experiments"}
"""What a name may be, per kind of name: the values listed when a question names nothing."""


def _sae_filter(sae_id: str | None) -> tuple[str, list]:
    """The SQL condition and parameter for an optional SAE (an `? IS NULL OR` form costs a third more)."""
    return (" AND sae_id = ?", [sae_id]) if sae_id else ("", [])


def top_features(db: Database, emotion: str, n: int, sae_id: str | None, kind: str):
    where, params = _sae_filter(sae_id)
    return query_frame(db, f"SELECT * FROM top_features WHERE emotion = ? AND selectivity_rank <= ?{where} "
                           "ORDER BY sae_id, selectivity_rank", [emotion, n, *params], kind)


def feature(db: Database, idx: int, sae_id: str | None, kind: str):
    where, params = _sae_filter(sae_id)
    return query_frame(db, f"SELECT * FROM top_features WHERE feature = ?{where} ORDER BY sae_id, auroc DESC",
                       [idx, *params], kind)


def vectors(db: Database, hook: str, kind: str):
    return query_frame(db, "SELECT * FROM emotion_vectors WHERE hook = ? ORDER BY model_id, corpus_id, emotion",
                       [hook], kind)


def experiment(db: Database, name: str, kind: str):
    """experiment_effects of the experiment with this id, run id or name (its latest run)."""
    return query_frame(db, "SELECT * FROM experiment_effects WHERE experiment_id = (SELECT experiment_id FROM "
                           "experiments WHERE ? IN (experiment_id, name, run_id) ORDER BY created_at DESC LIMIT 1) "
                           "ORDER BY condition, strength, metric", [name], kind)


def sae_sizes(db: Database) -> list[tuple[str, int]]:
    return db.sql("SELECT sae_id, d_sae FROM saes ORDER BY sae_id")


def known(db: Database, what: str) -> list[str]:
    """The stored values of a kind of name (KNOWN), sorted."""
    return sorted(str(r[0]) for r in db.sql(KNOWN[what]) if r[0] is not None)
