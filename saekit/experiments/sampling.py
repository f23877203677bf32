"""Sampled generation under one setting's edits, a token at a time through a KV cache.

`saekit experiment` (side_effects' generations) and the browser's steer page both sample here,
so a spec saved from the page reproduces its columns exactly: the same cache, the same edits at
the same positions (the spec's `positions` under the SAE's token rule, counted from the start of
the prompt), and a generator seeded per stream. A `Stream` feeds tokens and returns the next
token's log-probabilities; `sample` draws from one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from saekit.experiments.base import Resolved, Setting
from saekit.experiments.batches import positions_mask
from saekit.experiments.kinds import make_edits
from saekit.model import block_hooks, cache_kwargs, model_device, new_cache, plain_model, stop_token_ids


@dataclass
class Stream:
    """One sequence through the model under a setting: `feed` appends tokens and returns the log-probabilities
    [V] of the next one. Edits apply at the spec's positions, counted from the stream's first token."""
    model: object
    res: Resolved
    setting: Setting
    length: int = 0
    cache: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.hf = plain_model(self.model)
        self.device = model_device(self.hf)
        self.cache = new_cache(self.hf)

    def _hooks(self, n: int) -> list:
        full_BT = torch.ones(1, self.length + n, dtype=torch.bool)
        where_BT = positions_mask(self.res.spec.positions, full_BT, self.res.token_rule)[:, self.length:]
        return [(str(e.hook), e) for e in make_edits(self.res, self.setting, where_BT)]

    @torch.inference_mode()
    def feed(self, ids: Sequence[int]) -> torch.Tensor:
        with block_hooks(self.hf, self._hooks(len(ids))):
            logits = self.hf(input_ids=torch.tensor([list(ids)], device=self.device),
                             **cache_kwargs(self.hf, self.cache)).logits
        self.length += len(ids)
        return logits[0, -1].float().log_softmax(-1).cpu()


def sample(logp_V: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    """A token drawn from softmax(logp / temperature) with `generator` (CPU, float32: reproducible)."""
    probs = (logp_V / temperature).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Token:
    """One sampled token: its id and the distribution it was drawn from (log-probabilities [V], temperature 1)."""
    id: int
    logp_V: torch.Tensor


def sample_stream(model, res: Resolved, setting: Setting, prompt_ids: Sequence[int], max_new_tokens: int,
                  temperature: float, seed: int) -> Iterator[Token]:
    """Tokens sampled one by one after `prompt_ids` under the setting, with a generator seeded by `seed`;
    stops after an end-of-text token or `max_new_tokens`."""
    stream, gen = Stream(model, res, setting), torch.Generator().manual_seed(seed)
    stop = stop_token_ids(model.tokenizer, plain_model(model))
    logp = stream.feed(prompt_ids)
    for _ in range(max_new_tokens):
        token = Token(sample(logp, temperature, gen), logp)
        yield token
        if token.id in stop:
            return
        logp = stream.feed([token.id])
