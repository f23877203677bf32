"""Forward passes of an experiment: padded batches under one setting's edits, and what is read off them."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from saekit.experiments.kinds import make_edits
from saekit.experiments.spec import ExperimentError
from saekit.experiments.targets import Resolved, Setting
from saekit.interventions import patched
from saekit.metrics import kl_per_token
from saekit.model import capture, format_chat, model_device, pad_batch
from saekit.tokens import TokenRule


def positions_mask(kind: str, mask_BT: torch.Tensor, rule: TokenRule = TokenRule()) -> torch.Tensor:
    """Which real tokens an intervention touches: those the token rule counts (its position part;
    Splice and Steer apply its norm filter), all, the last of each row, or all but the first."""
    if kind == "all":
        return mask_BT.clone()
    if kind == "counted":
        return mask_BT & rule.keep_positions(torch.arange(mask_BT.shape[1]))[None, :]
    out = torch.zeros_like(mask_BT)
    lengths = mask_BT.sum(1)
    if kind == "last":
        out[torch.arange(len(mask_BT)), lengths - 1] = True
        return out
    out = mask_BT.clone()
    out[:, 0] = False
    return out


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@torch.no_grad()
def run_logits(model, res: Resolved, setting: Setting, seqs: Sequence[Sequence[int]],
               edit_mask: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities [B, T, V] of a right-padded batch under one setting, and the real-token mask."""
    tokens, mask = pad_batch(seqs, pad_id_of(model.tokenizer))
    where = edit_mask(mask) if edit_mask is not None else positions_mask(res.spec.positions, mask, res.token_rule)
    device = model_device(model)
    with patched(model, make_edits(res, setting, where.to(device))):
        logits = model(tokens.to(device), attention_mask=mask.long().to(device))
    return logits.float().log_softmax(-1).cpu(), mask


@torch.no_grad()
def read_acts(model, hook: str, ids: Sequence[int]) -> torch.Tensor:
    """Activations [T, D] of the clean model at a hook, for one sequence."""
    return capture(model, torch.tensor([list(ids)]), None, [hook])[hook][0].float().cpu()


def word_token(tokenizer, word: str) -> int:
    """The first token of ' ' + word."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ExperimentError(f"the word {word!r} tokenizes to nothing")
    return int(ids[0])


def candidate_logprob(logp_TV: torch.Tensor, tokens: Sequence[int], start: int) -> tuple[float, float]:
    """(sum, mean) log-probability of tokens[start:] given what precedes them."""
    tgt = torch.tensor(list(tokens[start:]), dtype=torch.long)
    lp = logp_TV[start - 1:len(tokens) - 1].gather(-1, tgt[:, None]).squeeze(-1)
    return float(lp.sum()), float(lp.mean())


def kl_per_text(clean_BTV: torch.Tensor, other_BTV: torch.Tensor, mask_BT: torch.Tensor) -> list[float]:
    """Mean over real tokens of KL(clean || other), one value per row."""
    kl_BT = kl_per_token(clean_BTV, other_BTV).clamp_min(0)  # rounding can dip below 0
    return [float(kl_BT[b][mask_BT[b]].mean()) for b in range(len(mask_BT))]


def chat_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
    text = format_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
