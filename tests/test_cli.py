"""The console script as a user runs it (in-process through typer's runner)."""

import json

import pytest
from typer.testing import CliRunner

from saekit.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["harvest"], ["study"], ["rank"], ["query"], ["db"], ["train"], ["sae"], ["sae", "load"], ["corpus"], ["corpus", "stats"],
                                  ["corpus", "validate"], ["corpus", "generate"], ["model"], ["model", "info"], ["model", "chat"]])
def test_every_command_has_help(args):
    result = runner.invoke(app, args + ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_harvest_command_on_tiny_model(tmp_path):
    out = tmp_path / "acts"
    result = runner.invoke(app, ["harvest", "--model", "tiny", "--hook", "blocks.1.hook_resid_post",
                                 "--limit", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["documents"]) == 6 and m["complete"]
    assert "tokens" in result.output


def test_harvest_command_from_config_file(tmp_path):
    cfg = tmp_path / "h.toml"
    cfg.write_text(f'model = "tiny"\nhooks = ["blocks.0.hook_resid_post"]\nlimit = 3\nout = "{tmp_path / "a"}"\n')
    assert runner.invoke(app, ["harvest", "--config", str(cfg)]).exit_code == 0
    assert (tmp_path / "a" / "pooled.safetensors").exists()


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path):
    result = runner.invoke(app, ["harvest", "--model", "tiny", "--hook", "blocks.99.hook_resid_post",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown hook" in result.output
    cfg = tmp_path / "bad.toml"
    cfg.write_text('model = "tiny"\nhookz = ["blocks.0.hook_resid_post"]\n')
    result = runner.invoke(app, ["harvest", "--config", str(cfg)])
    assert result.exit_code == 2 and "hookz" in result.output
    result = runner.invoke(app, ["corpus", "stats", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_corpus_commands():
    result = runner.invoke(app, ["corpus", "validate"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["corpus", "stats"])
    assert result.exit_code == 0 and "grief-stricken" in result.output and "length_histogram" in result.output


def test_study_on_tiny_model(tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'model = "tiny"\nhooks = ["blocks.2.hook_resid_post"]\nout = "{tmp_path / "s"}"\n'
                   'max_tokens = 64\nlimit = 60\n')
    result = runner.invoke(app, ["study", str(cfg)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["harvest"]["documents"] == 60


def test_query_and_db_commands(tmp_path):
    from saekit.db import Database

    path = tmp_path / "f.duckdb"
    with Database(path) as db:
        db.insert("emotions", [{"emotion": "calm", "cluster": "peaceful contentment"}])
    result = runner.invoke(app, ["query", "SELECT emotion, cluster FROM emotions", "--db", str(path)])
    assert result.exit_code == 0 and "peaceful contentment" in result.output
    result = runner.invoke(app, ["query", "SELECT * FROM emotions", "--db", str(path), "--csv", str(tmp_path / "e.csv")])
    assert result.exit_code == 0 and "calm" in (tmp_path / "e.csv").read_text()
    result = runner.invoke(app, ["query", "DELETE FROM emotions", "--db", str(path)])
    assert result.exit_code == 2 and "read-only" in result.output
    result = runner.invoke(app, ["db", "--db", str(path)])
    assert result.exit_code == 0 and "feature_emotion_stats" in result.output
    result = runner.invoke(app, ["db", "--db", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 2 and "no database" in result.output


def test_corpus_generate_command_on_tiny_model(tmp_path):
    out = tmp_path / "gen.jsonl"
    result = runner.invoke(app, ["corpus", "generate", "--model", "tiny", "--emotion", "calm", "--topics", "1",
                                 "--calls-per-pair", "1", "--max-new-tokens", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_name("gen.report.json").read_text())
    assert report["calls"] == 1 and report["candidates"] == report["accepted"] + report["rejected_total"]
    assert "report:" in result.output


def test_train_then_sae_load_and_rank_commands(tmp_path):
    acts = tmp_path / "acts"
    assert runner.invoke(app, ["harvest", "--model", "tiny", "--hook", "blocks.2.hook_resid_post", "--limit", "120",
                               "--max-tokens", "64", "--out", str(acts)]).exit_code == 0
    result = runner.invoke(app, ["train", "train/tiny-topk.toml", "--activations", str(acts), "--out", str(tmp_path / "sae")])
    assert result.exit_code == 0, result.output
    assert "explained variance" in result.output and (tmp_path / "sae" / "sae_weights.safetensors").exists()
    result = runner.invoke(app, ["sae", "load", str(tmp_path / "sae"), "--model", "tiny"])
    assert result.exit_code == 0 and "blocks.2.hook_resid_post" in result.output, result.output
    result = runner.invoke(app, ["sae", "load", str(tmp_path / "sae"), "--model", "smollm2-135m-instruct"])
    assert result.exit_code == 2 and "d_in" in result.output
    db = tmp_path / "f.duckdb"
    result = runner.invoke(app, ["rank", "--activations", str(acts), "--sae", str(tmp_path / "sae"), "--db", str(db)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["query", "SELECT explained_variance, mean_l0 FROM saes", "--db", str(db), "--json",
                                 str(tmp_path / "q.json")])
    row = json.loads((tmp_path / "q.json").read_text())[0]
    assert 0 < row["explained_variance"] <= 1 and row["mean_l0"] > 0
