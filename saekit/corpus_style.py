"""Style statistics of a story corpus, and the balance checks that keep style from tracking emotion.

A corpus can teach a model's emotion vectors a style axis instead of an emotion axis: if one
emotion's stories are told through the body and another's through thoughts about other people,
the first principal component of the vectors follows that difference. These statistics measure
such style per story and per emotion (body-part words, quoted speech, cognition verbs, length,
narration, topics, mode of expression) and how unequal they are across emotions. The word lists
are data files (saekit/corpus/style/) a user can replace.
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from saekit.corpus import NEUTRAL, CorpusError, Record, corpus_root, valence_sign

STYLE_STATS = ("tokens", "words", "body_share", "quote_share", "cognition_share")
"""Per-story numeric statistics; shares are pooled per emotion as (sum of counts) / (sum of words).
`tokens` is there when token counts are given (a tokenizer's, or a harvest's)."""
STAT_MEANING = {
    "tokens": "model tokens per story",
    "words": "words per story",
    "body_share": "share of words that are body-part words (style/body_words.txt)",
    "quote_share": "share of words inside quoted speech",
    "cognition_share": "share of words that are cognition verbs (style/cognition_words.txt)",
}
BALANCED = ("body_share", "quote_share", "cognition_share")
"""The statistics every emotion must keep within `tolerance` of the corpus mean."""
TOLERANCE = 0.25
MODE_SHARE = (0.15, 0.30)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_QUOTED = re.compile(r"\"([^\"]*)\"|\u201c([^\u201d]*)\u201d")


def read_word_list(path: str | Path) -> frozenset[str]:
    """Lower-case words, one per line; blank lines and '#' comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"cannot read word list {path}: {e}") from e
    words = frozenset(w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#"))
    if not words:
        raise CorpusError(f"word list {path} has no words")
    return words


def style_root() -> Path:
    return corpus_root() / "style"


def shipped_modes() -> tuple[str, ...]:
    return tuple(sorted(read_word_list(style_root() / "modes.txt")))


@dataclass(frozen=True)
class WordLists:
    body: frozenset[str]
    cognition: frozenset[str]
    body_path: str = ""
    cognition_path: str = ""

    @classmethod
    def load(cls, body: str | Path | None = None, cognition: str | Path | None = None) -> "WordLists":
        b = Path(body) if body else style_root() / "body_words.txt"
        c = Path(cognition) if cognition else style_root() / "cognition_words.txt"
        return cls(read_word_list(b), read_word_list(c), str(b), str(c))


def _stem(word: str) -> str:
    w = word.lower()
    return w[:-2] if w.endswith("'s") else w


def story_counts(text: str, lists: WordLists) -> dict[str, int]:
    """Raw counts in one text: words, body-part words, quoted words, cognition verbs."""
    words = [_stem(w) for w in _WORD.findall(text)]
    quoted = sum(len(_WORD.findall(a or b)) for a, b in _QUOTED.findall(text))
    return {"words": len(words), "body": sum(w in lists.body for w in words),
            "quoted": quoted, "cognition": sum(w in lists.cognition for w in words)}


@dataclass
class EmotionStyle:
    emotion: str
    stories: int
    words: float
    body_share: float
    quote_share: float
    cognition_share: float
    first_person: float
    topics: int
    modes: dict[str, int] = field(default_factory=dict)
    tokens: float | None = None

    def stat(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass
class StyleReport:
    rows: list[EmotionStyle]
    corpus_mean: dict[str, float]
    inequality: dict[str, dict[str, float]]
    """Per statistic: max/min ratio, coefficient of variation and the largest |emotion/mean - 1|."""
    lists: WordLists

    def row(self, emotion: str) -> EmotionStyle:
        return next(r for r in self.rows if r.emotion == emotion)


def emotion_stories(records: list[Record]) -> dict[str, list[Record]]:
    by: dict[str, list[Record]] = collections.defaultdict(list)
    for r in records:
        if r.emotion and r.emotion != NEUTRAL:
            by[r.emotion].append(r)
    return dict(sorted(by.items()))


def mode_of(record: Record) -> str:
    return str(record.meta.get("mode", "") or "")


def token_counts(records: list[Record], tokenizer) -> dict[str, int]:
    """{record id: its number of tokens} under a tokenizer (no special tokens)."""
    texts = [r.text for r in records]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return {r.id: len(x) for r, x in zip(records, ids)}


def style_report(records: list[Record], lists: WordLists | None = None,
                 tokens: dict[str, int] | None = None) -> StyleReport:
    """Per-emotion style statistics of the labelled (non-neutral) stories, and their spread; `tokens`
    ({id: token count}) adds the mean tokens per story."""
    lists = lists or WordLists.load()
    by = emotion_stories(records)
    if not by:
        raise CorpusError("the corpus has no labelled stories (every record is unlabelled or neutral); "
                          "give the label column with --label-column")
    rows: list[EmotionStyle] = []
    totals: collections.Counter[str] = collections.Counter()
    for emo, recs in by.items():
        c: collections.Counter[str] = collections.Counter()
        for r in recs:
            c.update(story_counts(r.text, lists))
        totals.update(c)
        n_words = max(c["words"], 1)
        rows.append(EmotionStyle(
            emotion=emo, stories=len(recs), words=c["words"] / len(recs), body_share=c["body"] / n_words,
            quote_share=c["quoted"] / n_words, cognition_share=c["cognition"] / n_words,
            first_person=sum(r.narration == "first" for r in recs) / len(recs), topics=len({r.topic for r in recs}),
            modes=dict(collections.Counter(mode_of(r) for r in recs if mode_of(r))),
            tokens=sum(tokens.get(r.id, 0) for r in recs) / len(recs) if tokens else None))
    tw = max(totals["words"], 1)
    n_stories = sum(r.stories for r in rows)
    mean = {"words": totals["words"] / n_stories, "body_share": totals["body"] / tw,
            "quote_share": totals["quoted"] / tw, "cognition_share": totals["cognition"] / tw}
    if tokens:
        mean["tokens"] = sum(tokens.get(r.id, 0) for recs in by.values() for r in recs) / n_stories
    return StyleReport(rows, mean, {s: _spread([r.stat(s) for r in rows], mean[s]) for s in STYLE_STATS if s in mean},
                       lists)


def _spread(values: list[float], mean: float) -> dict[str, float]:
    lo, hi = min(values), max(values)
    avg = sum(values) / len(values)
    sd = math.sqrt(sum((v - avg) ** 2 for v in values) / len(values))
    return {"min": lo, "max": hi, "max_over_min": hi / lo if lo > 0 else math.inf,
            "cv": sd / avg if avg else math.inf,
            "max_rel_dev": max(abs(v / mean - 1) for v in values) if mean else math.inf}


def balance_problems(records: list[Record], lists: WordLists | None = None, tolerance: float = TOLERANCE,
                     mode_share: tuple[float, float] = MODE_SHARE, modes: tuple[str, ...] | None = None) -> list[str]:
    """Every way the stories break the style balance the shipped corpus promises, as 'where: what' lines.

    Per emotion: body-word, quoted-speech and cognition-verb shares within `tolerance` of the corpus
    mean; every story tagged with a known mode and each mode between `mode_share` of the emotion's
    stories; first and third person within one story of half.
    """
    modes = modes or shipped_modes()
    rep = style_report(records, lists)
    out = []
    for row in rep.rows:
        for s in BALANCED:
            mean = rep.corpus_mean[s]
            if mean and abs(row.stat(s) / mean - 1) > tolerance:
                out.append(f"{row.emotion}: {s} {row.stat(s):.4f} is {row.stat(s) / mean:.2f}x the corpus mean "
                           f"{mean:.4f} (allowed {1 - tolerance:.2f}-{1 + tolerance:.2f}x)")
        lo, hi = mode_share
        for m in modes:
            share = row.modes.get(m, 0) / row.stories
            if not lo - 1e-9 <= share <= hi + 1e-9:
                out.append(f"{row.emotion}: mode {m!r} is {share:.0%} of its stories (allowed {lo:.0%}-{hi:.0%})")
        firsts = round(row.first_person * row.stories)
        if abs(firsts - row.stories / 2) > 1:
            out.append(f"{row.emotion}: {firsts} of {row.stories} stories in the first person (need half, within one)")
    for r in records:
        if r.emotion and r.emotion != NEUTRAL and mode_of(r) not in modes:
            out.append(f"{r.id}: mode {mode_of(r)!r} is not one of {list(modes)}")
    return out


# ---------------------------------------------------------------------------- style against the vectors' geometry

GEOMETRY_TARGETS = (*STYLE_STATS, "first_person")
"""The per-emotion style statistics each principal component is correlated with, beside valence."""


def style_geometry(vecs_ED, emotions: list[str], report: StyleReport, ratings: dict[str, float] | None = None,
                   n_pcs: int = 5) -> list[dict]:
    """Per principal component of the emotion vectors (PCA over the emotions), its Pearson r with each
    style statistic and with valence: the clusters' valence sign, and human valence ratings when given.

    Rows: predictor (PC1..), target, r, p_value, ci_lo, ci_hi, n, explained_variance. Emotions the
    report lacks (no stories) are left out of every correlation.
    """
    import torch

    from saekit import features as Fe

    E = len(emotions)
    scores, ratio = Fe.pca(vecs_ED, n=max(min(n_pcs, E - 1), 1))
    rows_by = {r.emotion: r for r in report.rows}
    targets: dict[str, dict[str, float]] = {t: {e: rows_by[e].stat(t) for e in emotions if e in rows_by}
                                            for t in GEOMETRY_TARGETS if t != "tokens" or "tokens" in report.corpus_mean}
    targets["valence_sign"] = {e: v for e in emotions if (v := valence_sign(e)) is not None}
    if ratings:
        targets["valence_rating"] = {e: ratings[e] for e in emotions if e in ratings}
    out = []
    for name, values in targets.items():
        idx = [i for i, e in enumerate(emotions) if e in values]
        if len(idx) < 3:
            continue
        y = torch.tensor([values[emotions[i]] for i in idx], dtype=torch.float64)
        for j in range(scores.shape[1]):
            r, p, lo, hi = Fe.pearson_test(scores[idx, j], y)
            out.append({"predictor": f"PC{j + 1}", "target": name, "r": r, "p_value": p, "ci_lo": lo, "ci_hi": hi,
                        "n": len(idx), "explained_variance": float(ratio[j])})
    return out


def stored_rows(rows: list[dict], scope: dict, word_lists: str, run_id: str) -> list[dict]:
    """style_geometry rows as the table holds them: the scope and run added, NaN (a constant side) as NULL."""
    return [dict(scope, **{k: None if isinstance(v, float) and v != v else v for k, v in r.items()},
                 word_lists=word_lists, run_id=run_id) for r in rows]


def style_warnings(rows: list[dict], alpha: float = 0.05) -> list[str]:
    """A plain sentence for each PC that a style statistic tracks more closely than valence does
    (|r| larger than valence's, and p < alpha so noise is not reported)."""
    out = []
    for pc in dict.fromkeys(r["predictor"] for r in rows):
        mine = [r for r in rows if r["predictor"] == pc and r["r"] == r["r"]]
        val = [r for r in mine if r["target"].startswith("valence")]
        best_val = max((abs(r["r"]) for r in val), default=0.0)
        for r in mine:
            if r["target"] in GEOMETRY_TARGETS and abs(r["r"]) > best_val and r["p_value"] < alpha:
                out.append(f"{pc} tracks the style statistic {r['target']} (r = {r['r']:+.2f}, p = {r['p_value']:.2g}) "
                           f"more closely than valence (best |r| = {best_val:.2f}): this axis may describe how the "
                           "stories are written rather than the emotions")
    return out


def check_labels(records: list[Record], source: str, label_column: str) -> None:
    """Refuse, naming the column, a corpus without labels and an emotion with one story (no spread)."""
    labels = collections.Counter(r.emotion for r in records if r.emotion and r.emotion != NEUTRAL)
    if not labels:
        cols = sorted({"id", "text", "topic", "narration", "split", *{k for r in records[:50] for k in r.meta}})
        raise CorpusError(f"{source}: no record has a label in column {label_column!r} (columns seen: {cols}); "
                          "give the label column with --label-column")
    ones = sorted(e for e, n in labels.items() if n < 2)
    if ones:
        raise CorpusError(f"{source}: emotion(s) {ones[:5]} have one story each; style statistics compare emotions "
                          "over several stories: give at least 2 stories per emotion or drop those labels")


@dataclass
class GeometryCheck:
    model_id: str
    hook: str
    rows: list[dict]
    warnings: list[str]


def check_database(db_path, corpus_id: str, report: StyleReport, ratings: dict[str, float] | None = None,
                   model_id: str | None = None, records: list[Record] | None = None) -> list[GeometryCheck]:
    """The style geometry of every stored set of emotion vectors of `corpus_id` (each model and hook),
    written to the database's style_geometry table in one run and returned.

    With `records` (the corpus the style was measured on), a database whose stories of that corpus
    differ from them is refused: its vectors were built from other texts.
    """
    import json

    import torch

    from saekit.db import Database
    from saekit.db import ranking as W
    from saekit.db import summaries as DR

    with Database(db_path, read_only=True) as db:   # a missing database is refused by its path check
        stored = DR.stored_vectors(db, model_id, corpus_id)
        ranked = DR.story_texts(db, corpus_id)
    if records is not None and ranked:
        mine = {r.id: r.text for r in records if r.emotion and r.emotion != NEUTRAL}
        differ = sum(ranked.get(i) != t for i, t in mine.items()) + sum(i not in mine for i in ranked)
        if differ:
            raise CorpusError(f"the database's stories of corpus {corpus_id!r} differ from this corpus in {differ} "
                              "stories: its vectors were built from other texts; rank this corpus again first (or "
                              "give the corpus it was ranked on)")
    if not stored:
        raise CorpusError(f"{db_path or 'the database'} holds no emotion vectors for corpus {corpus_id!r}"
                          f"{f' and model {model_id}' if model_id else ''}; rank that corpus first (saekit rank or "
                          "saekit study)")
    groups: dict[tuple[str, str], dict[str, list[float]]] = collections.defaultdict(dict)
    for row in stored:
        groups[row["model_id"], row["hook"]][row["emotion"]] = row["vector"]
    out = []
    lists = json.dumps({"body": report.lists.body_path, "cognition": report.lists.cognition_path})
    with Database(db_path) as db, db.run("corpus check", {"corpus_id": corpus_id}) as run:
        for (model, hook), vecs in sorted(groups.items()):
            emotions = [e for e in sorted(vecs) if any(r.emotion == e for r in report.rows)]
            if len(emotions) < 3:
                continue
            rows = style_geometry(torch.tensor([vecs[e] for e in emotions]), emotions, report, ratings)
            scope = {"model_id": model, "corpus_id": corpus_id, "hook": hook}
            W.replace_style_geometry(db, scope, stored_rows(rows, scope, lists, run))
            out.append(GeometryCheck(model, hook, rows, style_warnings(rows)))
    return out

