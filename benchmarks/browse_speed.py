"""`saekit browse` at full scale: a feature page on a database of 16,384 features x 30 emotions.

Builds a synthetic database of that size (every table a feature page reads, filled the way
`saekit rank` fills it, in feature order; 5 story and 5 window examples of 32 tokens per
feature), then times, interleaved in one process:
- the page: GET /feature/<sae>/<n>.html through the Starlette app (Starlette's TestClient, no
  network), which opens the file read-only, runs its queries and renders the template;
- the baseline: the same SQL the page runs (captured from it), on a fresh read-only connection
  each time, as the raw DuckDB statements alone.
Then it exports every page (saekit browse --export) and reports the time.

    python benchmarks/browse_speed.py [--features 16384] [--emotions 30] [--pages 40] [--db FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from starlette.testclient import TestClient

from saekit.browse import create_app, export_site
from saekit.browse.pages import Site
from saekit.browse.queries import Reader
from saekit.db import SANDBOX, Database

SAE = "artifacts/study/sae"
N_TOKENS, N_EXAMPLES, D_MODEL = 32, 5, 576


def build(path: Path, n_features: int, n_emotions: int) -> None:
    rng = np.random.default_rng(0)
    emotions = [f"emotion{i:02d}" for i in range(n_emotions)]
    rule = json.dumps({"description": "positions >= 1", "max_norm_ratio": 0.0, "reference_norm": None, "skip_first": 1})
    words = [f" w{i}" for i in range(5000)]
    with Database(path) as db, db.run("benchmark") as run:
        db.insert("models", [{"model_id": "synthetic", "source": "synthetic", "n_layers": 30, "d_model": D_MODEL,
                              "d_vocab": 49152, "run_id": run}])
        db.insert("saes", [{"sae_id": SAE, "model_id": "synthetic", "hook": "blocks.20.hook_resid_post", "layer": 20,
                            "architecture": "topk", "d_in": D_MODEL, "d_sae": n_features, "path": SAE, "run_id": run,
                            "token_rule": rule}])
        db.insert("corpora", [{"corpus_id": "shipped", "source": "shipped", "n_records": 26 * n_emotions, "run_id": run}])
        db.insert("emotions", [{"emotion": e, "cluster": "c"} for e in emotions])
        db.insert("stories", [{"corpus_id": "shipped", "story_id": f"{e}-{i:03d}", "emotion": e, "split": "train",
                               "text": "a story", "run_id": run} for e in emotions for i in range(26)])
        lens = lambda n: [[words[j] for j in rng.integers(0, len(words), 10)] for _ in range(n)]  # noqa: E731
        logits = lambda n, s: np.sort(s * rng.random((n, 10)), axis=1)[:, ::-1].tolist()  # noqa: E731
        db.insert("features", {
            "sae_id": [SAE] * n_features, "feature": list(range(n_features)),
            "firing_rate": rng.random(n_features).tolist(), "mean_activation": rng.random(n_features).tolist(),
            "max_activation": (1 + 10 * rng.random(n_features)).tolist(),
            "promoted_tokens": lens(n_features), "promoted_logits": logits(n_features, 1.0),
            "suppressed_tokens": lens(n_features), "suppressed_logits": logits(n_features, -1.0),
            "hist_counts": rng.integers(0, 1000, (n_features, 26)).tolist(), "run_id": [run] * n_features,
            "token_rule": [rule] * n_features})
        f_idx = np.repeat(np.arange(n_features), n_emotions)
        auroc = rng.random(f_idx.size)
        ranks = np.empty_like(f_idx)
        for e in range(n_emotions):  # rank per emotion by AUROC, as the ranking does
            order = np.argsort(-auroc[e::n_emotions])
            ranks[e::n_emotions][order] = np.arange(1, n_features + 1)
        col = lambda: rng.random(f_idx.size).tolist()  # noqa: E731
        db.insert("feature_emotion_stats", {
            "sae_id": [SAE] * f_idx.size, "corpus_id": ["shipped"] * f_idx.size, "feature": f_idx.tolist(),
            "emotion": emotions * n_features, "mean_in": col(), "mean_out": col(), "cohens_d": col(),
            "auroc": auroc.tolist(), "rate_in": col(), "rate_out": col(), "p_value": col(), "q_value": col(),
            "selectivity_rank": ranks.tolist(), "run_id": [run] * f_idx.size, "top_story_precision": col()})
        n_ex = n_features * 2 * N_EXAMPLES
        acts = rng.random((n_ex, N_TOKENS))
        db.insert("feature_examples", {
            "sae_id": [SAE] * n_ex, "corpus_id": ["shipped"] * n_ex,
            "feature": np.repeat(np.arange(n_features), 2 * N_EXAMPLES).tolist(),
            "kind": (["story"] * N_EXAMPLES + ["window"] * N_EXAMPLES) * n_features,
            "example_rank": list(range(1, N_EXAMPLES + 1)) * 2 * n_features,
            "story_id": [f"{emotions[i % n_emotions]}-{i % 26:03d}" for i in range(n_ex)],
            "emotion": [emotions[i % n_emotions] for i in range(n_ex)], "token_start": [1] * n_ex,
            "token_end": [1 + N_TOKENS] * n_ex, "activation": acts.max(1).tolist(), "snippet": ["..."] * n_ex,
            "token_ids": [list(range(N_TOKENS))] * n_ex, "tokens": [words[:N_TOKENS]] * n_ex,
            "token_activations": acts.tolist(), "run_id": [run] * n_ex})
        db.insert("emotion_vectors", [{"model_id": "synthetic", "corpus_id": "shipped", "hook": "blocks.20.hook_resid_post",
                                       "emotion": e, "norm": 1.0, "neutral_pcs": 3, "vector": rng.standard_normal(D_MODEL).tolist(),
                                       "run_id": run, "promoted_tokens": lens(1)[0], "promoted_logits": logits(1, 1.0)[0],
                                       "suppressed_tokens": lens(1)[0], "suppressed_logits": logits(1, -1.0)[0]}
                                      for e in emotions])
        db.insert("vector_feature_alignment", [{"sae_id": SAE, "corpus_id": "shipped", "emotion": e,
                                                "feature": int(f), "cosine": 0.5, "alignment_rank": k + 1, "run_id": run}
                                               for e in emotions for k, f in enumerate(rng.choice(n_features, 10, False))])


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--emotions", type=int, default=30)
    ap.add_argument("--pages", type=int, default=40, help="feature pages timed (random features)")
    ap.add_argument("--db", type=Path, help="keep the synthetic database here (default: a temporary folder)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="browse-speed-"))
    path = args.db or tmp / "browse.duckdb"
    if not path.exists():
        t = time.perf_counter()
        build(path, args.features, args.emotions)
        print(f"built {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s")

    client = TestClient(create_app(path))
    slug = "sae"
    client.get(f"/feature/{slug}/0.html")  # the first request fills the per-file caches (SAE list, experiments)
    site = Site()
    features = np.random.default_rng(1).choice(args.features, args.pages, replace=False).tolist()
    statements = {}
    with Database(path, read_only=True, config=SANDBOX) as db:
        site.feature(Reader(db), slug, 0)
        for n in features:  # the SQL a warm page runs, captured from the page itself
            log: list = []
            site.feature(Reader(db, log), slug, n)
            statements[n] = log

    def page(n):
        r = client.get(f"/feature/{slug}/{n}.html")
        assert r.status_code == 200 and f"Feature {n}" in r.text

    def raw(n):
        with Database(path, read_only=True, config=SANDBOX) as db:
            for sql, params in statements[n]:
                db.sql(sql, params)

    page_s, raw_s = [], []
    for _ in range(3):  # interleaved rounds
        for n in features:
            raw_s += timed(lambda: raw(n), 1)
            page_s += timed(lambda: page(n), 1)
    med_p, med_r = statistics.median(page_s), statistics.median(raw_s)
    print(f"{args.features} features x {args.emotions} emotions, {len(features)} random feature pages x 3 rounds, "
          f"{len(statements[features[0]])} statements per page")
    print(f"  feature page (HTTP app: open read-only, query, render)  median {1000 * med_p:6.1f} ms, "
          f"p95 {1000 * sorted(page_s)[int(0.95 * len(page_s))]:6.1f} ms, max {1000 * max(page_s):6.1f} ms")
    print(f"  its raw SQL alone (open read-only, same statements)    median {1000 * med_r:6.1f} ms")
    print(f"page / raw SQL: {med_p / med_r:.2f}x")

    t = time.perf_counter()
    done = export_site(path, tmp / "site")
    print(f"export: {done['pages']} pages ({done['feature_pages']} feature pages) in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
