"""The evidence shown for a feature: token statistics, examples and the logit lens, on counted tokens.

Every statistic here is computed on the positions a `TokenRule` keeps, so the examples next to a
feature explain the same numbers its selectivity was ranked on:
- story examples: the stories with the highest pooled mean (the ranking statistic),
- window examples: the stories with the highest single counted token (the peak),
each with the per-token activations of its window so a page can highlight them;
- per feature, an activation histogram over counted tokens (log2 bins);
- the logit lens with values, for SAE decoder directions and emotion vectors, and a check of
  whether an emotion's own word ranks among the tokens its vector promotes, next to random
  directions of equal norm.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from saekit.activations import Activations, pool_start
from saekit.tokens import TokenRule

HIST_LOG2_MIN, HIST_LOG2_MAX = -8, 16
"""Histogram bins: (0, 2^-8], then one bin per power of two up to 2^16, then everything above."""


def hist_edges() -> list[float]:
    """Upper edges of the histogram bins (the last bin is open above)."""
    return [2.0 ** e for e in range(HIST_LOG2_MIN, HIST_LOG2_MAX + 1)] + [float("inf")]


def _hist_bin(values: torch.Tensor) -> torch.Tensor:
    """Bin index of positive activations: bin i holds (2^(MIN+i-1), 2^(MIN+i)]."""
    b = torch.ceil(torch.log2(values.double())).long() - HIST_LOG2_MIN
    return b.clamp(0, HIST_LOG2_MAX - HIST_LOG2_MIN + 1)


@dataclass
class Codes:
    """A story's latents [T, F] as their non-zero entries (12 bytes each)."""
    n_tokens: int
    token_N: torch.Tensor              # int32
    feature_N: torch.Tensor            # int32
    value_N: torch.Tensor

    @classmethod
    def of(cls, feats_TF: torch.Tensor) -> "Codes":
        t, f = feats_TF.nonzero(as_tuple=True)
        return cls(feats_TF.shape[0], t.to(torch.int32), f.to(torch.int32), feats_TF[t, f])

    def dense(self, d_sae: int) -> torch.Tensor:
        out_TF = torch.zeros(self.n_tokens, d_sae)
        out_TF[self.token_N.long(), self.feature_N.long()] = self.value_N
        return out_TF


@dataclass
class Encoded:
    """Per-story and per-feature statistics of an SAE on a harvest, over counted tokens only."""
    mean_NF: torch.Tensor              # pooled mean from the pooling offset (the ranking statistic)
    max_NF: torch.Tensor               # peak counted token per story
    argmax_NF: torch.Tensor            # its position
    fire_F: torch.Tensor               # counted tokens where the feature is active
    sum_F: torch.Tensor
    peak_F: torch.Tensor
    hist_FB: torch.Tensor              # counts of active counted tokens per log2 bin
    n_tokens: int                      # counted tokens
    n_dropped_first: int               # positions left out by skip_first
    n_dropped_norm: int                # positions left out by the norm filter
    skipped: dict[int, str] = field(default_factory=dict)   # story index -> why it has no counted tokens
    codes: dict[int, Codes] = field(default_factory=dict)
    """Story index -> its non-zero latents (uncounted positions zeroed), kept up to CODE_BUDGET values
    so the examples need not encode the stories a second time."""


CODE_BUDGET = 50_000_000
"""Non-zero latents `encode_documents` keeps for the examples (about 0.6 GB); later stories are re-encoded."""


@torch.no_grad()
def encode_documents(acts: Activations, hook: str, encode: Callable[[torch.Tensor], torch.Tensor], d_sae: int,
                     rule: TokenRule, chunk: int = 4096) -> Encoded:
    """One pass over the shards: SAE latents of every counted token, reduced per story and per feature.

    A story whose counted tokens leave nothing to pool is listed in `skipped` (and gets zeros),
    never a NaN.
    """
    docs = acts.documents
    N, offset = len(docs), acts.manifest["pool_offset"]
    mean_NF, max_NF = torch.zeros(N, d_sae), torch.zeros(N, d_sae)
    argmax_NF = torch.zeros(N, d_sae, dtype=torch.int32)
    fire_F, peak_F = torch.zeros(d_sae), torch.zeros(d_sae)
    sum_F = torch.zeros(d_sae, dtype=torch.float64)
    n_bins = HIST_LOG2_MAX - HIST_LOG2_MIN + 2
    hist_FB = torch.zeros(d_sae * n_bins, dtype=torch.long)
    n_tokens = n_first = n_norm = n_codes = 0
    skipped: dict[int, str] = {}
    codes: dict[int, Codes] = {}
    for shard in acts.iter_shard_tensors(hook):
        x_TD, position_T = shard["acts"].float(), shard["position"]
        first_T = rule.keep_positions(position_T)
        keep_T = rule.keep(position_T, x_TD) if rule.uses_norm else first_T
        n_first += int((~first_T).sum())
        n_norm += int((first_T & ~keep_T).sum())
        feats_TF = torch.cat([encode(x_TD[i:i + chunk]).float() for i in range(0, len(x_TD), chunk)])
        feats_TF[~keep_T] = 0.0
        counted_TF = feats_TF[keep_T]
        active = counted_TF > 0
        fire_F += active.sum(0)
        sum_F += counted_TF.sum(0, dtype=torch.float64)
        peak_F = torch.maximum(peak_F, feats_TF.max(0).values)
        n_tokens += int(keep_T.sum())
        t_idx, f_idx = active.nonzero(as_tuple=True)
        hist_FB.index_add_(0, f_idx * n_bins + _hist_bin(counted_TF[t_idx, f_idx]),
                           torch.ones_like(f_idx))
        doc_index = shard["doc_index"]
        bounds = torch.nonzero(torch.diff(doc_index, prepend=doc_index[:1] - 1)).flatten().tolist() + [len(doc_index)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            d = int(doc_index[a])
            counted = keep_T[a:b].nonzero().flatten()
            pooled = counted[counted >= pool_start(b - a, offset)]
            if len(pooled) == 0:
                skipped[d] = (f"{docs[d]['id']}: no counted tokens to pool ({b - a} tokens, rule: {rule.describe()})")
                continue
            f = feats_TF[a:b]
            mean_NF[d] = f[pooled].mean(0)
            max_NF[d], argmax_NF[d] = f.max(0)
            if n_codes < CODE_BUDGET:
                codes[d] = Codes.of(f)
                n_codes += len(codes[d].value_N)
    return Encoded(mean_NF, max_NF, argmax_NF, fire_F, sum_F, peak_F, hist_FB.view(d_sae, n_bins), n_tokens,
                   n_first, n_norm, skipped, codes)


# ---------------------------------------------------------------------------- examples


def _window(keep_T: torch.Tensor, pos: int, before: int, after: int) -> tuple[int, int]:
    """The run of counted positions around `pos`, at most `before` left and `after` right of it."""
    start = pos
    while start > 0 and pos - start < before and keep_T[start - 1]:
        start -= 1
    end = pos + 1
    while end < len(keep_T) and end - pos <= after and keep_T[end]:
        end += 1
    return start, end


@torch.no_grad()
def top_examples(enc: Encoded, acts: Activations, hook: str, encode: Callable[[torch.Tensor], torch.Tensor],
                 rule: TokenRule, tokenizer, n: int, before: int = 8, after: int = 4) -> list[dict[str, Any]]:
    """Story and window examples of every ever-active feature, each with its window's activations.

    kind 'story': the n stories with the highest pooled mean; kind 'window': the n stories with
    the highest counted token. The window is centred on the story's counted peak and never leaves
    the counted tokens; `activations` are the feature's values on the window's tokens, from the
    latents `encode_documents` kept (a story beyond its budget is encoded again).
    """
    docs = acts.documents
    alive = (enc.peak_F > 0).nonzero().flatten()
    if len(alive) == 0:
        return []
    valid_N = _pooled_stories(enc)
    requests: dict[int, list[tuple[str, int, int, float]]] = {}   # story -> (kind, feature, rank, score)
    for kind, score_NF in (("story", enc.mean_NF), ("window", enc.max_NF)):
        scores = score_NF[:, alive].masked_fill(~valid_N[:, None], 0.0)
        vals, idx = scores.topk(min(n, len(docs)), dim=0)
        for j, f in enumerate(alive.tolist()):
            for r in range(vals.shape[0]):
                if vals[r, j] <= 0:
                    break
                requests.setdefault(int(idx[r, j]), []).append((kind, f, r + 1, float(vals[r, j])))
    rows = []
    for shard in acts.iter_shard_tensors(hook):
        doc_index = shard["doc_index"]
        for d in doc_index.unique().tolist():
            if d not in requests:
                continue
            sel = (doc_index == d).nonzero().flatten()
            x_TD, pos_T, ids_T = shard["acts"][sel].float(), shard["position"][sel], shard["token_id"][sel]
            keep_T = rule.keep(pos_T, x_TD)
            feats_TF = enc.codes[d].dense(enc.mean_NF.shape[1]) if d in enc.codes else encode(x_TD).float()
            for kind, f, r, score in requests[d]:
                start, end = _window(keep_T, int(enc.argmax_NF[d, f]), before, after)
                ids = ids_T[start:end].tolist()
                rows.append({"feature": f, "kind": kind, "example_rank": r, "story_id": docs[d]["id"],
                             "emotion": docs[d]["label"], "token_start": start, "token_end": end,
                             "activation": score, "token_ids": ids,
                             "tokens": decode_tokens(tokenizer, ids) if tokenizer is not None else [],
                             "token_activations": feats_TF[start:end, f].tolist(),
                             "snippet": tokenizer.decode(ids) if tokenizer is not None else ""})
    rows.sort(key=lambda r: (r["feature"], r["kind"], r["example_rank"]))
    return rows


def _pooled_stories(enc: Encoded) -> torch.Tensor:
    """[N] True for the stories that had counted tokens to pool (not in enc.skipped)."""
    valid_N = torch.ones(enc.mean_NF.shape[0], dtype=torch.bool)
    valid_N[list(enc.skipped)] = False
    return valid_N


def story_precision(enc: Encoded, labels: list[str], emotions: list[str], n: int) -> torch.Tensor:
    """[E, F]: the fraction of each feature's top-n stories (by pooled mean) labelled each emotion."""
    valid_N = _pooled_stories(enc)
    scores_NF = enc.mean_NF.masked_fill(~valid_N[:, None], float("-inf"))
    n = min(n, int(valid_N.sum()))
    idx_nF = scores_NF.topk(n, dim=0).indices
    label_N = torch.tensor([emotions.index(lab) if lab in emotions else len(emotions) for lab in labels])
    counts = torch.zeros(len(emotions) + 1, enc.mean_NF.shape[1])
    counts.scatter_add_(0, label_N[idx_nF], torch.ones_like(idx_nF, dtype=torch.float))
    return counts[:-1] / max(n, 1)


# ---------------------------------------------------------------------------- logit lens


@dataclass
class LogitLens:
    """Per direction, the tokens it promotes and suppresses most, with their logits."""
    promoted_ids: list[list[int]]
    promoted_logits: list[list[float]]
    suppressed_ids: list[list[int]]
    suppressed_logits: list[list[float]]


def _unembed_matrix(W_U_VD: torch.Tensor, norm_D: torch.Tensor | None) -> torch.Tensor:
    return W_U_VD.float() if norm_D is None else W_U_VD.float() * norm_D.float()


@torch.no_grad()
def logit_lens(dirs_FD: torch.Tensor, W_U_VD: torch.Tensor, norm_D: torch.Tensor | None, n: int,
               chunk: int = 1024) -> LogitLens:
    """Direct logit effect of each direction through the final norm's scale and the unembedding."""
    W_VD = _unembed_matrix(W_U_VD, norm_D)
    out = LogitLens([], [], [], [])
    for i in range(0, len(dirs_FD), chunk):
        logits_FV = dirs_FD[i:i + chunk].float() @ W_VD.T
        top, bottom = logits_FV.topk(n, dim=1), logits_FV.topk(n, dim=1, largest=False)
        out.promoted_ids += top.indices.tolist()
        out.promoted_logits += top.values.tolist()
        out.suppressed_ids += bottom.indices.tolist()
        out.suppressed_logits += bottom.values.tolist()
    return out


SUFFIXES = ("", "s", "ly", "ness", "ed", "ing", "ion", "ment")


def word_forms(emotion: str) -> set[str]:
    """The emotion word and its common derived forms (desperate: desperately, desperation, ...)."""
    word = emotion.lower().strip()
    stems = {word}
    if word.endswith("y"):
        stems.add(word[:-1] + "i")                    # happy -> happi(ness, ly)
    if word.endswith("e"):
        stems.add(word[:-1])                          # desperate -> desperat(ion)
    return {s + suf for s in stems for suf in SUFFIXES} | {word}


def _clean(token_text: str) -> str:
    """The token as a lower-case ASCII word, or "" when it is anything else (punctuation, digits, pieces of UTF-8)."""
    t = token_text.strip().lower()
    return t if t.isascii() and t.isalpha() else ""


def _matching_words(forms: set[str]) -> set[str]:
    """Every cleaned token text that counts as a form: the forms, and their word-start pieces of 5+ letters."""
    return set(forms) | {f[:n] for f in forms for n in range(5, len(f) + 1)}


def token_matches(token_text: str, forms: set[str]) -> bool:
    """A token is a form of the word, or a word-start piece of one at least 5 letters long."""
    t = _clean(token_text)
    return bool(t) and t in _matching_words(forms)


_VOCABS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decoded_vocab(tokenizer, size: int) -> list[str]:
    """`tokenizer.decode([i])` for every id below `size`, decoded once per tokenizer.

    Decoding a 49k vocabulary token by token takes seconds, and the ranking needs it for every
    vector set and for every example window.
    """
    try:
        vocab = _VOCABS.setdefault(tokenizer, [])
    except TypeError:                       # a tokenizer that takes no weak reference: decode every time
        return [tokenizer.decode([t]) for t in range(size)]
    vocab += [tokenizer.decode([t]) for t in range(len(vocab), size)]
    return vocab[:size]


def decode_tokens(tokenizer, ids: list[int]) -> list[str]:
    """Each id's own text (as `tokenizer.decode([id])`), through the decoded vocabulary."""
    if not ids:
        return []
    vocab = decoded_vocab(tokenizer, max(ids) + 1)
    return [vocab[t] for t in ids]


@torch.no_grad()
def own_word_check(vectors_ED: torch.Tensor, emotions: list[str], W_U_VD: torch.Tensor, norm_D: torch.Tensor | None,
                   tokenizer, top: int = 100, n_random: int = 200, seed: int = 0) -> dict[str, Any]:
    """Does each emotion vector promote its own word among its top tokens, more often than chance?

    For each emotion: the best rank of any form of its word among the promoted tokens (1 = most
    promoted), whether that is within `top`, and the fraction of random directions of equal norm
    for which it is (the chance rate for that word). Over emotions: the count of hits against the
    distribution of counts under random directions (one draw = one random direction per emotion).
    """
    W_VD = _unembed_matrix(W_U_VD, norm_D)
    vocab = decoded_vocab(tokenizer, W_VD.shape[0])
    clean_V = [_clean(t) for t in vocab]
    gen = torch.Generator().manual_seed(seed)
    per_emotion, random_hits = [], torch.zeros(n_random, len(emotions), dtype=torch.bool)
    for j, e in enumerate(emotions):
        words = _matching_words(word_forms(e))
        is_form_V = torch.tensor([t in words for t in clean_V])
        logits_V = W_VD @ vectors_ED[j].float()
        order = logits_V.argsort(descending=True)
        form_ranks = (is_form_V[order]).nonzero().flatten()
        best = int(form_ranks[0]) + 1 if len(form_ranks) else None
        rand_RD = torch.randn(n_random, W_VD.shape[1], generator=gen)
        rand_RD = rand_RD / rand_RD.norm(dim=1, keepdim=True) * vectors_ED[j].norm()
        top_RK = (rand_RD @ W_VD.T).topk(top, dim=1).indices
        random_hits[:, j] = is_form_V[top_RK].any(dim=1)
        per_emotion.append({"emotion": e, "own_word_rank": best, "own_word_in_top": best is not None and best <= top,
                            "best_token": vocab[int(order[form_ranks[0]])] if len(form_ranks) else None,
                            "random_rate": float(random_hits[:, j].float().mean()),
                            "n_forms_in_vocab": int(is_form_V.sum())})
    hits = sum(bool(r["own_word_in_top"]) for r in per_emotion)
    null = random_hits.sum(1).float()
    return {"top": top, "n_random": n_random, "hits": hits, "emotions": len(emotions),
            "random_mean_hits": float(null.mean()), "p_value": float(((null >= hits).sum() + 1) / (n_random + 1)),
            "per_emotion": per_emotion}
