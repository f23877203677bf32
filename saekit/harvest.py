"""Harvest residual-stream activations over a corpus into sharded safetensors files.

Layout of an output folder:
    manifest.json               model, hooks, dtype, d_model, documents (ids, token offsets),
                                finished shards with sizes and hashes, saekit version, config
    shard-00000.safetensors     per hook: "<hook>" [T, D] per-token activations; plus
                                "doc_index", "position", "token_id" [T]; per-doc "<hook>/mean", "<hook>/max"
    pooled.safetensors          per-document pooled vectors of all shards, [n_docs, D] per hook

Every file is written under a temporary name and renamed when complete (saekit.artifacts), and
the manifest is rewritten after each shard, so an interrupted run (kill -9 included) loses no
finished shard and never takes a half-written file for a finished one. The manifest records each
file's sha256: a resume redoes a shard whose bytes differ, and readers refuse one (hashed on first read).

Under torchrun (saekit.distributed) rank r of W harvests the shards s with s % W == r and records
them in its own part file `.manifest.rank<r>.json`; after a barrier rank 0 merges the parts into
manifest.json and pooled.safetensors. Until then a folder of shards and part files without a
finished manifest reads as an unfinished harvest; a rerun (with any number of processes) resumes
from the manifest and every part file, so shards finished by a rank that died are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from saekit import __version__
from saekit import distributed as D
from saekit.artifacts import (
    MANIFEST,
    POOLED,
    SHARD_PATTERN,
    atomic_write_bytes,
    atomic_write_json,
    content_hash,
    file_sha256,
    story_of,
    window_id,
)
from saekit.config import to_dict
from saekit.corpus import CorpusError, DatasetOptions, Record, load_corpus
from saekit.errors import SaekitError
from saekit.model import (  # noqa: F401
    DEFAULT_MODEL,
    RESIDUAL_HOOK,
    d_model,
    hook_layer,
    hook_names,
    is_bridge,
    load_hf,
    load_model,
    load_tokenizer,
    n_layers,
    pad_token_id,
    parse_dtype,
    prepends_bos,
    stop_layer,
)
from saekit.model import capture_padded as forward_capture  # a module attribute, so tests can stand in for it
from saekit.tokens import DEFAULT as DEFAULT_RULE


class HarvestError(SaekitError, RuntimeError):
    """Bad harvest input or a damaged output folder; the message says what and where."""


@dataclass
class HarvestConfig:
    model: str = DEFAULT_MODEL
    """Model folder, hub name, "smollm2-135m-instruct" (embedded default), "gemma3-270m" (saekit[gemma]) or "tiny"."""
    hooks: list[str] = field(default_factory=lambda: ["blocks.20.hook_resid_post"])
    """TransformerLens hook names to record."""
    corpus: str = "shipped"
    """"shipped", or a .jsonl/.csv/.parquet/.txt file, a saved HF dataset folder or hub name."""
    text_column: str = "text"
    label_column: str = "emotion"
    dataset_config: str = ""
    """Hugging Face datasets only: the configuration to read (load_dataset's `name`)."""
    dataset_split: str = ""
    """Hugging Face datasets only: the split to read (default "train", else the first)."""
    streaming: bool = False
    """Hugging Face datasets only: stream rows instead of downloading the dataset (with `limit`, only those)."""
    token_hooks: list[str] | None = None
    """Hooks whose per-token activations are stored (default: all); the others keep only pooled vectors."""
    out: str = "artifacts/activations/default"
    batch_size: int = 8
    max_tokens: int = 512
    """Longer texts are truncated (with a warning) or cut into windows of this many tokens."""
    overflow: Literal["truncate", "window"] = "truncate"
    docs_per_shard: int = 256
    pool_offset: int = 50
    """Pooled means start at this token (the paper's 50); shorter texts start at half their length."""
    dtype: str = "float32"
    """Model compute dtype (float32 or bfloat16) when harvest loads the model; a model passed in computes
    in its own dtype, and the manifest records that one. Activations are stored in `store_dtype`."""
    store_dtype: str = "float32"
    """dtype of the saved activations (bfloat16 halves the disk)."""
    device: str = "cpu"
    limit: int = 0
    """Harvest only the first N documents (0 = all), for quick looks."""

    def validate(self) -> None:
        if not self.hooks:
            raise ValueError("hooks is empty: name at least one hook, e.g. blocks.20.hook_resid_post")
        for name in ("batch_size", "max_tokens", "docs_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.pool_offset < 0:
            raise ValueError(f"pool_offset must be >= 0, got {self.pool_offset}")
        if self.limit < 0:
            raise ValueError(f"limit must be 0 (all) or a number of documents, got {self.limit}")
        parse_dtype(self.dtype), parse_dtype(self.store_dtype)
        extra = set(self.token_hooks or []) - set(self.hooks)
        if extra:
            raise ValueError(f"token_hooks {sorted(extra)} are not among hooks {self.hooks}")

    @property
    def stored_token_hooks(self) -> list[str]:
        return list(self.hooks if self.token_hooks is None else self.token_hooks)


@dataclass
class Piece:
    """A tokenised document, or one window of a long one."""
    doc_id: str
    token_ids: list[int]


def dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name of a dtype ("bf16" -> "bfloat16"), as manifests and stored specs record it."""
    return str(parse_dtype(dtype)).removeprefix("torch.")


def compute_dtype(model) -> str:
    """The dtype a loaded model computes in (its parameters')."""
    return dtype_name(next(model.parameters()).dtype)


def pool_start(n_tokens: int, offset: int) -> int:
    """First token of the pooled mean: `offset`, or half the text when it is not longer than that."""
    return offset if n_tokens > offset else n_tokens // 2


def check_hooks(model, hooks: list[str]) -> None:
    valid = set(hook_names(model))
    bad = [h for h in hooks if h not in valid]
    if bad:
        resid = sorted((h for h in valid if "hook_resid" in h), key=lambda h: (hook_layer(h) or 0, h))
        more = "" if is_bridge(model) else " (other TransformerLens hooks need a model from saekit.load_model)"
        raise HarvestError(
            f"unknown hook(s) {bad} for this model ({n_layers(model)} layers). Residual-stream hooks: "
            f"{resid[:3]} ... {resid[-3:]}{more}; all {len(valid)} valid names: saekit.model.hook_names(model)"
        )


def only_residual(hooks: list[str]) -> bool:
    return all(RESIDUAL_HOOK.match(h) for h in hooks)


def dataset_options(config: dict) -> DatasetOptions:
    """The Hugging Face dataset options of a harvest config (its stored dict form)."""
    return DatasetOptions(config=config.get("dataset_config", ""), split=config.get("dataset_split", ""),
                          streaming=bool(config.get("streaming", False)))


def harvest_records(config: dict) -> list[Record]:
    """The records a harvest reads, from its config's dict form (as stored in the manifest): the same
    corpus, columns, dataset configuration and split, so later stages see the harvested texts."""
    return load_corpus(config.get("corpus", "shipped"), text_column=config.get("text_column", "text"),
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


def tokenize(tokenizer, records: list[Record], max_tokens: int, overflow: str) -> list[Piece]:
    pieces, too_long = [], 0
    ids_list = tokenizer([r.text for r in records], add_special_tokens=True)["input_ids"]
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


_MANIFEST_KEYS = ("identity", "documents", "shards", "hooks", "d_model")
_PART = re.compile(r"\.manifest\.rank\d+\.json")
_OURS = re.compile(r"\.?(shard-\d+\.safetensors|manifest(\.rank\d+)?\.json|pooled\.safetensors)")
"""Files a harvest writes, finished or under their temporary names."""
_LEFTOVER = re.compile(_OURS.pattern + r"(\.\w+)?\.(tmp|partial)")
"""Temporary files a killed write leaves behind."""
VALUE_LIMIT = 1.8e19
"""Larger magnitudes square past float32's largest number: training losses would only say inf."""


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:  # written atomically: only a hand edit or a foreign file is broken
        raise HarvestError(f"{path} is corrupt ({e}); delete it and rerun the harvest "
                           "(the shards it lists are harvested again)") from e


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    manifest = _read_json(path)
    missing = [k for k in _MANIFEST_KEYS if k not in manifest] if isinstance(manifest, dict) else _MANIFEST_KEYS
    if missing:
        raise HarvestError(f"{path} is not a saekit harvest manifest (no {missing[0]!r}); "
                           f"delete the folder {out} and harvest again")
    return manifest


def _on_disk(out: Path, entry: dict | None) -> bool:
    """The shard's file is there with the recorded size (cheap: no read)."""
    if entry is None:
        return False
    path = out / entry["file"]
    return path.exists() and path.stat().st_size == entry["bytes"]


def _finished(out: Path, entry: dict | None, checked: set[tuple[str, str]]) -> bool:
    """For resuming: the file is there with the recorded size and sha256 (hashed once per `checked`)."""
    if entry is None or not _on_disk(out, entry):
        return False
    key = (entry["file"], entry["sha256"])
    if key not in checked and file_sha256(out / entry["file"]) == entry["sha256"]:
        checked.add(key)
    return key in checked


def _part_name(rank: int, world: int) -> str:
    """Where a rank records its finished shards: the manifest itself for one process."""
    return MANIFEST if world == 1 else f".manifest.rank{rank}.json"


def _merge_parts(out: Path, manifest: dict, done: Callable[[dict | None], bool]) -> list[Path]:
    """Take from the part files the shards `done` accepts where `manifest` has none it accepts; the parts read.

    A part of another config means the folder holds another unfinished harvest: refused, as for the manifest.
    """
    parts = sorted(p for p in out.iterdir() if _PART.fullmatch(p.name))
    for part in parts:
        entries = _read_json(part)
        if entries.get("identity") != manifest["identity"]:
            raise HarvestError(f"{out} holds an unfinished harvest with a different config or corpus ({part.name}); "
                               "choose another --out or delete the folder")
        for k, e in entries["shards"].items():
            if not done(manifest["shards"].get(k)) and done(e):
                manifest["shards"][k] = e
    return parts


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], checked: set[tuple[str, str]],
                   metadata: dict[str, str] | None = None) -> dict:
    """Write a safetensors file atomically; its manifest entry (name, size, sha256), already checked."""
    data = save_safetensors(tensors, metadata)
    atomic_write_bytes(path, data)
    sha = hashlib.sha256(data).hexdigest()
    entry = {"file": path.name, "bytes": len(data), "sha256": sha}
    checked.add((path.name, sha))
    return entry


def harvest(cfg: HarvestConfig, model=None, records: list[Record] | None = None,
            progress: Callable[[int, int, int], None] | None = None, tokenizer=None) -> Path:
    """Run the model over the corpus and write shards, pooled vectors and a manifest to cfg.out.

    `model` is a TransformerBridge (any hook) or a plain transformers model with `tokenizer`
    (residual hooks, captured by plain forward hooks: the fast path). Without one, residual
    hooks load the plain model and others the bridge.
    Resumes: shards the manifest or a part file lists as finished, with that size and sha256, are
    skipped; any other shard (missing, altered, unrecorded) is harvested again.
    `progress(docs_done, docs_total, tokens_done)` is called after every batch.
    """
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise HarvestError(f"out {out} exists and is not a folder; name a folder for the harvest")
    D.setup(cfg.device)  # before the model loads: on CUDA it picks this rank's GPU
    if records is None:
        records = harvest_records(to_dict(cfg))
    if cfg.limit:
        records = records[: cfg.limit]
    if not records:
        raise CorpusError(f"corpus {cfg.corpus} is empty: nothing to harvest")
    if model is None and only_residual(cfg.hooks):
        model, tokenizer = load_hf(cfg.model, device=cfg.device, dtype=cfg.dtype)
    elif model is None:
        model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    cfg = replace(cfg, dtype=compute_dtype(model))  # what computed the activations, as the manifest records it
    tok = model.tokenizer if is_bridge(model) else tokenizer
    if tok is None:
        raise HarvestError("a plain transformers model needs its tokenizer: harvest(cfg, model, tokenizer=...)")
    check_hooks(model, cfg.hooks)
    pieces = tokenize(tok, records, cfg.max_tokens, cfg.overflow)
    by_id = {r.id: r for r in records}

    identity = {"model": cfg.model, "hooks": cfg.hooks, "corpus": cfg.corpus, "max_tokens": cfg.max_tokens,
                "overflow": cfg.overflow, "token_hooks": cfg.stored_token_hooks, "docs_per_shard": cfg.docs_per_shard,
                "pool_offset": cfg.pool_offset,
                "dtype": cfg.dtype, "store_dtype": cfg.store_dtype, "limit": cfg.limit,
                "documents": documents_hash(pieces)}
    rank, world = D.rank(), D.world()
    manifest = _read_manifest(out)
    if manifest is not None and manifest.get("identity") != identity:
        raise HarvestError(f"{out} holds a harvest with a different config or corpus; "
                           "choose another --out or delete the folder")
    out.mkdir(parents=True, exist_ok=True)
    offsets, total = [], 0
    for p in pieces:
        offsets.append(total)
        total += len(p.token_ids)
    shards = [list(range(s, min(s + cfg.docs_per_shard, len(pieces)))) for s in range(0, len(pieces), cfg.docs_per_shard)]
    if manifest is None:
        manifest = {
            "saekit_version": __version__, "identity": identity, "config": to_dict(cfg),
            "model": cfg.model, "hooks": cfg.hooks, "token_hooks": cfg.stored_token_hooks, "dtype": cfg.store_dtype,
            "d_model": d_model(model),
            "n_layers": n_layers(model), "total_tokens": total, "pool_offset": cfg.pool_offset,
            "prepend_bos": prepends_bos(tok),
            # every position is stored; later stages count those of the token rule (saekit.tokens)
            "token_rule": json.loads(DEFAULT_RULE.to_json()),
            "counted_tokens": sum(max(len(p.token_ids) - DEFAULT_RULE.skip_first, 0) for p in pieces),
            "documents": [{"id": p.doc_id, "label": by_id[story_of(p.doc_id)].emotion,
                           "split": by_id[story_of(p.doc_id)].split, "n_tokens": len(p.token_ids),
                           "token_offset": offsets[i], "shard": i // cfg.docs_per_shard}
                          for i, p in enumerate(pieces)],
            "shards": {}, "complete": False,
        }
    # Until rank 0 finishes, manifest.json may not exist (several processes) or be incomplete: the
    # folder reads as an unfinished harvest either way (Activations.open).
    _merge_parts(out, manifest, lambda e: _on_disk(out, e))
    checked: set[tuple[str, str]] = set()
    todo = [s for s in range(rank, len(shards), world) if not _finished(out, manifest["shards"].get(str(s)), checked)]
    stop_at = stop_layer(model, cfg.hooks)
    store = parse_dtype(cfg.store_dtype)
    pad_id = pad_token_id(tok)
    docs_done = sum(len(shards[int(k)]) for k in manifest["shards"] if int(k) not in todo)
    tokens_done = 0
    for s in todo:
        members = shards[s]
        tensors = _harvest_shard(model, [pieces[i] for i in members], cfg, stop_at, pad_id, store,
                                 first_doc=members[0],
                                 on_batch=lambda d, t: progress and progress(docs_done + d, len(pieces), tokens_done + t))
        problem = out_of_range(tensors)
        if problem:
            raise HarvestError(f"the model's activations for shard {s} of {out} are out of range: {problem} "
                               f"(an overflow in dtype {cfg.dtype}? try dtype float32)")
        entry = _write_tensors(out / SHARD_PATTERN.format(s), tensors, checked, metadata={"shard": str(s)})
        manifest["shards"][str(s)] = entry | {"docs": [members[0], members[-1] + 1],
                                              "n_tokens": int(tensors["doc_index"].numel())}
        atomic_write_json(out / _part_name(rank, world), manifest)
        docs_done += len(members)
        tokens_done += int(tensors["doc_index"].numel())
    D.barrier()
    if D.is_main():
        _finish_manifest(out, manifest, len(shards), cfg.hooks, checked)
    D.barrier()
    return out


def _finish_manifest(out: Path, manifest: dict, n_shards: int, hooks: list[str], checked: set[tuple[str, str]]) -> None:
    """Merge the ranks' part files, check every shard is there once, write pooled vectors and manifest."""
    def done(entry):
        return _finished(out, entry, checked)

    parts = _merge_parts(out, manifest, done)
    missing = [s for s in range(n_shards) if not done(manifest["shards"].get(str(s)))]
    if missing:
        raise HarvestError(f"shards {missing} of {out} were not finished by any rank (or were altered since); "
                           "rerun the harvest to resume")
    manifest["pooled"] = _write_pooled(out, manifest, hooks, checked)
    manifest["complete"] = True
    atomic_write_json(out / MANIFEST, manifest)
    for path in parts + [p for p in out.iterdir() if _LEFTOVER.fullmatch(p.name)]:
        path.unlink(missing_ok=True)


def _harvest_shard(model, pieces: list[Piece], cfg: HarvestConfig, stop_at, pad_id, store, first_doc: int,
                   on_batch) -> dict[str, torch.Tensor]:
    # Sort by length inside the shard so batches carry little padding; outputs go back in order.
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i].token_ids))
    acts: dict[str, list[torch.Tensor]] = {h: [torch.empty(0)] * len(pieces) for h in cfg.hooks}
    done_docs = done_tokens = 0
    for b in range(0, len(order), cfg.batch_size):
        idx = order[b:b + cfg.batch_size]
        batch, mask_BT = forward_capture(model, [pieces[i].token_ids for i in idx], cfg.hooks, pad_id, stop_at)
        for h in cfg.hooks:
            for row, i in enumerate(idx):
                n = int(mask_BT[row].sum())
                acts[h][i] = batch[h][row, :n].float().cpu()
        done_docs += len(idx)
        done_tokens += int(mask_BT.sum())
        on_batch(done_docs, done_tokens)
    tensors: dict[str, torch.Tensor] = {}
    lengths = [len(p.token_ids) for p in pieces]
    tensors["doc_index"] = torch.cat([torch.full((n,), first_doc + i, dtype=torch.int64) for i, n in enumerate(lengths)])
    tensors["position"] = torch.cat([torch.arange(n, dtype=torch.int64) for n in lengths])
    tensors["token_id"] = torch.cat([torch.tensor(p.token_ids, dtype=torch.int64) for p in pieces])
    for h in cfg.hooks:
        per_doc = acts[h]
        if h in cfg.stored_token_hooks:
            tensors[h] = torch.cat(per_doc).to(store).contiguous()
        tensors[f"{h}/mean"] = torch.stack([a[pool_start(len(a), cfg.pool_offset):].mean(0) for a in per_doc]).contiguous()
        tensors[f"{h}/max"] = torch.stack([a.max(0).values for a in per_doc]).contiguous()
    return tensors


def _write_pooled(out: Path, manifest: dict, hooks: list[str], checked: set[tuple[str, str]]) -> dict:
    """pooled.safetensors from the shards' per-document vectors; its manifest entry."""
    keys = [f"{h}/{kind}" for h in hooks for kind in ("mean", "max")]
    pooled: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for k in sorted(manifest["shards"], key=int):
        tensors = load_shard(out, manifest["shards"][k], checked)
        for key in keys:
            pooled[key].append(tensors[key])
    return _write_tensors(out / POOLED, {k: torch.cat(v).contiguous() for k, v in pooled.items()}, checked)


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
    return path.is_dir() and any(_OURS.match(name) for name in os.listdir(path))


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
        manifest = _read_manifest(path)
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
