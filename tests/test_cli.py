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


