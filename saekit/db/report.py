"""The study report's reads that summarise across tables: the logit-lens check and the latest probes."""

from __future__ import annotations

from typing import TypedDict

from saekit.db.connection import Database, fetch_dicts


class LensSummary(TypedDict):
    """The own-word check of one hook and direction kind: hits of n emotions, against random directions."""
    hook: str
    direction: str
    n: int
    top: int
    hits: int
    rnd: float
    p: float
    found: str | None
    """Emotions whose word is promoted, as "emotion (token, #rank)", best rank first."""


class ProbeAccuracy(TypedDict):
    hook: str
    method: str
    accuracy: float
    chance: float


def lens_check_summary(db: Database, model_id: str, corpus_id: str) -> list[LensSummary]:
    return fetch_dicts(  # type: ignore[return-value]
        db, "SELECT hook, direction, count(*) AS n, any_value(top_n) AS top, any_value(set_hits) AS hits, "
            "any_value(set_random_mean) AS rnd, any_value(set_p_value) AS p, "
            "string_agg(CASE WHEN own_word_in_top THEN emotion || ' (' || best_token || ', #' || "
            "own_word_rank || ')' END, ', ' ORDER BY own_word_rank) AS found "
            "FROM lens_checks WHERE model_id = ? AND corpus_id = ? GROUP BY hook, direction "
            "ORDER BY direction, hook", [model_id, corpus_id])


def latest_probes(db: Database, corpus_id: str) -> list[ProbeAccuracy]:
    """The probe accuracies of the latest finished ranking, on this corpus."""
    return fetch_dicts(  # type: ignore[return-value]
        db, "SELECT hook, method, accuracy, chance FROM probe_results WHERE corpus_id = ? AND run_id IN "
            "(SELECT run_id FROM runs WHERE kind = 'rank' AND status = 'done' ORDER BY started_at DESC LIMIT 1) "
            "ORDER BY hook, method", [corpus_id])
