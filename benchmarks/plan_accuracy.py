"""Planned vs measured time of `saekit study --plan` on the embedded model (harvest + a short training).

A reduced study (a slice of the corpus, a few hundred training steps' worth of tokens) is planned
with the rate measured on this machine, then its harvest and training steps run for real; prints
each step's planned and measured seconds and their ratio (goal: within a factor of 2).

    python benchmarks/plan_accuracy.py [--docs 100] [--train-tokens 163840]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from saekit.plan import plan_study
from saekit.study import StudyRun, load_study_config


def write_config(folder: Path, docs: int, train_tokens: int) -> Path:
    cfg = {"model": "smollm2-135m-instruct", "hook": "blocks.20.hook_resid_post",
           "vector_hooks": ["blocks.10.hook_resid_post"], "out": str(folder / "study"),
           "db": str(folder / "study.duckdb"), "train_config": "train/smollm2-135m-l20-topk.toml",
           "max_tokens": 256, "limit": docs, "train_tokens": train_tokens, "experiments": []}
    path = folder / "study.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items()))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--train-tokens", type=int, default=163_840)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_config(Path(tmp), args.docs, args.train_tokens)
        plan = {s.name: s for s in plan_study(path).steps}
        steps = StudyRun(load_study_config(path)).steps()[:2]  # harvest, train SAE
        print(f"{'step':22} {'planned s':>10} {'measured s':>11} {'measured/planned':>17}")
        totals = [0.0, 0.0]
        for step in steps:
            started = time.perf_counter()
            step.run(lambda *a: None)
            real = time.perf_counter() - started
            planned = plan[step.name].seconds
            totals = [totals[0] + planned, totals[1] + real]
            print(f"{step.name:22} {planned:>10.1f} {real:>11.1f} {real / planned:>17.2f}")
        print(f"{'both':22} {totals[0]:>10.1f} {totals[1]:>11.1f} {totals[1] / totals[0]:>17.2f}")


if __name__ == "__main__":
    main()
