"""The main job end to end on the tiny model and a slice of the corpus; reruns skip finished steps."""

import json

import pytest
from typer.testing import CliRunner

from saekit.cli import app

pytestmark = pytest.mark.slow  # whole studies on the tiny model: left out by `make test-fast`

runner = CliRunner()


PROBE_SPEC = """
name = "tiny_probes"
task = "probes"
sae = "will be replaced by the study's SAE"
strengths = [0.5]
controls = 1
n_bootstrap = 200
[prompts]
limit = 6
words = ["calm", "afraid"]
[[conditions]]
name = "calm_up"
kind = "steer"
emotion = "calm"
[[conditions]]
name = "calm_feature_clamp"
kind = "clamp"
features = "top 1 selective for calm"
clamp_to = "max_multiple"
strengths = [4.0]
"""

# The impossible task in the study's own shape (its summary is a dict, not a list of effects): the
# browser and its export must render it as they render the study `make run` writes.
IMPOSSIBLE_SPEC = """
name = "tiny_impossible"
task = "impossible_task"
strengths = [0.5]
controls = 1
n_bootstrap = 200
positions = "all"
[prompts]
ids = ["sum-latency"]
attempts = [1, 2]
readings = ["calm", "afraid"]
[[conditions]]
name = "calm"
kind = "steer"
emotion = "calm"
"""


def write_impossible_spec(tmp_path):
    path = tmp_path / "tiny_impossible.toml"
    path.write_text(IMPOSSIBLE_SPEC)
    return str(path)


def write_config(tmp_path, **extra):
    """The tiny study's config (and its probe spec) in tmp_path; also behind conftest's tiny_study."""
    spec = tmp_path / "tiny_probes.toml"
    spec.write_text(PROBE_SPEC)
    cfg = {"model": "tiny", "hook": "blocks.2.hook_resid_post", "vector_hooks": ["blocks.1.hook_resid_post"],
           "out": str(tmp_path / "study"), "db": str(tmp_path / "study.duckdb"), "train_config": "train/tiny-topk.toml",
           "max_tokens": 64, "limit": 288, "train_tokens": 20480,   # limit: 8 emotions x 36 stories
           "experiments": [str(spec)]}
    cfg.update(extra)
    path = tmp_path / "study.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items()))
    return path


def test_study_end_to_end_then_skips_then_reruns_what_changed(tmp_path):
    cfg = write_config(tmp_path)
    result = runner.invoke(app, ["study", str(cfg)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "study"
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and "Held-out emotion classification" in report
    assert "Every statistic in this report counts the same tokens (positions &gt;= 1)" in report
    assert "Logit lens: do the directions promote the emotion&#x27;s own word?" in report
    assert '<span title="' in report and "top stories from the emotion" in report
    assert {p.name for p in (out / "figures").glob("*.png")} >= {"sae_quality.png", "selectivity_heatmap.png",
                                                                "vector_pca.png", "vector_dendrogram.png",
                                                                "probe_accuracy.png"}
    assert "saekit query" in result.output and "SELECT" in result.output
    steps = json.loads((out / "steps.json").read_text())
    assert set(steps) == {"harvest activations", "train SAE", "rank features and vectors", "experiment tiny_probes",
                          "write report"}
    assert "Experiment tiny_probes: effect vs strength" in report
    assert "random control" in steps["experiment tiny_probes"]["summary"]["finding"]
    # the database reports the SAE quality the trainer measured, on the tokens it counted
    from saekit.db import read_only_query

    written = json.loads((out / "sae" / "metrics.json").read_text())
    stored = read_only_query("SELECT explained_variance, dead_fraction, mean_l0, token_rule FROM saes JOIN runs USING (run_id)",
                             tmp_path / "study.duckdb").to_pylist()[0]
    assert stored["explained_variance"] == written["activations"]["explained_variance"]
    assert stored["dead_fraction"] == written["activations"]["dead_fraction"]
    assert stored["mean_l0"] == written["activations"]["l0"]
    assert json.loads(stored["token_rule"])["skip_first"] == written["token_rule"]["skip_first"] == 1

    again = runner.invoke(app, ["study", str(cfg)])
    assert again.exit_code == 0
    assert json.loads((out / "steps.json").read_text()) == steps  # nothing re-ran

    cfg = write_config(tmp_path, train_tokens=30720)  # a training change reruns train, rank and report only
    third = runner.invoke(app, ["study", str(cfg)])
    assert third.exit_code == 0, third.output
    after = json.loads((out / "steps.json").read_text())
    assert after["harvest activations"] == steps["harvest activations"]
    for name in ("train SAE", "rank features and vectors", "experiment tiny_probes", "write report"):
        assert after[name]["key"] != steps[name]["key"]


def test_study_config_errors_are_clear(tmp_path):
    cfg = write_config(tmp_path, train_config="train/nope.toml")
    result = runner.invoke(app, ["study", str(cfg)])
    assert result.exit_code == 2 and "train/nope.toml does not exist" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "tiny"\nlayers = 3\n')
    result = runner.invoke(app, ["study", str(bad)])
    assert result.exit_code == 2 and "layers" in result.output
