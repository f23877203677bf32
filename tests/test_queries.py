"""The example SQL in analysis/queries/ and the database's views, run against the tiny study's database."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from saekit.db import Database, read_only_query

QUERIES = Path(__file__).resolve().parents[1] / "analysis" / "queries"
COLUMNS = {
    "top_features_per_emotion.sql": ["sae_id", "emotion", "selectivity_rank", "feature", "auroc", "cohens_d",
                                     "q_value", "promotes", "example_snippet"],
    "shared_features.sql": ["sae_id", "feature", "first_emotion", "second_emotion", "first_auroc", "second_auroc",
                            "promotes"],
    "emotions_without_selective_feature.sql": ["sae_id", "corpus_id", "emotion", "best_auroc", "best_q_value"],
    "multi_cluster_features.sql": ["sae_id", "feature", "n_clusters", "clusters", "emotions", "best_auroc"],
    "saes_by_quality.sql": ["quality_rank", "sae_id", "model_id", "hook", "architecture", "d_sae",
                            "ce_loss_recovered", "explained_variance", "mean_l0", "dead_fraction", "kl_divergence"],
    "experiments_beating_control.sql": ["name", "experiment_id", "condition", "strength", "metric", "n_prompts",
                                        "effect", "control", "effect_minus_control", "diff_lo", "diff_hi"],
}


@pytest.fixture(scope="module")
def db(tiny_study):
    return tiny_study / "study.duckdb"


def run(name: str, db) -> list[dict]:
    """A query file through the same read-only guard as `saekit query`; checks its columns."""
    table = read_only_query((QUERIES / name).read_text(), db)
    assert table.column_names == COLUMNS[name], name
    return table.to_pylist()


def selective(row) -> bool:
    return row["q_value"] < 0.05 and row["auroc"] >= 0.8


def test_every_query_file_runs_with_its_columns_and_rows(db):
    assert sorted(p.name for p in QUERIES.glob("*.sql")) == sorted(COLUMNS)   # a new file needs its expectation
    stats = read_only_query("SELECT * FROM feature_emotion_stats", db).to_pylist()
    emotions = sorted({r["emotion"] for r in stats})

    top = run("top_features_per_emotion.sql", db)
    assert [(r["emotion"], r["selectivity_rank"]) for r in top] == [(e, k) for e in emotions for k in range(1, 6)]
    best = {r["emotion"]: r["feature"] for r in stats if r["selectivity_rank"] == 1}
    assert {r["emotion"]: r["feature"] for r in top if r["selectivity_rank"] == 1} == best

    none = run("emotions_without_selective_feature.sql", db)
    assert sorted(r["emotion"] for r in none) == sorted(e for e in emotions if not any(
        selective(r) for r in stats if r["emotion"] == e))
    assert len(none) == len(emotions)   # the tiny random model has no selective feature at all
    assert all(r["best_auroc"] == max(s["auroc"] for s in stats if s["emotion"] == r["emotion"]) for r in none)

    assert run("shared_features.sql", db) == [] and run("multi_cluster_features.sql", db) == []

    saes = run("saes_by_quality.sql", db)
    assert [(r["quality_rank"], r["hook"], r["d_sae"]) for r in saes] == [(1, "blocks.2.hook_resid_post", 256)]
    assert saes[0]["explained_variance"] is not None

    effects = read_only_query("SELECT * FROM experiment_effects", db).to_pylist()
    beating = run("experiments_beating_control.sql", db)
    assert sorted((r["condition"], r["metric"]) for r in beating) == sorted(
        (r["condition"], r["metric"]) for r in effects if r["diff_lo"] is not None and r["diff_lo"] > 0)
    assert all(r["diff_lo"] > 0 and r["name"] == "tiny_probes" for r in beating)


def test_threshold_queries_find_planted_features(db, tmp_path):
    """Rows the tiny model cannot produce: planted statistics for an SAE of their own."""
    copy = tmp_path / "planted.duckdb"
    shutil.copy(db, copy)
    planted = [  # feature, emotion, q, auroc
        (0, "grief-stricken", 0.01, 0.90), (0, "sad", 0.01, 0.85),       # shared by the pair, one cluster
        (1, "sad", 0.01, 0.90), (1, "joyful", 0.01, 0.95),               # two clusters
        (2, "grief-stricken", 0.20, 0.90), (2, "sad", 0.01, 0.90),       # not significant for grief-stricken
        (3, "joyful", 0.01, 0.70), (3, "calm", 0.30, 0.60),              # too weak
    ]
    with Database(copy) as d:
        d.replace("emotions", {"emotion": "grief-stricken"}, [{"emotion": "grief-stricken", "cluster": "despair and shame"}])
        d.replace("emotions", {"emotion": "sad"}, [{"emotion": "sad", "cluster": "despair and shame"}])
        d.replace("emotions", {"emotion": "joyful"}, [{"emotion": "joyful", "cluster": "exuberant joy"}])
        d.insert("feature_emotion_stats", [{"sae_id": "planted", "corpus_id": "c", "feature": f, "emotion": e,
                                            "q_value": q, "auroc": a, "selectivity_rank": 1} for f, e, q, a in planted])
    shared = run("shared_features.sql", copy)
    assert [(r["sae_id"], r["feature"], r["first_emotion"], r["second_emotion"]) for r in shared] == [
        ("planted", 0, "grief-stricken", "sad")]
    multi = run("multi_cluster_features.sql", copy)
    assert [(r["feature"], r["n_clusters"], r["clusters"]) for r in multi] == [
        (1, 2, ["despair and shame", "exuberant joy"])]
    none = [r for r in run("emotions_without_selective_feature.sql", copy) if r["sae_id"] == "planted"]
    assert [(r["emotion"], r["best_auroc"]) for r in none] == [("calm", 0.6)]


def test_experiment_effects_view_has_the_report_effects(db):
    from saekit.experiments.summary import effects, load_experiment

    with Database(db, read_only=True) as d:
        exp, data = load_experiment("tiny_probes", d)
    view = {(r["condition"], r["strength"], r["metric"]): r for r in read_only_query(
        "SELECT * FROM experiment_effects WHERE name = 'tiny_probes'", db).to_pylist()}
    report = effects(exp, data)
    assert report and {(r["condition"], r["strength"], r["metric"]) for r in report} <= set(view)
    for r in report:   # same means; the view's intervals are normal approximations, the report's bootstrap
        v = view[(r["condition"], r["strength"], r["metric"])]
        assert v["effect"] == pytest.approx(r["effect"]) and v["control"] == pytest.approx(r["control"])
        assert v["effect_minus_control"] == pytest.approx(r["diff"]) and v["n_prompts"] == r["n"] == 6
        assert v["diff_lo"] < v["effect_minus_control"] < v["diff_hi"]


def test_top_features_and_latest_runs_views(db):
    n_stats = read_only_query("SELECT count(*) AS n FROM feature_emotion_stats", db).column("n")[0].as_py()
    rows = read_only_query("SELECT t.feature, t.example_story, x.story_id FROM top_features t "
                           "LEFT JOIN feature_examples x ON x.feature = t.feature AND x.kind = 'story' "
                           "AND x.example_rank = 1", db).to_pylist()
    assert len(rows) == n_stats and all(r["example_story"] == r["story_id"] for r in rows)
    latest = read_only_query("SELECT kind, run_id FROM latest_runs ORDER BY kind", db).to_pylist()
    newest = read_only_query("SELECT kind, arg_max(run_id, started_at) AS run_id FROM runs GROUP BY kind ORDER BY kind",
                             db).to_pylist()
    assert latest == newest and {r["kind"] for r in latest} == {"rank", "experiment"}


def readme_commands(prefixes=("saekit query", "saekit db")) -> list[str]:
    """Every `saekit query` / `saekit db` command in the README's code blocks, exactly as written
    (a statement spanning lines kept whole; a shown `$ ` prompt dropped)."""
    text = (QUERIES.parents[1] / "README.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    out = []
    for block in blocks:
        lines, i = block.splitlines(), 0
        while i < len(lines):
            line = lines[i].removeprefix("$ ")
            if line.startswith(prefixes):
                while line.count('"') % 2 and i + 1 < len(lines):
                    i += 1
                    line += "\n" + lines[i]
                out.append(line.split("   #")[0].rstrip())
            i += 1
    return out


def test_every_readme_query_command_runs_as_written(db, tmp_path):
    """The README's own commands, run by a shell in a folder that has the repository's analysis/."""
    commands = readme_commands()
    assert any("$(cat analysis/queries/" in c for c in commands) and len(commands) >= 5
    (tmp_path / "analysis").symlink_to(QUERIES.parent)
    env = dict(os.environ, SAEKIT_DB=str(db), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for command in commands:
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("how", ["statement", "file", "stdin"])
def test_query_takes_a_statement_a_sql_file_or_stdin(db, how):
    from typer.testing import CliRunner

    from saekit.cli import app

    path = QUERIES / "emotions_without_selective_feature.sql"
    arg, stdin = {"statement": (path.read_text(), None), "file": (str(path), None), "stdin": ("-", path.read_text())}[how]
    result = CliRunner().invoke(app, ["query", arg, "--db", str(db)], input=stdin)
    assert result.exit_code == 0, result.output
    assert "best_auroc" in result.output
    emotions = read_only_query("SELECT DISTINCT emotion FROM feature_emotion_stats", db).column("emotion").to_pylist()
    assert all(e in result.output for e in emotions)


def test_query_names_a_missing_sql_file(db, tmp_path):
    from typer.testing import CliRunner

    from saekit.cli import app

    result = CliRunner().invoke(app, ["query", str(tmp_path / "nope.sql"), "--db", str(db)])
    assert result.exit_code == 2 and "no SQL file" in result.output
