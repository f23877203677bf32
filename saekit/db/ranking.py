"""The writes of a ranking (`saekit rank`): each function replaces one scope of one or a few tables.

rank.py computes the rows; this module knows which columns scope them, so a rerun replaces what
the same model, corpus, hook or SAE wrote before and leaves the rest. Every function is meant to
run inside `Database.run`, whose transaction holds the whole ranking.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from saekit.db.connection import Database

Row = Mapping[str, Any]


def replace_model(db: Database, row: Row) -> None:
    db.replace("models", {"model_id": row["model_id"]}, [row])


def replace_corpus(db: Database, row: Row, stories: Sequence[Row]) -> None:
    """The corpus row and its stories (text, label, split), all of that corpus_id replaced."""
    db.replace("corpora", {"corpus_id": row["corpus_id"]}, [row])
    db.replace("stories", {"corpus_id": row["corpus_id"]}, stories)


def replace_emotions(db: Database, rows: Sequence[Row]) -> None:
    """The emotions of this ranking; other emotions' rows stay (the table is shared by every corpus)."""
    for r in rows:
        db.delete("emotions", {"emotion": r["emotion"]})
    db.insert("emotions", rows)


def replace_hook_results(db: Database, model_id: str, corpus_id: str, hook: str, vectors: Sequence[Row],
                         lens_checks: Sequence[Row], probes: Mapping[str, Row], clusters: Sequence[Row],
                         similarity: Sequence[Row], linkage: Sequence[Row], rating_geometry: Sequence[Row] = (),
                         story_mean: Row | None = None, style_geometry: Sequence[Row] = ()) -> None:
    """One hook's emotion vectors, their lens check, probes (by method), geometry (with human ratings if
    given) and the training stories' mean, the centre readings of new texts are taken from."""
    scope = {"model_id": model_id, "corpus_id": corpus_id, "hook": hook}
    db.replace("emotion_vectors", scope, vectors)
    db.replace("story_means", scope, [story_mean] if story_mean else [])
    db.replace("lens_checks", dict(scope, direction="emotion_vector"), lens_checks)
    for method, row in probes.items():
        db.replace("probe_results", dict(scope, method=method), [row])
    db.replace("emotion_clusters", scope, clusters)
    db.replace("emotion_similarity", scope, similarity)
    db.replace("emotion_linkage", scope, linkage)
    db.replace("rating_geometry", scope, rating_geometry)
    replace_style_geometry(db, scope, style_geometry)


def replace_style_geometry(db: Database, scope: Row, rows: Sequence[Row]) -> None:
    """One hook's principal components against the corpus's style statistics and valence."""
    db.replace("style_geometry", {k: scope[k] for k in ("model_id", "corpus_id", "hook")}, rows)


def replace_sae_results(db: Database, sae_row: Row, corpus_id: str, features: Mapping[str, Sequence],
                        stats: Mapping[str, Sequence], examples: Sequence[Row], alignment: Sequence[Row],
                        lens_checks: Sequence[Row], probe: Row) -> None:
    """An SAE's rows: the SAE, its features (columns), their statistics (columns) and examples on this
    corpus, the vector alignment, the top features' lens check and the SAE probe."""
    sae_id = sae_row["sae_id"]
    scope = {"sae_id": sae_id, "corpus_id": corpus_id}
    db.replace("saes", {"sae_id": sae_id}, [sae_row])
    db.replace("features", {"sae_id": sae_id}, features)
    db.replace("feature_emotion_stats", scope, stats)
    db.replace("feature_examples", scope, examples)
    db.replace("vector_feature_alignment", scope, alignment)
    db.replace("lens_checks", {"model_id": sae_row["model_id"], "corpus_id": corpus_id, "hook": sae_row["hook"],
                               "direction": "sae_top_feature", "sae_id": sae_id}, lens_checks)
    db.replace("probe_results", dict(scope, method=probe["method"]), [probe])


EVAL_SCOPE = ("model_id", "corpus_id", "train_corpus_id", "hook", "method", "sae_id")


def replace_eval_probes(db: Database, rows: Sequence[Row]) -> None:
    """Probes scored on an eval corpus: each replaces the row of the same model, eval and train corpus,
    hook, method and SAE (rows of other corpora stay)."""
    for row in rows:
        db.replace("probe_results", {k: row[k] for k in EVAL_SCOPE if row.get(k) is not None}, [row])
