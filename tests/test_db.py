import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from saekit import db as D

ROOT = Path(__file__).resolve().parents[1]


def documented_schema() -> dict[str, list[tuple[str, str]]]:
    text = (ROOT / "analysis" / "SCHEMA.md").read_text()
    out, table = {}, None
    for line in text.splitlines():
        if m := re.match(r"### (\w+)", line):
            table = m.group(1)
            out[table] = []
        elif table and (m := re.match(r"\| (\w+) \| ([A-Z\[\]]+) \|", line)):
            out[table].append((m.group(1), m.group(2)))
    return out


def documented_views() -> set[str]:
    return set(re.findall(r"^### (\w+) \(view\)$", (ROOT / "analysis" / "SCHEMA.md").read_text(), re.M))


def test_schema_document_matches_real_database(tmp_path):
    with D.Database(tmp_path / "f.duckdb") as db:
        assert db.columns() == documented_schema()   # tables and views, column by column
        views = {r[0] for r in db.sql("SELECT table_name FROM information_schema.tables WHERE table_type = 'VIEW'")}
        assert views == documented_views() == {"top_features", "experiment_effects", "latest_runs"}
        assert not views & {name for name, _ in db.tables()}   # tables() lists tables only


def stat_rows(run, value, n=3):
    return [{"sae_id": "s1", "corpus_id": "c", "feature": f, "emotion": "calm", "auroc": value, "run_id": run}
            for f in range(n)]


def test_replace_swaps_scope_rows_in_one_transaction(tmp_path):
    path = tmp_path / "f.duckdb"
    with D.Database(path) as db:
        run1 = db.start_run("rank", {"seed": 0})
        db.replace("feature_emotion_stats", {"sae_id": "s1", "corpus_id": "c"}, stat_rows(run1, 0.6))
        db.insert("feature_emotion_stats", [{"sae_id": "s2", "corpus_id": "c", "feature": 0, "emotion": "calm", "auroc": 0.9}])
        run2 = db.start_run("rank")
        db.replace("feature_emotion_stats", {"sae_id": "s1", "corpus_id": "c"}, stat_rows(run2, 0.7, n=2))
        rows = db.sql("SELECT sae_id, count(*), min(run_id), max(auroc) FROM feature_emotion_stats GROUP BY 1 ORDER BY 1")
        assert rows == [("s1", 2, run2, 0.7), ("s2", 1, None, 0.9)]
        # a failure in the middle of a replacement leaves the previous rows intact
        bad = stat_rows("run3", 0.1) + [{"sae_id": "s1", "corpus_id": "c", "feature": 0, "emotion": "calm"}]  # duplicate key
        with pytest.raises(Exception):
            db.replace("feature_emotion_stats", {"sae_id": "s1", "corpus_id": "c"}, bad)
        assert db.sql("SELECT count(*), max(auroc) FROM feature_emotion_stats WHERE sae_id = 's1'") == [(2, 0.7)]
        db.finish_run(run2)
        status = db.sql("SELECT status, versions FROM runs WHERE run_id = ?", [run2])[0]
        assert status[0] == "done" and "torch" in json.loads(status[1])


def test_crashed_writer_process_leaves_previous_rows(tmp_path):
    path = tmp_path / "f.duckdb"
    with D.Database(path) as db:
        db.replace("feature_emotion_stats", {"sae_id": "s1", "corpus_id": "c"}, stat_rows("r1", 0.6))
    script = f"""
import os
from saekit import db as D
d = D.Database({str(path)!r})
d.con.begin()
d.delete("feature_emotion_stats", {{"sae_id": "s1", "corpus_id": "c"}})
os._exit(1)   # killed mid-transaction
"""
    subprocess.run([sys.executable, "-c", script])
    with D.Database(path, read_only=True) as db:
        assert db.scalar("SELECT count(*) FROM feature_emotion_stats") == 3


def test_query_is_read_only_and_exports(tmp_path):
    path = tmp_path / "f.duckdb"
    with D.Database(path) as db:
        db.insert("emotions", [{"emotion": "calm", "cluster": "peaceful contentment"},
                               {"emotion": "afraid", "cluster": "fear and overwhelm"}])
    table = D.read_only_query("SELECT emotion FROM emotions ORDER BY emotion", path)
    assert table.column("emotion").to_pylist() == ["afraid", "calm"]
    for sql in ("DELETE FROM emotions", "DROP TABLE emotions", "INSERT INTO emotions VALUES ('x', 'y', 1, 2)"):
        with pytest.raises(D.DatabaseError, match="refused.*read-only"):
            D.read_only_query(sql, path)
    outputs = {fmt: tmp_path / f"out.{fmt}" for fmt in ("csv", "json", "parquet")}
    assert D.write_batches(table.to_reader(), outputs) == 2
    assert json.loads((tmp_path / "out.json").read_text()) == [{"emotion": "afraid"}, {"emotion": "calm"}]
    assert (tmp_path / "out.csv").read_text().splitlines() == ['"emotion"', '"afraid"', '"calm"']
    assert pq.read_table(tmp_path / "out.parquet").equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.duckdb", "out.csv", "out.json", "out.parquet"]
    with pytest.raises(D.DatabaseError, match="no database"):
        D.read_only_query("SELECT 1", tmp_path / "missing.duckdb")


def test_second_writer_gets_clear_message(tmp_path):
    path = tmp_path / "f.duckdb"
    holder = subprocess.Popen([sys.executable, "-c",
                               f"import time; from saekit import db as D; d = D.Database({str(path)!r}); "
                               "print('ready', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(D.DatabaseBusy, match="in use by another process"):
            D.Database(path, wait_s=0.5)
    finally:
        holder.kill()
        holder.wait()
    with D.Database(path) as db:  # usable again, not corrupt
        assert ("runs", 0) in db.tables()


def test_database_from_an_older_saekit_is_upgraded_in_place(tmp_path):
    """runs gained pid and host, probe_results model_id: a writer adds them and keeps every row."""
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, config JSON, versions JSON, "
                "started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP, status VARCHAR NOT NULL)")
    con.execute("CREATE TABLE probe_results (run_id VARCHAR NOT NULL, corpus_id VARCHAR NOT NULL, hook VARCHAR NOT NULL, "
                "sae_id VARCHAR, method VARCHAR NOT NULL, accuracy DOUBLE, chance DOUBLE, majority DOUBLE, "
                "n_test INTEGER, precision JSON, recall JSON, confusion JSON, PRIMARY KEY (run_id, corpus_id, hook, method))")
    con.execute("INSERT INTO runs VALUES ('r1', 'rank', '{}', '{}', TIMESTAMP '2025-01-01', TIMESTAMP '2025-01-01', 'done')")
    con.execute("INSERT INTO probe_results (run_id, corpus_id, hook, method, accuracy) VALUES ('r1', 'c', 'h', 'm', 0.5)")
    con.close()
    with D.Database(path) as db:
        assert db.columns() == documented_schema()
        assert db.sql("SELECT run_id, status, pid FROM runs") == [("r1", "done", None)]
        assert db.sql("SELECT accuracy, model_id FROM probe_results") == [(0.5, None)]
        run = db.start_run("rank")
        assert db.sql("SELECT pid FROM runs WHERE run_id = ?", [run]) == [(os.getpid(),)]


def test_run_commits_all_writes_with_its_done_mark_or_none(tmp_path):
    with D.Database(tmp_path / "f.duckdb") as db:
        with db.run("rank") as run1:
            db.replace("feature_emotion_stats", {"sae_id": "s1", "corpus_id": "c"}, stat_rows(run1, 0.6))
        with pytest.raises(ZeroDivisionError), db.run("rank") as run2:
            db.replace("feature_emotion_stats", {"sae_id": "s1", "corpus_id": "c"}, stat_rows(run2, 0.9))
            1 / 0
        assert db.sql("SELECT DISTINCT run_id, auroc FROM feature_emotion_stats") == [(run1, 0.6)]
        assert dict(db.sql("SELECT run_id, status FROM runs")) == {run1: "done", run2: "failed"}


def test_an_older_database_moves_its_token_rules_to_the_runs(tmp_path):
    """Before runs.token_rule, saes, features, story_means and experiments each kept a copy on every row."""
    path = tmp_path / "old.duckdb"
    rule = '{"skip_first": 1, "description": "positions >= 1"}'
    with D.Database(path) as db:
        db.start_run("rank", {}, run_id="r1")
        db.start_run("experiment", {}, run_id="e1")
        for table in ("saes", "features", "story_means", "experiments"):
            db.sql(f"ALTER TABLE {table} ADD COLUMN token_rule JSON")
        db.insert("saes", [{"sae_id": "s", "model_id": "m", "hook": "h", "run_id": "r1", "token_rule": rule}])
        db.insert("features", [{"sae_id": "s", "feature": i, "run_id": "r1", "token_rule": rule} for i in range(3)])
        db.insert("experiments", [{"experiment_id": "e1", "run_id": "e1", "token_rule": rule.replace("1", "2")}])
    with D.Database(path) as db:
        assert dict(db.sql("SELECT run_id, token_rule->>'$.skip_first' FROM runs")) == {"r1": "1", "e1": "2"}
        assert not [c for t, cols in db.columns().items() for c, _ in cols if c == "token_rule" and t != "runs"]
        assert db.scalar("SELECT count(*) FROM features") == 3
