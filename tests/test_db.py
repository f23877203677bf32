import json
import re
import subprocess
import sys
from pathlib import Path

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


def test_schema_document_matches_real_database(tmp_path):
    with D.Database(tmp_path / "f.duckdb") as db:
        assert db.columns() == documented_schema()


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
    for fmt in ("csv", "json", "parquet"):
        D.write_table(table, tmp_path / f"out.{fmt}", fmt)
    assert json.loads((tmp_path / "out.json").read_text()) == [{"emotion": "afraid"}, {"emotion": "calm"}]
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == '"emotion"'
    with pytest.raises(D.DatabaseError, match="no database"):
        D.read_only_query("SELECT 1", tmp_path / "missing.duckdb")


def test_second_writer_gets_clear_message(tmp_path):
    path = tmp_path / "f.duckdb"
    holder = subprocess.Popen([sys.executable, "-c",
                               f"import time; from saekit import db as D; d = D.Database({str(path)!r}); print('ready', flush=True); time.sleep(30)"],
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
