"""The implicit-emotion task: readings of vectors and features on prompts that imply an emotion."""

import random
import shutil

import pytest
import torch
from conftest import rank_tiny

from saekit import experiments as X
from saekit.corpus import load_scenario
from saekit.db import Database, read_only_query
from saekit.experiments.batches import read_acts
from saekit.experiments.summary import report, sentence
from saekit.experiments.tasks.implicit import implicit_stats

HOOK = "blocks.2.hook_resid_post"
EMOTIONS = ["calm", "afraid", "desperate"]
IDS = ["implicit-01", "implicit-02", "implicit-11", "implicit-12", "implicit-23", "implicit-24"]


@pytest.fixture(scope="module")
def ranked(tiny_model, tmp_path_factory):
    return rank_tiny(tiny_model, tmp_path_factory.mktemp("implicit"), EMOTIONS, HOOK)


def spec(ranked, **kw):
    base = {"name": "imp", "task": "implicit", "model": "tiny", "hook": HOOK, "sae": ranked["sae"], "db": ranked["db"],
            "controls": 3, "n_bootstrap": 200, "out": str(ranked["tmp"] / "out"), "prompts": {"ids": IDS}}
    base.update(kw)
    return base




def rows_of(db, exp_id):
    return read_only_query(f"SELECT * FROM intervention_results WHERE experiment_id = '{exp_id}'", db).to_pylist()


def pooled(model, text):
    """The reading's pooled activation, computed here independently: tokens from the middle on (short texts)."""
    ids = model.tokenizer(text)["input_ids"]
    acts = read_acts(model, HOOK, ids)
    return acts[max(len(ids) // 2, 1):].mean(0)


def copy_db(ranked, tmp_path):
    path = tmp_path / "copy.duckdb"
    shutil.copy(ranked["db"], path)
    with Database(path) as db:
        has = db.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'story_means'")
        if has:
            db.con.execute("DELETE FROM story_means")
    return path


# ---------------------------------------------------------------------------- bad input


def test_an_emotion_the_database_lacks_fails_before_any_forward_pass_naming_file_and_field(ranked, tiny_model,
                                                                                            no_forward):
    # the whole file names 15 emotions; the tiny database has vectors for three
    with pytest.raises(X.ExperimentError, match=r"saekit/corpus/scenarios/implicit.jsonl: field 'emotion' of "
                                                r"\[.*'implicit-03'.*\] names \[.*'sad'.*\]"):
        X.run_experiment(spec(ranked, prompts={}), model=tiny_model)
    assert no_forward == []


def test_prompt_emotions_outside_prompts_emotions_fail(ranked, tiny_model, no_forward):
    with pytest.raises(X.ExperimentError, match=r"implicit.jsonl: field 'emotion' .* \(prompts.emotions: "
                                                r"\['afraid', 'calm'\]\)"):
        X.run_experiment(spec(ranked, prompts={"ids": IDS, "emotions": ["afraid", "calm"]}), model=tiny_model)
    assert no_forward == []


def test_an_unknown_prompt_id_fails_naming_the_file(ranked, tiny_model, no_forward):
    with pytest.raises(X.ExperimentError, match=r"implicit.jsonl: prompts.ids \['implicit-99'\] not found"):
        X.run_experiment(spec(ranked, prompts={"ids": ["implicit-01", "implicit-99"]}), model=tiny_model)
    assert no_forward == []


def test_conditions_are_refused():
    with pytest.raises(Exception, match="takes no conditions"):
        X.load_spec({"name": "x", "task": "implicit", "conditions": [{"name": "a", "kind": "steer", "emotion": "calm"}]})


# ---------------------------------------------------------------------------- a planted signal


def test_planted_vectors_put_every_prompt_on_the_diagonal(ranked, tiny_model, tmp_path):
    """Vectors set to each prompt's centred pooled activation (one prompt per emotion) must classify every
    prompt (Cauchy-Schwarz); the stored readings are the projections of the centred pooled activations."""
    db_path = copy_db(ranked, tmp_path)
    items = {it["id"]: it for it in load_scenario("implicit")}
    ids = ["implicit-01", "implicit-11", "implicit-23"]
    x = {i: pooled(tiny_model, items[i]["text"]) for i in ids}
    centre = torch.stack(list(x.values())).mean(0)
    planted = {items[i]["emotion"]: x[i] - centre for i in ids}
    with Database(db_path) as db:
        for e, v in planted.items():
            db.con.execute("UPDATE emotion_vectors SET vector = ? WHERE hook = ? AND emotion = ?", [v.tolist(), HOOK, e])
    exp = X.run_experiment(spec(ranked, db=str(db_path), prompts={"ids": ids}), model=tiny_model)
    rows = rows_of(db_path, exp)
    got = {r["prompt_id"]: r for r in rows if r["metric"] == "vec:afraid" and not r["is_control"]}
    for i in ids:
        assert got[i]["target"] == items[i]["emotion"]
        want = float((x[i] - centre) @ (planted["afraid"] / planted["afraid"].norm()))
        assert got[i]["value"] == pytest.approx(want, rel=1e-4, abs=1e-4)
    summary = report(exp, db_path, tmp_path / "rep")
    vec_all = next(r for r in summary["rows"] if r[0] == "vector" and r[1].startswith("all"))
    assert vec_all[2] == "1.000" and vec_all[4] == "0.333" and vec_all[8].startswith("above chance")
    assert any(p.endswith("implicit_confusion_vec.png") for p in summary["plots"])
    assert any(p.endswith("implicit_confusion_feat.png") for p in summary["plots"])
    assert "prompts' own mean" in summary["notes"][0]
    text = sentence(summary)
    assert "centred on the prompts' own mean" in text and "1.000 [1.000, 1.000] over 3 emotions" in text
    stored = read_only_query(f"SELECT spec, token_rule FROM experiments JOIN runs USING (run_id) WHERE experiment_id = '{exp}'",
                             db_path).to_pylist()[0]
    assert '"centring": "prompt_mean"' in stored["spec"] and "positions >= 1" in stored["token_rule"]
    # the controls are random directions, read from the same activations
    ctl = [r for r in rows if r["is_control"] and r["metric"] == "vec:afraid"]
    assert len(ctl) == 3 * len(ids)


def test_a_stored_training_mean_is_the_centre(ranked, tiny_model, tmp_path):
    db_path = copy_db(ranked, tmp_path)
    items = {it["id"]: it for it in load_scenario("implicit")}
    x = pooled(tiny_model, items["implicit-11"]["text"])
    centre = torch.full_like(x, 0.25)
    with Database(db_path) as db:
        db.con.execute("CREATE TABLE IF NOT EXISTS story_means (model_id VARCHAR, corpus_id VARCHAR, hook VARCHAR, "
                       "mean FLOAT[], n INTEGER, run_id VARCHAR)")
        db.con.execute("INSERT INTO story_means VALUES ('tiny', 'shipped', ?, ?, 17, 'r')", [HOOK, centre.tolist()])
        v = torch.tensor(db.sql("SELECT vector FROM emotion_vectors WHERE hook = ? AND emotion = 'calm'", [HOOK])[0][0])
    exp = X.run_experiment(spec(ranked, db=str(db_path), sae=None, controls=0, prompts={"ids": ["implicit-11"]}),
                           model=tiny_model)
    got = next(r for r in rows_of(db_path, exp) if r["metric"] == "vec:calm")
    assert got["value"] == pytest.approx(float((x - centre) @ (v / v.norm())), rel=1e-4, abs=1e-4)
    summary = report(exp, db_path, tmp_path / "rep")
    assert "training stories' mean activation (story_means, 17 stories)" in summary["notes"][0]
    assert "centred on the train mean" in sentence(summary)


# ---------------------------------------------------------------------------- the statistics


def synthetic(n_per: int, emotions: list[str], signal: float, seed: int, draws: int = 3) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for k in range(n_per * len(emotions)):
        true = emotions[k % len(emotions)]
        for cond, ctl in [("implicit", False)] + [(f"implicit:control{d}", True) for d in range(draws)]:
            for e in emotions:
                bump = signal if (e == true and not ctl) else 0.0
                rows.append({"condition": cond, "target": true, "is_control": ctl, "prompt_id": f"p{k}",
                             "metric": f"vec:{e}", "value": bump + rnd.gauss(0, 1), "strength": None})
    return rows


def test_a_strong_signal_is_found_and_random_readings_are_a_null():
    emotions = ["a", "b", "c", "d", "e"]
    strong = implicit_stats(synthetic(40, emotions, 3.0, 0), n_boot=300)["accuracy"]
    assert strong[0]["over"] == "all 5 emotions" and strong[0]["chance"] == pytest.approx(0.2)
    assert strong[0]["accuracy"] > 0.8 and strong[0]["verdict"] == "above chance and control"
    null = implicit_stats(synthetic(40, emotions, 0.0, 1), n_boot=300)["accuracy"]
    assert null[0]["lo"] <= 0.2 <= null[0]["hi"]
    assert null[0]["verdict"] == "no better than chance (null)"
    assert 0.05 < null[0]["control"] < 0.4


def test_accuracy_over_the_emotions_present_is_the_argmax_among_them():
    # readings for 3 emotions, but only a and b are the prompts' emotions: c always wins overall
    rows = []
    for k, true in enumerate(["a", "b", "a", "b"]):
        vals = {"a": 1.0 if true == "a" else 0.0, "b": 1.0 if true == "b" else 0.0, "c": 5.0}
        rows += [{"condition": "implicit", "target": true, "is_control": False, "prompt_id": f"p{k}",
                  "metric": f"vec:{e}", "value": v} for e, v in vals.items()]
    acc = {s["over"]: s for s in implicit_stats(rows, n_boot=50)["accuracy"]}
    assert acc["all 3 emotions"]["accuracy"] == 0.0
    assert acc["present 2 emotions"]["accuracy"] == 1.0 and acc["present 2 emotions"]["chance"] == 0.5
