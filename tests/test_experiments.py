"""Experiments from specs on the tiny model, a real sae-lens SAE and a real DuckDB file."""

import json
import shutil

import pytest
import torch
from conftest import rank_tiny

from saekit import experiments as X
from saekit.config import ConfigError
from saekit.corpus import load_scenario
from saekit.db import Database, read_only_query
from saekit.db.experiments import feature_stats
from saekit.interventions import Clamp, Splice, Steer
from saekit.sae import build_training_sae, save_sae

HOOK = "blocks.2.hook_resid_post"
EMOTIONS = ["calm", "afraid", "desperate"]


@pytest.fixture(scope="module")
def ranked(tiny_model, tmp_path_factory):
    return rank_tiny(tiny_model, tmp_path_factory.mktemp("exp"), EMOTIONS, HOOK)


def spec(ranked, **kw):
    base = {"name": "t", "task": "probes", "model": "tiny", "hook": HOOK, "sae": ranked["sae"], "db": ranked["db"],
            "strengths": [2.0], "controls": 1, "n_bootstrap": 200, "norm_texts": 2, "out": str(ranked["tmp"] / "out"),
            "prompts": {"limit": 3},
            "conditions": [{"name": "desperate_up", "kind": "steer", "emotion": "desperate"},
                           {"name": "afraid_clamp", "kind": "clamp", "features": "top 2 selective for afraid"}]}
    base.update(kw)
    return base




def results(db, exp_id):
    return read_only_query(f"SELECT * FROM intervention_results WHERE experiment_id = '{exp_id}'", db).to_pylist()


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("change, error, message", [
    ({"strenghts": [1.0]}, ConfigError, r"unknown field\(s\) \['strenghts'\]"),
    ({"task": "dance"}, ConfigError, "is not one of"),
    ({"metrics": ["kl"]}, ConfigError, "metrics \\['kl'\\] do not exist for task 'probes'"),
    ({"conditions": [{"name": "x", "kind": "steer", "emotion": "sleepy"}]}, X.ExperimentError,
     r"unknown emotion\(s\) \['sleepy'\]"),
    ({"conditions": [{"name": "x", "kind": "clamp", "features": "top 3 selective for sleepy"}]}, X.ExperimentError,
     "unknown emotion 'sleepy'; the database ranks \\['afraid', 'calm', 'desperate'\\]"),
    ({"conditions": [{"name": "x", "kind": "ablate", "features": [5, 128]}]}, X.ExperimentError,
     r"feature index \[128\] out of range: the SAE has 128 features"),
    ({"conditions": [{"name": "x", "kind": "ablate", "features": [1], "colour": "red"}]}, ConfigError,
     r"unknown field\(s\) \['colour'\]"),
    ({"hook": "blocks.7.hook_resid_post", "sae": None, "conditions": [{"name": "x", "kind": "steer", "emotion": "calm"}]},
     X.ExperimentError, "no emotion vectors for model 'tiny' at blocks.7.hook_resid_post"),
])
def test_bad_specs_fail_before_any_forward_pass(ranked, tiny_model, no_forward, change, error, message):
    with pytest.raises(error, match=message):
        X.run_experiment(spec(ranked, **change), model=tiny_model)
    assert no_forward == []


@pytest.mark.parametrize("data, message", [
    # an older layout: the feature count was a top-level field shared by every task
    ({"task": "dose_response", "trace_features": 3}, r"trace_features moved: it is the reading tasks' own field now: "
                                                    r"write `top_features = 3` under \[prompts\]"),
    # a task no longer reads another task's fields
    ({"task": "dose_response", "prompts": {"per_group": 2}},
     r"unknown field\(s\) \['per_group'\] for task 'dose_response'.*per_group belongs to task trace, live_dialogue"),
    ({"task": "probes", "prompts": {"top_features": 2}, "conditions": [{"name": "c", "kind": "steer", "emotion": "calm"}]},
     r"top_features belongs to task trace, dose_response, implicit"),
])
def test_an_old_layout_or_another_tasks_field_is_named_with_its_place(data, message):
    with pytest.raises(ConfigError, match=message):
        X.load_spec(dict({"name": "x", "model": "tiny"}, **data))


def test_each_task_reads_its_own_table():
    s = X.load_spec({"name": "x", "task": "dose_response", "prompts": {"emotions": ["calm"], "top_features": 2}})
    assert type(s.prompts).__name__ == "DosePrompts" and s.prompts.top_features == 2 and s.prompts.drugs is None
    assert X.load_spec({"name": "x", "task": "live_dialogue"}).prompts.per_group == 2
    assert not hasattr(X.load_spec({"name": "x", "task": "implicit"}).prompts, "per_group")


def test_an_sae_whose_hook_the_model_lacks_fails_before_any_forward_pass(ranked, tiny_model, no_forward, tmp_path):
    torch.manual_seed(0)
    sae = build_training_sae("topk", 64, 128, k=8, metadata={"hook_name": "blocks.9.hook_resid_post"})
    folder = save_sae(sae, tmp_path / "sae9")
    s = spec(ranked, sae=str(folder), controls=0, prompts={"words": ["calm"]},
             conditions=[{"name": "x", "kind": "ablate", "features": [3]}])
    with pytest.raises(X.ExperimentError, match="reads hook 'blocks.9.hook_resid_post', which model 'tiny' does not have"):
        X.run_experiment(s, model=tiny_model)
    assert no_forward == []


# ---------------------------------------------------------------------------- resolution


def test_clamp_to_multiple_of_max_uses_the_databases_max_activation(ranked, tmp_path):
    db_path = tmp_path / "copy.duckdb"
    shutil.copy(ranked["db"], db_path)
    sae_id = ranked["sae"]
    with Database(db_path) as db:
        top = db.sql("SELECT feature FROM feature_emotion_stats WHERE sae_id = ? AND emotion = 'afraid' "
                     "ORDER BY selectivity_rank LIMIT 2", [sae_id])
        feats = [int(r[0]) for r in top]
        db.con.execute("UPDATE features SET max_activation = 3.25 WHERE sae_id = ? AND feature = ?", [sae_id, feats[0]])
        db.con.execute("UPDATE features SET max_activation = 0.5 WHERE sae_id = ? AND feature = ?", [sae_id, feats[1]])
        res = X.resolve(X.load_spec(spec(ranked, db=str(db_path), strengths=[4.0])), db)
    clamp_settings = [s for s in res.settings() if s.condition == "afraid_clamp" and not s.is_control]
    assert [s.strength for s in clamp_settings] == [4.0]
    edits = X.make_edits(res, clamp_settings[0], None)
    assert isinstance(edits[0], Splice) and isinstance(edits[0].edits[0], Clamp)
    assert edits[0].edits[0].features == tuple(feats)
    assert edits[0].edits[0].values == pytest.approx((13.0, 2.0))


def test_controls_are_other_features_with_matched_statistics(ranked):
    with Database(ranked["db"], read_only=True) as db:
        res = X.resolve(X.load_spec(spec(ranked, controls=3)), db)
        stats = feature_stats(db, res.sae_id)
    target = res.targets["afraid_clamp"]
    controls = res.controls["afraid_clamp"]
    assert len(controls) == 3
    used = set()
    for c in controls:
        assert not set(c.features) & set(target.features)
        assert not set(c.features) & used
        used |= set(c.features)
        for t, f in zip(target.features, c.features):
            def dist(g):
                return abs(torch.tensor(max(stats[g][0], 1e-6)).log() - torch.tensor(max(stats[t][0], 1e-6)).log()) + \
                    abs(torch.tensor(max(stats[g][1], 1e-6)).log() - torch.tensor(max(stats[t][1], 1e-6)).log())
            closer = sum(1 for g in stats if g != t and stats[g][0] > 0 and dist(g) < dist(f))
            assert closer < 10 + 2 * 3  # among the nearest-10 pool (plus features already taken)
    # random matched draws beat a random feature on matching, on average
    far = torch.tensor([stats[f][0] for f in stats])
    gap_control = sum(abs(c.max_activation[0] - target.max_activation[0]) for c in controls) / 3
    assert gap_control <= float((far - target.max_activation[0]).abs().mean())
    # steering controls are random unit directions, so the added vector has the same norm
    rands = res.controls["desperate_up"]
    assert len(rands) == 3 and all(r.label.startswith("random_direction") for r in rands)
    dirs = torch.tensor([r.vectors[HOOK] for r in rands])
    torch.testing.assert_close(dirs.norm(dim=1), torch.ones(3))
    assert (dirs @ dirs.T - torch.eye(3)).abs().max() < 0.9  # three different directions


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_samples():
    g = torch.Generator().manual_seed(0)
    small = torch.randn(10, generator=g) + 1.0
    big = torch.randn(400, generator=g) + 1.0
    m1, lo1, hi1 = X.bootstrap_ci(small, n_boot=2000)
    m2, lo2, hi2 = X.bootstrap_ci(big, n_boot=2000)
    assert lo1 <= m1 <= hi1 and lo2 <= m2 <= hi2
    assert m1 == pytest.approx(float(small.mean()))
    assert (hi2 - lo2) < (hi1 - lo1) / 3
    assert lo2 < 1.0 < hi2  # covers the true mean
    assert X.bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)


# ---------------------------------------------------------------------------- runs


def test_probe_experiment_stores_every_measurement(ranked, tiny_model):
    s = spec(ranked, strengths=[1.0, 4.0])
    exp = X.run_experiment(s, model=tiny_model)
    rows = results(ranked["db"], exp)
    # the conditions' emotions, also from "top 2 selective for afraid"
    assert {r["metric"] for r in rows} == {"p:afraid", "logp:afraid", "p:desperate", "logp:desperate"}
    # settings: none + 2 conditions x 2 strengths x (1 + 1 control) = 9, x 3 prompts x 2 words x 2 metrics
    assert len(rows) == 9 * 3 * 2 * 2
    none = [r for r in rows if r["condition"] == "none"]
    assert {r["strength"] for r in none} == {0.0} and not any(r["is_control"] for r in none)
    ctrl = [r for r in rows if r["is_control"]]
    assert ctrl and all(r["target"].startswith(("random_direction", "random_features")) for r in ctrl)
    # p and logp agree
    by = {(r["condition"], r["strength"], r["is_control"], r["prompt_id"], r["metric"]): r["value"] for r in rows}
    for (c, st, ic, p, m), v in by.items():
        if m.startswith("p:"):
            assert v == pytest.approx(float(torch.tensor(by[(c, st, ic, p, "logp:" + m[2:])]).exp()), rel=1e-5)
    # steering changes the probabilities; the stored spec records what was resolved
    up = by[("desperate_up", 4.0, False, "probe-01", "logp:desperate")]
    assert up != pytest.approx(by[("none", 0.0, False, "probe-01", "logp:desperate")], abs=1e-6)
    stored = read_only_query(f"SELECT spec, name, run_id FROM experiments WHERE experiment_id = '{exp}'",
                             ranked["db"]).to_pylist()[0]
    spec_json = json.loads(stored["spec"])
    assert spec_json["mean_resid_norm"][HOOK] > 0 and stored["run_id"] == exp
    assert len(spec_json["targets"]["afraid_clamp"]["features"]) == 2
    run = read_only_query(f"SELECT status FROM runs WHERE run_id = '{exp}'", ranked["db"]).to_pylist()[0]
    assert run["status"] == "done"


def test_probe_values_match_a_direct_steered_forward_pass(ranked, tiny_model):
    s = spec(ranked, strengths=[3.0], controls=0, prompts={"ids": ["probe-02"], "words": ["calm"]},
             conditions=[{"name": "calm_up", "kind": "steer", "emotion": "calm"}])
    exp = X.run_experiment(s, model=tiny_model)
    rows = {(r["condition"], r["metric"]): r["value"] for r in results(ranked["db"], exp)}
    stored = json.loads(read_only_query(f"SELECT spec FROM experiments WHERE experiment_id = '{exp}'",
                                        ranked["db"]).to_pylist()[0]["spec"])
    norm = stored["mean_resid_norm"][HOOK]
    with Database(ranked["db"], read_only=True) as db:
        vec = torch.tensor(db.scalar("SELECT vector FROM emotion_vectors WHERE emotion = 'calm' AND hook = ?", [HOOK]))
    text = load_scenario("probes")["probes"][1]["text"]
    ids = torch.tensor([tiny_model.tokenizer(text)["input_ids"]])
    word = X.word_token(tiny_model.tokenizer, "calm")
    from saekit.interventions import patched

    assert stored["token_rule"]["skip_first"] == 1 and stored["spec"]["positions"] == "counted"
    counted = torch.arange(ids.shape[1]) >= 1            # the default edits only the counted positions
    with torch.no_grad(), patched(tiny_model, Steer(HOOK, vec, 3.0, norm, positions=counted)):
        lp = tiny_model(ids)[0, -1].log_softmax(-1)[word]
    with torch.no_grad(), patched(tiny_model, Steer(HOOK, vec, 3.0, norm)):
        lp_all = tiny_model(ids)[0, -1].log_softmax(-1)[word]
    assert rows[("calm_up", "logp:calm")] == pytest.approx(float(lp), abs=1e-5)
    assert float(lp_all) != pytest.approx(float(lp), abs=1e-5)
    rule = read_only_query(f"SELECT token_rule FROM experiments JOIN runs USING (run_id) WHERE experiment_id = '{exp}'", ranked["db"])
    assert json.loads(rule.to_pylist()[0]["token_rule"])["description"] == "positions >= 1"


def test_impossible_task_margins(ranked, tiny_model):
    s = spec(ranked, task="impossible_task", strengths=[0.5], controls=1,
             prompts={"ids": ["sum-latency"], "attempts": [1, 2]},
             conditions=[{"name": "desperate_up", "kind": "steer", "emotion": "desperate"},
                         {"name": "calm_down", "kind": "steer", "emotion": "calm", "sign": -1.0}])
    exp = X.run_experiment(s, model=tiny_model)
    rows = results(ranked["db"], exp)
    assert {r["prompt_id"] for r in rows} == {"sum-latency/attempt1", "sum-latency/attempt2"}
    assert {r["strength"] for r in rows if r["condition"] == "calm_down"} == {-0.5}
    by = {(r["condition"], r["is_control"], r["prompt_id"], r["metric"]): r["value"] for r in rows}
    for key, v in by.items():
        if key[3] == "margin_sum":
            assert v == pytest.approx(by[key[:3] + ("logp_cheating_sum",)] - by[key[:3] + ("logp_honest_sum",)])
    # the clean margin equals a direct computation
    conv = load_scenario("impossible_task")["conversations"][0]
    step = conv["steps"][0]
    msgs = [{"role": "system", "content": conv["system"]}] + conv["turns"][:step["after_turn"] + 1]
    prefix = X.chat_ids(tiny_model.tokenizer, msgs)
    total = {}
    for k in ("honest", "cheating"):
        cand = tiny_model.tokenizer(step[k], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = tiny_model(torch.tensor([prefix + cand]))[0].log_softmax(-1)
        total[k] = sum(float(lp[len(prefix) + i - 1, t]) for i, t in enumerate(cand))
    assert by[("none", False, "sum-latency/attempt1", "margin_sum")] == pytest.approx(total["cheating"] - total["honest"],
                                                                                       abs=1e-3)
    # a random direction with the same strength is stored as the control
    assert any(r["is_control"] and r["condition"] == "desperate_up" for r in rows)


def test_trace_reads_each_emotion_along_the_scenarios(ranked, tiny_model):
    s = spec(ranked, task="trace", conditions=[], controls=1,
             prompts={"ids": ["sum-latency"], "per_group": 1, "drugs": ["Tylenol"]})
    exp = X.run_experiment(s, model=tiny_model)
    rows = results(ranked["db"], exp)
    conds = {r["condition"] for r in rows}
    assert {"impossible_task", "live_dialogue", "dose_response"} <= conds
    dose = [r for r in rows if r["condition"] == "dose_response" and r["metric"] == "x"]
    assert sorted(r["value"] for r in dose) == [325, 500, 1000, 2000, 3000, 4000, 6000, 8000, 12000, 20000]
    turns = {r["prompt_id"] for r in rows if r["condition"] == "impossible_task"}
    assert len(turns) == 7  # six assistant turns and the reply after the last failure
    feats = {r["metric"] for r in rows if r["metric"].startswith("feat:") and not r["is_control"]}
    assert feats == {f"feat:{e}" for e in EMOTIONS}
    assert any(r["is_control"] and r["metric"] == "vec:random" for r in rows)
    # a reading equals the projection of the clean activation at the last prompt token
    row = next(r for r in rows if r["prompt_id"] == "Tylenol/6000mg" and r["metric"] == "vec:afraid" and not r["is_control"])
    text = load_scenario("dose_response")["template"].format(dose=6000, drug="Tylenol", reason="headache")
    ids = X.chat_ids(tiny_model.tokenizer, [{"role": "user", "content": text}])
    acts = X.read_acts(tiny_model, HOOK, ids)
    with Database(ranked["db"], read_only=True) as db:
        vec = torch.tensor(db.scalar("SELECT vector FROM emotion_vectors WHERE emotion = 'afraid' AND hook = ?", [HOOK]))
    assert row["value"] == pytest.approx(float(acts[-1] @ (vec / vec.norm())), rel=1e-4, abs=1e-4)


def test_side_effects_kl_and_generations(ranked, tiny_model):
    s = spec(ranked, task="side_effects", strengths=[0.5, 4.0], controls=1,
             prompts={"limit": 2, "max_tokens": 16, "generate": ["Tell me about your day."], "max_new_tokens": 4},
             conditions=[{"name": "desperate_up", "kind": "steer", "emotion": "desperate"},
                         {"name": "afraid_off", "kind": "ablate", "features": "top 1 selective for afraid"}])
    exp = X.run_experiment(s, model=tiny_model)
    rows = results(ranked["db"], exp)
    kl = {(r["condition"], r["strength"], r["is_control"], r["prompt_id"]): r["value"] for r in rows if r["metric"] == "kl"}
    assert all(v == 0.0 for k, v in kl.items() if k[0] == "none")
    small = [v for k, v in kl.items() if k[:3] == ("desperate_up", 0.5, False)]
    large = [v for k, v in kl.items() if k[:3] == ("desperate_up", 4.0, False)]
    assert all(v >= 0 for v in kl.values()) and sum(large) > sum(small) > 0
    ablate = [k for k in kl if k[0] == "afraid_off"]
    assert ablate and all(k[1] is None for k in ablate)
    stored = json.loads(read_only_query(f"SELECT spec FROM experiments WHERE experiment_id = '{exp}'",
                                        ranked["db"]).to_pylist()[0]["spec"])
    gens = [json.loads(line) for line in open(stored["generations_file"])]
    assert {(g["condition"], g["strength"]) for g in gens} == {("none", 0.0), ("desperate_up", 4.0), ("afraid_off", None)}


# ---------------------------------------------------------------------------- reports


def test_report_prints_effects_next_to_controls_and_saves_plots(ranked, tiny_model, tmp_path):
    from saekit.experiments.summary import format_report, report

    s = spec(ranked, name="probe-report", strengths=[1.0, 4.0], prompts={"limit": 4})
    exp = X.run_experiment(s, model=tiny_model)
    out = report(exp, db_path=ranked["db"], out_dir=tmp_path / "rep")
    assert out["experiment_id"] == exp and out["task"] == "probes"
    assert len(out["rows"]) == 4 and all(len(r) == len(out["columns"]) for r in out["rows"])
    by_cond = {(r[0], r[1]): r for r in out["rows"]}
    assert by_cond[("desperate_up", "4")][2] == "logp:desperate"
    assert by_cond[("afraid_clamp", "1")][2] == "logp:afraid"
    # the effect printed is the mean paired difference from the stored rows
    rows = results(ranked["db"], exp)
    base = {r["prompt_id"]: r["value"] for r in rows if r["condition"] == "none" and r["metric"] == "logp:desperate"}
    up = [r["value"] - base[r["prompt_id"]] for r in rows if r["condition"] == "desperate_up" and r["strength"] == 4.0
          and not r["is_control"] and r["metric"] == "logp:desperate"]
    assert float(by_cond[("desperate_up", "4")][3]) == pytest.approx(sum(up) / len(up), rel=1e-3)
    assert all(p.endswith(".png") and open(p, "rb").read(4) == b"\x89PNG" for p in out["plots"])
    text = format_report(out)
    assert "desperate_up" in text and "control" in text
    # the latest run of a name is found by name too
    assert report("probe-report", db_path=ranked["db"], out_dir=tmp_path / "rep2")["experiment_id"] == exp


def test_trace_report_has_dose_and_turn_statistics(ranked, tiny_model, tmp_path):
    from saekit.experiments.summary import report

    s = spec(ranked, task="trace", conditions=[], controls=2,
             prompts={"ids": ["sum-latency"], "per_group": 1, "drugs": ["Tylenol", "aspirin"], "emotions": ["afraid", "calm"]})
    exp = X.run_experiment(s, model=tiny_model)
    out = report(exp, db_path=ranked["db"], out_dir=tmp_path / "rep")
    stats = {(r[0], r[1]) for r in out["rows"]}
    assert ("dose_response", "vec:afraid") in stats and ("impossible_task", "vec:calm") in stats
    assert any(r[0] == "live_dialogue" for r in out["rows"])
    names = sorted(p.rsplit("/", 1)[1] for p in out["plots"])
    assert names == ["trace_dose_response.png", "trace_impossible_task.png", "trace_live_dialogue.png"]


def test_shipped_specs_load():
    from pathlib import Path

    specs = sorted(Path(__file__).parents[1].joinpath("analysis", "experiments").glob("*.toml"))
    loaded = {p.stem: X.load_spec(p) for p in specs}
    assert {s.task for s in loaded.values()} == set(X.TASKS)
    assert all(s.model == "smollm2-135m-instruct" and s.hook == "blocks.20.hook_resid_post" for s in loaded.values())


def test_a_chat_experiment_on_a_base_model_is_labelled_without_losing_its_finding(ranked, tiny_model, monkeypatch):
    from saekit import model as M
    from saekit.experiments.summary import format_report, report, sentence

    s = spec(ranked, task="side_effects", strengths=[2.0], controls=1, prompts={"limit": 2, "max_tokens": 12},
             conditions=[{"name": "desperate_up", "kind": "steer", "emotion": "desperate"}])
    exp = X.run_experiment(s, model=tiny_model)
    plain = report(exp, db_path=ranked["db"], out_dir=ranked["tmp"] / "plain")
    assert plain["label"] is None and "(base model)" not in plain["title"]
    monkeypatch.setattr(M, "is_instruction_tuned", lambda name: False)
    based = report(exp, db_path=ranked["db"], out_dir=ranked["tmp"] / "based")
    assert based["title"] == plain["title"] + " (base model)"
    assert "was not instruction-tuned" in based["label"] and based["notes"] == plain["notes"]
    assert sentence(based) == sentence(plain)  # the finding is still the task's own sentence
    assert format_report(based).splitlines()[len(plain["rows"]) + 2].startswith("note: base model")


def test_measurements_outlive_a_database_locked_past_the_closing_wait(ranked, tiny_model, monkeypatch, tmp_path):
    """Hours of forward passes are not lost to a ranking that holds the database: the rows wait in a
    file the error names, and `saekit experiment store` puts them in once the lock is gone."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from saekit.cli import app
    from saekit.db import DatabaseBusy
    from saekit.experiments import runner

    monkeypatch.setattr(runner, "STORE_WAIT_S", 0.5)
    hold = ("import sys\nfrom saekit.db import Database\nd = Database(sys.argv[1])\nprint('held', flush=True)\n"
            "sys.stdin.read()\nd.close()")
    holder = []
    measure = runner.measure_all

    def measure_then_lock(*args, **kw):   # another process takes the lock while the settings run
        rows = measure(*args, **kw)
        holder.append(subprocess.Popen([sys.executable, "-c", hold, str(ranked["db"])],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        assert holder[0].stdout.readline().strip() == b"held"
        return rows

    monkeypatch.setattr(runner, "measure_all", measure_then_lock)
    s = spec(ranked, strengths=[1.0], controls=0, out=str(tmp_path), prompts={"limit": 2},
             conditions=[{"name": "calm_up", "kind": "steer", "emotion": "calm"}])
    try:
        with pytest.raises(DatabaseBusy, match=r"kept in .*unstored_results\.json.*saekit experiment store"):
            X.run_experiment(s, model=tiny_model)
    finally:
        holder[0].stdin.close()
        holder[0].wait(timeout=120)
    (kept,) = tmp_path.glob("*/unstored_results.json")
    exp_id = kept.parent.name
    assert results(ranked["db"], exp_id) == []

    result = CliRunner().invoke(app, ["experiment", "store", str(kept)])
    assert result.exit_code == 0, result.output
    rows = results(ranked["db"], exp_id)
    # none + calm_up at one strength, x 2 prompts x 1 word (calm) x 2 metrics
    assert len(rows) == 2 * 2 * 1 * 2 and {r["condition"] for r in rows} == {"none", "calm_up"}
    status = read_only_query(f"SELECT status FROM runs WHERE run_id = '{exp_id}'", ranked["db"]).to_pylist()
    assert status == [{"status": "done"}] and not kept.exists()
