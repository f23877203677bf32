"""Reads that summarise a ranking across tables (the logit-lens check, the latest and eval probes, the stored
geometry), for the study's write-up and the corpus check."""

from __future__ import annotations

from typing import TypedDict

from saekit.artifacts import story_of
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
            f"({_LATEST_RANK}) AND train_corpus_id IS NULL ORDER BY hook, method", [corpus_id])


_LATEST_RANK = "SELECT run_id FROM runs WHERE kind = 'rank' AND status = 'done' ORDER BY started_at DESC LIMIT 1"


class EvalProbe(TypedDict):
    """A probe built on a corpus's train stories and scored on another labelled corpus."""
    eval_corpus: str
    hook: str
    method: str
    accuracy: float
    ci_lo: float | None
    ci_hi: float | None
    chance: float
    n_test: int
    centring: str | None
    unknown_emotions: str | None
    """JSON: {emotion: texts} the eval corpus names and the study lacks."""


def eval_probes(db: Database, corpus_id: str) -> list[EvalProbe]:
    """The latest finished ranking's probes trained on `corpus_id` and scored on an eval corpus."""
    return fetch_dicts(  # type: ignore[return-value]
        db, "SELECT corpus_id AS eval_corpus, hook, method, accuracy, ci_lo, ci_hi, chance, n_test, centring, "
            f"unknown_emotions FROM probe_results WHERE train_corpus_id = ? AND run_id IN ({_LATEST_RANK}) "
            "ORDER BY eval_corpus, method DESC, hook", [corpus_id])


class RatingRow(TypedDict):
    """A row of rating_geometry: how a human rating lines up with a PC, or decodes from the vectors."""
    hook: str
    target: str
    predictor: str
    r: float | None
    p_value: float | None
    ci_lo: float | None
    ci_hi: float | None
    r2: float | None
    explained_variance: float | None
    n: int


def style_geometry(db: Database, model_id: str, corpus_id: str, hook: str) -> list[dict]:
    return fetch_dicts(db, "SELECT predictor, target, r, p_value, ci_lo, ci_hi, n, explained_variance FROM style_geometry "
                           "WHERE model_id = ? AND corpus_id = ? AND hook = ? ORDER BY predictor, target",
                       [model_id, corpus_id, hook])


def story_texts(db: Database, corpus_id: str) -> dict[str, str | None]:
    """{story_id: text} of a ranked corpus's labelled stories (the texts its vectors were built from)."""
    rows = fetch_dicts(db, "SELECT story_id, text FROM stories WHERE corpus_id = ? AND emotion <> 'neutral'", [corpus_id])
    return {story_of(r["story_id"]): r["text"] for r in rows}


def stored_vectors(db: Database, model_id: str | None, corpus_id: str) -> list[dict]:
    """Every stored emotion vector of a corpus (one model's, or every model's): model_id, hook, emotion, vector."""
    where, params = ("AND model_id = ?", [corpus_id, model_id]) if model_id else ("", [corpus_id])
    return fetch_dicts(db, f"SELECT model_id, hook, emotion, vector FROM emotion_vectors WHERE corpus_id = ? {where} "
                           "ORDER BY model_id, hook, emotion", params)


def rating_geometry(db: Database, model_id: str, corpus_id: str) -> list[RatingRow]:
    return fetch_dicts(  # type: ignore[return-value]
        db, "SELECT hook, target, predictor, r, p_value, ci_lo, ci_hi, r2, explained_variance, n FROM rating_geometry "
            "WHERE model_id = ? AND corpus_id = ? ORDER BY hook, target DESC, predictor", [model_id, corpus_id])
