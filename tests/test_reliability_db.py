"""Hostile and careless use of the feature database: SQL that tries to write, paths that are not
databases, huge results, and rankings killed or failing part-way through their writes."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import torch
from typer.testing import CliRunner

from saekit import db as D
from saekit import rank as R
from saekit.cli import app
from saekit.corpus import load_corpus
from saekit.harvest import HarvestConfig, harvest
from saekit.sae import build_training_sae, load_sae, save_sae

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def small_db(tmp_path):
    path = tmp_path / "f.duckdb"
    with D.Database(path) as db:
        db.insert("emotions", [{"emotion": "calm"}, {"emotion": "afraid"}])
    return path


def cli(*args, env=None):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    assert "Traceback" not in result.output
    return result


# ---------------------------------------------------------------------------- user SQL cannot write


WRITES = ["EXPLAIN ANALYZE COPY (SELECT * FROM emotions) TO '{target}' (FORMAT json)",
          "EXPLAIN (FORMAT json, ANALYZE) /* comment */ COPY (SELECT * FROM emotions) TO '{target}'",
          "COPY emotions TO '{target}'", "EXPORT DATABASE '{folder}'", "ATTACH '{folder}/other.duckdb' AS o",
          "INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true", "SET lock_configuration = false",
          "SELECT 1; COPY emotions TO '{target}'"]


@pytest.mark.parametrize("allow_files", [False, True])
@pytest.mark.parametrize("sql", WRITES)
def test_query_cannot_write_in_either_mode(small_db, tmp_path, sql, allow_files):
    target = tmp_path / "manifest.json"
    target.write_text('{"precious": true}\n')
    sql = sql.format(target=target, folder=tmp_path / "exported")
    before = sorted(tmp_path.iterdir())
    with pytest.raises(D.DatabaseError, match="refused|exactly one statement"):
        D.read_only_query(sql, small_db, allow_files=allow_files)
    result = cli("query", "--db", small_db, sql, *(["--allow-file-reads"] if allow_files else []))
    assert result.exit_code == 2 and "error:" in result.output
    assert target.read_text() == '{"precious": true}\n' and sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("pragma", ["PRAGMA import_database('{folder}')", "-- a comment\nPRAGMA import_database('{folder}')",
                                    "EXPLAIN PRAGMA import_database('{folder}')", "PRAGMA memory_limit = '1TB'"])
def test_reading_files_never_means_writing_them(small_db, tmp_path, pragma):
    """import_database runs the statements of a folder's load.sql (a COPY ... TO among them): refused,
    whether file reads are allowed or not, by the CLI, the module function and the notebook handle."""
    import saekit

    folder, target = tmp_path / "d", tmp_path / "victim.csv"
    folder.mkdir()
    (folder / "schema.sql").write_text("")
    (folder / "load.sql").write_text(f"COPY emotions TO '{target}';\n")
    target.write_text("precious\n")
    sql = pragma.format(folder=folder)
    for allow in (False, True):
        with pytest.raises(D.DatabaseError, match="refused"):
            D.read_only_query(sql, small_db, allow_files=allow)
        with saekit.open_db(small_db, allow_file_reads=allow) as db, pytest.raises(D.DatabaseError, match="refused"):
            db.sql(sql)
        result = cli("query", "--db", small_db, sql, *(["--allow-file-reads"] if allow else []))
        assert result.exit_code == 2 and "refused" in result.output
    assert target.read_text() == "precious\n"
    assert D.read_only_query("PRAGMA show_tables", small_db, allow_files=True).num_rows > 0   # describing ones run


def test_connection_itself_refuses_files_and_settings(small_db, tmp_path):
    """Behind the statement check: the sandboxed connection cannot write files or unlock itself."""
    target = tmp_path / "out.csv"
    with D.open_readonly(small_db) as db:
        with pytest.raises(duckdb.Error, match="disabled by configuration"):
            db.con.execute(f"COPY (SELECT 1) TO '{target}'")
        with pytest.raises(duckdb.Error, match="locked"):
            db.con.execute("SET enable_external_access = true")
    with D.open_readonly(small_db, allow_files=True) as db:
        with pytest.raises(duckdb.Error, match="read-only"):
            db.con.execute("DELETE FROM emotions")
        with pytest.raises(duckdb.Error, match="locked"):
            db.con.execute("SET lock_configuration = false")
    assert not target.exists()


def test_reading_other_files_is_opt_in(small_db, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("word\nsecret\n")
    sql = f"SELECT * FROM read_csv('{data}')"
    with pytest.raises(D.DatabaseError, match="reading other files is off.*--allow-file-reads"):
        D.read_only_query(sql, small_db)
    result = cli("query", "--db", small_db, sql)
    assert result.exit_code == 2 and "--allow-file-reads" in result.output
    assert D.read_only_query(sql, small_db, allow_files=True).to_pylist() == [{"word": "secret"}]
    result = cli("query", "--db", small_db, "--allow-file-reads", sql)
    assert result.exit_code == 0 and "secret" in result.output


# ---------------------------------------------------------------------------- huge results


def test_printing_reads_only_the_rows_shown(small_db):
    """Rows past the first batches raise if computed: printing 50 of 50 million never reaches them."""
    sql = ("SELECT CASE WHEN range < 40000000 THEN range ELSE error('read past the printed rows') END AS i "
           "FROM range(50000000)")
    result = cli("query", "--db", small_db, sql)
    assert result.exit_code == 0, result.output
    assert "49" in result.output and "more than 50 rows" in result.output
    result = cli("query", "--db", small_db, "--limit", "3", "SELECT * FROM range(10)")
    assert "more than 3 rows" in result.output and "│ 2 " in result.output and "│ 3 " not in result.output


def test_export_streams_all_rows_and_a_failure_keeps_the_old_file(small_db, tmp_path):
    out = tmp_path / "rows.csv"
    result = cli("query", "--db", small_db, "SELECT range AS i FROM range(200000)", "--csv", out)
    assert result.exit_code == 0 and "wrote 200000 rows" in result.output
    assert len(out.read_text().splitlines()) == 200001
    failing = "SELECT CASE WHEN range < 150000 THEN range ELSE error('boom at the end') END AS i FROM range(200000)"
    result = cli("query", "--db", small_db, failing, "--csv", out, "--json", tmp_path / "rows.json")
    assert result.exit_code == 2 and "boom at the end" in result.output
    assert len(out.read_text().splitlines()) == 200001
    result = cli("query", "--db", small_db, "SELECT [1, 2] AS vector", "--csv", out)
    assert result.exit_code == 2 and "use --json or --parquet" in result.output
    assert len(out.read_text().splitlines()) == 200001
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.duckdb", "rows.csv"]


def test_a_stream_left_open_does_not_block_the_next_open(small_db):
    db = D.open_readonly(small_db)
    reader = db.stream("SELECT * FROM emotions")
    db.close()
    with D.Database(small_db, read_only=True) as again:  # other settings than the sandbox: refused if still open
        assert again.scalar("SELECT count(*) FROM emotions") == 2
    assert reader.schema.names == ["emotion", "cluster", "valence", "arousal"]


# ---------------------------------------------------------------------------- paths that are not databases


def test_database_refuses_paths_that_are_not_duckdb_files(tmp_path):
    csv = tmp_path / "existing.csv"
    csv.write_text("a,b\n1,2\n")
    empty = tmp_path / "empty.duckdb"
    empty.touch()
    for path, why in ((csv, "not a DuckDB database"), (empty, "not a DuckDB database"), (tmp_path, "is a folder")):
        for read_only in (False, True):
            with pytest.raises(D.DatabaseError, match=why):
                D.Database(path, read_only=read_only)
    assert csv.read_text() == "a,b\n1,2\n" and empty.stat().st_size == 0
    with pytest.raises(D.DatabaseError, match="no database at"):
        D.open_readonly(tmp_path / "missing.duckdb")
    with D.Database(tmp_path / "new" / "f.duckdb") as db:  # a writer creates a new file
        assert ("runs", 0) in db.tables()


def test_cli_refuses_a_wrong_db_before_any_compute(tmp_path, monkeypatch):
    import saekit.model

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the --db check")

    monkeypatch.setattr(saekit.model, "load_model", no_model)
    csv = tmp_path / "existing.csv"
    csv.write_text("a,b\n1,2\n")
    study = tmp_path / "study.toml"
    study.write_text(f'db = "{csv}"\nout = "{tmp_path / "study"}"\nexperiments = []\n')
    for args in (["rank", "--activations", tmp_path / "none", "--db", csv], ["db", "--db", csv],
                 ["query", "--db", csv, "SELECT 1"], ["experiment", "report", "x", "--db", csv],
                 ["experiment", "run", ROOT / "analysis/experiments/emotion_word_probes.toml", "--db", csv],
                 ["study", study]):
        result = cli(*args)
        assert result.exit_code == 2 and f"{csv} exists but is not a DuckDB database" in result.output, (args, result.output)
    result = cli("db", env={"SAEKIT_DB": str(csv)})
    assert result.exit_code == 2 and "not a DuckDB database" in result.output
    result = cli("rank", "--activations", tmp_path / "none", "--db", tmp_path)
    assert result.exit_code == 2 and f"database path {tmp_path} is a folder" in result.output
    assert csv.read_text() == "a,b\n1,2\n" and not (tmp_path / "study").exists()


# ---------------------------------------------------------------------------- runs killed or failing part-way


def test_runs_of_dead_processes_are_marked_failed_by_the_next_writer(tmp_path):
    path = tmp_path / "f.duckdb"
    script = f"import os; from saekit import db as D; D.Database({str(path)!r}).start_run('rank'); os._exit(137)"
    killed = subprocess.Popen([sys.executable, "-c", script])
    assert killed.wait() == 137
    with D.open_readonly(path) as db:  # readers change nothing
        assert db.sql("SELECT status, pid FROM runs") == [("running", killed.pid)]
    with D.Database(path) as db:
        assert db.sql("SELECT status FROM runs") == [("failed",)]
        db.start_run("experiment")  # this process: alive
        db.con.execute("INSERT INTO runs (run_id, kind, started_at, status, pid, host) "
                       "VALUES ('elsewhere', 'rank', now()::TIMESTAMP, 'running', ?, 'another-host')", [killed.pid])
    with D.Database(path) as db:
        status = dict(db.sql("SELECT host || ':' || kind, status || ':' || (finished_at IS NOT NULL) FROM runs"))
    host = socket.gethostname()
    assert status == {f"{host}:rank": "failed:true", f"{host}:experiment": "running:false",
                      "another-host:rank": "running:false"}


@pytest.fixture(scope="module")
def ranked(tiny_model, tmp_path_factory):
    """A database holding one finished ranking, and a second harvest (fewer stories) to re-rank with."""
    tmp = tmp_path_factory.mktemp("reliability")
    hook = "blocks.2.hook_resid_post"
    records = [r for r in load_corpus(emotions=["calm", "afraid", "joyful"]) if r.emotion != "neutral"]
    acts = {}
    for name, recs in (("first", records), ("second", records[::2])):
        acts[name] = str(harvest(HarvestConfig(model="tiny", hooks=["blocks.1.hook_resid_post", hook], token_hooks=[hook],
                                               out=str(tmp / name), max_tokens=48, batch_size=16),
                                 model=tiny_model, records=recs))
    torch.manual_seed(0)
    sae = build_training_sae("topk", 64, 32, k=4, metadata={"hook_name": hook, "model_name": "tiny"})
    folder = save_sae(sae, tmp / "sae")
    loaded = load_sae(folder, model=tiny_model).sae
    db_path = tmp / "ranked.duckdb"
    cfg = R.RankConfig(activations=acts["first"], sae=str(folder), db=str(db_path), kmeans_k=2)
    with D.Database(db_path) as db:
        R.run_rank(cfg, sae=loaded, model=tiny_model, tokenizer=tiny_model.tokenizer, db=db)
    return {"db": db_path, "acts": acts, "sae": loaded, "folder": str(folder), "cfg": cfg}


def snapshot(path) -> dict[str, list]:
    """Every row of every table but runs."""
    with D.open_readonly(path) as db:
        return {name: db.sql(f"SELECT * FROM {name} ORDER BY ALL") for name, _ in db.tables() if name != "runs"}


def run_status(path) -> dict[str, str]:
    with D.open_readonly(path) as db:
        return dict(db.sql("SELECT run_id, status FROM runs"))


RANKED_TABLES = ("corpora", "emotion_clusters", "emotion_linkage", "emotion_similarity", "emotion_vectors",
                 "feature_emotion_stats", "feature_examples", "features", "lens_checks", "models", "probe_results", "saes",
                 "stories", "story_means", "style_geometry", "vector_feature_alignment")


def run_ids(path) -> dict[str, set]:
    """The runs that wrote each non-empty result table."""
    with D.open_readonly(path) as db:
        names = {t for t, _ in db.tables()}   # tables, not views (which show the tables' rows again)
        tables = [t for t, cols in db.columns().items() if ("run_id", "VARCHAR") in cols and t in names - {"runs"}]
        ids = {t: {r[0] for r in db.sql(f"SELECT DISTINCT run_id FROM {t}")} for t in tables}
    return {t: v for t, v in ids.items() if v}


@pytest.mark.slow  # a subprocess per case (kill, fresh process) or a full uncached pass: not in make test-fast
def test_killed_ranking_leaves_the_previous_one_whole(ranked, tmp_path):
    db = tmp_path / "f.duckdb"
    shutil.copy(ranked["db"], db)
    before, (first,) = snapshot(db), run_status(db)
    env = dict(os.environ, SAEKIT_FAULT="rank.write_results")
    killed = subprocess.run([sys.executable, "-m", "saekit", "rank", "--activations", ranked["acts"]["second"],
                             "--sae", ranked["folder"], "--db", str(db)], env=env, capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr
    assert snapshot(db) == before
    status = run_status(db)
    (second,) = set(status) - {first}
    assert status == {first: "done", second: "running"}
    with D.Database(db) as d:  # the next writer marks the killed run
        assert d.scalar("SELECT finished_at IS NOT NULL FROM runs WHERE run_id = ?", [second])
    assert run_status(db) == {first: "done", second: "failed"}
    assert run_ids(db) == dict.fromkeys(RANKED_TABLES, {first})


def test_failing_write_rolls_back_everything_and_marks_the_run_failed(ranked, tmp_path, tiny_model, monkeypatch):
    db = tmp_path / "f.duckdb"
    shutil.copy(ranked["db"], db)
    before = snapshot(db)
    insert = D.Database.insert

    def failing_insert(self, table, rows):
        if table == "vector_feature_alignment":
            raise D.DatabaseError("disk full (simulated)")
        return insert(self, table, rows)

    monkeypatch.setattr(D.Database, "insert", failing_insert)
    cfg = R.RankConfig(**dict(vars(ranked["cfg"]), activations=ranked["acts"]["second"], db=str(db)))
    with D.Database(db) as d, pytest.raises(D.DatabaseError, match="simulated"):
        R.run_rank(cfg, sae=ranked["sae"], model=tiny_model, tokenizer=tiny_model.tokenizer, db=d)
    assert snapshot(db) == before
    assert sorted(run_status(db).values()) == ["done", "failed"]


def test_rerank_replaces_every_table_including_probe_results(ranked, tmp_path, tiny_model):
    db = tmp_path / "f.duckdb"
    shutil.copy(ranked["db"], db)
    probes_before = snapshot(db)["probe_results"]
    cfg = R.RankConfig(**dict(vars(ranked["cfg"]), activations=ranked["acts"]["second"], db=str(db)))
    with D.Database(db) as d:
        R.run_rank(cfg, sae=ranked["sae"], model=tiny_model, tokenizer=tiny_model.tokenizer, db=d)
        second = d.scalar("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")
        n_stories = d.scalar("SELECT count(*) FROM stories")
        probes = d.sql("SELECT model_id, hook, method FROM probe_results ORDER BY ALL")
    assert run_ids(db) == dict.fromkeys(RANKED_TABLES, {second})
    assert n_stories == len(R.Activations.open(ranked["acts"]["second"]).documents)
    assert len(probes) == len(probes_before) == 5 and {p[0] for p in probes} == {"tiny"}



def test_a_second_handle_closed_in_this_process_keeps_the_first_ones_lock(small_db):
    """DuckDB's lock is a POSIX record lock: closing any descriptor of the file drops it. A second
    handle opened and closed here must not let another process write under the first handle."""
    import saekit

    writer = [sys.executable, "-c", "import sys; from saekit.db import Database, DatabaseBusy\n"
              "try:\n    Database(sys.argv[1], wait_s=0.5).close()\nexcept DatabaseBusy:\n    sys.exit(3)", str(small_db)]
    first = saekit.open_db(small_db)
    try:
        for _ in range(2):
            saekit.open_db(small_db).close()
            D.read_only_query("SELECT 1", small_db)
            assert subprocess.run(writer, timeout=120).returncode == 3   # still refused: the lock held
        assert len(first.sql("SELECT * FROM emotions")) == 2
    finally:
        first.close()
    assert subprocess.run(writer, timeout=120).returncode == 0        # and released with the last handle
