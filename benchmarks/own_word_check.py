"""The logit-lens own-word check over a real vocabulary: saekit's against the previous implementation.

Baseline (named: the implementation before 2026-12-07, kept here): every call decodes the whole
vocabulary token by token and tests each token against each emotion's word forms with a regular
expression and a scan of the forms. saekit.evidence.own_word_check decodes a tokenizer's vocabulary
once and tests membership in a precomputed set of forms and their word-start pieces. Both run in
this process on the same tokenizer, vectors and seed, alternating, as many calls as the ranking
makes (one per vector set); the script checks their results agree.

    python benchmarks/own_word_check.py [--model smollm2-135m-instruct] [--calls 4] [--reps 2]
"""

from __future__ import annotations

import argparse
import re
import time

import torch

from saekit import evidence as Ev
from saekit.corpus import NEUTRAL, load_corpus
from saekit.model import load_tokenizer


def baseline(vectors_ED, emotions, W_VD, tokenizer, top: int = 100, n_random: int = 200, seed: int = 0) -> list:
    """The previous own_word_check's matching and ranking (its random control included)."""
    def matches(text, forms):
        t = text.strip().lower()
        return bool(re.fullmatch(r"[a-z]+", t)) and (t in forms or (len(t) >= 5 and any(f.startswith(t) for f in forms)))

    vocab = [tokenizer.decode([t]) for t in range(W_VD.shape[0])]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for j, e in enumerate(emotions):
        forms = Ev.word_forms(e)
        is_form_V = torch.tensor([matches(t, forms) for t in vocab])
        order = (W_VD @ vectors_ED[j]).argsort(descending=True)
        ranks = is_form_V[order].nonzero().flatten()
        rand_RD = torch.randn(n_random, W_VD.shape[1], generator=gen)
        rand_RD = rand_RD / rand_RD.norm(dim=1, keepdim=True) * vectors_ED[j].norm()
        rate = float(is_form_V[(rand_RD @ W_VD.T).topk(top, dim=1).indices].any(dim=1).float().mean())
        out.append((int(ranks[0]) + 1 if len(ranks) else None, rate, int(is_form_V.sum())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--calls", type=int, default=4, help="vector sets per ranking (the study ranks 4)")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    tok = load_tokenizer(args.model)
    emotions = sorted({r.emotion for r in load_corpus("shipped") if r.emotion != NEUTRAL})   # as the ranking
    g = torch.Generator().manual_seed(0)
    W_VD = torch.randn(len(tok), 576, generator=g)
    vectors = [torch.randn(len(emotions), 576, generator=g) for _ in range(args.calls)]
    times: dict[str, list[float]] = {"baseline": [], "saekit": []}
    results: dict[str, list] = {}
    for _ in range(args.reps):
        Ev._VOCABS.clear()                   # each repetition starts cold, as a fresh ranking process does
        for name in ("baseline", "saekit"):
            t = time.perf_counter()
            if name == "baseline":
                results[name] = [baseline(v, emotions, W_VD, tok) for v in vectors]
            else:
                results[name] = [[(r["own_word_rank"], r["random_rate"], r["n_forms_in_vocab"])
                                  for r in Ev.own_word_check(v, emotions, W_VD, None, tok)["per_emotion"]]
                                 for v in vectors]
            times[name].append(time.perf_counter() - t)
    assert results["baseline"] == results["saekit"], "the two implementations disagree"
    b, s = min(times["baseline"]), min(times["saekit"])
    print(f"{args.calls} calls x {len(emotions)} emotions over {len(tok):,} tokens (fastest of {args.reps}):")
    print(f"  baseline (previous implementation) {b:7.1f} s")
    print(f"  saekit                             {s:7.1f} s   {b / s:.1f}x faster; results identical")


if __name__ == "__main__":
    main()
