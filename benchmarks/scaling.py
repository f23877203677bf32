"""Scaling out: harvest and SAE training with 1 vs N processes under torchrun, in tokens/s.

Each measurement is one `torchrun --standalone --nproc_per_node N` launch of this file in worker
mode; rank 0 times the harvest (corpus slice -> shards + manifest) and then the data-parallel
training on that harvest, and prints one JSON line. Start-up (imports, model load) is not timed.

    python benchmarks/scaling.py                          # tiny model, 1 vs 2 processes on CPU (gloo)
    python benchmarks/scaling.py --nproc 1 2 4 8 --device cuda --model smollm2-135m-instruct \\
        --hook blocks.20.hook_resid_post --limit 2000     # on a GPU node (nccl)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    from saekit import distributed as D
    from saekit import harvest as H
    from saekit import sae as S
    from saekit import train as T

    D.setup(args.device)
    out = Path(args.out)
    hc = H.HarvestConfig(model=args.model, hooks=[args.hook], limit=args.limit, docs_per_shard=args.docs_per_shard,
                         batch_size=args.harvest_batch, max_tokens=args.max_tokens, device=args.device,
                         out=str(out / "acts"))
    D.barrier()
    start = time.perf_counter()
    H.harvest(hc)
    harvest_s = time.perf_counter() - start
    tokens = json.loads((out / "acts" / "manifest.json").read_text())["total_tokens"]
    tc = T.TrainConfig(model=args.model, hook=args.hook, activations=str(out / "acts"), out=str(out / "sae"),
                       sae=S.TopKConfig(expansion_factor=args.expansion, k=32), batch_size=args.batch_size,
                       training_tokens=args.batch_size * args.steps, checkpoint_every=0, lm_metrics=False,
                       eval_tokens=2000, device=args.device)
    T.train_sae(tc)
    record = json.loads((out / "sae" / T.TRAIN_RECORD).read_text())
    if D.is_main():
        print("RESULT " + json.dumps({"nproc": D.world(), "harvest_tokens": tokens, "harvest_s": harvest_s,
                                      "harvest_tok_s": tokens / harvest_s,
                                      "train_tok_s": record["tokens_per_s_this_run"],
                                      "train_s": record["seconds_this_run"],
                                      "ev": record["metrics"]["activations"]["explained_variance"]}), flush=True)


def launch(nproc: int, args, passthrough: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"saekit-scaling-{nproc}-"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           __file__, "--worker", "--out", str(out), *passthrough]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})
    shutil.rmtree(out, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default="tiny")
    p.add_argument("--hook", default="blocks.2.hook_resid_post")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, default=64, help="documents of the shipped corpus")
    p.add_argument("--docs-per-shard", dest="docs_per_shard", type=int, default=8)
    p.add_argument("--harvest-batch", dest="harvest_batch", type=int, default=8)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=256)
    p.add_argument("--expansion", type=int, default=64)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    passthrough = _strip_nproc(sys.argv[1:])
    rows = [launch(n, args, passthrough) for n in args.nproc]
    base = rows[0]
    print(f"{'processes':>9} | {'harvest tok/s':>13} | {'x':>5} | {'train tok/s':>11} | {'x':>5} | {'held-out EV':>11}")
    for r in rows:
        print(f"{r['nproc']:>9} | {r['harvest_tok_s']:>13,.0f} | {r['harvest_tok_s'] / base['harvest_tok_s']:>5.2f} | "
              f"{r['train_tok_s']:>11,.0f} | {r['train_tok_s'] / base['train_tok_s']:>5.2f} | {r['ev']:>11.3f}")


def _strip_nproc(argv: list[str]) -> list[str]:
    """The command line without `--nproc N [N ...]` (the rest is handed to the workers)."""
    out, skipping = [], False
    for a in argv:
        if a == "--nproc":
            skipping = True
        elif skipping and a.isdigit():
            continue
        else:
            skipping = False
            out.append(a)
    return out


if __name__ == "__main__":
    main()
