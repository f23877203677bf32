"""Sampled generation under interventions, a token at a time through a KV cache, several columns at once.

`saekit experiment` (side_effects' generations) and the browser's steer page both sample here, so
a spec saved from the page reproduces its columns exactly: the same batch of columns, the same
cache, the same edits at the same positions (the spec's `positions` under the SAE's token rule,
counted from the start of the prompt), and one generator per column seeded alike.

A `Stream` runs one row per setting in one batched forward (each row's edits masked to that row);
`sample_columns` samples every column and, optionally, runs the clean model on one column's text
too (its "shadow"), which gives the KL and log-probability changes the steer page shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from saekit.experiments.batches import positions_mask
from saekit.experiments.kinds import make_edits
from saekit.experiments.targets import BASELINE, Resolved, Setting, baseline_setting
from saekit.model import LM


@dataclass
class Stream:
    """Sequences of equal length through the model, row r under settings[r]: `feed` appends a token per row
    (or the prompt) and returns the next token's log-probabilities [B, V]."""
    model: object
    res: Resolved
    settings: Sequence[Setting]
    length: int = 0
    cache: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.lm = LM.of(self.model)
        self.cache = self.lm.new_cache()

    def _hooks(self, n: int) -> list:
        B = len(self.settings)
        where_BT = positions_mask(self.res.spec.positions, torch.ones(B, self.length + n, dtype=torch.bool),
                                  self.res.token_rule)[:, self.length:]
        hooks = []
        for r, setting in enumerate(self.settings):
            if setting.kind == BASELINE:
                continue
            row_BT = torch.zeros_like(where_BT)
            row_BT[r] = where_BT[r]
            hooks += [(str(e.hook), e) for e in make_edits(self.res, setting, row_BT)]
        return hooks

    @torch.inference_mode()
    def feed(self, ids_BT: Sequence[Sequence[int]]) -> torch.Tensor:
        n = len(ids_BT[0])
        logits = self.lm.step(ids_BT, self.cache, self._hooks(n))
        self.length += n
        return logits[:, -1].float().log_softmax(-1).cpu()


def sample(logp_V: torch.Tensor, temperature: float, generator: torch.Generator) -> int:
    """A token drawn from softmax(logp / temperature) with `generator` (CPU, float32: reproducible)."""
    probs = (logp_V / temperature).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Token:
    """One sampled token of a column: its id, the distribution it was drawn from (log-probabilities [V],
    temperature 1), and for the shadowed column the clean model's distribution on the same text."""
    column: str
    step: int
    id: int
    logp_V: torch.Tensor
    clean_V: torch.Tensor | None = None


def sample_columns(model, res: Resolved, columns: dict[str, Setting], prompt_ids: Sequence[int], max_new_tokens: int,
                   temperature: float, seed: int, shadow: str | None = None) -> Iterator[Token]:
    """Tokens of every column, step by step in column order, each column sampled with its own generator
    seeded `seed` (so a setting that changes nothing samples the clean column's tokens). With `shadow`,
    the clean model also reads that column's text, and its tokens carry that distribution. A column
    stops after an end-of-text token or `max_new_tokens`."""
    names = list(columns)
    settings = [columns[n] for n in names] + ([baseline_setting()] if shadow else [])
    stream = Stream(model, res, settings)
    gens = {n: torch.Generator().manual_seed(seed) for n in names}
    stop = LM.of(model).stop_token_ids()
    logp = stream.feed([list(prompt_ids)] * len(settings))
    live, last = set(names), {n: int(prompt_ids[-1]) for n in names}
    for step in range(max_new_tokens):
        for r, n in enumerate(names):
            if n not in live:
                continue
            token = Token(n, step, sample(logp[r], temperature, gens[n]), logp[r],
                          logp[-1] if n == shadow else None)
            last[n] = token.id
            yield token
            if token.id in stop:
                live.discard(n)
        if not live or step + 1 == max_new_tokens:
            return
        rows = [[last[n]] for n in names] + ([[last[shadow]]] if shadow else [])   # a finished column repeats its last token
        logp = stream.feed(rows)

