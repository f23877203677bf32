"""Labelled text corpora: the shipped emotion stories, scenario sets and user files.

A corpus is a list of `Record`s. The shipped one lives in saekit/corpus/ as jsonl with a fixed
stratified train/test split stored in the data, so every run and every user sees the same split.
External corpora (jsonl, csv, parquet, plain text, Hugging Face datasets) load through the same
`load_corpus` with user-named text and label columns.
"""

from __future__ import annotations

import collections
import csv
import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

from saekit.errors import SaekitError

NEUTRAL = "neutral"
SPLITS = ("train", "test")
HELD_OUT_SPLITS = ("test", "validation", "val", "heldout", "held_out")
"""Split names whose records never reach SAE training (the shipped corpus uses "test")."""
MIN_WORDS, MAX_WORDS = 60, 150
MIN_STORIES, MIN_TOPICS = 24, 12


class CorpusError(SaekitError, ValueError):
    """A corpus file is missing, unreadable, empty or lacks a column; the message says where."""


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    emotion: str = ""
    topic: str = ""
    narration: str = ""
    split: str = "train"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict:
        d = asdict(self)
        if not d["meta"]:
            d.pop("meta")
        return d


def corpus_root() -> Path:
    return Path(str(resources.files("saekit") / "corpus"))


# ---------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class DatasetOptions:
    """How to read a Hugging Face dataset (a hub name or a local folder); all empty for other corpora."""
    config: str = ""
    """The dataset's configuration (load_dataset's `name`)."""
    split: str = ""
    """The dataset split to read; empty: "train" if there is one, else the first."""
    streaming: bool = False
    """Read rows as they arrive instead of downloading the dataset first (with a limit, only those rows)."""

    def __bool__(self) -> bool:
        return bool(self.config or self.split or self.streaming)


def load_corpus(source: str | Path | None = None, *, text_column: str = "text", label_column: str = "emotion",
                id_column: str = "id", split: str | None = None, include_neutral: bool = True,
                emotions: Iterable[str] | None = None, dataset: DatasetOptions = DatasetOptions(),
                limit: int = 0) -> list[Record]:
    """Records from the shipped corpus (source None) or a user's file, folder or dataset name.

    `split` keeps only "train" or "test"; `emotions` keeps only those labels (plus neutral if asked).
    `dataset` picks a Hugging Face dataset's configuration and split, or streams it; `limit` keeps the
    first N records read (0: all), and a streamed dataset is read no further.
    """
    if limit < 0:
        raise CorpusError(f"limit must be 0 (all) or a number of records, got {limit}")
    if dataset and not _is_hf_dataset(source):
        raise CorpusError(f"--dataset-config, --split and --streaming apply to Hugging Face datasets (a dataset "
                          f"folder or hub name), not to corpus {source or 'shipped'}")
    if source is None or str(source) == "shipped":
        records = _shipped_records(include_neutral)
    else:
        records = _external_records(source, text_column, label_column, id_column, dataset, limit)
    records = records[:limit] if limit else records
    dup = [i for i, n in collections.Counter(r.id for r in records).items() if n > 1]
    if dup:
        raise CorpusError(f"corpus {source or 'shipped'}: ids {sorted(dup)[:5]}{' ...' if len(dup) > 5 else ''} appear "
                          f"more than once; every record needs its own id (column {id_column!r})")
    if split is not None:
        if split not in SPLITS:
            raise CorpusError(f"unknown split {split!r}; choose one of {SPLITS}")
        records = [r for r in records if r.split == split]
    if emotions is not None:
        keep = set(emotions) | ({NEUTRAL} if include_neutral else set())
        unknown = set(emotions) - {r.emotion for r in records}
        if unknown:
            raise CorpusError(f"emotions {sorted(unknown)} are not in the corpus {source or 'shipped'}")
        records = [r for r in records if r.emotion in keep]
    if not records:
        raise CorpusError(f"corpus {source or 'shipped'} has no records (split={split}, emotions={emotions})")
    return records


def _shipped_records(include_neutral: bool) -> list[Record]:
    root = corpus_root()
    files = sorted((root / "stories").glob("*.jsonl"))
    if include_neutral:
        files.append(root / "neutral.jsonl")
    out: list[Record] = []
    for path in files:
        out.extend(_record_from_row(row, path, i, "text", "emotion", "id") for i, row in _read_jsonl(path))
    return out


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"cannot read {path}: {e}") from e
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{i}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise CorpusError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        yield i, row


def _record_from_row(row: dict, path, line: int, text_col: str, label_col: str, id_col: str) -> Record:
    if text_col not in row:
        raise CorpusError(f"{path}:{line}: no text column {text_col!r} (columns: {sorted(row)})")
    text = row[text_col]
    if not isinstance(text, str) or not text.strip():
        raise CorpusError(f"{path}:{line}: column {text_col!r} is empty or not text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:   # a lone surrogate ("\ud800" in JSON) no tokenizer can encode
        raise CorpusError(f"{path}:{line}: column {text_col!r} holds a character that is not valid Unicode "
                          f"({text[e.start:e.end]!a} at character {e.start})") from e
    known = {"id", "text", "emotion", "topic", "narration", "split", text_col, label_col, id_col}
    return Record(
        id=str(row.get(id_col, f"{Path(str(path)).stem}-{line}")),
        text=text,
        emotion=str(row.get(label_col, "") or ""),
        topic=str(row.get("topic", "") or ""),
        narration=str(row.get("narration", "") or ""),
        split=str(row.get("split", "train") or "train"),
        meta={k: v for k, v in row.items() if k not in known},
    )


def _is_hub_name(source) -> bool:
    return str(source).count("/") == 1 and not str(source).startswith((".", "/", "~"))


def _is_hf_dataset(source) -> bool:
    """A local dataset folder or a hub dataset name (what DatasetOptions apply to)."""
    if source is None or str(source) == "shipped":
        return False
    path = Path(source).expanduser()
    return path.is_dir() or (not path.exists() and _is_hub_name(source))


def _external_records(source, text_col: str, label_col: str, id_col: str, dataset: DatasetOptions,
                      limit: int) -> list[Record]:
    path = Path(source).expanduser()
    if path.is_file():
        rows = _rows_from_file(path)
    elif path.is_dir():
        rows = _rows_from_hf_dataset(str(path), True, dataset, limit)
    elif _is_hub_name(source):
        rows = _rows_from_hf_dataset(str(source), False, dataset, limit)
    else:
        raise CorpusError(f"corpus {source} does not exist")
    if not rows:
        raise CorpusError(f"corpus {source} is empty")
    picked = ",".join(x for x in (dataset.config, dataset.split) if x)
    where = f"{path}[{picked}]" if picked else path   # default ids of different configs and splits stay apart
    return [_record_from_row(row, where, i, text_col, label_col, id_col) for i, row in rows]


def _rows_from_file(path: Path) -> list[tuple[int, dict]]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            return list(_read_jsonl(path))
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:   # a byte-order mark is not part of a column name
                return [(i, dict(row)) for i, row in enumerate(csv.DictReader(f), 2)]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return list(enumerate(table.to_pylist(), 1))
        if suffix in (".txt", ".md", ""):
            lines = path.read_text(encoding="utf-8").splitlines()
            return [(i, {"text": line}) for i, line in enumerate(lines, 1) if line.strip()]
    except CorpusError:
        raise
    except Exception as e:  # pyarrow, csv and decoding errors all mean the same to a user
        raise CorpusError(f"cannot read {path}: {e}") from e
    raise CorpusError(f"{path}: unsupported corpus format {suffix!r} (use .jsonl, .csv, .parquet or .txt)")


def _import_datasets():
    try:
        import datasets
    except ImportError as e:
        raise CorpusError("reading Hugging Face datasets needs the optional extra 'hf': "
                          "pip install 'saekit[hf]' (or pip install datasets)") from e
    return datasets


def _rows_from_hf_dataset(name: str, local: bool, opts: DatasetOptions, limit: int) -> list[tuple[int, dict]]:
    """Rows of a folder saved with save_to_disk, a local dataset repository folder, or a hub dataset."""
    datasets = _import_datasets()
    folder = Path(name)
    if local and ((folder / "dataset_dict.json").exists() or (folder / "state.json").exists()):
        if opts.config:
            raise CorpusError(f"{name} was saved with save_to_disk and has no configurations; "
                              f"drop --dataset-config {opts.config}")
        try:
            ds = _pick_split(datasets.load_from_disk(name), opts.split, name)
        except CorpusError:
            raise
        except Exception as e:
            raise CorpusError(f"{name} is not a saved Hugging Face dataset folder: {e}") from e
        ds = ds.to_iterable_dataset() if opts.streaming else ds
    else:
        if not local:
            from saekit.model import hub_reachable

            if not hub_reachable():
                raise CorpusError(f"cannot fetch dataset {name!r}: the Hugging Face hub is unreachable; "
                                  "save it with datasets' save_to_disk and pass the folder")
        try:
            ds = datasets.load_dataset(name, opts.config or None, split=opts.split or None, streaming=opts.streaming)
        except Exception as e:  # unknown config or split, unreadable files: datasets' message says which
            raise CorpusError(f"cannot read dataset {name} (config {opts.config or 'default'}, "
                              f"split {opts.split or 'default'}): {e}") from e
        ds = _pick_split(ds, opts.split, name)
    return list(enumerate(itertools.islice(ds, limit or None), 1))


def _pick_split(ds, split: str, name: str):
    """One split of a dataset dict: the one asked for, else "train", else the first."""
    if not isinstance(ds, dict):   # DatasetDict and IterableDatasetDict are dicts
        if split and getattr(ds, "split", None) not in (None, split):
            raise CorpusError(f"dataset {name} holds only the split {ds.split!r}, not {split!r}")
        return ds
    if split and split not in ds:
        raise CorpusError(f"dataset {name} has no split {split!r}; its splits: {sorted(ds)}")
    return ds[split or ("train" if "train" in ds else next(iter(ds)))]


def assign_splits(records: list[Record], test_fraction: float = 0.2, seed: int = 0) -> list[Record]:
    """A stratified split, deterministic so a corpus keeps its split when stored.

    Stories: within each emotion, ordered by (mode of expression, narration, a fixed hash of the id),
    every 1/test_fraction-th goes to test, so every emotion's test stories spread over its modes and
    both narrations. Neutral texts: the same within each kind (topic).
    """
    import hashlib
    from dataclasses import replace

    def key(i: int) -> tuple:
        r = records[i]
        return (str(r.meta.get("mode", "")), r.narration, hashlib.sha256(f"{seed}:{r.id}".encode()).hexdigest())

    groups: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(records):
        groups[(r.emotion, r.topic if r.emotion == NEUTRAL else "")].append(i)
    split = ["train"] * len(records)
    step = max(2, round(1 / test_fraction))
    for members in groups.values():
        for rank, i in enumerate(sorted(members, key=key)):
            if rank % step == step - 1:
                split[i] = "test"
    return [replace(r, split=s) for r, s in zip(records, split)]


def write_jsonl(path: Path, records: Iterable[Record]) -> None:
    from saekit.artifacts import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records))


# ---------------------------------------------------------------------------- emotions and scenarios


POSITIVE_CLUSTERS = {"exuberant joy", "peaceful contentment", "compassionate gratitude", "competitive pride",
                     "playful amusement"}
"""The paper's clusters of positive valence; an emotion's cluster sign stands in for valence without ratings."""


def valence_sign(emotion: str) -> float | None:
    """+1 for an emotion of a positive cluster, -1 for another shipped one, None for an unknown emotion."""
    info = emotion_table().get(emotion)
    return None if info is None else (1.0 if info["cluster"] in POSITIVE_CLUSTERS else -1.0)


def emotion_table() -> dict[str, dict]:
    """{emotion: {"cluster": ..., "forbidden": [regex, ...]}} for the shipped emotions."""
    return json.loads((corpus_root() / "emotions.json").read_text())["emotions"]


def forbidden_patterns(emotion: str) -> list[re.Pattern]:
    info = emotion_table()[emotion]
    words = info["forbidden"] + [re.escape(emotion)]
    return [re.compile(r"\b" + w + r"\b", re.IGNORECASE) for w in words]


def paper_topics() -> list[str]:
    return [line.strip() for line in (corpus_root() / "topics.txt").read_text().splitlines() if line.strip()]


def load_scenario(name: str):
    """A shipped scenario set: live_dialogue, implicit, dose_response, impossible_task, probes."""
    root = corpus_root() / "scenarios"
    for suffix in (".jsonl", ".json"):
        path = root / f"{name}{suffix}"
        if path.exists():
            if suffix == ".jsonl":
                return [row for _, row in _read_jsonl(path)]
            return json.loads(path.read_text())
    names = sorted(p.stem for p in root.iterdir() if p.suffix in (".json", ".jsonl"))
    raise CorpusError(f"no scenario set {name!r}; shipped sets: {names}")


# ---------------------------------------------------------------------------- checks


def word_count(text: str) -> int:
    return len(text.split())


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def near_duplicates(records: list[Record], threshold: float = 0.3) -> list[tuple[str, str, float]]:
    """Pairs whose word 5-gram Jaccard similarity reaches `threshold`."""
    sh = [_shingles(r.text) for r in records]
    index: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, s in enumerate(sh):
        for g in s:
            index[g].append(i)
    shared: collections.Counter = collections.Counter()
    for ids in index.values():
        if len(ids) > 50:  # a stock phrase, not evidence of copying
            continue
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                shared[ids[a], ids[b]] += 1
    out = []
    for (a, b), n in shared.items():
        jac = n / len(sh[a] | sh[b])
        if jac >= threshold:
            out.append((records[a].id, records[b].id, round(jac, 3)))
    return sorted(out, key=lambda t: -t[2])


def validate(records: list[Record], stories_per_emotion: int = MIN_STORIES, topics_per_emotion: int = MIN_TOPICS) -> list[str]:
    """Every problem found in a story corpus, as 'id: what' lines (empty when it is sound)."""
    problems: list[str] = []
    table = emotion_table()
    topics = set(paper_topics())
    ids = collections.Counter(r.id for r in records)
    problems += [f"{i}: duplicate id" for i, n in ids.items() if n > 1]
    texts = collections.Counter(r.text.strip().lower() for r in records)
    problems += [f"{r.id}: exact duplicate text" for r in records if texts[r.text.strip().lower()] > 1]
    by_emotion: dict[str, list[Record]] = collections.defaultdict(list)
    for r in records:
        by_emotion[r.emotion].append(r)
        if r.split not in SPLITS:
            problems.append(f"{r.id}: split {r.split!r} not in {SPLITS}")
        if r.emotion == NEUTRAL:
            continue
        if r.emotion not in table:
            problems.append(f"{r.id}: emotion {r.emotion!r} has no synonym list in emotions.json")
            continue
        n = word_count(r.text)
        if not MIN_WORDS <= n <= MAX_WORDS:
            problems.append(f"{r.id}: {n} words, outside {MIN_WORDS}-{MAX_WORDS}")
        if r.topic not in topics:
            problems.append(f"{r.id}: topic {r.topic!r} is not one of the paper's topics")
        if r.narration not in ("first", "third"):
            problems.append(f"{r.id}: narration {r.narration!r} is not first/third")
        for pat in forbidden_patterns(r.emotion):
            if m := pat.search(r.text):
                problems.append(f"{r.id}: forbidden word {m.group(0)!r} for {r.emotion}")
    for emo, recs in sorted(by_emotion.items()):
        if emo == NEUTRAL:
            continue
        if len(recs) < stories_per_emotion:
            problems.append(f"{emo}: {len(recs)} stories, need {stories_per_emotion}")
        if len({r.topic for r in recs}) < topics_per_emotion:
            problems.append(f"{emo}: {len({r.topic for r in recs})} topics, need {topics_per_emotion}")
        if not any(r.split == "test" for r in recs):
            problems.append(f"{emo}: no test stories")
    problems += [f"{a} ~ {b}: near-duplicate (Jaccard {j})" for a, b, j in near_duplicates(records)]
    return problems


def stats(records: list[Record]) -> dict:
    """Counts per emotion, topic, narration and split, and a word-length histogram."""
    lengths = [word_count(r.text) for r in records]
    bins = list(range(0, max(lengths) + 25, 25))
    hist = collections.Counter((n // 25) * 25 for n in lengths)
    return {
        "records": len(records),
        "emotions": dict(sorted(collections.Counter(r.emotion for r in records).items())),
        "splits": dict(collections.Counter(r.split for r in records)),
        "narration": dict(collections.Counter(r.narration for r in records)),
        "topics": len({r.topic for r in records}),
        "length_histogram": {f"{b}-{b + 24}": hist.get(b, 0) for b in bins if hist.get(b, 0)},
        "words_min_mean_max": (min(lengths), round(sum(lengths) / len(lengths), 1), max(lengths)),
    }
