"""bfloat16 against float32 compute, side by side in one process: harvest speed and the study's numbers.

Both dtypes run the same code on the same stories (a stated subset of the shipped corpus: the first
`--train-per-emotion` train stories and every test story of each emotion, plus the first `--neutral`
neutral dialogues), with the activations stored in float32 either way (store_dtype), so any
difference comes from the model's compute dtype alone. Measured:

1. speed: saekit's real `harvest()` on its default path (plain transformers, forward hooks, stop
   after the study hook) over `--speed-docs` stories, fp32 and bf16 interleaved over `--reps`
   repetitions (the order alternating); the ratio of each pair, median and range;
2. fidelity: per-story mean vectors over the counted tokens (saekit.tokens' default rule) at the
   study hook, cosine bf16 vs fp32; the emotion vectors, the vector probes and the SAE top-feature
   probe of `run_rank` on each harvest; the study SAE's activation metrics (explained variance, L0,
   dead fraction) on each harvest's counted tokens, and its language-model metrics (KL and loss
   recovered with the SAE spliced) with the model in each dtype;
3. an intervention: steering with the fp32 "desperate" vector (0.5 x the mean residual norm, as
   the shipped emotion_word_probes spec), its mean KL from the clean model and its change of the
   log-probability of " desperate" at the last token, in each dtype.

Criteria (issue 17): every cosine >= 0.999, probe accuracies within 0.02, SAE metrics within 0.01
(absolute for fractions, explained variance, loss recovered and KL; relative for L0).

    python benchmarks/bf16_fidelity.py [--sae artifacts/study/sae] [--train-per-emotion 6] [--test-per-emotion N] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from saekit.corpus import NEUTRAL, load_corpus
from saekit.harvest import Activations, HarvestConfig, harvest
from saekit.interventions import Steer, mean_resid_norm, patched
from saekit.metrics import activation_metrics, kl_per_token, lm_metrics
from saekit.model import load_hf, load_model, pad_batch
from saekit.rank import RankConfig, run_rank
from saekit.sae import build_training_sae, hook_of, load_sae
from saekit.tokens import TokenRule

DTYPES = ("float32", "bfloat16")
COSINE_MIN, PROBE_TOL, SAE_TOL = 0.999, 0.02, 0.01


def subset(train_per_emotion: int, n_neutral: int, test_per_emotion: int | None = None) -> list:
    """The stated subset: per emotion its first N train and first M (default all) test stories; N neutral dialogues."""
    records = load_corpus(include_neutral=True)
    out: list = []
    seen: dict[tuple[str, str], int] = {}
    for r in records:
        if r.emotion == NEUTRAL:
            cap, ok = n_neutral, "dialogue" in r.id
        else:
            cap, ok = (train_per_emotion if r.split == "train" else test_per_emotion), True
        key = (r.emotion, "" if r.emotion == NEUTRAL else r.split)
        if ok and (cap is None or seen.get(key, 0) < cap):
            out.append(r)
            seen[key] = seen.get(key, 0) + 1
    return out


def run_harvest(model, tok, records, hook: str, dtype: str, out: str, args) -> float:
    cfg = HarvestConfig(model=args.model, hooks=[hook], out=out, batch_size=args.batch_size,
                        max_tokens=args.max_tokens, docs_per_shard=len(records), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        harvest(cfg, model=model, records=records, tokenizer=tok)
        return time.perf_counter() - t


def counted_means(acts: Activations, hook: str, rule: TokenRule) -> torch.Tensor:
    """[n_docs, D] mean of each story's counted tokens (float64)."""
    sums = torch.zeros(len(acts.documents), acts.manifest["d_model"], dtype=torch.float64)
    counts = torch.zeros(len(acts.documents), dtype=torch.float64)
    for s in acts.iter_shard_tensors(hook):
        keep = rule.keep(s["position"], s["acts"])
        sums.index_add_(0, s["doc_index"][keep], s["acts"][keep].double())
        counts.index_add_(0, s["doc_index"][keep], torch.ones(int(keep.sum()), dtype=torch.float64))
    return sums / counts.clamp(min=1)[:, None]


def cos_stats(a: torch.Tensor, b: torch.Tensor) -> dict:
    c = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    return {"min": float(c.min()), "median": float(c.median()), "n": len(c)}


def counted_tokens(acts: Activations, hook: str, rule: TokenRule) -> torch.Tensor:
    return torch.cat([s["acts"][rule.keep(s["position"], s["acts"])] for s in acts.iter_shard_tensors(hook)])


@torch.no_grad()
def steer_effect(model, texts_ids, hook: str, vec: torch.Tensor, scale: float, word: int, rule: TokenRule) -> dict:
    """Mean KL(clean || steered) over counted next-token predictions and mean change of log p(word) at the last token."""
    tokens_BT, mask_BT = pad_batch(texts_ids, 0)
    keep_BT = rule.keep_padded(mask_BT)
    edit = Steer(hook, vec, 0.5, scale, positions=keep_BT)
    clean = model(tokens_BT, attention_mask=mask_BT.long()).float().log_softmax(-1)
    with patched(model, edit):
        steered = model(tokens_BT, attention_mask=mask_BT.long()).float().log_softmax(-1)
    kl_BT = kl_per_token(clean, steered)
    last = mask_BT.sum(1) - 1
    rows = torch.arange(len(texts_ids))
    d_word = steered[rows, last, word] - clean[rows, last, word]
    return {"kl": float(kl_BT[keep_BT].mean()), "dlogp_word": float(d_word.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--hook", default="blocks.20.hook_resid_post")
    ap.add_argument("--sae", default="artifacts/study/sae", help="the study's SAE (a seeded untrained TopK if absent)")
    ap.add_argument("--train-per-emotion", type=int, default=6)
    ap.add_argument("--test-per-emotion", type=int, default=None, help="cap on test stories per emotion (all if unset)")
    ap.add_argument("--neutral", type=int, default=20)
    ap.add_argument("--speed-docs", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lm-texts", type=int, default=12, help="texts for the LM metrics and the steering effect")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--json", default="artifacts/benchmarks/bf16_fidelity.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rule = TokenRule()
    records = subset(args.train_per_emotion, args.neutral, args.test_per_emotion)
    plain = {d: load_hf(args.model, dtype=d) for d in DTYPES}
    tok = plain["float32"][1]

    # 1. speed, interleaved; 2a. the fidelity harvests (one more pair, timed too)
    speed_records = records[:: max(1, len(records) // args.speed_docs)][: args.speed_docs]
    speed_tokens = sum(min(len(tok(r.text)["input_ids"]), args.max_tokens) for r in speed_records)
    secs: dict[str, list[float]] = {d: [] for d in DTYPES}
    with tempfile.TemporaryDirectory() as tmp:
        run_harvest(plain["float32"][0], tok, speed_records[:4], args.hook, "float32", f"{tmp}/warm", args)
        for rep in range(args.reps):
            for d in (DTYPES if rep % 2 == 0 else DTYPES[::-1]):
                secs[d].append(run_harvest(plain[d][0], tok, speed_records, args.hook, d, f"{tmp}/s{rep}{d}", args))
    ratios = [a / b for a, b in zip(secs["float32"], secs["bfloat16"])]
    work = Path(tempfile.mkdtemp(prefix="saekit-bf16-"))
    fid_secs = {d: run_harvest(plain[d][0], tok, records, args.hook, d, str(work / d), args) for d in DTYPES}
    del plain
    acts = {d: Activations.open(work / d) for d in DTYPES}
    n_tokens = acts["float32"].manifest["total_tokens"]

    # 2b. pooled vectors, ranking (vectors and probes), SAE metrics
    means = {d: counted_means(acts[d], args.hook, rule) for d in DTYPES}
    if Path(args.sae).is_dir():
        sae, sae_source = load_sae(args.sae).sae, args.sae
    else:
        torch.manual_seed(0)
        sae = build_training_sae("topk", acts["float32"].manifest["d_model"], 4608, k=32,
                                 metadata={"hook_name": args.hook, "model_name": args.model})
        sae_source = "seeded untrained TopK (no study SAE found)"
    assert hook_of(sae) in (None, args.hook), f"the SAE reads {hook_of(sae)}, not {args.hook}"
    ranked = {}
    for d in DTYPES:
        cfg = RankConfig(activations=str(work / d), sae=args.sae if Path(args.sae).is_dir() else None, seed=0)
        ranked[d] = run_rank(cfg, sae=sae, model=None, db=None)
    probes = {}
    for key in ranked["float32"]["summary"]:
        if "accuracy" in key:
            probes[key] = {d: float(ranked[d]["summary"][key]) for d in DTYPES}
    vecs = {d: ranked[d]["vectors"][args.hook]["vectors"] for d in DTYPES}
    act_m = {d: activation_metrics(sae, counted_tokens(acts[d], args.hook, rule)) for d in DTYPES}

    # 2c. LM metrics and 3. the intervention, with the bridge in each dtype
    texts = [r.text for r in records if r.split == "test" and r.emotion != NEUTRAL][:: 5][: args.lm_texts]
    text_ids = [tok(t)["input_ids"][:128] for t in texts]
    emotions = ranked["float32"]["emotions"]
    steer_vec = vecs["float32"][emotions.index("desperate") if "desperate" in emotions else 0]
    word = tok(" desperate", add_special_tokens=False)["input_ids"][0]
    lm_m, steer = {}, {}
    scale = None
    for d in DTYPES:
        bridge = load_model(args.model, dtype=d)
        lm_m[d] = lm_metrics(bridge, sae, args.hook, texts, max_tokens=128, rule=rule)
        scale = scale or mean_resid_norm(bridge, args.hook, text_ids[:4], rule)   # fp32's, for both
        steer[d] = steer_effect(bridge, text_ids, args.hook, steer_vec, scale, word, rule)
        del bridge

    # the table and the verdict
    checks = []

    def check(name: str, value: float, ok: bool, limit: str) -> None:
        checks.append({"check": name, "value": value, "limit": limit, "pass": bool(ok)})

    story = cos_stats(means["bfloat16"], means["float32"])
    vec_cos = cos_stats(vecs["bfloat16"], vecs["float32"])
    check("story mean vectors, min cosine", story["min"], story["min"] >= COSINE_MIN, f">= {COSINE_MIN}")
    check("emotion vectors, min cosine", vec_cos["min"], vec_cos["min"] >= COSINE_MIN, f">= {COSINE_MIN}")
    for key, v in probes.items():
        diff = v["bfloat16"] - v["float32"]
        check(f"{key} (bf16 - fp32)", diff, abs(diff) <= PROBE_TOL, f"|.| <= {PROBE_TOL}")
    sae_rows = {"explained_variance": act_m, "dead_fraction": act_m, "kl_sae": lm_m, "loss_recovered": lm_m}
    for key, src in sae_rows.items():
        diff = src["bfloat16"][key] - src["float32"][key]
        check(f"SAE {key} (bf16 - fp32)", diff, abs(diff) <= SAE_TOL, f"|.| <= {SAE_TOL}")
    rel_l0 = act_m["bfloat16"]["l0"] / act_m["float32"]["l0"] - 1
    check("SAE L0 (bf16 / fp32 - 1)", rel_l0, abs(rel_l0) <= SAE_TOL, f"|.| <= {SAE_TOL}")

    median, lo, hi = statistics.median(ratios), min(ratios), max(ratios)
    print(f"model {args.model}, hook {args.hook}, {torch.get_num_threads()} threads; subset: "
          f"{args.train_per_emotion} train + {args.test_per_emotion or 'all'} test stories per emotion, {args.neutral} neutral dialogues "
          f"= {len(records)} texts, {n_tokens} tokens (max {args.max_tokens}); SAE: {sae_source}")
    print(f"speed, harvest of {len(speed_records)} stories ({speed_tokens} tokens), {args.reps} interleaved reps:")
    for d in DTYPES:
        print(f"  {d:9s} " + "  ".join(f"{s:6.1f} s" for s in secs[d])
              + f"   best {speed_tokens / min(secs[d]):6.0f} tok/s")
    print(f"  ratio bf16 speed / fp32 speed: median {median:.2f}x (range {lo:.2f}-{hi:.2f})")
    print(f"  fidelity harvests ({n_tokens} tokens): fp32 {fid_secs['float32']:.1f} s, bf16 "
          f"{fid_secs['bfloat16']:.1f} s, ratio {fid_secs['float32'] / fid_secs['bfloat16']:.2f}x")
    print(f"story mean vectors: cosine min {story['min']:.6f}, median {story['median']:.6f} over {story['n']}")
    print(f"emotion vectors:    cosine min {vec_cos['min']:.6f}, median {vec_cos['median']:.6f} over {vec_cos['n']}")
    print(f"{'':58s} {'fp32':>10s} {'bf16':>10s}")
    for key, v in probes.items():
        print(f"  {key:56s} {v['float32']:10.4f} {v['bfloat16']:10.4f}")
    for key in ("explained_variance", "l0", "dead_fraction", "cosine"):
        print(f"  SAE {key:52s} {act_m['float32'][key]:10.4f} {act_m['bfloat16'][key]:10.4f}")
    for key in ("kl_sae", "loss_recovered", "loss_clean", "loss_sae"):
        print(f"  SAE {key:52s} {lm_m['float32'][key]:10.4f} {lm_m['bfloat16'][key]:10.4f}")
    for key in ("kl", "dlogp_word"):
        print(f"  steer desperate x0.5 norm: {key:30s} {steer['float32'][key]:10.4f} {steer['bfloat16'][key]:10.4f}")
    print("checks:")
    for c in checks:
        print(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['check']:60s} {c['value']:+.5f}  ({c['limit']})")
    verdict = all(c["pass"] for c in checks)
    print(f"verdict: {'every criterion holds' if verdict else 'a criterion fails'}; "
          f"total {time.perf_counter() - t0:.0f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": args.model, "hook": args.hook, "threads": torch.get_num_threads(), "sae": sae_source,
        "subset": {"train_per_emotion": args.train_per_emotion, "test": args.test_per_emotion or "all", "neutral_dialogues": args.neutral,
                   "texts": len(records), "tokens": n_tokens, "max_tokens": args.max_tokens},
        "speed": {"docs": len(speed_records), "tokens": speed_tokens, "seconds": secs, "ratios": ratios,
                  "ratio_median": median, "ratio_min": lo, "ratio_max": hi, "fidelity_harvest_seconds": fid_secs},
        "story_mean_cosine": story, "emotion_vector_cosine": vec_cos, "probes": probes,
        "sae_activation_metrics": act_m, "sae_lm_metrics": lm_m, "steer": steer,
        "checks": checks, "all_pass": verdict, "seconds": time.perf_counter() - t0,
    }, indent=1, default=float) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
