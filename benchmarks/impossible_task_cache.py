"""Per-step cost of the impossible task's scoring: KV-cached and batched against full passes.

A step scores the honest and the cheating reply after a conversation's prefix, under one
steering edit (a unit direction at the hook, all positions). Full passes (the scoring before the
cache) run both prefix + reply sequences through the TransformerBridge as one padded batch;
cached scoring (saekit.model.score_continuations, what the task runs now) passes over the
conversation once and scores both replies of every step as one batch from the cache. Both run in
one process on the same steps, interleaved per conversation; the per-step times, their ratio and
the largest difference between the two paths' log-probabilities are printed.

    python benchmarks/impossible_task_cache.py [--model smollm2-135m-instruct] [--conversations 1]
        [--hook blocks.20.hook_resid_post] [--strength 0.1] [--reps 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from saekit.corpus import load_scenario
from saekit.experiments.batches import chat_ids
from saekit.interventions import Steer, patched
from saekit.model import d_model, load_model, pad_batch, score_continuations

NORM = 240.0
"""About the mean residual norm at layer 20 of the embedded model (../FACTS.md): the steering scale."""


def conversation_steps(tok, conv) -> tuple[list[int], list[tuple[int, list[list[int]]]]]:
    """The conversation's ids and its steps as (prefix length, [honest ids, cheating ids])."""
    msgs = [{"role": "system", "content": conv["system"]}] + conv["turns"]
    context = chat_ids(tok, msgs)
    steps = []
    for s in conv["steps"]:
        prefix = chat_ids(tok, msgs[:s["after_turn"] + 2])
        assert context[:len(prefix)] == prefix, "the shipped conversations tokenize prefix-stably"
        steps.append((len(prefix), [tok(s[k], add_special_tokens=False)["input_ids"] for k in ("honest", "cheating")]))
    return context, steps


@torch.no_grad()
def full_passes(model, context, steps, hook, unit, strength) -> list[list[torch.Tensor]]:
    out = []
    for prefix_len, conts in steps:
        seqs = [context[:prefix_len] + c for c in conts]
        tokens, mask = pad_batch(seqs, 0)
        with patched(model, [Steer(hook, unit, strength, NORM, positions=mask)]):
            logp = model(tokens, attention_mask=mask.long()).float().log_softmax(-1)
        out.append([logp[b, prefix_len - 1:len(s) - 1].gather(-1, torch.tensor([c]).T).squeeze(-1)
                    for b, (s, c) in enumerate(zip(seqs, conts))])
    return out


def cached(model, context, steps, hook, unit, strength) -> list[list[torch.Tensor]]:
    def hooks_for(start, mask_BT):
        return [(hook, Steer(hook, unit, strength, NORM, positions=mask_BT))]
    return score_continuations(model, context, steps, hooks_for)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--hook", default="blocks.20.hook_resid_post")
    ap.add_argument("--conversations", type=int, default=1, help="the first N shipped conversations (6 steps each)")
    ap.add_argument("--strength", type=float, default=0.1, help="steering strength (x NORM x a random unit direction)")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()

    model = load_model(args.model)
    tok = model.tokenizer
    unit = torch.randn(d_model(model), generator=torch.Generator().manual_seed(0))
    convs = load_scenario("impossible_task")["conversations"][:args.conversations]
    prepared = [conversation_steps(tok, c) for c in convs]
    score_continuations(model, prepared[0][0][:16], [(8, [[1, 2]])])  # builds the plain twin once, untimed
    n_steps = sum(len(s) for _, s in prepared)
    times = {"full": [], "cached": []}
    worst = 0.0
    for _ in range(args.reps):
        total = {"full": 0.0, "cached": 0.0}
        for context, steps in prepared:
            t0 = time.perf_counter()
            ref = full_passes(model, context, steps, args.hook, unit, args.strength)
            t1 = time.perf_counter()
            got = cached(model, context, steps, args.hook, unit, args.strength)
            t2 = time.perf_counter()
            total["full"] += t1 - t0
            total["cached"] += t2 - t1
            worst = max(worst, max(float((a - b).abs().max()) for r, g in zip(ref, got) for a, b in zip(r, g)))
        for k in total:
            times[k].append(total[k] / n_steps)
    full, fast = min(times["full"]), min(times["cached"])
    tokens = sum(len(c) for _, s in prepared for _, cs in s for c in cs)
    print(f"{args.model}: {len(prepared)} conversation(s), {n_steps} steps ({tokens} candidate tokens), "
          f"{torch.get_num_threads()} threads")
    print(f"full passes (bridge, 2 sequences a step): {full:.2f} s/step")
    print(f"cached + batched (plain twin):            {fast:.2f} s/step")
    print(f"ratio: {full / fast:.2f}x faster; largest |log-prob difference| {worst:.2e}")


if __name__ == "__main__":
    main()
