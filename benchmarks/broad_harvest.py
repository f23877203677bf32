"""The broad-text harvest in float32 against bfloat16 compute, side by side in one process.

Baseline: saekit's real `harvest()` of the first documents of the `broad` corpus (chats in the
model's chat format and Wikipedia openings) at the study's SAE hook, in float32. Measured: the
same harvest, same documents and batches, with the model in bfloat16 (what the issue hoped would
pay for the broad text). Runs alternate, and the fastest of each is kept. A CPU without bf16
instructions (AVX2 only) multiplies bfloat16 far slower than float32: this says which holds here.

    python benchmarks/broad_harvest.py [--tokens 6000] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import torch

from saekit.harvest import HarvestConfig, harvest
from saekit.model import load_hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--hook", default="blocks.20.hook_resid_post")
    ap.add_argument("--tokens", type=int, default=6000)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    models = {dtype: load_hf(args.model, dtype=dtype) for dtype in ("float32", "bfloat16")}
    best = {dtype: float("inf") for dtype in models}
    tokens = 0
    for _ in range(args.reps):
        for dtype, (hf, tok) in models.items():
            with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cfg = HarvestConfig(model=args.model, hooks=[args.hook], corpus="broad", out=tmp, max_tokens=256,
                                    max_total_tokens=args.tokens, dtype=dtype, store_dtype="bfloat16")
                t = time.perf_counter()
                harvest(cfg, model=hf, tokenizer=tok)
                best[dtype] = min(best[dtype], time.perf_counter() - t)
                tokens = json.loads((Path(tmp) / "manifest.json").read_text())["total_tokens"]
    print(f"model {args.model}, broad corpus, {tokens} tokens at {args.hook}, {torch.get_num_threads()} threads, "
          f"best of {args.reps}")
    for dtype, sec in best.items():
        print(f"  {dtype:9s} {sec:7.2f} s  {tokens / sec:8.0f} tok/s")
    print(f"bfloat16 / float32 throughput: {best['float32'] / best['bfloat16']:.2f}x")


if __name__ == "__main__":
    main()
