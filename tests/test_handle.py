"""saekit.open_db: a read-only handle whose answers are DataFrames, on the tiny study's database."""

import hashlib
import importlib.util
import shutil

import pandas as pd
import pytest

import saekit
from saekit.db import DatabaseError, read_only_query


@pytest.fixture(scope="module")
def db(tiny_study):
    return tiny_study / "study.duckdb"


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_questions_come_back_as_frames_of_the_tables_and_views(db):
    with saekit.open_db(db) as h:
        top = h.top_features("calm", 3)
        feature = h.feature(int(top.feature[0]))
        vectors = h.vectors("blocks.1.hook_resid_post")
        effects = h.experiment("tiny_probes")
        mine = h.sql("SELECT emotion, count(*) AS n FROM feature_emotion_stats GROUP BY emotion ORDER BY emotion")
    assert isinstance(top, pd.DataFrame) and list(top.selectivity_rank) == [1, 2, 3]
    expected = read_only_query("SELECT feature FROM feature_emotion_stats WHERE emotion = 'calm' "
                               "AND selectivity_rank <= 3 ORDER BY selectivity_rank", db).column("feature").to_pylist()
    assert list(top.feature) == expected and {"promoted_tokens", "example_snippet", "auroc"} <= set(top.columns)
    assert set(feature.feature) == {expected[0]} and len(feature) == len(mine) == 8
    assert list(feature.auroc) == sorted(feature.auroc, reverse=True)
    assert len(vectors) == 8 and all(len(v) == 64 for v in vectors.vector)
    view = read_only_query("SELECT * FROM experiment_effects WHERE name = 'tiny_probes'", db)
    assert len(effects) == view.num_rows > 0 and list(effects.columns) == view.column_names
    assert set(mine.n) == {256}


def test_the_handle_writes_nothing_and_refuses_what_query_refuses(db, tmp_path):
    before = digest(db)
    other = tmp_path / "other.csv"
    other.write_text("a\n1\n")
    with saekit.open_db(db) as h:
        for sql in ("DELETE FROM runs", "DROP VIEW top_features", f"COPY runs TO '{tmp_path / 'x.csv'}'",
                    f"EXPLAIN ANALYZE COPY runs TO '{tmp_path / 'y.csv'}'"):
            with pytest.raises(DatabaseError, match="refused"):
                h.sql(sql)
        with pytest.raises(DatabaseError, match="reading other files is off"):
            h.sql(f"SELECT * FROM read_csv('{other}')")
    with saekit.open_db(db, allow_file_reads=True) as h:
        assert list(h.sql(f"SELECT a FROM read_csv('{other}')").a) == [1]
    assert digest(db) == before and list(tmp_path.iterdir()) == [other]


@pytest.mark.parametrize("ask, message", [
    (lambda h: h.top_features("ecstatic"), r"no emotion 'ecstatic' in .*known: \['afraid', 'amused'"),
    (lambda h: h.top_features("calm", 0), "n must be at least 1"),
    (lambda h: h.feature(4096), r"feature 4096 is not in .* sizes: \[\(.*, 256\)\]"),
    (lambda h: h.vectors("blocks.7.hook_resid_post"), r"no hook 'blocks.7.hook_resid_post'.*blocks.1.hook_resid_post"),
    (lambda h: h.experiment("nope"), r"no experiment 'nope' .*tiny_probes"),
])
def test_unknown_names_get_a_message_listing_what_exists(db, ask, message):
    with saekit.open_db(db) as h:
        with pytest.raises(DatabaseError, match=message):
            ask(h)


def test_polars_frames_or_a_clear_message(db):
    with saekit.open_db(db, frames="polars") as h:
        if importlib.util.find_spec("polars") is None:
            with pytest.raises(DatabaseError, match="pip install polars"):
                h.top_features("calm", 2)
        else:
            assert type(h.top_features("calm", 2)).__module__.startswith("polars")


def test_a_database_older_than_the_views_says_how_to_get_them(db, tmp_path):
    import duckdb

    old = tmp_path / "old.duckdb"
    shutil.copy(db, old)
    con = duckdb.connect(str(old))
    con.execute("DROP VIEW top_features")
    con.close()
    with saekit.open_db(old) as h:
        with pytest.raises(DatabaseError, match="predates saekit's views: any command that writes"):
            h.top_features("calm")
        assert len(h.vectors("blocks.1.hook_resid_post")) == 8   # the tables still answer
