"""The live-dialogue task: the reading at the user's last token and at the assistant turn's start
against the reading of the model's own reply."""

import json
import random

import pytest
import torch
from conftest import rank_tiny

from saekit import experiments as X
from saekit.corpus import load_scenario
from saekit.db import read_only_query
from saekit.experiments.batches import chat_ids, read_acts
from saekit.experiments.summary import report, sentence
from saekit.experiments.tasks.live_dialogue import LiveDialogueTask

HOOK = "blocks.2.hook_resid_post"
EMOTIONS = ["calm", "sad", "angry"]


@pytest.fixture(scope="module")
def ranked(tiny_model, tmp_path_factory):
    return rank_tiny(tiny_model, tmp_path_factory.mktemp("live"), EMOTIONS, HOOK, with_sae=False)


def spec(ranked, **kw):
    base = {"name": "live", "task": "live_dialogue", "model": "tiny", "hook": HOOK, "db": ranked["db"],
            "controls": 2, "n_bootstrap": 200, "out": str(ranked["tmp"] / "out"),
            "prompts": {"per_group": 2, "limit": 4, "reply_tokens": 4}}
    base.update(kw)
    return base




# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("prompts, message", [
    ({"ids": ["live-sad-01", "live-nope-07"]}, r"live_dialogue.jsonl: prompts.ids \['live-nope-07'\] not found"),
    ({"ids": ["live-sad-01", "live-sad-02"]}, r"live_dialogue.jsonl: .* select 2 messages; a correlation .* at least 3"),
    ({"emotions": ["sad", "sleepy"]}, r"unknown emotion\(s\) \['sleepy'\]"),
    ({"reply_tokens": 0}, "reply_tokens must be at least 1"),
])
def test_bad_prompts_fail_before_any_forward_pass(ranked, tiny_model, no_forward, prompts, message):
    with pytest.raises(Exception, match=message):
        X.run_experiment(spec(ranked, prompts=prompts), model=tiny_model)
    assert no_forward == []


# ---------------------------------------------------------------------------- on the tiny model


def test_readings_at_both_positions_and_over_the_reply(ranked, tiny_model, tmp_path):
    exp = X.run_experiment(spec(ranked), model=tiny_model)
    rows = read_only_query(f"SELECT * FROM intervention_results WHERE experiment_id = '{exp}'", ranked["db"]).to_pylist()
    items = {it["id"]: it for it in load_scenario("live_dialogue")}
    got = {r["prompt_id"] for r in rows}
    assert len(got) == 4 and all(items[p]["user_emotion"] in ("sad", "frightened") for p in got)   # 2 per group
    stored = json.loads(read_only_query(f"SELECT spec FROM experiments WHERE experiment_id = '{exp}'",
                                        ranked["db"]).to_pylist()[0]["spec"])
    # the scenario names sad, loving, frightened, calm; the tiny database has vectors for sad and calm
    assert stored["not_read"] == ["loving", "frightened"]
    assert {r["metric"] for r in rows if not r["is_control"]} >= {"user_end:vec:sad", "assistant_start:vec:calm",
                                                                    "reply:vec:sad", "reply_len"}
    gens = [json.loads(line) for line in open(stored["generations_file"])]
    tok = tiny_model.tokenizer
    vec = torch.tensor(read_only_query(f"SELECT vector FROM emotion_vectors WHERE hook = '{HOOK}' AND emotion = 'sad'",
                                       ranked["db"]).to_pylist()[0]["vector"])
    unit = vec / vec.norm()
    pid = next(r["prompt_id"] for r in rows if r["metric"] == "reply_len" and r["value"] > 0)
    assert pid in {g["id"] for g in gens}
    ids = chat_ids(tok, [{"role": "user", "content": items[pid]["text"]}])
    # the user-end position: the last token of the user's text, right before the end-of-turn marker
    u = next(i for i in range(1, len(ids) + 1) if items[pid]["text"] in tok.decode(ids[:i]))
    assert tok.decode(ids[:u]).endswith(items[pid]["text"]) and tok.decode(ids[u:]).startswith("<|im_end|>")
    acts = read_acts(tiny_model, HOOK, ids)
    val = {r["metric"]: r["value"] for r in rows if r["prompt_id"] == pid and not r["is_control"]}
    assert val["user_end:vec:sad"] == pytest.approx(float(acts[u - 1] @ unit), rel=1e-4, abs=1e-4)
    assert val["assistant_start:vec:sad"] == pytest.approx(float(acts[-1] @ unit), rel=1e-4, abs=1e-4)
    assert 1 <= val["reply_len"] <= 4
    ctl = [r for r in rows if r["is_control"] and r["prompt_id"] == pid]
    assert {r["condition"] for r in ctl} == {"live_dialogue:control0", "live_dialogue:control1"}
    summary = report(exp, ranked["db"], tmp_path / "rep")
    assert summary["task"] == "live_dialogue" and summary["generations"]
    assert "Emotions the scenario names without a vector, not read: loving, frightened." in summary["notes"]


# ---------------------------------------------------------------------------- the statistics


def synthetic(n: int, user_noise: float, assistant_noise: float, seed: int, draws: int = 2) -> list[dict]:
    """Reply readings; readings at each position are the reply's plus noise of the given size."""
    rnd = random.Random(seed)
    rows = []
    for k in range(n):
        target = "sad->loving" if k % 2 else "joyful->joyful"
        m = {}
        for e in ("loving", "joyful"):
            y = rnd.gauss(0, 1) + (1.0 if target.endswith(e) else 0.0)
            m.update({f"reply:vec:{e}": y, f"user_end:vec:{e}": y + rnd.gauss(0, user_noise),
                      f"assistant_start:vec:{e}": y + rnd.gauss(0, assistant_noise)})
        m["reply_len"] = 8.0
        rows += [{"condition": "live_dialogue", "target": target, "is_control": False, "prompt_id": f"p{k}",
                  "metric": k2, "value": v} for k2, v in m.items()]
        for d in range(draws):
            rows += [{"condition": f"live_dialogue:control{d}", "target": target, "is_control": True,
                      "prompt_id": f"p{k}", "metric": f"{pos}:vec:random", "value": rnd.gauss(0, 1)}
                     for pos in ("user_end", "assistant_start", "reply")]
    return rows


def summary_of(rows):
    exp = {"spec": {"spec": {"n_bootstrap": 300, "seed": 0}, "not_read": []}}
    cols, table, notes, stats = LiveDialogueTask.summarize(exp, rows)
    return {"task": "live_dialogue", "rows": table, "notes": notes}, stats


def test_a_planted_timing_effect_is_found():
    summary, stats = summary_of(synthetic(60, user_noise=3.0, assistant_noise=0.2, seed=0))
    for s in stats["emotions"]:
        assert s["assistant_start"][0] > 0.9 and s["user_end"][0] < 0.6
        assert s["diff"][1] > 0 and s["verdict"] == "assistant start predicts better"
        assert abs(s["control"]["assistant_start"][0]) < 0.4
    agree = stats["agreement"]
    assert agree["among"] == ["joyful", "loving"] and agree["chance"] == 0.5
    assert agree["accuracy"]["assistant_start"][0] > 0.6
    assert "better than the user's last token for 2 of 2 emotions" in sentence(summary)


def test_equal_predictors_are_a_null():
    summary, stats = summary_of(synthetic(60, user_noise=1.0, assistant_noise=1.0, seed=1))
    for s in stats["emotions"]:
        assert s["diff"][1] < 0 < s["diff"][2]
        assert s["verdict"] == "no clear difference (interval spans 0)"
    assert "for 0 of 2 emotions and worse for 0" in sentence(summary)
    assert "the intervals overlap for the other 2" in sentence(summary)


def test_an_empty_reply_is_left_out_and_noted():
    rows = synthetic(10, 1.0, 1.0, seed=2)
    rows = [r for r in rows if r["prompt_id"] != "p3"] + [
        {"condition": "live_dialogue", "target": "sad->loving", "is_control": False, "prompt_id": "p3",
         "metric": "reply_len", "value": 0.0}]
    summary, stats = summary_of(rows)
    assert stats["emotions"][0]["n"] == 9 and stats["empty_replies"] == 1
    assert "1 prompt(s) got an empty reply and are left out." in summary["notes"]
