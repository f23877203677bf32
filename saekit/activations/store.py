"""The activation store: the harvest folder's format, tokenising texts into it, and reading it back.

Layout of a harvest folder:
    manifest.json               model, hooks, dtype, d_model, documents (ids, token offsets),
                                finished shards with sizes and hashes, saekit version, config
    shard-00000.safetensors     per hook: "<hook>" [T, D] per-token activations; plus
                                "doc_index", "position", "token_id" [T]; per-doc "<hook>/mean", "<hook>/max"
    pooled.safetensors          per-document pooled vectors of all shards, [n_docs, D] per hook

Every file is written under a temporary name and renamed when complete (saekit.artifacts), and
records its sha256 in the manifest: readers refuse a file whose bytes differ (hashed on first
read) and any value training could not use. saekit.harvest writes folders; `Activations` reads
them for training (saekit.activations.sources), ranking, evidence and the experiments.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from saekit.artifacts import MANIFEST, POOLED, atomic_write_bytes, content_hash, file_sha256, window_id
from saekit.broad import corpus_records
from saekit.corpus import DatasetOptions, Record
from saekit.errors import SaekitError
from saekit.model import LM, chat_token_ids, load_tokenizer, prepends_bos


class HarvestError(SaekitError, RuntimeError):
    """Bad harvest input or a damaged output folder; the message says what and where."""



@dataclass
class Piece:
    """A tokenised document, or one window of a long one."""
    doc_id: str
    token_ids: list[int]



def check_hooks(model, hooks: list[str]) -> None:
    """Refuse hook names the model does not have, naming the valid ones."""
    problem = LM.of(model).unknown_hooks(hooks)
    if problem:
        raise HarvestError(problem)


def pool_start(n_tokens: int, offset: int) -> int:
    """First token of the pooled mean: `offset`, or half the text when it is not longer than that."""
    return offset if n_tokens > offset else n_tokens // 2



def dataset_options(config: dict) -> DatasetOptions:
    """The Hugging Face dataset options of a harvest config (its stored dict form)."""
    return DatasetOptions(config=config.get("dataset_config", ""), split=config.get("dataset_split", ""),
                          streaming=bool(config.get("streaming", False)))


def harvest_records(config: dict) -> list[Record]:
    """The records a harvest reads, from its config's dict form (as stored in the manifest): the same
    corpus, columns, dataset configuration and split, so later stages see the harvested texts."""
    return corpus_records(config.get("corpus", "shipped"), text_column=config.get("text_column", "text"),
                       label_column=config.get("label_column", "emotion"), dataset=dataset_options(config),
                       limit=config.get("limit", 0))


def dataset_provenance(config: dict) -> dict:
    """Where a harvest's texts came from, for SAE metadata: the corpus, and a dataset's config and split."""
    opts = dataset_options(config)
    extra = {"saekit_dataset_config": opts.config, "saekit_dataset_split": opts.split}
    return {"dataset_path": config.get("corpus", "shipped")} | {k: v for k, v in extra.items() if v}


def documents_hash(pieces: list[Piece]) -> str:
    """A content hash of the tokenised documents (ids and token ids): the same texts give the same hash."""
    return content_hash([(p.doc_id, p.token_ids) for p in pieces])


def harvest_prepends_bos(manifest: dict) -> bool:
    """Whether the harvested tokens start with BOS (recorded since saekit wrote it; else asked of the tokenizer)."""
    if "prepend_bos" in manifest:
        return bool(manifest["prepend_bos"])
    return prepends_bos(load_tokenizer(manifest["model"]))


def token_ids(tokenizer, records: list[Record]) -> list[list[int]]:
    """Each record's tokens: its text as the tokenizer encodes it, or, for a record carrying a
    conversation (meta["messages"]), that conversation in the model's chat format with one BOS."""
    plain = [i for i, r in enumerate(records) if not r.meta.get("messages")]
    out: list[list[int]] = [[] for _ in records]
    if plain:
        for i, ids in zip(plain, tokenizer([records[i].text for i in plain], add_special_tokens=True)["input_ids"]):
            out[i] = list(ids)
    for i, r in enumerate(records):
        if r.meta.get("messages"):
            out[i] = chat_token_ids(tokenizer, r.meta["messages"])
    return out


def tokenize(tokenizer, records: list[Record], max_tokens: int, overflow: str) -> list[Piece]:
    pieces, too_long = [], 0
    ids_list = token_ids(tokenizer, records)
    for rec, ids in zip(records, ids_list):
        if len(ids) <= max_tokens:
            pieces.append(Piece(rec.id, ids))
            continue
        too_long += 1
        if overflow == "truncate":
            pieces.append(Piece(rec.id, ids[:max_tokens]))
        else:
            for w, start in enumerate(range(0, len(ids), max_tokens)):
                pieces.append(Piece(window_id(rec.id, w), ids[start:start + max_tokens]))
    if too_long:
        verb = "truncated" if overflow == "truncate" else "split into windows"
        warnings.warn(f"{too_long} of {len(records)} texts are longer than {max_tokens} tokens and were {verb}",
                      stacklevel=2)
    return pieces


MANIFEST_KEYS = ("identity", "documents", "shards", "hooks", "d_model")
PART_FILE = re.compile(r"\.manifest\.rank\d+\.json")
HARVEST_FILE = re.compile(r"\.?(shard-\d+\.safetensors|manifest(\.rank\d+)?\.json|pooled\.safetensors)")
"""Files a harvest writes, finished or under their temporary names."""
LEFTOVER_FILE = re.compile(HARVEST_FILE.pattern + r"(\.\w+)?\.(tmp|partial)")
"""Temporary files a killed write leaves behind."""
VALUE_LIMIT = 1.8e19
"""Larger magnitudes square past float32's largest number: training losses would only say inf."""



def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:  # written atomically: only a hand edit or a foreign file is broken
        raise HarvestError(f"{path} is corrupt ({e}); delete it and rerun the harvest "
                           "(the shards it lists are harvested again)") from e


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    missing = [k for k in MANIFEST_KEYS if k not in manifest] if isinstance(manifest, dict) else MANIFEST_KEYS
    if missing:
        raise HarvestError(f"{path} is not a saekit harvest manifest (no {missing[0]!r}); "
                           f"delete the folder {out} and harvest again")
    return manifest


def on_disk(out: Path, entry: dict | None) -> bool:
    """The shard's file is there with the recorded size (cheap: no read)."""
    if entry is None:
        return False
    path = out / entry["file"]
    return path.exists() and path.stat().st_size == entry["bytes"]


def is_finished(out: Path, entry: dict | None, checked: set[tuple[str, str]]) -> bool:
    """For resuming: the file is there with the recorded size and sha256 (hashed once per `checked`)."""
    if entry is None or not on_disk(out, entry):
        return False
    key = (entry["file"], entry["sha256"])
    if key not in checked and file_sha256(out / entry["file"]) == entry["sha256"]:
        checked.add(key)
    return key in checked



def write_tensors(path: Path, tensors: dict[str, torch.Tensor], checked: set[tuple[str, str]],
                   metadata: dict[str, str] | None = None) -> dict:
    """Write a safetensors file atomically; its manifest entry (name, size, sha256), already checked."""
    data = save_safetensors(tensors, metadata)
    atomic_write_bytes(path, data)
    sha = hashlib.sha256(data).hexdigest()
    entry = {"file": path.name, "bytes": len(data), "sha256": sha}
    checked.add((path.name, sha))
    return entry



def out_of_range(tensors: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with the first float tensor holding NaN, inf or values beyond VALUE_LIMIT; None if none."""
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel():
            lo, hi = (float(v) for v in torch.aminmax(t))
            if not -VALUE_LIMIT <= lo <= hi <= VALUE_LIMIT:  # False for NaN too
                return f"{name!r} holds values from {lo:.3g} to {hi:.3g}"
    return None


def load_shard(out: Path, entry: dict, checked: set[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """A harvest file's tensors (a shard or pooled.safetensors), as `entry` in the manifest describes it.

    The first read in the scope of `checked` (a harvest run, an opened folder) hashes the file
    against the recorded sha256, so a file altered since the harvest is refused, not used; every
    read refuses NaN, inf and values too large to square in float32.
    """
    path = Path(out) / entry["file"]
    if not path.exists():
        raise HarvestError(f"{path} is missing; rerun the harvest to rebuild it")
    sha = entry.get("sha256")
    key = (str(entry["file"]), str(sha))
    if sha is not None and key not in checked:
        if file_sha256(path) != sha:
            raise HarvestError(f"{path} is corrupt: its contents differ from the sha256 in {Path(out) / MANIFEST} "
                               "(altered or truncated since the harvest); rerun the same harvest to redo it")
        checked.add(key)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise HarvestError(f"{path} is corrupt ({e}); delete it and rerun the harvest to rebuild it") from e
    problem = out_of_range(tensors)
    if problem:
        raise HarvestError(f"{path}: {problem}, out of the range training can use; "
                           "the file was altered or the model overflowed: rerun the harvest (in float32)")
    return tensors


def _started(path: Path) -> bool:
    """Whether a folder without a manifest holds what an interrupted harvest leaves (shards, part files)."""
    return path.is_dir() and any(HARVEST_FILE.match(name) for name in os.listdir(path))


def _check_widths(path: Path, manifest: dict) -> None:
    """The manifest's d_model and document count against the pooled vectors' shapes (read from the header)."""
    pooled = path / POOLED
    try:
        with safe_open(str(pooled), "pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise HarvestError(f"{pooled} is missing or corrupt ({e}); rerun the harvest") from e
    want = [len(manifest["documents"]), manifest["d_model"]]
    for key, shape in shapes.items():
        if list(shape) != want:
            raise HarvestError(f"{path / MANIFEST} says d_model {want[1]} for {want[0]} documents, but {pooled} "
                               f"holds {key!r} with shape {list(shape)} (d_model {shape[-1]}): the manifest was "
                               "edited or the files come from different harvests; rerun the harvest")


@dataclass
class Activations:
    """A finished harvest folder: its manifest, pooled vectors and per-token shards."""
    path: Path
    manifest: dict
    checked: set[tuple[str, str]] = field(default_factory=set, repr=False)
    """Files whose sha256 this object has verified: each is hashed once, on first read."""

    @classmethod
    def open(cls, path: str | Path) -> "Activations":
        path = Path(path)
        manifest = read_manifest(path)
        if manifest is None and _started(path):
            raise HarvestError(f"the harvest in {path} is unfinished (shards but no {MANIFEST} yet); "
                               "rerun it with the same config to resume")
        if manifest is None:
            raise HarvestError(f"{path} has no {MANIFEST}: not a harvest folder (run `saekit harvest` first)")
        if not manifest.get("complete"):
            raise HarvestError(f"the harvest in {path} is unfinished; rerun it with the same config to resume")
        _check_widths(path, manifest)
        return cls(path, manifest)

    @property
    def documents(self) -> list[dict]:
        return self.manifest["documents"]

    def read(self, entry: dict) -> dict[str, torch.Tensor]:
        """The tensors of a file the manifest lists (an entry of manifest["shards"]), verified on first read."""
        return load_shard(self.path, entry, self.checked)

    def pooled(self, hook: str, kind: Literal["mean", "max"] = "mean") -> torch.Tensor:
        """[n_docs, D] pooled activations, in manifest document order."""
        self._check_hook(hook)
        return self.read(self.manifest.get("pooled", {"file": POOLED}))[f"{hook}/{kind}"]

    def iter_shards(self, hook: str):
        """Yields (acts_TD, doc_index_T, position_T) shard by shard."""
        for s in self.iter_shard_tensors(hook):
            yield s["acts"], s["doc_index"], s["position"]

    def iter_shard_tensors(self, hook: str):
        """Yields dicts with "acts" [T, D], "doc_index", "position" and "token_id" [T], shard by shard."""
        self._check_hook(hook)
        if hook not in self.manifest.get("token_hooks", self.manifest["hooks"]):
            raise HarvestError(f"{self.path} kept only pooled vectors for {hook}; per-token activations "
                               f"exist for {self.manifest['token_hooks']}")
        for k in sorted(self.manifest["shards"], key=int):
            t = self.read(self.manifest["shards"][k])
            yield {"acts": t[hook], "doc_index": t["doc_index"], "position": t["position"], "token_id": t["token_id"]}

    def tokens(self, hook: str) -> torch.Tensor:
        """All per-token activations [T, D] (fits in memory for corpora of this size)."""
        return torch.cat([a for a, _, _ in self.iter_shards(hook)])

    def verify(self) -> list[str]:
        """Problems with the folder's files: missing, resized or altered shards and pooled vectors."""
        problems = []
        entries = list(self.manifest["shards"].values()) + [e for e in [self.manifest.get("pooled")] if e]
        for entry in entries:
            p = self.path / entry["file"]
            if not p.exists():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != entry["bytes"] or file_sha256(p) != entry["sha256"]:
                problems.append(f"{p}: contents differ from the manifest (corrupt or replaced)")
        return problems

    def _check_hook(self, hook: str) -> None:
        if hook not in self.manifest["hooks"]:
            raise HarvestError(f"hook {hook!r} was not harvested in {self.path}; it has {self.manifest['hooks']}")


def summarize(path: Path) -> dict:
    acts = Activations.open(path)
    m = acts.manifest
    return {"folder": str(path), "model": m["model"], "hooks": m["hooks"], "d_model": m["d_model"],
            "documents": len(m["documents"]), "tokens": m["total_tokens"],
            "counted tokens": f"{m['counted_tokens']} ({m['token_rule']['description']})" if "token_rule" in m else "n/a",
            "shards": len(m["shards"]),
            "dtype": m["dtype"]}
