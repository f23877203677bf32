"""impossible_task: cached scoring equals full passes, readings along the attempts, the report's
verdicts on planted effects and noise, and bad input refused before any forward pass."""

import numpy as np
import pytest
import torch
from test_experiments import ranked, results, spec  # noqa: F401  (ranked is a fixture)

from saekit import experiments as X
from saekit.config import ConfigError
from saekit.experiments.summary import report, sentence
from saekit.experiments.tasks.impossible_task import ImpossibleTask, reading_trends
from saekit.interventions import Steer, patched
from saekit.model import hf_model_of, plain_model, score_continuations

POST, PRE = "blocks.2.hook_resid_post", "blocks.1.hook_resid_pre"
CONTEXT = [(37 * i + 11) % 5000 + 100 for i in range(70)]
CONTS = [[17, 400, 23, 9, 1200], [88, 7]]
BRANCHES = [(70, CONTS), (41, CONTS), (1, CONTS)]


def full_pass(model, prefix_len, cont, edits_at=None):
    """Per-token log-probabilities of `cont` after CONTEXT[:prefix_len], through the bridge, no cache."""
    seq = CONTEXT[:prefix_len] + cont
    edits = edits_at(torch.ones(1, len(seq), dtype=torch.bool)) if edits_at else []
    with torch.no_grad(), patched(model, edits):
        logp = model(torch.tensor([seq]))[0].float().log_softmax(-1)
    return torch.stack([logp[prefix_len - 1 + i, t] for i, t in enumerate(cont)])


def steer_all(hook, direction, strength=3.0):
    return lambda mask_BT: [Steer(hook, direction, strength, positions=mask_BT)]


def steer_but_first(hook, direction, strength=3.0):
    def edits(mask_BT):
        m = mask_BT.clone()
        m[:, 0] = False
        return [Steer(hook, direction, strength, positions=m)]
    return edits


def as_hooks_for(edits_at):
    """hooks_for of score_continuations from a full-sequence mask -> edits function."""
    def hooks_for(start, mask_BT):
        full = torch.cat([torch.ones(len(mask_BT), start, dtype=torch.bool), mask_BT], dim=1)
        return [(e.hook, e) for e in _sliced(edits_at(full), start)]
    return hooks_for


def _sliced(edits, start):
    for e in edits:
        yield Steer(e.hook, e.direction, e.strength, e.scale, positions=e.positions[:, start:])


# ---------------------------------------------------------------------------- the cache adapter


def test_the_plain_twin_shares_the_bridges_weights(tiny_model):
    twin = plain_model(tiny_model)
    assert twin is plain_model(tiny_model)  # made once
    hf = hf_model_of(tiny_model)
    emb = dict(hf.named_parameters(remove_duplicate=False))["model.embed_tokens._original_component.weight"]
    assert twin.get_input_embeddings().weight.data_ptr() == emb.data_ptr()
    ids = torch.tensor([CONTEXT[:20]])
    with torch.no_grad():
        assert torch.allclose(twin(ids).logits, tiny_model(ids), atol=1e-4)


@pytest.mark.parametrize("edits_at", [None, "all_post", "but_first_post", "all_pre"])
def test_cached_log_probs_equal_full_passes(tiny_model, edits_at):
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    make = {None: None, "all_post": steer_all(POST, direction), "but_first_post": steer_but_first(POST, direction),
            "all_pre": steer_all(PRE, direction)}[edits_at]
    got = score_continuations(tiny_model, CONTEXT, BRANCHES, as_hooks_for(make) if make else None)
    clean = score_continuations(tiny_model, CONTEXT, BRANCHES)
    for (prefix_len, conts), per in zip(BRANCHES, got):
        for cont, lp in zip(conts, per):
            assert lp.shape == (len(cont),)
            assert torch.allclose(lp, full_pass(tiny_model, prefix_len, cont, make), atol=1e-4)
    if make is not None:  # the edit did change the numbers, and its hooks are gone afterwards
        assert not torch.allclose(got[0][0], clean[0][0], atol=1e-3)
        assert torch.allclose(score_continuations(tiny_model, CONTEXT, BRANCHES)[0][0], clean[0][0])


def test_a_prefix_outside_the_context_is_refused(tiny_model):
    with pytest.raises(ValueError, match="prefix lengths must be within 1..70"):
        score_continuations(tiny_model, CONTEXT, [(71, CONTS)])


# ---------------------------------------------------------------------------- the task on the tiny model


def impossible(ranked, **kw):  # noqa: F811
    base = dict(task="impossible_task", sae=None, strengths=[0.5], controls=1, positions="all",
                prompts={"ids": ["sum-latency"], "attempts": [1, 2]},
                conditions=[{"name": "desperate", "kind": "steer", "emotion": "desperate", "strengths": [-0.5, 0.5]},
                            {"name": "calm", "kind": "steer", "emotion": "calm"}])
    base.update(kw)
    return spec(ranked, **base)


@pytest.mark.slow  # a subprocess per case (kill, fresh process) or a full uncached pass: not in make test-fast
@pytest.mark.parametrize("positions", ["all", "counted"])
def test_cached_task_rows_equal_the_uncached_ones(ranked, tiny_model, monkeypatch, positions):  # noqa: F811
    s = impossible(ranked, positions=positions)
    if positions == "counted":  # one condition is enough to check the mask (and halves the time)
        s["conditions"] = s["conditions"][:1]
    cached = results(ranked["db"], X.run_experiment(s, model=tiny_model))
    monkeypatch.setattr(ImpossibleTask, "cached", lambda self, setting: False)
    full = results(ranked["db"], X.run_experiment(s, model=tiny_model))
    key = lambda r: (r["condition"], r["strength"], r["is_control"], r["prompt_id"], r["metric"])  # noqa: E731
    a, b = {key(r): r["value"] for r in cached}, {key(r): r["value"] for r in full}
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=2e-3 if "sum" in k[-1] else 1e-4), k
    metrics = {r["metric"] for r in cached if r["condition"] == "none"}
    assert {"reading:desperate", "reading:calm", "reading:random0", "attempt", "margin_mean"} <= metrics
    assert {r["strength"] for r in cached if r["condition"] == "desperate"} == {-0.5, 0.5}
    # steering moved the margin: the rows are not all the clean model's
    steered = {k: v for k, v in a.items() if k[0] == "desperate" and not k[2] and k[-1] == "margin_mean"}
    assert any(abs(v - a[("none", 0.0, False, k[3], "margin_mean")]) > 1e-4 for k, v in steered.items())


@pytest.mark.slow  # a subprocess per case (kill, fresh process) or a full uncached pass: not in make test-fast
def test_report_has_both_figures_and_a_sentence_per_emotion(ranked, tiny_model, tmp_path):  # noqa: F811
    exp = X.run_experiment(impossible(ranked), model=tiny_model)
    out = report(exp, db_path=ranked["db"], out_dir=tmp_path)
    assert sorted(p.rsplit("/", 1)[1] for p in out["plots"]) == ["effect_vs_strength.png", "reading_vs_attempt.png"]
    text = sentence(out)
    assert "desperate +0.5" in text and "calm +0.5" in text and "Readings along the attempts" in text
    assert "too few prompts" in text and "null" not in text.split("Readings")[0]  # 2 prompts: no verdict, no null


@pytest.mark.parametrize("prompts, field", [
    ({"ids": ["sum-latency", "no-such-task"]}, r"prompts.ids \['no-such-task'\]: no such conversation in \S*impossible_task.json"),
    ({"attempts": [2, 9]}, r"prompts.attempts \[9\]: the chosen conversations in \S*impossible_task.json have "
                           r"failed attempts \[1, 2, 3, 4, 5, 6\]"),
    ({"readings": ["sleepy"]}, r"unknown emotion\(s\) \['sleepy'\]"),
])
def test_bad_prompts_fail_before_any_forward_pass(ranked, tiny_model, prompts, field):  # noqa: F811
    calls = []
    point = tiny_model.hook_dict["blocks.0.hook_resid_pre"]
    point.add_hook(lambda a, hook: calls.append(1))
    twin_layer = plain_model(tiny_model).model.layers[0]
    handle = twin_layer.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises((ConfigError, X.ExperimentError), match=field):
            X.run_experiment(impossible(ranked, prompts=prompts), model=tiny_model)
    finally:
        point.remove_hooks()
        handle.remove()
    assert calls == []


# ---------------------------------------------------------------------------- the report's statistics


CONVS = ["a", "b", "c", "d"]


def synthetic(margin, reading, seed=0, n_attempts=6):
    """Stored rows: margin(condition, strength, is_control, rng) and reading(conv, attempt, rng) per prompt."""
    rng = np.random.default_rng(seed)
    rows = []
    settings = [("none", 0.0, False)] + [(c, s, ctl) for c in ("desperate", "calm") for s in (-0.1, -0.05, 0.05, 0.1)
                                        for ctl in (False, True)]
    for ci, conv in enumerate(CONVS):
        base = rng.normal()
        for a in range(1, n_attempts + 1):
            pid = f"{conv}/attempt{a}"
            for cond, s, ctl in settings:
                rows.append({"condition": cond, "target": "", "strength": s, "is_control": ctl, "prompt_id": pid,
                             "metric": "margin_mean", "value": base + margin(cond, s, ctl, rng)})
            for e in ("desperate", "calm", "random0"):
                rows.append({"condition": "none", "target": "none", "strength": 0.0, "is_control": False,
                             "prompt_id": pid, "metric": f"reading:{e}", "value": 5 * ci + reading(e, a, rng)})
            rows.append({"condition": "none", "target": "none", "strength": 0.0, "is_control": False,
                         "prompt_id": pid, "metric": "attempt", "value": float(a)})
    exp = {"name": "t", "spec": {"spec": {"n_bootstrap": 500, "seed": 0,
                                          "conditions": [{"name": "desperate"}, {"name": "calm"}]}}}
    return exp, rows


def summary_of(exp, rows):
    columns, table, notes, _ = ImpossibleTask.summarize(exp, rows)
    return {"columns": columns, "rows": table, "notes": notes}


def test_planted_effects_in_the_papers_direction_get_verdicts_and_say_so():
    def margin(cond, s, ctl, rng):
        slope = {"desperate": 4.0, "calm": -4.0}.get(cond, 0.0)
        return (0.0 if ctl else slope * s) + 0.01 * rng.normal()
    exp, rows = synthetic(margin, lambda e, a, rng: (0.5 * a if e == "desperate" else 0.0) + 0.05 * rng.normal())
    summary = summary_of(exp, rows)
    verdicts = {(r[0], r[1]): r[-1] for r in summary["rows"]}
    assert verdicts[("desperate", "0.1")] == "above control" and verdicts[("desperate", "-0.1")] == "below control"
    assert verdicts[("calm", "0.1")] == "below control" and verdicts[("calm", "-0.1")] == "above control"
    text = ImpossibleTask.sentence(summary)
    assert text.count("the paper's direction") == 2 and "null" not in text.split("Readings")[0]
    trend = {t["emotion"]: t for t in reading_trends(exp, rows)}
    assert trend["desperate"]["verdict"] == "rises" and trend["desperate"]["p"] < 0.01
    assert trend["desperate"]["n"] == 24
    assert trend["calm"]["verdict"] == "null" and trend["random"]["verdict"] == "null"
    assert "'desperate' rises with the attempt" in text and "random directions show no trend (null)" in text


def test_noise_is_reported_as_null_and_an_opposite_effect_as_opposite():
    # noise alone: about 5% of rows may pass by chance, so count over several draws
    verdicts = []
    for seed in range(5):
        exp, rows = synthetic(lambda c, s, ctl, rng: 0.05 * rng.normal(), lambda e, a, rng: rng.normal(), seed=seed)
        verdicts += [r[-1] for r in summary_of(exp, rows)["rows"]]
    assert sum(v.startswith("null") for v in verdicts) >= 0.85 * len(verdicts) and len(verdicts) == 40
    # no effect at all: every row null, and the sentence says so for both emotions
    exp, rows = synthetic(lambda c, s, ctl, rng: 0.0, lambda e, a, rng: rng.normal(), seed=3)
    summary = summary_of(exp, rows)
    assert all(r[-1].startswith("null") for r in summary["rows"])
    text = ImpossibleTask.sentence(summary)
    assert text.count("a null where the paper found") == 2
    assert "'desperate' shows no trend (null)" in text
    exp, rows = synthetic(lambda c, s, ctl, rng: (0.0 if ctl or c != "calm" else 4.0 * s) + 0.01 * rng.normal(),
                          lambda e, a, rng: rng.normal())
    text = ImpossibleTask.sentence(summary_of(exp, rows))
    assert "calm" in text and "opposite to the paper's direction" in text


@pytest.mark.parametrize("attempts", [[1, 2], [1, 2, 3, 4], None])
def test_the_plans_cost_counts_the_passes_the_task_makes(tiny_model, attempts):
    """One pass per conversation up to its last chosen attempt, plus the candidates: the plan's count
    (characters / 3.5) is within 25% of the tokens the chat template and tokenizer give."""
    from saekit.corpus import load_scenario
    from saekit.experiments.batches import chat_ids
    from saekit.experiments.load import load_spec

    s = load_spec({"name": "t", "task": "impossible_task", "model": "tiny", "hook": POST, "strengths": [0.1],
                    "controls": 1, "prompts": {"attempts": attempts},
                    "conditions": [{"name": "desperate", "kind": "steer", "emotion": "desperate"}]})
    cost = ImpossibleTask.cost(s)
    tokens = 0
    for c in load_scenario("impossible_task")["conversations"]:
        steps = [st for st in c["steps"] if attempts is None or st["attempt"] in attempts]
        msgs = [{"role": "system", "content": c["system"]}] + c["turns"]
        tokens += len(chat_ids(tiny_model.tokenizer, msgs[:max(st["after_turn"] for st in steps) + 2]))
        tokens += sum(len(tiny_model.tokenizer(st[k], add_special_tokens=False)["input_ids"])
                      for st in steps for k in ("honest", "cheating"))
    assert cost.counted and cost.settings == 1 + 1 * (1 + 1) and cost.prompts == 4
    assert cost.prompts * cost.tokens_per_prompt == pytest.approx(tokens, rel=0.25)
