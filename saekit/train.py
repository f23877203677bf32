"""Train an SAE from a TOML config on harvested activations, or on activations streamed from the model.

The trainer sees only an `ActivationSource` (batches of activation vectors and a held-out set),
never the model. The loop is split into named steps (`init_state`, `train_step`,
`save_checkpoint`, `load_checkpoint`, `resample_dead`), each testable alone.

Output folder (cfg.out):
    cfg.json, sae_weights.safetensors, sparsity.safetensors     the SAE, in SAELens' format
    metrics.json                                                 quality on held-out tokens
    saekit_train.json                                            full config, seed, versions, timing
    checkpoints/step-00000200/{state.safetensors,state.json}     resumable training state

Under torchrun (saekit.distributed) training is data-parallel: every rank draws the same global
batch, computes on its own slice, and gradients, losses and firing counts are averaged or summed
over ranks, so every rank holds the same SAE and agrees on dead latents; rank 0 writes.

Checkpoints hold tensors in safetensors and everything else in JSON (no pickle). A checkpoint
holds the SAE, Adam's moments, the firing statistics and the step; the data order is a pure
function of (seed, epoch), so a resumed run sees the same batches and ends at the same weights.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from saekit import __version__
from saekit import distributed as D
from saekit.artifacts import atomic_write_json, content_hash, match_umask, package_versions, story_of
from saekit.config import check_config, load_config, to_dict
from saekit.corpus import load_corpus
from saekit.harvest import (Activations, check_hooks, dataset_provenance, documents_hash, forward_capture,
                            harvest_prepends_bos, harvest_records, stop_layer, tokenize)
from saekit.model import DEFAULT_MODEL, hf_model_id, load_model, parse_dtype, prepends_bos
from saekit import sae as S
from saekit.tokens import TokenRule
from saekit.errors import SaekitError

CHECKPOINTS = "checkpoints"
CKPT_TENSORS = "state.safetensors"
CKPT_STATE = "state.json"
METRICS = "metrics.json"
TRAIN_RECORD = "saekit_train.json"
HELD_OUT_SPLITS = ("test", "validation", "val", "heldout", "held_out")


class TrainError(SaekitError, RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


class TrainingDiverged(TrainError):
    """The loss or gradient became NaN/inf or exploded; the last good checkpoint is kept."""


class CorruptCheckpoint(TrainError):
    """A checkpoint's files cannot be read (truncated or damaged on disk)."""


@dataclass
class TrainConfig:
    model: str = DEFAULT_MODEL
    """Model folder, hub name, "smollm2-135m-instruct" (embedded default) or "tiny"."""
    hook: str = "blocks.20.hook_resid_post"
    """TransformerLens hook whose activations the SAE reconstructs."""
    activations: str = ""
    """Harvest folder (`saekit harvest --out`); empty: stream activations from the model over `corpus`."""
    corpus: str = "shipped"
    """Corpus for streaming (ignored with `activations`): "shipped" or a file / dataset, as for harvest."""
    out: str = "artifacts/saes/default"
    """Output folder: the SAE in SAELens' format, metrics, checkpoints."""
    architecture: Literal["topk", "batchtopk", "jumprelu", "standard"] = "topk"
    d_sae: int = 0
    """Number of latents; 0 means expansion_factor * d_model."""
    expansion_factor: int = 8
    k: float = 32
    """Active latents per token (topk) or on average per token (batchtopk)."""
    l1_coefficient: float = 5.0
    """Sparsity coefficient of the standard (L1) SAE."""
    l1_warm_up_steps: int = 0
    l0_coefficient: float = 1.0
    """Sparsity coefficient of the jumprelu SAE's L0 loss."""
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    lr: float = 4e-4
    lr_scheduler: Literal["constant", "cosine"] = "constant"
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    """Linear decay to zero over the last N steps (sae-lens' lr_decay_steps)."""
    lr_end: float = 0.0
    """Floor of the cosine schedule; 0 means lr / 10."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    batch_size: int = 4096
    """Tokens per training step."""
    training_tokens: int = 2_000_000
    seed: int = 0
    dtype: str = "float32"
    """SAE parameter dtype."""
    device: str = "cpu"
    normalize_activations: Literal["none", "expected_average_only_in", "layer_norm"] = "none"
    """expected_average_only_in scales inputs to mean norm sqrt(d_in) and folds the scale into the saved weights."""
    n_batches_for_norm_estimate: int = 8
    dead_feature_handling: Literal["auxk", "resample", "none"] = "auxk"
    """auxk: auxiliary loss on dead latents (TopK's AuxK, JumpReLU's pre-activation loss);
    resample: re-initialise dead latents towards badly reconstructed inputs (standard SAEs)."""
    aux_loss_coefficient: float = 1 / 32
    dead_feature_window: int = 200
    """A latent that has not fired for this many steps counts as dead."""
    resample_every: int = 500
    """Steps between resamplings (dead_feature_handling = resample)."""
    fast_topk: bool = True
    """TopK only: select, decode and back-propagate only the k active latents (same maths as sae-lens)."""
    exclude_first_token: bool = True
    """Leave out each text's first token: its residual stream is an outlier (attention sink)."""
    max_norm_ratio: float = 0.0
    """Also leave out positions whose residual norm exceeds this multiple of the median (0: off).
    With exclude_first_token this is the token rule (saekit.tokens) stored with the SAE."""
    shuffle_buffer_tokens: int = 65536
    max_tokens: int = 512
    """Streaming: texts are truncated to this many tokens."""
    stream_batch_size: int = 8
    """Streaming: texts per model forward pass."""
    checkpoint_every: int = 100
    """Steps between checkpoints (0: none)."""
    keep_checkpoints: int = 2
    max_loss_ratio: float = 1000.0
    """Stop when the loss exceeds this multiple of the first step's loss (exploding)."""
    eval_tokens: int = 50_000
    """Held-out tokens for the activation metrics."""
    eval_docs: int = 48
    """Held-out texts for the language-model loss metrics."""
    lm_metrics: bool = True
    """Measure LM loss recovered and KL with the SAE spliced in (loads the model if not given)."""
    dense_threshold: float = 0.1
    """A latent firing on more than this fraction of held-out tokens counts as dense."""
    wandb: bool = False
    """Log to Weights & Biases (off unless asked for)."""
    wandb_project: str = "saekit"
    log_every: int = 10

    def validate(self) -> None:
        if self.d_sae < 0 or (self.d_sae == 0 and self.expansion_factor < 1):
            raise ValueError("set d_sae > 0 or expansion_factor >= 1")
        for name in ("batch_size", "training_tokens", "shuffle_buffer_tokens", "max_tokens",
                     "stream_batch_size", "dead_feature_window", "resample_every", "log_every",
                     "n_batches_for_norm_estimate", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.training_tokens < self.batch_size:
            raise ValueError(f"training_tokens ({self.training_tokens}) is less than one batch ({self.batch_size})")
        if self.architecture in ("topk", "batchtopk"):
            if self.k <= 0:
                raise ValueError(f"k must be positive, got {self.k}")
            if self.architecture == "topk" and self.k != int(self.k):
                raise ValueError(f"topk needs a whole k, got {self.k}")
            if self.d_sae:
                self.check_k(self.d_sae)
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("l1_coefficient", "l0_coefficient", "aux_loss_coefficient", "jumprelu_init_threshold",
                     "lr_end"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_grad_norm", "jumprelu_bandwidth"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_loss_ratio <= 1:
            raise ValueError(f"max_loss_ratio must exceed 1, got {self.max_loss_ratio}")
        if self.lr_warm_up_steps + self.lr_decay_steps > self.total_steps:
            raise ValueError("lr_warm_up_steps + lr_decay_steps exceed the number of steps")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")
        if self.dead_feature_handling == "auxk" and self.architecture == "standard":
            raise ValueError("the standard SAE has no auxiliary dead-latent loss; "
                             "use dead_feature_handling = \"resample\" or \"none\"")
        if (self.normalize_activations == "layer_norm" and self.architecture in ("topk", "batchtopk")
                and self.dead_feature_handling == "auxk"):
            raise ValueError("TopK's auxiliary loss does not work with layer_norm normalisation "
                             "(sae-lens refuses it); use expected_average_only_in")
        if not (0 < self.dense_threshold < 1):
            raise ValueError("dense_threshold must be between 0 and 1")
        parse_dtype(self.dtype)

    @property
    def total_steps(self) -> int:
        return self.training_tokens // self.batch_size

    def resolved_d_sae(self, d_in: int) -> int:
        return self.d_sae or self.expansion_factor * d_in

    def check_k(self, d_sae: int, how: str = "") -> None:
        """TopK needs fewer active latents than latents; with d_sae = 0 that is known only with d_in."""
        if self.architecture in ("topk", "batchtopk") and self.k >= d_sae:
            raise ValueError(f"k ({self.k}) must be less than d_sae ({d_sae}{how}); lower k or widen the SAE")


def token_rule(cfg: TrainConfig) -> TokenRule:
    """The positions this config trains on; ranking, examples and experiments reuse it."""
    return TokenRule(skip_first=int(cfg.exclude_first_token), max_norm_ratio=cfg.max_norm_ratio)


def sae_metadata(cfg: TrainConfig, rule: TokenRule, provenance: dict | None = None) -> dict:
    """What a user needs to rebuild the SAE's training activations, in sae-lens' metadata fields where they
    exist: the model's hub id, BOS, context, dataset and counted positions (seqpos_slice; the full rule,
    norm filter included, in saekit_token_rule). `provenance` is the activation source's part: dataset,
    its hash, context size and BOS (a source of the user's own tensors has none)."""
    return {"model_name": hf_model_id(cfg.model), "hook_name": cfg.hook, "prepend_bos": False,
            "seqpos_slice": [rule.skip_first, None], "exclude_special_tokens": False, "saekit_model": cfg.model,
            "saekit_token_rule": json.loads(rule.to_json()), "saekit_version": __version__} | (provenance or {})


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """A TrainConfig from a TOML file; unknown fields are ConfigErrors naming the field."""
    return load_config(TrainConfig, path, overrides)


# ---------------------------------------------------------------------------- activation sources


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
            raise TrainError("the activation source yielded no training tokens")
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
        self.model, self.hook = model, hook
        self.max_tokens, self.batch_docs = max_tokens, batch_docs
        self.rule, self.buffer_tokens = rule, buffer_tokens
        held = held_out_documents([{"split": r.split} for r in records])
        pieces = tokenize(model.tokenizer, records, max_tokens, "truncate")   # once, not every epoch
        self.train = [p for i, p in enumerate(pieces) if i not in held]
        self.held = [p for i, p in enumerate(pieces) if i in held]
        self.held_texts = [r.text for i, r in enumerate(records) if i in held]
        if not self.train:
            raise TrainError("the corpus has no training texts")
        self.provenance = {"dataset_path": corpus, "context_size": max_tokens, "prepend_bos": prepends_bos(model.tokenizer),
                           "saekit_corpus_hash": documents_hash(pieces)}
        from saekit.model import d_model
        self.d_in = d_model(model)

    def _acts(self, pieces) -> Iterator[torch.Tensor]:
        tok = self.model.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        stop = stop_layer(self.model, [self.hook])
        for b in range(0, len(pieces), self.batch_docs):
            batch = [p.token_ids for p in pieces[b:b + self.batch_docs]]
            acts, mask_BT = forward_capture(self.model, batch, [self.hook], pad, stop)
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


def open_source(cfg: TrainConfig, activations=None, model=None) -> ActivationSource:
    """The activation source a config asks for: given, a harvest folder, or streamed from the model."""
    if activations is not None and not isinstance(activations, (str, Path, Activations)):
        return activations
    folder = activations if activations is not None else (cfg.activations or None)
    if folder is not None:
        acts = folder if isinstance(folder, Activations) else Activations.open(folder)
        def same(name):
            return DEFAULT_MODEL if str(name).lower() in ("default", DEFAULT_MODEL) else str(name)
        if acts.manifest.get("model") is not None and same(acts.manifest["model"]) != same(cfg.model):
            raise TrainError(f"{acts.path} was harvested from model {acts.manifest.get('model')!r}, "
                             f"but the config trains on {cfg.model!r}")
        return HarvestSource(acts, cfg.hook, token_rule(cfg), cfg.shuffle_buffer_tokens)
    model = model if model is not None else load_model(cfg.model, device=cfg.device)
    return StreamSource(model, load_corpus(cfg.corpus), cfg.hook, cfg.max_tokens, cfg.stream_batch_size,
                        token_rule(cfg), cfg.shuffle_buffer_tokens, corpus=cfg.corpus)


# ---------------------------------------------------------------------------- training state


@dataclass
class TrainState:
    sae: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    tokens: int = 0
    scale: float | None = None
    first_loss: float | None = None
    steps_since_fired_F: torch.Tensor | None = None
    window_fired_F: torch.Tensor | None = None
    window_tokens: int = 0
    last_checkpoint: Path | None = None


@dataclass
class StepReport:
    step: int
    total_steps: int
    tokens: int
    total_tokens: int
    loss: float
    mse: float
    l0: float
    explained_variance: float
    lr: float
    dead_fraction: float
    tokens_per_s: float


def init_state(cfg: TrainConfig, d_in: int) -> TrainState:
    """A fresh SAE (seeded) with its optimizer and empty firing statistics."""
    torch.manual_seed(cfg.seed)
    d_sae = cfg.resolved_d_sae(d_in)
    sae = S.build_training_sae(
        cfg.architecture, d_in, d_sae, k=cfg.k, l1_coefficient=cfg.l1_coefficient,
        l1_warm_up_steps=cfg.l1_warm_up_steps, l0_coefficient=cfg.l0_coefficient,
        jumprelu_init_threshold=cfg.jumprelu_init_threshold, jumprelu_bandwidth=cfg.jumprelu_bandwidth,
        aux_loss_coefficient=cfg.aux_loss_coefficient, use_aux_loss=cfg.dead_feature_handling == "auxk",
        normalize_activations=cfg.normalize_activations, dtype=cfg.dtype, device=cfg.device,
        metadata=sae_metadata(cfg, token_rule(cfg)))
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    return TrainState(sae=sae, optimizer=optimizer, steps_since_fired_F=torch.zeros(d_sae),
                      window_fired_F=torch.zeros(d_sae))


def dead_mask(state: TrainState, cfg: TrainConfig) -> torch.Tensor:
    return state.steps_since_fired_F >= cfg.dead_feature_window


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate at `step`: linear warm-up, constant or cosine, then linear decay to zero."""
    total = cfg.total_steps
    if cfg.lr_warm_up_steps and step < cfg.lr_warm_up_steps:
        return cfg.lr * (step + 1) / cfg.lr_warm_up_steps
    main_end = total - cfg.lr_decay_steps
    floor = cfg.lr_end or cfg.lr / 10
    if cfg.lr_scheduler == "cosine":
        span = max(1, main_end - cfg.lr_warm_up_steps)
        t = min(1.0, (step - cfg.lr_warm_up_steps) / span)
        base = floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        base = cfg.lr
    if cfg.lr_decay_steps and step >= main_end:
        return base * max(0.0, (total - step) / cfg.lr_decay_steps)
    return base


def estimate_scale(source: ActivationSource, cfg: TrainConfig) -> float:
    """sqrt(d_in) / mean token norm, from the first batches (sae-lens' expected_average_only_in)."""
    batches = source.batches(cfg.batch_size, cfg.seed + 7919)
    norms = torch.cat([next(batches).norm(dim=-1) for _ in range(cfg.n_batches_for_norm_estimate)])
    mean = float(norms.mean())
    if not math.isfinite(mean) or mean == 0:
        raise TrainError(f"the activations' mean norm is {mean}: they hold NaN/inf or are all zero; "
                         "check the harvest (rerun it if its shards are damaged)")
    return source.d_in ** 0.5 / mean


def train_step(state: TrainState, batch_BD: torch.Tensor, cfg: TrainConfig) -> StepReport:
    """One optimisation step; raises TrainingDiverged (weights untouched) on NaN/inf or exploding loss."""
    sae = state.sae
    sae.train()
    full_BD = batch_BD.to(cfg.device, parse_dtype(cfg.dtype))
    if not bool(torch.isfinite(full_BD).all()):
        raise TrainingDiverged(f"the activations of step {state.step} hold NaN or inf: the activation source "
                               "is damaged (rerun the harvest, or check where the activations come from)")
    if state.scale is not None:
        full_BD = full_BD * state.scale
    x_BD = D.local_rows(full_BD)  # this rank's share of the global batch (all of it for one process)
    lr = lr_at(cfg, state.step)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    dead_F = dead_mask(state, cfg) if cfg.dead_feature_handling == "auxk" else None
    out = S.training_forward(sae, x_BD, dead_F, state.step, fast_topk=cfg.fast_topk)
    loss, mse = D.all_reduce_(torch.stack([out.loss.detach(), out.losses["mse_loss"].detach()]).double().cpu(),
                              "mean").tolist()
    if not math.isfinite(loss):
        raise TrainingDiverged(f"loss is {loss} at step {state.step}")
    if state.first_loss is None:
        state.first_loss = loss
    elif loss > cfg.max_loss_ratio * max(state.first_loss, 1e-12):
        raise TrainingDiverged(f"loss exploded to {loss:.4g} at step {state.step} "
                               f"({loss / state.first_loss:.0f}x the first step's {state.first_loss:.4g})")
    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    D.average_gradients(sae.parameters())
    grad_norm = float(torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.max_grad_norm))
    if not math.isfinite(grad_norm):
        state.optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"gradient norm is {grad_norm} at step {state.step}")
    state.optimizer.step()
    with torch.no_grad():
        counts_F, l0 = firing_counts(out.feature_acts.detach())
        D.all_reduce_(counts_F)
        state.steps_since_fired_F += 1
        state.steps_since_fired_F[counts_F > 0] = 0
        state.window_fired_F += counts_F
        state.window_tokens += full_BD.shape[0]
        ev = float(explained_variance(out.sae_in.float(), out.sae_out.detach().float()))
        l0, ev = D.all_reduce_(torch.tensor([l0, ev], dtype=torch.float64), "mean").tolist()  # ev: mean of the ranks' slices
    state.step += 1
    state.tokens += full_BD.shape[0]
    if cfg.dead_feature_handling == "resample" and state.step % cfg.resample_every == 0:
        resample_dead(state, full_BD, cfg)
    return StepReport(step=state.step, total_steps=cfg.total_steps, tokens=state.tokens,
                      total_tokens=cfg.total_steps * cfg.batch_size, loss=loss, mse=mse, l0=l0,
                      explained_variance=ev, lr=lr, dead_fraction=float(dead_mask(state, cfg).float().mean()),
                      tokens_per_s=0.0)


def firing_counts(feats_BF: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Tokens each latent fired on [F], and the mean L0, from dense or sparse COO latents."""
    if feats_BF.is_sparse:
        idx = feats_BF._indices()
        on = feats_BF._values() > 0
        counts_F = torch.bincount(idx[1][on].cpu(), minlength=feats_BF.shape[1]).float()
        return counts_F, float(on.sum()) / feats_BF.shape[0]
    fired_BF = feats_BF > 0
    return fired_BF.sum(0).float().cpu(), float(fired_BF.sum(-1).float().mean())


def explained_variance(x_BD: torch.Tensor, recon_BD: torch.Tensor) -> torch.Tensor:
    """1 - FVU: 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2."""
    return 1 - (x_BD - recon_BD).pow(2).sum() / (x_BD - x_BD.mean(0)).pow(2).sum().clamp_min(1e-12)


_LATENT_DIM = {"W_enc": 1, "W_dec": 0, "b_enc": 0, "threshold": 0}


@torch.no_grad()
def resample_dead(state: TrainState, x_BD: torch.Tensor, cfg: TrainConfig) -> int:
    """Re-initialise dead latents towards inputs the SAE reconstructs worst (Anthropic, 2023).

    Inputs are drawn with probability proportional to their squared loss; the decoder row becomes
    the input's unit direction, the encoder column that direction at 0.2 x the mean live encoder
    norm, the bias zero, and Adam's moments of those latents are reset. Deterministic in (seed, step).
    """
    sae = state.sae
    dead_F = dead_mask(state, cfg)
    idx = dead_F.nonzero().flatten().to(x_BD.device)
    if idx.numel() == 0:
        return 0
    recon_BD = sae(x_BD)
    err_B = (x_BD - recon_BD).pow(2).sum(-1)
    gen = torch.Generator(device=x_BD.device).manual_seed(cfg.seed * 31 + state.step)
    weights_B = err_B.pow(2) if bool(err_B.pow(2).sum() > 0) else torch.ones_like(err_B)
    picks = torch.multinomial(weights_B, idx.numel(), replacement=True, generator=gen)
    dirs_KD = x_BD[picks] - sae.b_dec
    dirs_KD = dirs_KD / dirs_KD.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead_F.to(x_BD.device)
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else torch.tensor(1.0)
    sae.W_dec[idx] = dirs_KD.to(sae.W_dec.dtype)
    sae.W_enc[:, idx] = (dirs_KD * 0.2 * enc_norm).T.to(sae.W_enc.dtype)
    sae.b_enc[idx] = 0
    params = dict(sae.named_parameters())
    for name, dim in _LATENT_DIM.items():
        p = params.get(name)
        if p is None or p not in state.optimizer.state:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            state.optimizer.state[p][key].index_fill_(dim, idx, 0.0)
    state.steps_since_fired_F[dead_F] = 0
    return int(idx.numel())


# ---------------------------------------------------------------------------- checkpoints


def config_identity(cfg: TrainConfig) -> str:
    """What must match for a checkpoint to be resumed (everything but logging and evaluation)."""
    d = to_dict(cfg)
    for k in ("out", "wandb", "wandb_project", "log_every", "eval_tokens", "eval_docs", "lm_metrics",
              "checkpoint_every", "keep_checkpoints", "dense_threshold", "activations"):
        d.pop(k)
    return content_hash(d)


def save_checkpoint(state: TrainState, cfg: TrainConfig, folder: Path) -> Path:
    """Write state.safetensors + state.json under a temporary name, then rename (never half a checkpoint)."""
    target = folder / CHECKPOINTS / f"step-{state.step:08d}"
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"sae.{k}": v.cpu() for k, v in S.training_state_tensors(state.sae).items()}
    opt = state.optimizer.state_dict()
    for i, s in opt["state"].items():
        for key, value in s.items():
            tensors[f"optim.{i}.{key}"] = value.detach().cpu().contiguous().reshape(value.shape)
    tensors["trainer.steps_since_fired"] = state.steps_since_fired_F.contiguous()
    tensors["trainer.window_fired"] = state.window_fired_F.contiguous()
    save_file(tensors, str(tmp / CKPT_TENSORS))
    match_umask(tmp / CKPT_TENSORS)
    meta = {"step": state.step, "tokens": state.tokens, "scale": state.scale, "first_loss": state.first_loss,
            "window_tokens": state.window_tokens, "param_groups": opt["param_groups"],
            "identity": config_identity(cfg), "config": to_dict(cfg), "saekit_version": __version__}
    (tmp / CKPT_STATE).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    state.last_checkpoint = target
    for old in list_checkpoints(folder)[:-cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    root = Path(folder) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / CKPT_STATE).exists())


def load_checkpoint(state: TrainState, cfg: TrainConfig, path: Path) -> None:
    """Restore SAE, optimizer, firing statistics and step from a checkpoint folder.

    Unreadable files raise CorruptCheckpoint; a checkpoint of another config raises TrainError.
    """
    try:
        meta = json.loads((path / CKPT_STATE).read_text())
        tensors = load_file(str(path / CKPT_TENSORS))
    except (OSError, ValueError, SafetensorError) as e:
        raise CorruptCheckpoint(f"checkpoint {path} cannot be read ({e})") from e
    if meta.get("identity") != config_identity(cfg):
        old = meta.get("config", {})
        diff = sorted(k for k, v in to_dict(cfg).items() if old.get(k) != v)
        raise TrainError(f"checkpoint {path} was written with a different config (differs in {diff}); "
                         "resume with the same config or train into another out folder")
    try:
        _apply_checkpoint(state, meta, tensors)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CorruptCheckpoint(f"checkpoint {path} is incomplete ({type(e).__name__}: {e})") from e
    state.last_checkpoint = path


def _apply_checkpoint(state: TrainState, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    S.load_training_state(state.sae, {k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    opt_state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, key = k.split(".", 2)
            opt_state.setdefault(int(i), {})[key] = v
    state.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    state.steps_since_fired_F = tensors["trainer.steps_since_fired"].clone()
    state.window_fired_F = tensors["trainer.window_fired"].clone()
    state.step, state.tokens = meta["step"], meta["tokens"]
    state.scale, state.first_loss = meta["scale"], meta["first_loss"]
    state.window_tokens = meta["window_tokens"]


def resume_from_latest(state: TrainState, cfg: TrainConfig, checkpoints: list[Path]) -> Path:
    """Load the newest readable checkpoint, skipping damaged ones with a warning.

    The data order is a pure function of the step, so resuming from an older checkpoint only
    repeats some steps and still ends at the uninterrupted run's weights.
    """
    skipped = []
    for path in reversed(checkpoints):
        try:
            load_checkpoint(state, cfg, path)
        except CorruptCheckpoint as e:
            skipped.append(str(e))
            continue
        if skipped:
            warnings.warn(f"{'; '.join(skipped)}; resuming from the older {path} instead", stacklevel=2)
        return path
    raise TrainError(f"no checkpoint can be read: {'; '.join(skipped)}. Delete {checkpoints[0].parent} "
                     "to train from scratch")


# ---------------------------------------------------------------------------- the run




def train_sae(cfg: TrainConfig, activations=None, model=None,
              progress: Callable[[StepReport], None] | None = None, resume: bool = False) -> Path:
    """Train an SAE as `cfg` says and save it, its metrics and its record in cfg.out; returns cfg.out.

    `activations`: an ActivationSource, a harvest folder (path or Activations), or None for
    cfg.activations (or streaming from the model when that is empty too). `model` is used for
    streaming and for the language-model metrics (loaded from cfg.model when needed and not given).
    `progress(report)` is called after every step. With `resume`, training continues from the last
    checkpoint in cfg.out; without it, a folder holding checkpoints is refused.
    """
    check_config(cfg, "train config")
    D.setup(cfg.device)
    if cfg.batch_size % D.world():
        raise TrainError(f"batch_size {cfg.batch_size} does not split evenly over {D.world()} processes")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"out {out} is a file, not a folder; choose another out folder")
    if D.is_main():  # a kill inside save_sae may have left the checkpoints in its aside folder
        S.recover_sae_folder(out)
    D.barrier()
    existing = list_checkpoints(out)
    if existing and not resume:
        raise TrainError(f"{out} holds checkpoints of an earlier run (last: {existing[-1].name}); "
                         "pass --resume to continue it, or choose another out folder")
    source = open_source(cfg, activations, model)
    if model is None and isinstance(source, StreamSource):
        model = source.model
    try:
        cfg.check_k(cfg.resolved_d_sae(source.d_in), f" = expansion_factor {cfg.expansion_factor} x d_in {source.d_in}")
    except ValueError as e:
        raise TrainError(str(e)) from e
    state = init_state(cfg, source.d_in)
    if resume and existing:
        resume_from_latest(state, cfg, existing)
    if cfg.normalize_activations == "expected_average_only_in" and state.scale is None:
        state.scale = estimate_scale(source, cfg)
    logger = _wandb_logger(cfg) if D.is_main() else None
    started, start_tokens = time.perf_counter(), state.tokens
    batches = itertools.islice(source.batches(cfg.batch_size, cfg.seed), state.step, None)
    while state.step < cfg.total_steps:
        batch = next(batches)
        try:
            report = train_step(state, batch, cfg)
        except TrainingDiverged as e:
            kept = state.last_checkpoint or (list_checkpoints(out) or [None])[-1]
            where = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint was written yet"
            raise TrainingDiverged(f"{e}; training stopped ({where}). Check the activations' scale (mean norm; "
                                   "normalize_activations = \"expected_average_only_in\" rescales them), then lower "
                                   "lr or max_grad_norm") from e
        report.tokens_per_s = (state.tokens - start_tokens) / max(time.perf_counter() - started, 1e-9)
        if progress is not None:
            progress(report)
        if logger is not None and state.step % cfg.log_every == 0:
            logger(report)
        if state.step == cfg.total_steps or (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0):
            _save_on_main(state, cfg, out)  # the last one lets a run killed while saving the SAE finish
    elapsed = time.perf_counter() - started
    if D.is_main():
        finish(state, cfg, source, out, model, elapsed, state.tokens - start_tokens)
    D.barrier()
    return out


def _save_on_main(state: TrainState, cfg: TrainConfig, out: Path) -> None:
    """Rank 0 writes the checkpoint; the others wait for it."""
    if D.is_main():
        save_checkpoint(state, cfg, out)
    D.barrier()


def finish(state: TrainState, cfg: TrainConfig, source: ActivationSource, out: Path, model,
           elapsed: float, tokens_trained: int) -> Path:
    """Fold the input scale, save the SAE in SAELens' format, measure it, write the record."""
    from saekit import metrics as M

    sae = state.sae
    rule = getattr(source, "rule", None) or token_rule(cfg)   # a user's own source may not carry one
    if state.scale is not None:
        S.fold_activation_scale(sae, state.scale)
    S.set_metadata(sae, sae_metadata(cfg, rule, getattr(source, "provenance", None)))
    freq_F = state.window_fired_F / max(state.window_tokens, 1)
    S.save_sae(sae, out, log_sparsity_F=torch.log10(freq_F + 1e-10))
    loaded = S.load_sae(out)
    held = source.held_out(cfg.eval_tokens)
    metrics = {"activations": M.activation_metrics(loaded.sae, held, dense_threshold=cfg.dense_threshold)
               if held.shape[0] else None, "lm": None}
    if cfg.lm_metrics:
        texts = source.held_out_texts(cfg.eval_docs)
        if texts:
            model = model if model is not None else load_model(cfg.model, device=cfg.device)
            metrics["lm"] = M.lm_metrics(model, loaded.sae, cfg.hook, texts, max_tokens=cfg.max_tokens,
                                         rule=rule)
    metrics["training_window"] = {"tokens": state.window_tokens,
                                  "dead_fraction": float((freq_F == 0).float().mean()),
                                  "dense_fraction": float((freq_F > cfg.dense_threshold).float().mean())}
    metrics["token_rule"] = json.loads(rule.to_json())
    record = {"config": to_dict(cfg), "seed": cfg.seed, "token_rule": metrics["token_rule"], "versions": package_versions(),
              "steps": state.step, "tokens": state.tokens, "seconds_this_run": round(elapsed, 2),
              "tokens_per_s_this_run": round(tokens_trained / max(elapsed, 1e-9), 1),
              "d_in": source.d_in, "d_sae": cfg.resolved_d_sae(source.d_in),
              "activation_scale_folded": state.scale, "metrics": metrics}
    atomic_write_json(out / METRICS, metrics)
    atomic_write_json(out / TRAIN_RECORD, record)
    return out


def read_metrics(folder: str | Path) -> dict:
    """The metrics.json written beside a trained SAE."""
    path = Path(folder) / METRICS
    if not path.exists():
        raise TrainError(f"{path} does not exist: not an SAE trained by saekit")
    return json.loads(path.read_text())


def _wandb_logger(cfg: TrainConfig):
    if not cfg.wandb:
        return None
    try:
        import wandb
    except ImportError as e:
        raise TrainError("wandb = true needs the wandb package: pip install wandb") from e
    run = wandb.init(project=cfg.wandb_project, config=to_dict(cfg))

    def log(r: StepReport) -> None:
        run.log({"loss": r.loss, "mse": r.mse, "l0": r.l0, "explained_variance": r.explained_variance,
                 "lr": r.lr, "dead_fraction": r.dead_fraction, "tokens_per_s": r.tokens_per_s}, step=r.step)
    return log
