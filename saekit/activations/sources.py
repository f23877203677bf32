"""Activation sources for training: what the trainer sees instead of the model.

A source gives endless shuffled batches of activation vectors, a pure function of (batch size,
seed), and a fixed held-out set that never reaches training: in-memory tensors, a harvest
folder, or activations streamed from the model over a corpus.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch

from saekit.activations.store import (
    Activations,
    check_hooks,
    dataset_provenance,
    documents_hash,
    harvest_prepends_bos,
    harvest_records,
    tokenize,
)
from saekit.artifacts import story_of
from saekit.corpus import HELD_OUT_SPLITS
from saekit.errors import SaekitError
from saekit.model import LM, pad_token_id, prepends_bos, stop_layer
from saekit.tokens import TokenRule


class SourceError(SaekitError, RuntimeError):
    """An activation source has nothing to give (no training texts or tokens)."""




class ActivationSource(Protocol):
    """What the trainer sees: endless shuffled batches and a fixed held-out set."""
    d_in: int
    rule: TokenRule
    """The positions kept, with its reference norm measured once when the rule needs one."""

    def batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        """Endless [batch_size, d_in] batches, a pure function of (batch_size, seed)."""

    def held_out(self, max_tokens: int) -> torch.Tensor:
        """[N, d_in] activations of held-out texts (never in `batches`)."""

    def held_out_texts(self, max_docs: int) -> list[str]:
        """Held-out texts for the language-model metrics ([] when there are none)."""


def shuffled_batches(chunks: Callable[[int], Iterator[torch.Tensor]], batch_size: int, seed: int,
                     buffer_tokens: int) -> Iterator[torch.Tensor]:
    """Endless batches from `chunks(epoch)` (each an iterator of [n, D] tensors), through a shuffle buffer."""
    buffer: list[torch.Tensor] = []
    held = 0
    for epoch in itertools.count():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        got_any = False
        for chunk in chunks(epoch):
            if chunk.shape[0] == 0:
                continue
            got_any = True
            buffer.append(chunk)
            held += chunk.shape[0]
            if held >= max(buffer_tokens, batch_size):
                rest = yield from _drain(buffer, batch_size, gen)
                buffer, held = [rest], rest.shape[0]
        if not got_any:
            raise SourceError("the activation source yielded no training tokens")
        if held >= batch_size:  # end of epoch: flush what is buffered
            rest = yield from _drain(buffer, batch_size, gen)
            buffer, held = [rest], rest.shape[0]


def first_rows(chunks: Iterator[torch.Tensor], max_tokens: int, d_in: int) -> torch.Tensor:
    """The first max_tokens rows of a stream of [n, D] chunks, reading no more chunks than needed."""
    out, n = [], 0
    for chunk in chunks:
        out.append(chunk)
        n += chunk.shape[0]
        if n >= max_tokens:
            break
    return torch.cat(out)[:max_tokens] if out else torch.zeros(0, d_in)


def _drain(buffer: list[torch.Tensor], batch_size: int, gen: torch.Generator):
    """Shuffle the buffer, yield every full batch, and return the leftover rows."""
    pool = torch.cat(buffer)
    pool = pool[torch.randperm(pool.shape[0], generator=gen)]
    n_full = pool.shape[0] // batch_size
    for b in range(n_full):
        yield pool[b * batch_size:(b + 1) * batch_size]
    return pool[n_full * batch_size:]


@dataclass
class TensorSource:
    """In-memory activations (synthetic data, tests, benchmarks)."""
    train_ND: torch.Tensor
    held_out_ND: torch.Tensor
    chunk_tokens: int = 8192
    texts: list[str] = field(default_factory=list)

    @property
    def d_in(self) -> int:
        return int(self.train_ND.shape[1])

    def batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        def chunks(epoch):
            for s in range(0, self.train_ND.shape[0], self.chunk_tokens):
                yield self.train_ND[s:s + self.chunk_tokens]
        return shuffled_batches(chunks, batch_size, seed, buffer_tokens=self.train_ND.shape[0])

    def held_out(self, max_tokens: int) -> torch.Tensor:
        return self.held_out_ND[:max_tokens]

    def held_out_texts(self, max_docs: int) -> list[str]:
        return self.texts[:max_docs]


def held_out_documents(documents: list[dict]) -> set[int]:
    """Indices of held-out documents: the corpus' test/validation split, else the last 10%."""
    held = {i for i, d in enumerate(documents) if d.get("split") in HELD_OUT_SPLITS}
    if not held:
        n = len(documents)
        held = set(range(n - max(1, n // 10), n)) if n > 1 else set()
    return held


class HarvestSource:
    """Per-token activations from a harvest folder; held-out documents never reach training."""

    def __init__(self, acts: Activations, hook: str, rule: TokenRule = TokenRule(), buffer_tokens: int = 65536):
        acts._check_hook(hook)
        self.acts, self.hook = acts, hook
        self.rule = rule.measured_on(acts.iter_shard_tensors(hook))
        self.buffer_tokens = buffer_tokens
        self.d_in = int(acts.manifest["d_model"])
        held = held_out_documents(acts.documents)
        self.is_held_F = torch.zeros(len(acts.documents), dtype=torch.bool)
        self.is_held_F[list(held)] = True
        config = acts.manifest.get("config", {})
        self.provenance = dict(dataset_provenance(config), context_size=config.get("max_tokens"),
                               saekit_corpus_hash=acts.manifest.get("identity", {}).get("documents"),
                               prepend_bos=harvest_prepends_bos(acts.manifest))
        if acts.manifest.get("sources"):   # what a harvest read, per source and format (saekit.broad)
            self.provenance["saekit_source_counts"] = acts.manifest["sources"]

    def _rows(self, docs_T, pos_T, x_TD, held: bool) -> torch.Tensor:
        return (self.is_held_F[docs_T] == held) & self.rule.keep(pos_T, x_TD)

    def batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        shards = sorted(self.acts.manifest["shards"], key=int)

        def chunks(epoch):
            gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
            for i in torch.randperm(len(shards), generator=gen).tolist():
                entry = self.acts.manifest["shards"][shards[i]]
                t = self.acts.read(entry)
                x_TD = t[self.hook]
                yield x_TD[self._rows(t["doc_index"], t["position"], x_TD, held=False)].float()
        return shuffled_batches(chunks, batch_size, seed, self.buffer_tokens)

    def held_out(self, max_tokens: int) -> torch.Tensor:
        return first_rows((a[self._rows(docs, pos, a, held=True)].float()
                           for a, docs, pos in self.acts.iter_shards(self.hook)), max_tokens, self.d_in)

    def held_out_texts(self, max_docs: int) -> list[str]:
        try:
            records = harvest_records(self.acts.manifest.get("config", {}))
        except Exception:  # the corpus moved or needs the network: LM metrics are skipped
            return []
        by_id = {r.id: r.text for r in records}
        docs = self.acts.documents
        ids = [story_of(docs[i]["id"]) for i in sorted(int(j) for j in self.is_held_F.nonzero().flatten())]
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id][:max_docs]


class StreamSource:
    """Activations computed on the fly by the model over a corpus (no cache on disk)."""

    def __init__(self, model, records, hook: str, max_tokens: int = 512, batch_docs: int = 8,
                 rule: TokenRule = TokenRule(), buffer_tokens: int = 65536, corpus: str = ""):
        check_hooks(model, [hook])
        self.model, self.lm, self.hook = model, LM.of(model), hook
        self.max_tokens, self.batch_docs = max_tokens, batch_docs
        self.rule, self.buffer_tokens = rule, buffer_tokens
        held = held_out_documents([{"split": r.split} for r in records])
        pieces = tokenize(self.lm.tokenizer, records, max_tokens, "truncate")   # once, not every epoch
        self.train = [p for i, p in enumerate(pieces) if i not in held]
        self.held = [p for i, p in enumerate(pieces) if i in held]
        self.held_texts = [r.text for i, r in enumerate(records) if i in held]
        if not self.train:
            raise SourceError("the corpus has no training texts")
        self.provenance = {"dataset_path": corpus, "context_size": max_tokens, "prepend_bos": prepends_bos(self.lm.tokenizer),
                           "saekit_corpus_hash": documents_hash(pieces)}
        self.d_in = self.lm.d_model

    def _acts(self, pieces) -> Iterator[torch.Tensor]:
        pad = pad_token_id(self.lm.tokenizer)
        stop = stop_layer(self.model, [self.hook])
        for b in range(0, len(pieces), self.batch_docs):
            acts, mask_BT = self.lm.capture_padded([p.token_ids for p in pieces[b:b + self.batch_docs]],
                                               [self.hook], pad, stop)
            x_BTD = acts[self.hook].float().cpu()
            if self.rule.uses_norm and self.rule.reference_norm is None:   # measured once, on the first batch
                pos_BT = torch.arange(mask_BT.shape[1]).expand_as(mask_BT)
                self.rule = self.rule.with_reference(x_BTD[mask_BT.bool()], pos_BT[mask_BT.bool()])
            yield x_BTD[self.rule.keep_padded(mask_BT.cpu(), x_BTD)]

    def batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        def chunks(epoch):
            gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
            order = torch.randperm(len(self.train), generator=gen).tolist()
            yield from self._acts([self.train[i] for i in order])
        return shuffled_batches(chunks, batch_size, seed, self.buffer_tokens)

    def held_out(self, max_tokens: int) -> torch.Tensor:
        return first_rows(self._acts(self.held), max_tokens, self.d_in)

    def held_out_texts(self, max_docs: int) -> list[str]:
        return self.held_texts[:max_docs]


class MixedSource:
    """Several sources in fixed shares of every batch (the stories and broad text, say); each keeps its
    own held-out documents, and the held-out set mixes them in the same shares."""

    def __init__(self, parts: dict[str, ActivationSource], shares: dict[str, float]):
        if set(parts) != set(shares) or abs(sum(shares.values()) - 1) > 1e-6 or min(shares.values()) <= 0:
            raise SourceError(f"mixed source: shares {shares} must be positive, name every part {sorted(parts)} "
                              "and add up to 1")
        widths = {name: p.d_in for name, p in parts.items()}
        if len(set(widths.values())) != 1:
            raise SourceError(f"mixed source: the parts have different widths {widths}")
        self.parts, self.shares = parts, shares
        self.d_in = next(iter(widths.values()))
        first = next(iter(parts.values()))
        self.rule = getattr(first, "rule", TokenRule())   # every part keeps the same positions (one config)
        self.provenance = dict(getattr(first, "provenance", {}) or {}, saekit_sources=[
            dict(getattr(p, "provenance", {}) or {}, name=name, share=shares[name]) for name, p in parts.items()])

    def _sizes(self, n: int) -> dict[str, int]:
        sizes = {name: int(round(n * s)) for name, s in self.shares.items()}
        first = next(iter(sizes))
        sizes[first] += n - sum(sizes.values())   # rounding goes to the first part
        return sizes

    def batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        sizes = self._sizes(batch_size)
        streams = {name: self.parts[name].batches(max(sizes[name], 1), seed + 101 * i)
                   for i, name in enumerate(self.parts) if sizes[name] > 0}
        gen = torch.Generator().manual_seed(seed)
        while True:
            batch = torch.cat([next(stream) for stream in streams.values()])
            yield batch[torch.randperm(batch.shape[0], generator=gen)]

    def held_out(self, max_tokens: int) -> torch.Tensor:
        return torch.cat([self.parts[name].held_out(n) for name, n in self._sizes(max_tokens).items() if n > 0])

    def held_out_by_part(self, max_tokens: int) -> dict[str, torch.Tensor]:
        """Each part's own held-out activations (up to max_tokens each), for metrics per source."""
        return {name: p.held_out(max_tokens) for name, p in self.parts.items()}

    def held_out_texts(self, max_docs: int) -> list[str]:
        return next(iter(self.parts.values())).held_out_texts(max_docs)

