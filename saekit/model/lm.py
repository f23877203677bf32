"""The one model object: `LM` captures activations, adds and removes hooks, generates and scores,
whichever kind of model it holds, so no caller outside this package asks which kind that is.

Underneath is either a TransformerLens bridge (any hook name, what `load_model` returns) or a plain
transformers model with its tokenizer (residual hooks by forward hooks on its blocks, what
`load_hf` returns: the fast path). `LM.of(model)` wraps either; the module-level functions below
are the same calls for code that holds the model itself.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from saekit.model import cached
from saekit.model.catalogue import dtype_name
from saekit.model.loading import format_chat
from saekit.model.residual import residual_capture
from saekit.model.structure import (
    context_length,
    d_model,
    d_vocab,
    hf_model_of,
    hook_layer,
    is_bridge,
    model_device,
    n_layers,
    pad_batch,
    residual_hook_names,
    stop_layer,
)


class LM:
    """A loaded model and its tokenizer, behind one interface for every kind of model saekit loads."""

    def __init__(self, model, tokenizer=None):
        self.model = model
        self._bridge = is_bridge(model)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)

    @classmethod
    def of(cls, model, tokenizer=None) -> "LM":
        """`model` itself when it already is an LM, else a wrapper of it."""
        return model if isinstance(model, LM) else cls(model, tokenizer)

    # ------------------------------------------------------------------ what it is

    @property
    def hf(self):
        """The transformers model underneath (the bridge's, or the plain model itself)."""
        return hf_model_of(self.model)

    @property
    def plain(self):
        """The plain transformers model with these weights: the bridge's twin for cached passes."""
        return cached.plain_model(self.model)

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def dtype(self) -> str:
        """The dtype the model computes in (its parameters')."""
        return dtype_name(next(self.model.parameters()).dtype)

    @property
    def n_layers(self) -> int:
        return n_layers(self.model)

    @property
    def d_model(self) -> int:
        return d_model(self.model)

    @property
    def d_vocab(self) -> int:
        return d_vocab(self.model)

    @property
    def context_length(self) -> int:
        return context_length(self.model)

    def hook_names(self) -> list[str]:
        """Every hook name activations can be read at."""
        return sorted(self.model.hook_dict) if self._bridge else residual_hook_names(self.model)

    def unknown_hooks(self, hooks: Sequence[str]) -> str | None:
        """What is wrong with hook names this model does not have, with the valid ones; None when all exist."""
        valid = set(self.hook_names())
        bad = [h for h in hooks if h not in valid]
        if not bad:
            return None
        resid = sorted((h for h in valid if "hook_resid" in h), key=lambda h: (hook_layer(h) or 0, h))
        more = "" if self._bridge else " (other TransformerLens hooks need a model from saekit.load_model)"
        return (f"unknown hook(s) {bad} for this model ({self.n_layers} layers). Residual-stream hooks: "
                f"{resid[:3]} ... {resid[-3:]}{more}; all {len(valid)} valid names: saekit.model.hook_names(model)")

    def stop_token_ids(self) -> set[int]:
        """The tokens that end a reply: the generation config's end-of-sequence ids and the tokenizer's."""
        return cached.stop_token_ids(self.tokenizer, self.plain)

    # ------------------------------------------------------------------ reading and editing

    @torch.inference_mode()
    def capture(self, tokens_BT: torch.Tensor, mask_BT: torch.Tensor | None, hooks: Sequence[str],
                stop_at: int | None | str = "auto") -> dict[str, torch.Tensor]:
        """{hook: acts_BTD} for one batch, the forward pass stopped after the deepest hooked block.

        Any hook on the bridge, residual hooks on a plain model. `stop_at="auto"` stops just after
        the deepest hook; None runs the whole model.
        """
        hooks = list(hooks)
        stop = stop_layer(self.model, hooks) if stop_at == "auto" else stop_at
        tokens_BT = tokens_BT.to(self.device)
        mask = None if mask_BT is None else mask_BT.long().to(self.device)
        if not self._bridge:
            if mask is None:
                mask = torch.ones_like(tokens_BT)
            captured = residual_capture(self.model, tokens_BT, mask, hooks, stop)  # type: ignore[arg-type]
            return {h: captured[h] for h in hooks}
        seen: dict[str, torch.Tensor] = {}

        def saver(name: str):
            def save(act, hook):
                seen[name] = act.detach()
                return act
            return save

        kwargs = {} if mask is None else {"attention_mask": mask}
        self.model.run_with_hooks(tokens_BT, fwd_hooks=[(h, saver(h)) for h in hooks], stop_at_layer=stop,
                                  return_type=None, **kwargs)
        return {h: seen[h] for h in hooks}

    def capture_padded(self, seqs: Sequence[Sequence[int]], hooks: Sequence[str], pad_id: int,
                       stop_at: int | None | str = "auto") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """`capture` of unequal-length token lists: ({hook: acts_BTD}, mask_BT of the real tokens)."""
        tokens_BT, mask_BT = pad_batch(seqs, pad_id)
        return self.capture(tokens_BT, mask_BT, hooks, stop_at), mask_BT

    @contextmanager
    def hooks(self, hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
        """Forward hooks [(hook name, fn(act, hook) -> act)] for the duration of the block.

        On the bridge its own scoped hooks: added at a fresh context level, only that level removed
        on exit, even on error, so hooks others added stay in place. On a plain model residual hooks
        as forward hooks on its blocks (fn is called with hook None), removed on exit.
        """
        if self._bridge:
            with self.model.hooks(fwd_hooks=list(hooks)):
                yield
        else:
            with cached.block_hooks(self.model, [(name, _one_arg(fn)) for name, fn in hooks]):
                yield

    # ------------------------------------------------------------------ generating and scoring

    def generate(self, prompt: str, max_new_tokens: int = 40) -> str:
        """Greedy continuation of a prompt (deterministic, for checks and reports).

        Without the KV cache: through a TransformerBridge (transformer-lens 3.9, transformers 5.x)
        cached generation of Llama models degenerates into repeated tokens; uncached it is exact.
        """
        hf, tokenizer = self.hf, self.tokenizer
        starts_with_bos = bool(tokenizer.bos_token) and prompt.startswith(tokenizer.bos_token)  # chat text from format_chat
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not starts_with_bos).to(hf.device)
        with torch.no_grad():
            out = hf.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, use_cache=False,
                              pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    def sample_chat(self, user_messages: list[str], max_new_tokens: int, temperature: float, top_p: float,
                    repetition_penalty: float, seed: int) -> list[tuple[str, bool]]:
        """One sampled reply per user message, as (text, finished), the messages left-padded into one batch;
        finished is False when the reply ran into max_new_tokens. A bridge samples without the KV cache (its
        cached generation degenerates), a plain model with it."""
        hf, tokenizer = self.hf, self.tokenizer
        texts = [format_chat(tokenizer, [{"role": "user", "content": p}]) for p in user_messages]
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(hf.device)
        finally:
            tokenizer.padding_side = side
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        torch.manual_seed(seed)
        with torch.no_grad():
            out = hf.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True,
                              temperature=temperature, top_p=top_p,
                              repetition_penalty=repetition_penalty, use_cache=not self._bridge,
                              pad_token_id=pad)
        new = out[:, enc["input_ids"].shape[1]:]
        stops = cached.stop_token_ids(tokenizer, hf)
        replies = []
        for row in new.tolist():
            finished = any(t in stops for t in row)
            if finished:
                row = row[: next(i for i, t in enumerate(row) if t in stops)]
            replies.append((tokenizer.decode(row, skip_special_tokens=True), finished))
        return replies

    def greedy_continuation(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """The greedy continuation's tokens after `ids` (all of them, no stop rule), generated with the KV
        cache on the plain twin (through the bridge a cached continuation is wrong, and an uncached one
        costs a full pass per new token)."""
        x = torch.tensor([list(ids)], device=self.device)
        out = self.plain.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                  do_sample=False, use_cache=True, pad_token_id=self.tokenizer.pad_token_id)
        return out[0, len(ids):].tolist()

    def new_cache(self):
        """An empty KV cache for `step`."""
        return cached.new_cache(self.plain)

    @torch.inference_mode()
    def step(self, ids_BT: Sequence[Sequence[int]], cache, hooks: Sequence[tuple[str, Any]] = ()) -> torch.Tensor:
        """Logits [B, T, V] of the next tokens of sequences held in `cache` (which grows by them), with
        edits fn(act_BTD) -> act_BTD at residual hooks."""
        plain = self.plain
        with cached.block_hooks(plain, hooks):
            return plain(input_ids=torch.tensor([list(r) for r in ids_BT], device=model_device(plain)),
                         **cached.cache_kwargs(plain, cache)).logits

    def score_continuations(self, context_ids: Sequence[int], branches: Sequence[tuple[int, Sequence[Sequence[int]]]],
                            hooks_for: cached.HooksFor | None = None) -> list[list[torch.Tensor]]:
        """Per-token log-probabilities of continuations after prefixes of one context, through a KV cache
        (saekit.model.cached.score_continuations)."""
        return cached.score_continuations(self.model, context_ids, branches, hooks_for)


def _one_arg(fn):
    """A TransformerLens hook fn(act, hook) as a block hook fn(act)."""
    return lambda act: fn(act, None)


# ---------------------------------------------------------------------------- the same calls on the model itself


def hook_names(model) -> list[str]:
    """Every hook name activations can be read at."""
    return LM.of(model).hook_names()


def capture(model, tokens_BT: torch.Tensor, mask_BT: torch.Tensor | None, hooks: Sequence[str],
            stop_at: int | None | str = "auto") -> dict[str, torch.Tensor]:
    """{hook: acts_BTD} for one batch (LM.capture)."""
    return LM.of(model).capture(tokens_BT, mask_BT, hooks, stop_at)


def capture_padded(model, seqs: Sequence[Sequence[int]], hooks: Sequence[str], pad_id: int,
                   stop_at: int | None | str = "auto") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`capture` of unequal-length token lists: ({hook: acts_BTD}, mask_BT of the real tokens)."""
    return LM.of(model).capture_padded(seqs, hooks, pad_id, stop_at)


@contextmanager
def add_hooks(model, hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Forward hooks [(hook name, fn(act, hook) -> act)] for the duration of the block (LM.hooks)."""
    with LM.of(model).hooks(hooks):
        yield


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of a prompt (LM.generate)."""
    return LM.of(model, tokenizer).generate(prompt, max_new_tokens)


def compute_dtype(model) -> str:
    """The dtype a loaded model computes in (its parameters')."""
    return LM.of(model).dtype
