"""A new task or intervention kind is one class and one registration: runnable and reportable as is."""

import pytest
import torch
from test_experiments import HOOK, ranked, results, spec  # noqa: F401  (ranked is a fixture)
from typer.testing import CliRunner

from saekit import experiments as X
from saekit.cli import app
from saekit.config import ConfigError
from saekit.experiments.batches import run_logits
from saekit.experiments.kinds import KINDS, InterventionKind
from saekit.experiments.summary import report
from saekit.experiments.targets import Target, result_rows
from saekit.experiments.tasks import TASKS, InterventionTask
from saekit.interventions import Zero, patched

TEXTS = ["The rain kept falling on the old roof", "She opened the letter and read it twice"]


class TopProbTask(InterventionTask):
    """Toy task: the probability of the most likely next token at the end of two texts."""
    name = "toy_top_prob"
    metrics = ("top_p",)
    primary = "top_p"
    effect_note = "Effect: change in the top next-token probability."

    def __init__(self, model, res):
        super().__init__(model, res)
        self.seqs = [self.tok(t)["input_ids"] for t in TEXTS]

    def measure(self, setting):
        logp, mask = run_logits(self.model, self.res, setting, self.seqs)
        last = mask.sum(1) - 1
        return [r for b in range(len(self.seqs))
                for r in result_rows(setting, f"text-{b}", {"top_p": float(logp[b, last[b]].exp().max())})]


class ZeroHookKind(InterventionKind):
    """Toy kind: zero the spec's hook (no strength, no controls)."""
    name = "zero_hook"
    has_strength = False

    def resolve(self, ctx, c):
        return Target(f"zero:{ctx.spec.hook}"), None

    def edits(self, res, setting, c, positions, rule):
        return [Zero(res.spec.hook, positions=positions, rule=rule)]


@pytest.fixture
def toy_task(monkeypatch):
    monkeypatch.setitem(TASKS, TopProbTask.name, TopProbTask)


@pytest.fixture
def toy_kind(monkeypatch):
    monkeypatch.setitem(KINDS, ZeroHookKind.name, ZeroHookKind())


def test_a_registered_task_runs_and_reports(ranked, tiny_model, toy_task, tmp_path):  # noqa: F811
    s = spec(ranked, name="toy-task", task="toy_top_prob", strengths=[4.0], controls=1, prompts={},
             conditions=[{"name": "desperate_up", "kind": "steer", "emotion": "desperate"}])
    exp = X.run_experiment(s, model=tiny_model)
    rows = results(ranked["db"], exp)
    assert {r["prompt_id"] for r in rows} == {"text-0", "text-1"} and {r["metric"] for r in rows} == {"top_p"}
    # none + the condition + its control, on two texts
    assert len(rows) == 3 * 2 and sum(r["is_control"] for r in rows) == 2
    out = report(exp, db_path=ranked["db"], out_dir=tmp_path / "rep")
    assert out["task"] == "toy_top_prob" and out["columns"][3] == "effect"
    assert [r[:3] for r in out["rows"]] == [["desperate_up", "4", "top_p"]]
    base = {r["prompt_id"]: r["value"] for r in rows if r["condition"] == "none"}
    up = [r["value"] - base[r["prompt_id"]] for r in rows if r["condition"] == "desperate_up" and not r["is_control"]]
    assert float(out["rows"][0][3]) == pytest.approx(sum(up) / 2, rel=1e-3)
    assert "Effect: change in the top next-token probability." in out["notes"]
    assert [p.rsplit("/", 1)[1] for p in out["plots"]] == ["effect_vs_strength.png"]


def test_an_unregistered_task_is_refused_by_name(ranked, tiny_model):  # noqa: F811
    with pytest.raises(ConfigError, match="'toy_top_prob' is not one of"):
        X.run_experiment(spec(ranked, task="toy_top_prob"), model=tiny_model)


def test_a_registered_intervention_kind_runs_and_reports(ranked, tiny_model, toy_kind, tmp_path):  # noqa: F811
    s = spec(ranked, name="toy-kind", controls=0, prompts={"limit": 2, "words": ["calm"]},
             conditions=[{"name": "zeroed", "kind": "zero_hook"}])
    exp = X.run_experiment(s, model=tiny_model)
    rows = {(r["condition"], r["prompt_id"], r["metric"]): r for r in results(ranked["db"], exp)}
    got = rows[("zeroed", "probe-01", "logp:calm")]
    assert got["strength"] is None and got["target"] == f"zero:{HOOK}"
    # the stored value is the forward pass with the hook zeroed at the counted positions (all but the first)
    ids = torch.tensor([tiny_model.tokenizer(_probe_text(0))["input_ids"]])
    word = X.word_token(tiny_model.tokenizer, "calm")
    counted = torch.arange(ids.shape[1]) >= 1
    with torch.no_grad(), patched(tiny_model, Zero(HOOK, positions=counted)):
        lp = tiny_model(ids)[0, -1].log_softmax(-1)[word]
    assert got["value"] == pytest.approx(float(lp), abs=1e-5)
    assert got["value"] != pytest.approx(rows[("none", "probe-01", "logp:calm")]["value"], abs=1e-4)
    out = report(exp, db_path=ranked["db"], out_dir=tmp_path / "rep")
    assert [r[:3] for r in out["rows"]] == [["zeroed", "-", "logp:calm"]]


def _probe_text(i: int) -> str:
    from saekit.corpus import load_scenario

    return load_scenario("probes")["probes"][i]["text"]


def test_report_of_an_unknown_experiment_names_it_and_how_to_list_them(ranked):  # noqa: F811
    result = CliRunner().invoke(app, ["experiment", "report", "no-such-experiment", "--db", ranked["db"]])
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2, text
    assert "no experiment 'no-such-experiment'" in text and "FROM experiments" in text
    assert "Traceback" not in text
