"""Harvest throughput against a plain transformers forward pass, side by side in one process.

Baseline: the model loaded with transformers alone, no hooks, full depth (logits included),
over exactly the same token batches (same documents, batch size, padding and dtype). Measured:
saekit's real `harvest()` on its default path for residual hooks (the same plain model with
forward hooks; tokenising, copying and writing shards included) capturing the last layer, and
capturing layer L, whose cost should be about (L+1)/N of a full pass because the forward stops
there. The TransformerBridge path (needed for non-residual hooks) is timed too, for reference.
Configurations are interleaved over repetitions and the fastest of each is kept.

    python benchmarks/harvest_throughput.py [--model smollm2-135m-instruct] [--docs 48] [--reps 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch

from saekit.corpus import load_corpus
from saekit.harvest import HarvestConfig, harvest, tokenize
from saekit.model import load_hf, load_model, n_layers


def baseline_pass(hf, pieces, batch_size: int, pad_id: int) -> int:
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i].token_ids))
    tokens = 0
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            ids = [pieces[i].token_ids for i in order[b:b + batch_size]]
            T = max(map(len, ids))
            x = torch.full((len(ids), T), pad_id)
            mask = torch.zeros((len(ids), T), dtype=torch.long)
            for r, seq in enumerate(ids):
                x[r, :len(seq)] = torch.tensor(seq)
                mask[r, :len(seq)] = 1
            hf(input_ids=x, attention_mask=mask)
            tokens += int(mask.sum())
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--docs", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layer", type=int, default=None, help="the partial-depth layer L (default N/3 - 1)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    records = load_corpus(include_neutral=False)[:: max(1, 780 // args.docs)][: args.docs]
    bridge = load_model(args.model, dtype=args.dtype)
    hf, tok = load_hf(args.model, dtype=args.dtype)
    N = n_layers(bridge)
    L = args.layer if args.layer is not None else N // 3 - 1
    pieces = tokenize(tok, records, 512, "truncate")

    def run_harvest(layer: int, model) -> None:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = HarvestConfig(model=args.model, hooks=[f"blocks.{layer}.hook_resid_post"], out=tmp,
                                batch_size=args.batch_size, docs_per_shard=len(records), dtype=args.dtype)
            harvest(cfg, model=model, records=records, tokenizer=tok)

    runs = {"plain transformers, full depth": lambda: baseline_pass(hf, pieces, args.batch_size, tok.pad_token_id),
            f"saekit harvest, last layer ({N - 1})": lambda: run_harvest(N - 1, hf),
            f"saekit harvest, layer {L} of {N}": lambda: run_harvest(L, hf),
            f"bridge path, last layer ({N - 1})": lambda: run_harvest(N - 1, bridge)}
    best = {k: float("inf") for k in runs}
    baseline_pass(hf, pieces[:4], args.batch_size, tok.pad_token_id)  # warm-up
    for _ in range(args.reps):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    n_tokens = sum(len(p.token_ids) for p in pieces)
    print(f"model {args.model}, {len(records)} docs, {n_tokens} tokens, batch {args.batch_size}, {args.dtype}, "
          f"{torch.get_num_threads()} threads, best of {args.reps}")
    for name, sec in best.items():
        print(f"  {name:40s} {sec:7.2f} s  {n_tokens / sec:8.0f} tok/s")
    base, last, part, via_bridge = best.values()
    print(f"throughput ratio, harvest last layer / plain forward: {base / last:.2f}x  (goal >= 0.9)")
    print(f"throughput ratio, bridge-path harvest last layer / plain forward: {base / via_bridge:.2f}x")
    print(f"cost ratio, harvest layer {L} / plain forward: {part / base:.2f}  (expected about {(L + 1) / N:.2f} = {L + 1}/{N})")


if __name__ == "__main__":
    main()
