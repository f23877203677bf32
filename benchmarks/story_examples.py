"""Story and window examples of every feature from the latents the first pass kept, against encoding again.

Baseline (named: the implementation before 2026-12-07): `top_examples` encodes every requested
story a second time, story by story. saekit now keeps each story's non-zero latents from
`encode_documents` and reads the windows from them. Both run in this process on the study's own
harvest and SAE (`make run` first), alternating; the script checks that the rows agree.

    python benchmarks/story_examples.py [--study artifacts/study] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from saekit import evidence as Ev
from saekit.activations import Activations
from saekit.model import load_tokenizer
from saekit.sae import hook_of, load_sae
from saekit.tokens import TokenRule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="artifacts/study")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    acts = Activations.open(Path(args.study) / "activations")
    sae = load_sae(str(Path(args.study) / "sae")).sae
    hook = hook_of(sae)
    tok = load_tokenizer(acts.manifest["model"])
    rule = TokenRule.from_mapping(json.loads((Path(args.study) / "sae" / "saekit_train.json").read_text())["token_rule"])
    t = time.perf_counter()
    enc = Ev.encode_documents(acts, hook, sae.encode, sae.cfg.d_sae, rule)
    first_pass = time.perf_counter() - t
    codes = dict(enc.codes)
    times: dict[str, list[float]] = {"baseline": [], "saekit": []}
    rows = {}
    for _ in range(args.reps):
        for name in ("baseline", "saekit"):
            enc.codes = {} if name == "baseline" else codes
            t = time.perf_counter()
            rows[name] = Ev.top_examples(enc, acts, hook, sae.encode, rule, tok, n=5)
            times[name].append(time.perf_counter() - t)
    assert len(rows["baseline"]) == len(rows["saekit"])
    worst = max(abs(x - y) for a, b in zip(rows["baseline"], rows["saekit"])
                for x, y in zip(a["token_activations"], b["token_activations"]))
    assert all({k: v for k, v in a.items() if k != "token_activations"} == {k: v for k, v in b.items() if k != "token_activations"}
               for a, b in zip(rows["baseline"], rows["saekit"])), "the examples differ"
    b, s = min(times["baseline"]), min(times["saekit"])
    nnz = sum(len(c.value_N) for c in codes.values())
    print(f"{len(rows['saekit']):,} example rows from {len(acts.documents):,} stories, {sae.cfg.d_sae:,} latents "
          f"(first pass {first_pass:.1f} s, {nnz:,} latents kept; fastest of {args.reps}):")
    print(f"  baseline (encode each story again) {b:6.1f} s")
    print(f"  saekit (the kept latents)          {s:6.1f} s   {b / s:.1f}x faster; largest activation difference {worst:.2g}")


if __name__ == "__main__":
    main()
