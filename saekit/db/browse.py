"""The browser's reads (saekit browse): each function reads one page's facts as plain dicts.

Every query filters on a key (sae_id, feature, emotion) so a page reads a few rows, not a table;
the features, stats and examples tables are written in feature order, so DuckDB's zone maps skip
almost everything (benchmarks/browse_speed.py measures a page against these queries run raw).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from saekit.db.connection import Database, fetch_dicts


@dataclass
class Reader:
    """One open read-only handle; `log` keeps every statement run, for the speed benchmark."""
    db: Database
    log: list[tuple[str, list]] | None = None

    def rows(self, sql: str, params: Sequence = ()) -> list[dict[str, Any]]:
        if self.log is not None:
            self.log.append((sql, list(params)))
        return fetch_dicts(self.db, sql, list(params))

    def one(self, sql: str, params: Sequence = ()) -> dict[str, Any] | None:
        found = self.rows(sql, params)
        return found[0] if found else None


def sae_rows(r: Reader) -> list[dict[str, Any]]:
    """Every SAE's row of `saes`, by sae_id."""
    return r.rows("SELECT * FROM saes ORDER BY sae_id")


def overview(r: Reader) -> dict[str, Any]:
    return {"models": r.rows("SELECT * FROM models ORDER BY model_id"),
            "corpora": r.rows("SELECT c.corpus_id, c.source, c.n_records, "
                              "(SELECT count(*) FROM stories s WHERE s.corpus_id = c.corpus_id) AS n_stories "
                              "FROM corpora c ORDER BY corpus_id"),
            "probes": r.rows("SELECT hook, method, sae_id, accuracy, chance, majority, n_test FROM probe_results "
                             "ORDER BY hook, method")}


def emotions(r: Reader) -> list[dict[str, Any]]:
    """The emotions that have results, with their story counts."""
    return r.rows("SELECT e.emotion, any_value(e.cluster) AS cluster, count(s.story_id) AS n_stories "
                  "FROM emotions e LEFT JOIN stories s ON s.emotion = e.emotion "
                  "WHERE e.emotion IN (SELECT DISTINCT emotion FROM feature_emotion_stats "
                  "                    UNION SELECT DISTINCT emotion FROM emotion_vectors) "
                  "GROUP BY e.emotion ORDER BY e.emotion")


def top_features(r: Reader, sae_id: str, n: int, emotion: str | None = None) -> list[dict[str, Any]]:
    """The n most selective features of each emotion (or of one), best first."""
    where = "AND emotion = ?" if emotion else ""
    # every column: the statistics declared in saekit.feature_stats, which a database made before one was declared lacks
    return r.rows("SELECT * FROM feature_emotion_stats WHERE sae_id = ? AND selectivity_rank <= ? "
                  f"{where} ORDER BY emotion, selectivity_rank", [sae_id, n] + ([emotion] if emotion else []))


def vectors(r: Reader, emotion: str | None = None) -> list[dict[str, Any]]:
    """Emotion vectors with their logit lens; the vectors themselves only for the map (emotion=None)."""
    cols = "hook, emotion, norm, neutral_pcs, promoted_tokens, promoted_logits, suppressed_tokens, suppressed_logits"
    if emotion is None:
        return r.rows(f"SELECT {cols}, vector FROM emotion_vectors ORDER BY hook, emotion")
    return r.rows(f"SELECT {cols} FROM emotion_vectors WHERE emotion = ? ORDER BY hook", [emotion])


def vector_hooks(r: Reader, model_id: str) -> list[str]:
    """The hooks with emotion vectors of a model, shallowest first."""
    rows = r.rows("SELECT DISTINCT hook FROM emotion_vectors WHERE model_id = ?", [model_id])
    return sorted((x["hook"] for x in rows), key=lambda h: (int(h.split(".")[1]) if h.split(".")[1:2] and
                                                           h.split(".")[1].isdigit() else -1, h))


def vector_models(r: Reader) -> list[str]:
    return [x["model_id"] for x in r.rows("SELECT DISTINCT model_id FROM emotion_vectors ORDER BY model_id")]


def style_geometry(r: Reader) -> list[dict[str, Any]]:
    """Every hook's principal components against the corpus's style statistics and valence (none in a
    database written before saekit stored them)."""
    if not r.one("SELECT 1 AS x FROM information_schema.tables WHERE table_name = 'style_geometry'"):
        return []
    return r.rows("SELECT model_id, corpus_id, hook, predictor, target, r, p_value, explained_variance "
                  "FROM style_geometry ORDER BY model_id, corpus_id, hook, predictor, target")


def lens_checks(r: Reader, emotion: str) -> list[dict[str, Any]]:
    return r.rows("SELECT hook, direction, feature, own_word_rank, own_word_in_top, best_token, random_rate, top_n "
                  "FROM lens_checks WHERE emotion = ? ORDER BY hook, direction", [emotion])


def aligned_features(r: Reader, emotion: str, n: int) -> list[dict[str, Any]]:
    return r.rows("SELECT sae_id, feature, cosine, alignment_rank FROM vector_feature_alignment "
                  "WHERE emotion = ? AND alignment_rank <= ? ORDER BY sae_id, alignment_rank", [emotion, n])


def aligned_features_all(r: Reader, n: int) -> list[dict[str, Any]]:
    return r.rows("SELECT DISTINCT sae_id, feature FROM vector_feature_alignment WHERE alignment_rank <= ?", [n])


def probes(r: Reader) -> list[dict[str, Any]]:
    """Probe rows with precision, recall and confusion parsed; `emotions` is the confusion's order."""
    out = []
    for row in r.rows("SELECT hook, method, sae_id, accuracy, chance, precision, recall, confusion FROM probe_results "
                      "ORDER BY hook, method"):
        for k in ("precision", "recall", "confusion"):
            row[k] = json.loads(row[k]) if isinstance(row[k], str) else row[k]
        row["emotions"] = list(row["precision"])
        out.append(row)
    return out


def feature(r: Reader, sae_id: str, n: int) -> dict[str, Any] | None:
    return r.one("SELECT f.*, u.token_rule FROM features f LEFT JOIN runs u USING (run_id) "
                 "WHERE f.sae_id = ? AND f.feature = ?", [sae_id, n])


def feature_stats(r: Reader, sae_id: str, n: int) -> list[dict[str, Any]]:
    return r.rows("SELECT emotion, auroc, cohens_d, q_value, selectivity_rank, mean_in, rate_in, top_story_precision "
                  "FROM feature_emotion_stats WHERE sae_id = ? AND feature = ? ORDER BY emotion", [sae_id, n])


def examples(r: Reader, sae_id: str, n: int) -> list[dict[str, Any]]:
    return r.rows("SELECT kind, example_rank, story_id, emotion, activation, tokens, token_activations "
                  "FROM feature_examples WHERE sae_id = ? AND feature = ? ORDER BY kind, example_rank", [sae_id, n])


def feature_alignment(r: Reader, sae_id: str, n: int) -> list[dict[str, Any]]:
    return r.rows("SELECT emotion, cosine, alignment_rank FROM vector_feature_alignment "
                  "WHERE sae_id = ? AND feature = ? ORDER BY alignment_rank, emotion", [sae_id, n])


def experiment_specs(r: Reader, sae_id: str | None = None) -> list[dict[str, Any]]:
    """Experiments, newest first, with their stored spec parsed (the targets live there)."""
    where, params = ("WHERE sae_id = ?", [sae_id]) if sae_id else ("", [])
    rows = r.rows(f"SELECT experiment_id, name, model_id, sae_id, spec, created_at FROM experiments {where} "
                  "ORDER BY created_at DESC", params)
    for row in rows:
        row["spec"] = json.loads(row["spec"]) if isinstance(row["spec"], str) else row["spec"]
    return rows


def search_rows(r: Reader, sae_id: str) -> list[dict[str, Any]]:
    return r.rows("SELECT feature, promoted_tokens FROM features WHERE sae_id = ? ORDER BY feature", [sae_id])
