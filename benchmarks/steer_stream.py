"""Speed of the steer page's stream (saekit browse --model): time to the first streamed token, and
tokens per second over the clean and edited columns together, against a named baseline.

Baseline: transformers' own `generate` with its KV cache on the same plain model, sampling the same
number of new tokens after the same prompt, for one column, no edits. The stream samples two
columns (clean and steered) and runs the clean model a third time on the edited text for the KL
row, so it does about three times the baseline's forwards per step. Both run in one process,
interleaved over repetitions; the fastest of each is kept.

    python benchmarks/steer_stream.py [--db artifacts/saekit.duckdb] [--model smollm2-135m-instruct]
        [--tokens 40] [--reps 3]

Needs a database with emotion vectors of the model (`make run`). Goals (issue 28): first token under
1 s, at least 20 tokens/s for both columns together, on the 2-core machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from saekit.browse.steer import Request, open_playground
from saekit.experiments.tasks.side_effects import generate_ids
from saekit.model import plain_model

PROMPT = "I just got some news about my family and I don't know what to do."


def stream_once(play, tokens: int) -> tuple[float, float, int]:
    """(seconds to the first token event, seconds in all, tokens streamed over both columns)."""
    started = time.perf_counter()
    first, n = None, 0
    for event in play.stream(Request(PROMPT, emotion="calm", strength=0.1, max_new_tokens=tokens, seed=0)):
        if event["event"] == "token":
            n += 1
            first = first if first is not None else time.perf_counter() - started
    return first or 0.0, time.perf_counter() - started, n


def baseline_once(play, tokens: int) -> tuple[float, int]:
    hf = plain_model(play.model)
    ids = torch.tensor([generate_ids(play.model.tokenizer, PROMPT, True)])
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                          do_sample=True, temperature=0.7, use_cache=True, pad_token_id=play.model.tokenizer.pad_token_id)
    return time.perf_counter() - started, out.shape[1] - ids.shape[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=Path("artifacts/saekit.duckdb"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    play = open_playground(args.db, args.model, dtype=args.dtype)
    stream_once(play, 4)   # warm-up: the mean residual norm is measured once, on the first request
    firsts, rates, base_rates = [], [], []
    for _ in range(args.reps):
        first, total, n = stream_once(play, args.tokens)
        firsts.append(first)
        rates.append(n / total)
        seconds, m = baseline_once(play, args.tokens)
        base_rates.append(m / seconds)
    print(f"steer stream ({args.model} in {args.dtype}, {args.tokens} tokens per column, clean + edited, KL row): "
          f"first token {min(firsts):.3f} s (best of {args.reps}), {max(rates):.1f} tokens/s over both columns")
    print(f"baseline (transformers generate, KV cache, one column, no edits, {args.dtype}): {max(base_rates):.1f} tokens/s")
    print(f"ratio stream / baseline tokens/s: {max(rates) / max(base_rates):.2f}; goals: first token < 1 s "
          f"({'met' if min(firsts) < 1 else 'missed'}), >= 20 tokens/s ({'met' if max(rates) >= 20 else 'missed'})")


if __name__ == "__main__":
    main()
