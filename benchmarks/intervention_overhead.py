"""Cost of a forward pass with an SAE spliced in and features clamped, against a clean pass.

Both run through the same TransformerBridge on exactly the same batch (neutral texts, padded),
interleaved over repetitions in one process; the fastest of each is kept, and their ratio is
printed (target: at most 1.3). The spliced pass encodes every token with the SAE, clamps
features and adds the error term back (saekit.interventions.Splice). Without --sae a random
TopK SAE of 8 x d_model latents, k = 32 is built (the README's figures; the training configs now
use k = 64): its speed is that of a trained one.

    python benchmarks/intervention_overhead.py [--model smollm2-135m-instruct] [--sae FOLDER]
        [--batch 8] [--tokens 64] [--reps 5] [--features 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from saekit.corpus import NEUTRAL, load_corpus
from saekit.interventions import Clamp, Splice, patched
from saekit.model import d_model, load_model
from saekit.sae import build_training_sae, load_sae, save_sae


def make_batch(tokenizer, batch: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [r.text for r in load_corpus() if r.emotion == NEUTRAL][:batch]
    ids = [tokenizer(t)["input_ids"][:tokens] for t in texts]
    T = max(map(len, ids))
    x = torch.full((len(ids), T), tokenizer.pad_token_id or 0)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for r, seq in enumerate(ids):
        x[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
    return x, mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--hook", default="blocks.20.hook_resid_post")
    ap.add_argument("--sae", default=None, help="SAELens folder (default: a random TopK SAE of the default shape)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--features", type=int, default=8, help="features clamped")
    args = ap.parse_args()

    model = load_model(args.model)
    if args.sae:
        sae = load_sae(args.sae, model=model).sae
    else:
        torch.manual_seed(0)
        d = d_model(model)
        train = build_training_sae("topk", d, 8 * d, k=32, metadata={"hook_name": args.hook})
        sae = load_sae(save_sae(train, tempfile.mkdtemp() + "/sae")).sae
    feats = list(range(args.features))
    splice = Splice(sae, [Clamp(feats, 10.0)])
    x, mask = make_batch(model.tokenizer, args.batch, args.tokens)

    def clean():
        model(x, attention_mask=mask)

    def spliced():
        with patched(model, splice):
            model(x, attention_mask=mask)

    times: dict[str, list[float]] = {"clean": [], "spliced": []}
    with torch.inference_mode():
        clean(), spliced()  # warm-up
        for _ in range(args.reps):
            for name, fn in (("clean", clean), ("spliced", spliced)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, hook {args.hook}, SAE {sae.cfg.d_in}x{sae.cfg.d_sae} "
          f"({'random' if not args.sae else args.sae}), batch {tuple(x.shape)}, {args.features} features clamped, "
          f"{args.reps} interleaved repetitions, {torch.get_num_threads()} threads")
    for k in times:
        print(f"  {k:8s} best {best[k] * 1000:8.1f} ms   median {med[k] * 1000:8.1f} ms")
    print(f"ratio spliced+clamped / clean: best {best['spliced'] / best['clean']:.3f}, "
          f"median {med['spliced'] / med['clean']:.3f} (target <= 1.3)")


if __name__ == "__main__":
    main()
