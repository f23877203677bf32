"""The harvest stage: run a model over a corpus and write its activations into a harvest folder.

The folder's format, the tokenising and the reader are saekit.activations (the activation store).
The manifest is rewritten after each shard, so an interrupted run (kill -9 included) loses no
finished shard and never takes a half-written file for a finished one: a resume redoes a shard
whose bytes differ from the recorded sha256.

Under torchrun (saekit.distributed) rank r of W harvests the shards s with s % W == r and records
them in its own part file `.manifest.rank<r>.json`; after a barrier rank 0 merges the parts into
manifest.json and pooled.safetensors. Until then a folder of shards and part files without a
finished manifest reads as an unfinished harvest; a rerun (with any number of processes) resumes
from the manifest and every part file, so shards finished by a rank that died are kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import torch

from saekit import __version__
from saekit import distributed as D
from saekit.activations import (  # noqa: F401  (the reader, check_hooks and pool_start also reachable from here)
    LEFTOVER_FILE,
    PART_FILE,
    Activations,
    HarvestError,
    Piece,
    check_hooks,
    documents_hash,
    harvest_records,
    is_finished,
    load_shard,
    on_disk,
    out_of_range,
    pool_start,
    read_json,
    read_manifest,
    summarize,
    token_ids,
    tokenize,
    write_tensors,
)
from saekit.artifacts import MANIFEST, POOLED, SHARD_PATTERN, atomic_write_json, story_of
from saekit.broad import is_broad, load_broad, source_counts, within_budget
from saekit.config import to_dict
from saekit.corpus import CorpusError, Record
from saekit.model import (
    DEFAULT_MODEL,
    LM,
    RESIDUAL_HOOK,
    load_hf,
    load_model,
    pad_token_id,
    parse_dtype,
    prepends_bos,
    stop_layer,
)
from saekit.model import capture_padded as forward_capture  # a module attribute, so tests can stand in for it
from saekit.tokens import DEFAULT as DEFAULT_RULE


@dataclass
class HarvestConfig:
    model: str = DEFAULT_MODEL
    """Model folder, hub name, "smollm2-135m-instruct" (embedded default), "gemma3-270m" (saekit[gemma]),
    "qwen2.5-coder-1.5b-instruct" (saekit[qwen]) or "tiny"."""
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
    max_total_tokens: int = 0
    """Harvest documents in the corpus's order until they hold this many tokens (0 = all): how much of a
    broad corpus ("chitchat", "wiki", "broad") to read."""

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
        if self.max_total_tokens < 0:
            raise ValueError(f"max_total_tokens must be 0 (all) or a number of tokens, got {self.max_total_tokens}")
        parse_dtype(self.dtype), parse_dtype(self.store_dtype)
        extra = set(self.token_hooks or []) - set(self.hooks)
        if extra:
            raise ValueError(f"token_hooks {sorted(extra)} are not among hooks {self.hooks}")

    @property
    def stored_token_hooks(self) -> list[str]:
        return list(self.hooks if self.token_hooks is None else self.token_hooks)


def only_residual(hooks: list[str]) -> bool:
    return all(RESIDUAL_HOOK.match(h) for h in hooks)


def _part_name(rank: int, world: int) -> str:
    """Where a rank records its finished shards: the manifest itself for one process."""
    return MANIFEST if world == 1 else f".manifest.rank{rank}.json"


def _merge_parts(out: Path, manifest: dict, done: Callable[[dict | None], bool]) -> list[Path]:
    """Take from the part files the shards `done` accepts where `manifest` has none it accepts; the parts read.

    A part of another config means the folder holds another unfinished harvest: refused, as for the manifest.
    """
    parts = sorted(p for p in out.iterdir() if PART_FILE.fullmatch(p.name))
    for part in parts:
        entries = read_json(part)
        if entries.get("identity") != manifest["identity"]:
            raise HarvestError(f"{out} holds an unfinished harvest with a different config or corpus ({part.name}); "
                               "choose another --out or delete the folder")
        for k, e in entries["shards"].items():
            if not done(manifest["shards"].get(k)) and done(e):
                manifest["shards"][k] = e
    return parts


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
    skipped: dict[str, int] = {}
    if records is None and is_broad(cfg.corpus):
        loaded = load_broad(cfg.corpus)
        records, skipped = loaded.records, dict(loaded.skipped)
    elif records is None:
        records = harvest_records(to_dict(cfg))
    if cfg.limit:
        records = records[: cfg.limit]
    if not records:
        raise CorpusError(f"corpus {cfg.corpus} is empty: nothing to harvest")
    if model is None and only_residual(cfg.hooks):
        model, tokenizer = load_hf(cfg.model, device=cfg.device, dtype=cfg.dtype)
    elif model is None:
        model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    lm = LM.of(model, tokenizer)
    cfg = replace(cfg, dtype=lm.dtype)  # what computed the activations, as the manifest records it
    tok = lm.tokenizer
    if tok is None:
        raise HarvestError("a plain transformers model needs its tokenizer: harvest(cfg, model, tokenizer=...)")
    check_hooks(model, cfg.hooks)
    if cfg.max_total_tokens:
        records = within_budget(records, lambda chunk: [min(len(ids), cfg.max_tokens) for ids in token_ids(tok, chunk)],
                                cfg.max_total_tokens)
    pieces = tokenize(tok, records, cfg.max_tokens, cfg.overflow)
    by_id = {r.id: r for r in records}

    identity = {"model": cfg.model, "hooks": cfg.hooks, "corpus": cfg.corpus, "max_tokens": cfg.max_tokens,
                "overflow": cfg.overflow, "token_hooks": cfg.stored_token_hooks, "docs_per_shard": cfg.docs_per_shard,
                "pool_offset": cfg.pool_offset,
                "dtype": cfg.dtype, "store_dtype": cfg.store_dtype, "limit": cfg.limit,
                "documents": documents_hash(pieces)}
    if cfg.max_total_tokens:   # only when set: folders harvested before the field existed keep their identity
        identity["max_total_tokens"] = cfg.max_total_tokens
    rank, world = D.rank(), D.world()
    manifest = read_manifest(out)
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
            "d_model": lm.d_model,
            "n_layers": lm.n_layers, "total_tokens": total, "pool_offset": cfg.pool_offset,
            "prepend_bos": prepends_bos(tok),
            # every position is stored; later stages count those of the token rule (saekit.tokens)
            "token_rule": json.loads(DEFAULT_RULE.to_json()),
            "counted_tokens": sum(max(len(p.token_ids) - DEFAULT_RULE.skip_first, 0) for p in pieces),
            "documents": [{"id": p.doc_id, "label": by_id[story_of(p.doc_id)].emotion,
                           "split": by_id[story_of(p.doc_id)].split, "n_tokens": len(p.token_ids),
                           "token_offset": offsets[i], "shard": i // cfg.docs_per_shard}
                          for i, p in enumerate(pieces)],
            "shards": {}, "complete": False,
            # what was read: documents, tokens and share per source and format, and the rows left out
            "sources": source_counts([by_id[story_of(p.doc_id)] for p in pieces], [len(p.token_ids) for p in pieces]),
            "skipped_rows": skipped,
        }
    # Until rank 0 finishes, manifest.json may not exist (several processes) or be incomplete: the
    # folder reads as an unfinished harvest either way (Activations.open).
    _merge_parts(out, manifest, lambda e: on_disk(out, e))
    checked: set[tuple[str, str]] = set()
    todo = [s for s in range(rank, len(shards), world) if not is_finished(out, manifest["shards"].get(str(s)), checked)]
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
        entry = write_tensors(out / SHARD_PATTERN.format(s), tensors, checked, metadata={"shard": str(s)})
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
        return is_finished(out, entry, checked)

    parts = _merge_parts(out, manifest, done)
    missing = [s for s in range(n_shards) if not done(manifest["shards"].get(str(s)))]
    if missing:
        raise HarvestError(f"shards {missing} of {out} were not finished by any rank (or were altered since); "
                           "rerun the harvest to resume")
    manifest["pooled"] = _write_pooled(out, manifest, hooks, checked)
    manifest["complete"] = True
    atomic_write_json(out / MANIFEST, manifest)
    for path in parts + [p for p in out.iterdir() if LEFTOVER_FILE.fullmatch(p.name)]:
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
    return write_tensors(out / POOLED, {k: torch.cat(v).contiguous() for k, v in pooled.items()}, checked)


