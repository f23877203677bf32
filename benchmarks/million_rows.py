"""Top-k queries on a feature_emotion_stats table of a million rows: `saekit query`, the Python handle
(saekit.open_db) and the same SQL on a bare DuckDB connection.

Builds a synthetic database (34,000 features x 30 emotions = 1,020,000 statistic rows, ranked per
emotion like `saekit rank` ranks them, plus each feature's logit lens and top story, which the
top_features view joins in), then times, interleaved, the median of --repeats runs of:
- top-k per emotion: the k most selective features of one emotion (a different emotion each run),
  as `handle.top_features(emotion, k)` asks it: SELECT * FROM top_features WHERE emotion = ... AND
  selectivity_rank <= k;
- top-k over all emotions: every emotion's k most selective features in one statement,
  SELECT * FROM top_features WHERE selectivity_rank <= k (k x emotions rows);
- the strongest k pairs over all emotions by AUROC, on the table (SELECT * FROM
  feature_emotion_stats ORDER BY auroc DESC LIMIT k): through the view the sort would come after
  joining the lens and examples of all million rows (about 0.3-0.5 s here), so sort the table first;
each through `saekit query` (the command's function in-process: it opens the file read-only, checks
the statement, streams the first k rows and prints them as a table), through the handle (an open handle, answer as
a pandas DataFrame) and on a bare read-only DuckDB connection (the same statement, fetched as a
DataFrame for the handle's ratio and as rows for the CLI's; with the handle's settings, as DuckDB
refuses a second connection to one file with others in the same process).

    python benchmarks/million_rows.py [--features 34000] [--emotions 30] [--k 10] [--repeats 30] [--db FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

import saekit
from saekit import cli
from saekit.db import SANDBOX, Database

SAE = "artifacts/study/sae"


def build(path: Path, n_features: int, n_emotions: int) -> int:
    """The synthetic database; returns its number of statistic rows."""
    rng = np.random.default_rng(0)
    words = np.array([f" w{i}" for i in range(5000)])
    with Database(path) as db, db.run("benchmark") as run:
        db.insert("features", {"sae_id": [SAE] * n_features, "feature": list(range(n_features)),
                               "firing_rate": rng.random(n_features).tolist(),
                               "max_activation": (1 + 10 * rng.random(n_features)).tolist(),
                               "promoted_tokens": words[rng.integers(0, 5000, (n_features, 10))].tolist(),
                               "promoted_logits": np.sort(rng.random((n_features, 10)))[:, ::-1].tolist(),
                               "run_id": [run] * n_features})
        db.insert("feature_examples", {"sae_id": [SAE] * n_features, "corpus_id": ["shipped"] * n_features,
                                       "feature": list(range(n_features)), "kind": ["story"] * n_features,
                                       "example_rank": [1] * n_features, "story_id": [f"s{i}" for i in range(n_features)],
                                       "snippet": ["a window of the story around its peak"] * n_features,
                                       "activation": rng.random(n_features).tolist(), "run_id": [run] * n_features})
        for e in range(n_emotions):   # one emotion at a time keeps the Python lists small
            auroc = rng.beta(2, 2, n_features)
            rank = np.empty(n_features, dtype=np.int64)
            rank[np.argsort(-auroc)] = np.arange(1, n_features + 1)
            db.insert("feature_emotion_stats", {
                "sae_id": [SAE] * n_features, "corpus_id": ["shipped"] * n_features, "feature": list(range(n_features)),
                "emotion": [f"emotion{e:02d}"] * n_features, "auroc": auroc.tolist(),
                "cohens_d": rng.normal(0, 1, n_features).tolist(), "mean_in": rng.random(n_features).tolist(),
                "mean_out": rng.random(n_features).tolist(), "q_value": rng.random(n_features).tolist(),
                "p_value": rng.random(n_features).tolist(), "selectivity_rank": rank.tolist(), "run_id": [run] * n_features})
        return int(db.scalar("SELECT count(*) FROM feature_emotion_stats"))


def median_ms(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=34_000)
    ap.add_argument("--emotions", type=int, default=30)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--db", type=Path, default=None, help="reuse or build the database here (default: a temp file)")
    args = ap.parse_args()
    path = args.db or Path(tempfile.mkdtemp()) / "million.duckdb"
    started = time.perf_counter()
    rows = build(path, args.features, args.emotions) if not path.exists() else None
    if rows is not None:
        print(f"built {rows:,} feature_emotion_stats rows in {time.perf_counter() - started:.1f} s: {path}")
    k, emotion = args.k, lambda i: f"emotion{i % args.emotions:02d}"
    per_emotion = lambda i: (f"SELECT * FROM top_features WHERE emotion = '{emotion(i)}' "  # noqa: E731
                             f"AND selectivity_rank <= {k} ORDER BY sae_id, selectivity_rank")
    over_all = lambda i: (f"SELECT * FROM top_features WHERE selectivity_rank <= {k} "  # noqa: E731
                          "ORDER BY emotion, selectivity_rank")
    strongest = lambda i: f"SELECT * FROM feature_emotion_stats ORDER BY auroc DESC LIMIT {k}"  # noqa: E731

    def query(sql):
        """`saekit query SQL --db PATH --limit k`: the command's function, its table printed to a buffer."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
            cli.query(sql, db=path, csv=None, json_out=None, parquet=None, limit=k, allow_file_reads=False)
        assert printed.getvalue().count("\n") > k   # the table was printed

    # the same settings as the handle's (one process cannot open a file twice with different ones)
    bare = duckdb.connect(str(path), read_only=True, config=dict(SANDBOX))
    with saekit.open_db(path) as handle:
        checks = {"top-k per emotion": (per_emotion, lambda i: handle.top_features(emotion(i), k), k),
                  "top-k over all emotions": (over_all, lambda i: handle.sql(over_all(i)), k * args.emotions),
                  "strongest k pairs": (strongest, lambda i: handle.sql(strongest(i)), k)}
        for what, (sql, ask, n_rows) in checks.items():
            assert len(ask(0)) == len(bare.sql(sql(0)).df()) == n_rows
            t_df = median_ms(lambda i: bare.sql(sql(i)).df(), args.repeats)
            t_rows = median_ms(lambda i: bare.execute(sql(i)).fetchall(), args.repeats)
            t_handle = median_ms(ask, args.repeats)
            t_cli = median_ms(lambda i: query(sql(i)), args.repeats)
            print(f"{what:24s} bare DuckDB {t_rows:6.1f} ms (rows) {t_df:6.1f} ms (DataFrame) | handle {t_handle:6.1f} ms "
                  f"(x{t_handle / t_df:.2f} of bare DataFrame) | saekit query {t_cli:6.1f} ms "
                  f"(x{t_cli / t_rows:.2f} of bare rows)")
    bare.close()


if __name__ == "__main__":
    main()
