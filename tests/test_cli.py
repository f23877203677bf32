"""The console script as a user runs it (in-process through typer's runner)."""

import json

import pytest
from typer.testing import CliRunner

from saekit.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["harvest"], ["study"], ["rank"], ["query"], ["db"], ["train"], ["sae"], ["sae", "load"],
                                  ["corpus"], ["corpus", "stats"], ["corpus", "validate"], ["corpus", "generate"],
                                  ["model"], ["model", "info"], ["model", "chat"], ["compare"]])
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




def test_database_commands_give_messages_not_tracebacks(tmp_path):
    from saekit.db import Database

    db = tmp_path / "f.duckdb"
    with Database(db) as d:
        d.insert("emotions", [{"emotion": "calm"}])
    folder = tmp_path / "folder"
    folder.mkdir()
    result = runner.invoke(app, ["query", "--db", str(db), "SELECT 1", "--csv", str(folder)])
    assert result.exit_code == 2 and f"{folder} is a folder" in result.output
    assert list(folder.iterdir()) == []
    out = tmp_path / "new" / "deeper" / "x.json"  # missing folders are created
    result = runner.invoke(app, ["query", "--db", str(db), "SELECT emotion FROM emotions", "--json", str(out)])
    assert result.exit_code == 0 and json.loads(out.read_text()) == [{"emotion": "calm"}]
    blocked = tmp_path / "afile"
    blocked.write_text("x")
    result = runner.invoke(app, ["query", "--db", str(db), "SELECT 1", "--csv", str(blocked / "x.csv")])
    assert result.exit_code == 2 and f"{blocked} is a file, so nothing can be created under it" in result.output
    csv = tmp_path / "x.csv"
    csv.write_text("a\n1\n")
    result = runner.invoke(app, ["db", "--db", str(csv)])
    assert result.exit_code == 2 and f"{csv} exists but is not a DuckDB database" in result.output
    result = runner.invoke(app, ["experiment", "report", "no-such-experiment", "--db", str(db)])
    assert result.exit_code == 2 and "no experiment 'no-such-experiment'" in result.output and str(db) in result.output
    result = runner.invoke(app, ["query", "--db", str(db), "SELECT 1", "--limit", "-1"])
    assert result.exit_code == 2 and "--limit" in result.output


def test_top_zero_features_is_refused_not_called_an_unknown_emotion(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "x"\ntask = "probes"\nmodel = "tiny"\nhook = "blocks.1.hook_resid_post"\nsae = "s"\n'
                    '[[conditions]]\nname = "afraid_off"\nkind = "ablate"\nfeatures = "top 0 selective for afraid"\n')
    result = runner.invoke(app, ["experiment", "run", str(spec), "--db", str(tmp_path / "f.duckdb")])
    assert result.exit_code == 2 and "selects no features; N must be at least 1" in result.output
    assert "unknown emotion" not in result.output


def test_experiment_run_takes_set_and_names_a_bad_key(tmp_path):
    """`--set` on `experiment run` reaches the spec's own checks; an unknown key is named before any work."""
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "x"\ntask = "probes"\nmodel = "tiny"\nhook = "blocks.1.hook_resid_post"\nsae = "s"\n'
                    '[[conditions]]\nname = "afraid_off"\nkind = "ablate"\nfeatures = "top 1 selective for afraid"\n')
    db = tmp_path / "f.duckdb"
    result = runner.invoke(app, ["experiment", "run", str(spec), "--db", str(db), "--set", "nosuch=1"])
    assert result.exit_code == 2 and "--set nosuch" in result.output and "ExperimentSpec has no field" in result.output
    result = runner.invoke(app, ["experiment", "run", str(spec), "--db", str(db), "--set",
                                 'conditions=[{name = "afraid_off", kind = "ablate", features = "top 0 selective for afraid"}]'])
    assert result.exit_code == 2 and "selects no features; N must be at least 1" in result.output
    assert not db.exists()


# ---------------------------------------------------------------------------- options from the config dataclasses


@pytest.mark.parametrize("args, option, doc", [
    (["harvest"], "--token-hooks", "per-token activations are stored"),
    (["rank"], "--n-examples", "Examples stored per feature"),
    (["train", "x.toml"], "--dead-feature-window", "has not fired for this many steps"),
    (["study"], "--vector-hooks", "Extra layers for emotion vectors"),
    (["corpus", "generate"], "--near-duplicate-threshold", None)])
def test_every_config_command_offers_its_fields_and_set(args, option, doc):
    out = " ".join(runner.invoke(app, args + ["--help"], env={"COLUMNS": "300"}).output.split())
    assert "--set" in out and option in out, out
    assert doc is None or doc in out


def test_old_option_names_still_work(tmp_path):
    from saekit import cli_config as C
    from saekit.cli import HARVEST, RANK

    names = {n for p in C.build_options(HARVEST, set()) for n in p.opts}
    assert {"--hook", "--split", "--streaming", "--model", "--corpus", "--limit", "--dtype"} <= names
    names = {n for p in C.build_options(RANK, set()) for n in p.opts}
    assert {"--activations", "--sae", "--sae-id", "--db", "--ratings", "--skip-first", "--max-norm-ratio",
            "--eval-corpus", "--eval-label-column", "--eval-text-column"} <= names


def test_set_names_the_key_and_config_of_a_bad_assignment():
    result = runner.invoke(app, ["rank", "--set", "n_exampels=3"])
    assert result.exit_code == 2 and "--set n_exampels: RankConfig has no field 'n_exampels'" in result.output
    result = runner.invoke(app, ["rank", "--set", "n_examples=many"])
    assert result.exit_code == 2 and "--set n_examples='many': RankConfig.n_examples: expected int" in result.output
    result = runner.invoke(app, ["harvest", "--set", "max_tokens"])
    assert result.exit_code == 2 and "expected key=value" in result.output


def test_a_config_file_is_overridden_only_by_what_the_user_typed(tmp_path, monkeypatch):
    import saekit.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_rank", lambda cfg, *a: seen.append(cfg) or {"summary": {}})
    config = tmp_path / "rank.toml"
    config.write_text('activations = "from/the/file"\nn_examples = 7\n')
    for args, activations, n in ((["--config", str(config)], "from/the/file", 7),
                                 (["--config", str(config), "--set", "n_examples=9"], "from/the/file", 9),
                                 (["--config", str(config), "--set", "activations='set'", "--activations", "typed"],
                                  "typed", 7),
                                 ([], "artifacts/study/activations", 5)):
        result = runner.invoke(app, ["rank", *args])
        assert result.exit_code == 0, result.output
        assert (seen[-1].activations, seen[-1].n_examples) == (activations, n)


def test_study_set_reaches_the_plan(tmp_path):
    result = runner.invoke(app, ["study", "analysis/study.toml", "--plan", "--set", "limitt=3"])
    assert result.exit_code == 2 and "StudyConfig has no field 'limitt'" in result.output
