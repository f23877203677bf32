"""A new task or intervention kind is one class and one registration: its own [prompts] table parsed
when the spec loads, its cost in the study plan, runnable, reportable, and drawn by the browser as is."""

from dataclasses import dataclass, field

import pytest
import torch
from test_experiments import HOOK, ranked, results, spec  # noqa: F401  (ranked is a fixture)
from typer.testing import CliRunner

from saekit import experiments as X
from saekit.cli import app
from saekit.config import ConfigError
from saekit.experiments.batches import run_logits
from saekit.experiments.kinds import KINDS, InterventionKind, register_kind
from saekit.experiments.load import load_spec
from saekit.experiments.spec import Prompts
from saekit.experiments.summary import report
from saekit.experiments.targets import Target, result_rows
from saekit.experiments.tasks import TASKS, InterventionTask, register_task
from saekit.experiments.tasks.task import Cost, condition_settings
from saekit.interventions import Zero, patched

TEXTS = ["The rain kept falling on the old roof", "She opened the letter and read it twice"]


@dataclass
class TopProbPrompts(Prompts):
    texts: list[str] = field(default_factory=lambda: list(TEXTS))
    """The texts whose top next-token probability is read."""
    tokens_assumed: int = 12
    """What the plan assumes a text costs, in tokens."""


class TopProbTask(InterventionTask):
    """Toy task: the probability of the most likely next token at the end of some texts."""
    name = "toy_top_prob"
    metrics = ("top_p",)
    primary = "top_p"
    Prompts = TopProbPrompts
    effect_note = "Effect: change in the top next-token probability."

    @classmethod
    def check(cls, spec):
        if not spec.prompts.texts:
            raise ValueError("prompts.texts is empty")

    @classmethod
    def cost(cls, spec):
        return Cost(condition_settings(spec), len(spec.prompts.texts), spec.prompts.tokens_assumed)

    def __init__(self, model, res):
        super().__init__(model, res)
        self.seqs = [self.tok(t)["input_ids"] for t in self.spec.prompts.texts]

    def measure(self, setting):
        logp, mask = run_logits(self.model, self.res, setting, self.seqs)
        last = mask.sum(1) - 1
        return [r for b in range(len(self.seqs))
                for r in result_rows(setting, f"text-{b}", {"top_p": float(logp[b, last[b]].exp().max())})]


class ZeroHookKind(InterventionKind):
    """Toy kind: zero the spec's hook (no strength, no controls)."""
    name = "zero_hook"
    has_strength = False

    def resolve(self, look, c):
        return Target(f"zero:{look.spec.hook}"), None

    def edits(self, res, setting, c, positions, rule):
        return [Zero(res.spec.hook, positions=positions, rule=rule)]


@pytest.fixture
def toy_task():
    register_task(TopProbTask)
    yield TopProbTask
    del TASKS[TopProbTask.name]


@pytest.fixture
def toy_kind():
    register_kind(ZeroHookKind())
    yield
    del KINDS[ZeroHookKind.name]


def toy_spec(**kw) -> dict:
    base = {"name": "toy", "task": "toy_top_prob", "model": "tiny", "hook": HOOK, "strengths": [1.0, 2.0],
            "controls": 2, "conditions": [{"name": "up", "kind": "steer", "emotion": "calm"}]}
    return dict(base, **kw)


def test_a_registered_task_declares_its_own_prompts_table(toy_task):
    s = load_spec(toy_spec(prompts={"texts": ["one", "two", "three"], "limit": 2}))
    assert isinstance(s.prompts, TopProbPrompts) and s.prompts.texts == ["one", "two", "three"] and s.prompts.limit == 2
    assert load_spec(toy_spec()).prompts.texts == TEXTS   # its own defaults
    with pytest.raises(ConfigError, match="prompts.texts is empty"):   # its own check, at load
        load_spec(toy_spec(prompts={"texts": []}))
    # another task's field is not the toy's, and the toy's field is no other task's
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['words'\] for task 'toy_top_prob'.*words belongs to task probes"):
        load_spec(toy_spec(prompts={"words": ["calm"]}))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['texts'\] for task 'probes'.*texts belongs to task toy_top_prob"):
        load_spec(toy_spec(task="probes", prompts={"texts": ["x"]}))


def test_an_unregistered_tasks_table_is_gone(toy_task):
    del TASKS[TopProbTask.name]
    try:
        with pytest.raises(ConfigError, match="'toy_top_prob' is not one of"):
            load_spec(toy_spec())
        with pytest.raises(ConfigError, match=r"\['texts'\] for task 'probes'; known fields: \['ids', 'limit', 'words'\]$"):
            load_spec(toy_spec(task="probes", prompts={"texts": ["x"]}))
    finally:
        register_task(TopProbTask)


def test_a_registered_task_states_its_cost_in_the_plan(toy_task, tmp_path):
    from saekit.plan import _experiment_step, model_shape

    path = tmp_path / "toy.toml"
    path.write_text('name = "toy"\ntask = "toy_top_prob"\nstrengths = [1.0, 2.0]\ncontrols = 2\n'
                    '[prompts]\ntexts = ["a", "b", "c"]\ntokens_assumed = 7\n'
                    '[[conditions]]\nname = "up"\nkind = "steer"\nemotion = "calm"\n')
    shape = model_shape("smollm2-135m-instruct")
    step = _experiment_step(str(path), shape, 4, 1000.0, 10.0)
    settings = 1 + 2 * (1 + 2)   # the clean model, then two strengths each with two controls
    assert step.tokens == settings * 3 * 7
    assert step.flops == 2.0 * shape.params() * step.tokens
    assert step.seconds == step.flops / 1000.0 / 1e9   # it generates nothing: no one-token steps to price
    assert "7 settings x 3 prompts x ~7 tokens" in step.note


def test_a_registered_task_runs_and_reports(ranked, tiny_model, toy_task, tmp_path):  # noqa: F811
    s = spec(ranked, name="toy-task", task="toy_top_prob", strengths=[4.0], controls=1, prompts={"texts": TEXTS},
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
    # the browser draws it through the task's own summary and figures
    from saekit.browse.pages import Site
    from saekit.db import Database
    from saekit.db.browse import Reader

    with Database(ranked["db"], read_only=True) as db:
        site = Site()
        page = site.experiments(Reader(db))
        html = site.html(Reader(db), page)
    shown = next(x for x in page.ctx["experiments"] if x["experiment_id"] == exp)
    assert shown["task"] == "toy_top_prob" and shown["rows"] == out["rows"] and shown["columns"] == out["columns"]
    assert [t["name"] for t in shown["figures"][0]["data"]] == ["desperate_up", "desperate_up (control)"]
    assert shown["figures"][0]["layout"]["height"] == 380 and "margin" in shown["figures"][0]["layout"]
    assert "toy_top_prob" in html and 'class="plot-data"' in html


def test_an_unregistered_task_is_refused_by_name(ranked, tiny_model):  # noqa: F811
    assert "toy_top_prob" not in TASKS
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
