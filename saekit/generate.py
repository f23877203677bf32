"""Generate an emotion story corpus with an instruction-tuned model (the paper's protocol).

For every emotion x topic the model is asked, `calls_per_pair` times, for `stories_per_call`
short one-paragraph stories about a character who feels the emotion, without naming it or a
synonym. Each reply is parsed into stories, each story is checked (length, forbidden words,
cut off by the token limit), duplicates and near duplicates are dropped, and the survivors get
ids, a stratified train/test split and a narration label. Steps, each testable alone:

    plan_jobs -> build_prompt -> sample_replies -> parse_stories -> check_story -> assemble

Outputs, next to each other:
    <out>                 jsonl records readable by corpus.load_corpus (id, emotion, topic,
                          narration, text, split), written atomically at the end
    <out>.replies         one JSON line per model call (raw reply), appended as calls finish,
                          so an interrupted run resumes where it stopped
    <stem>.report.json    how many stories were generated, kept and rejected and why, with the
                          resolved config
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from saekit.artifacts import atomic_write_json, content_hash
from saekit.config import to_dict
from saekit.corpus import (
    MAX_WORDS,
    MIN_WORDS,
    Record,
    corpus_root,
    emotion_table,
    forbidden_patterns,
    near_duplicates,
    paper_topics,
    word_count,
    write_jsonl,
)
from saekit.errors import SaekitError
from saekit.model import DEFAULT_MODEL, LM, load_hf

PROMPT_VERSION = 1
REJECT_REASONS = ("empty", "too_short", "too_long", "truncated", "forbidden_word", "duplicate", "near_duplicate")


class GenerateError(SaekitError, RuntimeError):
    """Bad generation config or a replies file from another config; the message says what to do."""


@dataclass
class GenerateConfig:
    model: str = DEFAULT_MODEL
    """Instruction-tuned model: folder, hub name or "smollm2-135m-instruct" (embedded default)."""
    emotions: str | list[str] = "all"
    """"all" (the 171 of emotions.txt) or a list of emotion words."""
    topics: int | list[str] = 100
    """How many of topics.txt to use (from the top), or a list of topic sentences."""
    stories_per_call: int = 3
    """Stories asked for in one prompt."""
    calls_per_pair: int = 4
    """Prompts per emotion x topic (the paper has 12 stories per pair: 3 x 4)."""
    max_new_tokens: int = 700
    """Token limit of one reply; a story cut off by it is rejected as truncated."""
    temperature: float = 0.8
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    seed: int = 0
    """Seeds the sampling of every batch, and the split."""
    batch_size: int = 8
    """Prompts generated together (left-padded)."""
    out: str = "artifacts/corpus/generated.jsonl"
    min_words: int = MIN_WORDS
    max_words: int = MAX_WORDS
    test_fraction: float = 0.2
    """Share of each emotion's stories in the test split (at least one once an emotion has two)."""
    near_duplicate_threshold: float = 0.3
    """Word 5-gram Jaccard similarity from which a later story counts as a copy of an earlier one."""
    drop_truncated: bool = True
    device: str = "cpu"
    dtype: str = "float32"

    def validate(self) -> None:
        for name in ("stories_per_call", "calls_per_pair", "max_new_tokens", "batch_size", "min_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_words < self.min_words:
            raise ValueError(f"max_words ({self.max_words}) is below min_words ({self.min_words})")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (sampling), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if isinstance(self.emotions, str) and self.emotions != "all":
            raise ValueError(f"emotions must be 'all' or a list, got {self.emotions!r}")
        if isinstance(self.emotions, list) and not all(e.strip() for e in self.emotions):
            raise ValueError("emotions holds an empty name")
        if isinstance(self.emotions, list) and not self.emotions:
            raise ValueError("emotions is an empty list")
        if isinstance(self.topics, int) and not 1 <= self.topics <= len(paper_topics()):
            raise ValueError(f"topics must be between 1 and {len(paper_topics())}, got {self.topics}")
        if isinstance(self.topics, list) and not self.topics:
            raise ValueError("topics is an empty list")

    def emotion_list(self) -> list[str]:
        if self.emotions == "all":
            return all_emotions()
        return list(dict.fromkeys(e.strip().lower() for e in self.emotions))

    def topic_list(self) -> list[str]:
        if isinstance(self.topics, int):
            return paper_topics()[: self.topics]
        return list(dict.fromkeys(t.strip() for t in self.topics))


def all_emotions() -> list[str]:
    text = (corpus_root() / "emotions.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def output_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(records, replies, report) paths for an output file name."""
    out = Path(out)
    return out, out.with_name(out.name + ".replies"), out.with_name(out.stem + ".report.json")


# ---------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Job:
    emotion: str
    topic: str
    call: int

    @property
    def key(self) -> str:
        return f"{self.emotion}|{self.topic}|{self.call}"


def plan_jobs(cfg: GenerateConfig) -> list[Job]:
    return [Job(e, t, c) for e in cfg.emotion_list() for t in cfg.topic_list() for c in range(cfg.calls_per_pair)]


def build_prompt(emotion: str, topic: str, n: int, person: str = "third") -> str:
    """The user message asking for `n` numbered stories; `person` is "first" or "third"."""
    voice = ("Write them in the first person (\"I\")." if person == "first"
             else "Write them in the third person (\"he\", \"she\" or a name).")
    return (
        f"Write {n} different short stories. Each story is a single paragraph of about 100 words "
        f"about a character who feels {emotion}. Topic: {topic}. Show the feeling only through the "
        f"character's actions, body sensations, dialogue, thoughts and surroundings. Never use the "
        f"word \"{emotion}\" or any synonym of it. {voice} Number the stories "
        + ", ".join(f"{i}." for i in range(1, n + 1)) + " and write nothing else."
    )


def job_person(job: Job) -> str:
    """Alternate the asked narration over calls, so every pair gets both first and third person."""
    return "first" if job.call % 2 == 1 else "third"


# ---------------------------------------------------------------------------- sampling


def sample_replies(model, tokenizer, prompts: list[str], cfg: GenerateConfig, seed: int) -> list[tuple[str, bool]]:
    """One sampled reply per user prompt, as (text, finished): finished is False when the
    reply ran into max_new_tokens."""
    return LM.of(model, tokenizer).sample_chat(prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                                               cfg.repetition_penalty, seed)


# ---------------------------------------------------------------------------- parsing


# "1." "2)" "3:" "#1" "Story 1" "**Story 2:**" "### 3." at the start of a line.
_MARKER = re.compile(
    r"^[ \t>]*(?:[#*_]+[ \t]*)*(?:(?:story|tale)[ \t]*#?[ \t]*(\d{1,2})\b|#?(\d{1,2})[.):](?=\s))"
    r"(?:[ \t]*[*_]+)?[ \t]*(?:[:.\-\u2013\u2014][ \t]*)?",
    re.IGNORECASE | re.MULTILINE,
)
_SEPARATOR = re.compile(r"^[ \t]*(?:[-*_=~][ \t]*){3,}$", re.MULTILINE)
_CHATTER = re.compile(
    r"^\W*(here (are|is)|sure\b|certainly|of course|i hope|i've written|let me know|these (stories|are)|"
    r"note:|feel free|enjoy\b|okay\b)", re.IGNORECASE)
_INTRO = re.compile(r"\bhere(?: are|'s| is)\b.*\b(?:stor|tale|paragraph)|:$", re.IGNORECASE)
_END = re.compile(r"[.!?\"'\u201d\u2019)\]*]\s*$")


def parse_stories(reply: str) -> list[str]:
    """Split a reply into its stories: at numbered markers when there are any, otherwise at
    separator lines and blank lines. Titles, markdown and assistant chatter are dropped."""
    reply = reply.replace("\r\n", "\n").strip()
    if not reply:
        return []
    marks = list(_MARKER.finditer(reply))
    if marks:
        chunks = [reply[m.end(): (marks[i + 1].start() if i + 1 < len(marks) else len(reply))]
                  for i, m in enumerate(marks)]
        preamble = _clean_chunk(reply[: marks[0].start()])
        if preamble and word_count(preamble) >= 20:  # an unnumbered first story, not an intro line
            chunks.insert(0, reply[: marks[0].start()])
    else:
        chunks = [p for part in _SEPARATOR.split(reply) for p in re.split(r"\n[ \t]*\n", part)]
    stories = [_clean_chunk(c) for c in chunks]
    return [s for s in stories if s]


def _is_chatter(paragraph: str) -> bool:
    """The assistant talking about the stories ("Here are three tales...") rather than telling one."""
    return bool(_CHATTER.match(paragraph) or _SEPARATOR.fullmatch(paragraph)
                or (word_count(paragraph) < 40 and _INTRO.search(paragraph)))


def _clean_chunk(chunk: str) -> str:
    paras = [p.strip() for p in re.split(r"\n[ \t]*\n", chunk) if p.strip()]
    paras = [p for p in paras if not _is_chatter(p)]
    if not paras:
        return ""
    lines = [ln.strip() for ln in "\n".join(paras).split("\n") if ln.strip() and not _SEPARATOR.fullmatch(ln)]
    # A title: a short first line without sentence-final punctuation, with the story below it.
    if len(lines) > 1 and len(lines[0].split()) <= 10 and not re.search(r"[.!?\"\u201d]$", lines[0].strip("*_ ")):
        lines = lines[1:]
    text = " ".join(lines)
    text = re.sub(r"(\*\*|__|(?<!\w)[*_](?=\w)|(?<=\w)[*_](?!\w))", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and text.count('"') == 2:
        text = text[1:-1].strip()
    return text


# ---------------------------------------------------------------------------- checks


_DERIVATIONAL = ("ed", "ful", "ous", "ive", "ish", "ic", "y")
_INFLECTIONS = r"(?:s|es|ly|ness|er|est|ed|d|ing|ity|ment)?"


def fallback_patterns(emotion: str) -> list[re.Pattern]:
    """Forbidden words for an emotion without a synonym list: the word (or phrase) and its
    inflections, plus the family of its stem when the stem is distinctive (6+ letters)."""
    parts = re.split(r"[\s\-]+", emotion.strip().lower())
    if len(parts) > 1:
        return [re.compile(r"\b" + r"[\s\-]*".join(map(re.escape, parts)) + r"\b", re.IGNORECASE)]
    word = parts[0]
    words = [re.escape(word) + _INFLECTIONS]
    if word.endswith("y"):
        words.append(re.escape(word[:-1]) + r"i(?:ly|ness|er|est)")
    for suffix in _DERIVATIONAL:
        stem = word[: -len(suffix)]
        if word.endswith(suffix) and len(stem) >= 6:
            words.append(re.escape(stem) + r"\w*")
            break
    return [re.compile(r"\b" + w + r"\b", re.IGNORECASE) for w in words]


def emotion_patterns(emotion: str) -> list[re.Pattern]:
    """The synonym list of emotions.json where the emotion has one, else `fallback_patterns`."""
    if emotion in emotion_table():
        return forbidden_patterns(emotion)
    return fallback_patterns(emotion)


def check_story(text: str, patterns: list[re.Pattern], min_words: int, max_words: int,
                cut_off: bool = False) -> tuple[str | None, str | None]:
    """(reason, forbidden word) for a rejected story, (None, None) for a kept one.
    `cut_off` marks the last story of a reply that ran into the token limit."""
    if not text.strip():
        return "empty", None
    for pat in patterns:
        if m := pat.search(text):
            return "forbidden_word", m.group(0).lower()
    if cut_off and not _END.search(text):
        return "truncated", None
    n = word_count(text)
    if n < min_words:
        return "too_short", None
    if n > max_words:
        return "too_long", None
    return None, None


_FIRST = re.compile(r"\b(i|me|my|mine|myself|i'm|i'd|i've|i'll)\b", re.IGNORECASE)
_THIRD = re.compile(r"\b(he|she|him|her|his|hers|himself|herself|they|them|their|themselves)\b", re.IGNORECASE)
_QUOTED = re.compile(r"\"[^\"]*\"|\u201c[^\u201d]*\u201d")


def narration(text: str) -> str:
    """"first" when first-person pronouns outnumber third-person ones outside dialogue."""
    prose = _QUOTED.sub(" ", text)
    return "first" if len(_FIRST.findall(prose)) > len(_THIRD.findall(prose)) else "third"


def _normal(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


# ---------------------------------------------------------------------------- assembly


def assemble(replies: list[dict], cfg: GenerateConfig) -> tuple[list[Record], dict]:
    """Records and report counts from raw replies ({"emotion", "topic", "call", "reply",
    "finished"}), in the given order: parse, check, de-duplicate, then id, narrate and split."""
    topic_index = {t: i for i, t in enumerate(paper_topics())}
    for t in cfg.topic_list():
        topic_index.setdefault(t, len(topic_index))
    patterns: dict[str, list[re.Pattern]] = {}
    rejected: collections.Counter = collections.Counter()
    words: collections.Counter = collections.Counter()
    examples: list[dict] = []
    kept: list[tuple[dict, str]] = []
    seen: set[str] = set()
    candidates = 0

    def reject(reason: str, row: dict, text: str) -> None:
        rejected[reason] += 1
        if sum(1 for e in examples if e["reason"] == reason) < 3:
            examples.append({"reason": reason, "emotion": row["emotion"], "text": text[:300]})

    for row in replies:
        stories = parse_stories(row["reply"]) or [""]
        emo = row["emotion"]
        pats = patterns.setdefault(emo, emotion_patterns(emo))
        for i, text in enumerate(stories):
            candidates += 1
            cut_off = cfg.drop_truncated and not row["finished"] and i == len(stories) - 1
            reason, word = check_story(text, pats, cfg.min_words, cfg.max_words, cut_off)
            if reason is None and _normal(text) in seen:
                reason = "duplicate"
            if reason is not None:
                words.update([word] if word else [])
                reject(reason, row, text)
                continue
            seen.add(_normal(text))
            kept.append((row, text))

    tmp = [Record(id=str(i), text=text) for i, (_, text) in enumerate(kept)]
    copies = _later_copies(near_duplicates(tmp, cfg.near_duplicate_threshold))
    for i in sorted(copies):
        reject("near_duplicate", kept[i][0], kept[i][1])
    kept = [k for i, k in enumerate(kept) if i not in copies]

    records: list[Record] = []
    per_pair: collections.Counter[tuple[str, str]] = collections.Counter()
    for row, text in kept:
        pair = (row["emotion"], row["topic"])
        per_pair[pair] += 1
        rid = f"{_slug(row['emotion'])}-g{topic_index[row['topic']]:03d}-{per_pair[pair]:02d}"
        records.append(Record(id=rid, text=text, emotion=row["emotion"], topic=row["topic"],
                              narration=narration(text)))
    records = split_by_emotion(records, cfg.test_fraction, cfg.seed)
    report = {
        "calls": len(replies),
        "calls_cut_off": sum(1 for r in replies if not r["finished"]),
        "candidates": candidates,
        "accepted": len(records),
        "rejected": {r: rejected[r] for r in REJECT_REASONS if rejected[r]},
        "rejected_total": sum(rejected.values()),
        "forbidden_words": dict(words.most_common()),
        "per_emotion": dict(sorted(collections.Counter(r.emotion for r in records).items())),
        "splits": dict(collections.Counter(r.split for r in records)),
        "narration": dict(collections.Counter(r.narration for r in records)),
        "rejected_examples": examples,
    }
    return records, report


def _later_copies(pairs: list[tuple[str, str, float]]) -> set[int]:
    """Indices to drop so that no kept story has a near duplicate among earlier kept ones."""
    neighbours: dict[int, set[int]] = collections.defaultdict(set)
    for a, b, _ in pairs:
        neighbours[int(a)].add(int(b))
        neighbours[int(b)].add(int(a))
    dropped: set[int] = set()
    for i in sorted(neighbours):
        if any(j < i and j not in dropped for j in neighbours[i]):
            dropped.add(i)
    return dropped


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def split_by_emotion(records: list[Record], test_fraction: float, seed: int) -> list[Record]:
    """A seeded split stratified by emotion: round(fraction x n) test stories per emotion, and
    at least one once an emotion has two stories (and test_fraction > 0)."""
    by_emotion: dict[str, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(records):
        by_emotion[r.emotion].append(i)
    test: set[int] = set()
    for emo, idx in by_emotion.items():
        n_test = round(test_fraction * len(idx))
        if test_fraction > 0 and len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        order = sorted(idx, key=lambda i: records[i].id)
        random.Random(f"{seed}|{emo}").shuffle(order)
        test.update(order[:n_test])
    return [Record(id=r.id, text=r.text, emotion=r.emotion, topic=r.topic, narration=r.narration,
                   split="test" if i in test else "train", meta=r.meta) for i, r in enumerate(records)]


# ---------------------------------------------------------------------------- the run


def _identity(cfg: GenerateConfig) -> str:
    """What decides the replies: a replies file written under another identity is not reused."""
    return content_hash({"model": cfg.model, "stories_per_call": cfg.stories_per_call,
                         "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                         "top_p": cfg.top_p, "repetition_penalty": cfg.repetition_penalty, "seed": cfg.seed,
                         "batch_size": cfg.batch_size, "dtype": cfg.dtype, "prompt": PROMPT_VERSION})


def _read_replies(path: Path, identity: str) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # the last line of an interrupted append
                break
            raise GenerateError(f"{path}:{n} is corrupt; delete {path} to start the generation again")
        if row.get("identity") != identity:
            raise GenerateError(f"{path} holds replies generated with another config (model, sampling or "
                                "prompt); choose another out path or delete it")
        done[Job(row["emotion"], row["topic"], row["call"]).key] = row
    return done


def generate_corpus(cfg: GenerateConfig, model=None, tokenizer=None,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Run the protocol and write the records, replies and report files; returns the report.

    `model` may be a plain transformers model (with `tokenizer`) or a TransformerBridge; by
    default cfg.model is loaded with `load_hf`. Replies already in <out>.replies from the same
    config are reused. `progress(calls_done, calls_total)` is called after every batch.
    """
    cfg.validate()
    out, replies_path, report_path = output_paths(cfg.out)
    identity = _identity(cfg)
    jobs = plan_jobs(cfg)
    done = _read_replies(replies_path, identity)
    pending = [j for j in jobs if j.key not in done]
    resumed = len(jobs) - len(pending)
    start = time.time()
    if progress:
        progress(resumed, len(jobs))
    if pending:
        if model is None:
            model, tokenizer = load_hf(cfg.model, dtype=cfg.dtype, device=cfg.device)
        lm = LM.of(model, tokenizer)
        replies_path.parent.mkdir(parents=True, exist_ok=True)
        with open(replies_path, "a", encoding="utf-8") as f:
            for b in range(0, len(pending), cfg.batch_size):
                batch = pending[b: b + cfg.batch_size]
                prompts = [build_prompt(j.emotion, j.topic, cfg.stories_per_call, job_person(j)) for j in batch]
                seed = int(content_hash([cfg.seed, [j.key for j in batch]], 8), 16)
                for job, (reply, finished) in zip(batch, sample_replies(lm, None, prompts, cfg, seed)):
                    row = {"identity": identity, "emotion": job.emotion, "topic": job.topic, "call": job.call,
                           "person": job_person(job), "reply": reply, "finished": finished}
                    done[job.key] = row
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                if progress:
                    progress(resumed + b + len(batch), len(jobs))
    records, report = assemble([done[j.key] for j in jobs], cfg)
    write_jsonl(out, records)
    report.update({"out": str(out), "replies": str(replies_path), "calls_resumed": resumed,
                   "elapsed_s": round(time.time() - start, 1), "config": to_dict(cfg)})
    atomic_write_json(report_path, report)
    return report
